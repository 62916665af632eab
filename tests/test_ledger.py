"""The ledger: append-only double entry, idempotency, hash chain, RFC 6962 checkpoints and proofs,
and detection of every kind of tampering we could think of."""

import hashlib
import json
import shutil
import sqlite3
from contextlib import closing
from decimal import Decimal

import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.settlement import merkle
from twin.settlement.ledger import (
    GENESIS_HASH,
    EntryDraft,
    EntryKey,
    Ledger,
    LedgerConflictError,
    UnbalancedEntryError,
    verify,
    verify_consistency,
    verify_inclusion,
)
from twin.settlement.signing import public_key_hex

T0 = pd.Timestamp("2024-07-01T00:00Z")
Q = pd.Timedelta("15min")

# RFC 6962 reference data (certificate-transparency test vectors): leaves and the roots of their prefixes.
CT_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43", bytes(range(0x50, 0x58)),
             bytes(range(0x60, 0x70))]
CT_ROOTS = ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"]


def draft(i: int, *, amount: int = 1_000_000, participant: str = "alice", rule: str = "capacity") -> EntryDraft:
    return EntryDraft.create(
        key=EntryKey(run_id="r1", interval_start=T0 + i * Q, participant=participant, rule=rule, rule_version="1"),
        interval_end=T0 + (i + 1) * Q,
        postings={"operator": -amount, f"participant:{participant}": amount},
        detail={"kwh": Decimal("1.5")})


def build(run_dir, n=20, checkpoints=(10, 20)):
    """A ledger of ``n`` entries (alice gets 1.00 + i micro-units each) with checkpoints after the given sizes;
    the one after the last entry closes it, as a writer that finished does."""
    with Ledger.open_run(run_dir) as ledger:
        for i in range(n):
            ledger.append(draft(i, amount=1_000_000 + i))
            if i + 1 in checkpoints:
                ledger.checkpoint(closing=i + 1 == n)
    return run_dir / "ledger.sqlite"


def tamper(path, *statements):
    """Do what an attacker with file access would: drop the triggers, then rewrite rows."""
    with closing(sqlite3.connect(path)) as conn:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        for sql, *args in statements:
            conn.execute(sql, *args)
        conn.commit()


# -- Merkle ------------------------------------------------------------------------------------------------
def test_merkle_roots_match_the_rfc6962_reference_vectors():
    leaves = [merkle.leaf_hash(x) for x in CT_LEAVES]
    assert merkle.root_hash([]).hex() == hashlib.sha256(b"").hexdigest()
    for n in range(1, 9):
        assert merkle.root_hash(leaves[:n]).hex() == CT_ROOTS[n - 1]
    # Reference inclusion proof of leaf 0 in the tree of 8.
    assert [p.hex() for p in merkle.inclusion_path(0, leaves)] == [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]
    # Three leaves split at 2: root = H(0x01 ‖ H(0x01 ‖ l0 ‖ l1) ‖ l2).
    h = lambda b: hashlib.sha256(b).digest()  # noqa: E731
    assert merkle.root_hash(leaves[:3]) == h(b"\x01" + h(b"\x01" + leaves[0] + leaves[1]) + leaves[2])



def test_the_incremental_tree_gives_every_prefix_root_of_the_reference_recursion():
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(300)]
    tree = merkle.MerkleLevels()
    tree.extend(leaves[:1])
    tree.extend(leaves[1:300])
    assert [tree.root(n) for n in range(301)] == [merkle.root_hash(leaves[:n]) for n in range(301)]
    ct = merkle.MerkleLevels()
    ct.extend(merkle.leaf_hash(x) for x in CT_LEAVES)
    assert [ct.root(n).hex() for n in range(1, 9)] == CT_ROOTS
    tree.truncate(77)  # a rolled-back append: the tree is the one of 77 leaves, and grows again from there
    assert len(tree) == 77 and tree.root(77) == merkle.root_hash(leaves[:77])
    tree.extend([merkle.leaf_hash(b"other")] * 5)
    assert tree.root(82) == merkle.root_hash([*leaves[:77], *[merkle.leaf_hash(b"other")] * 5])
    with pytest.raises(ValueError, match="size=83 is outside 0..82"):
        tree.root(83)

