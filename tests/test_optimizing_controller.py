"""OptimizingController against the controller contract, on hand-worked cases from test_dispatch_model."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from controllers.api import Controller, ControllerSpec, Dispatch, load_controller
from controllers.optimizing import OptimizingController
from controllers.testing import check_controller
from tests.test_dispatch_model import BATTERY, HOUR, MIXED, PV, T0, observe, two_bus_sensitivities


def started(controller: OptimizingController, assets: pd.DataFrame, horizon: int) -> OptimizingController:
    controller.reset(ControllerSpec(assets=assets, step=HOUR, horizon=horizon), seed=7)
    return controller


def test_it_is_a_controller_and_loads_by_name() -> None:
    controller = load_controller("controllers.optimizing:OptimizingController", solver="osqp", network=False)
    assert isinstance(controller, Controller)
    assert isinstance(controller, OptimizingController) and controller.solver == "OSQP"
    with pytest.raises(ValueError, match="solver"):
        OptimizingController(solver="GUROBI")


def test_act_dispatches_the_first_period_of_the_hand_worked_arbitrage() -> None:
    controller = started(OptimizingController(throughput_cost_eur_per_mwh=0.0), BATTERY, 4)
    dispatch = controller.act(observe(BATTERY, [10, 50, 10, 50]))
    assert isinstance(dispatch, Dispatch)
    assert dispatch.p_mw.to_dict() == pytest.approx({"b1": 1.0}, abs=1e-6)  # charge at 10 (load convention)
    d = dispatch.diagnostics
    assert d["status"] == "optimal" and d["fallback"] is False
    assert d["objective_eur"] == pytest.approx(-61.0, rel=1e-6)
    assert d["solve_time_s"] >= 0 and d["compile_time_s"] >= 0


def test_osqp_and_highs_reach_the_same_first_setpoint() -> None:
    obs = observe(BATTERY, [10, 50, 10, 50])
    for solver, options in (("OSQP", {"eps_abs": 1e-6, "eps_rel": 1e-6, "max_iter": 20000}), ("HIGHS", {})):
        controller = started(OptimizingController(solver=solver, solver_options=options), BATTERY, 4)
        dispatch = controller.act(obs)
        assert dispatch.diagnostics["fallback"] is False, (solver, dispatch.diagnostics)
        assert dispatch.p_mw["b1"] == pytest.approx(1.0, abs=1e-3), solver


def test_network_constraints_can_be_switched_off() -> None:
    # The 2-bus case: full PV output would lift bus 1 to 1.10 pu, so with the network on half is curtailed.
    obs = observe(PV, [50.0, 50.0], pv_avail_mw={"pv": [2.0, 2.0]}, sensitivities=two_bus_sensitivities())
    on = started(OptimizingController(network=True), PV, 2).act(obs)
    off = started(OptimizingController(network=False), PV, 2).act(obs)
    assert on.p_mw["pv"] == pytest.approx(-1.0, abs=1e-6)
    assert on.diagnostics["monitored_buses"] == (1,)
    assert off.p_mw["pv"] == pytest.approx(-2.0, abs=1e-6)


def test_a_failed_solve_gives_the_fallback_dispatch_not_an_exception() -> None:
    # One interior-point iteration cannot converge: status user_limit -> batteries idle.
    controller = started(OptimizingController(solver_options={"max_iter": 1}), BATTERY, 4)
    dispatch = controller.act(observe(BATTERY, [10, 50, 10, 50]))
    assert dispatch.diagnostics["fallback"] is True
    assert dispatch.diagnostics["status"] != "optimal"
    assert dispatch.p_mw.to_dict() == {"b1": 0.0}


def test_act_is_deterministic_and_leaves_the_observation_untouched() -> None:
    controller = started(OptimizingController(), BATTERY, 4)
    obs = observe(BATTERY, [10, 50, 10, 50])
    before = {"state": obs.state.copy(deep=True), "assets": obs.assets.copy(deep=True)}
    price = obs.forecast.price_eur_per_mwh.copy(deep=True)
    first, second = controller.act(obs), controller.act(obs)
    pd.testing.assert_series_equal(first.p_mw, second.p_mw)
    pd.testing.assert_frame_equal(obs.state, before["state"])
    pd.testing.assert_frame_equal(obs.assets, before["assets"])
    pd.testing.assert_series_equal(obs.forecast.price_eur_per_mwh, price)


def test_act_before_reset_and_a_wrong_step_are_errors() -> None:
    with pytest.raises(RuntimeError, match="before reset"):
        OptimizingController().act(observe(BATTERY, [10, 50]))
    controller = started(OptimizingController(), BATTERY, 2)
    with pytest.raises(ValueError, match="step"):
        controller.act(observe(BATTERY, [10, 50], step=pd.Timedelta("15min")))


def test_it_passes_the_contract_checker_on_a_mixed_fleet() -> None:
    spec = ControllerSpec(assets=MIXED, step=HOUR, horizon=4)
    state = {"ev": {"ev_connected": True, "ev_energy_needed_mwh": 1.5, "ev_departure": T0 + 3 * HOUR}}
    obs = observe(
        MIXED,
        [30, -5, 60, 20],
        state=state,
        base_load_mw={1: [0.4] * 4, 2: [0.1] * 4},
        pv_avail_mw={"pv": [0.2, 0.9, 0.5, 0.0]},
        flex_base_mw={"f": [0.5, 0.5, 0.0, 0.0]},
    )
    # check_controller deep-copies and pickles the observation; the api's default signals (a MappingProxyType)
    # can do neither, so this observation carries a plain dict (reported to the api owner).
    obs = dataclasses.replace(obs, signals={})
    (dispatch,) = check_controller(lambda: OptimizingController(demand_charge_eur_per_mw=5.0), spec, [obs])
    assert dispatch.diagnostics["fallback"] is False
    assert set(dispatch.p_mw.index) == {"b1", "ev", "f", "pv"}
