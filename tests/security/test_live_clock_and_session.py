"""Point 4: the live clock is the twin's, and each live run has its own MQTT session — through a real broker.

A validly signed sample stamped ahead of the twin's clock is rejected and archived with the reason; it never
moves the clock or makes the twin skip intervals. A new run connects with a client id of its own and a clean
start, so a previous run's leftover messages never reach it; a resumed run resumes its own session and gets
what was queued for it meanwhile."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from twin.inputs import RunInputs, build_inputs
from twin.live.device import DeviceClient
from twin.live.live_run import LIVE_DIR, LiveTwin, load_operator_key
from twin.live.signing import KeyRegistry
from twin.live.simulator import BrokerSetup, LiveCredentials, fleet_devices, start_broker
from twin.records.runstore import RunStore
from twin.scenario import Scenario

try:
    from conftest import ONE_DAY_RURAL, make_scenario
except ImportError:  # tests/ collected as a package
    from tests.conftest import ONE_DAY_RURAL, make_scenario

pytestmark = pytest.mark.slow

SPEED = 60.0  # one simulated minute per wall-clock second
LEAD_S = 30.0  # the scenario starts this long after the twin: nothing may be stepped during the test


@pytest.fixture(scope="module")
def case() -> tuple[Scenario, RunInputs]:
    scenario = make_scenario(ONE_DAY_RURAL, name="trust-live", start="2016-06-06T10:00:00Z",
                             end="2016-06-06T12:00:00Z", horizon="1h",
                             controllers=[{"name": "none", "target": "controllers.baseline:NoControl"}])
    return scenario, build_inputs(scenario)


@pytest.fixture(scope="module")
def setup(case: tuple[Scenario, RunInputs], tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerSetup]:
    scenario, inputs = case
    provisioned = start_broker(scenario, out=tmp_path_factory.mktemp("provision"), inputs=inputs)
    try:
        yield provisioned
    finally:
        provisioned.broker.stop()


def _twin(case: tuple[Scenario, RunInputs], setup: BrokerSetup, out: Path, *, start_at: float) -> LiveTwin:
    scenario, inputs = case
    return LiveTwin(scenario=scenario, credentials=LiveCredentials.from_file(setup.credentials_path),
                    keys=KeyRegistry.from_file(setup.keys_path), operator_key=load_operator_key(setup.operator_key_path),
                    control="none", speed=SPEED, out=out, inputs=inputs, start_at=start_at,
                    warm_up=False)  # nothing is stepped here: the scenario has not begun on the twin's clock


def _device(case: tuple[Scenario, RunInputs], setup: BrokerSetup, *, first_seq: int = 0) -> DeviceClient:
    """A field device signing with the key it was provisioned with."""
    _, inputs = case
    creds = LiveCredentials.from_file(setup.credentials_path)
    device_id = sorted(d for d in fleet_devices(inputs) if d.startswith("bat"))[0]
    return DeviceClient(address=fleet_devices(inputs)[device_id], private_key=creds.device_key(device_id),
                        credentials=creds.device(device_id), host=creds.host, port=creds.port, first_seq=first_seq)


def _telemetry_rows(out: Path) -> list[tuple[int, str, str, str]]:
    path = out / LIVE_DIR / "telemetry.sqlite"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return db.execute("SELECT seq, verdict, reason, detail FROM raw_messages WHERE channel = 'telemetry' "
                          "ORDER BY id").fetchall()


def _wait_rows(out: Path, n: int, timeout_s: float = 15.0) -> list[tuple[int, str, str, str]]:
    deadline = time.monotonic() + timeout_s
    while len(rows := _telemetry_rows(out)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return rows


def _publish(device: DeviceClient, ts) -> None:  # type: ignore[no-untyped-def]
    device.publish_telemetry(ts=ts, p_kw=1.0, q_kvar=0.0, e_imp_kwh=0.0, e_exp_kwh=0.0).wait_for_publish(10)


def test_a_sample_ahead_of_the_twin_clock_is_rejected_and_archived_never_skips(case, setup, tmp_path) -> None:
    scenario, _ = case
    out = tmp_path / "run"
    twin = _twin(case, setup, out, start_at=time.time() + LEAD_S).start()
    stop = threading.Event()
    thread = threading.Thread(target=twin.run, kwargs={"stop": stop}, daemon=True)
    device = _device(case, setup)
    try:
        thread.start()
        device.connect(now=scenario.start.to_pydatetime())
        # A validly signed sample claiming the last interval: the old twin fast-forwarded to the end on it.
        _publish(device, (scenario.end - scenario.step).to_pydatetime())
        # An honest sample, a minute behind the twin's clock, is accepted: the clock judges, it is not judged.
        _publish(device, (twin.clock.now() - timedelta(minutes=1)).to_pydatetime())
        rows = _wait_rows(out, 2)
        time.sleep(1.0)  # let the twin loop see them
        status = RunStore(out).status()
        now = twin.clock.now()
    finally:
        stop.set()
        thread.join(30)
        device.close()
        twin.close()
    assert [(seq, verdict, reason) for seq, verdict, reason, _ in rows] == [
        (0, "rejected", "future_timestamp"), (1, "accepted", "")]
    assert "ahead of the twin clock" in rows[0][3] and "2016-06-06T11:45:00" in rows[0][3]
    # Nothing was stepped (the scenario has not begun on the twin's clock), and the clock did not move.
    assert status["done"] == 0 and status["state"] == "running"
    assert now < scenario.start
    assert abs((scenario.start - now).total_seconds() / SPEED - (LEAD_S - 3.0)) < 15.0


def test_each_run_has_its_own_mqtt_session(case, setup, tmp_path) -> None:
    scenario, _ = case
    anchor = time.time() + LEAD_S
    first = _twin(case, setup, tmp_path / "run1", start_at=anchor).start()
    client_id = first.client_id
    first.crash()  # no DISCONNECT: the broker keeps run1's session and queues its QoS-1 telemetry
    device = _device(case, setup, first_seq=100)
    device.connect(now=scenario.start.to_pydatetime())
    try:
        # Telemetry sent while run1 is down (behind the clock, so it would be accepted if it arrived).
        _publish(device, (scenario.start - timedelta(hours=1)).to_pydatetime())
    finally:
        device.close()
    # A new run: its own client id, a clean start, and none of run1's leftovers.
    second = _twin(case, setup, tmp_path / "run2", start_at=anchor).start()
    try:
        assert second.client_id != client_id and not second.resumed
        assert second._ingest is not None and not second._ingest.session_present
        time.sleep(1.5)
        assert _telemetry_rows(tmp_path / "run2") == []
    finally:
        second.close()
    # Run1 resumed: its own session again, which the broker kept, with the message queued for it.
    resumed = _twin(case, setup, tmp_path / "run1", start_at=anchor).start()
    try:
        assert resumed.client_id == client_id and resumed.resumed
        assert resumed._ingest is not None and resumed._ingest.session_present
        rows = _wait_rows(tmp_path / "run1", 1)
    finally:
        resumed.close()
    assert [(seq, verdict) for seq, verdict, _, _ in rows] == [(100, "accepted")]
    # Its clock is the one it was started with: a resumed run cannot be re-anchored.
    with pytest.raises(ValueError, match="a resumed run keeps its clock"):
        _twin(case, setup, tmp_path / "run1", start_at=anchor + 60)
