"""Live telemetry ingest: judge every raw message, archive it with its verdict, emit canonical samples.

``Ingestor`` is pure of any broker: feed it ``RawMessage`` (topic, bytes, received_at) and it validates the
schema, checks topic ↔ device_id, verifies the Ed25519 signature, dedupes on (device_id, seq), classifies
out-of-order messages behind the watermark as late, marks stale samples, and archives everything. Other
transports (OCPP, OpenADR) authenticate and decode their own messages into ``canonical.Decoded`` items and
hand them to ``ingest_decoded``: from there on they are judged and archived exactly as MQTT messages are.
``MqttIngest`` subscribes with paho (QoS 1, persistent session) and acknowledges a message to the broker only
after its verdict is committed to the archive, so a crash can duplicate a message but never lose one.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Literal

import numpy as np
import pandas as pd
import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import BaseModel, ValidationError

from twin.live.archive import COLUMNS as ARCHIVE_COLUMNS
from twin.live.archive import ArchiveRow, TelemetryArchive
from twin.live.broker import BrokerCredentials
from twin.live.canonical import SESSION, Decoded, RawMessage, Transport
from twin.live.fast_decode import FastSample, FastTelemetryDecoder
from twin.live.messages import (
    TOPIC_ROOT,
    Channel,
    CommandAckPayload,
    DeviceAddress,
    DeviceState,
    MessageError,
    StatusPayload,
    TelemetryPayload,
    decode_json_object,
    describe_validation_error,
    parse_topic,
)
from twin.live.mqtt import Publish, connect_and_wait, make_client
from twin.live.signing import KeyRegistry, SignatureCheck, verify_payload
from twin.telemetry import TELEMETRY_COLUMNS, Quality, Quantity

__all__ = [
    "SAMPLE_COLUMNS",
    "IngestPolicy",
    "IngestResult",
    "IngestStats",
    "Ingestor",
    "MqttIngest",
    "RawMessage",
    "RejectReason",
    "Verdict",
]

#: Columns of the canonical long telemetry format (DESIGN §7).
SAMPLE_COLUMNS = TELEMETRY_COLUMNS
#: Payload fields that become samples, in this order (a payload field per ``Quantity``, same name).
_QUANTITIES = tuple(Quantity)


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"
    REJECTED = "rejected"


class RejectReason(StrEnum):
    BAD_TOPIC = "bad_topic"
    UNEXPECTED_CHANNEL = "unexpected_channel"
    BAD_JSON = "bad_json"
    SCHEMA = "schema"
    TOPIC_MISMATCH = "topic_mismatch"
    UNKNOWN_DEVICE = "unknown_device"
    UNSIGNED = SignatureCheck.UNSIGNED.value
    MALFORMED_SIGNATURE = SignatureCheck.MALFORMED_SIGNATURE.value
    BAD_SIGNATURE = SignatureCheck.BAD_SIGNATURE.value
    FUTURE_TIMESTAMP = "future_timestamp"
    #: OCPP / OpenADR: a sender without valid credentials (HTTP Basic, certificate fingerprint, XML signature).
    UNAUTHENTICATED = "unauthenticated"
    #: OCPP: a handshake refused unchecked after too many failed authentications of its station or address.
    THROTTLED = "throttled"
    #: OpenADR: a document that is not XML or not valid against the OpenADR 2.0b schema.
    BAD_XML = "bad_xml"
    #: OCPP / OpenADR: well-formed but breaks the protocol (an unknown transaction, a report nobody asked for).
    PROTOCOL = "protocol"
    #: A device heard on another transport than the one it speaks in this run (e.g. a retained MQTT status of
    #: a charger that now speaks OCPP): stale, or someone else's.
    WRONG_TRANSPORT = "wrong_transport"


@dataclass(frozen=True, kw_only=True)
class IngestPolicy:
    """Tolerances of the ingest. Durations are ``pd.Timedelta``."""

    #: A telemetry sample older than (newest device ts seen for that device − watermark) is ``late``.
    watermark: pd.Timedelta = field(default_factory=lambda: pd.Timedelta(minutes=5))
    #: An accepted sample that arrives more than this after its device ts gets quality ``stale``.
    stale_after: pd.Timedelta = field(default_factory=lambda: pd.Timedelta(seconds=60))
    #: A device ts further than this ahead of our clock (the twin's own, or the receive time) is rejected: it
    #: would push the watermark forward, make every honest sample look late, and claim an interval that has
    #: not begun.
    max_clock_skew: pd.Timedelta = field(default_factory=lambda: pd.Timedelta(minutes=5))

    def __post_init__(self) -> None:
        for name in ("watermark", "stale_after", "max_clock_skew"):
            value = getattr(self, name)
            if not isinstance(value, pd.Timedelta) or value < pd.Timedelta(0):
                raise ValueError(f"IngestPolicy.{name} must be a non-negative pd.Timedelta, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class IngestResult:
    verdict: Verdict
    reason: str  # a RejectReason value, "duplicate", "late", or "" when accepted
    detail: str
    channel: Channel | str | None  # a Channel, or canonical.SESSION for protocol messages without telemetry
    device_id: str | None
    seq: int | None
    archive_id: int


@dataclass(frozen=True, kw_only=True)
class IngestStats:
    """A consistent snapshot of what the ingest has seen."""

    received: int
    by_verdict: dict[str, int]
    by_reason: dict[str, int]
    #: Per device: sequence numbers missing between the lowest and highest seq seen.
    missing_seqs: dict[str, int]
    last_seen: dict[str, datetime]
    status: dict[str, DeviceState]

    @property
    def total_missing(self) -> int:
        return sum(self.missing_seqs.values())


class _SeqRanges:
    """The set of seqs seen for one device as sorted disjoint ranges: memory grows with gaps, not messages."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.count = 0

    def __contains__(self, seq: int) -> bool:
        i = bisect_right(self._starts, seq) - 1
        return i >= 0 and seq <= self._ends[i]

    def add(self, seq: int) -> bool:
        """Record ``seq``; False if it was already there."""
        starts, ends = self._starts, self._ends
        i = bisect_right(starts, seq) - 1
        if i >= 0 and seq <= ends[i]:
            return False
        joins_left = i >= 0 and ends[i] == seq - 1
        joins_right = i + 1 < len(starts) and starts[i + 1] == seq + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif joins_left:
            ends[i] = seq
        elif joins_right:
            starts[i + 1] = seq
        else:
            starts.insert(i + 1, seq)
            ends.insert(i + 1, seq)
        self.count += 1
        return True

    @property
    def missing(self) -> int:
        return self._ends[-1] - self._starts[0] + 1 - self.count if self._starts else 0

    def gaps(self) -> list[tuple[int, int]]:
        """Missing seq ranges, inclusive."""
        return [(self._ends[i] + 1, self._starts[i + 1] - 1) for i in range(len(self._starts) - 1)]


