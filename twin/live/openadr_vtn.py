"""The live twin's OpenADR 2.0b VTN: DR events, price signals and (for devices that report over OpenADR)
setpoints go out to the participants' VENs; their reports, opt-ins and answers come back.

Built on ``openleadr``'s server (the protocol is theirs). This module owns:

- authentication: every message must carry an XML signature (OpenADR's message security) by the certificate
  provisioned for the VEN it claims to be, checked with openleadr's own verifier (replay protection included);
  an unsigned, foreign-signed, unknown-VEN or schema-invalid message is refused (HTTP 403 / 400) and archived
  with the reason.
- the boundary: every request is archived (raw XML) before it is answered, like every MQTT and OCPP message.
  ``oadrUpdateReport`` values become canonical telemetry (r_id ``<device>:<quantity>``), an opt answer to a DR
  event goes into the DR program register, an answer to a setpoint event becomes a command ack per device.
- time: OpenADR speaks real time (the library schedules on it), the twin simulated time; the twin's clock maps
  one to the other (``SimClock``), to the simulated second.
- the program: ``issue_event`` records an event in the DR program register (``twin.settlement.dr_program``),
  which is what settlement pays for, and sends it to every VEN.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from aiohttp import web
from aiohttp.web_exceptions import NotAppKeyWarning
from lxml.etree import XMLSyntaxError
from openleadr import OpenADRServer, objects
from openleadr.errors import FingerprintMismatch
from openleadr.messaging import parse_message, validate_xml_schema
from openleadr.utils import extract_pem_cert, parse_datetime
from signxml import XMLVerifier

from twin.live.aio import AsyncRunner
from twin.live.canonical import SESSION, Decoded, RawMessage, Transport, command_ack, telemetry_from_values
from twin.live.clock import SimClock
from twin.live.field_identity import FieldAuth, X509Identity, certificate_fingerprint
from twin.live.ingest import IngestResult, RejectReason
from twin.live.messages import Channel, MessageError
from twin.settlement.contracts import EventKind
from twin.settlement.dr_program import DrProgram, IssuedEvent, Opt, OptResponse

__all__ = ["OPENADR_PATH", "VTN_ID", "OpenAdrVtn", "REPORT_QUANTITIES", "parse_report_rid", "report_rid"]

OPENADR_PATH = "/OpenADR2/Simple/2.0b"
VTN_ID = "GRIDTWIN-VTN"
DR_MARKET = "oadr://gridtwin/dr"
DISPATCH_MARKET = "oadr://gridtwin/dispatch"
#: The quantities a VEN reports per device, and how each is declared in its report (openleadr measurement,
#: unit, scale).
REPORT_QUANTITIES: dict[str, tuple[str, str, str]] = {
    "p_kw": ("REAL_POWER", "W", "k"),
    "q_kvar": ("REACTIVE_POWER", "VAR", "k"),
    "e_imp_kwh": ("ENERGY_REAL", "Wh", "k"),
    "e_exp_kwh": ("ENERGY_REAL", "Wh", "k"),
    "soc_pct": ("x-stateOfCharge", "%", "none"),
}
_SIG_NS = "{http://www.w3.org/2000/09/xmldsig#}"
#: A signed message older (or newer) than this is refused, as openleadr does (its REPLAY_PROTECT_MAX_TIME_DELTA).
REPLAY_WINDOW = timedelta(seconds=5)
_LOG = logging.getLogger("twin.live.openadr")

Sink = Callable[[Sequence[Decoded]], list[IngestResult]]


def report_rid(device_id: str, quantity: str) -> str:
    return f"{device_id}:{quantity}"


def parse_report_rid(r_id: Any) -> tuple[str, str]:
    """``<device>:<quantity>`` → (device, quantity); ``MessageError`` names the value."""
    device, sep, quantity = str(r_id).rpartition(":")
    if not sep or not device or quantity not in REPORT_QUANTITIES:
        raise MessageError(f"field 'rID' value {r_id!r} is not <device>:<quantity> with a quantity in "
                           f"{sorted(REPORT_QUANTITIES)}")
    return device, quantity


@dataclass
class _Exchange:
    """What one HTTP request carried: archive items, and opt answers to record once they are archived."""

    items: list[Decoded] = field(default_factory=list)
    opts: list[OptResponse] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class _Dispatch:
    ven_id: str
    cmd_seq: int
    setpoints: dict[str, float]
    answered: list[bool] = field(default_factory=list)


class OpenAdrVtn:
    """``start()`` serves on loopback (port 0 = a free one, see ``port``); ``issue_event`` / ``publish_prices`` /
    ``send_setpoints`` queue messages for the VENs (delivered when they poll); ``stop()`` ends it.

    ``reporting``: VEN id → the devices whose telemetry it reports (a VEN may not report for anyone else).
    ``clock``: the twin's clock, mapping the real times on the wire to simulated time.
    """

    def __init__(self, *, auth: FieldAuth, identity: X509Identity, reporting: Mapping[str, Sequence[str]],
                 sink: Sink, program: DrProgram, clock: Callable[[], SimClock], host: str = "127.0.0.1",
                 port: int = 0, poll_s: float = 0.25, vtn_id: str = VTN_ID) -> None:
        self.auth = auth
        self.identity = identity
        self.reporting = {ven: frozenset(devices) for ven, devices in reporting.items()}
        self.sink = sink
        self.program = program
        self._clock = clock
        self.host = host
        self.port = port
        self.poll_s = poll_s
        self.vtn_id = vtn_id
        self._runner = AsyncRunner(name="openadr-vtn")
        self._server: OpenADRServer | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._dispatches: dict[str, _Dispatch] = {}
        self._cmd_seq = 0
        self._replay_lock = threading.Lock()
        self._nonces: dict[tuple[str, str], datetime] = {}
        self.registered: set[str] = set()

    @property
    def clock(self) -> SimClock:
        return self._clock()

    @property
    def vens(self) -> list[str]:
        return sorted(self.auth.openadr)

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self, *, timeout_s: float = 10.0) -> OpenAdrVtn:
        self._folder = tempfile.TemporaryDirectory(prefix="gridtwin-vtn-")
        cert, key = self.identity.write(Path(self._folder.name), "vtn")
        self._runner.start()

        async def serve() -> OpenADRServer:
            with warnings.catch_warnings():  # openleadr stores itself under a str app key; harmless
                warnings.simplefilter("ignore", NotAppKeyWarning)
                server = OpenADRServer(vtn_id=self.vtn_id, cert=str(cert), key=str(key), http_host=self.host,
                                       http_port=self.port, requested_poll_freq=timedelta(seconds=self.poll_s),
                                       ven_lookup=self._ven_lookup, show_fingerprint=False,
                                       http_path_prefix=OPENADR_PATH)
            server.app.middlewares.append(self._archive)
            server.add_handler("on_create_party_registration", self._on_registration)
            server.add_handler("on_register_report", self._on_register_report)
            with contextlib.redirect_stdout(io.StringIO()):  # openleadr prints a banner; the CLI prints the URL
                await server.run()
            return server

        try:
            self._server = self._runner.run(serve(), timeout_s=timeout_s)
        except OSError as exc:
            self.stop()
            raise ValueError(f"--openadr={self.host}:{self.port}: cannot listen ({exc.strerror or exc})") from None
        except BaseException:
            self.stop()
            raise
        self.port = int(self._server.app_runner.addresses[0][1])
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{OPENADR_PATH}"

    def stop(self) -> None:
        server = self._server
        if server is not None:
            try:
                self._runner.run(server.stop(), timeout_s=10.0)
            except TimeoutError:
                pass
            self._server = None
        self._runner.stop()
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def __enter__(self) -> OpenAdrVtn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- openleadr handlers ------------------------------------------------------------------------------

    def _ven_lookup(self, ven_id: str) -> dict[str, Any] | None:
        fingerprint = self.auth.openadr.get(ven_id)
        if fingerprint is None:
            return None
        return {"ven_id": ven_id, "ven_name": ven_id, "fingerprint": fingerprint, "registration_id": f"reg-{ven_id}"}

    async def _on_registration(self, payload: dict[str, Any]) -> tuple[str, str] | bool:
        ven_id = payload.get("ven_id") or payload.get("ven_name")
        if ven_id not in self.auth.openadr:
            return False
        self.registered.add(ven_id)
        return ven_id, f"reg-{ven_id}"

    async def _on_register_report(self, report: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Request every telemetry value a VEN offers for one of its own devices (its reports then come when
        it sends them; the hourly request only backs that up)."""
        requests = []
        for description in report.get("report_descriptions") or []:
            r_id = description.get("r_id")
            try:
                parse_report_rid(r_id)
            except MessageError:
                continue
            requests.append((r_id, _ignore_values, timedelta(hours=1), timedelta(hours=1)))
        return requests

    # --- the boundary: authenticate, let openleadr answer, archive, then reply -------------------------------

    @web.middleware
    async def _archive(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        body = await request.read()
        received_at = datetime.now(UTC)
        service = request.path.rsplit("/", 1)[-1]
        raw = RawMessage(topic=f"openadr/?/{service}", payload=body, received_at=received_at)
        try:
            tree = validate_xml_schema(body)
            message_type, payload = parse_message(body)
        except (XMLSyntaxError, ValueError, KeyError, AttributeError) as exc:
            return self._refused(raw, RejectReason.BAD_XML, f"not an OpenADR 2.0b document: {exc}", status=400)
        ven_id = self._sender(tree, payload)
        raw = RawMessage(topic=f"openadr/{ven_id or '?'}/{message_type}", payload=body, received_at=received_at)
        problem = self._authenticate(tree, ven_id)
        if problem is not None:
            reason, detail = problem
            return self._refused(raw, reason, detail, status=403, ven_id=ven_id)
        exchange = _Exchange()
        exchange.items.extend(self._decode(raw, ven_id, message_type, payload, exchange))
        response = await handler(request)
        if response.status != 200:
            text = getattr(response, "text", "") or ""
            exchange.items[:] = [Decoded.refused(raw, transport=Transport.OPENADR, reason=RejectReason.PROTOCOL,
                                                 detail=f"{message_type}: HTTP {response.status} {text}"[:300],
                                                 device_id=ven_id, channel=SESSION)]
            exchange.opts.clear()
        self.sink(exchange.items)  # archived before the VEN hears back
        for opt in exchange.opts:  # then the program learns the answers it can settle
            self.program.record_opt(opt)
        return response

    def _refused(self, raw: RawMessage, reason: str, detail: str, *, status: int,
                 ven_id: str | None = None) -> web.Response:
        self.sink([Decoded.refused(raw, transport=Transport.OPENADR, reason=reason, detail=detail, device_id=ven_id,
                                   channel=SESSION)])
        return web.Response(status=status, text=detail)

    def _sender(self, tree: Any, payload: dict[str, Any]) -> str | None:
        """The VEN a message comes from: its venID, else (a registration query) its certificate's owner."""
        ven_id = payload.get("ven_id")
        if isinstance(ven_id, str) and ven_id:
            return ven_id
        cert = tree.find(f".//{_SIG_NS}X509Certificate")
        if cert is None or not cert.text:
            return None
        pem = "-----BEGIN CERTIFICATE-----\n" + cert.text.strip() + "\n-----END CERTIFICATE-----\n"
        try:
            fingerprint = certificate_fingerprint(pem)
        except ValueError:
            return None
        return next((v for v, f in self.auth.openadr.items() if f == fingerprint), None)

    def _authenticate(self, tree: Any, ven_id: str | None) -> tuple[str, str] | None:
        if tree.find(f".//{_SIG_NS}Signature") is None:
            return RejectReason.UNAUTHENTICATED, f"message from VEN {ven_id!r} is not signed (XML signature required)"
        if ven_id is None:
            return RejectReason.UNKNOWN_DEVICE, "message names no venID and is signed by no provisioned VEN"
        expected = self.auth.openadr.get(ven_id)
        if expected is None:
            return RejectReason.UNKNOWN_DEVICE, f"VEN {ven_id!r} is not provisioned"
        try:
            self._verify_signature(tree, fingerprint=expected)
        except Exception as exc:  # noqa: BLE001 — signxml, openleadr and lxml each raise their own kinds
            return RejectReason.UNAUTHENTICATED, f"signature of VEN {ven_id!r} refused: {type(exc).__name__}: {exc}"
        return None

    def _verify_signature(self, tree: Any, *, fingerprint: str) -> None:
        """openleadr's ``validate_xml_signature``, with a verifier and a replay cache of this VTN's own:
        openleadr's are module globals, and signxml's verifier keeps state while it verifies, so sharing them
        with a VEN in another thread of the same process (the field simulator, tests) corrupts both."""
        cert = extract_pem_cert(tree)
        found = certificate_fingerprint(cert)
        if found != fingerprint:
            raise FingerprintMismatch(f"the certificate fingerprint was incorrect: expected {fingerprint}, "
                                      f"received {found}")
        XMLVerifier().verify(tree, x509_cert=cert.encode("ascii"), expect_references=2)
        ns = "{http://openadr.org/oadr-2.0b/2012/07/xmldsig-properties}"
        stamp, nonce = tree.findtext(f".//{ns}timestamp"), tree.findtext(f".//{ns}nonce")
        if not stamp or not nonce:
            raise ValueError("the signature has no ReplayProtect timestamp and nonce")
        signed_at = parse_datetime(stamp)
        now = datetime.now(UTC)
        if abs(now - signed_at) > REPLAY_WINDOW:
            raise ValueError(f"the message was signed at {stamp}, more than {REPLAY_WINDOW.total_seconds():g} s from now")
        with self._replay_lock:
            self._nonces = {k: t for k, t in self._nonces.items() if now - t <= 2 * REPLAY_WINDOW}
            if (stamp, nonce) in self._nonces:
                raise ValueError(f"nonce {nonce} was already used (a replayed message)")
            self._nonces[(stamp, nonce)] = signed_at

    # --- decoding what VENs said --------------------------------------------------------------------------

    def _decode(self, raw: RawMessage, ven_id: str | None, message_type: str, payload: dict[str, Any],
                exchange: _Exchange) -> list[Decoded]:
        if message_type == "oadrUpdateReport":
            return self._decode_reports(raw, ven_id, payload)
        if message_type == "oadrCreatedEvent":
            return self._decode_opts(raw, ven_id, payload, exchange)
        return [Decoded(raw=raw, transport=Transport.OPENADR, channel=SESSION, device_id=ven_id, note=message_type)]

    def _decode_reports(self, raw: RawMessage, ven_id: str | None, payload: dict[str, Any]) -> list[Decoded]:
        own = self.reporting.get(ven_id or "", frozenset())
        values: dict[tuple[str, datetime], dict[str, float]] = {}
        refused: list[Decoded] = []
        clock = self.clock
        for report in payload.get("reports") or []:
            for interval in report.get("intervals") or []:
                r_id = (interval.get("report_payload") or {}).get("r_id")
                try:
                    device, quantity = parse_report_rid(r_id)
                    if device not in own:
                        raise MessageError(f"field 'rID' value {r_id!r}: device {device!r} does not report "
                                           f"through VEN {ven_id!r}")
                    dtstart = interval.get("dtstart")
                    if not isinstance(dtstart, datetime):
                        raise MessageError(f"field 'dtstart' value {dtstart!r} of {r_id!r} is not a date-time")
                    value = interval["report_payload"].get("value")
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise MessageError(f"field 'payloadFloat' value {value!r} of {r_id!r} is not a number")
                except MessageError as exc:
                    refused.append(Decoded.refused(raw, transport=Transport.OPENADR, reason=RejectReason.PROTOCOL,
                                                   detail=str(exc), device_id=ven_id, channel=Channel.TELEMETRY.value))
                    continue
                ts = clock.sim_at(dtstart.timestamp()).to_pydatetime()
                values.setdefault((device, ts), {})[quantity] = float(value)
        items = []
        for (device, ts), quantities in values.items():
            note = f"oadrUpdateReport from VEN {ven_id}"
            try:
                sample = telemetry_from_values(device, ts=ts, values=quantities)
            except MessageError as exc:
                items.append(Decoded.refused(raw, transport=Transport.OPENADR, reason=RejectReason.SCHEMA,
                                             detail=f"{note}, device {device!r} at {ts.isoformat()}: {exc}",
                                             device_id=device, channel=Channel.TELEMETRY.value))
                continue
            items.append(Decoded(raw=raw, transport=Transport.OPENADR, channel=Channel.TELEMETRY.value,
                                 device_id=device, payload=sample, note=note))
        if not items and not refused:
            items.append(Decoded(raw=raw, transport=Transport.OPENADR, channel=SESSION, device_id=ven_id,
                                 note="oadrUpdateReport without values"))
        return items + refused

    def _decode_opts(self, raw: RawMessage, ven_id: str | None, payload: dict[str, Any],
                     exchange: _Exchange) -> list[Decoded]:
        items = []
        now = self.clock.now()
        for response in payload.get("event_responses") or []:
            event_id, opt_type = str(response.get("event_id")), response.get("opt_type")
            dispatch = self._dispatches.get(event_id)
            if dispatch is not None:
                items.extend(self._dispatch_answer(raw, dispatch, opt_type == "optIn"))
                continue
            problem = None
            if opt_type not in (Opt.IN.value, Opt.OUT.value):
                problem = f"field 'optType' value {opt_type!r} is neither optIn nor optOut"
            elif not self.program.knows(event_id):
                problem = f"field 'eventID' value {event_id!r}: this VTN never issued that event"
            if problem is not None:
                items.append(Decoded.refused(raw, transport=Transport.OPENADR, reason=RejectReason.PROTOCOL,
                                             detail=f"oadrCreatedEvent from VEN {ven_id!r}: {problem}",
                                             device_id=ven_id, channel=SESSION))
                continue
            exchange.opts.append(OptResponse(event_id=event_id, participant=str(ven_id), opt=Opt(opt_type),
                                             received_at=now))
            items.append(Decoded(raw=raw, transport=Transport.OPENADR, channel=SESSION, device_id=ven_id,
                                 note=f"{opt_type} to event {event_id}"))
        return items or [Decoded(raw=raw, transport=Transport.OPENADR, channel=SESSION, device_id=ven_id,
                                 note="oadrCreatedEvent without responses")]

    def _dispatch_answer(self, raw: RawMessage, dispatch: _Dispatch, accepted: bool) -> list[Decoded]:
        if dispatch.answered:  # the VEN repeats its answer whenever events are redistributed
            return [Decoded(raw=raw, transport=Transport.OPENADR, channel=SESSION, device_id=dispatch.ven_id,
                            note=f"repeated answer to setpoints {dispatch.cmd_seq}")]
        dispatch.answered.append(accepted)
        now = self.clock.now().to_pydatetime()
        return [Decoded(raw=raw, transport=Transport.OPENADR, channel=Channel.CMD_ACK.value, device_id=device,
                        payload=command_ack(device, cmd_seq=dispatch.cmd_seq, ts=now, accepted=accepted,
                                            applied_p_kw=kw if accepted else None,
                                            reason=None if accepted else "optOut: the VEN refused the setpoints"),
                        note=f"{'optIn' if accepted else 'optOut'} to setpoints {dispatch.cmd_seq}")
                for device, kw in dispatch.setpoints.items()]

    # --- what the twin sends ------------------------------------------------------------------------------

    def _wall(self, sim: pd.Timestamp) -> datetime:
        return datetime.fromtimestamp(self.clock.wall_at(pd.Timestamp(sim)), tz=UTC)

    def _add(self, add: Callable[[OpenADRServer], Any]) -> Any:
        server = self._server
        if server is None:
            raise RuntimeError("the VTN is not running")

        async def on_loop() -> Any:  # openleadr's queues belong to its event loop
            return add(server)

        return self._runner.run(on_loop(), timeout_s=10.0)

    def issue_event(self, *, event_id: str, start: pd.Timestamp, end: pd.Timestamp, kind: EventKind,
                    source: str, level: float = 1.0) -> IssuedEvent:
        """Record a DR event in the program register (``DrProgramError`` if it overlaps another) and send it,
        as a SIMPLE signal, to every VEN; their answers are recorded as they come."""
        event = IssuedEvent(event_id=event_id, start=pd.Timestamp(start), end=pd.Timestamp(end), kind=kind,
                            signal=f"SIMPLE level {level:g}", source=source, issued_at=self.clock.now(),
                            targets=tuple(self.vens))
        if self.program.issue(event):
            self._announce(event, level=level)
        return event  # issued before (a resumed run): ``announce_open_events`` sends it again

    def announce_open_events(self) -> int:
        """Send every event of the program that has not ended yet (a resumed twin's VTN starts with empty
        queues; the VENs' answers to events they already answered are simply repeated)."""
        now = self.clock.now()
        open_events = [e for e in self.program.events() if e.end > now]
        for event in open_events:
            level = float(event.signal.rsplit(" ", 1)[-1]) if event.signal.startswith("SIMPLE level ") else 1.0
            self._announce(event, level=level)
        return len(open_events)

    def _announce(self, event: IssuedEvent, *, level: float) -> None:
        dtstart, duration = self._wall(event.start), self._wall(event.end) - self._wall(event.start)

        def add(server: OpenADRServer) -> None:
            for ven in self.vens:
                server.add_event(ven, "SIMPLE", "level", [{"dtstart": dtstart, "duration": duration,
                                                           "signal_payload": float(level)}],
                                 callback=_ignore_opt, event_id=event.event_id, market_context=DR_MARKET,
                                 response_required="always")

        self._add(add)

    def publish_prices(self, *, event_id: str, prices: Sequence[tuple[pd.Timestamp, pd.Timestamp, float]]) -> None:
        """A price signal (ELECTRICITY_PRICE, EUR/kWh per interval) to every VEN; no answer expected."""
        intervals = [{"dtstart": self._wall(a), "duration": self._wall(b) - self._wall(a), "signal_payload": float(p)}
                     for a, b, p in prices]
        if not intervals:
            return

        def add(server: OpenADRServer) -> None:
            for ven in self.vens:
                server.add_event(ven, "ELECTRICITY_PRICE", "price", intervals, event_id=event_id,
                                 market_context=DR_MARKET, response_required="never")

        self._add(add)

    def send_setpoints(self, ven_id: str, setpoints: Mapping[str, float], *, start: pd.Timestamp,
                       valid_to: pd.Timestamp) -> int:
        """Setpoints (kW, load convention) for devices behind one VEN, as one LOAD_DISPATCH event with a
        setpoint signal per device (signalID = device id) from ``start`` until ``valid_to``; the VEN's optIn /
        optOut becomes each device's command ack. Returns the command sequence number."""
        # Microseconds of wall time, like MQTT commands: numbers keep growing across a restart of the twin.
        self._cmd_seq = seq = max(self._cmd_seq + 1, time.time_ns() // 1000)
        event_id = f"setpoints-{ven_id}-{seq}"
        dtstart = self._wall(start)
        duration = max(self._wall(valid_to) - dtstart, timedelta(seconds=1))
        now = datetime.now(UTC)
        signals = [objects.EventSignal(intervals=[objects.Interval(dtstart=dtstart, duration=duration,
                                                                   signal_payload=float(kw))],
                                       signal_name="LOAD_DISPATCH", signal_type="setpoint", signal_id=device)
                   for device, kw in setpoints.items()]
        event = objects.Event(event_descriptor=objects.EventDescriptor(
            event_id=event_id, modification_number=0, market_context=DISPATCH_MARKET, event_status="far",
            created_date_time=now), event_signals=signals, targets=[objects.Target(ven_id=ven_id)],
            response_required="always")
        self._dispatches[event_id] = _Dispatch(ven_id=ven_id, cmd_seq=seq, setpoints=dict(setpoints))
        self._add(lambda server: server.add_raw_event(ven_id, event, callback=_ignore_opt))
        return seq


def _ignore_values(data: Any) -> None:
    """openleadr wants a callback per requested report value; the middleware reads the values itself."""


def _ignore_opt(ven_id: str, event_id: str, opt_type: str) -> None:
    """openleadr wants a callback per event; the middleware records every VEN's answer itself."""
