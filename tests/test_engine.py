"""The engine end to end on a small SimBench LV day: determinism, records, KPIs, expiry, faults, modes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import make_scenario
from twin.commands import CommandChannel, OperatorCommand
from twin.engine import iterate_policies
from twin.inputs import RunInputs
from twin.records.recorder import TIMING_COLUMNS
from twin.run import run_scenario
from twin.records.runstore import RunStore
from twin.scenario import Scenario

HOUR = pd.Timedelta("1h")


def test_same_scenario_and_seed_give_identical_results(rural_day: tuple[Scenario, RunInputs]) -> None:
    scenario, inputs = rural_day
    short = make_scenario(end="2016-06-06T06:00:00Z")
    a = run_scenario(short, runs_root=None, inputs=inputs)
    b = run_scenario(short, runs_root=None, inputs=inputs)
    for policy in a.records:
        for table in ("summary", "vm_pu", "asset_p_mw", "asset_soc_mwh"):
            left = getattr(a.records[policy], table).drop(columns=list(TIMING_COLUMNS), errors="ignore")
            right = getattr(b.records[policy], table).drop(columns=list(TIMING_COLUMNS), errors="ignore")
            pd.testing.assert_frame_equal(left, right)


def test_run_folder_and_kpis_agree_with_the_records(tmp_path: Path, rural_day: tuple[Scenario, RunInputs]) -> None:
    scenario, inputs = rural_day
    result = run_scenario(scenario, out=tmp_path / "run", inputs=inputs, flush_every=40)
    store = RunStore(tmp_path / "run")
    meta = store.meta()
    assert meta["seed"] == 7 and meta["policies"] == ["none", "shaver"]
    assert meta["versions"]["pandapower"] != "not installed"
    status = store.status()
    assert {k: status[k] for k in ("done", "total", "state")} == {"done": 96, "total": 96, "state": "finished"}
    assert status["pid"] == os.getpid() and "heartbeat_at" in status  # the writer's liveness (twin.records.runstore)
    summary = store.read_table("none", "summary")
    assert len(summary) == 96  # three parts of 40, 40 and 16 intervals read back as one table
    assert len(list((tmp_path / "run" / "none" / "summary").glob("part-*.parquet"))) == 3
    # KPIs by hand from the per-interval feeder-head power: energy = sum(max(P, 0)) * 0.25 h.
    p = summary["p_head_mw"]
    k = result.kpis["none"]
    assert k.energy_imported_mwh == pytest.approx(p.clip(lower=0).sum() * 0.25)
    assert k.peak_import_mw == pytest.approx(p.max())
    vm = store.read_table("none", "vm_pu").to_numpy()
    assert k.voltage_violation_bus_intervals == int(((vm < 0.95) | (vm > 1.05)).sum())
    price = summary["price_eur_per_mwh"]
    cost = (price * p.clip(lower=0) * 0.25 - 60.0 * (-p).clip(lower=0) * 0.25).sum()
    assert k.energy_cost_eur == pytest.approx(cost)
    assert store.kpis().loc["energy_imported_mwh", "none"] == pytest.approx(k.energy_imported_mwh)


def test_no_control_runs_devices_on_their_autonomous_default(rural_day: tuple[Scenario, RunInputs]) -> None:
    scenario, inputs = rural_day
    short = make_scenario(end="2016-06-06T04:00:00Z")
    rec = run_scenario(short, runs_root=None, inputs=inputs).records["none"]
    assert rec.asset_fallback.to_numpy().all()
    bats = inputs.assets.index[inputs.assets.kind.astype(str) == "battery"].astype(str)
    assert (rec.asset_p_mw[bats] == 0.0).all().all()  # idle batteries


def test_setpoints_expire_after_their_ttl_then_devices_fall_back(rural_day: tuple[Scenario, RunInputs]) -> None:
    _, inputs = rural_day
    # Charge at 1 kW only during hour 0; with a 30-minute TTL the last setpoint (00:45) is held until 01:15.
    s = make_scenario(end="2016-06-06T03:00:00Z", setpoint_ttl="30min", controllers=[
        {"name": "h0", "target": "engine_helpers:ChargeAllBatteries", "kwargs": {"p_mw": 0.001, "at_hours": [0]}}])
    rec = run_scenario(s, runs_root=None, inputs=inputs).records["h0"]
    bats = inputs.assets.index[inputs.assets.kind.astype(str) == "battery"].astype(str)
    held = rec.asset_fallback[bats].any(axis=1)
    t = rec.summary.index
    assert not held[t < t[0] + pd.Timedelta("75min")].any()  # 00:00 .. 01:00 under a valid setpoint
    assert held[t >= t[0] + pd.Timedelta("75min")].all()  # from 01:15 on: autonomous
    np.testing.assert_allclose(rec.asset_p_mw.loc[t[:5], bats].to_numpy(), 0.001)


def test_between_decisions_devices_follow_the_schedule_they_hold(rural_day: tuple[Scenario, RunInputs]) -> None:
    """decision_period = 1 h: the controller is asked at 00:00, 01:00 and 02:00 only; in between every battery
    runs the schedule it received (1, 2, 3, 4 kW through each hour), none falls back."""
    from engine_helpers import RampSchedule

    _, inputs = rural_day
    RampSchedule.calls.clear()
    s = make_scenario(end="2016-06-06T03:00:00Z", decision_period="1h", setpoint_ttl="1h", controllers=[
        {"name": "ramp", "target": "engine_helpers:RampSchedule", "kwargs": {"p_mw": 0.001}}])
    rec = run_scenario(s, runs_root=None, inputs=inputs).records["ramp"]
    assert RampSchedule.calls == [pd.Timestamp(f"2016-06-06T0{h}:00Z") for h in range(3)]
    bats = inputs.assets.index[inputs.assets.kind.astype(str) == "battery"].astype(str)
    setpoints = rec.asset_setpoint_mw[bats].to_numpy()
    np.testing.assert_allclose(setpoints, np.tile([[0.001], [0.002], [0.003], [0.004]], (3, len(bats))))
    assert not rec.asset_fallback[bats].to_numpy().any()
    assert rec.summary["controller_online"].all()


def test_each_record_carries_the_schedules_that_reached_devices(rural_day: tuple[Scenario, RunInputs]) -> None:
    """What the live twin sends on (an OCPP TxProfile's periods): the plan each device now holds, from the
    interval it was decided in; nothing between decisions."""
    _, inputs = rural_day
    s = make_scenario(end="2016-06-06T01:30:00Z", decision_period="1h", setpoint_ttl="1h", controllers=[
        {"name": "two", "target": "engine_helpers:RampSchedule", "kwargs": {"p_mw": 0.001, "periods": 2}}])
    steps = iterate_policies(s, inputs)
    records = [next(steps)[0] for _ in range(5)]
    steps.close()
    bats = np.flatnonzero(inputs.assets.kind.astype(str).to_numpy() == "battery")
    for i in (0, 4):  # 00:00 and 01:00 decide: now 1 kW, 00:15 2 kW, then that held until the TTL (4 periods)
        rows, plans = records[i].held_schedule
        assert list(records[i].outcome.ids[rows]) == list(inputs.assets.index[bats])
        np.testing.assert_allclose(plans, np.tile([0.001, 0.002, 0.002, 0.002], (len(bats), 1)))
    assert all(r.held_schedule is None for r in records[1:4])


def test_a_schedule_that_ends_early_is_held_and_one_off_the_step_grid_is_refused(
        rural_day: tuple[Scenario, RunInputs]) -> None:
    _, inputs = rural_day
    short = make_scenario(end="2016-06-06T02:00:00Z", decision_period="1h", setpoint_ttl="1h", controllers=[
        {"name": "two", "target": "engine_helpers:RampSchedule", "kwargs": {"p_mw": 0.001, "periods": 2}}])
    rec = run_scenario(short, runs_root=None, inputs=inputs).records["two"]
    bats = inputs.assets.index[inputs.assets.kind.astype(str) == "battery"].astype(str)
    # now 1 kW, 00:15 2 kW, then nothing scheduled: the device holds its last value until the next decision
    np.testing.assert_allclose(rec.asset_setpoint_mw[bats].iloc[:4, 0].to_numpy(), [0.001, 0.002, 0.002, 0.002])
    off = make_scenario(end="2016-06-06T01:00:00Z", controllers=[
        {"name": "off", "target": "engine_helpers:RampSchedule", "kwargs": {"p_mw": 0.001, "off_grid": True}}])
    with pytest.raises(ValueError, match=r"controller 'off': schedule_mw column .*00:22:00.* not a period start"):
        run_scenario(off, runs_root=None, inputs=inputs)


def test_a_diverging_power_flow_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.csv"
    fleet.write_text(
        "asset_id,kind,bus,participant_id,p_max_mw,e_max_mwh,eta_charge,eta_discharge,soc_min,soc_max,soc_init,"
        "s_max_mva,v2g,flex_window\n"
        "bat-big,battery,12,p-x,400,1000,1,1,0,1,0.5,400,False,0h\n",
        encoding="utf-8",
    )
    s = make_scenario(base_dir=tmp_path, end="2016-06-06T03:00:00Z", feeder="cigre-lv", fleet={"csv": "fleet.csv"},
                      controllers=[{"name": "big", "target": "engine_helpers:ChargeAllBatteries",
                                    "kwargs": {"p_mw": 400.0, "at_hours": [1]}}])
    rec = run_scenario(s, runs_root=None).records["big"]
    conv = rec.summary["converged"]
    assert len(conv) == 12
    # 400 MW on an LV feeder cannot be solved: asked during hour 1, and the 01:45 setpoint is held (TTL 30 min)
    # through the 02:00 interval.
    assert not conv.iloc[4:9].any()
    assert conv.iloc[:4].all() and conv.iloc[9:].all()  # before and after, the run carries on
    assert np.isnan(rec.summary["p_head_mw"].iloc[4:9]).all()


def test_central_policy_loses_control_during_a_control_centre_outage(rural_day: tuple[Scenario, RunInputs]) -> None:
    _, inputs = rural_day
    s = make_scenario(end="2016-06-06T06:00:00Z", setpoint_ttl="30min",
                      faults=[{"kind": "control_centre_outage", "start": "2016-06-06T02:00:00Z",
                               "end": "2016-06-06T04:00:00Z"}],
                      controllers=[{"name": "scada", "mode": "central", "target": "engine_helpers:ChargeAllBatteries",
                                    "kwargs": {"p_mw": 0.0005}}])
    rec = run_scenario(s, runs_root=None, inputs=inputs).records["scada"]
    online = rec.summary["controller_online"]
    t = online.index
    outage = (t >= pd.Timestamp("2016-06-06T02:00Z")) & (t < pd.Timestamp("2016-06-06T04:00Z"))
    assert not online[outage].any() and online[~outage].all()
    bats = inputs.assets.index[inputs.assets.kind.astype(str) == "battery"].astype(str)
    fallback = rec.asset_fallback[bats].all(axis=1)
    # Setpoints sent at 01:45 live until 02:15; from then until the centre is back every battery is on its own.
    assert fallback[(t >= pd.Timestamp("2016-06-06T02:15Z")) & (t < pd.Timestamp("2016-06-06T04:00Z"))].all()
    assert not fallback[t < pd.Timestamp("2016-06-06T02:00Z")].any()
    # Telemetry is polled every interval while the centre is up: every participant reports every time.
    assert (rec.summary.loc[~outage, "central_bytes"] > 0).all()


def test_agents_talk_over_the_mesh_and_no_participant_data_reaches_a_centre(rural_day: tuple[Scenario, RunInputs]) -> None:
    _, inputs = rural_day
    s = make_scenario(end="2016-06-06T01:00:00Z", comms={"rounds": 3},
                      controllers=[{"name": "mesh", "mode": "agents", "target": "engine_helpers:GossipAgent"}])
    rec = run_scenario(s, runs_root=None, inputs=inputs).records["mesh"]
    assert (rec.summary["central_bytes"] == 0).all()
    assert (rec.summary["messages"] > 0).all()
    assert (rec.summary["rounds"] == 3).all()


def test_operator_command_reaches_every_policy_through_the_channel(tmp_path: Path,
                                                                   rural_day: tuple[Scenario, RunInputs]) -> None:
    _, inputs = rural_day
    s = make_scenario(end="2016-06-06T02:00:00Z", controllers=[
        {"name": "scada", "mode": "central", "target": "controllers.baseline:PeakShaver"}])
    channel = CommandChannel(tmp_path)
    channel.submit(OperatorCommand.from_dict({"kind": "control_centre_outage", "duration": "30min", "operator": "op"}))
    (channel.pending / "zz-bad.json").write_text("{not json", encoding="utf-8")
    steps = iterate_policies(s, inputs, run_dir=tmp_path)
    first = next(steps)[0]
    assert not first.controller_online
    history = channel.history()
    assert list(history["verdict"]) == ["applied", "rejected"]
    assert history["applied_at"].iloc[0] == "2016-06-06T00:00:00+00:00"
    assert "zz-bad.json" in set(history["file"])  # the malformed command is kept with its reason
    online = [next(steps)[0].controller_online for _ in range(3)]
    assert online == [False, True, True]


def test_settlement_runs_every_interval_into_a_verifiable_ledger_per_policy(
    tmp_path: Path, rural_day: tuple[Scenario, RunInputs]
) -> None:
    from typer.testing import CliRunner

    from twin.cli import app
    from twin.settlement import Ledger

    _, inputs = rural_day
    # p-0 commits 6 kW at 4.00 per kW-month: one June day (1/30 of the month) is worth 6 * 4 / 30 = 0.80.
    settlement = {"contracts": [{"participant": "p-0", "rules": [
        {"kind": "capacity_payment", "name": "capacity", "committed_kw": "6", "price_per_kw_month": "4.00"}]}]}
    s = make_scenario(settlement=settlement)
    result = run_scenario(s, out=tmp_path / "run", inputs=inputs)
    for policy in ("none", "shaver"):
        assert result.kpis[policy].operator_cost_eur == pytest.approx(0.80, abs=1e-9)
        assert result.kpis[policy].participant_earnings_eur == pytest.approx(0.80, abs=1e-9)
        ledger = Ledger.open(tmp_path / "run" / policy / "ledger.sqlite", read_only=True)
        try:
            balances = ledger.balances()
        finally:
            ledger.close()
        assert str(balances["participant:p-0"]) == "0.800000"
        assert sum(balances.values()) == 0
        verify = CliRunner().invoke(app, ["ledger", "verify", str(tmp_path / "run" / policy)])
        assert verify.exit_code == 0, verify.output


def test_false_telemetry_is_flagged_and_not_paid(tmp_path: Path) -> None:
    """Physics before payment: a participant whose battery telemetry claims 4x its real 5 kW discharge
    during a DR event is caught by state estimation and earns no performance payment; honest ones are paid.

    CIGRE LV with a battery at every household; the event lasts 30 minutes, while the batteries can still
    deliver (5 kWh usable at 5 kW).
    """
    from twin.inputs import build_inputs
    from twin.settlement import Ledger

    event = {"start": "2016-06-06T17:00:00Z", "end": "2016-06-06T17:30:00Z"}
    rules = [{"kind": "performance_payment", "name": "perf", "baseline": "meter_before_meter_after",
              "price_per_kwh": "0.50"}]
    base = make_scenario(feeder="cigre-lv", start="2016-06-06T16:00:00Z", end="2016-06-06T18:00:00Z",
                         fleet={"pv_penetration": 0.0, "battery_share": 1.0, "ev_share": 0.0, "flex_share": 0.0})
    inputs = build_inputs(base)
    owners = sorted(inputs.assets["participant_id"].astype(str).unique())
    liar, honest = owners[0], owners[1:]
    s = make_scenario(
        feeder="cigre-lv", start="2016-06-06T16:00:00Z", end="2016-06-06T18:00:00Z",
        fleet={"pv_penetration": 0.0, "battery_share": 1.0, "ev_share": 0.0, "flex_share": 0.0},
        settlement={"events": [event], "contracts": [{"participant": p, "rules": rules} for p in owners]},
        faults=[{"kind": "false_telemetry", "participants": [liar], "scale": 4.0, **event}],
        controllers=[{"name": "dr", "target": "engine_helpers:ChargeAllBatteries",
                      "kwargs": {"p_mw": -0.005, "at_hours": [17]}}],
    )
    result = run_scenario(s, out=tmp_path / "run", inputs=inputs)
    summary = result.records["dr"].summary
    in_event = (summary.index >= pd.Timestamp(event["start"])) & (summary.index < pd.Timestamp(event["end"]))
    assert (summary.loc[in_event, "n_unverified"] >= 1).all()
    assert (summary.loc[~in_event, "n_unverified"] == 0).all()
    ledger = Ledger.open(tmp_path / "run" / "dr" / "ledger.sqlite", read_only=True)
    try:
        earned = {p: ledger.statement(p).total for p in owners}
    finally:
        ledger.close()
    assert earned[liar] == 0
    # An honest battery delivered 5 kW for 0.5 h against its pre-event meter: 2.5 kWh, 1.25 EUR at 0.50
    # (plus or minus what the household's own load did: meter-before/meter-after credits any drop).
    # A neighbour the estimator cannot tell apart from the liar is withheld too (reported as ambiguous).
    paid = [p for p in honest if earned[p] > 0]
    assert len(paid) >= len(honest) - 2
    assert min(float(earned[p]) for p in paid) > 0.5
    assert sorted(float(earned[p]) for p in paid)[len(paid) // 2] == pytest.approx(1.25, abs=0.2)


def test_controllers_get_the_network_linearization_refreshed_on_schedule(rural_day: tuple[Scenario, RunInputs]) -> None:
    from twin.engine import PolicyTwin

    _, inputs = rural_day
    s = make_scenario(end="2016-06-06T02:00:00Z", network={"sensitivities": True, "refresh": "1h"})
    twin = PolicyTwin.create(s.controllers[0], inputs, s)
    t0 = s.times[0]
    # Before the first interval the twin solves the feeder once (devices on their defaults) to linearize there.
    first = twin.observe_for_test(t0).sensitivities
    assert first is not None
    bat_bus = int(inputs.assets.loc[inputs.assets.kind.astype(str) == "battery", "bus"].iloc[0])
    assert bat_bus in first.dvm_dp_pu_per_mw.index  # DER buses are monitored
    # Consuming more at a bus lowers its own voltage.
    assert first.dvm_dp_pu_per_mw.loc[bat_bus, bat_bus] < 0
    for k in range(4):
        twin.step(t0 + k * pd.Timedelta("15min"))
    assert twin.observe_for_test(t0 + pd.Timedelta("45min")).sensitivities is first  # not yet an hour old
    assert twin.observe_for_test(t0 + pd.Timedelta("1h")).sensitivities is not first  # an hour later


@pytest.mark.parametrize("kind", ["perfect", "persistence", "noisy"])
def test_forecast_models(kind: str, rural_day: tuple[Scenario, RunInputs]) -> None:
    from twin.engine import PolicyTwin

    _, inputs = rural_day
    s = make_scenario(forecast={"kind": kind, "noise": 0.2})
    twin = PolicyTwin.create(s.controllers[0], inputs, s)
    t = s.times[40]
    f = twin.observe_for_test(t).forecast
    truth = inputs.base_load_bus_mw.iloc[40:40 + 96]
    assert f.base_load_mw.index.equals(truth.index) and len(f.base_load_mw) == 96
    if kind == "perfect":
        pd.testing.assert_frame_equal(f.base_load_mw, truth)
    elif kind == "persistence":
        # Every row is the interval measured last (09:45 for the 10:00 decision).
        np.testing.assert_allclose(f.base_load_mw.to_numpy(), np.tile(inputs.base_load_bus_mw.iloc[39].to_numpy(), (96, 1)))
    else:
        ratio = (f.base_load_mw / truth).to_numpy()[1:]
        ratio = ratio[np.isfinite(ratio)]
        assert ratio.std() == pytest.approx(0.2, rel=0.1)  # the configured relative error
        np.testing.assert_allclose(f.base_load_mw.iloc[0], truth.iloc[0])  # the current interval is measured
        again = PolicyTwin.create(s.controllers[1], inputs, s).observe_for_test(t).forecast
        pd.testing.assert_frame_equal(f.pv_avail_mw, again.pv_avail_mw)  # same draws for every policy


def test_operator_declared_dr_event_is_settled_like_a_scheduled_one(tmp_path: Path) -> None:
    """The operator calls a 30-minute DR event at 17:00 through the command channel; batteries discharging
    5 kW then earn performance payments (meter before/after), nothing is paid before the call."""
    from twin.inputs import build_inputs

    fleet = {"pv_penetration": 0.0, "battery_share": 1.0, "ev_share": 0.0, "flex_share": 0.0}
    base = make_scenario(feeder="cigre-lv", start="2016-06-06T16:45:00Z", end="2016-06-06T17:30:00Z", fleet=fleet)
    inputs = build_inputs(base)
    owners = sorted(inputs.assets["participant_id"].astype(str).unique())
    rules = [{"kind": "performance_payment", "name": "perf", "baseline": "meter_before_meter_after",
              "price_per_kwh": "0.50"}]
    s = make_scenario(feeder="cigre-lv", start="2016-06-06T16:45:00Z", end="2016-06-06T17:30:00Z", fleet=fleet,
                      settlement={"contracts": [{"participant": p, "rules": rules} for p in owners]},
                      controllers=[{"name": "dr", "target": "engine_helpers:ChargeAllBatteries",
                                    "kwargs": {"p_mw": -0.005, "at_hours": [17]}}])
    steps = iterate_policies(s, inputs, run_dir=tmp_path)
    before = next(steps)[0]
    CommandChannel(tmp_path).submit(OperatorCommand.from_dict({"kind": "dr_event", "duration": "30min",
                                                                "operator": "op"}))
    during = [next(steps)[0], next(steps)[0]]
    steps.close()
    assert before.settlement_eur["participants"] == 0
    assert all(r.settlement_eur["participants"] > 0 for r in during)
    assert CommandChannel(tmp_path).history()["verdict"].tolist() == ["applied"]


def test_backhaul_cut_leaves_scada_blind_and_its_devices_on_their_own(rural_day: tuple[Scenario, RunInputs]) -> None:
    """A backhaul cut for every participant, 01:00-02:00: no telemetry reaches the control centre (its view
    goes stale), its setpoints reach nobody, and the batteries fall back once the 30-minute TTL runs out."""
    _, inputs = rural_day
    s = make_scenario(end="2016-06-06T03:00:00Z",
                      faults=[{"kind": "backhaul_cut", "start": "2016-06-06T01:00:00Z", "end": "2016-06-06T02:00:00Z"}],
                      controllers=[{"name": "scada", "mode": "central", "target": "engine_helpers:ChargeAllBatteries",
                                    "kwargs": {"p_mw": 0.0005}}])
    rec = run_scenario(s, runs_root=None, inputs=inputs).records["scada"]
    t = rec.summary.index
    cut = (t >= pd.Timestamp("2016-06-06T01:00Z")) & (t < pd.Timestamp("2016-06-06T02:00Z"))
    assert (rec.summary.loc[cut, "central_bytes"] == 0).all()  # nothing reached the centre
    assert (rec.summary.loc[~cut, "central_bytes"] > 0).all()
    assert rec.summary["controller_online"].all()  # the centre itself is up, just cut off
    bats = inputs.assets.index[inputs.assets.kind.astype(str) == "battery"].astype(str)
    on_own = rec.asset_fallback[bats].all(axis=1)
    assert on_own[(t >= pd.Timestamp("2016-06-06T01:15Z")) & cut].all()
    assert not on_own[~cut].any()


def test_report_shows_coordination_per_interval(tmp_path: Path, rural_day: tuple[Scenario, RunInputs]) -> None:
    from twin.reporting.report import write_report

    _, inputs = rural_day
    s = make_scenario(end="2016-06-06T01:00:00Z", comms={"rounds": 3}, controllers=[
        {"name": "ideal", "target": "controllers.baseline:PeakShaver"},
        {"name": "scada", "mode": "central", "target": "controllers.baseline:PeakShaver"},
        {"name": "mesh", "mode": "agents", "target": "engine_helpers:GossipAgent"}])
    result = run_scenario(s, out=tmp_path / "run", inputs=inputs)
    page = write_report(tmp_path / "run").read_text(encoding="utf-8")
    assert "<h2>Coordination</h2>" in page and "gap to scada" in page
    mesh = result.records["mesh"].summary
    assert f"{mesh['messages'].mean():,.0f}" in page  # messages per interval of the agents
    assert "<h2>Compute time by stage</h2>" in page and "decisions every 15min" in page
    assert f"<td>{mesh['t_optimize_s'].mean() * 1e3:,.2f}</td>" in page  # the agents' own compute, ms / interval
    for rec in result.records.values():  # decide = telemetry + optimize + coordinate, whatever the mode
        s = rec.summary
        parts = s["t_telemetry_s"] + s["t_optimize_s"] + s["t_coordinate_s"]
        assert (parts > 0).all() and (parts <= s["compute_s"] + 1e-9).all()
    assert 'src="http' not in page and "<link" not in page  # plotly.js inlined: the page opens offline


def test_the_lead_policy_steps_first_and_is_handed_over_before_the_others_step(
        rural_day: tuple[Scenario, RunInputs], monkeypatch: pytest.MonkeyPatch) -> None:
    """A live twin sends the controlling policy's setpoints while its shadows still decide: the lead is
    stepped first and given to ``on_lead`` at once; the records (and every result) are those of the
    usual order."""
    from twin.engine.policy_twin import PolicyTwin

    scenario, inputs = rural_day
    scenario = scenario.model_copy(update={"end": scenario.start + 4 * scenario.step})
    usual = [[(r.policy, r.outcome.p.tolist(), r.power_flow.vm.tolist()) for r in records]
             for records in iterate_policies(scenario, inputs)]
    order: list[str] = []
    step = PolicyTwin.step

    def logged(self: PolicyTwin, time: pd.Timestamp) -> object:
        order.append(self.name)
        return step(self, time)

    monkeypatch.setattr(PolicyTwin, "step", logged)
    led = [[(r.policy, r.outcome.p.tolist(), r.power_flow.vm.tolist()) for r in records]
           for records in iterate_policies(scenario, inputs, lead="shaver",
                                           on_lead=lambda record: order.append(f"handed {record.policy}"))]
    assert order == ["shaver", "handed shaver", "none"] * 4
    assert led == usual and [p for p, _, _ in led[0]] == ["none", "shaver"]
    with pytest.raises(ValueError, match="lead='scada': not a policy of the scenario"):
        next(iterate_policies(scenario, inputs, lead="scada"))
