"""Append-only SQLite archive of every raw message the twin received, with its ingest verdict and reason.

Nothing received is lost: accepted, duplicate, late and rejected messages are all kept byte for byte, whatever
the transport (MQTT, OCPP, OpenADR). A message whose wire form is not the canonical payload (an OCPP frame,
an OpenADR XML document) also keeps the canonical JSON it was mapped to, so state can be restored from the
archive alone. WAL mode lets a dashboard read while the ingest writes; triggers make rows immutable.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

__all__ = ["ArchiveRow", "TelemetryArchive"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS raw_messages (
    id          INTEGER PRIMARY KEY,
    received_at TEXT    NOT NULL,  -- ISO 8601 UTC, microseconds: when the twin received it
    topic       TEXT    NOT NULL,
    payload     BLOB    NOT NULL,  -- exactly the bytes received
    channel     TEXT,              -- NULL when the topic could not be parsed
    device_id   TEXT,              -- from the topic; NULL when the topic could not be parsed
    seq         INTEGER,
    device_ts   TEXT,              -- the payload's ts, when it validated
    verdict     TEXT    NOT NULL,  -- accepted | duplicate | late | rejected
    reason      TEXT    NOT NULL,  -- '' when accepted
    detail      TEXT    NOT NULL,
    transport   TEXT    NOT NULL DEFAULT 'mqtt',  -- mqtt | ocpp | openadr
    canonical   TEXT               -- the canonical JSON payload, when the wire form is not it (NULL for MQTT)
);
CREATE INDEX IF NOT EXISTS raw_messages_device_seq ON raw_messages (device_id, seq);
CREATE INDEX IF NOT EXISTS raw_messages_verdict ON raw_messages (verdict, reason);
CREATE TRIGGER IF NOT EXISTS raw_messages_no_update BEFORE UPDATE ON raw_messages
BEGIN SELECT RAISE(ABORT, 'raw_messages is append-only'); END;
CREATE TRIGGER IF NOT EXISTS raw_messages_no_delete BEFORE DELETE ON raw_messages
BEGIN SELECT RAISE(ABORT, 'raw_messages is append-only'); END;
"""

_COLUMNS = ("received_at", "topic", "payload", "channel", "device_id", "seq", "device_ts", "verdict", "reason", "detail",
            "transport", "canonical")
#: Column order of ``append_values`` rows.
COLUMNS = _COLUMNS
_INSERT = f"INSERT INTO raw_messages ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})"
#: Columns added after the first archives were written: an older archive gains them (with their defaults) on open.
_ADDED = {"transport": "TEXT NOT NULL DEFAULT 'mqtt'", "canonical": "TEXT"}


@dataclass(frozen=True, kw_only=True)
class ArchiveRow:
    received_at: str
    topic: str
    payload: bytes
    channel: str | None
    device_id: str | None
    seq: int | None
    device_ts: str | None
    verdict: str
    reason: str
    detail: str
    transport: str = "mqtt"
    canonical: str | None = None


class TelemetryArchive:
    """The raw-message table of one SQLite file. Callers serialize access (one writer; see ``MqttIngest``)."""

    def __init__(self, connection: sqlite3.Connection, *, path: Path) -> None:
        self._db = connection
        self.path = path

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, synchronous: Literal["FULL", "NORMAL"] = "FULL"
    ) -> TelemetryArchive:
        """Open or create. ``FULL`` makes each committed batch survive power loss, which matters because the
        ingest acknowledges QoS-1 messages to the broker only after their batch is committed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: MqttIngest opens the archive in the caller's thread and writes from its
        # worker thread, always under one lock.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.executescript(_SCHEMA)
            present = {row[1] for row in db.execute("PRAGMA table_info(raw_messages)")}
            for column, declaration in _ADDED.items():
                if column not in present:
                    db.execute(f"ALTER TABLE raw_messages ADD COLUMN {column} {declaration}")
        except BaseException:
            db.close()
            raise
        return cls(db, path=path)

    def append(self, rows: Sequence[ArchiveRow]) -> list[int]:
        """Insert ``rows`` in one transaction (one ``executemany``); return their ids."""
        return self.append_values([tuple(getattr(row, column) for column in _COLUMNS) for row in rows])

    def append_values(self, rows: Sequence[tuple[object, ...]]) -> list[int]:
        """``append`` for rows given as tuples in ``COLUMNS`` order (the ingest's batched path builds no
        ``ArchiveRow``): one transaction, one ``executemany``; return their ids."""
        if not rows:
            return []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(_INSERT, rows)
            # One writer inside an IMMEDIATE transaction on a rowid table without deletes: the new rows took
            # consecutive ids ending at the last one inserted.
            last = int(self._db.execute("SELECT last_insert_rowid()").fetchone()[0])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return list(range(last - len(rows) + 1, last + 1))

    def count(self, *, verdict: str | None = None, reason: str | None = None, channel: str | None = None,
              transport: str | None = None) -> int:
        sql, args = "SELECT COUNT(*) FROM raw_messages WHERE 1=1", []
        if transport is not None:
            sql, args = sql + " AND transport = ?", [*args, transport]
        if channel is not None:
            sql, args = sql + " AND channel = ?", [*args, channel]
        if verdict is not None:
            sql, args = sql + " AND verdict = ?", [*args, verdict]
        if reason is not None:
            sql, args = sql + " AND reason = ?", [*args, reason]
        return int(self._db.execute(sql, args).fetchone()[0])

    def counts(self) -> dict[tuple[str, str], int]:
        """Message count by (verdict, reason)."""
        rows = self._db.execute("SELECT verdict, reason, COUNT(*) FROM raw_messages GROUP BY verdict, reason")
        return {(verdict, reason): int(n) for verdict, reason, n in rows}

    def iter_rows(self, *, channel: str | None = None, verdicts: Sequence[str] | None = None,
                  transport: str | None = None) -> Iterator[ArchiveRow]:
        """Rows in arrival order, optionally filtered (used to restore ingest state after a restart)."""
        sql, args = f"SELECT {','.join(_COLUMNS)} FROM raw_messages WHERE 1=1", []
        if transport is not None:
            sql, args = sql + " AND transport = ?", [*args, transport]
        if channel is not None:
            sql, args = sql + " AND channel = ?", [*args, channel]
        if verdicts is not None:
            sql += f" AND verdict IN ({','.join('?' * len(verdicts))})"
            args += list(verdicts)
        for values in self._db.execute(sql + " ORDER BY id", args):
            yield ArchiveRow(**dict(zip(_COLUMNS, values, strict=True)))

    def read_frame(self) -> pd.DataFrame:
        """The whole archive as a DataFrame indexed by ``id`` (for inspection and reports)."""
        return pd.read_sql_query("SELECT * FROM raw_messages ORDER BY id", self._db, index_col="id")

    def close(self) -> None:
        self._db.close()
