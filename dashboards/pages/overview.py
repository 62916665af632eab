"""Overview: who wins and why (the comparison at a glance), the feeder map at the cursor with DER locations and
a bus drill-down, and the alarms at the cursor with acknowledge / shelve for the operator."""

from __future__ import annotations

import logging
from typing import Any

import dash
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, State, ctx, dcc, html

from dashboards.alarms import AlarmRow, alarms_at
from dashboards.components import fmt, graph, html_table, notice
from dashboards.data import RunData, age_text, reference_policy
from dashboards.events import run_events, windows
from dashboards.figpatch import APPLY_FIGURE_JS, figure_update
from dashboards.glance import driver_sentences, glance_table
from dashboards.mapview import (
    asset_unit,
    bus_assets,
    bus_trend_figure,
    clicked_bus,
    keep_zoom,
    map_figure,
    phases_at,
)
from dashboards.phasemap import DEFAULT_MODE, MAP_MODES, map_mode, phase_caption
from dashboards.pages.common import Context, chart_time, clicked, cursor_row, policy_options, text, time_chart, waiting
from dashboards.timeline import TimeView
from twin.reporting.figures import empty_figure

__all__ = ["JUMPS", "alarm_rows", "layout", "register", "status_alarms"]

_log = logging.getLogger(__name__)

#: Jump buttons: (id suffix, label). Each moves the cursor to that moment of the chosen policy.
JUMPS = (("vmin", "lowest voltage"), ("vmax", "highest voltage"), ("loading", "highest loading"))


def layout(data: RunData, *, operator: str | None, auth_enabled: bool) -> html.Div:
    options, default = policy_options(data)
    report = dcc.Link("report.html", href="/report", target="_blank", id="ov-report-link", refresh=True) if (
        (data.run_dir / "report.html").is_file()) else html.Span("no report.html yet", className="muted")
    can_act = operator is not None
    hint = None if can_act else html.Div(
        "log in as operator to acknowledge or shelve alarms" if auth_enabled else
        "alarms can be acknowledged only when the dashboard has an operator password", className="muted")
    return html.Div([
        waiting(data),
        html.Div([
            html.Div([html.H3("Who wins and why", className="inline"),
                      html.A("KPIs as CSV", href="/export/kpis.csv", className="button button-quiet", id="ov-kpi-csv"),
                      report], className="panel-head"),
            html.Div(id="ov-drivers", className="drivers"),
            html.Div(id="ov-glance"),
        ], className="panel", id="ov-glance-panel"),
        html.Div([
            html.Label(["Map of policy ", dcc.Dropdown(id="ov-policy", options=options, value=default,
                                                       clearable=False, className="dropdown")]),
            # Only a three-phase run has something else to colour the buses by; the selector is always in the
            # page (a callback input), hidden otherwise.
            html.Label(["Colour buses by ", dcc.Dropdown(
                id="ov-map-mode", options=[{"label": v, "value": k} for k, v in MAP_MODES.items()],
                value=DEFAULT_MODE, clearable=False, className="dropdown", style={"minWidth": "300px"})],
                id="ov-map-mode-label", style=None if data.has_three_phase() else {"display": "none"}),
            html.Div(["Move the cursor to: "] + [
                html.Button(label, id=f"ov-jump-{key}", n_clicks=0, className="button button-quiet")
                for key, label in JUMPS], className="jumps"),
        ], className="controls"),
        html.Div([
            html.Div([html.Div(id="ov-caption", className="caption"), graph("ov-map", style={"height": "560px"}),
                      dcc.Store(id="ov-map-server", data=None), dcc.Store(id="ov-map-id", data="ov-map"),
                      dcc.Store(id="ov-map-sent", data=None),
                      html.Div("Click a bus or a DER marker for its assets and trends.", className="muted")],
                     className="panel panel-map"),
            html.Div([
                html.H3("Alarms at the cursor"),
                html.Div(id="ov-alarm-summary", className="caption"),
                dcc.Checklist(id="ov-alarm-select", options=[], value=[], className="alarm-list",
                              labelClassName="alarm"),
                html.Div([
                    html.Button("Acknowledge selected", id="ov-ack", n_clicks=0, className="button",
                                disabled=not can_act),
                    html.Button("Shelve selected 1 h", id="ov-shelve", n_clicks=0, className="button button-quiet",
                                disabled=not can_act),
                    html.Button("Unshelve all", id="ov-unshelve", n_clicks=0, className="button button-quiet",
                                disabled=not can_act),
                ], className="controls alarm-actions"),
                hint,
                html.Div(id="op-alarm-result"),
                dcc.Link("full event log →", href="/events", className="muted"),
            ], className="panel panel-alarms"),
        ], className="split"),
        html.Div([html.H3("Selected bus"), html.Div(id="ov-bus"), graph("ov-bus-trend", style={"display": "none"})],
                 className="panel", id="ov-bus-panel"),
    ])


