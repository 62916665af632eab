"""Who wins and why, at a glance: every policy against the reference (SCADA) in absolute differences with
units, the better value marked by what the KPI means, resilience and data-sovereignty figures beside the
energy ones, and one sentence per policy naming the biggest driver of its cost difference.

Pure functions of the KPI table, the per-policy summaries and the fault / DR windows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from dash import html

from dashboards.components import notice

__all__ = ["GLANCE_ROWS", "GlanceRow", "better_of", "driver_sentences", "glance_frame", "glance_table"]


@dataclass(frozen=True)
class GlanceRow:
    key: str
    label: str
    unit: str
    #: "lower" or "higher" is better; None: neither (a transfer, a count shown for context)
    better: str | None
    digits: int
    group: str


GLANCE_ROWS: tuple[GlanceRow, ...] = (
    GlanceRow("energy_cost_eur", "Energy cost", "EUR", "lower", 2, "Energy"),
    GlanceRow("peak_import_mw", "Peak import", "MW", "lower", 3, "Energy"),
    GlanceRow("losses_mwh", "Losses", "MWh", "lower", 3, "Energy"),
    GlanceRow("energy_imported_mwh", "Energy imported", "MWh", None, 3, "Energy"),
    GlanceRow("voltage_violation_bus_intervals", "Voltage violations", "bus-intervals", "lower", 0, "Grid"),
    GlanceRow("overload_element_intervals", "Overloads", "element-intervals", "lower", 0, "Grid"),
    GlanceRow("non_converged_intervals", "Non-converged power flows", "intervals", "lower", 0, "Grid"),
    GlanceRow("ev_unmet_mwh", "EV energy unmet", "MWh", "lower", 3, "Service"),
    GlanceRow("pv_curtailed_mwh", "PV curtailed", "MWh", "lower", 3, "Service"),
    GlanceRow("flex_unserved_mwh", "Flex energy past deadline", "MWh", "lower", 3, "Service"),
    GlanceRow("controller_uptime_percent", "Controller uptime", "%", "higher", 1, "Resilience"),
    GlanceRow("controller_offline_intervals", "Intervals without a controller", "intervals", "lower", 0, "Resilience"),
    GlanceRow("central_kbytes", "Participant data at a central point", "kB", "lower", 1, "Data sovereignty"),
    GlanceRow("messages", "Messages sent", "messages", None, 0, "Data sovereignty"),
    GlanceRow("kbytes", "Traffic", "kB", None, 1, "Data sovereignty"),
    GlanceRow("participant_earnings_eur", "Paid to participants (+ = participants receive)", "EUR", None, 2,
              "Money"),
)


def glance_frame(kpis: pd.DataFrame, summaries: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """GLANCE_ROWS' KPIs × policy (with the derived controller uptime), rows the run has."""
    frame = kpis.copy()
    if len(frame.columns):
        uptime = {}
        for policy in frame.columns:
            n = len(summaries.get(policy, ()))
            offline = frame.at["controller_offline_intervals", policy] if "controller_offline_intervals" in frame.index else 0
            uptime[policy] = 100.0 * (1 - float(offline) / n) if n else float("nan")
        frame.loc["controller_uptime_percent"] = pd.Series(uptime)
    keys = [r.key for r in GLANCE_ROWS if r.key in frame.index]
    return frame.reindex(keys).astype(float)


def _same(a: float, b: float, digits: int) -> bool:
    return abs(a - b) < 0.5 * 10 ** (-digits)


def better_of(row: GlanceRow, values: Mapping[str, float]) -> set[str]:
    """The policies with the best value of a row (none when the row has no better side or all are equal)."""
    finite = {p: v for p, v in values.items() if math.isfinite(v)}
    if row.better is None or len(finite) < 2:
        return set()
    best = min(finite.values()) if row.better == "lower" else max(finite.values())
    winners = {p for p, v in finite.items() if _same(v, best, row.digits)}
    return set() if len(winners) == len(finite) else winners


