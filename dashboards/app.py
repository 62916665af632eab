"""The Dash operator app: ``create_app(run_dir, ...)`` builds one app (no global registries, no module state);
``serve(run_dir, ...)`` runs it. The shell (top bar, time bar, stores) is wired here; each page registers its
own callbacks (``dashboards.pages``). Pages are routed with ``dcc.Location``; a ``dcc.Interval`` polls the run
folder and page callbacks refresh only when something in it changed. Never runs a power flow.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import dash
from dash import Input, Output, State, dcc, html

from dashboards import pages, timebar
from dashboards.auth import OperatorAuth
from dashboards.data import RunData, age_text
from dashboards.events import run_events
from dashboards.export import install_exports
from dashboards.pages.common import text
from dashboards.static import install_static
from dashboards.timeline import TimeView

__all__ = ["create_app", "serve"]

_ASSETS = Path(__file__).resolve().parent / "assets"
_log = logging.getLogger(__name__)


def create_app(
    run_dir: Path,
    *,
    operator_password: str | None = None,
    studies_dir: Path | None = None,
    refresh_s: float = 5.0,
    stale_after_s: float = 60.0,
    secret_key: bytes | None = None,
    warm: bool = False,
    views_need_login: bool = False,
) -> dash.Dash:
    """The operator dashboard of the run folder ``run_dir``.

    ``run_dir`` may be empty, or not exist yet inside an existing folder: the dashboard then waits for the
    run (``gridtwin run --out RUN``) and shows it as it starts. ``operator_password``: enables operator
    actions (fault injection, alarm acknowledgement) for whoever logs in with it; None keeps the dashboard
    read-only. ``studies_dir``: a folder of study KPI tables (``*.parquet``) for the Studies page.
    ``refresh_s``: how often the browser polls the run folder. ``stale_after_s``: a running twin that has not
    written for this long raises a stale-telemetry alarm. ``secret_key`` signs session cookies (random per app
    when None, so logins end when the dashboard restarts). ``warm``: read the run's tables in a background
    thread from the start, so the first page does not wait for them. ``views_need_login``: every page and
    callback needs the operator login too (dashboards.auth; it needs ``operator_password``).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run_dir={str(run_dir)!r}: not a folder (expected a run folder with meta.json)")
    if not run_dir.exists() and not run_dir.parent.is_dir():
        raise ValueError(f"run_dir={str(run_dir)!r}: not a folder, and its parent {str(run_dir.parent)!r} does not "
                         "exist either (give a run folder, or an empty one to wait for a run)")
    if studies_dir is not None and not Path(studies_dir).is_dir():
        raise ValueError(f"studies_dir={str(studies_dir)!r}: not a folder")
    if not refresh_s > 0:
        raise ValueError(f"refresh_s={refresh_s!r}: must be positive")
    data = RunData(run_dir, studies_dir=Path(studies_dir) if studies_dir is not None else None)
    auth = OperatorAuth(operator_password, views_need_login=views_need_login)
    app = dash.Dash(
        __name__,
        assets_folder=str(_ASSETS),
        serve_locally=True,
        suppress_callback_exceptions=True,  # pages mount their components after the first render
        title=f"gridtwin — {data.run_name()}",
        update_title=None,
    )
    if secret_key is not None:
        app.server.secret_key = secret_key
    install_static(app.server)
    auth.install(app.server, callback_path=f"{app.config.routes_pathname_prefix}_dash-update-component",
                 callback_spec=lambda output: _server_callback(app, output))
    # Dash answers a request for a script it does not ship with an exception (a 500): it is a 404.
    for missing in (dash.exceptions.DependencyException, dash.exceptions.InvalidResourceError):
        app.server.register_error_handler(missing, _not_found)
    context = pages.Context(data=data, auth=auth, stale_after_s=stale_after_s)
    install_exports(app.server, data, fleet=pages.fleet_frame, events=run_events)
    app.layout = lambda: _shell(data, refresh_s=refresh_s)
    if warm:
        threading.Thread(target=_warm, args=(data,), name="gridtwin-dashboard-warm", daemon=True).start()
    _register_shell(app, data, auth, stale_after_s=stale_after_s)
    timebar.register(app)
    pages.register_pages(app, context)
    return app


def _warm(data: RunData) -> None:
    try:
        data.warm()
    except Exception:  # noqa: BLE001 — a page reads the same tables again and shows what is wrong there
        _log.exception("reading the run's tables in the background failed")


def _not_found(error: Exception) -> Any:
    import flask

    return flask.Response('{"error": "no such resource"}', status=404, mimetype="application/json")


def _shell(data: RunData, *, refresh_s: float) -> html.Div:
    return html.Div([
        dcc.Location(id="url", refresh=False),
        dcc.Interval(id="tick", interval=int(refresh_s * 1000), n_intervals=0),
        dcc.Store(id="run-version", data=None),
        dcc.Store(id="run-meta", data=None),
        html.Header([
            html.Div([html.Span("gridtwin", className="brand"), html.Span(data.run_name(), className="run-name",
                                                                          id="run-name")],
                     className="brand-box"),
            html.Nav(id="nav", className="nav"),
            html.Div(id="status-line", className="status-line"),
            html.Div(id="who", className="who"),
        ], className="topbar"),
        timebar.layout(),
        html.Main(id="page", className="page"),
    ])


def _nav(path: str) -> list[Any]:
    return [dcc.Link(label, href=href, className="nav-link active" if href == path else "nav-link",
                     id=f"nav-{label.lower()}") for href, label in pages.PAGES]


