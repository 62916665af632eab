"""The run store: one folder per run with metadata, per-policy Parquet tables and KPIs (DESIGN.md §9).

Layout::

    RUN/meta.json                      scenario, seed, package versions, times, policies
    RUN/kpis.parquet                   KPI × policy
    RUN/<policy>/<table>/part-NNNNNN.parquet
                                       summary, vm_pu, line_loading_percent, ... (see PolicyRecords.TABLES),
                                       appended in parts while the run goes, so a dashboard can read a live run;
                                       the wide tables in the matrix layout (twin.records.parts), the summary a
                                       Parquet column per quantity
    RUN/status.json                    intervals committed / total; running, finished, failed or
                                       interrupted; the writer's heartbeat (see run_liveness)
    RUN/commands/                      operator commands for a running twin (twin.commands)

Every file is written to a temporary name and renamed, so a reader never sees half a file and a killed
run leaves only whole parts behind. ``status.json``'s ``done`` is the run's commit point: a run writes an
interval's parts, then its ledgers, then ``done``; parts past ``done`` are what a kill left of an uncommitted
chunk, and a resumed run removes them (:meth:`RunStore.truncate`).
"""

from __future__ import annotations

import json
import os
import platform
import re
import threading
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from twin.names import check_policy_name, check_run_name
from twin.records.kpis import Kpis, kpi_table
from twin.records.parts import PART_GLOB, part_number, part_paths, read_parts, write_part
from twin.records.recorder import PolicyRecords

__all__ = ["HEARTBEAT_S", "STALE_AFTER_S", "Heartbeat", "RunStore", "new_run_dir", "package_versions", "policy_dir",
           "run_liveness"]

#: How often a running twin rewrites ``heartbeat_at`` in status.json (seconds).
HEARTBEAT_S = 5.0
#: A "running" run whose heartbeat is older than this has stopped: its writer was killed.
STALE_AFTER_S = 30.0
#: States a writer leaves behind when it stops on its own.
STOPPED_STATES = ("finished", "failed", "interrupted")

#: Tables written in the matrix layout (one dtype, one column per bus / line / trafo / asset); the rest a
#: Parquet column per quantity (twin.records.parts).
MATRIX_TABLES = frozenset(PolicyRecords.TABLES) - {"summary"}

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


def _write_table_part(frame: pd.DataFrame, folder: Path, number: int) -> None:
    write_part(frame, folder / f"part-{number:06d}.parquet", matrix=folder.name in MATRIX_TABLES)


def _atomic_json(data: Any, path: Path, *, durable: bool = False) -> None:
    tmp = path.with_suffix(f".json.{threading.get_ident()}.tmp")  # the heartbeat thread writes too
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2, default=str))
        if durable:  # a commit point: on disk before it is renamed into place
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


