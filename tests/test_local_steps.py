"""controllers.local_steps: the proximal local step of every asset kind equals the cvxpy dispatch model's.

References: ``DispatchModel`` itself (uniform rho, ``Proximal(rho, z)``; a nonzero price enters only through
the backlog value, so it is folded into the target) and a small cvxpy model written here for per-asset,
per-period weights; both solved by Clarabel with tight tolerances. Plus hand-worked cases, batch == per-
participant, warm == cold, and bad input.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cvxpy as cp
import numpy as np
import pandas as pd
import pytest

from controllers.api import AssetKind
from controllers.dispatch_model import (
    ACCEPTED_STATUSES,
    DispatchInputs,
    DispatchModel,
    DispatchWeights,
    Proximal,
    throughput_cost_eur_per_mwh,
)
from controllers.local_steps import KIND_ORDER, AssetProx, power_range_mw

T0 = pd.Timestamp("2024-06-01", tz="UTC")
HOUR = pd.Timedelta("1h")
NO_REG = DispatchWeights(throughput_cost_eur_per_mwh=0.0)
#: Clarabel is the reference: 1e-14 makes it agree with an exact solution to ~1e-8 MW near active bounds
#: (its 1e-8 defaults leave ~1e-5); it then sometimes reports "almost solved", which is accepted.
CLARABEL = {"tol_gap_abs": 1e-14, "tol_gap_rel": 1e-14, "tol_feas": 1e-14, "tol_ktratio": 1e-14, "max_iter": 500}
P_TOL_MW = 1e-6


# ----------------------------------------------------------------------------- fixtures
def asset(kind: AssetKind, participant: str = "p1", **extra: object) -> dict[str, object]:
    row: dict[str, object] = {"kind": kind.value, "bus": 1, "participant_id": participant, "p_max_mw": 1.0, "e_max_mwh": 0.0,
                                  "eta_charge": 1.0, "eta_discharge": 1.0, "soc_min": 0.0, "soc_max": 1.0, "soc_init": 0.0,
                                  "s_max_mva": 1.0, "v2g": False, "flex_window": pd.Timedelta(0)}
    row.update(extra)
    return row


def table(**rows: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("asset_id")


def inputs_for(model_ids: dict[AssetKind, list[str]], T: int, step: pd.Timedelta, **given: object) -> DispatchInputs:
    """DispatchInputs with every per-kind array sized for ``model_ids`` (zeros unless given)."""
    nb, ne, nf, npv = (len(model_ids[k]) for k in KIND_ORDER)
    values: dict[str, object] = {
        "price_eur_per_mwh": np.zeros(T), "bat_soc0_mwh": np.zeros(nb), "bat_soc_target_mwh": np.zeros(nb),
        "bat_p_max_mw": np.zeros((nb, T)), "ev_ch_max_mw": np.zeros((ne, T)), "ev_dis_max_mw": np.zeros((ne, T)),
        "ev_need_mwh": np.zeros(ne), "ev_need_after_horizon_mwh": np.zeros(ne), "flex_base_mw": np.zeros((nf, T)),
        "flex_p_max_mw": np.zeros((nf, T)), "flex_backlog0_mwh": np.zeros(nf), "flex_backlog_cap_mwh": np.zeros((nf, T)),
        "pv_avail_mw": np.zeros((npv, T))}
    values.update(given)
    pv = np.asarray(values["pv_avail_mw"])
    return DispatchInputs(
        time=T0, periods=pd.date_range(T0, periods=T, freq=step), head_fixed_mw=-pv.sum(axis=0), head_limit_mw=1e6,
        billed_peak_mw=0.0, ev_hours_to_departure=np.full(ne, np.inf), v_rows=(), v_sens_pu_per_mw=np.zeros((0, 1)),
        v_lo_headroom_pu=np.zeros((0, T)), v_hi_headroom_pu=np.zeros((0, T)), l_rows=(),
        l_sens_percent_per_mw=np.zeros((0, 1)), l_headroom_percent=np.zeros((0, T)), **values)  # type: ignore[arg-type]


def kind_ids(assets: pd.DataFrame) -> dict[AssetKind, list[str]]:
    return {k: [a for a, v in assets["kind"].items() if v == k.value] for k in KIND_ORDER}


# ----------------------------------------------------------------------------- random instances
@dataclass(frozen=True)
class Case:
    assets: pd.DataFrame
    inputs: DispatchInputs
    step: pd.Timedelta
    horizon: int


def random_case(kind: AssetKind, *, n: int, T: int, step: pd.Timedelta, seed: int, scale_mw: float = 1.0,
                price_level: float = 0.0) -> Case:
    """``n`` assets of one kind with numbers drawn so that every regime shows up somewhere: full and empty
    batteries (SOC bounds binding both ways), unreachable terminal targets (shortfall), EVs that cannot be met,
    V2G, flexible requests larger than the caps allow (curtailment, caps binding), PV off at night, and periods
    with nothing available."""
    rng = np.random.default_rng(seed)
    h = step / HOUR
    rows: dict[str, dict[str, object]] = {}
    for i in range(n):
        extra: dict[str, object] = {"p_max_mw": scale_mw * rng.uniform(0.3, 2.0)}
        if kind is AssetKind.BATTERY:
            extra.update(e_max_mwh=scale_mw * rng.uniform(0.3, 4.0), eta_charge=rng.uniform(0.8, 1.0),
                         eta_discharge=rng.uniform(0.8, 1.0), soc_min=rng.choice([0.0, 0.1, 0.2]),
                         soc_max=rng.choice([0.8, 0.95, 1.0]))
        if kind is AssetKind.EV_CHARGER:
            extra.update(eta_charge=rng.uniform(0.85, 1.0), eta_discharge=rng.uniform(0.85, 1.0),
                         v2g=bool(i % 2 == 0))
        rows[f"{kind.value}-{i}"] = asset(kind, participant=f"p{i % 3}", **extra)
    assets = table(**rows)
    ids = kind_ids(assets)

    def col(name: str) -> np.ndarray:
        return assets[name].to_numpy(float)

    on = rng.random((n, T)) < 0.85  # some periods with nothing available
    given: dict[str, object] = {"price_eur_per_mwh": price_level * rng.uniform(0.2, 1.0, T)}
    if kind is AssetKind.BATTERY:
        lo, hi = col("soc_min") * col("e_max_mwh"), col("soc_max") * col("e_max_mwh")
        soc0 = np.clip(rng.choice([0.0, 0.5, 1.0], n) * (hi - lo) + lo, lo, hi)  # empty, half, full
        target = np.clip(soc0 + rng.choice([0.0, 0.3, 2.0], n) * (hi - lo), lo, hi)
        given.update(bat_soc0_mwh=soc0, bat_soc_target_mwh=target, bat_p_max_mw=col("p_max_mw")[:, None] * on)
    elif kind is AssetKind.EV_CHARGER:
        share = np.clip(rng.uniform(-0.5, 1.5, (n, T)), 0.0, 1.0) * on
        ch_max = share * col("p_max_mw")[:, None]
        need = rng.choice([0.0, 0.3, 1.0, 3.0], n) * col("p_max_mw") * T * h / 2  # some cannot be met
        given.update(ev_ch_max_mw=ch_max, ev_dis_max_mw=ch_max * assets["v2g"].to_numpy(bool)[:, None],
                     ev_need_mwh=need, ev_need_after_horizon_mwh=need * rng.choice([0.0, 0.0, 0.5], n))
    elif kind is AssetKind.FLEX_LOAD:
        base = col("p_max_mw")[:, None] * rng.uniform(0.0, 1.6, (n, T)) * (rng.random((n, T)) < 0.7)
        b0 = rng.uniform(0.0, 1.0, n) * col("p_max_mw") * (rng.random(n) < 0.6)
        window = rng.integers(1, 5, n)
        requested = np.concatenate([np.zeros((n, 1)), np.cumsum(base * h, axis=1)], axis=1)
        t = np.arange(1, T + 1)
        cap = requested[:, 1:] - np.take_along_axis(requested, np.maximum(t[None, :] - window[:, None], 0), axis=1)
        cap += b0[:, None] * (t[None, :] < rng.integers(0, T + 1, n)[:, None])  # initial backlog's deadline
        given.update(flex_base_mw=base, flex_p_max_mw=col("p_max_mw")[:, None] * on, flex_backlog0_mwh=b0,
                     flex_backlog_cap_mwh=cap)
    else:
        given.update(pv_avail_mw=col("p_max_mw")[:, None] * rng.uniform(0.0, 1.0, (n, T)) * on)
    return Case(assets=assets, inputs=inputs_for(ids, T, step, **given), step=step, horizon=T)


def dispatch_model_reference(case: Case, *, rho: float, z: np.ndarray, weights: DispatchWeights,
                             has_pv: bool) -> tuple[np.ndarray, float]:
    """The cvxpy dispatch model's x-update (an agent's model: no head limit, proximal); (p in the table's
    order, objective)."""
    model = DispatchModel.build(case.assets, step=case.step, horizon=case.horizon, weights=weights,
                                head_limit=False, proximal=True)
    # The model's throughput cost depends on whether it holds PV; a one-kind case holds none. The flag under
    # test is passed to AssetProx explicitly, so the reference must agree with it.
    assert bool(model.ids[AssetKind.PV]) == has_pv
    solution = model.solve(case.inputs, solver="CLARABEL", solver_options=CLARABEL, proximal=Proximal(rho=rho, z_mw=z))
    assert not solution.fallback and solution.status in ACCEPTED_STATUSES, solution.reason
    return solution.p, solution.objective_eur


def independent_reference(case: Case, *, w: np.ndarray, c: np.ndarray, weights: DispatchWeights,
                          kappa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """This test's own cvxpy model of ``f_a(p) + sum w/2 (p - c)^2`` with per-asset, per-period weights;
    (p, per-asset objective including the prox term), rows in the table's order (one kind per case)."""
    inp, h, T = case.inputs, case.step / HOUR, case.horizon
    a = case.assets
    n = len(a)
    kind = AssetKind(a["kind"].iloc[0])
    cons: list[cp.Constraint] = []
    if kind is AssetKind.PV:
        curt = cp.Variable((n, T), nonneg=True)
        cons.append(curt <= inp.pv_avail_mw)
        p = curt - inp.pv_avail_mw
        cost = weights.pv_curtailment_cost_eur_per_mwh * h * cp.sum(curt, axis=1)
    elif kind is AssetKind.FLEX_LOAD:
        serve, curt, backlog = cp.Variable((n, T), nonneg=True), cp.Variable((n, T), nonneg=True), cp.Variable((n, T + 1))
        cons += [serve <= inp.flex_p_max_mw, backlog[:, 0] == inp.flex_backlog0_mwh,
                 backlog[:, 1:] == backlog[:, :-1] + h * (inp.flex_base_mw - serve - curt),
                 backlog[:, 1:] >= 0, backlog[:, 1:] <= inp.flex_backlog_cap_mwh]
        p = serve
        value = max(float(np.max(inp.price_eur_per_mwh, initial=0.0)), 0.0)
        cost = weights.flex_curtailment_cost_eur_per_mwh * h * cp.sum(curt, axis=1) + value * backlog[:, T]
    else:
        eta_c, eta_d = a["eta_charge"].to_numpy(float), a["eta_discharge"].to_numpy(float)
        ch, dis, state = cp.Variable((n, T), nonneg=True), cp.Variable((n, T), nonneg=True), cp.Variable((n, T + 1))
        short = cp.Variable(n, nonneg=True)
        stored = cp.multiply(eta_c[:, None], ch) - cp.multiply(1.0 / eta_d[:, None], dis)
        p = ch - dis
        if kind is AssetKind.BATTERY:
            e_max = a["e_max_mwh"].to_numpy(float)
            cons += [ch <= inp.bat_p_max_mw, dis <= inp.bat_p_max_mw, state[:, 0] == inp.bat_soc0_mwh,
                     state[:, 1:] == state[:, :-1] + h * stored,
                     state[:, 1:] >= (a["soc_min"].to_numpy(float) * e_max)[:, None],
                     state[:, 1:] <= (a["soc_max"].to_numpy(float) * e_max)[:, None],
                     state[:, T] + short >= inp.bat_soc_target_mwh]
            penalty = weights.terminal_soc_shortfall_cost_eur_per_mwh
        else:  # state = energy still needed
            v2g = a["v2g"].to_numpy(bool)
            cons += [ch <= inp.ev_ch_max_mw, dis <= inp.ev_dis_max_mw * v2g[:, None], state[:, 0] == inp.ev_need_mwh,
                     state[:, 1:] == state[:, :-1] - h * stored, state[:, 1:] >= 0,
                     state[:, 1:] <= inp.ev_need_mwh[:, None], short >= state[:, T] - inp.ev_need_after_horizon_mwh]
            penalty = weights.ev_unmet_cost_eur_per_mwh
        cost = penalty * short + h * cp.multiply(kappa, cp.sum(ch + dis, axis=1))
    prox = cp.sum(cp.multiply(w / 2.0, cp.square(p - c)), axis=1)
    problem = cp.Problem(cp.Minimize(cp.sum(cost + prox)), cons)
    with warnings.catch_warnings(record=True):  # "solution may be inaccurate" at these tolerances
        warnings.simplefilter("always")
        problem.solve(solver=cp.CLARABEL, **CLARABEL)
    assert problem.status in ACCEPTED_STATUSES, problem.status
    return np.asarray(p.value), np.asarray((cost + prox).value).reshape(n)


