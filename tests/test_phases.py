"""Phase connections: the IEEE feeder's own houses, the seeded allocation, the fleet's phase column and CSV, the
scenario switch, and the uncontrolled three-phase replay's EV charging."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from grids.catalog import load_feeder
from grids.fleet import FleetError, build_fleet, read_fleet_csv, write_fleet_csv
from grids.phases import SINGLE_PHASE_MAX_MW, allocate_phases, asset_phases, load_phases
from twin.scenario import ScenarioError, parse_scenario

RURAL = "simbench:1-LV-rural1--0-sw"


def test_ieee_feeder_keeps_its_own_single_phase_houses() -> None:
    net = load_feeder("ieee-eu-lv")
    phases, method = load_phases(net, feeder="ieee-eu-lv", seed=0)
    # pandapower's table: LOAD1 (bus 34) has p_a_mw = 0.000574 only, LOAD2 (bus 47) p_b_mw = 0.000044 only.
    assert phases.loc[0] == "a" and phases.loc[1] == "b"
    assert phases.value_counts().to_dict() == {"a": 21, "b": 19, "c": 15}
    assert "own single-phase" in method


def test_seeded_allocation_is_balanced_and_reproducible() -> None:
    net = load_feeder(RURAL)  # 13 loads
    first, method = load_phases(net, feeder=RURAL, seed=5)
    again, _ = load_phases(net, feeder=RURAL, seed=5)
    other, _ = load_phases(net, feeder=RURAL, seed=6)
    assert first.equals(again) and not first.equals(other)
    assert sorted(first.value_counts().tolist()) == [4, 4, 5]  # 13 dealt over 3 phases
    assert "seed 5" in method
    mv = load_feeder("cigre-mv-der")  # 20 kV loads stand for whole LV areas: three-phase
    assert (load_phases(mv, feeder="cigre-mv-der", seed=5)[0] == "abc").all()


def test_assets_take_their_hosts_phase_when_single_phase_sized() -> None:
    net = load_feeder(RURAL)
    fleet = build_fleet(net, pv_penetration=0.0, battery_share=0.0, ev_share=1.0, flex_share=0.0, seed=1)
    loads, _ = load_phases(net, feeder=RURAL, seed=5)
    assert (asset_phases(fleet, loads, net.load["bus"]) == "abc").all()  # 11 kW chargers: three-phase
    small = fleet.assign(p_max_mw=SINGLE_PHASE_MAX_MW)
    phases = asset_phases(small, loads, net.load["bus"])
    host = loads.groupby(net.load["bus"]).first()
    assert (phases.to_numpy() == small["bus"].map(host).to_numpy()).all()


def test_phase_column_round_trips_through_csv_and_is_validated(tmp_path: Path) -> None:
    net = load_feeder(RURAL)
    fleet = build_fleet(net, pv_penetration=0.5, battery_share=0.3, ev_share=0.3, flex_share=0.0, seed=2)
    allocation = allocate_phases(net, fleet, feeder=RURAL, seed=3)
    phased = fleet.assign(phase=allocation.assets)
    path = tmp_path / "fleet.csv"
    write_fleet_csv(phased, path)
    back = read_fleet_csv(path, net)
    assert back["phase"].tolist() == phased["phase"].tolist()
    # A fleet that states its phases keeps them.
    assert allocate_phases(net, back, feeder=RURAL, seed=99).assets.equals(back["phase"])
    text = path.read_text().splitlines()
    text[2] = text[2].rsplit(",", 1)[0] + ",d"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(FleetError, match=r"line 3 .*field 'phase': value 'd' is not one of \['a', 'b', 'c', 'abc'\]"):
        read_fleet_csv(path, net)


def _scenario(**power_flow: str) -> dict:
    return {"feeder": RURAL, "start": "2016-06-01", "end": "2016-06-02", "seed": 4, "power_flow": power_flow,
            "fleet": {"pv_penetration": 0.5, "battery_share": 0.0, "ev_share": 0.5, "flex_share": 0.2},
            "controllers": [{"name": "none", "target": "controllers.baseline:NoControl"}]}


def test_scenario_phases_option_is_validated() -> None:
    assert parse_scenario(_scenario()).power_flow.phases == "balanced"
    assert parse_scenario(_scenario(phases="three_phase")).power_flow.phases == "three_phase"
    with pytest.raises(ScenarioError, match=r"power_flow\.phases.*'unbalanced'"):
        parse_scenario(_scenario(phases="unbalanced"))


@pytest.mark.slow
def test_three_phase_inputs_and_uncontrolled_ev_charging() -> None:
    from twin.grid.three_phase_run import phase_metadata, three_phase_replay, uncontrolled_asset_mw
    from twin.inputs import build_inputs

    inputs = build_inputs(parse_scenario(_scenario(phases="three_phase", engine="fast")))
    assert set(inputs.assets["phase"]) <= {"a", "b", "c", "abc"}
    meta = phase_metadata(inputs)
    assert meta["allocation"].startswith("seeded allocation")
    assert sum(meta["loads_per_phase"].values()) == 13
    assert any("r0_ohm_per_km" in note for note in meta["zero_sequence_assumptions"])
    index = pd.date_range("2016-06-01", periods=96 + 48, freq="15min", tz="UTC")
    ev = uncontrolled_asset_mw(inputs, index)
    # Every session that arrives and finishes inside the window gets exactly its energy (through eta_charge).
    sessions = inputs.ev_sessions[inputs.ev_sessions["arrival"] < index[0] + pd.Timedelta("1D")]
    for _, s in sessions.iterrows():
        col = inputs.assets.index.get_loc(s["asset_id"])
        window = (index >= s["arrival"]) & (index < s["departure"])
        delivered = ev[window, col].sum() * 0.25 * inputs.assets["eta_charge"].iloc[col]
        assert delivered == pytest.approx(s["energy_mwh"], rel=1e-12)
    result = three_phase_replay(inputs, index[:8])
    assert result.converged.all() and np.isfinite(result.vm_pu).all()


@pytest.mark.slow
def test_three_phase_run_states_its_phases_and_writes_per_phase_kpis(tmp_path: Path) -> None:
    import json

    from twin.run import run_scenario

    result = run_scenario(parse_scenario(_scenario(phases="three_phase", engine="fast")), out=tmp_path / "run")
    meta = json.loads((result.path / "meta.json").read_text())
    assert meta["three_phase"]["allocation"].startswith("seeded allocation")
    assert {row["phase"] for row in meta["assets"]} <= {"a", "b", "c", "abc"}
    kpis = json.loads((result.path / "three_phase" / "kpis.json").read_text())["none"]
    assert kpis["not_converged_intervals"] == 0 and kpis["worst_phase"] in {"a", "b", "c"}
    buses = pd.read_parquet(result.path / "three_phase" / "none-buses.parquet")
    assert len(buses) == 15 and buses["vuf_max_percent"].max() == pytest.approx(kpis["vuf_max_percent"])
    from twin.reporting.report import write_report

    page = write_report(result.path).read_text()
    assert "<h2>Three phases</h2>" in page and "most unbalanced buses" in page and "seeded allocation" in page


def test_controllers_are_handed_each_assets_phase() -> None:
    import phase_helpers

    from twin.run import run_scenario

    scenario = _scenario(phases="three_phase", engine="fast")
    scenario.update(end="2016-06-01T01:00:00Z", controllers=[{"name": "spy", "target": "phase_helpers:PhaseSpy"}])
    run_scenario(parse_scenario(scenario), out=None, runs_root=None)
    assert phase_helpers.SEEN["spec"][-1] == "phase" and phase_helpers.SEEN["observation"][-1] == "phase"
