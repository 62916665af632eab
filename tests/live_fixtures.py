"""Shared helpers and fixtures for the live-telemetry tests (import them into a test module to use them).

Every broker here is a private mosquitto on a free loopback port, started from the repository's config and
stopped by its pid; the system broker (if any) is never used.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from twin.live.broker import MosquittoBroker
from twin.live.device import DeviceClient, encode_payload
from twin.live.ingest import Ingestor, IngestPolicy, MqttIngest, RawMessage
from twin.live.messages import Channel, DeviceAddress
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from twin.live.signing import KeyRegistry, new_private_key, sign_payload

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
_DEVICE_KEYS: dict[str, Ed25519PrivateKey] = {}


def device_key(device_id: str) -> Ed25519PrivateKey:
    """The device's signing key: random, made once per test process, as provisioning makes one per device."""
    if device_id not in _DEVICE_KEYS:
        _DEVICE_KEYS[device_id] = new_private_key()
    return _DEVICE_KEYS[device_id]


def make_fleet(n: int, *, site: str = "feeder1", kind: str = "battery", prefix: str = "dev") -> list[DeviceAddress]:
    return [DeviceAddress(site=site, kind=kind, device_id=f"{prefix}{i:04d}") for i in range(n)]  # type: ignore[arg-type]


def registry_for(devices: list[DeviceAddress]) -> KeyRegistry:
    keys = KeyRegistry()
    for device in devices:
        keys.add(device_id=device.device_id, public_key=device_key(device.device_id).public_key())
    return keys


def telemetry_dict(device_id: str, *, seq: int, ts: datetime, p_kw: float = 1.5, **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "device_id": device_id,
        "seq": seq,
        "ts": ts.isoformat().replace("+00:00", "Z"),
        "p_kw": p_kw,
        "q_kvar": -0.25,
        "e_imp_kwh": 10.0 + seq,
        "e_exp_kwh": 2.0,
    }
    payload.update(extra)
    return payload


def signed_telemetry(
    device: DeviceAddress, *, seq: int, ts: datetime, signer: str | None = None, **extra: Any
) -> bytes:
    """Telemetry for ``device`` signed for its own telemetry topic (by ``signer``'s key if given)."""
    key = device_key(signer or device.device_id)
    payload = telemetry_dict(device.device_id, seq=seq, ts=ts, **extra)
    return encode_payload(sign_payload(payload, topic=device.topic(Channel.TELEMETRY), private_key=key))


def raw(device: DeviceAddress, payload: bytes, *, received_at: datetime, channel: Channel = Channel.TELEMETRY) -> RawMessage:
    return RawMessage(topic=device.topic(channel), payload=payload, received_at=received_at)


def device_client(broker: MosquittoBroker, device: DeviceAddress, *, keepalive_s: int = 10) -> DeviceClient:
    return DeviceClient(
        address=device,
        private_key=device_key(device.device_id),
        credentials=broker.credentials(device.device_id),
        host=broker.host,
        port=broker.port,
        keepalive_s=keepalive_s,
    )


def archive_telemetry_rows(ingestor: Ingestor) -> list[tuple[str, int, str]]:
    """(device_id, seq, verdict) of every archived telemetry message."""
    return [(r.device_id or "", r.seq if r.seq is not None else -1, r.verdict) for r in ingestor.archive.iter_rows(channel="telemetry")]


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


#: 50 devices for the burst test plus two spares used by the ACL and Last-Will tests.
BROKER_FLEET = make_fleet(52)


@pytest.fixture(scope="module")
def live_broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker(devices=BROKER_FLEET) as broker:
        yield broker


@pytest.fixture()
def ingest_factory(live_broker: MosquittoBroker, tmp_path: Path) -> Iterator[Any]:
    """Builds started ``MqttIngest`` instances on ``live_broker``; stops and closes them all afterwards."""
    started: list[tuple[MqttIngest, Ingestor]] = []
    counter = iter(range(1000))

    def build(
        *, client_id: str | None = None, archive: Path | None = None, policy: IngestPolicy | None = None
    ) -> MqttIngest:
        n = next(counter)
        ingestor = Ingestor.open(
            archive or tmp_path / f"archive{n}.db",
            keys=registry_for(BROKER_FLEET),
            policy=policy or IngestPolicy(),
        )
        ingest = MqttIngest(
            ingestor=ingestor,
            host=live_broker.host,
            port=live_broker.port,
            credentials=live_broker.twin_credentials,
            client_id=client_id or f"test-ingest-{tmp_path.name}-{n}",
        )
        started.append((ingest, ingestor))
        return ingest.start()

    yield build
    for ingest, ingestor in reversed(started):
        ingest.stop()
        ingestor.close()

