"""What the dashboard reads from a run folder, cached per app and read incrementally while the twin writes.

Owns reading only: run metadata and status, per-policy tables (new Parquet parts are read once and appended;
their format is twin.records.parts'),
KPIs (the run's ``kpis.parquet``, or the same ``twin.records.kpis.compute_kpis`` over the parts so far while the run
goes), the feeder topology, operator commands, the settlement ledger (through ``twin.settlement``'s public
functions), what-if study tables and a three-phase run's per-interval phase tables (``three_phase/``). Nothing
here writes to the run folder; operator commands go through ``twin.commands.CommandChannel`` in the app. One
``RunData`` per app: no module-level caches.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from controllers.api import NetworkLimits
from dashboards.timeline import Axis
from twin.commands import CommandChannel
from twin.records.kpis import KPI_LABELS, compute_kpis, kpi_table
from twin.records.parts import part_paths, read_part, read_parts
from twin.records.phase_tables import INTERVAL_TABLES, interval_table_path
from twin.records.recorder import PolicyRecords
from twin.names import is_policy_name
from twin.records.runstore import RunStore, policy_dir, run_liveness
from twin.grid.topology import FEEDER_FILENAME, FeederTopology, TopologyError, read_feeder_topology

__all__ = ["LedgerView", "PhaseTables", "RunData", "StudyTable", "reference_policy"]

_LEDGER_FILENAME = "ledger.sqlite"


def reference_policy(policies: list[str]) -> str | None:
    """The incumbent every claim is measured against: a policy named like SCADA / central, else the first."""
    for pattern in ("scada", "central"):
        for policy in policies:
            if pattern in policy.lower():
                return policy
    return policies[0] if policies else None


def _stat_key(*paths: Path) -> tuple[tuple[int, int], ...]:
    out = []
    for path in paths:
        try:
            st = path.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append((0, -1))
    return tuple(out)


@dataclass
class _TableCache:
    #: names of the parts read into ``frame``, in order, and (mtime, size) of the first: the only part a writer
    #: ever rewrites (compaction and a resumed run's truncation leave one merged part-000000)
    names: tuple[str, ...] = ()
    first: tuple[int, int] = (0, -1)
    frame: pd.DataFrame | None = None

    @property
    def parts(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class LedgerView:
    """The settlement ledger as the dashboard shows it (amounts are Decimal, EUR)."""

    entries: int
    verified: bool
    problems: tuple[str, ...]
    first_bad_entry: int | None
    checkpoints: int
    last_checkpoint: Mapping[str, Any] | None
    balances: Mapping[str, Decimal]
    participants: tuple[str, ...]
    #: index interval end (UTC), one column "participants": net amount paid to participant accounts
    payments: pd.DataFrame
    error: str = ""
    #: time.monotonic() when this view was read, and the wall-clock time (UTC) for display
    read_at: float = 0.0
    read_utc: str = ""
    #: "ok" | "incomplete" (no closing checkpoint yet: a run still going, or killed) | "failed"
    status: str = "ok"
    #: why an intact ledger is not complete, and whether signatures were checked against a trusted key
    notes: tuple[str, ...] = ()
    #: where the trusted operator key came from; "" when none is configured (signatures not checked)
    trusted_key_source: str = ""


@dataclass(frozen=True)
class PhaseTables:
    """One policy's per-interval three-phase results (``twin.records.phase_tables.INTERVAL_TABLES``): arrays
    ``[t, bus]`` over ``index`` × ``bus`` (text ids); ``vm_pu`` is ``[t, bus, phase]`` (a, b, c)."""

    index: pd.DatetimeIndex
    bus: pd.Index
    vm_pu: np.ndarray
    v1_pu: np.ndarray
    vuf_percent: np.ndarray

    def at(self, when: Any, buses: pd.Index) -> dict[str, np.ndarray] | None:
        """At interval ``when``, per bus of ``buses`` (NaN where not in the tables): ``vm_pu [bus, 3]``,
        ``v1_pu``, ``vuf_percent``, ``worst`` (0/1/2 = a/b/c, the phase farthest from 1 pu; -1 without data)
        and ``vm_worst_pu``. None when the tables have no such interval."""
        try:
            row = self.index.get_loc(pd.Timestamp(when))
        except (KeyError, TypeError, ValueError):
            return None
        if not isinstance(row, (int, np.integer)):
            return None
        col = self.bus.get_indexer(buses)
        have = col >= 0
        vm = np.full((len(buses), 3), np.nan)
        vm[have] = self.vm_pu[row][col[have]]
        v1 = np.full(len(buses), np.nan)
        vuf = np.full(len(buses), np.nan)
        v1[have] = self.v1_pu[row, col[have]]
        vuf[have] = self.vuf_percent[row, col[have]]
        known = np.isfinite(vm).all(axis=1)
        worst = np.where(known, np.argmax(np.nan_to_num(np.abs(vm - 1.0), nan=-1.0), axis=1), -1)
        vm_worst = np.where(known, vm[np.arange(len(buses)), np.maximum(worst, 0)], np.nan)
        return {"vm_pu": vm, "v1_pu": v1, "vuf_percent": vuf, "worst": worst, "vm_worst_pu": vm_worst}


@dataclass(frozen=True)
class StudyTable:
    name: str
    table: pd.DataFrame | None
    error: str = ""

    @property
    def kpi_columns(self) -> list[str]:
        if self.table is None:
            return []
        return [c for c in self.table.columns if c not in ("variant_id", "policy")
                and pd.api.types.is_numeric_dtype(self.table[c]) and not pd.api.types.is_bool_dtype(self.table[c])]


@dataclass
class RunData:
    """Cached, thread-safe reader of one run folder (and an optional folder of study results)."""

    run_dir: Path
    studies_dir: Path | None = None
    #: While a run goes (no kpis.parquet yet), recompute its KPIs at most this often.
    live_kpis_every_s: float = 10.0
    #: While a ledger grows, re-verify and re-read it at most this often, in a background thread
    #: (0: synchronously on every change).
    ledger_every_s: float = 30.0
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _tables: dict[tuple[str, str], _TableCache] = field(default_factory=dict, repr=False)
    _memo: dict[str, tuple[Any, Any]] = field(default_factory=dict, repr=False)
    _live_kpis_at: float = field(default=-math.inf, repr=False)
    _refreshing: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.store = RunStore(self.run_dir)
        self.commands = CommandChannel(self.run_dir)

    # -- small files -----------------------------------------------------------------------------------
    def memoized(self, name: str, key: Any, compute: Any) -> Any:
        """``compute()``, cached under ``name`` until ``key`` changes (for views derived from the run)."""
        return self._memoized(name, key, compute)

    def _memoized(self, name: str, key: Any, compute: Any) -> Any:
        with self._lock:
            hit = self._memo.get(name)
            if hit is not None and hit[0] == key:
                return hit[1]
        value = compute()
        with self._lock:
            self._memo[name] = (key, value)
        return value

    def meta(self) -> dict[str, Any]:
        path = self.run_dir / "meta.json"

        def load() -> dict[str, Any]:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return {}
            return data if isinstance(data, dict) else {}

        return self._memoized("meta", _stat_key(path), load)

    def status(self) -> dict[str, Any]:
        """status.json as the twin wrote it, but a "running" run whose writer is gone (stale heartbeat, or its
        process is gone) shows as "stopped"; ``reason`` says why (twin.records.runstore.run_liveness)."""
        try:
            data = self.store.status()
        except (OSError, ValueError):
            return {"state": "unknown"}
        if not isinstance(data, dict):
            return {"state": "unknown"}
        state, reason = run_liveness(self.run_dir, status=data)
        return {**data, "state": state, "reason": reason}

    def status_age_s(self, status: Mapping[str, Any] | None = None) -> float | None:
        """Seconds since the twin last wrote status.json (None when unknown)."""
        status = self.status() if status is None else status
        try:
            updated = pd.Timestamp(status["updated_utc"])
        except (KeyError, ValueError, TypeError):
            return None
        if pd.isna(updated):
            return None
        if updated.tzinfo is None:
            updated = updated.tz_localize("UTC")
        return max(0.0, (pd.Timestamp(datetime.now(UTC)) - updated).total_seconds())

    def policies(self) -> list[str]:
        """The run's policies; a name that could not be a policy folder (a crafted meta.json) is left out,
        so nothing outside the run folder is ever read."""
        listed = self.meta().get("policies", [])
        return [p for p in listed if is_policy_name(p)] if isinstance(listed, list) else []

    def scenario(self) -> dict[str, Any]:
        scenario = self.meta().get("scenario")
        return scenario if isinstance(scenario, dict) else {}

    def policy_modes(self) -> dict[str, str]:
        """Each policy's mode ("ideal" | "central" | "agents") from the scenario; "?" when the run does not say."""
        controllers = self.scenario().get("controllers")
        listed = {str(c.get("name")): str(c.get("mode", "ideal")) for c in controllers if isinstance(c, dict)} if (
            isinstance(controllers, list)) else {}
        return {p: listed.get(p, "?") for p in self.policies()}

    def has_settlement(self) -> bool:
        return bool(self.scenario().get("settlement"))

    def axis(self) -> Axis:
        """The run's time axis so far: the longest summary of any policy (they advance in lock-step)."""
        longest = max(self.summaries().values(), key=len, default=None)
        index = pd.DatetimeIndex(longest.index) if longest is not None else pd.DatetimeIndex([])
        return Axis.of(index, self.step())

    def run_name(self) -> str:
        scenario = self.meta().get("scenario")
        name = scenario.get("name") if isinstance(scenario, dict) else None
        return str(name or self.run_dir.name)

    def limits(self) -> NetworkLimits:
        scenario = self.meta().get("scenario")
        raw = scenario.get("limits", {}) if isinstance(scenario, dict) else {}
        known = {k: raw[k] for k in ("v_min_pu", "v_max_pu", "loading_max_percent", "p_head_max_mw") if k in raw}
        try:
            return NetworkLimits(**known)
        except TypeError:
            return NetworkLimits()

    def step(self) -> pd.Timedelta:
        scenario = self.meta().get("scenario")
        try:
            return pd.Timedelta(scenario.get("step", "15min")) if isinstance(scenario, dict) else pd.Timedelta("15min")
        except (ValueError, TypeError):
            return pd.Timedelta("15min")

    def assets(self) -> pd.DataFrame:
        """The static asset table from meta.json (index asset_id; kind, bus, participant_id, ...)."""

        def build() -> pd.DataFrame:
            rows = self.meta().get("assets") or []
            frame = pd.DataFrame.from_records(rows) if isinstance(rows, list) else pd.DataFrame()
            if "asset_id" in frame.columns:
                frame = frame.set_index("asset_id")
            frame.index = frame.index.astype(str)
            return frame

        return self._memoized("assets", _stat_key(self.run_dir / "meta.json"), build)

    def participants(self) -> list[str]:
        assets = self.assets()
        if "participant_id" not in assets.columns:
            return []
        ids = {str(p) for p in assets["participant_id"] if str(p) not in ("", "nan", "None")}
        return sorted(ids)

    def topology(self) -> FeederTopology | None:
        path = self.run_dir / FEEDER_FILENAME

        def load() -> FeederTopology | None:
            try:
                return read_feeder_topology(path)
            except (FileNotFoundError, TopologyError):
                return None

        return self._memoized("topology", _stat_key(path), load)

    # -- three phases ----------------------------------------------------------------------------------
    def has_three_phase(self) -> bool:
        """Whether the run states it was three-phase and any policy's phase tables are there."""
        return isinstance(self.meta().get("three_phase"), dict) and any(
            self.three_phase(p) is not None for p in self.policies())

    def three_phase(self, policy: str) -> PhaseTables | None:
        """``policy``'s per-interval phase tables (written after a three-phase run), None when absent or
        unreadable. Cached until the files change."""
        if policy not in self.policies():
            return None
        paths = [interval_table_path(self.run_dir, policy, name) for name in INTERVAL_TABLES]

        def load() -> PhaseTables | None:
            try:
                frames = {name: read_part(path) for name, path in zip(INTERVAL_TABLES, paths, strict=True)}
            except Exception:  # noqa: BLE001 — missing or unreadable (pyarrow raises several types): not shown
                return None
            first = frames[INTERVAL_TABLES[0]]
            if any(not f.index.equals(first.index) or not f.columns.equals(first.columns) for f in frames.values()):
                return None
            arrays = {name: f.to_numpy(dtype=np.float64, na_value=np.nan) for name, f in frames.items()}
            return PhaseTables(index=pd.DatetimeIndex(first.index), bus=pd.Index(first.columns.astype(str)),
                               vm_pu=np.stack([arrays["vm_a_pu"], arrays["vm_b_pu"], arrays["vm_c_pu"]], axis=2),
                               v1_pu=arrays["v1_pu"], vuf_percent=arrays["vuf_percent"])

        return self._memoized(f"three_phase:{policy}", _stat_key(*paths), load)

    # -- tables ----------------------------------------------------------------------------------------
    def table(self, policy: str, name: str) -> pd.DataFrame:
        """All parts written so far of one policy's table (empty frame when there are none). Parts are
        immutable once renamed into place, so only parts not seen before are read."""
        if policy not in self.policies():  # only the run's own policy folders, whatever a request names
            return pd.DataFrame()
        folder = policy_dir(self.run_dir, policy) / name
        with self._lock:
            cache = self._tables.setdefault((policy, name), _TableCache())
            parts = part_paths(folder)
            names = tuple(p.name for p in parts)
            first = _stat_key(parts[0])[0] if parts else (0, -1)
            # Parts merged (the run's closing compaction) or cut back (a resumed run): read them all again.
            kept = cache.parts if names[:cache.parts] == cache.names and first == cache.first else 0
            if len(names) > kept or kept < cache.parts:
                try:
                    new = read_parts(parts[kept:])
                except FileNotFoundError:  # a part merged away while listed: the next refresh reads the merge
                    return cache.frame if cache.frame is not None else pd.DataFrame()
                frame = new if kept == 0 or cache.frame is None else pd.concat([cache.frame, new])
                if frame.index.has_duplicates:  # a read racing the closing compaction: each interval once
                    frame = frame[~frame.index.duplicated(keep="first")]
                cache.names, cache.first, cache.frame = names, first, frame
            return cache.frame if cache.frame is not None else pd.DataFrame()

    def warm(self) -> None:
        """Read every table of every policy and the feeder now (the dashboard calls it in the background at
        start): a week of a 9,099-bus feeder takes tens of seconds to read, which the first page would
        otherwise wait for."""
        self.topology()
        for policy in self.policies():
            for name in PolicyRecords.TABLES:
                self.table(policy, name)

    def summaries(self) -> dict[str, pd.DataFrame]:
        """Summary table per policy that has one (in meta.json order)."""
        out = {}
        for policy in self.policies():
            frame = self.table(policy, "summary")
            if len(frame):
                out[policy] = frame
        return out

    def records(self, policy: str) -> PolicyRecords:
        """All of ``policy``'s tables, cut to the intervals every one of them has: a running twin writes
        an interval's tables one after the other, so a read can catch some with one row more."""
        tables = {name: self.table(policy, name) for name in PolicyRecords.TABLES}
        rows = min((len(t) for t in tables.values() if len(t)), default=0)
        tables = {name: t.iloc[:rows] if len(t) > rows else t for name, t in tables.items()}
        return PolicyRecords(policy=policy, step=self.step(), **tables)

    def kpis(self) -> pd.DataFrame:
        """KPI × policy: the run's kpis.parquet when written, else computed from the parts so far."""
        path = self.run_dir / "kpis.parquet"
        if path.exists():
            return self._memoized("kpis", _stat_key(path), lambda: pd.read_parquet(path))
        key = (self.status().get("done"), self.status().get("updated_utc"), tuple(self.policies()))
        with self._lock:
            hit = self._memo.get("live_kpis")
            fresh = time.monotonic() - self._live_kpis_at < self.live_kpis_every_s

        def live() -> pd.DataFrame:
            kpis = {}
            for policy in self.policies():
                if len(self.table(policy, "summary")):
                    kpis[policy] = compute_kpis(self.records(policy), limits=self.limits())
            return kpi_table(kpis) if kpis else pd.DataFrame(index=list(KPI_LABELS))

        if hit is not None and len(hit[1].columns):  # an empty table (no interval yet) is never kept
            # All tables (assets included) feed compute_kpis; re-reading them every refresh of a paced run
            # would cost more than the rest of the Overview (seconds on a 9,099-bus feeder), so live KPIs are
            # recomputed at most every live_kpis_every_s, in the background, and the last ones shown meanwhile.
            with self._lock:
                due = not fresh and hit[0] != key and "live_kpis" not in self._refreshing
                if due:
                    self._refreshing.add("live_kpis")
                    threading.Thread(target=self._refresh_live_kpis, args=(key, live), daemon=True,
                                     name="gridtwin-live-kpis").start()
            return hit[1]
        value = self._memoized("live_kpis", key, live)
        with self._lock:
            self._live_kpis_at = time.monotonic()
        return value

    # -- commands --------------------------------------------------------------------------------------
    def command_history(self) -> pd.DataFrame:
        """Pending and finished operator commands, newest first (columns: state, kind, operator,
        participant_id, duration, verdict, detail, applied_at, issued_utc, file)."""
        rows = []
        pending = sorted(self.commands.pending.glob("*.json")) if self.commands.pending.exists() else []
        for path in pending:
            try:
                cmd = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                cmd = {}
            cmd = cmd if isinstance(cmd, dict) else {}
            rows.append({"state": "pending", "kind": cmd.get("kind"), "operator": cmd.get("operator"),
                         "participant_id": cmd.get("participant_id"), "duration": cmd.get("duration"),
                         "verdict": "", "detail": "waiting for the twin's next interval", "applied_at": None,
                         "issued_utc": cmd.get("issued_utc"), "file": path.name})
        try:
            done = self.commands.history()
        except (OSError, ValueError, KeyError):
            done = pd.DataFrame()
        for rec in done.to_dict(orient="records"):
            rows.append({"state": "done", "issued_utc": None, **rec})
        columns = ["state", "kind", "operator", "participant_id", "duration", "verdict", "detail", "applied_at",
                   "issued_utc", "file"]
        frame = pd.DataFrame(rows, columns=columns)
        # File names start with the submission time, so sorting by name is submission order.
        return frame.sort_values("file", ascending=False, kind="stable").reset_index(drop=True)

    def fault_windows(self) -> pd.DataFrame:
        """Applied faults as (start, end, label) in run time; a later clear_faults ends earlier windows."""
        history = self.command_history()
        applied = history[(history["state"] == "done") & (history["verdict"] == "applied")].iloc[::-1]
        windows: list[dict[str, Any]] = []
        for row in applied.itertuples(index=False):
            try:
                start = pd.Timestamp(row.applied_at)
            except (ValueError, TypeError):
                continue
            if pd.isna(start):
                continue
            if row.kind == "clear_faults":
                for w in windows:
                    if w["end"] > start:
                        w["end"] = max(start, w["start"])
                continue
            try:
                end = start + pd.Timedelta(row.duration)
            except (ValueError, TypeError):
                continue
            label = str(row.kind).replace("_", " ") + (f" {row.participant_id}" if row.participant_id else "")
            windows.append({"start": start, "end": end, "label": label})
        return pd.DataFrame(windows, columns=["start", "end", "label"])

    # -- ledgers --------------------------------------------------------------------------------------
    def ledgers(self) -> dict[str, Path]:
        """Ledger files by label: each policy that settles has ``RUN/<policy>/ledger.sqlite`` (label: the
        policy); a run-wide ``RUN/ledger.sqlite`` is labelled ``"run"``."""
        found = {p: policy_dir(self.run_dir, p) / _LEDGER_FILENAME for p in self.policies()}
        found["run"] = self.run_dir / _LEDGER_FILENAME
        return {label: path for label, path in found.items() if path.is_file()}

    def ledger(self, label: str) -> LedgerView | None:
        """One ledger, verified (None when there is no such ledger). Cached until its file changes."""
        path = self.ledgers().get(label)
        if path is None:
            return None
        key = _stat_key(path, path.with_name(path.name + "-wal"))
        name = f"ledger:{label}"
        with self._lock:
            hit = self._memo.get(name)
            if hit is None or hit[0] == key or self.ledger_every_s <= 0:
                pass  # first read, unchanged, or asked to re-verify on every change: below, in this thread
            else:
                # Verifying walks the whole chain (seconds for 10^5 entries): while a run settles every
                # interval, re-verify at most every ledger_every_s, in the background, and show the last
                # result (with its time) meanwhile, so no page refresh waits for it.
                due = time.monotonic() - hit[1].read_at >= self.ledger_every_s
                if due and name not in self._refreshing:
                    self._refreshing.add(name)
                    threading.Thread(target=self._refresh_ledger, args=(name, key, path), daemon=True,
                                     name=f"gridtwin-{name}").start()
                return hit[1]
        return self._memoized(name, key, lambda: _read_ledger(path))

    def _refresh_live_kpis(self, key: Any, live: Any) -> None:
        try:
            value = live()
            with self._lock:
                self._memo["live_kpis"] = (key, value)
                self._live_kpis_at = time.monotonic()
        finally:
            with self._lock:
                self._refreshing.discard("live_kpis")

    def _refresh_ledger(self, name: str, key: Any, path: Path) -> None:
        try:
            view = _read_ledger(path)
            with self._lock:
                self._memo[name] = (key, view)
        finally:
            with self._lock:
                self._refreshing.discard(name)

    def payments(self) -> pd.DataFrame:
        """Net payments to participants per interval end (EUR), one column per ledger."""
        series = {}
        for label in self.ledgers():
            view = self.ledger(label)
            if view is not None and len(view.payments):
                series[label] = view.payments["participants"]
        return pd.DataFrame(series).sort_index().fillna(0.0) if series else pd.DataFrame()

    def statement(self, label: str, participant_id: str) -> Any:
        """A participant's statement in one ledger (twin.settlement.ledger.Statement)."""
        from twin.settlement.ledger import Ledger

        ledger = Ledger.open(self.ledgers()[label], read_only=True)
        try:
            return ledger.statement(participant_id)
        finally:
            ledger.close()

    # -- studies ---------------------------------------------------------------------------------------
    def study_names(self) -> list[str]:
        if self.studies_dir is None or not Path(self.studies_dir).is_dir():
            return []
        root = Path(self.studies_dir)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))[:500]

    def study(self, name: str) -> StudyTable:
        if name not in self.study_names():
            return StudyTable(name, None, f"study {name!r} is not in {self.studies_dir}")
        path = Path(self.studies_dir or ".") / name

        def load() -> StudyTable:
            try:
                table = pd.read_parquet(path)
            except Exception as exc:  # pyarrow raises several types for a bad file
                return StudyTable(name, None, f"{name}: not a readable Parquet table ({exc})")
            missing = [c for c in ("variant_id", "policy") if c not in table.columns]
            if missing:
                return StudyTable(name, None, f"{name}: missing column(s) {', '.join(missing)} "
                                              f"(expected variant_id, policy and KPI columns)")
            return StudyTable(name, table)

        return self._memoized(f"study:{name}", _stat_key(path), load)

    # -- change detection ------------------------------------------------------------------------------
    def version(self, *, stale_after_s: float) -> list[Any]:
        """Changes whenever anything shown could change: status, commands, ledger, KPIs, staleness."""
        status = self.status()
        age = self.status_age_s(status)
        stale = bool(status.get("state") == "running" and age is not None and age > stale_after_s)
        pending = self.commands.pending
        done = self.commands.done
        n_pending = len(list(pending.glob("*.json"))) if pending.exists() else 0
        n_done = len(list(done.glob("*.json"))) if done.exists() else 0
        ledgers = [q for p in self.ledgers().values() for q in (p, p.with_name(p.name + "-wal"))]
        return [status.get("state"), status.get("done"), status.get("updated_utc"), stale, n_pending, n_done,
                list(_stat_key(*ledgers, self.run_dir / "kpis.parquet", self.run_dir / "meta.json",
                               self.run_dir / FEEDER_FILENAME))]


