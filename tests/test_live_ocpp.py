"""OCPP 2.0.1 end to end over real WebSocket connections on loopback: simulated chargers (``OcppCharger``, on
the ``ocpp`` library) ⇄ the twin's CSMS (``OcppCsms``) ⇄ the same ``Ingestor`` and archive as MQTT.

No broker is needed: each test starts its own CSMS on a free loopback port.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from twin.live.aio import AsyncRunner
from twin.live.field_identity import FieldAuth, hash_secret
from twin.live.ingest import Ingestor, IngestPolicy
from twin.live.ocpp_charger import ChargingLimit, OcppCharger, ProfileAnswer
from twin.live.ocpp_csms import OcppCsms
from twin.live.ocpp_mapping import meter_value_samples, tx_profile
from twin.live.messages import MessageError, TelemetryPayload
from twin.live.signing import KeyRegistry

T0 = datetime(2016, 6, 6, 10, 0, tzinfo=UTC)
STATIONS = ("ev-a", "ev-b")
PASSWORDS = {s: f"password-of-{s}-0123456789" for s in STATIONS}


class _Field:
    """The twin side (ingestor + CSMS) and a factory of chargers sharing one event loop."""

    def __init__(self, tmp_path: Path) -> None:
        self.lock = threading.Lock()
        self.ingestor = Ingestor.open(tmp_path / "archive.sqlite", keys=KeyRegistry(),
                                      policy=IngestPolicy(watermark=pd.Timedelta("30min"),
                                                          stale_after=pd.Timedelta(days=36500)))
        auth = FieldAuth(ocpp={s: hash_secret(p, iterations=1000) for s, p in PASSWORDS.items()})
        self.csms = OcppCsms(auth=auth, stations={s: s for s in STATIONS}, sink=self.sink, clock=lambda: T0,
                             response_timeout_s=3.0).start()
        self.runner = AsyncRunner(name="chargers").start()
        self.limits: list[ChargingLimit] = []
        self.chargers: list[OcppCharger] = []

    def sink(self, items: Any) -> Any:
        with self.lock:
            return self.ingestor.ingest_decoded(items)

    def charger(self, station: str, *, password: str | None = None,
                answer: Callable[[ChargingLimit], ProfileAnswer] | None = None) -> OcppCharger:
        def on_limit(limit: ChargingLimit) -> ProfileAnswer:
            self.limits.append(limit)
            return answer(limit) if answer else ProfileAnswer(accepted=True)

        charger = OcppCharger(station_id=station, url=self.csms.url, password=password or PASSWORDS[station],
                              runner=self.runner, on_limit=on_limit)
        self.chargers.append(charger)
        return charger

    def rows(self, **where: Any) -> list[Any]:
        with self.lock:
            return [r for r in self.ingestor.archive.iter_rows()
                    if all(getattr(r, k) == v for k, v in where.items())]

    def wait_rows(self, predicate: Callable[[list[Any]], bool], *, timeout_s: float = 5.0) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        rows = self.rows()
        while not predicate(rows) and time.monotonic() < deadline:
            time.sleep(0.02)
            rows = self.rows()
        return rows

    def close(self) -> None:
        for charger in self.chargers:
            try:
                charger.close(timeout_s=1.0)
            except (ConnectionError, TimeoutError):
                pass
        self.runner.stop()
        self.csms.stop()
        self.ingestor.close()


@pytest.fixture()
def field(tmp_path: Path) -> Iterator[_Field]:
    f = _Field(tmp_path)
    try:
        yield f
    finally:
        f.close()


def _sample(charger: OcppCharger, minutes: int, *, p_kw: float, plugged: bool, e_imp: float) -> None:
    charger.publish_telemetry(ts=T0 + timedelta(minutes=minutes), p_kw=p_kw, q_kvar=0.0, e_imp_kwh=e_imp,
                              e_exp_kwh=0.0, plugged=plugged)


def test_a_charging_session_becomes_canonical_telemetry(field: _Field) -> None:
    charger = field.charger("ev-a")
    charger.connect(now=T0)
    _sample(charger, 0, p_kw=0.0, plugged=False, e_imp=10.0)    # MeterValues
    _sample(charger, 15, p_kw=3.7, plugged=True, e_imp=10.0)    # TransactionEvent Started
    _sample(charger, 30, p_kw=3.7, plugged=True, e_imp=10.925)  # Updated: 3.7 kW x 15 min = 0.925 kWh
    _sample(charger, 45, p_kw=0.0, plugged=False, e_imp=11.85)  # Ended
    charger.flush()
    telemetry = field.rows(channel="telemetry")
    assert [(r.verdict, r.transport, r.topic.rsplit("/", 1)[1]) for r in telemetry] == [
        ("accepted", "ocpp", "MeterValues"), ("accepted", "ocpp", "TransactionEvent"),
        ("accepted", "ocpp", "TransactionEvent"), ("accepted", "ocpp", "TransactionEvent")]
    samples = field.ingestor.take_samples()
    p = samples[samples["quantity"] == "p_kw"].set_index("ts")["value"]
    assert list(p) == [0.0, 3.7, 3.7, 0.0]  # kW on the wire: no unit round trip
    e = samples[samples["quantity"] == "e_imp_kwh"]["value"].tolist()
    assert e == [10.0, 10.0, 10.925, 11.85]
    assert set(samples["device_id"]) == {"ev-a"}
    # Boot, connector status and the link itself are status, with what they said kept as the detail.
    details = [r.detail for r in field.rows(channel="status")]
    assert any("BootNotification PowerUp" in d for d in details)
    assert any("connector 1 Occupied" in d for d in details)
    notes = [r.detail for r in telemetry]
    assert "TransactionEvent Started" in notes[1] and "TransactionEvent Ended" in notes[3]
    assert field.csms.transaction_of("ev-a") is None  # ended
    assert field.ingestor.missing_seqs() == {}  # timestamp seqs: gaps are not missing messages


def test_a_dispatch_becomes_a_tx_profile_and_the_answer_is_recorded(field: _Field) -> None:
    obeys = field.charger("ev-a")
    refuses = field.charger("ev-b", answer=lambda limit: ProfileAnswer(accepted=False, reason="NotAllowed"))
    for charger in (obeys, refuses):
        charger.connect(now=T0)
    # No EV plugged in yet: a TxProfile needs a transaction, so nothing is sent and the twin is told why.
    idle = field.csms.send_setpoint("ev-a", start=T0, periods_kw=[(0, 2.0)], valid_to=T0 + timedelta(minutes=30))
    assert not idle.sent and "no transaction" in idle.detail
    for charger in (obeys, refuses):
        _sample(charger, 0, p_kw=1.0, plugged=True, e_imp=0.0)
        charger.flush()
    sent = [field.csms.send_setpoint(s, start=T0, periods_kw=[(0, 2.5)], valid_to=T0 + timedelta(minutes=30))
            for s in STATIONS]
    assert all(o.sent for o in sent)
    acks = field.wait_rows(lambda rows: sum(r.channel == "cmd/ack" for r in rows) == 2)
    acks = sorted((r for r in acks if r.channel == "cmd/ack"), key=lambda r: r.device_id)
    assert [(r.device_id, r.verdict) for r in acks] == [("ev-a", "accepted"), ("ev-b", "accepted")]
    assert b'"Accepted"' in acks[0].payload and b'"Rejected"' in acks[1].payload  # the raw answers, as received
    answers = {a.device_id: a for a in field.ingestor.take_command_acks()}
    assert answers["ev-a"].accepted and answers["ev-a"].applied_p_kw == 2.5
    assert not answers["ev-b"].accepted and "NotAllowed" in (answers["ev-b"].reason or "")
    # The charger saw a TxProfile for its transaction: 2.5 kW in W, from T0 until the setpoint expires.
    limit = next(li for li in field.limits if li.station_id == "ev-a")
    assert limit.limit_kw == 2.5 and limit.start == T0 and limit.valid_to == T0 + timedelta(minutes=30)


def test_unauthenticated_chargers_are_refused_with_the_reason_archived(field: _Field) -> None:
    cases = [
        (field.charger("ev-a", password="not-the-password-000000"), "wrong password"),
        (field.charger("ev-zz", password="whatever-password-0000000"), "not provisioned"),
    ]
    for charger, why in cases:
        with pytest.raises(ConnectionError, match="HTTP 401") as info:
            charger.connect(now=T0, timeout_s=3.0)
        assert why in str(info.value)
    # No credentials at all, and a Basic user that is not the station.
    nobody = field.charger("ev-b")
    nobody._password = ""
    runner = field.runner

    async def bare(url: str, headers: dict[str, str]) -> int:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        try:
            async with connect(url, subprotocols=["ocpp2.0.1"], additional_headers=headers):  # type: ignore[list-item]
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    import base64
    other = base64.b64encode(f"ev-a:{PASSWORDS['ev-a']}".encode()).decode()
    assert runner.run(bare(f"{field.csms.url}/ev-b", {})) == 401
    assert runner.run(bare(f"{field.csms.url}/ev-b", {"Authorization": f"Basic {other}"})) == 401
    refused = [(r.reason, r.detail) for r in field.rows(verdict="rejected")]
    reasons = [reason for reason, _ in refused]
    assert reasons.count("unauthenticated") == 3 and reasons.count("unknown_device") == 1
    assert any("sent no HTTP Basic credentials" in d for _, d in refused)
    assert any("user 'ev-a' is not the charging station id 'ev-b'" in d for _, d in refused)
    assert all(PASSWORDS["ev-a"].encode() not in r.payload for r in field.rows())  # passwords never archived


def test_malformed_frames_are_refused_with_a_reason_and_nothing_is_lost(field: _Field) -> None:
    charger = field.charger("ev-a")
    charger.connect(now=T0)
    charger.flush()
    charger.send_raw("this is not json")
    charger.send_raw('[2,"m1","MeterValues",{"evseId":"one","meterValue":[]}]')          # schema
    charger.send_raw('[2,"m2","FirmwareStatusNotification",{"status":"Installed"}]')       # not handled
    charger.send_raw('[2,"m3","MeterValues",{"evseId":1,"meterValue":[{"timestamp":"2016-06-06T10:00:00Z",'
                     '"sampledValue":[{"value":5,"measurand":"Power.Active.Import","unitOfMeasure":{"unit":"A"}}]}]}]')
    rows = field.wait_rows(lambda rows: sum(r.verdict == "rejected" for r in rows) == 4)
    refused = [(r.reason, r.detail) for r in rows if r.verdict == "rejected"]
    assert [reason for reason, _ in refused] == ["bad_json", "schema", "protocol", "schema"]
    assert "not an OCPP-J frame" in refused[0][1]
    assert "'one' is not of type 'integer'" in refused[1][1]
    assert "FirmwareStatusNotification" in refused[2][1]
    assert "unitOfMeasure.unit' value 'A'" in refused[3][1]
    assert b"this is not json" in next(r.payload for r in rows if r.reason == "bad_json")  # kept byte for byte
    # A schema violation is answered with a CallError, as OCPP-J says; the link stays up.
    _sample(charger, 0, p_kw=1.0, plugged=False, e_imp=0.0)
    charger.flush()
    assert field.rows(channel="telemetry", verdict="accepted")


def test_a_charger_that_reconnects_resumes_its_transaction_and_loses_nothing(field: _Field) -> None:
    charger = field.charger("ev-a")
    charger.connect(now=T0)
    _sample(charger, 0, p_kw=3.0, plugged=True, e_imp=0.0)
    charger.flush()
    transaction = field.csms.transaction_of("ev-a")
    assert transaction == charger.transaction_id
    charger.abort()  # the link drops mid-session; the car keeps charging
    field.wait_rows(lambda rows: any(r.topic == "ocpp/ev-a/disconnect" for r in rows))
    assert field.csms.send_setpoint("ev-a", start=T0, periods_kw=[(0, 1.0)], valid_to=T0).detail == "not connected"
    _sample(charger, 15, p_kw=3.0, plugged=True, e_imp=0.75)
    _sample(charger, 30, p_kw=3.0, plugged=True, e_imp=1.5)
    assert charger.queued == 2
    charger.reconnect()
    charger.flush()
    queued = [r for r in field.rows(channel="telemetry")][-2:]
    assert [r.verdict for r in queued] == ["accepted", "accepted"]
    assert all("queued while offline" in r.detail and transaction in r.detail for r in queued)
    assert field.csms.transaction_of("ev-a") == transaction  # the same transaction continues
    statuses = [r.detail for r in field.rows(channel="status")]
    assert any("connection closed" in d for d in statuses) and any("transaction" in d and "continues" in d
                                                                   for d in statuses)
    # Dispatch works again on the resumed transaction.
    assert field.csms.send_setpoint("ev-a", start=T0, periods_kw=[(0, 1.0)], valid_to=T0 + timedelta(hours=1)).sent
    field.wait_rows(lambda rows: any(r.channel == "cmd/ack" for r in rows))
    samples = field.ingestor.take_samples()
    assert samples[samples["quantity"] == "e_imp_kwh"]["value"].tolist() == [0.0, 0.75, 1.5]


def test_out_of_order_and_repeated_meter_values_are_judged_like_mqtt(field: _Field) -> None:
    from ocpp.v201 import call

    from twin.live.ocpp_charger import meter_value

    charger = field.charger("ev-a")
    charger.connect(now=T0)

    def reading(minutes: int, e: float) -> Any:
        return call.MeterValues(evse_id=1, meter_value=[meter_value(T0 + timedelta(minutes=minutes), p_kw=1.0,
                                                                    q_kvar=0.0, e_imp_kwh=e, e_exp_kwh=0.0)])

    for minutes, e in ((60, 4.0), (45, 3.0), (60, 4.0), (0, 0.0)):  # newer first, a repeat, one far behind
        charger.queue(reading(minutes, e))
    charger.flush()
    verdicts = [(r.device_ts[11:16], r.verdict) for r in field.rows(channel="telemetry")]
    assert verdicts == [("11:00", "accepted"), ("10:45", "accepted"), ("11:00", "duplicate"), ("10:00", "late")]
    samples = field.ingestor.take_samples()
    kwh = samples[samples["quantity"] == "e_imp_kwh"]
    assert kwh["value"].tolist() == [4.0, 3.0]  # only accepted readings become samples, in arrival order
    assert field.ingestor.stats().by_reason == {"duplicate": 1, "late": 1}


def test_a_restarted_csms_adopts_the_transaction_the_charger_names(field: _Field, tmp_path: Path) -> None:
    charger = field.charger("ev-a")
    charger.connect(now=T0)
    _sample(charger, 0, p_kw=2.0, plugged=True, e_imp=0.0)
    charger.flush()
    port = field.csms.port
    field.csms.stop()
    auth = FieldAuth(ocpp={"ev-a": hash_secret(PASSWORDS["ev-a"], iterations=1000)})
    field.csms = OcppCsms(auth=auth, stations={"ev-a": "ev-a"}, sink=field.sink, clock=lambda: T0, port=port).start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            charger.reconnect(timeout_s=2.0)
            break
        except ConnectionError:
            time.sleep(0.1)
    _sample(charger, 15, p_kw=2.0, plugged=True, e_imp=0.5)
    charger.flush()
    last = field.rows(channel="telemetry")[-1]
    assert last.verdict == "accepted" and "transaction resumed" in last.detail
    assert field.csms.transaction_of("ev-a") == charger.transaction_id


def test_meter_value_mapping_converts_units_and_names_bad_fields() -> None:
    samples = meter_value_samples("ev-a", [
        {"timestamp": "2016-06-06T10:00:00Z", "sampledValue": [
            {"value": 7400, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}},
            {"value": 12.5, "unitOfMeasure": {"unit": "kWh"}},  # no measurand: the import register
            {"value": 3, "measurand": "Power.Active.Import", "phase": "L1"},  # per phase: ignored
            {"value": 1.2, "measurand": "Energy.Active.Export.Register", "unitOfMeasure": {"unit": "Wh",
                                                                                         "multiplier": 3}}]},
        {"timestamp": "2016-06-06T10:15:00", "sampledValue": []},
        {"timestamp": "2016-06-06T10:30:00Z", "sampledValue": [{"value": 1.0, "measurand": "SoC"}]},
    ])
    first = samples[0]
    assert isinstance(first, TelemetryPayload)
    assert (first.p_kw, first.e_imp_kwh, first.e_exp_kwh, first.q_kvar) == (7.4, 12.5, 1.2, 0.0)
    assert first.seq == int(T0.timestamp() * 1000)
    assert isinstance(samples[1], MessageError) and "has no UTC offset" in str(samples[1])
    assert isinstance(samples[2], MessageError) and "meterValue[2]" in str(samples[2]) and "p_kw" in str(samples[2])


def test_a_discharge_setpoint_is_sent_as_limit_zero_and_said_so() -> None:
    request = tx_profile(profile_id=7, transaction_id="tx", start=T0, periods_kw=[(0, -3.0), (900, 1.25)],
                         valid_to=T0 + timedelta(minutes=30))
    assert request.clipped and request.limit_w == (0.0, 1250.0)
    schedule = request.profile["charging_schedule"][0]
    assert schedule["charging_rate_unit"] == "W" and schedule["duration"] == 1800
    assert [p["start_period"] for p in schedule["charging_schedule_period"]] == [0, 900]
    with pytest.raises(ValueError, match="offset 0"):
        tx_profile(profile_id=1, transaction_id="tx", start=T0, periods_kw=[(60, 1.0)], valid_to=T0)


def test_a_device_heard_on_another_transport_is_refused(tmp_path: Path) -> None:
    from twin.live.canonical import Decoded, RawMessage, Transport
    from twin.live.messages import DeviceState, StatusPayload

    ingestor = Ingestor.open(tmp_path / "a.sqlite", keys=KeyRegistry(), transports={"ev-a": Transport.OCPP})
    try:
        raw = RawMessage(topic="der/p-1/ev_charger/ev-a/status", payload=b"{}", received_at=T0)
        stale = Decoded(raw=raw, transport=Transport.MQTT, channel="status", device_id="ev-a",
                        payload=StatusPayload(device_id="ev-a", state=DeviceState.OFFLINE))
        [result] = ingestor.ingest_decoded([stale])
        assert (result.verdict, result.reason) == ("rejected", "wrong_transport")
        assert "speaks ocpp in this run, not mqtt" in result.detail
        assert ingestor.offline_devices(now=T0, timeout=pd.Timedelta("1h")) == []
    finally:
        ingestor.close()


def test_a_device_that_reports_after_an_offline_status_is_online_again(field: _Field) -> None:
    charger = field.charger("ev-a")
    charger.connect(now=T0)
    charger.abort()
    field.wait_rows(lambda rows: any(r.topic == "ocpp/ev-a/disconnect" for r in rows))
    with field.lock:
        assert field.ingestor.stats().status == {"ev-a": "offline"}
    charger.reconnect()
    _sample(charger, 0, p_kw=1.0, plugged=False, e_imp=0.0)
    charger.flush()
    with field.lock:
        assert field.ingestor.stats().status == {"ev-a": "online"}


def _basic(station: str, password: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{station}:{password}".encode()).decode()}


def test_a_dispatch_schedule_goes_on_the_wire_as_a_multi_period_tx_profile(field: _Field) -> None:
    """A bare WebSocket client as the charger: the SetChargingProfile frame is read as the CSMS wrote it."""
    import asyncio
    import json

    from websockets.asyncio.client import connect

    in_transaction = threading.Event()

    async def charger() -> list[Any]:
        async with connect(f"{field.csms.url}/ev-a", subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                           additional_headers=_basic("ev-a", PASSWORDS["ev-a"])) as ws:
            await ws.send(json.dumps([2, "tx-1", "TransactionEvent", {
                "eventType": "Started", "timestamp": "2016-06-06T10:00:00Z", "triggerReason": "CablePluggedIn",
                "seqNo": 0, "transactionInfo": {"transactionId": "T-42"}, "evse": {"id": 1, "connectorId": 1}}]))
            assert json.loads(await ws.recv())[:2] == [3, "tx-1"]
            in_transaction.set()
            frame = json.loads(await asyncio.wait_for(ws.recv(), 5.0))
            await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
            return frame

    answered = field.runner.submit(charger())
    assert in_transaction.wait(5.0)
    # The controller's schedule for three 15-minute intervals: 7.4 kW, then 3.7 kW, then nothing.
    outcome = field.csms.send_setpoint("ev-a", start=T0, periods_kw=[(0, 7.4), (900, 3.7), (1800, 0.0)],
                                       valid_to=T0 + timedelta(minutes=45))
    assert outcome.sent
    message_type, _id, action, payload = answered.result(10.0)
    assert (message_type, action, payload["evseId"]) == (2, "SetChargingProfile", 1)
    profile = payload["chargingProfile"]
    assert (profile["chargingProfilePurpose"], profile["chargingProfileKind"], profile["transactionId"]) == (
        "TxProfile", "Absolute", "T-42")
    assert profile["validFrom"] == "2016-06-06T10:00:00.000000Z"
    assert profile["validTo"] == "2016-06-06T10:45:00.000000Z"
    [schedule] = profile["chargingSchedule"]
    assert schedule["startSchedule"] == "2016-06-06T10:00:00.000000Z"
    assert schedule["chargingRateUnit"] == "W" and schedule["duration"] == 45 * 60
    assert schedule["chargingSchedulePeriod"] == [  # kW x 1000, one period per interval of 900 s
        {"startPeriod": 0, "limit": 7400.0}, {"startPeriod": 900, "limit": 3700.0},
        {"startPeriod": 1800, "limit": 0.0}]
    # The answer is archived with the periods it answered.
    [ack] = [r for r in field.wait_rows(lambda rows: any(r.channel == "cmd/ack" for r in rows))
             if r.channel == "cmd/ack"]
    assert ack.verdict == "accepted" and b'"Accepted"' in ack.payload
    assert "SetChargingProfile Accepted" in ack.detail
    assert "7400 W from 0 s, 3700 W from 900 s, 0 W from 1800 s" in ack.detail
    assert field.ingestor.take_command_acks()[0].applied_p_kw == 7.4


def test_the_simulated_charger_understands_every_period(field: _Field) -> None:
    charger = field.charger("ev-a")
    charger.connect(now=T0)
    _sample(charger, 0, p_kw=1.0, plugged=True, e_imp=0.0)
    charger.flush()
    assert field.csms.send_setpoint("ev-a", start=T0, periods_kw=[(0, 2.0), (900, 1.5)],
                                    valid_to=T0 + timedelta(minutes=30)).sent
    field.wait_rows(lambda rows: any(r.channel == "cmd/ack" for r in rows))
    [limit] = list(charger.profiles)
    assert limit.periods_kw == ((0, 2.0), (900, 1.5)) and limit.limit_kw == 2.0
    assert limit.start == T0 and limit.valid_to == T0 + timedelta(minutes=30)


def test_the_rest_of_a_held_plan_is_what_a_tx_profile_carries() -> None:
    from twin.live.ocpp_mapping import remaining_periods_kw

    step = timedelta(minutes=15)
    plan = [0.0074, 0.0037, 0.0]  # MW, held from T0
    assert remaining_periods_kw(plan, held_from=T0, at=T0, step=step) == [(0, 7.4), (900, 3.7), (1800, 0.0)]
    # Between decisions (decision_period > step) the charger gets what is left, offsets from now.
    assert remaining_periods_kw(plan, held_from=T0, at=T0 + step, step=step) == [(0, 3.7), (900, 0.0)]
    assert remaining_periods_kw(plan, held_from=T0, at=T0 + 3 * step, step=step) == []
    with pytest.raises(ValueError, match="offsets must increase"):
        tx_profile(profile_id=1, transaction_id="tx", start=T0, periods_kw=[(0, 1.0), (0, 2.0)], valid_to=T0)


def test_failed_authentications_are_throttled_per_station_and_per_address(field: _Field) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    from twin.live.ocpp_throttle import AuthThrottle

    field.csms.stop()
    auth = FieldAuth(ocpp={s: hash_secret(p, iterations=1000) for s, p in PASSWORDS.items()})
    field.csms = OcppCsms(auth=auth, stations={s: s for s in STATIONS}, sink=field.sink, clock=lambda: T0,
                          throttle=AuthThrottle(per_station=3, per_address=5, window_s=2)).start()

    async def attempt(station: str, password: str) -> tuple[int, str, str | None]:
        try:
            async with connect(f"{field.csms.url}/{station}", subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                               additional_headers=_basic(station, password)):
                return 101, "", None
        except InvalidStatus as exc:
            return exc.response.status_code, exc.response.body.decode(), exc.response.headers.get("Retry-After")

    def tries(station: str, password: str) -> tuple[int, str, str | None]:
        return field.runner.run(attempt(station, password))

    wrong = "not-the-password-000000"
    assert [tries("ev-a", wrong)[0] for _ in range(3)] == [401, 401, 401]
    # The station used up its 3 failures: even its right password is refused unchecked, with when to retry.
    status, body, retry_after = tries("ev-a", PASSWORDS["ev-a"])
    assert status == 429 and "charging station 'ev-a': 3 failed authentications within 2 s" in body
    assert retry_after is not None and 1 <= int(retry_after) <= 2
    # Another station from the same address still gets in (3 failures of 5 for the address) ...
    assert tries("ev-b", PASSWORDS["ev-b"])[0] == 101
    # ... until the address has 5 failures: then every station from it waits.
    assert [tries("ev-b", wrong)[0] for _ in range(2)] == [401, 401]
    status, body, _ = tries("ev-b", PASSWORDS["ev-b"])
    assert status == 429 and "address 127.0.0.1: 5 failed authentications within 2 s" in body
    refused = [(r.reason, r.device_id) for r in field.rows(verdict="rejected")]
    assert refused == [("unauthenticated", "ev-a")] * 3 + [("throttled", "ev-a")] + \
        [("unauthenticated", "ev-b")] * 2 + [("throttled", "ev-b")]
    assert all("(from 127.0.0.1)" in r.detail for r in field.rows(verdict="rejected"))
    time.sleep(2.2)  # the window moved past every failure: the right password works again
    assert tries("ev-a", PASSWORDS["ev-a"])[0] == 101
    with pytest.raises(ValueError, match="per_station=0"):
        AuthThrottle(per_station=0)
