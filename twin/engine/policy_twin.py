"""One policy's copy of the twin and what one interval does to it.

Per interval: telemetry over the comms model → observation(s) → decide (one ideal or central controller, or
coordination rounds of edge agents) → setpoints reach the devices they can reach (held until they expire, else
the autonomous default with volt-var) → device physics → AC power flow → settlement. Controllers only
*return* dispatches; this module alone mutates a twin's state (DESIGN.md §2, §4, §6); ``twin.engine.lockstep``
sequences the policies.
"""

from __future__ import annotations

import dataclasses
import time as wallclock
import weakref
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numba
import numpy as np
import pandas as pd

from controllers.api import (
    Agent,
    AgentMessage,
    AgentSpec,
    AssetKind,
    Controller,
    ControllerSpec,
    Dispatch,
    Forecast,
    GridSnapshot,
    NetworkLimits,
    Observation,
    Sensitivities,
    load_controller,
)
from controllers.volt_var import VOLT_VAR_Q_SHARE, VOLT_VAR_V_PU, volt_var_q_share
from twin.commands import CommandKind, OperatorCommand
from twin.comms.links import CommsModel, Fault, FaultKind, LinkSpec
from twin.comms.mesh import mesh_neighbours
from twin.devices.physics import FleetPhysics, IntervalOutcome, autonomous_kernel, state_frame_of
from twin.engine.agent_network import AgentNetworkRunner
from twin.engine.agent_pool import AgentSetup, DaskAgents, LocalAgents, start_agents
from twin.engine.input_arrays import InputArrays
from twin.engine.observe import LazyObservation
from twin.grid.powerflow import GridModel, PowerFlowResult
from twin.grid.verification import participant_buses_of, reported_bus_injections
from twin.inputs import RunInputs, derive_seed
from twin.records.recorder import StepRecord
from twin.scenario import ControllerEntry, Scenario
from twin.engine.metering import PolicySettlement

__all__ = ["IntervalParts", "PolicyTwin", "build_comms", "monitored_buses"]

#: Bytes of one telemetry report of one asset (p, q, SOC, registers, seq, ts, signature) on the wire.
TELEMETRY_BYTES_PER_ASSET = 160
#: Bytes of one setpoint command (asset id, p, q, expiry, signature).
SETPOINT_BYTES = 96
#: Each further period of a schedule sent with a setpoint (a float and nothing else: the grid is implied).
SCHEDULE_VALUE_BYTES = 8




def monitored_buses(scenario: Scenario, inputs: RunInputs) -> list[int] | None:
    """Rows of the voltage linearization: all buses, or those that can bind (DER buses and feeder ends)."""
    choice = scenario.network.monitored_buses
    if choice == "all":
        return None
    if choice != "assets":
        return [int(b) for b in choice]
    net = inputs.net
    ends = pd.concat([net.line.from_bus, net.line.to_bus]).value_counts()
    leaves = ends.index[ends == 1]
    return sorted({int(b) for b in inputs.assets["bus"]} | {int(b) for b in leaves})


def build_comms(scenario: Scenario, inputs: RunInputs, *, policy: str) -> CommsModel:
    """The comms model of one policy's twin, with the scenario's faults resolved to participants."""
    participants = sorted(inputs.assets["participant_id"].astype(str).unique())
    rng = np.random.default_rng(derive_seed(scenario.seed, "faults"))
    faults = []
    for spec in scenario.faults:
        chosen = set(spec.participants)
        unknown = chosen - set(participants)
        if unknown:
            raise ValueError(f"faults.participants: unknown participant_id {sorted(unknown)[0]!r}")
        if spec.share is not None:  # drawn for every policy, so the same participants fail in each twin
            k = max(1, int(round(spec.share * len(participants))))
            chosen |= set(rng.choice(participants, size=k, replace=False).tolist())
        if spec.policies and policy not in spec.policies:
            continue
        faults.append(Fault(kind=FaultKind(spec.kind), start=spec.start_utc, end=spec.end_utc,
                            participants=frozenset(chosen), loss=spec.loss, scale=spec.scale))
    c = scenario.comms
    return CommsModel(
        participants=participants,
        neighbours=_mesh_of(inputs, c.mesh_hops),
        backhaul=LinkSpec(pd.Timedelta(c.backhaul.latency), c.backhaul.loss),
        mesh=LinkSpec(pd.Timedelta(c.mesh.latency), c.mesh.loss),
        faults=faults,
        seed=derive_seed(scenario.seed, f"comms:{policy}"),
    )


#: Mesh neighbours by run inputs and hops (every policy of a run shares its feeder's mesh; a BFS per DER bus).
_MESHES: dict[tuple[int, int], tuple[weakref.ref, dict[str, tuple[str, ...]]]] = {}


def _mesh_of(inputs: RunInputs, hops: int) -> dict[str, tuple[str, ...]]:
    """``mesh_neighbours`` of the run's feeder and fleet, computed once while ``inputs`` lives (read-only use)."""
    key = (id(inputs), hops)
    hit = _MESHES.get(key)
    if hit is not None and hit[0]() is inputs:
        return hit[1]
    neighbours = mesh_neighbours(inputs.net, inputs.assets, hops=hops)
    _MESHES[key] = (weakref.ref(inputs, lambda _, key=key: _MESHES.pop(key, None)), neighbours)
    return neighbours


#: The read-only per-inputs parts of a policy's twin (``_static_of``), by run inputs.
_STATICS: dict[int, tuple[weakref.ref, dict[str, Any]]] = {}


