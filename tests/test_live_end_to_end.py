"""Live end to end through a real mosquitto: simulated field devices ⇄ MQTT ⇄ the live twin.

Each test starts its own broker (``start_broker`` on a free loopback port), runs ``FieldSimulator`` (all
DERs and native loads of a small SimBench feeder) and ``LiveTwin`` in threads at high speed, and checks what
reached the devices, what the devices did, and what the twin recorded.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from twin.inputs import RunInputs, build_inputs
from twin.live.live_run import LIVE_DIR, LiveTwin, load_operator_key, read_live_table
from twin.live.signing import KeyRegistry
from twin.live.simulator import (
    BrokerSetup,
    FieldSimulator,
    LiveCredentials,
    SimulatorReport,
    fleet_devices,
    parse_broker_url,
    run_devices,
    start_broker,
)
from twin.records.runstore import RunStore
from twin.scenario import Scenario

try:
    from conftest import ONE_DAY_RURAL, make_scenario
except ImportError:  # tests/ collected as a package
    from tests.conftest import ONE_DAY_RURAL, make_scenario

pytestmark = pytest.mark.slow

SPEED = 450.0  # a 15-minute interval every 2 s
CHARGE_KW = 1.0
#: The twin and the devices share one clock anchor (each keeps its own clock): enough lead for the twin's
#: warm-up and every device's connection before simulated time starts.
LEAD_S = 8.0


@pytest.fixture(scope="module")
def live_case() -> tuple[Scenario, RunInputs]:
    scenario = make_scenario(
        ONE_DAY_RURAL,
        name="live-e2e",
        start="2016-06-06T10:00:00Z",
        end="2016-06-06T12:30:00Z",
        horizon="2h",
        controllers=[
            {"name": "none", "target": "controllers.baseline:NoControl"},
            {"name": "shaver", "target": "controllers.baseline:PeakShaver"},
            # Central SCADA: its setpoints reach only devices the comms model says are reachable.
            {"name": "charge", "target": "engine_helpers:ChargeAllBatteries", "mode": "central",
             "kwargs": {"p_mw": CHARGE_KW / 1000.0}},
        ],
    )
    return scenario, build_inputs(scenario)


@pytest.fixture()
def broker(live_case: tuple[Scenario, RunInputs], tmp_path: Path) -> Iterator[BrokerSetup]:
    scenario, inputs = live_case
    setup = start_broker(scenario, out=tmp_path / "provision", inputs=inputs)
    try:
        yield setup
    finally:
        setup.broker.stop()


class _Field:
    """The simulator in a background thread; ``sim`` is available once every device is connected."""

    def __init__(self, scenario: Scenario, inputs: RunInputs, setup: BrokerSetup, *, start_at: float) -> None:
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.sim: FieldSimulator | None = None
        self.report: SimulatorReport | None = None
        self.error: BaseException | None = None

        def on_ready(sim: FieldSimulator) -> None:
            self.sim = sim
            self.ready.set()

        def target() -> None:
            try:
                self.report = run_devices(
                    scenario, broker_host=setup.broker.host, broker_port=setup.broker.port,
                    credentials=setup.credentials_path, speed=SPEED, inputs=inputs,
                    start_at=start_at, stop=self.stop, on_ready=on_ready,
                )
            except BaseException as exc:  # surfaced by join()
                self.error = exc
                self.ready.set()

        self.thread = threading.Thread(target=target, name="field", daemon=True)
        self.thread.start()
        assert self.ready.wait(60), "devices did not connect"
        if self.error is not None:
            raise self.error

    def join(self, timeout_s: float) -> SimulatorReport:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the simulator did not finish"
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report


def _twin(scenario: Scenario, inputs: RunInputs, setup: BrokerSetup, out: Path, *, start_at: float) -> LiveTwin:
    return LiveTwin(
        scenario=scenario, credentials=LiveCredentials.from_file(setup.credentials_path),
        keys=KeyRegistry.from_file(setup.keys_path), operator_key=load_operator_key(setup.operator_key_path),
        control="charge", speed=SPEED, out=out, inputs=inputs, start_at=start_at,
    )


def _run_in_thread(twin: LiveTwin, stop: threading.Event) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = twin.run(stop=stop)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="twin", daemon=True)
    thread.start()
    return thread, box


def _wait_done(out: Path, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while RunStore(out).status().get("done", 0) < n:
        assert time.monotonic() < deadline, f"the twin did not reach {n} intervals: {RunStore(out).status()}"
        time.sleep(0.05)


def _archive_counts(out: Path) -> dict[tuple[str, str], int]:
    with sqlite3.connect(out / LIVE_DIR / "telemetry.sqlite") as db:
        rows = db.execute("SELECT channel, verdict, COUNT(*) FROM raw_messages GROUP BY channel, verdict")
        return {(channel, verdict): n for channel, verdict, n in rows}


def test_setpoints_reach_devices_and_a_killed_site_falls_back(live_case, broker: BrokerSetup, tmp_path: Path) -> None:
    scenario, inputs = live_case
    batteries = inputs.assets.index[inputs.assets["kind"] == "battery"]
    victim = str(batteries[0])
    site = str(inputs.assets.at[victim, "participant_id"])
    out = tmp_path / "run"
    anchor = time.time() + LEAD_S
    twin = _twin(scenario, inputs, broker, out, start_at=anchor).start()
    stop = threading.Event()
    try:
        field = _Field(scenario, inputs, broker, start_at=anchor)
        thread, box = _run_in_thread(twin, stop)
        _wait_done(out, 3, timeout_s=60)
        assert field.sim is not None
        killed = field.sim.kill_site(site)
        report = field.join(timeout_s=60)
        thread.join(60)
        assert "error" not in box, box.get("error")
    finally:
        stop.set()
        twin.close()

    n = len(scenario.times)
    status = RunStore(out).status()
    assert status["pid"] == os.getpid() and status["heartbeat_at"] >= status["updated_utc"]  # the twin's heartbeat
    assert status | {"updated_utc": None, "live": None, "heartbeat_at": None, "pid": None, "host": None} == {
        "done": n, "total": n, "state": "finished", "updated_utc": None, "live": None, "heartbeat_at": None,
        "pid": None, "host": None}
    # Every command the twin sent to a live device was accepted and acknowledged on cmd/ack.
    assert report.commands_refused == 0, report.refusals
    assert report.commands_accepted > 0
    assert _archive_counts(out)[("cmd/ack", "accepted")] == report.commands_accepted

    truth = report.truth.pivot(index="time", columns="device_id", values="p_mw")
    source = report.truth.pivot(index="time", columns="device_id", values="source")
    store = RunStore(out)
    twin_p = store.read_table("charge", "asset_p_mw")
    fallback = store.read_table("charge", "asset_fallback")
    healthy = [str(b) for b in batteries if str(b) not in killed]
    # From the second interval on (the first one also builds the engine) the healthy batteries run on the
    # setpoint, draw the commanded 1 kW, and the twin's physics of the controlling policy agrees with them.
    later = truth.index[1:]
    live = read_live_table(out)
    assert (source.loc[later, healthy] == "command").all().all(), source[healthy].to_string() + "\n" + live.to_string()
    assert truth.loc[later, healthy].to_numpy() == pytest.approx(CHARGE_KW / 1000.0)
    assert twin_p.loc[later, healthy].to_numpy() == pytest.approx(truth.loc[later, healthy].to_numpy(), abs=1e-9)
    # The shadow policy that sends nothing never reached a device: its batteries idle in its own twin.
    assert store.read_table("none", "asset_p_mw").loc[:, healthy].to_numpy() == pytest.approx(0.0)

    # The killed site: its Last Will marks it offline, the twin stops reaching it and records the fallback
    # once the held setpoint (30 min) expires; the device itself reverts to autonomous (idle) by then too.
    offline_at = live.index[live["offline"].str.contains(victim)]
    assert len(offline_at) >= 3, live[["offline", "trigger"]]
    kill_time = offline_at[0]
    assert not fallback.loc[: kill_time - scenario.step, victim].any()
    assert fallback.loc[offline_at[-1], victim]
    expired = truth.index[truth.index >= kill_time + scenario.setpoint_ttl]
    assert len(expired) >= 1
    assert (source.loc[expired, victim] == "autonomous").all()
    assert truth.loc[expired, victim].to_numpy() == pytest.approx(0.0)
    assert (live.loc[offline_at, "dropouts_submitted"] >= 1).all()
    # The twin's backlog, per interval and in status.json: QoS-1 telemetry on loopback lost nothing, the ingest
    # queue is a count, and "behind" is simulated seconds past the next interval's start (never negative).
    assert (live["seq_missing"] == 0).all() and (live["ingest_queue"] >= 0).all() and (live["behind_s"] >= 0).all()
    status = json.loads((out / "status.json").read_text(encoding="utf-8"))
    assert set(status["live"]) == {"behind_s", "ingest_queue", "seq_missing"}
    assert status["live"]["seq_missing"] == 0


def test_twin_restart_with_persistent_session_loses_no_telemetry(live_case, broker: BrokerSetup, tmp_path: Path) -> None:
    scenario, inputs = live_case
    out = tmp_path / "run"
    anchor = time.time() + LEAD_S
    first = _twin(scenario, inputs, broker, out, start_at=anchor).start()
    stop = threading.Event()
    field = _Field(scenario, inputs, broker, start_at=anchor)
    thread, box = _run_in_thread(first, stop)
    _wait_done(out, 3, timeout_s=60)
    stop.set()
    thread.join(30)
    first.crash()  # no DISCONNECT: the broker keeps the session and queues QoS-1 telemetry for it
    time.sleep(2 * scenario.step.total_seconds() / SPEED)  # two intervals of telemetry pile up meanwhile
    second = _twin(scenario, inputs, broker, out, start_at=anchor).start()  # the run's own clock and session
    try:
        assert second.resume_at > scenario.start and second.client_id == first.client_id
        result = second.run()
        report = field.join(timeout_s=60)
    finally:
        second.close()
    # Every telemetry message the devices published (each PUBACKed by the broker) is in the archive once.
    counts = _archive_counts(out)
    with sqlite3.connect(out / LIVE_DIR / "telemetry.sqlite") as db:
        distinct = db.execute("SELECT COUNT(DISTINCT device_id || '/' || seq) FROM raw_messages "
                              "WHERE channel = 'telemetry' AND verdict = 'accepted'").fetchone()[0]
    assert counts[("telemetry", "accepted")] == distinct == report.total_published
    assert counts.get(("telemetry", "rejected"), 0) == 0
    # Both sessions together recorded every interval exactly once, and the second one caught up.
    summary = RunStore(out).read_table("charge", "summary")
    assert list(summary.index) == list(scenario.times)
    assert result.intervals == len(scenario.times) - 3 or result.intervals == len(scenario.times) - 4
    assert RunStore(out).status()["state"] == "finished"


def test_provisioning_files_and_bad_input(live_case, broker: BrokerSetup) -> None:
    scenario, inputs = live_case
    creds = LiveCredentials.from_file(broker.credentials_path)
    devices = fleet_devices(inputs)
    assert set(creds.device_passwords) == set(devices)
    assert len(devices) == len(inputs.assets) + len(inputs.net.load)
    assert set(KeyRegistry.from_file(broker.keys_path)) == set(devices)
    assert oct(broker.credentials_path.stat().st_mode & 0o777) == "0o600"
    assert parse_broker_url("mqtt://127.0.0.1:18830") == ("127.0.0.1", 18830)
    with pytest.raises(ValueError, match="broker='http://x:1'"):
        parse_broker_url("http://x:1")
    with pytest.raises(ValueError, match="control='nope'"):
        LiveTwin(scenario=scenario, credentials=creds, keys=KeyRegistry.from_file(broker.keys_path),
                 operator_key=load_operator_key(broker.operator_key_path), control="nope", speed=60.0,
                 out=Path("unused"), inputs=inputs)
    partial = KeyRegistry.from_file(broker.keys_path).to_json()
    missing = sorted(partial["devices"])[0]
    del partial["devices"][missing]
    with pytest.raises(ValueError, match=f"device_id {missing!r} has no registered public key"):
        LiveTwin(scenario=scenario, credentials=creds, keys=KeyRegistry.from_json(partial),
                 operator_key=load_operator_key(broker.operator_key_path), control="charge", speed=60.0,
                 out=Path("unused"), inputs=inputs)
