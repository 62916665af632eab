"""The Overview map of a three-phase run (issue 18, point 3): coloured by V1, the worst phase's voltage or the VUF,
the hover naming the worst phase and VUF at the cursor, buses above EN 50160's 2 % ringed; a balanced run's map
is as before. Hand-made tables first (numbers checked by hand), then the real three-phase sample, shortened, in
the data layer and in Chromium."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from dashboards import create_app
from dashboards.data import RunData
from dashboards.pages import map_view
from dashboards.phasemap import MAP_MODES, VUF_RING_NAME
from dashboards.synthetic import SyntheticTwin, radial_topology
from twin.records.parts import read_part, write_part
from twin.records.phase_tables import INTERVAL_TABLES, interval_table_path

ROOT = Path(__file__).resolve().parents[1]
CURSOR = {"cursor": "2016-06-06T00:15:00+00:00"}


def _buses(fig: Any) -> Any:
    return next(t for t in fig.data if t.name == "buses")


def _hover(fig: Any, bus: str) -> list[Any]:
    trace = _buses(fig)
    rows = [list(r) for r in trace.customdata if r[0] == bus]
    assert len(rows) == 1
    return rows[0]


@pytest.fixture
def hand_run(tmp_path: Path) -> Path:
    """A synthetic run (6 buses, 2 intervals) given three-phase tables by hand: at 00:15 bus 1 has
    a/b/c = 1.00/0.93/1.02 pu (worst b, 0.07 from 1 pu) and VUF 2.5 %, bus 2 has 1.06/1.00/0.98 (worst a) and
    VUF 0.4 %; every other bus 1.0 pu on each phase, VUF 0.1 %."""
    run = tmp_path / "run"
    twin = SyntheticTwin(run, radial_topology(6), n_intervals=4, n_assets=2, seed=1)
    twin.write_start()
    twin.advance(2)
    meta = json.loads((run / "meta.json").read_text())
    meta["three_phase"] = {"phases": "three_phase", "allocation": "by hand"}
    (run / "meta.json").write_text(json.dumps(meta))
    data = RunData(run)
    index = pd.DatetimeIndex(data.table("scada", "summary").index, name="time")
    buses = [str(b) for b in data.topology().buses.index]
    tables = {name: pd.DataFrame(1.0, index=index, columns=buses, dtype=np.float32) for name in INTERVAL_TABLES}
    tables["vuf_percent"][:] = 0.1
    at = index[1]
    for name, (one, two) in {"vm_a_pu": (1.00, 1.06), "vm_b_pu": (0.93, 1.00), "vm_c_pu": (1.02, 0.98),
                             "v1_pu": (0.983, 1.013), "vuf_percent": (2.5, 0.4)}.items():
        tables[name].loc[at, "1"], tables[name].loc[at, "2"] = one, two
    interval_table_path(run, "scada", "vm_a_pu").parent.mkdir()
    for policy in data.policies():
        for name, frame in tables.items():
            write_part(frame, interval_table_path(run, policy, name), matrix=True)
    return run


def test_phase_tables_at_the_cursor_by_hand(hand_run: Path) -> None:
    data = RunData(hand_run)
    assert data.has_three_phase()
    tables = data.three_phase("scada")
    assert tables is not None and tables.vm_pu.shape == (2, 6, 3)
    at = tables.at(tables.index[1], pd.Index(["1", "2", "3", "nowhere"]))
    assert at is not None
    assert list(at["worst"]) == [1, 0, 0, -1]  # b, a; bus 3 ties at 1.0 pu (the first); no data
    assert at["vm_worst_pu"][:2] == pytest.approx([0.93, 1.06], abs=1e-6)
    assert at["vuf_percent"][:3] == pytest.approx([2.5, 0.4, 0.1], abs=1e-6) and np.isnan(at["vuf_percent"][3])
    assert tables.at(pd.Timestamp("2030-01-01", tz="UTC"), pd.Index(["1"])) is None
    assert data.three_phase("../etc") is None


def test_the_map_colours_by_each_mode_and_names_the_worst_phase(hand_run: Path) -> None:
    data = RunData(hand_run)
    v1, caption = map_view(data, policy="scada", view=CURSOR, click=None, mode="v1")
    assert _hover(v1, "1") == ["1", "b", 2.5, 0.93, 0.983] and _hover(v1, "2") == ["2", "a", 0.4, 1.06, 1.013]
    assert "worst phase %{customdata[1]}" in _buses(v1).hovertemplate and "VUF %{customdata[2]" in (
        _buses(v1).hovertemplate)
    colours = dict(zip(_buses(v1).customdata[:, 0], np.asarray(_buses(v1).marker.color, float), strict=True))
    assert colours["1"] == pytest.approx(0.983, abs=1e-6) and colours["3"] == pytest.approx(1.0)
    assert "VUF max 2.50 % at bus 1 (worst phase b); 1 bus(es) above EN 50160's 2 %" in caption
    worst, _ = map_view(data, policy="scada", view=CURSOR, click=None, mode="worst")
    colours = dict(zip(_buses(worst).customdata[:, 0], np.asarray(_buses(worst).marker.color, float), strict=True))
    assert colours["1"] == pytest.approx(0.93, abs=1e-6) and colours["2"] == pytest.approx(1.06, abs=1e-6)
    assert any(t.name.startswith("voltage outside") for t in worst.data)  # 0.93 and 1.06 are out of band
    vuf, _ = map_view(data, policy="scada", view=CURSOR, click=None, mode="vuf")
    colours = dict(zip(_buses(vuf).customdata[:, 0], np.asarray(_buses(vuf).marker.color, float), strict=True))
    assert colours["1"] == pytest.approx(2.5, abs=1e-6) and colours["2"] == pytest.approx(0.4, abs=1e-6)
    assert "EN 50160 limit 2 %" in _buses(vuf).marker.colorbar.title.text
    ring = next(t for t in vuf.data if t.name == VUF_RING_NAME)
    xy = data.topology().buses.loc["1", ["x", "y"]].to_numpy(float)
    assert list(ring.x) == [xy[0]] and list(ring.y) == [xy[1]]  # only bus 1 is above 2 %
    assert not any(str(t.name).startswith("voltage outside") for t in vuf.data)


def test_a_bad_mode_is_the_default_and_a_balanced_run_has_todays_map(hand_run: Path, tmp_path: Path) -> None:
    from dashboards.figpatch import figure_digests

    data = RunData(hand_run)
    default, _ = map_view(data, policy="scada", view=CURSOR, click=None, mode="v1")
    for bad in (None, "bogus", 7, ["vuf"], {"x": 1}):
        fig, _ = map_view(data, policy="scada", view=CURSOR, click=None, mode=bad)
        assert figure_digests(fig) == figure_digests(default), bad
    run = tmp_path / "balanced"
    twin = SyntheticTwin(run, radial_topology(6), n_intervals=4, n_assets=2, seed=1)
    twin.write_start()
    twin.advance(2)
    balanced = RunData(run)
    assert not balanced.has_three_phase() and balanced.three_phase("scada") is None
    fig, caption = map_view(balanced, policy="scada", view=CURSOR, click=None, mode="vuf")
    assert _buses(fig).hovertemplate == "%{text}: %{marker.color:.4f} pu<extra></extra>" and "VUF" not in caption
    assert not any(t.name == VUF_RING_NAME for t in fig.data)
    client = create_app(run).server.test_client()
    key = next(k for k in create_app(run).callback_map if k.startswith("ov-map-mode-label"))
    body = {"output": key, "outputs": {"id": "ov-map-mode-label", "property": "style"},
            "inputs": [{"id": "run-version", "property": "data", "value": [1]}], "changedPropIds": []}
    response = client.post("/_dash-update-component", json=body)
    assert response.status_code == 200 and json.loads(response.data)["response"]["ov-map-mode-label"]["style"] == {
        "display": "none"}


# -- the real sample, shortened to a few hours ----------------------------------------------------------------
@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from twin.run import run_scenario
    from twin.scenario import parse_scenario

    doc = tomllib.loads((ROOT / "scenarios" / "three-phase-ieee-day.toml").read_text(encoding="utf-8"))
    doc.update(start="2016-06-06T16:00:00Z", end="2016-06-06T20:00:00Z")  # evening: houses and EVs charging
    out = tmp_path_factory.mktemp("three-phase") / "run"
    return run_scenario(parse_scenario(doc, base_dir=ROOT / "scenarios"), out=out).path


@pytest.mark.slow
def test_the_sample_runs_tables_give_each_buss_worst_phase_and_vuf(sample_run: Path) -> None:
    data = RunData(sample_run)
    assert data.has_three_phase()
    policy = "no-control"
    tables = data.three_phase(policy)
    assert tables is not None and len(tables.index) == 16 and tables.vm_pu.shape[1] == 907
    bus = tables.bus[int(np.nanargmax(tables.vuf_percent.max(axis=0)))]  # the most unbalanced bus
    when = tables.index[10]
    # Independently of RunData: the phase tables as written, and the phase farthest from 1 pu by hand.
    raw = {name: float(read_part(interval_table_path(sample_run, policy, name)).loc[when, bus])
           for name in INTERVAL_TABLES}
    deviation = {p: abs(raw[f"vm_{p}_pu"] - 1.0) for p in "abc"}
    phase = max(deviation, key=deviation.get)
    fig, _ = map_view(data, policy=policy, view={"cursor": when.isoformat()}, click=None, mode="vuf")
    row = _hover(fig, bus)
    assert row[1] == phase and row[2] == pytest.approx(raw["vuf_percent"], abs=1e-3)
    assert row[3] == pytest.approx(raw[f"vm_{phase}_pu"], abs=1e-4) and row[4] == pytest.approx(raw["v1_pu"], abs=1e-4)
    # The per-bus table the report reads (written from the solver's result, not from these tables) agrees.
    buses = pd.read_parquet(sample_run / "three_phase" / f"{policy}-buses.parquet")
    largest = tables.vuf_percent[:, list(tables.bus).index(bus)].max()
    assert buses.loc[int(bus), "vuf_max_percent"] == pytest.approx(largest, rel=1e-5)


@pytest.mark.slow
def test_in_chromium_unbalance_recolours_the_map_and_the_hover_names_the_worst_phase(sample_run: Path,
                                                                                      tmp_path: Path) -> None:
    playwright_sync = pytest.importorskip("playwright.sync_api")
    from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, BrowserLog, serving

    data = RunData(sample_run)
    tables = data.three_phase("no-control")
    assert tables is not None
    last = tables.index[-1]
    bus_col = int(np.nanargmax(tables.vuf_percent[-1]))
    bus = str(tables.bus[bus_col])
    expected = data.three_phase("no-control").at(last, pd.Index([bus]))
    assert expected is not None
    phase = "abc"[int(expected["worst"][0])]
    app = create_app(sample_run)
    shots = tmp_path / "shots"
    with serving(app.server) as base, playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(20_000)
            log = BrowserLog(base)
            log.attach(page)
            page.goto(base + "/")  # the map shows the first policy, no-control
            page.wait_for_selector("#ov-map .main-svg")
            page.wait_for_function("() => document.querySelector('#ov-caption').innerText.includes('VUF max')")
            assert page.is_visible("#ov-map-mode")
            bus_colours = """() => {
                const gd = document.querySelector('#ov-map .js-plotly-plot');
                const t = gd._fullData.find(d => d.name === 'buses');  // as drawn: typed arrays decoded
                return {title: t.marker.colorbar.title.text, colour: Array.from(t.marker.color)};
            }"""
            before = page.evaluate(bus_colours)
            assert before["title"] == "V1 [pu]"
            page.click("#ov-map-mode")
            page.get_by_text(MAP_MODES["vuf"], exact=True).click()
            page.wait_for_function("""() => {
                const gd = document.querySelector('#ov-map .js-plotly-plot');
                const t = gd && gd.data.find(d => d.name === 'buses');
                return t && t.marker.colorbar.title.text.includes('VUF');
            }""")
            after = page.evaluate(bus_colours)
            assert "EN 50160 limit 2 %" in after["title"]
            order = [str(b) for b in data.topology().buses.index]
            assert after["colour"][order.index(bus)] == pytest.approx(float(expected["vuf_percent"][0]), abs=1e-4)
            assert after["colour"] != before["colour"]
            legend = page.eval_on_selector("#ov-map .legend", "e => e.textContent")  # SVG
            assert "EN 50160 limit" in legend
            # Hover the most unbalanced bus with the mouse, where Plotly drew it.
            point = page.evaluate("""([bus]) => {
                const gd = document.querySelector('#ov-map .js-plotly-plot');
                const t = gd._fullData.find(d => d.name === 'buses');
                const i = Array.from(t.customdata).findIndex(c => c[0] === bus);
                const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
                const box = gd.getBoundingClientRect();
                return [box.left + xa._offset + xa.l2p(t.x[i]), box.top + ya._offset + ya.l2p(t.y[i])];
            }""", [bus])
            page.mouse.move(point[0], point[1])
            page.wait_for_selector("#ov-map .hoverlayer .hovertext")
            hover = page.eval_on_selector("#ov-map .hoverlayer .hovertext", "e => e.textContent")
            shots.mkdir(exist_ok=True)
            page.screenshot(path=str(shots / "overview-unbalance.png"), full_page=True)
            assert f"worst phase {phase}" in hover and "VUF" in hover, hover
            assert not log.problems, log.problems
        finally:
            browser.close()
