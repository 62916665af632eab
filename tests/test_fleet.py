"""DER fleet: seeded placement, penetration arithmetic, validation messages, CSV, EV sessions."""

from __future__ import annotations

from pathlib import Path

import pandapower as pp
import pandas as pd
import pytest

from controllers import api
from grids import (
    ASSET_COLUMNS,
    AssetKind,
    FleetError,
    FleetRatings,
    build_fleet,
    generate_ev_sessions,
    load_feeder,
    read_fleet_csv,
    validate_ev_sessions,
    validate_fleet,
    write_fleet_csv,
)


@pytest.fixture(scope="module")
def small_net() -> pp.pandapowerNet:
    """Four households on a tiny LV feeder: 4, 2, 6 and 8 kW (20 kW in all) at buses 1-4."""
    net = pp.create_empty_network()
    buses = [pp.create_bus(net, vn_kv=0.4) for _ in range(5)]
    pp.create_ext_grid(net, buses[0])
    for p_kw, bus in zip((4, 2, 6, 8), buses[1:], strict=True):
        pp.create_load(net, bus, p_mw=p_kw / 1000, q_mvar=0.0)
    return net


@pytest.fixture(scope="module")
def kerber() -> pp.pandapowerNet:
    return load_feeder("kerber-dorfnetz")


def fleet_of(net: pp.pandapowerNet, **overrides) -> pd.DataFrame:
    kwargs = dict(pv_penetration=0.5, battery_share=0.5, ev_share=0.5, flex_share=0.25, seed=3)
    return build_fleet(net, **{**kwargs, **overrides})


def test_columns_mirror_the_controller_contract() -> None:
    assert ASSET_COLUMNS == api.ASSET_COLUMNS
    assert {kind.value for kind in AssetKind} == {kind.value for kind in api.AssetKind}


def test_table_shape_and_types(small_net) -> None:
    fleet = fleet_of(small_net)
    assert fleet.index.name == "asset_id"
    assert tuple(fleet.columns) == ASSET_COLUMNS
    assert fleet["bus"].dtype == "int64" and fleet["v2g"].dtype == bool
    assert fleet["flex_window"].dtype == "timedelta64[ns]"
    validate_fleet(fleet, small_net)


def test_same_seed_same_table_other_seed_other_placement(kerber) -> None:
    a, b, c = fleet_of(kerber, seed=11), fleet_of(kerber, seed=11), fleet_of(kerber, seed=12)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert list(a.index) != list(c.index)


def test_pv_penetration_arithmetic_by_hand(small_net) -> None:
    # 20 kW of load x 0.5 = 10 kWp. Each host gets one roof = its own load; the last host the remainder.
    fleet = fleet_of(small_net, pv_penetration=0.5)
    pv = fleet[fleet["kind"] == "pv"]
    assert pv["p_max_mw"].sum() == pytest.approx(0.010, abs=1e-15)
    roofs = small_net.load.loc[pv.index.str.removeprefix("pv-").astype(int), "p_mw"].to_numpy()
    partial = pv["p_max_mw"].to_numpy() < roofs - 1e-15
    assert (pv["p_max_mw"].to_numpy() <= roofs + 1e-15).all()
    assert partial.sum() <= 1  # only the last host drawn gets less than a full roof
    assert (pv["bus"].to_numpy() == small_net.load.loc[pv.index.str.removeprefix("pv-").astype(int), "bus"]).all()
    assert (pv["s_max_mva"] == pv["p_max_mw"] * 1.1).all()


def test_pv_penetration_above_the_roofs_scales_every_system(small_net) -> None:
    # 200 % of 20 kW = 40 kWp; the roofs hold 20 kW, so every system is doubled: 8, 4, 12, 16 kW.
    pv = fleet_of(small_net, pv_penetration=2.0).query("kind == 'pv'")
    assert list(pv.index) == ["pv-0000", "pv-0001", "pv-0002", "pv-0003"]
    assert pv["p_max_mw"].tolist() == pytest.approx([0.008, 0.004, 0.012, 0.016])


