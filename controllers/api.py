"""The controller plug-in contract: what a controller sees (Observation) and returns (Dispatch).

Everything here is plain data. The twin builds observations; controllers are pure functions of them and
*return* a Dispatch, which the engine alone applies (DESIGN.md §4). Sign: load convention everywhere —
positive p_mw is consumption from the grid; a discharging battery or producing PV is negative.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np
import pandas as pd

__all__ = [
    "Agent",
    "AgentMessage",
    "AgentSpec",
    "AssetKind",
    "ASSET_COLUMNS",
    "Controller",
    "ControllerSpec",
    "Dispatch",
    "Forecast",
    "GridSnapshot",
    "NetworkLimits",
    "Observation",
    "Sensitivities",
    "Proposal",
    "check_plugin_kwargs",
    "load_controller",
    "resolve_plugin",
]


class AssetKind(StrEnum):
    PV = "pv"
    BATTERY = "battery"
    EV_CHARGER = "ev_charger"
    FLEX_LOAD = "flex_load"


#: Columns of the static asset table (index: ``asset_id``). Ratings are >= 0; fractions in [0, 1].
#: ``p_max_mw``: rated active power (PV: peak; battery/EV: charge and discharge limit; flex load: max draw).
#: ``e_max_mwh``: storage capacity (battery); 0 for others. ``s_max_mva``: inverter apparent-power rating.
#: ``v2g``: an EV charger that may discharge. ``flex_window``: how long deferred flexible energy may wait.
ASSET_COLUMNS: tuple[str, ...] = (
    "kind",
    "bus",
    "participant_id",
    "p_max_mw",
    "e_max_mwh",
    "eta_charge",
    "eta_discharge",
    "soc_min",
    "soc_max",
    "soc_init",
    "s_max_mva",
    "v2g",
    "flex_window",
)


@dataclass(frozen=True)
class NetworkLimits:
    """Operating limits the controllers should respect (ANSI C84.1 Range A by default)."""

    v_min_pu: float = 0.95
    v_max_pu: float = 1.05
    loading_max_percent: float = 100.0
    #: Feeder-head import limit (MW, load convention); None = no peak limit.
    p_head_max_mw: float | None = None


@dataclass(frozen=True)
class GridSnapshot:
    """The last AC power-flow result the controller may see (index: pandapower bus / branch labels)."""

    time: pd.Timestamp
    vm_pu: pd.Series
    line_loading_percent: pd.Series
    trafo_loading_percent: pd.Series
    p_head_mw: float
    q_head_mvar: float
    losses_mw: float
    converged: bool


@dataclass(frozen=True)
class Sensitivities:
    """Linearization of the network at the last operating point, computed by the twin from the Jacobian.

    Columns are buses (bus injections in load convention: +1 MW = one more MW consumed at that bus), so a
    controller maps an asset to its column through the asset table's ``bus``. Rows are the monitored buses /
    branches (the ones that can bind). Branch labels are ``"line:<idx>"`` / ``"trafo:<idx>"``.
    """

    vm_pu: pd.Series
    dvm_dp_pu_per_mw: pd.DataFrame
    dvm_dq_pu_per_mvar: pd.DataFrame
    loading_percent: pd.Series
    dloading_dp_percent_per_mw: pd.DataFrame
    #: Bus injections (MW, load convention) at the operating point; the linearization is around these.
    p_bus_mw: pd.Series
    q_bus_mvar: pd.Series


@dataclass(frozen=True)
class Forecast:
    """Exogenous quantities over the horizon ``[time, time + n * step)``; index = interval start (UTC).

    ``base_load_mw``: uncontrolled net load per bus (columns = bus), load convention (feeder PV not in the
    fleet appears negative). ``pv_avail_mw``: available PV power per PV asset (>= 0, generation).
    ``flex_base_mw``: requested draw of each flexible load (>= 0). ``price_eur_per_mwh``: energy price.
    """

    base_load_mw: pd.DataFrame
    pv_avail_mw: pd.DataFrame
    flex_base_mw: pd.DataFrame
    price_eur_per_mwh: pd.Series

    @property
    def index(self) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(self.price_eur_per_mwh.index)


@dataclass(frozen=True)
class Observation:
    """What a controller may see at ``time`` for the interval ``[time, time + step)``.

    ``state`` (index asset_id) holds: ``p_mw`` (last metered power), ``soc_mwh`` (battery), ``ev_connected``,
    ``ev_energy_needed_mwh``, ``ev_departure`` (UTC or NaT), ``flex_backlog_mwh`` (deferred energy still
    owed), ``flex_deadline`` (when that backlog must be served), ``available`` (bool), ``quality``
    (StrEnum value of twin.telemetry.Quality) and ``age_s`` (seconds since the value was measured).
    """

    time: pd.Timestamp
    step: pd.Timedelta
    assets: pd.DataFrame
    state: pd.DataFrame
    forecast: Forecast
    limits: NetworkLimits = field(default_factory=NetworkLimits)
    grid: GridSnapshot | None = None
    sensitivities: Sensitivities | None = None
    #: Free-form signals (e.g. DR events, community prices); controllers may ignore unknown keys.
    signals: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Dispatch:
    """Setpoints for ``[time, time + step)``, MW in load convention, by asset_id.

    An asset absent from ``p_mw`` gets no new setpoint (it holds its last one until that expires).
    ``schedule_mw`` (optional, index asset_id, columns = later period starts on the step grid) goes with the
    setpoint: a device follows it in the following periods until its setpoint expires or a new dispatch
    arrives — what it does between decisions (scenario ``decision_period``) or when the next one is lost.
    Without a schedule a device holds ``p_mw``. ``diagnostics`` is for humans and reports; the engine never
    reads it.
    """

    p_mw: pd.Series
    q_mvar: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))
    diagnostics: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    schedule_mw: pd.DataFrame | None = None

    def schedule_offsets(self, time: pd.Timestamp, step: pd.Timedelta) -> np.ndarray:
        """Periods after ``time`` of each ``schedule_mw`` column (1 = the next interval); ValueError naming the
        column when one is not a later period start on the step grid."""
        if self.schedule_mw is None:
            return np.zeros(0, dtype=int)
        columns = self.schedule_mw.columns
        try:
            delta = (pd.DatetimeIndex(columns) - time).to_numpy()
        except (TypeError, ValueError):
            delta = None
        if delta is not None:
            step_ns = step.value
            ns = delta.astype("timedelta64[ns]").astype(np.int64)
            bad = np.flatnonzero(np.isnat(delta) | (ns <= 0) | (ns % step_ns != 0))
            if not len(bad):
                return ns // step_ns
            column = columns[bad[0]]
        else:  # not comparable with ``time``: name the first column that is not a time, else the first one
            column = next((c for c in columns if not isinstance(c, (pd.Timestamp, np.datetime64))), columns[0])
        raise ValueError(f"schedule_mw column {column!r} is not a period start after {time} on the {step} grid")

    @classmethod
    def empty(cls, **diagnostics: Any) -> Dispatch:
        return cls(p_mw=pd.Series(dtype=float), diagnostics=MappingProxyType(dict(diagnostics)))

    @classmethod
    def from_mapping(
        cls, p_mw: Mapping[str, float], q_mvar: Mapping[str, float] | None = None, **diagnostics: Any
    ) -> Dispatch:
        return cls(
            p_mw=pd.Series(dict(p_mw), dtype=float),
            q_mvar=pd.Series(dict(q_mvar or {}), dtype=float),
            diagnostics=MappingProxyType(dict(diagnostics)),
        )


@dataclass(frozen=True)
class ControllerSpec:
    """What a controller learns once per run in ``reset``: the static assets, the step and the horizon."""

    assets: pd.DataFrame
    step: pd.Timedelta
    horizon: int
    limits: NetworkLimits = field(default_factory=NetworkLimits)
    buses: tuple[int, ...] = ()


@runtime_checkable
class Controller(Protocol):
    """The plug-in protocol. ``reset`` once per run (build optimization problems here), ``act`` per interval."""

    def reset(self, spec: ControllerSpec, *, seed: int) -> None: ...

    def act(self, observation: Observation) -> Dispatch: ...


@dataclass(frozen=True)
class AgentMessage:
    """A message between edge agents over the mesh, to one of the sender's neighbours (``AgentSpec.neighbours``)
    or, with ``recipient="*"``, to all of them. Messages travel one hop; nothing is relayed or flooded.

    The payload should hold only what the participant is willing to share (e.g. a proposed net-load
    trajectory), never raw telemetry; the twin counts its bytes.
    """

    sender: str
    recipient: str
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class Proposal:
    """An agent's answer in one coordination round: its dispatch so far and the messages it sends."""

    dispatch: Dispatch
    outbox: tuple[AgentMessage, ...] = ()


