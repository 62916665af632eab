"""The tamper-evident settlement ledger: an append-only, double-entry, hash-chained SQLite file with signed
RFC 6962 Merkle checkpoints, inclusion and consistency proofs, verification, balances and statements.

File layout (one file per run, ``ledger.sqlite``): ``entries`` (one row per entry; ``body`` is the canonical
JSON that is hashed, chained and Merkle-leafed; the other columns are copies for querying), ``postings``
(account, integer micro-units; each entry's postings sum to zero), ``checkpoints`` (tree size, root, chain
head, Ed25519 public key and signature), ``closings`` (the checkpoints that closed the ledger; the flag is
inside the signed message) and ``ledger_meta`` (format, the operator's public key). Triggers RAISE on every
UPDATE and DELETE. Writes use WAL, ``synchronous=FULL`` and ``BEGIN IMMEDIATE``, so a killed writer leaves
either the whole batch or none of it. Nothing wall-clock goes into the file: the same settlement writes the
same bytes.

Coverage: a writer that finishes signs a *closing* checkpoint over every entry; a writer that appends to a
closed ledger first signs a (non-closing) checkpoint that reopens it. So a ledger whose last checkpoint is
closing and covers every entry is complete; one without (a killed run) is reported incomplete; entries after
a closing checkpoint were appended by someone without the key.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from twin.settlement import keystore, merkle
from twin.settlement.money import from_micro
from twin.settlement.signing import public_key_hex, signature_valid

__all__ = [
    "AppendOutcome",
    "AuditReport",
    "Checkpoint",
    "ConsistencyProof",
    "EntryDraft",
    "EntryKey",
    "GENESIS_HASH",
    "InclusionProof",
    "LEDGER_FILENAME",
    "Ledger",
    "LedgerConflictError",
    "LedgerError",
    "LedgerStatus",
    "Posting",
    "Statement",
    "StoredEntry",
    "UnbalancedEntryError",
    "VerifyReport",
    "audit",
    "participant_account",
    "resolve_ledger_path",
    "verify",
    "verify_consistency",
    "verify_inclusion",
]

LEDGER_FILENAME = "ledger.sqlite"
FORMAT = "gridtwin-ledger/1"
#: The "previous hash" of entry 1.
GENESIS_HASH = "0" * 64
_TABLES = ("ledger_meta", "entries", "postings", "checkpoints", "closings")
#: ledger_meta key of the operator's public key (hex), recorded when a writer first opens the ledger.
PUBLIC_KEY_META = "operator_public_key"
#: ledger_meta key of the run id the ledger was begun for (its genesis): every entry carries it, and a writer
#: or a run folder with another one is refused (a renamed or copied folder cannot be settled again).
RUN_ID_META = "run_id"
#: A run folder's metadata file (twin.records.runstore), read by verify to check the binding.
_RUN_META = "meta.json"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS entries(
    seq INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    interval_start TEXT NOT NULL,
    participant TEXT NOT NULL,
    rule TEXT NOT NULL,
    rule_version TEXT NOT NULL,
    interval_end TEXT NOT NULL,
    body BLOB NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    UNIQUE(run_id, interval_start, participant, rule, rule_version)
) STRICT;
CREATE TABLE IF NOT EXISTS postings(
    entry_seq INTEGER NOT NULL REFERENCES entries(seq),
    account TEXT NOT NULL,
    amount_micro INTEGER NOT NULL,
    PRIMARY KEY(entry_seq, account)
) STRICT;
CREATE INDEX IF NOT EXISTS postings_by_account ON postings(account);
CREATE TABLE IF NOT EXISTS checkpoints(
    id INTEGER PRIMARY KEY,
    tree_size INTEGER NOT NULL,
    root_hash TEXT NOT NULL,
    head_hash TEXT NOT NULL,
    public_key TEXT NOT NULL,
    signature TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS closings(checkpoint_id INTEGER PRIMARY KEY REFERENCES checkpoints(id)) STRICT;
""" + "".join(
    f"CREATE TRIGGER IF NOT EXISTS {t}_no_{op.lower()} BEFORE {op} ON {t} "
    f"BEGIN SELECT RAISE(ABORT, '{t} is append-only'); END;\n"
    for t in _TABLES
    for op in ("UPDATE", "DELETE")
)
_TRIGGERS = frozenset(f"{t}_no_{op}" for t in _TABLES for op in ("update", "delete"))


class LedgerError(RuntimeError):
    """A ledger operation that cannot proceed (read-only, no key, not covered by a checkpoint...)."""


class LedgerConflictError(LedgerError):
    """An append reused an idempotency key with different content: settlement is not deterministic."""


class UnbalancedEntryError(ValueError):
    """An entry's postings do not sum to zero."""


def participant_account(participant_id: str) -> str:
    return f"participant:{participant_id}"


@lru_cache(maxsize=4096)  # an interval's entries all carry its start and end (timestamps are immutable)
def _iso(ts: datetime | pd.Timestamp | str) -> str:
    stamp = pd.Timestamp(ts)
    if stamp.tzinfo is None:
        raise ValueError(f"timestamp {ts!r} must be tz-aware (UTC)")
    return stamp.tz_convert("UTC").to_pydatetime().isoformat().replace("+00:00", "Z")


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


@dataclass(frozen=True)
class EntryKey:
    """The idempotency key: one entry per (run, interval start, participant, rule, rule version)."""

    run_id: str
    interval_start: pd.Timestamp
    participant: str
    rule: str
    rule_version: str

    def columns(self) -> tuple[str, str, str, str, str]:
        return (self.run_id, _iso(self.interval_start), self.participant, self.rule, self.rule_version)


@dataclass(frozen=True)
class Posting:
    account: str
    amount_micro: int

    @property
    def amount(self) -> Decimal:
        return from_micro(self.amount_micro)


