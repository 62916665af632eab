"""twin.reporting.figures: the traces carry the numbers of small hand-made tables, in the right places and colours."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twin.reporting.figures import (
    LOADING_BANDS,
    asset_figure,
    cost_figure,
    empty_figure,
    fallback_figure,
    feeder_map_figure,
    head_power_figure,
    kpi_comparison_figure,
    loading_band,
    payments_figure,
    policy_colors,
    study_figure,
    voltage_envelope_figure,
)
from twin.grid.topology import FeederTopology

T = pd.date_range("2016-06-06", periods=3, freq="15min", tz="UTC", name="time")


def _trace(fig, name):
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, [t.name for t in fig.data]
    return matches[0]


def _values(seq):
    return [None if v is None else float(v) for v in seq]


@pytest.fixture
def feeder() -> FeederTopology:
    """ext grid bus 0 —trafo 0— bus 1 —line 0— bus 2 —line 1— bus 3; line 2 (out of service) 1–3."""
    buses = pd.DataFrame({"x": [0.0, 0.0, 1.0, 2.0], "y": [0.0, -1.0, -2.0, -3.0], "name": ["MV", "LV", "", "end"],
                          "vn_kv": [20.0, 0.4, 0.4, 0.4]}, index=pd.Index(["0", "1", "2", "3"], name="id"))
    lines = pd.DataFrame({"from_bus": ["1", "2", "1"], "to_bus": ["2", "3", "3"], "name": ["a", "b", "tie"],
                          "in_service": [True, True, False]}, index=pd.Index(["0", "1", "2"], name="id"))
    trafos = pd.DataFrame({"hv_bus": ["0"], "lv_bus": ["1"], "name": ["T"], "in_service": [True]},
                          index=pd.Index(["0"], name="id"))
    links = pd.DataFrame(columns=["from_bus", "to_bus", "kind"], index=pd.Index([], name="id"))
    return FeederTopology(buses=buses, lines=lines, trafos=trafos, links=links, ext_grid_buses=("0",), layout="geodata")


def test_loading_band_edges() -> None:
    assert [loading_band(v) for v in (0.0, 50.0, 50.1, 80.0, 99.9, 100.0, 100.01, 250.0)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert loading_band(float("nan")) is None
    assert LOADING_BANDS[3][2] == "loading > 100 %"


def test_feeder_map_colours_buses_by_voltage_and_bands_branches(feeder: FeederTopology) -> None:
    vm = pd.Series({"3": 0.93, "0": 1.0, "1": 0.99, "2": 0.96})  # out of order on purpose
    lines = pd.Series({"0": 45.0, "1": 120.0, "2": 10.0})
    fig = feeder_map_figure(feeder, vm_pu=vm, line_loading_percent=lines, trafo_loading_percent=pd.Series({"0": 85.0}))
    buses = _trace(fig, "buses")
    assert _values(buses.marker.color) == [1.0, 0.99, 0.96, 0.93]  # topology order
    assert _values(buses.x) == [0.0, 0.0, 1.0, 2.0] and buses.marker.cmin == 0.90 and buses.marker.cmax == 1.10
    ring = _trace(fig, "voltage outside 0.95–1.05 pu")
    assert _values(ring.x) == [2.0] and _values(ring.y) == [-3.0]  # bus 3 only
    by_band = {(t.name, t.meta["kind"]): t for t in fig.data if t.meta and "kind" in t.meta}
    # segments are (x0, x1, NaN) triples: line 0 is bus 1 (0, -1) -> bus 2 (1, -2)
    assert _values(by_band[("loading ≤ 50 %", "line")].x)[:2] == [0.0, 1.0]
    assert np.isnan(by_band[("loading ≤ 50 %", "line")].x[2])
    assert _values(by_band[("loading ≤ 50 %", "line")].y)[:2] == [-1.0, -2.0]
    assert _values(by_band[("loading > 100 %", "line")].x)[:2] == [1.0, 2.0]  # line 1: bus 2 -> bus 3
    assert _values(by_band[("loading 80–100 %", "trafo")].y)[:2] == [0.0, -1.0]
    # the out-of-service tie line (bus 1 -> bus 3) is drawn as "no data", whatever its recorded loading
    assert _values(by_band[("no data / out of service", "line")].x)[:2] == [0.0, 2.0]
    assert [t.meta["count"] for t in by_band.values()] == [1, 1, 1, 1]
    assert by_band[("loading > 100 %", "line")].line.color == LOADING_BANDS[3][3]
    hover = _trace(fig, "branches").hovertext
    assert "line 1 (b): 120.0 %" in hover and "trafo 0 (T): 85.0 %" in hover
    assert _trace(fig, "external grid").hovertext == ("external grid at bus 0",)
    assert fig.layout.yaxis.scaleanchor == "x"  # geodata keeps its aspect ratio


def test_feeder_map_without_results_draws_grey(feeder: FeederTopology) -> None:
    fig = feeder_map_figure(feeder)
    assert all(np.isnan(v) for v in _trace(fig, "buses").marker.color)
    kinds = {t.name for t in fig.data if t.meta and "kind" in t.meta}
    assert kinds == {"no data / out of service"}
    assert not [t for t in fig.data if t.name and t.name.startswith("voltage outside")]


def test_head_power_and_envelope_carry_each_policy() -> None:
    a = pd.DataFrame({"p_head_mw": [0.1, 0.2, -0.05], "vm_min_pu": [0.97, 0.96, 0.99], "vm_max_pu": [1.01, 1.0, 1.04]},
                     index=T)
    b = a * 0.5
    fig = head_power_figure({"depin": a, "scada": b}, p_head_max_mw=0.15)
    assert _values(_trace(fig, "depin").y) == [0.1, 0.2, -0.05]
    assert _values(_trace(fig, "scada").y) == [0.05, 0.1, -0.025]
    assert list(_trace(fig, "depin").x) == list(T)
    assert fig.layout.shapes[0].y0 == 0.15
    colours = policy_colors(["depin", "scada"])
    assert _trace(fig, "scada").line.color == colours["scada"] != colours["depin"]
    env = voltage_envelope_figure({"depin": a}, v_min_pu=0.95, v_max_pu=1.05)
    assert _values(_trace(env, "depin max").y) == [1.01, 1.0, 1.04]
    low = _trace(env, "depin min")
    assert _values(low.y) == [0.97, 0.96, 0.99] and low.fill == "tonexty"
    assert sorted(s.y0 for s in env.layout.shapes) == [0.95, 1.05]


def test_cost_figure_cumulates_cost() -> None:
    s = pd.DataFrame({"cost_eur": [1.5, 2.0, np.nan, 0.5]}, index=pd.date_range("2016-01-01", periods=4, freq="1h",
                                                                               tz="UTC"))
    fig = cost_figure({"scada": s})
    assert _values(_trace(fig, "scada cumulative").y) == [1.5, 3.5, 3.5, 4.0]
    assert _trace(fig, "scada").y[1] == 2.0


def test_payments_figure_and_empty() -> None:
    pay = pd.DataFrame({"participants": [0.25, 0.25, 0.5]}, index=T)
    assert _values(_trace(payments_figure(pay), "participants").y) == [0.25, 0.5, 1.0]
    assert payments_figure(pay.iloc[0:0]).layout.annotations[0].text == "no settlement payments yet"
    assert empty_figure("nothing").layout.annotations[0].text == "nothing"


def test_asset_figure_flags_clips_and_fallbacks() -> None:
    fig = asset_figure(
        asset_id="B1",
        actual_mw=pd.Series([0.004, -0.005, 0.0], index=T),
        setpoint_mw=pd.Series([0.004, -0.006, 0.002], index=T),
        soc_mwh=pd.Series([0.01, 0.0088, 0.0088], index=T),
        clipped=pd.Series(["", "rating", ""], index=T),
        fallback=pd.Series([False, False, True], index=T),
    )
    assert _values(_trace(fig, "setpoint").y) == [0.004, -0.006, 0.002]
    assert _values(_trace(fig, "actual").y) == [0.004, -0.005, 0.0]
    assert _values(_trace(fig, "SOC").y) == [0.01, 0.0088, 0.0088]
    clipped = _trace(fig, "clipped")
    assert list(clipped.x) == [T[1]] and clipped.hovertext == ("rating",)
    assert list(_trace(fig, "fallback").x) == [T[2]]


def test_fallback_figure_shades_fault_windows() -> None:
    s = pd.DataFrame({"n_fallback": [0, 3, 0]}, index=T)
    faults = pd.DataFrame({"start": [T[1]], "end": [T[2]], "label": ["backhaul cut"]})
    fig = fallback_figure({"scada": s}, faults=faults)
    assert _values(_trace(fig, "scada").y) == [0, 3, 0]
    (shape,) = fig.layout.shapes
    assert pd.Timestamp(shape.x0) == T[1] and pd.Timestamp(shape.x1) == T[2]
    assert fig.layout.annotations[0].text == "backhaul cut"


def test_study_and_kpi_figures() -> None:
    table = pd.DataFrame({"variant_id": ["v0", "v0", "v1", "v1"], "policy": ["depin", "scada"] * 2,
                          "energy_cost_eur": [10.0, 12.0, 9.0, 13.0]})
    fig = study_figure(table, "energy_cost_eur", label="Energy cost [EUR]")
    assert _values(_trace(fig, "scada").y) == [12.0, 13.0] and list(_trace(fig, "scada").x) == ["v0", "v1"]
    assert study_figure(table, "nope").layout.annotations[0].text == "study table has no column nope"
    kpis = pd.DataFrame({"scada": [100.0, 4.0], "depin": [80.0, 0.0]}, index=["energy_cost_eur", "peak_import_mw"])
    bars = kpi_comparison_figure(kpis, labels={"energy_cost_eur": "Energy cost [EUR]"})
    assert _values(_trace(bars, "depin").x) == [80.0, 0.0]
    assert list(_trace(bars, "depin").y) == ["Energy cost [EUR]", "peak_import_mw"]