def _static_of(inputs: RunInputs, grid: GridModel) -> dict[str, Any]:
    """The parts of a ``PolicyTwin`` that depend only on ``inputs`` (its assets and feeder), built once while
    ``inputs`` lives: each participant's asset rows, the backhaul messages' ids and sizes, the inverters and
    the assets' bus positions. Shared by every twin of those inputs; nothing writes to them."""
    key = id(inputs)
    hit = _STATICS.get(key)
    if hit is not None and hit[0]() is inputs:
        return hit[1]
    assets = inputs.assets
    ids = assets.index
    static: dict[str, Any] = {}
    participant_of = static["participant_of"] = assets["participant_id"].astype(str)
    # Each participant's asset rows (ascending), participants in order of first appearance: one stable sort,
    # not a comparison of the whole column per participant (that was quadratic: minutes at 5,000 participants).
    codes, uniques = pd.factorize(participant_of)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    rows_of = static["_rows_of_participant"] = {str(pid): order[bounds[k]:bounds[k + 1]]
                                                for k, pid in enumerate(uniques)}
    static["_assets_of_participant"] = {pid: ids[rows] for pid, rows in rows_of.items()}
    participant_index = pd.Index(sorted(rows_of))
    static["_participants_sorted"] = participant_index
    participant_pos = static["_participant_pos"] = participant_index.get_indexer(participant_of.to_numpy())
    # Backhaul messages, one per participant: telemetry in sorted order (as a groupby by participant
    # would), setpoints in order of first appearance (``_first_code`` of each asset row).
    static["_uplink_ids"] = participant_index.to_numpy(dtype=object)
    static["_uplink_bytes"] = TELEMETRY_BYTES_PER_ASSET * np.bincount(participant_pos,
                                                                      minlength=len(participant_index))
    static["_downlink_ids"] = np.array(list(rows_of), dtype=object)
    static["_first_code"] = codes
    kinds = assets["kind"].astype(str)
    inverter = static["_inverter"] = kinds.isin([AssetKind.PV, AssetKind.BATTERY]).to_numpy()
    s_max = static["_s_max"] = assets["s_max_mva"].to_numpy(float)
    bus_pos = grid.labels.bus.get_indexer(assets["bus"].to_numpy())
    static["_asset_bus_pos"] = bus_pos.astype(np.int64)
    static["_no_voltages"] = np.ones(len(grid.labels.bus))
    static["_asset_bus_safe"] = np.maximum(bus_pos, 0)
    static["_asset_bus_unknown"] = bus_pos < 0
    # volt-var injects a share of rated S: load convention Mvar = -share * s_max, inverters only
    static["_volt_var_scale"] = np.where(inverter, -s_max, 0.0)
    _STATICS[key] = (weakref.ref(inputs, lambda _, key=key: _STATICS.pop(key, None)), static)
    return static


#: Each run's fleet physics as built (``FleetPhysics``), by run inputs and step: a twin's is a fresh copy.
_PHYSICS: dict[tuple[int, int], tuple[weakref.ref, FleetPhysics]] = {}


def _physics_of(inputs: RunInputs, step: pd.Timedelta) -> FleetPhysics:
    """A fresh ``FleetPhysics`` of the run's fleet (its own state, the static arrays shared read-only): the
    tables are read once per RunInputs and step, not once per twin."""
    key = (id(inputs), step.value)
    hit = _PHYSICS.get(key)
    if hit is None or hit[0]() is not inputs:
        template = FleetPhysics(inputs.assets, inputs.ev_sessions, step=step)
        hit = _PHYSICS[key] = (weakref.ref(inputs, lambda _, key=key: _PHYSICS.pop(key, None)), template)
    return hit[1].fresh()


_NOT_HELD = np.iinfo(np.int64).min  # held_until of a device that holds nothing
_NO_DIAGNOSTICS = MappingProxyType({})
_NO_ONE: frozenset[str] = frozenset()  # no participant unverified


def _frozen(cls: type, fields: dict[str, Any]) -> Any:
    """An instance of the frozen dataclass ``cls`` whose ``__dict__`` is ``fields`` (every field by name; the dict
    becomes the instance's own), without its generated ``__init__`` (one ``object.__setattr__`` per field) and
    without keyword arguments (packing 17 of them costs more than the record): microseconds per record on the
    per-step path. Each class is built from one call site with fixed keys, so its first record is checked (a
    missing or unknown field is a TypeError there, as the ``__init__`` would raise) and the per-step path pays
    nothing more."""
    if cls not in _CHECKED:
        names = frozenset(f.name for f in dataclasses.fields(cls))
        if fields.keys() != names:
            raise TypeError(f"{cls.__name__}: fields {sorted(set(fields) ^ names)} missing or unknown")
        _CHECKED.add(cls)
    obj = _new(cls)
    _set_attribute(obj, "__dict__", fields)
    return obj


_new, _set_attribute = object.__new__, object.__setattr__


_CHECKED: set[type] = set()


#: An interval's traffic before anything was ever sent (``TrafficCounter.totals`` of an empty counter).
_NO_TRAFFIC = MappingProxyType({"messages": 0, "bytes": 0, "dropped": 0, "central_bytes": 0})


@dataclass(frozen=True)
class IntervalParts:
    """What one interval did up to the power flow: the decision and the devices (arrays in asset order).

    ``q_held`` / ``valid`` keep what the devices' reactive setpoints were made of, so an open-loop replay can
    redo the autonomous inverters' volt-var once the voltages are known (``twin.engine.open_loop``)."""

    time: pd.Timestamp
    row: int
    outcome: IntervalOutcome
    valid: np.ndarray
    q_held: np.ndarray
    dispatch: Dispatch | None
    rounds: int
    online: bool
    compute_s: float
    devices_s: float
    traffic: dict[str, int]
    stage_s: dict[str, float]
    #: The schedules that reached devices this interval (``_hold``): asset positions and their plans.
    held_schedule: tuple[np.ndarray, np.ndarray] | None = None


