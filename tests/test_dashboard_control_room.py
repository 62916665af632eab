"""Issue 17 in headless Chromium (Playwright, Debian's /usr/bin/chromium), point by point, on a paced synthetic
run with a scheduled control-centre outage, a DR event and ledgers: who wins and why on the Overview; events,
alarms (acknowledge, shelve) and shaded windows; one time range and cursor for every chart, kept across live
refreshes, with scrubber and playback; drill-down from a map click to an asset in kW; CSV export, the report
link and no upload button; studies by parameters; a dashboard started on an empty folder that waits for its
run. Screenshots of every step go to the test's ``shots`` folder."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from dashboards import create_app
from dashboards.synthetic import SyntheticTwin, radial_topology
from twin.commands import CommandChannel
from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, BrowserLog, serving

playwright_sync = pytest.importorskip("playwright.sync_api")

PASSWORD = "op-secret"
REFRESH_S = 1.0
TWIN_PERIOD_S = 0.8
CHARTS = ("cmp-head", "cmp-diff", "cmp-voltage", "cmp-cost", "cmp-payments")
#: A chart's x range in whole seconds (plotly writes a user's zoom as "2016-06-06 01:23:45.678", the server as ISO).
RANGE_JS = ("id => document.querySelector('#' + id + ' .js-plotly-plot').layout.xaxis.range"
            ".map(v => Math.round(Date.parse(String(v).replace(' ', 'T').slice(0, 19) + 'Z') / 1000))")


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("control-room")
    run, studies, shots = root / "run", root / "studies", root / "shots"
    studies.mkdir()
    shots.mkdir()
    pd.DataFrame({"variant_id": ["a1f3", "a1f3", "9c2e", "9c2e"], "label": ["x", "x", "y", "y"],
                  "policy": ["depin", "scada"] * 2, "energy_cost_eur": [10.0, 12.0, 8.0, 11.0],
                  "fleet.pv_penetration": [0.5, 0.5, 1.0, 1.0]}).to_parquet(studies / "pv-sweep.parquet")
    twin = SyntheticTwin(run, radial_topology(30, seed=3), n_intervals=400, n_assets=8, seed=3,
                         faults=[("control_centre_outage", "2016-06-06T01:00:00Z", "2016-06-06T02:00:00Z")],
                         dr_events=[("2016-06-06T02:00:00Z", "2016-06-06T03:00:00Z")])
    twin.write_start()
    twin.advance(16)
    twin.settle()
    (run / "report.html").write_text("<!doctype html><title>gridtwin report</title><h1>demo report</h1>")
    stop, writing = threading.Event(), threading.Event()

    def run_twin() -> None:  # a paced twin: one interval per period, while a test wants live refreshes
        while not stop.wait(TWIN_PERIOD_S):
            if writing.is_set():
                twin.advance(1)

    writer = threading.Thread(target=run_twin, name="synthetic-twin", daemon=True)
    writer.start()
    app = create_app(run, operator_password=PASSWORD, studies_dir=studies, refresh_s=REFRESH_S,
                     stale_after_s=3600)  # the twin pauses between the tests that need it writing
    with serving(app.server) as base, playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(20_000)
        log = BrowserLog(base)
        log.attach(page)
        encodings: dict[str, str] = {}
        page.on("response", lambda r: encodings.__setitem__(r.url.split("?")[0].rsplit("/", 1)[-1],
                                                            r.headers.get("content-encoding", "")))
        try:
            yield {"page": page, "context": context, "base": base, "log": log, "shots": shots, "run": run,
                   "encodings": encodings, "root": root, "browser": browser, "writing": writing}
        finally:
            browser.close()
            stop.set()
            writer.join(timeout=10)


@pytest.fixture(autouse=True)
def _name_the_test(room: dict[str, Any], request: pytest.FixtureRequest) -> Iterator[None]:
    room["log"].where = request.node.name  # a browser problem then names the test it happened in
    yield
    room["log"].where = ""


@contextlib.contextmanager
def _live(room: dict[str, Any]) -> Iterator[None]:
    """The twin writes an interval every TWIN_PERIOD_S inside this block only: every new interval makes every
    open chart redraw, which would slow the tests that need no live refresh."""
    room["writing"].set()
    try:
        yield
    finally:
        room["writing"].clear()


def _goto(room: dict[str, Any], path: str) -> None:
    room["log"].navigating = True
    room["page"].goto(room["base"] + path)
    room["page"].wait_for_selector("#run-state")
    room["log"].navigating = False


def _shot(room: dict[str, Any], name: str) -> None:
    room["page"].screenshot(path=str(room["shots"] / f"{name}.png"), full_page=True)


def _intervals_done(page: Any) -> int:
    match = re.search(r"(\d[\d,]*)/[\d,]+ intervals", page.inner_text("#run-progress"))
    assert match, page.inner_text("#run-progress")
    return int(match.group(1).replace(",", ""))


# -- 1 ------------------------------------------------------------------------------------------------------
def test_overview_says_who_wins_and_why(room: dict[str, Any]) -> None:
    page = room["page"]
    _goto(room, "/")
    page.wait_for_selector("#glance-table")
    page.wait_for_selector("#ov-driver-list")
    drivers = page.inner_text("#ov-driver-list")
    assert re.search(r"depin is [\d.,]+ EUR cheaper than scada", drivers)
    assert "Biggest driver" in drivers
    table = page.inner_text("#glance-table")
    for group in ("ENERGY", "GRID", "RESILIENCE", "DATA SOVEREIGNTY"):
        assert group in table.upper()
    assert re.search(r"[+-][\d.,]+ EUR (better|worse)", table)  # an absolute difference with its unit
    assert "✓ best" in table and "Controller uptime" in table
    cost_cell = page.inner_text("#glance-table td[data-kpi='energy_cost_eur'][data-policy='depin']")
    assert "EUR" in cost_cell and "%" not in cost_cell
    # The better value by meaning: depin is cheaper (lower cost wins) and never lost its controller (more uptime).
    for kpi in ("energy_cost_eur", "controller_uptime_percent"):
        assert "✓ best" in page.inner_text(f"#glance-table td[data-kpi='{kpi}'][data-policy='depin']"), kpi
        assert "✓ best" not in page.inner_text(f"#glance-table td[data-kpi='{kpi}'][data-policy='scada']"), kpi
    assert "scada lost control Mon 06 Jun 01:00–02:00 (control-centre outage)" in drivers  # the scheduled outage
    page.wait_for_function("(document.querySelector('#ov-map .js-plotly-plot')?.data || [])"
                           ".some(t => t.name === 'buses')")
    _shot(room, "1-overview")


# -- 2 ------------------------------------------------------------------------------------------------------
def test_event_log_and_show_on_map(room: dict[str, Any]) -> None:
    page = room["page"]
    page.click("#nav-events")
    page.wait_for_selector("#ev-log-table")
    text = page.inner_text("#ev-log-table")
    assert "controller offline" in text and "control centre outage" in text and "dr event" in text
    assert "2016-06-06 01:00 UTC" in text
    _shot(room, "2-events")
    row = page.locator("#ev-log-table tr", has_text="controller offline").first
    row.locator("a", has_text="show on map").click()
    page.wait_for_function("document.querySelector('#ov-caption')?.innerText.startsWith('scada at 2016-06-06 01:00')")
    assert "(latest)" not in page.inner_text("#tb-cursor")
    page.wait_for_function("document.querySelector('#ov-alarm-select')?.innerText.includes('controller offline')")
    assert "ACTIVE" in page.inner_text("#ov-alarm-select").upper()


def test_every_time_chart_shades_the_fault_and_dr_windows(room: dict[str, Any]) -> None:
    page = room["page"]
    page.click("#nav-comparison")
    page.wait_for_selector("#cmp-kpi-table")
    for chart in CHARTS:
        page.wait_for_selector(f"#{chart} .main-svg")
    for chart in CHARTS:
        names = page.evaluate("id => (document.querySelector('#' + id + ' .js-plotly-plot').layout.shapes || [])"
                              ".map(s => s.name)", chart)
        assert "window: control-centre outage" in names and "window: DR event" in names, (chart, names)
        assert "cursor" in names
    page.click("#nav-faults")
    page.wait_for_function("(document.querySelector('#fault-effect .js-plotly-plot')?.layout.shapes || [])"
                           ".some(s => s.name === 'window: control-centre outage')")


# -- 3 ------------------------------------------------------------------------------------------------------
def test_one_zoom_for_every_chart_kept_across_live_refreshes(room: dict[str, Any]) -> None:
    page = room["page"]
    page.click("#tb-live")
    page.click("#nav-comparison")
    for chart in CHARTS:
        page.wait_for_selector(f"#{chart} .main-svg")
    page.wait_for_function("([charts]) => charts.every(id => document.querySelector('#' + id + ' .js-plotly-plot')"
                           "?.data.length > 0)", arg=[list(CHARTS)])  # drawn, not the "loading…" placeholder
    before = page.evaluate(RANGE_JS, "cmp-head")
    box = page.locator("#cmp-head .nsewdrag").first.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.05, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.3, y + 2, steps=8)
    page.mouse.up()
    page.wait_for_function("document.querySelector('#tb-range').innerText.startsWith('zoom')")
    zoomed = page.evaluate(RANGE_JS, "cmp-head")
    assert zoomed != before
    page.wait_for_function("""([charts, want, js]) => charts.every(id => {
        const r = eval(js)(id);
        return r[0] === want[0] && r[1] === want[1]; })""", arg=[list(CHARTS), zoomed, RANGE_JS])
    _shot(room, "3-zoomed")
    done = _intervals_done(page)
    with _live(room):
        page.wait_for_function("""([n]) => {
            const m = document.querySelector('#run-progress').innerText.match(/([\\d,]+)\\/[\\d,]+ intervals/);
            return m && parseInt(m[1].replace(/,/g, '')) >= n + 2; }""", arg=[done], timeout=15_000)
        time.sleep(2 * REFRESH_S)  # two more refreshes redraw the charts with the new intervals
    for chart in CHARTS:
        assert page.evaluate(RANGE_JS, chart) == zoomed, chart
    page.click("#tb-reset")
    page.wait_for_function("document.querySelector('#tb-range').innerText === 'showing the whole run'")
    page.wait_for_function("([js, z]) => { const r = eval(js)('cmp-head'); return r[0] !== z[0] || r[1] !== z[1]; }",
                           arg=[RANGE_JS, zoomed])  # every chart back to the whole run


def test_map_zoom_and_bus_selection_survive_live_refreshes(room: dict[str, Any]) -> None:
    page = room["page"]
    _goto(room, "/")
    page.wait_for_selector("#ov-map .main-svg")
    _click_bus(page, room["run"])
    page.wait_for_selector("#ov-bus-head")
    bus = page.inner_text("#ov-bus-head").split(" — ")[0]
    page.wait_for_function("document.querySelector('#ov-map .js-plotly-plot').data"
                           ".some(t => String(t.name).startsWith('selected: bus'))")  # redrawn with the selection
    time.sleep(0.5)
    map_range = "() => Array.from(document.querySelector('#ov-map .js-plotly-plot')._fullLayout.xaxis.range).map(String)"
    whole = page.evaluate(map_range)
    box = page.locator("#ov-map .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.7, steps=8)
    page.mouse.up()
    page.wait_for_function("([js, w]) => eval(js)().join() !== w.join()", arg=[map_range, whole])
    zoomed = page.evaluate(map_range)
    caption = page.inner_text("#ov-caption")
    with _live(room):
        page.wait_for_function("([c]) => document.querySelector('#ov-caption').innerText !== c", arg=[caption],
                               timeout=15_000)  # a refresh redrew the map with a new interval
        time.sleep(REFRESH_S)
    assert page.evaluate(map_range) == zoomed
    assert page.inner_text("#ov-bus-head").startswith(bus)  # the selection too


def test_scrubber_steps_and_playback_move_one_cursor(room: dict[str, Any]) -> None:
    page = room["page"]
    page.click("#nav-comparison")
    page.wait_for_selector("#cmp-head .main-svg")
    page.click("#tb-back")
    page.wait_for_function("!document.querySelector('#tb-cursor').innerText.includes('latest')")
    cursor = page.inner_text("#tb-cursor").removeprefix("cursor ")
    stamp = pd.Timestamp(cursor.removesuffix(" UTC")).strftime("%Y-%m-%dT%H:%M")  # as the layout holds it
    cursor_js = ("id => String((document.querySelector('#' + id + ' .js-plotly-plot').layout.shapes || [])"
                 ".find(s => s.name === 'cursor')?.x0 || '')")
    page.wait_for_function("([charts, t]) => charts.every(id => String((document.querySelector('#' + id + "
                           "' .js-plotly-plot').layout.shapes || []).find(s => s.name === 'cursor')?.x0 || '')"
                           ".startsWith(t))", arg=[list(CHARTS), stamp])
    for chart in CHARTS:
        assert page.evaluate(cursor_js, chart).startswith(stamp)
    page.click("#tb-back")
    page.wait_for_function("([c]) => document.querySelector('#tb-cursor').innerText !== c", arg=[f"cursor {cursor}"])
    page.click("#tb-play")
    page.wait_for_function("document.querySelector('#tb-play').innerText.includes('pause')")
    first = page.inner_text("#tb-cursor")
    page.wait_for_function("([c]) => document.querySelector('#tb-cursor').innerText !== c", arg=[first],
                           timeout=5_000)  # playback advanced the cursor
    page.click("#tb-play")
    page.wait_for_function("document.querySelector('#tb-play').innerText.includes('play')")
    _shot(room, "3-cursor")
    page.click("#tb-live")
    page.wait_for_function("document.querySelector('#tb-cursor').innerText.includes('latest')")


# -- 2: operator actions -------------------------------------------------------------------------------------
def _login(room: dict[str, Any], next_path: str) -> None:
    page = room["page"]
    _goto(room, f"/login?next={next_path}")
    page.fill("#login-operator", "alice")
    page.fill("#login-password", PASSWORD)
    room["log"].navigating = True
    with page.expect_navigation():
        page.click("#login-submit")
    page.wait_for_selector("#run-state")
    room["log"].navigating = False


def test_operator_acknowledges_and_shelves_alarms(room: dict[str, Any]) -> None:
    page = room["page"]
    _goto(room, "/")
    assert page.is_disabled("#ov-ack")  # viewers see alarms, but cannot act on them
    _login(room, "/")
    page.wait_for_selector("#ov-alarm-select")
    page.locator("#nav-events").click()
    page.wait_for_selector("#ev-log-table")
    page.locator("#ev-log-table tr", has_text="controller offline").first.locator("a").click()
    page.wait_for_function("document.querySelector('#ov-alarm-select')?.innerText.includes('controller offline')")
    assert page.is_enabled("#ov-ack")
    page.locator("#ov-alarm-select label", has_text="controller offline").locator("input").check()
    page.click("#ov-ack")
    page.wait_for_selector("#op-alarm-result .notice-ok")
    assert "1 alarm(s) acknowledged by alice" in page.inner_text("#op-alarm-result")
    page.wait_for_function("document.querySelector('#ov-alarm-select').innerText.includes('acknowledged by alice')")
    _shot(room, "2-alarms-acknowledged")
    page.locator("#ov-alarm-select label", has_text="controller offline").locator("input").check()
    page.click("#ov-shelve")
    page.wait_for_function("document.querySelector('#alarm-count').innerText.includes('1 shelved')")
    assert "controller offline" not in page.inner_text("#ov-alarm-select")
    page.click("#ov-unshelve")
    page.wait_for_function("document.querySelector('#ov-alarm-select').innerText.includes('controller offline')")


def test_a_fault_no_policy_can_feel_is_refused_and_others_need_a_confirmation(room: dict[str, Any]) -> None:
    page = room["page"]
    _goto(room, "/faults")
    page.wait_for_selector("#fault-review")
    page.click("#fault-kind")
    page.click("text=clear all faults")
    page.click("#fault-review")
    page.wait_for_selector("#op-fault-confirm .notice-critical")
    assert "refused: no fault is active" in page.inner_text("#op-fault-confirm")
    assert not page.is_visible("#fault-submit")  # nothing to confirm
    page.click("#fault-kind")
    page.click("text=control-centre outage")
    page.fill("#fault-duration", "30min")
    page.click("#fault-review")
    page.wait_for_selector("#op-fault-confirm .notice-warning")
    assert "Felt by: scada" in page.inner_text("#op-fault-confirm")
    _shot(room, "2-fault-confirmation")
    page.click("#fault-cancel")
    page.wait_for_selector("#fault-submit", state="hidden")
    assert page.inner_text("#op-fault-result") == ""  # cancelled: nothing was sent


def test_a_fault_is_refused_in_the_browser_when_no_policy_of_the_run_can_feel_it(room: dict[str, Any],
                                                                                  tmp_path: Path) -> None:
    run = tmp_path / "agents-only"
    twin = SyntheticTwin(run, radial_topology(10, seed=1), policies=("depin",), n_intervals=8, n_assets=4)
    twin.write_start()
    twin.advance(2)
    with serving(create_app(run, operator_password=PASSWORD, refresh_s=REFRESH_S, stale_after_s=3600).server) as base:
        context = room["browser"].new_context(viewport={"width": 1400, "height": 1000})  # its own login cookie
        page = context.new_page()
        log = BrowserLog(base)
        log.attach(page)
        try:
            page.goto(base + "/login?next=/faults")
            page.fill("#login-operator", "alice")
            page.fill("#login-password", PASSWORD)
            with page.expect_navigation():
                page.click("#login-submit")
            page.wait_for_selector("#fault-review")
            page.click("#fault-kind")
            page.click("text=control-centre outage")
            page.click("#fault-review")
            page.wait_for_selector("#op-fault-confirm .notice-critical")
            assert page.inner_text("#op-fault-confirm") == (
                "refused: no policy of this run can feel a control-centre outage — a control-centre outage acts only "
                "on central policies; depin coordinates its agents over the mesh")
            assert not page.is_visible("#fault-submit")  # nothing to confirm, nothing sent
            page.screenshot(path=str(room["shots"] / "2-fault-refused.png"), full_page=True)
        finally:
            context.close()
        assert log.problems == []
    assert CommandChannel(run).take() == []


# -- 4 ------------------------------------------------------------------------------------------------------
def _click_bus(page: Any, run: Path) -> None:
    """Click the map marker of the bus the first asset sits on (plotly's own axis mapping gives the pixel)."""
    import json

    bus = str(json.loads((run / "meta.json").read_text())["assets"][0]["bus"])
    page.wait_for_function("document.querySelector('#ov-map .js-plotly-plot')?.data.some(t => t.name === 'buses')")
    page.locator("#ov-map").scroll_into_view_if_needed()
    point = page.evaluate("""bus => {
        const gd = document.querySelector('#ov-map .js-plotly-plot');
        const trace = gd._fullData.find(t => t.name === 'buses');  // decoded arrays (gd.data may hold base64)
        const i = Array.from(trace.customdata).indexOf(bus);
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
        return [box.left + xa._offset + xa.l2p(trace.x[i]), box.top + ya._offset + ya.l2p(trace.y[i])];
    }""", bus)
    page.mouse.move(point[0], point[1])
    page.mouse.click(point[0], point[1])


def test_a_map_click_drills_down_to_an_asset_in_kw(room: dict[str, Any]) -> None:
    page = room["page"]
    _goto(room, "/")
    page.wait_for_selector("#ov-map .main-svg")
    page.wait_for_function("(document.querySelector('#ov-map .js-plotly-plot').data || []).some(t => t.name === 'buses')")
    names = page.evaluate("document.querySelector('#ov-map .js-plotly-plot').data.map(t => t.name)")
    assert {"battery", "pv", "ev charger", "flex load"} & set(names)  # DER locations on the map
    _click_bus(page, room["run"])
    page.wait_for_selector("#ov-bus-assets")
    assert page.inner_text("#ov-bus-head").startswith("Bus ")
    assert " kW" in page.inner_text("#ov-bus-assets")
    page.wait_for_selector("#ov-bus-trend .main-svg")
    _shot(room, "4-bus")
    link = page.locator("#ov-bus-assets a").first
    asset = link.inner_text()
    link.click()
    page.wait_for_selector("#as-fleet-table")
    page.wait_for_function("([a]) => document.querySelector('#as-figure .gtitle')?.textContent.startsWith(a)",
                           arg=[asset])
    layout = page.evaluate("document.querySelector('#as-figure .js-plotly-plot').layout")
    assert layout["yaxis"]["title"]["text"] == "kW" and str(layout["xaxis"]["range"][0]).startswith("2016-06-06")
    label = page.inner_text("#as-page-label")
    assert label == "rows 1–8 of 8"
    page.fill("#as-filter", "battery")
    page.press("#as-filter", "Enter")
    page.wait_for_function("document.querySelector('#as-page-label').innerText === 'rows 1–2 of 2'")
    _shot(room, "4-assets")
    import json

    kinds = {}
    for a in json.loads((room["run"] / "meta.json").read_text())["assets"]:
        kinds.setdefault(a["kind"], a["asset_id"])
    assert set(kinds) == {"battery", "pv", "ev_charger", "flex_load"}
    for kind, asset in kinds.items():  # every kind over the run's own days, in kW (kWh for a battery's SOC)
        _goto(room, f"/assets?policy=scada&asset={asset}")
        page.wait_for_function("([a]) => document.querySelector('#as-figure .gtitle')?.textContent.startsWith(a)",
                               arg=[asset])
        layout = page.evaluate("document.querySelector('#as-figure .js-plotly-plot').layout")
        assert layout["yaxis"]["title"]["text"] == "kW", kind
        assert layout["yaxis2"]["title"]["text"] == "kWh", kind
        assert [str(t)[:10] for t in layout["xaxis"]["range"]] == ["2016-06-06", "2016-06-06"], kind
        texts = page.locator("#as-figure .annotation-text").all_text_contents()
        assert ("no storage" in texts) == (kind != "battery"), kind


def test_the_fleet_pages(room: dict[str, Any], tmp_path: Path) -> None:
    run = tmp_path / "big-fleet"
    twin = SyntheticTwin(run, radial_topology(20, seed=2), n_intervals=8, n_assets=60, seed=2)
    twin.write_start()
    twin.advance(8)
    with serving(create_app(run).server) as base:
        page = room["context"].new_page()
        try:
            page.goto(base + "/assets")
            page.wait_for_function("document.querySelector('#as-page-label')?.innerText === 'rows 1–25 of 60'")
            page.click("#as-next")
            page.wait_for_function("document.querySelector('#as-page-label').innerText === 'rows 26–50 of 60'")
            page.click("#as-next")
            page.wait_for_function("document.querySelector('#as-page-label').innerText === 'rows 51–60 of 60'")
            assert page.locator("#as-fleet-table tbody tr").count() == 10
        finally:
            page.close()


# -- 5 ------------------------------------------------------------------------------------------------------
def test_csv_exports_download_and_the_report_is_linked(room: dict[str, Any]) -> None:
    page = room["page"]
    _goto(room, "/")
    page.wait_for_selector("#ov-kpi-csv")
    with page.expect_download() as download:
        page.click("#ov-kpi-csv")
    text = Path(download.value.path()).read_text()
    assert download.value.suggested_filename == "synthetic-kpis.csv" and text.startswith("kpi,label,depin,scada")
    with room["context"].expect_page() as popup:
        page.click("#ov-report-link")
    report = popup.value
    report.wait_for_load_state()
    assert report.title() == "gridtwin report"
    report.close()
    page.click("#nav-settlement")
    page.wait_for_selector("#st-total")
    with page.expect_download() as download:
        page.click("#st-csv")
    assert Path(download.value.path()).read_text().startswith("seq,")
    accounts = page.locator("#st-balance-table tbody tr td:first-child").all_inner_texts()
    assert accounts[0] == "operator" and accounts[1:] == sorted(accounts[1:], key=lambda a: int(a[-2:]))
    page.click("#nav-assets")
    page.wait_for_selector("#as-fleet-table")
    with page.expect_download() as download:
        page.click("#as-fleet-csv")
    assert "P now [kW]" in Path(download.value.path()).read_text().splitlines()[0]
    with page.expect_download() as download:
        page.click("#as-series-asset_p_mw")  # a chart's series: one row per interval, one column per asset
    rows = Path(download.value.path()).read_text().splitlines()
    assert download.value.suggested_filename == "synthetic-scada-asset_p_mw.csv"
    assert rows[0].split(",")[0] == "time" and rows[1].startswith("2016-06-06T00:00:00Z,")
    page.click("#nav-comparison")
    page.wait_for_selector("#cmp-series-0")
    with page.expect_download() as download:
        page.click("#cmp-series-0")
    header = Path(download.value.path()).read_text().splitlines()[0].split(",")
    assert header[0] == "time" and "p_head_mw" in header and "cost_eur" in header


def test_no_upload_button_anywhere_and_static_files_are_compressed(room: dict[str, Any]) -> None:
    page = room["page"]
    _goto(room, "/")
    checked = 0
    for label in ("overview", "comparison", "assets", "settlement", "faults", "studies"):
        page.click(f"#nav-{label}")
        page.wait_for_selector("#page .js-plotly-plot .main-svg")
        time.sleep(0.5)
        contexts = page.evaluate("Array.from(document.querySelectorAll('#page .js-plotly-plot'))"
                                 ".map(gd => [gd._context.showSendToCloud, gd._context.plotlyServerURL])")
        assert contexts and all(c == [False, ""] for c in contexts), (label, contexts)
        page.hover("#page .js-plotly-plot .nsewdrag")
        assert page.locator("[data-title^='Share chart'], [data-title^='Edit in Chart Studio']").count() == 0
        assert page.locator(".modebar-btn[data-title^='Download plot']").count() >= 1  # PNG export stays
        checked += len(contexts)
    assert checked >= 10
    assert room["encodings"]["plotly.min.js"] in ("br", "gzip")


def test_studies_are_labelled_by_their_parameters(room: dict[str, Any]) -> None:
    page = room["page"]
    page.click("#nav-studies")
    page.wait_for_selector("#sd-table-rows")
    page.wait_for_selector("#sd-figure .xtick text")
    ticks = page.locator("#sd-figure .xtick text").all_text_contents()
    assert ticks == ["PV penetration (fleet)=0.5", "PV penetration (fleet)=1"]
    headers = page.locator("#sd-table-rows th").all_inner_texts()
    assert "Energy cost [EUR]" in headers and "variant_id" not in headers
    assert not page.is_visible("#timebar")  # no time axis here
    _shot(room, "5-studies")


# -- 5: an empty folder ---------------------------------------------------------------------------------------
def test_the_dashboard_waits_for_a_run_in_an_empty_folder(room: dict[str, Any], tmp_path: Path) -> None:
    run = tmp_path / "later"
    with serving(create_app(run, refresh_s=REFRESH_S).server) as base:
        page = room["context"].new_page()
        log = BrowserLog(base)
        log.attach(page)
        try:
            page.goto(base + "/")
            page.wait_for_selector("text=waiting for the run in")
            assert page.inner_text("#run-state") == "WAITING"
            twin = SyntheticTwin(run, radial_topology(10), n_intervals=8, n_assets=4, name="late-run")
            twin.write_start()
            twin.advance(4)
            page.wait_for_selector("#glance-table", timeout=30_000)  # no reload needed
            page.wait_for_function("document.querySelector('#run-name').innerText === 'late-run'")
            assert page.query_selector("text=waiting for the run in") is None
            page.wait_for_selector("#ov-map .main-svg")
            page.screenshot(path=str(room["shots"] / "5-waited.png"), full_page=True)
        finally:
            page.close()
        assert log.problems == []


def test_browser_saw_no_errors(room: dict[str, Any]) -> None:
    assert room["log"].problems == []