KINDS = [AssetKind.BATTERY, AssetKind.EV_CHARGER, AssetKind.FLEX_LOAD, AssetKind.PV]
SHAPES = [(1, HOUR), (24, pd.Timedelta("15min")), (48, pd.Timedelta("30min"))]


def regimes(kind: AssetKind, case: Case, p: np.ndarray) -> dict[str, bool]:
    """Which regimes the reference solution of a case shows (so a test can insist they were exercised)."""
    inp, h = case.inputs, case.step / HOUR
    a = case.assets
    tol = 1e-7
    if kind is AssetKind.BATTERY:
        # net energy by the recursion with the larger efficiency loss ignored: use the solution's own p sign
        e_max = a["e_max_mwh"].to_numpy(float)
        lo, hi = a["soc_min"].to_numpy(float) * e_max, a["soc_max"].to_numpy(float) * e_max
        charge, discharge = np.maximum(p, 0), np.maximum(-p, 0)
        soc = inp.bat_soc0_mwh[:, None] + np.cumsum(h * (a["eta_charge"].to_numpy(float)[:, None] * charge
                                                         - discharge / a["eta_discharge"].to_numpy(float)[:, None]), axis=1)
        return {"at soc_max": bool((soc >= hi[:, None] - 1e-6).any()), "at soc_min": bool((soc <= lo[:, None] + 1e-6).any()),
                "shortfall": bool((soc[:, -1] < inp.bat_soc_target_mwh - 1e-6).any()),
                "unavailable": bool((inp.bat_p_max_mw == 0).any())}
    if kind is AssetKind.EV_CHARGER:
        v2g = a["v2g"].to_numpy(bool)
        delivered = h * (a["eta_charge"].to_numpy(float)[:, None] * np.maximum(p, 0)
                         - np.maximum(-p, 0) / a["eta_discharge"].to_numpy(float)[:, None]).sum(axis=1)
        return {"v2g discharging": bool((p[v2g] < -tol).any()),
                "unmet": bool((delivered < inp.ev_need_mwh - inp.ev_need_after_horizon_mwh - 1e-6).any()),
                "need met exactly": bool((np.abs(delivered - inp.ev_need_mwh) < 1e-6)[inp.ev_need_mwh > 0].any()),
                "charger off": bool((inp.ev_ch_max_mw == 0).any())}
    if kind is AssetKind.FLEX_LOAD:
        backlog = inp.flex_backlog0_mwh[:, None] + np.cumsum(h * (inp.flex_base_mw - p), axis=1)  # before curtailment
        return {"curtailed": bool((backlog > inp.flex_backlog_cap_mwh + 1e-6).any()),
                "served at max": bool((np.abs(p - inp.flex_p_max_mw) < tol)[inp.flex_p_max_mw > 0].any()),
                "served partly": bool(((p > tol) & (p < inp.flex_p_max_mw - tol)).any())}
    avail = inp.pv_avail_mw
    return {"curtailed fully": bool((np.abs(p) < tol)[avail > 0].any()), "uncurtailed": bool((np.abs(p + avail) < tol)[avail > 0].any()),
            "curtailed partly": bool(((p > -avail + tol) & (p < -tol)).any())}


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS, ids=[k.value for k in KINDS])
def test_uniform_rho_equals_the_dispatch_model(kind: AssetKind) -> None:
    weights = DispatchWeights()
    seen: dict[str, bool] = {}
    worst_dp, worst_gap = 0.0, -np.inf
    for index, (T, step) in enumerate(SHAPES):
        for rho, scale, price in ((3.0, 1.0, 0.0), (30.0, 1.0, 120.0), (1.0e4, 0.005, 0.0)):
            case = random_case(kind, n=12, T=T, step=step, seed=100 * index + int(rho), scale_mw=scale,
                               price_level=price)
            rng = np.random.default_rng(index)
            z = rng.normal(0.0, 0.8 * scale, (len(case.assets), T))
            p_ref, obj_ref = dispatch_model_reference(case, rho=rho, z=z, weights=weights, has_pv=kind is AssetKind.PV)
            prox = AssetProx.build(case.assets, step=step, horizon=T, weights=weights, has_pv=kind is AssetKind.PV)
            prox.set_inputs(case.inputs)
            # The model's energy price term h price . p (zero price for an agent; here only to exercise the
            # backlog value, which is max(price)) is a linear term: fold it into the prox target.
            price = case.inputs.price_eur_per_mwh
            h = step / HOUR
            result = prox.solve(np.full(z.shape, rho), z - h * price[None, :] / rho)
            assert not result.unverified and result.max_kkt_residual < 1e-9
            p = result.p_mw
            worst_dp = max(worst_dp, float(np.abs(p - p_ref).max()))
            # the dispatch model's objective at our solution: never worse than the one cvxpy reached
            fixed = h * float(price @ case.inputs.head_fixed_mw)
            ours = fixed + result.objective_eur.sum() + h * float(price @ p.sum(axis=0)) + rho / 2 * float(((p - z) ** 2).sum())
            worst_gap = max(worst_gap, (ours - obj_ref) / (1.0 + abs(obj_ref)))
            for name, hit in regimes(kind, case, p_ref).items():
                seen[name] = seen.get(name, False) or hit
    assert worst_dp <= P_TOL_MW, worst_dp
    assert worst_gap <= 1e-9, worst_gap
    assert all(seen.values()), f"regimes not exercised: {[k for k, v in seen.items() if not v]}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS, ids=[k.value for k in KINDS])