@dataclass(frozen=True)
class EntryDraft:
    """An entry not yet in the ledger. Build it with :meth:`create`, which checks the postings balance."""

    key: EntryKey
    interval_end: pd.Timestamp
    postings: tuple[Posting, ...]
    detail: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def create(
        cls,
        *,
        key: EntryKey,
        interval_end: pd.Timestamp,
        postings: Mapping[str, int],
        detail: Mapping[str, object] | None = None,
    ) -> EntryDraft:
        """Zero postings are dropped; the rest must be int micro-units summing to zero, on >= 2 accounts."""
        kept = []
        for account, amount in sorted(postings.items()):
            if isinstance(amount, bool) or not isinstance(amount, int):
                raise TypeError(f"posting {account!r}={amount!r}: amounts are int micro-units")
            if not account:
                raise ValueError("posting with an empty account name")
            if amount:
                kept.append(Posting(account, amount))
        if sum(p.amount_micro for p in kept) != 0:
            raise UnbalancedEntryError(f"{key}: postings {dict(postings)} sum to {sum(p.amount_micro for p in kept)}, not 0")
        if len(kept) < 2:
            raise UnbalancedEntryError(f"{key}: an entry needs at least two non-zero postings, got {dict(postings)}")
        text: dict[str, str] = {}
        for name, value in (detail or {}).items():
            if isinstance(value, float):
                raise TypeError(f"detail {name!r}={value!r} is a float; pass a Decimal or a string")
            text[str(name)] = str(value)
        return cls(key=key, interval_end=pd.Timestamp(interval_end), postings=tuple(kept),
                   detail=MappingProxyType(dict(sorted(text.items()))))

    def content(self) -> dict[str, Any]:
        """Everything hashed except the chain position (seq, prev)."""
        run_id, start, participant, rule, version = self.key.columns()
        return {
            "v": FORMAT,
            "run": run_id,
            "interval_start": start,
            "interval_end": _iso(self.interval_end),
            "participant": participant,
            "rule": rule,
            "rule_version": version,
            "postings": [[p.account, p.amount_micro] for p in self.postings],
            "detail": dict(self.detail),
        }


