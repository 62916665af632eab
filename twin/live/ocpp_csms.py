"""The live twin's OCPP 2.0.1 CSMS: EV chargers connect over WebSocket, their messages become canonical
telemetry, and the controlling policy's setpoints go to them as ``SetChargingProfile``.

Built on the ``ocpp`` library (mobilityhouse) over ``websockets``; the protocol is theirs. This module owns:

- authentication: OCPP security profile 1, HTTP Basic per charging station (user = station id, password
  from provisioning, checked against its hash). A refused handshake is answered 401 and archived with why;
  after too many failures of one station or one remote address in a window (``ocpp_throttle``) handshakes
  are refused unchecked with 429 and Retry-After, archived as ``throttled``.
- the boundary: every frame received is archived before it is answered (so a crash can lose no message a
  charger saw acknowledged). A frame that is not OCPP-J, or fails the OCPP 2.0.1 schema, is archived with
  the reason and answered with a CallError; MeterValues and the meter values of TransactionEvents become
  canonical samples (``ocpp_mapping``), Boot/Status notifications and the connection itself become status.
- transactions: which transaction each charger runs, so a TxProfile names it; a charger that reconnects
  (or a CSMS that restarted) resumes the transaction its next TransactionEvent names.
- dispatch: ``send_setpoint`` sends a TxProfile (one period per interval of the schedule it is given) and
  archives the charger's answer as a canonical command ack whose detail names the periods answered.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ocpp.exceptions import OCPPError
from ocpp.messages import MessageType, unpack, validate_payload
from ocpp.routing import on
from ocpp.v201 import ChargePoint as _ChargePoint
from ocpp.v201 import call, call_result
from ocpp.v201.enums import Action, RegistrationStatusEnumType
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from twin.live.aio import AsyncRunner
from twin.live.canonical import SESSION, Decoded, RawMessage, Transport, command_ack
from twin.live.field_identity import FieldAuth
from twin.live.ingest import IngestResult, RejectReason
from twin.live.messages import Channel, DeviceState, StatusPayload, TelemetryPayload
from twin.live.ocpp_mapping import ProfileRequest, describe_profile, meter_value_samples, tx_profile
from twin.live.ocpp_throttle import AuthThrottle

__all__ = ["OCPP_PATH", "SUBPROTOCOL", "OcppCsms", "SetpointOutcome", "parse_ocpp_address"]

SUBPROTOCOL = "ocpp2.0.1"
#: Charging stations connect to ``ws://HOST:PORT/ocpp/<station id>``.
OCPP_PATH = "/ocpp/"
_LOG = logging.getLogger("twin.live.ocpp")

Sink = Callable[[Sequence[Decoded]], list[IngestResult]]


def parse_ocpp_address(value: str, *, option: str = "--ocpp") -> tuple[str, int]:
    """``HOST:PORT`` (port 0 = a free one) for ``gridtwin live --ocpp`` (or ``--openadr``); errors name the
    option and the value."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{option}={value!r} must look like HOST:PORT (e.g. 127.0.0.1:9000, or port 0 for a free one)")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{option}={value!r}: the port {port_text!r} is not a number") from None
    if not 0 <= port < 65536:
        raise ValueError(f"{option}={value!r}: the port must be in 0..65535")
    return host, port


@dataclass(frozen=True, kw_only=True)
class SetpointOutcome:
    """What became of one setpoint: sent or not (and why), and the charger's answer when there was one."""

    device_id: str
    sent: bool
    accepted: bool | None = None
    detail: str = ""


@dataclass
class _Transaction:
    transaction_id: str
    evse_id: int
    last_seq_no: int = -1


@dataclass
class _StationState:
    device_id: str
    station: _Station | None = None
    transaction: _Transaction | None = None
    connections: int = 0
    profile_ids: list[int] = field(default_factory=list)


def _frame_text(raw: str | bytes) -> str:
    return raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")


def _frame_bytes(raw: str | bytes) -> bytes:
    return raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)


def _describe(error: OCPPError) -> str:
    details = error.details if isinstance(error.details, dict) else {}
    cause = details.get("cause", error.description)
    return f"{type(error).__name__}: {cause}"


