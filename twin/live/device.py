"""The field-device side of the wire contract: an MQTT client that signs and publishes one device's messages.

Used by tests, the ingest benchmark and (later) the ``gridtwin devices`` simulator. It registers a retained,
signed ``offline`` Last Will and publishes a retained, signed ``online`` status once connected.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from twin.live.broker import BrokerCredentials
from twin.live.messages import Channel, DeviceAddress, DeviceState
from twin.live.mqtt import connect_and_wait, connect_in_pool, format_ts, make_client
from twin.live.session_pool import SessionPool
from twin.live.ed25519_fast import signer_for
from twin.live.signing import sign_payload

__all__ = ["DeviceClient", "encode_payload"]


def encode_payload(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")


class DeviceClient:
    """One device's MQTT session. ``connect()`` does the I/O; ``close()`` ends it (gracefully by default)."""

    def __init__(
        self,
        *,
        address: DeviceAddress,
        private_key: Ed25519PrivateKey,
        credentials: BrokerCredentials,
        host: str,
        port: int,
        keepalive_s: int = 10,
        first_seq: int = 0,
        max_inflight_messages: int = 100,
        telemetry_qos: int = 1,
        pool: SessionPool | None = None,
    ) -> None:
        """``telemetry_qos`` 0 sends telemetry as Sparkplug B sends data (the ingest counts sequence gaps; the
        cumulative registers keep settlement exact); status and acknowledgements stay QoS 1. With ``pool`` the
        session is driven by that pool's thread instead of a thread of its own."""
        if telemetry_qos not in (0, 1):
            raise ValueError(f"telemetry_qos={telemetry_qos!r} must be 0 or 1")
        self.telemetry_qos = telemetry_qos
        self._pool = pool
        self.address = address
        self._signer = signer_for(private_key)  # libsodium where the system has it: every message is signed
        self._credentials = credentials
        self._host = host
        self._port = port
        self._keepalive_s = keepalive_s
        self._max_inflight = max_inflight_messages
        self.next_seq = first_seq
        self._client: mqtt.Client | None = None

    # --- payloads ------------------------------------------------------------------------------------------

    def sign(self, payload: dict[str, Any], *, channel: Channel) -> bytes:
        """Sign ``payload`` for this device's ``channel`` topic and encode it as JSON bytes."""
        signed = sign_payload(payload, topic=self.address.topic(channel), private_key=self._signer)
        return encode_payload(signed)

    def telemetry_payload(
        self,
        *,
        ts: datetime,
        p_kw: float,
        q_kvar: float,
        e_imp_kwh: float,
        e_exp_kwh: float,
        soc_pct: float | None = None,
        v_pu: float | None = None,
    ) -> bytes:
        """The next signed telemetry payload; consumes one sequence number."""
        payload: dict[str, Any] = {
            "device_id": self.address.device_id,
            "seq": self.next_seq,
            "ts": format_ts(ts),
            "p_kw": float(p_kw),
            "q_kvar": float(q_kvar),
            "e_imp_kwh": float(e_imp_kwh),
            "e_exp_kwh": float(e_exp_kwh),
        }
        if soc_pct is not None:
            payload["soc_pct"] = float(soc_pct)
        if v_pu is not None:
            payload["v_pu"] = float(v_pu)
        self.next_seq += 1
        return self.sign(payload, channel=Channel.TELEMETRY)

    def status_payload(self, *, state: DeviceState, ts: datetime | None) -> bytes:
        payload: dict[str, Any] = {"device_id": self.address.device_id, "state": DeviceState(state).value}
        if ts is not None:
            payload["ts"] = format_ts(ts)
        return self.sign(payload, channel=Channel.STATUS)

    # --- session -------------------------------------------------------------------------------------------

    @property
    def client(self) -> mqtt.Client:
        if self._client is None:
            raise RuntimeError(f"device {self.address.device_id!r} is not connected")
        return self._client

    def connect(self, *, now: datetime, timeout_s: float = 10.0) -> None:
        """Connect with the ``offline`` will registered, then publish retained ``online`` (QoS 1, waited for)."""
        client = make_client(client_id=f"dev-{self.address.device_id}", credentials=self._credentials)
        client.max_inflight_messages_set(self._max_inflight)
        # The will has no ts: it is fixed at connect time, long before the broker publishes it.
        client.will_set(
            self.address.topic(Channel.STATUS),
            self.status_payload(state=DeviceState.OFFLINE, ts=None),
            qos=1,
            retain=True,
        )
        if self._pool is not None:
            connect_in_pool(client, self._pool, host=self._host, port=self._port, keepalive_s=self._keepalive_s,
                            clean_start=True, timeout_s=timeout_s)
        else:
            connect_and_wait(
                client, host=self._host, port=self._port, keepalive_s=self._keepalive_s, clean_start=True,
                timeout_s=timeout_s,
            )
        self._client = client
        online = self.publish(
            channel=Channel.STATUS, payload=self.status_payload(state=DeviceState.ONLINE, ts=now), retain=True
        )
        online.wait_for_publish(timeout_s)

    def publish(self, *, channel: Channel, payload: bytes, retain: bool = False, qos: int = 1) -> mqtt.MQTTMessageInfo:
        return self.publish_to(topic=self.address.topic(channel), payload=payload, retain=retain, qos=qos)

    def publish_to(self, *, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> mqtt.MQTTMessageInfo:
        """Publish raw bytes on any topic (tests use it to try what the ACL must refuse)."""
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def publish_telemetry(self, **values: Any) -> mqtt.MQTTMessageInfo:
        return self.publish(channel=Channel.TELEMETRY, payload=self.telemetry_payload(**values),
                            qos=self.telemetry_qos)

    def abort(self) -> None:
        """Fault injection: drop the TCP connection without DISCONNECT, as a power cut or a lost link would,
        so the broker publishes this device's ``offline`` Last Will."""
        if self._client is None:
            return
        client, self._client = self._client, None
        if self._pool is not None:
            self._pool.abort(client)
            return
        client.loop_stop()  # first stop the network thread, so nothing reconnects or writes after the close
        sock = client.socket()
        if sock is not None:
            sock.close()

    def close(self, *, now: datetime | None = None, timeout_s: float = 10.0) -> None:
        """Graceful end: retained ``offline`` (the will is not sent on a clean DISCONNECT), then disconnect."""
        if self._client is None:
            return
        client, self._client = self._client, None
        ended = False
        try:
            if client.is_connected():
                info = client.publish(
                    self.address.topic(Channel.STATUS),
                    self.status_payload(state=DeviceState.OFFLINE, ts=now),
                    qos=1,
                    retain=True,
                )
                info.wait_for_publish(timeout_s)
                if self._pool is not None:
                    self._pool.disconnect(client)
                    ended = True
                else:
                    client.disconnect()
        finally:
            if self._pool is not None:
                if not ended:
                    self._pool.abort(client)  # not connected (or it failed): stop any reconnecting
            else:
                client.loop_stop()
