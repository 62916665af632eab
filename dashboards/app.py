"""The Dash operator app: ``create_app(run_dir, ...)`` builds one app (no global registries, no module state);
``serve(run_dir, ...)`` runs it. Pages are routed with ``dcc.Location``; a ``dcc.Interval`` polls the run
folder and page callbacks refresh only when something in it changed. Never runs a power flow.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import dash
import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html

from dashboards import pages
from dashboards.auth import OperatorAuth
from dashboards.components import alarm_list, notice
from dashboards.data import RunData, age_text

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
) -> dash.Dash:
    """The operator dashboard of the run folder ``run_dir``.

    ``operator_password``: enables operator actions (fault injection) for whoever logs in with it; None keeps
    the dashboard read-only. ``studies_dir``: a folder of study KPI tables (``*.parquet``) for the Studies
    page. ``refresh_s``: how often the browser polls the run folder. ``stale_after_s``: a running twin that
    has not written for this long raises a stale-telemetry alarm. ``secret_key`` signs session cookies
    (random per app when None, so logins end when the dashboard restarts).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run_dir={str(run_dir)!r}: not a folder (expected a run folder with meta.json)")
    if studies_dir is not None and not Path(studies_dir).is_dir():
        raise ValueError(f"studies_dir={str(studies_dir)!r}: not a folder")
    if not refresh_s > 0:
        raise ValueError(f"refresh_s={refresh_s!r}: must be positive")
    data = RunData(run_dir, studies_dir=Path(studies_dir) if studies_dir is not None else None)
    auth = OperatorAuth(operator_password)
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
    auth.install(app.server, callback_path=f"{app.config.routes_pathname_prefix}_dash-update-component",
                 callback_spec=app.callback_map.get)
    # Dash answers a request for a script it does not ship with an exception (a 500): it is a 404.
    for missing in (dash.exceptions.DependencyException, dash.exceptions.InvalidResourceError):
        app.server.register_error_handler(missing, _not_found)
    app.layout = lambda: _shell(data, refresh_s=refresh_s)
    _register_callbacks(app, data, auth, stale_after_s=stale_after_s)
    return app


def _not_found(error: Exception) -> Any:
    import flask

    return flask.Response('{"error": "no such resource"}', status=404, mimetype="application/json")