# -- content ---------------------------------------------------------------------------------------------
def map_view(data: RunData, *, policy: str | None, view: Any, click: Any, zoom: Any = None,
             mode: Any = None) -> tuple[go.Figure, str]:
    """(the feeder map of ``policy`` at the cursor, its caption); ``zoom``: the map's last relayoutData;
    ``mode``: what a three-phase run's buses are coloured by (``dashboards.phasemap.MAP_MODES``; ignored, and
    the map balanced as ever, when the run has no three-phase results)."""
    policies = data.policies()
    policy = policy if policy in policies else reference_policy(policies)
    topology = data.topology()
    if topology is None:
        return empty_figure("no feeder.json in this run: the feeder cannot be drawn"), ""
    row, when = cursor_row(data, policy, view)
    phases = phases_at(data, topology, policy, row)
    chosen = map_mode(mode)
    fig = keep_zoom(map_figure(data, topology, policy=policy, row=row, selected_bus=clicked_bus(click, topology),
                               mode=chosen if phases is not None else None, phases=phases), zoom)
    if row is None:
        return fig, "no interval recorded yet: the feeder is drawn without a power flow"
    if phases is not None:
        values = phases["vm_worst_pu"] if chosen == "worst" else phases["v1_pu"]
        what = "worst-phase voltages" if chosen == "worst" else "V1"
    else:
        vm = data.table(policy, "vm_pu")
        values = vm.iloc[row].to_numpy(float) if len(vm) > row else np.array([])
        what = "voltages"
    span = (f"; {what} {np.nanmin(values):.3f}–{np.nanmax(values):.3f} pu"
            if values.size and np.isfinite(values).any() else "")
    if phases is not None:
        span += phase_caption(data.three_phase(policy), phases, topology.buses.index, None)
    following = " (latest, following the run)" if TimeView.from_store(view).following else ""
    return fig, f"{policy} at {fmt(when)}{following}{span}"


def bus_view(data: RunData, *, policy: str | None, view: Any, click: Any) -> tuple[Any, go.Figure, dict[str, str]]:
    """(the clicked bus's assets at the cursor, its trend chart, the chart's style)."""
    hidden = {"display": "none"}
    topology = data.topology()
    bus = clicked_bus(click, topology)
    if bus is None:
        return notice("no bus selected: click one on the map"), empty_figure("no bus selected"), hidden
    policies = data.policies()
    policy = policy if policy in policies else reference_policy(policies)
    assets = bus_assets(data, bus)
    row, when = cursor_row(data, policy, view)
    lines = []
    for p in policies:
        vm = data.table(p, "vm_pu")
        r, _ = cursor_row(data, p, view)
        if r is not None and bus in vm.columns and len(vm) > r:
            lines.append(f"{p} {float(vm[bus].iloc[r]):.4f} pu")
    head = html.Div([html.Strong(f"Bus {bus}"),
                     f" — voltage at {fmt(when)}: " + ("; ".join(lines) if lines else "no data")],
                    className="caption", id="ov-bus-head")
    if len(assets) == 0:
        table = notice(f"no DER at bus {bus}")
    else:
        power = data.table(policy, "asset_p_mw") if policy else pd.DataFrame()
        rows = []
        for asset, info in assets.iterrows():
            unit, scale = asset_unit(info.get("p_max_mw"))
            now = (float(power[asset].iloc[row]) * scale if row is not None and asset in power.columns
                   and len(power) > row else float("nan"))
            rows.append({"asset": dcc.Link(asset, href=f"/assets?policy={policy}&asset={asset}"),
                         "kind": str(info.get("kind", "")), "participant": str(info.get("participant_id", "")),
                         f"P at cursor ({policy})": f"{fmt(now, 2)} {unit}" if np.isfinite(now) else "–"})
        table = html_table(pd.DataFrame(rows), table_id="ov-bus-assets")
    return html.Div([head, table]), time_chart(bus_trend_figure(data, bus), data, view), {"height": "420px"}


