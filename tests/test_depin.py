"""DePIN at feeder scale: network-aware ADMM along the feeder tree, neighbour-only messages (controllers.depin).

What is checked, each against an independent reference:

* optimality — the agents' joint plan, priced by the central cvxpy model on the same observation, costs within
  0.5 % of that model's optimum without network limits (an evening peak);
* the grid's limits — on a high-PV midday and on an evening EV peak with a tight limit, where no control breaks
  the band or the loading limit, the AC power flow (the model of record, not the agents' linear model) of the
  DePIN dispatch stays inside it to the central optimizer's own tolerance (tests/test_network_constraints.py),
  and its cost is within 1 % of the central network-constrained optimizer's;
* messages — exactly two per participant and four per branch each round, whatever the feeder's size;
* the batched local steps equal agents solving one by one, and faults (control-centre outage, dropout, loss)
  keep the feeder inside its limits.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from conftest import make_scenario
from controllers.dispatch_model import DispatchModel, DispatchWeights, Proximal
from twin.engine import PolicyTwin
from twin.inputs import build_inputs
from twin.run import run_scenario

#: AC voltage tolerance of the linear models, as measured for the central optimizer (test_network_constraints).
LINEARIZATION_TOL_PU = 2e-3
FLEET = {"pv_penetration": 1.0, "battery_share": 0.5, "ev_share": 0.3, "flex_share": 0.3}
DEPIN = {"name": "depin", "mode": "agents", "target": "controllers.depin:NetworkAdmm"}
SCADA_NET = {"name": "scada", "mode": "ideal", "target": "controllers.optimizing:OptimizingController",
             "kwargs": {"network": True}}
NONE = {"name": "none", "target": "controllers.baseline:NoControl"}
NETWORK = {"sensitivities": True, "refresh": "15min", "monitored_buses": "all"}
URBAN6 = "simbench:1-LV-urban6--0-sw"
SEMIURB4 = "simbench:1-LV-semiurb4--0-sw"


def plan_cost(model: DispatchModel, inputs: object, p_mw: pd.DataFrame | None) -> float:
    """The central objective of a plan: the optimum (p_mw None), or the cost of ``p_mw`` found by pinning
    every asset to it with a stiff proximal term (rho 1e7 EUR/MW²: a 1 W deviation costs 5e-6 EUR)."""
    if p_mw is None:
        return model.solve(inputs).objective_eur
    z = p_mw.reindex(model.asset_order).set_axis(range(model.horizon), axis=1)
    sol = model.solve(inputs, proximal=Proximal(rho=1e7, z_mw=z, u_mw=z * 0.0))
    assert sol.status == "optimal", sol.reason
    return sol.objective_eur


@pytest.mark.parametrize(("feeder", "at"), [("cigre-lv", "2016-06-06T18:00:00Z"),
                                            ("simbench:1-LV-rural1--0-sw", "2016-06-06T18:00:00Z"),
                                            (URBAN6, "2016-06-06T18:00:00Z")])
def test_agents_reach_the_central_optimum_and_say_when_they_have(feeder: str, at: str) -> None:
    """No faults, an evening peak, 6-hour horizon: the stopping rule (primal and dual residuals) ends the
    rounds, and the plan costs within 0.5 % of the central model's optimum on the same observation.

    The agents' feeder-head row is anchored at the measured head, so it carries the feeder's losses at the
    operating point; the central model's head is lossless. The reference is therefore the central model with
    the twin's measured losses added to its head (the same convex problem, solved centrally)."""
    s = make_scenario(feeder=feeder, fleet=FLEET, start=at, end=(pd.Timestamp(at) + pd.Timedelta("15min")).isoformat(),
                      horizon="6h", comms={"rounds": 300}, controllers=[DEPIN])
    inputs = build_inputs(s)
    twin = PolicyTwin.create(s.controllers[0], inputs, s)
    t = s.times[0]
    observation = twin.observe_for_test(t)
    dispatch, _, rounds = twin._decide_agents(t)
    assert 1 < rounds < 300  # stopped by the residuals, not by the budget
    d = dispatch.diagnostics
    network = twin.agent_network.network
    allowed = network.tolerance_mw + network.relative_tolerance * network.grid.scale_node.max()
    assert d["primal_residual_mw"] <= allowed and d["dual_residual_mw"] <= allowed
    plan = pd.DataFrame(network.participants.p, index=inputs.assets.index)
    model = DispatchModel.build(inputs.assets, step=s.step, horizon=s.horizon_steps,
                                weights=DispatchWeights(), head_limit=False, feed_in=True, proximal=True)
    central_inputs = model.inputs_from_observation(observation)
    central_inputs = replace(central_inputs, head_fixed_mw=central_inputs.head_fixed_mw + twin.last_pf.losses_mw)
    optimum = plan_cost(model, central_inputs, None)
    reached = plan_cost(model, central_inputs, plan)
    assert -1e-6 <= (reached - optimum) / abs(optimum) <= 0.005, (optimum, reached)
    # Only aggregates crossed the mesh: no participant's data reached a central point.
    assert twin.comms.traffic.totals()["central_bytes"] == 0