def _read_ledger(path: Path) -> LedgerView:
    from twin.settlement.keystore import trusted_key
    from twin.settlement.ledger import Ledger, LedgerError, verify
    from twin.settlement.money import from_micro

    empty = pd.DataFrame(columns=["participants"], dtype=object)
    try:
        # Only a key configured on this machine is trusted, never one found in the run folder; without one
        # the file's consistency is still shown, flagged as not checked against a trusted key.
        trusted = trusted_key()
        report = verify(path, public_key=trusted.public_key if trusted else None, unsigned=trusted is None)
        ledger = Ledger.open(path, read_only=True)
    except (LedgerError, OSError, ValueError) as exc:
        return LedgerView(entries=0, verified=False, problems=(str(exc),), first_bad_entry=None, checkpoints=0,
                          last_checkpoint=None, balances={}, participants=(), payments=empty, error=str(exc),
                          read_at=time.monotonic(), read_utc=_now_text(), status="failed")
    try:
        checkpoint = ledger.last_checkpoint()
        last = None
        if checkpoint is not None:
            last = {"id": checkpoint.id, "tree_size": checkpoint.tree_size, "root_hash": checkpoint.root_hash,
                    "public_key": checkpoint.public_key, "signature_ok": checkpoint.signature_ok(
                        public_key=trusted.public_key if trusted else None)}
        paid: dict[pd.Timestamp, Decimal] = {}
        for entry in ledger.entries():
            fields = entry.fields
            micro = sum(int(m) for a, m in fields.get("postings", []) if str(a).startswith("participant:"))
            end = pd.Timestamp(fields.get("interval_end"))
            paid[end] = paid.get(end, Decimal(0)) + from_micro(micro)
        payments = pd.DataFrame({"participants": [float(v) for v in paid.values()]},
                                index=pd.DatetimeIndex(list(paid.keys()), name="time")).sort_index()
        balances = ledger.balances()
    finally:
        ledger.close()
    participants = tuple(sorted(a.split(":", 1)[1] for a in balances if a.startswith("participant:")))
    return LedgerView(entries=report.entries, verified=report.ok, problems=tuple(report.problems),
                      first_bad_entry=report.first_bad_entry, checkpoints=report.checkpoints, last_checkpoint=last,
                      balances=balances, participants=participants, payments=payments,
                      read_at=time.monotonic(), read_utc=_now_text(), status=report.status.value,
                      notes=report.notes, trusted_key_source=trusted.source if trusted else "")


def _now_text() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S UTC")


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
