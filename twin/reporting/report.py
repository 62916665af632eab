"""The comparison report: one HTML page per run, built from the run store with the same figure functions the
dashboard uses (twin.reporting.figures). A settled run's page says what each participant earned under each
policy (``RUN/earnings.parquet``), and a run with faults shows, per fault window, how each policy rode through it.

plotly.js (4.8 MB) sits beside the page as ``RUN/plotly.min.js`` rather than inside it, so the page stays small
(the demo week with four policies: 0.9 MB) and still opens offline; served by the dashboard (``/report``)
the page loads the dashboard's own copy. Runs longer than ``DISPLAY_POINTS`` intervals are drawn as aggregates a
person cannot tell apart at that width (voltage envelopes by their extremes, powers by their means, money and
energy by their sums); every figure's full-resolution data is one click away: the page links each policy's
summary as CSV (``RUN/report-data/``) and the run's Parquet tables.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline

from twin.records.kpis import KPI_LABELS
from twin.records.recorder import STAGE_COLUMNS
from twin.records.runstore import RunStore
from twin.reporting.phase_section import three_phase_html
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

__all__ = ["DISPLAY_POINTS", "write_report"]

#: Time points per figure trace beyond which intervals are aggregated for display (three weeks at 15 minutes).
DISPLAY_POINTS = 2016
#: How a summary column is aggregated for display (others: mean).
_AGGREGATE = {"vm_max_pu": "max", "vm_min_pu": "min", "cost_eur": "sum", "participants_eur": "sum",
              "operator_eur": "sum", "n_fallback": "max", "pv_curtailed_mwh": "sum", "ev_unmet_mwh": "sum",
              "flex_unserved_mwh": "sum"}
#: Where the dashboard serves plotly.js (the page's fallback when plotly.min.js is not beside it).
_DASHBOARD_PLOTLY = "/_dash-component-suites/plotly/package_data/plotly.min.js"


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


def for_display(frame: pd.DataFrame, *, points: int = DISPLAY_POINTS) -> tuple[pd.DataFrame, int]:
    """``frame`` (time rows) aggregated to at most ``points`` rows of ``k`` consecutive intervals each, and ``k``
    (1: unchanged). Each bucket is labelled by its first interval."""
    n = len(frame)
    k = max(1, -(-n // points))
    if k == 1:
        return frame, 1
    bucket = np.arange(n) // k
    how = {c: _AGGREGATE.get(c, "mean") for c in frame.columns if frame[c].dtype.kind in "fiub"}
    grouped = frame[list(how)].astype(float).groupby(bucket).agg(how)
    grouped.index = frame.index[::k][: len(grouped)]
    return grouped, k


def _figure_html(fig: go.Figure) -> str:
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, config=PLOTLY_CONFIG)


def _write_plotly_js(folder: Path) -> str:
    """plotly.js beside the page (written once per version); the script tags that load it."""
    script = plotly.offline.get_plotlyjs()
    path = folder / "plotly.min.js"
    if not path.is_file() or path.stat().st_size != len(script.encode("utf-8")):
        tmp = path.with_name(".plotly.min.js.tmp")
        tmp.write_text(script, encoding="utf-8")
        os.replace(tmp, path)
    return ('<script src="plotly.min.js" charset="utf-8"></script>\n'
            f'<script>if (!window.Plotly) document.write(\'<script src="{_DASHBOARD_PLOTLY}" charset="utf-8">\' +'
            ' \'<\\/script>\');</script>')


def _full_data_html(run_dir: Path, policies: list[str], summaries: dict[str, pd.DataFrame], k: int) -> str:
    """Each policy's summary at full resolution as CSV beside the report, and links to every Parquet table."""
    folder = run_dir / "report-data"
    folder.mkdir(exist_ok=True)
    links = []
    for policy in policies:
        name = f"{policy}-summary.csv"
        tmp = folder / f".{name}.tmp"
        summaries[policy].to_csv(tmp)
        os.replace(tmp, folder / name)
        tables = sorted(p.name for p in (run_dir / policy).iterdir() if p.is_dir()) if (run_dir / policy).is_dir() \
            else []
        parquet = ", ".join(f'<a href="{html.escape(policy)}/{html.escape(t)}/">{html.escape(t)}</a>' for t in tables)
        links.append(f'<li><b>{html.escape(policy)}</b>: <a href="report-data/{html.escape(name)}">summary (CSV)</a>'
                     f"; Parquet tables: {parquet}</li>")
    shown = (f"Figures show aggregates of {k} intervals (voltages by their extremes, powers by their means, money "
             "and energy by their sums); the tables below are at full resolution." if k > 1 else
             "Figures show every interval.")
    return f"<h2>Full-resolution data</h2><p>{shown}</p><ul>{''.join(links)}</ul>"