def test_per_asset_per_period_weights_equal_an_independent_cvxpy_model(kind: AssetKind) -> None:
    weights = DispatchWeights(throughput_cost_eur_per_mwh=0.05)
    for index, (T, step) in enumerate(SHAPES):
        case = random_case(kind, n=12, T=T, step=step, seed=7 + index, price_level=80.0 * index)
        rng = np.random.default_rng(50 + index)
        w = np.exp(rng.uniform(np.log(0.5), np.log(200.0), (len(case.assets), T)))
        c = rng.normal(0.0, 0.8, w.shape)
        # PV in the asset's model or not (per participant): the throughput cost differs between the two
        prox = AssetProx.build(case.assets, step=step, horizon=T, weights=weights, has_pv=index % 2 == 0)
        kappa = prox.throughput_cost_eur_per_mwh.to_numpy(float)
        prox.set_inputs(case.inputs)
        result = prox.solve(w, c)
        p_ref, obj_ref = independent_reference(case, w=w, c=c, weights=weights, kappa=kappa)
        assert not result.unverified
        np.testing.assert_allclose(result.p_mw, p_ref, rtol=0, atol=P_TOL_MW)
        ours = result.objective_eur + result.prox_eur
        assert np.all(ours <= obj_ref + 1e-9 * (1.0 + np.abs(obj_ref))), (ours - obj_ref).max()