def assert_cost_within_one_percent(depin: object, scada: object) -> None:
    """DePIN's energy cost on the AC power flow is at most 1 % above the central optimizer's (it may be lower:
    the central model screens its network rows and linearizes at the same point, so it is not the exact
    optimum either)."""
    cost_d, cost_s = depin.summary["cost_eur"].sum(), scada.summary["cost_eur"].sum()
    assert cost_d <= cost_s + 0.01 * abs(cost_s), (cost_d, cost_s)


def _compare(feeder: str, *, fleet: dict, start: str, end: str, limits: dict | None = None) -> dict:
    s = make_scenario(feeder=feeder, fleet=fleet, start=start, end=end, horizon="4h", comms={"rounds": 200},
                      network=NETWORK, limits=limits or {}, controllers=[NONE, SCADA_NET, DEPIN])
    return run_scenario(s, runs_root=None, inputs=build_inputs(s)).records


@pytest.mark.parametrize(("feeder", "pv"), [("cigre-lv", 3.0), ("simbench:1-LV-rural1--0-sw", 8.0), (SEMIURB4, 4.0)])
def test_network_aware_depin_holds_the_voltage_band_on_a_high_pv_day(feeder: str, pv: float) -> None:
    """A clear June midday with a PV fleet several times the feeder's load: no control drives the feeder end
    well above 1.05 pu (on semiurb4 it also overloads the transformer, 136 %, and cables, 147 %); the DePIN agents,
    coordinating only along the feeder, keep the AC voltages inside the band and the loadings at their limit,
    as the central network-constrained optimizer does, at a cost within 1 % of its cost."""
    rec = _compare(feeder, fleet={"pv_penetration": pv, "battery_share": 0.5, "ev_share": 0.2, "flex_share": 0.3},
                   start="2016-06-06T10:00:00Z", end="2016-06-06T13:00:00Z")
    assert (rec["none"].vm_pu.to_numpy() > 1.05).sum() >= 10 and rec["none"].summary["vm_max_pu"].max() > 1.06
    depin, scada = rec["depin"], rec["scada"]
    assert depin.summary["converged"].all()
    assert depin.vm_pu.to_numpy().max() <= 1.05 + LINEARIZATION_TOL_PU
    assert depin.vm_pu.to_numpy().min() >= 0.95 - LINEARIZATION_TOL_PU
    # Loadings: the rows are linear in the branch's active power at its measured voltage and reactive flow, and
    # pandapower's loading is current-based, so it creeps up as curtailment lowers the voltage. From an
    # uncontrolled start (rural1's transformer at 282 %) the first interval overshoots by up to 4 points (the
    # central optimizer stops at 97.9 % there); from then on, within 1.5 points of the limit.
    loading = np.concatenate([depin.line_loading_percent.to_numpy(), depin.trafo_loading_percent.to_numpy()], axis=1)
    assert loading[0].max() <= 104.0
    assert loading[1:].max() <= 101.5
    assert depin.summary["pv_curtailed_mwh"].sum() > 0  # held by curtailing and storing, not by luck
    assert_cost_within_one_percent(depin, scada)
    # Both residuals of every decision's last round are recorded. The round budget binds only in the first
    # intervals, while the agents pull the feeder back from its uncontrolled start; from then on the stopping
    # rule ends every decision (the rows' tolerances are tolerance_mw + 1e-3 × the row's size: a few kW here).
    residuals = depin.summary[["primal_residual_mw", "dual_residual_mw"]]
    assert residuals.notna().all().all()
    stopped = depin.summary["rounds"] < 200
    assert stopped.iloc[2:].all() and (residuals[stopped].to_numpy() < 0.01).all()
    assert scada.summary["primal_residual_mw"].isna().all()  # a central optimizer has no rounds
    edge = depin.summary["t_edge_step_s"]  # one household's own step, timed alone: recorded every decision
    assert edge.notna().all() and (edge > 0).all() and scada.summary["t_edge_step_s"].isna().all()


