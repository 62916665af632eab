"""MQTT topics and JSON payloads of live telemetry: the wire contract between field devices and the twin.

Topics are ``der/<site>/<kind>/<device_id>/<channel>`` with channel ``telemetry``, ``status``, ``cmd`` or
``cmd/ack``. Payloads carry kW/kvar/kWh (device units); the twin converts to MW at its own boundary.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from controllers.api import AssetKind

__all__ = [
    "TOPIC_ROOT",
    "Channel",
    "CommandAckPayload",
    "CommandPayload",
    "DeviceAddress",
    "DeviceState",
    "MessageError",
    "StatusPayload",
    "TelemetryPayload",
    "decode_json_object",
    "describe_validation_error",
    "parse_topic",
]

TOPIC_ROOT = "der"

#: One topic segment: no MQTT wildcards, no separators, and no ':' (device ids double as broker user names,
#: and mosquitto's password file is ``user:hash``).
_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class MessageError(ValueError):
    """A topic or payload that breaks the wire contract; the message names the field and the value."""


class Channel(StrEnum):
    TELEMETRY = "telemetry"
    STATUS = "status"
    CMD = "cmd"
    CMD_ACK = "cmd/ack"


class DeviceState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


def _check_segment(*, field: str, value: str) -> str:
    if not isinstance(value, str) or not _SEGMENT.match(value):
        raise MessageError(f"{field} {value!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return value


@dataclass(frozen=True, kw_only=True)
class DeviceAddress:
    """Where one device lives in the topic tree: ``der/<site>/<kind>/<device_id>``."""

    site: str
    kind: AssetKind
    device_id: str

    def __post_init__(self) -> None:
        _check_segment(field="site", value=self.site)
        _check_segment(field="device_id", value=self.device_id)
        try:
            object.__setattr__(self, "kind", AssetKind(self.kind))
        except ValueError:
            allowed = ", ".join(k.value for k in AssetKind)
            raise MessageError(f"kind {self.kind!r} is not one of: {allowed}") from None

    @property
    def base(self) -> str:
        return f"{TOPIC_ROOT}/{self.site}/{self.kind.value}/{self.device_id}"

    def topic(self, channel: Channel) -> str:
        return f"{self.base}/{Channel(channel).value}"


def parse_topic(topic: str) -> tuple[DeviceAddress, Channel]:
    """Split a concrete topic into the device address and the channel; raise ``MessageError`` if malformed."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != TOPIC_ROOT:
        raise MessageError(f"topic {topic!r} is not {TOPIC_ROOT}/<site>/<kind>/<device_id>/<channel>")
    channel_text = "/".join(parts[4:])
    try:
        channel = Channel(channel_text)
    except ValueError:
        allowed = ", ".join(c.value for c in Channel)
        raise MessageError(f"topic {topic!r}: channel {channel_text!r} is not one of: {allowed}") from None
    address = DeviceAddress(site=parts[1], kind=parts[2], device_id=parts[3])  # type: ignore[arg-type]
    return address, channel


def _reject_constant(name: str) -> float:
    # Python's json accepts NaN/Infinity, which are not JSON and have no canonical form to sign.
    raise MessageError(f"payload contains the non-JSON constant {name}")


def decode_json_object(payload: bytes) -> dict[str, Any]:
    """Decode a payload into a JSON object, or raise ``MessageError`` saying why it is not one."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(f"payload is not UTF-8 (byte {exc.start}: {payload[exc.start:exc.start + 1]!r})") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise MessageError(f"payload is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise MessageError(f"payload must be a JSON object, got {type(obj).__name__}")
    return obj


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, naming the field and the offending value."""
    lines = []
    for problem in error.errors(include_url=False):
        field = ".".join(str(part) for part in problem["loc"]) or "<payload>"
        value = problem.get("input")
        lines.append(f"field {field!r} value {value!r}: {problem['msg']}")
    return "; ".join(lines)


def _require_utc(value: datetime) -> datetime:
    if value.utcoffset() != timedelta(0):
        raise ValueError(f"timestamp must be UTC (offset +00:00 or Z), got offset {value.utcoffset()}")
    return value


def _require_utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _require_utc(value)


class _Payload(BaseModel):
    # extra="forbid": an unknown field would be covered by the signature but silently ignored by the twin.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    device_id: str = Field(pattern=_SEGMENT.pattern)
    #: Ed25519 signature (standard base64) over ``twin.live.signing.canonical_bytes``; None = unsigned.
    sig: str | None = None


class TelemetryPayload(_Payload):
    """One telemetry sample as a device sends it (device units: kW, kvar, kWh, %, pu; load convention)."""

    seq: int = Field(ge=0, strict=True)
    ts: AwareDatetime
    p_kw: float
    q_kvar: float
    soc_pct: float | None = Field(default=None, ge=0.0, le=100.0)
    v_pu: float | None = Field(default=None, gt=0.0, lt=2.0)
    #: Cumulative registers (never reset): settlement uses their differences, so a lost sample only
    #: delays settled energy.
    e_imp_kwh: float = Field(ge=0.0)
    e_exp_kwh: float = Field(ge=0.0)

    _utc = field_validator("ts")(_require_utc)


class StatusPayload(_Payload):
    """Retained online/offline status; the ``offline`` one is the device's Last Will (no ``ts``)."""

    state: DeviceState
    ts: AwareDatetime | None = None

    _utc = field_validator("ts")(_require_utc_or_none)


class CommandPayload(_Payload):
    """A setpoint from the twin to one device, signed with the operator key (load convention, kW/kvar)."""

    cmd_seq: int = Field(ge=0, strict=True)
    ts: AwareDatetime
    p_setpoint_kw: float
    q_setpoint_kvar: float | None = None
    valid_until: AwareDatetime

    _utc = field_validator("ts", "valid_until")(_require_utc)


class CommandAckPayload(_Payload):
    """A device's answer to a command: applied (possibly clipped) or refused, with why."""

    cmd_seq: int = Field(ge=0, strict=True)
    ts: AwareDatetime
    accepted: bool
    applied_p_kw: float | None = None
    reason: str | None = None

    _utc = field_validator("ts")(_require_utc)
