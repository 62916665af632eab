"""The live map in headless Chromium (Debian's /usr/bin/chromium): refreshes arrive as edits (figpatch) that the
browser applies itself, and the figure it ends with is the one the server draws for the same moment; a refresh
still on its way when the operator leaves the page, or comes back, gives no console error and no stale map.

A WSGI wrapper holds the map's answer back on demand, so "a refresh in flight while the page changes" happens
every run instead of once in a while."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dashboards import create_app
from dashboards.data import RunData
from dashboards.pages import map_view
from dashboards.synthetic import SyntheticTwin, radial_topology
from tests.browser_helpers import BrowserLog, chromium_page, serving

pytest.importorskip("playwright.sync_api")

REFRESH_S = 0.5


class HoldMapAnswers:
    """WSGI middleware: while ``hold`` is set, an answer of the map's callback waits until ``release`` is set;
    ``held`` is set when one is waiting. Every map answer's body is kept in ``answers``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.hold, self.held, self.release = threading.Event(), threading.Event(), threading.Event()
        self.answers: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") != "/_dash-update-component":
            return self.app(environ, start_response)
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        if b"ov-map-server.data" not in body:
            return self.app(environ, start_response)
        environ["HTTP_ACCEPT_ENCODING"] = "identity"  # read the answer as JSON (the app compresses otherwise)
        answer = b"".join(self.app(environ, start_response))
        self.answers.append(json.loads(answer)["response"]["ov-map-server"]["data"])
        if self.hold.is_set():
            self.held.set()
            self.release.wait(timeout=20)
        return [answer]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    run = tmp_path_factory.mktemp("map-updates") / "run"
    twin = SyntheticTwin(run, radial_topology(60, seed=5), n_intervals=200, n_assets=10, seed=5)
    twin.write_start()
    twin.advance(4)
    wsgi = HoldMapAnswers(create_app(run, refresh_s=REFRESH_S, stale_after_s=600).server)
    try:
        with serving(wsgi) as base, chromium_page(base, width=1300, height=900) as (page, log):
            yield {"page": page, "base": base, "log": log, "twin": twin, "run": run, "wsgi": wsgi}
    finally:
        wsgi.release.set()


def _shown_buses(page: Any) -> dict[str, Any]:
    """The buses trace as Plotly drew it (decoded arrays), and the map caption."""
    return page.evaluate("""() => {
        const gd = document.querySelector('#ov-map .js-plotly-plot');
        const t = (gd && gd._fullData || []).find(t => t.name === 'buses');
        if (!t) { return null; }
        return {color: Array.from(t.marker.color).map(Number), text: Array.from(t.text || []),
                names: gd._fullData.map(d => d.name), caption: document.querySelector('#ov-caption').innerText};
    }""")


def _drawn_buses(run: Any) -> dict[str, Any]:
    """The same, as the server draws it now for the latest interval (an independent redraw, no digests)."""
    fig, caption = map_view(RunData(run), policy=None, view=None, click=None)
    buses = next(t for t in fig.data if t.name == "buses")
    return {"color": [float(c) for c in buses.marker.color], "text": list(buses.text),
            "names": [t.name for t in fig.data], "caption": caption}


def _wait_for_interval(page: Any, twin: SyntheticTwin, k: int) -> None:
    when = twin.times[k].strftime("%Y-%m-%d %H:%M")
    page.wait_for_function("w => (document.querySelector('#ov-caption')?.innerText || '').includes(w)", arg=when)


def _open_overview(site: dict[str, Any], where: str) -> tuple[Any, SyntheticTwin, HoldMapAnswers, BrowserLog]:
    """Load the Overview afresh and wait until its map shows the latest interval."""
    page, twin, log = site["page"], site["twin"], site["log"]
    log.where, log.navigating = where, True
    page.goto(site["base"] + "/")
    page.wait_for_selector("#ov-map .main-svg")
    log.navigating = False
    _wait_for_interval(page, twin, twin.done - 1)
    return page, twin, site["wsgi"], log


def test_live_edits_applied_in_the_browser_give_the_servers_figure(site: dict[str, Any]) -> None:
    page, twin, wsgi, log = _open_overview(site, "edits")
    first_answers = len(wsgi.answers)
    for _ in range(3):  # three new intervals, each redrawn by edits to the figure the browser holds
        twin.advance(1)
        _wait_for_interval(page, twin, twin.done - 1)
    edits = [a for a in wsgi.answers[first_answers:] if "operations" in a]
    assert any(op["location"][:1] == ["data"] for a in edits for op in a["operations"]), "no refresh sent edits"
    time.sleep(2 * REFRESH_S)  # let the last refresh land
    shown, drawn = _shown_buses(page), _drawn_buses(site["run"])
    assert shown is not None and shown["names"] == drawn["names"] and shown["text"] == drawn["text"]
    assert shown["color"] == pytest.approx(drawn["color"], abs=1e-12)
    assert shown["caption"] == drawn["caption"]
    assert log.problems == []


def test_a_refresh_in_flight_when_the_operator_leaves_and_returns(site: dict[str, Any]) -> None:
    page, twin, wsgi, log = _open_overview(site, "in flight")
    # 1. the answer arrives after the page is gone
    wsgi.release.clear()
    wsgi.held.clear()
    wsgi.hold.set()
    twin.advance(1)
    assert wsgi.held.wait(timeout=10), "the map did not refresh"
    page.click("#nav-comparison")
    page.wait_for_selector("#cmp-kpi-table")
    wsgi.hold.clear()
    wsgi.release.set()
    time.sleep(3 * REFRESH_S)
    assert log.problems == []
    # 2. an answer computed for the old page arrives after the operator came back
    wsgi.release.clear()
    wsgi.held.clear()
    wsgi.hold.set()
    page.click("#nav-overview")
    assert wsgi.held.wait(timeout=10)
    wsgi.hold.clear()
    wsgi.release.set()
    twin.advance(1)
    time.sleep(4 * REFRESH_S)
    shown, drawn = _shown_buses(page), _drawn_buses(site["run"])
    assert shown is not None and shown["caption"] == drawn["caption"] and shown["text"] == drawn["text"]
    assert shown["color"] == pytest.approx(drawn["color"], abs=1e-12)
    assert log.problems == []
