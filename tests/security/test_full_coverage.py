"""Point 2: full coverage. Every entry of a closed ledger is covered by a signed checkpoint: entries added
after the closing checkpoint fail verification, naming the range; a ledger without its closing checkpoint (a
killed writer) is reported as incomplete — its own status and exit code, never OK."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from twin.settlement.cli import EXIT_INCOMPLETE, ledger_app
from twin.settlement.ledger import EntryDraft, EntryKey, Ledger, LedgerError, LedgerStatus, verify

T0 = pd.Timestamp("2024-07-01T00:00Z")
Q = pd.Timedelta("15min")
runner = CliRunner(env={"COLUMNS": "300"})


def _draft(i: int) -> EntryDraft:
    return EntryDraft.create(
        key=EntryKey(run_id="r", interval_start=T0 + i * Q, participant="alice", rule="capacity", rule_version="1"),
        interval_end=T0 + (i + 1) * Q, postings={"operator": -1_000_000, "participant:alice": 1_000_000})


def _closed(folder: Path, n: int = 10) -> Path:
    with Ledger.open_run(folder) as ledger:
        for i in range(n):
            ledger.append(_draft(i))
            if i == 3:
                ledger.checkpoint()
        ledger.checkpoint(closing=True)
    return folder / "ledger.sqlite"


def _append_behind_the_key(path: Path, count: int) -> None:
    """What someone with write access but no key can do: append well-formed, correctly chained entries."""
    with closing(sqlite3.connect(path)) as conn:
        seq, prev = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        for k in range(count):
            seq += 1
            content = _draft(100 + k).content()
            body = json.dumps({**content, "seq": seq, "prev": prev}, sort_keys=True, separators=(",", ":")).encode()
            digest = hashlib.sha256(body).hexdigest()
            conn.execute("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?,?)",
                         (seq, content["run"], content["interval_start"], content["participant"], content["rule"],
                          content["rule_version"], content["interval_end"], body, prev, digest))
            conn.executemany("INSERT INTO postings VALUES (?,?,?)", [(seq, a, m) for a, m in content["postings"]])
            prev = digest
        conn.commit()


def test_a_closed_ledger_verifies_ok(tmp_path: Path) -> None:
    report = verify(_closed(tmp_path / "run"))
    assert report.status is LedgerStatus.OK and report.closed and report.uncovered is None


def test_entries_appended_after_the_closing_checkpoint_fail_naming_the_range(tmp_path: Path) -> None:
    path = _closed(tmp_path / "run")
    _append_behind_the_key(path, 2)
    report = verify(path)
    assert report.status is LedgerStatus.FAILED
    assert report.uncovered == (11, 12) and report.first_bad_entry == 11
    assert "entries 11..12 are not covered by any signed checkpoint" in report.problems[0]
    assert "closed by checkpoint" in report.problems[0]
    result = runner.invoke(ledger_app, ["verify", str(path)])
    assert result.exit_code == 1 and "first bad entry: 11" in result.stderr


def test_a_ledger_without_its_closing_checkpoint_is_incomplete_not_ok(tmp_path: Path) -> None:
    with Ledger.open_run(tmp_path / "run") as ledger:  # the writer dies before it closes the ledger
        for i in range(7):
            ledger.append(_draft(i))
            if i == 3:
                ledger.checkpoint()
    path = tmp_path / "run" / "ledger.sqlite"
    report = verify(path)
    assert report.status is LedgerStatus.INCOMPLETE and not report.ok and report.intact
    assert report.uncovered == (5, 7)
    assert "no closing checkpoint" in report.notes[0] and "entries 5..7 are not covered" in report.notes[0]
    result = runner.invoke(ledger_app, ["verify", str(path)])
    assert result.exit_code == EXIT_INCOMPLETE == 3
    assert "INCOMPLETE" in result.stderr and "entries 5..7" in result.stderr and "OK" not in result.stdout


WRITER = """
import sys, time
import pandas as pd
from twin.settlement import Settlement, SettlementConfig, meters_frame

config = SettlementConfig.from_mapping({"checkpoint_every": 4, "contracts": [
    {"participant": "a", "rules": [{"kind": "capacity_payment", "committed_kw": "10", "price_per_kw_month": "3"}]}]})
settlement = Settlement.for_run(sys.argv[1], config=config, run_id="killed")
registers = pd.DataFrame({"e_imp_kwh": {"a": 0.0}, "e_exp_kwh": {"a": 0.0}})
t0, step = pd.Timestamp("2024-07-01T00:00Z"), pd.Timedelta("15min")
for k in range(int(sys.argv[2])):
    settlement.settle_interval(start=t0 + k * step, end=t0 + (k + 1) * step,
                               meters=meters_frame(start_registers=registers, end_registers=registers))
print("settled", flush=True)
time.sleep(60)  # killed here, before close() signs the closing checkpoint
"""


@pytest.mark.parametrize("resumed", [False, True], ids=["first-run", "resumed-after-a-close"])
def test_a_sigkilled_writer_leaves_an_incomplete_ledger(tmp_path: Path, resumed: bool) -> None:
    run = tmp_path / "run"
    if resumed:  # a run that closed once, then resumed and was killed: still incomplete, never "failed"
        with Ledger.open_run(run) as ledger:
            ledger.append(EntryDraft.create(
                key=EntryKey(run_id="earlier", interval_start=T0, participant="a", rule="x", rule_version="1"),
                interval_end=T0 + Q, postings={"operator": -5, "participant:a": 5}))
            ledger.checkpoint(closing=True)
    script = tmp_path / "writer.py"
    script.write_text(WRITER, encoding="utf-8")
    with subprocess.Popen([sys.executable, str(script), str(run), "6"], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "settled"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    report = verify(run / "ledger.sqlite")
    assert report.status is LedgerStatus.INCOMPLETE, (report.problems, report.notes)
    first = 2 if resumed else 1
    assert report.uncovered == (first + 4, first + 5)  # checkpoint_every=4 signed up to the 4th new entry
    assert "the run was killed" in report.notes[0]


def test_appending_to_a_closed_ledger_needs_the_key(tmp_path: Path) -> None:
    path = _closed(tmp_path / "run")
    with Ledger.open(path) as ledger, pytest.raises(LedgerError, match="appending to it needs the operator key"):
        ledger.append(_draft(50))
    assert verify(path).ok  # nothing was written
