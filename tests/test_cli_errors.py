"""No Python traceback reaches a CLI user: a failing plug-in ends the run with exit 1 and one line naming the
policy, the method, the interval and the exception (traceback in RUN/log.txt); other bad input exits 2."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from twin.cli import _no_traceback, app

runner = CliRunner()

BASE = """\
name = "faulty"
feeder = "cigre-lv"
start = "2016-06-06T00:00:00Z"
end = "2016-06-06T01:00:00Z"

[[controllers]]
name = "{name}"
target = "{target}"
{extra}
"""


def run_cli(tmp_path: Path, target: str, extra: str = "", *, name: str = "shaky", workers: str = "1"):
    scenario = tmp_path / "faulty.toml"
    scenario.write_text(BASE.format(name=name, target=target, extra=extra), encoding="utf-8")
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(scenario), "--out", str(out), "--agent-workers", workers])
    return result, out, " ".join(result.output.split())


@pytest.mark.parametrize(
    ("target", "extra", "method", "interval", "error"),
    [
        ("plugin_faults:FailsIn", 'kwargs = { method = "__init__" }', "__init__", "before the first interval",
         "RuntimeError: boom in __init__"),
        ("plugin_faults:FailsIn", 'kwargs = { method = "reset" }', "reset", "before the first interval",
         "RuntimeError: boom in reset"),
        ("plugin_faults:FailsIn", 'kwargs = { method = "act", after_hour = 0 }', "act",
         "at interval 2016-06-06T00:00:00+00:00", "RuntimeError: boom in act"),
        ("plugin_faults:ReturnsDict", "", "act", "at interval 2016-06-06T00:00:00+00:00",
         "TypeError: returned a dict, not a controllers.api.Dispatch"),
        ("plugin_faults:AgentFailsInPropose", 'mode = "agents"', "propose (round 1)",
         "at interval 2016-06-06T00:00:00+00:00", "ZeroDivisionError: division by zero"),
    ],
)
def test_a_failing_plugin_ends_the_run_with_exit_1_and_one_line(tmp_path: Path, target: str, extra: str, method: str,
                                                                interval: str, error: str) -> None:
    result, out, text = run_cli(tmp_path, target, extra)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "policy 'shaky'" in text and f"({target})" in text
    assert f"{method} raised {error} {interval}" in text
    log = out / "log.txt"
    assert f"traceback in {log}" in text
    written = log.read_text(encoding="utf-8")
    assert f"{method} raised {error}" in written
    if not error.startswith("TypeError: returned"):  # it raised: the log has the plug-in's own frames
        assert "plug-in traceback:" in written and "plugin_faults.py" in written
    assert json.loads((out / "status.json").read_text())["state"] == "failed"


def test_an_agent_failing_in_a_worker_process_is_named_too(tmp_path: Path) -> None:
    result, out, text = run_cli(tmp_path, "plugin_faults:AgentFailsInPropose", 'mode = "agents"', workers="2")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert re.search(r"policy 'shaky' agent 'p-\d+' \(plugin_faults:AgentFailsInPropose\): propose \(round 1\) "
                     r"raised ZeroDivisionError: division by zero at interval 2016-06-06T00:00:00\+00:00", text), text
    assert (out / "log.txt").exists()


def test_report_on_an_unfinished_run_exits_2(tmp_path: Path) -> None:
    _, out, _ = run_cli(tmp_path, "plugin_faults:FailsIn", 'kwargs = { method = "act" }')
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "the run is not finished (status 'failed', 0 of 4 intervals)" in text


def test_a_scenario_that_is_not_utf8_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "Grüße"\n'.encode("latin-1"))
    for command in ("validate", "run"):
        result = runner.invoke(app, [command, str(path)])
        assert result.exit_code == 2
        assert "not UTF-8 text (byte 0xfc on line 1)" in " ".join(result.output.split())


def test_anything_unexpected_is_one_line_exit_1_and_a_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    def broken() -> None:
        {}["missing"]

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the crash log goes
    with pytest.raises(typer.Exit) as info:
        _no_traceback(broken)()
    assert info.value.exit_code == 1
    text = " ".join(capsys.readouterr().err.split())
    assert "internal error: KeyError: 'missing'; traceback in" in text and "Traceback" not in text
    (log,) = tmp_path.glob("gridtwin-error-*.txt")
    assert "KeyError: 'missing'" in log.read_text(encoding="utf-8") and "in broken" in log.read_text(encoding="utf-8")


def test_usage_errors_and_exits_pass_through_the_guard() -> None:
    def bad_option() -> None:
        raise typer.BadParameter("--x=1: must be 2", param_hint="--x")

    def done() -> None:
        raise typer.Exit(0)

    with pytest.raises(typer.BadParameter):
        _no_traceback(bad_option)()
    with pytest.raises(typer.Exit):
        _no_traceback(done)()


def _provision(tmp_path: Path, scenario: Path) -> None:
    """Credentials and device keys from `gridtwin broker` (in a process of its own), which is then stopped."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-m", "twin.cli", "broker", str(scenario), "--out",
                                str(tmp_path / "live")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert process.stdout is not None
    text = ""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "Ctrl-C" not in text:
            line = process.stdout.readline().decode()
            text += line
            if not line and process.poll() is not None:
                pytest.fail(f"gridtwin broker did not start: {text}")
    finally:
        time.sleep(1.0)  # let it reach its SIGTERM handler, which stops mosquitto with it
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        process.stdout.close()
        broker = re.search(r"\(pid (\d+)\)", text)
        if broker is not None:  # never leave our mosquitto behind, whatever happened above
            try:
                os.kill(int(broker.group(1)), signal.SIGTERM)
            except ProcessLookupError:
                pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_live_and_devices_with_no_broker_listening_exit_2_naming_the_broker(tmp_path: Path) -> None:
    scenario = tmp_path / "live.toml"
    scenario.write_text(BASE.format(name="none", target="controllers.baseline:NoControl", extra=""), encoding="utf-8")
    _provision(tmp_path, scenario)
    broker = f"mqtt://127.0.0.1:{_free_port()}"  # nothing listens there
    creds = str(tmp_path / "live" / "credentials.json")
    devices = runner.invoke(app, ["devices", str(scenario), "--broker", broker, "--credentials", creds])
    live = runner.invoke(app, ["live", str(scenario), "--broker", broker, "--credentials", creds,
                               "--keys", str(tmp_path / "live" / "device_keys.json"), "--out", str(tmp_path / "lr")])
    for result in (devices, live):
        text = " ".join(result.output.split())
        assert result.exit_code == 2, result.output
        assert f"--broker='{broker}'" in text and "Connection refused" in text
        assert "Traceback" not in result.output
