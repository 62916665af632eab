"""The only sequencer: steps every policy's twin copy through the same exogenous inputs in lock-step.

One interval, per policy: build the observation → controller acts → setpoints (with expiry) reach the
devices → device physics → AC power flow → record. Controllers only *return* dispatches; this module alone
mutates twin state (DESIGN.md §2, §6).
"""

from __future__ import annotations

import time as wallclock
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from controllers.api import (
    Controller,
    ControllerSpec,
    Dispatch,
    Forecast,
    GridSnapshot,
    NetworkLimits,
    Observation,
    load_controller,
)
from twin.devices import FleetPhysics, IntervalOutcome
from twin.inputs import RunInputs, derive_seed
from twin.powerflow import GridModel, PowerFlowResult
from twin.scenario import ControllerEntry, Scenario

__all__ = ["PolicyTwin", "StepRecord", "iterate_policies"]


@dataclass(frozen=True)
class StepRecord:
    """What one policy's twin did in one interval: the input to recording, KPIs and settlement."""

    policy: str
    time: pd.Timestamp
    power_flow: PowerFlowResult
    outcome: IntervalOutcome
    fallback: pd.Series  # bool per asset: ran on its autonomous default (no valid setpoint)
    price_eur_per_mwh: float
    feed_in_eur_per_mwh: float
    compute_s: float
    diagnostics: Any = field(default_factory=lambda: MappingProxyType({}))


