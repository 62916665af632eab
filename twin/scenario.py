"""Scenario files: one TOML document says which feeder, fleet, data, period, controllers and seed a run uses.

Owns parsing and the static validation (pydantic); errors name the key and the value (``ScenarioError``):
durations are strings with a unit (a bare number gets a hint), NaN and infinity are refused in every number
(controller kwargs and the settlement table included), ranges that must be ordered are (voltage band,
period, faults and DR events inside it, a bounded horizon). Checks that need the feeder, the files or the
plug-ins are ``twin.preflight``'s. The embedded default scenario (``gridtwin demo``) ships as package data,
so it runs with no file and no server.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from twin.names import check_policy_names, check_run_name

__all__ = ["CommsSpec", "ControllerEntry", "FaultSpec", "LiveSpec", "MAX_HORIZON", "MAX_INTERVALS", "OpenAdrSpec",
           "Scenario", "ScenarioError",
           "demo_scenario_path", "format_duration", "load_scenario", "parse_scenario"]

#: The longest look-ahead (and setpoint lifetime) a scenario may ask for: a week. Longer horizons build
#: optimization problems and forecast windows nobody can solve or hold in memory.
MAX_HORIZON = pd.Timedelta("7D")
#: The most intervals one run may have (about two years at 1 minute, or 28 years at 15 minutes).
MAX_INTERVALS = 1_000_000
#: The profile data's own resolution: a step must divide it or be a whole multiple of it.
DATA_STEP = pd.Timedelta("15min")
_HAS_UNIT = re.compile(r"[A-Za-z]")
_ISO_DATE = re.compile(r"^\s*\d{4}-\d{2}-\d{2}")


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the key and the offending value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _number(value: Any) -> Any:
    """A TOML number for a float field: booleans and text are refused (pydantic would read them as 1.0 / 1.5)."""
    if isinstance(value, bool) or isinstance(value, str):
        raise ValueError(f"{value!r} is not a number")
    return value


def _integer(value: Any) -> Any:
    """A TOML integer: booleans, floats and text are refused (pydantic would read True as 1 and 2.0 as 2)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    return value


Number = Annotated[float, BeforeValidator(_number)]
Integer = Annotated[int, BeforeValidator(_integer)]


