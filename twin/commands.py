"""The operator command channel of a running twin: the only way a dashboard (or script) can ask it to act.

Commands are small JSON files dropped atomically into ``RUN/commands/pending/``; the twin's engine takes
them at the start of an interval, applies them (it alone mutates twin state), and moves each to
``RUN/commands/done/`` with its verdict. Nothing submitted is lost: a malformed file is kept in ``done/``
with the reason it was rejected.
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

__all__ = ["CommandChannel", "CommandError", "CommandKind", "OperatorCommand"]


class CommandError(ValueError):
    """A command that cannot be accepted; the message names the field and the value."""


class CommandKind(StrEnum):
    CONTROL_CENTRE_OUTAGE = "control_centre_outage"
    BACKHAUL_CUT = "backhaul_cut"
    PARTICIPANT_DROPOUT = "participant_dropout"
    CLEAR_FAULTS = "clear_faults"
    DR_EVENT = "dr_event"  # the operator calls a demand-response event from the next interval on


@dataclass(frozen=True)
class OperatorCommand:
    kind: CommandKind
    duration: pd.Timedelta
    operator: str
    participant_id: str | None = None
    command_id: str = ""
    issued_utc: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatorCommand:
        try:
            kind = CommandKind(data.get("kind"))
        except ValueError:
            valid = ", ".join(k.value for k in CommandKind)
            raise CommandError(f"kind={data.get('kind')!r}: expected one of {valid}") from None
        try:
            duration = pd.Timedelta(data.get("duration", "1h"))
        except (ValueError, TypeError):
            raise CommandError(f"duration={data.get('duration')!r}: not a duration like '1h'") from None
        if pd.isna(duration) or duration <= pd.Timedelta(0):
            raise CommandError(f"duration={data.get('duration')!r}: must be positive")
        participant = data.get("participant_id")
        if kind is CommandKind.PARTICIPANT_DROPOUT and not participant:
            raise CommandError("participant_id=None: a participant dropout needs the participant's id")
        operator = str(data.get("operator") or "")
        if not operator:
            raise CommandError("operator='': commands must name the operator who issued them")
        return cls(
            kind=kind,
            duration=duration,
            operator=operator,
            participant_id=str(participant) if participant else None,
            command_id=str(data.get("command_id") or uuid.uuid4().hex),
            issued_utc=str(data.get("issued_utc") or datetime.now(UTC).isoformat()),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        d["duration"] = str(self.duration)
        return d


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
        self.pending.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        _write_atomic(self.pending / f"{stamp}-{command.command_id}.json", command.to_dict())
        return command.command_id

    def take(self) -> list[tuple[OperatorCommand | None, Path, str]]:
        """Pending commands in submission order as (command or None, file, rejection reason or "")."""
        if not self.pending.exists():
            return []
        out = []
        for path in sorted(self.pending.glob("*.json")):
            try:
                out.append((OperatorCommand.from_dict(json.loads(path.read_text(encoding="utf-8"))), path, ""))
            except (CommandError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                out.append((None, path, str(exc)))
        return out

    def finish(self, path: Path, *, verdict: str, applied_at: pd.Timestamp | None, detail: str = "") -> None:
        """Move a taken command to ``done/`` with its verdict (the original content is kept verbatim)."""
        self.done.mkdir(parents=True, exist_ok=True)
        raw = path.read_text(encoding="utf-8", errors="replace")
        record = {
            "verdict": verdict,
            "detail": detail,
            "applied_at": applied_at.isoformat() if applied_at is not None else None,
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