def _who(auth: OperatorAuth) -> Any:
    operator = auth.current_operator()
    if operator:
        return html.Form([html.Span(f"operator: {operator}", className="who-name"),
                          html.Button("log out", type="submit", className="link-button", id="logout")],
                         action=auth.logout_path, method="POST", className="who-form")
    if auth.enabled:
        return dcc.Link("operator login", href="/login", className="nav-link", id="login-link")
    return html.Span("read-only", className="muted")


def _status_line(data: RunData) -> Any:
    status = data.status()
    state = str(status.get("state", "unknown"))
    if not data.meta():
        state = "waiting"
    done, total = status.get("done"), status.get("total")
    progress = f" · {done:,}/{total:,} intervals" if isinstance(done, int) and isinstance(total, int) else ""
    age = data.status_age_s(status)
    spans = [html.Span(state, className=f"badge badge-state-{state}", id="run-state"),
             html.Span(f"{progress} · updated {age_text(age)}", id="run-progress")]
    live = status.get("live")
    if isinstance(live, dict):  # a live run's backlog (twin.live.live_run): keeping up, or how far behind
        behind, queue, gaps = live.get("behind_s"), live.get("ingest_queue"), live.get("seq_missing")
        lag = f"behind {behind:g} s" if isinstance(behind, (int, float)) and behind > 0 else "keeping up"
        spans.append(html.Span(f" · live: {lag}, ingest queue {queue}, telemetry gaps {gaps}", id="run-backlog",
                               className="badge badge-warning" if lag != "keeping up" else None))
    return spans


def _register_shell(app: dash.Dash, data: RunData, auth: OperatorAuth, *, stale_after_s: float) -> None:
    @app.callback(Output("page", "children"), Output("nav", "children"), Output("who", "children"),
                  Output("timebar", "style"), Output("run-name", "children"),
                  Input("url", "pathname"), Input("url", "search"), Input("run-meta", "data"))
    def route(pathname: Any, search: Any, _meta: Any) -> tuple[Any, ...]:
        path = text(pathname) or "/"
        query = {k: v[0] for k, v in parse_qs((text(search) or "").lstrip("?")).items() if v}
        layout = pages.page_layout(path, data, operator=auth.current_operator(), auth_enabled=auth.enabled,
                                   query=query)
        hidden = path in pages.TIMELESS or not any(path == href for href, _ in pages.PAGES)
        return layout, _nav(path), _who(auth), {"display": "none"} if hidden else {}, data.run_name()

    @app.callback(Output("time-view", "data", allow_duplicate=True), Input("url", "search"),
                  State("time-view", "data"), prevent_initial_call="initial_duplicate")
    def cursor_from_link(search: Any, view: Any) -> Any:
        """``?at=<time>`` (the event log's "show on map") puts the cursor there."""
        query = parse_qs((text(search) or "").lstrip("?"))
        at = TimeView.from_store({"cursor": (query.get("at") or [None])[0]}).cursor
        return dash.no_update if at is None else TimeView.from_store(view).with_(cursor=at, playing=False).to_store()

    @app.callback(Output("run-version", "data"), Output("status-line", "children"), Output("run-axis", "data"),
                  Output("run-meta", "data"),
                  Input("tick", "n_intervals"), State("run-version", "data"), State("run-axis", "data"),
                  State("run-meta", "data"))
    def poll(_n: Any, current: Any, axis: Any, meta: Any) -> tuple[Any, ...]:
        # A digest, not the list itself: the browser holds numbers as doubles, so nanosecond mtimes would come
        # back changed and every poll would redraw every page (costing a second and the user's view).
        version = hashlib.sha256(json.dumps(data.version(stale_after_s=stale_after_s), default=str).encode()
                                 ).hexdigest()[:32]
        new_axis = data.axis().to_store()
        new_meta = str(data.meta().get("created_utc")) if data.meta() else None
        return ((dash.no_update if version == current else version), _status_line(data),
                dash.no_update if new_axis == axis else new_axis, dash.no_update if new_meta == meta else new_meta)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(
    run_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8050,
    operator_password: str | None = None,
    studies_dir: Path | None = None,
    refresh_s: float = 5.0,
    stale_after_s: float = 60.0,
    views_need_login: bool | None = None,
) -> None:
    """Run the dashboard of ``run_dir`` until interrupted (Flask's threaded server; for the CLI).
    ``views_need_login`` None: only when ``host`` is not a loopback address (participants' meter data is not
    for whoever reaches the port)."""
    if not 0 < port < 65536:
        raise ValueError(f"port={port!r}: must be 1..65535")
    gated = not _is_loopback(host) if views_need_login is None else views_need_login
    if gated and not operator_password:
        why = "--login-to-view" if views_need_login else f"--host={host!r} is not loopback"
        raise ValueError(f"every view needs the operator login ({why}), and GRIDTWIN_OPERATOR_PASSWORD is not set: "
                         "set it, or pass --open-view to serve the run to anyone who reaches the port")
    app = create_app(run_dir, operator_password=operator_password, studies_dir=studies_dir, refresh_s=refresh_s,
                     stale_after_s=stale_after_s, warm=True, views_need_login=gated)
    if operator_password and not _is_loopback(host):
        _log.warning("serving operator logins over plain HTTP on %s: put the dashboard behind TLS", host)
    app.run(host=host, port=port, debug=False)


def _server_callback(app: Dash, output: str) -> Any:
    """The app's server-side callback for an output string, or None: a browser-side (clientside) callback has no
    server function, so a request naming one is malformed (400), not a server error."""
    spec = app.callback_map.get(output)
    return spec if spec is not None and "callback" in spec else None