#: The run's earnings table (twin.settlement.earnings writes it when a settled run ends: policy, participant,
#: rule, eur); read here as a file, since the report comes after settlement in the flow.
EARNINGS_FILE = "earnings.parquet"
#: Hours of context drawn on each side of a fault window.
_FAULT_CONTEXT = pd.Timedelta("6h")


def read_earnings(run_dir: Path) -> pd.DataFrame | None:
    """The run's earnings table, or None for a run that settled nothing (or was written before it existed)."""
    path = Path(run_dir) / EARNINGS_FILE
    return pd.read_parquet(path) if path.is_file() else None


def earnings_by_participant(table: pd.DataFrame, policies: list[str] | None = None) -> pd.DataFrame:
    """Participant × policy: the net of every rule (EUR, + = paid to the participant), participants in natural
    order (p-2 before p-10), policies in ``policies`` order."""
    wide = table.pivot_table(index="participant", columns="policy", values="eur", aggfunc="sum", fill_value=0.0)
    order = sorted(wide.index, key=lambda p: (len(str(p)), str(p)))
    columns = [p for p in (policies or list(wide.columns)) if p in wide.columns]
    wide = wide.reindex(index=order, columns=columns)
    wide.columns.name = None
    wide.index.name = "participant"
    return wide


def _money_table_html(frame: pd.DataFrame, corner: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join(f"<tr><th>{html.escape(str(i))}</th>" + "".join(f"<td>{v:,.2f}</td>" for v in row) + "</tr>"
                   for i, row in zip(frame.index, frame.to_numpy(float)))
    return f"<table><thead><tr><th>{html.escape(corner)}</th>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _earnings_html(run_dir: Path, policies: list[str]) -> str:
    """What each participant earned under each policy (net of every rule), and each rule's total."""
    table = read_earnings(run_dir)
    if table is None or table.empty:
        return ""
    folder = run_dir / "report-data"
    folder.mkdir(exist_ok=True)
    tmp = folder / ".earnings.csv.tmp"
    table.to_csv(tmp, index=False)
    os.replace(tmp, folder / "earnings.csv")
    per_participant = earnings_by_participant(table, policies)
    per_participant.loc["all participants"] = per_participant.sum()
    rules = table.pivot_table(index="rule", columns="policy", values="eur", aggfunc="sum", fill_value=0.0)
    rules = rules.reindex(columns=[p for p in policies if p in rules.columns])
    return ("<h2>Settlement: what each participant earns</h2><p>Net of every posting in each policy's ledger "
            "(EUR; positive = paid to the participant, negative = the participant pays, e.g. its energy bill in the "
            "community). Every policy is settled under the same contracts; <code>gridtwin ledger statement "
            "RUN/&lt;policy&gt; &lt;participant&gt;</code> lists the postings, <a href=\"report-data/earnings.csv\">"
            "earnings.csv</a> has them by rule.</p>"
            + _money_table_html(per_participant, "participant") + "<h3>By rule</h3>"
            + _money_table_html(rules, "rule"))


def _faults(meta: dict) -> list[dict]:
    """The scenario's fault windows from the run's meta.json (not trusted: an unreadable entry is skipped)."""
    out = []
    for f in meta.get("scenario", {}).get("faults", []) or []:
        try:
            start, end = (pd.Timestamp(f[k]) for k in ("start", "end"))
            start, end = (t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC") for t in (start, end))
            out.append({"kind": str(f["kind"]), "start": start, "end": end})
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return out


def _fault_label(fault: dict) -> str:
    return f"{fault['kind'].replace('_', ' ')} {fault['start']:%Y-%m-%d %H:%M}–{fault['end']:%H:%M} UTC"


def _ride_through_html(meta: dict, full: dict[str, pd.DataFrame]) -> tuple[str, list]:
    """Per fault: how each policy rode through it (inside the window, at full resolution), and a figure of the
    window with its context. Returns (html, figures)."""
    parts, figures = [], []
    limits = meta.get("scenario", {}).get("limits", {})
    for fault in _faults(meta):
        rows = []
        for policy, s in full.items():
            w = s[(s.index >= fault["start"]) & (s.index < fault["end"])]
            if w.empty:
                continue
            offline = int((~w["controller_online"].astype(bool)).sum()) if "controller_online" in w else 0
            rows.append(
                f"<tr><th>{html.escape(policy)}</th><td>{offline} of {len(w)}</td>"
                f"<td>{w['n_fallback'].max():,.0f}</td><td>{w['p_head_mw'].max() * 1e3:,.1f}</td>"
                f"<td>{w['vm_min_pu'].min():.4f}</td><td>{w['vm_max_pu'].max():.4f}</td>"
                f"<td>{w['cost_eur'].sum():,.2f}</td><td>{w['participants_eur'].sum():,.2f}</td></tr>")
        if not rows:
            continue
        head = ("<tr><th>policy</th><th>intervals without a controller</th><th>most assets on fallback</th>"
                "<th>peak import [kW]</th><th>lowest V [pu]</th><th>highest V [pu]</th><th>energy cost [EUR]</th>"
                "<th>participants earn [EUR]</th></tr>")
        label = _fault_label(fault)
        parts.append(f"<h3>{html.escape(label)}</h3><p>Inside the window, every interval.</p>"
                     f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>")
        lo, hi = fault["start"] - _FAULT_CONTEXT, fault["end"] + _FAULT_CONTEXT
        near = {p: s[(s.index >= lo) & (s.index < hi)] for p, s in full.items()}
        fig = head_power_figure(near, p_head_max_mw=limits.get("p_head_max_mw"))
        fig.add_vrect(x0=fault["start"], x1=fault["end"], fillcolor="#c62828", opacity=0.12, line_width=0,
                      annotation=dict(text=fault["kind"].replace("_", " ")), annotation_position="top left")
        fig.update_layout(title=dict(text=f"Feeder-head power around the {label} (every interval)"))
        figures.append(fig)
    if not parts:
        return "", figures
    return "<h2>Faults: how each policy rode through them</h2>" + "".join(parts), figures


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
    full = {p: store.read_table(p, "summary") for p in policies}
    shown = {p: for_display(s) for p, s in full.items()}
    summaries = {p: frame for p, (frame, _) in shown.items()}
    k = max((k for _, k in shown.values()), default=1)
    limits = meta.get("scenario", {}).get("limits", {})
    kpis = store.kpis()
    soc = _battery_soc(store, policies)
    soc = for_display(soc)[0] if len(soc) > DISPLAY_POINTS else soc
    soc_fig = head_power_figure({p: pd.DataFrame({"p_head_mw": soc[p]}) for p in policies})
    soc_fig.update_layout(title=dict(text="Battery energy stored (MWh, all batteries)"))
    soc_fig.update_yaxes(title_text="MWh")
    payments = pd.DataFrame({p: s["participants_eur"] for p, s in summaries.items()})
    faults = _faults(meta)
    fault_bands = pd.DataFrame({"start": [f["start"] for f in faults], "end": [f["end"] for f in faults],
                                "label": [f["kind"].replace("_", " ") for f in faults]}) if faults else None
    ride_through, fault_figures = _ride_through_html(meta, full)
    figures = [
        kpi_comparison_figure(kpis.reindex([k for k in KPI_LABELS if k in kpis.index]), labels=KPI_LABELS),
        head_power_figure(summaries, p_head_max_mw=limits.get("p_head_max_mw")),
        voltage_envelope_figure(summaries, v_min_pu=limits.get("v_min_pu", 0.95), v_max_pu=limits.get("v_max_pu", 1.05)),
        cost_figure(summaries),
        soc_fig,
        fallback_figure(summaries, faults=fault_bands),
        payments_figure(payments if payments.abs().to_numpy().sum() > 0 else pd.DataFrame()),
    ]
    plotly_tags = _write_plotly_js(Path(run_dir))  # in <head>: every figure's script below needs it
    parts = []
    for fig in figures:
        parts.append(_figure_html(fig))
    fault_parts = "".join(_figure_html(fig) for fig in fault_figures)
    scenario = meta.get("scenario", {})
    title = f"gridtwin — {scenario.get('name', run_dir.name)}"
    step = scenario.get("step", "15min")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right}}th:first-child{{text-align:left}}</style>
{plotly_tags}
</head><body>
<h1>{html.escape(title)}</h1>
<p>Feeder <b>{html.escape(str(meta.get('feeder')))}</b>, {meta.get('n_intervals')} intervals of
{format_duration(step)} from {html.escape(str(scenario.get('start')))}, seed {meta.get('seed')},
decisions every {format_duration(scenario.get("decision_period") or step)}.
Policies: {', '.join(html.escape(p) for p in policies)}.</p>
<h2>KPIs</h2>{_kpi_table_html(kpis)}
{three_phase_html(Path(run_dir), meta)}
<h2>Coordination</h2>{_coordination_html(meta, full)}
{_earnings_html(Path(run_dir), policies)}
{ride_through}{fault_parts}
<h2>Compute time by stage</h2>{_stages_html(full)}
{''.join(parts)}
{_full_data_html(Path(run_dir), policies, full, k)}
</body></html>"""
    out = out or Path(run_dir) / "report.html"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