class PolicyTwin:
    """One policy's copy of the twin: its own grid model, device state, held setpoints and controller."""

    def __init__(self, entry: ControllerEntry, controller: Controller, inputs: RunInputs, scenario: Scenario) -> None:
        self.name = entry.name
        self.controller = controller
        self.inputs = inputs
        self.scenario = scenario
        self.grid = GridModel(inputs.net, inputs.assets, engine=scenario.power_flow.engine)
        self.physics = FleetPhysics(inputs.assets, inputs.ev_sessions, step=scenario.step)
        ids = inputs.assets.index
        self.held_p = pd.Series(np.nan, index=ids)
        self.held_q = pd.Series(0.0, index=ids)
        self.held_until = pd.Series(pd.NaT, index=ids, dtype="datetime64[ns, UTC]")
        self.last_p = pd.Series(0.0, index=ids)
        self.last_pf: PowerFlowResult | None = None
        self.limits = NetworkLimits(**scenario.limits.model_dump())

    @classmethod
    def create(cls, entry: ControllerEntry, inputs: RunInputs, scenario: Scenario) -> PolicyTwin:
        controller = load_controller(entry.target, **entry.kwargs)
        twin = cls(entry, controller, inputs, scenario)
        spec = ControllerSpec(
            assets=inputs.assets.copy(),
            step=scenario.step,
            horizon=scenario.horizon_steps,
            limits=twin.limits,
            buses=tuple(int(b) for b in inputs.net.bus.index),
        )
        controller.reset(spec, seed=derive_seed(scenario.seed, f"controller:{entry.name}"))
        return twin

    # -- observation -------------------------------------------------------------------------------
    def observe(self, time: pd.Timestamp) -> Observation:
        inputs = self.inputs
        row = inputs.at(time)
        window = slice(row, row + self.scenario.horizon_steps)
        state = self.physics.state_frame(time)
        state["p_mw"] = self.last_p
        state["available"] = True
        state["quality"] = "good"
        state["age_s"] = 0.0
        forecast = Forecast(
            base_load_mw=inputs.base_load_bus_mw.iloc[window].copy(),
            pv_avail_mw=inputs.pv_avail_mw.iloc[window].copy(),
            flex_base_mw=inputs.flex_base_mw.iloc[window].copy(),
            price_eur_per_mwh=inputs.price_eur_per_mwh.iloc[window].copy(),
        )
        return Observation(
            time=time,
            step=self.scenario.step,
            assets=inputs.assets.copy(),
            state=state,
            forecast=forecast,
            limits=self.limits,
            grid=self._snapshot(),
            signals=MappingProxyType({"feed_in_eur_per_mwh": self.scenario.tariff.feed_in_eur_per_mwh}),
        )

    def _snapshot(self) -> GridSnapshot | None:
        pf = self.last_pf
        if pf is None:
            return None
        return GridSnapshot(
            time=self._last_time,
            vm_pu=pf.vm_pu,
            line_loading_percent=pf.line_loading_percent,
            trafo_loading_percent=pf.trafo_loading_percent,
            p_head_mw=pf.p_head_mw,
            q_head_mvar=pf.q_head_mvar,
            losses_mw=pf.losses_mw,
            converged=pf.converged,
        )

    # -- one interval ------------------------------------------------------------------------------
    def step(self, time: pd.Timestamp) -> StepRecord:
        t0 = wallclock.perf_counter()
        dispatch = self.controller.act(self.observe(time))
        compute_s = wallclock.perf_counter() - t0
        self._hold(time, dispatch)
        row = self.inputs.at(time)
        pv_avail = self.inputs.pv_avail_mw.iloc[row]
        flex_base = self.inputs.flex_base_mw.iloc[row]
        valid = self.held_until > time
        autonomous = self.physics.autonomous_p_mw(pv_avail_mw=pv_avail, flex_base_mw=flex_base)
        p_set = self.held_p.where(valid, autonomous)
        q_set = self.held_q.where(valid, 0.0)
        outcome = self.physics.advance(
            time, p_setpoint_mw=p_set, q_setpoint_mvar=q_set, pv_avail_mw=pv_avail, flex_base_mw=flex_base
        )
        profiles = self.inputs.profiles
        self.grid.set_injections(
            load_p_mw=profiles.load_p_mw.iloc[row],
            load_q_mvar=profiles.load_q_mvar.iloc[row],
            sgen_p_mw=profiles.sgen_p_mw.iloc[row],
            asset_p_mw=outcome.p_mw,
            asset_q_mvar=outcome.q_mvar,
        )
        pf = self.grid.solve(time)
        self.last_pf, self._last_time = pf, time
        self.last_p = outcome.p_mw
        return StepRecord(
            policy=self.name,
            time=time,
            power_flow=pf,
            outcome=outcome,
            fallback=~valid,
            price_eur_per_mwh=float(self.inputs.price_eur_per_mwh.iloc[row]),
            feed_in_eur_per_mwh=self.scenario.tariff.feed_in_eur_per_mwh,
            compute_s=compute_s,
            diagnostics=dispatch.diagnostics,
        )

    def _hold(self, time: pd.Timestamp, dispatch: Dispatch) -> None:
        """Accept setpoints for known assets; each is held until ``time + setpoint_ttl``."""
        p = dispatch.p_mw.dropna()
        unknown = p.index.difference(self.held_p.index)
        if len(unknown):
            raise ValueError(f"controller {self.name!r} dispatched unknown asset_id {unknown[0]!r}")
        self.held_p.loc[p.index] = p.to_numpy(float)
        q = dispatch.q_mvar.dropna().reindex(self.held_q.index.intersection(dispatch.q_mvar.index))
        self.held_q.loc[p.index] = 0.0
        self.held_q.loc[q.index] = q.to_numpy(float)
        self.held_until.loc[p.index] = time + self.scenario.setpoint_ttl


def iterate_policies(
    scenario: Scenario, inputs: RunInputs, *, entries: tuple[ControllerEntry, ...] | None = None
) -> Iterator[list[StepRecord]]:
    """Yield, per interval, one StepRecord per policy — all twins advanced in lock-step."""
    twins = [PolicyTwin.create(e, inputs, scenario) for e in (entries or scenario.controllers)]
    for time in scenario.times:
        yield [twin.step(time) for twin in twins]
