"""Correctness of controllers.dispatch_model on small cases whose optimum is worked out by hand here."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linprog

from controllers.api import AssetKind, Forecast, NetworkLimits, Observation, Sensitivities
from controllers.dispatch_model import DispatchModel, DispatchWeights, Proximal

T0 = pd.Timestamp("2024-06-01 00:00", tz="UTC")
HOUR = pd.Timedelta("1h")
NO_REG = DispatchWeights(throughput_cost_eur_per_mwh=0.0)


# ----------------------------------------------------------------------------- fixture helpers
def asset(kind: AssetKind, *, bus: int = 1, p_max_mw: float = 1.0, **extra: object) -> dict[str, object]:
    row: dict[str, object] = dict(
        kind=kind,
        bus=bus,
        participant_id="p1",
        p_max_mw=p_max_mw,
        e_max_mwh=0.0,
        eta_charge=1.0,
        eta_discharge=1.0,
        soc_min=0.0,
        soc_max=1.0,
        soc_init=0.0,
        s_max_mva=p_max_mw,
        v2g=False,
        flex_window=pd.Timedelta(0),
    )
    row.update(extra)
    return row


def table(**rows: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("asset_id")


def observe(
    assets: pd.DataFrame,
    prices: list[float],
    *,
    step: pd.Timedelta = HOUR,
    state: dict[str, dict[str, object]] | None = None,
    base_load_mw: dict[int, list[float]] | None = None,
    pv_avail_mw: dict[str, list[float]] | None = None,
    flex_base_mw: dict[str, list[float]] | None = None,
    limits: NetworkLimits = NetworkLimits(),
    sensitivities: Sensitivities | None = None,
) -> Observation:
    idx = pd.date_range(T0, periods=len(prices), freq=step)
    st = pd.DataFrame(index=assets.index)
    st["available"] = True
    st["soc_mwh"] = assets["soc_init"] * assets["e_max_mwh"]
    st["ev_connected"] = False
    st["ev_energy_needed_mwh"] = 0.0
    st["ev_departure"] = pd.Series(pd.NaT, index=assets.index, dtype="datetime64[ns, UTC]")
    st["flex_backlog_mwh"] = 0.0
    st["flex_deadline"] = pd.Series(pd.NaT, index=assets.index, dtype="datetime64[ns, UTC]")
    for a, values in (state or {}).items():
        for k, v in values.items():
            st.loc[a, k] = v
    forecast = Forecast(
        base_load_mw=pd.DataFrame(base_load_mw or {}, index=idx, dtype=float),
        pv_avail_mw=pd.DataFrame(pv_avail_mw or {}, index=idx, dtype=float),
        flex_base_mw=pd.DataFrame(flex_base_mw or {}, index=idx, dtype=float),
        price_eur_per_mwh=pd.Series(prices, index=idx, dtype=float),
    )
    return Observation(
        time=T0, step=step, assets=assets, state=st, forecast=forecast, limits=limits, sensitivities=sensitivities
    )


def solve(assets: pd.DataFrame, obs: Observation, *, weights: DispatchWeights = NO_REG, **build: object):
    model = DispatchModel.build(assets, step=obs.step, horizon=len(obs.forecast.index), weights=weights, **build)
    solution = model.solve(model.inputs_from_observation(obs))
    assert solution.status == "optimal", solution.reason
    return model, solution


# 1 MW / 1 MWh with soc_max 0.9: one full-power hour of charging (0.9 MWh stored) fills it exactly, which
# makes the arbitrage optimum unique (with 1 MWh usable, how the discharge splits over hours 1 and 3 is free).
BATTERY = table(b1=asset(AssetKind.BATTERY, e_max_mwh=1.0, soc_max=0.9, eta_charge=0.9, eta_discharge=0.9))


# ----------------------------------------------------------------------------- batteries
def test_battery_arbitrage_matches_the_hand_worked_optimum() -> None:
    # 1 MW, 0.9 MWh usable, eta 0.9 each way, empty, 1 h steps, prices 10/50/10/50, terminal SOC >= 0.
    # Charge 1 MW for 1 h -> 0.9 MWh stored; discharging it all gives 0.9 * 0.9 = 0.81 MWh to the grid.
    # Each cycle: -10 + 0.81 * 50 = +30.5 EUR, so charge fully at 10 and empty at 50, twice.
    # Schedule (load convention) [1, -0.81, 1, -0.81]; cost 10 - 40.5 + 10 - 40.5 = -61 EUR.
    _, sol = solve(BATTERY, observe(BATTERY, [10, 50, 10, 50]))
    np.testing.assert_allclose(sol.p_mw.loc["b1"].to_numpy(), [1.0, -0.81, 1.0, -0.81], atol=1e-6)
    np.testing.assert_allclose(sol.soc_mwh.loc["b1"].to_numpy(), [0.0, 0.9, 0.0, 0.9, 0.0], atol=1e-6)
    assert sol.objective_eur == pytest.approx(-61.0, abs=1e-6)
    assert sol.first_p_mw["b1"] == pytest.approx(1.0, abs=1e-6)


def test_battery_with_base_load_and_demand_charge_matches_an_independent_linprog() -> None:
    prices = np.array([10.0, 50.0, 10.0, 50.0])
    base = np.array([0.5, 1.0, 0.2, 1.5])
    demand_charge, throughput = 20.0, 0.01
    weights = DispatchWeights(demand_charge_eur_per_mw=demand_charge, throughput_cost_eur_per_mwh=throughput)
    obs = observe(BATTERY, list(prices), base_load_mw={1: list(base)})
    _, sol = solve(BATTERY, obs, weights=weights)

    # The same LP written directly. x = [ch_0..3, dis_0..3, soc_0..4, peak]; h = 1 h.
    n = 4 + 4 + 5 + 1
    ch, dis, soc, peak = np.arange(0, 4), np.arange(4, 8), np.arange(8, 13), 13
    c = np.zeros(n)
    c[ch] = prices + throughput
    c[dis] = -prices + throughput
    c[peak] = demand_charge
    constant = float(prices @ base)
    a_eq, b_eq = [], []
    row = np.zeros(n)
    row[soc[0]] = 1.0
    a_eq.append(row), b_eq.append(0.0)
    for t in range(4):  # soc[t+1] - soc[t] - 0.9 ch[t] + dis[t] / 0.9 = 0
        row = np.zeros(n)
        row[soc[t + 1]], row[soc[t]], row[ch[t]], row[dis[t]] = 1.0, -1.0, -0.9, 1 / 0.9
        a_eq.append(row), b_eq.append(0.0)
    a_ub, b_ub = [], []
    for t in range(4):  # base + ch - dis <= peak
        row = np.zeros(n)
        row[ch[t]], row[dis[t]], row[peak] = 1.0, -1.0, -1.0
        a_ub.append(row), b_ub.append(-base[t])
    row = np.zeros(n)
    row[soc[4]] = -1.0  # terminal soc >= initial soc (0)
    a_ub.append(row), b_ub.append(0.0)
    bounds = [(0, 1)] * 8 + [(0, 0.9)] * 5 + [(0, None)]
    ref = linprog(c, A_ub=np.array(a_ub), b_ub=b_ub, A_eq=np.array(a_eq), b_eq=b_eq, bounds=bounds, method="highs")
    assert ref.status == 0
    assert sol.objective_eur == pytest.approx(ref.fun + constant, rel=1e-6)
    # The peak charge makes the battery shave the 1.5 MW peak rather than only arbitrage.
    head = base + sol.p_mw.loc["b1"].to_numpy()
    assert head.max() == pytest.approx(ref.x[peak], abs=1e-5)


def test_terminal_soc_target_from_signals_is_met() -> None:
    # Target 0.45 MWh with eta 0.9: charge 0.5 MW at the cheapest price (10). No arbitrage on top: selling
    # at 12 returns 0.81 x 12 = 9.72 < 10 per MWh bought.
    obs = observe(BATTERY, [30, 10, 12, 11])
    obs = dataclasses.replace(obs, signals={"battery_soc_target_mwh": {"b1": 0.45}})
    _, sol = solve(BATTERY, obs)
    np.testing.assert_allclose(sol.p_mw.loc["b1"].to_numpy(), [0.0, 0.5, 0.0, 0.0], atol=1e-6)
    assert sol.soc_mwh.loc["b1"].iloc[-1] == pytest.approx(0.45, abs=1e-6)


# ----------------------------------------------------------------------------- EVs
EV = table(ev=asset(AssetKind.EV_CHARGER, p_max_mw=2.0, eta_charge=0.9))


def ev_state(need_mwh: float, departure_h: float) -> dict[str, dict[str, object]]:
    return {
        "ev": {"ev_connected": True, "ev_energy_needed_mwh": need_mwh, "ev_departure": T0 + departure_h * HOUR}
    }


def test_ev_energy_is_met_exactly_by_departure_at_the_cheapest_times() -> None:
    # Needs 2.7 MWh (battery side) before leaving at +3 h; 2 MW x 0.9 = 1.8 MWh per hour at most.
    # Cheapest connected hours: price 10 (2 MW -> 1.8 MWh), then price 20 for the remaining 0.9 MWh (1 MW).
    obs = observe(EV, [50, 10, 20, 1], state=ev_state(2.7, 3.0))
    _, sol = solve(EV, obs)
    p = sol.p_mw.loc["ev"].to_numpy()
    np.testing.assert_allclose(p, [0.0, 2.0, 1.0, 0.0], atol=1e-6)  # nothing after departure despite price 1
    assert 0.9 * p.sum() == pytest.approx(2.7, abs=1e-6)
    assert sol.ev_unmet_mwh["ev"] == pytest.approx(0.0, abs=1e-6)


def test_ev_unmet_energy_is_reported_when_the_need_cannot_be_met() -> None:
    # Leaves at +1.5 h: full 2 MW in hour 0, half an hour (share 0.5 -> 1 MW average) in hour 1.
    # Delivered 0.9 * (2 + 1) = 2.7 MWh of the 10 needed: 7.3 MWh unmet; the plan stays feasible.
    obs = observe(EV, [50, 50, 50, 50], state=ev_state(10.0, 1.5))
    _, sol = solve(EV, obs)
    np.testing.assert_allclose(sol.p_mw.loc["ev"].to_numpy(), [2.0, 1.0, 0.0, 0.0], atol=1e-6)
    assert sol.ev_unmet_mwh["ev"] == pytest.approx(7.3, abs=1e-6)


@pytest.mark.parametrize(("v2g", "expected", "cost"), [(True, [1, -1, 1, 0], -78.0), (False, [1, 0, 0, 0], 10.0)])
def test_v2g_discharges_only_what_it_charged_and_only_when_allowed(v2g, expected, cost) -> None:
    # 1 MW, lossless, needs 1 MWh by +4 h. V2G: charge at 10, sell at 100, recharge at 12: 10 - 100 + 12 = -78.
    assets = table(ev=asset(AssetKind.EV_CHARGER, p_max_mw=1.0, v2g=v2g))
    obs = observe(assets, [10, 100, 12, 15], state=ev_state(1.0, 4.0))
    _, sol = solve(assets, obs)
    np.testing.assert_allclose(sol.p_mw.loc["ev"].to_numpy(), expected, atol=1e-6)
    assert sol.objective_eur == pytest.approx(cost, abs=1e-6)


# ----------------------------------------------------------------------------- flexible loads
def flex(window_h: float) -> pd.DataFrame:
    return table(f=asset(AssetKind.FLEX_LOAD, p_max_mw=2.0, flex_window=window_h * HOUR))


@pytest.mark.parametrize(
    ("window_h", "expected"),
    [
        (2.0, [0.0, 0.0, 2.0, 0.0]),  # both requests may wait for the 10 EUR hour
        (1.0, [0.0, 1.0, 1.0, 0.0]),  # hour-0 request must be served by the end of hour 1 (90 < 100)
        (0.0, [1.0, 1.0, 0.0, 0.0]),  # no flexibility: served as requested
    ],
)
def test_flexible_energy_is_deferred_within_its_window_and_conserved(window_h, expected) -> None:
    assets = flex(window_h)
    obs = observe(assets, [100, 90, 10, 20], flex_base_mw={"f": [1.0, 1.0, 0.0, 0.0]})
    _, sol = solve(assets, obs)
    p = sol.p_mw.loc["f"].to_numpy()
    np.testing.assert_allclose(p, expected, atol=1e-6)
    assert p.sum() * 1.0 == pytest.approx(2.0, abs=1e-6)  # requested 2 MWh, served 2 MWh
    assert sol.flex_backlog_mwh.loc["f"].iloc[-1] == pytest.approx(0.0, abs=1e-6)


def test_initial_flexible_backlog_is_served_before_its_deadline() -> None:
    # 1 MWh owed, due at +2 h: it may be served in hour 0 (100) or hour 1 (90), not in the 10 EUR hour.
    assets = flex(2.0)
    state = {"f": {"flex_backlog_mwh": 1.0, "flex_deadline": T0 + 2 * HOUR}}
    obs = observe(assets, [100, 90, 10, 20], flex_base_mw={"f": [0.0] * 4}, state=state)
    _, sol = solve(assets, obs)
    np.testing.assert_allclose(sol.p_mw.loc["f"].to_numpy(), [0.0, 1.0, 0.0, 0.0], atol=1e-6)


# ----------------------------------------------------------------------------- PV and the network
PV = table(pv=asset(AssetKind.PV, bus=1, p_max_mw=2.0))


def two_bus_sensitivities() -> Sensitivities:
    # Bus 0 is the slack; bus 1 at 1.00 pu with no injection. +1 MW consumed at bus 1 -> -0.05 pu.
    dv = pd.DataFrame([[-0.05]], index=[1], columns=[1])
    return Sensitivities(
        vm_pu=pd.Series([1.0], index=[1]),
        dvm_dp_pu_per_mw=dv,
        dvm_dq_pu_per_mvar=dv * 0.5,
        loading_percent=pd.Series(dtype=float),
        dloading_dp_percent_per_mw=pd.DataFrame(columns=[1], dtype=float),
        p_bus_mw=pd.Series([0.0], index=[1]),
        q_bus_mvar=pd.Series([0.0], index=[1]),
    )


@pytest.mark.parametrize(("price", "expected_p"), [(50.0, -2.0), (-20.0, 0.0)])
def test_pv_is_curtailed_only_at_a_negative_price_without_network_limits(price, expected_p) -> None:
    obs = observe(PV, [price] * 2, pv_avail_mw={"pv": [2.0, 2.0]})
    _, sol = solve(PV, obs)
    np.testing.assert_allclose(sol.p_mw.loc["pv"].to_numpy(), [expected_p] * 2, atol=1e-6)


def test_pv_is_curtailed_just_enough_to_hold_the_voltage_limit() -> None:
    # Full output: v = 1.00 + (-0.05)(-2 MW) = 1.10 pu > 1.05. Holding 1.05 needs p_bus >= -1 MW,
    # so 1 MW of the 2 MW is curtailed although the price is positive.
    obs = observe(PV, [50.0, 50.0], pv_avail_mw={"pv": [2.0, 2.0]}, sensitivities=two_bus_sensitivities())
    _, sol = solve(PV, obs, n_voltage_rows=1)
    np.testing.assert_allclose(sol.p_mw.loc["pv"].to_numpy(), [-1.0, -1.0], atol=1e-6)
    assert sol.max_voltage_slack_pu == pytest.approx(0.0, abs=1e-7)
    # The same case with the network left out curtails nothing.
    _, free = solve(PV, obs)
    np.testing.assert_allclose(free.p_mw.loc["pv"].to_numpy(), [-2.0, -2.0], atol=1e-6)


def test_voltage_screening_fills_slots_with_the_rows_closest_to_a_limit() -> None:
    dv = pd.DataFrame([[-0.05], [-0.01], [-0.03]], index=[1, 2, 3], columns=[1])
    sens = dataclasses.replace(
        two_bus_sensitivities(), vm_pu=pd.Series([1.0, 1.0, 1.0], index=[1, 2, 3]), dvm_dp_pu_per_mw=dv
    )
    obs = observe(PV, [50.0], pv_avail_mw={"pv": [2.0]}, sensitivities=sens)
    model = DispatchModel.build(PV, step=HOUR, horizon=1, n_voltage_rows=2)
    inputs = model.inputs_from_observation(obs)
    # Worst-case swing 2 MW: reach 0.10, 0.02, 0.06 pu against 0.05 pu headroom -> buses 1 and 3.
    assert inputs.v_rows == (1, 3)
    np.testing.assert_allclose(inputs.v_sens_pu_per_mw[:, 0], [-0.05, -0.03])


def test_feeder_head_limit_is_respected_by_deferring_ev_charging() -> None:
    # 2 MW base load and a 3 MW head limit: the EV (2 MW, lossless here) may add only 1 MW per hour.
    assets = table(ev=asset(AssetKind.EV_CHARGER, p_max_mw=2.0))
    obs = observe(
        assets,
        [50, 50, 50, 50],
        state=ev_state(3.0, 4.0),
        base_load_mw={1: [2.0] * 4},
        limits=NetworkLimits(p_head_max_mw=3.0),
    )
    _, sol = solve(assets, obs)
    head = 2.0 + sol.p_mw.loc["ev"].to_numpy()
    assert head.max() <= 3.0 + 1e-6
    assert sol.p_mw.loc["ev"].sum() == pytest.approx(3.0, abs=1e-6)


# ----------------------------------------------------------------------------- structure and fallback
MIXED = table(
    b1=asset(AssetKind.BATTERY, e_max_mwh=1.0, eta_charge=0.9, eta_discharge=0.9),
    ev=asset(AssetKind.EV_CHARGER, bus=2, v2g=True),
    f=asset(AssetKind.FLEX_LOAD, flex_window=2 * HOUR),
    pv=asset(AssetKind.PV, bus=2),
)


def test_the_full_model_is_dpp_so_re_solves_skip_recompilation() -> None:
    model = DispatchModel.build(
        MIXED,
        step=pd.Timedelta("15min"),
        horizon=96,
        weights=DispatchWeights(demand_charge_eur_per_mw=5.0),
        n_voltage_rows=3,
        n_loading_rows=2,
        asset_prices=True,
        proximal=True,
    )
    assert model.problem.is_dpp()
    assert model.asset_order == ["b1", "ev", "f", "pv"]


def test_asset_prices_and_proximal_term_steer_an_agent_model() -> None:
    model = DispatchModel.build(BATTERY, step=HOUR, horizon=4, asset_prices=True, proximal=True)
    inputs = model.inputs_from_observation(observe(BATTERY, [10, 50, 10, 50]))
    # A dual price that cancels the energy price leaves nothing to arbitrage: the battery idles (the
    # throughput cost makes idling the unique optimum).
    cancel = pd.DataFrame([[-10.0, -50.0, -10.0, -50.0]], index=["b1"])
    idle = model.solve(inputs, asset_price_eur_per_mwh=cancel)
    np.testing.assert_allclose(idle.p_mw.loc["b1"].to_numpy(), 0.0, atol=1e-6)
    # A stiff proximal term pulls the plan onto the consensus target z - u = [0.2, -0.1, 0.2, -0.1], which is
    # feasible (SOC 0.18, 0.069, 0.249, 0.138 MWh); the prices move it by only ~price / rho = 5e-5 MW.
    z = pd.DataFrame([[0.3, -0.1, 0.3, -0.1]], index=["b1"])
    u = pd.DataFrame([[0.1, 0.0, 0.1, 0.0]], index=["b1"])
    pulled = model.solve(inputs, proximal=Proximal(rho=1e6, z_mw=z, u_mw=u))
    np.testing.assert_allclose(pulled.p_mw.loc["b1"].to_numpy(), [0.2, -0.1, 0.2, -0.1], atol=1e-3)


def test_an_infeasible_solve_returns_the_safe_fallback() -> None:
    assets = table(
        b1=asset(AssetKind.BATTERY, e_max_mwh=1.0, eta_charge=0.9, eta_discharge=0.9),
        ev=asset(AssetKind.EV_CHARGER, p_max_mw=2.0, eta_charge=0.9),
        pv=asset(AssetKind.PV),
    )
    obs = observe(assets, [10, 50, 10, 50], state=ev_state(2.7, 3.0), pv_avail_mw={"pv": [0.7] * 4})
    model = DispatchModel.build(assets, step=HOUR, horizon=4)
    # 5 MWh in a 1 MWh battery cannot be brought inside its SOC bounds: the problem is infeasible.
    inputs = dataclasses.replace(model.inputs_from_observation(obs), bat_soc0_mwh=np.array([5.0]))
    sol = model.solve(inputs)
    assert sol.fallback and sol.status == "infeasible"
    # Battery idle; EV at the rate its need requires (2.7 MWh / (0.9 x 3 h) = 1 MW); PV uncurtailed.
    assert sol.first_p_mw.to_dict() == pytest.approx({"b1": 0.0, "ev": 1.0, "pv": -0.7})


def test_non_finite_inputs_fall_back_instead_of_raising() -> None:
    model = DispatchModel.build(BATTERY, step=HOUR, horizon=4)
    inputs = model.inputs_from_observation(observe(BATTERY, [10, 50, 10, 50]))
    sol = model.solve(dataclasses.replace(inputs, price_eur_per_mwh=np.array([10, np.nan, 10, 50])))
    assert sol.fallback and "non-finite" in sol.reason
    assert sol.first_p_mw["b1"] == 0.0


def test_feed_in_tariff_makes_storing_pv_surplus_worth_it() -> None:
    # Hour 1 the feeder exports 1 MW, hour 2 it imports 1 MW; import costs 100, export earns 20 EUR/MWh.
    # Without the battery: -20 + 100 = 80 EUR. A 1 MW / 1 MWh lossless battery soaking up hour 1 and
    # discharging in hour 2 leaves the head at [0, 0]: 0 EUR. Valuing exports at the import price (the
    # model without feed_in) sees no gain in it: -100 + 100 = 0 either way.
    assets = table(b=asset(AssetKind.BATTERY, e_max_mwh=1.0))
    obs = dataclasses.replace(observe(assets, [100.0, 100.0], base_load_mw={1: [-1.0, 1.0]}),
                              signals={"feed_in_eur_per_mwh": 20.0})
    model = DispatchModel.build(assets, step=HOUR, horizon=2, weights=NO_REG, feed_in=True)
    sol = model.solve(model.inputs_from_observation(obs))
    assert sol.status == "optimal"
    np.testing.assert_allclose(sol.p_mw.loc["b"].to_numpy(), [1.0, -1.0], atol=1e-6)
    assert sol.objective_eur == pytest.approx(0.0, abs=1e-6)
    assert model.problem.is_dpp()


def test_feed_in_objective_reports_the_tariff_cost_without_flexibility() -> None:
    # Same feeder, battery unable to act (0 MW): the objective is the tariff bill, 80 EUR.
    assets = table(b=asset(AssetKind.BATTERY, p_max_mw=0.0, e_max_mwh=1.0))
    obs = dataclasses.replace(observe(assets, [100.0, 100.0], base_load_mw={1: [-1.0, 1.0]}),
                              signals={"feed_in_eur_per_mwh": 20.0})
    model = DispatchModel.build(assets, step=HOUR, horizon=2, weights=NO_REG, feed_in=True)
    sol = model.solve(model.inputs_from_observation(obs))
    assert sol.objective_eur == pytest.approx(80.0, rel=1e-6)


# ----------------------------------------------------------------------------- direct re-solves
# DispatchModel.solve re-solves CLARABEL and HIGHS through the canonical form cvxpy built at the first solve
# (_Canonical); solve(direct=False) is cvxpy's own problem.solve, the reference here.
SEEDED = table(
    b1=asset(AssetKind.BATTERY, e_max_mwh=1.0, eta_charge=0.9, eta_discharge=0.92, soc_min=0.1, soc_max=0.9),
    b2=asset(AssetKind.BATTERY, bus=3, p_max_mw=0.5, e_max_mwh=2.0, eta_charge=0.95, eta_discharge=0.95),
    ev1=asset(AssetKind.EV_CHARGER, bus=2, v2g=True, eta_charge=0.9, eta_discharge=0.9),
    ev2=asset(AssetKind.EV_CHARGER, bus=3, p_max_mw=0.7, eta_charge=0.95),
    f1=asset(AssetKind.FLEX_LOAD, bus=2, flex_window=2 * HOUR),
    pv1=asset(AssetKind.PV, bus=2, p_max_mw=1.5),
    pv2=asset(AssetKind.PV, bus=3, p_max_mw=0.8),
)


def seeded_observations(seed: int, n: int, horizon: int = 8, *, network: bool = True) -> list[Observation]:
    """A receding horizon of ``n`` observations: prices, base load, PV, SOC and EV needs drawn from ``seed``;
    with ``network``, a 3-bus dV/dP whose values change every time (the model's A changes too)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prices = list(rng.uniform(-20.0, 120.0, horizon))
        state = {"b1": {"soc_mwh": rng.uniform(0.1, 0.9)}, "b2": {"soc_mwh": rng.uniform(0.0, 2.0)},
                 "ev1": {"ev_connected": True, "ev_energy_needed_mwh": rng.uniform(0.2, 2.0),
                         "ev_departure": T0 + rng.integers(2, horizon + 3) * HOUR},
                 "ev2": {"ev_connected": bool(rng.integers(0, 2)), "ev_energy_needed_mwh": rng.uniform(0.0, 1.5),
                         "ev_departure": T0 + rng.integers(1, horizon) * HOUR},
                 "f1": {"flex_backlog_mwh": rng.uniform(0.0, 0.3)}}
        sens = None
        if network:
            dv = -np.diag(rng.uniform(0.01, 0.04, 3)) - rng.uniform(0.0, 0.01, (3, 3))
            buses = [1, 2, 3]
            sens = Sensitivities(
                vm_pu=pd.Series(rng.uniform(0.98, 1.06, 3), index=buses),
                dvm_dp_pu_per_mw=pd.DataFrame(dv, index=buses, columns=buses),
                dvm_dq_pu_per_mvar=pd.DataFrame(0.5 * dv, index=buses, columns=buses),
                loading_percent=pd.Series(rng.uniform(40.0, 95.0, 1), index=["l0"]),
                dloading_dp_percent_per_mw=pd.DataFrame(rng.uniform(5.0, 30.0, (1, 3)), index=["l0"], columns=buses),
                p_bus_mw=pd.Series(rng.uniform(-0.5, 0.5, 3), index=buses),
                q_bus_mvar=pd.Series(0.0, index=buses),
            )
        obs = observe(SEEDED, prices, state=state, sensitivities=sens,
                      base_load_mw={1: list(rng.uniform(0.2, 1.5, horizon)), 3: list(rng.uniform(0.0, 0.5, horizon))},
                      pv_avail_mw={"pv1": list(rng.uniform(0.0, 1.5, horizon)), "pv2": list(rng.uniform(0.0, 0.8, horizon))},
                      flex_base_mw={"f1": list(rng.uniform(0.0, 0.6, horizon))},
                      limits=NetworkLimits(p_head_max_mw=float(rng.uniform(1.5, 3.0))))
        out.append(dataclasses.replace(obs, signals={"feed_in_eur_per_mwh": 30.0, "billed_peak_mw": 0.5}))
    return out


SEEDED_BUILD = dict(weights=DispatchWeights(demand_charge_eur_per_mw=20.0), head_limit=True, feed_in=True)


def built(*, network: bool, horizon: int = 8) -> DispatchModel:
    return DispatchModel.build(SEEDED, step=HOUR, horizon=horizon, n_voltage_rows=2 if network else 0,
                               n_loading_rows=1 if network else 0, network_periods=4, **SEEDED_BUILD)


@pytest.mark.parametrize("network", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_direct_clarabel_re_solves_give_cvxpys_solution(seed: int, network: bool) -> None:
    fast, reference = built(network=network), built(network=network)
    for obs in seeded_observations(seed, 4, network=network):
        inputs = fast.inputs_from_observation(obs)
        got, want = fast.solve(inputs), reference.solve(inputs, direct=False)
        assert got.status == want.status == "optimal", (got.reason, want.reason)
        # Same data, settings and solver calls as cvxpy's Clarabel interface: the same numbers.
        np.testing.assert_allclose(got.p, want.p, rtol=0, atol=1e-9)
        assert got.objective_eur == pytest.approx(want.objective_eur, rel=1e-9, abs=1e-9)
        assert want.objective_eur == pytest.approx(reference.problem.value, rel=1e-12)
        for name in ("soc_mwh", "flex_backlog_mwh", "pv_curtail_mw"):
            pd.testing.assert_frame_equal(getattr(got, name), getattr(want, name), rtol=0, atol=1e-9)
        pd.testing.assert_series_equal(got.ev_unmet_mwh, want.ev_unmet_mwh, rtol=0, atol=1e-9)
        assert (got.max_voltage_slack_pu, got.max_head_slack_mw) == pytest.approx(
            (want.max_voltage_slack_pu, want.max_head_slack_mw), abs=1e-9)
    # The fast path was taken (not a silent fall back to problem.solve).
    assert list(fast._direct.values()) and all(c is not None for c in fast._direct.values())


@pytest.mark.parametrize("network", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warm_started_highs_reaches_clarabels_optimum(seed: int, network: bool) -> None:
    # HiGHS re-runs from the previous basis; the optimum may be a face (another vertex of it is as good),
    # so the objective is compared, to 1e-6 relative.
    fast, reference = built(network=network), built(network=network)
    for obs in seeded_observations(seed, 5, network=network):
        inputs = fast.inputs_from_observation(obs)
        got, want = fast.solve(inputs, solver="HIGHS"), reference.solve(inputs, direct=False)
        assert got.status == want.status == "optimal", (got.reason, want.reason)
        assert got.objective_eur == pytest.approx(want.objective_eur, rel=1e-6, abs=1e-6)
        # The HiGHS plan is feasible: its objective, evaluated by cvxpy at the plan, is the one reported.
        assert not got.fallback and np.all(np.isfinite(got.p))
    assert all(c is not None and c.engine is not None for c in fast._direct.values())


def test_warm_started_highs_gives_the_unique_arbitrage_optimum_after_other_prices() -> None:
    # The hand-worked case (charge 1 MW at 10, unique optimum) reached from the bases of other price curves.
    model = DispatchModel.build(BATTERY, step=HOUR, horizon=4, weights=NO_REG)
    for prices in ([50, 10, 50, 10], [30, 30, 30, 30], [10, 50, 10, 50]):
        sol = model.solve(model.inputs_from_observation(observe(BATTERY, prices)), solver="HIGHS")
    assert sol.status == "optimal"
    np.testing.assert_allclose(sol.p_mw.loc["b1"].to_numpy()[:1], [1.0], atol=1e-6)
    assert sol.objective_eur == pytest.approx(-61.0, rel=1e-6)


def test_a_quadratic_model_keeps_cvxpys_path() -> None:
    # The proximal term makes it a QP: not re-solved directly, and the result is problem.solve's.
    model = DispatchModel.build(BATTERY, step=HOUR, horizon=4, proximal=True)
    inputs = model.inputs_from_observation(observe(BATTERY, [10, 50, 10, 50]))
    prox = Proximal(rho=10.0, z_mw=pd.DataFrame([[0.3, -0.1, 0.3, -0.1]], index=["b1"]))
    got = model.solve(inputs, proximal=prox)
    assert list(model._direct.values()) == [None]
    assert got.objective_eur == pytest.approx(float(model.problem.value), rel=1e-12)
    reference = DispatchModel.build(BATTERY, step=HOUR, horizon=4, proximal=True).solve(inputs, proximal=prox,
                                                                                      direct=False)
    np.testing.assert_allclose(got.p, reference.p, atol=1e-9)


def test_a_failed_direct_solve_falls_back_like_cvxpys() -> None:
    model = DispatchModel.build(BATTERY, step=HOUR, horizon=4)
    inputs = model.inputs_from_observation(observe(BATTERY, [10, 50, 10, 50]))
    got = model.solve(inputs, solver_options={"max_iter": 1})
    want = DispatchModel.build(BATTERY, step=HOUR, horizon=4).solve(inputs, solver_options={"max_iter": 1},
                                                                     direct=False)
    assert got.fallback and want.fallback
    assert (got.status, got.reason) == (want.status, want.reason)
    # An infeasible LP through warm-started HiGHS: the fallback, with cvxpy's status name.
    bad = dataclasses.replace(inputs, bat_soc0_mwh=np.array([5.0]))
    for solver in ("CLARABEL", "HIGHS"):
        sol = model.solve(bad, solver=solver)
        assert sol.fallback and sol.status == "infeasible", (solver, sol.status)


def test_a_direct_path_that_breaks_falls_back_to_cvxpys_own_solve(monkeypatch: pytest.MonkeyPatch) -> None:
    """The direct path reads cvxpy's internals; if another cvxpy version lays them out otherwise, the re-solve
    is cvxpy's problem.solve (the right numbers), not a fallback dispatch and not an exception."""
    from controllers import dispatch_model

    fast, reference = built(network=True), built(network=True)
    observations = seeded_observations(5, 2)
    fast.solve(fast.inputs_from_observation(observations[0]))  # builds the direct state

    def broken(self: Any, **_: Any) -> Any:
        raise AttributeError("'ParamConeProg' object has no attribute 'reduced_A'")

    monkeypatch.setattr(dispatch_model._Canonical, "solve", broken)
    inputs = fast.inputs_from_observation(observations[1])
    got, want = fast.solve(inputs), reference.solve(inputs, direct=False)
    assert got.status == "optimal" and not got.fallback
    assert got.objective_eur == pytest.approx(want.objective_eur, rel=1e-9)
    assert all(v is None for v in fast._direct.values())  # cvxpy's path from now on
