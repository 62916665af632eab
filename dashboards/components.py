"""Small HTML building blocks of the dashboard (tables, KPI cards, alarm lists); no data access here."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pandas as pd
from dash import dcc, html
from dash.development.base_component import Component

from twin.reporting.figures import PLOTLY_CONFIG

__all__ = ["Alarm", "alarm_list", "fmt", "fmt_duration", "graph", "html_table", "kpi_cards", "notice"]

#: KPIs shown on the Overview cards, all "lower is better".
CARD_KPIS: tuple[str, ...] = (
    "energy_cost_eur",
    "peak_import_mw",
    "losses_mwh",
    "voltage_violation_bus_intervals",
    "overload_element_intervals",
    "ev_unmet_mwh",
    "pv_curtailed_mwh",
)

#: Every chart's plotly config: no upload to Plotly's cloud (plotly.js 3 offers "Share chart..." unless
#: ``showSendToCloud`` is false), no Chart Studio link, PNG export kept.
GRAPH_CONFIG = {**PLOTLY_CONFIG, "responsive": True,
                "modeBarButtonsToRemove": [*PLOTLY_CONFIG["modeBarButtonsToRemove"], "select2d", "lasso2d"]}


def fmt(value: Any, digits: int = 3) -> str:
    """Human formatting: thousands separators, fixed decimals for floats, money as 2 decimals."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return f"{value:,.2f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        text = f"{value:,.{digits}f}"
        return text[1:] if text.startswith("-") and not text.strip("-0.,") else text  # no "-0.000"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M") + ("" if value.tzinfo is None else " UTC")
    return str(value)


def fmt_duration(value: Any) -> str:
    """'2h', '30min', '1d 6h' for a duration (or its text); the text itself when it is not one."""
    try:
        td = pd.Timedelta(value)
    except (ValueError, TypeError):
        return str(value or "")
    if pd.isna(td):
        return ""
    minutes = int(td.total_seconds() // 60)
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{mins}min" if mins else ""]
    return " ".join(p for p in parts if p) or f"{td.total_seconds():g}s"


def graph(component_id: str, **kwargs: Any) -> dcc.Graph:
    """A graph that says "loading…" until its callback answers (not an empty pair of axes)."""
    from twin.reporting.figures import empty_figure

    kwargs.setdefault("figure", empty_figure("loading…"))
    return dcc.Graph(id=component_id, config=GRAPH_CONFIG, **kwargs)


def notice(text: str, *, kind: str = "info") -> html.Div:
    return html.Div(text, className=f"notice notice-{kind}")


def html_table(frame: pd.DataFrame, *, max_rows: int = 200, formats: Mapping[str, Callable[[Any], str]] | None = None,
               table_id: str | None = None, empty: str = "nothing to show") -> html.Div:
    """A plain HTML table of ``frame`` (index dropped), at most ``max_rows`` rows, with a note when cut."""
    if frame is None or len(frame) == 0:
        return notice(empty)
    formats = formats or {}
    shown = frame.head(max_rows)
    head = html.Thead(html.Tr([html.Th(str(c)) for c in shown.columns]))
    rows = []
    for record in shown.itertuples(index=False, name=None):
        cells = []
        for column, value in zip(shown.columns, record):
            text = value if isinstance(value, Component) else formats[column](value) if column in formats else fmt(value)
            cells.append(html.Td(text, className="num" if isinstance(value, (int, float, Decimal)) else None))
        rows.append(html.Tr(cells))
    extra = {"id": table_id} if table_id else {}
    children: list[Any] = [html.Table([head, html.Tbody(rows)], className="data-table", **extra)]
    if len(frame) > max_rows:
        children.append(html.Div(f"showing {max_rows} of {len(frame):,} rows", className="muted"))
    return html.Div(children, className="table-wrap")


@dataclass(frozen=True)
class Alarm:
    severity: str  # "critical", "warning", "info"
    message: str
    policy: str = ""


_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def alarm_list(alarms: Sequence[Alarm]) -> html.Div:
    if not alarms:
        return html.Div([html.Span("OK", className="badge badge-ok"), " no active alarms"], className="alarm-none")
    ordered = sorted(alarms, key=lambda a: (_SEVERITY_ORDER.get(a.severity, 3), a.policy))
    items = [
        html.Li([html.Span(a.severity, className=f"badge badge-{a.severity}"),
                 html.Span(a.policy, className="alarm-policy") if a.policy else None,
                 html.Span(a.message)], className=f"alarm alarm-{a.severity}")
        for a in ordered
    ]
    return html.Ul(items, className="alarm-list", id="alarm-items")


def kpi_cards(kpis: pd.DataFrame, *, labels: Mapping[str, str], reference: str | None,
              keys: Sequence[str] = CARD_KPIS) -> html.Div:
    """One card per policy with its KPIs; other policies show the change relative to the reference."""
    if kpis.empty or len(kpis.columns) == 0:
        return notice("no KPIs yet: the run has not recorded any interval")
    cards = []
    for policy in kpis.columns:
        rows = []
        for key in keys:
            if key not in kpis.index:
                continue
            value = float(kpis.at[key, policy])
            delta = None
            if reference is not None and policy != reference and reference in kpis.columns:
                ref = float(kpis.at[key, reference])
                if math.isfinite(ref) and math.isfinite(value) and value != ref:
                    if abs(ref) > 1e-12:
                        pct = 100.0 * (value - ref) / abs(ref)
                        delta = html.Span(f"{pct:+.1f} %", className="delta delta-better" if value < ref
                                          else "delta delta-worse")
                    else:
                        delta = html.Span(f"{value - ref:+,.3g}", className="delta delta-worse" if value > ref
                                          else "delta delta-better")
            digits = 0 if key.endswith("intervals") or key.endswith("setpoints") else 3 if abs(value) < 10 else 2
            rows.append(html.Tr([html.Td(labels.get(key, key)), html.Td(fmt(value, digits), className="num"),
                                 html.Td(delta)]))
        title = [html.Span(policy, className="card-title")]
        if policy == reference and len(kpis.columns) > 1:
            title.append(html.Span("reference", className="badge badge-info"))
        cards.append(html.Div([html.Div(title, className="card-head"), html.Table(rows, className="kpi-table")],
                              className="card kpi-card", id=f"kpi-card-{policy}"))
    return html.Div(cards, className="card-row")
