"""The run store: one folder per run with metadata, per-policy Parquet tables and KPIs (DESIGN.md §9).

Layout::

    RUN/meta.json                      scenario, seed, package versions, times, policies
    RUN/kpis.parquet                   KPI × policy
    RUN/<policy>/<table>/part-NNNNNN.parquet
                                       summary, vm_pu, line_loading_percent, ... (see PolicyRecords.TABLES),
                                       appended in parts while the run goes, so a dashboard can read a live run
    RUN/status.json                    intervals done / total, running or finished (live progress)
    RUN/commands/                      operator commands for a running twin (twin.commands)

Every file is written to a temporary name and renamed, so a reader never sees half a file and a killed
run leaves only whole parts behind.
"""

from __future__ import annotations

import json
import os
import platform
import re
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from twin.names import check_policy_name, check_run_name
from twin.records.kpis import Kpis, kpi_table
from twin.records.recorder import PolicyRecords

__all__ = ["RunStore", "new_run_dir", "package_versions", "policy_dir"]

_VERSIONED = ("gridtwin", "pandapower", "simbench", "pandas", "numpy", "scipy", "cvxpy", "pyarrow")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def new_run_dir(root: Path, name: str) -> Path:
    """``root/<name>-<UTC timestamp>``, made unique if that folder exists; ``name`` is a run name
    (twin.names.check_run_name: no path components)."""
    check_run_name(name, field="run name")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = root / f"{slug}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{slug}-{stamp}-{n}"
    return path


def _atomic_parquet(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".parquet.tmp")
    frame.to_parquet(tmp)
    os.replace(tmp, path)


def _atomic_json(data: Any, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def policy_dir(run_dir: Path, policy: str) -> Path:
    """The folder of one policy inside a run folder (its tables, and its ledger when it settles): the name
    itself, which must be a safe policy name (twin.names: no path components; ValueError otherwise)."""
    return Path(run_dir) / check_policy_name(policy, field="policy")


class RunStore:
    """Reads and writes one run folder."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        full = {"created_utc": datetime.now(UTC).isoformat(), "versions": package_versions(), **meta}
        _atomic_json(full, self.path / "meta.json")

    def append(self, records: PolicyRecords) -> None:
        """Append one chunk of intervals of a policy as a new part of each table."""
        if len(records.summary) == 0:
            return
        for name in PolicyRecords.TABLES:
            folder = policy_dir(self.path, records.policy) / name
            folder.mkdir(parents=True, exist_ok=True)
            part = len(list(folder.glob("part-*.parquet")))
            _atomic_parquet(getattr(records, name), folder / f"part-{part:06d}.parquet")

    def compact(self) -> None:
        """Merge each table's parts into one file (a paced run writes one part per interval, and readers
        pay per file). The merged part is renamed into place before the old parts go."""
        for folder in sorted(self.path.glob("*/*")):
            parts = sorted(folder.glob("part-*.parquet"))
            if len(parts) < 2:
                continue
            merged = pd.concat([pd.read_parquet(p) for p in parts])
            _atomic_parquet(merged, folder / "part-000000.parquet")
            for p in parts[1:]:
                p.unlink()

    def write_status(self, *, done: int, total: int, state: str) -> None:
        _atomic_json({"done": done, "total": total, "state": state,
                      "updated_utc": datetime.now(UTC).isoformat()}, self.path / "status.json")

    def status(self) -> dict[str, Any]:
        path = self.path / "status.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"state": "unknown"}

    def write_kpis(self, kpis: dict[str, Kpis]) -> None:
        _atomic_parquet(kpi_table(kpis), self.path / "kpis.parquet")

    # -- reading -----------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / "meta.json").read_text(encoding="utf-8"))

    def policies(self) -> list[str]:
        return list(self.meta().get("policies", []))

    def kpis(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "kpis.parquet")

    def read_table(self, policy: str, table: str) -> pd.DataFrame:
        if table not in PolicyRecords.TABLES:
            raise ValueError(f"table={table!r}: expected one of {', '.join(PolicyRecords.TABLES)}")
        folder = policy_dir(self.path, policy) / table
        parts = sorted(folder.glob("part-*.parquet"))
        if not parts:
            raise FileNotFoundError(f"{folder}: no table {table!r} for policy {policy!r} in this run")
        table = pd.concat([pd.read_parquet(p) for p in parts])
        # A reader racing compact() may see the merged part and an old one: keep each interval once.
        return table[~table.index.duplicated(keep="first")]
