"""The fast accept path of MQTT telemetry: a batch decoded with msgspec, its Ed25519 signatures checked in one
tight loop (libsodium where the system has it: ``ed25519_fast``), its fields checked by scalar tests; only
what passes every check is accepted here.

Anything this path cannot accept (a bad signature, a field out of range, an unknown topic, a payload that is
not a JSON object) goes back to the ``Ingestor``'s per-message path, which stays the oracle: it names the
field and the value, and the tests assert both paths give the same verdict on every message. A message is
never rejected here, so the fast path can only be faster, never stricter or looser than the oracle.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from twin.live.canonical import RawMessage
from twin.live.ed25519_fast import Verifier, verifier_for
from twin.live.messages import _SEGMENT, Channel, TelemetryPayload, parse_topic
from twin.live.signing import SIG_FIELD

__all__ = ["FastTelemetryDecoder"]

_decode = msgspec.json.decode
# Sorted keys, compact, UTF-8 as is: the bytes ``signing.canonical_bytes`` makes, for the values a device sends
# (floats by shortest round-trip repr in both). Where they could differ the signature check fails here and the
# message goes to the oracle, which builds the canonical bytes with Python's json.
_encode_sorted = msgspec.json.Encoder(order="sorted").encode
_REQUIRED = ("device_id", "seq", "ts", "p_kw", "q_kvar", "e_imp_kwh", "e_exp_kwh")
_ALLOWED = frozenset((*_REQUIRED, "soc_pct", "v_pu", SIG_FIELD))
_ZERO = timedelta(0)


def _number(value: Any) -> bool:
    # JSON numbers decode to int or float; bool is an int subclass the schema refuses as a number only in
    # strict fields, so any bool goes to the oracle.
    t = type(value)
    return (t is float and math.isfinite(value)) or t is int


def _telemetry(raw: dict[str, Any], ts: datetime) -> TelemetryPayload | None:
    """The payload, when every field passes the schema's checks (``messages.TelemetryPayload``), else None."""
    if not all(key in _ALLOWED for key in raw) or not all(key in raw for key in _REQUIRED):
        return None
    seq, device_id = raw["seq"], raw["device_id"]
    if type(seq) is not int or not 0 <= seq < 2**63 or type(device_id) is not str or not _SEGMENT.match(device_id):
        return None
    p, q, e_imp, e_exp = raw["p_kw"], raw["q_kvar"], raw["e_imp_kwh"], raw["e_exp_kwh"]
    if not (_number(p) and _number(q) and _number(e_imp) and _number(e_exp) and e_imp >= 0 and e_exp >= 0):
        return None
    soc, v = raw.get("soc_pct"), raw.get("v_pu")
    if soc is not None and not (_number(soc) and 0.0 <= soc <= 100.0):
        return None
    if v is not None and not (_number(v) and 0.0 < v < 2.0):
        return None
    return TelemetryPayload.model_construct(
        device_id=device_id, sig=raw[SIG_FIELD], seq=seq, ts=ts, p_kw=float(p), q_kvar=float(q),
        soc_pct=None if soc is None else float(soc), v_pu=None if v is None else float(v),
        e_imp_kwh=float(e_imp), e_exp_kwh=float(e_exp),
    )


def _parse_ts(value: Any) -> datetime | None:
    """A UTC ISO 8601 time with microseconds at most (what devices send), else None (the oracle decides)."""
    if type(value) is not str or not value.endswith("Z") or len(value) > 27:
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts if ts.utcoffset() == _ZERO else None


class FastTelemetryDecoder:
    """Accepts the well-formed, correctly signed telemetry of a batch; returns the indices it leaves to the
    oracle. Keeps a cache of topic → (device_id, public key, canonical prefix) for registered devices only, so
    its memory is bounded by the key registry, whatever topics a sender invents."""

    def __init__(self, keys: Any) -> None:
        self._keys = keys
        self._topics: dict[str, tuple[str, Ed25519PublicKey, bytes, Verifier]] = {}
        self._cache_limit = 4 * max(len(keys), 1) + 1024

    def _topic(self, topic: str) -> tuple[str, Ed25519PublicKey, bytes, Verifier] | None:
        hit = self._topics.get(topic)
        if hit is not None and self._keys.get(hit[0]) is hit[1]:  # a re-provisioned key replaces the cached one
            return hit
        entry = None
        try:
            address, channel = parse_topic(topic)
        except ValueError:
            return None
        key = self._keys.get(address.device_id)
        if channel is Channel.TELEMETRY and key is not None:
            entry = (address.device_id, key, topic.encode("utf-8") + b"\n", verifier_for(key))
            if len(self._topics) < self._cache_limit:
                self._topics[topic] = entry
        return entry

    def decode(self, messages: Sequence[RawMessage]) -> tuple[dict[int, TelemetryPayload], list[int]]:
        """(index → accepted telemetry payload, indices left to the oracle), for ``messages`` in order."""
        pending: list[tuple[int, Verifier, bytes, bytes, dict[str, Any], datetime]] = []
        rest: list[int] = []
        for i, message in enumerate(messages):
            entry = self._topic(message.topic)
            if entry is None:
                rest.append(i)
                continue
            try:
                raw = _decode(message.payload)
            except msgspec.DecodeError:
                rest.append(i)
                continue
            if type(raw) is not dict:
                rest.append(i)
                continue
            sig = raw.get(SIG_FIELD)
            ts = _parse_ts(raw.get("ts"))
            if type(sig) is not str or len(sig) != 88 or ts is None or raw.get("device_id") != entry[0]:
                rest.append(i)
                continue
            try:
                signature = base64.b64decode(sig, validate=True)
            except (binascii.Error, ValueError):
                rest.append(i)
                continue
            body = {k: v for k, v in raw.items() if k != SIG_FIELD}
            try:
                canonical = entry[2] + _encode_sorted(body)
            except (msgspec.EncodeError, TypeError, ValueError):
                rest.append(i)
                continue
            pending.append((i, entry[3], signature, canonical, raw, ts))
        accepted: dict[int, TelemetryPayload] = {}
        # The batch's signatures in one loop over pre-built keys and bytes: nothing else runs between them.
        for i, verify, signature, canonical, raw, ts in pending:
            if not verify(signature, canonical):
                rest.append(i)
                continue
            payload = _telemetry(raw, ts)
            if payload is None:
                rest.append(i)
            else:
                accepted[i] = payload
        rest.sort()
        return accepted, rest