@dataclass(frozen=True)
class StoredEntry:
    seq: int
    body: bytes
    prev_hash: str
    hash: str

    @property
    def fields(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def postings(self) -> tuple[Posting, ...]:
        return tuple(Posting(a, m) for a, m in self.fields["postings"])


@dataclass(frozen=True)
class AppendOutcome:
    """Sequence numbers written by this call, and those whose keys were already in the ledger (no-ops)."""

    appended: tuple[int, ...]
    existing: tuple[int, ...]


@dataclass(frozen=True)
class Checkpoint:
    id: int
    tree_size: int
    root_hash: str
    head_hash: str
    public_key: str
    signature: str
    #: Signed by a writer that finished: the ledger is complete at ``tree_size`` entries.
    closing: bool = False

    def message(self) -> bytes:
        return _checkpoint_message(self.tree_size, self.root_hash, self.head_hash, closing=self.closing)

    def signature_ok(self, *, public_key: str | None = None) -> bool:
        if public_key is not None and public_key != self.public_key:
            return False
        return signature_valid(public_key_hex_=self.public_key, signature_hex=self.signature, message=self.message())


def _checkpoint_message(tree_size: int, root: str, head: str, *, closing: bool = False) -> bytes:
    fields: dict[str, Any] = {"v": FORMAT, "tree_size": tree_size, "root": root, "head": head}
    if closing:  # absent rather than false, so checkpoints from before closings existed still verify
        fields["closing"] = True
    return _canonical(fields)


@dataclass(frozen=True)
class InclusionProof:
    """Entry ``entry_seq`` (leaf ``entry_seq - 1``) is in the tree of ``checkpoint.tree_size`` entries whose
    signed root is ``checkpoint.root_hash``. Self-contained: carries the entry body and the checkpoint."""

    entry_seq: int
    entry_body: bytes
    leaf_hash: str
    path: tuple[str, ...]
    checkpoint: Checkpoint


@dataclass(frozen=True)
class ConsistencyProof:
    old: Checkpoint
    new: Checkpoint
    path: tuple[str, ...]


def verify_inclusion(proof: InclusionProof, *, public_key: str | None = None) -> bool:
    """True when the body hashes to the leaf, the path leads to the checkpoint root, and the checkpoint
    signature is valid (by ``public_key`` if one is pinned, hex of the raw 32 bytes)."""
    leaf = merkle.leaf_hash(proof.entry_body)
    if leaf.hex() != proof.leaf_hash or not proof.checkpoint.signature_ok(public_key=public_key):
        return False
    try:
        if json.loads(proof.entry_body)["seq"] != proof.entry_seq:
            return False
    except (ValueError, KeyError, TypeError):
        return False
    return merkle.verify_inclusion_path(
        leaf_index=proof.entry_seq - 1, tree_size=proof.checkpoint.tree_size, leaf=leaf,
        path=[bytes.fromhex(p) for p in proof.path], root=bytes.fromhex(proof.checkpoint.root_hash),
    )


def verify_consistency(proof: ConsistencyProof, *, public_key: str | None = None) -> bool:
    """True when both checkpoints are validly signed and the old tree is a prefix of the new one."""
    if not (proof.old.signature_ok(public_key=public_key) and proof.new.signature_ok(public_key=public_key)):
        return False
    return merkle.verify_consistency_path(
        old_size=proof.old.tree_size, new_size=proof.new.tree_size, old_root=bytes.fromhex(proof.old.root_hash),
        new_root=bytes.fromhex(proof.new.root_hash), path=[bytes.fromhex(p) for p in proof.path],
    )


@dataclass(frozen=True)
class Statement:
    """One participant's postings: ``rows`` has seq, interval_start, interval_end, rule, rule_version,
    amount (Decimal), balance (running Decimal) and detail (JSON); ``by_rule`` and ``total`` sum them."""

    participant: str
    rows: pd.DataFrame
    by_rule: Mapping[str, Decimal]
    total: Decimal


class LedgerStatus(StrEnum):
    """``ok``: intact, every entry covered by signed checkpoints, closed by its writer. ``incomplete``: intact
    so far, but no closing checkpoint (a killed run, or one still running): entries after the last checkpoint
    are not yet vouched for. ``failed``: something was altered, removed, added behind the key, or forged."""

    OK = "ok"
    INCOMPLETE = "incomplete"
    FAILED = "failed"


@dataclass(frozen=True)
class VerifyReport:
    """``first_bad_entry`` is the sequence number of the first entry that fails (None when the fault is not
    in one entry, e.g. missing triggers or a bad checkpoint signature); ``problems`` say what failed;
    ``uncovered`` is the range of entries no signed checkpoint covers (None when every entry is covered);
    ``trusted_key`` is the key the signatures were checked against (None when verified ``unsigned``)."""

    path: Path
    entries: int
    checkpoints: int
    last_checkpoint_size: int
    first_bad_entry: int | None
    problems: tuple[str, ...]
    balances: Mapping[str, Decimal]
    postings_sum_micro: int
    status: LedgerStatus = LedgerStatus.OK
    closed: bool = True
    uncovered: tuple[int, int] | None = None
    trusted_key: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status is LedgerStatus.OK

    @property
    def intact(self) -> bool:
        """Nothing failed (the ledger may still be incomplete)."""
        return self.status is not LedgerStatus.FAILED


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def resolve_ledger_path(run: Path | str) -> Path:
    """A run folder means its ``ledger.sqlite``; any other path is taken as the ledger file itself."""
    run = Path(run)
    return run / LEDGER_FILENAME if run.is_dir() else run


def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    if read_only:
        if not path.is_file():
            raise FileNotFoundError(f"ledger {str(path)!r} does not exist")
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    else:
        conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        if not read_only:
            conn.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit is on disk before append returns, so a kill can never lose an acknowledged entry.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


class Ledger:
    """An open ledger file. Use :meth:`open` or :meth:`open_run`; close it (or use ``with``)."""

    def __init__(self, conn: sqlite3.Connection, *, path: Path, signer: Ed25519PrivateKey | None,
                 read_only: bool) -> None:
        self._conn = conn
        self.path = path
        self.signer = signer
        self.read_only = read_only
        self._tree = merkle.MerkleLevels()  # leaf hashes of entries 1..len, cached: entries never change
        #: Called with every checkpoint this ledger signs, once it is committed (witness delivery).
        self.on_checkpoint: list[Callable[[Checkpoint], None]] = []

    # -- opening ---------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | str, *, signer: Ed25519PrivateKey | None = None, read_only: bool = False) -> Ledger:
        """Open (creating if needed, unless ``read_only``) the ledger file at ``path``."""
        path = Path(path)
        conn = _connect(path, read_only=read_only)
        try:
            if not read_only:
                have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table','trigger')")}
                if not {"entries", "postings", "checkpoints", "ledger_meta"} <= have or not _TRIGGERS <= have:
                    # executescript commits anything pending first, so the transaction lives inside the script.
                    conn.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nINSERT OR IGNORE INTO ledger_meta(key, value) "
                                       f"VALUES ('format', '{FORMAT}');\nCOMMIT;")
            fmt = conn.execute("SELECT value FROM ledger_meta WHERE key = 'format'").fetchone()
            if fmt is None or fmt[0] != FORMAT:
                raise LedgerError(f"{path}: not a {FORMAT} ledger (format={fmt and fmt[0]!r})")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise LedgerError(f"{path}: not a ledger ({exc})") from exc
        except BaseException:
            conn.close()
            raise
        return cls(conn, path=path, signer=signer, read_only=read_only)

    @classmethod
    def open_run(cls, run_dir: Path | str, *, run_id: str | None = None) -> Ledger:
        """Open ``<run_dir>/ledger.sqlite`` for writing, signing with the operator key from the key store
        (:mod:`twin.settlement.keystore`, created there on first use; never inside a run folder). The key's
        public half is recorded in the ledger; a ledger begun under another key is refused. ``run_id``: a new
        ledger is bound to it (its genesis); one bound to another run id is refused (LedgerError)."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        keystore.check_outside(run_dir)
        if (run_dir.parent / "meta.json").exists():  # a policy folder: its parent is the run folder
            keystore.check_outside(run_dir.parent)
        key = keystore.operator_key(create=True)
        ledger = cls.open(run_dir / LEDGER_FILENAME, signer=key)
        try:
            ledger._record_public_key(public_key_hex(key.public_key()))
            if run_id is not None:
                ledger._bind_run(run_id)
        except BaseException:
            ledger.close()
            raise
        return ledger

    def _record_public_key(self, public: str) -> None:
        recorded = self.public_key()
        if recorded is None:
            self._conn.execute("INSERT OR IGNORE INTO ledger_meta(key, value) VALUES (?, ?)", (PUBLIC_KEY_META, public))
        elif recorded != public:
            raise LedgerError(f"{self.path} was begun under operator key {recorded}, but the key store "
                              f"({keystore.key_dir()}) holds {public}: set {keystore.KEY_DIR_ENV} to the key "
                              "store this ledger was written with")

    def _bind_run(self, run_id: str) -> None:
        bound = self.run_id()
        if bound is None and self.size() == 0:
            self._conn.execute("INSERT OR IGNORE INTO ledger_meta(key, value) VALUES (?, ?)", (RUN_ID_META, run_id))
        elif bound is not None and bound != run_id:
            raise LedgerError(f"{self.path} belongs to run {bound!r}, not {run_id!r}: the run folder was renamed or "
                              "copied, and a copy cannot be settled again under another name")

    def run_id(self) -> str | None:
        """The run id the ledger was begun for (None for a ledger begun without one)."""
        row = self._conn.execute("SELECT value FROM ledger_meta WHERE key = ?", (RUN_ID_META,)).fetchone()
        return str(row[0]) if row else None

    def public_key(self) -> str | None:
        """The operator public key recorded when the ledger was begun (None for a ledger opened without one)."""
        row = self._conn.execute("SELECT value FROM ledger_meta WHERE key = ?", (PUBLIC_KEY_META,)).fetchone()
        return str(row[0]) if row else None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------------------
    def append(self, draft: EntryDraft) -> AppendOutcome:
        return self.append_all([draft])

    def append_all(self, drafts: Sequence[EntryDraft], *, checkpoint_every: int | None = None) -> AppendOutcome:
        """Append ``drafts`` in one transaction. A draft whose key is already stored is a no-op when its
        content is identical (then nothing at all is written) and a LedgerConflictError otherwise.

        ``checkpoint_every``: when at least that many entries are not covered by a signed checkpoint, sign one
        in the same transaction (so a kill leaves the entries and their checkpoint, or neither)."""
        if self.read_only:
            raise LedgerError(f"{self.path} is open read-only")
        conn = self._conn
        reopened: Checkpoint | None = None
        before = len(self._tree)
        conn.execute("BEGIN IMMEDIATE")
        try:
            head = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
            before = seq - 1
            appended: list[int] = []
            existing: list[int] = []
            stored = self._stored_keys(drafts)
            entry_rows: list[tuple[Any, ...]] = []
            posting_rows: list[tuple[int, str, int]] = []
            for draft in drafts:
                content = draft.content()
                columns = draft.key.columns()
                found = stored.get(columns)
                if found is not None:
                    old = json.loads(found[1])
                    if {k: old[k] for k in content} != content:
                        raise LedgerConflictError(
                            f"entry {found[0]} already holds key {columns} with different content: "
                            f"stored {[old[k] for k in ('postings', 'detail')]}, "
                            f"new {[content[k] for k in ('postings', 'detail')]}")
                    existing.append(found[0])
                    continue
                body = _canonical({**content, "seq": seq, "prev": prev})
                digest = hashlib.sha256(body).hexdigest()
                entry_rows.append((seq, *columns, content["interval_end"], body, prev, digest))
                posting_rows.extend((seq, p.account, p.amount_micro) for p in draft.postings)
                stored[columns] = (seq, body)  # the same key twice in one batch: the second compares to the first
                appended.append(seq)
                seq, prev = seq + 1, digest
            conn.executemany(
                "INSERT INTO entries(seq, run_id, interval_start, participant, rule, rule_version, interval_end,"
                " body, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?)", entry_rows)
            conn.executemany("INSERT INTO postings(entry_seq, account, amount_micro) VALUES (?,?,?)", posting_rows)
            last = self.last_checkpoint()
            if appended and last is not None and last.closing:
                # The ledger was closed at `before` entries: say so with a signed head before growing it, or
                # the new entries would look appended behind the operator's back.
                if self.signer is None:
                    raise LedgerError(f"{self.path} was closed by checkpoint {last.id} at {last.tree_size} entries; "
                                      "appending to it needs the operator key (to sign its reopening)")
                reopened = self._insert_checkpoint(before, closing=False)
            periodic: Checkpoint | None = None
            if appended and checkpoint_every is not None and self.signer is not None:
                covered = reopened.tree_size if reopened is not None else (last.tree_size if last else 0)
                if appended[-1] - covered >= checkpoint_every:
                    periodic = self._insert_checkpoint(appended[-1], closing=False)
            conn.execute("COMMIT" if appended else "ROLLBACK")
        except BaseException:
            conn.execute("ROLLBACK")
            self._tree.truncate(before)  # a checkpoint signed inside the transaction cached leaves now gone
            raise
        # Heads go to the witnesses only once committed: a head of entries a kill rolled back would look like
        # a truncated history.
        for checkpoint in (reopened, periodic):
            if checkpoint is not None:
                self._announce(checkpoint)
        return AppendOutcome(appended=tuple(appended), existing=tuple(existing))

    def _stored_keys(self, drafts: Sequence[EntryDraft]) -> dict[tuple[str, ...], tuple[int, bytes]]:
        """(seq, body) of the entries already stored under the drafts' keys: one query per interval the
        drafts cover, not one per draft (an interval of a large fleet has thousands)."""
        wanted = {d.key.columns() for d in drafts}
        found: dict[tuple[str, ...], tuple[int, bytes]] = {}
        for run_id, start in sorted({k[:2] for k in wanted}):
            for seq, participant, rule, version, body in self._conn.execute(
                    "SELECT seq, participant, rule, rule_version, body FROM entries WHERE run_id=? AND "
                    "interval_start=?", (run_id, start)):
                key = (run_id, start, participant, rule, version)
                if key in wanted:
                    found[key] = (seq, body)
        return found

    def checkpoint(self, *, closing: bool = False) -> Checkpoint:
        """Sign the Merkle root over every entry so far; returns the last checkpoint if nothing is new.

        ``closing``: the writer is done; the signed head says the ledger is complete at this size (signed
        even when the last checkpoint already covers every entry, unless that one closed the ledger too).
        """
        if self.read_only or self.signer is None:
            raise LedgerError(f"{self.path}: checkpoints need a writable ledger with an operator key")
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            last = self.last_checkpoint()
            size = self.size()
            if last is not None and last.tree_size == size and (last.closing or not closing):
                conn.execute("ROLLBACK")
                return last
            checkpoint = self._insert_checkpoint(size, closing=closing)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._announce(checkpoint)
        return checkpoint

    def _insert_checkpoint(self, size: int, *, closing: bool) -> Checkpoint:
        """Sign and insert a checkpoint over entries 1..size; the caller holds the transaction."""
        assert self.signer is not None
        root = self._tree_to(size).root(size).hex()
        head = self.entry(size).hash if size else GENESIS_HASH
        signature = self.signer.sign(_checkpoint_message(size, root, head, closing=closing)).hex()
        public = public_key_hex(self.signer.public_key())
        cur = self._conn.execute(
            "INSERT INTO checkpoints(tree_size, root_hash, head_hash, public_key, signature) VALUES (?,?,?,?,?)",
            (size, root, head, public, signature))
        checkpoint_id = int(cur.lastrowid or 0)
        if closing:
            self._conn.execute("INSERT INTO closings(checkpoint_id) VALUES (?)", (checkpoint_id,))
        return Checkpoint(checkpoint_id, size, root, head, public, signature, closing)

    def _announce(self, checkpoint: Checkpoint) -> None:
        for callback in self.on_checkpoint:
            callback(checkpoint)

    # -- reading ---------------------------------------------------------------------------------------
    def size(self) -> int:
        return int(self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM entries").fetchone()[0])

    def entry(self, seq: int) -> StoredEntry:
        row = self._conn.execute("SELECT seq, body, prev_hash, hash FROM entries WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise KeyError(f"entry {seq} is not in {self.path} (entries 1..{self.size()})")
        return StoredEntry(row[0], bytes(row[1]), row[2], row[3])

    def entries(self) -> Iterator[StoredEntry]:
        for row in self._conn.execute("SELECT seq, body, prev_hash, hash FROM entries ORDER BY seq"):
            yield StoredEntry(row[0], bytes(row[1]), row[2], row[3])

    def has_key(self, key: EntryKey) -> bool:
        return self._conn.execute(
            "SELECT 1 FROM entries WHERE run_id=? AND interval_start=? AND participant=? AND rule=? AND rule_version=?",
            key.columns()).fetchone() is not None

    def _checkpoint_sql(self) -> str:
        if _has_table(self._conn, "closings"):
            return ("SELECT c.id, c.tree_size, c.root_hash, c.head_hash, c.public_key, c.signature, "
                    "x.checkpoint_id IS NOT NULL FROM checkpoints c LEFT JOIN closings x ON x.checkpoint_id = c.id")
        # A ledger written before closings existed: none of its checkpoints closed it.
        return "SELECT c.id, c.tree_size, c.root_hash, c.head_hash, c.public_key, c.signature, 0 FROM checkpoints c"

    def checkpoints(self) -> list[Checkpoint]:
        rows = self._conn.execute(self._checkpoint_sql() + " ORDER BY c.id")
        return [Checkpoint(*row[:6], closing=bool(row[6])) for row in rows]

    def last_checkpoint(self) -> Checkpoint | None:
        row = self._conn.execute(self._checkpoint_sql() + " ORDER BY c.id DESC LIMIT 1").fetchone()
        return Checkpoint(*row[:6], closing=bool(row[6])) if row else None

    def _tree_to(self, size: int) -> merkle.MerkleLevels:
        """The cached tree, holding at least entries 1..size."""
        tree = self._tree
        if len(tree) < size:
            rows = self._conn.execute("SELECT body FROM entries WHERE seq > ? AND seq <= ? ORDER BY seq",
                                      (len(tree), size))
            tree.extend(merkle.leaf_hash(bytes(r[0])) for r in rows)
        if len(tree) < size:
            raise LedgerError(f"{self.path}: entries 1..{size} are not all present")
        return tree

    def _leaf_hashes(self, size: int) -> list[bytes]:
        return self._tree_to(size).leaves(size)

    def prove(self, entry_seq: int, *, checkpoint: Checkpoint | None = None) -> InclusionProof:
        """Inclusion proof of entry ``entry_seq`` against ``checkpoint`` (default: the last one)."""
        checkpoint = checkpoint or self.last_checkpoint()
        if checkpoint is None:
            raise LedgerError(f"{self.path}: no signed checkpoint yet; nothing can be proved")
        if not 1 <= entry_seq <= checkpoint.tree_size:
            raise LedgerError(f"entry {entry_seq} is not covered by checkpoint {checkpoint.id} "
                              f"(entries 1..{checkpoint.tree_size})")
        leaves = self._leaf_hashes(checkpoint.tree_size)
        path = merkle.inclusion_path(entry_seq - 1, leaves)
        return InclusionProof(entry_seq=entry_seq, entry_body=self.entry(entry_seq).body,
                              leaf_hash=leaves[entry_seq - 1].hex(), path=tuple(p.hex() for p in path),
                              checkpoint=checkpoint)

    def prove_consistency(self, old: Checkpoint, new: Checkpoint) -> ConsistencyProof:
        """Proof that the tree signed in ``old`` is a prefix of the tree signed in ``new``."""
        if old.tree_size > new.tree_size:
            raise LedgerError(f"checkpoint {old.id} ({old.tree_size}) is newer than {new.id} ({new.tree_size})")
        path = merkle.consistency_path(old.tree_size, self._leaf_hashes(new.tree_size))
        return ConsistencyProof(old=old, new=new, path=tuple(p.hex() for p in path))

    def balances(self) -> dict[str, Decimal]:
        """Per-account balance (positive = the account has received money)."""
        rows = self._conn.execute("SELECT account, SUM(amount_micro) FROM postings GROUP BY account ORDER BY account")
        return {account: from_micro(int(total)) for account, total in rows}

    def totals_by_rule(self) -> dict[tuple[str, str], Decimal]:
        """Per (account, rule), the sum of the account's postings under that rule (one query over the ledger)."""
        rows = self._conn.execute(
            "SELECT p.account, e.rule, SUM(p.amount_micro) FROM postings p JOIN entries e ON e.seq = p.entry_seq "
            "GROUP BY p.account, e.rule ORDER BY p.account, e.rule")
        return {(account, rule): from_micro(int(total)) for account, rule, total in rows}

    def statement(self, participant_id: str) -> Statement:
        rows = self._conn.execute(
            "SELECT e.seq, e.interval_start, e.interval_end, e.rule, e.rule_version, p.amount_micro, e.body "
            "FROM postings p JOIN entries e ON e.seq = p.entry_seq WHERE p.account = ? ORDER BY e.seq",
            (participant_account(participant_id),)).fetchall()
        records = []
        running = 0
        by_rule: dict[str, int] = {}
        for seq, start, end, rule, version, micro, body in rows:
            running += micro
            by_rule[rule] = by_rule.get(rule, 0) + micro
            records.append({
                "seq": seq, "interval_start": pd.Timestamp(start), "interval_end": pd.Timestamp(end), "rule": rule,
                "rule_version": version, "amount": from_micro(micro), "balance": from_micro(running),
                "detail": json.dumps(json.loads(body)["detail"], sort_keys=True),
            })
        columns = ["seq", "interval_start", "interval_end", "rule", "rule_version", "amount", "balance", "detail"]
        frame = pd.DataFrame.from_records(records, columns=columns)
        return Statement(participant=participant_id, rows=frame,
                         by_rule=MappingProxyType({r: from_micro(m) for r, m in sorted(by_rule.items())}),
                         total=from_micro(running))