def _delta(row: GlanceRow, value: float, ref: float) -> html.Span | None:
    if not (math.isfinite(value) and math.isfinite(ref)):
        return None
    diff = value - ref
    if _same(value, ref, row.digits):
        return html.Span("same", className="delta delta-same")
    good = row.better is not None and ((diff < 0) == (row.better == "lower"))
    cls = "delta-neutral" if row.better is None else "delta-better" if good else "delta-worse"
    word = "" if row.better is None else (" better" if good else " worse")
    return html.Span(f"{diff:+,.{row.digits}f} {row.unit}{word}", className=f"delta {cls}",
                     title=f"difference from the reference, {row.unit}")


def _value_text(value: float, digits: int) -> str:
    """The row's own precision for every policy (0.000 beside 0.040, not 0): fmt drops the decimals of a
    whole number."""
    if not math.isfinite(value):
        return "–"
    text = f"{value:,.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.,") else text  # no "-0.000"


def glance_table(kpis: pd.DataFrame, summaries: Mapping[str, pd.DataFrame], *, reference: str | None) -> html.Div:
    """The comparison table: one column per policy (reference first), absolute differences under each value."""
    frame = glance_frame(kpis, summaries)
    if frame.empty or len(frame.columns) == 0:
        return notice("no KPIs yet: the run has not recorded any interval")
    policies = list(frame.columns)
    if reference in policies:
        policies.remove(reference)
        policies.insert(0, reference)
    head = html.Thead(html.Tr([html.Th("KPI")] + [
        html.Th([p, html.Span(" reference", className="badge badge-info") if p == reference else None],
                className="num") for p in policies]))
    body = []
    group = None
    for row in GLANCE_ROWS:
        if row.key not in frame.index:
            continue
        if row.group != group:
            group = row.group
            body.append(html.Tr(html.Td(group, colSpan=len(policies) + 1, className="group-row")))
        values = {p: float(frame.at[row.key, p]) for p in policies}
        best = better_of(row, values)
        cells = [html.Td([row.label, html.Span(f" [{row.unit}]", className="muted")])]
        for p in policies:
            text = _value_text(values[p], row.digits)
            parts: list = [html.Span(text, className="value")]
            if p in best:
                parts.append(html.Span(" ✓ best", className="best-mark"))
            if reference in values and p != reference:
                delta = _delta(row, values[p], values[reference])
                if delta is not None:
                    parts += [html.Br(), delta]
            cells.append(html.Td(parts, className="num best" if p in best else "num",
                                 **{"data-kpi": row.key, "data-policy": p}))
        body.append(html.Tr(cells))
    return html.Div(html.Table([head, html.Tbody(body)], className="data-table glance-table", id="glance-table"),
                    className="table-wrap")


# -- the biggest driver -------------------------------------------------------------------------------------
def _span_text(start: pd.Timestamp, end: pd.Timestamp) -> str:
    same_day = start.normalize() == (end - pd.Timedelta("1ns")).normalize()
    day = f"{start:%a %d %b} " if same_day else ""
    return f"{day}{start:%H:%M}–{end:%H:%M}" if same_day else f"{start:%d %b %H:%M}–{end:%d %b %H:%M}"


def _episodes(flags: np.ndarray, index: pd.DatetimeIndex, step: pd.Timedelta) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    from dashboards.events import episodes

    return [(pd.Timestamp(index[a]), pd.Timestamp(index[b - 1]) + step) for a, b in episodes(flags)]


def _more_or_less(eur: float) -> str:
    return f"{abs(eur):,.2f} EUR {'more' if eur > 0 else 'less'}"


