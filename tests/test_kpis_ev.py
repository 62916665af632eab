"""Honest EV KPIs: energy still owed to cars plugged in at the end of a run counts as unmet, so deferring
charging past the end never looks free; and EV sessions are the same for a day whatever the run's length."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twin.devices.physics import FleetPhysics
from twin.inputs import build_inputs
from twin.records.kpis import compute_kpis, ev_energy_owed_at_end_mwh
from twin.records.recorder import SUMMARY_COLUMNS, PolicyRecords
from twin.run import run_scenario

from conftest import make_scenario

STEP = pd.Timedelta("15min")


def ev_fleet() -> pd.DataFrame:
    row = dict(kind="ev_charger", bus=1, participant_id="p-1", p_max_mw=0.011, e_max_mwh=0.05, eta_charge=0.9,
               eta_discharge=0.9, soc_min=0.0, soc_max=1.0, soc_init=0.0, s_max_mva=0.011, v2g=True,
               flex_window=pd.Timedelta(0))
    return pd.DataFrame.from_dict({"ev-1": row}, orient="index").rename_axis("asset_id")


def sessions(*rows: tuple[str, str, float]) -> pd.DataFrame:
    return pd.DataFrame({"asset_id": ["ev-1"] * len(rows),
                         "arrival": pd.to_datetime([r[0] for r in rows], utc=True),
                         "departure": pd.to_datetime([r[1] for r in rows], utc=True),
                         "energy_mwh": [r[2] for r in rows]})


def records(index: pd.DatetimeIndex, ev_p_mw: list[float], *, departed_unmet: dict[str, float]) -> PolicyRecords:
    summary = pd.DataFrame(0.0, index=index, columns=list(SUMMARY_COLUMNS))
    summary["converged"] = True
    summary["controller_online"] = True
    for ts, mwh in departed_unmet.items():
        summary.loc[pd.Timestamp(ts), "ev_unmet_mwh"] = mwh
    empty = pd.DataFrame(index=index)
    return PolicyRecords(policy="p", step=STEP, summary=summary, vm_pu=empty, line_loading_percent=empty,
                         trafo_loading_percent=empty, asset_p_mw=pd.DataFrame({"ev-1": ev_p_mw}, index=index),
                         asset_setpoint_mw=empty, asset_soc_mwh=empty, asset_clipped=empty, asset_fallback=empty,
                         asset_reported_p_mw=empty)


def test_energy_owed_at_the_end_is_counted_worked_example() -> None:
    # Run 20:00–24:00 at 15 min (16 intervals), one charger, eta_charge 0.9.
    # Session A 20:00–21:00 left during the run; the physics recorded 0.001 MWh unmet when it left.
    # Session B arrives 22:00, leaves 07:00 the next day, needs 0.010 MWh. The charger draws 0.004 MW
    # 22:00–23:00 (4 intervals of 0.25 h): 0.004 × 0.9 × 1 h = 0.0036 MWh delivered → 0.0064 MWh owed at 24:00.
    # Session C arrives at 24:00, the end itself: not part of this run.
    index = pd.date_range("2016-06-06T20:00Z", periods=16, freq=STEP)
    p = [0.0] * 8 + [0.004] * 4 + [0.0] * 4
    rec = records(index, p, departed_unmet={"2016-06-06T20:45Z": 0.001})
    evs = sessions(("2016-06-06T20:00Z", "2016-06-06T21:00Z", 0.002), ("2016-06-06T22:00Z", "2016-06-07T07:00Z", 0.010),
                   ("2016-06-07T00:00Z", "2016-06-07T06:00Z", 0.008))
    assert ev_energy_owed_at_end_mwh(rec, ev_sessions=evs, assets=ev_fleet()) == pytest.approx(0.0064, abs=1e-12)
    kpis = compute_kpis(rec, ev_sessions=evs, assets=ev_fleet())
    assert kpis.ev_unmet_at_end_mwh == pytest.approx(0.0064, abs=1e-12)
    assert kpis.ev_unmet_mwh == pytest.approx(0.001 + 0.0064, abs=1e-12)  # departed + owed at the end
    # Without the sessions (a live view of a run still going) the end is unknown: only departures count.
    live = compute_kpis(rec)
    assert np.isnan(live.ev_unmet_at_end_mwh) and live.ev_unmet_mwh == pytest.approx(0.001)


def test_discharge_raises_what_is_owed() -> None:
    # V2G: 0.009 MW discharged for one interval takes 0.009 × 0.25 / 0.9 = 0.0025 MWh out → owed 0.0125 MWh.
    index = pd.date_range("2016-06-06T22:00Z", periods=8, freq=STEP)
    rec = records(index, [-0.009] + [0.0] * 7, departed_unmet={})
    evs = sessions(("2016-06-06T22:00Z", "2016-06-07T07:00Z", 0.010))
    assert ev_energy_owed_at_end_mwh(rec, ev_sessions=evs, assets=ev_fleet()) == pytest.approx(0.0125, abs=1e-12)


def test_the_replay_matches_the_device_physics() -> None:
    """The physics as oracle: random setpoints over a night; what it still needs at the end is the replay's."""
    fleet = ev_fleet()
    evs = sessions(("2016-06-06T21:00Z", "2016-06-07T06:00Z", 0.012), ("2016-06-06T18:00Z", "2016-06-06T20:30Z", 0.004))
    physics = FleetPhysics(fleet, evs, step=STEP)
    index = pd.date_range("2016-06-06T18:00Z", "2016-06-07T00:00Z", freq=STEP, inclusive="left")
    rng = np.random.default_rng(3)
    done, unmet = [], {}
    for t in index:
        out = physics.advance(t, p_setpoint_mw=pd.Series({"ev-1": rng.uniform(-0.011, 0.011)}),
                              q_setpoint_mvar=pd.Series(dtype=float), pv_avail_mw=pd.Series(dtype=float),
                              flex_base_mw=pd.Series(dtype=float))
        done.append(float(out.p_mw["ev-1"]))
        unmet[str(t)] = out.ev_unmet_mwh
    still_needed = float(physics.state_frame(index[-1] + STEP)["ev_energy_needed_mwh"]["ev-1"])
    rec = records(index, done, departed_unmet=unmet)
    assert ev_energy_owed_at_end_mwh(rec, ev_sessions=evs, assets=fleet) == pytest.approx(still_needed, abs=1e-12)