# -- verification --------------------------------------------------------------------------------------
def _check_entries(conn: sqlite3.Connection) -> tuple[int, list[str], int | None, list[bytes]]:
    """Walk the chain; return (entries that verified, problems, first bad seq, their leaf hashes)."""
    postings: dict[int, list[list[Any]]] = {}
    for seq, account, micro in conn.execute(
            "SELECT entry_seq, account, amount_micro FROM postings ORDER BY entry_seq, account"):
        postings.setdefault(seq, []).append([account, micro])
    prev, expected, leaves = GENESIS_HASH, 1, []
    rows = conn.execute("SELECT seq, run_id, interval_start, participant, rule, rule_version, interval_end, body, "
                        "prev_hash, hash FROM entries ORDER BY seq")
    for seq, run_id, start, participant, rule, version, end, body, prev_col, digest in rows:
        body = bytes(body)
        problem = None
        try:
            fields = json.loads(body)
        except ValueError:
            fields = None
        if seq != expected:
            return expected - 1, [f"entry {expected} is missing (the next stored entry is {seq}): deleted?"], expected, leaves
        if not isinstance(fields, dict) or fields.get("v") != FORMAT:
            problem = f"entry {seq}: body is not a {FORMAT} entry"
        elif fields.get("seq") != seq:
            problem = f"entry {seq}: its hashed body says seq {fields.get('seq')}: entries reordered or swapped?"
        elif hashlib.sha256(body).hexdigest() != digest:
            problem = f"entry {seq}: body does not match its hash: edited?"
        elif fields.get("prev") != prev or prev_col != prev:
            problem = f"entry {seq}: does not chain to entry {seq - 1}: an entry was removed, inserted or rewritten"
        elif [run_id, start, participant, rule, version, end] != [
                fields.get(k) for k in ("run", "interval_start", "participant", "rule", "rule_version", "interval_end")]:
            problem = f"entry {seq}: key columns differ from its hashed body: edited?"
        elif postings.pop(seq, []) != fields.get("postings"):
            problem = f"entry {seq}: posting rows differ from its hashed body: edited?"
        elif sum(m for _, m in fields["postings"]) != 0:
            problem = f"entry {seq}: postings sum to {sum(m for _, m in fields['postings'])} micro-units, not zero"
        if problem:
            return seq - 1, [problem], seq, leaves
        leaves.append(merkle.leaf_hash(body))
        prev, expected = digest, expected + 1
    if postings:
        orphan = min(postings)
        return expected - 1, [f"posting rows for entry {orphan}, which does not exist: entry deleted?"], orphan, leaves
    return expected - 1, [], None, leaves