@dataclass
class _DeviceTrack:
    seqs: _SeqRanges = field(default_factory=_SeqRanges)
    newest_ts: datetime | None = None
    last_seen: datetime | None = None
    status: DeviceState | None = None
    #: False when the device's seqs are timestamps (OCPP, OpenADR): gaps between them are not missing messages.
    counter_seq: bool = True


class _Rejected(Exception):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


_MODELS: dict[Channel, type[BaseModel]] = {
    Channel.TELEMETRY: TelemetryPayload,
    Channel.STATUS: StatusPayload,
    Channel.CMD_ACK: CommandAckPayload,
}


_CHANNELS = frozenset(c.value for c in Channel)
_TELEMETRY = Channel.TELEMETRY.value
_MQTT = Transport.MQTT.value
_ACCEPTED, _DUPLICATE, _LATE, _REJECTED = (v.value for v in (Verdict.ACCEPTED, Verdict.DUPLICATE, Verdict.LATE,
                                                              Verdict.REJECTED))
_GOOD, _STALE = Quality.GOOD.value, Quality.STALE.value
_QUANTITY_NAMES = np.array([q.value for q in _QUANTITIES], dtype=object)
_ARCHIVE_COLUMNS = ARCHIVE_COLUMNS


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


class Ingestor:
    """Judges and archives raw messages; keeps per-device sequence, watermark, last-seen and status state.

    Not thread-safe: one thread at a time (``MqttIngest`` holds a lock). Build it with ``Ingestor.open``.
    ``clock`` is the twin's own clock (tz-aware UTC; a live twin's simulated time): device timestamps are
    judged against it, never the other way round. Without one, the receive time is the clock.
    """

    def __init__(self, *, archive: TelemetryArchive, keys: KeyRegistry, policy: IngestPolicy,
                 clock: Callable[[], datetime] | None = None,
                 transports: Mapping[str, Transport] | None = None) -> None:
        self.archive = archive
        self.keys = keys
        self.policy = policy
        self._clock = clock
        #: device id → the one transport it speaks in this run (None: any)
        self.transports = dict(transports) if transports is not None else None
        self._devices: dict[str, _DeviceTrack] = {}
        #: Accepted samples since take_samples, one wide row a message: (ts, device_id, seq, quality, then the
        #: values in ``_QUANTITIES`` order, None where absent); take_samples makes the long rows in bulk.
        self._samples: list[tuple[Any, ...]] = []
        self._acks: list[CommandAckPayload] = []
        self._received = 0
        self._by_verdict: dict[str, int] = {}
        self._by_reason: dict[str, int] = {}
        self._broken = False
        self._fast = FastTelemetryDecoder(keys)
        self._last_received: datetime | None = None
        self._last_received_text = ""
        # Plain timedeltas: datetime arithmetic with pd.Timedelta builds pd.Timestamps, ~10x slower per message.
        self._watermark = policy.watermark.to_pytimedelta()
        self._stale_after = policy.stale_after.to_pytimedelta()
        self._max_clock_skew = policy.max_clock_skew.to_pytimedelta()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        keys: KeyRegistry,
        policy: IngestPolicy | None = None,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        clock: Callable[[], datetime] | None = None,
        transports: Mapping[str, Transport] | None = None,
    ) -> Ingestor:
        """Open (or create) the archive at ``path`` and restore dedupe/watermark/status state from it, so a
        restarted ingest recognises messages the broker redelivers as duplicates. ``transports``: the one
        transport each device speaks in this run; a message from it on another one is refused."""
        archive = TelemetryArchive.open(path, synchronous=synchronous)
        ingestor = cls(archive=archive, keys=keys, policy=policy or IngestPolicy(), clock=clock,
                       transports=transports)
        ingestor._restore()
        return ingestor

    def _restore(self) -> None:
        for row in self.archive.iter_rows():
            self._count(row.verdict, row.reason)
            if row.device_id is None or row.verdict == Verdict.REJECTED:
                continue
            track = self._track(row.device_id)
            received_at = datetime.fromisoformat(row.received_at)
            if track.last_seen is None or received_at > track.last_seen:
                track.last_seen = received_at
            if row.channel == Channel.TELEMETRY and row.seq is not None:
                track.counter_seq = track.counter_seq and row.transport == Transport.MQTT
                if row.verdict == Verdict.ACCEPTED and track.status is DeviceState.OFFLINE:
                    track.status = DeviceState.ONLINE  # as when it was judged (see _judge_decoded)
                track.seqs.add(row.seq)
                if row.verdict == Verdict.ACCEPTED and row.device_ts is not None:
                    device_ts = datetime.fromisoformat(row.device_ts)
                    if track.newest_ts is None or device_ts > track.newest_ts:
                        track.newest_ts = device_ts
            elif row.channel == Channel.STATUS:
                payload = StatusPayload.model_validate_json(row.canonical or row.payload)
                track.status = payload.state

    def _track(self, device_id: str) -> _DeviceTrack:
        track = self._devices.get(device_id)
        if track is None:
            track = self._devices[device_id] = _DeviceTrack()
        return track

    def _count(self, verdict: str, reason: str) -> None:
        verdict, reason = str(verdict), str(reason)  # plain strings in stats, whatever enum produced them
        self._received += 1
        self._by_verdict[verdict] = self._by_verdict.get(verdict, 0) + 1
        if reason:
            self._by_reason[reason] = self._by_reason.get(reason, 0) + 1

    # --- ingest --------------------------------------------------------------------------------------------

    def ingest(self, message: RawMessage) -> IngestResult:
        return self.ingest_batch([message])[0]

    def ingest_batch(self, messages: Sequence[RawMessage]) -> list[IngestResult]:
        """Judge MQTT ``messages`` in order and archive them all in one transaction.

        Well-formed signed telemetry takes the batched fast path (``fast_decode``); every other message, and
        any the fast path has doubts about, is decoded one by one by ``_decode_mqtt``, the reference."""
        results = self._ingest_wire([m.topic for m in messages], [m.payload for m in messages],
                                    [m.received_at for m in messages], messages=messages, want_results=True)
        assert results is not None
        return results

    def ingest_wire(self, topics: Sequence[str], payloads: Sequence[bytes], received_at: Sequence[datetime]) -> int:
        """``ingest_batch`` for messages given as parallel sequences (topic, payload bytes, tz-aware receive
        time), without a ``RawMessage`` or an ``IngestResult`` per message: the high-rate path of
        ``MqttIngest``. The same verdicts, archive rows, samples and state; returns how many were judged."""
        self._ingest_wire(topics, payloads, received_at, messages=None, want_results=False)
        return len(topics)

    def _ingest_wire(self, topics: Sequence[str], payloads: Sequence[bytes], received_at: Sequence[datetime], *,
                     messages: Sequence[RawMessage] | None, want_results: bool) -> list[IngestResult] | None:
        if self._broken:
            raise RuntimeError("an archive write failed earlier; reopen with Ingestor.open to restore state")
        n = len(topics)
        if not len(payloads) == len(received_at) == n:
            raise ValueError(f"topics, payloads and received_at must have one entry a message, got {n}, "
                             f"{len(payloads)} and {len(received_at)}")
        naive = next((t for t in received_at if t.tzinfo is None), None)
        if naive is not None:  # checked before anything is judged: a refused batch changes no state
            raise ValueError(f"received_at {naive!r} must be timezone-aware UTC")
        accepted, rest = self._fast.decode_wire(topics, payloads)
        values: list[tuple[Any, ...]] = []
        counts: dict[tuple[str, str], int] = {}
        iso_of = self._received_iso
        # Judge in arrival order: the fast path's accepted messages and the oracle's, merged by index (both
        # lists are sorted), so per-device state sees the messages exactly as they came.
        a, r, n_accepted, n_rest = 0, 0, len(accepted), len(rest)
        while a < n_accepted or r < n_rest:
            if r >= n_rest or (a < n_accepted and accepted[a][0] < rest[r]):
                sample = accepted[a]
                a += 1
                i = sample[0]
                row = self._judge_fast(sample, topic=topics[i], payload=payloads[i], received_at=received_at[i],
                                       received_iso=iso_of(received_at[i]))
            else:
                i = rest[r]
                r += 1
                message = messages[i] if messages is not None else RawMessage(
                    topic=topics[i], payload=payloads[i], received_at=received_at[i])
                judged = self._judge_decoded(self._decode_mqtt(message))
                row = tuple(getattr(judged, column) for column in _ARCHIVE_COLUMNS)
            values.append(row)
            key = (row[7], row[8])
            counts[key] = counts.get(key, 0) + 1
        ids = self._archive_values(values)
        self._count_many(counts)
        if not want_results:
            return None
        return [self._result(archive_id, row) for archive_id, row in zip(ids, values, strict=True)]

    def _received_iso(self, received_at: datetime) -> str:
        # Messages read from one socket chunk share their receive time (one object): format it once.
        if received_at is not self._last_received:
            self._last_received, self._last_received_text = received_at, _iso(received_at)
        return self._last_received_text

    def _archive_values(self, values: list[tuple[Any, ...]]) -> list[int]:
        try:
            return self.archive.append_values(values)
        except BaseException:
            # In-memory state already counts these messages but the archive does not: only a reopen, which
            # rebuilds state from the archive, makes them agree again.
            self._broken = True
            raise

    def _count_many(self, counts: Mapping[tuple[str, str], int]) -> None:
        for (verdict, reason), k in counts.items():
            verdict, reason = str(verdict), str(reason)
            self._received += k
            self._by_verdict[verdict] = self._by_verdict.get(verdict, 0) + k
            if reason:
                self._by_reason[reason] = self._by_reason.get(reason, 0) + k

    @staticmethod
    def _result(archive_id: int, row: tuple[Any, ...]) -> IngestResult:
        channel = row[3]
        return IngestResult(verdict=Verdict(row[7]), reason=row[8], detail=row[9],
                            channel=Channel(channel) if channel in _CHANNELS else channel, device_id=row[4],
                            seq=row[5], archive_id=archive_id)

    def _judge_fast(self, sample: FastSample, *, topic: str, payload: bytes, received_at: datetime,
                    received_iso: str) -> tuple[Any, ...]:
        """``_judge_decoded`` + ``_judge_telemetry`` for a message the fast path accepted, on plain values: the
        same verdict, detail, state changes and sample; the archive row as a tuple in ``_ARCHIVE_COLUMNS``."""
        _, device_id, seq, ts, ts_text, p, q, v, soc, e_imp, e_exp = sample
        received_at = received_at.astimezone(UTC) if received_at.tzinfo is not UTC else received_at
        if self.transports is not None:
            speaks = self.transports.get(device_id)
            if speaks is not None and speaks != _MQTT:
                return (received_iso, topic, payload, _TELEMETRY, device_id, None, None, _REJECTED,
                        RejectReason.WRONG_TRANSPORT.value,
                        f"device_id {device_id!r} speaks {speaks} in this run, not {Transport.MQTT} ({_TELEMETRY})",
                        _MQTT, None)
        track = self._devices.get(device_id)
        if track is None:
            track = self._devices[device_id] = _DeviceTrack()
        if track.last_seen is None or received_at > track.last_seen:
            track.last_seen = received_at
        now = self._clock() if self._clock is not None else received_at
        ahead = ts - now
        if ahead > self._max_clock_skew:
            return (received_iso, topic, payload, _TELEMETRY, device_id, seq, ts_text, _REJECTED,
                    RejectReason.FUTURE_TIMESTAMP.value,
                    f"field 'ts' value {ts_text!r} is {ahead} ahead of the twin clock {_iso(now)!r} "
                    f"(max_clock_skew {self.policy.max_clock_skew})", _MQTT, None)
        if not track.seqs.add(seq):
            return (received_iso, topic, payload, _TELEMETRY, device_id, seq, ts_text, _DUPLICATE, "duplicate",
                    f"seq {seq} already received", _MQTT, None)
        newest = track.newest_ts
        if newest is not None and ts < newest - self._watermark:
            return (received_iso, topic, payload, _TELEMETRY, device_id, seq, ts_text, _LATE, "late",
                    f"ts {ts_text} is behind the watermark {_iso(newest - self._watermark)} (newest {_iso(newest)})",
                    _MQTT, None)
        if newest is None or ts > newest:
            track.newest_ts = ts
        age = received_at - ts
        if age > self._stale_after:
            quality, detail = _STALE, f"stale: age {age}"
        else:
            quality, detail = _GOOD, ""
        self._samples.append((ts, device_id, seq, quality, p, q, v, soc, e_imp, e_exp))
        if track.status is DeviceState.OFFLINE:
            track.status = DeviceState.ONLINE  # the latest word wins (see _judge_decoded)
        return (received_iso, topic, payload, _TELEMETRY, device_id, seq, ts_text, _ACCEPTED, "", detail, _MQTT,
                None)

    def ingest_batch_reference(self, messages: Sequence[RawMessage]) -> list[IngestResult]:
        """``ingest_batch`` with every message on the per-message path (the oracle the tests compare with)."""
        return self.ingest_decoded([self._decode_mqtt(message) for message in messages])

    def ingest_decoded(self, items: Sequence[Decoded]) -> list[IngestResult]:
        """Judge messages another transport authenticated and decoded, in order, and archive them all in one
        transaction (the same verdicts, reasons and archive as MQTT messages)."""
        if self._broken:
            raise RuntimeError("an archive write failed earlier; reopen with Ingestor.open to restore state")
        judged = [self._judge_decoded(item) for item in items]
        values = [tuple(getattr(row, column) for column in _ARCHIVE_COLUMNS) for row in judged]
        ids = self._archive_values(values)
        counts: dict[tuple[str, str], int] = {}
        for row in values:
            counts[(row[7], row[8])] = counts.get((row[7], row[8]), 0) + 1
        self._count_many(counts)
        return [self._result(archive_id, row) for archive_id, row in zip(ids, values, strict=True)]

    def _decode_mqtt(self, message: RawMessage) -> Decoded:
        """Parse, authenticate (Ed25519 signature) and validate one MQTT message."""
        base: dict[str, Any] = {"raw": message, "transport": Transport.MQTT, "channel": None, "device_id": None}
        seq: int | None = None
        try:
            try:
                address, channel = parse_topic(message.topic)
            except MessageError as exc:
                raise _Rejected(RejectReason.BAD_TOPIC, str(exc)) from None
            base.update(channel=channel.value, device_id=address.device_id)
            model = _MODELS.get(channel)
            if model is None:
                raise _Rejected(RejectReason.UNEXPECTED_CHANNEL, f"channel {channel.value!r} is not ingested")
            try:
                raw = decode_json_object(message.payload)
            except MessageError as exc:
                raise _Rejected(RejectReason.BAD_JSON, str(exc)) from None
            if isinstance(raw.get("seq"), int) and not isinstance(raw.get("seq"), bool):
                seq = raw["seq"]  # kept even if the payload fails later checks, for forensics
            # Authenticate before validating: a schema complaint about a forged message would only be noise,
            # and a payload replayed onto another channel must fail as a bad signature, whatever its shape.
            public_key = self.keys.get(address.device_id)
            if public_key is None:
                raise _Rejected(RejectReason.UNKNOWN_DEVICE, f"device_id {address.device_id!r} has no registered key")
            check = verify_payload(raw, topic=message.topic, public_key=public_key)
            if check is not SignatureCheck.VALID:
                raise _Rejected(RejectReason(check.value), f"field 'sig' value {raw.get('sig')!r}: {check.value}")
            try:
                payload = model.model_validate(raw)
            except ValidationError as exc:
                raise _Rejected(RejectReason.SCHEMA, describe_validation_error(exc)) from None
            if payload.device_id != address.device_id:  # type: ignore[attr-defined]
                raise _Rejected(
                    RejectReason.TOPIC_MISMATCH,
                    f"field 'device_id' value {payload.device_id!r} does not match "  # type: ignore[attr-defined]
                    f"topic device {address.device_id!r}",
                )
        except _Rejected as rejected:
            return Decoded(**base, reject=(rejected.reason, rejected.detail), seq=seq)
        return Decoded(**base, payload=payload)  # type: ignore[arg-type]

    def _judge_decoded(self, item: Decoded) -> ArchiveRow:
        message = item.raw
        received_at = message.received_at.astimezone(UTC)
        canonical = None
        if item.payload is not None and item.transport != Transport.MQTT:
            canonical = item.payload.model_dump_json()
        base: dict[str, Any] = {
            "received_at": _iso(received_at),
            "topic": message.topic,
            "payload": bytes(message.payload),
            "channel": item.channel,
            "device_id": item.device_id,
            "seq": item.seq,
            "device_ts": None,
            "transport": str(item.transport),
            "canonical": canonical,
        }
        if item.reject is not None:
            reason, detail = item.reject
            return ArchiveRow(**base, verdict=Verdict.REJECTED, reason=str(reason), detail=detail)
        payload = item.payload
        speaks = self.transports.get(item.device_id) if self.transports is not None and item.device_id else None
        if speaks is not None and speaks != item.transport:
            return ArchiveRow(**base, verdict=Verdict.REJECTED, reason=RejectReason.WRONG_TRANSPORT,
                              detail=f"device_id {item.device_id!r} speaks {speaks} in this run, not "
                              f"{item.transport} ({item.note or item.channel})")
        if item.device_id is not None:
            track = self._track(item.device_id)
            if track.last_seen is None or received_at > track.last_seen:
                track.last_seen = received_at
        if payload is None:  # a protocol message that carries no telemetry, accepted as received
            return ArchiveRow(**base, verdict=Verdict.ACCEPTED, reason="", detail=item.note or SESSION)
        track = self._track(payload.device_id)
        if isinstance(payload, TelemetryPayload):
            track.counter_seq = track.counter_seq and item.transport == Transport.MQTT
            row = self._judge_telemetry(payload, base=base, track=track, received_at=received_at)
            if row.verdict == Verdict.ACCEPTED and track.status is DeviceState.OFFLINE:
                # The latest word wins: a device that reports after an offline status (a retained one from an
                # earlier run, or one its other transport left behind) is alive.
                track.status = DeviceState.ONLINE
            if item.note and row.verdict == Verdict.ACCEPTED:
                row = ArchiveRow(**{**row.__dict__, "detail": "; ".join(p for p in (item.note, row.detail) if p)})
            return row
        if isinstance(payload, StatusPayload):
            track.status = payload.state
            detail = f"status {payload.state.value}"
        else:
            assert isinstance(payload, CommandAckPayload)
            self._acks.append(payload)
            detail = f"cmd_seq {payload.cmd_seq} {'accepted' if payload.accepted else 'refused'}"
        if item.note:
            detail = f"{item.note}: {detail}"
        return ArchiveRow(**base, verdict=Verdict.ACCEPTED, reason="", detail=detail)

    def _judge_telemetry(
        self, payload: TelemetryPayload, *, base: dict[str, Any], track: _DeviceTrack, received_at: datetime
    ) -> ArchiveRow:
        base = {**base, "seq": payload.seq, "device_ts": _iso(payload.ts)}
        now = self._clock() if self._clock is not None else received_at
        ahead = payload.ts - now
        if ahead > self._max_clock_skew:
            return ArchiveRow(
                **base, verdict=Verdict.REJECTED, reason=RejectReason.FUTURE_TIMESTAMP,
                detail=f"field 'ts' value {_iso(payload.ts)!r} is {ahead} ahead of the twin clock "
                f"{_iso(now)!r} (max_clock_skew {self.policy.max_clock_skew})",
            )
        if not track.seqs.add(payload.seq):
            return ArchiveRow(**base, verdict=Verdict.DUPLICATE, reason="duplicate",
                              detail=f"seq {payload.seq} already received")
        if track.newest_ts is not None and payload.ts < track.newest_ts - self._watermark:
            return ArchiveRow(
                **base, verdict=Verdict.LATE, reason="late",
                detail=f"ts {_iso(payload.ts)} is behind the watermark "
                f"{_iso(track.newest_ts - self._watermark)} (newest {_iso(track.newest_ts)})",
            )
        if track.newest_ts is None or payload.ts > track.newest_ts:
            track.newest_ts = payload.ts
        age = received_at - payload.ts
        quality = Quality.STALE if age > self._stale_after else Quality.GOOD
        values = [getattr(payload, quantity.value) for quantity in _QUANTITIES]
        # converted to long rows and datetime64[us, UTC] in bulk by take_samples
        self._samples.append((payload.ts, payload.device_id, payload.seq, quality.value,
                              *(None if value is None else float(value) for value in values)))
        detail = f"stale: age {age}" if quality is Quality.STALE else ""
        return ArchiveRow(**base, verdict=Verdict.ACCEPTED, reason="", detail=detail)

    # --- outputs -------------------------------------------------------------------------------------------

    def take_samples(self) -> pd.DataFrame:
        """Accepted samples since the last call, in the canonical long format (``SAMPLE_COLUMNS``)."""
        rows, self._samples = self._samples, []
        if rows:
            ts, device_id, seq, quality, *values = zip(*rows)
            # (messages × quantities), NaN where a message has no value (a sent value is always finite)
            table = np.array(values, dtype=float).T
            present = ~np.isnan(table)
            message, quantity = np.nonzero(present)  # row-major: by message, then quantity (as sent)
            frame = pd.DataFrame({
                "ts": pd.to_datetime(list(ts), utc=True)[message],
                "device_id": np.array(device_id, dtype=object)[message],
                "quantity": _QUANTITY_NAMES[quantity],
                "value": table[present],
                "quality": np.array(quality, dtype=object)[message],
                "seq": np.array(seq, dtype=np.int64)[message],
            }, columns=list(SAMPLE_COLUMNS))
        else:
            frame = pd.DataFrame([], columns=list(SAMPLE_COLUMNS))
            frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
        return frame.astype(
            {"ts": "datetime64[us, UTC]", "device_id": str, "quantity": str, "value": "float64",
             "quality": str, "seq": "int64"}
        )

    def take_command_acks(self) -> list[CommandAckPayload]:
        acks, self._acks = self._acks, []
        return acks

    def missing_seqs(self) -> dict[str, int]:
        """Per device: seqs missing between the lowest and the highest received (late ones count as received)."""
        return {device_id: track.seqs.missing for device_id, track in sorted(self._devices.items())
                if track.counter_seq}

    @property
    def received(self) -> int:
        """Messages judged so far (``stats().received`` without building the per-device tables)."""
        return self._received

    def total_missing(self) -> int:
        """``sum(missing_seqs().values())`` without building the dict."""
        return sum(t.seqs.missing for t in self._devices.values() if t.counter_seq)

    def seq_gaps(self, device_id: str) -> list[tuple[int, int]]:
        """The missing seq ranges (inclusive) of one device."""
        track = self._devices.get(device_id)
        return track.seqs.gaps() if track and track.counter_seq else []

    def last_seen(self) -> dict[str, datetime]:
        """When each device last sent an authenticated message (any channel, received_at)."""
        return {d: t.last_seen for d, t in sorted(self._devices.items()) if t.last_seen is not None}

    def offline_devices(self, *, now: datetime, timeout: pd.Timedelta, expected: Sequence[str] = ()) -> list[str]:
        """Devices silent for longer than ``timeout``, or whose last status is ``offline``; ``expected`` devices
        never heard from count as offline too."""
        seen = self.last_seen()
        offline = {d for d, t in seen.items() if now - t > timeout}
        offline |= {d for d, t in self._devices.items() if t.status is DeviceState.OFFLINE}
        offline |= {d for d in expected if d not in seen}
        return sorted(offline)

    def stats(self) -> IngestStats:
        return IngestStats(
            received=self._received,
            by_verdict=dict(self._by_verdict),
            by_reason=dict(self._by_reason),
            missing_seqs=self.missing_seqs(),
            last_seen=self.last_seen(),
            status={d: t.status for d, t in sorted(self._devices.items()) if t.status is not None},
        )

    def close(self) -> None:
        self.archive.close()


