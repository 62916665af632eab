"""The operator command channel of a running twin: the only way a dashboard (or script) can ask it to act.

Commands are small JSON files dropped atomically into ``RUN/commands/pending/``; the twin's engine takes
them at the start of an interval, applies them (it alone mutates twin state), and moves each to
``RUN/commands/done/`` with its verdict. Nothing submitted is lost: a malformed file is kept in ``done/``
with the reason it was rejected.

Every value is bounded before the twin sees it: a duration is a short positive duration no longer than the
run (read from ``RUN/meta.json``), so no fault window can reach past what the twin can represent; a
submitter that knows where the run is (the dashboard) also keeps the window inside the run.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import pandas as pd
from pandas.errors import OutOfBoundsDatetime, OutOfBoundsTimedelta

__all__ = ["CommandChannel", "CommandError", "CommandKind", "OperatorCommand", "RunBounds"]

#: Without a run to bound it (no meta.json), no command lasts longer than this.
MAX_DURATION = pd.Timedelta(days=366)
_MAX_TEXT = 64


class CommandError(ValueError):
    """A command that cannot be accepted; the message names the field and the value."""


class CommandKind(StrEnum):
    CONTROL_CENTRE_OUTAGE = "control_centre_outage"
    BACKHAUL_CUT = "backhaul_cut"
    PARTICIPANT_DROPOUT = "participant_dropout"
    CLEAR_FAULTS = "clear_faults"
    DR_EVENT = "dr_event"  # the operator calls a demand-response event from the next interval on


@dataclass(frozen=True)
class RunBounds:
    """The simulated period of a run, ``[start, end)`` with intervals of ``step``: what commands must fit."""

    start: pd.Timestamp
    end: pd.Timestamp
    step: pd.Timedelta

    @classmethod
    def from_meta(cls, meta: Any) -> RunBounds | None:
        """From a run's meta.json (None when it does not say)."""
        scenario = meta.get("scenario") if isinstance(meta, dict) else None
        if not isinstance(scenario, dict):
            return None
        try:
            start, step = pd.Timestamp(scenario["start"]), pd.Timedelta(scenario["step"])
            end = (pd.Timestamp(scenario["end"]) if "end" in scenario
                   else start + int(meta["n_intervals"]) * step)
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        if pd.isna(start) or pd.isna(end) or pd.isna(step) or start.tzinfo is None or end <= start:
            return None
        return cls(start=start.tz_convert("UTC"), end=end.tz_convert("UTC"), step=step)

    @classmethod
    def from_run(cls, run_dir: Path) -> RunBounds | None:
        try:
            return cls.from_meta(json.loads((Path(run_dir) / "meta.json").read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None

    @property
    def length(self) -> pd.Timedelta:
        return self.end - self.start

    def interval_at(self, done: int) -> pd.Timestamp:
        """Start of the interval a twin that finished ``done`` intervals applies commands at."""
        return self.start + max(0, done) * self.step


def _text(data: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise CommandError(f"{key}={value!r}: required")
        return None
    if not isinstance(value, str):
        raise CommandError(f"{key}={value!r}: must be a string")
    if len(value) > _MAX_TEXT or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise CommandError(f"{key}={value[:80]!r}: at most {_MAX_TEXT} printable characters")
    return value


def _duration(value: Any, bounds: RunBounds | None) -> pd.Timedelta:
    if not isinstance(value, str) or not value.strip() or len(value) > 32:
        raise CommandError(f"duration={value!r}: not a duration like '1h' (a string of at most 32 characters)")
    longest = bounds.length if bounds is not None else MAX_DURATION
    what = f"the run ({bounds.start.isoformat()} .. {bounds.end.isoformat()})" if bounds else "a year"
    try:
        duration = pd.Timedelta(value)
    except (OutOfBoundsTimedelta, OutOfBoundsDatetime, OverflowError):
        raise CommandError(f"duration={value!r}: longer than {what}; at most {longest}") from None
    except (ValueError, TypeError):
        raise CommandError(f"duration={value!r}: not a duration like '1h'") from None
    if pd.isna(duration) or duration <= pd.Timedelta(0):
        raise CommandError(f"duration={value!r}: must be positive")
    if duration > longest:
        raise CommandError(f"duration={value!r}: longer than {what}; at most {longest}")
    return duration


@dataclass(frozen=True)
class OperatorCommand:
    kind: CommandKind
    duration: pd.Timedelta
    operator: str
    participant_id: str | None = None
    command_id: str = ""
    issued_utc: str = ""

    @classmethod
    def from_dict(cls, data: Any, *, bounds: RunBounds | None = None,
                  applies_at: pd.Timestamp | None = None) -> OperatorCommand:
        """Validate a submitted command; CommandError names the field and the value.

        ``bounds``: the run's period; the duration may not exceed it. ``applies_at``: the interval the command
        will apply from (when the submitter knows it); the window ``[applies_at, applies_at + duration)``
        must then lie inside the run.
        """
        if not isinstance(data, dict):
            raise CommandError(f"command: expected a JSON object, got {type(data).__name__}")
        kind_value = data.get("kind")
        try:
            kind = CommandKind(kind_value) if isinstance(kind_value, str) else None
        except ValueError:
            kind = None
        if kind is None:
            valid = ", ".join(k.value for k in CommandKind)
            raise CommandError(f"kind={kind_value!r}: expected one of {valid}")
        duration = _duration(data.get("duration", "1h"), bounds)
        if bounds is not None and applies_at is not None:
            if not bounds.start <= applies_at < bounds.end:
                raise CommandError(f"the run is over: it ends at {bounds.end.isoformat()}, nothing is left to apply "
                                   "a command to")
            if applies_at + duration > bounds.end:
                raise CommandError(
                    f"duration={data.get('duration')!r}: the window {applies_at.isoformat()} .. "
                    f"{(applies_at + duration).isoformat()} ends after the run ({bounds.end.isoformat()}); at most "
                    f"{bounds.end - applies_at}")
        participant = _text(data, "participant_id")
        if kind is CommandKind.PARTICIPANT_DROPOUT and not participant:
            raise CommandError("participant_id=None: a participant dropout needs the participant's id")
        operator = _text(data, "operator")
        if not operator:
            raise CommandError("operator='': commands must name the operator who issued them")
        return cls(
            kind=kind,
            duration=duration,
            operator=operator,
            participant_id=participant,
            command_id=_text(data, "command_id") or uuid.uuid4().hex,
            issued_utc=_text(data, "issued_utc") or datetime.now(UTC).isoformat(),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        d["duration"] = _duration_text(self.duration)
        return d


def _duration_text(td: pd.Timedelta) -> str:
    """A short form ('15min', '1h', '2D') that reads back as the same duration."""
    seconds = td.total_seconds()
    for unit, size in (("D", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{td.value}ns" if td.value % 1000 else f"{td.value // 1000}us"


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


class CommandChannel:
    """File-based command queue in a run folder (safe across processes: atomic renames only)."""

    def __init__(self, run_dir: Path) -> None:
        self.pending = Path(run_dir) / "commands" / "pending"
        self.done = Path(run_dir) / "commands" / "done"

    def submit(self, command: OperatorCommand) -> str:
        """Drop ``command`` for the twin; CommandError when no twin is running to take it (the run finished,
        failed, was interrupted, or its heartbeat stopped: twin.records.runstore.run_liveness)."""
        from twin.records.runstore import run_liveness  # noqa: PLC0415 — the run store imports nothing of this

        state, reason = run_liveness(self.pending.parent.parent)
        if state not in ("running", "unknown"):
            raise CommandError(f"the run is {state}: {reason}; no twin is running to apply command "
                               f"{command.kind.value!r}")
        self.pending.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        _write_atomic(self.pending / f"{stamp}-{command.command_id}.json", command.to_dict())
        return command.command_id

    def bounds(self) -> RunBounds | None:
        """The run's period from its meta.json (None when there is none yet)."""
        return RunBounds.from_run(self.pending.parent.parent)

    def take(self) -> list[tuple[OperatorCommand | None, Path, str]]:
        """Pending commands in submission order as (command or None, file, rejection reason or ""). A file
        that is not a valid command within the run's bounds is returned with its reason, never raised."""
        if not self.pending.exists():
            return []
        bounds = self.bounds()
        out = []
        for path in sorted(self.pending.glob("*.json")):
            try:
                if path.stat().st_size > 64_000:
                    raise CommandError(f"{path.name}: {path.stat().st_size} bytes; a command is a small JSON object")
                data = json.loads(path.read_text(encoding="utf-8"))
                out.append((OperatorCommand.from_dict(data, bounds=bounds), path, ""))
            except (CommandError, ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
                out.append((None, path, str(exc)))
            except OSError as exc:
                out.append((None, path, f"{path.name}: cannot read ({exc.strerror})"))
        return out

    def finish(self, path: Path, *, verdict: str, applied_at: pd.Timestamp | None, detail: str = "",
               taken_at: pd.Timestamp | None = None) -> None:
        """Move a taken command to ``done/`` with its verdict (the original content is kept verbatim).
        ``applied_at``: the interval the twins were given it (None: refused unread); ``taken_at``: the interval
        the engine took it at (a resumed run replays both, ``twin.run``)."""
        self.done.mkdir(parents=True, exist_ok=True)
        raw = path.read_text(encoding="utf-8", errors="replace")
        taken = taken_at if taken_at is not None else applied_at
        record = {
            "verdict": verdict,
            "detail": detail,
            "applied_at": applied_at.isoformat() if applied_at is not None else None,
            "taken_at": taken.isoformat() if taken is not None else None,
            "raw": raw,
        }
        _write_atomic(self.done / path.name, record)
        path.unlink()

    def history(self) -> pd.DataFrame:
        rows = []
        for path in sorted(self.done.glob("*.json")) if self.done.exists() else []:
            rec = json.loads(path.read_text(encoding="utf-8"))
            try:
                cmd = json.loads(rec["raw"])
            except json.JSONDecodeError:
                cmd = {}
            rows.append({"file": path.name, "kind": cmd.get("kind"), "operator": cmd.get("operator"),
                         "participant_id": cmd.get("participant_id"), "duration": cmd.get("duration"),
                         "verdict": rec["verdict"], "detail": rec["detail"], "applied_at": rec["applied_at"]})
        return pd.DataFrame(rows, columns=["file", "kind", "operator", "participant_id", "duration", "verdict",
                                           "detail", "applied_at"])
