"""The fast accept path of MQTT telemetry: a batch decoded with msgspec, its Ed25519 signatures checked in one
tight loop (libsodium where the system has it: ``ed25519_fast``), its fields checked by scalar tests; only
what passes every check is accepted here.

Anything this path cannot accept (a bad signature, a field out of range, an unknown topic, a payload that is
not a JSON object) goes back to the ``Ingestor``'s per-message path, which stays the oracle: it names the
field and the value, and the tests assert both paths give the same verdict on every message. A message is
never rejected here, so the fast path can only be faster, never stricter or looser than the oracle.
"""

from __future__ import annotations

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
_b64decode = binascii.a2b_base64
_REQUIRED = frozenset(("device_id", "seq", "ts", "p_kw", "q_kvar", "e_imp_kwh", "e_exp_kwh"))
_ALLOWED = frozenset((*_REQUIRED, "soc_pct", "v_pu"))  # besides ``sig``, which is taken out first
_ZERO = timedelta(0)
_isfinite = math.isfinite

#: One accepted telemetry message of a batch, as plain values (no model object):
#: (index in the batch, device_id, seq, ts, ts as the archive writes it, p_kw, q_kvar, v_pu, soc_pct,
#: e_imp_kwh, e_exp_kwh), the quantities in ``twin.telemetry.Quantity`` order, None where the device sent none.
FastSample = tuple[int, str, int, datetime, str, float, float, float | None, float | None, float, float]


def _number(value: Any) -> bool:
    # JSON numbers decode to int or float; bool is an int subclass the schema refuses as a number only in
    # strict fields, so any bool goes to the oracle.
    t = type(value)
    return (t is float and _isfinite(value)) or t is int


def _parse_ts(value: Any) -> tuple[datetime, str] | None:
    """A UTC ISO 8601 time with microseconds at most (what devices send), and its archive form
    (``+00:00``, microseconds), else None (the oracle decides)."""
    if type(value) is not str or not value.endswith("Z") or len(value) > 27:
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    if ts.utcoffset() != _ZERO:
        return None
    if len(value) == 27 and value[19] == ".":  # already microseconds: only the zone suffix differs
        return ts, value[:26] + "+00:00"
    return ts, ts.isoformat(timespec="microseconds")


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

    def decode_wire(self, topics: Sequence[str], payloads: Sequence[bytes]) -> tuple[list[FastSample], list[int]]:
        """(accepted telemetry as plain values, indices left to the oracle) of one batch given as parallel
        sequences of topics and payload bytes, in order. No per-message object is built beyond the decoded
        JSON and the returned tuple."""
        pending: list[tuple[int, Verifier, bytes, bytes, dict[str, Any], datetime, str, str]] = []
        rest: list[int] = []
        cache, keys_get, topic_entry = self._topics, self._keys.get, self._topic
        decode, encode, b64decode, parse_ts = _decode, _encode_sorted, _b64decode, _parse_ts
        for i, topic in enumerate(topics):
            entry = cache.get(topic)
            if entry is None or keys_get(entry[0]) is not entry[1]:
                entry = topic_entry(topic)
                if entry is None:
                    rest.append(i)
                    continue
            try:
                raw = decode(payloads[i])
            except msgspec.DecodeError:
                rest.append(i)
                continue
            if type(raw) is not dict:
                rest.append(i)
                continue
            device_id = entry[0]
            sig = raw.pop(SIG_FIELD, None)
            parsed = parse_ts(raw.get("ts"))
            if type(sig) is not str or len(sig) != 88 or parsed is None or raw.get("device_id") != device_id:
                rest.append(i)
                continue
            try:
                # a2b_base64 in strict mode is b64decode(validate=True) without its Python wrapper
                signature = b64decode(sig, strict_mode=True)
                canonical = entry[2] + encode(raw)  # raw without sig: the body the signature covers
            except (binascii.Error, ValueError, TypeError, msgspec.EncodeError):
                rest.append(i)
                continue
            pending.append((i, entry[3], signature, canonical, raw, parsed[0], parsed[1], device_id))
        accepted: list[FastSample] = []
        # The batch's signatures in one loop over pre-built keys and bytes: nothing else runs between them.
        for i, verify, signature, canonical, raw, ts, ts_text, device_id in pending:
            if not verify(signature, canonical):
                rest.append(i)
                continue
            sample = _checked(raw, i, device_id, ts, ts_text)
            if sample is None:
                rest.append(i)
            else:
                accepted.append(sample)
        rest.sort()
        return accepted, rest

    def decode(self, messages: Sequence[RawMessage]) -> tuple[dict[int, TelemetryPayload], list[int]]:
        """(index → accepted telemetry payload, indices left to the oracle), for ``messages`` in order (the
        ``decode_wire`` verdicts as payload models, for callers that want them)."""
        accepted, rest = self.decode_wire([m.topic for m in messages], [m.payload for m in messages])
        return {s[0]: _payload(s) for s in accepted}, rest


def _checked(raw: dict[str, Any], i: int, device_id: str, ts: datetime, ts_text: str) -> FastSample | None:
    """The sample, when every field passes the schema's checks (``messages.TelemetryPayload``), else None."""
    keys = raw.keys()
    if not keys <= _ALLOWED or not _REQUIRED <= keys:
        return None
    seq = raw["seq"]
    if type(seq) is not int or not 0 <= seq < 2**63 or not _SEGMENT.match(device_id):
        return None
    p, q, e_imp, e_exp = raw["p_kw"], raw["q_kvar"], raw["e_imp_kwh"], raw["e_exp_kwh"]
    if not (_number(p) and _number(q) and _number(e_imp) and _number(e_exp) and e_imp >= 0 and e_exp >= 0):
        return None
    soc, v = raw.get("soc_pct"), raw.get("v_pu")
    if soc is not None:
        if not (_number(soc) and 0.0 <= soc <= 100.0):
            return None
        soc = float(soc)
    if v is not None:
        if not (_number(v) and 0.0 < v < 2.0):
            return None
        v = float(v)
    return (i, device_id, seq, ts, ts_text, float(p), float(q), v, soc, float(e_imp), float(e_exp))


def _payload(sample: FastSample) -> TelemetryPayload:
    _, device_id, seq, ts, _, p, q, v, soc, e_imp, e_exp = sample
    return TelemetryPayload.model_construct(device_id=device_id, sig=None, seq=seq, ts=ts, p_kw=p, q_kvar=q,
                                            soc_pct=soc, v_pu=v, e_imp_kwh=e_imp, e_exp_kwh=e_exp)
