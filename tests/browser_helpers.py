"""Headless Chromium (Playwright, Debian's /usr/bin/chromium) against a dashboard served on loopback, and a log
of everything the browser complained about (console errors and warnings, page errors, failed, 4xx/5xx and
off-machine requests)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


class QuietHandler(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:  # noqa: A002 (werkzeug's signature)
        pass


class BrowserLog:
    """Console errors/warnings, page errors, failed and off-machine requests (aborts during our own full-page
    navigations are expected: the old page's polls are cancelled)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.problems: list[str] = []
        self.navigating = False
        self.expected_statuses: set[int] = set()
        #: the test running now (set by the test module), so a problem names where it happened
        self.where = ""

    def add(self, problem: str) -> None:
        self.problems.append(f"[{self.where}] {problem}" if self.where else problem)

    def attach(self, page: Any) -> None:
        page.on("console", lambda m: self.add(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: self.add(f"page error: {e}"))
        page.on("requestfailed", self._failed)
        page.on("response", lambda r: self.add(f"HTTP {r.status} {r.url}")
                if r.status >= 400 and r.status not in self.expected_statuses else None)
        page.on("request", lambda r: None if r.url.startswith((self.base, "data:", "blob:"))
                else self.add(f"off-machine request {r.url}"))

    def _failed(self, request: Any) -> None:
        if self.navigating and request.failure == "net::ERR_ABORTED":
            return
        if "/export/" in request.url and request.failure == "net::ERR_ABORTED":
            return  # a download: Chromium hands the response to its download manager and aborts the request
        self.add(f"request failed {request.url}: {request.failure}")


@contextlib.contextmanager
def serving(wsgi_app: Any) -> Iterator[str]:
    """Serve ``wsgi_app`` on a free loopback port; yields the base URL."""
    server = make_server("127.0.0.1", 0, wsgi_app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="dash", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@contextlib.contextmanager
def chromium_page(base: str, *, width: int = 1400, height: int = 1000,
                  timeout_ms: int = 15_000) -> Iterator[tuple[Any, BrowserLog]]:
    """A headless Chromium page for the dashboard at ``base``, and the log of what it complains about."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(timeout_ms)
            log = BrowserLog(base)
            log.attach(page)
            yield page, log
        finally:
            browser.close()
