"""A live twin's status.json keeps a heartbeat, so a reader tells a running `gridtwin live` from a dead one.

Through the real command and a real mosquitto (no devices: the twin steps on its own clock and fills what is
not measured from the forecast). While it runs, status.json carries the heartbeat (pid, host, time) and the
live backlog, and every beat repeats the backlog; SIGKILL leaves "running" with a pid that is gone, which
``run_liveness`` shows as stopped with the live resume hint (the dashboard's badge and the command channel read
the same function); SIGTERM ends it as "interrupted" (exit 143), and running it again on the folder resumes it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from twin.commands import CommandChannel, CommandError, OperatorCommand
from twin.live.simulator import BrokerSetup, start_broker
from twin.records.runstore import run_liveness
from twin.scenario import Scenario, load_scenario

pytestmark = pytest.mark.slow

GRIDTWIN = str(Path(sys.executable).with_name("gridtwin"))
SPEED = 900.0  # a 15-minute interval every second
SCENARIO = """
name = "live-heartbeat"
seed = 7
feeder = "simbench:1-LV-rural1--0-sw"
start = "2016-06-06T10:00:00Z"
end = "2016-06-06T14:00:00Z"

[fleet]
pv_penetration = 1.0
battery_share = 0.4

[[controllers]]
name = "none"
target = "controllers.baseline:NoControl"
"""


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "live-heartbeat.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def setup(scenario_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerSetup]:
    scenario: Scenario = load_scenario(scenario_file)
    provisioned = start_broker(scenario, out=tmp_path_factory.mktemp("provision"))
    try:
        yield provisioned
    finally:
        provisioned.broker.stop()


def _status(run: Path) -> dict:
    try:
        return json.loads((run / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _live(scenario_file: Path, setup: BrokerSetup, out: Path, *, start_at: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [GRIDTWIN, "live", str(scenario_file), "--broker", f"mqtt://{setup.broker.host}:{setup.broker.port}",
         "--credentials", str(setup.credentials_path), "--keys", str(setup.keys_path), "--out", str(out),
         "--speed", str(SPEED), "--start-at", f"{start_at:.3f}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_done(proc: subprocess.Popen[bytes], run: Path, n: int, timeout_s: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while (status := _status(run)).get("done", -1) < n or status.get("state") != "running" or "live" not in status:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, f"no {n} intervals in {timeout_s} s: {status}"
        time.sleep(0.02)
    return status


def test_a_killed_live_twin_shows_as_stopped(scenario_file: Path, setup: BrokerSetup, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with _live(scenario_file, setup, run, start_at=time.time() + 3.0) as proc:
        status = _wait_done(proc, run, 2)
        # The heartbeat of a live writer, with its backlog.
        assert status["pid"] == proc.pid and status["host"]
        assert set(status["live"]) >= {"behind_s", "ingest_queue", "seq_missing"}
        assert run_liveness(run)[0] == "running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    status = _status(run)
    assert status["state"] == "running"  # what the dead writer left
    state, why = run_liveness(run)
    assert state == "stopped"
    assert f"process {proc.pid}" in why and "gridtwin live" in why and "--resume" not in why
    # A writer on another host (pid unknowable): a heartbeat older than the stale limit says the same.
    later = datetime.fromisoformat(status["heartbeat_at"]) + timedelta(seconds=31)
    assert run_liveness(run, status={**status, "host": "elsewhere"}, now=later)[0] == "stopped"
    assert run_liveness(run, status={**status, "host": "elsewhere"},
                        now=later - timedelta(seconds=2))[0] == "running"
    # Commands to a dead twin are refused with the reason.
    command = OperatorCommand.from_dict({"kind": "backhaul_cut", "duration": "1h", "operator": "ann"})
    with pytest.raises(CommandError, match="stopped"):
        CommandChannel(run).submit(command)


def test_sigterm_interrupts_a_live_twin_and_running_it_again_resumes(scenario_file: Path, setup: BrokerSetup,
                                                                    tmp_path: Path) -> None:
    run = tmp_path / "run"
    anchor = time.time() + 3.0
    with _live(scenario_file, setup, run, start_at=anchor) as proc:
        _wait_done(proc, run, 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        said = proc.stderr.read().decode() if proc.stderr else ""
    status = _status(run)
    assert status["state"] == "interrupted" and 2 <= status["done"] < status["total"] == 16
    assert "live" in status
    state, why = run_liveness(run)
    assert state == "interrupted" and "gridtwin live" in why
    assert "interrupted after" in said and "Traceback" not in said
    with _live(scenario_file, setup, run, start_at=anchor) as proc:  # the run's own clock: catches up, ends
        assert proc.wait(timeout=90) == 0, proc.stderr.read().decode() if proc.stderr else ""
    assert _status(run)["state"] == "finished" and _status(run)["done"] == 16