@pytest.mark.parametrize(("feeder", "limits"), [
    ("cigre-lv", {"v_min_pu": 0.98}),
    ("simbench:1-LV-rural1--0-sw", {"loading_max_percent": 15.0}),
    (SEMIURB4, {"loading_max_percent": 12.0}),
])
def test_network_aware_depin_holds_tight_limits_through_the_evening_ev_peak(feeder: str, limits: dict) -> None:
    """Every household with an EV, 17:00 to 01:00: without control the chargers start on arrival in the evening
    peak; a price-driven controller would pile them all onto the first off-peak interval (21:00) instead. With a
    tight limit (a weak feeder end, or a cable and transformer the DSO keeps to a share of their rating) no control
    breaks it, and the coordinated policies must spread the charging: DePIN keeps the AC result at the limit as the
    central optimizer does, at a cost within 1 % of its cost, with no energy left unmet."""
    s = make_scenario(feeder=feeder, fleet={"pv_penetration": 1.0, "battery_share": 0.3, "ev_share": 1.0,
                                            "flex_share": 0.3},
                      start="2016-06-06T17:00:00Z", end="2016-06-07T01:00:00Z", horizon="8h", comms={"rounds": 200},
                      network=NETWORK, limits=limits, controllers=[NONE, SCADA_NET, DEPIN])
    rec = run_scenario(s, runs_root=None, inputs=build_inputs(s)).records
    depin, scada, none = rec["depin"], rec["scada"], rec["none"]
    if "v_min_pu" in limits:
        assert none.vm_pu.to_numpy().min() < limits["v_min_pu"] - 0.005
        assert depin.vm_pu.to_numpy().min() >= limits["v_min_pu"] - LINEARIZATION_TOL_PU
        assert depin.vm_pu.to_numpy().min() <= limits["v_min_pu"] + 0.005  # the limit binds
    else:
        def loading(r: object) -> np.ndarray:
            return np.concatenate([r.line_loading_percent.to_numpy(), r.trafo_loading_percent.to_numpy()], axis=1)
        cap = limits["loading_max_percent"]
        assert np.nanmax(loading(none)) > cap + 10.0
        worst_d, worst_s = np.nanmax(loading(depin), axis=1), np.nanmax(loading(scada), axis=1)
        assert np.median(worst_d) >= cap - 1.0  # the limit binds most of the evening
        # At the tariff's step at 21:00 both overshoot by a few points (the base load alone rises): DePIN by no
        # more than the central optimizer, plus a point.
        assert worst_d.max() <= max(cap + 1.0, worst_s.max() + 1.0)
    assert_cost_within_one_percent(depin, scada)
    assert depin.summary["ev_unmet_mwh"].sum() <= scada.summary["ev_unmet_mwh"].sum() + 1e-6


@pytest.mark.parametrize("feeder", ["simbench:1-LV-rural1--0-sw", URBAN6])
def test_messages_go_only_between_neighbours_and_scale_with_the_feeder(feeder: str) -> None:
    """Per round: each participant's uplink and downlink to its bus node, and one message per branch in each of
    the four sweeps — O(N), never all-to-all (13 and 111 participants)."""
    s = make_scenario(feeder=feeder, fleet=FLEET, start="2016-06-06T18:00:00Z", end="2016-06-06T18:30:00Z",
                      horizon="3h", comms={"rounds": 50}, controllers=[DEPIN])
    inputs = build_inputs(s)
    rec = run_scenario(s, runs_root=None, inputs=inputs).records["depin"].summary
    twin = PolicyTwin.create(s.controllers[0], inputs, s)
    n_participants = inputs.assets["participant_id"].nunique()
    branches = twin.agent_network.spec.tree.n_nodes - 1
    assert (rec["messages"] == rec["rounds"] * (2 * n_participants + 4 * branches)).all()
    assert (rec["central_bytes"] == 0).all()


def test_batched_local_steps_equal_agents_solving_alone() -> None:
    """The simulation's one vectorized local step for every participant gives the same run as each agent
    solving its own problem, with 10 % of the mesh messages lost (the same draws for both)."""
    def run(batch: bool):
        s = make_scenario(feeder="cigre-lv", fleet={**FLEET, "pv_penetration": 2.0}, start="2016-06-06T11:00:00Z",
                          end="2016-06-06T12:00:00Z", horizon="3h",
                          comms={"rounds": 60, "mesh": {"latency": "100ms", "loss": 0.1}},
                          controllers=[{**DEPIN, "kwargs": {"batch": batch}}])  # same name: same comms draws
        return run_scenario(s, runs_root=None, inputs=build_inputs(s)).records["depin"]

    a, b = run(True), run(False)
    for table in ("asset_p_mw", "asset_setpoint_mw", "vm_pu"):
        np.testing.assert_allclose(getattr(a, table).to_numpy(), getattr(b, table).to_numpy(), rtol=0, atol=1e-7)
    assert a.summary["rounds"].equals(b.summary["rounds"])
    assert (a.summary["dropped_messages"] > 0).any()


