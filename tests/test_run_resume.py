"""Crash-consistent runs: a real ``gridtwin run`` SIGKILLed at five random intervals and resumed each time with
``gridtwin run --resume`` ends with every table and every ledger entry (hash, and checkpoint) identical to an
uninterrupted run of the same scenario and seed; after every kill its run store and its ledgers stand at the
same interval; a stopped writer says so; a run folder is bound to its run id; bad resumes exit 2."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from twin.cli import app
from twin.commands import CommandChannel, CommandError, OperatorCommand
from twin.records.recorder import TIMING_COLUMNS, PolicyRecords
from twin.records.runstore import RunStore, run_liveness
from twin.run import run_scenario
from twin.scenario import load_scenario
from twin.settlement import Settlement, SettlementConfig
from twin.settlement.ledger import Ledger, LedgerError, LedgerStatus, verify

GRIDTWIN = str(Path(sys.executable).with_name("gridtwin"))
COMMIT_EVERY = 4
#: Half a day on the CIGRE LV feeder, two policies (one central, over a lossy backhaul: random draws), the
#: fast power flow, a capacity contract and a peer-to-peer community settled into each policy's ledger.
SCENARIO = """
name = "crash-day"
seed = 7
feeder = "cigre-lv"
start = "2016-06-06T06:00:00Z"
end = "2016-06-06T18:00:00Z"

[fleet]
pv_penetration = 0.8
battery_share = 0.5
ev_share = 0.3
flex_share = 0.3

[power_flow]
engine = "fast"

[comms]
backhaul = { latency = "1s", loss = 0.2 }

[settlement]
checkpoint_every = 8

[[settlement.contracts]]
participant = "p-1"
  [[settlement.contracts.rules]]
  kind = "capacity_payment"
  name = "capacity"
  committed_kw = "5"
  price_per_kw_month = "4.00"

[[settlement.communities]]
name = "street"
method = "sdr"
members = ["p-0", "p-1", "p-2", "p-3"]
grid_buy_per_kwh = "0.30"
feed_in_per_kwh = "0.06"

[[controllers]]
name = "no-control"
target = "controllers.baseline:NoControl"

