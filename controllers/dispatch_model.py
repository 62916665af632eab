"""The receding-horizon DER dispatch model: one cvxpy problem family for any subset of the asset table.

This module owns building the problem once (``DispatchModel.build``), turning an ``Observation`` into its
numeric inputs (``DispatchModel.inputs_from_observation``), re-solving by changing ``Parameter`` values only
(DPP), and the safe fallback used when a solve fails. Clarabel and HiGHS re-solves skip cvxpy's per-solve
work: the canonical form cvxpy builds at the first solve is kept (``_Canonical``) and re-filled from the new
Parameter values; Clarabel then returns the numbers ``problem.solve`` would, HiGHS re-runs its simplex from the
previous decision's basis (the same optimum, possibly another optimal vertex when the optimum is not unique).
The central controller uses it for all assets; a DePIN agent uses it for its own assets, adding per-asset
prices (dual multipliers) and an ADMM proximal term.

Model, per period ``t`` of length ``h = step / 1 h`` (load convention, MW):

* battery ``p = ch - dis``, ``soc[t+1] = soc[t] + h (eta_c ch - dis / eta_d)``, ``soc_min e_max <= soc <=
  soc_max e_max``, terminal ``soc[T] >= target`` (default: the SOC now), soft with a large penalty;
* EV ``p = ch - dis`` (``dis`` only if ``v2g``), bounded by ``p_max`` times the connected share of the
  period (connected now and before ``ev_departure``; future arrivals are not forecast). ``need[t]`` is the
  energy still owed, ``0 <= need[t] <= need[0]`` (V2G may only return energy charged within the horizon,
  since the EV's own SOC is not observed); what cannot be met by departure is ``unmet``, penalised;
* flexible load ``p = served``; the requested draw ``flex_base_mw`` accumulates as a backlog
  ``B[t+1] = B[t] + h (base - served - curtailed)`` with ``0 <= B[t] <= (energy requested in the last
  flex_window) + (initial backlog while before its deadline)``, so deferred energy is conserved and served
  within its window (exact under earliest-deadline-first service). Backlog left at the horizon end is valued
  at the horizon's highest price so that the optimiser does not push demand past the horizon for free;
* PV ``p = curtail - available``, ``0 <= curtail <= available``, curtailment priced.

Objective (EUR): ``h price . (feeder-head import)`` + ``demand_charge max_t(head import, billed peak)``
+ curtailment, unmet-energy and soft-limit slack penalties + a tiny battery/EV throughput cost that removes
the simultaneous charge/discharge degeneracy. Separate ``ch``/``dis`` variables are a relaxation: charging
and discharging at once turns ``(1 - eta_c eta_d) ch`` into conversion losses, which the twin's devices (one
net setpoint) cannot do. When PV curtailment is in the model, that "energy dump" is a cheaper way than
curtailment to absorb surplus PV against an over-voltage limit, unless the throughput cost is at least
``pv_curtailment_cost (1 - eta) / (1 + eta)`` (``eta = eta_c eta_d``): so each battery and V2G charger gets
the larger of the configured throughput cost and twice that floor (``_dump_proof_throughput_cost``).
Feeder-head import is lossless and linear: ``head[t] = sum_bus base_load[t] + sum_assets p[t]`` (an agent
passes ``include_base_load=False``). The head limit ``NetworkLimits.p_head_max_mw`` is soft. When neither a head limit nor a demand charge is built in, no
constraint couples the assets and the problem stays block-separable (cheaper for the solvers).

Network (optional, fixed number of *slots* chosen at build time): with ``S`` = ``dvm_dp_pu_per_mw`` and
``p_bus0`` = ``p_bus_mw`` of ``Observation.sensitivities``,
``v[t] ~= vm_pu + S (base_load[t] - pv_available[t] + bus_aggregate(p_assets[t]) - p_bus0)``; every row of
``S`` present in the observation is screened each solve, and the ``n_voltage_rows`` rows closest to a limit
(worst case over the assets' ratings) fill the slots; unused slots get zero rows. Branch loading rows
(``dloading_dp_percent_per_mw`` around ``loading_percent``) likewise. Optionally only the first
``network_periods`` periods are constrained (the linearization is local anyway). Limits are soft: slack is penalised per pu (or percent) and hour. Reactive power is not a decision
variable: ``q`` is held at the operating point, so ``dvm_dq`` is not used.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Callable, Mapping

import cvxpy as cp
import numpy as np
import pandas as pd
import scipy.sparse as sp
from cvxpy.lin_ops.lin_op import CONSTANT_ID
from cvxpy.reductions.solution import Solution
from cvxpy.reductions.solvers.solver import Solver

from controllers.api import AssetKind, Observation
from controllers.dispatch_inputs import KIND_ORDER, DispatchInputs, DispatchReader

__all__ = [
    "ACCEPTED_STATUSES",
    "DispatchInputs",
    "DispatchModel",
    "DispatchSolution",
    "DispatchWeights",
    "Proximal",
    "throughput_cost_eur_per_mwh",
]

#: cvxpy statuses whose values are read; anything else (infeasible, unbounded, solver error) falls back.
ACCEPTED_STATUSES: frozenset[str] = frozenset({cp.OPTIMAL, cp.OPTIMAL_INACCURATE})

_KIND_ORDER = KIND_ORDER

#: Solvers re-solved through the canonical form kept from cvxpy (``_Canonical``); others go through problem.solve.
_DIRECT_SOLVERS = frozenset({"CLARABEL", "HIGHS"})

#: Factor over the break-even throughput cost at which dumping energy through simultaneous charge and
#: discharge stops paying against PV curtailment (1 would leave a tie, and the solver may pick either).
_DUMP_MARGIN = 2.0


@dataclass(frozen=True)
class DispatchWeights:
    """Objective weights (EUR). Slack costs are per unit of violation and hour, so they do not scale with step."""

    demand_charge_eur_per_mw: float = 0.0
    pv_curtailment_cost_eur_per_mwh: float = 1.0
    flex_curtailment_cost_eur_per_mwh: float = 500.0
    ev_unmet_cost_eur_per_mwh: float = 1000.0
    terminal_soc_shortfall_cost_eur_per_mwh: float = 1000.0
    voltage_slack_cost_eur_per_pu_h: float = 1.0e5
    loading_slack_cost_eur_per_percent_h: float = 100.0
    head_slack_cost_eur_per_mwh: float = 1000.0
    throughput_cost_eur_per_mwh: float = 0.01

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"DispatchWeights.{name}: must be finite and >= 0, got {value!r}")


@dataclass(frozen=True)
class Proximal:
    """ADMM proximal term ``rho/2 || p - z + u ||^2`` (per asset and period; p in MW, load convention).

    ``z`` and ``u``: frames indexed by ``asset_id`` with one column per period (missing = 0), or arrays of
    shape (assets, periods) in the row order of the model's asset table (what an agent re-solving every
    round passes: no index alignment on the hot path).
    """

    rho: float
    z_mw: pd.DataFrame | np.ndarray
    u_mw: pd.DataFrame | np.ndarray | None = None


@dataclass(frozen=True)
class DispatchSolution:
    """The result of one solve (or of the fallback), as arrays; the frames are built when first read.

    ``p``: MW per asset (rows in ``asset_ids`` order = the model's asset table) and period (``periods``).
    ``horizon_values``: the other trajectories by name (``soc_mwh``, ``flex_backlog_mwh``, ``pv_curtail_mw``:
    (ids, columns, values); ``ev_unmet_mwh``: (ids, None, values)). On a fallback ``p`` holds only the
    first period and the horizon quantities are empty.
    """

    status: str
    fallback: bool
    reason: str
    objective_eur: float
    p: np.ndarray
    asset_ids: pd.Index
    periods: pd.DatetimeIndex
    max_voltage_slack_pu: float
    max_loading_slack_percent: float
    max_head_slack_mw: float
    solve_time_s: float
    compile_time_s: float
    wall_time_s: float
    notes: tuple[str, ...] = ()
    horizon_values: Mapping[str, tuple[pd.Index, pd.Index | None, np.ndarray]] = field(default_factory=dict)

    @cached_property
    def p_mw(self) -> pd.DataFrame:
        """Index asset_id, columns = period starts."""
        return pd.DataFrame(self.p, index=self.asset_ids, columns=self.periods)

    @property
    def first_p_mw(self) -> pd.Series:
        """Setpoints for the first period (what a controller dispatches now)."""
        return pd.Series(self.p[:, 0], index=self.asset_ids, name="p_mw")

    @cached_property
    def soc_mwh(self) -> pd.DataFrame:
        return self._frame("soc_mwh")

    @cached_property
    def flex_backlog_mwh(self) -> pd.DataFrame:
        return self._frame("flex_backlog_mwh")

    @cached_property
    def pv_curtail_mw(self) -> pd.DataFrame:
        return self._frame("pv_curtail_mw")

    @cached_property
    def ev_unmet_mwh(self) -> pd.Series:
        if "ev_unmet_mwh" not in self.horizon_values:
            return pd.Series(dtype=float)
        ids, _, values = self.horizon_values["ev_unmet_mwh"]
        return pd.Series(values, index=ids)

    def _frame(self, name: str) -> pd.DataFrame:
        if name not in self.horizon_values:
            return pd.DataFrame(dtype=float)
        ids, columns, values = self.horizon_values[name]
        if values is None:
            return pd.DataFrame(index=ids, columns=columns, dtype=float)
        return pd.DataFrame(values, index=ids, columns=columns)

    def diagnostics(self) -> dict[str, Any]:
        """Scalars for ``Dispatch.diagnostics``."""
        return {
            "status": self.status,
            "fallback": self.fallback,
            "fallback_reason": self.reason,
            "objective_eur": self.objective_eur,
            "solve_time_s": self.solve_time_s,
            "compile_time_s": self.compile_time_s,
            "wall_time_s": self.wall_time_s,
            "ev_unmet_mwh": float(self.ev_unmet_mwh.sum()),
            "max_voltage_slack_pu": self.max_voltage_slack_pu,
            "max_loading_slack_percent": self.max_loading_slack_percent,
            "max_head_slack_mw": self.max_head_slack_mw,
            "notes": self.notes,
        }




@dataclass
class _Params:
    """The cvxpy Parameters of a built model (names mirror DispatchInputs)."""

    price: cp.Parameter
    head_fixed: cp.Parameter
    head_limit: cp.Parameter
    billed_peak: cp.Parameter
    fixed_cost: cp.Parameter
    backlog_value: cp.Parameter
    bat_soc0: cp.Parameter | None = None
    bat_target: cp.Parameter | None = None
    bat_pmax: cp.Parameter | None = None
    ev_ch_max: cp.Parameter | None = None
    ev_dis_max: cp.Parameter | None = None
    ev_need: cp.Parameter | None = None
    ev_need_cap: cp.Parameter | None = None
    ev_after: cp.Parameter | None = None
    flex_base: cp.Parameter | None = None
    flex_pmax: cp.Parameter | None = None
    flex_b0: cp.Parameter | None = None
    flex_cap: cp.Parameter | None = None
    pv_avail: cp.Parameter | None = None
    v_sens: cp.Parameter | None = None
    v_lo: cp.Parameter | None = None
    v_hi: cp.Parameter | None = None
    l_sens: cp.Parameter | None = None
    l_head: cp.Parameter | None = None
    asset_price: cp.Parameter | None = None
    price_exp: cp.Parameter | None = None
    price_spread: cp.Parameter | None = None
    prox_scale: cp.Parameter | None = None
    prox_target: cp.Parameter | None = None


@dataclass
class _Vars:
    bat_ch: cp.Variable | None = None
    bat_dis: cp.Variable | None = None
    bat_soc: cp.Variable | None = None
    bat_short: cp.Variable | None = None
    ev_ch: cp.Variable | None = None
    ev_dis: cp.Variable | None = None
    ev_need: cp.Variable | None = None
    ev_unmet: cp.Variable | None = None
    flex_serve: cp.Variable | None = None
    flex_curt: cp.Variable | None = None
    flex_backlog: cp.Variable | None = None
    pv_curt: cp.Variable | None = None
    v_slack: cp.Variable | None = None
    l_slack: cp.Variable | None = None
    head_slack: cp.Variable | None = None
    peak: cp.Variable | None = None
    total: cp.Variable | None = None
    head_import: cp.Variable | None = None
    dv: cp.Variable | None = None
    by_kind: dict[AssetKind, cp.Expression] = field(default_factory=dict)


class DispatchModel:
    """A built dispatch problem for a fixed asset table, step, horizon and network slot count.

    Build with :meth:`build` (once per run), then per interval ``inputs_from_observation`` and ``solve``.
    """

    def __init__(
        self,
        *,
        assets: pd.DataFrame,
        step: pd.Timedelta,
        horizon: int,
        weights: DispatchWeights,
        ids: dict[AssetKind, list[Any]],
        buses: tuple[Any, ...],
        n_voltage_rows: int,
        n_loading_rows: int,
        network_periods: int,
        problem: cp.Problem,
        params: _Params,
        variables: _Vars,
    ) -> None:
        self.assets = assets
        self.step = step
        self.horizon = horizon
        self.weights = weights
        self.ids = ids
        self.buses = buses
        self.n_voltage_rows = n_voltage_rows
        self.n_loading_rows = n_loading_rows
        self.network_periods = network_periods
        self.problem = problem
        self._p = params
        self._v = variables
        for kind in _KIND_ORDER:
            if ids[kind] and kind not in variables.by_kind:
                raise ValueError(f"assets of kind {kind.value} have no variables in the model")
        self.reader = DispatchReader(assets, step=step, horizon=horizon, n_voltage_rows=n_voltage_rows,
                                     n_loading_rows=n_loading_rows)
        self._order = self.reader._order
        # Row permutations between the model's order (by kind) and the asset table's order.
        position = {a: i for i, a in enumerate(self._order)}
        self._table_from_order = np.array([position[a] for a in assets.index], dtype=int)
        self._order_from_table = np.argsort(self._table_from_order)
        self._table_ids = pd.Index(assets.index, name="asset_id")
        self._kind_ids = {kind: pd.Index(ids[kind], name="asset_id") for kind in AssetKind}  # for the solutions
        self._assigned: dict[int, np.ndarray] = {}  # Parameter id -> the value it holds
        self._direct: dict[tuple[str, str], _Canonical | None] = {}  # (solver, options) -> direct re-solve state
        # Per kind, its rows in the model's order, and the static columns read every interval (as arrays).
        self._slice = self.reader._slice
        self._static = self.reader._static

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        assets: pd.DataFrame,
        *,
        step: pd.Timedelta,
        horizon: int,
        weights: DispatchWeights = DispatchWeights(),
        n_voltage_rows: int = 0,
        n_loading_rows: int = 0,
        network_periods: int | None = None,
        head_limit: bool = True,
        asset_prices: bool = False,
        proximal: bool = False,
        feed_in: bool = False,
    ) -> DispatchModel:
        """Build the problem for ``assets`` (any subset of the asset table).

        ``n_voltage_rows`` / ``n_loading_rows``: network slots (0 = no network constraints).
        ``head_limit``: include the soft feeder-head import limit (its value comes from each observation's
        ``limits.p_head_max_mw``; a limit that appears only later is ignored, with a note, when False).
        ``network_periods``: constrain the network in the first K periods only (None = whole horizon). The
        linearization is only good near the operating point, and every constrained period couples all assets
        (the interior-point KKT fill grows with slots x periods), so a near window is both cheaper and honest.
        ``asset_prices``: add ``h sum price_i,t p_i,t`` with a per-asset price Parameter (dual multipliers).
        ``proximal``: add the ADMM term ``rho/2 ||p - z + u||^2``.
        ``feed_in``: price exports at the feed-in price (``signals["feed_in_eur_per_mwh"]``) instead of the
        import price: cost ``h (price_exp . head + (price - price_exp) . max(head, 0))``, convex because
        exports never earn more than imports cost. This couples the fleet through the feeder head.
        """
        if horizon < 1:
            raise ValueError(f"horizon: must be >= 1 period, got {horizon}")
        if not step > pd.Timedelta(0):
            raise ValueError(f"step: must be a positive Timedelta, got {step!r}")
        unknown = sorted({str(k) for k in assets["kind"]} - {k.value for k in _KIND_ORDER})
        if unknown:
            raise ValueError(f"assets.kind: unknown kinds {unknown}")
        T = horizon
        h = step / pd.Timedelta("1h")
        w = weights
        ids = {kind: [a for a, k in assets["kind"].items() if str(k) == kind.value] for kind in AssetKind}
        buses = tuple(dict.fromkeys(assets["bus"].tolist()))
        bus_pos = {b: i for i, b in enumerate(buses)}

        def incidence(kind: AssetKind) -> sp.csr_matrix:
            rows = [bus_pos[assets.at[a, "bus"]] for a in ids[kind]]
            n = len(ids[kind])
            return sp.csr_matrix((np.ones(n), (rows, np.arange(n))), shape=(len(buses), n))

        def col(kind: AssetKind, name: str) -> np.ndarray:
            return assets.loc[ids[kind], name].to_numpy(dtype=float)

        P = _Params(
            price=cp.Parameter(T, name="price_eur_per_mwh"),
            head_fixed=cp.Parameter(T, name="head_fixed_mw"),
            head_limit=cp.Parameter(name="head_limit_mw"),
            billed_peak=cp.Parameter(name="billed_peak_mw"),
            fixed_cost=cp.Parameter(name="fixed_cost_eur"),
            backlog_value=cp.Parameter(nonneg=True, name="backlog_value_eur_per_mwh"),
        )
        V = _Vars()
        cons: list[cp.Constraint] = []
        cost: list[cp.Expression] = [P.fixed_cost]
        throughput: list[cp.Expression] = []

        nb = len(ids[AssetKind.BATTERY])
        if nb:
            e_max = col(AssetKind.BATTERY, "e_max_mwh")
            eta_c = col(AssetKind.BATTERY, "eta_charge")
            eta_d = col(AssetKind.BATTERY, "eta_discharge")
            lo = col(AssetKind.BATTERY, "soc_min") * e_max
            hi = col(AssetKind.BATTERY, "soc_max") * e_max
            P.bat_soc0 = cp.Parameter(nb, name="bat_soc0_mwh")
            P.bat_target = cp.Parameter(nb, name="bat_soc_target_mwh")
            P.bat_pmax = cp.Parameter((nb, T), nonneg=True, name="bat_p_max_mw")
            V.bat_ch = cp.Variable((nb, T), nonneg=True, name="bat_ch_mw")
            V.bat_dis = cp.Variable((nb, T), nonneg=True, name="bat_dis_mw")
            V.bat_soc = cp.Variable((nb, T + 1), name="bat_soc_mwh")
            V.bat_short = cp.Variable(nb, nonneg=True, name="bat_terminal_short_mwh")
            lo_m, hi_m = np.tile(lo[:, None], (1, T)), np.tile(hi[:, None], (1, T))
            cons += [
                V.bat_ch <= P.bat_pmax,
                V.bat_dis <= P.bat_pmax,
                V.bat_soc[:, 0] == P.bat_soc0,
                V.bat_soc[:, 1:]
                == V.bat_soc[:, :-1] + h * (sp.diags(eta_c) @ V.bat_ch - sp.diags(1.0 / eta_d) @ V.bat_dis),
                V.bat_soc[:, 1:] >= lo_m,
                V.bat_soc[:, 1:] <= hi_m,
                V.bat_soc[:, T] + V.bat_short >= P.bat_target,
            ]
            cost.append(w.terminal_soc_shortfall_cost_eur_per_mwh * cp.sum(V.bat_short))
            tp_bat = _dump_proof_throughput_cost(w, eta_c * eta_d, has_pv=bool(ids[AssetKind.PV]))
            throughput.append(tp_bat @ cp.sum(V.bat_ch + V.bat_dis, axis=1))
            V.by_kind[AssetKind.BATTERY] = V.bat_ch - V.bat_dis

        ne = len(ids[AssetKind.EV_CHARGER])
        if ne:
            eta_c = col(AssetKind.EV_CHARGER, "eta_charge")
            v2g = assets.loc[ids[AssetKind.EV_CHARGER], "v2g"].fillna(False).astype(bool).to_numpy()
            P.ev_ch_max = cp.Parameter((ne, T), nonneg=True, name="ev_ch_max_mw")
            P.ev_need = cp.Parameter(ne, nonneg=True, name="ev_need_mwh")
            P.ev_need_cap = cp.Parameter((ne, T), nonneg=True, name="ev_need_cap_mwh")
            P.ev_after = cp.Parameter(ne, nonneg=True, name="ev_need_after_horizon_mwh")
            V.ev_ch = cp.Variable((ne, T), nonneg=True, name="ev_ch_mw")
            V.ev_need = cp.Variable((ne, T + 1), name="ev_need_mwh")
            V.ev_unmet = cp.Variable(ne, nonneg=True, name="ev_unmet_mwh")
            delivered = sp.diags(eta_c) @ V.ev_ch
            p_ev = V.ev_ch
            cons.append(V.ev_ch <= P.ev_ch_max)
            # Only V2G chargers can dump energy (charge and discharge at once); plain chargers keep the base cost.
            tp_ev = np.where(
                v2g,
                _dump_proof_throughput_cost(
                    w, eta_c * col(AssetKind.EV_CHARGER, "eta_discharge"), has_pv=bool(ids[AssetKind.PV])
                ),
                w.throughput_cost_eur_per_mwh,
            )
            throughput.append(tp_ev @ cp.sum(V.ev_ch, axis=1))
            if v2g.any():  # discharge variables only for V2G chargers (static in the asset table)
                sel = sp.csr_matrix(np.eye(ne)[:, v2g])
                eta_d = col(AssetKind.EV_CHARGER, "eta_discharge")[v2g]
                P.ev_dis_max = cp.Parameter((int(v2g.sum()), T), nonneg=True, name="ev_dis_max_mw")
                V.ev_dis = cp.Variable((int(v2g.sum()), T), nonneg=True, name="ev_dis_mw")
                cons.append(V.ev_dis <= P.ev_dis_max)
                delivered = delivered - sel @ (sp.diags(1.0 / eta_d) @ V.ev_dis)
                p_ev = p_ev - sel @ V.ev_dis
                throughput.append(tp_ev[v2g] @ cp.sum(V.ev_dis, axis=1))
            cons += [
                V.ev_need[:, 0] == P.ev_need,
                V.ev_need[:, 1:] == V.ev_need[:, :-1] - h * delivered,
                V.ev_need[:, 1:] >= 0,
                V.ev_need[:, 1:] <= P.ev_need_cap,
                V.ev_unmet >= V.ev_need[:, T] - P.ev_after,
            ]
            cost.append(w.ev_unmet_cost_eur_per_mwh * cp.sum(V.ev_unmet))
            V.by_kind[AssetKind.EV_CHARGER] = p_ev

        nf = len(ids[AssetKind.FLEX_LOAD])
        if nf:
            P.flex_base = cp.Parameter((nf, T), nonneg=True, name="flex_base_mw")
            P.flex_pmax = cp.Parameter((nf, T), nonneg=True, name="flex_p_max_mw")
            P.flex_b0 = cp.Parameter(nf, nonneg=True, name="flex_backlog0_mwh")
            P.flex_cap = cp.Parameter((nf, T), nonneg=True, name="flex_backlog_cap_mwh")
            V.flex_serve = cp.Variable((nf, T), nonneg=True, name="flex_served_mw")
            V.flex_curt = cp.Variable((nf, T), nonneg=True, name="flex_curtailed_mw")
            V.flex_backlog = cp.Variable((nf, T + 1), name="flex_backlog_mwh")
            cons += [
                V.flex_serve <= P.flex_pmax,
                V.flex_backlog[:, 0] == P.flex_b0,
                V.flex_backlog[:, 1:]
                == V.flex_backlog[:, :-1] + h * (P.flex_base - V.flex_serve - V.flex_curt),
                V.flex_backlog[:, 1:] >= 0,
                V.flex_backlog[:, 1:] <= P.flex_cap,
            ]
            cost.append(w.flex_curtailment_cost_eur_per_mwh * h * cp.sum(V.flex_curt))
            cost.append(P.backlog_value * cp.sum(V.flex_backlog[:, T]))
            V.by_kind[AssetKind.FLEX_LOAD] = V.flex_serve

        npv = len(ids[AssetKind.PV])
        if npv:
            P.pv_avail = cp.Parameter((npv, T), nonneg=True, name="pv_avail_mw")
            V.pv_curt = cp.Variable((npv, T), nonneg=True, name="pv_curtail_mw")
            cons.append(V.pv_curt <= P.pv_avail)
            cost.append(w.pv_curtailment_cost_eur_per_mwh * h * cp.sum(V.pv_curt))
            # The PV's -available part is a Parameter: it lives in head_fixed / fixed_cost / headrooms
            # (a Parameter times it would break DPP).
            V.by_kind[AssetKind.PV] = V.pv_curt

        kinds = [k for k in _KIND_ORDER if k in V.by_kind]
        coupled = head_limit or w.demand_charge_eur_per_mw > 0 or feed_in
        if throughput:  # already weighted per asset (EUR/MWh)
            cost.append(h * sum(throughput))
        if not kinds:
            coupled = False
        elif not coupled:
            # No constraint couples the assets: the price term goes on each asset, and the problem stays
            # block-separable (its KKT fill is linear in the horizon instead of quadratic per asset).
            cost.append(h * sum(cp.sum(V.by_kind[k] @ P.price) for k in kinds))
        else:
            # The fleet total is a variable tied by one equality per period: only these rows couple all
            # assets. Each coupled asset still costs ~T^2 KKT fill under the solvers' AMD ordering.
            V.total = cp.Variable(T, name="fleet_total_mw")
            cons.append(V.total == sum(cp.sum(V.by_kind[k], axis=0) for k in kinds))
            head = P.head_fixed + V.total
            if feed_in:
                P.price_exp = cp.Parameter(T, name="price_export_eur_per_mwh")
                P.price_spread = cp.Parameter(T, nonneg=True, name="price_spread_eur_per_mwh")
                V.head_import = cp.Variable(T, nonneg=True, name="head_import_mw")
                cons.append(V.head_import >= head)
                cost.append(h * (P.price_exp @ V.total + P.price_spread @ V.head_import))
            else:
                cost.append(h * (P.price @ V.total))
            if head_limit:
                V.head_slack = cp.Variable(T, nonneg=True, name="head_slack_mw")
                cons.append(head <= P.head_limit + V.head_slack)
                cost.append(w.head_slack_cost_eur_per_mwh * h * cp.sum(V.head_slack))
            if w.demand_charge_eur_per_mw > 0:
                V.peak = cp.Variable(name="peak_mw")
                cons += [V.peak >= head, V.peak >= P.billed_peak]
                cost.append(w.demand_charge_eur_per_mw * V.peak)

        K = T if network_periods is None else max(1, min(int(network_periods), T))
        if (n_voltage_rows or n_loading_rows) and kinds:
            bus_inj = sum(incidence(k) @ V.by_kind[k][:, :K] for k in kinds)
            if n_voltage_rows:
                P.v_sens = cp.Parameter((n_voltage_rows, len(buses)), name="v_sens_pu_per_mw")
                P.v_lo = cp.Parameter((n_voltage_rows, K), name="v_lo_headroom_pu")
                P.v_hi = cp.Parameter((n_voltage_rows, K), name="v_hi_headroom_pu")
                V.v_slack = cp.Variable((n_voltage_rows, K), nonneg=True, name="v_slack_pu")
                V.dv = cp.Variable((n_voltage_rows, K), name="dv_pu")
                cons += [
                    V.dv == P.v_sens @ bus_inj,
                    V.dv <= P.v_hi + V.v_slack,
                    -V.dv <= P.v_lo + V.v_slack,
                ]
                cost.append(w.voltage_slack_cost_eur_per_pu_h * h * cp.sum(V.v_slack))
            if n_loading_rows:
                P.l_sens = cp.Parameter((n_loading_rows, len(buses)), name="l_sens_percent_per_mw")
                P.l_head = cp.Parameter((n_loading_rows, K), name="l_headroom_percent")
                V.l_slack = cp.Variable((n_loading_rows, K), nonneg=True, name="l_slack_percent")
                cons.append(P.l_sens @ bus_inj <= P.l_head + V.l_slack)
                cost.append(w.loading_slack_cost_eur_per_percent_h * h * cp.sum(V.l_slack))
        else:
            n_voltage_rows = n_loading_rows = 0

        if (asset_prices or proximal) and kinds:
            stacked = cp.vstack([V.by_kind[k] for k in kinds])  # rows in model asset order
            n = stacked.shape[0]
            if asset_prices:
                P.asset_price = cp.Parameter((n, T), name="asset_price_eur_per_mwh")
                cost.append(h * cp.sum(cp.multiply(P.asset_price, stacked)))
            if proximal:
                P.prox_scale = cp.Parameter(nonneg=True, name="prox_sqrt_half_rho")
                P.prox_target = cp.Parameter((n, T), name="prox_target")
                cost.append(cp.sum_squares(P.prox_scale * stacked - P.prox_target))

        problem = cp.Problem(cp.Minimize(sum(cost)), cons)
        model = cls(
            assets=assets.copy(),
            step=step,
            horizon=T,
            weights=w,
            ids=ids,
            buses=buses,
            n_voltage_rows=n_voltage_rows,
            n_loading_rows=n_loading_rows,
            network_periods=K,
            problem=problem,
            params=P,
            variables=V,
        )
        return model

    @property
    def asset_order(self) -> list[Any]:
        """Asset ids in the model's row order (batteries, EVs, flexible loads, PV; as in the table)."""
        return list(self._order)

    @property
    def hours(self) -> float:
        return self.reader.hours

    # ------------------------------------------------------------------ inputs

    def inputs_from_observation(self, obs: Observation, *, include_base_load: bool = True) -> DispatchInputs:
        """Read the observation into the numbers of one solve (``DispatchReader.read``)."""
        return self.reader.read(obs, include_base_load=include_base_load,
                                head_limit_built=self._v.head_slack is not None)

    def _per_asset(self, values: pd.DataFrame | np.ndarray | None, what: str) -> np.ndarray:
        """An asset x period array in the model's order from a frame indexed by asset_id or from an array in
        the asset table's order (first ``horizon`` columns; missing = 0)."""
        T = self.horizon
        if values is None:
            return np.zeros((len(self._order), T))
        if isinstance(values, pd.DataFrame):
            arr = values.reindex(self._order).to_numpy(dtype=float)
        else:
            arr = np.asarray(values, dtype=float)
            if arr.ndim != 2 or arr.shape[0] != len(self._order):
                raise _BadInput(f"{what}: needs shape ({len(self._order)}, {T}), got {arr.shape}")
            arr = arr[self._order_from_table]
        if arr.shape[1] < T:
            raise _BadInput(f"{what}: needs {T} period columns, got {arr.shape[1]}")
        return np.nan_to_num(arr[:, :T], nan=0.0)

    # ------------------------------------------------------------------ solving
    def solve(
        self,
        inputs: DispatchInputs,
        *,
        solver: str = "CLARABEL",
        solver_options: Mapping[str, Any] | None = None,
        asset_price_eur_per_mwh: pd.DataFrame | None = None,
        proximal: Proximal | None = None,
        warm_start: bool = True,
        direct: bool = True,
    ) -> DispatchSolution:
        """Assign the Parameters and solve; a failed or infeasible solve returns the fallback, never raises.

        ``asset_price_eur_per_mwh`` (index asset_id, one column per period) and ``proximal`` need a model
        built with ``asset_prices=True`` / ``proximal=True``.
        ``direct`` (CLARABEL and HIGHS): re-solve through the canonical form cvxpy built at the first solve
        (``_Canonical``) instead of ``problem.solve``: Clarabel gets the same data and returns the same
        numbers, HiGHS keeps its model and re-runs the simplex from the previous basis. The cvxpy Variables
        and ``problem.value`` are then not updated (the solution carries the values).
        """
        start = time.perf_counter()
        try:
            values = self._values(inputs, asset_price_eur_per_mwh, proximal)
        except _BadInput as exc:
            return self.fallback(inputs, status="not_solved", reason=str(exc), wall_start=start)
        options = dict(solver_options or {})
        canonical = self._canonical(solver, options, values) if direct else None
        if canonical is not None:
            try:
                return self._solve_direct(canonical, inputs, values, warm_start=warm_start, wall_start=start)
            except Exception:  # noqa: BLE001 — the direct path itself broke (not the solver: that is a status):
                self._direct = {k: None if v is canonical else v for k, v in self._direct.items()}  # cvxpy's path
        self._set(values)
        try:
            # cvxpy warns on inaccurate solutions; the status says the same and goes into the diagnostics.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.problem.solve(solver=solver, warm_start=warm_start, **options)
        except (cp.error.SolverError, ValueError, ArithmeticError) as exc:
            return self.fallback(inputs, status="solver_error", reason=f"{type(exc).__name__}: {exc}", wall_start=start)
        if caught:
            inputs = replace(inputs, notes=inputs.notes + tuple(f"cvxpy: {w.message}" for w in caught))
        status = str(self.problem.status)
        if status not in ACCEPTED_STATUSES:
            return self.fallback(inputs, status=status, reason=f"solver status {status}", wall_start=start)
        stats = self.problem.solver_stats
        return self._read(inputs, status, wall_start=start, value=lambda var: var.value,
                          objective=float(self.problem.value), solve_time=float(stats.solve_time or 0.0),
                          compile_time=float(self.problem.compilation_time or 0.0))

    def _canonical(self, solver: str, options: dict[str, Any],
                   values: list[tuple[cp.Parameter, np.ndarray]]) -> _Canonical | None:
        """The direct re-solve state for ``solver`` and ``options`` (built at the first solve; None when the
        solver has no direct path or the canonical form is not a plain selection of the solver's x)."""
        solver = solver.upper()
        if solver not in _DIRECT_SOLVERS:
            return None
        key = (solver, repr(sorted(options.items())))
        if key not in self._direct:
            if (solver == "HIGHS" and not self.problem.objective.expr.is_affine()) or "accept_unknown" in options:
                # Not an LP (cvxpy's own path says so), or a status mapping only cvxpy's interface applies.
                self._direct[key] = None
                return None
            self._set(values)  # get_problem_data reads the Parameter values
            try:
                self._direct[key] = _Canonical(self.problem, solver, options)
            except Exception:  # noqa: BLE001 — not an LP, or cvxpy's internals not as read here (another
                self._direct[key] = None  # cvxpy version): cvxpy's own problem.solve, which is always right
        return self._direct[key]

    def _solve_direct(self, canonical: _Canonical, inputs: DispatchInputs,
                      values: list[tuple[cp.Parameter, np.ndarray]], *, warm_start: bool,
                      wall_start: float) -> DispatchSolution:
        canonical.load(values)
        try:
            status, objective, x, solve_time, compile_time = canonical.solve(warm_start=warm_start)
        except (cp.error.SolverError, ValueError, ArithmeticError) as exc:
            return self.fallback(inputs, status="solver_error", reason=f"{type(exc).__name__}: {exc}",
                                 wall_start=wall_start)
        if status in cp.settings.ERROR:  # as problem.solve: a solver failure is an error, not a status
            reason = (f"SolverError: Solver '{canonical.solver}' failed. Try another solver, or solve with "
                      "verbose=True for more information.")
            return self.fallback(inputs, status="solver_error", reason=reason, wall_start=wall_start)
        if status in cp.settings.INACCURATE:
            inputs = replace(inputs, notes=inputs.notes + (
                "cvxpy: Solution may be inaccurate. Try another solver, adjusting the solver settings, or solve "
                "with verbose=True for more information.",))
        if status not in ACCEPTED_STATUSES or x is None:
            return self.fallback(inputs, status=status, reason=f"solver status {status}", wall_start=wall_start)
        index = canonical.var_index
        return self._read(inputs, status, wall_start=wall_start, value=lambda var: x[index[var.id]],
                          objective=objective, solve_time=solve_time, compile_time=compile_time)

    def _values(
        self, inputs: DispatchInputs, asset_price: pd.DataFrame | None, proximal: Proximal | None
    ) -> list[tuple[cp.Parameter, np.ndarray]]:
        """Every Parameter's value for ``inputs``, checked (finite, shaped); raises _BadInput, changes nothing."""
        P, h, T = self._p, self.hours, self.horizon
        price = inputs.price_eur_per_mwh
        fixed_cost = h * float(price @ inputs.head_fixed_mw)
        values: list[tuple[cp.Parameter | None, Any]] = [
            (P.price, price),
            (P.head_fixed, inputs.head_fixed_mw),
            (P.head_limit, inputs.head_limit_mw),
            (P.billed_peak, inputs.billed_peak_mw),
            (P.backlog_value, max(float(np.max(price, initial=0.0)), 0.0)),
            (P.bat_soc0, inputs.bat_soc0_mwh),
            (P.bat_target, inputs.bat_soc_target_mwh),
            (P.bat_pmax, inputs.bat_p_max_mw),
            (P.ev_ch_max, inputs.ev_ch_max_mw),
            (P.ev_dis_max, None if P.ev_dis_max is None else inputs.ev_dis_max_mw[self._static["v2g"][self._slice[AssetKind.EV_CHARGER]]]),
            (P.ev_need, inputs.ev_need_mwh),
            (P.ev_need_cap, np.tile(inputs.ev_need_mwh[:, None], (1, T))),
            (P.ev_after, inputs.ev_need_after_horizon_mwh),
            (P.flex_base, inputs.flex_base_mw),
            (P.flex_pmax, inputs.flex_p_max_mw),
            (P.flex_b0, inputs.flex_backlog0_mwh),
            (P.flex_cap, inputs.flex_backlog_cap_mwh),
            (P.pv_avail, inputs.pv_avail_mw),
            (P.v_sens, inputs.v_sens_pu_per_mw),
            (P.v_lo, inputs.v_lo_headroom_pu[:, : self.network_periods]),
            (P.v_hi, inputs.v_hi_headroom_pu[:, : self.network_periods]),
            (P.l_sens, inputs.l_sens_percent_per_mw),
            (P.l_head, inputs.l_headroom_percent[:, : self.network_periods]),
        ]
        order = self.asset_order
        # PV enters the model as curtailment: its power is curtail - available, so terms on p carry a fixed part.
        offset = np.zeros((len(order), T))
        if self.ids[AssetKind.PV]:
            offset[-len(self.ids[AssetKind.PV]) :] = inputs.pv_avail_mw
        if P.price_exp is not None:
            exp = price if inputs.feed_in_eur_per_mwh is None else np.minimum(inputs.feed_in_eur_per_mwh, price)
            values += [(P.price_exp, exp), (P.price_spread, price - exp)]
            # The constant part of the feeder-head cost, as the objective reports it: base load and PV
            # priced at the export price (the spread part is inside the head-import variable).
            fixed_cost = h * float(exp @ inputs.head_fixed_mw)
        if P.asset_price is not None:
            ap = self._per_asset(asset_price, "asset_price_eur_per_mwh")
            values.append((P.asset_price, ap))
            fixed_cost -= h * float(np.sum(ap * offset))
        elif asset_price is not None:
            raise _BadInput("asset_price_eur_per_mwh given, but the model was built without asset_prices")
        if P.prox_scale is not None:
            rho = 0.0 if proximal is None else float(proximal.rho)
            if not rho >= 0:
                raise _BadInput(f"proximal.rho: must be >= 0, got {rho!r}")
            scale = math.sqrt(rho / 2.0)
            z = self._per_asset(None if proximal is None else proximal.z_mw, "proximal.z_mw")
            u = self._per_asset(None if proximal is None else proximal.u_mw, "proximal.u_mw")
            values += [(P.prox_scale, scale), (P.prox_target, scale * (offset + z - u))]
        elif proximal is not None:
            raise _BadInput("proximal given, but the model was built without proximal=True")
        values.append((P.fixed_cost, fixed_cost))
        checked = []
        for param, value in values:
            if param is None:
                continue
            arr = np.asarray(value, dtype=float).reshape(param.shape)
            if not np.all(np.isfinite(arr)):
                raise _BadInput(f"{param.name()}: non-finite input")
            checked.append((param, arr))
        return checked

    def _assign(
        self, inputs: DispatchInputs, asset_price: pd.DataFrame | None, proximal: Proximal | None
    ) -> None:
        """Set the Parameters' values for ``inputs`` (what ``problem.solve`` reads)."""
        self._set(self._values(inputs, asset_price, proximal))

    def _set(self, checked: list[tuple[cp.Parameter, np.ndarray]]) -> None:
        for param, arr in checked:  # only after every value passed: a refused input changes nothing
            # An agent re-solves with the same inputs every round (only its ADMM target moves): skipping the
            # unchanged values saves cvxpy's per-Parameter validation.
            if not np.array_equal(self._assigned.get(param.id), arr):
                param.value = arr
                self._assigned[param.id] = arr.copy()

    def _read(self, inputs: DispatchInputs, status: str, *, wall_start: float, value: Callable[[cp.Expression], Any],
              objective: float, solve_time: float, compile_time: float) -> DispatchSolution:
        """The solution from ``value`` (a variable's or, for cvxpy's path, an expression's value)."""
        V, T = self._v, self.horizon
        parts = [self._kind_value(k, value) for k in _KIND_ORDER if k in V.by_kind]
        p = np.vstack(parts) if parts else np.zeros((0, T))
        if p.size and not np.all(np.isfinite(p)):
            return self.fallback(inputs, status=status, reason="solver returned no finite values", wall_start=wall_start)
        n_pv = len(self.ids[AssetKind.PV])
        if n_pv:
            p[-n_pv:] -= inputs.pv_avail_mw
        cols = inputs.periods
        states = cols.append(pd.DatetimeIndex([cols[-1] + self.step]))

        def trajectory(var: cp.Variable | None, kind: AssetKind, columns: pd.Index) -> tuple:
            return self._kind_ids[kind], columns, None if var is None else value(var)

        def max_of(var: cp.Variable | None) -> float:
            return 0.0 if var is None or var.size == 0 else float(max(np.max(value(var)), 0.0))

        unmet = np.zeros(0) if V.ev_unmet is None else np.maximum(value(V.ev_unmet), 0.0)
        wall = time.perf_counter() - wall_start
        return DispatchSolution(
            status=status,
            fallback=False,
            reason="",
            objective_eur=objective,
            p=p[self._table_from_order],
            asset_ids=self._table_ids,
            periods=cols,
            horizon_values={
                "soc_mwh": trajectory(V.bat_soc, AssetKind.BATTERY, states),
                "flex_backlog_mwh": trajectory(V.flex_backlog, AssetKind.FLEX_LOAD, states),
                "pv_curtail_mw": trajectory(V.pv_curt, AssetKind.PV, cols),
                "ev_unmet_mwh": (self._kind_ids[AssetKind.EV_CHARGER], None, unmet),
            },
            max_voltage_slack_pu=max_of(V.v_slack),
            max_loading_slack_percent=max_of(V.l_slack),
            max_head_slack_mw=max_of(V.head_slack),
            solve_time_s=solve_time,
            compile_time_s=compile_time,
            wall_time_s=wall,
            notes=inputs.notes,
        )

    def _kind_value(self, kind: AssetKind, value: Callable[[cp.Expression], Any]) -> np.ndarray:
        """A kind's power (assets x periods) from its variables (``by_kind`` is ch - dis, or ch - sel @ dis)."""
        V = self._v
        if kind is AssetKind.BATTERY:
            return value(V.bat_ch) - value(V.bat_dis)
        if kind is AssetKind.EV_CHARGER:
            p = np.array(value(V.ev_ch), dtype=float)
            if V.ev_dis is not None:
                p[self._static["v2g"][self._slice[AssetKind.EV_CHARGER]]] -= value(V.ev_dis)
            return p
        if kind is AssetKind.FLEX_LOAD:
            return np.asarray(value(V.flex_serve), dtype=float)
        return np.asarray(value(V.pv_curt), dtype=float)

    def fallback(
        self, inputs: DispatchInputs, *, status: str, reason: str, wall_start: float | None = None
    ) -> DispatchSolution:
        """The safe first-period dispatch: batteries idle, EVs at the rate their need requires, flexible
        loads serve their request (and backlog), PV uncurtailed."""
        h = self.hours
        values: dict[Any, float] = {a: 0.0 for a in self.ids[AssetKind.BATTERY]}
        eta_e = self.assets.loc[self.ids[AssetKind.EV_CHARGER], "eta_charge"].to_numpy(float)
        for a, cmax, need, dep, eta in zip(
            self.ids[AssetKind.EV_CHARGER],
            inputs.ev_ch_max_mw[:, 0] if inputs.ev_ch_max_mw.size else [],
            inputs.ev_need_mwh,
            inputs.ev_hours_to_departure,
            eta_e,
        ):
            rate = need / (eta * dep) if np.isfinite(dep) and dep > 0 else cmax
            values[a] = float(min(cmax, rate, need / (eta * h)))
        for i, a in enumerate(self.ids[AssetKind.FLEX_LOAD]):
            want = inputs.flex_base_mw[i, 0] + inputs.flex_backlog0_mwh[i] / h
            values[a] = float(min(inputs.flex_p_max_mw[i, 0], want))
        for i, a in enumerate(self.ids[AssetKind.PV]):
            values[a] = -float(inputs.pv_avail_mw[i, 0])
        wall = 0.0 if wall_start is None else time.perf_counter() - wall_start
        return DispatchSolution(
            status=status,
            fallback=True,
            reason=reason,
            objective_eur=float("nan"),
            p=np.array([[values[a]] for a in self.assets.index], dtype=float).reshape(-1, 1),
            asset_ids=self._table_ids,
            periods=pd.DatetimeIndex([inputs.time]),
            max_voltage_slack_pu=float("nan"),
            max_loading_slack_percent=float("nan"),
            max_head_slack_mw=float("nan"),
            solve_time_s=float("nan"),
            compile_time_s=float("nan"),
            wall_time_s=wall,
            notes=inputs.notes,
        )


class _Canonical:
    """cvxpy's canonical form of a built problem for one solver, kept so that a re-solve skips cvxpy's per-solve
    work (Parameter validation, applying the parameter tensors through its general path, the inversion chain).

    Everything here is read from cvxpy: ``problem.get_problem_data(solver)`` gives the ``ParamConeProg`` whose
    tensors map the parameter vector to ``(c, d, A, b)`` (and the variable bounds), and the inversion chain
    gives, once, which entries of the solver's ``x`` are each variable's (probed with ``x = 0, 1, ..., n-1``).
    A re-solve multiplies those tensors by the new parameter vector and hands the result to the solver the
    way cvxpy's own interface does: Clarabel gets the same data, settings and update calls (so it returns the
    same numbers), HiGHS keeps one model and re-runs from the previous basis (warm start).
    """

    def __init__(self, problem: cp.Problem, solver: str, solver_options: Mapping[str, Any]) -> None:
        data, chain, inverse = problem.get_problem_data(solver=solver, solver_opts=dict(solver_options))
        prog = data[cp.settings.PARAM_PROB]
        dims = data["dims"]
        if prog.P is not None or dims.soc or dims.psd or dims.exp or dims.p3d or dims.pnd:
            raise _NotDirect("only LPs (zero and nonnegative cones, no quadratic term) are re-solved directly")
        self.solver = solver
        self.options = dict(solver_options)
        if solver == "HIGHS":  # as cvxpy's interface: options may come nested under "highs_options"
            self.options |= dict(self.options.pop("highs_options", {}))
        self.n = int(prog.x.size)
        self.dims = data["dims"]
        self.col = {pid: int(c) for pid, c in prog.param_id_to_col.items()}
        self.size = {pid: int(s) for pid, s in prog.param_id_to_size.items()}
        self.pvec = np.zeros(int(prog.total_param_size) + 1)
        self.pvec[self.col[CONSTANT_ID]] = 1.0
        self.q_tensor = sp.csr_matrix(prog.q)
        prog.reduced_A.cache(False)
        reduced = prog.reduced_A
        indices, indptr, shape = reduced.problem_data_index
        self.a_tensor = sp.csr_matrix(reduced.reduced_mat)
        self.a_nnz = int(indptr[shape[1] - 1])
        self.a_indices, self.a_indptr = indices[: self.a_nnz], indptr[: shape[1]]
        self.m = int(shape[0])
        self.b_rows = indices[self.a_nnz:]
        # A is constant when its entries of the tensor use the constant column only (no Parameter multiplies
        # a variable): then it is computed once.
        a_part = self.a_tensor[: self.a_nnz]
        self.a_constant = a_part.nnz == 0 or bool(np.all(a_part.indices == self.col[CONSTANT_ID]))
        self.lb_tensor = None if prog.lb_tensor is None else sp.csr_matrix(prog.lb_tensor)
        self.lb = data.get(cp.settings.LOWER_BOUNDS)
        self.ub_tensor = None if prog.ub_tensor is None else sp.csr_matrix(prog.ub_tensor)
        self.ub = data.get(cp.settings.UPPER_BOUNDS)
        self.A: sp.csc_matrix | None = None
        self.engine: Any = None  # the solver object kept between solves
        self.prev: tuple[np.ndarray, np.ndarray] | None = None
        # Probe the inversion chain with x = 0..n-1: each variable's entries of x (reductions here only
        # select and reshape; anything else is refused and the model keeps cvxpy's own path).
        probe = Solution(cp.OPTIMAL, 0.0, {inverse[-1][Solver.VAR_ID]:
                                           np.arange(self.n, dtype=float)}, {}, {})
        for reduction, inv in reversed(list(zip(chain.reductions[:-1], inverse[:-1]))):
            probe = reduction.invert(probe, inv)
        self.var_index: dict[int, np.ndarray] = {}
        # A variable with attributes that cvxpy lowered to a new variable and constraints comes back projected
        # onto its attribute set (``recover_value_for_leaf``): for ``nonneg``, max(x, 0). Only that is handled.
        self.clip = np.zeros(self.n, dtype=bool)
        for var in problem.variables():
            value = probe.primal_vars.get(var.id)
            if value is None:
                raise _NotDirect(f"variable {var.name()} not found in the canonical solution")
            arr = np.asarray(value, dtype=float).reshape(var.shape)
            idx = arr.astype(np.int64)
            if not np.array_equal(idx, arr) or idx.min(initial=0) < 0 or idx.max(initial=0) >= self.n:
                raise _NotDirect(f"variable {var.name()} is not a selection of the solver's x")
            self.var_index[var.id] = idx
            if var.id not in prog.var_id_to_col:
                if {k for k, v in var.attributes.items() if v} - {"nonneg"}:
                    raise _NotDirect(f"variable {var.name()} has attributes other than nonneg")
                if var.attributes["nonneg"]:
                    self.clip[idx.ravel()] = True

    def load(self, values: list[tuple[cp.Parameter, np.ndarray]]) -> None:
        """Write Parameter values into the parameter vector (Fortran order, as cvxpy flattens them)."""
        for param, arr in values:
            col = self.col.get(param.id)
            if col is not None:
                self.pvec[col: col + self.size[param.id]] = arr.ravel(order="F")

    def data(self) -> tuple[np.ndarray, float, sp.csc_matrix, np.ndarray]:
        """``(c, d, A, b)`` of the solver's form ``min c x + d, A x + s = b, s in K`` (as cvxpy's ConicSolver
        hands them to the solver: A negated)."""
        qd = self.q_tensor @ self.pvec
        flat = self.a_tensor @ self.pvec
        if self.A is None or not self.a_constant:
            self.A = -sp.csc_matrix((flat[: self.a_nnz], self.a_indices, self.a_indptr), shape=(self.m, self.n))
        b = np.zeros(self.m)
        b[self.b_rows] = flat[self.a_nnz:]
        return qd[: self.n], float(qd[self.n]), self.A, b

    def bounds(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        lb = self.lb if self.lb_tensor is None else np.asarray(self.lb_tensor @ self.pvec).ravel()
        ub = self.ub if self.ub_tensor is None else np.asarray(self.ub_tensor @ self.pvec).ravel()
        return lb, ub

    def solve(self, *, warm_start: bool) -> tuple[str, float, np.ndarray | None, float, float]:
        """Solve with the current parameter vector: (cvxpy status, objective, x or None, solver seconds,
        seconds spent applying the parameters)."""
        start = time.perf_counter()
        c, d, A, b = self.data()
        applied = time.perf_counter() - start
        if self.solver == "CLARABEL":
            status, objective, x, solve_time = self._clarabel(c, d, A, b, warm_start=warm_start)
        else:
            status, objective, x, solve_time = self._highs(c, d, A, b, warm_start=warm_start)
        if x is not None:
            # As cvxpy: lowered variables projected, and the objective evaluated at the values returned.
            x = np.where(self.clip, np.maximum(x, 0.0), x)
            objective = float(c @ x) + d
        return status, objective, x, solve_time, applied

    def _clarabel(self, c, d, A, b, *, warm_start: bool):
        import clarabel
        from cvxpy.reductions.solvers.conic_solvers.clarabel_conif import CLARABEL, dims_to_solver_cones

        P = sp.triu(sp.csc_array((self.n, self.n))).tocsc()
        solver = self.engine if warm_start else None
        if solver is not None and hasattr(solver, "update") and solver.is_data_update_allowed():
            settings = CLARABEL.parse_solver_opts(False, self.options, solver.get_settings())
            try:
                solver.update(P=P, q=c, A=A, b=b, settings=settings)
            except Exception:  # as cvxpy: a refused update means a new solver
                solver = None
        else:
            solver = None
        if solver is None:
            solver = clarabel.DefaultSolver(P, c, A, b, dims_to_solver_cones(self.dims),
                                            CLARABEL.parse_solver_opts(False, self.options))
        result = solver.solve()
        self.engine = solver
        status = CLARABEL.STATUS_MAP.get(str(result.status), cp.SOLVER_ERROR)
        x = np.asarray(result.x) if status in ACCEPTED_STATUSES else None
        return status, float(result.obj_val) + d, x, float(result.solve_time)

    def _singletons(self) -> None:
        """For HiGHS: the rows of A with one entry, of a constant nonzero coefficient, become bounds on their
        variable (``a x_j = b`` fixes x_j, ``a x_j <= b`` bounds it above or below by ``b / a``). cvxpy writes a
        Parameter bound such as ``ch <= p_max`` as such a row; as a bound, the simplex does not carry it in its
        basis (rural1, 12 h of 15 min: 2,894 of its 3,672 rows; the simplex then carries 778)."""
        entry_row = self.a_indices
        entry_col = np.repeat(np.arange(self.n), np.diff(self.a_indptr))
        part = self.a_tensor[: self.a_nnz].tocsr()
        const = self.col[CONSTANT_ID]
        per_entry = np.diff(part.indptr)
        on_const = np.bincount(np.repeat(np.arange(self.a_nnz), per_entry)[part.indices == const],
                               minlength=self.a_nnz)
        constant_entry = per_entry == on_const  # no Parameter in this coefficient
        value = -np.asarray(part[:, const].todense()).ravel()  # ConicSolver negates A
        count = np.bincount(entry_row, minlength=self.m)
        single = (count[entry_row] == 1) & constant_entry & (value != 0)
        self.s_rows, self.s_cols, self.s_coef = entry_row[single], entry_col[single], value[single]
        eq = self.s_rows < int(self.dims.zero)
        self.s_upper = eq | (self.s_coef > 0)  # rows that bound their variable above
        self.s_lower = eq | (self.s_coef < 0)
        self.keep = np.setdiff1d(np.arange(self.m), self.s_rows)

    def _highs_bounds(self, b: np.ndarray, inf: float) -> tuple[np.ndarray, np.ndarray]:
        lb, ub = self.bounds()
        lb = np.full(self.n, -inf) if lb is None else lb.copy()
        ub = np.full(self.n, inf) if ub is None else ub.copy()
        v = b[self.s_rows] / self.s_coef
        np.minimum.at(ub, self.s_cols[self.s_upper], v[self.s_upper])
        np.maximum.at(lb, self.s_cols[self.s_lower], v[self.s_lower])
        # An equality row meeting the variable's own bound can cross it by rounding (b / a): not a conflict.
        cross = (lb > ub) & (lb - ub <= 1e-12 * np.maximum(1.0, np.abs(lb)))
        ub[cross] = lb[cross]
        return lb, ub

    def _highs(self, c, d, A, b, *, warm_start: bool):
        import highspy
        from cvxpy.reductions.solvers.conic_solvers.highs_conif import HIGHS

        if not hasattr(self, "keep"):
            self._singletons()
        inf = highspy.kHighsInf
        eq = int(self.dims.zero)
        rows_b = b[self.keep]
        lower = np.where(self.keep < eq, rows_b, -inf)
        lb, ub = self._highs_bounds(b, inf)
        if np.any(lb > ub):  # two bounds of one variable conflict: infeasible, nothing to hand to HiGHS
            return cp.INFEASIBLE, float("nan"), None, 0.0
        h = self.engine
        if h is None or not warm_start or not self.a_constant:
            basis = None if h is None or not warm_start else h.getBasis()
            h = highspy.Highs()
            h.setOptionValue("log_to_console", False)
            h.setOptionValue("output_flag", False)
            for name, value in self.options.items():
                if h.setOptionValue(name, value) == highspy.HighsStatus.kError:
                    raise ValueError(f"HIGHS option {name}={value!r} refused")
            A_rows = sp.csc_matrix(A.tocsr()[self.keep])
            lp = highspy.HighsLp()
            lp.num_col_, lp.num_row_ = self.n, len(self.keep)
            lp.col_cost_, lp.col_lower_, lp.col_upper_ = c, lb, ub
            lp.row_lower_, lp.row_upper_ = lower, rows_b
            lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
            lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = A_rows.indptr, A_rows.indices, A_rows.data
            h.passModel(lp)
            if basis is not None and basis.valid:
                h.setBasis(basis)
        else:  # only costs and bounds change: keep the model and its basis
            pc, pb, plb, pub = self.prev
            changes = []
            cols = np.flatnonzero(c != pc).astype(np.int32)
            if cols.size:
                changes.append(h.changeColsCost(cols.size, cols, c[cols]))
            rows = np.flatnonzero(rows_b != pb).astype(np.int32)
            if rows.size:
                changes.append(h.changeRowsBounds(rows.size, rows, lower[rows], rows_b[rows]))
            cols = np.flatnonzero((lb != plb) | (ub != pub)).astype(np.int32)
            if cols.size:
                changes.append(h.changeColsBounds(cols.size, cols, lb[cols], ub[cols]))
            if highspy.HighsStatus.kError in changes:  # the model would be the previous one: do not solve it
                self.engine = None
                raise ValueError("HiGHS refused the new costs or bounds")
        self.prev = (c.copy(), rows_b.copy(), lb, ub)
        self.engine = h
        start = time.perf_counter()
        h.run()
        solve_time = time.perf_counter() - start
        status = HIGHS.STATUS_MAP.get(h.getModelStatus().name, cp.SOLVER_ERROR)
        x = np.asarray(h.getSolution().col_value) if status in ACCEPTED_STATUSES else None
        return status, float(h.getInfo().objective_function_value) + d, x, solve_time


class _NotDirect(Exception):
    """The canonical form cannot be re-solved directly: the model keeps cvxpy's own path."""


def _dump_proof_throughput_cost(w: DispatchWeights, round_trip: np.ndarray, *, has_pv: bool) -> np.ndarray:
    """Per-asset throughput cost (EUR/MWh of ch + dis) at which dumping energy as conversion losses never
    beats PV curtailment: dumping 1 MWh at round-trip efficiency ``eta`` takes ``(1 + eta) / (1 - eta)`` MWh of
    throughput. Without PV in the model there is nothing to curtail and the configured cost stands."""
    base = np.full(np.shape(round_trip), w.throughput_cost_eur_per_mwh, dtype=float)
    if not has_pv:
        return base
    eta = np.clip(np.asarray(round_trip, dtype=float), 0.0, 1.0)
    floor = _DUMP_MARGIN * w.pv_curtailment_cost_eur_per_mwh * (1.0 - eta) / (1.0 + eta)
    return np.maximum(base, floor)


def throughput_cost_eur_per_mwh(
    weights: DispatchWeights,
    *,
    eta_charge: np.ndarray,
    eta_discharge: np.ndarray,
    can_dump: np.ndarray | bool,
    has_pv: np.ndarray | bool,
) -> np.ndarray:
    """Per-asset throughput cost (EUR/MWh of ch, and of dis where there is one) exactly as ``build`` sets it:
    assets that can charge and discharge at once (batteries, V2G chargers: ``can_dump``) get the dump-proof
    cost when PV curtailment is in their model (``has_pv``), every other asset the configured cost. ``has_pv``
    is explicit (per asset or one flag) so that a caller solving many agents' assets at once can give each
    asset the value its own agent's model has."""
    eta = np.asarray(eta_charge, dtype=float) * np.asarray(eta_discharge, dtype=float)
    with_pv = _dump_proof_throughput_cost(weights, eta, has_pv=True)
    base = np.full(eta.shape, weights.throughput_cost_eur_per_mwh, dtype=float)
    return np.where(np.asarray(can_dump, dtype=bool) & np.asarray(has_pv, dtype=bool), with_pv, base)


class _BadInput(ValueError):
    """Input values the model cannot take (non-finite, wrong options): the solve falls back."""
