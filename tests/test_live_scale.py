"""Live at scale, small: many device sessions in one ``SessionPool`` thread, QoS-0 telemetry, the fleet split over
two ingests (each subscribed to its own devices only), through a real mosquitto on a free loopback port.
Nothing is lost; a sequence gap is counted where a device skipped numbers; a dropped link reconnects and the
broker publishes the Last Will meanwhile."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from twin.live.broker import MosquittoBroker
from twin.live.device import DeviceClient
from twin.live.ingest import Ingestor, MqttIngest
from twin.live.messages import DeviceState
from twin.live.session_pool import SessionPool

try:
    from live_fixtures import device_key, make_fleet, registry_for
except ImportError:  # tests/ collected as a package
    from tests.live_fixtures import device_key, make_fleet, registry_for

pytestmark = pytest.mark.slow

FLEET = make_fleet(120, prefix="sc")
ROUNDS = 25


@pytest.fixture(scope="module")
def broker():  # type: ignore[no-untyped-def]
    with MosquittoBroker(devices=FLEET) as running:
        yield running


def _ingests(broker: MosquittoBroker, tmp_path: Path, *, protocol: str = "5") -> list[tuple[MqttIngest, Ingestor]]:
    out = []
    for k in range(2):
        share = FLEET[k::2]
        ingestor = Ingestor.open(tmp_path / "archive.sqlite", keys=registry_for(share))
        ingest = MqttIngest(ingestor=ingestor, host=broker.host, port=broker.port,
                            credentials=broker.twin_credentials, client_id=f"scale-{tmp_path.name}-{k}",
                            clean_start=True, telemetry_qos=0, devices=share, protocol=protocol)  # type: ignore[arg-type]
        out.append((ingest.start(timeout_s=30), ingestor))
    return out


def _telemetry(ingest: MqttIngest) -> int:
    """Accepted telemetry in the archive (shared by both ingests) from this ingest's own devices."""
    with ingest.locked() as ingestor:
        return sum(ingestor.archive._db.execute(
            "SELECT COUNT(*) FROM raw_messages WHERE channel='telemetry' AND verdict='accepted' AND device_id=?",
            (d.device_id,)).fetchone()[0] for d in ingest._devices or ())


def _devices(broker: MosquittoBroker, pool: SessionPool) -> list[DeviceClient]:
    clients = [DeviceClient(address=d, private_key=device_key(d.device_id), credentials=broker.credentials(d.device_id),
                            host=broker.host, port=broker.port, keepalive_s=5, telemetry_qos=0, pool=pool)
               for d in FLEET]
    for client in clients:
        client.connect(now=datetime.now(UTC))
    return clients


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_two_ingests_and_one_session_thread_lose_nothing_and_count_gaps(broker: MosquittoBroker, tmp_path: Path,
                                                                        protocol: str) -> None:
    ingests = _ingests(broker, tmp_path, protocol=protocol)
    pool = SessionPool().start()
    try:
        clients = _devices(broker, pool)
        assert pool.size == len(FLEET)
        t0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
        for k in range(ROUNDS):
            for i, client in enumerate(clients):
                if i == 7 and k == 10:
                    client.next_seq += 3  # this device skips seqs 10, 11, 12: a gap of 3
                client.publish_telemetry(ts=t0 + timedelta(seconds=k), p_kw=1.0, q_kvar=0.0, e_imp_kwh=0.5 * k,
                                         e_exp_kwh=0.0)
        expected = len(FLEET) * ROUNDS
        # Each ingest sees only its own share: 60 x 25 telemetry (and statuses, some retained by earlier tests).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(_telemetry(ingest) for ingest, _ in ingests) < expected:
            time.sleep(0.05)
        assert [_telemetry(ingest) for ingest, _ in ingests] == [60 * ROUNDS, 60 * ROUNDS]
        assert all(set(ingest.stats().by_verdict) == {"accepted"} for ingest, _ in ingests)
        missing = {d: n for ingest, _ in ingests for d, n in ingest.stats().missing_seqs.items() if n}
        assert missing == {FLEET[7].device_id: 3}
        with ingests[0][0].locked() as ingestor:  # one archive file, written by both
            seqs = {(r.device_id, r.seq) for r in ingestor.archive.iter_rows(channel="telemetry")}
        assert len(seqs) == expected
        assert (FLEET[7].device_id, 27) in seqs and (FLEET[7].device_id, 10) not in seqs
        for client in clients:
            client.close(now=datetime.now(UTC))
        deadline = time.monotonic() + 10
        while pool.size and time.monotonic() < deadline:  # each socket closes once its DISCONNECT is written
            time.sleep(0.02)
        assert pool.size == 0
    finally:
        pool.stop()
        for ingest, ingestor in ingests:
            ingest.stop()
            ingestor.close()


