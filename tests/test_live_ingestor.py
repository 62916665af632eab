"""Unit tests of the broker-independent Ingestor, signing and key registry (no network)."""

from __future__ import annotations

import base64
import sqlite3
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from twin.live.ingest import SAMPLE_COLUMNS, Ingestor, IngestPolicy, RawMessage, Verdict
from twin.live.messages import Channel, MessageError, parse_topic
from twin.live.signing import KeyRegistry, SignatureCheck, new_private_key, sign_payload, verify_payload
from twin.telemetry import Quality, validate_telemetry

try:
    from live_fixtures import T0, device_key, json_bytes, make_fleet, raw, registry_for, signed_telemetry, telemetry_dict
except ImportError:  # tests/ collected as a package
    from tests.live_fixtures import (T0, device_key, json_bytes, make_fleet, raw, registry_for, signed_telemetry,
                                     telemetry_dict)

FLEET = make_fleet(3)
A, B, C = FLEET
POLICY = IngestPolicy(watermark=pd.Timedelta(minutes=5), stale_after=pd.Timedelta(seconds=60))


@pytest.fixture()
def ingestor(tmp_path: Path):
    ing = Ingestor.open(tmp_path / "archive.db", keys=registry_for(FLEET), policy=POLICY)
    yield ing
    ing.close()


def test_accepted_message_becomes_canonical_long_rows(ingestor: Ingestor) -> None:
    result = ingestor.ingest(raw(A, signed_telemetry(A, seq=7, ts=T0, soc_pct=55.0), received_at=T0 + timedelta(seconds=2)))
    assert (result.verdict, result.reason, result.seq, result.device_id) == (Verdict.ACCEPTED, "", 7, A.device_id)
    samples = ingestor.take_samples()
    assert tuple(samples.columns) == SAMPLE_COLUMNS
    assert str(samples["ts"].dtype) == "datetime64[us, UTC]"
    by_quantity = samples.set_index("quantity")["value"].to_dict()
    # telemetry_dict: p 1.5 kW, q -0.25 kvar, imports 10 + seq kWh, exports 2 kWh; v_pu absent → no row.
    assert by_quantity == {"p_kw": 1.5, "q_kvar": -0.25, "soc_pct": 55.0, "e_imp_kwh": 17.0, "e_exp_kwh": 2.0}
    assert set(samples["quality"]) == {"good"}
    assert set(samples["seq"]) == {7}
    assert (samples["ts"] == pd.Timestamp(T0)).all()
    assert ingestor.take_samples().empty  # taken once


def test_duplicate_seq_is_archived_as_duplicate_and_emits_nothing(ingestor: Ingestor) -> None:
    message = raw(A, signed_telemetry(A, seq=0, ts=T0), received_at=T0)
    first, second = ingestor.ingest(message), ingestor.ingest(message)
    assert first.verdict is Verdict.ACCEPTED
    assert (second.verdict, second.reason) == (Verdict.DUPLICATE, "duplicate")
    assert len(ingestor.take_samples()) == 4  # p, q, e_imp, e_exp of the first copy only
    assert ingestor.archive.count() == 2
    assert ingestor.archive.count(verdict="duplicate") == 1


def test_out_of_order_within_watermark_is_accepted_and_older_is_late(ingestor: Ingestor) -> None:
    now = T0 + timedelta(minutes=10)
    results = ingestor.ingest_batch([
        raw(A, signed_telemetry(A, seq=10, ts=T0 + timedelta(minutes=10)), received_at=now),
        # 4 min behind the newest: inside the 5-min watermark → accepted although out of order.
        raw(A, signed_telemetry(A, seq=8, ts=T0 + timedelta(minutes=6)), received_at=now),
        # exactly on the watermark edge (10 − 5 = 5 min): not older than it → accepted.
        raw(A, signed_telemetry(A, seq=7, ts=T0 + timedelta(minutes=5)), received_at=now),
        # 6 min behind → late; archived, no samples.
        raw(A, signed_telemetry(A, seq=4, ts=T0 + timedelta(minutes=4)), received_at=now),
    ])
    assert [r.verdict for r in results] == [Verdict.ACCEPTED, Verdict.ACCEPTED, Verdict.ACCEPTED, Verdict.LATE]
    assert sorted(set(ingestor.take_samples()["seq"])) == [7, 8, 10]
    assert ingestor.archive.count(verdict="late") == 1
    # A late message was still received: its seq is not missing.
    assert ingestor.seq_gaps(A.device_id) == [(5, 6), (9, 9)]