def _shell(data: RunData, *, refresh_s: float) -> html.Div:
    return html.Div([
        dcc.Location(id="url", refresh=False),
        dcc.Interval(id="tick", interval=int(refresh_s * 1000), n_intervals=0),
        dcc.Store(id="run-version", data=None),
        html.Header([
            html.Div([html.Span("gridtwin", className="brand"), html.Span(data.run_name(), className="run-name")],
                     className="brand-box"),
            html.Nav(id="nav", className="nav"),
            html.Div(id="status-line", className="status-line"),
            html.Div(id="who", className="who"),
        ], className="topbar"),
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
    done, total = status.get("done"), status.get("total")
    progress = f" · {done:,}/{total:,} intervals" if isinstance(done, int) and isinstance(total, int) else ""
    age = data.status_age_s(status)
    return [html.Span(state, className=f"badge badge-state-{state}", id="run-state"),
            html.Span(f"{progress} · updated {age_text(age)}", id="run-progress")]


def _text(value: Any) -> str | None:
    """A control value as the string it should be; anything else (a crafted request) counts as unset."""
    return value if isinstance(value, str) else None


def _register_callbacks(app: dash.Dash, data: RunData, auth: OperatorAuth, *, stale_after_s: float) -> None:
    @app.callback(Output("page", "children"), Output("nav", "children"), Output("who", "children"),
                  Input("url", "pathname"), State("url", "search"))
    def route(pathname: str | None, search: str | None) -> tuple[Any, Any, Any]:
        path = _text(pathname) or "/"
        query = {k: v[0] for k, v in parse_qs((_text(search) or "").lstrip("?")).items() if v}
        layout = pages.page_layout(path, data, operator=auth.current_operator(), auth_enabled=auth.enabled,
                                   query=query)
        return layout, _nav(path), _who(auth)

    @app.callback(Output("run-version", "data"), Output("status-line", "children"),
                  Input("tick", "n_intervals"), State("run-version", "data"))
    def poll(_n: int | None, current: Any) -> tuple[Any, Any]:
        version = data.version(stale_after_s=stale_after_s)
        return (dash.no_update if version == current else version), _status_line(data)

    @app.callback(Output("ov-map", "figure"), Output("ov-caption", "children"), Output("ov-alarms", "children"),
                  Output("ov-cards", "children"),
                  Input("run-version", "data"), Input("ov-policy", "value"), Input("ov-moment", "value"))
    def overview(_version: Any, policy: str | None, moment: str | None) -> tuple[go.Figure, str, Any, Any]:
        view = pages.overview_view(data, policy=_text(policy), moment=_text(moment) or "latest",
                                   stale_after_s=stale_after_s)
        return view.figure, view.caption, alarm_list(view.alarms), view.cards

    @app.callback(Output("cmp-head", "figure"), Output("cmp-voltage", "figure"), Output("cmp-cost", "figure"),
                  Output("cmp-payments", "figure"), Output("cmp-kpis", "children"), Input("run-version", "data"))
    def comparison(_version: Any) -> tuple[Any, ...]:
        figs = pages.comparison_figures(data)
        return figs["head"], figs["voltage"], figs["cost"], figs["payments"], figs["kpis"]

    @app.callback(Output("as-asset", "options"), Output("as-fleet", "children"),
                  Input("run-version", "data"), Input("as-policy", "value"))
    def asset_list(_version: Any, policy: str | None) -> tuple[Any, Any]:
        return pages.asset_options(data, _text(policy)), pages.fleet_table(data, _text(policy))

    @app.callback(Output("as-figure", "figure"),
                  Input("run-version", "data"), Input("as-policy", "value"), Input("as-asset", "value"))
    def asset(_version: Any, policy: str | None, asset_id: str | None) -> go.Figure:
        return pages.asset_view(data, _text(policy), _text(asset_id))

    @app.callback(Output("st-status", "children"), Output("st-balances", "children"),
                  Output("st-payments", "figure"), Output("st-participant", "options"),
                  Input("run-version", "data"), Input("st-ledger", "value"))
    def settlement(_version: Any, label: str | None) -> tuple[Any, ...]:
        return pages.settlement_status(data, _text(label))

    @app.callback(Output("st-participant", "value"), Input("st-participant", "options"),
                  State("st-participant", "value"))
    def default_participant(options: list[dict[str, str]] | None, current: str | None) -> Any:
        values = [o["value"] for o in options if isinstance(o, dict) and "value" in o] if isinstance(options, list) else []
        if current in values:
            return dash.no_update
        return values[0] if values else None

    @app.callback(Output("st-statement", "children"), Input("run-version", "data"), Input("st-ledger", "value"),
                  Input("st-participant", "value"))
    def statement(_version: Any, label: str | None, participant: str | None) -> Any:
        return pages.statement_view(data, _text(label), _text(participant))

    @app.callback(Output("fault-active", "children"), Output("fault-effect", "figure"),
                  Output("fault-history", "children"), Input("run-version", "data"))
    def faults(_version: Any) -> tuple[Any, ...]:
        return pages.faults_view(data)

    # Operator action: the output id starts with "op-", so auth's guard lets only an operator reach it.
    @app.callback(Output("op-fault-result", "children"), Input("fault-submit", "n_clicks"),
                  State("fault-kind", "value"), State("fault-duration", "value"), State("fault-participant", "value"),
                  prevent_initial_call=True)
    def inject(_clicks: int | None, kind: Any, duration: Any, participant: Any) -> Any:
        operator = auth.current_operator()
        if operator is None:  # the guard already refused; never act without an operator
            return notice("operator login required", kind="critical")
        ok, message = pages.submit_fault(data, operator=operator, kind=_text(kind), duration=_text(duration),
                                         participant=_text(participant))
        if ok:
            _log.info("operator %s: %s", operator, message)
        return notice(message, kind="ok" if ok else "critical")

    @app.callback(Output("sd-kpi", "options"), Output("sd-kpi", "value"), Input("sd-file", "value"))
    def study_kpis(name: str | None) -> tuple[Any, Any]:
        return pages.study_kpi_options(data, _text(name))

    @app.callback(Output("sd-figure", "figure"), Output("sd-table", "children"),
                  Input("sd-file", "value"), Input("sd-kpi", "value"))
    def study(name: str | None, kpi: str | None) -> tuple[Any, Any]:
        return pages.study_view(data, _text(name), _text(kpi))


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
) -> None:
    """Run the dashboard of ``run_dir`` until interrupted (Flask's threaded server; for the CLI)."""
    if not 0 < port < 65536:
        raise ValueError(f"port={port!r}: must be 1..65535")
    app = create_app(run_dir, operator_password=operator_password, studies_dir=studies_dir, refresh_s=refresh_s,
                     stale_after_s=stale_after_s)
    if operator_password and not _is_loopback(host):
        _log.warning("serving operator logins over plain HTTP on %s: put the dashboard behind TLS", host)
    app.run(host=host, port=port, debug=False)