def test_a_dropped_link_publishes_the_will_and_the_session_comes_back(broker: MosquittoBroker,
                                                                      tmp_path: Path) -> None:
    ingests = _ingests(broker, tmp_path)
    pool = SessionPool().start()
    try:
        clients = _devices(broker, pool)
        victim, owner = clients[3], ingests[3 % 2][0]
        # The module's broker kept the offline status the last test left retained: wait for this session's online.
        owner.wait_until(lambda s: s.status.get(victim.address.device_id) is DeviceState.ONLINE, timeout_s=20)
        victim.client.socket().shutdown(2)  # the link drops under the session (no DISCONNECT)
        stats = owner.wait_until(lambda s: s.status.get(victim.address.device_id) is DeviceState.OFFLINE,
                                 timeout_s=20)
        assert stats.status[victim.address.device_id] is DeviceState.OFFLINE
        deadline = time.monotonic() + 20
        while not victim.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert victim.client.is_connected() and pool.reconnects >= 1
        victim.publish_telemetry(ts=datetime(2024, 6, 1, 12, tzinfo=UTC), p_kw=2.0, q_kvar=0.0, e_imp_kwh=1.0,
                                 e_exp_kwh=0.0)
        stats = owner.wait_until(lambda s: s.status.get(victim.address.device_id) is DeviceState.ONLINE,
                                 timeout_s=20)
        assert stats.status[victim.address.device_id] is DeviceState.ONLINE  # reporting again after the will
        for client in clients:
            client.close(now=datetime.now(UTC))
    finally:
        pool.stop()
        for ingest, ingestor in ingests:
            ingest.stop()
            ingestor.close()


@pytest.mark.parametrize(("option", "value"), [("--publish-every", "soon"), ("--publish-every", "-1s"),
                                               ("--telemetry-qos", "2"), ("--processes", "0")])
def test_devices_options_name_a_bad_value_and_exit_2(tmp_path: Path, option: str, value: str) -> None:
    from typer.testing import CliRunner

    from twin.cli import app

    result = CliRunner().invoke(app, ["devices", str(tmp_path / "none.toml"), option, value])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert f"{option}={value!r}" in text or f"{option}={int(value)!r}" in text, text
    assert "Traceback" not in result.output


def test_the_dashboard_status_line_shows_the_live_backlog(tmp_path: Path) -> None:
    import json

    from dashboards.app import _status_line
    from dashboards.data import RunData
    from twin.records.runstore import RunStore

    store = RunStore(tmp_path)
    store.write_meta({"scenario": {"name": "x"}, "policies": []})
    store.write_status(done=3, total=10, state="running", live={"behind_s": 0.0, "ingest_queue": 12, "seq_missing": 4})
    texts = [span.children for span in _status_line(RunData(tmp_path))]
    assert texts[-1] == " · live: keeping up, ingest queue 12, telemetry gaps 4"
    store.write_status(done=3, total=10, state="running", live={"behind_s": 7.5, "ingest_queue": 0, "seq_missing": 0})
    line = _status_line(RunData(tmp_path))[-1]
    assert (line.children, line.className) == (" · live: behind 7.5 s, ingest queue 0, telemetry gaps 0",
                                               "badge badge-warning")
    assert json.loads((tmp_path / "status.json").read_text())["live"]["behind_s"] == 7.5