def _check_checkpoints(checkpoints: list[Checkpoint], leaves: list[bytes], heads: Mapping[int, str],
                       public_key: str | None) -> tuple[list[str], int | None]:
    """Each checkpoint is signed by ``public_key`` (by its own embedded key when None: ``unsigned``), never
    shrinks the tree, and its root and chain head match the entries it covers."""
    covered = 0
    for ck in checkpoints:
        if not ck.signature_ok(public_key=public_key):
            if public_key is not None and ck.public_key != public_key:
                return [f"checkpoint {ck.id}: signed by key {ck.public_key}, not by the trusted operator key "
                        f"{public_key}"], None
            whose = "the trusted operator key" if public_key else "its own key"
            return [f"checkpoint {ck.id}: signature does not verify with {whose}"], None
        if ck.tree_size < covered:
            return [f"checkpoint {ck.id} covers {ck.tree_size} entries, fewer than the {covered} of the checkpoint "
                    f"before it: a signed head never shrinks"], ck.tree_size + 1
        if ck.tree_size > len(leaves):
            return [f"checkpoint {ck.id} is signed over {ck.tree_size} entries but the ledger holds {len(leaves)}: "
                    f"entries {len(leaves) + 1}..{ck.tree_size} were removed (truncated)"], len(leaves) + 1
        if merkle.root_hash(leaves[:ck.tree_size]).hex() != ck.root_hash or heads.get(ck.tree_size, GENESIS_HASH) != ck.head_hash:
            return [f"checkpoint {ck.id}: entries {covered + 1}..{ck.tree_size} no longer match its signed root: "
                    f"rewritten?"], covered + 1
        covered = ck.tree_size
    return [], None