class PolicyTwin:
    """One policy's copy of the twin: its own grid model, device state, comms, held setpoints and decider.

    Its per-step state is arrays in asset order (held setpoints and schedules, the control centre's view,
    device physics) and the grid model's element order; observations are built from them lazily."""

    def __init__(self, entry: ControllerEntry, inputs: RunInputs, scenario: Scenario, comms: CommsModel) -> None:
        self.name = entry.name
        self.mode = entry.mode
        self.inputs = inputs
        self.scenario = scenario
        self.comms = comms
        self.grid = GridModel(inputs.net, inputs.assets, engine=scenario.power_flow.engine)
        self.physics = _physics_of(inputs, scenario.step)
        self.arrays = a = InputArrays.of(inputs)
        # The per-step reads of the inputs, held here (shared, read-only): interval -> row, the rows of the
        # devices' inputs, the price as floats, the native loads and generation.
        self._row_of, self._prices = a.row_of, a.prices
        self._pv_rows, self._flex_rows = a.pv_avail_rows, a.flex_base_rows
        self._load_p, self._load_q, self._sgen_p = a.load_p_mw, a.load_q_mvar, a.sgen_p_mw
        assets = inputs.assets
        ids = assets.index
        # What depends only on the run's inputs (participants, backhaul sizes, inverters, asset buses) is built
        # once per RunInputs and shared, read-only, by every policy's twin and every run on those inputs.
        self.__dict__.update(_static_of(inputs, self.grid))
        self._stage: dict[str, float] = {}  # wall time of the decide sub-stages of the current interval
        # What each device holds: its setpoint and schedule (periods 0 … S-1 from when it arrived), a reactive
        # setpoint, and when they expire. Periods past setpoint_ttl can never be used, so S stops there.
        self._step_ns = scenario.step.value
        self._schedule_len = max(1, -(-scenario.setpoint_ttl.value // self._step_ns))
        self.held_plan = np.full((len(ids), self._schedule_len), np.nan)
        self.held_from_ns = np.zeros(len(ids), dtype=np.int64)
        self.held_q = np.zeros(len(ids))
        self._has_fleet = len(ids) > 0
        self.held_until_ns = np.full(len(ids), _NOT_HELD, dtype=np.int64)
        self.last_p = np.zeros(len(ids))
        self.last_pf: PowerFlowResult | None = None
        self._last_time: pd.Timestamp | None = None
        self.limits = NetworkLimits(**scenario.limits.model_dump())
        # The control centre's view: the last report that reached it per asset, and when it was measured.
        self.cc_state: dict[str, np.ndarray] | None = None
        self.cc_seen_ns = np.full(len(ids), _NOT_HELD, dtype=np.int64)
        self._open_loop = False  # stepping ahead of the power flow (twin.engine.open_loop): no grid to read
        self._everyone = np.ones(len(ids), dtype=bool)  # an ideal controller's setpoints reach every device
        self._everyone.flags.writeable = False
        self._nobody = np.zeros(len(ids), dtype=bool)  # ~_everyone: no device fell back (shared, read-only)
        self._nobody.flags.writeable = False
        self._signals = MappingProxyType({"feed_in_eur_per_mwh": scenario.tariff.feed_in_eur_per_mwh})
        self._feed_in = scenario.tariff.feed_in_eur_per_mwh
        self.controller: Controller | None = None
        self.agent_pool: LocalAgents | DaskAgents | None = None
        self.agent_network: AgentNetworkRunner | None = None
        self.settlement: PolicySettlement | None = None
        self._sens: Sensitivities | None = None
        self._sens_time: pd.Timestamp | None = None
        self._monitored: list[int] | None | bool = False  # monitored_buses, computed when first linearized
        self._linearize = bool(scenario.network.sensitivities)  # observations carry sensitivities
        self._decide = {"ideal": self._decide_ideal, "central": self._decide_central,
                        "agents": self._decide_agents}[entry.mode]

    @classmethod
    def create(cls, entry: ControllerEntry, inputs: RunInputs, scenario: Scenario, *,
               agent_workers: int = 1) -> PolicyTwin:
        """A policy's twin with its controller built (or its agents started: in this process, or on a Dask
        cluster of ``agent_workers`` processes; call ``close`` when done)."""
        twin = cls(entry, inputs, scenario, build_comms(scenario, inputs, policy=entry.name))
        seed = derive_seed(scenario.seed, f"controller:{entry.name}")
        if entry.mode == "agents" and _is_agent_network_target(entry.target):
            network = load_controller(entry.target, **entry.kwargs)
            twin.agent_network = AgentNetworkRunner.create(network, twin, seed=seed, workers=agent_workers)
        elif entry.mode == "agents":
            setups = [
                AgentSetup(target=entry.target, kwargs=dict(entry.kwargs), seed=derive_seed(seed, pid), spec=AgentSpec(
                    participant_id=pid, assets=inputs.assets.iloc[twin._rows_of_participant[pid]].copy(), step=scenario.step,
                    horizon=scenario.horizon_steps, neighbours=twin.comms.neighbours.get(pid, ()),
                    participants=twin.comms.participants, rounds=scenario.comms.rounds, limits=twin.limits,
                    fleet_size=len(inputs.assets)))
                for pid in twin.comms.participants
            ]
            twin.agent_pool = start_agents(setups, workers=agent_workers)
        else:
            controller = load_controller(entry.target, **entry.kwargs)
            if not isinstance(controller, Controller):
                raise ValueError(f"controllers.target={entry.target!r}: mode {entry.mode!r} needs a Controller "
                                 "(reset + act); use mode = 'agents' for an Agent")
            controller.reset(
                ControllerSpec(assets=inputs.assets.copy(), step=scenario.step, horizon=scenario.horizon_steps,
                               limits=twin.limits, buses=tuple(int(b) for b in inputs.net.bus.index)),
                seed=seed,
            )
            twin.controller = controller
        return twin

    @property
    def agents(self) -> dict[str, Agent]:
        """The agents, when they run in this process (empty otherwise)."""
        return self.agent_pool.agents if isinstance(self.agent_pool, LocalAgents) else {}

    def close(self) -> None:
        """Stop the agents' Dask cluster, if any."""
        if self.agent_pool is not None:
            self.agent_pool.close()
        if self.agent_network is not None:
            self.agent_network.close()

    # -- what a decider may see --------------------------------------------------------------------
    @property
    def reads_grid(self) -> bool:
        """Does this policy's decision need the last power flow (``Observation.grid`` or sensitivities)? A
        controller says no with a class attribute ``reads_grid = False``; agents and anything that does not
        say so are taken to need it."""
        if self.mode == "agents" or self.controller is None or self.scenario.network.sensitivities:
            return True
        return bool(getattr(self.controller, "reads_grid", True))

    def _true_state_arrays(self, time: pd.Timestamp) -> dict[str, np.ndarray]:
        """The fleet's state as its meters measure it now (column -> array in asset order; copies). Report
        columns it leaves out are the defaults of a fresh, good reading (``_state_table``)."""
        state = self.physics.state_arrays(time)
        state["p_mw"] = self.last_p.copy()
        return state

    def _state_table(self, state: dict[str, np.ndarray]) -> pd.DataFrame:
        """The state table a plug-in reads (index asset_id): the physics' columns, p_mw, available, quality
        (a telemetry.Quality value) and age_s; columns ``state`` leaves out read as a good, fresh report."""
        n = len(self.last_p)
        full = {**state}
        full.setdefault("available", np.ones(n, dtype=bool))
        full.setdefault("quality", np.full(n, "good", dtype=object))
        full.setdefault("age_s", np.zeros(n))
        return state_frame_of(full, self.inputs.assets.index)

    def _true_state(self, time: pd.Timestamp) -> pd.DataFrame:
        return self._state_table(self._true_state_arrays(time))

    def _true_state_capture(self, time: pd.Timestamp) -> Any:
        """``_true_state_arrays`` taken lazily: a callable that returns them (computed on first call, copied
        before the devices move on). Telemetry as reported (false telemetry scales the power)."""
        capture = self.physics.capture_state(time)
        scale = self._telemetry_scale(time)
        p_mw = self.last_p if scale is None else self.last_p * scale  # last_p is replaced each step, never mutated
        return lambda: {**capture.arrays(), "p_mw": p_mw}

    def _forecast(self, time: pd.Timestamp, assets: pd.Index | None = None, *, feeder_total: bool = False) -> Forecast:
        inputs = self.inputs
        row = inputs.at(time)
        window = slice(row, row + self.scenario.horizon_steps)
        base = self._forecast_frame(inputs.base_load_bus_mw, window, time, "base")
        if feeder_total:
            # An edge agent gets the DSO's published forecast of the feeder's uncontrolled load as one
            # column at the substation bus: never another participant's own data.
            slack = int(inputs.net.ext_grid.bus.iloc[0])
            base = pd.DataFrame({slack: base.sum(axis=1)})
        pv = self._forecast_frame(inputs.pv_avail_mw, window, time, "pv")
        flex = self._forecast_frame(inputs.flex_base_mw, window, time, "flex")
        if assets is not None:
            pv, flex = pv[pv.columns.intersection(assets)], flex[flex.columns.intersection(assets)]
        return Forecast(base_load_mw=base, pv_avail_mw=pv, flex_base_mw=flex,
                        price_eur_per_mwh=inputs.price_eur_per_mwh.iloc[window].copy())

    def _forecast_frame(self, frame: pd.DataFrame, window: slice, time: pd.Timestamp, what: str) -> pd.DataFrame:
        """The horizon of one exogenous series as the scenario's forecast model tells it."""
        spec = self.scenario.forecast
        truth = frame.iloc[window]
        if spec.kind == "perfect" or truth.empty:
            return truth.copy()
        if spec.kind == "persistence":
            last = frame.iloc[max(window.start - 1, 0)]  # the last interval measured before this one
            return pd.DataFrame(np.tile(last.to_numpy(), (len(truth), 1)), index=truth.index, columns=truth.columns)
        # Seeded from (run seed, series, time): every policy sees the same errors for the same interval.
        rng = np.random.default_rng(derive_seed(self.scenario.seed, f"forecast:{what}:{time.value}"))
        error = rng.normal(0.0, spec.noise, size=truth.shape)
        error[0] = 0.0  # the interval about to start is being measured, not forecast
        return truth * (1.0 + error)

    def _observation(self, time: pd.Timestamp, state: pd.DataFrame | dict[str, np.ndarray] | Any, *,
                     assets: pd.DataFrame | None = None, feeder_total: bool = False,
                     signals: dict[str, Any] | None = None) -> Observation:
        """What a decider sees at ``time``: built lazily (only what it reads), from values taken now.

        ``state``: a state table, state arrays in asset order (``_true_state_arrays``), or a callable that
        returns such arrays (a lazy capture, ``_true_state_capture``)."""
        assets = self.inputs.assets if assets is None else assets
        ids = assets.index
        if isinstance(state, dict) or callable(state):
            def state_table() -> pd.DataFrame:
                table = self._state_table(state() if callable(state) else state)
                return table if ids.equals(table.index) else table.loc[ids].copy()
        else:
            def state_table() -> pd.DataFrame:
                return state.loc[ids].copy()
        sensitivities = None if feeder_total else self._sensitivities(time) if self._linearize else self._sens
        return LazyObservation.of(
            {"time": time, "step": self.scenario.step, "limits": self.limits, "sensitivities": sensitivities,
             "signals": self._signals if not signals else MappingProxyType({**self._signals, **signals})},
            {"assets": assets.copy, "state": state_table,
             "forecast": lambda: self._forecast(time, ids if feeder_total else None, feeder_total=feeder_total),
             "grid": self._snapshot_builder()},
        )

    def _sensitivities(self, time: pd.Timestamp) -> Sensitivities | None:
        """The network linearization at the last converged operating point, refreshed every network.refresh."""
        spec = self.scenario.network
        if spec.sensitivities and self.last_pf is None:
            self._initial_operating_point(time)
        if not spec.sensitivities or self.last_pf is None or not self.last_pf.converged:
            return self._sens
        if self._sens_time is None or time - self._sens_time >= pd.Timedelta(spec.refresh):
            if self._monitored is False:
                self._monitored = monitored_buses(self.scenario, self.inputs)
            self._sens = self.grid.sensitivities(monitored_buses=self._monitored, monitored_branches=None)
            self._sens_time = time
        return self._sens

    def _initial_operating_point(self, time: pd.Timestamp) -> None:
        """Before the first interval the twin measures where the feeder stands (every device on its own
        default), so the first decision already has an operating point to linearize at."""
        row = self.inputs.at(time)
        a = self.arrays
        autonomous = self.physics.autonomous(pv_avail=a.pv_avail(row), flex_base=a.flex_base(row))
        self.grid.set_injection_arrays(load_p_mw=a.load_p_mw[row], load_q_mvar=a.load_q_mvar[row],
                                       sgen_p_mw=a.sgen_p_mw[row], asset_p_mw=autonomous,
                                       asset_q_mvar=np.zeros(len(autonomous)))
        self.last_pf, self._last_time = self.grid.solve(time), time - self.scenario.step
        self.last_p = np.asarray(autonomous, dtype=float)  # what the meters measured at that operating point

    def observe_for_test(self, time: pd.Timestamp) -> Observation:
        """The observation an ideal controller would get at ``time`` (for tests and debugging)."""
        return self._observation(time, self._true_state_arrays(time))

    def _snapshot(self) -> GridSnapshot | None:
        return self._snapshot_builder()()

    def _snapshot_builder(self) -> Any:
        """Makes the grid snapshot of the last power flow, as it stands now, when called (later)."""
        pf, at = self.last_pf, self._last_time
        if self._open_loop:
            def refuse() -> GridSnapshot | None:
                raise RuntimeError(f"policy {self.name!r}: its controller declares reads_grid = False but read "
                                   "observation.grid; remove the declaration (the grid is then solved every step)")
            return refuse

        def snapshot() -> GridSnapshot | None:
            if pf is None or at is None:
                return None
            return GridSnapshot(time=at, vm_pu=pf.vm_pu, line_loading_percent=pf.line_loading_percent,
                                trafo_loading_percent=pf.trafo_loading_percent, p_head_mw=pf.p_head_mw,
                                q_head_mvar=pf.q_head_mvar, losses_mw=pf.losses_mw, converged=pf.converged)
        return snapshot

    def _telemetry_scale(self, time: pd.Timestamp) -> np.ndarray | None:
        """Per asset, reported ÷ true power; None when every participant reports truthfully (the usual case)."""
        if not self.comms.faults or not self.comms.false_telemetry_active(time):
            return None
        per_participant = np.array([self.comms.false_telemetry_scale(pid, time) for pid in self._participants_sorted],
                                   dtype=float)
        return per_participant[self._participant_pos]

    def _reported(self, time: pd.Timestamp, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Telemetry as the devices report it: a participant with false telemetry scales its power."""
        scale = self._telemetry_scale(time)
        if scale is None:
            return state
        return {**state, "p_mw": state["p_mw"] * scale}

    # -- deciding ----------------------------------------------------------------------------------
    def _decide_ideal(self, time: pd.Timestamp) -> tuple[Dispatch | None, pd.Series, int]:
        assert self.controller is not None
        t0 = wallclock.perf_counter()
        observation = self._observation(time, self._true_state_capture(time))
        t1 = wallclock.perf_counter()
        dispatch = self.controller.act(observation)
        stage = self._stage
        stage["telemetry"], stage["optimize"] = t1 - t0, wallclock.perf_counter() - t1
        return dispatch, self._everyone, 0

    def _decide_central(self, time: pd.Timestamp) -> tuple[Dispatch | None, pd.Series, int]:
        assert self.controller is not None
        t0 = wallclock.perf_counter()
        reported = self._reported(time, self._true_state_arrays(time))
        if self.cc_state is None:  # commissioning: the control centre knows the initial state
            self.cc_state = {k: v.copy() for k, v in reported.items()}
            self.cc_seen_ns[:] = time.value
        arrived = self.comms.uplinks(self._uplink_ids, time, n_bytes=self._uplink_bytes)
        if arrived.any():
            rows = arrived[self._participant_pos]  # the asset rows whose participant's report arrived
            for column, values in reported.items():
                self.cc_state[column][rows] = values[rows]
            self.cc_seen_ns[rows] = time.value
        delivered = np.zeros(len(self.last_p), dtype=bool)
        if not self.comms.control_centre_up(time):
            self._stage.update(telemetry=wallclock.perf_counter() - t0)
            return None, delivered, 0
        view = {k: v.copy() for k, v in self.cc_state.items()}
        age = (time.value - self.cc_seen_ns) / 10**9  # as pandas' total_seconds
        view["age_s"] = age
        view["quality"] = np.where(age > 0, "stale", "good").astype(object)
        observation = self._observation(time, view)
        t1 = wallclock.perf_counter()
        dispatch = self.controller.act(observation)
        t2 = wallclock.perf_counter()
        dispatched = self.inputs.assets.index.isin(dispatch.p_mw.dropna().index)
        per_asset = SETPOINT_BYTES + SCHEDULE_VALUE_BYTES * int(np.sum(self._schedule_offsets(dispatch, time)
                                                                       < self._schedule_len))
        targets = np.bincount(self._first_code[dispatched], minlength=len(self._downlink_ids))  # per participant
        sent = targets > 0
        arrived = np.zeros(len(self._downlink_ids), dtype=bool)
        arrived[sent] = self.comms.downlinks(self._downlink_ids[sent], time, n_bytes=per_asset * targets[sent])
        delivered = dispatched & arrived[self._first_code]
        self._stage.update(telemetry=t1 - t0, optimize=t2 - t1, coordinate=wallclock.perf_counter() - t2)
        return dispatch, delivered, 0

    def _decide_agents(self, time: pd.Timestamp) -> tuple[Dispatch | None, pd.Series, int]:
        if self.agent_network is not None:
            dispatch, delivered, rounds, stages = self.agent_network.decide(self, time)
            self._stage.update(stages)
            return dispatch, delivered, rounds
        t0 = wallclock.perf_counter()
        state = self._true_state(time)  # on the premises, an agent reads its own meters directly
        assert self.agent_pool is not None
        pool = self.agent_pool.participants
        active = [pid for pid, on in zip(pool, self.comms.active_mask(time, pool), strict=True) if on]
        observations = {
            pid: self._observation(time, state, assets=self.inputs.assets.loc[self._assets_of_participant[pid]],
                                   feeder_total=True, signals={"participant_id": pid})
            for pid in active
        }
        telemetry_s, optimize_s = wallclock.perf_counter() - t0, 0.0
        inbox: dict[str, list[AgentMessage]] = {pid: [] for pid in active}
        proposals: dict[str, Dispatch] = {}
        rounds = self.scenario.comms.rounds
        round_period = pd.Timedelta(self.scenario.comms.round_period)
        for r in range(rounds):
            outgoing: list[AgentMessage] = []
            t = wallclock.perf_counter()
            round_proposals = self.agent_pool.propose({pid: (observations[pid], tuple(inbox[pid])) for pid in active},
                                                      round_index=r)
            optimize_s += wallclock.perf_counter() - t
            for pid in active:
                prop = round_proposals[pid]
                foreign = prop.dispatch.p_mw.index.difference(observations[pid].assets.index)
                if len(foreign):
                    raise ValueError(f"policy {self.name!r}: agent {pid!r} dispatched {foreign[0]!r}, not its own")
                proposals[pid] = prop.dispatch
                # The twin stamps the sender: an agent cannot speak for another participant.
                outgoing.extend(AgentMessage(pid, m.recipient, m.payload) for m in prop.outbox)
            inbox = {pid: [] for pid in active}
            for m in self.comms.deliver_mesh(outgoing, time, round_period=round_period):
                if m.recipient in inbox:
                    inbox[m.recipient].append(m)
        p = pd.concat([d.p_mw for d in proposals.values()]) if proposals else pd.Series(dtype=float)
        q = pd.concat([d.q_mvar for d in proposals.values()]) if proposals else pd.Series(dtype=float)
        schedules = [d.schedule_mw for d in proposals.values() if d.schedule_mw is not None]
        delivered = pd.Series(False, index=self.inputs.assets.index)
        delivered.loc[p.dropna().index] = True
        diagnostics = {pid: dict(d.diagnostics) for pid, d in proposals.items()}
        self._stage.update(telemetry=telemetry_s, optimize=optimize_s,
                           coordinate=wallclock.perf_counter() - t0 - telemetry_s - optimize_s)
        return Dispatch(p_mw=p, q_mvar=q, diagnostics=MappingProxyType(diagnostics),
                        schedule_mw=pd.concat(schedules) if schedules else None), delivered, rounds

    # -- one interval ------------------------------------------------------------------------------
    def apply_command(self, command: OperatorCommand, time: pd.Timestamp) -> tuple[str, str]:
        """An operator command becomes a fault in this twin's comms model from ``time`` on."""
        if command.kind is CommandKind.CLEAR_FAULTS:
            self.comms.clear_faults(time)
            return "applied", "all active faults cleared"
        if command.kind is CommandKind.DR_EVENT:
            if self.settlement is None:
                return "rejected", "this scenario has no [settlement] contracts to call a DR event under"
            self.settlement.declare_event(start=time, end=time + command.duration)
            return "applied", f"DR event until {(time + command.duration).isoformat()}"
        participants: frozenset[str] = frozenset()
        if command.participant_id:
            if command.participant_id not in self.comms.participants:
                return "rejected", f"participant_id={command.participant_id!r} is not in this feeder"
            participants = frozenset({command.participant_id})
        kind = FaultKind(command.kind.value)
        self.comms.add_fault(Fault(kind=kind, start=time, end=time + command.duration, participants=participants))
        return "applied", f"{kind.value} until {(time + command.duration).isoformat()}"

    def step(self, time: pd.Timestamp) -> StepRecord:
        """One interval: decide, devices, power flow, settle; what happened."""
        parts = self.advance_devices(time)
        t0 = wallclock.perf_counter()
        pf = self.solve_grid(parts)
        return self.finish(parts, pf, power_flow_s=wallclock.perf_counter() - t0)

    def advance_devices(self, time: pd.Timestamp, *, volt_var: bool = True) -> IntervalParts:
        """Decide (at decision times), hold what reached the devices, and advance their physics over
        ``[time, time + step)``. ``volt_var=False`` leaves the autonomous inverters' reactive power at 0 for the
        caller to settle once the voltages are known (``twin.engine.open_loop``)."""
        perf_counter = wallclock.perf_counter
        counter = self.comms.traffic
        before = counter.totals() if counter.messages else None  # nothing sent yet: every total is 0
        self._stage = {}
        t0 = perf_counter()
        if self.scenario.is_decision_time(time):
            dispatch, delivered, rounds = self._decide(time)
            online = dispatch is not None
        else:  # between decisions nothing is exchanged: devices follow the schedules they hold
            dispatch, delivered, rounds = None, None, 0
            online = self.mode != "central" or self.comms.control_centre_up(time)
        t1 = perf_counter()
        held_schedule = None
        if dispatch is not None:  # agents send ``delivered`` as a Series in asset order
            held_schedule = self._hold(time, dispatch, delivered)
        row = self._row_of.get(time.value)
        if row is None:
            raise KeyError(time)
        pv_avail, flex_base = self._pv_rows[row], self._flex_rows[row]
        # What each device runs on: its held setpoint / schedule entry, else its autonomous default (volt-var
        # Q on its bus's last voltage); one compiled pass, the same rules as _held_setpoints, physics.autonomous
        # and volt_var_q (tests hold them equal).
        ph, pf = self.physics, self.last_pf
        if self._has_fleet:
            volt_var_on = volt_var and pf is not None and pf.converged
            p_set, q_set, valid = _setpoints_kernel(
                self.held_plan, self.held_from_ns, self.held_until_ns, self.held_q, time.value, self._step_ns,
                ph._kind_code, ph.p_max, ph.eta_c, ph.ev_connected, ph.ev_need, ph.flex_buckets, pv_avail, flex_base,
                ph.hours, volt_var_on, pf.vm if volt_var_on else self._no_voltages, self._asset_bus_pos,
                self._volt_var_scale, VOLT_VAR_V_PU, VOLT_VAR_Q_SHARE)
            q_held = self.held_q.copy()
        else:  # no fleet: no setpoint to make (the kernel's empty answer, without its call)
            p_set = q_set = q_held = pv_avail
            valid = self._everyone
        outcome = ph.advance_arrays(time, p_setpoint=p_set, q_setpoint=q_set, pv_avail=pv_avail,
                                    flex_base=flex_base)
        self.last_p = outcome.p
        if counter.messages:
            after = counter.totals()
            traffic = {k: after[k] - before[k] for k in after} if before is not None else after
        else:
            traffic = dict(_NO_TRAFFIC)
        return _frozen(IntervalParts, {
            "time": time, "row": row, "outcome": outcome, "valid": valid, "q_held": q_held, "dispatch": dispatch,
            "rounds": rounds, "online": online, "compute_s": t1 - t0, "devices_s": perf_counter() - t1,
            "traffic": traffic, "stage_s": self._stage, "held_schedule": held_schedule})

    def solve_grid(self, parts: IntervalParts) -> PowerFlowResult:
        """The AC power flow of an interval's injections; it becomes the twin's last power flow."""
        row, outcome = parts.row, parts.outcome
        self.grid.set_injection_arrays(load_p_mw=self._load_p[row], load_q_mvar=self._load_q[row],
                                       sgen_p_mw=self._sgen_p[row], asset_p_mw=outcome.p, asset_q_mvar=outcome.q)
        pf = self.grid.solve(parts.time)
        self.last_pf, self._last_time = pf, parts.time
        return pf

    def finish(self, parts: IntervalParts, pf: PowerFlowResult, *, power_flow_s: float) -> StepRecord:
        """Settle the interval and record what happened."""
        time, row, outcome = parts.time, parts.row, parts.outcome
        t3 = wallclock.perf_counter()
        scale = self._telemetry_scale(time)  # None unless a false-telemetry fault is active
        reported = outcome.p if scale is None else outcome.p * scale
        if self.settlement is not None:
            settled, unverified = self._settle(time, load_p_mw=self._load_p[row], outcome=outcome,
                                               reported_p_mw=reported, pf=pf)
        else:
            settled, unverified = {}, _NO_ONE
        t4 = wallclock.perf_counter()
        dispatch = parts.dispatch
        stage_s = {"decide": parts.compute_s, **parts.stage_s} if parts.stage_s else {"decide": parts.compute_s}
        stage_s["devices"], stage_s["power_flow"], stage_s["settle"] = parts.devices_s, power_flow_s, t4 - t3
        valid = parts.valid
        return _frozen(StepRecord, {
            "policy": self.name, "time": time, "power_flow": pf, "outcome": outcome,
            "fallback_mask": self._nobody if valid is self._everyone else ~valid, "reported_p": reported,
            "price_eur_per_mwh": self._prices[row], "feed_in_eur_per_mwh": self._feed_in,
            "compute_s": parts.compute_s, "traffic": parts.traffic, "rounds": parts.rounds,
            "controller_online": parts.online, "settlement_eur": settled, "unverified": unverified,
            "diagnostics": dispatch.diagnostics if dispatch is not None else _NO_DIAGNOSTICS,
            "held_schedule": parts.held_schedule, "stage_s": stage_s})

    def _settle(self, time: pd.Timestamp, *, load_p_mw: np.ndarray, outcome: IntervalOutcome,
                reported_p_mw: np.ndarray, pf: PowerFlowResult) -> tuple[dict[str, float], frozenset[str]]:
        """Settle the interval; in DR-event intervals, first check the claims against the physics (labelled
        data only there: an event interval is the exception)."""
        if self.settlement is None:
            return {}, frozenset()
        unverified: frozenset[str] = frozenset()
        if self.settlement.in_event(time) and pf.converged:
            p_books, q_books = reported_bus_injections(
                self.grid.net, asset_bus=self.inputs.assets["bus"], true_p_mw=outcome.p_mw,
                reported_p_mw=pd.Series(reported_p_mw, index=outcome.ids), true_q_mvar=outcome.q_mvar,
            )
            check = self.settlement.verifier(self.grid.net).verify(
                measured=pf, reported_p_mw=p_books, reported_q_mvar=q_books,
                participant_buses=participant_buses_of(self.inputs.assets),
            )
            unverified = check.flagged
        result = self.settlement.settle(time, load_p_mw=load_p_mw, reported_asset_p_mw=reported_p_mw,
                                        unverified=unverified)
        amounts = result.net_amounts()
        operator = float(sum(v for k, v in amounts.items() if k == "operator"))
        participants = float(sum(v for k, v in amounts.items() if k.startswith("participant:")))
        return {"operator": operator, "participants": participants}, unverified

    def _volt_var_q(self) -> np.ndarray:
        """Autonomous inverters follow IEEE 1547 Cat. B volt-var on their bus's last measured voltage."""
        if self.last_pf is None or not self.last_pf.converged:
            return np.zeros(len(self.held_q))
        return self.volt_var_q(self.last_pf.vm)

    def volt_var_q(self, vm: np.ndarray) -> np.ndarray:
        """Each asset's volt-var setpoint (Mvar, load convention) from bus voltages ``vm`` (grid bus order;
        (n_bus,) or (n_bus, n_interval)); an unknown voltage counts as 1 pu, as in controllers.volt_var."""
        if not self._inverter.any():
            return np.zeros((len(self._inverter),) + vm.shape[1:])
        vm_asset = vm[self._asset_bus_safe]
        unknown = self._asset_bus_unknown.reshape((-1,) + (1,) * (vm.ndim - 1))
        vm_asset = np.where(np.isnan(vm_asset) | unknown, 1.0, vm_asset)
        return volt_var_q_share(vm_asset) * self._volt_var_scale.reshape((-1,) + (1,) * (vm.ndim - 1))

    def _held_setpoints(self, time: pd.Timestamp) -> tuple[np.ndarray, np.ndarray]:
        """Per asset, the held setpoint or schedule entry for this interval, and whether one is valid."""
        return _held_kernel(self.held_plan, self.held_from_ns, self.held_until_ns, time.value, self._step_ns)

    def _schedule_offsets(self, dispatch: Dispatch, time: pd.Timestamp) -> np.ndarray:
        try:
            return dispatch.schedule_offsets(time, self.scenario.step)
        except ValueError as exc:
            raise ValueError(f"controller {self.name!r}: {exc}") from None

    def _hold(self, time: pd.Timestamp, dispatch: Dispatch,
              delivered: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Setpoints (and the schedules sent with them) that reached their device (``delivered``: bool per
        asset) are held until ``time + setpoint_ttl``. Returns the asset positions that now hold a new plan and
        those plans (MW per period from ``time``, as held), None when nothing reached a device."""
        schedule = dispatch.schedule_mw
        if schedule is None and len(dispatch.p_mw.index) == 0:
            return None  # nothing sent (no control, or nothing new): every device keeps what it holds
        ids = self.inputs.assets.index
        delivered = np.asarray(delivered, dtype=bool)
        p = dispatch.p_mw.dropna()
        scheduled = pd.Index([]) if schedule is None else schedule.index
        for what, index in (("dispatched", p.index), ("scheduled", scheduled)):
            unknown = index.difference(ids)
            if len(unknown):
                raise ValueError(f"controller {self.name!r} {what} unknown asset_id {unknown[0]!r}")
        rows = ids.get_indexer(p.index)
        reached = delivered[rows]
        if not reached.any():
            return None
        p, rows = p[reached], rows[reached]
        plan = np.full((len(p), self._schedule_len), np.nan)
        plan[:, 0] = p.to_numpy(float)
        if schedule is not None:
            offsets = self._schedule_offsets(dispatch, time)
            keep = offsets < self._schedule_len
            plan[:, offsets[keep]] = schedule.reindex(p.index).to_numpy(float)[:, keep]
        # A period the schedule leaves open holds the value before it (no schedule: p_mw throughout).
        last = np.maximum.accumulate(np.where(np.isfinite(plan), np.arange(self._schedule_len), 0), axis=1)
        plan = np.take_along_axis(plan, last, axis=1)
        self.held_plan[rows] = plan
        self.held_from_ns[rows] = time.value
        q = dispatch.q_mvar.dropna()
        q = q[q.index.isin(p.index)]
        self.held_q[rows] = 0.0
        self.held_q[ids.get_indexer(q.index)] = q.to_numpy(float)
        self.held_until_ns[rows] = (time + self.scenario.setpoint_ttl).value
        return rows, plan


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _setpoints_kernel(plan, held_from, held_until, held_q, time_ns, step_ns, kind, p_max, eta_c, ev_connected,
                      ev_need, buckets, pv_avail, flex_base, h, volt_var_on, vm, asset_bus, volt_var_scale, vv_v,
                      vv_share):  # pragma: no cover - compiled
    """p and q setpoints per device, and whether it holds a valid one: the held setpoint or schedule entry
    (``_held_kernel``), else the autonomous default (``physics.autonomous_kernel``) with volt-var Q on its
    bus's voltage ``vm`` (1 pu where unknown; 0 when ``volt_var_on`` is False)."""
    planned, valid = _held_kernel(plan, held_from, held_until, time_ns, step_ns)
    autonomous = autonomous_kernel(kind, p_max, eta_c, ev_connected, ev_need, buckets, pv_avail, flex_base, h)
    n = len(valid)
    p_set = np.empty(n)
    q_set = np.empty(n)
    for i in range(n):
        if valid[i]:
            p_set[i] = planned[i]
            q_set[i] = held_q[i]
        else:
            p_set[i] = autonomous[i]
            q = 0.0
            if volt_var_on:
                v = vm[asset_bus[i]] if asset_bus[i] >= 0 else np.nan
                if v != v:
                    v = 1.0
                q = _interp(v, vv_v, vv_share) * volt_var_scale[i]
            q_set[i] = q
    return p_set, q_set, valid


@numba.njit(cache=True, nogil=True)
def _interp(x, xp, fp):  # pragma: no cover - compiled
    """``np.interp(x, xp, fp)`` for one x, numpy's own arithmetic (the same result to the last bit), without
    numba's general np.interp (seconds of compilation for a four-point curve)."""
    n = len(xp)
    if x != x:
        return x
    if x < xp[0]:
        return fp[0]
    if x > xp[n - 1]:
        return fp[n - 1]
    j = 0
    while j + 1 < n and xp[j + 1] <= x:
        j += 1
    if j == n - 1 or xp[j] == x:
        return fp[j]
    slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j])
    out = slope * (x - xp[j]) + fp[j]
    if out != out:
        out = slope * (x - xp[j + 1]) + fp[j + 1]
        if out != out and fp[j] == fp[j + 1]:
            out = fp[j]
    return out


@numba.njit(cache=True, nogil=True)
def _held_kernel(plan, held_from, held_until, time_ns, step_ns):  # pragma: no cover - compiled
    """Per asset, the held setpoint or schedule entry for the interval at ``time_ns`` (NaN: none), and
    whether it is valid: held, not expired, and the interval within the schedule."""
    n, length = plan.shape
    planned = np.full(n, np.nan)
    valid = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        if held_until[i] > time_ns:
            k = (time_ns - held_from[i]) // step_ns
            if 0 <= k < length:
                planned[i] = plan[i, k]
                valid[i] = np.isfinite(planned[i])
    return planned, valid


def _is_agent_network_target(target: str) -> bool:
    """Does ``target`` name an agent network (one object simulating every participant and grid node) rather
    than a per-participant Agent class? Decided on the class, before anything is instantiated."""
    import importlib

    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return False
    return isinstance(cls, type) and all(callable(getattr(cls, m, None)) for m in ("begin", "coordinate", "dispatch"))
