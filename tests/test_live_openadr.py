"""OpenADR 2.0b end to end over HTTP on loopback with openleadr's own server and client: the twin's VTN
(``OpenAdrVtn``) ⇄ participants' VENs (``OpenAdrVen``) ⇄ the same ``Ingestor`` and archive as MQTT, and the DR
program register settlement reads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from twin.live.aio import AsyncRunner
from twin.live.clock import SimClock
from twin.live.field_identity import FieldAuth, X509Identity
from twin.live.ingest import Ingestor, IngestPolicy
from twin.live.openadr_ven import OpenAdrVen, Setpoint
from twin.live.openadr_vtn import OpenAdrVtn
from twin.live.signing import KeyRegistry
from twin.settlement.contracts import EventKind
from twin.settlement.dr_program import DrProgram, DrProgramError, Opt

pytestmark = pytest.mark.slow

SIM_START = pd.Timestamp("2016-06-06T10:00:00Z")
SPEED = 60.0  # one simulated minute per second
VENS = ("p-1", "p-2")
IDENTITIES = {v: X509Identity.new(v) for v in VENS}
VTN_IDENTITY = X509Identity.new("vtn")


class _Program:
    def __init__(self, tmp_path: Path) -> None:
        self.lock = threading.Lock()
        self.ingestor = Ingestor.open(tmp_path / "archive.sqlite", keys=KeyRegistry(),
                                      policy=IngestPolicy(stale_after=pd.Timedelta(days=36500),
                                                          max_clock_skew=pd.Timedelta(days=36500)))
        self.clock = SimClock.starting_now(sim_start=SIM_START, speed=SPEED)
        self.program = DrProgram.open(tmp_path / "program.sqlite")
        auth = FieldAuth(openadr={v: i.fingerprint for v, i in IDENTITIES.items()})
        self.vtn = OpenAdrVtn(auth=auth, identity=VTN_IDENTITY, reporting={"p-1": ["flex-1", "bat-1"], "p-2": []},
                              sink=self.sink, program=self.program, clock=lambda: self.clock, poll_s=0.2).start()
        self.runner = AsyncRunner(name="vens").start()
        self.vens: list[OpenAdrVen] = []
        self.applied: list[Setpoint] = []

    def sink(self, items: Any) -> Any:
        with self.lock:
            return self.ingestor.ingest_decoded(items)

    def ven(self, ven_id: str, *, opt_in: bool = True, devices: list[tuple[str, bool]] | None = None,
            accept_setpoints: bool = True) -> OpenAdrVen:
        def on_setpoints(setpoints: list[Setpoint]) -> bool:
            self.applied.extend(setpoints)
            return accept_setpoints

        ven = OpenAdrVen(ven_id=ven_id, url=self.vtn.url, identity=IDENTITIES[ven_id],
                         vtn_certificate=VTN_IDENTITY.cert_pem, runner=self.runner, clock=lambda: self.clock,
                         devices=devices or [], opt_in=lambda *_: opt_in, on_setpoints=on_setpoints)
        self.vens.append(ven)
        return ven.start()

    def rows(self, **where: Any) -> list[Any]:
        with self.lock:
            return [r for r in self.ingestor.archive.iter_rows() if all(getattr(r, k) == v for k, v in where.items())]

    def wait(self, predicate: Callable[[], bool], *, timeout_s: float = 8.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)

    def close(self) -> None:
        for ven in self.vens:
            ven.stop()
        self.runner.stop()
        self.vtn.stop()
        self.program.close()
        self.ingestor.close()


@pytest.fixture()
def vtn(tmp_path: Path) -> Iterator[_Program]:
    p = _Program(tmp_path)
    try:
        yield p
    finally:
        p.close()


def test_reports_become_canonical_telemetry_on_the_simulated_clock(vtn: _Program) -> None:
    ven = vtn.ven("p-1", devices=[("flex-1", False), ("bat-1", True)])
    ts = SIM_START + pd.Timedelta("15min")
    ven.publish_telemetry("flex-1", ts=ts, p_kw=1.25, q_kvar=0.0, e_imp_kwh=3.5, e_exp_kwh=0.0)
    ven.publish_telemetry("bat-1", ts=ts, p_kw=-2.0, q_kvar=0.1, e_imp_kwh=1.0, e_exp_kwh=4.75, soc_pct=62.5)
    vtn.wait(lambda: len(vtn.rows(channel="telemetry", verdict="accepted")) == 2)
    samples = vtn.ingestor.take_samples()
    wide = samples.pivot_table(index=["device_id", "ts"], columns="quantity", values="value")
    assert list(wide.index) == [("bat-1", ts), ("flex-1", ts)]  # real time on the wire, back to the second
    assert wide.loc[("flex-1", ts), "p_kw"] == 1.25 and wide.loc[("bat-1", ts), "soc_pct"] == 62.5
    assert wide.loc[("bat-1", ts), "e_exp_kwh"] == 4.75
    rows = vtn.rows(channel="telemetry")
    assert {r.transport for r in rows} == {"openadr"} and all(b"oadrUpdateReport" in r.payload for r in rows)
    # Registration and polling are archived too, accepted, as session messages.
    notes = {r.detail for r in vtn.rows(channel="session")}
    assert {"oadrCreatePartyRegistration", "oadrRegisterReport", "oadrPoll"} <= notes


def test_dr_events_and_prices_reach_the_vens_and_their_answers_are_the_programs(vtn: _Program) -> None:
    yes, no = vtn.ven("p-1"), vtn.ven("p-2", opt_in=False)
    start, end = SIM_START + pd.Timedelta("2h"), SIM_START + pd.Timedelta("3h")
    vtn.vtn.issue_event(event_id="ev-1", start=start, end=end, kind=EventKind.ECONOMIC, source="scenario")
    vtn.vtn.publish_prices(event_id="prices-1", prices=[(SIM_START, SIM_START + pd.Timedelta("7h"), 0.18),
                                                        (SIM_START + pd.Timedelta("7h"), SIM_START + pd.Timedelta("11h"),
                                                         0.40)])
    vtn.wait(lambda: len(vtn.program.answers("ev-1", at=SIM_START + pd.Timedelta("1D"))) == 2)
    assert vtn.program.answers("ev-1", at=SIM_START + pd.Timedelta("1D")) == {"p-1": Opt.IN, "p-2": Opt.OUT}
    assert vtn.program.opted_in("ev-1", at=start) == frozenset({"p-1"})
    [event] = vtn.program.events()
    assert (event.start, event.end, event.targets) == (start, end, VENS)
    notice = yes.dr_events[0]
    assert (notice.event_id, notice.start, notice.end, notice.opt) == ("ev-1", start, end, "optIn")
    assert no.dr_events[0].opt == "optOut"
    vtn.wait(lambda: bool(yes.prices))
    assert [p for _, _, p in yes.prices[0].prices] == [0.18, 0.40]
    assert yes.prices[0].prices[1][0] == SIM_START + pd.Timedelta("7h")
    answers = [r.detail for r in vtn.rows(channel="session") if "to event ev-1" in r.detail]
    assert "optIn to event ev-1" in answers and "optOut to event ev-1" in answers
    with pytest.raises(DrProgramError, match="overlaps"):
        vtn.vtn.issue_event(event_id="ev-2", start=start, end=end, kind=EventKind.ECONOMIC, source="operator:ann")


def test_setpoints_for_openadr_devices_come_back_as_command_acks(vtn: _Program) -> None:
    vtn.ven("p-1", devices=[("flex-1", False)])
    refusing = vtn.ven("p-2", accept_setpoints=False)
    start = SIM_START + pd.Timedelta("15min")
    seq = vtn.vtn.send_setpoints("p-1", {"flex-1": 0.75}, start=start, valid_to=start + pd.Timedelta("30min"))
    vtn.vtn.send_setpoints("p-2", {"flex-9": 1.0}, start=start, valid_to=start + pd.Timedelta("30min"))
    vtn.wait(lambda: len(vtn.rows(channel="cmd/ack")) == 2)
    acks = {a.device_id: a for a in vtn.ingestor.take_command_acks()}
    assert acks["flex-1"].accepted and acks["flex-1"].applied_p_kw == 0.75 and acks["flex-1"].cmd_seq == seq
    assert not acks["flex-9"].accepted and "optOut" in (acks["flex-9"].reason or "")
    got = next(s for s in vtn.applied if s.device_id == "flex-1")
    assert (got.p_kw, got.start, got.valid_to) == (0.75, start, start + pd.Timedelta("30min"))
    assert refusing.setpoints[0].device_id == "flex-9"


def test_unsigned_forged_and_malformed_messages_are_refused_with_the_reason(vtn: _Program) -> None:
    import aiohttp
    from openleadr.messaging import create_message

    intruder = X509Identity.new("intruder")

    async def post(body: str | bytes, content_type: str = "application/xml") -> int:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{vtn.vtn.url}/OadrPoll", data=body,
                                    headers={"content-type": content_type}) as response:
                return response.status

    unsigned = create_message("oadrPoll", ven_id="p-1")
    forged = create_message("oadrPoll", ven_id="p-1", cert=intruder.cert_pem.encode(), key=intruder.key_pem.encode())
    stranger = create_message("oadrPoll", ven_id="p-9", cert=intruder.cert_pem.encode(), key=intruder.key_pem.encode())
    statuses = [vtn.runner.run(post(body)) for body in (unsigned, forged, stranger, b"<oadrPayload>", b"\xff\xfe")]
    assert statuses == [403, 403, 403, 400, 400]
    refused = [(r.reason, r.detail) for r in vtn.rows(verdict="rejected")]
    assert [reason for reason, _ in refused] == ["unauthenticated", "unauthenticated", "unknown_device", "bad_xml",
                                                 "bad_xml"]
    assert "not signed" in refused[0][1] and "fingerprint" in refused[1][1].lower()
    assert "'p-9' is not provisioned" in refused[2][1]
    assert vtn.rows(verdict="rejected")[4].payload == b"\xff\xfe"  # kept byte for byte


def test_a_restarted_vtn_announces_the_open_events_again(vtn: _Program, tmp_path: Path) -> None:
    start, end = SIM_START + pd.Timedelta("2h"), SIM_START + pd.Timedelta("3h")
    vtn.vtn.issue_event(event_id="ev-1", start=start, end=end, kind=EventKind.ECONOMIC, source="scenario")
    vtn.vtn.stop()  # the twin restarts: a new VTN on the same program register, with empty queues
    auth = FieldAuth(openadr={v: i.fingerprint for v, i in IDENTITIES.items()})
    vtn.vtn = OpenAdrVtn(auth=auth, identity=VTN_IDENTITY, reporting={}, sink=vtn.sink, program=vtn.program,
                         clock=lambda: vtn.clock, poll_s=0.2).start()
    again = vtn.vtn.issue_event(event_id="ev-1", start=start, end=end, kind=EventKind.ECONOMIC, source="scenario")
    assert again.event_id == "ev-1" and len(vtn.program.events()) == 1  # not issued twice
    assert vtn.vtn.announce_open_events() == 1
    ven = vtn.ven("p-1")
    vtn.wait(lambda: bool(ven.dr_events))
    assert ven.dr_events[0].event_id == "ev-1"
    vtn.wait(lambda: "p-1" in vtn.program.answers("ev-1", at=SIM_START + pd.Timedelta("1D")))