def test_outage_dropout_and_loss_together_keep_the_feeder_inside_its_limits() -> None:
    """Urban6 on a high-PV midday: the control centre is down for the whole window (SCADA loses control), 10 %
    of participants drop out and 10 % of the mesh messages are lost. The DePIN agents keep coordinating on the
    premises; the feeder stays inside the band, and the faults cost little against the same policy run without
    them in the same scenario (the faults name the policies they hit)."""
    fleet = {"pv_penetration": 4.0, "battery_share": 0.5, "ev_share": 0.2, "flex_share": 0.3}
    window = {"start": "2016-06-06T10:00:00Z", "end": "2016-06-06T13:00:00Z"}
    hit = {"policies": ["depin-faults", "scada"]}  # the plain "depin" is the fault-free reference, same run
    faults = [{"kind": "control_centre_outage", **window, **hit},
              {"kind": "participant_dropout", "share": 0.1, **window, **hit},
              {"kind": "message_loss", "loss": 0.1, **window, **hit}]
    scenario = make_scenario(feeder=URBAN6, fleet=fleet, horizon="4h", network=NETWORK, comms={"rounds": 200},
                             **window, faults=faults,
                             controllers=[DEPIN, {**DEPIN, "name": "depin-faults"}, {**SCADA_NET, "mode": "central"}])
    rec = run_scenario(scenario, runs_root=None).records
    ref = rec["depin"]
    assert ref.summary["dropped_messages"].eq(0).all() and not ref.asset_fallback.to_numpy().any()
    depin, scada = rec["depin-faults"], rec["scada"]
    assert not scada.summary["controller_online"].any()
    assert (scada.vm_pu.to_numpy() > 1.05 + LINEARIZATION_TOL_PU).any()  # SCADA lost the band
    assert depin.summary["controller_online"].all()
    assert (depin.summary["dropped_messages"] > 0).all()
    assert depin.asset_fallback.to_numpy().any()  # the dropped-out participants' devices fell back
    assert depin.vm_pu.to_numpy().max() <= 1.05 + LINEARIZATION_TOL_PU
    extra = depin.summary["cost_eur"].sum() - ref.summary["cost_eur"].sum()
    assert abs(extra) <= 0.05 * abs(ref.summary["cost_eur"].sum())


def test_control_centre_outage_costs_scada_control_while_depin_holds_the_peak_limit() -> None:
    """A 38 kW feeder-head limit through an evening peak, the control centre down from 17:00. SCADA's last
    setpoints expire after their 30-minute TTL and its devices fall back: the head exceeds the limit (no control
    peaks at 44 kW). The DePIN agents keep coordinating on the premises and stay under it."""
    limit = 0.038
    s = make_scenario(
        start="2016-06-06T16:00:00Z", end="2016-06-06T19:00:00Z", horizon="6h", comms={"rounds": 100},
        limits={"p_head_max_mw": limit},
        faults=[{"kind": "control_centre_outage", "start": "2016-06-06T17:00:00Z", "end": "2016-06-06T19:00:00Z"}],
        controllers=[NONE, {**SCADA_NET, "mode": "central", "kwargs": {"network": False}}, DEPIN],
    )
    rec = run_scenario(s, runs_root=None, inputs=build_inputs(s)).records
    outage = rec["scada"].summary.index >= pd.Timestamp("2016-06-06T17:00:00Z")
    assert not rec["scada"].summary.loc[outage, "controller_online"].any()
    assert rec["depin"].summary["controller_online"].all()
    assert rec["none"].summary["p_head_mw"].max() > limit
    assert rec["scada"].summary.loc[outage, "p_head_mw"].max() > limit
    assert rec["scada"].summary.loc[~outage, "p_head_mw"].max() <= limit + 1e-3  # while it could, SCADA held it
    assert rec["depin"].summary["p_head_mw"].max() <= limit + 1e-3