def _coverage(checkpoints: list[Checkpoint], entries: int) -> tuple[LedgerStatus, list[str], int | None,
                                                                    tuple[int, int] | None]:
    """(status, problems or notes, first bad entry, uncovered range) of an otherwise intact ledger."""
    last = checkpoints[-1] if checkpoints else None
    covered = last.tree_size if last else 0
    uncovered = (covered + 1, entries) if covered < entries else None
    if last is not None and last.closing:
        if uncovered is None:
            return LedgerStatus.OK, [], None, None
        return LedgerStatus.FAILED, [
            f"entries {covered + 1}..{entries} are not covered by any signed checkpoint: the ledger was closed by "
            f"checkpoint {last.id} at {covered} entries, and these were appended after it without the operator "
            f"key"], covered + 1, uncovered
    why = "the run was killed, or is still running"
    if uncovered is None:
        where = f"every entry is covered by checkpoint {last.id}" if last else "it holds no entries"
        return LedgerStatus.INCOMPLETE, [f"no closing checkpoint ({why}); {where}"], None, None
    return LedgerStatus.INCOMPLETE, [
        f"no closing checkpoint ({why}): entries {covered + 1}..{entries} are not covered by a signed checkpoint"
        + (f" (the last, checkpoint {last.id}, covers 1..{covered})" if last else "")], None, uncovered


