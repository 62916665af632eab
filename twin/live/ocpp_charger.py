"""The field side of OCPP 2.0.1: a simulated EV charger as a charging station, on the ``ocpp`` library.

A charger connects to the CSMS with HTTP Basic (its provisioned password), sends BootNotification and a
StatusNotification, and then, each time the field simulator publishes its telemetry: MeterValues while no EV is
plugged in, TransactionEvent ``Started`` when one plugs in, ``Updated`` (with meter values) while it charges
and ``Ended`` when it leaves. A ``SetChargingProfile`` (TxProfile: the controller's schedule, one period per
interval) is answered through ``on_limit``, the simulator's setpoint rule, so the charger obeys it exactly as
an MQTT device obeys a command (the twin sends the rest of the schedule again every interval, so the limit
now is the first period).

Like a real station it keeps what it could not deliver: messages made while the link is down wait in order
(transaction events flagged ``offline``) and go out when it reconnects, continuing the same transaction. It
delivers at least once (a message whose answer was lost is sent again; the twin dedupes it).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ocpp.routing import on
from ocpp.v201 import ChargePoint as _ChargePoint
from ocpp.v201 import call, call_result
from ocpp.v201.enums import Action
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from twin.live.aio import AsyncRunner
from twin.live.ocpp_csms import SUBPROTOCOL
from twin.live.ocpp_mapping import parse_ocpp_time
from twin.live.messages import MessageError

__all__ = ["ChargingLimit", "OcppCharger", "ProfileAnswer"]

_LOG = logging.getLogger("twin.live.ocpp.charger")


@dataclass(frozen=True, kw_only=True)
class ChargingLimit:
    """A TxProfile as the charger understood it: the limit now (kW), from when, until when, and the whole
    schedule (seconds from ``start``, kW) it follows — ``periods_kw[0]`` is ``(0, limit_kw)``."""

    station_id: str
    profile_id: int
    limit_kw: float
    start: datetime
    valid_to: datetime | None
    periods_kw: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, kw_only=True)
class ProfileAnswer:
    accepted: bool
    reason: str | None = None  # OCPP reasonCode when rejected


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="microseconds").replace("+00:00", "Z")


def meter_value(ts: datetime, *, p_kw: float, q_kvar: float, e_imp_kwh: float, e_exp_kwh: float,
                soc_pct: float | None = None) -> dict[str, Any]:
    """One OCPP meterValue (snake_case, as the library takes it) in kW, kvar and kWh."""
    sampled = [
        {"value": max(p_kw, 0.0), "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "kW"}},
        {"value": max(-p_kw, 0.0), "measurand": "Power.Active.Export", "unit_of_measure": {"unit": "kW"}},
        {"value": max(q_kvar, 0.0), "measurand": "Power.Reactive.Import", "unit_of_measure": {"unit": "kvar"}},
        {"value": max(-q_kvar, 0.0), "measurand": "Power.Reactive.Export", "unit_of_measure": {"unit": "kvar"}},
        {"value": e_imp_kwh, "measurand": "Energy.Active.Import.Register", "unit_of_measure": {"unit": "kWh"}},
        {"value": e_exp_kwh, "measurand": "Energy.Active.Export.Register", "unit_of_measure": {"unit": "kWh"}},
    ]
    if soc_pct is not None:
        sampled.append({"value": soc_pct, "measurand": "SoC", "unit_of_measure": {"unit": "Percent"}})
    return {"timestamp": _iso(ts), "sampled_value": sampled}


class _Station(_ChargePoint):
    def __init__(self, owner: OcppCharger, connection: ClientConnection) -> None:
        super().__init__(owner.station_id, connection, response_timeout=owner.response_timeout_s, logger=_LOG)
        self.owner = owner

    @on(Action.set_charging_profile)
    def on_set_charging_profile(self, evse_id: int, charging_profile: dict[str, Any], **_: Any) -> Any:
        answer = self.owner.answer_profile(evse_id, charging_profile)
        info = None if answer.accepted else {"reason_code": answer.reason or "Rejected"}
        return call_result.SetChargingProfile(status="Accepted" if answer.accepted else "Rejected", status_info=info)


class OcppCharger:
    """One charging station with one EVSE. ``connect()`` / ``reconnect()`` / ``abort()`` / ``close()`` are
    blocking calls from the simulator's thread; ``publish_telemetry`` only queues (the runner sends)."""

    def __init__(self, *, station_id: str, url: str, password: str, runner: AsyncRunner,
                 on_limit: Callable[[ChargingLimit], ProfileAnswer], evse_id: int = 1,
                 response_timeout_s: float = 5.0, vendor: str = "gridtwin", model: str = "simulated-evse") -> None:
        self.station_id = station_id
        self.url = url.rstrip("/")
        self._password = password
        self._runner = runner
        self._on_limit = on_limit
        self.evse_id = evse_id
        self.response_timeout_s = response_timeout_s
        self._vendor, self._model = vendor, model
        self._ws: ClientConnection | None = None
        self._station: _Station | None = None
        self._reader: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._outbox: collections.deque[Any] = collections.deque()
        self._wake: asyncio.Event | None = None
        self.transaction_id: str | None = None
        self._seq_no = -1
        self.sent = 0
        self.answers: list[tuple[str, Any]] = []  # (action, the CSMS's parsed answer), in order
        #: The last well-formed TxProfiles received, in order (bounded: a long run sends one per interval).
        self.profiles: collections.deque[ChargingLimit] = collections.deque(maxlen=1000)

    # --- link ---------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._station is not None

    def connect(self, *, now: datetime, timeout_s: float = 10.0) -> None:
        """Open the link, then BootNotification and StatusNotification (Available), both answered."""
        self._runner.run(self._open(timeout_s), timeout_s=timeout_s + 1)
        self._runner.run(self._call_now(call.BootNotification(
            charging_station={"model": self._model, "vendor_name": self._vendor}, reason="PowerUp")),
            timeout_s=timeout_s)
        self.queue(self._status(now, "Available"))

    def reconnect(self, *, timeout_s: float = 10.0) -> None:
        """Open the link again after a loss (no reboot, so no BootNotification) and deliver what waited."""
        self._runner.run(self._open(timeout_s), timeout_s=timeout_s + 1)

    async def _open(self, timeout_s: float) -> None:
        token = base64.b64encode(f"{self.station_id}:{self._password}".encode()).decode("ascii")
        try:
            ws = await connect(f"{self.url}/{self.station_id}", subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                               additional_headers={"Authorization": f"Basic {token}"}, open_timeout=timeout_s,
                               ping_interval=None)
        except InvalidStatus as exc:
            body = exc.response.body.decode("utf-8", errors="replace").strip()
            raise ConnectionError(f"CSMS {self.url} refused charging station {self.station_id!r}: HTTP "
                                  f"{exc.response.status_code} {body}") from None
        except (OSError, WebSocketException, asyncio.TimeoutError) as exc:
            raise ConnectionError(f"cannot reach CSMS {self.url} for {self.station_id!r}: {exc}") from None
        self._ws = ws
        self._station = _Station(self, ws)
        self._reader = asyncio.create_task(self._read(self._station))
        if self._wake is None:
            self._wake = asyncio.Event()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._deliver())
        self._wake.set()

    async def _read(self, station: _Station) -> None:
        try:
            await station.start()
        except ConnectionClosed:
            pass
        finally:
            if self._station is station:
                self._station = None

    def abort(self) -> None:
        """Drop the TCP connection without a close frame, as a lost link would. Nothing queued is lost."""
        async def drop() -> None:
            ws, self._ws, self._station = self._ws, None, None
            if ws is not None:
                ws.transport.abort()

        self._runner.run(drop(), timeout_s=5.0)

    def close(self, *, now: datetime | None = None, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (while connected, up to ``timeout_s``), then close the link cleanly."""
        try:
            self.flush(timeout_s=timeout_s)
        except TimeoutError:
            pass

        async def shut() -> None:
            for task in (self._worker, self._reader):
                if task is not None:
                    task.cancel()
            ws, self._ws, self._station = self._ws, None, None
            if ws is not None:
                await ws.close()

        self._runner.run(shut(), timeout_s=timeout_s)

    def flush(self, *, timeout_s: float = 10.0) -> None:
        """Wait until every queued message was answered (only possible while connected)."""
        async def drained() -> None:
            while self._outbox:
                await asyncio.sleep(0.005)

        self._runner.run(drained(), timeout_s=timeout_s)

    @property
    def queued(self) -> int:
        return len(self._outbox)

    # --- messages -----------------------------------------------------------------------------------------

    def _status(self, now: datetime, status: str) -> Any:
        return call.StatusNotification(timestamp=_iso(now), connector_status=status, evse_id=self.evse_id,
                                       connector_id=1)

    def queue(self, payload: Any) -> None:
        """Queue one call (any ``ocpp.v201.call`` payload) for delivery in order."""
        self._outbox.append(payload)  # deque appends are thread-safe; the loop is only woken
        wake = self._wake
        if wake is not None:
            self._runner.loop.call_soon_threadsafe(wake.set)

    def publish_telemetry(self, *, ts: datetime, p_kw: float, q_kvar: float, e_imp_kwh: float, e_exp_kwh: float,
                          plugged: bool, soc_pct: float | None = None) -> None:
        """This sample as OCPP: a transaction event while an EV is (or just was) plugged in, else MeterValues."""
        values = [meter_value(ts, p_kw=p_kw, q_kvar=q_kvar, e_imp_kwh=e_imp_kwh, e_exp_kwh=e_exp_kwh,
                              soc_pct=soc_pct)]
        offline = None if self.connected else True
        if plugged and self.transaction_id is None:
            self.transaction_id, self._seq_no = str(uuid.uuid4()), 0
            self.queue(self._status(ts, "Occupied"))
            self.queue(call.TransactionEvent(
                event_type="Started", timestamp=_iso(ts), trigger_reason="CablePluggedIn", seq_no=0,
                transaction_info={"transaction_id": self.transaction_id, "charging_state": "Charging"},
                evse={"id": self.evse_id, "connector_id": 1}, meter_value=values, offline=offline))
        elif self.transaction_id is not None:
            self._seq_no += 1
            ended = not plugged
            info: dict[str, Any] = {"transaction_id": self.transaction_id}
            if ended:
                info["stopped_reason"] = "EVDisconnected"
            self.queue(call.TransactionEvent(
                event_type="Ended" if ended else "Updated", timestamp=_iso(ts),
                trigger_reason="EVDeparted" if ended else "MeterValuePeriodic", seq_no=self._seq_no,
                transaction_info=info, meter_value=values, offline=offline))
            if ended:
                self.transaction_id = None
                self.queue(self._status(ts, "Available"))
        else:
            self.queue(call.MeterValues(evse_id=self.evse_id, meter_value=values))

    async def _call_now(self, payload: Any) -> Any:
        station = self._station
        if station is None:
            raise ConnectionError(f"charging station {self.station_id!r} is not connected")
        answer = await station.call(payload)
        self.answers.append((type(payload).__name__, answer))
        return answer

    async def _deliver(self) -> None:
        """Send queued calls in order; on a lost link keep them (the head included) for the next one."""
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox and self._station is not None:
                station = self._station
                try:
                    answer = await station.call(self._outbox[0])
                except (ConnectionClosed, asyncio.TimeoutError, TimeoutError):
                    if self._station is station:
                        self._station = None
                    break
                self.answers.append((type(self._outbox[0]).__name__, answer))
                self._outbox.popleft()
                self.sent += 1

    def send_raw(self, frame: str) -> None:
        """Send any text on the link (tests: what the CSMS must refuse)."""
        async def send() -> None:
            if self._ws is None:
                raise ConnectionError(f"charging station {self.station_id!r} is not connected")
            await self._ws.send(frame)

        self._runner.run(send(), timeout_s=5.0)

    # --- the CSMS's requests ---------------------------------------------------------------------------------

    def answer_profile(self, evse_id: int, profile: dict[str, Any]) -> ProfileAnswer:
        """Check a SetChargingProfile as a station would, then let the simulator's rule decide."""
        if evse_id != self.evse_id:
            return ProfileAnswer(accepted=False, reason="UnknownEVSE")
        if profile.get("charging_profile_purpose") != "TxProfile":
            return ProfileAnswer(accepted=False, reason="UnsupportedPurpose")
        if profile.get("transaction_id") != self.transaction_id or self.transaction_id is None:
            return ProfileAnswer(accepted=False, reason="TxNotFound")
        schedule = (profile.get("charging_schedule") or [{}])[0]
        if schedule.get("charging_rate_unit") != "W":
            return ProfileAnswer(accepted=False, reason="UnsupportedRateUnit")
        periods = schedule.get("charging_schedule_period") or []
        try:
            start = parse_ocpp_time(schedule.get("start_schedule") or profile.get("valid_from"), field="startSchedule")
            valid_to = parse_ocpp_time(profile["valid_to"], field="validTo") if profile.get("valid_to") else None
        except MessageError:
            return ProfileAnswer(accepted=False, reason="InvalidSchedule")
        parsed = _periods_kw(periods)
        if parsed is None:
            return ProfileAnswer(accepted=False, reason="InvalidSchedule")
        limit = ChargingLimit(station_id=self.station_id, profile_id=int(profile["id"]), limit_kw=parsed[0][1],
                              start=start, valid_to=valid_to, periods_kw=parsed)
        self.profiles.append(limit)
        return self._on_limit(limit)


def _periods_kw(periods: list[dict[str, Any]]) -> tuple[tuple[int, float], ...] | None:
    """``chargingSchedulePeriod`` as (startPeriod s, kW); None unless the first starts at 0 and they increase."""
    try:
        parsed = tuple((int(p["start_period"]), float(p["limit"]) / 1000.0) for p in periods)
    except (KeyError, TypeError, ValueError):
        return None
    offsets = [offset for offset, _ in parsed]
    if not offsets or offsets[0] != 0 or any(b <= a for a, b in zip(offsets, offsets[1:])):
        return None
    return parsed
