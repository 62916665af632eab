"""The study report: plotly figures of a study's KPI table and the offline HTML page that holds them.

The figure functions take the tidy results table (one row per variant and policy) and return a
``go.Figure``, so the dashboard can draw the same figures. The HTML embeds plotly.js once, inline: the
operators' machines are offline, so a CDN link would draw nothing.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from twin.reporting.figures import PLOTLY_CONFIG
from twin.studies.model import Study

__all__ = ["kpi_distribution_figure", "policy_delta_figure", "study_figures", "write_report"]

#: KPIs whose policy-minus-reference difference the report plots against every swept axis.
DELTA_KPIS = ("energy_cost_eur", "voltage_violation_bus_intervals")


def _label(kpi: str) -> str:
    from twin.records.kpis import KPI_LABELS  # pulls in pandapower; figure code should not pay for it at import

    return KPI_LABELS.get(kpi, kpi)


def policy_delta_figure(results: pd.DataFrame, *, axis: str, kpi: str, reference: str | None = None) -> go.Figure:
    """Each policy's ``kpi`` minus the reference policy's (default: the first) in the same variant, against
    the swept ``axis``: one marker per variant (the other axes vary between markers), a line through means."""
    policies = list(dict.fromkeys(results["policy"]))
    reference = reference or policies[0]
    ref = results.loc[results["policy"] == reference].set_index("variant_id")[kpi]
    fig = go.Figure()
    for policy in policies:
        if policy == reference:
            continue
        rows = results.loc[results["policy"] == policy].set_index("variant_id")
        delta = (rows[kpi] - ref.reindex(rows.index)).rename("delta")
        frame = pd.concat([rows[[axis, "label"]], delta], axis=1).dropna(subset=["delta"])
        fig.add_trace(go.Scatter(
            x=frame[axis], y=frame["delta"], mode="markers", name=f"{policy} (variants)", legendgroup=policy,
            text=frame["label"], hovertemplate="%{text}<br>Δ=%{y:.4g}<extra>" + html.escape(policy) + "</extra>",
        ))
        means = frame.groupby(axis, sort=True)["delta"].mean()
        fig.add_trace(go.Scatter(x=means.index, y=means.to_numpy(), mode="lines", name=f"{policy} (mean)",
                                 legendgroup=policy))
    fig.add_hline(y=0, line_dash="dot", line_color="grey")
    fig.update_layout(
        title=f"{_label(kpi)}: policy minus {reference}, across {axis}",
        xaxis_title=axis, yaxis_title=f"Δ {_label(kpi)}", template="plotly_white",
    )
    return fig


def kpi_distribution_figure(results: pd.DataFrame, *, kpi: str) -> go.Figure:
    """Distribution of ``kpi`` across variants, one box per policy with every variant shown as a point."""
    fig = go.Figure()
    for policy, rows in results.groupby("policy", sort=False):
        fig.add_trace(go.Box(y=rows[kpi], name=str(policy), boxpoints="all", jitter=0.3, text=rows["label"],
                             hovertemplate="%{text}<br>%{y:.4g}<extra></extra>"))
    fig.update_layout(title=f"{_label(kpi)} across variants", yaxis_title=_label(kpi), template="plotly_white")
    return fig


def _swept(results: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """Axes that actually vary: a one-value axis is a fixed override and has nothing to plot against."""
    return [a for a in axes if a in results and results[a].nunique(dropna=False) > 1]


def study_figures(results: pd.DataFrame, *, axes: Sequence[str]) -> list[go.Figure]:
    if results.empty:
        return []
    figures: list[go.Figure] = []
    if results["policy"].nunique() > 1:
        for axis in _swept(results, axes):
            figures += [policy_delta_figure(results, axis=axis, kpi=kpi) for kpi in DELTA_KPIS]
    figures += [kpi_distribution_figure(results, kpi=kpi) for kpi in ("energy_cost_eur", *DELTA_KPIS[1:], "peak_import_mw")]
    return figures


def _page(study: Study, figures: list[go.Figure], results: pd.DataFrame, failures: pd.DataFrame) -> str:
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Study {html.escape(study.name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px}.failed{color:#b00}</style></head><body>",
        f"<h1>Study {html.escape(study.name)}</h1>",
        f"<p>{html.escape(study.description)}</p>" if study.description else "",
        f"<p>Base scenario: <code>{html.escape(str(study.base_path))}</code>; mode: {study.mode}; "
        f"{len(study.variants)} variants over {html.escape(', '.join(study.axes))}; "
        f"{results['variant_id'].nunique() if not results.empty else 0} finished, {len(failures)} failed.</p>",
    ]
    if not failures.empty:
        parts.append("<h2 class='failed'>Failed variants</h2>")
        parts.append(failures.to_html(index=False, escape=True))
    for i, fig in enumerate(figures):
        # plotly.js once, inline (no CDN): the first figure carries it, the others reuse it.
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), config=PLOTLY_CONFIG))
    if not results.empty:
        parts.append("<h2>KPI table</h2>")
        parts.append(results.to_html(index=False, escape=True, float_format=lambda v: f"{v:.6g}"))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: Path, *, study: Study, results: pd.DataFrame, failures: pd.DataFrame) -> Path:
    """Write ``report.html`` (atomically, like every study output) and return its path."""
    from twin.studies.variant import atomic_write_text

    atomic_write_text(path, _page(study, study_figures(results, axes=study.axes), results, failures))
    return path
