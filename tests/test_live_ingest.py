"""Ingest through the real broker: a 10,000-message burst, hostile messages, and an ingest crash mid-stream."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from twin.live.broker import MosquittoBroker
from twin.live.device import DeviceClient, encode_payload
from twin.live.ingest import MqttIngest
from twin.live.messages import Channel
from twin.live.signing import sign_payload

try:
    from live_fixtures import (
        BROKER_FLEET, archive_telemetry_rows, device_key, device_client, ingest_factory, live_broker, registry_for,
        signed_telemetry, telemetry_dict,
    )
except ImportError:  # tests/ collected as a package
    from tests.live_fixtures import (
        BROKER_FLEET, archive_telemetry_rows, device_key, device_client, ingest_factory, live_broker, registry_for,
        signed_telemetry, telemetry_dict,
    )

__all__ = ["ingest_factory", "live_broker"]  # fixtures, imported for pytest

pytestmark = pytest.mark.slow


def _connect_all(broker: MosquittoBroker, devices) -> list[DeviceClient]:  # type: ignore[no-untyped-def]
    clients = []
    try:
        for device in devices:
            client = device_client(broker, device)
            client.connect(now=datetime.now(UTC))
            clients.append(client)
    except BaseException:
        _close_all(clients)
        raise
    return clients


def _close_all(clients: list[DeviceClient]) -> None:
    for client in clients:
        client.close(now=datetime.now(UTC))


def _payloads(client: DeviceClient, n: int, *, start: datetime) -> list[bytes]:
    return [
        client.telemetry_payload(ts=start + timedelta(milliseconds=k), p_kw=0.5 * k, q_kvar=0.0,
                                 e_imp_kwh=float(k), e_exp_kwh=0.0)
        for k in range(n)
    ]


def test_burst_of_50_devices_x_200_signed_messages_arrives_complete(live_broker: MosquittoBroker, ingest_factory) -> None:
    devices, per_device = BROKER_FLEET[:50], 200
    ingest = ingest_factory()
    clients = _connect_all(live_broker, devices)
    try:
        start = datetime.now(UTC)
        batches = [_payloads(client, per_device, start=start) for client in clients]  # signed before the burst
        infos = []
        for k in range(per_device):  # interleaved, as 50 live devices would be
            for client, payloads in zip(clients, batches, strict=True):
                infos.append(client.publish(channel=Channel.TELEMETRY, payload=payloads[k]))
        for info in infos:
            info.wait_for_publish(30)
        total = len(devices) * per_device
        stats = ingest.wait_until(lambda s: s.by_verdict.get("accepted", 0) >= total + len(devices), timeout_s=120)
    finally:
        _close_all(clients)
    assert stats.total_missing == 0
    assert all(stats.missing_seqs[d.device_id] == 0 for d in devices)
    with ingest.locked() as ingestor:
        rows = archive_telemetry_rows(ingestor)
        samples = ingestor.take_samples()
    assert len(rows) == 10_000
    assert Counter(verdict for _, _, verdict in rows) == {"accepted": 10_000}
    assert len({(device_id, seq) for device_id, seq, _ in rows}) == 10_000
    # p, q, e_imp, e_exp per message; each device's p_kw values are 0.5 × seq.
    assert len(samples) == 40_000
    p = samples[samples["quantity"] == "p_kw"]
    assert (p["value"] == 0.5 * p["seq"]).all()


def test_hostile_messages_are_rejected_with_reason_and_archived(live_broker: MosquittoBroker, ingest_factory) -> None:
    ingest = ingest_factory()
    device = BROKER_FLEET[10]
    other = BROKER_FLEET[11]
    own_key = device_key(device.device_id)
    now = datetime.now(UTC)
    good = signed_telemetry(device, seq=0, ts=now)
    flipped = good.replace(b'"p_kw":1.5', b'"p_kw":0.5')  # '1' (0x31) → '0' (0x30): one bit
    assert flipped != good
    claims_other = encode_payload(sign_payload(
        telemetry_dict(other.device_id, seq=5, ts=now), topic=device.topic(Channel.TELEMETRY), private_key=own_key))
    sends = [  # (channel, payload, expected verdict, expected reason)
        (Channel.TELEMETRY, good, "accepted", ""),
        (Channel.TELEMETRY, good, "duplicate", "duplicate"),  # replayed verbatim
        (Channel.TELEMETRY, encode_payload(telemetry_dict(device.device_id, seq=1, ts=now)), "rejected", "unsigned"),
        (Channel.TELEMETRY, flipped, "rejected", "bad_signature"),
        (Channel.TELEMETRY, signed_telemetry(device, seq=2, ts=now, signer=other.device_id), "rejected", "bad_signature"),
        (Channel.CMD_ACK, good, "rejected", "bad_signature"),  # replayed onto another topic
        (Channel.TELEMETRY, claims_other, "rejected", "topic_mismatch"),
        (Channel.TELEMETRY, b"\xff\xfe not json", "rejected", "bad_json"),
    ]
    client = device_client(live_broker, device)
    client.connect(now=now)
    try:
        for channel, payload, _, _ in sends:
            client.publish(channel=channel, payload=payload).wait_for_publish(10)
        ingest.wait_until(lambda _stats: len(_non_status_rows(ingest)) >= len(sends), timeout_s=10)
    finally:
        client.close(now=datetime.now(UTC))
    rows = _non_status_rows(ingest)  # retained statuses of other tests' devices arrive too
    assert [(row.verdict, row.reason) for row in rows] == [(v, r) for _, _, v, r in sends]
    assert [row.payload for row in rows] == [payload for _, payload, _, _ in sends]  # byte for byte


_CRASHABLE_INGEST = textwrap.dedent(
    """
    import os, sys, time
    from twin.live.broker import BrokerCredentials
    from twin.live.ingest import Ingestor, MqttIngest
    from twin.live.signing import KeyRegistry

    host, port, client_id, archive, keys = sys.argv[1:]
    ingestor = Ingestor.open(archive, keys=KeyRegistry.from_file(keys))
    credentials = BrokerCredentials(username=os.environ["TWIN_USER"], password=os.environ["TWIN_PASSWORD"])
    MqttIngest(ingestor=ingestor, host=host, port=int(port), credentials=credentials, client_id=client_id).start()
    print("subscribed", flush=True)
    time.sleep(300)
    """
)


def _accepted_in(archive: Path) -> int:
    db = sqlite3.connect(f"file:{archive}?mode=ro", uri=True)  # WAL: reading while the ingest writes is fine
    try:
        return int(db.execute(
            "SELECT COUNT(*) FROM raw_messages WHERE channel = 'telemetry' AND verdict = 'accepted'").fetchone()[0])
    except sqlite3.OperationalError:  # table not created yet
        return 0
    finally:
        db.close()


def _start_crashable_ingest(broker: MosquittoBroker, *, client_id: str, archive: Path, keys: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TWIN_USER": broker.twin_credentials.username, "TWIN_PASSWORD": broker.twin_credentials.password}
    process = subprocess.Popen(
        [sys.executable, "-c", _CRASHABLE_INGEST, broker.host, str(broker.port), client_id, str(archive), str(keys)],
        stdout=subprocess.PIPE, env=env, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    process.stdout.close()
    if line != "subscribed":
        process.kill()
        process.wait(10)
        raise AssertionError(f"ingest subprocess did not start (printed {line!r})")
    return process


@pytest.mark.parametrize("how", ["sigkill", "abort", "stop"])
def test_ingest_restarted_mid_stream_loses_no_qos1_telemetry(
    live_broker: MosquittoBroker, ingest_factory, tmp_path: Path, how: str
) -> None:
    """The ingest dies (SIGKILL of its process), loses its connection (no DISCONNECT) or stops cleanly while
    10 devices stream 3,000 QoS-1 messages; a new ingest with the same client id and archive resumes the
    persistent session and ends with every message exactly once among the accepted."""
    devices, per_device = BROKER_FLEET[20:30], 300
    archive, client_id = tmp_path / "restart.db", f"ingest-restart-{how}"
    crashable: subprocess.Popen[str] | None = None
    first: MqttIngest | None = None
    if how == "sigkill":
        registry_for(BROKER_FLEET).save(tmp_path / "keys.json")
        crashable = _start_crashable_ingest(live_broker, client_id=client_id, archive=archive, keys=tmp_path / "keys.json")
    else:
        first = ingest_factory(client_id=client_id, archive=archive)
        assert not first.session_present
    clients = _connect_all(live_broker, devices)
    start = datetime.now(UTC)
    batches = [_payloads(client, per_device, start=start) for client in clients]
    done = threading.Event()

    def stream() -> None:  # ~3,000 messages over >= 1.5 s, so the restart lands mid-stream
        for k in range(per_device):
            for client, payloads in zip(clients, batches, strict=True):
                client.publish(channel=Channel.TELEMETRY, payload=payloads[k])
            time.sleep(0.005)
        done.set()

    publisher = threading.Thread(target=stream)
    publisher.start()
    try:
        deadline = time.monotonic() + 30
        while _accepted_in(archive) < 500 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _accepted_in(archive) >= 500
        if crashable is not None:
            os.kill(crashable.pid, signal.SIGKILL)
            crashable.wait(10)
        elif first is not None and how == "abort":
            first.abort()
        elif first is not None:
            first.stop()
        if first is not None:
            with first.locked() as ingestor:
                ingestor.close()
        assert not done.is_set(), "the stream ended before the restart: the test would prove nothing"
        time.sleep(0.3)  # messages published now can only wait in the broker's session queue
        second = ingest_factory(client_id=client_id, archive=archive)
        assert second.session_present
        publisher.join(60)
        total = len(devices) * per_device
        stats = second.wait_until(lambda _stats: _accepted_telemetry(second) >= total, timeout_s=60)
    finally:
        publisher.join(60)
        _close_all(clients)
        if crashable is not None and crashable.poll() is None:
            crashable.kill()
            crashable.wait(10)
    assert stats.total_missing == 0
    with second.locked() as ingestor:
        rows = archive_telemetry_rows(ingestor)
    accepted = [(d, s) for d, s, verdict in rows if verdict == "accepted"]
    assert len(accepted) == len(set(accepted)) == total
    assert {verdict for _, _, verdict in rows} <= {"accepted", "duplicate"}


def _accepted_telemetry(ingest) -> int:  # type: ignore[no-untyped-def]
    with ingest.locked() as ingestor:
        return ingestor.archive.count(verdict="accepted") - sum(
            1 for row in ingestor.archive.iter_rows(channel="status", verdicts=["accepted"])
        )


def _non_status_rows(ingest):  # type: ignore[no-untyped-def]
    with ingest.locked() as ingestor:
        return [row for row in ingestor.archive.iter_rows() if row.channel != "status"]