def test_stale_samples_are_marked_stale_not_dropped(ingestor: Ingestor) -> None:
    fresh = ingestor.ingest(raw(A, signed_telemetry(A, seq=0, ts=T0), received_at=T0 + timedelta(seconds=60)))
    stale = ingestor.ingest(raw(A, signed_telemetry(A, seq=1, ts=T0), received_at=T0 + timedelta(seconds=61)))
    assert fresh.verdict is stale.verdict is Verdict.ACCEPTED
    quality = ingestor.take_samples().groupby("seq")["quality"].unique().map(list).to_dict()
    # age 60 s is not more than stale_after 60 s; 61 s is.
    assert quality == {0: ["good"], 1: ["stale"]}


def _flip_bit_in_value(payload: bytes) -> bytes:
    # '"p_kw":1.5' → '"p_kw":0.5': one bit (0x31 → 0x30), still valid JSON, so only the signature can tell.
    index = payload.index(b'"p_kw":1') + len(b'"p_kw":')
    return payload[:index] + bytes([payload[index] ^ 0x01]) + payload[index + 1:]


def _cases() -> dict[str, tuple[RawMessage, str]]:
    good = signed_telemetry(A, seq=1, ts=T0)
    unsigned = json_bytes(telemetry_dict(A.device_id, seq=1, ts=T0))
    wrong_key = signed_telemetry(A, seq=1, ts=T0, signer=B.device_id)
    mismatched = sign_payload(  # A signs, on its own topic, a payload claiming to be B
        telemetry_dict(B.device_id, seq=1, ts=T0), topic=A.topic(Channel.TELEMETRY),
        private_key=device_key(A.device_id),
    )
    other_site = A.__class__(site="feeder2", kind=A.kind, device_id=A.device_id)
    schema = sign_payload(
        telemetry_dict(A.device_id, seq=-3, ts=T0), topic=A.topic(Channel.TELEMETRY),
        private_key=device_key(A.device_id),
    )
    ahead = signed_telemetry(A, seq=1, ts=T0 + timedelta(minutes=6))
    unknown = make_fleet(1, prefix="ghost")[0]
    return {
        "unsigned": (raw(A, unsigned, received_at=T0), "unsigned"),
        "bit_flipped": (raw(A, _flip_bit_in_value(good), received_at=T0), "bad_signature"),
        "wrong_key": (raw(A, wrong_key, received_at=T0), "bad_signature"),
        "replayed_onto_other_site": (RawMessage(topic=other_site.topic(Channel.TELEMETRY), payload=good, received_at=T0), "bad_signature"),
        "replayed_onto_ack_channel": (raw(A, good, received_at=T0, channel=Channel.CMD_ACK), "bad_signature"),
        "device_id_not_topic": (raw(A, json_bytes(mismatched), received_at=T0), "topic_mismatch"),
        "schema": (raw(A, json_bytes(schema), received_at=T0), "schema"),
        "not_json": (raw(A, b'{"device_id": "dev0000", ', received_at=T0), "bad_json"),
        "unknown_device": (raw(unknown, signed_telemetry(unknown, seq=1, ts=T0), received_at=T0), "unknown_device"),
        "bad_topic": (RawMessage(topic="der/feeder1/battery", payload=good, received_at=T0), "bad_topic"),
        "future_ts": (raw(A, ahead, received_at=T0), "future_timestamp"),
        "malformed_sig": (raw(A, good.replace(b'"sig":"', b'"sig":"!!'), received_at=T0), "malformed_signature"),
    }


@pytest.mark.parametrize("case", sorted(_cases()))
def test_bad_messages_are_rejected_with_reason_and_archived(ingestor: Ingestor, case: str) -> None:
    message, reason = _cases()[case]
    result = ingestor.ingest(message)
    assert (result.verdict, result.reason) == (Verdict.REJECTED, reason)
    rows = list(ingestor.archive.iter_rows())
    assert len(rows) == 1 and rows[0].payload == message.payload and rows[0].reason == reason
    assert ingestor.take_samples().empty


def test_schema_error_names_field_and_value(ingestor: Ingestor) -> None:
    message, _ = _cases()["schema"]
    detail = ingestor.ingest(message).detail
    assert "'seq'" in detail and "-3" in detail


def test_gap_detector_counts_missing_seqs(ingestor: Ingestor) -> None:
    for seq in (0, 1, 2, 5, 7, 3):
        ingestor.ingest(raw(B, signed_telemetry(B, seq=seq, ts=T0 + timedelta(seconds=seq)), received_at=T0))
    assert ingestor.missing_seqs() == {B.device_id: 2}  # 4 and 6
    assert ingestor.seq_gaps(B.device_id) == [(4, 4), (6, 6)]


