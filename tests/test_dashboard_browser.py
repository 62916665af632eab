"""End to end in headless Chromium (Playwright, Debian's /usr/bin/chromium): every page renders, live updates
arrive while a twin writes the run folder, an operator logs in and injects a fault and sees it applied, and
the browser logs no console errors, failed requests or off-machine requests."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from dashboards import create_app
from dashboards.synthetic import SyntheticTwin, radial_topology
from tests.browser_helpers import BrowserLog, chromium_page, serving

pytest.importorskip("playwright.sync_api")

PASSWORD = "op-secret"
REFRESH_S = 1.0
TWIN_PERIOD_S = 1.5  # slower than the refresh: every new interval redraws every open chart
PAGES = {  # nav label -> an element the page shows once its callbacks have run
    "Overview": "#glance-table",
    "Comparison": "#cmp-kpi-table",
    "Events": "#ev-table .table-wrap, #ev-table .notice",
    "Assets": "#as-fleet-table",
    "Settlement": "#st-verify",
    "Faults": "#fault-effect .main-svg",
    "Studies": "#sd-table-rows",
}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("browser")
    run, studies, shots = root / "run", root / "studies", root / "shots"
    studies.mkdir()
    pd.DataFrame({"variant_id": ["pv50", "pv50", "pv100", "pv100"], "policy": ["depin", "scada"] * 2,
                  "energy_cost_eur": [10.0, 12.0, 8.0, 11.0], "peak_import_mw": [0.3, 0.4, 0.2, 0.4]}
                 ).to_parquet(studies / "pv-sweep.parquet")
    twin = SyntheticTwin(run, radial_topology(30, seed=3), n_intervals=400, n_assets=8, seed=3)
    twin.write_start()
    twin.advance(8)
    twin.settle()
    stop = threading.Event()

    def run_twin() -> None:  # a paced twin: one interval (and its operator commands) per period
        while not stop.wait(TWIN_PERIOD_S):
            twin.advance(1)

    writer = threading.Thread(target=run_twin, name="synthetic-twin", daemon=True)
    writer.start()
    app = create_app(run, operator_password=PASSWORD, studies_dir=studies, refresh_s=REFRESH_S, stale_after_s=30)
    try:
        with serving(app.server) as base, chromium_page(base) as (page, log):
            yield {"page": page, "base": base, "log": log, "shots": shots, "run": run}
    finally:
        stop.set()
        writer.join(timeout=10)


def _goto(live: dict[str, Any], path: str) -> None:
    log: BrowserLog = live["log"]
    log.navigating = True
    live["page"].goto(live["base"] + path)
    live["page"].wait_for_selector("#run-state")
    log.navigating = False


def _intervals_done(page: Any) -> int:
    match = re.search(r"(\d[\d,]*)/[\d,]+ intervals", page.inner_text("#run-progress"))
    assert match, page.inner_text("#run-progress")
    return int(match.group(1).replace(",", ""))


def test_every_page_renders(live: dict[str, Any]) -> None:
    page = live["page"]
    _goto(live, "/")
    live["shots"].mkdir(exist_ok=True)
    for label, ready in PAGES.items():
        page.click(f"#nav-{label.lower()}")  # client-side routing, as an operator clicks
        page.wait_for_selector(ready)
        assert "active" in (page.get_attribute(f"#nav-{label.lower()}", "class") or "")
        if label == "Settlement":
            assert "VERIFIED" in page.inner_text("#st-verify").upper()
            page.wait_for_selector("#st-total")
            assert page.inner_text("#st-total").startswith("Statement of P00")
        page.screenshot(path=str(live["shots"] / f"{label.lower()}.png"), full_page=True)
    assert page.title().startswith("gridtwin")
    css = page.evaluate("getComputedStyle(document.querySelector('.topbar')).backgroundColor")
    assert css == "rgb(20, 33, 61)"  # our stylesheet, served from the app itself


def test_live_update_arrives(live: dict[str, Any]) -> None:
    page = live["page"]
    _goto(live, "/")
    page.wait_for_selector("#ov-map .main-svg")
    before, caption = _intervals_done(page), page.inner_text("#ov-caption")
    page.wait_for_function("""([n]) => {
        const m = document.querySelector('#run-progress').innerText.match(/([\\d,]+)\\/[\\d,]+ intervals/);
        return m && parseInt(m[1].replace(/,/g, '')) > n;
    }""", arg=[before], timeout=4 * REFRESH_S * 1000 + 2000)
    page.wait_for_function("([c]) => document.querySelector('#ov-caption').innerText !== c", arg=[caption],
                           timeout=4 * REFRESH_S * 1000)
    assert _intervals_done(page) > before
    assert page.inner_text("#run-state").lower() == "running"
    assert "recomputed every 10 s" in page.inner_text("#ov-kpi-lag")  # live KPIs may lag the sentences


def test_operator_logs_in_and_injects_a_fault(live: dict[str, Any]) -> None:
    page = live["page"]
    _goto(live, "/faults")
    page.wait_for_selector("#fault-login")
    assert page.query_selector("#fault-submit") is None and page.query_selector("#fault-review") is None
    page.click("#fault-login a")
    page.wait_for_selector("#login-password")
    page.fill("#login-operator", "alice")
    page.fill("#login-password", PASSWORD)
    live["log"].navigating = True
    with page.expect_navigation():
        page.click("#login-submit")
    page.wait_for_selector("#fault-review")
    live["log"].navigating = False
    assert "alice" in page.inner_text("#who")
    page.fill("#fault-duration", "2h")
    page.click("#fault-review")  # first a review of what the command will do, then a confirmation
    page.wait_for_selector("#op-fault-confirm .notice-warning")
    assert "Felt by: scada" in page.inner_text("#op-fault-confirm")
    assert page.is_visible("#fault-submit")
    page.click("#fault-submit")
    page.wait_for_selector("#op-fault-result .notice-ok")
    page.wait_for_selector("#fault-submit", state="hidden")  # the confirmation is used up
    assert "submitted backhaul_cut" in page.inner_text("#op-fault-result")
    submitted = time.monotonic()
    # The twin applies it at its next interval; the page shows that within two refreshes. The margin covers
    # the browser's own latency on a loaded 2-core machine (history and active-fault panes update separately).
    margin_s = 3.0
    page.wait_for_function("Array.from(document.querySelectorAll('#fault-history-table td'))"
                           ".some(td => td.innerText === 'applied')"
                           " && !document.querySelector('#fault-active').innerText.includes('pending')",
                           timeout=(TWIN_PERIOD_S + 2 * REFRESH_S + margin_s) * 1000)
    assert time.monotonic() - submitted < TWIN_PERIOD_S + 2 * REFRESH_S + margin_s
    assert "backhaul cut (operator alice): " in page.inner_text("#fault-active")
    assert "pending" not in page.inner_text("#fault-active")
    assert "alice" in page.inner_text("#fault-history-table")
    page.screenshot(path=str(live["shots"] / "faults-after.png"), full_page=True)
    page.click("#nav-overview")
    page.wait_for_function("document.querySelector('#ov-alarm-select')?.innerText.includes('controller offline')",
                           timeout=6 * REFRESH_S * 1000)
    alarms = page.inner_text("#ov-alarm-select")
    assert "autonomous fallback" in alarms and "backhaul cut" in alarms and "ACTIVE" in alarms.upper()


def test_browser_saw_no_errors(live: dict[str, Any]) -> None:
    assert live["log"].problems == []