@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=1, max_value=70), data=st.data())
def test_merkle_inclusion_and_consistency_proofs_verify_and_reject_wrong_inputs(n, data):
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    root = merkle.root_hash(leaves)
    m = data.draw(st.integers(min_value=0, max_value=n - 1))
    path = merkle.inclusion_path(m, leaves)
    assert merkle.verify_inclusion_path(leaf_index=m, tree_size=n, leaf=leaves[m], path=path, root=root)
    assert not merkle.verify_inclusion_path(leaf_index=m, tree_size=n, leaf=merkle.leaf_hash(b"x"), path=path,
                                            root=root)
    if n > 1:
        assert not merkle.verify_inclusion_path(leaf_index=(m + 1) % n, tree_size=n, leaf=leaves[m], path=path,
                                                root=root)
    old = data.draw(st.integers(min_value=1, max_value=n))
    proof = merkle.consistency_path(old, leaves)
    old_root = merkle.root_hash(leaves[:old])
    assert merkle.verify_consistency_path(old_size=old, new_size=n, old_root=old_root, new_root=root, path=proof)
    if old < n:
        forked = merkle.root_hash([merkle.leaf_hash(b"fork"), *leaves[1:old]])
        assert not merkle.verify_consistency_path(old_size=old, new_size=n, old_root=forked, new_root=root,
                                                  path=proof)


# -- appending ---------------------------------------------------------------------------------------------
def test_entries_are_chained_canonical_json_with_balanced_postings(tmp_path):
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        assert ledger.append_all([draft(0), draft(1)]).appended == (1, 2)
        first, second = ledger.entry(1), ledger.entry(2)
    assert first.prev_hash == GENESIS_HASH and second.prev_hash == first.hash
    assert first.hash == hashlib.sha256(first.body).hexdigest()
    body = json.loads(first.body)
    assert body["seq"] == 1 and body["prev"] == GENESIS_HASH
    assert body["postings"] == [["operator", -1_000_000], ["participant:alice", 1_000_000]]
    assert body["interval_start"] == "2024-07-01T00:00:00Z" and body["detail"] == {"kwh": "1.5"}
    assert first.body == json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def test_unbalanced_or_float_entries_are_refused():
    key = EntryKey(run_id="r", interval_start=T0, participant="a", rule="x", rule_version="1")
    with pytest.raises(UnbalancedEntryError, match="sum to 1"):
        EntryDraft.create(key=key, interval_end=T0 + Q, postings={"operator": -1, "participant:a": 2})
    with pytest.raises(UnbalancedEntryError, match="two non-zero"):
        EntryDraft.create(key=key, interval_end=T0 + Q, postings={"operator": 0, "participant:a": 0})
    with pytest.raises(TypeError, match="micro-units"):
        EntryDraft.create(key=key, interval_end=T0 + Q, postings={"operator": -1.0, "participant:a": 1.0})


def test_appending_an_existing_key_is_a_no_op_and_the_file_stays_byte_identical(tmp_path):
    path = tmp_path / "l.sqlite"
    with Ledger.open(path) as ledger:
        ledger.append_all([draft(0), draft(1)])
    before = path.read_bytes()
    with Ledger.open(path) as ledger:
        outcome = ledger.append_all([draft(1), draft(0)])
        assert outcome.appended == () and outcome.existing == (2, 1)
        with pytest.raises(LedgerConflictError, match="different content"):
            ledger.append(draft(0, amount=5))
    assert path.read_bytes() == before
    # A batch with one new entry appends only that one.
    with Ledger.open(path) as ledger:
        assert ledger.append_all([draft(0), draft(2)]).appended == (3,)


