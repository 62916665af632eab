"""Where a three-phase run keeps its per-interval phase tables: ``three_phase/<policy>-<name>.parquet``, time ×
bus (text ids), float32, in ``twin.records.parts``' matrix layout. Written by ``twin.records.phase_kpis``, read by
the dashboard; this module holds only the names, so a reader needs no power-flow code."""

from __future__ import annotations

from pathlib import Path

__all__ = ["EN50160_VUF_LIMIT_PERCENT", "INTERVAL_TABLES", "PHASE_FOLDER", "interval_table_path"]

#: EN 50160: 95 % of the 10-minute mean values of the voltage unbalance factor over a week stay within 2 %.
EN50160_VUF_LIMIT_PERCENT = 2.0

#: Each phase's voltage magnitude, the positive-sequence voltage |V1| and the VUF |V2|/|V1| in percent, per bus
#: (NaN rows: intervals that did not converge).
INTERVAL_TABLES = ("vm_a_pu", "vm_b_pu", "vm_c_pu", "v1_pu", "vuf_percent")
PHASE_FOLDER = "three_phase"


def interval_table_path(run_dir: Path, policy: str, name: str) -> Path:
    return Path(run_dir) / PHASE_FOLDER / f"{policy}-{name}.parquet"
