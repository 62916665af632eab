"""Scenario files: one TOML document says which feeder, fleet, data, period, controllers and seed a run uses.

Owns parsing and validation only (pydantic); errors name the key and the value (``ScenarioError``). The
embedded default scenario (``gridtwin demo``) ships as package data, so it runs with no file and no server.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["CommsSpec", "ControllerEntry", "FaultSpec", "Scenario", "ScenarioError", "demo_scenario_path", "format_duration",
           "load_scenario"]


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the key and the offending value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def format_duration(td: object) -> str:
    """'15min' rather than pandas' '0 days 00:15:00' (whole days, hours, minutes or seconds)."""
    seconds = int(pd.Timedelta(td).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _timedelta(value: Any, *, key: str) -> pd.Timedelta:
    try:
        td = pd.Timedelta(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{key}={value!r} is not a duration like '15min' or '24h'") from exc
    if pd.isna(td) or td <= pd.Timedelta(0):
        raise ValueError(f"{key}={value!r} must be a positive duration")
    return td


def _utc(value: Any, *, key: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{key}={value!r} is not a timestamp like '2016-06-06T00:00:00Z'") from exc
    if pd.isna(ts):
        raise ValueError(f"{key}={value!r} is not a timestamp")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


class FleetSpec(_Strict):
    """Either a CSV asset table or seeded placement from penetration levels."""

    csv: str | None = None
    pv_penetration: float = Field(default=0.5, ge=0)
    battery_share: float = Field(default=0.3, ge=0, le=1)
    ev_share: float = Field(default=0.3, ge=0, le=1)
    flex_share: float = Field(default=0.2, ge=0, le=1)


class TelemetrySpec(_Strict):
    """Replay source: the feeder's own profiles (SimBench / synthetic) or a canonical telemetry file."""

    source: Literal["profiles", "file"] = "profiles"
    path: str | None = None

    @model_validator(mode="after")
    def _path_for_file(self) -> TelemetrySpec:
        if self.source == "file" and not self.path:
            raise ValueError("telemetry.path is required when telemetry.source = 'file'")
        return self


class TariffSpec(_Strict):
    """Time-of-use energy price (EUR/MWh) for imports, a flat feed-in price for exports."""

    offpeak_eur_per_mwh: float = 180.0
    peak_eur_per_mwh: float = 400.0
    peak_hours: tuple[int, int] = (17, 21)
    feed_in_eur_per_mwh: float = 60.0
    demand_charge_eur_per_mw: float = 0.0

    @field_validator("peak_hours")
    @classmethod
    def _hours(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not (0 <= v[0] < v[1] <= 24):
            raise ValueError(f"tariff.peak_hours={list(v)!r} must be [start, end) hours with 0 <= start < end <= 24")
        return v


class LimitsSpec(_Strict):
    v_min_pu: float = 0.95
    v_max_pu: float = 1.05
    loading_max_percent: float = 100.0
    p_head_max_mw: float | None = None


class PowerFlowSpec(_Strict):
    engine: Literal["pandapower", "fast"] = "pandapower"


class NetworkSpec(_Strict):
    """The linearization handed to controllers (Observation.sensitivities), recomputed every ``refresh``.

    ``monitored_buses``: "all", "assets" (buses with a DER plus the feeder's end buses — the ones that can
    bind) or a list of bus indices. Branch rows are every line and trafo.
    """

    sensitivities: bool = False
    refresh: str = "15min"
    monitored_buses: Literal["all", "assets"] | tuple[int, ...] = "assets"

    @field_validator("refresh")
    @classmethod
    def _refresh(cls, v: str) -> str:
        _timedelta(v, key="network.refresh")
        return v


class ForecastSpec(_Strict):
    """What controllers are told about the horizon (the physics always follows the data).

    ``perfect``: the replayed data itself (the default for studies). ``persistence``: the last measured
    interval repeated over the horizon. ``noisy``: the data times (1 + e), e ~ N(0, ``noise``) drawn per
    interval, element and lead from the run's seed — the same draws for every policy.
    """

    kind: Literal["perfect", "persistence", "noisy"] = "perfect"
    noise: float = Field(default=0.1, ge=0, le=1)


class ControllerEntry(_Strict):
    """A policy in the comparison: a display name and a ``"package.module:Class"`` plug-in target.

    ``mode`` says where decisions are made and what they can see:
    ``ideal`` — one controller with perfect, instant information (reference; no comms model);
    ``central`` — SCADA: one controller at the control centre, seeing only telemetry that reached it over
    the backhaul, its setpoints reaching only reachable devices;
    ``agents`` — DePIN: one Agent per participant on its premises, coordinating over the mesh.
    """

    name: str
    target: str
    mode: Literal["ideal", "central", "agents"] = "ideal"
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("target")
    @classmethod
    def _target_form(cls, v: str) -> str:
        module, sep, attr = v.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"controllers.target={v!r} must look like 'package.module:Class'")
        return v


class LinkModel(_Strict):
    latency: str = "1s"
    loss: float = Field(default=0.0, ge=0, lt=1)

    @field_validator("latency")
    @classmethod
    def _lat(cls, v: str) -> str:
        td = pd.Timedelta(v) if isinstance(v, str) else None
        if td is None or pd.isna(td) or td < pd.Timedelta(0):
            raise ValueError(f"latency={v!r} must be a non-negative duration like '200ms'")
        return v


class CommsSpec(_Strict):
    """Links and coordination budget. A round lasts ``round_period``; a flooded mesh message travels as
    many hops per round as ``round_period // mesh.latency``."""

    backhaul: LinkModel = Field(default_factory=lambda: LinkModel(latency="2s"))
    mesh: LinkModel = Field(default_factory=lambda: LinkModel(latency="100ms"))
    rounds: int = Field(default=20, ge=1, le=1000)
    round_period: str = "2s"
    mesh_hops: int = Field(default=2, ge=1, description="participants this many feeder hops apart are mesh neighbours")


class FaultSpec(_Strict):
    """A scheduled fault over [start, end). ``participants`` names them; ``share`` picks that fraction by seed."""

    kind: Literal["control_centre_outage", "backhaul_cut", "participant_dropout", "message_loss", "false_telemetry"]
    start: str
    end: str
    participants: tuple[str, ...] = ()
    share: float | None = Field(default=None, gt=0, le=1)
    loss: float = Field(default=0.0, ge=0, lt=1)
    scale: float = 1.0

    @property
    def start_utc(self) -> pd.Timestamp:
        return _utc(self.start, key="faults.start")

    @property
    def end_utc(self) -> pd.Timestamp:
        return _utc(self.end, key="faults.end")

    @model_validator(mode="after")
    def _window(self) -> FaultSpec:
        start, end = _utc(self.start, key="faults.start"), _utc(self.end, key="faults.end")
        if end <= start:
            raise ValueError(f"faults.end={self.end!r} must be after faults.start={self.start!r}")
        if self.kind == "false_telemetry" and not self.participants and self.share is None:
            raise ValueError("faults.participants=[]: false_telemetry needs participants or share")
        return self


class Scenario(_Strict):
    """A validated scenario. Durations are ``pd.Timedelta``; times are UTC ``pd.Timestamp``."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str = "scenario"
    seed: int = 0
    feeder: str
    start: pd.Timestamp
    end: pd.Timestamp
    step: pd.Timedelta = pd.Timedelta("15min")
    horizon: pd.Timedelta = pd.Timedelta("24h")
    setpoint_ttl: pd.Timedelta = pd.Timedelta("30min")
    #: How often the controllers decide (and agents coordinate); None = every step. Between decisions
    #: nothing is exchanged and each device follows the schedule it last received, until its setpoint_ttl.
    decision_period: pd.Timedelta | None = None
    fleet: FleetSpec = Field(default_factory=FleetSpec)
    telemetry: TelemetrySpec = Field(default_factory=TelemetrySpec)
    tariff: TariffSpec = Field(default_factory=TariffSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    power_flow: PowerFlowSpec = Field(default_factory=PowerFlowSpec)
    comms: CommsSpec = Field(default_factory=CommsSpec)
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    forecast: ForecastSpec = Field(default_factory=ForecastSpec)
    faults: tuple[FaultSpec, ...] = ()
    #: The ``[settlement]`` table (contracts, DR events, communities, reward pools); see
    #: twin/settlement/example_settlement.toml. Validated here, parsed again by twin.settlement.
    settlement: dict[str, Any] | None = None
    controllers: tuple[ControllerEntry, ...]
    #: Folder of the scenario file, so relative paths inside it resolve from there.
    base_dir: Path = Path(".")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _ts(cls, v: Any, info: Any) -> pd.Timestamp:
        return _utc(v, key=info.field_name)

    @field_validator("step", "horizon", "setpoint_ttl", mode="before")
    @classmethod
    def _td(cls, v: Any, info: Any) -> pd.Timedelta:
        return _timedelta(v, key=info.field_name)

    @field_validator("decision_period", mode="before")
    @classmethod
    def _optional_td(cls, v: Any, info: Any) -> pd.Timedelta | None:
        return None if v is None else _timedelta(v, key=info.field_name)

    @field_validator("controllers")
    @classmethod
    def _unique_names(cls, v: tuple[ControllerEntry, ...]) -> tuple[ControllerEntry, ...]:
        if not v:
            raise ValueError("controllers: at least one [[controllers]] entry is needed")
        names = [c.name for c in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"controllers.name={dupes[0]!r} is used twice; names must be unique")
        return v

    @field_validator("settlement")
    @classmethod
    def _settlement(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            from twin.settlement import SettlementConfig

            SettlementConfig.from_mapping(v)  # raises ContractError (a ValueError) naming field and value
        return v

    def settlement_config(self) -> Any:
        """The parsed settlement configuration, or None when the scenario settles nothing."""
        from twin.settlement import SettlementConfig

        return SettlementConfig.from_mapping(self.settlement) if self.settlement is not None else None

    @model_validator(mode="after")
    def _period(self) -> Scenario:
        if self.end <= self.start:
            raise ValueError(f"end={self.end.isoformat()!r} must be after start={self.start.isoformat()!r}")
        if (self.end - self.start) % self.step != pd.Timedelta(0):
            raise ValueError(f"end - start = {self.end - self.start} is not a whole number of step={self.step}")
        if self.horizon < self.step:
            raise ValueError(f"horizon={self.horizon} is shorter than step={self.step}")
        period = self.decision_period
        if period is not None:
            if period < self.step or period % self.step != pd.Timedelta(0):
                raise ValueError(f"decision_period={period} is not a whole number of step={self.step}")
            if period > self.horizon:
                raise ValueError(f"decision_period={period} is longer than horizon={self.horizon}: the schedules "
                                 "would run out before the next decision")
            if period > self.setpoint_ttl:
                raise ValueError(f"decision_period={period} is longer than setpoint_ttl={self.setpoint_ttl}: devices "
                                 "would drop their schedule before the next decision; raise setpoint_ttl")
        return self

    @property
    def times(self) -> pd.DatetimeIndex:
        """Interval starts of the run, ``[start, end)``."""
        return pd.date_range(self.start, self.end, freq=self.step, inclusive="left")

    @property
    def horizon_steps(self) -> int:
        return int(self.horizon / self.step)

    def is_decision_time(self, time: pd.Timestamp) -> bool:
        """Whether the controllers decide at the start of this interval (always, without a decision_period)."""
        return self.decision_period is None or (time - self.start) % self.decision_period == pd.Timedelta(0)

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.base_dir / p

    def to_toml_dict(self) -> dict[str, Any]:
        """A plain dict that reproduces this scenario (for run metadata)."""
        data = self.model_dump(mode="json", exclude={"base_dir"})
        for key in ("start", "end"):
            data[key] = getattr(self, key).isoformat()
        for key in ("step", "horizon", "setpoint_ttl", "decision_period"):
            data[key] = str(getattr(self, key))
        if self.decision_period is None:
            del data["decision_period"]  # TOML has no null: absent means every step
        return data


def _format_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid scenario"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {key}: {msg}{shown}")
    return "\n".join(lines)


def parse_scenario(data: dict[str, Any], *, base_dir: Path = Path("."), source: str = "scenario") -> Scenario:
    try:
        return Scenario.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        raise ScenarioError(_format_error(exc, source)) from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario TOML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario file ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML ({exc})") from None
    return parse_scenario(data, base_dir=path.parent, source=str(path))


def demo_scenario_path() -> Path:
    """The embedded default scenario shipped inside the package."""
    return Path(str(resources.files("twin").joinpath("scenarios/demo.toml")))