def driver_sentences(summaries: Mapping[str, pd.DataFrame], *, reference: str | None, windows: pd.DataFrame,
                     step: pd.Timedelta) -> list[str]:
    """Per policy other than the reference: who is cheaper overall and the biggest single driver of the cost
    difference (a period without a controller, a fault or DR window, or the peak-price hours)."""
    if reference not in summaries:
        return []
    ref = summaries[reference]
    out = []
    for policy, other in summaries.items():
        if policy == reference:
            continue
        index = ref.index.intersection(other.index)
        if len(index) == 0:
            continue
        a, b = ref.loc[index], other.loc[index]
        diff = a["cost_eur"].to_numpy(float) - b["cost_eur"].to_numpy(float)  # > 0: the reference pays more
        total = float(np.nansum(diff))
        cost_a, cost_b = float(np.nansum(a["cost_eur"])), float(np.nansum(b["cost_eur"]))
        if abs(total) < 0.005:
            out.append(f"{policy} and {reference} cost the same ({cost_b:,.2f} EUR).")
            continue
        cheaper, dearer = (policy, reference) if total > 0 else (reference, policy)
        headline = (f"{cheaper} is {abs(total):,.2f} EUR cheaper than {dearer} "
                    f"({min(cost_a, cost_b):,.2f} vs {max(cost_a, cost_b):,.2f} EUR).")
        times = pd.DatetimeIndex(index)
        candidates: list[tuple[float, str]] = []

        def effect(start: pd.Timestamp, end: pd.Timestamp) -> tuple[float, float]:
            mask = np.asarray((times >= start) & (times < end))
            if not mask.any():
                return 0.0, 0.0
            peak = float(np.nanmax(a["p_head_mw"].to_numpy(float)[mask]) - np.nanmax(b["p_head_mw"].to_numpy(float)[mask]))
            return float(np.nansum(diff[mask])), peak

        for who, frame, against, sign in ((reference, a, policy, 1.0), (policy, b, reference, -1.0)):
            if "controller_online" not in frame.columns:
                continue
            for start, end in _episodes(~frame["controller_online"].astype(bool).to_numpy(), times, step):
                cause = [w.label for w in windows.itertuples(index=False)
                         if w.category == "fault" and w.start < end and w.end > start] if len(windows) else []
                share, peak = effect(start, end)
                share, peak = share * sign, peak * sign  # from the point of view of the one that lost control
                higher = f", {abs(peak):.3f} MW {'higher' if peak > 0 else 'lower'} peak" if abs(peak) >= 0.0005 else ""
                candidates.append((abs(share), f"{who} lost control {_span_text(start, end)} "
                                               f"({cause[0] if cause else 'controller offline'}): it paid "
                                               f"{_more_or_less(share)} than {against} there{higher}"))
        for w in windows.itertuples(index=False) if len(windows) else ():
            share, peak = effect(pd.Timestamp(w.start), pd.Timestamp(w.end))
            if share:
                higher = f", {abs(peak):.3f} MW {'higher' if peak > 0 else 'lower'} peak" if abs(peak) >= 0.0005 else ""
                candidates.append((abs(share), f"during the {w.label} {_span_text(pd.Timestamp(w.start), pd.Timestamp(w.end))}"
                                               f" {reference} paid {_more_or_less(share)} than {policy}{higher}"))
        if "price_eur_per_mwh" in a.columns:
            price = a["price_eur_per_mwh"].to_numpy(float)
            if np.isfinite(price).any() and np.nanmax(price) > np.nanmin(price):
                dear = price >= np.nanmax(price)
                share = float(np.nansum(diff[dear]))
                candidates.append((abs(share), f"{abs(share) / abs(total):.0%} of the difference falls in the "
                                               f"peak-price intervals ({reference} paid {_more_or_less(share)} "
                                               f"than {policy} there)"))
        candidates = [c for c in candidates if c[0] >= 0.005]
        if candidates:
            _, text = max(candidates, key=lambda c: c[0])
            out.append(f"{headline} Biggest driver: {text}.")
        else:
            out.append(f"{headline} The difference is spread over the run.")
    return out