def _run_binding_problems(ledger: Ledger, path: Path) -> list[str]:
    """A ledger is bound to the run id it was begun for: every entry must carry it, and when the ledger sits in
    a run folder (``RUN/<policy>/ledger.sqlite`` beside ``RUN/meta.json`` naming a ``run_id``), that folder must
    still be that run — a renamed or copied folder settled again would put a second run id in the ledger."""
    runs = [str(r[0]) for r in ledger._conn.execute("SELECT run_id FROM entries GROUP BY run_id ORDER BY MIN(seq)")]
    bound = ledger.run_id()
    problems: list[str] = []
    if bound is not None:
        for other in (r for r in runs if r != bound):
            seq = ledger._conn.execute("SELECT MIN(seq) FROM entries WHERE run_id = ?", (other,)).fetchone()[0]
            problems.append(f"entry {seq}: settled as run {other!r}, but this ledger belongs to run {bound!r}: the "
                            f"same intervals were settled again under another name (a renamed or copied run folder)")
            return problems
    run_dir = path.parent.parent
    try:
        meta = json.loads((run_dir / _RUN_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return problems
    run_id = meta.get("run_id") if isinstance(meta, dict) else None
    if not isinstance(run_id, str):
        return problems
    expected = f"{run_id}:{path.parent.name}"
    if run_id != run_dir.name:
        problems.append(f"run folder {run_dir.name!r} was made as run {run_id!r} (its meta.json): renamed or "
                        "copied; a run folder is bound to its run id, so a copy cannot be settled under another name")
    wrong = [r for r in ([bound] if bound else []) + runs if r != expected]
    if wrong:
        problems.append(f"this ledger was settled as run {wrong[0]!r}, but it sits in run folder {run_dir.name!r} "
                        f"as policy {path.parent.name!r} (expected run {expected!r}): copied from another run?")
    return problems


def _resolve_trust(public_key: str | None, unsigned: bool) -> str | None:
    if public_key is not None or unsigned:
        return public_key
    trusted = keystore.trusted_key()
    if trusted is None:
        raise LedgerError(f"no trusted operator key to check the signatures with: name the operator's public key "
                          f"(--public-key FILE, or {keystore.TRUSTED_KEY_ENV}=FILE), or verify --unsigned")
    return trusted.public_key


def verify(path: Path | str, *, public_key: str | None = None, unsigned: bool = False) -> VerifyReport:
    """Check a ledger file end to end without writing to it; the report names the first bad entry.

    Checks, in order: every entry is present, numbered, chained, hashes to itself, matches its posting and
    key rows and balances; every checkpoint is signed by the trusted operator key (``public_key``, hex; by
    default the configured trusted key, see :func:`twin.settlement.keystore.trusted_key`; never a key found
    in the run folder or the ledger) and its root matches the entries it covers, which catches a truncated
    tail; every entry is covered by a signed checkpoint and the last one closed the ledger; the append-only
    triggers are in place. ``unsigned`` checks each signature only against the key it names itself, which
    proves nothing about who signed. A ledger rewritten by someone holding the operator key verifies: only a
    head kept elsewhere catches that (:func:`audit`).
    """
    path = resolve_ledger_path(path)
    trusted = _resolve_trust(public_key, unsigned)
    ledger = Ledger.open(path, read_only=True)
    try:
        conn = ledger._conn
        good, problems, first_bad, leaves = _check_entries(conn)
        heads = {seq: h for seq, h in conn.execute("SELECT seq, hash FROM entries WHERE seq <= ?", (good,))}
        checkpoints = ledger.checkpoints()
        if not problems:
            problems, first_bad = _check_checkpoints(checkpoints, leaves, heads, trusted)
        have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        # A ledger from before closings existed has neither the table nor its triggers.
        needed = _TRIGGERS if _has_table(conn, "closings") else frozenset(
            t for t in _TRIGGERS if not t.startswith("closings_"))
        if not needed <= have:
            problems = [*problems, f"append-only triggers missing: {sorted(needed - have)}"]
        total = int(conn.execute("SELECT COALESCE(SUM(amount_micro), 0) FROM postings").fetchone()[0])
        if total != 0 and not problems:
            problems = [f"postings sum to {total} micro-units, not zero"]
        if not problems:
            problems = _run_binding_problems(ledger, path)
        size = ledger.size()
        notes: list[str] = []
        uncovered: tuple[int, int] | None = None
        if problems:
            status = LedgerStatus.FAILED
        else:
            status, found, first_bad, uncovered = _coverage(checkpoints, size)
            if status is LedgerStatus.FAILED:
                problems = found
            else:
                notes = found
        if unsigned:
            notes.append("signatures checked only against the keys they name themselves (--unsigned): this shows "
                         "the file is self-consistent, not who signed it")
        return VerifyReport(
            path=path, entries=size, checkpoints=len(checkpoints),
            last_checkpoint_size=checkpoints[-1].tree_size if checkpoints else 0, first_bad_entry=first_bad,
            problems=tuple(problems), balances=MappingProxyType(ledger.balances()), postings_sum_micro=total,
            status=status, closed=bool(checkpoints and checkpoints[-1].closing), uncovered=uncovered,
            trusted_key=trusted, notes=tuple(notes))
    finally:
        ledger.close()


# -- audit: a participant's kept heads against the ledger ---------------------------------------------------
@dataclass(frozen=True)
class AuditReport:
    """The outcome of checking kept signed tree heads against a ledger. ``consistent`` holds the tree sizes of
    the heads the ledger's latest signed checkpoint extends (by an RFC 6962 consistency proof); ``problems``
    say which heads it does not, and why."""

    path: Path
    heads: int
    consistent: tuple[int, ...]
    latest: Checkpoint | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems and self.heads > 0


def _stored_leaves(ledger: Ledger) -> tuple[list[bytes], str | None]:
    """Leaf hashes of the stored entries in order, stopping at a gap (and saying where)."""
    leaves: list[bytes] = []
    for entry in ledger.entries():
        if entry.seq != len(leaves) + 1:
            return leaves, f"entry {len(leaves) + 1} is missing (the next stored entry is {entry.seq})"
        leaves.append(merkle.leaf_hash(entry.body))
    return leaves, None


def audit(path: Path | str, heads: Sequence[Any], *, public_key: str | None = None) -> AuditReport:
    """Check signed tree heads a participant kept (``witness.SignedTreeHead``) against the ledger at ``path``.

    For each kept head the ledger must prove, with an RFC 6962 consistency proof built from its entries, that
    its latest signed checkpoint extends that head. A head the operator signed which the ledger cannot extend
    is evidence of a rewritten, forked or truncated history — whoever holds the key now. Heads must be signed
    by the trusted operator key (``public_key``; by default the configured trusted key).
    """
    path = resolve_ledger_path(path)
    trusted = _resolve_trust(public_key, unsigned=False)
    assert trusted is not None
    ledger = Ledger.open(path, read_only=True)
    try:
        latest = ledger.last_checkpoint()
        leaves, gap = _stored_leaves(ledger)
    finally:
        ledger.close()
    problems: list[str] = []
    if not heads:
        problems.append("no kept heads to audit: the participant received none")
    if latest is None:
        problems.append("the ledger holds no signed checkpoint: its history cannot be shown to extend any kept head"
                        " (checkpoints deleted?)")
        return AuditReport(path, len(heads), (), None, tuple(problems))
    if not latest.signature_ok(public_key=trusted):
        problems.append(f"the ledger's latest checkpoint {latest.id} is not signed by the trusted operator key "
                        f"{trusted}")
    elif latest.tree_size > len(leaves):
        problems.append(f"the ledger's latest checkpoint {latest.id} covers {latest.tree_size} entries, but "
                        f"{gap or f'only {len(leaves)} are stored'}")
    elif merkle.root_hash(leaves[:latest.tree_size]).hex() != latest.root_hash:
        problems.append(f"the ledger's entries 1..{latest.tree_size} do not match its latest checkpoint "
                        f"{latest.id}: run `gridtwin ledger verify`")
    if problems:
        return AuditReport(path, len(heads), (), latest, tuple(problems))
    new_root = bytes.fromhex(latest.root_hash)
    consistent: list[int] = []
    for number, head in enumerate(heads, start=1):
        label = f"kept head {number} (checkpoint {head.checkpoint_id}, {head.tree_size} entries)"
        if not signature_valid(public_key_hex_=trusted, signature_hex=head.signature,
                               message=_checkpoint_message(head.tree_size, head.root_hash, head.head_hash,
                                                           closing=head.closing)) or head.public_key != trusted:
            problems.append(f"{label}: not signed by the trusted operator key {trusted}: it proves nothing "
                            "(the participant's copy was tampered with?)")
            continue
        if head.tree_size > latest.tree_size:
            problems.append(f"{label}: the ledger's latest signed checkpoint {latest.id} covers only "
                            f"{latest.tree_size} entries: entries {latest.tree_size + 1}..{head.tree_size}, which "
                            f"the operator signed, were removed (truncated or rolled back)")
            continue
        proof = merkle.consistency_path(head.tree_size, leaves[:latest.tree_size])
        if not merkle.verify_consistency_path(old_size=head.tree_size, new_size=latest.tree_size,
                                              old_root=bytes.fromhex(head.root_hash), new_root=new_root, path=proof):
            problems.append(f"{label}: not a prefix of the ledger's signed tree of {latest.tree_size} entries "
                            f"(checkpoint {latest.id}): the history the operator signed was rewritten")
            continue
        consistent.append(head.tree_size)
    return AuditReport(path, len(heads), tuple(consistent), latest, tuple(problems))
