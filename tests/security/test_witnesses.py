"""Point 3: witnesses. Every signed tree head reaches the participants as it is made; each keeps the heads it
received, outside the ledger; ``gridtwin ledger audit`` checks them against the ledger with RFC 6962
consistency proofs, so a rewritten history is caught — even one re-signed by the operator key's holder —
whenever a participant kept an earlier head. Each rewrite the review tried is tested."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from twin.settlement import Settlement, SettlementConfig, keystore, merkle, meters_frame
from twin.settlement.cli import ledger_app
from twin.settlement.ledger import EntryDraft, EntryKey, Ledger, audit, verify
from twin.settlement.witness import SignedTreeHead, WitnessStore, read_heads

T0 = pd.Timestamp("2024-07-01T00:00Z")
Q = pd.Timedelta("15min")
INTERVALS = 12
runner = CliRunner(env={"COLUMNS": "300"})

# RFC 6962 reference leaves (certificate-transparency test data) and the consistency proofs of their trees.
CT_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43", bytes(range(0x50, 0x58)),
             bytes(range(0x60, 0x70))]
CT_CONSISTENCY = {
    (1, 1): [],
    (1, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (6, 8): ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
    (2, 5): ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"],
}


def test_consistency_proofs_match_the_rfc6962_reference_vectors() -> None:
    leaves = [merkle.leaf_hash(x) for x in CT_LEAVES]
    for (m, n), expected in CT_CONSISTENCY.items():
        proof = merkle.consistency_path(m, leaves[:n])
        assert [p.hex() for p in proof] == expected, (m, n)
        assert merkle.verify_consistency_path(old_size=m, new_size=n, old_root=merkle.root_hash(leaves[:m]),
                                              new_root=merkle.root_hash(leaves[:n]), path=proof)
    # By hand, PROOF(6, D[8]) = [MTH(D[4:6]), MTH(D[6:8]), MTH(D[0:4])]: the subtrees that, with the old
    # tree's own, rebuild both roots (RFC 6962 §2.1.2).
    h = lambda b: hashlib.sha256(b).digest()  # noqa: E731
    assert CT_CONSISTENCY[(6, 8)][0] == h(b"\x01" + leaves[4] + leaves[5]).hex()
    assert CT_CONSISTENCY[(6, 8)][1] == h(b"\x01" + leaves[6] + leaves[7]).hex()
    assert CT_CONSISTENCY[(6, 8)][2] == merkle.root_hash(leaves[:4]).hex()
    # And PROOF(2, D[5]) = [MTH(D[2:4]), MTH(D[4:5])] = [H(0x01 ‖ l2 ‖ l3), l4].
    assert CT_CONSISTENCY[(2, 5)] == [h(b"\x01" + leaves[2] + leaves[3]).hex(), leaves[4].hex()]
    # A forked old tree does not verify against the real new root.
    forked = merkle.root_hash([merkle.leaf_hash(b"fork"), *leaves[1:6]])
    assert not merkle.verify_consistency_path(old_size=6, new_size=8, old_root=forked,
                                              new_root=merkle.root_hash(leaves),
                                              path=merkle.consistency_path(6, leaves))


def _settled(run: Path) -> Path:
    """A policy's ledger settled by the real settlement path: two participants, a checkpoint every 5 entries."""
    config = SettlementConfig.from_mapping({"checkpoint_every": 5, "contracts": [
        {"participant": p, "rules": [{"kind": "capacity_payment", "committed_kw": str(10 + i),
                                      "price_per_kw_month": "3.33"}]} for i, p in enumerate(("alice", "bob"))]})
    settlement = Settlement.for_run(run, config=config, run_id="w")
    registers = pd.DataFrame({"e_imp_kwh": {"alice": 0.0, "bob": 0.0}, "e_exp_kwh": {"alice": 0.0, "bob": 0.0}})
    for k in range(INTERVALS):
        settlement.settle_interval(start=T0 + k * Q, end=T0 + (k + 1) * Q,
                                   meters=meters_frame(start_registers=registers, end_registers=registers))
    settlement.close()
    return run / "ledger.sqlite"


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return _settled(tmp_path / "run")