# ----------------------------------------------------------------------------- by hand
def test_pv_curtailment_is_a_clip() -> None:
    # 1 MW available, 1 h, curtailment 1 EUR/MWh, w = 10: curt = clip(avail + c - 1/10, 0, avail).
    # c = -0.2: curt = 1 - 0.2 - 0.1 = 0.7, p = -0.3; c = -1.5: curt < 0 -> 0, p = -1; c = 0.5: curt = 1.4 -> 1, p = 0.
    assets = table(pv=asset(AssetKind.PV))
    prox = AssetProx.build(assets, step=HOUR, horizon=3)
    prox.set_inputs(inputs_for(kind_ids(assets), 3, HOUR, pv_avail_mw=np.ones((1, 3))))
    result = prox.solve(np.full((1, 3), 10.0), np.array([[-0.2, -1.5, 0.5]]))
    np.testing.assert_allclose(result.p_mw, [[-0.3, -1.0, 0.0]], atol=1e-12)
    # curtailing 0.7 + 0 + 1 MWh at 1 EUR/MWh
    np.testing.assert_allclose(result.objective_eur, [1.7], atol=1e-12)


def test_v1g_charger_water_fills_its_energy_need() -> None:
    # 1 MW charger, eta 0.9, 1 h periods, need 1.8 MWh (2 MWh drawn), no throughput cost, targets 0, weights
    # (0.5, 1, 2): ch_t = clip(mu * 0.9 / w_t, 0, 1). Unclipped mu * 0.9 * (2 + 1 + 0.5) = 2 would give
    # ch_1 = 1.14 > 1, so ch_1 = 1 and 1 + mu * 0.9 * 1.5 = 2: mu = 0.741, ch = (1, 2/3, 1/3).
    assets = table(ev=asset(AssetKind.EV_CHARGER, eta_charge=0.9))
    prox = AssetProx.build(assets, step=HOUR, horizon=3, weights=NO_REG)
    prox.set_inputs(inputs_for(kind_ids(assets), 3, HOUR, ev_ch_max_mw=np.ones((1, 3)), ev_need_mwh=np.array([1.8])))
    result = prox.solve(np.array([[0.5, 1.0, 2.0]]), np.zeros((1, 3)))
    np.testing.assert_allclose(result.p_mw, [[1.0, 2 / 3, 1 / 3]], atol=1e-12)
    np.testing.assert_allclose(result.objective_eur, [0.0], atol=1e-9)  # met exactly: nothing unmet