class _Inbox:
    """The bounded queue between paho's network thread and the ingest worker: whole reads go in (a list of
    messages and their one receive time), batches of up to ``batch`` messages come out; ``limit`` bounds the
    messages held, so a full inbox makes the network thread wait (TCP then pushes back on the broker). The
    worker is woken only when the inbox stops being empty or holds a full batch, not at every read."""

    def __init__(self, limit: int, batch: int) -> None:
        self._limit = max(1, limit)
        self._batch = max(1, batch)
        self._reads: deque[tuple[list[Publish], datetime]] = deque()
        self._size = 0
        lock = threading.Lock()
        self._not_empty = threading.Condition(lock)
        self._not_full = threading.Condition(lock)

    def __len__(self) -> int:
        return self._size

    def put(self, publishes: list[Publish], received_at: datetime) -> None:
        with self._not_full:
            while self._size >= self._limit:
                self._not_full.wait(0.1)
            before = self._size
            self._reads.append((publishes, received_at))
            self._size += len(publishes)
            if before == 0 or (before < self._batch <= self._size):
                self._not_empty.notify()

    def take(self, *, timeout_s: float, linger_s: float = 0.0) -> list[tuple[list[Publish], datetime]]:
        """Up to ``batch`` messages, read by read (the last one split if needed); [] after ``timeout_s`` with
        nothing to take. Once something is there, wait up to ``linger_s`` more for a full batch."""
        with self._not_empty:
            if not self._reads and not self._not_empty.wait_for(lambda: bool(self._reads), timeout_s):
                return []
            if linger_s > 0 and self._size < self._batch:
                self._not_empty.wait_for(lambda: self._size >= self._batch, linger_s)
            taken, count = [], 0
            while self._reads and count < self._batch:
                publishes, received_at = self._reads.popleft()
                room = self._batch - count
                if len(publishes) > room:
                    self._reads.appendleft((publishes[room:], received_at))
                    publishes = publishes[:room]
                taken.append((publishes, received_at))
                count += len(publishes)
            self._size -= count
            self._not_full.notify_all()
            return taken

    def clear(self) -> int:
        with self._not_full:
            dropped, self._size = self._size, 0
            self._reads.clear()
            self._not_full.notify_all()
            return dropped