def _heads(path: Path, who: str) -> list[SignedTreeHead]:
    return WitnessStore(path.parent / "witnesses").heads(who)


def _entries(path: Path) -> list[dict]:
    with closing(sqlite3.connect(path)) as conn:
        return [json.loads(b) for (b,) in conn.execute("SELECT body FROM entries ORDER BY seq")]


def _rewrite_with_the_key(path: Path, bodies: list[dict]) -> None:
    """The operator key's holder rebuilds the ledger from ``bodies`` (edited or cut), re-chains it, signs fresh
    checkpoints with the real key, and puts it in place of the original. Only the witnesses' copies remain."""
    rebuilt = path.with_name("rebuilt.sqlite")
    with Ledger.open(rebuilt, signer=keystore.operator_key()) as ledger:
        for body in bodies:
            ledger.append(EntryDraft.create(
                key=EntryKey(run_id=body["run"], interval_start=pd.Timestamp(body["interval_start"]),
                             participant=body["participant"], rule=body["rule"], rule_version=body["rule_version"]),
                interval_end=pd.Timestamp(body["interval_end"]), postings=dict(body["postings"]),
                detail=body["detail"]))
            if len(ledger.checkpoints()) == 0 and ledger.size() == 5:
                ledger.checkpoint()
        ledger.checkpoint(closing=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.move(rebuilt, path)


def _give(bodies: list[dict], seq: int, micro: int) -> list[dict]:
    edited = [dict(b) for b in bodies]
    who = edited[seq - 1]["postings"][1][0]
    edited[seq - 1]["postings"] = [["operator", -micro], [who, micro]]
    return edited


def test_heads_reach_every_participant_as_they_are_signed(ledger_path: Path) -> None:
    with Ledger.open(ledger_path, read_only=True) as ledger:
        checkpoints = ledger.checkpoints()
    assert len(checkpoints) >= 3 and checkpoints[-1].closing
    for who in ("alice", "bob"):
        kept = _heads(ledger_path, who)
        assert [h.checkpoint_id for h in kept] == [c.id for c in checkpoints]  # every head, in order, once
        assert [h.tree_size for h in kept] == [c.tree_size for c in checkpoints]
        report = audit(ledger_path, kept)
        assert report.ok and report.consistent == tuple(c.tree_size for c in checkpoints)
    # Outside the ledger database: their own files, which the ledger file's owner does not rewrite.
    assert sorted(p.name for p in (ledger_path.parent / "witnesses").iterdir()) == ["alice.heads.jsonl",
                                                                                   "bob.heads.jsonl"]
    result = runner.invoke(ledger_app, ["audit", str(ledger_path.parent), "--all"])
    assert result.exit_code == 0 and result.stdout.count("CONSISTENT") == 2, result.output


def test_edit_rechain_and_delete_checkpoints_is_caught(ledger_path: Path) -> None:
    """Without the key: rewrite entry 3, recompute the whole hash chain after it, delete every checkpoint."""
    with closing(sqlite3.connect(ledger_path)) as conn:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        rows = conn.execute("SELECT seq, body FROM entries ORDER BY seq").fetchall()
        prev = "0" * 64
        for seq, body in rows:
            fields = json.loads(body)
            if seq == 3:
                fields["postings"] = [["operator", -99_000_000], [fields["postings"][1][0], 99_000_000]]
                conn.execute("DELETE FROM postings WHERE entry_seq = 3")
                conn.executemany("INSERT INTO postings VALUES (3, ?, ?)", fields["postings"])
            fields["prev"] = prev
            new = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
            prev_col, prev = prev, hashlib.sha256(new).hexdigest()
            conn.execute("UPDATE entries SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?", (new, prev_col, prev, seq))
        conn.execute("DELETE FROM closings")
        conn.execute("DELETE FROM checkpoints")
        conn.commit()
    assert not verify(ledger_path).ok  # no signed checkpoint covers anything now
    report = audit(ledger_path, _heads(ledger_path, "alice"))
    assert not report.ok and "holds no signed checkpoint" in report.problems[0]
    result = runner.invoke(ledger_app, ["audit", str(ledger_path.parent), "--participant", "alice"])
    assert result.exit_code == 1 and "INCONSISTENT" in result.stderr


def test_a_rewrite_re_signed_with_the_operator_key_is_caught(ledger_path: Path) -> None:
    before = _heads(ledger_path, "bob")
    bodies = _entries(ledger_path)
    edited = _give(bodies, 3, 99_000_000)
    _rewrite_with_the_key(ledger_path, edited)
    # The key holder's rewrite is self-consistent and validly signed: verify alone cannot see it...
    report = verify(ledger_path)
    assert report.ok and report.balances[edited[2]["postings"][1][0]] > Decimal(90)
    # ...but every head bob kept that covers entry 3 is no prefix of the rewritten history.
    audited = audit(ledger_path, before)
    assert not audited.ok
    covering = [h for h in before if h.tree_size >= 3]
    assert len(audited.problems) == len(covering)
    assert all("the history the operator signed was rewritten" in p for p in audited.problems)
    # One kept head is enough: a participant who kept only the first one still proves the rewrite.
    assert not audit(ledger_path, before[:1]).ok
    result = runner.invoke(ledger_app, ["audit", str(ledger_path.parent), "--participant", "bob"])
    assert result.exit_code == 1 and "not a prefix of the ledger's signed tree" in result.stderr


def test_truncation_re_signed_with_the_operator_key_is_caught(ledger_path: Path) -> None:
    kept = _heads(ledger_path, "alice")
    bodies = _entries(ledger_path)
    _rewrite_with_the_key(ledger_path, bodies[:7])  # drop entries 8.. and sign a closing head at 7
    assert verify(ledger_path).ok
    report = audit(ledger_path, kept)
    assert not report.ok
    assert any("were removed (truncated or rolled back)" in p for p in report.problems)
    # Heads of 7 entries or fewer are still consistent: a truncation is named by the heads it contradicts.
    assert set(report.consistent) == {h.tree_size for h in kept if h.tree_size <= 7}


def test_an_honest_resumed_ledger_stays_consistent_with_every_kept_head(ledger_path: Path) -> None:
    kept = _heads(ledger_path, "alice")
    _settled(ledger_path.parent)  # the same run resumed: re-settling is a no-op, closing signs nothing new
    with Ledger.open_run(ledger_path.parent) as ledger:  # ...and a later writer that appends, then closes
        ledger.on_checkpoint.append(lambda ck: WitnessStore(ledger_path.parent / "witnesses").deliver(ck, ["alice"]))
        ledger.append(EntryDraft.create(
            key=EntryKey(run_id="w", interval_start=T0 + 99 * Q, participant="alice", rule="bonus", rule_version="1"),
            interval_end=T0 + 100 * Q, postings={"operator": -1, "participant:alice": 1}))
        ledger.checkpoint(closing=True)
    assert audit(ledger_path, kept).ok
    assert audit(ledger_path, _heads(ledger_path, "alice")).ok and len(_heads(ledger_path, "alice")) > len(kept)


def test_a_forged_head_in_a_participants_copy_proves_nothing(ledger_path: Path, tmp_path: Path) -> None:
    forged = tmp_path / "forged.heads.jsonl"
    head = _heads(ledger_path, "alice")[0].to_json()
    head["root"] = "ab" * 32
    forged.write_text(json.dumps(head) + "\n")
    report = audit(ledger_path, read_heads(forged))
    assert not report.ok and "not signed by the trusted operator key" in report.problems[0]
    bad = tmp_path / "bad.heads.jsonl"
    bad.write_text('{"v": "gridtwin-sth/1", "tree_size": -1}\n')
    result = runner.invoke(ledger_app, ["audit", str(ledger_path.parent), "--heads", str(bad)])
    assert result.exit_code == 2 and "bad.heads.jsonl:1" in result.output