def status_alarms(data: RunData, *, stale_after_s: float) -> list[dict[str, Any]]:
    """Alarms about the sources right now: a stale run store, no progress file, a ledger that does not verify."""
    out: list[dict[str, Any]] = []
    status = data.status()
    age = data.status_age_s(status)

    def alarm(key: str, severity: str, message: str, policy: str = "") -> None:
        out.append({"id": f"status|{key}", "severity": severity, "policy": policy, "message": message,
                    "start": None, "end": None})

    if status.get("state") == "running" and age is not None and age > stale_after_s:
        alarm("stale", "critical", f"stale telemetry: the twin has not written a new interval for {age:.0f} s "
                                   f"(status.json updated {age_text(age)})")
    if status.get("state") == "unknown" and data.meta():
        alarm("no-status", "warning", "no status.json: the run's progress is unknown")
    if status.get("state") == "failed":
        alarm("failed", "critical", "the run stopped with an error (see RUN/log.txt)")
    if status.get("state") in ("stopped", "interrupted"):  # a killed writer (stale heartbeat) or a SIGTERM / Ctrl-C
        alarm("stopped", "critical", f"the twin is not running: {status.get('reason', status['state'])}")
    for label in data.ledgers():
        try:
            ledger = data.ledger(label)
        except ImportError:
            continue
        if ledger is None or ledger.verified:
            continue
        if ledger.status == "incomplete":
            if status.get("state") != "running":  # while the twin runs, an open ledger is expected
                alarm(f"ledger-open-{label}", "warning",
                      f"settlement ledger is incomplete: {'; '.join(ledger.notes)}", label)
            continue
        where = f" (first bad entry {ledger.first_bad_entry})" if ledger.first_bad_entry else ""
        alarm(f"ledger-{label}", "critical",
              f"settlement ledger does not verify{where}: {'; '.join(ledger.problems)}", label)
    return out


def alarm_rows(ctx_: Context, view: Any) -> tuple[list[AlarmRow], int, pd.Timestamp | None]:
    data = ctx_.data
    cursor = TimeView.from_store(view).cursor_on(data.axis())
    rows, shelved = alarms_at(run_events(data), cursor, ctx_.book,
                              status_alarms(data, stale_after_s=ctx_.stale_after_s))
    return rows, shelved, cursor


def _when(row: AlarmRow) -> str:
    if row.start is None:
        return "now"
    start = fmt(pd.Timestamp(row.start))
    return f"{start} → {fmt(pd.Timestamp(row.end))}" if row.end is not None else f"since {start}"


def _option(row: AlarmRow) -> dict[str, Any]:
    label = html.Span([
        html.Span(row.severity, className=f"badge badge-{row.severity}"),
        html.Span(row.state, className=f"badge badge-state-{row.state}"),
        html.Span(row.policy, className="alarm-policy") if row.policy else None,
        html.Span(row.message),
        html.Span(f" · {_when(row)}", className="muted"),
        html.Span(f" · acknowledged by {row.acked_by}", className="muted") if row.acked_by else None,
    ])
    return {"label": label, "value": row.id}


