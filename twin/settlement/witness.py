"""Witnesses: every participant keeps the signed tree heads it was sent, outside the ledger (DESIGN.md §8).

As in Certificate Transparency, a head a participant kept pins the history up to its size: whoever later
holds the ledger — even with the operator's key — cannot rewrite or drop those entries without a
consistency proof against that head failing (``twin.settlement.ledger.audit``).

The settlement path delivers each head to each participant the moment it is signed. In the simulation the
participants' copies are files, ``<policy folder>/witnesses/<participant>.heads.jsonl``, one JSON head per
line, appended and flushed to disk; in a deployment they would live on the participants' premises (their edge agent
or their statement mailbox), which is what makes them independent of the operator.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["HEAD_FORMAT", "WITNESS_DIRNAME", "SignedTreeHead", "WitnessError", "WitnessStore", "read_heads"]

HEAD_FORMAT = "gridtwin-sth/1"
WITNESS_DIRNAME = "witnesses"
_SUFFIX = ".heads.jsonl"


class WitnessError(ValueError):
    """A heads file that cannot be read; the message names the file, the line and the field."""


def _hex(value: Any, *, size: int, field: str, where: str) -> str:
    if not isinstance(value, str) or len(value) != 2 * size:
        raise WitnessError(f"{where}: field {field!r} must be {2 * size} hex digits, got {value!r}")
    try:
        bytes.fromhex(value)
    except ValueError:
        raise WitnessError(f"{where}: field {field!r} is not hex: {value!r}") from None
    return value.lower()


@dataclass(frozen=True)
class SignedTreeHead:
    """A checkpoint as a participant received it: tree size, Merkle root, chain head, key and signature."""

    checkpoint_id: int
    tree_size: int
    root_hash: str
    head_hash: str
    public_key: str
    signature: str
    closing: bool = False

    @classmethod
    def from_checkpoint(cls, checkpoint: Any) -> SignedTreeHead:
        return cls(checkpoint_id=int(checkpoint.id), tree_size=int(checkpoint.tree_size),
                   root_hash=checkpoint.root_hash, head_hash=checkpoint.head_hash,
                   public_key=checkpoint.public_key, signature=checkpoint.signature,
                   closing=bool(getattr(checkpoint, "closing", False)))

    def to_json(self) -> dict[str, Any]:
        return {"v": HEAD_FORMAT, "checkpoint": self.checkpoint_id, "tree_size": self.tree_size,
                "root": self.root_hash, "head": self.head_hash, "public_key": self.public_key,
                "signature": self.signature, "closing": self.closing}

    @classmethod
    def from_json(cls, data: Any, *, where: str = "head") -> SignedTreeHead:
        if not isinstance(data, dict) or data.get("v") != HEAD_FORMAT:
            found = data.get("v") if isinstance(data, dict) else type(data).__name__
            raise WitnessError(f"{where}: field 'v' is {found!r}, expected {HEAD_FORMAT!r}")
        for name in ("checkpoint", "tree_size"):
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise WitnessError(f"{where}: field {name!r} must be a non-negative integer, got {value!r}")
        closing = data.get("closing", False)
        if not isinstance(closing, bool):
            raise WitnessError(f"{where}: field 'closing' must be true or false, got {closing!r}")
        return cls(checkpoint_id=data["checkpoint"], tree_size=data["tree_size"],
                   root_hash=_hex(data.get("root"), size=32, field="root", where=where),
                   head_hash=_hex(data.get("head"), size=32, field="head", where=where),
                   public_key=_hex(data.get("public_key"), size=32, field="public_key", where=where),
                   signature=_hex(data.get("signature"), size=64, field="signature", where=where),
                   closing=closing)


def read_heads(path: Path | str) -> list[SignedTreeHead]:
    """Every head in a participant's heads file, in the order received."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WitnessError(f"heads file {str(path)!r}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise WitnessError(f"heads file {str(path)!r}: not UTF-8 text") from None
    heads = []
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except ValueError as exc:
            if number == len(lines) and not text.endswith("\n"):
                break  # a torn last line (writer killed mid-append) was never received whole
            raise WitnessError(f"{where}: not JSON ({exc})") from None
        heads.append(SignedTreeHead.from_json(data, where=where))
    return heads


class WitnessStore:
    """The participants' kept heads for one ledger: one append-only file per participant in ``folder``."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self._paths: dict[str, str] = {}  # participant -> its file, as a string (a head goes to every one)

    def path_for(self, participant: str) -> Path:
        if not isinstance(participant, str) or not participant:
            raise WitnessError(f"participant={participant!r}: must be a non-empty string")
        # Percent-encoding leaves no path separator (nor NUL) in the name, whatever the participant id.
        return self.folder / f"{quote(participant, safe='-_.~')}{_SUFFIX}"

    def heads(self, participant: str) -> list[SignedTreeHead]:
        path = self.path_for(participant)
        return read_heads(path) if path.exists() else []

    def deliver(self, checkpoint: Any, participants: Iterable[str]) -> None:
        """Send one signed head to every participant (each appends it to its own file; all made durable
        together before this returns)."""
        line = (json.dumps(SignedTreeHead.from_checkpoint(checkpoint).to_json(), sort_keys=True,
                           separators=(",", ":")) + "\n").encode("utf-8")
        self.folder.mkdir(parents=True, exist_ok=True)
        paths = self._paths
        for participant in sorted(set(participants)):
            path = paths.get(participant)
            if path is None:
                path = paths[participant] = str(self.path_for(participant))
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                size = os.fstat(fd).st_size
                torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"  # a writer killed mid-append
                os.write(fd, b"\n" + line if torn else line)
            finally:
                os.close(fd)
        # One flush for every copy: an fsync per file costs 0.2-4 ms here, and a head goes to every participant
        # (thousands on an MV feeder); sync() waits until all of them are on disk (Linux).
        os.sync()

    def catch_up(self, checkpoints: Sequence[Any], participants: Iterable[str]) -> int:
        """Deliver heads a participant missed (a writer killed between signing and delivering); returns how
        many were sent. A participant keeps what it has: nothing is rewritten."""
        sent = 0
        for participant in sorted(set(participants)):
            have = {h.checkpoint_id for h in self.heads(participant)}
            for checkpoint in checkpoints:
                if int(checkpoint.id) not in have:
                    self.deliver(checkpoint, [participant])
                    sent += 1
        return sent