@dataclass(frozen=True)
class AgentSpec:
    """What an edge agent learns once per run: its own assets and place in the mesh, nothing else."""

    participant_id: str
    assets: pd.DataFrame
    step: pd.Timedelta
    horizon: int
    neighbours: tuple[str, ...]
    participants: tuple[str, ...]
    rounds: int
    limits: NetworkLimits = field(default_factory=NetworkLimits)
    #: Number of assets in the whole fleet: public registry data (not whose they are or what they do),
    #: which consensus algorithms need to average over everyone.
    fleet_size: int = 0


@runtime_checkable
class Agent(Protocol):
    """A participant-owned edge agent (the DePIN policy). One instance per participant.

    Each interval the engine calls ``propose`` for ``rounds`` coordination rounds; the observation holds
    only what the participant can see (its own assets, its own load as ``forecast.base_load_mw``), and the
    inbox what reached it over the mesh. The last round's dispatch applies.
    """

    def reset(self, spec: AgentSpec, *, seed: int) -> None: ...

    def propose(self, observation: Observation, inbox: tuple[AgentMessage, ...], *, round_index: int) -> Proposal: ...


#: Protocol -> (alternative sets of methods besides ``reset``, what to call it in an error). "agent" is what
#: mode = "agents" runs: one Agent per participant, or one AgentNetwork simulating all participants and grid
#: nodes (``controllers.coordination``).
_PROTOCOLS = {
    "controller": ((("act",),), "reset(spec, *, seed) + act(observation) (a Controller)"),
    "agent": ((("propose",), ("begin", "coordinate", "dispatch")),
              "reset(spec, *, seed) + propose(observation, inbox, *, round_index) (an Agent) or reset + begin + "
              "coordinate + dispatch (an AgentNetwork)"),
}