class _Station(_ChargePoint):
    """One connected charging station, as the ``ocpp`` library's CSMS-side ChargePoint."""

    def __init__(self, station_id: str, connection: ServerConnection, *, csms: OcppCsms) -> None:
        super().__init__(station_id, connection, response_timeout=csms.response_timeout_s, logger=_LOG)
        self.csms = csms
        self._raw: RawMessage | None = None
        self._payload: dict[str, Any] = {}
        self._results: dict[str, tuple[str | bytes, datetime]] = {}

    # --- every frame passes here first ------------------------------------------------------------------

    async def route_message(self, raw_msg: str | bytes) -> None:
        received_at = datetime.now(UTC)
        frame = RawMessage(topic=f"ocpp/{self.id}/frame", payload=_frame_bytes(raw_msg), received_at=received_at)
        try:
            msg = unpack(_frame_text(raw_msg))
        except OCPPError as exc:
            self.csms.refuse(frame, device_id=self.id, reason=RejectReason.BAD_JSON,
                             detail=f"not an OCPP-J frame ({_describe(exc)})")
            return
        if msg.message_type_id != MessageType.Call:
            self._results[msg.unique_id] = (raw_msg, received_at)
            await super().route_message(raw_msg)
            return
        raw = RawMessage(topic=f"ocpp/{self.id}/{msg.action}", payload=frame.payload, received_at=received_at)
        if msg.action not in self.route_map:
            self.csms.refuse(raw, device_id=self.id, reason=RejectReason.PROTOCOL,
                             detail=f"action {msg.action!r} is not handled by this CSMS")
            await super().route_message(raw_msg)  # answers NotImplemented / NotSupported
            return
        try:
            await validate_payload(msg, self._ocpp_version)
        except OCPPError as exc:
            self.csms.refuse(raw, device_id=self.id, reason=RejectReason.SCHEMA,
                             detail=f"{msg.action}: {_describe(exc)}")
            await self._send(msg.create_call_error(exc).to_json())
            return
        self._raw, self._payload = raw, msg.payload
        await super().route_message(raw_msg)

    def _take(self) -> tuple[RawMessage, dict[str, Any]]:
        assert self._raw is not None
        return self._raw, self._payload

    # --- handlers: archive (through the sink) before answering ----------------------------------------------

    @on(Action.boot_notification)
    def on_boot_notification(self, charging_station: dict[str, Any], reason: str, **_: Any) -> Any:
        raw, _payload = self._take()
        model = f"{charging_station.get('vendor_name', '?')} {charging_station.get('model', '?')}"
        self.csms.status(raw, self.id, DeviceState.ONLINE, note=f"BootNotification {reason} ({model})")
        return call_result.BootNotification(current_time=self.csms.now_text(), interval=self.csms.heartbeat_s,
                                            status=RegistrationStatusEnumType.accepted)

    @on(Action.heartbeat)
    def on_heartbeat(self, **_: Any) -> Any:
        raw, _payload = self._take()
        self.csms.session(raw, self.id, note="Heartbeat")
        return call_result.Heartbeat(current_time=self.csms.now_text())

    @on(Action.status_notification)
    def on_status_notification(self, timestamp: str, connector_status: str, evse_id: int, connector_id: int,
                               **_: Any) -> Any:
        raw, _payload = self._take()
        self.csms.status(raw, self.id, DeviceState.ONLINE,
                         note=f"StatusNotification evse {evse_id} connector {connector_id} {connector_status}")
        return call_result.StatusNotification()

    @on(Action.meter_values)
    def on_meter_values(self, evse_id: int, meter_value: list[Any], **_: Any) -> Any:
        raw, payload = self._take()
        self.csms.telemetry(raw, self.id, payload.get("meterValue", []), note=f"MeterValues evse {evse_id}")
        return call_result.MeterValues()

    @on(Action.transaction_event)
    def on_transaction_event(self, event_type: str, timestamp: str, trigger_reason: str, seq_no: int,
                             transaction_info: dict[str, Any], **kwargs: Any) -> Any:
        raw, payload = self._take()
        note = self.csms.track_transaction(self.id, event_type=event_type, seq_no=seq_no,
                                           transaction_id=str(transaction_info.get("transaction_id")),
                                           evse=kwargs.get("evse"), offline=bool(kwargs.get("offline")))
        meter = payload.get("meterValue") or []
        if meter:
            self.csms.telemetry(raw, self.id, meter, note=note)
        else:
            self.csms.session(raw, self.id, note=note)
        return call_result.TransactionEvent()

    # --- calls to the charger ---------------------------------------------------------------------------------

    async def set_charging_profile(self, request: call.SetChargingProfile) -> tuple[Any, RawMessage | None]:
        """Send the request; return the parsed answer and the raw CALLRESULT as received (None if the library
        consumed it unseen)."""
        unique_id = str(uuid.uuid4())
        try:
            result: Any = await self.call(request, suppress=False, unique_id=unique_id)
        except OCPPError as exc:  # the charger answered with a CallError: that answer is recorded too
            result = exc
        finally:
            received = self._results.pop(unique_id, None)
        if received is None:
            return result, None
        frame, received_at = received
        return result, RawMessage(topic=f"ocpp/{self.id}/SetChargingProfile/result", payload=_frame_bytes(frame),
                                  received_at=received_at)


