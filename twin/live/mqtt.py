"""Small paho-mqtt 2.x helpers shared by the device and ingest clients (MQTT 5, callback API version 2)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from twin.live.broker import BrokerCredentials

if TYPE_CHECKING:
    from twin.live.session_pool import SessionPool

__all__ = ["MqttConnectError", "connect_and_wait", "connect_in_pool", "format_ts", "make_client"]


class MqttConnectError(ConnectionError):
    """The broker refused or never answered a CONNECT."""


def format_ts(ts: datetime) -> str:
    """ISO 8601 UTC with microseconds and a ``Z`` suffix: the payload ``ts`` format."""
    if ts.tzinfo is None:
        raise ValueError(f"ts {ts!r} must be timezone-aware (UTC)")
    return ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def make_client(*, client_id: str, credentials: BrokerCredentials, manual_ack: bool = False,
                protocol: int = mqtt.MQTTv5, clean_session: bool = True) -> mqtt.Client:
    """A paho client speaking MQTT 5 (or 3.1.1: ``protocol=mqtt.MQTTv311``, whose session is chosen here by
    ``clean_session`` rather than at connect time)."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        manual_ack=manual_ack,
        **({"clean_session": clean_session} if protocol == mqtt.MQTTv311 else {}),
    )
    client.username_pw_set(credentials.username, credentials.password)
    return client


def connect_and_wait(
    client: mqtt.Client,
    *,
    host: str,
    port: int,
    keepalive_s: int,
    clean_start: bool,
    session_expiry_s: int = 0,
    timeout_s: float = 10.0,
) -> bool:
    """Connect, start the network thread and block until CONNACK; return the broker's session-present flag.

    On refusal the network thread is stopped (paho would otherwise retry a bad password forever) and
    ``MqttConnectError`` names the broker's reason.
    """
    def start() -> None:
        try:
            if client.protocol == mqtt.MQTTv5:
                properties = Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = session_expiry_s
                client.connect(host, port, keepalive=keepalive_s, clean_start=clean_start, properties=properties)
            else:  # 3.1.1: the session (clean or persistent) was chosen when the client was made
                client.connect(host, port, keepalive=keepalive_s)
        except OSError as exc:
            raise MqttConnectError(f"cannot reach MQTT broker {host}:{port}: {exc}") from exc
        client.loop_start()

    return _connect_awaiting_connack(client, start, abort=lambda: _abort(client), host=host, port=port,
                                     timeout_s=timeout_s)


def connect_in_pool(
    client: mqtt.Client,
    pool: SessionPool,
    *,
    host: str,
    port: int,
    keepalive_s: int,
    clean_start: bool,
    session_expiry_s: int = 0,
    timeout_s: float = 10.0,
) -> bool:
    """``connect_and_wait`` for a session driven by a ``SessionPool`` (no thread of its own)."""
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = session_expiry_s

    def start() -> None:
        try:
            pool.connect(client, host=host, port=port, keepalive_s=keepalive_s, clean_start=clean_start,
                         properties=properties)
        except OSError as exc:
            pool.abort(client)
            raise MqttConnectError(f"cannot reach MQTT broker {host}:{port}: {exc}") from exc

    return _connect_awaiting_connack(client, start, abort=lambda: pool.abort(client), host=host, port=port,
                                     timeout_s=timeout_s)


def _connect_awaiting_connack(client: mqtt.Client, start: Callable[[], None], *, abort: Callable[[], None],
                              host: str, port: int, timeout_s: float) -> bool:
    """Chain a one-shot CONNACK handler before the caller's, ``start`` the connection and wait; a refusal or
    no answer aborts (never retry a refused login) and raises MqttConnectError. The session-present flag."""
    done = threading.Event()
    outcome: dict[str, object] = {}
    previous = client.on_connect

    def on_connect(client_: mqtt.Client, userdata: object, flags, reason_code, props) -> None:  # type: ignore[no-untyped-def]
        if not done.is_set():
            outcome["reason"] = reason_code
            outcome["session_present"] = flags.session_present
            done.set()
        if previous is not None:  # the caller's handler (e.g. subscribe) runs on every (re)connect
            previous(client_, userdata, flags, reason_code, props)

    client.on_connect = on_connect
    start()
    if not done.wait(timeout_s):
        abort()
        raise MqttConnectError(f"no CONNACK from {host}:{port} within {timeout_s} s")
    reason = outcome["reason"]
    if getattr(reason, "is_failure", False):
        abort()
        raise MqttConnectError(f"broker {host}:{port} refused the connection: {reason}")
    return bool(outcome["session_present"])


def _abort(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()
