"""The batched fast path of the ingest (``twin.live.fast_decode``) against the per-message reference path: the
same verdict, reason, samples and archive rows for every message, good or bad."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path

import pytest

from twin.live.device import encode_payload
from twin.live.fast_decode import FastTelemetryDecoder
from twin.live.ingest import Ingestor, RawMessage
from twin.live.messages import Channel
from twin.live.signing import sign_payload

try:
    from live_fixtures import T0, device_key, make_fleet, raw, registry_for, signed_telemetry, telemetry_dict
except ImportError:  # tests/ collected as a package
    from tests.live_fixtures import T0, device_key, make_fleet, raw, registry_for, signed_telemetry, telemetry_dict

FLEET = make_fleet(3)
A, B, C = FLEET


def _signed(device, payload: dict, *, topic: str | None = None) -> bytes:  # type: ignore[no-untyped-def]
    topic = topic or device.topic(Channel.TELEMETRY)
    return encode_payload(sign_payload(payload, topic=topic, private_key=device_key(device.device_id)))


def _corpus() -> list[RawMessage]:
    """Good telemetry, and one message for each way telemetry can be wrong (each checked by the oracle)."""
    at = T0 + timedelta(seconds=1)
    good = [raw(d, signed_telemetry(d, seq=s, ts=T0 + timedelta(seconds=s), soc_pct=40.0 + s, v_pu=1.01),
                received_at=at) for s in range(3) for d in FLEET]
    bad_payloads = [
        telemetry_dict(A.device_id, seq=10, ts=T0, extra_field=1),  # extra field
        telemetry_dict(A.device_id, seq=True, ts=T0),  # bool seq
        telemetry_dict(A.device_id, seq=-1, ts=T0),  # negative seq
        {**telemetry_dict(A.device_id, seq=11, ts=T0), "ts": "2024-06-01T12:00:00"},  # naive ts
        {**telemetry_dict(A.device_id, seq=12, ts=T0), "ts": "2024-06-01T14:00:00+02:00"},  # not UTC
        telemetry_dict(A.device_id, seq=13, ts=T0, soc_pct=100.5),  # soc out of range
        telemetry_dict(A.device_id, seq=14, ts=T0, v_pu=2.0),  # v_pu at the open bound
        {**telemetry_dict(A.device_id, seq=15, ts=T0), "e_imp_kwh": -1.0},  # negative register
        {**telemetry_dict(A.device_id, seq=16, ts=T0), "p_kw": "1.5"},  # string number
        {**telemetry_dict(A.device_id, seq=17, ts=T0), "p_kw": True},  # bool number
        {k: v for k, v in telemetry_dict(A.device_id, seq=18, ts=T0).items() if k != "q_kvar"},  # missing field
        telemetry_dict(B.device_id, seq=19, ts=T0),  # device_id of another device on A's topic
        {**telemetry_dict(A.device_id, seq=20, ts=T0), "p_kw": 1, "soc_pct": 50},  # ints where floats: accepted
        telemetry_dict(A.device_id, seq=21, ts=T0, soc_pct=None),  # explicit null: accepted
    ]
    bad = [raw(A, _signed(A, payload), received_at=at) for payload in bad_payloads]
    forged = json.loads(signed_telemetry(A, seq=30, ts=T0))
    forged["p_kw"] = 99.0  # changed after signing
    other_key = signed_telemetry(A, seq=31, ts=T0, signer=B.device_id)
    no_sig = {k: v for k, v in json.loads(signed_telemetry(A, seq=32, ts=T0)).items() if k != "sig"}
    short_sig = {**json.loads(signed_telemetry(A, seq=33, ts=T0)), "sig": base64.b64encode(b"x" * 10).decode()}
    bad += [raw(A, encode_payload(p), received_at=at) for p in (forged, no_sig, short_sig)]
    bad += [
        raw(A, other_key, received_at=at),
        raw(A, b"\xff\xfe", received_at=at),  # not UTF-8
        raw(A, b"[1, 2]", received_at=at),  # not an object
        raw(A, b'{"seq": NaN}', received_at=at),  # not JSON
        raw(A, b'{"p_kw": 1e400}', received_at=at),  # overflows to inf
        RawMessage(topic="der/x/battery/nobody/telemetry", payload=signed_telemetry(A, seq=41, ts=T0), received_at=at),
        RawMessage(topic="not/a/topic", payload=b"{}", received_at=at),
        raw(A, signed_telemetry(A, seq=0, ts=T0), received_at=at),  # duplicate of a good one
        raw(A, signed_telemetry(A, seq=50, ts=T0 + timedelta(hours=1)), received_at=at),  # ahead of the clock
        raw(A, _signed(A, {"device_id": A.device_id, "state": "online"}, topic=A.topic(Channel.STATUS)),
            received_at=at, channel=Channel.STATUS),
    ]
    return good + bad


def _run(tmp_path: Path, name: str, *, reference: bool) -> tuple[list, list, list]:  # type: ignore[type-arg]
    ingestor = Ingestor.open(tmp_path / f"{name}.db", keys=registry_for(FLEET))
    try:
        batch = ingestor.ingest_batch_reference if reference else ingestor.ingest_batch
        results = batch(_corpus())
        verdicts = [(r.verdict, r.reason, r.detail, r.device_id, r.seq, r.channel) for r in results]
        samples = ingestor.take_samples().values.tolist()
        columns = "received_at, topic, payload, channel, device_id, seq, device_ts, verdict, reason, detail"
        rows = ingestor.archive._db.execute(f"SELECT {columns} FROM raw_messages ORDER BY id").fetchall()
        return verdicts, samples, rows
    finally:
        ingestor.close()


def test_fast_path_gives_the_reference_verdicts_samples_and_archive(tmp_path: Path) -> None:
    fast, reference = _run(tmp_path, "fast", reference=False), _run(tmp_path, "reference", reference=True)
    assert fast == reference
    verdicts = [v[0].value for v in fast[0]]
    # 9 good, 4 among the odd-looking ones (the schema's lax mode takes "1.5" and true as numbers; ints for
    # floats; an explicit null) and the status; the duplicate and the sample ahead of the clock are judged after
    # decoding, alike on both paths.
    assert verdicts.count("accepted") == 14
    assert verdicts.count("duplicate") == 1
    # 6 quantities per good sample; 4 for seqs 16, 17, 21 (no soc, no v); 5 for seq 20 (soc)
    assert len(fast[1]) == 9 * 6 + 3 * 4 + 5


def test_fast_path_accepts_only_well_formed_signed_telemetry(tmp_path: Path) -> None:
    corpus = _corpus()
    accepted, rest = FastTelemetryDecoder(registry_for(FLEET)).decode(corpus)
    assert sorted(accepted) == [*range(9), 9 + 12, 9 + 13, len(corpus) - 3, len(corpus) - 2]
    assert sorted([*accepted, *rest]) == list(range(len(corpus)))
    assert all(p.device_id == corpus[i].topic.split("/")[3] for i, p in accepted.items())


def test_topic_cache_follows_a_reprovisioned_key() -> None:
    keys = registry_for(FLEET)
    decoder = FastTelemetryDecoder(keys)
    message = raw(A, signed_telemetry(A, seq=0, ts=T0), received_at=T0)
    assert list(decoder.decode([message])[0]) == [0]
    from twin.live.signing import new_private_key

    keys.add(device_id=A.device_id, public_key=new_private_key().public_key())
    accepted, rest = decoder.decode([message])
    assert (accepted, rest) == ({}, [0])  # the old key's signature no longer passes; the oracle rejects it


@pytest.mark.parametrize("value", [1e-05, 123456789.123, -0.0, 5e-324, 1.7976931348623157e308])
def test_unusual_floats_verify_on_some_path(tmp_path: Path, value: float) -> None:
    ingestor = Ingestor.open(tmp_path / "a.db", keys=registry_for(FLEET))
    try:
        message = raw(A, signed_telemetry(A, seq=0, ts=T0, p_kw=value), received_at=T0)
        assert ingestor.ingest_batch([message])[0].verdict.value == "accepted"
    finally:
        ingestor.close()


def test_the_fast_verifier_agrees_with_cryptography() -> None:
    from cryptography.exceptions import InvalidSignature

    from twin.live.ed25519_fast import verifier_for
    from twin.live.signing import new_private_key

    key, other = new_private_key(), new_private_key()
    message = b"der/feeder1/battery/dev0000/telemetry\n{}"
    good = key.sign(message)
    # S + L (the group order) verifies the same equation but is not canonical: RFC 8032 refuses it, as do both.
    order = 2**252 + 27742317777372353535851937790883648493
    s_plus_l = good[:32] + (int.from_bytes(good[32:], "little") + order).to_bytes(32, "little")
    cases = [(good, message, True), (good, message + b" ", False), (other.sign(message), message, False),
             (s_plus_l, message, False), (bytes(64), message, False), (good[:63], message, False)]
    check = verifier_for(key.public_key())
    for signature, text, valid in cases:
        try:
            key.public_key().verify(signature, text)
            reference = True
        except InvalidSignature:
            reference = False
        assert (check(signature, text), reference) == (valid, valid)


def test_the_fast_signer_signs_exactly_as_cryptography() -> None:
    """Ed25519 is deterministic (RFC 8032): libsodium's signature of a message is cryptography's, byte for byte."""
    from twin.live.ed25519_fast import BACKEND, signer_for
    from twin.live.signing import new_private_key

    for size in (0, 1, 64, 1000):
        key = new_private_key()
        message = bytes(range(256)) * 4
        message = message[:size]
        assert signer_for(key)(message) == key.sign(message)
    assert BACKEND in ("libsodium", "cryptography")


def test_the_wire_path_gives_the_reference_archive_and_samples(tmp_path: Path) -> None:
    """``ingest_wire`` (MqttIngest's path: parallel topics, payloads and receive times, no result objects) judges
    the corpus exactly as the per-message reference does."""
    corpus = _corpus()
    reference = _run(tmp_path, "reference-wire", reference=True)
    ingestor = Ingestor.open(tmp_path / "wire.db", keys=registry_for(FLEET))
    try:
        assert ingestor.ingest_wire([m.topic for m in corpus], [m.payload for m in corpus],
                                    [m.received_at for m in corpus]) == len(corpus)
        samples = ingestor.take_samples().values.tolist()
        columns = "received_at, topic, payload, channel, device_id, seq, device_ts, verdict, reason, detail"
        rows = ingestor.archive._db.execute(f"SELECT {columns} FROM raw_messages ORDER BY id").fetchall()
        assert (samples, rows) == (reference[1], reference[2])
        assert ingestor.stats().by_verdict == {"accepted": 14, "duplicate": 1, "rejected": len(corpus) - 15}
    finally:
        ingestor.close()


def test_the_wire_path_refuses_a_naive_receive_time_before_judging(tmp_path: Path) -> None:
    ingestor = Ingestor.open(tmp_path / "naive.db", keys=registry_for(FLEET))
    try:
        good = raw(A, signed_telemetry(A, seq=0, ts=T0), received_at=T0)
        naive = "received_at datetime.datetime\\(2024, 6, 1, 12, 0\\) must be timezone-aware"
        with pytest.raises(ValueError, match=naive):
            ingestor.ingest_wire([good.topic, good.topic], [good.payload, good.payload], [T0, T0.replace(tzinfo=None)])
        with pytest.raises(ValueError, match="one entry a message, got 1, 1 and 2"):
            ingestor.ingest_wire([good.topic], [good.payload], [T0, T0])
        assert ingestor.received == 0 and ingestor.archive.count() == 0  # nothing judged, nothing archived
        assert ingestor.ingest_batch([good])[0].verdict.value == "accepted"  # seq 0 is still new
    finally:
        ingestor.close()
