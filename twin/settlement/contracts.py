"""Per-participant settlement contracts, community (P2P) and reward-pool rules, and demand-response events,
as declared in the ``[settlement]`` section of a scenario TOML file.

These are pydantic models because they sit at the I/O boundary: a bad value is answered with a
:class:`ContractError` naming the field path and the value. Money fields must be strings (or integers) in
the file — a TOML float such as ``0.30`` is refused, because it is already binary-rounded when parsed.
Every rule has a ``name`` and a ``version``; both go into the ledger's idempotency key, so changing a
rule's terms means bumping its version, never silently re-settling under the old key.
"""

from __future__ import annotations

import tomllib
import zoneinfo
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, \
    field_validator, model_validator

from twin.settlement.baselines import BaselineMethod
from twin.settlement.money import money
from twin.settlement.p2p import P2PMethod

__all__ = [
    "CapacityPayment",
    "Community",
    "ContractError",
    "DrEvent",
    "EventKind",
    "NonPerformancePenalty",
    "ParticipantContract",
    "PerformancePayment",
    "RewardPool",
    "Rule",
    "SettlementConfig",
]


class ContractError(ValueError):
    """A settlement declaration is invalid; the message names each bad field path and its value."""


def _decimal_field(value: Any) -> Decimal:
    if isinstance(value, float):
        raise ValueError(f"{value!r} is a float; write amounts as strings, e.g. \"{value}\"")
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ValueError(f"expected a decimal string, got {type(value).__name__}")
    try:
        return money(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def _non_negative(value: Decimal) -> Decimal:
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _ratio(value: Decimal) -> Decimal:
    if not 0 < value <= 1:
        raise ValueError("must be in (0, 1]")
    return value


Amount = Annotated[Decimal, BeforeValidator(_decimal_field), AfterValidator(_non_negative)]
Ratio = Annotated[Decimal, BeforeValidator(_decimal_field), AfterValidator(_ratio)]
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")]
Version = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v),
                    Field(min_length=1, max_length=40)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EventKind(StrEnum):
    ECONOMIC = "economic"
    EMERGENCY = "emergency"
    TEST = "test"


class DrEvent(_Model):
    """A demand-response event window [start, end) in UTC. ``event_id`` names it (an OpenADR eventID when a
    VTN issued it; then the participants' opt-in answers apply, see ``twin.settlement.dr_program``)."""

    start: AwareDatetime
    end: AwareDatetime
    kind: EventKind = EventKind.ECONOMIC
    event_id: Name | None = None

    @model_validator(mode="after")
    def _ordered(self) -> DrEvent:
        if self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} is not after start {self.start.isoformat()}")
        return self


class CapacityPayment(_Model):
    """Paid every interval: committed kW × price per kW-month, pro-rated to the interval's share of the month."""

    kind: Literal["capacity_payment"]
    name: Name = "capacity_payment"
    version: Version = "1"
    committed_kw: Amount
    price_per_kw_month: Amount


class PerformancePayment(_Model):
    """Paid in event intervals: price × verified kWh delivered below the chosen baseline."""

    kind: Literal["performance_payment"]
    name: Name = "performance_payment"
    version: Version = "1"
    baseline: BaselineMethod
    price_per_kwh: Amount


class NonPerformancePenalty(_Model):
    """Charged in event intervals when delivery < committed × balancing ratio, at Net CONE × 365 / 30 h per MWh."""

    kind: Literal["non_performance_penalty"]
    name: Name = "non_performance_penalty"
    version: Version = "1"
    baseline: BaselineMethod
    committed_kw: Amount
    balancing_ratio: Ratio = Decimal(1)
    net_cone_per_mw_day: Amount
    expected_hours: Amount = Decimal(30)


Rule = Annotated[Union[CapacityPayment, PerformancePayment, NonPerformancePenalty], Field(discriminator="kind")]


