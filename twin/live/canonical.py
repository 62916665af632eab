"""The transport-neutral form of live telemetry: what an MQTT payload, an OCPP frame or an OpenADR report
becomes before the ingest judges it.

A transport decodes each raw message it received into ``Decoded`` items: canonical payloads (the same
``TelemetryPayload`` / ``StatusPayload`` / ``CommandAckPayload`` the MQTT wire contract defines), a protocol
message that carries no telemetry (``SESSION``: a heartbeat, a poll, a registration), or a refusal with its
reason. The ``Ingestor`` archives and judges them all alike (dedupe, watermark, clock skew), so controllers and
settlement see the same samples whichever transport a device spoke.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from twin.live.messages import (
    CommandAckPayload,
    MessageError,
    StatusPayload,
    TelemetryPayload,
    describe_validation_error,
)

__all__ = [
    "SESSION",
    "CanonicalPayload",
    "Decoded",
    "RawMessage",
    "Transport",
    "command_ack",
    "seq_from_ts",
    "telemetry_from_values",
]

#: Archive channel of protocol messages that carry no telemetry (heartbeats, polls, registrations, opt-ins).
SESSION = "session"

CanonicalPayload = TelemetryPayload | StatusPayload | CommandAckPayload


class Transport(StrEnum):
    MQTT = "mqtt"
    OCPP = "ocpp"
    OPENADR = "openadr"


@dataclass(frozen=True, kw_only=True)
class RawMessage:
    """One message as received: topic, exact payload bytes, and the twin's (tz-aware UTC) receive time.

    For OCPP and OpenADR the topic is a path naming the transport, the sender and the message type
    (``ocpp/<charge point>/<action>``, ``openadr/<ven>/<message>``) and the payload is the frame or document.
    """

    topic: str
    payload: bytes
    received_at: datetime

    def __post_init__(self) -> None:
        if self.received_at.tzinfo is None:
            raise ValueError(f"received_at {self.received_at!r} must be timezone-aware UTC")


@dataclass(frozen=True, kw_only=True)
class Decoded:
    """One canonical message from a raw message, or why the raw message is refused.

    Exactly one of ``payload`` (a canonical message), ``reject`` (reason, detail) or neither (a ``SESSION``
    message, described by ``note``) is set. A raw message carrying several samples (an OpenADR report, an OCPP
    MeterValues with several timestamps) decodes into several items, each archived with the raw bytes.
    """

    raw: RawMessage
    transport: Transport
    channel: str | None
    device_id: str | None
    payload: CanonicalPayload | None = None
    reject: tuple[str, str] | None = None
    note: str = ""
    #: A sequence number seen in a refused message, kept for forensics.
    seq: int | None = None

    def __post_init__(self) -> None:
        if self.payload is not None and self.reject is not None:
            raise ValueError("a decoded message is either a payload or a refusal, not both")

    @classmethod
    def refused(cls, raw: RawMessage, *, transport: Transport, reason: str, detail: str,
                device_id: str | None = None, channel: str | None = None) -> Decoded:
        return cls(raw=raw, transport=transport, channel=channel, device_id=device_id, reject=(str(reason), detail))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def seq_from_ts(ts: datetime) -> int:
    """The canonical ``seq`` of a sample from a transport without a per-device message counter (OCPP,
    OpenADR): its timestamp in whole milliseconds since the Unix epoch. A reading is identified by its time, so
    a re-sent reading is a duplicate."""
    return (ts.astimezone(UTC) - _EPOCH) // timedelta(milliseconds=1)


def telemetry_from_values(device_id: str, *, ts: datetime, values: dict[str, Any]) -> TelemetryPayload:
    """A canonical telemetry sample from quantities in device units (``p_kw``, ``q_kvar``, ``e_imp_kwh``,
    ``e_exp_kwh``, optional ``soc_pct`` / ``v_pu``); ``MessageError`` names the missing or bad field."""
    try:
        return TelemetryPayload.model_validate({"device_id": device_id, "seq": seq_from_ts(ts), "ts": ts, **values})
    except ValidationError as exc:
        raise MessageError(describe_validation_error(exc)) from None


def command_ack(device_id: str, *, cmd_seq: int, ts: datetime, accepted: bool, applied_p_kw: float | None,
                reason: str | None) -> CommandAckPayload:
    """A device's answer to a setpoint in canonical form, whatever protocol carried the answer."""
    return CommandAckPayload(device_id=device_id, cmd_seq=cmd_seq, ts=ts, accepted=accepted,
                             applied_p_kw=applied_p_kw, reason=reason)