def test_triggers_make_every_table_append_only(tmp_path):
    path = build(tmp_path / "run", n=3, checkpoints=(3,))
    with closing(sqlite3.connect(path)) as conn:
        for sql in ("UPDATE postings SET amount_micro = 0", "DELETE FROM entries WHERE seq = 3",
                    "UPDATE checkpoints SET tree_size = 1", "DELETE FROM ledger_meta"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(sql)


# -- verification ------------------------------------------------------------------------------------------
def test_an_untouched_ledger_verifies_and_balances(tmp_path):
    path = build(tmp_path / "run")
    report = verify(path)
    assert report.ok, report.problems
    assert (report.entries, report.checkpoints, report.last_checkpoint_size) == (20, 2, 20)
    # alice received Σ (1.000000 + i µ) for i < 20 = 20.000190; the operator paid it.
    assert report.balances == {"operator": Decimal("-20.000190"), "participant:alice": Decimal("20.000190")}
    assert report.postings_sum_micro == 0


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return build(tmp_path_factory.mktemp("pristine") / "run").parent


def copy_run(pristine, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(pristine, target)
    return target / "ledger.sqlite"


def edited_body(path, seq, amount):
    with closing(sqlite3.connect(path)) as conn:
        body = json.loads(conn.execute("SELECT body FROM entries WHERE seq = ?", (seq,)).fetchone()[0])
    body["postings"] = [["operator", -amount], ["participant:alice", amount]]
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("case", "first_bad", "says"),
    [
        ("posting_row", 7, "posting rows differ"),
        ("body", 7, "does not match its hash"),
        ("delete", 7, "entry 7 is missing"),
        ("truncate", 18, "entries 18..20 were removed"),
        ("swap", 4, "says seq 5"),
        ("rechain", 11, "entries 11..20 no longer match"),
    ],
)
def test_tampering_is_detected_and_the_first_bad_entry_named(pristine, tmp_path, case, first_bad, says):
    path = copy_run(pristine, tmp_path)
    if case == "posting_row":  # move one micro-unit into alice's pocket, keeping the entry "balanced"
        tamper(path, ("UPDATE postings SET amount_micro = amount_micro + 1 WHERE entry_seq = 7",))
    elif case == "body":
        tamper(path, ("UPDATE entries SET body = ? WHERE seq = 7", (edited_body(path, 7, 9_000_000),)))
    elif case == "delete":
        tamper(path, ("DELETE FROM postings WHERE entry_seq = 7",), ("DELETE FROM entries WHERE seq = 7",))
    elif case == "truncate":
        tamper(path, ("DELETE FROM postings WHERE entry_seq > 17",), ("DELETE FROM entries WHERE seq > 17",))
    elif case == "swap":  # exchange entries 4 and 5 wholesale, keeping the seq column in order
        tamper(path, ("UPDATE entries SET seq = -4 WHERE seq = 4",), ("UPDATE entries SET seq = 4 WHERE seq = 5",),
               ("UPDATE entries SET seq = 5 WHERE seq = -4",), ("UPDATE postings SET entry_seq = -4 WHERE entry_seq = 4",),
               ("UPDATE postings SET entry_seq = 4 WHERE entry_seq = 5",),
               ("UPDATE postings SET entry_seq = 5 WHERE entry_seq = -4",))
    elif case == "rechain":  # rewrite entry 13 and re-hash the whole chain after it: only the signature stops it
        with closing(sqlite3.connect(path)) as conn:
            rows = conn.execute("SELECT seq, body FROM entries WHERE seq >= 13 ORDER BY seq").fetchall()
            prev = conn.execute("SELECT hash FROM entries WHERE seq = 12").fetchone()[0]
        statements = []
        for seq, body in rows:
            fields = json.loads(body)
            if seq == 13:
                fields["postings"] = [["operator", -9_000_000], ["participant:alice", 9_000_000]]
                statements.append(("UPDATE postings SET amount_micro = ? WHERE entry_seq = 13 AND account = ?",
                                   (9_000_000, "participant:alice")))
                statements.append(("UPDATE postings SET amount_micro = ? WHERE entry_seq = 13 AND account = ?",
                                   (-9_000_000, "operator")))
            fields["prev"] = prev
            new = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
            prev = hashlib.sha256(new).hexdigest()
            statements.append(("UPDATE entries SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                               (new, fields["prev"], prev, seq)))
        tamper(path, *statements)
    report = verify(path)
    assert not report.ok
    assert report.first_bad_entry == first_bad, report.problems
    assert says in report.problems[0], report.problems


def test_a_checkpoint_signed_by_another_key_is_rejected(pristine, tmp_path):
    path = copy_run(pristine, tmp_path)
    forger = Ed25519PrivateKey.generate()
    with closing(sqlite3.connect(path)) as conn:
        size, root, head = conn.execute("SELECT tree_size, root_hash, head_hash FROM checkpoints WHERE id = 2").fetchone()
    message = json.dumps({"closing": True, "head": head, "root": root, "tree_size": size, "v": "gridtwin-ledger/1"},
                         sort_keys=True, separators=(",", ":")).encode()
    tamper(path, ("UPDATE checkpoints SET public_key = ?, signature = ? WHERE id = 2",
                  (public_key_hex(forger.public_key()), forger.sign(message).hex())))
    report = verify(path)  # checks against the trusted key (the test session's key store), not the file's own
    assert not report.ok and report.problems[0].startswith(
        f"checkpoint 2: signed by key {public_key_hex(forger.public_key())}, not by the trusted operator key")
    # Checked only against the keys it names itself, the forged checkpoint is self-consistent: this is why
    # the verifier must name the key.
    assert verify(path, unsigned=True).problems == ("append-only triggers missing: " + str(sorted(
        f"{t}_no_{op}" for t in ("ledger_meta", "entries", "postings", "checkpoints", "closings")
        for op in ("update", "delete"))),)


def test_dropped_triggers_alone_are_reported(pristine, tmp_path):
    path = copy_run(pristine, tmp_path)
    tamper(path)
    report = verify(path)
    assert report.first_bad_entry is None and "append-only triggers missing" in report.problems[0]


# -- proofs ------------------------------------------------------------------------------------------------
def test_every_entry_has_an_inclusion_proof_against_the_signed_checkpoint(pristine, tmp_path):
    path = copy_run(pristine, tmp_path)
    with Ledger.open(path, read_only=True) as ledger:
        operator = ledger.last_checkpoint().public_key
        proofs = [ledger.prove(seq) for seq in range(1, 21)]
        old, new = ledger.checkpoints()
        consistency = ledger.prove_consistency(old, new)
    for proof in proofs:
        assert verify_inclusion(proof, public_key=operator)
    proof = proofs[6]
    assert proof.checkpoint.tree_size == 20 and len(proof.path) == 5  # ⌈log2 20⌉ siblings
    forged_body = proof.entry_body.replace(b'"participant:alice",1000006', b'"participant:alice",9000006')
    assert forged_body != proof.entry_body
    assert not verify_inclusion(type(proof)(**{**proof.__dict__, "entry_body": forged_body}), public_key=operator)
    assert not verify_inclusion(type(proof)(**{**proof.__dict__, "path": proof.path[::-1]}), public_key=operator)
    assert not verify_inclusion(proof, public_key="00" * 32)
    assert verify_consistency(consistency, public_key=operator)
    assert not verify_consistency(type(consistency)(old=new, new=old, path=consistency.path))


def test_statement_lists_a_participants_postings_with_a_running_balance(tmp_path):
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        ledger.append_all([draft(0, amount=2_500_000), draft(1, amount=1_250_000),
                           draft(1, amount=-500_000, rule="penalty"), draft(0, participant="bob")])
        statement = ledger.statement("alice")
        nobody = ledger.statement("zed")
    assert list(statement.rows["seq"]) == [1, 2, 3]
    assert list(statement.rows["amount"]) == [Decimal("2.5"), Decimal("1.25"), Decimal("-0.5")]
    assert list(statement.rows["balance"]) == [Decimal("2.5"), Decimal("3.75"), Decimal("3.25")]
    assert statement.by_rule == {"capacity": Decimal("3.75"), "penalty": Decimal("-0.5")}
    assert statement.total == Decimal("3.25")
    assert statement.rows["interval_start"].iloc[1] == T0 + Q
    assert nobody.rows.empty and nobody.total == 0