def alarm_panel(ctx_: Context, view: Any) -> tuple[list[dict[str, Any]], Any]:
    rows, shelved, cursor = alarm_rows(ctx_, view)
    active = sum(r.state == "active" for r in rows)
    where = f"at {fmt(cursor)}" if cursor is not None else "(no interval yet)"
    summary = [html.Span("OK", className="badge badge-ok") if not rows else
               html.Span(f"{active} active", className="badge badge-critical" if active else "badge badge-info"),
               f" {len(rows) - active} cleared, not acknowledged · {shelved} shelved · {where}"]
    return [_option(r) for r in rows], html.Div(summary, id="alarm-count")


def alarm_action(ctx_: Context, *, operator: str, action: str | None, selected: Any, view: Any) -> str:
    """Acknowledge, shelve or unshelve alarms; only ids of alarms the dashboard knows are taken."""
    if action == "ov-unshelve":
        n = ctx_.book.unshelve_all()
        return f"{n} alarm(s) unshelved by {operator}"
    chosen = [s for s in selected if isinstance(s, str) and len(s) <= 300][:1000] if isinstance(selected, list) else []
    rows, _, _ = alarm_rows(ctx_, view)
    known = {r.id for r in rows}
    ids = [i for i in chosen if i in known]
    if not ids:
        return "select one or more alarms first"
    if action == "ov-ack":
        n = ctx_.book.acknowledge(ids, operator=operator)
        return f"{n} alarm(s) acknowledged by {operator}"
    if action == "ov-shelve":
        n = ctx_.book.shelve(ids, operator=operator)
        return f"{n} alarm(s) shelved for 1 h by {operator}"
    return "no action"


def jump_time(data: RunData, policy: str | None, key: str) -> pd.Timestamp | None:
    """The interval of ``policy`` with the lowest / highest voltage or the highest branch loading."""
    policies = data.policies()
    policy = policy if policy in policies else reference_policy(policies)
    if not policy:
        return None
    summary = data.table(policy, "summary")
    if len(summary) == 0:
        return None
    index = summary.index
    if key == "vmin" and summary["vm_min_pu"].notna().any():
        return pd.Timestamp(index[int(np.nanargmin(summary["vm_min_pu"].to_numpy(float)))])
    if key == "vmax" and summary["vm_max_pu"].notna().any():
        return pd.Timestamp(index[int(np.nanargmax(summary["vm_max_pu"].to_numpy(float)))])
    if key == "loading":
        frames = [data.table(policy, t) for t in ("line_loading_percent", "trafo_loading_percent")]
        blocks = [f.to_numpy(float) for f in frames if len(f) == len(summary) and f.shape[1]]
        if blocks:
            values = np.hstack(blocks)
            if np.isfinite(values).any():
                peak = np.where(np.isfinite(values), values, -np.inf).max(axis=1)
                return pd.Timestamp(index[int(np.argmax(peak))])
    return None


