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


# --- the ingest's bulk read path (twin.live.mqtt.BulkReadClient) ---------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish_packet(topic: str, payload: bytes, *, qos: int = 0, mid: int = 0,
                    properties: bytes | None = None) -> bytes:
    body = len(topic.encode()).to_bytes(2, "big") + topic.encode()
    if qos:
        body += mid.to_bytes(2, "big")
    if properties is not None:  # MQTT 5: property length, then the properties
        body += _varint(len(properties)) + properties
    body += payload
    return bytes([0x30 | (qos << 1)]) + _varint(len(body)) + body


class _ChunkedSocket:
    """A socket stand-in that returns a byte stream in chunks of the given size, then would block."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self._chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]

    def recv(self, _bufsize: int) -> bytes:
        if not self._chunks:
            raise BlockingIOError
        return self._chunks.pop(0)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_the_bulk_reader_hands_over_every_publish_whatever_the_read_boundaries(protocol: str) -> None:
    import paho.mqtt.client as paho

    from twin.live.broker import BrokerCredentials
    from twin.live.mqtt import BULK_READ, make_client

    assert BULK_READ  # the paho pinned by pyproject has the read path the ingest builds on
    v5 = protocol == "5"
    props = {0: b"", 1: b"\x01\x01", 2: b"\x26\x00\x01k\x00\x01v"}  # none; payload format; a user property
    expected = []
    stream = b""
    for k in range(40):
        topic = f"der/s/battery/dev{k % 7:04d}/telemetry"
        payload = b'{"seq":%d}' % k + b"x" * (k * 9)  # 10 B to 360 B: remaining lengths of 1 and 2 bytes
        qos, mid = k % 2, (k + 1) if k % 2 else 0
        stream += _publish_packet(topic, payload, qos=qos, mid=mid, properties=props[k % 3] if v5 else None)
        expected.append((topic, payload, mid, qos))
        if k == 20:
            stream += b"\xd0\x00"  # PINGRESP between publishes: paho's own handler takes it
    for chunk in (1, 2, 3, 5, 64, 1000, len(stream)):
        got: list[tuple[str, bytes, int, int]] = []
        reads: list[datetime] = []

        def on_publishes(publishes, received_at):  # type: ignore[no-untyped-def]
            got.extend(publishes)
            reads.append(received_at)

        client = make_client(client_id="bulk-test", credentials=BrokerCredentials(username="u", password="p"),
                             protocol=paho.MQTTv5 if v5 else paho.MQTTv311, on_publishes=on_publishes)
        client._sock = _ChunkedSocket(stream, chunk)  # type: ignore[assignment]
        for _ in range(len(stream) + 1):
            client._packet_read()
        client._sock = None
        assert got == expected, chunk
        assert all(t.tzinfo is UTC for t in reads)
        # A hand-over a read (one more where the PINGRESP splits one), not a call a message:
        assert len(reads) <= min(len(expected), -(-len(stream) // chunk) + 1)
        if chunk == len(stream):
            assert [len(publishes) for publishes in (got[:21], got[21:])] == [21, 19] and len(reads) == 2


def _raw_session(broker: MosquittoBroker, device_id: str):  # type: ignore[no-untyped-def]
    """A device's MQTT 3.1.1 session on a bare socket (CONNECT by hand): publishing costs only a send."""
    import socket

    def field(text: str) -> bytes:
        return len(text.encode()).to_bytes(2, "big") + text.encode()

    body = (field("MQTT") + b"\x04\xc2\x00\x00" + field(f"raw-{device_id}") + field(device_id)
            + field(broker.credentials(device_id).password))
    sock = socket.create_connection((broker.host, broker.port), timeout=10)
    sock.sendall(b"\x10" + _varint(len(body)) + body)
    ack = b""
    while len(ack) < 4:
        ack += sock.recv(4 - len(ack))
    assert ack == b"\x20\x02\x00\x00", ack  # CONNACK, accepted
    return sock


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_qos0_flood_with_bad_messages_is_archived_whole_with_verdicts(broker: MosquittoBroker, tmp_path: Path,
                                                                        protocol: str) -> None:
    """6,000 pre-signed telemetry messages sent as fast as the sockets take them (QoS 0), every 50th altered
    after signing, every 97th not JSON, every 89th without its signature: every message archived once with its
    verdict, the bad ones rejected with their reason, the gaps they leave counted."""
    from twin.live.device import encode_payload
    from twin.live.messages import Channel
    from twin.live.signing import sign_payload

    fleet, rounds = FLEET[:60], 100
    ingestor = Ingestor.open(tmp_path / "flood.sqlite", keys=registry_for(fleet))
    ingest = MqttIngest(ingestor=ingestor, host=broker.host, port=broker.port, credentials=broker.twin_credentials,
                        client_id=f"flood-{protocol}-{tmp_path.name}", clean_start=True, telemetry_qos=0,
                        devices=fleet, protocol=protocol, max_batch=500)  # type: ignore[arg-type]
    ingest.start(timeout_s=30)
    sockets = [_raw_session(broker, d.device_id) for d in fleet]
    t0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    frames, kinds = [], []
    n = 0
    for k in range(rounds):
        for device in fleet:
            n += 1
            topic = device.topic(Channel.TELEMETRY)
            ts = (t0 + timedelta(seconds=k)).isoformat().replace("+00:00", "Z")
            payload = sign_payload({"device_id": device.device_id, "seq": k, "ts": ts, "p_kw": 0.25 * k, "q_kvar": 0.0,
                                    "e_imp_kwh": float(k), "e_exp_kwh": 0.0},
                                   topic=topic, private_key=device_key(device.device_id))
            if n % 50 == 0:
                payload["p_kw"] = -1.0  # altered after signing
                kind = "bad_signature"
            elif n % 97 == 0:
                kind = "bad_json"
            elif n % 89 == 0:
                del payload["sig"]
                kind = "unsigned"
            else:
                kind = "accepted"
            body = b"{not json" if kind == "bad_json" else encode_payload(payload)
            topic_b = topic.encode()
            packet = len(topic_b).to_bytes(2, "big") + topic_b + body
            frames.append((sockets[fleet.index(device)], b"\x30" + _varint(len(packet)) + packet))
            kinds.append((device.device_id, k, kind))
    try:
        for sock, frame in frames:
            sock.sendall(frame)
        total = len(frames)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with ingest.locked() as judged:
                if judged.archive.count(channel="telemetry") >= total:
                    break
            time.sleep(0.05)
        time.sleep(0.3)  # anything beyond the total (there must be nothing) would arrive meanwhile
        stats = ingest.stats()
    finally:
        for sock in sockets:
            sock.close()
        ingest.stop()
    try:
        from collections import Counter

        expected = Counter(kind for _, _, kind in kinds)
        assert expected["bad_signature"] == 120 and expected["bad_json"] > 50 and expected["unsigned"] > 50
        rows = ingestor.archive._db.execute(
            "SELECT device_id, seq, verdict, reason, detail FROM raw_messages WHERE channel='telemetry'").fetchall()
        assert len(rows) == len(frames)  # nothing lost, nothing twice
        # every message the ingest judged is in the archive (also statuses retained by earlier tests, if any)
        assert stats.received == ingestor.archive.count() >= len(frames)
        got = Counter("accepted" if verdict == "accepted" else reason for _, _, verdict, reason, _ in rows)
        assert got == expected
        by_message = {(d, s): (v, r) for d, s, v, r, _ in rows if s is not None}
        for device_id, seq, kind in kinds:
            if kind in ("bad_signature", "unsigned", "accepted"):  # a bad-JSON message has no readable seq
                verdict, reason = by_message[(device_id, seq)]
                assert (verdict, reason or "accepted") == ("rejected" if kind != "accepted" else "accepted", kind)
        details = {reason: detail for _, _, verdict, reason, detail in rows if verdict == "rejected"}
        assert "field 'sig'" in details["bad_signature"] and "bad_signature" in details["bad_signature"]
        assert "not JSON" in details["bad_json"]
        # A rejected message is no evidence of its seq: each one between a device's lowest and highest accepted
        # seq is a gap.
        good: dict[str, list[int]] = {}
        for device_id, seq, kind in kinds:
            if kind == "accepted":
                good.setdefault(device_id, []).append(seq)
        gaps = {d: max(seqs) - min(seqs) + 1 - len(seqs) for d, seqs in good.items()}
        assert stats.missing_seqs == gaps and 200 < stats.total_missing <= total - expected["accepted"]
        samples = ingestor.take_samples()
        p = samples[samples["quantity"] == "p_kw"]
        assert len(p) == expected["accepted"] and (p["value"] == 0.25 * p["seq"]).all()
        assert ingestor.archive.count(channel="telemetry", verdict="rejected") == total - expected["accepted"]
        assert stats.by_reason == {k: n for k, n in expected.items() if k != "accepted"}
    finally:
        ingestor.close()