class OcppCsms:
    """The CSMS endpoint: ``start()`` binds (loopback by default; port 0 picks a free one, see ``port``),
    ``send_setpoint`` dispatches, ``stop()`` closes every connection.

    ``stations``: charging station id → device id (the twin's EV chargers; the station id is the asset id).
    ``sink`` archives and judges decoded messages (the live twin hands them to its ``Ingestor``); ``clock``
    is the twin's own clock, for the times it answers with and stamps status with.
    """

    def __init__(self, *, auth: FieldAuth, stations: Mapping[str, str], sink: Sink,
                 clock: Callable[[], datetime], host: str = "127.0.0.1", port: int = 0,
                 heartbeat_s: int = 60, response_timeout_s: float = 5.0,
                 throttle: AuthThrottle | None = None) -> None:
        self.auth = auth
        #: Failed authentications allowed per station / address and window (default 5 / 20 per 60 s).
        self.throttle = throttle if throttle is not None else AuthThrottle()
        self.sink = sink
        self.clock = clock
        self.host = host
        self.port = port
        self.heartbeat_s = heartbeat_s
        self.response_timeout_s = response_timeout_s
        self._states = {station: _StationState(device_id=device) for station, device in stations.items()}
        self._runner = AsyncRunner(name="ocpp-csms")
        self._server: Server | None = None
        self._profile_id = int(time.time()) % 1_000_000 * 1000

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self, *, timeout_s: float = 10.0) -> OcppCsms:
        self._runner.start()

        async def bind() -> Server:
            return await serve(self._handle, self.host, self.port, subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                               process_request=self._authenticate, ping_interval=None)

        try:
            self._server = self._runner.run(bind(), timeout_s=timeout_s)
        except OSError as exc:
            self._runner.stop()
            raise ValueError(f"--ocpp={self.host}:{self.port}: cannot listen ({exc.strerror or exc})") from None
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{OCPP_PATH.rstrip('/')}"

    def stop(self) -> None:
        server = self._server
        if server is not None:
            async def close() -> None:
                server.close()
                await server.wait_closed()

            try:
                self._runner.run(close(), timeout_s=10.0)
            except TimeoutError:
                pass
            self._server = None
        self._runner.stop()

    def __enter__(self) -> OcppCsms:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- state (read by the live twin and tests) ------------------------------------------------------------

    def connected(self) -> list[str]:
        return sorted(s for s, state in self._states.items() if state.station is not None)

    def transaction_of(self, station_id: str) -> str | None:
        state = self._states.get(station_id)
        return state.transaction.transaction_id if state and state.transaction else None

    def now_text(self) -> str:
        return self.clock().astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    # --- handshake --------------------------------------------------------------------------------------------

    def _handshake_record(self, request: Request, station: str) -> RawMessage:
        headers = {k: ("Basic <redacted>" if k.lower() == "authorization" else v) for k, v in request.headers.raw_items()}
        body = json.dumps({"path": request.path, "headers": headers}, sort_keys=True).encode("utf-8")
        return RawMessage(topic=f"ocpp/{station or '?'}/connect", payload=body, received_at=datetime.now(UTC))

    async def _authenticate(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        station = path[len(OCPP_PATH):] if path.startswith(OCPP_PATH) else ""
        record = self._handshake_record(request, station)
        address = str(connection.remote_address[0]) if connection.remote_address else "?"
        known = station if station in self._states else None

        def refuse(status: int, reason: str, detail: str) -> Response:
            self.refuse(record, device_id=station or None, reason=reason, detail=f"{detail} (from {address})",
                        channel=Channel.STATUS)
            if status != 429:  # a throttled attempt is not counted again: the window ends as announced
                self.throttle.failed(station=known, address=address)
            return connection.respond(status, f"{detail}\n")

        throttled = self.throttle.check(station=known, address=address)
        if throttled is not None:
            response = refuse(429, RejectReason.THROTTLED, throttled.detail)
            response.headers["Retry-After"] = str(throttled.retry_after_s)
            return response
        if not station or "/" in station:
            return refuse(404, RejectReason.BAD_TOPIC, f"path {path!r} is not {OCPP_PATH}<charging station id>")
        if known is None:
            return refuse(401, RejectReason.UNKNOWN_DEVICE, f"charging station {station!r} is not provisioned")
        header = request.headers.get("Authorization")
        if header is None:
            return refuse(401, RejectReason.UNAUTHENTICATED,
                          f"charging station {station!r} sent no HTTP Basic credentials (security profile 1)")
        username, password = _basic_credentials(header)
        if username is None:
            return refuse(401, RejectReason.UNAUTHENTICATED, f"header 'Authorization' of {station!r} is not HTTP Basic")
        if username != station:
            return refuse(401, RejectReason.UNAUTHENTICATED,
                          f"HTTP Basic user {username!r} is not the charging station id {station!r}")
        if not self.auth.check_ocpp(station, password or ""):
            return refuse(401, RejectReason.UNAUTHENTICATED, f"wrong password for charging station {station!r}")
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        station_id = connection.request.path.split("?", 1)[0][len(OCPP_PATH):]  # type: ignore[union-attr]
        state = self._states[station_id]
        record = self._handshake_record(connection.request, station_id)  # type: ignore[arg-type]
        if connection.subprotocol != SUBPROTOCOL:
            self.refuse(record, device_id=station_id, reason=RejectReason.PROTOCOL, channel=Channel.STATUS,
                        detail=f"charging station {station_id!r} did not offer subprotocol {SUBPROTOCOL!r}")
            await connection.close(1002, f"subprotocol {SUBPROTOCOL} required")
            return
        previous = state.station
        station = _Station(station_id, connection, csms=self)
        state.station = station
        state.connections += 1
        resumes = f"; transaction {state.transaction.transaction_id} continues" if state.transaction else ""
        self.status(record, station_id, DeviceState.ONLINE,
                    note=f"connected (connection {state.connections}{resumes})")
        if previous is not None:  # OCPP: the newest connection of a station wins
            await previous._connection.close(1000, "replaced by a new connection")
        try:
            await station.start()
        except ConnectionClosed as closed:
            if state.station is station:
                state.station = None
                code = closed.rcvd.code if closed.rcvd is not None else 1006
                body = json.dumps({"event": "disconnected", "code": code}).encode("utf-8")
                raw = RawMessage(topic=f"ocpp/{station_id}/disconnect", payload=body, received_at=datetime.now(UTC))
                self.status(raw, station_id, DeviceState.OFFLINE, note=f"connection closed (code {code})")

    # --- mapping to canonical messages (asyncio thread; the sink archives) -----------------------------------

    def refuse(self, raw: RawMessage, *, device_id: str | None, reason: str, detail: str,
               channel: str | None = None) -> None:
        device = self._states[device_id].device_id if device_id in self._states else None
        self.sink([Decoded.refused(raw, transport=Transport.OCPP, reason=reason, detail=detail, device_id=device,
                                   channel=channel)])

    def session(self, raw: RawMessage, station_id: str, *, note: str) -> None:
        self.sink([Decoded(raw=raw, transport=Transport.OCPP, channel=SESSION,
                           device_id=self._states[station_id].device_id, note=note)])

    def status(self, raw: RawMessage, station_id: str, state: DeviceState, *, note: str) -> None:
        device = self._states[station_id].device_id
        payload = StatusPayload(device_id=device, state=state, ts=self.clock())
        self.sink([Decoded(raw=raw, transport=Transport.OCPP, channel=Channel.STATUS.value, device_id=device,
                           payload=payload, note=note)])

    def telemetry(self, raw: RawMessage, station_id: str, meter_values: list[Any], *, note: str) -> None:
        device = self._states[station_id].device_id
        items = []
        samples = meter_value_samples(device, meter_values)
        for i, sample in enumerate(samples):
            part = f"{note} (meter value {i + 1} of {len(samples)})" if len(samples) > 1 else note
            if isinstance(sample, TelemetryPayload):
                items.append(Decoded(raw=raw, transport=Transport.OCPP, channel=Channel.TELEMETRY.value,
                                     device_id=device, payload=sample, note=part))
            else:
                items.append(Decoded.refused(raw, transport=Transport.OCPP, reason=RejectReason.SCHEMA,
                                             detail=f"{part}: {sample}", device_id=device,
                                             channel=Channel.TELEMETRY.value))
        self.sink(items)

    def track_transaction(self, station_id: str, *, event_type: str, seq_no: int, transaction_id: str,
                          evse: Any, offline: bool) -> str:
        state = self._states[station_id]
        tx = state.transaction
        evse_id = int(evse.get("id", 1)) if isinstance(evse, dict) else (tx.evse_id if tx else 1)
        flags = " (queued while offline)" if offline else ""
        if event_type == "Started":
            state.transaction = _Transaction(transaction_id=transaction_id, evse_id=evse_id, last_seq_no=seq_no)
            return f"TransactionEvent Started {transaction_id} seqNo {seq_no}{flags}"
        if tx is None or tx.transaction_id != transaction_id:
            # A CSMS that restarted, or a start it never received: the charger's word names the transaction.
            state.transaction = tx = _Transaction(transaction_id=transaction_id, evse_id=evse_id)
            flags += " (transaction resumed)"
        order = "" if seq_no > tx.last_seq_no else f" (out of order: after seqNo {tx.last_seq_no})"
        tx.last_seq_no = max(tx.last_seq_no, seq_no)
        if event_type == "Ended":
            state.transaction = None
        return f"TransactionEvent {event_type} {transaction_id} seqNo {seq_no}{order}{flags}"

    # --- dispatch ---------------------------------------------------------------------------------------------

    def send_setpoint(self, device_id: str, *, start: datetime, periods_kw: Sequence[tuple[int, float]],
                      valid_to: datetime) -> SetpointOutcome:
        """Send a TxProfile to the charger of ``device_id`` (from the twin's thread; does not wait for the
        answer, which is archived as a command ack when it comes). Not sent — and said why — when the charger
        is not connected or runs no transaction (a TxProfile needs one)."""
        station_id = next((s for s, st in self._states.items() if st.device_id == device_id), None)
        if station_id is None:
            return SetpointOutcome(device_id=device_id, sent=False, detail="not an OCPP charging station")
        state = self._states[station_id]
        if state.station is None:
            return SetpointOutcome(device_id=device_id, sent=False, detail="not connected")
        if state.transaction is None:
            return SetpointOutcome(device_id=device_id, sent=False, detail="no transaction (no EV plugged in)")
        self._profile_id += 1
        request = tx_profile(profile_id=self._profile_id, transaction_id=state.transaction.transaction_id,
                             start=start, periods_kw=periods_kw, valid_to=valid_to,
                             evse_id=state.transaction.evse_id)
        self._runner.submit(self._dispatch(station_id, state.station, request, periods_kw[0][1]))
        clipped = "; discharge sent as limit 0 (OCPP 2.0.1 limits charging only)" if request.clipped else ""
        return SetpointOutcome(device_id=device_id, sent=True, detail=f"{describe_profile(request)}{clipped}")

    async def _dispatch(self, station_id: str, station: _Station, request: ProfileRequest, first_kw: float) -> None:
        """Send one TxProfile; archive the charger's answer (or its absence) as a command ack whose detail
        names the periods it answered."""
        device = self._states[station_id].device_id
        profile_id = int(request.profile["id"])
        sent = describe_profile(request)
        wire = call.SetChargingProfile(evse_id=request.evse_id, charging_profile=request.profile)
        try:
            answer, raw = await station.set_charging_profile(wire)
        except (TimeoutError, asyncio.TimeoutError, ConnectionClosed) as exc:
            what = "no answer" if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) else type(exc).__name__
            body = json.dumps({"request": request.profile, "outcome": what}, sort_keys=True).encode("utf-8")
            raw = RawMessage(topic=f"ocpp/{station_id}/SetChargingProfile/unanswered", payload=body,
                             received_at=datetime.now(UTC))
            ack = command_ack(device, cmd_seq=profile_id, ts=self.clock(), accepted=False, applied_p_kw=None,
                              reason=f"SetChargingProfile {profile_id}: {what} ({exc})"[:200])
            self.sink([Decoded(raw=raw, transport=Transport.OCPP, channel=Channel.CMD_ACK.value, device_id=device,
                               payload=ack, note=f"SetChargingProfile not answered: {sent}")])
            return
        if isinstance(answer, OCPPError):
            accepted, status, reason = False, "CallError", f"CallError {_describe(answer)}"[:200]
        else:
            status = str(answer.status)
            accepted = status == "Accepted"
            info = answer.status_info or {}
            reason = None if accepted else f"{status}: {info.get('reason_code', '')} {info.get('additional_info', '')}".strip()
        ack = command_ack(device, cmd_seq=profile_id, ts=self.clock(), accepted=accepted,
                          applied_p_kw=max(first_kw, 0.0) if accepted else None, reason=reason)
        if raw is None:  # defensive: the library consumed the frame before we saw it
            raw = RawMessage(topic=f"ocpp/{station_id}/SetChargingProfile/result",
                             payload=json.dumps({"status": status}).encode(), received_at=datetime.now(UTC))
        self.sink([Decoded(raw=raw, transport=Transport.OCPP, channel=Channel.CMD_ACK.value, device_id=device,
                           payload=ack, note=f"SetChargingProfile {status}: {sent}")])


def _basic_credentials(header: str) -> tuple[str | None, str | None]:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None, None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else (None, None)