def test_shares_round_to_whole_participants(kerber) -> None:
    # Kerber Dorfnetz has 57 households: 0.3 x 57 = 17.1 -> 17, 0.2 x 57 = 11.4 -> 11, 0.1 x 57 = 5.7 -> 6.
    fleet = fleet_of(kerber, battery_share=0.3, ev_share=0.2, flex_share=0.1)
    counts = fleet["kind"].value_counts()
    assert (counts["battery"], counts["ev_charger"], counts["flex_load"]) == (17, 11, 6)
    # 57 x 6 kW x 0.5 = 171 kWp, i.e. 28.5 roofs of 6 kW: 28 full systems and one of 3 kW.
    pv = fleet[fleet["kind"] == "pv"]["p_max_mw"]
    assert pv.sum() == pytest.approx(0.171)
    assert sorted(pv.round(9).unique()) == [0.003, 0.006] and len(pv) == 29


def test_ids_name_their_participant_and_bus(kerber) -> None:
    fleet = fleet_of(kerber)
    for asset_id, row in fleet.iterrows():
        load_idx = int(asset_id.split("-")[1])
        assert row["participant_id"] == f"p-{load_idx}"
        assert row["bus"] == kerber.load.at[load_idx, "bus"]
    battery = fleet[fleet["kind"] == "battery"].iloc[0]
    assert (battery["p_max_mw"], battery["e_max_mwh"], battery["eta_charge"]) == (0.005, 0.010, 0.95)
    flex = fleet[fleet["kind"] == "flex_load"].iloc[0]
    assert flex["flex_window"] == pd.Timedelta("4h")


def test_ratings_are_configurable(small_net) -> None:
    fleet = fleet_of(small_net, battery_share=1.0, ratings=FleetRatings(battery_p_mw=0.5, battery_e_mwh=2.0))
    batteries = fleet[fleet["kind"] == "battery"]
    assert len(batteries) == 4 and (batteries["e_max_mwh"] == 2.0).all()


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("bus", 999, "999"),
        ("p_max_mw", -0.001, "-0.001"),
        ("kind", "nuclear", "'nuclear'"),
        ("soc_max", 1.5, "1.5"),
        ("soc_min", -0.1, "-0.1"),
        ("eta_charge", 0.0, "0.0"),
        ("eta_discharge", 1.2, "1.2"),
        ("s_max_mva", float("nan"), "nan"),
    ],
)
def test_validation_names_asset_field_and_value(small_net, field, value, named) -> None:
    fleet = fleet_of(small_net, battery_share=1.0)
    asset_id = "bat-0002"
    fleet.loc[asset_id, field] = value
    with pytest.raises(FleetError) as info:
        validate_fleet(fleet, small_net)
    message = str(info.value)
    assert f"'{asset_id}'" in message and f"'{field}'" in message and named in message


def test_soc_min_above_soc_max_is_rejected(small_net) -> None:
    fleet = fleet_of(small_net, battery_share=1.0)
    fleet.loc["bat-0001", ["soc_min", "soc_max", "soc_init"]] = [0.8, 0.6, 0.7]
    with pytest.raises(FleetError, match=r"'bat-0001'.*'soc_min'.*0\.8.*soc_max=0\.6"):
        validate_fleet(fleet, small_net)


def test_duplicate_id_is_rejected(small_net) -> None:
    fleet = fleet_of(small_net, battery_share=1.0)
    doubled = pd.concat([fleet, fleet.loc[["bat-0003"]]])
    with pytest.raises(FleetError, match=r"'bat-0003'.*'asset_id'.*duplicate"):
        validate_fleet(doubled, small_net)


def test_csv_round_trip_is_exact(kerber, tmp_path: Path) -> None:
    fleet = fleet_of(kerber)
    path = tmp_path / "fleet.csv"
    write_fleet_csv(fleet, path)
    pd.testing.assert_frame_equal(read_fleet_csv(path, kerber), fleet, check_exact=True)


