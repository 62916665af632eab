"""The report's "Three phases" section: per-policy unbalance KPIs and the buses whose worst phase binds.

Owns reading ``three_phase/`` of a run folder (written by ``twin.records.phase_kpis.evaluate_three_phase``) into
HTML; a balanced run has no such folder and gets no section.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

__all__ = ["three_phase_html"]

#: Buses listed per policy: the most unbalanced ones.
_TOP_BUSES = 10


def three_phase_html(run_dir: Path, meta: dict) -> str:
    folder = Path(run_dir) / "three_phase"
    kpis_path = folder / "kpis.json"
    if not kpis_path.is_file():
        return ""
    kpis = json.loads(kpis_path.read_text(encoding="utf-8"))
    about = meta.get("three_phase", {})
    rows = []
    for policy, k in kpis.items():
        under = k["undervoltage_bus_intervals"]
        over = k["overvoltage_bus_intervals"]
        per_phase = " / ".join(f"{under[p] + over[p]}" for p in ("a", "b", "c"))
        rows.append(
            f"<tr><th>{html.escape(policy)}</th><td>{per_phase}</td><td>{k['voltage_violation_bus_intervals']}</td>"
            f"<td>{html.escape(k['worst_phase'])}</td><td>{k['vm_min_pu']:.4f}</td><td>{k['vm_max_pu']:.4f}</td>"
            f"<td>{k['vuf_max_percent']:.3f}</td><td>{k['vuf_above_limit_bus_intervals']}</td>"
            f"<td>{k['vuf_en50160_breached_buses']}</td><td>{k['neutral_i_max_ka'] * 1e3:.1f}</td></tr>")
    table = ("<table><tr><th>policy</th><th>out-of-band bus-intervals a / b / c</th><th>any phase</th>"
             "<th>worst phase</th><th>V min [pu]</th><th>V max [pu]</th><th>VUF max [%]</th>"
             "<th>bus-intervals VUF &gt; 2 %</th><th>buses breaching EN 50160</th><th>neutral I max [A]</th></tr>"
             + "".join(rows) + "</table>")
    buses = []
    for policy in kpis:
        path = folder / f"{policy}-buses.parquet"
        if not path.is_file():
            continue
        frame = pd.read_parquet(path).sort_values("vuf_max_percent", ascending=False).head(_TOP_BUSES)
        body = "".join(
            f"<tr><th>{int(bus)}</th><td>{html.escape(str(r.worst_phase))}</td><td>{r.vm_min_pu:.4f}</td>"
            f"<td>{r.vm_max_pu:.4f}</td><td>{r.vuf_max_percent:.3f}</td><td>{r.vuf_p95_percent:.3f}</td>"
            f"<td>{100 * r.vuf_share_above_limit:.1f}</td></tr>" for bus, r in frame.iterrows())
        buses.append(f"<h3>{html.escape(policy)}: the {len(frame)} most unbalanced buses</h3><table><tr><th>bus</th>"
                     "<th>worst phase</th><th>V min [pu]</th><th>V max [pu]</th><th>VUF max [%]</th>"
                     f"<th>VUF p95 [%]</th><th>intervals VUF &gt; 2 % [%]</th></tr>{body}</table>")
    notes = "; ".join(html.escape(str(n)) for n in about.get("zero_sequence_assumptions", []))
    return ("<h2>Three phases</h2><p>Each policy's recorded dispatch solved on the three-phase model "
            f"(EN 50160: VUF within 2 % for 95 % of intervals). Phases: {html.escape(str(about.get('allocation', '')))}."
            f" Zero-sequence data: {notes}.</p>" + table + "".join(buses))
