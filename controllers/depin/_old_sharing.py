"""The DePIN policy: participant-owned edge agents that coordinate by sharing ADMM over the mesh.

Each participant's agent optimizes only its own assets with the same dispatch model the central SCADA uses
(``controllers.dispatch_model``), and the feeder-level cost — energy bought at the feeder head at the
import price, sold at the feed-in price, the peak limit and any demand charge — is shared through
*sharing ADMM* (Boyd et al., Distributed Optimization and Statistical Learning via ADMM, §7.3):

    p_a    <- argmin f_i(p) + rho/2 ||p_a - p_a_prev + xbar - zbar + u||²   (each agent, its own assets a)
    zbar   <- argmin g(N zbar) + N rho/2 ||zbar - u - xbar||²               (every agent, the same numbers)
    u      <- u + xbar - zbar

where ``xbar`` is the mean over all N fleet assets of their power trajectories. An agent broadcasts only the
*sum* of its assets' trajectory (one number per period) over the mesh; from what it hears it forms
``xbar`` and runs the (tiny) z-update itself, so there is no coordinator and no raw data leaves the
premises. A lost message means a stale term in ``xbar``; an agent that hears nothing falls back to local
autonomy: its own optimization at the tariff (the last prices it knows), plus IEEE 1547 volt-var.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any

import cvxpy as cp
import numpy as np
import pandas as pd

from controllers.api import AgentMessage, AgentSpec, Dispatch, Observation, Proposal
from controllers.dispatch_model import DispatchModel, DispatchSolution, DispatchWeights, Proximal
from controllers.feeder_cost import FeederCost
from controllers.volt_var import volt_var_q_mvar

__all__ = ["AdmmAgent"]


class AdmmAgent:
    """One participant's edge agent (implements ``controllers.api.Agent``).

    ``rho`` (EUR/MW² per period) trades convergence speed against oscillation; the default suits LV fleets
    of kW-scale assets at EUR 100–400/MWh. ``isolation_rounds``: after this many rounds without hearing
    anyone in an interval, the agent acts alone.
    """

    def __init__(
        self,
        *,
        rho: float = 1.0e4,
        solver: str = "CLARABEL",
        solver_options: dict[str, Any] | None = None,
        tolerance_mw: float = 1e-5,
        demand_charge_eur_per_mw: float = 0.0,
        head_slack_cost_eur_per_mwh: float = 1000.0,
        isolation_rounds: int = 2,
        volt_var: bool = True,
    ) -> None:
        if not rho > 0:
            raise ValueError(f"rho={rho!r} must be > 0")
        self.rho = rho
        self.solver = solver.upper()
        # Tight OSQP tolerances: ADMM's outer iterations amplify an inexact inner solve.
        default = {"eps_abs": 1e-7, "eps_rel": 1e-7, "max_iter": 20000} if self.solver == "OSQP" else {}
        self.solver_options = default | dict(solver_options or {})
        self.tolerance_mw = tolerance_mw
        self.demand_charge = demand_charge_eur_per_mw
        self.head_slack_cost = head_slack_cost_eur_per_mwh
        self.isolation_rounds = isolation_rounds
        self.volt_var = volt_var

    # -- per run -----------------------------------------------------------------------------------
    def reset(self, spec: AgentSpec, *, seed: int) -> None:
        del seed  # deterministic
        self.spec = spec
        self.hours = spec.step / pd.Timedelta("1h")
        self.n_total = max(spec.fleet_size, len(spec.assets), 1)
        # The local problem carries no price: the feeder's energy cost lives in the shared z-update.
        weights = DispatchWeights(demand_charge_eur_per_mw=0.0)
        self.model = DispatchModel.build(spec.assets, step=spec.step, horizon=spec.horizon, weights=weights,
                                         head_limit=False, proximal=True) if len(spec.assets) else None
        self.local = DispatchModel.build(spec.assets, step=spec.step, horizon=spec.horizon, weights=weights,
                                         head_limit=False) if len(spec.assets) else None
        self.feeder = FeederCost(horizon=spec.horizon, hours=self.hours, quad=self.rho / (2 * self.n_total),
                                 demand_charge_eur_per_mw=self.demand_charge,
                                 head_slack_cost_eur_per_mwh=self.head_slack_cost)
        T = spec.horizon
        self.heard: dict[str, np.ndarray] = {}  # sender → its latest aggregate trajectory
        self.p_prev: np.ndarray | None = None  # own assets (table order) × periods, last x-update
        self.zbar = np.zeros(T)
        self.u = np.zeros(T)
        self._time: pd.Timestamp | None = None
        self._silent_rounds = 0
        self._last_grid: pd.Series | None = None
        self._last_target: np.ndarray | None = None
        self._last_solution: DispatchSolution | None = None
        self._inputs: Any = None
        self._zero_price: Any = None
        self._base: np.ndarray | None = None

    @property
    def problems(self) -> list[cp.Problem]:
        """Every cvxpy problem this agent re-solves (checked for DPP by controllers.testing)."""
        return [m.problem for m in (self.model, self.local) if m is not None]

    @property
    def plan_mw(self) -> pd.DataFrame | None:
        """The agent's own assets × horizon periods (0 … T-1) of its last x-update (None before the first)."""
        if self.p_prev is None:
            return None
        return pd.DataFrame(self.p_prev, index=self.spec.assets.index, columns=range(self.spec.horizon))

    # -- per round ---------------------------------------------------------------------------------
    def propose(self, observation: Observation, inbox: tuple[AgentMessage, ...], *, round_index: int) -> Proposal:
        if observation.time != self._time:
            self._new_interval(observation.time)
        for m in inbox:
            self.heard[m.sender] = np.asarray(m.payload["x"], dtype=float)
        # Only the voltage at its own connection point: what the participant's own meter measures.
        own_buses = self.spec.assets["bus"].unique()
        self._last_grid = None if observation.grid is None else observation.grid.vm_pu.reindex(own_buses)
        self._silent_rounds = 0 if inbox else self._silent_rounds + 1
        if self.model is None:
            return Proposal(dispatch=Dispatch.empty(role="no assets"))
        if self._inputs is None:  # the observation is the same in every round of an interval: read it once
            self._inputs = self.model.inputs_from_observation(observation, include_base_load=False)
            self._zero_price = replace(self._inputs, price_eur_per_mwh=np.zeros_like(self._inputs.price_eur_per_mwh),
                                       head_fixed_mw=np.zeros_like(self._inputs.head_fixed_mw))
        isolated = round_index >= self.isolation_rounds and self._silent_rounds > round_index
        if isolated:
            return self._alone(observation)
        own = self._own_sum()
        xbar = (own + sum(self.heard.values(), np.zeros_like(own))) / self.n_total
        self._z_update(observation, xbar)
        prev = self.p_prev if self.p_prev is not None else np.zeros((len(self.spec.assets), self.spec.horizon))
        target = prev - xbar + self.zbar - self.u
        if (self._last_solution is not None and self._last_target is not None
                and np.max(np.abs(target - self._last_target), initial=0.0) < self.tolerance_mw):
            # Consensus has settled: the x-update would return what it returned last round.
            return self._proposal(self._last_solution, round_index)
        solution = self.model.solve(self._zero_price, solver=self.solver, solver_options=self.solver_options,
                                    proximal=Proximal(rho=self.rho, z_mw=target))
        if solution.fallback:
            return self._alone(observation, reason=solution.reason)
        self._last_target, self._last_solution = target, solution
        self.p_prev = solution.p
        return self._proposal(solution, round_index)

    def _proposal(self, solution: DispatchSolution, round_index: int) -> Proposal:
        payload = {"x": self._own_sum()}
        return Proposal(
            dispatch=self._dispatch(solution, mode="admm", round=round_index, heard=len(self.heard)),
            outbox=(AgentMessage(self.spec.participant_id, "*", payload),),
        )

    def _new_interval(self, time: pd.Timestamp) -> None:
        """Warm start: the last decision's trajectories shifted by the periods since (the horizon recedes;
        the last value stands in for the periods it did not cover)."""
        k = 0 if self._time is None else int((time - self._time) / self.spec.step)

        def shift(a: np.ndarray) -> np.ndarray:
            if a.shape[-1] == 0 or k == 0:
                return a
            kept = a[..., min(k, a.shape[-1] - 1):]
            return np.pad(kept, [(0, 0)] * (a.ndim - 1) + [(0, a.shape[-1] - kept.shape[-1])], mode="edge")

        self.heard = {sender: shift(v) for sender, v in self.heard.items()}
        self.zbar, self.u = shift(self.zbar), shift(self.u)
        if self.p_prev is not None:
            self.p_prev = shift(self.p_prev)
        self._time = time
        self._silent_rounds = 0
        self._last_target = self._last_solution = None
        self._inputs = self._zero_price = self._base = None

    def _own_sum(self) -> np.ndarray:
        if self.p_prev is None:
            return np.zeros(self.spec.horizon)
        return self.p_prev.sum(axis=0)

    def _z_update(self, obs: Observation, xbar: np.ndarray) -> None:
        if self._base is None:  # the feeder-level terms are the same in every round of an interval
            self._base = _horizon(obs.forecast.base_load_mw.sum(axis=1), obs, self.spec.horizon)
        prices = self._inputs.price_eur_per_mwh  # the dispatch model's reading of the same forecast
        feed_in = self._inputs.feed_in_eur_per_mwh
        limit = obs.limits.p_head_max_mw
        s = self.feeder.solve(base=self._base, price_imp=prices,
                              price_exp=prices if feed_in is None else np.minimum(feed_in, prices),
                              limit=1e6 if limit is None else float(limit),
                              target=self.n_total * (self.u + xbar))
        self.zbar = s / self.n_total
        self.u = self.u + xbar - self.zbar

    def _alone(self, obs: Observation, *, reason: str = "isolated: no mesh messages") -> Proposal:
        """Local autonomy: optimize own assets against the tariff, inverters on volt-var."""
        assert self.local is not None
        inputs = self.local.inputs_from_observation(obs, include_base_load=False)
        solution = self.local.solve(inputs, solver=self.solver, solver_options=self.solver_options)
        return Proposal(dispatch=self._dispatch(solution, mode="alone", reason=reason))

    def _dispatch(self, solution: DispatchSolution, **diagnostics: Any) -> Dispatch:
        p = solution.first_p_mw.reindex(self.spec.assets.index).astype(float)
        q = self._volt_var_q() if diagnostics.get("mode") == "alone" and self.volt_var else pd.Series(dtype=float)
        return Dispatch(p_mw=p, q_mvar=q, diagnostics=MappingProxyType(
            {**diagnostics, "status": solution.status, "objective_eur": solution.objective_eur}),
            schedule_mw=solution.p_mw.iloc[:, 1:])

    def _volt_var_q(self) -> pd.Series:
        """IEEE 1547 Cat. B volt-var on the agent's own bus voltage (the last one its meter saw)."""
        if self._last_grid is None:
            return pd.Series(dtype=float)
        return volt_var_q_mvar(self.spec.assets, self._last_grid)


def _horizon(series: pd.Series, obs: Observation, T: int) -> np.ndarray:
    """A forecast series on the T periods of the horizon (last value carried forward)."""
    periods = pd.date_range(obs.time, periods=T, freq=obs.step)
    values = series.astype(float).reindex(series.index.union(periods)).ffill().reindex(periods)
    return values.fillna(0.0).to_numpy()

