"""Feeder catalog: every named feeder converges as returned, Baran-Wu matches the published base case, and
bad names fail with the list of valid ones."""

from __future__ import annotations

from pathlib import Path

import pandapower as pp
import pandapower.networks as pn
import pandas as pd
import pytest

import grids
from grids import FeederError, UnknownFeederError, feeder_summary, list_feeders, load_feeder

NAMED = [info.name for info in list_feeders()]


def test_catalog_lists_the_required_feeders() -> None:
    assert set(NAMED) >= {
        "cigre-lv",
        "cigre-mv-der",
        "kerber-dorfnetz",
        "ieee-eu-lv",
        "baran-wu-33",
        "simbench:1-LV-rural1--0-sw",
    }
    assert all(info.description for info in list_feeders())


@pytest.mark.parametrize("name", NAMED)
def test_every_named_feeder_converges_as_returned(name: str) -> None:
    net = load_feeder(name)
    pp.runpp(net)
    assert net.converged
    assert net.res_bus["vm_pu"].between(0.85, 1.1).all()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # Element counts from REFERENCES.md / the pandapower documentation of each network.
        ("cigre-lv", {"bus": 44}),
        ("cigre-mv-der", {"bus": 15, "sgen": 13, "storage": 2}),
        ("kerber-dorfnetz", {"bus": 116, "load": 57}),
        ("ieee-eu-lv", {"bus": 907, "load": 55}),
        ("baran-wu-33", {"bus": 33, "line": 37, "trafo": 0, "load": 32, "sgen": 0}),
        ("simbench:1-LV-rural1--0-sw", {"bus": 15, "load": 13, "sgen": 4, "trafo": 1}),
    ],
)
def test_feeder_summary_counts(name: str, expected: dict[str, int]) -> None:
    summary = feeder_summary(load_feeder(name))
    assert {key: summary[key] for key in expected} == expected


def test_baran_wu_base_case_matches_the_published_losses_and_minimum_voltage() -> None:
    net = load_feeder("baran-wu-33")
    pp.runpp(net)
    losses_kw = net.res_line["pl_mw"].sum() * 1e3
    assert losses_kw == pytest.approx(202.68, abs=0.5)
    assert net.res_bus["vm_pu"].min() == pytest.approx(0.9131, abs=0.001)
    assert net.res_bus["vm_pu"].idxmin() == 17  # the 18th bus
    assert feeder_summary(net)["load_p_mw"] == pytest.approx(3.715)  # 3715 kW total demand


def test_ieee_eu_lv_sums_the_phases_into_balanced_loads() -> None:
    original = pn.ieee_european_lv_asymmetric()
    asym = original.asymmetric_load
    net = load_feeder("ieee-eu-lv")
    assert len(net.asymmetric_load) == 0  # not counted twice by runpp
    pd.testing.assert_series_equal(net.load["bus"], asym["bus"], check_names=False)
    expected_p = asym["p_a_mw"] + asym["p_b_mw"] + asym["p_c_mw"]
    pd.testing.assert_series_equal(net.load["p_mw"], expected_p, check_names=False)
    # Hand check on the first house: 0.574 kW on phase A only.
    assert net.load.at[0, "p_mw"] == pytest.approx(asym.at[0, "p_a_mw"] + asym.at[0, "p_b_mw"] + asym.at[0, "p_c_mw"])
    pp.runpp(net)
    assert net.res_load["p_mw"].sum() == pytest.approx(expected_p.sum())


def test_load_feeder_returns_a_fresh_copy_each_call() -> None:
    first = load_feeder("cigre-lv")
    first.load["p_mw"] = 99.0
    second = load_feeder("cigre-lv")
    assert second is not first
    assert (second.load["p_mw"] < 1.0).all()


def test_unknown_name_lists_the_valid_names() -> None:
    with pytest.raises(UnknownFeederError) as info:
        load_feeder("cigre-hv")
    message = str(info.value)
    assert "'cigre-hv'" in message
    for name in ("cigre-lv", "cigre-mv-der", "kerber-dorfnetz", "ieee-eu-lv", "baran-wu-33", "simbench:"):
        assert name in message
    assert isinstance(info.value, ValueError)


def test_unknown_simbench_code_is_an_unknown_feeder() -> None:
    with pytest.raises(UnknownFeederError, match="'1-LV-nowhere--0-sw'"):
        load_feeder("simbench:1-LV-nowhere--0-sw")


def test_json_path_round_trip(tmp_path: Path) -> None:
    original = load_feeder("baran-wu-33")
    path = tmp_path / "feeder.json"
    pp.to_json(original, str(path))
    for name in (str(path), path):
        net = load_feeder(name)
        pd.testing.assert_frame_equal(net.load[["bus", "p_mw", "q_mvar"]], original.load[["bus", "p_mw", "q_mvar"]])
        pp.runpp(net)
        assert net.res_line["pl_mw"].sum() * 1e3 == pytest.approx(202.68, abs=0.5)


def test_json_file_edits_are_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "feeder.json"
    net = load_feeder("cigre-lv")
    pp.to_json(net, str(path))
    assert len(load_feeder(path).load) == 15
    net.load = net.load.iloc[:3]
    pp.to_json(net, str(path))
    assert len(load_feeder(path).load) == 3


def test_missing_and_invalid_json_files(tmp_path: Path) -> None:
    with pytest.raises(UnknownFeederError, match="does not exist"):
        load_feeder(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a network"}')
    with pytest.raises(FeederError, match="bad.json"):
        load_feeder(bad)


def test_public_surface_is_pinned() -> None:
    assert sorted(grids.__all__) == sorted(
        [
            "ASSET_COLUMNS",
            "AssetKind",
            "DEFAULT_SIMBENCH_CODE",
            "EV_SESSION_COLUMNS",
            "ExogenousProfiles",
            "FeederError",
            "FeederInfo",
            "FleetError",
            "FleetRatings",
            "ProfileError",
            "UnknownFeederError",
            "build_fleet",
            "feeder_profiles",
            "feeder_summary",
            "generate_ev_sessions",
            "is_simbench_net",
            "list_feeders",
            "load_feeder",
            "read_fleet_csv",
            "validate_ev_sessions",
            "validate_fleet",
            "write_fleet_csv",
        ]
    )
