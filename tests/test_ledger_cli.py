"""``gridtwin ledger verify | statement | prove`` through typer's CliRunner."""

import sqlite3
from contextlib import closing

import pandas as pd
import pytest
from typer.testing import CliRunner

from twin.settlement.cli import ledger_app
from twin.settlement.ledger import EntryDraft, EntryKey, Ledger

T0 = pd.Timestamp("2024-07-01T00:00Z")
Q = pd.Timedelta("15min")
# Wide enough that rich does not wrap error messages (and paths) inside its box.
runner = CliRunner(env={"COLUMNS": "300"})


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    with Ledger.open_run(run) as ledger:
        for i in range(6):
            who, amount = ("alice", 2_500_000) if i % 2 == 0 else ("bob", 1_000_000)
            ledger.append(EntryDraft.create(
                key=EntryKey(run_id="r1", interval_start=T0 + i * Q, participant=who, rule="capacity", rule_version="1"),
                interval_end=T0 + (i + 1) * Q, postings={"operator": -amount, f"participant:{who}": amount}))
        ledger.checkpoint(closing=True)
    return run


def test_verify_good_ledger_exits_zero_with_a_summary(run_dir):
    for target in (run_dir, run_dir / "ledger.sqlite"):
        result = runner.invoke(ledger_app, ["verify", str(target)])
        assert result.exit_code == 0, result.output
        assert "OK" in result.stdout and "6 entries" in result.stdout and "1 signed checkpoint" in result.stdout


def test_verify_tampered_ledger_exits_nonzero_naming_the_first_bad_entry(run_dir):
    with closing(sqlite3.connect(run_dir / "ledger.sqlite")) as conn:
        conn.execute("DROP TRIGGER postings_no_update")
        conn.execute("UPDATE postings SET amount_micro = 3000000 WHERE entry_seq = 3 AND account = 'participant:alice'")
        conn.commit()
    result = runner.invoke(ledger_app, ["verify", str(run_dir)])
    assert result.exit_code == 1
    assert "first bad entry: 3" in result.stderr and "entry 3: posting rows differ" in result.stderr


def test_bad_run_paths_exit_2_naming_the_value(tmp_path):
    result = runner.invoke(ledger_app, ["verify", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "nope" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(ledger_app, ["verify", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "has no ledger.sqlite" in result.output
    for policy in ("scada", "depin"):  # a run folder: each settling policy has its ledger; they are named
        (tmp_path / "empty" / policy).mkdir()
        (tmp_path / "empty" / policy / "ledger.sqlite").write_bytes(b"")
    result = runner.invoke(ledger_app, ["verify", str(tmp_path / "empty")])
    empty = tmp_path / "empty"
    flat = "".join(result.output.replace("│", "").split())  # rich wraps the long paths inside its box
    assert result.exit_code == 2 and f"eachpolicyhasitsown:{empty / 'depin'},{empty / 'scada'}" in flat
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    result = runner.invoke(ledger_app, ["statement", str(tmp_path / "junk.sqlite"), "alice"])
    assert result.exit_code == 2 and "not a ledger" in result.output


def test_statement_prints_a_table_and_writes_csv(run_dir, tmp_path):
    out = tmp_path / "alice.csv"
    result = runner.invoke(ledger_app, ["statement", str(run_dir), "alice", "--csv", str(out)])
    assert result.exit_code == 0, result.output
    assert "Statement for alice" in result.stdout and "total: 7.500000" in result.stdout  # 3 × 2.50
    frame = pd.read_csv(out, dtype=str)
    assert list(frame["seq"]) == ["1", "3", "5"]
    assert list(frame["balance"]) == ["2.500000", "5.000000", "7.500000"]
    result = runner.invoke(ledger_app, ["statement", str(run_dir), "zed"])
    assert result.exit_code == 2 and "'zed'" in result.output and "alice, bob" in result.output


def test_prove_prints_and_verifies_an_inclusion_proof(run_dir):
    result = runner.invoke(ledger_app, ["prove", str(run_dir), "4"])
    assert result.exit_code == 0, result.output
    assert "verified: entry 4 is included in the signed tree of 6 entries" in result.stdout
    assert "path[2]" in result.stdout and "(trusted: the key store" in result.stdout
    result = runner.invoke(ledger_app, ["prove", str(run_dir), "7"])
    assert result.exit_code == 2 and "entry 7 is not in" in result.output


def test_prove_refuses_entries_not_yet_covered_by_a_checkpoint(run_dir):
    with Ledger.open_run(run_dir) as ledger:
        ledger.append(EntryDraft.create(
            key=EntryKey(run_id="r1", interval_start=T0 + 9 * Q, participant="bob", rule="capacity", rule_version="1"),
            interval_end=T0 + 10 * Q, postings={"operator": -1, "participant:bob": 1}))
    result = runner.invoke(ledger_app, ["prove", str(run_dir), "7"])
    # Appending reopened the closed ledger with a signed head at 6 entries (checkpoint 2): 7 is not covered.
    assert result.exit_code == 1 and "not covered by checkpoint 2" in result.stderr