def test_restart_restores_dedupe_gaps_and_watermark_from_archive(tmp_path: Path) -> None:
    path = tmp_path / "archive.db"
    now = T0 + timedelta(minutes=10)
    first = Ingestor.open(path, keys=registry_for(FLEET), policy=POLICY)
    for seq in (0, 1, 3):
        first.ingest(raw(A, signed_telemetry(A, seq=seq, ts=T0 + timedelta(minutes=seq * 3)), received_at=now))
    first.close()
    second = Ingestor.open(path, keys=registry_for(FLEET), policy=POLICY)
    try:
        assert second.ingest(raw(A, signed_telemetry(A, seq=1, ts=T0 + timedelta(minutes=3)), received_at=now)).verdict is Verdict.DUPLICATE
        assert second.missing_seqs() == {A.device_id: 1}
        # newest ts restored (9 min) → 3 min is behind the 5-min watermark.
        assert second.ingest(raw(A, signed_telemetry(A, seq=2, ts=T0 + timedelta(minutes=3)), received_at=now)).verdict is Verdict.LATE
        assert second.stats().received == 5
    finally:
        second.close()


def test_archive_is_append_only(ingestor: Ingestor) -> None:
    ingestor.ingest(raw(A, signed_telemetry(A, seq=0, ts=T0), received_at=T0))
    db = sqlite3.connect(ingestor.archive.path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE raw_messages SET verdict = 'rejected'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM raw_messages")
    finally:
        db.close()
    assert ingestor.archive.count(verdict="accepted") == 1


def test_offline_devices_by_silence_and_never_seen(ingestor: Ingestor) -> None:
    ingestor.ingest(raw(A, signed_telemetry(A, seq=0, ts=T0), received_at=T0))
    ingestor.ingest(raw(B, signed_telemetry(B, seq=0, ts=T0), received_at=T0 + timedelta(seconds=50)))
    offline = ingestor.offline_devices(now=T0 + timedelta(seconds=70), timeout=pd.Timedelta(seconds=30), expected=[C.device_id])
    assert offline == [A.device_id, C.device_id]


def test_signature_covers_topic_and_every_field() -> None:
    key = new_private_key()
    payload = telemetry_dict("x", seq=0, ts=T0)
    signed = sign_payload(payload, topic="der/s/pv/x/telemetry", private_key=key)
    public = key.public_key()
    assert verify_payload(signed, topic="der/s/pv/x/telemetry", public_key=public) is SignatureCheck.VALID
    assert verify_payload(signed, topic="der/s/pv/x/status", public_key=public) is SignatureCheck.BAD_SIGNATURE
    assert verify_payload({**signed, "seq": 1}, topic="der/s/pv/x/telemetry", public_key=public) is SignatureCheck.BAD_SIGNATURE
    assert verify_payload({**signed, "extra": 0}, topic="der/s/pv/x/telemetry", public_key=public) is SignatureCheck.BAD_SIGNATURE
    # Key order in the payload does not matter: the canonical form sorts keys.
    reordered = dict(reversed(list(signed.items())))
    assert verify_payload(reordered, topic="der/s/pv/x/telemetry", public_key=public) is SignatureCheck.VALID


def test_key_registry_round_trip_and_bad_file(tmp_path: Path) -> None:
    keys = registry_for(FLEET)
    keys.save(tmp_path / "keys.json")
    loaded = KeyRegistry.from_file(tmp_path / "keys.json")
    assert list(loaded) == [d.device_id for d in FLEET]
    message = raw(A, signed_telemetry(A, seq=0, ts=T0), received_at=T0)
    payload = __import__("json").loads(message.payload)
    assert verify_payload(payload, topic=message.topic, public_key=loaded.get(A.device_id)) is SignatureCheck.VALID  # type: ignore[arg-type]
    bad = {"format": "gridtwin-device-keys/1", "devices": {"dev9": base64.b64encode(b"short").decode()}}
    with pytest.raises(ValueError, match="devices.dev9"):
        KeyRegistry.from_json(bad)


def test_topic_parsing_names_the_bad_part() -> None:
    address, channel = parse_topic("der/feeder1/ev_charger/ev-7/cmd/ack")
    assert (address.site, address.kind, address.device_id, channel) == ("feeder1", "ev_charger", "ev-7", Channel.CMD_ACK)
    with pytest.raises(MessageError, match="'boat'"):
        parse_topic("der/feeder1/boat/ev-7/telemetry")
    with pytest.raises(MessageError, match="'cmd/nack'"):
        parse_topic("der/feeder1/pv/pv-1/cmd/nack")
    with pytest.raises(MessageError, match="device_id"):
        parse_topic("der/feeder1/pv/+/telemetry")


def test_samples_are_valid_canonical_telemetry(ingestor: Ingestor) -> None:
    ingestor.ingest(raw(A, signed_telemetry(A, seq=3, ts=T0, v_pu=1.02), received_at=T0 + timedelta(seconds=90)))
    samples = ingestor.take_samples()
    canonical = validate_telemetry(samples, known_devices=[d.device_id for d in FLEET])
    assert len(canonical) == len(samples) == 5
    pd.testing.assert_frame_equal(canonical.reset_index(drop=True), samples.reset_index(drop=True), check_like=True)
    assert set(samples["quality"]) == {Quality.STALE.value}  # 90 s old on arrival, stale_after 60 s