# -- callbacks -------------------------------------------------------------------------------------------
def register(app: dash.Dash, c: Context) -> None:
    data = c.data

    # The map goes to a store as the edits since the figure the browser holds (its digests are in ov-map-sent),
    # which APPLY_FIGURE_JS applies: on a 9,099-bus feeder the whole figure is ~2 MB, a refresh at a parked
    # cursor ~nothing.
    @app.callback(Output("ov-map-server", "data"), Output("ov-caption", "children"),
                  Input("run-version", "data"), Input("time-view", "data"), Input("ov-policy", "value"),
                  Input("ov-map", "clickData"), Input("ov-map-mode", "value"), State("ov-map", "relayoutData"),
                  State("ov-map-sent", "data"))
    def overview_map(_v: Any, view: Any, policy: Any, click: Any, mode: Any, zoom: Any,
                     sent: Any) -> tuple[Any, str]:
        fig, caption = map_view(data, policy=text(policy), view=view, click=click, zoom=zoom, mode=mode)
        return figure_update(fig, sent), caption

    @app.callback(Output("ov-map-mode-label", "style"), Input("run-version", "data"))
    def overview_map_mode(_v: Any) -> Any:  # three_phase/ is written when the run ends
        return None if data.has_three_phase() else {"display": "none"}

    app.clientside_callback(APPLY_FIGURE_JS, Output("ov-map", "figure"), Output("ov-map-sent", "data"),
                            Input("ov-map-server", "data"), State("ov-map-id", "data"), State("ov-map", "figure"),
                            State("ov-map-sent", "data"))

    @app.callback(Output("ov-bus", "children"), Output("ov-bus-trend", "figure"), Output("ov-bus-trend", "style"),
                  Input("run-version", "data"), Input("time-view", "data"), Input("ov-policy", "value"),
                  Input("ov-map", "clickData"))
    def overview_bus(_v: Any, view: Any, policy: Any, click: Any) -> tuple[Any, go.Figure, dict[str, str]]:
        return bus_view(data, policy=text(policy), view=view, click=click)

    @app.callback(Output("ov-glance", "children"), Output("ov-drivers", "children"), Input("run-version", "data"))
    def overview_glance(_v: Any) -> tuple[Any, Any]:
        summaries = data.summaries()
        kpis = data.kpis()
        reference = reference_policy(list(kpis.columns))
        sentences = driver_sentences(summaries, reference=reference, windows=windows(data), step=data.step())
        drivers = html.Ul([html.Li(s) for s in sentences], id="ov-driver-list") if sentences else None
        table = glance_table(kpis, summaries, reference=reference)
        if not (data.run_dir / "kpis.parquet").exists() and data.status().get("state") == "running":
            # Live KPIs are recomputed at most every live_kpis_every_s (they read every table): say so, since
            # the sentences above follow every interval and may be a step ahead of the table.
            table = html.Div([html.Div(f"while the run goes, the table is recomputed every "
                                       f"{data.live_kpis_every_s:g} s; the sentences follow every interval",
                                       className="muted", id="ov-kpi-lag"), table])
        return table, drivers

    @app.callback(Output("ov-alarm-select", "options"), Output("ov-alarm-summary", "children"),
                  Input("run-version", "data"), Input("time-view", "data"), Input("op-alarm-result", "children"))
    def overview_alarms(_v: Any, view: Any, _result: Any) -> tuple[Any, Any]:
        return alarm_panel(c, view)

    # Operator action: the output id starts with "op-", so auth's guard lets only an operator reach it.
    @app.callback(Output("op-alarm-result", "children"), Input("ov-ack", "n_clicks"), Input("ov-shelve", "n_clicks"),
                  Input("ov-unshelve", "n_clicks"), State("ov-alarm-select", "value"), State("time-view", "data"),
                  prevent_initial_call=True)
    def overview_alarm_action(_a: Any, _s: Any, _u: Any, selected: Any, view: Any) -> Any:
        action = clicked()
        if action is None:
            return dash.no_update
        operator = c.auth.current_operator()
        if operator is None:
            return notice("operator login required", kind="critical")
        message = alarm_action(c, operator=operator, action=action, selected=selected, view=view)
        _log.info("operator %s: %s", operator, message)
        return notice(message, kind="ok")

    @app.callback(Output("time-view", "data", allow_duplicate=True),
                  *[Input(f"ov-jump-{key}", "n_clicks") for key, _ in JUMPS],
                  Input("ov-bus-trend", "relayoutData"), Input("ov-bus-trend", "clickData"),
                  State("ov-policy", "value"), State("time-view", "data"), prevent_initial_call=True)
    def overview_time(*args: Any) -> Any:
        relayout, click, policy, view = args[len(JUMPS):]
        current = TimeView.from_store(view)
        button = clicked()
        if button is not None:
            when = jump_time(data, text(policy), button.removeprefix("ov-jump-"))
            return dash.no_update if when is None else current.with_(cursor=when, playing=False).to_store()
        if len(ctx.triggered) != 1 or str(ctx.triggered[0].get("prop_id", "")).endswith(".n_clicks"):
            return dash.no_update
        return chart_time(current, ctx.triggered[0])