NEVER = [{"name": "never", "target": "ev_helpers:NeverChargeEvs"}]
FLEET = {"pv_penetration": 0.0, "battery_share": 0.0, "ev_share": 1.0, "flex_share": 0.0}


def test_a_policy_that_never_charges_shows_the_energy_it_owes() -> None:
    """One day of CIGRE LV: every car arriving in the evening is still plugged in at midnight. A policy that
    never charges owes each of them its whole need; charging at once (no control) owes far less."""
    s = make_scenario(feeder="cigre-lv", fleet=FLEET, start="2016-06-06T00:00:00Z", end="2016-06-07T00:00:00Z",
                      controllers=[{"name": "none", "target": "controllers.baseline:NoControl"}, *NEVER])
    inputs = build_inputs(s)
    result = run_scenario(s, runs_root=None, inputs=inputs)
    ev = inputs.ev_sessions
    open_at_end = ev[(ev["arrival"] < s.end) & (ev["departure"] > s.end)]
    assert len(open_at_end) > 0
    never = result.kpis["never"]
    assert never.ev_unmet_at_end_mwh == pytest.approx(float(open_at_end["energy_mwh"].sum()), rel=1e-12)
    assert never.ev_unmet_mwh >= never.ev_unmet_at_end_mwh
    assert result.kpis["none"].ev_unmet_mwh < 0.5 * never.ev_unmet_mwh


def test_ev_sessions_and_inputs_of_a_day_do_not_depend_on_the_run_length() -> None:
    """Prefix-stable: the first day of a week-long run is the one-day run (EV sessions, profiles, prices)."""
    day = make_scenario(feeder="cigre-lv", fleet=FLEET, start="2016-06-06T00:00:00Z", end="2016-06-07T00:00:00Z")
    week = make_scenario(feeder="cigre-lv", fleet=FLEET, start="2016-06-06T00:00:00Z", end="2016-06-13T00:00:00Z")
    a, b = build_inputs(day), build_inputs(week)
    pd.testing.assert_frame_equal(a.assets, b.assets)
    cutoff = day.end + day.horizon  # the one-day run draws sessions arriving up to its last forecast window
    first = b.ev_sessions[b.ev_sessions["arrival"] < cutoff].reset_index(drop=True)
    pd.testing.assert_frame_equal(a.ev_sessions, first, check_exact=True)
    assert len(a.ev_sessions) > 0
    window = a.profiles.load_p_mw.index
    pd.testing.assert_frame_equal(a.profiles.load_p_mw, b.profiles.load_p_mw.loc[window], check_exact=True, check_freq=False)
    pd.testing.assert_series_equal(a.price_eur_per_mwh, b.price_eur_per_mwh.loc[window], check_freq=False)