def first_non_finite(value: Any, path: str = "") -> tuple[str, float] | None:
    """The dotted path and value of the first NaN or infinite float inside ``value`` (dicts, lists), if any."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, Mapping):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for where, item in items:
        found = first_non_finite(item, where)
        if found is not None:
            return found
    return None


def _finite_inside(value: Any) -> Any:
    found = first_non_finite(value)
    if found is not None:
        where, number = found
        raise ValueError(f"{where or 'value'} = {number!r} is not a finite number")
    return value


def format_duration(td: object) -> str:
    """'15min' rather than pandas' '0 days 00:15:00' (whole days, hours, minutes or seconds)."""
    seconds = int(pd.Timedelta(td).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


#: The unit a bare number most likely meant, for the hint (``step = 15`` → write "15min").
_UNIT_HINT = {"step": "min", "horizon": "h", "setpoint_ttl": "min", "decision_period": "min", "refresh": "min",
              "round_period": "s", "latency": "ms"}


def _duration(value: Any, *, key: str, allow_zero: bool = False) -> pd.Timedelta:
    """A duration written as a string with a unit ("15min", "24h", "200ms"); a bare number gets a hint."""
    if isinstance(value, pd.Timedelta) and not pd.isna(value):
        td = value
    else:
        unit = _UNIT_HINT.get(key.rsplit(".", 1)[-1], "min")
        if isinstance(value, bool) or not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                raise ValueError(f"{value!r} is not a duration; write \"{value:g}{unit}\"")
            raise ValueError(f"{value!r} is not a duration like \"15min\" or \"24h\"")
        if not _HAS_UNIT.search(value):
            raise ValueError(f"{value!r} has no unit; write \"{value.strip()}{unit}\"")
        try:
            td = pd.Timedelta(value)
        except (ValueError, TypeError, OverflowError):
            raise ValueError(f"{value!r} is not a duration like \"15min\" or \"24h\"") from None
        if pd.isna(td):
            raise ValueError(f"{value!r} is not a duration like \"15min\" or \"24h\"")
    if td < pd.Timedelta(0) or (td == pd.Timedelta(0) and not allow_zero):
        raise ValueError(f"{value!r} must be a {'non-negative' if allow_zero else 'positive'} duration")
    return td


def _timedelta(value: Any, *, key: str) -> pd.Timedelta:
    return _duration(value, key=key)


def _utc(value: Any, *, key: str) -> pd.Timestamp:
    """A UTC timestamp from ISO 8601 text or a TOML date-time (no offset = UTC)."""
    if isinstance(value, pd.Timestamp):
        ts = value
    elif isinstance(value, (datetime, date)):
        ts = pd.Timestamp(value)
    elif isinstance(value, str) and _ISO_DATE.match(value):
        try:
            ts = pd.Timestamp(value)
        except (ValueError, TypeError, OverflowError):
            raise ValueError(f"{value!r} is not a timestamp like '2016-06-06T00:00:00Z'") from None
    else:
        raise ValueError(f"{value!r} is not a timestamp like '2016-06-06T00:00:00Z'")
    if pd.isna(ts):
        raise ValueError(f"{value!r} is not a timestamp like '2016-06-06T00:00:00Z'")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


class FleetSpec(_Strict):
    """Either a CSV asset table or seeded placement from penetration levels."""

    csv: str | None = None
    pv_penetration: Number = Field(default=0.5, ge=0, le=100)
    battery_share: Number = Field(default=0.3, ge=0, le=1)
    ev_share: Number = Field(default=0.3, ge=0, le=1)
    flex_share: Number = Field(default=0.2, ge=0, le=1)


class TelemetrySpec(_Strict):
    """Replay source: the feeder's own profiles (SimBench / synthetic) or a canonical telemetry file.

    ``unknown_devices``: rows of devices that are neither a feeder element nor a fleet asset are an error
    (``"error"``, the default) or are left out and counted (``"ignore"``).
    """

    source: Literal["profiles", "file"] = "profiles"
    path: str | None = None
    unknown_devices: Literal["error", "ignore"] = "error"

    @model_validator(mode="after")
    def _path_for_file(self) -> TelemetrySpec:
        if self.source == "file" and not self.path:
            raise ValueError("telemetry.path is required when telemetry.source = 'file'")
        return self


class TariffSpec(_Strict):
    """Time-of-use energy price (EUR/MWh) for imports, a flat feed-in price for exports."""

    offpeak_eur_per_mwh: Number = 180.0
    peak_eur_per_mwh: Number = 400.0
    peak_hours: tuple[Integer, Integer] = (17, 21)
    feed_in_eur_per_mwh: Number = 60.0
    demand_charge_eur_per_mw: Number = Field(default=0.0, ge=0)

    @field_validator("peak_hours")
    @classmethod
    def _hours(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not (0 <= v[0] < v[1] <= 24):
            raise ValueError(f"tariff.peak_hours={list(v)!r} must be [start, end) hours with 0 <= start < end <= 24")
        return v


class LimitsSpec(_Strict):
    v_min_pu: Number = Field(default=0.95, gt=0, lt=2)
    v_max_pu: Number = Field(default=1.05, gt=0, lt=2)
    loading_max_percent: Number = Field(default=100.0, gt=0)
    p_head_max_mw: Number | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _band(self) -> LimitsSpec:
        if not self.v_min_pu < self.v_max_pu:
            raise ValueError(f"limits.v_min_pu={self.v_min_pu!r} must be below limits.v_max_pu={self.v_max_pu!r}")
        return self


class PowerFlowSpec(_Strict):
    """``engine``: pandapower (the model of record) or the fast path. ``phases``: ``balanced`` (positive
    sequence, as before) or ``three_phase`` (every load and asset on its phase; twin.grid.three_phase and
    twin.grid.fast3ph; the phase allocation and any assumed zero-sequence data go in the run's metadata)."""

    engine: Literal["pandapower", "fast"] = "pandapower"
    phases: Literal["balanced", "three_phase"] = "balanced"


class NetworkSpec(_Strict):
    """The linearization handed to controllers (Observation.sensitivities), recomputed every ``refresh``.

    ``monitored_buses``: "all", "assets" (buses with a DER plus the feeder's end buses — the ones that can
    bind) or a list of bus indices. Branch rows are every line and trafo.
    """

    sensitivities: bool = False
    refresh: str = "15min"
    monitored_buses: Literal["all", "assets"] | tuple[Integer, ...] = "assets"

    @field_validator("refresh", mode="before")
    @classmethod
    def _refresh(cls, v: Any) -> str:
        _duration(v, key="network.refresh")
        return v


class ForecastSpec(_Strict):
    """What controllers are told about the horizon (the physics always follows the data).

    ``perfect``: the replayed data itself (the default for studies). ``persistence``: the last measured
    interval repeated over the horizon. ``noisy``: the data times (1 + e), e ~ N(0, ``noise``) drawn per
    interval, element and lead from the run's seed — the same draws for every policy.
    """

    kind: Literal["perfect", "persistence", "noisy"] = "perfect"
    noise: Number = Field(default=0.1, ge=0, le=1)


class ControllerEntry(_Strict):
    """A policy in the comparison: a display name and a ``"package.module:Class"`` plug-in target.

    ``mode`` says where decisions are made and what they can see:
    ``ideal`` — one controller with perfect, instant information (reference; no comms model);
    ``central`` — SCADA: one controller at the control centre, seeing only telemetry that reached it over
    the backhaul, its setpoints reaching only reachable devices;
    ``agents`` — DePIN: one Agent per participant on its premises, coordinating over the mesh.
    """

    name: str = Field(min_length=1)
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

    @field_validator("kwargs")
    @classmethod
    def _finite_kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _finite_inside(v)


class LinkModel(_Strict):
    latency: str = "1s"
    loss: Number = Field(default=0.0, ge=0, lt=1)

    @field_validator("latency", mode="before")
    @classmethod
    def _lat(cls, v: Any) -> str:
        _duration(v, key="latency", allow_zero=True)
        return v


class CommsSpec(_Strict):
    """Links and coordination budget. A round lasts ``round_period``; a mesh message travels one hop, to a
    participant within ``mesh_hops`` feeder hops, and arrives in its round if ``mesh.latency`` fits in it."""

    backhaul: LinkModel = Field(default_factory=lambda: LinkModel(latency="2s"))
    mesh: LinkModel = Field(default_factory=lambda: LinkModel(latency="100ms"))
    rounds: Integer = Field(default=20, ge=1, le=1000)
    round_period: str = "2s"
    mesh_hops: Integer = Field(default=2, ge=1, le=1000,
                               description="participants this many feeder hops apart are mesh neighbours")

    @field_validator("round_period", mode="before")
    @classmethod
    def _round_period(cls, v: Any) -> str:
        _duration(v, key="comms.round_period")
        return v


class FaultSpec(_Strict):
    """A scheduled fault over [start, end). ``participants`` names them; ``share`` picks that fraction by seed.
    ``policies`` limits it to those policies' twins (default: every policy), so a policy can run beside a copy of
    itself under the fault and the report shows what the fault cost."""

    kind: Literal["control_centre_outage", "backhaul_cut", "participant_dropout", "message_loss", "false_telemetry"]
    start: str
    end: str
    participants: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()
    share: Number | None = Field(default=None, gt=0, le=1)
    loss: Number = Field(default=0.0, ge=0, lt=1)
    scale: Number = Field(default=1.0, ge=0)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _time_text(cls, v: Any, info: Any) -> str:
        ts = _utc(v, key=f"faults.{info.field_name}")
        return v if isinstance(v, str) else ts.isoformat()

    @property
    def start_utc(self) -> pd.Timestamp:
        return _utc(self.start, key="faults.start")

    @property
    def end_utc(self) -> pd.Timestamp:
        return _utc(self.end, key="faults.end")

    @model_validator(mode="after")
    def _window(self) -> FaultSpec:
        if self.end_utc <= self.start_utc:
            raise ValueError(f"faults.end={self.end!r} must be after faults.start={self.start!r}")
        if self.kind == "false_telemetry" and not self.participants and self.share is None:
            raise ValueError("faults.participants=[]: false_telemetry needs participants or share")
        return self


class OpenAdrSpec(_Strict):
    """``[live.openadr]``: the live twin runs an OpenADR 2.0b VTN and each participant's simulator a VEN.

    ``opt_out``: participants whose simulated VEN opts out of DR events (the others opt in); ``notice``: how
    long after the operator calls a DR event it starts (rounded up to the step); ``level``: the SIMPLE signal
    level sent; ``prices``: publish the tariff as ELECTRICITY_PRICE signals."""

    opt_out: tuple[str, ...] = ()
    notice: str = "15min"
    level: Number = Field(default=1.0, ge=0, le=3)
    prices: bool = True

    @field_validator("notice", mode="before")
    @classmethod
    def _notice(cls, v: Any) -> str:
        _duration(v, key="live.openadr.notice", allow_zero=True)
        return v


#: Which transports a device kind may use in a live run (native-load meters always speak MQTT).
LIVE_TRANSPORTS: dict[str, tuple[str, ...]] = {
    "battery": ("mqtt", "openadr"), "ev_charger": ("mqtt", "ocpp", "openadr"), "pv": ("mqtt", "openadr"),
    "flex_load": ("mqtt", "openadr"),
}


class LiveSpec(_Strict):
    """``[live]``: how the field talks to a live twin. ``transports`` names per device kind the protocol its
    devices (and the field simulator) use: ``mqtt`` (the default), ``ocpp`` (EV chargers, OCPP 2.0.1 to the
    twin's CSMS) or ``openadr`` (telemetry reported and setpoints received by the participant's VEN)."""

    transports: dict[str, str] = Field(default_factory=dict)
    openadr: OpenAdrSpec | None = None

    @field_validator("transports")
    @classmethod
    def _known(cls, v: dict[str, str]) -> dict[str, str]:
        for kind, transport in v.items():
            if kind not in LIVE_TRANSPORTS:
                raise ValueError(f"live.transports.{kind}: not a device kind; expected one of "
                                 f"{', '.join(LIVE_TRANSPORTS)}")
            if transport not in LIVE_TRANSPORTS[kind]:
                raise ValueError(f"live.transports.{kind} = {transport!r}: a {kind} speaks one of "
                                 f"{', '.join(LIVE_TRANSPORTS[kind])}")
        return v

    def transport_of(self, kind: str) -> str:
        return self.transports.get(str(kind), "mqtt")

    @property
    def uses_openadr(self) -> bool:
        return self.openadr is not None or "openadr" in self.transports.values()

    @property
    def uses_ocpp(self) -> bool:
        return "ocpp" in self.transports.values()

    @property
    def openadr_spec(self) -> OpenAdrSpec:
        return self.openadr if self.openadr is not None else OpenAdrSpec()


class Scenario(_Strict):
    """A validated scenario. Durations are ``pd.Timedelta``; times are UTC ``pd.Timestamp``."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True, allow_inf_nan=False)

    name: str = "scenario"
    seed: Integer = 0
    feeder: str = Field(min_length=1)
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
    #: The ``[live]`` table: per device kind the transport a live run uses (MQTT, OCPP, OpenADR).
    live: LiveSpec = Field(default_factory=LiveSpec)
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
        return _duration(v, key=info.field_name)

    @field_validator("decision_period", mode="before")
    @classmethod
    def _optional_td(cls, v: Any, info: Any) -> pd.Timedelta | None:
        return None if v is None else _duration(v, key=info.field_name)

    @field_validator("step")
    @classmethod
    def _step_on_data_grid(cls, v: pd.Timedelta) -> pd.Timedelta:
        if v > pd.Timedelta("1D") or v < pd.Timedelta("1min") or (DATA_STEP % v and v % DATA_STEP):
            raise ValueError(f"{format_duration(v)!r} must be between 1min and 1d and divide "
                             f"{format_duration(DATA_STEP)} "
                             f"or be a whole multiple of it (the profile data are {format_duration(DATA_STEP)})")
        return v

    @field_validator("horizon", "setpoint_ttl")
    @classmethod
    def _bounded(cls, v: pd.Timedelta, info: Any) -> pd.Timedelta:
        if v > MAX_HORIZON:
            raise ValueError(f"{format_duration(v)!r} is longer than the {format_duration(MAX_HORIZON)} maximum")
        return v

    @field_validator("controllers")
    @classmethod
    def _unique_names(cls, v: tuple[ControllerEntry, ...]) -> tuple[ControllerEntry, ...]:
        if not v:
            raise ValueError("controllers: at least one [[controllers]] entry is needed")
        check_policy_names(c.name for c in v)  # issue 14: each name is its folder: safe, unique, no clash
        return v

    @field_validator("name")
    @classmethod
    def _run_name(cls, v: str) -> str:
        return check_run_name(v)  # issue 14: the name starts the run folder's name

    @field_validator("settlement", mode="before")
    @classmethod
    def _settlement_finite(cls, v: Any) -> Any:
        return _finite_inside(v) if v is not None else v

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
        grid = min(self.step, DATA_STEP)
        if (self.start - self.start.normalize()) % grid != pd.Timedelta(0):
            raise ValueError(f"start={self.start.isoformat()!r} is not on the {format_duration(grid)} grid "
                             f"(interval starts are whole multiples of {format_duration(grid)} from midnight UTC)")
        if (self.end - self.start) % self.step != pd.Timedelta(0):
            raise ValueError(f"end - start = {self.end - self.start} is not a whole number of step={self.step}")
        n = (self.end - self.start) // self.step
        if n > MAX_INTERVALS:
            raise ValueError(f"end - start = {self.end - self.start} is {n:,} intervals of step="
                             f"{format_duration(self.step)}; at most {MAX_INTERVALS:,} are allowed")
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
        names = {c.name for c in self.controllers}
        for i, fault in enumerate(self.faults):
            self._inside_period(f"faults[{i}]", fault.start_utc, fault.end_utc)
            unknown = [p for p in fault.policies if p not in names]
            if unknown:
                raise ValueError(f"faults[{i}].policies: {unknown[0]!r} is not a policy of this scenario "
                                 f"(controllers: {sorted(names)})")
        config = self.settlement_config()
        if config is not None:
            for i, event in enumerate(config.events):
                start, end = pd.Timestamp(event.start).tz_convert("UTC"), pd.Timestamp(event.end).tz_convert("UTC")
                self._inside_period(f"settlement.events[{i}]", start, end)
                for key, ts in (("start", start), ("end", end)):
                    if (ts - self.start) % self.step != pd.Timedelta(0):
                        raise ValueError(f"settlement.events[{i}].{key}={ts.isoformat()!r} is not an interval "
                                         f"boundary of step={format_duration(self.step)} from start="
                                         f"{self.start.isoformat()!r}")
        return self

    def _inside_period(self, key: str, start: pd.Timestamp, end: pd.Timestamp) -> None:
        if start < self.start:
            raise ValueError(f"{key}.start={start.isoformat()!r} is before the run's start={self.start.isoformat()!r}")
        if end > self.end:
            raise ValueError(f"{key}.end={end.isoformat()!r} is after the run's end={self.end.isoformat()!r}")

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
        if self.live == LiveSpec():
            del data["live"]
        elif self.live.openadr is None:
            del data["live"]["openadr"]
        return data


def _location(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as the user writes it: ``controllers[0].target``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _shown(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid scenario"]
    for err in exc.errors():
        key = _location(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if not key:  # a check across keys: its message names them
            lines.append(f"  {msg}")
            continue
        value = err.get("input")
        shown = _shown(value)
        # Our own checks of a table name the offending values themselves; repeating the table adds nothing.
        own_table_check = err["type"] == "value_error" and isinstance(value, Mapping)
        lines.append(f"  {key}: {msg}" + ("" if shown in msg or own_table_check else f" (got {shown})"))
    return "\n".join(lines)


def parse_scenario(data: Mapping[str, Any], *, base_dir: Path = Path("."), source: str = "scenario") -> Scenario:
    """Validate a scenario document (a parsed TOML table); ``ScenarioError`` names each bad key and value."""
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{source}: invalid scenario: expected a table of keys, got {_shown(data)}")
    if "base_dir" in data:
        raise ScenarioError(f"{source}: invalid scenario\n  base_dir: not a scenario key (relative paths resolve "
                            f"from the scenario file's folder) (got {_shown(data['base_dir'])})")
    try:
        return Scenario.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        raise ScenarioError(_format_error(exc, source)) from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario TOML file (UTF-8)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ScenarioError(f"{path}: not UTF-8 text (byte {raw[exc.start]:#04x} on line {line}); save the "
                            "scenario file as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML ({exc})") from None
    return parse_scenario(data, base_dir=path.parent, source=str(path))


def demo_scenario_path() -> Path:
    """The embedded default scenario shipped inside the package."""
    return Path(str(resources.files("twin").joinpath("scenarios/demo.toml")))