[[controllers]]
name = "shaver"
mode = "central"
target = "controllers.baseline:PeakShaver"
kwargs = { shave_fraction = 0.7 }
"""
POLICIES = ("no-control", "shaver")


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "crash-day.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(scenario_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run, in a folder of the same name (the run id is the folder's name)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_scenario(load_scenario(scenario_file), out=out, flush_every=COMMIT_EVERY)
    return out


def _status(run: Path) -> dict:
    try:
        return json.loads((run / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _run_until(args: list[str], run: Path, *, kill_at: int, delay_s: float) -> int:
    """Start ``gridtwin`` with ``args``; once ``run`` has committed ``kill_at`` intervals, wait ``delay_s``
    (so the kill lands anywhere in the next chunk) and SIGKILL it. The committed count it was killed at."""
    with subprocess.Popen([GRIDTWIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        while _status(run).get("done", -1) < kill_at or _status(run).get("state") != "running":
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.01)
        # The kill lands anywhere in the next chunk: after ``delay_s``, or as soon as that chunk is committed
        # (on a fast machine the last dozen intervals take less than the delay; the run must not finish first).
        deadline = time.monotonic() + delay_s
        while time.monotonic() < deadline and _status(run).get("done", -1) < kill_at + COMMIT_EVERY:
            time.sleep(0.002)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    return int(_status(run)["done"])


def _tables(run: Path) -> dict[tuple[str, str], pd.DataFrame]:
    store = RunStore(run)
    out = {}
    for policy in POLICIES:
        for name in PolicyRecords.TABLES:
            table = store.read_table(policy, name)
            out[policy, name] = table.drop(columns=list(TIMING_COLUMNS)) if name == "summary" else table
    return out


def _ledger(run: Path, policy: str) -> tuple[list[tuple[int, bytes, str]], list[tuple[int, str, str, bool]]]:
    with closing(Ledger.open(run / policy / "ledger.sqlite", read_only=True)) as ledger:
        entries = [(e.seq, e.body, e.hash) for e in ledger.entries()]
        checkpoints = [(c.tree_size, c.root_hash, c.signature, c.closing) for c in ledger.checkpoints()]
    return entries, checkpoints


def _check_consistent_after_kill(run: Path, reference: Path, done: int) -> None:
    """Committed: ``done`` intervals in every table and ledger, exactly the reference's; a kill mid-commit may
    leave one chunk of parts past it (removed on resume), and never a ledger entry past the run store."""
    start, step = pd.Timestamp("2016-06-06T06:00Z"), pd.Timedelta("15min")
    assert run_liveness(run)[0] == "stopped"
    store = RunStore(run)
    for policy in POLICIES:
        try:
            rows = len(store.read_table(policy, "summary"))
        except FileNotFoundError:
            rows = 0
        assert done <= rows <= done + COMMIT_EVERY, (policy, done, rows)
        path = run / policy / "ledger.sqlite"
        if not path.exists():
            assert done == 0
            continue
        report = verify(path)
        assert report.intact, report.problems
        assert report.status is LedgerStatus.INCOMPLETE
        entries, _ = _ledger(run, policy)
        settled = {json.loads(body)["interval_start"] for _, body, _ in entries}
        recorded_until = start + rows * step
        assert all(pd.Timestamp(t) < recorded_until for t in settled), "the ledger is ahead of the run store"
        ref_entries, _ = _ledger(reference, policy)
        committed = [e for e in ref_entries if pd.Timestamp(json.loads(e[1])["interval_start"]) < start + done * step]
        assert entries[:len(committed)] == committed


@pytest.mark.slow
def test_sigkilled_run_resumes_to_identical_tables_and_ledgers(scenario_file: Path, reference: Path,
                                                               tmp_path: Path) -> None:
    rng = random.Random(20161606)
    run = tmp_path / "run"
    total = 48
    targets = sorted(rng.sample(range(0, total - 12), 5))
    killed_at = []
    for k, target in enumerate(targets):
        args = ["run", str(scenario_file), "--out", str(run), "--commit-every", str(COMMIT_EVERY)] if k == 0 \
            else ["run", "--resume", str(run)]
        done = _run_until(args, run, kill_at=target, delay_s=rng.uniform(0.0, 0.4))
        killed_at.append(done)
        _check_consistent_after_kill(run, reference, done)
    assert len(set(killed_at)) > 1, killed_at  # killed at different points
    finished = subprocess.run([GRIDTWIN, "run", "--resume", str(run)], capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert _status(run)["state"] == "finished"

    mine, theirs = _tables(run), _tables(reference)
    assert mine.keys() == theirs.keys()
    for key, table in theirs.items():
        pd.testing.assert_frame_equal(mine[key], table, check_exact=True, obj=str(key))
    assert len(theirs["shaver", "summary"]) == total
    for policy in POLICIES:
        entries, checkpoints = _ledger(run, policy)
        assert (entries, checkpoints) == _ledger(reference, policy)  # bodies, hashes, signed checkpoints
        assert len(entries) > total  # a capacity and a community entry in (almost) every interval
        assert verify(run / policy / "ledger.sqlite").ok


def test_resume_refuses_what_it_cannot_continue(scenario_file: Path, reference: Path, tmp_path: Path) -> None:
    runner = CliRunner()

    def resume(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, ["run", *args])
        return result.exit_code, " ".join(result.output.split())

    code, text = resume("--resume", str(reference))
    assert code == 2 and "already finished" in text and "Traceback" not in text
    code, text = resume("--resume", str(tmp_path))
    assert code == 2 and "not a run folder" in text
    # A run that stopped, resumed with a scenario that is not its own.
    stopped = tmp_path / "stopped" / "run"
    shutil.copytree(reference, stopped)
    status = _status(stopped) | {"state": "interrupted", "done": 8}
    (stopped / "status.json").write_text(json.dumps(status), encoding="utf-8")
    changed = tmp_path / "changed.toml"
    changed.write_text(SCENARIO.replace("shave_fraction = 0.7", "shave_fraction = 0.6"), encoding="utf-8")
    code, text = resume(str(changed), "--resume", str(stopped))
    assert code == 2 and "scenario changed" in text and "controllers[1].kwargs.shave_fraction" in text
    # A renamed (or copied) run folder is not that run: refused, and its ledgers say why.
    renamed = tmp_path / "stopped" / "run-copy"
    shutil.copytree(stopped, renamed)
    code, text = resume("--resume", str(renamed))
    assert code == 2 and "renamed or copied" in text
    code, text = resume(str(scenario_file), "--out", str(renamed))
    assert code == 2 and "already a run folder" in text
    code, text = resume("--resume", str(stopped), "--pace", "60")
    assert code == 2 and "not with --resume" in text


def test_a_copied_run_folder_cannot_be_settled_again_under_another_name(reference: Path, tmp_path: Path) -> None:
    copy = tmp_path / "other-name"
    shutil.copytree(reference, copy)
    report = verify(copy / "shaver" / "ledger.sqlite")
    assert report.status is LedgerStatus.FAILED
    assert any("renamed or copied" in p for p in report.problems), report.problems
    result = CliRunner().invoke(app, ["ledger", "verify", str(copy / "shaver")])
    assert result.exit_code == 1 and "renamed or copied" in " ".join(result.output.split())
    assert verify(reference / "shaver" / "ledger.sqlite").ok  # the original is fine
    # Settling into the copy's ledger under the copy's name is refused by the ledger itself.
    config = SettlementConfig.from_mapping({"contracts": []})
    with pytest.raises(LedgerError, match="belongs to run 'run:shaver'"):
        Settlement.for_run(copy / "shaver", config=config, run_id="other-name:shaver")


def test_a_dead_writer_shows_as_stopped_and_takes_no_commands(reference: Path, tmp_path: Path) -> None:
    from dashboards.data import RunData
    from dashboards.pages.faults import check_fault

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    store = RunStore(run)
    store.write_status(done=8, total=48, state="running", heartbeat=True)
    assert run_liveness(run)[0] == "running"
    command = OperatorCommand.from_dict({"kind": "backhaul_cut", "duration": "1h", "operator": "ann"})
    CommandChannel(run).submit(command)  # a live writer takes commands
    # Its heartbeat went stale (the writer was killed on another machine, say): stopped.
    status = _status(run)
    old = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    (run / "status.json").write_text(json.dumps(status | {"heartbeat_at": old, "host": "elsewhere"}), encoding="utf-8")
    state, why = run_liveness(run)
    assert state == "stopped" and "no heartbeat for 300 s" in why
    data = RunData(run)
    assert data.status()["state"] == "stopped"
    from dashboards.pages.overview import status_alarms

    assert any("the twin is not running: its writer stopped" in a["message"] for a in status_alarms(data, stale_after_s=60))
    ok, message, _ = check_fault(data, operator="ann", kind="backhaul_cut", duration="1h", participant=None)
    assert not ok and "the run is stopped" in message and "no heartbeat" in message
    with pytest.raises(CommandError, match="the run is stopped"):
        CommandChannel(run).submit(command)
    # Its process is gone on this machine: stopped at once, without waiting for the heartbeat to age.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / "status.json").write_text(json.dumps(status | {"pid": int(gone.stdout)}), encoding="utf-8")
    assert run_liveness(run)[0] == "stopped"
    for state in ("failed", "interrupted", "finished"):
        (run / "status.json").write_text(json.dumps(status | {"state": state}), encoding="utf-8")
        assert RunData(run).status()["state"] == state
        with pytest.raises(CommandError, match=f"the run is {state}"):
            CommandChannel(run).submit(command)


@pytest.mark.slow
def test_sigterm_leaves_an_interrupted_run_that_resumes(scenario_file: Path, reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = os.environ.copy()
    with subprocess.Popen([GRIDTWIN, "run", str(scenario_file), "--out", str(run), "--commit-every",
                           str(COMMIT_EVERY)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=env) as proc:
        while _status(run).get("done", -1) < 8:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted after" in err and "--resume" in err and "Traceback" not in err
    status = _status(run)
    assert status["state"] == "interrupted" and status["done"] >= 8
    assert run_liveness(run)[0] == "interrupted"
    assert verify(run / "shaver" / "ledger.sqlite").status is LedgerStatus.INCOMPLETE  # not closed: it stopped
    finished = subprocess.run([GRIDTWIN, "run", "--resume", str(run)], capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    for key, table in _tables(reference).items():
        pd.testing.assert_frame_equal(_tables(run)[key], table, check_exact=True, obj=str(key))
    for policy in POLICIES:
        assert _ledger(run, policy)[0] == _ledger(reference, policy)[0]


def test_a_resumed_run_applies_the_operator_commands_it_had_applied_again(scenario_file: Path,
                                                                         tmp_path: Path) -> None:
    """A control-centre outage the operator called after interval 10 of a run that was then stopped after 20
    committed intervals is applied again at the same interval when the run is re-simulated: the resumed
    tables and ledgers are the uninterrupted run's."""
    from twin.run import resume_run

    run = tmp_path / "run"
    outage = OperatorCommand.from_dict({"kind": "control_centre_outage", "duration": "2h", "operator": "ann"})

    def call_an_outage(done: int, total: int) -> None:
        if done == 10:
            CommandChannel(run).submit(outage)

    # Stepped (an open-loop replay computes its block ahead, and would take the command only at the next one).
    run_scenario(load_scenario(scenario_file), out=run, flush_every=COMMIT_EVERY, on_progress=call_an_outage,
                 open_loop=False)
    (applied,) = CommandChannel(run).history()["applied_at"]
    assert pd.Timestamp(applied) == pd.Timestamp("2016-06-06T08:30Z")  # the next interval: 06:00 + 10 x 15 min
    online = RunStore(run).read_table("shaver", "summary")["controller_online"]
    assert not online.loc["2016-06-06T08:30Z":"2016-06-06T10:15Z"].any() and online.sum() == 48 - 8  # 2 h out
    expected = _tables(run), {p: _ledger(run, p) for p in POLICIES}
    # As if it had been interrupted after 20 committed intervals.
    (run / "status.json").write_text(json.dumps(_status(run) | {"state": "interrupted", "done": 20}), encoding="utf-8")
    resume_run(run)
    assert _status(run)["state"] == "finished"
    assert len(CommandChannel(run).history()) == 1  # replayed, not taken again
    for key, table in expected[0].items():
        pd.testing.assert_frame_equal(_tables(run)[key], table, check_exact=True, obj=str(key))
    assert {p: _ledger(run, p) for p in POLICIES} == expected[1]


def test_the_heartbeat_beats_while_the_writer_lives_and_stops_with_it(tmp_path: Path) -> None:
    from twin.records.runstore import Heartbeat

    store = RunStore(tmp_path)
    beat = Heartbeat(store, every_s=0.05).start()
    beat.write(done=4, total=48, state="running", durable=True)
    first = _status(tmp_path)
    deadline = time.monotonic() + 10
    while _status(tmp_path).get("heartbeat_at") == first["heartbeat_at"]:
        assert time.monotonic() < deadline, "no heartbeat"
        time.sleep(0.01)
    again = _status(tmp_path)
    assert again["updated_utc"] == first["updated_utc"] and again["done"] == 4  # a beat commits nothing new
    assert again["pid"] == os.getpid() and run_liveness(tmp_path)[0] == "running"
    beat.write(done=48, total=48, state="finished")
    beat.stop()
    last = _status(tmp_path)
    time.sleep(0.2)
    assert _status(tmp_path) == last and run_liveness(tmp_path)[0] == "finished"
