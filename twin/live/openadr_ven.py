"""A participant's OpenADR 2.0b VEN, on ``openleadr``'s client: it receives the VTN's DR events and prices,
opts in or out, obeys setpoints for its devices that report over OpenADR, and reports their telemetry.

The field simulator runs one per participant. Every message it sends is signed with the participant's
provisioned key, and every answer it takes from the VTN is checked against the VTN's certificate
(openleadr does both). Telemetry goes as ``TELEMETRY_USAGE`` reports (r_id ``<device>:<quantity>``) as soon
as the simulator publishes it; OpenADR times are real times, mapped to and from simulated time by the
shared clock anchor (``SimClock``).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from openleadr import OpenADRClient, objects

from twin.live.aio import AsyncRunner
from twin.live.clock import SimClock
from twin.live.field_identity import X509Identity, certificate_fingerprint
from twin.live.openadr_vtn import REPORT_QUANTITIES, report_rid

__all__ = ["DrNotice", "OpenAdrVen", "PriceNotice", "Setpoint"]

_LOG = logging.getLogger("twin.live.openadr.ven")
_TELEMETRY = "TELEMETRY_USAGE"


@dataclass(frozen=True, kw_only=True)
class DrNotice:
    """A DR event as the VEN received it (simulated time) and what it answered."""

    event_id: str
    start: pd.Timestamp
    end: pd.Timestamp
    level: float
    opt: str


@dataclass(frozen=True, kw_only=True)
class PriceNotice:
    event_id: str
    prices: tuple[tuple[pd.Timestamp, pd.Timestamp, float], ...]  # (start, end, EUR/kWh)


@dataclass(frozen=True, kw_only=True)
class Setpoint:
    device_id: str
    p_kw: float
    start: pd.Timestamp
    valid_to: pd.Timestamp
    cmd_seq: int  # the VTN's command number (the last part of the event id ``setpoints-<ven>-<n>``)


class OpenAdrVen:
    """``start()`` registers, offers the reports and starts polling (blocking until registered);
    ``publish_telemetry`` queues a sample and sends a report at once; ``stop()`` ends the client."""

    def __init__(self, *, ven_id: str, url: str, identity: X509Identity, vtn_certificate: str, runner: AsyncRunner,
                 clock: Callable[[], SimClock], devices: Sequence[tuple[str, bool]],
                 opt_in: Callable[[str, pd.Timestamp, pd.Timestamp], bool],
                 on_setpoints: Callable[[list[Setpoint]], bool]) -> None:
        self.ven_id = ven_id
        self.url = url.rstrip("/")
        self._identity = identity
        self._vtn_certificate = vtn_certificate
        self._runner = runner
        self._clock = clock
        #: (device id, reports SOC) of every device whose telemetry this VEN reports
        self.devices = list(devices)
        self._opt_in = opt_in
        self._on_setpoints = on_setpoints
        self._client: OpenADRClient | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._lock = threading.Lock()
        self._buffer: dict[str, list[tuple[datetime, float]]] = {}
        self._last: dict[str, tuple[datetime, float]] = {}
        self.dr_events: list[DrNotice] = []
        self.prices: list[PriceNotice] = []
        self.setpoints: list[Setpoint] = []

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self, *, timeout_s: float = 15.0) -> OpenAdrVen:
        self._runner.run(self.start_async(), timeout_s=timeout_s)
        return self

    async def start_async(self) -> None:
        """``start`` on the runner's loop (several VENs register at once with ``asyncio.gather``)."""
        self._folder = tempfile.TemporaryDirectory(prefix=f"gridtwin-ven-{self.ven_id}-")
        folder = Path(self._folder.name)
        cert, key = self._identity.write(folder, "ven")
        vtn_cert = folder / "vtn.pem"
        vtn_cert.write_text(self._vtn_certificate, encoding="ascii")
        await self._start(cert, key, vtn_cert)

    async def _start(self, cert: Path, key: Path, vtn_cert: Path) -> None:
        client = OpenADRClient(ven_name=self.ven_id, ven_id=self.ven_id, vtn_url=self.url, cert=str(cert),
                               key=str(key), ca_file=str(vtn_cert), show_fingerprint=False,
                               vtn_fingerprint=certificate_fingerprint(self._vtn_certificate))
        client.add_handler("on_event", self._on_event)
        sampling = objects.SamplingRate(min_period=timedelta(seconds=1), max_period=timedelta(hours=1),
                                        on_change=False)
        for device, soc in self.devices:
            for quantity, (measurement, unit, scale) in REPORT_QUANTITIES.items():
                if quantity == "soc_pct" and not soc:
                    continue
                r_id = report_rid(device, quantity)
                client.add_report(_Values(self, r_id), resource_id=device, measurement=measurement, unit=unit,
                                  scale=scale, data_collection_mode="full", r_id=r_id,
                                  report_specifier_id=_TELEMETRY, report_duration=timedelta(hours=1),
                                  sampling_rate=sampling)
        self._client = client
        await client.run()
        if client.registration_id is None:
            raise ConnectionError(f"VEN {self.ven_id!r}: the VTN at {self.url} did not register it")

    @property
    def registered(self) -> bool:
        return self._client is not None and self._client.registration_id is not None

    def stop(self, *, timeout_s: float = 10.0) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                self._runner.run(_stop(client), timeout_s=timeout_s)
            except TimeoutError:
                pass
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    # --- telemetry ---------------------------------------------------------------------------------------

    def publish_telemetry(self, device_id: str, *, ts: pd.Timestamp | datetime, **values: float | None) -> None:
        """Queue one sample (device units) and report it now."""
        wall = datetime.fromtimestamp(self._clock().wall_at(pd.Timestamp(ts)), tz=UTC)
        with self._lock:
            for quantity, value in values.items():
                if value is not None and quantity in REPORT_QUANTITIES:
                    self._buffer.setdefault(report_rid(device_id, quantity), []).append((wall, float(value)))
        self._runner.submit(self._report_now())

    def take(self, r_id: str) -> list[tuple[datetime, float]]:
        """What to report for ``r_id``: everything queued, else the last value again (a duplicate the twin
        drops) so no report is ever empty."""
        with self._lock:
            values = self._buffer.pop(r_id, [])
            if values:
                self._last[r_id] = values[-1]
                return values
            return [self._last[r_id]] if r_id in self._last else []

    async def _report_now(self) -> None:
        client = self._client
        if client is None or client.registration_id is None:
            return
        for request in list(client.report_requests):
            if request.get("r_ids"):
                await client.update_report(request["report_request_id"])

    # --- events ------------------------------------------------------------------------------------------

    def _sim(self, wall: datetime) -> pd.Timestamp:
        return self._clock().sim_at(wall.timestamp())

    async def _on_event(self, event: dict[str, Any]) -> str:
        event_id = event["event_descriptor"]["event_id"]
        signals = event.get("event_signals") or []
        names = {s.get("signal_name") for s in signals}
        if "LOAD_DISPATCH" in names:
            setpoints = []
            for signal in signals:
                interval = (signal.get("intervals") or [{}])[0]
                start = self._sim(interval["dtstart"])
                setpoints.append(Setpoint(device_id=str(signal.get("signal_id")),
                                          p_kw=float(interval["signal_payload"]), start=start,
                                          valid_to=self._sim(interval["dtstart"] + interval["duration"]),
                                          cmd_seq=_command_number(event_id)))
            self.setpoints.extend(setpoints)
            return "optIn" if self._on_setpoints(setpoints) else "optOut"
        intervals = [i for s in signals for i in (s.get("intervals") or [])]
        spans = tuple((self._sim(i["dtstart"]), self._sim(i["dtstart"] + i["duration"]), float(i["signal_payload"]))
                      for i in intervals)
        if "ELECTRICITY_PRICE" in names:
            self.prices.append(PriceNotice(event_id=event_id, prices=spans))
            return "optIn"
        start = min(s for s, _, _ in spans)
        end = max(e for _, e, _ in spans)
        opt = "optIn" if self._opt_in(event_id, start, end) else "optOut"
        if not any(n.event_id == event_id for n in self.dr_events):
            self.dr_events.append(DrNotice(event_id=event_id, start=start, end=end,
                                           level=max(p for _, _, p in spans), opt=opt))
        return opt


def _command_number(event_id: str) -> int:
    tail = str(event_id).rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class _Values:
    """A report value callback in openleadr's 'full' collection mode: hands over the queued samples."""

    def __init__(self, ven: OpenAdrVen, r_id: str) -> None:
        self._ven, self._r_id = ven, r_id

    def __call__(self, date_from: datetime, date_to: datetime, sampling_interval: timedelta) -> list[Any]:
        return self._ven.take(self._r_id)


async def _stop(client: OpenADRClient) -> None:
    if client.scheduler.running:
        client.scheduler.shutdown(wait=False)
    if client.report_queue_task is not None:
        client.report_queue_task.cancel()
    if client.client_session is not None:
        await client.client_session.close()
    await asyncio.sleep(0)
