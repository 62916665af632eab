"""Comparison: every policy's feeder-head power, its difference from the reference, the voltage envelope,
costs and payments on the shared time axis (fault and DR windows shaded), and all KPIs."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import dash
from dash import Input, Output, html

from dashboards.components import graph, html_table, notice
from dashboards.data import RunData, reference_policy
from dashboards.pages.common import Context, register_chart_time, time_chart, waiting
from twin.records.kpis import KPI_LABELS
from twin.reporting.figures import (
    cost_figure,
    difference_figure,
    empty_figure,
    head_power_figure,
    payments_figure,
    voltage_envelope_figure,
)

__all__ = ["CHARTS", "figures", "layout", "register"]

CHARTS = ("cmp-head", "cmp-diff", "cmp-voltage", "cmp-cost", "cmp-payments")


def layout(data: RunData) -> html.Div:
    return html.Div([
        waiting(data),
        html.Div("Drag on any chart to zoom every chart and the map's time range; double-click to reset; click a "
                 "point to move the cursor there. Shaded: faults (red) and demand-response events (amber).",
                 className="caption"),
        *[html.Div([graph(chart_id)], className="panel") for chart_id in CHARTS],
        html.Div(["The series behind these charts (one row per interval) as CSV: "] + [
            html.A(p, href="/export/series.csv?" + urlencode({"policy": p, "table": "summary"}),
                   className="button button-quiet", id=f"cmp-series-{i}") for i, p in enumerate(data.policies())],
                 className="caption", id="cmp-series"),
        html.Div([html.H3("All KPIs", className="inline"),
                  html.A("KPIs as CSV", href="/export/kpis.csv", className="button button-quiet")],
                 className="panel-head"),
        html.Div(id="cmp-kpis"),
    ])


def figures(data: RunData, view: Any = None) -> dict[str, Any]:
    summaries = data.summaries()
    limits = data.limits()
    if not summaries:
        blank = empty_figure("no intervals recorded yet")
        return {"head": blank, "diff": blank, "voltage": blank, "cost": blank, "payments": blank,
                "kpis": notice("no KPIs yet")}
    try:
        payments = data.payments()
    except ImportError:
        payments = None
    pay = (payments_figure(payments, title="Cumulative payments to participants (+ = participants receive)")
           if data.ledgers() and payments is not None else empty_figure("no ledger in this run: no settlement payments"))
    reference = reference_policy(list(summaries))
    kpis = data.kpis()
    table = kpis.copy()
    table.insert(0, "KPI", [KPI_LABELS.get(k, k) for k in table.index])
    timed = {
        "head": head_power_figure(summaries, p_head_max_mw=limits.p_head_max_mw),
        "diff": difference_figure(summaries, reference=reference) if reference else empty_figure("no reference"),
        "voltage": voltage_envelope_figure(summaries, v_min_pu=limits.v_min_pu, v_max_pu=limits.v_max_pu),
        "cost": cost_figure(summaries),
        "payments": pay,
    }
    out: dict[str, Any] = {k: time_chart(f, data, view) if f.data else f for k, f in timed.items()}
    out["kpis"] = html_table(table, table_id="cmp-kpi-table")
    return out


def register(app: dash.Dash, c: Context) -> None:
    @app.callback(*[Output(chart_id, "figure") for chart_id in CHARTS], Output("cmp-kpis", "children"),
                  Input("run-version", "data"), Input("time-view", "data"))
    def comparison(_v: Any, view: Any) -> tuple[Any, ...]:
        figs = figures(c.data, view)
        return figs["head"], figs["diff"], figs["voltage"], figs["cost"], figs["payments"], figs["kpis"]

    register_chart_time(app, CHARTS)
