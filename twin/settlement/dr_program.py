"""The demand-response program's register: which events were actually issued, and what each participant
answered. Written by whoever issues events (the live twin's OpenADR VTN); read by settlement.

Settlement pays for events in this register only (not for the ones a scenario merely planned), and for an
economic or test event only the participants whose latest answer before an interval was ``optIn``; an
emergency event binds every committed participant, whatever it answered. Times are the twin's simulated UTC.

SQLite, WAL (settlement reads while the VTN writes), append-only by triggers: an answer is never changed,
a newer one is added.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import pandas as pd

from twin.settlement.contracts import DrEvent, EventKind

__all__ = ["DrProgram", "DrProgramError", "IssuedEvent", "Opt", "OptResponse"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id   TEXT PRIMARY KEY,
    start      TEXT NOT NULL,  -- ISO 8601 UTC, simulated time
    end_       TEXT NOT NULL,
    kind       TEXT NOT NULL,  -- economic | emergency | test
    signal     TEXT NOT NULL,  -- the OpenADR signal (e.g. SIMPLE level 1)
    source     TEXT NOT NULL,  -- scenario | operator:<name>
    issued_at  TEXT NOT NULL,  -- the twin's clock when the VTN issued it
    targets    TEXT NOT NULL   -- comma-separated VEN ids
);
CREATE TABLE IF NOT EXISTS opts (
    id          INTEGER PRIMARY KEY,
    event_id    TEXT NOT NULL,
    participant TEXT NOT NULL,
    opt         TEXT NOT NULL,  -- optIn | optOut
    received_at TEXT NOT NULL   -- the twin's clock when the answer arrived
);
CREATE INDEX IF NOT EXISTS opts_event ON opts (event_id, participant, id);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS opts_no_update BEFORE UPDATE ON opts
BEGIN SELECT RAISE(ABORT, 'opts are append-only'); END;
CREATE TRIGGER IF NOT EXISTS opts_no_delete BEFORE DELETE ON opts
BEGIN SELECT RAISE(ABORT, 'opts are append-only'); END;
"""


class DrProgramError(ValueError):
    """A register that cannot be opened, or an event that contradicts one already issued."""


class Opt(StrEnum):
    IN = "optIn"
    OUT = "optOut"


@dataclass(frozen=True, kw_only=True)
class IssuedEvent:
    event_id: str
    start: pd.Timestamp
    end: pd.Timestamp
    kind: EventKind
    signal: str
    source: str
    issued_at: pd.Timestamp
    targets: tuple[str, ...]

    def as_dr_event(self) -> DrEvent:
        return DrEvent(start=self.start.to_pydatetime(), end=self.end.to_pydatetime(), kind=self.kind,
                       event_id=self.event_id)


@dataclass(frozen=True, kw_only=True)
class OptResponse:
    event_id: str
    participant: str
    opt: Opt
    received_at: pd.Timestamp


def _iso(ts: pd.Timestamp) -> str:
    stamp = pd.Timestamp(ts)
    if stamp.tzinfo is None:
        raise DrProgramError(f"time {ts!r} must be timezone-aware UTC")
    return stamp.tz_convert("UTC").isoformat()


class DrProgram:
    """One register file. Thread-safe (one connection, one lock): the VTN writes from its event loop."""

    def __init__(self, connection: sqlite3.Connection, *, path: Path) -> None:
        self._db = connection
        self.path = path
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = True) -> DrProgram:
        path = Path(path)
        if not create and not path.exists():
            raise DrProgramError(f"dr_program={str(path)!r}: no such register (the live twin's VTN writes it)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise DrProgramError(f"dr_program={str(path)!r}: cannot open ({exc})") from None
        return cls(db, path=path)

    def close(self) -> None:
        self._db.close()

    # --- writing (the VTN) ------------------------------------------------------------------------------

    def issue(self, event: IssuedEvent) -> bool:
        """Record an event as issued; False if this very event was already (a re-issue after a restart).
        An event id reused for a different window, or a window overlapping another event, is refused."""
        with self._lock:
            existing = {e.event_id: e for e in self._events()}
            if event.event_id in existing:
                old = existing[event.event_id]
                if (old.start, old.end, old.kind) != (event.start, event.end, event.kind):
                    raise DrProgramError(f"event_id {event.event_id!r} was issued for {old.start.isoformat()}.."
                                         f"{old.end.isoformat()}; it cannot be reissued for another window")
                return False
            for other in existing.values():
                if event.start < other.end and other.start < event.end:
                    raise DrProgramError(f"event {event.start.isoformat()}..{event.end.isoformat()} overlaps event "
                                         f"{other.event_id!r} ({other.start.isoformat()}..{other.end.isoformat()})")
            self._db.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (event.event_id, _iso(event.start), _iso(event.end), str(event.kind), event.signal, event.source,
                 _iso(event.issued_at), ",".join(event.targets)))
            return True

    def record_opt(self, response: OptResponse) -> None:
        with self._lock:
            if not self._db.execute("SELECT 1 FROM events WHERE event_id = ?", (response.event_id,)).fetchone():
                raise DrProgramError(f"event_id {response.event_id!r} was never issued by this program")
            self._db.execute("INSERT INTO opts (event_id, participant, opt, received_at) VALUES (?, ?, ?, ?)",
                             (response.event_id, response.participant, str(Opt(response.opt)),
                              _iso(response.received_at)))

    # --- reading (settlement) ---------------------------------------------------------------------------

    def version(self) -> int:
        """Changes whenever an event is issued (settlement refreshes its event list on a change)."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def events(self) -> list[IssuedEvent]:
        with self._lock:
            return self._events()

    def _events(self) -> list[IssuedEvent]:
        rows = self._db.execute("SELECT event_id, start, end_, kind, signal, source, issued_at, targets FROM events "
                                "ORDER BY start").fetchall()
        return [IssuedEvent(event_id=r[0], start=pd.Timestamp(r[1]), end=pd.Timestamp(r[2]), kind=EventKind(r[3]),
                            signal=r[4], source=r[5], issued_at=pd.Timestamp(r[6]),
                            targets=tuple(t for t in r[7].split(",") if t)) for r in rows]

    def answers(self, event_id: str, *, at: pd.Timestamp) -> dict[str, Opt]:
        """Each participant's latest answer to ``event_id`` received no later than ``at``."""
        with self._lock:
            rows = self._db.execute("SELECT participant, opt, received_at FROM opts WHERE event_id = ? ORDER BY id",
                                    (event_id,)).fetchall()
        latest: dict[str, Opt] = {}
        limit = pd.Timestamp(at)
        for participant, opt, received_at in rows:
            if pd.Timestamp(received_at) <= limit:
                latest[participant] = Opt(opt)
        return latest

    def opted_in(self, event_id: str, *, at: pd.Timestamp) -> frozenset[str]:
        return frozenset(p for p, opt in self.answers(event_id, at=at).items() if opt is Opt.IN)

    def knows(self, event_id: str | None) -> bool:
        if event_id is None:
            return False
        with self._lock:
            return self._db.execute("SELECT 1 FROM events WHERE event_id = ?", (event_id,)).fetchone() is not None