class MqttIngest:
    """Feeds an ``Ingestor`` from the broker: QoS 1, a fixed client id and a persistent session.

    The paho network thread only enqueues, a whole socket read at a time (``mqtt.BulkReadClient``: no paho
    message object per PUBLISH); one worker thread judges and archives batches under a lock
    (``Ingestor.ingest_wire``), then acknowledges them (paho ``manual_ack``). A message is therefore PUBACKed
    only once archived: after a crash the broker redelivers it to the next session and the restored
    ``Ingestor`` marks it ``duplicate``.
    ``clean_start`` discards whatever session the broker kept for ``client_id`` (a new run starts clean; a
    resumed one passes False to get what was queued for it meanwhile).
    """

    def __init__(
        self,
        *,
        ingestor: Ingestor,
        host: str,
        port: int,
        credentials: BrokerCredentials,
        client_id: str = "gridtwin-ingest",
        site: str = "+",
        session_expiry: pd.Timedelta = pd.Timedelta(days=1),
        clean_start: bool = False,
        keepalive_s: int = 10,
        max_batch: int = 1000,
        telemetry_qos: int = 1,
        devices: Sequence[DeviceAddress] | None = None,
        protocol: Literal["5", "3.1.1"] = "5",
        max_inbox: int = 50_000,
        batch_linger: pd.Timedelta = pd.Timedelta(milliseconds=20),
    ) -> None:
        if protocol not in ("5", "3.1.1"):
            raise ValueError(f"protocol={protocol!r} must be '5' or '3.1.1'")
        #: MQTT 3.1.1 costs paho half the CPU per received message (no MQTT 5 properties object per PUBLISH):
        #: for an ingest of high-rate telemetry. Its persistent session is clean_session=False, which the broker
        #: expires after ``persistent_client_expiration`` (mosquitto.conf) instead of ``session_expiry``.
        self._protocol = protocol
        if telemetry_qos not in (0, 1):
            raise ValueError(f"telemetry_qos={telemetry_qos!r} must be 0 or 1")
        self._telemetry_qos = telemetry_qos
        #: Subscribe to these devices' own topics only (one ingest process of several, each owning a share of
        #: the fleet, so per-device dedupe and sequence state stay in one process); None: every device.
        self._devices = tuple(devices) if devices is not None else None
        self._ingestor = ingestor
        self._host = host
        self._port = port
        self._credentials = credentials
        self._client_id = client_id
        self._site = site
        self._session_expiry = session_expiry
        self._clean_start = clean_start
        self._keepalive_s = keepalive_s
        self._max_batch = max_batch
        if not isinstance(batch_linger, pd.Timedelta) or not pd.Timedelta(0) <= batch_linger <= pd.Timedelta(seconds=1):
            raise ValueError(f"batch_linger={batch_linger!r} must be a pd.Timedelta between 0 and 1 s")
        #: How long the worker waits for a full batch once a message is there: a commit (and an fsync) per
        #: ~20 ms instead of one per socket read costs the archive far less at a few thousand msg/s.
        self._linger_s = batch_linger.total_seconds()
        self._lock = threading.Lock()
        # Bounded: when the worker falls behind, the network thread waits, TCP pushes back, and the broker drops
        # QoS-0 telemetry at its own queue limit (counted here as sequence gaps) instead of this process
        # queueing without end; QoS-1 messages wait at the broker, unacknowledged.
        self._inbox = _Inbox(max_inbox, max_batch)
        self._client: mqtt.Client | None = None
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._subscribed = threading.Event()
        self._pending_subacks = 0
        self._worker_error: BaseException | None = None
        self.session_present = False

    def topics(self) -> list[str]:
        if self._devices is not None:
            return [d.topic(c) for d in self._devices for c in (Channel.TELEMETRY, Channel.STATUS, Channel.CMD_ACK)]
        base = f"{TOPIC_ROOT}/{self._site}/+/+"
        return [f"{base}/{Channel.TELEMETRY.value}", f"{base}/{Channel.STATUS.value}", f"{base}/{Channel.CMD_ACK.value}"]

    def _subscriptions(self) -> list[tuple[str, SubscribeOptions]]:
        # Telemetry at QoS 0 (as Sparkplug B sends data): the broker then never queues or retries it, and a lost
        # sample shows as a sequence gap while the cumulative registers keep settlement exact. Status and
        # command acknowledgements stay QoS 1.
        qos = [(topic, self._telemetry_qos if topic.endswith("/telemetry") else 1) for topic in self.topics()]
        if self._protocol == "3.1.1":
            return qos  # type: ignore[return-value]
        return [(topic, SubscribeOptions(qos=q)) for topic, q in qos]

    # --- paho callbacks (network thread) ---------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: object, _flags: Any, reason_code: Any, _props: Any) -> None:
        if reason_code.is_failure:
            return
        # Re-subscribing is harmless on a resumed session and needed when the broker expired it. A share of a
        # large fleet goes in several SUBSCRIBE packets; SUBACK of the last one means all are in place.
        subscriptions = self._subscriptions()
        chunk = 600
        self._pending_subacks = -(-len(subscriptions) // chunk)
        for i in range(0, len(subscriptions), chunk):
            client.subscribe(subscriptions[i:i + chunk])

    def _on_subscribe(self, _client: mqtt.Client, _userdata: object, _mid: int, reason_codes: Any, _props: Any) -> None:
        failures = [str(code) for code in reason_codes if code.is_failure]
        if failures:
            self._worker_error = ConnectionError(f"broker refused subscriptions {self.topics()[:6]}: {failures[:6]}")
        self._pending_subacks -= 1
        if self._pending_subacks <= 0:
            self._subscribed.set()

    def _on_publishes(self, publishes: list[Publish], received_at: datetime) -> None:
        self._inbox.put(publishes, received_at)

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        # What BulkReadClient leaves to paho (a QoS-2 PUBLISH, a topic alias), or every message on a paho
        # without the bulk read path.
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = message._topic.decode("utf-8", "replace")  # archived (and rejected as a bad topic) all the same
        self._inbox.put([(topic, bytes(message.payload), message.mid, message.qos)], datetime.now(UTC))

    # --- worker ----------------------------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            while True:
                reads = self._inbox.take(timeout_s=0.05, linger_s=self._linger_s)
                if not reads:
                    if self._stopping.is_set():
                        return
                    continue
                topics: list[str] = []
                payloads: list[bytes] = []
                received: list[datetime] = []
                for publishes, received_at in reads:
                    topics += [p[0] for p in publishes]
                    payloads += [p[1] for p in publishes]
                    received += [received_at] * len(publishes)
                with self._lock:
                    self._ingestor.ingest_wire(topics, payloads, received)
                    # Acknowledge only after the commit, so the broker keeps anything we could still lose.
                    client = self._client
                    if client is not None:
                        for publishes, _ in reads:
                            for _, _, mid, qos in publishes:
                                if qos > 0:
                                    client.ack(mid, qos)
        except BaseException as exc:  # surfaced by stats()/stop(): a dead worker must not look healthy
            self._worker_error = exc

    # --- lifecycle -------------------------------------------------------------------------------------------

    def start(self, *, timeout_s: float = 10.0) -> MqttIngest:
        if self._client is not None:
            raise RuntimeError("MqttIngest already started")
        self._stopping.clear()
        self._subscribed.clear()
        self._worker = threading.Thread(target=self._work, name=f"ingest-{self._client_id}", daemon=True)
        self._worker.start()
        client = make_client(client_id=self._client_id, credentials=self._credentials, manual_ack=True,
                             protocol=mqtt.MQTTv5 if self._protocol == "5" else mqtt.MQTTv311,
                             clean_session=self._clean_start, on_publishes=self._on_publishes,
                             read_linger_s=min(self._linger_s / 4, 0.005))
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        try:
            self.session_present = connect_and_wait(
                client, host=self._host, port=self._port, keepalive_s=self._keepalive_s,
                clean_start=self._clean_start,
                session_expiry_s=int(self._session_expiry.total_seconds()), timeout_s=timeout_s,
            )
            if not self._subscribed.wait(timeout_s):
                raise ConnectionError(f"no SUBACK from {self._host}:{self._port} within {timeout_s} s")
            if self._worker_error is not None:
                raise self._worker_error
        except BaseException:
            self._shutdown(graceful=True)
            raise
        return self

    def stop(self) -> None:
        """Disconnect cleanly, archive whatever was already received, and stop the worker. Received messages
        whose PUBACK could not be sent any more are redelivered to the next session (and become duplicates)."""
        self._shutdown(graceful=True)

    def abort(self) -> int:
        """Fault injection: drop the TCP connection without DISCONNECT, as a network failure would, and discard
        received messages still queued for archiving; return how many. None of them was acknowledged, so the
        broker redelivers them to the next session with the same client id."""
        return self._shutdown(graceful=False)

    def _shutdown(self, *, graceful: bool) -> int:
        discarded = 0
        client = self._client
        if client is not None and not graceful:
            client.loop_stop()  # end the network thread first: from now on nothing reads or writes the socket
        with self._lock:
            # Under the lock: the worker acknowledges only while holding it, so no PUBACK follows this point.
            self._client = None
            if not graceful:
                discarded = self._inbox.clear()  # a crash loses the in-memory queue
        if client is not None:
            if graceful:
                client.disconnect()
                client.loop_stop()
            else:
                sock = client.socket()
                if sock is not None:
                    sock.close()  # TCP close without MQTT DISCONNECT, as when the process dies
        self._stopping.set()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        return discarded

    def __enter__(self) -> MqttIngest:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # --- thread-safe reads -------------------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[Ingestor]:
        """The ingestor, with the worker paused (for reads such as ``archive.count()``)."""
        with self._lock:
            yield self._ingestor

    def stats(self) -> IngestStats:
        if self._worker_error is not None:
            raise RuntimeError(f"ingest worker failed: {self._worker_error!r}") from self._worker_error
        with self._lock:
            return self._ingestor.stats()

    def take_samples(self) -> pd.DataFrame:
        with self._lock:
            return self._ingestor.take_samples()

    def backlog(self) -> int:
        """Messages received from the broker and not yet judged and archived (approximate, without the lock)."""
        return len(self._inbox)

    def total_missing(self) -> int:
        """Telemetry sequence numbers missing so far, over every device."""
        with self._lock:
            return self._ingestor.total_missing()

    def wait_until(
        self, predicate: Callable[[IngestStats], bool], *, timeout_s: float, poll_s: float = 0.05
    ) -> IngestStats:
        """Poll ``stats()`` until ``predicate`` holds; return the last stats either way (callers assert)."""
        deadline = time.monotonic() + timeout_s
        stats = self.stats()
        while not predicate(stats) and time.monotonic() < deadline:
            time.sleep(poll_s)
            stats = self.stats()
        return stats