class ParticipantContract(_Model):
    participant: Name
    rules: tuple[Rule, ...]

    @field_validator("rules")
    @classmethod
    def _unique_rule_names(cls, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        if not rules:
            raise ValueError("a contract needs at least one rule")
        names = [r.name for r in rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique per participant; repeated: {dupes}")
        return rules

    def baseline_methods(self) -> set[BaselineMethod]:
        return {r.baseline for r in self.rules if isinstance(r, (PerformancePayment, NonPerformancePenalty))}


class Community(_Model):
    """A P2P community settled every interval; the grid (retailer) takes or pays the net exchange."""

    name: Name
    version: Version = "1"
    method: P2PMethod = P2PMethod.MID_MARKET
    members: tuple[Name, ...] = Field(min_length=1)
    grid_buy_per_kwh: Amount
    feed_in_per_kwh: Amount

    @model_validator(mode="after")
    def _prices(self) -> Community:
        if self.grid_buy_per_kwh < self.feed_in_per_kwh:
            raise ValueError(f"grid_buy_per_kwh {self.grid_buy_per_kwh} is below feed_in_per_kwh {self.feed_in_per_kwh}")
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"members are repeated: {list(self.members)}")
        return self


class RewardPool(_Model):
    """A pot shared by verified delivered flexibility (kWh below ``baseline``) by largest remainder.

    ``per = "interval"``: the pot is paid in every event interval. ``per = "event"``: the pot is spread over
    the event's intervals in proportion to their duration (month-to-date style rounding, so the slices of
    an event add up to exactly the pot) and each slice is shared by that interval's delivery.
    """

    name: Name
    version: Version = "1"
    pot: Amount
    per: Literal["interval", "event"] = "event"
    baseline: BaselineMethod
    members: tuple[Name, ...] = Field(min_length=1)


class SettlementConfig(_Model):
    """Everything settlement needs to know about a scenario besides the meters."""

    events: tuple[DrEvent, ...] = ()
    contracts: tuple[ParticipantContract, ...] = ()
    communities: tuple[Community, ...] = ()
    reward_pools: tuple[RewardPool, ...] = ()
    holidays: tuple[date, ...] = ()
    #: The local calendar in which baseline days, weekends and holidays are judged.
    baseline_tz: str = "UTC"
    #: Sign a Merkle checkpoint once this many entries have been appended since the last one.
    checkpoint_every: int = Field(default=256, ge=1)
    #: A DR program register (``twin.settlement.dr_program``, written by the live twin's OpenADR VTN): the
    #: events it issued are settled too, each with the participants' opt-in answers.
    dr_program: str | None = Field(default=None, min_length=1)

    @field_validator("baseline_tz")
    @classmethod
    def _known_tz(cls, tz: str) -> str:
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {tz!r}") from None
        return tz

    @model_validator(mode="after")
    def _consistent(self) -> SettlementConfig:
        people = [c.participant for c in self.contracts]
        if len(set(people)) != len(people):
            raise ValueError(f"contracts: a participant has two contracts: {sorted(p for p in people if people.count(p) > 1)}")
        for group in ("communities", "reward_pools"):
            names = [g.name for g in getattr(self, group)]
            if len(set(names)) != len(names):
                raise ValueError(f"{group}: names must be unique, got {names}")
        events = sorted(self.events, key=lambda e: e.start)
        for a, b in zip(events, events[1:]):
            if b.start < a.end:
                raise ValueError(f"events overlap: {a.start.isoformat()}..{a.end.isoformat()} and "
                                 f"{b.start.isoformat()}..{b.end.isoformat()}")
        return self

    def participants(self) -> set[str]:
        """Everyone whose meter settlement needs."""
        found = {c.participant for c in self.contracts}
        for group in (*self.communities, *self.reward_pools):
            found.update(group.members)
        return found

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SettlementConfig:
        """Validate a parsed ``[settlement]`` table; raise ContractError naming each bad field and value."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ContractError(_describe(exc)) from None

    @classmethod
    def from_toml(cls, path: Path | str, *, section: str | None = "settlement") -> SettlementConfig:
        """Read ``path`` and validate its ``section`` table (the whole file when ``section`` is None)."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ContractError(f"{path}: not valid TOML: {exc}") from None
        if section is not None:
            if section not in data:
                raise ContractError(f"{path}: no [{section}] table")
            data = data[section]
        try:
            return cls.from_mapping(data)
        except ContractError as exc:
            raise ContractError(f"{path}: {exc}") from None


def _show(value: Any) -> str:
    """The offending value as the user wrote it: TOML dates as ISO text, everything else as repr."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".") or "(top level)"
        lines.append(f"{where} = {_show(err.get('input'))}: {err['msg']}")
    return "invalid settlement declaration:\n  " + "\n  ".join(lines)
