"""The comparison report: one self-contained HTML page per run, built from the run store with the same
figure functions the dashboard uses (twin.reporting.figures). plotly.js is inlined once, so it opens offline.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd
import plotly.io as pio

from twin.records.kpis import KPI_LABELS
from twin.records.recorder import STAGE_COLUMNS
from twin.records.runstore import RunStore
from twin.reporting.figures import (
    PLOTLY_CONFIG,
    cost_figure,
    fallback_figure,
    head_power_figure,
    kpi_comparison_figure,
    payments_figure,
    voltage_envelope_figure,
)
from twin.scenario import format_duration

__all__ = ["write_report"]


def _kpi_table_html(kpis: pd.DataFrame) -> str:
    rows = []
    for key, label in KPI_LABELS.items():
        if key not in kpis.index:
            continue
        cells = "".join(f"<td>{kpis.at[key, c]:,.3f}</td>" for c in kpis.columns)
        rows.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in kpis.columns)
    return f"<table><thead><tr><th>KPI</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _coordination_html(meta: dict, summaries: dict[str, pd.DataFrame]) -> str:
    """Per policy: rounds, messages and traffic per interval (and per participant: flat in the feeder's size for
    coordination along the tree), participant data reaching a central point, and the energy-cost gap to the
    central policy (the reference every claim is measured against)."""
    modes = {c["name"]: c.get("mode", "ideal") for c in meta.get("scenario", {}).get("controllers", [])}
    n_part = max(len({str(a.get("participant_id")) for a in meta.get("assets", [])}), 1)
    reference = next((p for p, m in modes.items() if m == "central"), None)
    ref_cost = float(summaries[reference]["cost_eur"].sum()) if reference in summaries else None
    rows = []
    for policy, s in summaries.items():
        cost = float(s["cost_eur"].sum())
        gap = "" if ref_cost in (None, 0.0) or policy == reference else f"{(cost - ref_cost) / abs(ref_cost):+.2%}"
        rows.append(
            f"<tr><th>{html.escape(policy)}</th><td>{html.escape(modes.get(policy, ''))}</td>"
            f"<td>{s['rounds'].mean():.1f}</td><td>{s['messages'].mean():,.0f}</td>"
            f"<td>{s['messages'].mean() / n_part:,.1f}</td><td>{s['bytes'].mean() / 1e3:,.1f}</td>"
            f"<td>{s['bytes'].mean() / n_part / 1e3:,.2f}</td><td>{s['central_bytes'].sum() / 1e3:,.1f}</td>"
            f"<td>{s['compute_s'].mean() * 1e3:,.1f}</td><td>{cost:,.2f}</td><td>{gap}</td></tr>"
        )
    head = ("<tr><th>policy</th><th>mode</th><th>rounds / interval</th><th>messages / interval</th>"
            "<th>messages / participant / interval</th><th>kB / interval</th><th>kB / participant / interval</th>"
            "<th>participant data at a central point [kB]</th>"
            "<th>decision time [ms / interval]</th><th>energy cost [EUR]</th>"
            f"<th>gap to {html.escape(reference or 'central')}</th></tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _stages_html(summaries: dict[str, pd.DataFrame]) -> str:
    """Per policy, the mean wall time of each stage of an interval (ms): where the compute goes."""
    head = "".join(f"<th>{html.escape(stage.replace('_', ' '))}</th>" for stage in STAGE_COLUMNS)
    rows = []
    for policy, s in summaries.items():
        cells = "".join(f"<td>{s[col].mean() * 1e3:,.2f}</td>" if col in s else "<td></td>"
                        for col in STAGE_COLUMNS.values())
        rows.append(f"<tr><th>{html.escape(policy)}</th>{cells}</tr>")
    return (f"<table><thead><tr><th>policy [ms / interval]</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _battery_soc(store: RunStore, policies: list[str]) -> pd.DataFrame:
    """Total battery energy (MWh) per policy over time."""
    frames = {}
    for p in policies:
        soc = store.read_table(p, "asset_soc_mwh")
        frames[p] = soc.sum(axis=1)
    return pd.DataFrame(frames)


def write_report(run_dir: Path, *, out: Path | None = None) -> Path:
    """Write ``RUN/report.html`` (or ``out``): KPI table and bars, feeder-head power, voltage envelope,
    costs, fallbacks, battery energy and payments of every policy in the run."""
    store = RunStore(run_dir)
    meta = store.meta()
    policies = store.policies()
    summaries = {p: store.read_table(p, "summary") for p in policies}
    limits = meta.get("scenario", {}).get("limits", {})
    kpis = store.kpis()
    soc = _battery_soc(store, policies)
    soc_fig = head_power_figure({p: pd.DataFrame({"p_head_mw": soc[p]}) for p in policies})
    soc_fig.update_layout(title=dict(text="Battery energy stored (MWh, all batteries)"))
    soc_fig.update_yaxes(title_text="MWh")
    payments = pd.DataFrame({p: s["participants_eur"] for p, s in summaries.items()})
    figures = [
        kpi_comparison_figure(kpis.reindex([k for k in KPI_LABELS if k in kpis.index]), labels=KPI_LABELS),
        head_power_figure(summaries, p_head_max_mw=limits.get("p_head_max_mw")),
        voltage_envelope_figure(summaries, v_min_pu=limits.get("v_min_pu", 0.95), v_max_pu=limits.get("v_max_pu", 1.05)),
        cost_figure(summaries),
        soc_fig,
        fallback_figure(summaries),
        payments_figure(payments if payments.abs().to_numpy().sum() > 0 else pd.DataFrame()),
    ]
    parts = []
    for i, fig in enumerate(figures):
        parts.append(pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0), config=PLOTLY_CONFIG))
    scenario = meta.get("scenario", {})
    title = f"gridtwin — {scenario.get('name', run_dir.name)}"
    step = scenario.get("step", "15min")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right}}th:first-child{{text-align:left}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<p>Feeder <b>{html.escape(str(meta.get('feeder')))}</b>, {meta.get('n_intervals')} intervals of
{format_duration(step)} from {html.escape(str(scenario.get('start')))}, seed {meta.get('seed')},
decisions every {format_duration(scenario.get("decision_period") or step)}.
Policies: {', '.join(html.escape(p) for p in policies)}.</p>
<h2>KPIs</h2>{_kpi_table_html(kpis)}
<h2>Coordination</h2>{_coordination_html(meta, summaries)}
<h2>Compute time by stage</h2>{_stages_html(summaries)}
{''.join(parts)}
</body></html>"""
    out = out or Path(run_dir) / "report.html"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
