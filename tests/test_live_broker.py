"""The shipped mosquitto configuration, run for real: authentication, ACL, Last Will, start/stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from twin.live.broker import BrokerCredentials, MosquittoBroker, MosquittoNotFoundError, find_mosquitto, hash_password
from twin.live.messages import Channel, DeviceState
from twin.live.mqtt import MqttConnectError, connect_and_wait, make_client
from twin.live.signing import private_key_b64

try:
    from live_fixtures import BROKER_FLEET, T0, device_key, device_client, ingest_factory, live_broker, signed_telemetry
except ImportError:  # tests/ collected as a package
    from tests.live_fixtures import BROKER_FLEET, T0, device_key, device_client, ingest_factory, live_broker, signed_telemetry

__all__ = ["ingest_factory", "live_broker"]  # fixtures, imported for pytest

ALICE, BOB, SPARE = BROKER_FLEET[50], BROKER_FLEET[51], BROKER_FLEET[0]


def _try_connect(broker: MosquittoBroker, credentials: BrokerCredentials) -> None:
    client = make_client(client_id=f"probe-{credentials.username}-{os.getpid()}", credentials=credentials)
    try:
        connect_and_wait(client, host=broker.host, port=broker.port, keepalive_s=5, clean_start=True, timeout_s=5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_password_hash_is_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    passwd_tool = Path(find_mosquitto()).parent.parent / "bin" / "mosquitto_passwd"
    if not passwd_tool.exists():
        pytest.skip("mosquitto_passwd not installed next to mosquitto")
    subprocess.run([str(passwd_tool), "-c", "-b", str(tmp_path / "pw"), "alice", "s3cret"], check=True)
    tool_line = (tmp_path / "pw").read_text().strip()
    salt_b64 = tool_line.split("$")[3]
    import base64

    assert tool_line == "alice:" + hash_password("s3cret", salt=base64.b64decode(salt_b64))


def test_devices_authenticate_and_strangers_are_refused(live_broker: MosquittoBroker) -> None:
    _try_connect(live_broker, live_broker.credentials(ALICE.device_id))  # no exception = accepted
    wrong = BrokerCredentials(username=ALICE.device_id, password="not-the-password")
    with pytest.raises(MqttConnectError, match="refused"):
        _try_connect(live_broker, wrong)
    with pytest.raises(MqttConnectError, match="refused"):
        _try_connect(live_broker, BrokerCredentials(username="", password=""))


def test_acl_refuses_publishing_on_another_devices_topic(live_broker: MosquittoBroker, ingest_factory) -> None:
    ingest = ingest_factory()
    alice = device_client(live_broker, ALICE)
    alice.connect(now=datetime.now(UTC))
    acks: dict[int, int] = {}
    acked = threading.Event()

    def on_publish(_client, _userdata, mid, reason_code, _properties) -> None:  # type: ignore[no-untyped-def]
        acks[mid] = reason_code.value
        if len(acks) >= 2:
            acked.set()

    alice.client.on_publish = on_publish
    try:
        # A well-formed payload signed by Alice's key for Bob's topic: only the broker ACL can stop it.
        forged = alice.publish_to(topic=BOB.topic(Channel.TELEMETRY), payload=signed_telemetry(BOB, seq=0, ts=T0, signer=ALICE.device_id))
        # QoS 1 from one client arrives in order, so once the marker is archived the forgery would have been.
        marker = alice.publish(channel=Channel.TELEMETRY, payload=signed_telemetry(ALICE, seq=0, ts=datetime.now(UTC)))
        assert acked.wait(10)
        stats = ingest.wait_until(lambda s: s.by_verdict.get("accepted", 0) >= 2, timeout_s=10)
    finally:
        alice.close(now=datetime.now(UTC))
    assert acks[forged.mid] == 135  # MQTT 5 "Not authorized" in the PUBACK
    assert acks[marker.mid] == 0
    with ingest.locked() as ingestor:
        topics = [row.topic for row in ingestor.archive.iter_rows()]
    assert ALICE.topic(Channel.TELEMETRY) in topics
    assert not any(BOB.device_id in topic for topic in topics)
    assert stats.by_verdict.get("rejected", 0) == 0


def test_device_subscribed_to_another_devices_telemetry_never_receives_it(live_broker: MosquittoBroker) -> None:
    # mosquitto 2.0 grants the SUBACK and enforces "read" per delivered message, so test delivery itself.
    alice, bob = device_client(live_broker, ALICE), device_client(live_broker, BOB)
    twin = make_client(client_id="test-twin-commander", credentials=live_broker.twin_credentials)
    received: list[str] = []
    got_marker, subscribed = threading.Event(), threading.Event()

    def on_message(_client, _userdata, message) -> None:  # type: ignore[no-untyped-def]
        received.append(message.topic)
        if message.topic == ALICE.topic(Channel.CMD):
            got_marker.set()

    alice.connect(now=datetime.now(UTC))
    bob.connect(now=datetime.now(UTC))
    connect_and_wait(twin, host=live_broker.host, port=live_broker.port, keepalive_s=5, clean_start=True)
    try:
        alice.client.on_message = on_message
        alice.client.on_subscribe = lambda *_args: subscribed.set()
        alice.client.subscribe([(BOB.topic(Channel.TELEMETRY), 1), (ALICE.topic(Channel.CMD), 1)])
        assert subscribed.wait(10)
        bob.publish_telemetry(ts=datetime.now(UTC), p_kw=1.0, q_kvar=0.0, e_imp_kwh=1.0, e_exp_kwh=0.0).wait_for_publish(10)
        # Bob's PUBACK means the broker has already routed his message; the twin's command to Alice is
        # queued for her after it, so once the command arrives Bob's telemetry would have too.
        twin.publish(ALICE.topic(Channel.CMD), b"{}", qos=1).wait_for_publish(10)
        assert got_marker.wait(10)
    finally:
        for device in (alice, bob):
            device.close(now=datetime.now(UTC))
        twin.disconnect()
        twin.loop_stop()
    assert received == [ALICE.topic(Channel.CMD)]


_KILLABLE_DEVICE = textwrap.dedent(
    """
    import os, sys, time
    from datetime import UTC, datetime
    from twin.live.broker import BrokerCredentials
    from twin.live.device import DeviceClient
    from twin.live.messages import DeviceAddress
    from twin.live.signing import private_key_from_b64

    site, kind, device_id, host, port = sys.argv[1:]
    client = DeviceClient(
        address=DeviceAddress(site=site, kind=kind, device_id=device_id),
        private_key=private_key_from_b64(os.environ["DEVICE_KEY"]),
        credentials=BrokerCredentials(username=device_id, password=os.environ["DEVICE_PASSWORD"]),
        host=host, port=int(port), keepalive_s=60,
    )
    client.connect(now=datetime.now(UTC))
    print("online", flush=True)
    time.sleep(120)
    """
)


def test_killed_device_gets_retained_offline_status_by_last_will(live_broker: MosquittoBroker, ingest_factory) -> None:
    ingest = ingest_factory()
    env = {**os.environ, "DEVICE_PASSWORD": live_broker.credentials(SPARE.device_id).password,
           "DEVICE_KEY": private_key_b64(device_key(SPARE.device_id))}
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLABLE_DEVICE, SPARE.site, SPARE.kind.value, SPARE.device_id,
         live_broker.host, str(live_broker.port)],
        stdout=subprocess.PIPE, env=env, text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "online"
        online = ingest.wait_until(lambda s: s.status.get(SPARE.device_id) is DeviceState.ONLINE, timeout_s=10)
        assert online.status.get(SPARE.device_id) is DeviceState.ONLINE
        # SIGKILL: the kernel closes the socket, no DISCONNECT is sent; keepalive is 60 s, so only the
        # broker noticing the dead connection can publish the will this fast.
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    offline = ingest.wait_until(lambda s: s.status.get(SPARE.device_id) is DeviceState.OFFLINE, timeout_s=10)
    assert offline.status.get(SPARE.device_id) is DeviceState.OFFLINE
    # Retained: a twin that connects afterwards learns it at once, and the signed will verifies.
    late_joiner = ingest_factory()
    seen = late_joiner.wait_until(lambda s: SPARE.device_id in s.status, timeout_s=10)
    assert seen.status[SPARE.device_id] is DeviceState.OFFLINE
    assert seen.by_verdict.get("rejected", 0) == 0


def test_missing_binary_says_how_to_install() -> None:
    broker = MosquittoBroker(devices=BROKER_FLEET[:1], mosquitto_bin="/nonexistent/mosquitto")
    with pytest.raises(MosquittoNotFoundError, match="apt-get install mosquitto"):
        broker.start()


def test_stop_ends_the_process_and_removes_its_files() -> None:
    broker = MosquittoBroker(devices=BROKER_FLEET[:2])
    with broker:
        pid, workdir = broker.pid, broker.workdir
        assert pid is not None and workdir is not None
        assert (workdir / "mosquitto.conf").read_text().count(f"listener {broker.port} 127.0.0.1") == 1
        assert (workdir / "passwd").stat().st_mode & 0o077 == 0  # secrets not readable by others
    assert not broker.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not workdir.exists()
