"""DePIN edge agents: sharing ADMM over the mesh reaches the central optimum; faults do not break them."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import make_scenario
from controllers.dispatch_model import DispatchModel, DispatchWeights, Proximal
from twin.engine import PolicyTwin
from twin.inputs import build_inputs
from twin.run import run_scenario

FLEET = {"pv_penetration": 1.0, "battery_share": 0.5, "ev_share": 0.3, "flex_share": 0.3}
DEPIN = {"name": "depin", "mode": "agents", "target": "controllers.depin:AdmmAgent"}
SCADA = {"name": "scada", "mode": "central", "target": "controllers.optimizing:OptimizingController",
         "kwargs": {"network": False}}


def plan_cost(model: DispatchModel, inputs: object, p_mw: pd.DataFrame | None) -> float:
    """The central objective of a plan: the optimum (p_mw None), or the cost of ``p_mw`` found by pinning
    every asset to it with a stiff proximal term (rho 1e7 EUR/MW²: a 1 W deviation costs 5e-6 EUR)."""
    if p_mw is None:
        return model.solve(inputs).objective_eur
    order = model.asset_order
    z = p_mw.reindex(order).set_axis(range(model.horizon), axis=1)
    sol = model.solve(inputs, proximal=Proximal(rho=1e7, z_mw=z, u_mw=z * 0.0))
    assert sol.status == "optimal", sol.reason
    return sol.objective_eur


@pytest.mark.parametrize(("feeder", "at"), [("cigre-lv", "2016-06-06T18:00:00Z"),
                                            ("simbench:1-LV-rural1--0-sw", "2016-06-06T18:00:00Z")])
def test_admm_over_the_mesh_reaches_the_central_optimum(feeder: str, at: str) -> None:
    """With no faults and enough rounds the agents' joint plan costs within 0.5 % of the central optimum,
    evaluated by the same central model on the same observation (an evening peak, 6-hour horizon)."""
    s = make_scenario(feeder=feeder, fleet=FLEET, start=at, end=(pd.Timestamp(at) + pd.Timedelta("15min")).isoformat(),
                      horizon="6h", comms={"rounds": 40}, controllers=[DEPIN])
    inputs = build_inputs(s)
    twin = PolicyTwin.create(s.controllers[0], inputs, s)
    t = s.times[0]
    observation = twin.observe_for_test(t)
    _, _, rounds = twin._decide_agents(t)
    assert rounds == 40
    plans = [a.plan_mw for a in twin.agents.values() if a.plan_mw is not None]
    admm = pd.concat(plans)
    model = DispatchModel.build(inputs.assets, step=s.step, horizon=s.horizon_steps,
                                weights=DispatchWeights(), head_limit=False, feed_in=True, proximal=True)
    central_inputs = model.inputs_from_observation(observation)
    optimum = plan_cost(model, central_inputs, None)
    reached = plan_cost(model, central_inputs, admm)
    gap = (reached - optimum) / abs(optimum)
    assert -1e-6 <= gap <= 0.005, (optimum, reached)
    # Only aggregate trajectories crossed the mesh: no participant's raw data reached a central point.
    assert twin.comms.traffic.totals()["central_bytes"] == 0
    assert twin.comms.traffic.totals()["messages"] > 40


@pytest.mark.parametrize(("share", "n_dropped"), [(0.1, 2), (0.2, 3)])  # of 15 participants, rounded
def test_dropped_participants_act_on_their_own_and_nothing_crashes(share: float, n_dropped: int) -> None:
    """10 % or 20 % of participants drop out mid-run with 10 % mesh loss on top: their devices fall back to
    their autonomous default; the others keep coordinating; the run completes."""
    s = make_scenario(
        feeder="cigre-lv", fleet=FLEET, start="2016-06-06T17:00:00Z", end="2016-06-06T18:30:00Z", horizon="3h",
        comms={"rounds": 6},
        faults=[{"kind": "participant_dropout", "share": share, "start": "2016-06-06T17:30:00Z",
                 "end": "2016-06-06T18:30:00Z"},
                {"kind": "message_loss", "loss": 0.1, "start": "2016-06-06T17:00:00Z", "end": "2016-06-06T18:30:00Z"}],
        controllers=[DEPIN],
    )
    inputs = build_inputs(s)
    result = run_scenario(s, runs_root=None, inputs=inputs)
    rec = result.records["depin"]
    twin = PolicyTwin.create(s.controllers[0], inputs, s)
    dropped = sorted({p for f in twin.comms.faults if f.kind == "participant_dropout" for p in f.participants})
    assert len(dropped) == n_dropped
    assets_of_dropped = inputs.assets.index[inputs.assets["participant_id"].isin(dropped)].astype(str)
    late = rec.asset_fallback.index >= pd.Timestamp("2016-06-06T18:00:00Z")  # setpoints held 30 min expire
    assert rec.asset_fallback.loc[late, assets_of_dropped].all().all()
    others = rec.asset_fallback.columns.difference(assets_of_dropped)
    assert not rec.asset_fallback.loc[:, others].all().all()  # the rest are still dispatched
    assert rec.summary["converged"].all()
    assert (rec.summary["dropped_messages"] > 0).any()


def test_control_centre_outage_costs_scada_control_while_depin_holds_the_peak_limit() -> None:
    """A 50 kW feeder-head limit through an evening peak, the control centre down from 17:00. SCADA's
    last setpoints expire after their 30-minute TTL and its devices fall back: the head exceeds the limit
    (no control peaks at 52 kW). The DePIN agents keep coordinating on the premises and stay under it."""
    limit = 0.05
    s = make_scenario(
        start="2016-06-06T16:00:00Z", end="2016-06-06T19:00:00Z", horizon="6h", comms={"rounds": 10},
        limits={"p_head_max_mw": limit},
        faults=[{"kind": "control_centre_outage", "start": "2016-06-06T17:00:00Z", "end": "2016-06-06T19:00:00Z"}],
        controllers=[{"name": "none", "target": "controllers.baseline:NoControl"}, SCADA, DEPIN],
    )
    rec = run_scenario(s, runs_root=None, inputs=build_inputs(s)).records
    outage = rec["scada"].summary.index >= pd.Timestamp("2016-06-06T17:00:00Z")
    assert not rec["scada"].summary.loc[outage, "controller_online"].any()
    assert rec["depin"].summary["controller_online"].all()
    assert rec["none"].summary["p_head_mw"].max() > limit
    assert rec["scada"].summary.loc[outage, "p_head_mw"].max() > limit
    assert rec["scada"].summary.loc[~outage, "p_head_mw"].max() <= limit + 1e-3  # while it could, SCADA held it
    assert rec["depin"].summary["p_head_mw"].max() <= limit + 1e-3
    bats = rec["scada"].asset_fallback.columns[rec["scada"].asset_fallback.columns.str.startswith("bat-")]
    late = rec["scada"].summary.index >= pd.Timestamp("2016-06-06T17:15:00Z")
    assert rec["scada"].asset_fallback.loc[late, bats].all().all()


def test_hourly_decisions_coordinate_once_an_hour_and_devices_follow_the_agreed_plan() -> None:
    """decision_period = 1 h: the agents exchange messages only at the top of each hour; in between every
    device follows its agent's schedule (no fallback), and the evening costs about what re-planning every
    15 minutes costs (perfect forecast, so the plan made on the hour stays good through it)."""
    window = {"start": "2016-06-06T16:00:00Z", "end": "2016-06-06T20:00:00Z", "horizon": "6h",
              "comms": {"rounds": 10}, "controllers": [DEPIN]}
    every = make_scenario(**window)
    inputs = build_inputs(every)
    hourly = make_scenario(**window, decision_period="1h", setpoint_ttl="1h")
    fine = run_scenario(every, runs_root=None, inputs=inputs).records["depin"].summary
    coarse_rec = run_scenario(hourly, runs_root=None, inputs=inputs).records["depin"]
    coarse = coarse_rec.summary
    on_the_hour = coarse.index.minute == 0
    assert (coarse.loc[on_the_hour, "messages"] > 0).all() and (coarse.loc[~on_the_hour, "messages"] == 0).all()
    assert coarse.loc[on_the_hour, "rounds"].eq(10).all() and coarse.loc[~on_the_hour, "rounds"].eq(0).all()
    assert not coarse_rec.asset_fallback.to_numpy().any()
    assert coarse["cost_eur"].sum() == pytest.approx(fine["cost_eur"].sum(), rel=0.005)
