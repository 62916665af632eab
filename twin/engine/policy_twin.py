"""One policy's copy of the twin and what one interval does to it.

Per interval: telemetry over the comms model → observation(s) → decide (one ideal or central controller, or
coordination rounds of edge agents) → setpoints reach the devices they can reach (held until they expire, else
the autonomous default with volt-var) → device physics → AC power flow → settlement. Controllers only
*return* dispatches; this module alone mutates a twin's state (DESIGN.md §2, §4, §6); ``twin.engine.lockstep``
sequences the policies.
"""

from __future__ import annotations

import time as wallclock
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from controllers.api import (
    Agent,
    AgentMessage,
    AgentSpec,
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
from controllers.volt_var import volt_var_q_mvar
from twin.commands import CommandKind, OperatorCommand
from twin.comms.links import CommsModel, Fault, FaultKind, LinkSpec
from twin.comms.mesh import mesh_neighbours
from twin.devices.physics import FleetPhysics, IntervalOutcome
from twin.engine.agent_pool import AgentSetup, LocalAgents, ProcessAgents, start_agents
from twin.grid.powerflow import GridModel, PowerFlowResult
from twin.grid.verification import participant_buses_of, reported_bus_injections
from twin.inputs import RunInputs, derive_seed
from twin.records.recorder import StepRecord
from twin.scenario import ControllerEntry, Scenario
from twin.engine.metering import PolicySettlement

__all__ = ["PolicyTwin", "build_comms", "monitored_buses"]

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
        if spec.share is not None:
            k = max(1, int(round(spec.share * len(participants))))
            chosen |= set(rng.choice(participants, size=k, replace=False).tolist())
        faults.append(Fault(kind=FaultKind(spec.kind), start=spec.start_utc, end=spec.end_utc,
                            participants=frozenset(chosen), loss=spec.loss, scale=spec.scale))
    c = scenario.comms
    return CommsModel(
        participants=participants,
        neighbours=mesh_neighbours(inputs.net, inputs.assets, hops=c.mesh_hops),
        backhaul=LinkSpec(pd.Timedelta(c.backhaul.latency), c.backhaul.loss),
        mesh=LinkSpec(pd.Timedelta(c.mesh.latency), c.mesh.loss),
        faults=faults,
        seed=derive_seed(scenario.seed, f"comms:{policy}"),
    )


class PolicyTwin:
    """One policy's copy of the twin: its own grid model, device state, comms, held setpoints and decider."""

    def __init__(self, entry: ControllerEntry, inputs: RunInputs, scenario: Scenario, comms: CommsModel) -> None:
        self.name = entry.name
        self.mode = entry.mode
        self.inputs = inputs
        self.scenario = scenario
        self.comms = comms
        self.grid = GridModel(inputs.net, inputs.assets, engine=scenario.power_flow.engine)
        self.physics = FleetPhysics(inputs.assets, inputs.ev_sessions, step=scenario.step)
        assets = inputs.assets
        ids = assets.index
        self.participant_of = assets["participant_id"].astype(str)
        self._assets_of_participant = {pid: ids[(self.participant_of == pid).to_numpy()]
                                       for pid in self.participant_of.unique()}
        self._stage: dict[str, float] = {}  # wall time of the decide sub-stages of the current interval
        # What each device holds: its setpoint and schedule (periods 0 … S-1 from when it arrived), a reactive
        # setpoint, and when they expire. Periods past setpoint_ttl can never be used, so S stops there.
        self._step_ns = scenario.step.value
        self._schedule_len = max(1, -(-scenario.setpoint_ttl.value // self._step_ns))
        self.held_plan = np.full((len(ids), self._schedule_len), np.nan)
        self.held_from_ns = np.zeros(len(ids), dtype=np.int64)
        self.held_q = pd.Series(0.0, index=ids)
        self.held_until = pd.Series(pd.NaT, index=ids, dtype="datetime64[ns, UTC]")
        self.last_p = pd.Series(0.0, index=ids)
        self.last_pf: PowerFlowResult | None = None
        self._last_time: pd.Timestamp | None = None
        self.limits = NetworkLimits(**scenario.limits.model_dump())
        # The control centre's view: the last report that reached it per asset, and when it was measured.
        self.cc_state: pd.DataFrame | None = None
        self.cc_seen = pd.Series(pd.NaT, index=ids, dtype="datetime64[ns, UTC]")
        self.controller: Controller | None = None
        self.agent_pool: LocalAgents | ProcessAgents | None = None
        self.settlement: PolicySettlement | None = None
        self._sens: Sensitivities | None = None
        self._sens_time: pd.Timestamp | None = None
        self._monitored = monitored_buses(scenario, inputs)
        self._decide = {"ideal": self._decide_ideal, "central": self._decide_central,
                        "agents": self._decide_agents}[entry.mode]

    @classmethod
    def create(cls, entry: ControllerEntry, inputs: RunInputs, scenario: Scenario, *,
               agent_workers: int = 1) -> PolicyTwin:
        """A policy's twin with its controller built (or its agents started: in this process, or over
        ``agent_workers`` processes; call ``close`` when done)."""
        twin = cls(entry, inputs, scenario, build_comms(scenario, inputs, policy=entry.name))
        seed = derive_seed(scenario.seed, f"controller:{entry.name}")
        if entry.mode == "agents":
            setups = [
                AgentSetup(target=entry.target, kwargs=dict(entry.kwargs), seed=derive_seed(seed, pid), spec=AgentSpec(
                    participant_id=pid, assets=inputs.assets[twin.participant_of == pid].copy(), step=scenario.step,
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
        """Stop the agents' worker processes, if any."""
        if self.agent_pool is not None:
            self.agent_pool.close()

    # -- what a decider may see --------------------------------------------------------------------
    def _true_state(self, time: pd.Timestamp) -> pd.DataFrame:
        state = self.physics.state_frame(time)
        state["p_mw"] = self.last_p
        state["available"] = True
        state["quality"] = "good"
        state["age_s"] = 0.0
        return state

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

    def _observation(self, time: pd.Timestamp, state: pd.DataFrame, *, assets: pd.DataFrame | None = None,
                     feeder_total: bool = False, signals: dict[str, Any] | None = None) -> Observation:
        assets = self.inputs.assets if assets is None else assets
        return Observation(
            time=time,
            step=self.scenario.step,
            assets=assets.copy(),
            state=state.loc[assets.index].copy(),
            forecast=self._forecast(time, assets.index if feeder_total else None, feeder_total=feeder_total),
            limits=self.limits,
            grid=self._snapshot(),
            sensitivities=None if feeder_total else self._sensitivities(time),
            signals=MappingProxyType({"feed_in_eur_per_mwh": self.scenario.tariff.feed_in_eur_per_mwh,
                                      **(signals or {})}),
        )

    def _sensitivities(self, time: pd.Timestamp) -> Sensitivities | None:
        """The network linearization at the last converged operating point, refreshed every network.refresh."""
        spec = self.scenario.network
        if spec.sensitivities and self.last_pf is None:
            self._initial_operating_point(time)
        if not spec.sensitivities or self.last_pf is None or not self.last_pf.converged:
            return self._sens
        if self._sens_time is None or time - self._sens_time >= pd.Timedelta(spec.refresh):
            self._sens = self.grid.sensitivities(monitored_buses=self._monitored, monitored_branches=None)
            self._sens_time = time
        return self._sens

    def _initial_operating_point(self, time: pd.Timestamp) -> None:
        """Before the first interval the twin measures where the feeder stands (every device on its own
        default), so the first decision already has an operating point to linearize at."""
        row = self.inputs.at(time)
        profiles = self.inputs.profiles
        autonomous = self.physics.autonomous_p_mw(pv_avail_mw=self.inputs.pv_avail_mw.iloc[row],
                                                  flex_base_mw=self.inputs.flex_base_mw.iloc[row])
        self.grid.set_injections(load_p_mw=profiles.load_p_mw.iloc[row], load_q_mvar=profiles.load_q_mvar.iloc[row],
                                 sgen_p_mw=profiles.sgen_p_mw.iloc[row], asset_p_mw=autonomous,
                                 asset_q_mvar=pd.Series(0.0, index=autonomous.index))
        self.last_pf, self._last_time = self.grid.solve(time), time - self.scenario.step

    def observe_for_test(self, time: pd.Timestamp) -> Observation:
        """The observation an ideal controller would get at ``time`` (for tests and debugging)."""
        return self._observation(time, self._true_state(time))

    def _snapshot(self) -> GridSnapshot | None:
        pf = self.last_pf
        if pf is None or self._last_time is None:
            return None
        return GridSnapshot(time=self._last_time, vm_pu=pf.vm_pu, line_loading_percent=pf.line_loading_percent,
                            trafo_loading_percent=pf.trafo_loading_percent, p_head_mw=pf.p_head_mw,
                            q_head_mvar=pf.q_head_mvar, losses_mw=pf.losses_mw, converged=pf.converged)

    def _telemetry_scale(self, time: pd.Timestamp) -> pd.Series | None:
        """Per asset, reported ÷ true power; None when every participant reports truthfully (the usual case)."""
        if not self.comms.false_telemetry_active(time):
            return None
        return self.participant_of.map(lambda pid: self.comms.false_telemetry_scale(pid, time))

    def _reported(self, time: pd.Timestamp, state: pd.DataFrame) -> pd.DataFrame:
        """Telemetry as the devices report it: a participant with false telemetry scales its power."""
        scale = self._telemetry_scale(time)
        if scale is None:
            return state
        reported = state.copy()
        reported["p_mw"] = state["p_mw"] * scale
        return reported

    # -- deciding ----------------------------------------------------------------------------------
    def _decide_ideal(self, time: pd.Timestamp) -> tuple[Dispatch | None, pd.Series, int]:
        assert self.controller is not None
        t0 = wallclock.perf_counter()
        observation = self._observation(time, self._reported(time, self._true_state(time)))
        t1 = wallclock.perf_counter()
        dispatch = self.controller.act(observation)
        self._stage.update(telemetry=t1 - t0, optimize=wallclock.perf_counter() - t1)
        return dispatch, pd.Series(True, index=self.inputs.assets.index), 0

    def _decide_central(self, time: pd.Timestamp) -> tuple[Dispatch | None, pd.Series, int]:
        assert self.controller is not None
        t0 = wallclock.perf_counter()
        reported = self._reported(time, self._true_state(time))
        if self.cc_state is None:
            self.cc_state = reported.copy()  # commissioning: the control centre knows the initial state
            self.cc_seen[:] = time
        arrived = [rows.index for pid, rows in reported.groupby(self.participant_of)
                   if self.comms.uplink(str(pid), time, n_bytes=TELEMETRY_BYTES_PER_ASSET * len(rows))]
        if arrived:
            ids = arrived[0].append(arrived[1:])
            self.cc_state.loc[ids] = reported.loc[ids]
            self.cc_seen.loc[ids] = time
        delivered = pd.Series(False, index=self.inputs.assets.index)
        if not self.comms.control_centre_up(time):
            self._stage.update(telemetry=wallclock.perf_counter() - t0)
            return None, delivered, 0
        view = self.cc_state.copy()
        age = (time - self.cc_seen).dt.total_seconds()
        view["age_s"] = age.to_numpy()
        view["quality"] = np.where(age.to_numpy() > 0, "stale", "good")
        observation = self._observation(time, view)
        t1 = wallclock.perf_counter()
        dispatch = self.controller.act(observation)
        t2 = wallclock.perf_counter()
        dispatched = dispatch.p_mw.dropna().index
        per_asset = SETPOINT_BYTES + SCHEDULE_VALUE_BYTES * int(np.sum(self._schedule_offsets(dispatch, time)
                                                                       < self._schedule_len))
        for pid, ids in self._assets_of_participant.items():
            targets = ids.intersection(dispatched)
            if len(targets) and self.comms.downlink(str(pid), time, n_bytes=per_asset * len(targets)):
                delivered.loc[targets] = True
        self._stage.update(telemetry=t1 - t0, optimize=t2 - t1, coordinate=wallclock.perf_counter() - t2)
        return dispatch, delivered, 0

    def _decide_agents(self, time: pd.Timestamp) -> tuple[Dispatch | None, pd.Series, int]:
        t0 = wallclock.perf_counter()
        state = self._true_state(time)  # on the premises, an agent reads its own meters directly
        assert self.agent_pool is not None
        active = [pid for pid in self.agent_pool.participants if not self.comms.dropped_out(pid, time)]
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
        before = self.comms.traffic.totals()
        self._stage = {}
        t0 = wallclock.perf_counter()
        if self.scenario.is_decision_time(time):
            dispatch, delivered, rounds = self._decide(time)
            online = dispatch is not None
        else:  # between decisions nothing is exchanged: devices follow the schedules they hold
            dispatch, delivered, rounds = None, None, 0
            online = self.mode != "central" or self.comms.control_centre_up(time)
        compute_s = wallclock.perf_counter() - t0
        t1 = wallclock.perf_counter()
        if dispatch is not None:
            self._hold(time, dispatch, delivered)
        row = self.inputs.at(time)
        pv_avail = self.inputs.pv_avail_mw.iloc[row]
        flex_base = self.inputs.flex_base_mw.iloc[row]
        planned, valid = self._held_setpoints(time)
        autonomous = self.physics.autonomous_p_mw(pv_avail_mw=pv_avail, flex_base_mw=flex_base)
        p_set = planned.where(valid, autonomous)
        q_set = self.held_q.where(valid, self._volt_var_q())
        outcome = self.physics.advance(time, p_setpoint_mw=p_set, q_setpoint_mvar=q_set, pv_avail_mw=pv_avail,
                                       flex_base_mw=flex_base)
        profiles = self.inputs.profiles
        t2 = wallclock.perf_counter()
        self.grid.set_injections(load_p_mw=profiles.load_p_mw.iloc[row], load_q_mvar=profiles.load_q_mvar.iloc[row],
                                 sgen_p_mw=profiles.sgen_p_mw.iloc[row], asset_p_mw=outcome.p_mw,
                                 asset_q_mvar=outcome.q_mvar)
        pf = self.grid.solve(time)
        t3 = wallclock.perf_counter()
        self.last_pf, self._last_time = pf, time
        self.last_p = outcome.p_mw
        after = self.comms.traffic.totals()
        scale = self._telemetry_scale(time)
        reported = outcome.p_mw if scale is None else outcome.p_mw * scale
        settled, unverified = self._settle(time, load_p_mw=profiles.load_p_mw.iloc[row], outcome=outcome,
                                           reported_p_mw=reported, pf=pf)
        t4 = wallclock.perf_counter()
        return StepRecord(
            policy=self.name, time=time, power_flow=pf, outcome=outcome, fallback=~valid,
            reported_p_mw=reported,
            price_eur_per_mwh=float(self.inputs.price_eur_per_mwh.iloc[row]),
            feed_in_eur_per_mwh=self.scenario.tariff.feed_in_eur_per_mwh, compute_s=compute_s,
            traffic={k: after[k] - before[k] for k in after}, rounds=rounds,
            controller_online=online,
            settlement_eur=settled,
            unverified=unverified,
            diagnostics=dispatch.diagnostics if dispatch is not None else MappingProxyType({}),
            stage_s={"decide": compute_s, **self._stage, "devices": t2 - t1, "power_flow": t3 - t2,
                     "settle": t4 - t3},
        )

    def _settle(self, time: pd.Timestamp, *, load_p_mw: pd.Series, outcome: IntervalOutcome,
                reported_p_mw: pd.Series, pf: PowerFlowResult) -> tuple[dict[str, float], frozenset[str]]:
        """Settle the interval; in DR-event intervals, first check the claims against the physics."""
        if self.settlement is None:
            return {}, frozenset()
        unverified: frozenset[str] = frozenset()
        if self.settlement.in_event(time) and pf.converged:
            p_books, q_books = reported_bus_injections(
                self.grid.net, asset_bus=self.inputs.assets["bus"], true_p_mw=outcome.p_mw,
                reported_p_mw=reported_p_mw, true_q_mvar=outcome.q_mvar,
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

    def _volt_var_q(self) -> pd.Series:
        """Autonomous inverters follow IEEE 1547 Cat. B volt-var on their bus's last measured voltage."""
        if self.last_pf is None or not self.last_pf.converged:
            return pd.Series(0.0, index=self.held_q.index)
        return volt_var_q_mvar(self.inputs.assets, self.last_pf.vm_pu)

    def _held_setpoints(self, time: pd.Timestamp) -> tuple[pd.Series, pd.Series]:
        """Per asset, the held setpoint or schedule entry for this interval, and whether one is valid."""
        ids = self.held_q.index
        k = (time.value - self.held_from_ns) // self._step_ns
        usable = (self.held_until > time).to_numpy() & (k >= 0) & (k < self._schedule_len)
        planned = np.full(len(ids), np.nan)
        planned[usable] = self.held_plan[np.flatnonzero(usable), k[usable]]
        return pd.Series(planned, index=ids), pd.Series(np.isfinite(planned), index=ids)

    def _schedule_offsets(self, dispatch: Dispatch, time: pd.Timestamp) -> np.ndarray:
        try:
            return dispatch.schedule_offsets(time, self.scenario.step)
        except ValueError as exc:
            raise ValueError(f"controller {self.name!r}: {exc}") from None

    def _hold(self, time: pd.Timestamp, dispatch: Dispatch, delivered: pd.Series) -> None:
        """Setpoints (and the schedules sent with them) that reached their device are held until
        ``time + setpoint_ttl``."""
        p = dispatch.p_mw.dropna()
        schedule = dispatch.schedule_mw
        scheduled = pd.Index([]) if schedule is None else schedule.index
        for what, index in (("dispatched", p.index), ("scheduled", scheduled)):
            unknown = index.difference(self.held_q.index)
            if len(unknown):
                raise ValueError(f"controller {self.name!r} {what} unknown asset_id {unknown[0]!r}")
        p = p[delivered.reindex(p.index).fillna(False).to_numpy(bool)]
        plan = np.full((len(p), self._schedule_len), np.nan)
        plan[:, 0] = p.to_numpy(float)
        if schedule is not None and len(p):
            offsets = self._schedule_offsets(dispatch, time)
            keep = offsets < self._schedule_len
            plan[:, offsets[keep]] = schedule.reindex(p.index).to_numpy(float)[:, keep]
        # A period the schedule leaves open holds the value before it (no schedule: p_mw throughout).
        last = np.maximum.accumulate(np.where(np.isfinite(plan), np.arange(self._schedule_len), 0), axis=1)
        plan = np.take_along_axis(plan, last, axis=1)
        rows = self.held_q.index.get_indexer(p.index)
        self.held_plan[rows] = plan
        self.held_from_ns[rows] = time.value
        q = dispatch.q_mvar.dropna()
        q = q[q.index.isin(p.index)]
        self.held_q.loc[p.index] = 0.0
        self.held_q.loc[q.index] = q.to_numpy(float)
        self.held_until.loc[p.index] = time + self.scenario.setpoint_ttl