def test_hourly_decisions_coordinate_once_an_hour_and_devices_follow_the_agreed_plan() -> None:
    """decision_period = 1 h: the agents exchange messages only at the top of each hour; in between every
    device follows its agent's schedule (no fallback), and the evening costs about what re-planning every
    15 minutes costs (perfect forecast, so the plan made on the hour stays good through it)."""
    window = {"start": "2016-06-06T16:00:00Z", "end": "2016-06-06T20:00:00Z", "horizon": "6h",
              "comms": {"rounds": 100}, "controllers": [DEPIN]}
    every = make_scenario(**window)
    inputs = build_inputs(every)
    hourly = make_scenario(**window, decision_period="1h", setpoint_ttl="1h")
    fine = run_scenario(every, runs_root=None, inputs=inputs).records["depin"].summary
    coarse_rec = run_scenario(hourly, runs_root=None, inputs=inputs).records["depin"]
    coarse = coarse_rec.summary
    on_the_hour = coarse.index.minute == 0
    assert (coarse.loc[on_the_hour, "messages"] > 0).all() and (coarse.loc[~on_the_hour, "messages"] == 0).all()
    assert (coarse.loc[on_the_hour, "rounds"] > 0).all() and coarse.loc[~on_the_hour, "rounds"].eq(0).all()
    assert not coarse_rec.asset_fallback.to_numpy().any()
    assert coarse["cost_eur"].sum() == pytest.approx(fine["cost_eur"].sum(), rel=0.005)


def test_participants_spread_over_a_dask_cluster_give_the_same_run() -> None:
    """``--agent-workers 2``: the participants' local steps run as two resident shares on a Dask cluster of two
    worker processes; urban6's 111 participants give the same tables as in one process (10 % mesh loss)."""
    s = make_scenario(feeder=URBAN6, fleet={**FLEET, "pv_penetration": 3.0}, start="2016-06-06T11:00:00Z",
                      end="2016-06-06T11:45:00Z", horizon="3h", network=NETWORK,
                      comms={"rounds": 60, "mesh": {"latency": "100ms", "loss": 0.1}}, controllers=[DEPIN])
    inputs = build_inputs(s)
    here = run_scenario(s, runs_root=None, inputs=inputs).records["depin"]
    there = run_scenario(s, runs_root=None, inputs=inputs, agent_workers=2).records["depin"]
    for table in ("asset_p_mw", "asset_setpoint_mw", "asset_soc_mwh", "vm_pu"):
        np.testing.assert_allclose(getattr(here, table).to_numpy(), getattr(there, table).to_numpy(), rtol=0, atol=1e-9)
    assert here.summary["rounds"].equals(there.summary["rounds"]) and (here.summary["rounds"] > 1).all()


def test_head_shares_by_power_range_cut_the_rounds() -> None:
    """Urban6 at night (the scale benchmark's fleet): the PV cannot move, the batteries hold the feeder head at
    zero import (a kink of its cost). Plain sharing ADMM hands every asset an equal part of the head's mismatch,
    so the few that can move close it slowly; with each asset's share set by its own power range (the default)
    the rounds fall by more than a third. The messages per round stay 2 per participant and 4 per branch, and
    only a decision's first round carries the shares (T numbers more on four of the passes). That the plan is
    still the central optimum is test_agents_reach_the_central_optimum_and_say_when_they_have."""
    fleet = {"pv_penetration": 1.5, "battery_share": 0.3, "ev_share": 0.3, "flex_share": 0.2}

    def run(share: str):
        s = make_scenario(feeder=URBAN6, fleet=fleet, start="2016-06-06T00:00:00Z", end="2016-06-06T02:00:00Z",
                          horizon="6h", comms={"rounds": 200},
                          controllers=[{**DEPIN, "kwargs": {"head_share": share}}])
        inputs = build_inputs(s)
        return s, inputs, run_scenario(s, runs_root=None, inputs=inputs).records["depin"].summary

    s, inputs, ranged = run("range")
    _, _, uniform = run("uniform")
    assert ranged["converged"].all() and uniform["converged"].all()
    assert ranged["rounds"].sum() <= 0.65 * uniform["rounds"].sum(), (ranged["rounds"].tolist(),
                                                                      uniform["rounds"].tolist())
    twin = PolicyTwin.create(s.controllers[0], inputs, s)
    n_participants = inputs.assets["participant_id"].nunique()
    branches = twin.agent_network.spec.tree.n_nodes - 1
    assert (ranged["messages"] == ranged["rounds"] * (2 * n_participants + 4 * branches)).all()
    T = s.horizon_steps
    per_round = uniform["bytes"] / uniform["rounds"]  # the same passes, without the shares
    extra = ranged["bytes"] - per_round * ranged["rounds"]
    np.testing.assert_allclose(extra, 8 * T * (2 * n_participants + 2 * branches), rtol=1e-9)
