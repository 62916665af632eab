"""Events: the run-wide event log (faults, DR events, limit violations, controller outages, non-converged
power flows, unusual fallbacks, rejected commands) with onset and end, filtered and paged; each event links to
the Overview with the cursor at its onset."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import dash
import pandas as pd
from dash import Input, Output, State, ctx, dcc, html

from dashboards.components import fmt
from dashboards.data import RunData
from dashboards.events import run_events
from dashboards.pages.common import Context, waiting
from dashboards.tables import filter_rows, next_page, page_controls, paged_table

__all__ = ["event_page", "layout", "register"]

SEVERITIES = ("critical", "warning", "info")


def layout(data: RunData) -> html.Div:
    return html.Div([
        waiting(data),
        html.Div([html.H3("Event log", className="inline"),
                  html.A("events as CSV", href="/export/events.csv", className="button button-quiet",
                         id="ev-csv")], className="panel-head"),
        html.Div([
            dcc.Checklist(id="ev-severity", options=[{"label": f" {s}", "value": s} for s in SEVERITIES],
                          value=list(SEVERITIES), inline=True, className="radio"),
            html.Label(["Policy ", dcc.Dropdown(id="ev-policy", options=[{"label": p, "value": p}
                                                                        for p in data.policies()],
                                                value=None, placeholder="every policy and the run",
                                                className="dropdown")]),
            html.Label(["Search ", dcc.Input(id="ev-filter", type="text", debounce=True, className="text-input wide",
                                             placeholder="kind, policy or text")]),
        ], className="controls"),
        dcc.Store(id="ev-page", data=0),
        page_controls("ev"),
        html.Div(id="ev-table"),
    ])


def _when(value: Any) -> str:
    return "" if value is None or pd.isna(value) else fmt(pd.Timestamp(value))


def event_page(data: RunData, *, severities: Any, policy: Any, search: Any, page: Any,
               trigger: str | None) -> tuple[Any, int, str]:
    events = run_events(data)
    chosen = [s for s in severities if s in SEVERITIES] if isinstance(severities, list) else list(SEVERITIES)
    frame = events[events["severity"].isin(chosen)]
    if isinstance(policy, str) and policy:
        frame = frame[frame["policy"] == policy]
    frame = filter_rows(frame, search, columns=["kind", "policy", "message"])
    page = next_page(page, trigger=trigger, prev_id="ev-prev", next_id="ev-next", n_rows=len(frame))
    shown = frame[["severity", "kind", "policy", "start", "end", "message"]]

    def cells(rows: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame({
            "severity": [html.Span(s, className=f"badge badge-{s}") for s in rows["severity"]],
            "event": rows["kind"].str.replace("_", " "),
            "policy": rows["policy"],
            "onset": [_when(v) for v in rows["start"]],
            "end": [_when(v) if not pd.isna(v) else ("ongoing" if not pd.isna(s) else "")
                    for s, v in zip(rows["start"], rows["end"])],
            "what": rows["message"],
            "": [dcc.Link("show on map", href="/?" + urlencode({"at": pd.Timestamp(s).isoformat()}))
                 if not pd.isna(s) else "" for s in rows["start"]],
        })
        return out

    table, label = paged_table(shown, page=page, table_id="ev-log-table", cells=cells,
                               empty="no event matches" if len(events) else "no events yet")
    return table, page, label


def register(app: dash.Dash, c: Context) -> None:
    @app.callback(Output("ev-table", "children"), Output("ev-page", "data"), Output("ev-page-label", "children"),
                  Input("run-version", "data"), Input("ev-severity", "value"), Input("ev-policy", "value"),
                  Input("ev-filter", "value"), Input("ev-prev", "n_clicks"), Input("ev-next", "n_clicks"),
                  State("ev-page", "data"))
    def events(_v: Any, severities: Any, policy: Any, search: Any, _p: Any, _n: Any, page: Any) -> Any:
        trigger = ctx.triggered_id if isinstance(ctx.triggered_id, str) and ctx.triggered_id != "run-version" else None
        return event_page(c.data, severities=severities, policy=policy, search=search, page=page, trigger=trigger)