def run_liveness(run_dir: Path | str, *, status: dict[str, Any] | None = None, now: datetime | None = None,
                 stale_after_s: float = STALE_AFTER_S) -> tuple[str, str]:
    """(state, why) of a run folder as a reader should show it: "running" while its writer's heartbeat is
    fresh; "stopped" when it says running but the heartbeat is older than ``stale_after_s`` (the writer was
    killed); else what status.json says ("finished", "failed", "interrupted"; "unknown" without one). A
    status without a heartbeat (a writer from before heartbeats) counts as running."""
    if status is None:
        try:
            status = json.loads((Path(run_dir) / "status.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "unknown", "no readable status.json"
    if not isinstance(status, dict):
        return "unknown", "status.json is not an object"
    state = str(status.get("state", "unknown"))
    done, total = status.get("done"), status.get("total")
    where = f" after {done} of {total} intervals" if done is not None and total is not None else ""
    # A live run (its status carries the backlog) resumes by running gridtwin live on the same folder again.
    resume = ("resume it with gridtwin live --out on this folder" if "live" in status
              else "resume it with gridtwin run --resume")
    if state in STOPPED_STATES:
        why = {"finished": f"it finished{where}", "failed": f"it failed{where} (see its log.txt)",
               "interrupted": f"it was interrupted{where}; {resume}"}[state]
        return state, why
    if state != "running":
        return state, f"status {state!r}"
    pid = status.get("pid")
    if isinstance(pid, int) and status.get("host") == platform.node() and not _process_exists(pid):
        return "stopped", f"its writer (process {pid}) is gone: killed{where}; {resume}"
    try:
        beat = datetime.fromisoformat(str(status["heartbeat_at"]))
    except (KeyError, ValueError, TypeError):
        return "running", "running (no heartbeat recorded)"
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=UTC)
    age = ((now or datetime.now(UTC)) - beat).total_seconds()
    if age > stale_after_s:
        return "stopped", f"its writer stopped: no heartbeat for {age:.0f} s (killed?){where}; {resume}"
    return "running", f"running, heartbeat {age:.0f} s ago"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: it exists
    return True


class Heartbeat:
    """Rewrites status.json every ``every_s`` seconds from a daemon thread while a run goes, so a reader can
    tell a live writer from a killed one (``run_liveness``); the run's own status writes go through
    :meth:`write` so the two never interleave."""

    def __init__(self, store: RunStore, *, every_s: float = HEARTBEAT_S) -> None:
        self.store, self.every_s = store, every_s
        self._lock = threading.Lock()
        self._status: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="gridtwin-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def write(self, *, done: int, total: int, state: str, durable: bool = False,
              live: dict[str, Any] | None = None) -> None:
        """A status write; ``live`` (a live run's backlog) is kept and repeated by every beat until the next."""
        with self._lock:
            self._status = {"done": done, "total": total, "state": state, "live": live}
            self.store.write_status(**self._status, durable=durable, heartbeat=True)
            if state in STOPPED_STATES:
                self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self.every_s)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            with self._lock:
                if self._status is not None and not self._stop.is_set():
                    self.store.write_status(**self._status, updated=False, heartbeat=True)


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
            parts = part_paths(folder)
            _write_table_part(getattr(records, name), folder, part_number(parts[-1]) + 1 if parts else 0)

    def compact(self, *, min_parts: int = 2) -> None:
        """Merge each table's parts into one file (a paced run writes one part per interval, and readers
        pay per file), for tables with at least ``min_parts`` parts. The merged part is renamed into place
        before the old parts go."""
        for folder in sorted(self.path.glob("*/*")):
            parts = part_paths(folder)
            if len(parts) < max(min_parts, 2):
                continue
            merged = read_parts(parts)
            merged = merged[~merged.index.duplicated(keep="first")]  # an earlier compaction a kill cut short
            _write_table_part(merged, folder, 0)
            for p in parts[1:]:
                p.unlink()

    def write_status(self, *, done: int, total: int, state: str, durable: bool = False,
                     updated: bool = True, heartbeat: bool = False, live: dict[str, Any] | None = None) -> None:
        """``done``: intervals committed. ``updated_utc`` is now unless ``updated`` is False (a heartbeat:
        nothing new was committed). ``durable``: fsync before the rename (a commit). ``heartbeat``: the writer
        keeps a heartbeat (:class:`Heartbeat`): record it, with the writer's process id and host."""
        now = datetime.now(UTC).isoformat()
        last = self.status().get("updated_utc", now) if not updated else now
        status: dict[str, Any] = {"done": done, "total": total, "state": state, "updated_utc": last}
        if heartbeat:
            status.update(heartbeat_at=now, pid=os.getpid(), host=platform.node())
        if live is not None:  # a live run's backlog (twin.live.live_run): behind_s, ingest_queue, seq_missing
            status["live"] = live
        _atomic_json(status, self.path / "status.json", durable=durable)

    def truncate(self, intervals: int, *, times: pd.DatetimeIndex) -> None:
        """Cut every table back to its first ``intervals`` rows (a resumed run: parts past the commit point
        are what a kill left of an uncommitted chunk). The rows kept must be ``times[:intervals]``; each
        changed table becomes one part, renamed into place before the old parts go."""
        for folder in sorted(self.path.glob("*/*")):
            for leftover in folder.glob(PART_GLOB + ".tmp"):
                leftover.unlink()
            parts = part_paths(folder)
            if not parts:
                continue
            table = read_parts(parts)
            table = table[~table.index.duplicated(keep="first")]  # a compaction a kill cut short
            kept = table.iloc[:intervals]
            if len(kept) < intervals or not pd.DatetimeIndex(kept.index).equals(times[:intervals]):
                raise ValueError(f"{folder}: holds {len(kept)} of the {intervals} committed intervals, or other "
                                 "times: the run folder was changed by hand")
            if len(parts) == 1 and len(table) == intervals:
                continue
            if intervals == 0:
                for p in parts:
                    p.unlink()
                continue
            _write_table_part(kept, folder, 0)
            for p in parts[1:]:
                p.unlink()

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
        parts = part_paths(folder)
        if not parts:
            raise FileNotFoundError(f"{folder}: no table {table!r} for policy {policy!r} in this run")
        table = read_parts(parts)
        # A reader racing compact() may see the merged part and an old one: keep each interval once.
        return table[~table.index.duplicated(keep="first")]