def resolve_plugin(target: str, *, protocol: str | None = None) -> type:
    """The class a plug-in target ``"package.module:Class"`` names, checked without calling anything.

    Importing the module runs its top-level code, as any plug-in import does; nothing the target names is
    called. The target must be a class (not a function, an instance or a builtin such as ``os:system``)
    whose methods implement the Controller protocol (``protocol="controller"``), the Agent protocol
    (``"agent"``) or either (None). Raises ValueError naming the target.
    """
    if not isinstance(target, str):
        raise ValueError(f"controller target {target!r}: expected a string 'package.module:Class'")
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"controller {target!r}: expected the form 'package.module:Class'")
    if not attr.isidentifier() or not all(part.isidentifier() for part in module_name.split(".")):
        raise ValueError(f"controller {target!r}: {module_name!r} and {attr!r} must be dotted Python names")
    if protocol is not None and protocol not in _PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: expected one of {sorted(_PROTOCOLS)} or None")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"controller {target!r}: cannot import module {module_name!r} ({exc})") from exc
    # getattr_static: no property, descriptor or module __getattr__ of the plug-in runs while we look.
    try:
        found = inspect.getattr_static(module, attr)
    except AttributeError:
        raise ValueError(f"controller {target!r}: module {module_name!r} has no attribute {attr!r}") from None
    wanted = [protocol] if protocol is not None else list(_PROTOCOLS)
    expected = " or ".join(_PROTOCOLS[p][1] for p in wanted)
    if not inspect.isclass(found):
        raise ValueError(f"controller {target!r}: {attr!r} is a {type(found).__name__}, not a class; a plug-in "
                         f"target must name a class implementing {expected}")

    def has(name: str) -> bool:
        try:
            member = inspect.getattr_static(found, name)
        except AttributeError:
            return False
        return callable(member) or isinstance(member, (staticmethod, classmethod))

    if not has("reset") or not any(all(has(m) for m in methods) for p in wanted for methods in _PROTOCOLS[p][0]):
        raise ValueError(f"controller {target!r}: class {found.__name__} does not implement {expected}")
    return found


def check_plugin_kwargs(cls: type, kwargs: Mapping[str, Any], *, target: str) -> None:
    """Raise ValueError unless ``cls(**kwargs)`` binds (names every unexpected or missing argument)."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return  # no introspectable signature (a C extension type): the call itself will tell
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        accepted = [n for n, p in signature.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        raise ValueError(f"controller {target!r}: bad keyword arguments {sorted(kwargs)} ({exc}); "
                         f"{cls.__name__} accepts {accepted}") from None


def load_controller(target: str, **kwargs: Any) -> Any:
    """Instantiate a plug-in (Controller or Agent) named ``"package.module:Class"`` with keyword arguments.

    The target is resolved and checked first (:func:`resolve_plugin`: a class implementing a protocol) and
    the keyword arguments are bound to its signature; only then is the class called.
    """
    cls = resolve_plugin(target)
    check_plugin_kwargs(cls, kwargs, target=target)
    try:
        controller = cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"controller {target!r}: bad keyword arguments {sorted(kwargs)} ({exc})") from exc
    # The instance must still have the methods its class promised (a __new__ may return anything).
    if not callable(getattr(controller, "reset", None)) or not any(
            all(callable(getattr(controller, m, None)) for m in methods)
            for p in _PROTOCOLS.values() for methods in p[0]):
        expected = " or ".join(p[1] for p in _PROTOCOLS.values())
        raise ValueError(f"controller {target!r}: the object it built does not implement {expected}")
    return controller
