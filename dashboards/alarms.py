"""Alarms: the events that need an operator, at the moment the cursor shows, with acknowledge and shelve.

As in a control room (ISA-18.2 style): an alarm is listed while it is active at the cursor, and after it has
cleared until someone acknowledges it; a shelved alarm is hidden until its shelf time runs out. Who
acknowledged or shelved what is kept per dashboard process (``AlarmBook``, one per app, thread-safe), never
in the run folder, which the dashboard does not write.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

__all__ = ["ALARM_SEVERITIES", "AlarmBook", "AlarmRow", "alarms_at"]

ALARM_SEVERITIES = ("critical", "warning")
SHELVE_FOR = timedelta(hours=1)
_ORDER = {"critical": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Mark:
    operator: str
    at_utc: datetime
    until_utc: datetime | None = None  # shelving only


@dataclass
class AlarmBook:
    """Acknowledgements and shelving by alarm id (``dashboards.events`` ids are stable across refreshes)."""

    acked: dict[str, Mark] = field(default_factory=dict)
    shelved: dict[str, Mark] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def acknowledge(self, ids: list[str], *, operator: str) -> int:
        now = datetime.now(UTC)
        with self._lock:
            new = [i for i in ids if i not in self.acked]
            for i in new:
                self.acked[i] = Mark(operator, now)
        return len(new)

    def shelve(self, ids: list[str], *, operator: str, duration: timedelta = SHELVE_FOR) -> int:
        now = datetime.now(UTC)
        with self._lock:
            for i in ids:
                self.shelved[i] = Mark(operator, now, now + duration)
        return len(ids)

    def unshelve_all(self) -> int:
        with self._lock:
            n = len(self.shelved)
            self.shelved.clear()
        return n

    def state(self, alarm_id: str, *, now: datetime | None = None) -> tuple[Mark | None, Mark | None]:
        """(acknowledgement, shelving still in force) of one alarm."""
        now = now or datetime.now(UTC)
        with self._lock:
            shelf = self.shelved.get(alarm_id)
            if shelf is not None and shelf.until_utc is not None and shelf.until_utc <= now:
                del self.shelved[alarm_id]
                shelf = None
            return self.acked.get(alarm_id), shelf


@dataclass(frozen=True)
class AlarmRow:
    id: str
    severity: str
    policy: str
    message: str
    start: pd.Timestamp | None
    end: pd.Timestamp | None
    #: "active" at the cursor, or "cleared" (ended before it, not yet acknowledged)
    state: str
    acked_by: str = ""


def alarms_at(events: pd.DataFrame, cursor: pd.Timestamp | None, book: AlarmBook,
              status_alarms: list[dict[str, Any]] = ()) -> tuple[list[AlarmRow], int]:
    """(alarms to list at ``cursor``, how many are shelved). ``status_alarms``: alarms about the dashboard's
    sources right now (a stale run store, a ledger that does not verify), always active."""
    rows: list[AlarmRow] = []
    shelved = 0
    candidates: list[dict[str, Any]] = list(status_alarms)
    if cursor is not None and len(events):
        sel = events[events["severity"].isin(ALARM_SEVERITIES) & events["start"].notna()]
        sel = sel[sel["start"] <= cursor]
        candidates.extend(sel.to_dict(orient="records"))
    for ev in candidates:
        ack, shelf = book.state(str(ev["id"]))
        end = ev.get("end")
        end = None if end is None or pd.isna(end) else pd.Timestamp(end)
        active = cursor is None or end is None or end > cursor
        if not active and ack is not None:
            continue  # cleared and acknowledged: only in the event log now
        if shelf is not None:
            shelved += 1
            continue
        start = ev.get("start")
        rows.append(AlarmRow(id=str(ev["id"]), severity=str(ev["severity"]), policy=str(ev.get("policy") or ""),
                             message=str(ev["message"]), start=None if start is None or pd.isna(start) else start,
                             end=end, state="active" if active else "cleared",
                             acked_by=ack.operator if ack is not None else ""))
    rows.sort(key=lambda r: (r.state != "active", _ORDER.get(r.severity, 3), r.acked_by != "",
                             -(r.start.value if r.start is not None else 0)))
    return rows, shelved
