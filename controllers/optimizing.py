"""The central optimizing controller: a receding-horizon cvxpy dispatch of every asset (DESIGN.md §5).

It owns only the glue between the controller contract and ``controllers.dispatch_model``: build the model in
``reset``, and in ``act`` read the observation, re-solve by changing Parameter values, and return the first
period's setpoints (or the model's safe fallback) with diagnostics.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

import cvxpy as cp
import pandas as pd

from controllers.api import ControllerSpec, Dispatch, Observation
from controllers.dispatch_model import DispatchModel, DispatchSolution, DispatchWeights

__all__ = ["OptimizingController", "SOLVERS"]

#: Solvers this controller accepts. HiGHS only solves LPs: it is refused when the model has a quadratic term.
SOLVERS: tuple[str, ...] = ("CLARABEL", "OSQP", "HIGHS")

#: OSQP defaults for receding-horizon use: loose tolerances with warm start (REFERENCES.md, Optimization).
_OSQP_DEFAULTS: Mapping[str, Any] = MappingProxyType({"eps_abs": 1e-3, "eps_rel": 1e-3, "max_iter": 4000})


class OptimizingController:
    """Central receding-horizon optimizer over all assets of the spec.

    ``feed_in=True`` (default) prices exports at ``signals["feed_in_eur_per_mwh"]`` rather than the import
    price, so the optimizer minimizes the tariff the feeder actually pays.
    Network constraints (``network=True``) use ``Observation.sensitivities``: up to ``max_voltage_rows``
    bus-voltage rows and ``max_loading_rows`` branch-loading rows, screened each step by closeness to their
    limit, constrained over the first ``network_periods`` periods (None = whole horizon).
    """

    def __init__(
        self,
        *,
        solver: str = "CLARABEL",
        solver_options: Mapping[str, Any] | None = None,
        network: bool = True,
        max_voltage_rows: int = 10,
        max_loading_rows: int = 10,
        network_periods: int | None = 16,
        feed_in: bool = True,
        demand_charge_eur_per_mw: float = 0.0,
        pv_curtailment_cost_eur_per_mwh: float = 1.0,
        flex_curtailment_cost_eur_per_mwh: float = 500.0,
        ev_unmet_cost_eur_per_mwh: float = 1000.0,
        terminal_soc_shortfall_cost_eur_per_mwh: float = 1000.0,
        voltage_slack_cost_eur_per_pu_h: float = 1.0e5,
        loading_slack_cost_eur_per_percent_h: float = 100.0,
        head_slack_cost_eur_per_mwh: float = 1000.0,
        throughput_cost_eur_per_mwh: float = 0.01,
    ) -> None:
        solver = solver.upper()
        if solver not in SOLVERS:
            raise ValueError(f"solver: expected one of {SOLVERS}, got {solver!r}")
        if max_voltage_rows < 0 or max_loading_rows < 0:
            raise ValueError("max_voltage_rows / max_loading_rows: must be >= 0")
        self.solver = solver
        self.solver_options = dict(_OSQP_DEFAULTS if solver == "OSQP" else {}) | dict(solver_options or {})
        self.network = network
        self.max_voltage_rows = max_voltage_rows
        self.max_loading_rows = max_loading_rows
        self.network_periods = network_periods
        self.feed_in = feed_in
        self.weights = DispatchWeights(
            demand_charge_eur_per_mw=demand_charge_eur_per_mw,
            pv_curtailment_cost_eur_per_mwh=pv_curtailment_cost_eur_per_mwh,
            flex_curtailment_cost_eur_per_mwh=flex_curtailment_cost_eur_per_mwh,
            ev_unmet_cost_eur_per_mwh=ev_unmet_cost_eur_per_mwh,
            terminal_soc_shortfall_cost_eur_per_mwh=terminal_soc_shortfall_cost_eur_per_mwh,
            voltage_slack_cost_eur_per_pu_h=voltage_slack_cost_eur_per_pu_h,
            loading_slack_cost_eur_per_percent_h=loading_slack_cost_eur_per_percent_h,
            head_slack_cost_eur_per_mwh=head_slack_cost_eur_per_mwh,
            throughput_cost_eur_per_mwh=throughput_cost_eur_per_mwh,
        )
        self.model: DispatchModel | None = None
        self.spec: ControllerSpec | None = None
        self.last_solution: DispatchSolution | None = None

    @property
    def problem(self) -> cp.Problem | None:
        """The built cvxpy problem (for ``controllers.testing.check_controller``'s DPP check)."""
        return None if self.model is None else self.model.problem

    def reset(self, spec: ControllerSpec, *, seed: int) -> None:
        """Build the model for ``spec.assets`` (the solve is deterministic: ``seed`` is not needed)."""
        del seed
        self.spec = spec
        self.model = DispatchModel.build(
            spec.assets,
            step=spec.step,
            horizon=spec.horizon,
            weights=self.weights,
            n_voltage_rows=self.max_voltage_rows if self.network else 0,
            n_loading_rows=self.max_loading_rows if self.network else 0,
            network_periods=self.network_periods,
            head_limit=spec.limits.p_head_max_mw is not None,
            feed_in=self.feed_in,
        )
        self._asset_index = pd.Index(spec.assets.index, name="asset_id")
        if self.solver == "HIGHS" and not _is_lp(self.model):
            raise ValueError("solver HIGHS: the dispatch model is not an LP")
        self.last_solution = None

    def act(self, observation: Observation) -> Dispatch:
        """Solve for the horizon starting at ``observation.time``; dispatch the first period, the rest of the
        plan goes with it as the devices' schedule."""
        if self.model is None or self.spec is None:
            raise RuntimeError("OptimizingController.act called before reset")
        if observation.step != self.spec.step:
            raise ValueError(f"observation.step {observation.step} differs from the spec's step {self.spec.step}")
        inputs = self.model.inputs_from_observation(observation)
        solution = self.model.solve(inputs, solver=self.solver, solver_options=self.solver_options)
        self.last_solution = solution
        diagnostics = solution.diagnostics() | {
            "solver": self.solver,
            "monitored_buses": inputs.v_rows,
            "monitored_branches": inputs.l_rows,
        }
        if solution.asset_ids.equals(self._asset_index):  # the model's table is the spec's (always, from reset)
            p_mw = pd.Series(solution.p[:, 0], index=self._asset_index, name="p_mw", dtype=float)
            schedule = pd.DataFrame(solution.p[:, 1:], index=self._asset_index, columns=solution.periods[1:])
        else:
            p_mw = solution.first_p_mw.reindex(self.spec.assets.index).astype(float)
            p_mw.index.name = "asset_id"
            schedule = solution.p_mw.iloc[:, 1:]
        return Dispatch(p_mw=p_mw, q_mvar=pd.Series(dtype=float), diagnostics=MappingProxyType(diagnostics),
                        schedule_mw=schedule)


def _is_lp(model: DispatchModel) -> bool:
    return model.problem.objective.expr.is_affine()