def test_v1g_charger_that_cannot_be_met_charges_flat_out() -> None:
    # need 5 MWh, at most 3 * 0.9 = 2.7 MWh deliverable: charge 1 MW throughout; unmet 2.3 MWh at 1000 EUR/MWh.
    assets = table(ev=asset(AssetKind.EV_CHARGER, eta_charge=0.9))
    prox = AssetProx.build(assets, step=HOUR, horizon=3, weights=NO_REG)
    prox.set_inputs(inputs_for(kind_ids(assets), 3, HOUR, ev_ch_max_mw=np.ones((1, 3)), ev_need_mwh=np.array([5.0])))
    result = prox.solve(np.ones((1, 3)), np.zeros((1, 3)))
    np.testing.assert_allclose(result.p_mw, [[1.0, 1.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(result.objective_eur, [2300.0], rtol=1e-12)


def test_battery_stops_at_soc_max() -> None:
    # 1 MWh battery at 0.8 MWh, lossless, 1 MW, no throughput cost, targets 0.5 MW twice, w = 1: only 0.2 MWh
    # of room, so minimise (p1 - 0.5)^2 + (p2 - 0.5)^2 with p1 + p2 <= 0.2: p = (0.1, 0.1), SOC 0.9 then 1.0.
    assets = table(b=asset(AssetKind.BATTERY, e_max_mwh=1.0))
    prox = AssetProx.build(assets, step=HOUR, horizon=2, weights=NO_REG)
    prox.set_inputs(inputs_for(kind_ids(assets), 2, HOUR, bat_soc0_mwh=np.array([0.8]),
                               bat_soc_target_mwh=np.array([0.8]), bat_p_max_mw=np.ones((1, 2))))
    result = prox.solve(np.ones((1, 2)), np.full((1, 2), 0.5))
    np.testing.assert_allclose(result.p_mw, [[0.1, 0.1]], atol=1e-12)


def test_a_full_lossy_battery_may_charge_and_discharge_at_once() -> None:
    # The relaxation: full battery (soc_max), eta 0.9 each way, 1 MW, 1 h, throughput 0.01 EUR/MWh (no PV),
    # w = 10, target 0.5 MW. Staying full needs dis = 0.81 ch, so p = 0.19 ch at cost 5 (0.19 ch - 0.5)^2
    # + 0.01 * 1.81 ch, decreasing up to ch = 2.58 > 1: ch = 1, dis = 0.81, p = 0.19.
    assets = table(b=asset(AssetKind.BATTERY, e_max_mwh=1.0, eta_charge=0.9, eta_discharge=0.9))
    prox = AssetProx.build(assets, step=HOUR, horizon=1, weights=DispatchWeights(throughput_cost_eur_per_mwh=0.01),
                           has_pv=False)
    prox.set_inputs(inputs_for(kind_ids(assets), 1, HOUR, bat_soc0_mwh=np.array([1.0]),
                               bat_soc_target_mwh=np.array([1.0]), bat_p_max_mw=np.ones((1, 1))))
    result = prox.solve(np.full((1, 1), 10.0), np.full((1, 1), 0.5))
    np.testing.assert_allclose(result.p_mw, [[0.19]], atol=1e-12)
    np.testing.assert_allclose(result.objective_eur, [0.01 * 1.81], atol=1e-12)


def test_the_throughput_cost_is_the_dispatch_models_per_participant() -> None:
    # Participant p1 has PV, p2 does not: p1's battery gets the dump-proof cost 2 * 1 * (1 - 0.81) / 1.81,
    # p2's the configured 0.01 EUR/MWh; a V1G charger always the configured cost; PV and flexible loads none.
    assets = table(b1=asset(AssetKind.BATTERY, "p1", eta_charge=0.9, eta_discharge=0.9),
                   pv=asset(AssetKind.PV, "p1"),
                   b2=asset(AssetKind.BATTERY, "p2", eta_charge=0.9, eta_discharge=0.9),
                   ev=asset(AssetKind.EV_CHARGER, "p1", eta_charge=0.9, eta_discharge=0.9),
                   f=asset(AssetKind.FLEX_LOAD, "p2"))
    kappa = AssetProx.build(assets, step=HOUR, horizon=1).throughput_cost_eur_per_mwh
    dump = 2 * 1.0 * (1 - 0.81) / 1.81
    np.testing.assert_allclose(kappa.loc[["b1", "b2", "ev", "pv", "f"]], [dump, 0.01, 0.01, 0.0, 0.0], rtol=1e-12)
    np.testing.assert_allclose(throughput_cost_eur_per_mwh(DispatchWeights(), eta_charge=np.array([0.9, 0.9]),
                                                           eta_discharge=np.array([0.9, 0.9]), can_dump=True,
                                                           has_pv=np.array([True, False])), [dump, 0.01], rtol=1e-12)


# ----------------------------------------------------------------------------- batches
PER_KIND = {AssetKind.BATTERY: ("bat_soc0_mwh", "bat_soc_target_mwh", "bat_p_max_mw"),
            AssetKind.EV_CHARGER: ("ev_ch_max_mw", "ev_dis_max_mw", "ev_need_mwh", "ev_need_after_horizon_mwh"),
            AssetKind.FLEX_LOAD: ("flex_base_mw", "flex_p_max_mw", "flex_backlog0_mwh", "flex_backlog_cap_mwh"),
            AssetKind.PV: ("pv_avail_mw",)}


def mixed_fleet(participants: int, seed: int, T: int, step: pd.Timedelta) -> Case:
    """kW-scale participants with every kind (as the DePIN fleets have), one interval's numbers."""
    cases = [random_case(k, n=participants, T=T, step=step, seed=seed + i, scale_mw=0.005) for i, k in enumerate(KINDS)]
    frames = []
    for case in cases:
        frame = case.assets.copy()
        frame["participant_id"] = [f"p{i}" for i in range(len(frame))]
        frames.append(frame)
    assets = pd.concat(frames)
    assets = assets.loc[np.random.default_rng(seed).permutation(assets.index)]  # table order != kind order
    # each kind's arrays come from its own case, in that case's (= the kind's table) order
    ids = kind_ids(assets)
    given: dict[str, object] = {}
    for case, kind in zip(cases, KINDS):
        order = [list(case.assets.index).index(a) for a in ids[kind]]
        given.update({name: np.asarray(getattr(case.inputs, name))[order] for name in PER_KIND[kind]})
    return Case(assets=assets, inputs=inputs_for(ids, T, step, **given), step=step, horizon=T)


def participant_inputs(case: Case, part: pd.DataFrame) -> DispatchInputs:
    """The fleet's inputs restricted to ``part`` (what that participant's own model would read)."""
    fleet_ids, part_ids = kind_ids(case.assets), kind_ids(part)
    given: dict[str, object] = {}
    for kind, names in PER_KIND.items():
        rows = [fleet_ids[kind].index(a) for a in part_ids[kind]]
        given.update({name: np.asarray(getattr(case.inputs, name))[rows] for name in names})
    return inputs_for(part_ids, case.horizon, case.step, **given)


def test_a_batch_equals_each_participant_alone_and_warm_equals_cold() -> None:
    T, step = 24, pd.Timedelta("15min")
    case = mixed_fleet(8, seed=3, T=T, step=step)
    rng = np.random.default_rng(0)
    n = len(case.assets)
    w = np.full((n, T), 1.0e4)
    c = rng.normal(0.0, 0.004, (n, T))
    batch = AssetProx.build(case.assets, step=step, horizon=T)
    batch.set_inputs(case.inputs)
    together = batch.solve(w, c)
    assert not together.unverified
    for pid, part in case.assets.groupby("participant_id", sort=False):
        alone = AssetProx.build(part, step=step, horizon=T)
        alone.set_inputs(participant_inputs(case, part))
        rows = [case.assets.index.get_loc(a) for a in part.index]
        result = alone.solve(w[rows], c[rows])
        np.testing.assert_allclose(result.p_mw, together.p_mw[rows], rtol=0, atol=1e-9, err_msg=str(pid))
        np.testing.assert_allclose(result.objective_eur, together.objective_eur[rows], rtol=1e-9, atol=1e-12)
    # ADMM rounds: small moves of the targets, warm (last active set first) == cold
    for _ in range(3):
        c = c + rng.normal(0.0, 1e-4, c.shape)
        warm = batch.solve(w, c)
        cold = batch.solve(w, c, warm_start=False)
        assert warm.warm_started and not cold.warm_started and not warm.unverified
        np.testing.assert_allclose(warm.p_mw, cold.p_mw, rtol=0, atol=1e-9)


def test_power_range_follows_the_asset_table_and_is_zero_only_where_an_asset_cannot_move() -> None:
    """The DePIN head shares: each asset's power range per period, in the asset table's order (not the per-kind
    order of the inputs), by each kind's own limits looked up by asset id; and where it is 0 the proximal step
    leaves the asset where it is whatever the target (so sharing no part of the row there loses nothing)."""
    T, step = 24, pd.Timedelta("15min")
    case = mixed_fleet(8, seed=5, T=T, step=step)
    got = power_range_mw(case.inputs, case.assets["kind"].to_numpy())
    ids, inp = kind_ids(case.assets), case.inputs
    for row, (asset_id, kind) in enumerate(case.assets["kind"].items()):
        i = ids[AssetKind(kind)].index(asset_id)
        expected = {AssetKind.BATTERY.value: 2.0 * inp.bat_p_max_mw[i],
                    AssetKind.EV_CHARGER.value: inp.ev_ch_max_mw[i] + inp.ev_dis_max_mw[i],
                    AssetKind.FLEX_LOAD.value: inp.flex_p_max_mw[i], AssetKind.PV.value: inp.pv_avail_mw[i]}[kind]
        np.testing.assert_array_equal(got[row], expected)
    stuck = got == 0.0
    assert stuck.any() and (~stuck).any()
    prox = AssetProx.build(case.assets, step=step, horizon=T)
    prox.set_inputs(case.inputs)
    w = np.full((len(case.assets), T), 1e4)  # the targets, not the assets' own costs, decide
    up, down = prox.solve(w, np.full_like(w, 10.0)).p_mw, prox.solve(w, np.full_like(w, -10.0)).p_mw
    np.testing.assert_allclose(up[stuck], down[stuck], atol=P_TOL_MW)
    assert (np.abs(up - down)[~stuck] > 1e-4).mean() > 0.5  # most assets that can move do move


def test_result_rows_follow_the_asset_table() -> None:
    assets = table(pv=asset(AssetKind.PV), b=asset(AssetKind.BATTERY, e_max_mwh=1.0))
    prox = AssetProx.build(assets, step=HOUR, horizon=1, weights=NO_REG)
    prox.set_inputs(inputs_for(kind_ids(assets), 1, HOUR, pv_avail_mw=np.ones((1, 1)), bat_soc0_mwh=np.array([0.5]),
                               bat_soc_target_mwh=np.array([0.0]), bat_p_max_mw=np.ones((1, 1))))
    result = prox.solve(np.ones((2, 1)), np.array([[-1.0], [0.25]]))  # pv first, as in the table
    assert list(result.asset_ids) == ["pv", "b"] and prox.asset_order == ["b", "pv"]
    np.testing.assert_allclose(result.p_mw, [[-1.0], [0.25]], atol=1e-12)
    assert result.p_frame().loc["b", 0] == pytest.approx(0.25)


# ----------------------------------------------------------------------------- bad input
@pytest.fixture
def small() -> AssetProx:
    assets = table(b=asset(AssetKind.BATTERY, e_max_mwh=1.0), pv=asset(AssetKind.PV))
    prox = AssetProx.build(assets, step=HOUR, horizon=2)
    prox.set_inputs(inputs_for(kind_ids(assets), 2, HOUR, bat_p_max_mw=np.ones((1, 2)), pv_avail_mw=np.ones((1, 2))))
    return prox


def test_bad_weights_and_targets_name_the_argument(small: AssetProx) -> None:
    ok = np.ones((2, 2))
    with pytest.raises(ValueError, match=r"^weight: needs shape \(2, 2\)"):
        small.solve(np.ones((2, 3)), ok)
    with pytest.raises(ValueError, match="^weight: must be > 0"):
        small.solve(np.array([[1.0, 0.0], [1.0, 1.0]]), ok)
    with pytest.raises(ValueError, match="^target: must be finite"):
        small.solve(ok, np.array([[1.0, np.nan], [1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"^target: needs shape"):
        small.solve(ok, np.ones(4))


def test_bad_inputs_and_tables_name_the_field() -> None:
    assets = table(b=asset(AssetKind.BATTERY, e_max_mwh=1.0))
    prox = AssetProx.build(assets, step=HOUR, horizon=2)
    with pytest.raises(RuntimeError, match="set_inputs"):
        prox.solve(np.ones((1, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"^inputs.bat_p_max_mw: needs shape \(1, 2\)"):
        prox.set_inputs(inputs_for(kind_ids(assets), 2, HOUR, bat_p_max_mw=np.ones((1, 3))))
    with pytest.raises(ValueError, match="^inputs.bat_soc0_mwh: must be finite"):
        prox.set_inputs(inputs_for(kind_ids(assets), 2, HOUR, bat_soc0_mwh=np.array([np.inf]),
                                   bat_p_max_mw=np.ones((1, 2))))
    with pytest.raises(ValueError, match="^assets.kind: unknown kinds"):
        AssetProx.build(table(x=asset(AssetKind.PV)).assign(kind="heat_pump"), step=HOUR, horizon=1)
    with pytest.raises(ValueError, match="^horizon"):
        AssetProx.build(assets, step=HOUR, horizon=0)