def test_csv_errors_name_the_line(small_net, tmp_path: Path) -> None:
    path = tmp_path / "fleet.csv"
    write_fleet_csv(fleet_of(small_net, battery_share=1.0, pv_penetration=0.0, ev_share=0.0, flex_share=0.0), path)
    lines = path.read_text().splitlines()
    assert lines[2].startswith("bat-0001,battery,2,")
    lines[2] = lines[2].replace("battery,2,", "battery,77,")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FleetError, match=r"line 3 \(asset 'bat-0001'\).*'bus'.*77"):
        read_fleet_csv(path, small_net)
    lines[2] = lines[2].replace("battery,77,", "battery,two,")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FleetError, match=r"line 3 .*'bus'.*'two'"):
        read_fleet_csv(path, small_net)
    lines[4] = lines[1]  # duplicate of bat-0000 on line 5
    path.write_text("\n".join(lines) + "\n")
    lines[2] = lines[2].replace("battery,two,", "battery,2,")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FleetError, match=r"line 5 \(asset 'bat-0000'\).*duplicate"):
        read_fleet_csv(path, small_net)


def test_ev_sessions_are_seeded_evening_to_morning_and_deliverable(kerber) -> None:
    fleet = fleet_of(kerber, ev_share=0.5)
    kwargs = dict(start="2016-06-01", end="2016-06-08", step=pd.Timedelta("15min"))
    sessions = generate_ev_sessions(fleet, seed=5, **kwargs)
    pd.testing.assert_frame_equal(sessions, generate_ev_sessions(fleet, seed=5, **kwargs), check_exact=True)
    assert not sessions.equals(generate_ev_sessions(fleet, seed=6, **kwargs))
    assert list(sessions.columns) == ["asset_id", "arrival", "departure", "energy_mwh"]
    assert set(sessions["asset_id"]) <= set(fleet.index[fleet["kind"] == "ev_charger"])
    assert sessions["arrival"].dt.hour.between(15, 23).all()
    assert sessions["departure"].dt.hour.between(5, 10).all()
    assert (sessions["arrival"].dt.minute % 15 == 0).all()
    assert sessions["arrival"].min() >= pd.Timestamp("2016-06-01T00:00Z")
    assert sessions["arrival"].max() < pd.Timestamp("2016-06-08T00:00Z")
    hours = (sessions["departure"] - sessions["arrival"]) / pd.Timedelta("1h")
    assert (sessions["energy_mwh"] <= 0.011 * 0.92 * hours + 1e-12).all()
    # About 0.85 x 28 chargers x 7 evenings = 167 sessions.
    assert 130 <= len(sessions) <= 200
    validate_ev_sessions(sessions, fleet)


def _one_session(**overrides) -> pd.DataFrame:
    row = {
        "asset_id": "ev-0001",
        "arrival": pd.Timestamp("2016-06-01T18:00Z"),
        "departure": pd.Timestamp("2016-06-02T07:00Z"),
        "energy_mwh": 0.01,
        **overrides,
    }
    return pd.DataFrame([row])


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"asset_id": "ev-9999"}, r"row 0 \(asset 'ev-9999'\).*'asset_id'"),
        ({"departure": pd.Timestamp("2016-06-01T17:00Z")}, r"row 0 .*'departure'.*2016-06-01 17:00"),
        ({"energy_mwh": -0.001}, r"'energy_mwh'.*-0.001"),
        # 13 h x 11 kW x 0.92 = 131.56 kWh deliverable
        ({"energy_mwh": 0.2}, r"'energy_mwh'.*0.2 exceeds"),
    ],
)
def test_ev_session_validation_names_row_field_value(small_net, overrides, pattern) -> None:
    fleet = fleet_of(small_net, ev_share=1.0)
    validate_ev_sessions(_one_session(), fleet)
    with pytest.raises(FleetError, match=pattern):
        validate_ev_sessions(_one_session(**overrides), fleet)


def test_overlapping_ev_sessions_are_rejected(small_net) -> None:
    fleet = fleet_of(small_net, ev_share=1.0)
    second = _one_session(arrival=pd.Timestamp("2016-06-02T06:00Z"), departure=pd.Timestamp("2016-06-02T09:00Z"))
    with pytest.raises(FleetError, match=r"row 1 .*'arrival'"):
        validate_ev_sessions(pd.concat([_one_session(), second], ignore_index=True), fleet)
