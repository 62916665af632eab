"""The live twin: MQTT telemetry in, the engine's lock-step policies, the controlling policy's setpoints out.

Owns the live loop around ``twin.engine.iterate_policies`` (which stays the only sequencer): it waits for an
interval's telemetry, writes the measured exogenous values into that interval's row of the run inputs
(``LiveInputs``), steps every policy, publishes the controlling policy's setpoints as signed
``CommandPayload``s (to OCPP chargers: TxProfiles with the rest of the controller's schedule, as the engine
holds it; the other policies run as shadow twins), turns devices that went offline into
``participant_dropout`` operator commands, and writes the run store every interval.

The twin keeps its own clock (wall clock × speed from an anchor, ``SimClock``): it steps an interval once
that interval has begun on its clock and every device reported, or its deadline passed. A device timestamp
never moves the clock; a sample stamped ahead of it is rejected by the ingest and archived with the reason.
Each run has its own MQTT session (``RUN/live/session.json``: a client id unique to the run, and the clock
anchor): a new run connects with a clean start, a resumed run resumes its own session and clock.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import paho.mqtt.client as mqtt
import pandas as pd
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from grids.profiles import ExogenousProfiles
from twin.commands import CommandChannel, CommandKind, OperatorCommand
from twin.engine import iterate_policies
from twin.inputs import RunInputs, build_inputs
from twin.live.canonical import Transport
from twin.live.clock import SimClock
from twin.live.device import encode_payload
from twin.live.ed25519_fast import signer_for
from twin.live.field_identity import FIELD_AUTH_FILENAME, FieldAuth, X509Identity, load_vtn_identity
from twin.live.ingest import Ingestor, IngestPolicy, MqttIngest
from twin.live.messages import Channel, DeviceAddress
from twin.live.mqtt import connect_and_wait, format_ts, make_client
from twin.live.ocpp_csms import OcppCsms, parse_ocpp_address
from twin.live.ocpp_mapping import remaining_periods_kw
from twin.live.openadr_vtn import OpenAdrVtn
from twin.live.protocol_log import protocol_log
from twin.live.signing import KeyRegistry, public_key_b64, sign_payload
from twin.live.simulator import (
    CredentialsOpt,
    LiveCredentials,
    ScenarioArg,
    SpeedOpt,
    StartAtOpt,
    broker_url_or_bad,
    credentials_or_bad,
    fleet_devices,
    start_at_or_bad,
)
from twin.live.transports import FieldPlan
from twin.records.recorder import PolicyRecords, Recorder, StepRecord
from twin.records.runstore import Heartbeat, RunStore
from twin.settlement.contracts import EventKind
from twin.settlement.dr_program import DrProgram, DrProgramError

if TYPE_CHECKING:
    from twin.scenario import Scenario

__all__ = ["LIVE_DIR", "LiveInputs", "LiveResult", "LiveSession", "LiveTwin", "live_command", "load_operator_key",
           "read_live_table", "run_live"]

#: Sub-folder of the run folder with the live extras: the raw-message archive and the per-interval live table.
LIVE_DIR = "live"
ARCHIVE_FILE = "telemetry.sqlite"
SESSION_FILE = "session.json"
#: The ingest judges staleness against the wall clock, but simulated device time may be years in the past: the
#: twin judges freshness itself, in simulated time, so the ingest's own stale mark is switched off.
_NEVER_STALE = pd.Timedelta(days=36500)


@dataclass(frozen=True, kw_only=True)
class LiveSession:
    """What makes a live run its own: its MQTT client id (unique per run) and its clock's anchor."""

    client_id: str
    clock: SimClock

    @classmethod
    def new(cls, *, sim_start: pd.Timestamp, speed: float, wall_start: float) -> LiveSession:
        return cls(client_id=f"gridtwin-live-{uuid.uuid4().hex[:16]}",
                   clock=SimClock(sim_start=sim_start, speed=speed, wall_start=wall_start))

    @classmethod
    def read(cls, run_dir: Path) -> LiveSession | None:
        """The session a run folder was started with (None for a new run)."""
        path = Path(run_dir) / LIVE_DIR / SESSION_FILE
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            client_id = data["client_id"]
            if not isinstance(client_id, str) or not client_id:
                raise ValueError(f"client_id={client_id!r}")
            return cls(client_id=client_id, clock=SimClock.from_json(data["clock"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a live session file ({exc}); it belongs to the run, do not edit it") from None

    def write(self, run_dir: Path) -> None:
        path = Path(run_dir) / LIVE_DIR / SESSION_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"client_id": self.client_id, "clock": self.clock.to_json()}, indent=2),
                       encoding="utf-8")
        os.replace(tmp, path)


class LiveInputs:
    """A private copy of the run inputs whose rows are overwritten from telemetry, interval by interval.

    Rows not yet filled hold the scenario profiles: they are the forecast the controllers see for the
    horizon. The engine reads row ``inputs.at(time)`` when it steps ``time``, so a row filled before stepping
    carries the measured values.
    """

    def __init__(self, inputs: RunInputs) -> None:
        p = inputs.profiles
        profiles = ExogenousProfiles(
            load_p_mw=p.load_p_mw.copy(), load_q_mvar=p.load_q_mvar.copy(), sgen_p_mw=p.sgen_p_mw.copy(),
            pv_per_mwp=p.pv_per_mwp.copy(), flex_per_mw=p.flex_per_mw.copy(),
        )
        self.inputs = RunInputs(
            net=inputs.net, assets=inputs.assets.copy(), ev_sessions=inputs.ev_sessions.copy(), profiles=profiles,
            price_eur_per_mwh=inputs.price_eur_per_mwh.copy(), base_load_bus_mw=inputs.base_load_bus_mw.copy(),
            pv_avail_mw=inputs.pv_avail_mw.copy(), flex_base_mw=inputs.flex_base_mw.copy(),
        )
        self._load_bus = inputs.net.load["bus"]
        self._sgen_bus = inputs.net.sgen["bus"]

    def fill(
        self,
        time: pd.Timestamp,
        *,
        load_p_mw: dict[int, float],
        load_q_mvar: dict[int, float],
        pv_avail_mw: dict[str, float],
        flex_base_mw: dict[str, float],
    ) -> None:
        """Overwrite interval ``time`` with measured values (missing keys keep the forecast)."""
        inputs = self.inputs
        row = inputs.at(time)
        for frame, values in ((inputs.profiles.load_p_mw, load_p_mw), (inputs.profiles.load_q_mvar, load_q_mvar),
                              (inputs.pv_avail_mw, pv_avail_mw), (inputs.flex_base_mw, flex_base_mw)):
            if values:
                columns = [frame.columns.get_loc(k) for k in values]
                frame.iloc[row, columns] = np.fromiter(values.values(), dtype=float, count=len(values))
        # The controllers' "now" column of the per-bus uncontrolled load follows the measured loads.
        loads = inputs.profiles.load_p_mw.iloc[row].groupby(self._load_bus.reindex(inputs.profiles.load_p_mw.columns)).sum()
        sgens = inputs.profiles.sgen_p_mw.iloc[row].groupby(self._sgen_bus.reindex(inputs.profiles.sgen_p_mw.columns)).sum()
        base = loads.reindex(inputs.base_load_bus_mw.columns, fill_value=0.0) - sgens.reindex(
            inputs.base_load_bus_mw.columns, fill_value=0.0)
        inputs.base_load_bus_mw.iloc[row] = base.to_numpy(float)

    def set_soc(self, soc_fraction: dict[str, float]) -> None:
        """Start batteries at their measured state of charge (on a resumed run the devices have moved on)."""
        assets = self.inputs.assets
        for asset_id, frac in soc_fraction.items():
            lo, hi = float(assets.at[asset_id, "soc_min"]), float(assets.at[asset_id, "soc_max"])
            assets.at[asset_id, "soc_init"] = float(np.clip(frac, lo, hi))


@dataclass(frozen=True, kw_only=True)
class LiveResult:
    path: Path
    intervals: int  # intervals stepped by this session
    commands_sent: int
    acks_accepted: int
    acks_refused: int
    #: (interval time, device_id) → Unix time the setpoint for that interval was published.
    command_wall: dict[tuple[pd.Timestamp, str], float] = field(repr=False)
    ocpp_url: str | None = None
    openadr_url: str | None = None


_LIVE_COLUMNS = ("measured", "expected", "forecast_filled", "offline", "dropouts_submitted", "commands_sent",
                 "releases_sent", "acks_accepted", "acks_refused", "trigger", "wait_s", "lead_s", "step_s", "flush_s",
                 "dr_events_issued", "not_sent", "behind_s", "ingest_queue", "seq_missing")


class LiveTwin:
    """One live session. ``start()`` connects; ``run()`` steps the intervals until the scenario ends or
    ``stop`` is set; ``crash()`` (tests) drops the sessions as a killed process would; ``close()`` ends cleanly.
    A new ``LiveTwin`` on the same ``out`` folder resumes after the last recorded interval, with that run's
    MQTT session and clock.

    ``start_at``: the Unix time at which the scenario's start happens on the twin's clock (give the devices
    the same); default: when ``start()`` is called. A resumed run keeps the anchor it was started with.
    ``warm_up=False`` skips stepping a throw-away interval at start (only for sessions that step nothing).
    """

    def __init__(
        self,
        *,
        scenario: Scenario,
        credentials: LiveCredentials,
        keys: KeyRegistry,
        operator_key: Ed25519PrivateKey,
        control: str,
        speed: float,
        out: Path,
        inputs: RunInputs | None = None,
        start_at: float | None = None,
        deadline: float = 0.25,
        offline_after: float = 2.5,
        warm_up: bool = True,
        field_auth: FieldAuth | None = None,
        ocpp_listen: tuple[str, int] = ("127.0.0.1", 0),
        openadr_listen: tuple[str, int] = ("127.0.0.1", 0),
        vtn_identity: X509Identity | None = None,
    ) -> None:
        names = [c.name for c in scenario.controllers]
        if control not in names:
            raise ValueError(f"control={control!r} is not a policy of this scenario; expected one of {names}")
        if not speed > 0:
            raise ValueError(f"speed={speed!r} must be a positive number of simulated seconds per second")
        if not 0 < deadline < 1:
            raise ValueError(f"deadline={deadline!r} must be a fraction of the step in (0, 1)")
        self.scenario = scenario
        self.credentials = credentials
        self.keys = keys
        self._operator_key = operator_key
        self._operator_signer = signer_for(operator_key)  # one signature per setpoint sent
        self.control = control
        self.speed = speed
        self.out = Path(out)
        base = inputs if inputs is not None else build_inputs(scenario)
        self.live = LiveInputs(base)
        self.devices: dict[str, DeviceAddress] = fleet_devices(base)
        missing = sorted(set(self.devices) - set(keys))
        if missing:
            raise ValueError(f"keys: device_id {missing[0]!r} has no registered public key ({len(missing)} missing)")
        self.start_at = start_at
        self.warm_up = warm_up
        self.deadline = deadline
        self.offline_timeout = pd.Timedelta(seconds=offline_after * scenario.step.total_seconds() / speed)
        assets = base.assets
        self._kind = assets["kind"].astype(str)
        self._participant = assets["participant_id"].astype(str)
        self._loads = {d: int(d.removeprefix("load-")) for d in self.devices if d.startswith("load-")}
        self.plan = FieldPlan.from_scenario(scenario, base)
        needs_auth = bool(self.plan.devices(Transport.OCPP)) or self.plan.openadr is not None
        if needs_auth and field_auth is None:
            raise ValueError("field_auth: the scenario's [live] table uses OCPP or OpenADR; give the field_auth.json "
                             "`gridtwin broker` wrote (--field-auth)")
        self.field_auth = field_auth or FieldAuth()
        self._ocpp_listen, self._openadr_listen = ocpp_listen, openadr_listen
        self._vtn_identity = vtn_identity
        self._csms: OcppCsms | None = None
        self._vtn: OpenAdrVtn | None = None
        self._program: DrProgram | None = None
        self._not_sent: list[str] = []
        #: OCPP charger → (interval its plan starts, the controller's schedule as the engine holds it, MW per
        #: interval): a TxProfile carries the rest of it.
        self._ocpp_plans: dict[str, tuple[pd.Timestamp, np.ndarray]] = {}
        self._ocpp_devices = pd.Index(self.plan.devices(Transport.OCPP))
        self.session = self._session()
        self.client_id = self.session.client_id
        self.clock = self.session.clock
        self.store = RunStore(self.out)
        self.channel = CommandChannel(self.out)
        self._buckets: dict[pd.Timestamp, dict[str, dict[str, float]]] = {}
        self._commanded: set[str] = set()
        self._command_wall: dict[tuple[pd.Timestamp, str], float] = {}
        self._ingestor: Ingestor | None = None
        self._ingest: MqttIngest | None = None
        self._publisher: mqtt.Client | None = None
        self._stats = {"commands": 0, "acks_accepted": 0, "acks_refused": 0, "intervals": 0}
        self._last_received = -1
        self._quiet_since = time.monotonic()
        self._last_backlog: dict[str, Any] | None = None
        #: The interval being stepped (time, offline devices, step start) and what its lead record sent.
        self._interval: tuple[pd.Timestamp, set[str], float] = (pd.Timestamp(0, tz="UTC"), set(), 0.0)
        self._lead_sent: tuple[int, int, float] = (0, 0, 0.0)

    # --- lifecycle -------------------------------------------------------------------------------------------

    def _session(self) -> LiveSession:
        """This run's session: the saved one when resuming (its clock must not change), else a new one."""
        saved = LiveSession.read(self.out)
        self.resumed = saved is not None
        if saved is None:
            wall = self.start_at if self.start_at is not None else time.time()
            return LiveSession.new(sim_start=self.scenario.start, speed=self.speed, wall_start=wall)
        clock = saved.clock
        if clock.speed != self.speed or clock.sim_start != self.scenario.start:
            raise ValueError(f"speed={self.speed!r}: the run in {self.out} was started at speed {clock.speed!r} "
                             f"from {clock.sim_start.isoformat()}; a resumed run keeps its clock")
        if self.start_at is not None and abs(self.start_at - clock.wall_start) > 1e-3:
            raise ValueError(f"start_at={self.start_at!r}: the run in {self.out} has its clock anchored at "
                             f"{clock.wall_start!r}; a resumed run keeps its clock")
        return saved

    def anchor_at(self, wall_start: float) -> None:
        """Anchor a new run's clock (the scenario's start happens at Unix time ``wall_start``) once it is
        known, before ``run()``; a resumed run keeps its own."""
        if self.resumed:
            raise ValueError(f"the run in {self.out} is resumed: it keeps its clock (anchored at "
                             f"{self.clock.wall_start!r})")
        self.session = LiveSession(client_id=self.client_id, clock=SimClock(
            sim_start=self.scenario.start, speed=self.speed, wall_start=wall_start))
        self.clock = self.session.clock
        self.session.write(self.out)

    def start(self, *, timeout_s: float = 10.0) -> LiveTwin:
        live_dir = self.out / LIVE_DIR
        live_dir.mkdir(parents=True, exist_ok=True)
        if not self.resumed and self.start_at is None:  # anchored now, not when the object was built
            self.session = LiveSession(client_id=self.client_id, clock=SimClock(
                sim_start=self.scenario.start, speed=self.speed, wall_start=time.time()))
            self.clock = self.session.clock
        self.resume_at = self._resume_point()
        # Device timestamps are judged against the twin's clock; never more than half a step ahead.
        skew = min(pd.Timedelta(minutes=5), self.scenario.step / 2)
        self._ingestor = Ingestor.open(live_dir / ARCHIVE_FILE, keys=self.keys,
                                       policy=IngestPolicy(stale_after=_NEVER_STALE, max_clock_skew=skew),
                                       clock=lambda: self.clock.now().to_pydatetime(),
                                       transports=self.plan.transport)
        self._restore_buckets(since=self.resume_at)
        self.session.write(self.out)
        c = self.credentials
        # A new run starts a clean session (nothing queued for an earlier run can reach it); a resumed run
        # resumes its own, and gets what the broker queued for it while it was away.
        self._ingest = MqttIngest(ingestor=self._ingestor, host=c.host, port=c.port, credentials=c.twin,
                                  client_id=self.client_id, clean_start=not self.resumed)
        try:
            self._ingest.start(timeout_s=timeout_s)
            publisher = make_client(client_id=f"{self.client_id}-cmd", credentials=c.twin)
            publisher.max_inflight_messages_set(1000)
            connect_and_wait(publisher, host=c.host, port=c.port, keepalive_s=10, clean_start=True, timeout_s=timeout_s)
            self._publisher = publisher
            self._start_standard_endpoints(timeout_s=timeout_s)
        except BaseException:
            self.close()
            raise
        if self.warm_up:
            self._warm_up()
        if not (self.out / "meta.json").exists():
            meta = {
                "scenario": self.scenario.to_toml_dict(), "seed": self.scenario.seed,
                "policies": [e.name for e in self.scenario.controllers], "n_intervals": len(self.scenario.times),
                "feeder": self.scenario.feeder,
                "assets": self.live.inputs.assets.reset_index().astype(str).to_dict(orient="records"),
                "live": {"control": self.control, "speed": self.speed, "broker": f"mqtt://{c.host}:{c.port}",
                         "client_id": self.client_id, "clock": self.clock.to_json(),
                         "ocpp": self.ocpp_url, "openadr": self.openadr_url,
                         "transports": {str(t): self.plan.devices(t) for t in Transport if self.plan.devices(t)}},
            }
            if self.scenario.settlement is not None:
                from twin.settlement.keystore import run_public_key

                meta["operator_public_key"] = run_public_key(self.out)
            self.store.write_meta(meta)
        return self

    # --- OCPP and OpenADR ---------------------------------------------------------------------------------

    @property
    def ocpp_url(self) -> str | None:
        return self._csms.url if self._csms is not None else None

    @property
    def openadr_url(self) -> str | None:
        return self._vtn.url if self._vtn is not None else None

    def _sink(self, items: Any) -> Any:
        """Messages the CSMS or the VTN decoded: judged and archived by the same ingestor as MQTT's."""
        assert self._ingest is not None
        with self._ingest.locked() as ingestor:
            return ingestor.ingest_decoded(items)

    def _start_standard_endpoints(self, *, timeout_s: float) -> None:
        stations = self.plan.ocpp_stations
        if stations:
            host, port = self._ocpp_listen
            self._csms = OcppCsms(auth=self.field_auth, stations=stations, sink=self._sink,
                                  clock=lambda: self.clock.now().to_pydatetime(), host=host, port=port).start(
                timeout_s=timeout_s)
        if self.plan.openadr is None:
            return
        self._program = DrProgram.open(self.program_path)
        identity = self._vtn_identity or load_vtn_identity(create=False)
        host, port = self._openadr_listen
        self._vtn = OpenAdrVtn(auth=self.field_auth, identity=identity, reporting=self.plan.vens, sink=self._sink,
                               program=self._program, clock=lambda: self.clock, host=host, port=port,
                               poll_s=max(0.05, min(1.0, 0.1 * self.scenario.step.total_seconds() / self.speed)))
        self._vtn.start(timeout_s=timeout_s)
        config = self.scenario.settlement_config()
        if self.resumed:  # the program remembers what this run issued; the new VTN's queues do not
            self._vtn.announce_open_events()
        for i, event in enumerate(config.events if config is not None else ()):
            self._vtn.issue_event(event_id=event.event_id or f"scenario-{i}", start=pd.Timestamp(event.start),
                                  end=pd.Timestamp(event.end), kind=event.kind, source="scenario",
                                  level=self.plan.openadr.level)

    @property
    def program_path(self) -> Path:
        return (self.out / LIVE_DIR / "openadr" / "program.sqlite").resolve()

    def _engine_scenario(self, t: pd.Timestamp) -> Scenario:
        """What the engine runs: with a VTN, settlement pays for the events the VTN issued (read from the DR
        program register, with the VENs' answers), not for the ones the scenario merely lists."""
        update: dict[str, Any] = {"start": t}
        if self._vtn is not None and self.scenario.settlement is not None:
            update["settlement"] = {**self.scenario.settlement, "events": [], "dr_program": str(self.program_path)}
        return self.scenario.model_copy(update=update)

    def _publish_prices(self, t: pd.Timestamp) -> None:
        """Once a day (and at the first interval): the next day's tariff as an OpenADR price signal."""
        if self._vtn is None or self.plan.openadr is None or not self.plan.openadr.prices:
            return
        if t != self.resume_at and (t - self.scenario.start) % pd.Timedelta("1D") != pd.Timedelta(0):
            return
        prices = self.live.inputs.price_eur_per_mwh
        window = prices[(prices.index >= t) & (prices.index < min(t + pd.Timedelta("1D"), self.scenario.end))]
        spans: list[tuple[pd.Timestamp, pd.Timestamp, float]] = []
        for when, price in window.items():
            eur_per_kwh = float(price) / 1000.0
            if spans and spans[-1][2] == eur_per_kwh and spans[-1][1] == when:
                spans[-1] = (spans[-1][0], when + self.scenario.step, eur_per_kwh)
            else:
                spans.append((pd.Timestamp(when), pd.Timestamp(when) + self.scenario.step, eur_per_kwh))
        self._vtn.publish_prices(event_id=f"prices-{t.strftime('%Y%m%dT%H%M')}", prices=spans)

    def _operator_dr_events(self, t: pd.Timestamp) -> int:
        """With a VTN, an operator's DR event is the VTN's to issue: it starts after the program's notice (on
        an interval boundary, from ``t`` on) and is settled from the program register like every issued event.
        The command is answered here (applied / rejected, with why); the engine never sees it."""
        if self._vtn is None or self.plan.openadr is None:
            return 0
        issued = 0
        step = self.scenario.step
        notice = pd.Timedelta(self.plan.openadr.notice)
        for command, path, _reason in self.channel.take():
            if command is None or command.kind is not CommandKind.DR_EVENT:
                continue  # the engine answers the others (and the malformed ones)
            start = t + -(-notice // step) * step
            end = start + command.duration
            event_id = f"operator-{(command.command_id or path.stem)[:32]}"
            if command.duration % step != pd.Timedelta(0):
                verdict, detail = "rejected", f"duration={command.duration}: a DR event lasts whole intervals of {step}"
            elif end > self.scenario.end:
                verdict, detail = "rejected", (f"the event {start.isoformat()}..{end.isoformat()} ends after the run "
                                               f"({self.scenario.end.isoformat()})")
            else:
                try:
                    self._vtn.issue_event(event_id=event_id, start=start, end=end, kind=EventKind.ECONOMIC,
                                          source=f"operator:{command.operator}", level=self.plan.openadr.level)
                    verdict, detail = "applied", (f"issued by the OpenADR VTN as event {event_id} for "
                                                  f"{start.isoformat()}..{end.isoformat()} to "
                                                  f"{len(self._vtn.vens)} VENs")
                    issued += 1
                except DrProgramError as exc:
                    verdict, detail = "rejected", str(exc)
            self.channel.finish(path, verdict=verdict, applied_at=start if verdict == "applied" else None,
                                detail=detail)
        return issued

    def _warm_up(self) -> None:
        """Step one throw-away interval on copies of the inputs: the first real interval must not pay for
        first-call costs (power-flow set-up, controller build), or its setpoints reach the devices too late."""
        t = self.resume_at if self.resume_at < self.scenario.end else self.scenario.start
        scratch = self.scenario.model_copy(update={"start": t, "end": t + self.scenario.step, "settlement": None})
        steps = iterate_policies(scratch, LiveInputs(self.live.inputs).inputs)
        next(steps)
        steps.close()

    def _resume_point(self) -> pd.Timestamp:
        """The first interval not yet in the run store (the scenario start for a new run)."""
        try:
            summary = self.store.read_table(self.control, "summary")
        except FileNotFoundError:
            return self.scenario.start
        return pd.Timestamp(summary.index.max()) + self.scenario.step if len(summary) else self.scenario.start

    def _restore_buckets(self, *, since: pd.Timestamp) -> None:
        """Telemetry a crashed session archived (and acknowledged) but never stepped: read it back."""
        assert self._ingestor is not None
        for row in self._ingestor.archive.iter_rows(channel=Channel.TELEMETRY.value, verdicts=["accepted"]):
            if row.device_ts is None or row.device_id is None:
                continue
            ts = pd.Timestamp(row.device_ts)
            if ts < since:
                continue
            payload = json.loads(row.canonical or row.payload)  # OCPP / OpenADR rows keep their canonical form
            self._add_sample(ts, row.device_id, {q: float(payload[q]) for q in ("p_kw", "q_kvar", "soc_pct")
                                                 if payload.get(q) is not None})

    def crash(self) -> None:
        """Fault injection: end both sessions without DISCONNECT, losing whatever was not archived yet."""
        self._stop_standard_endpoints()
        if self._ingest is not None:
            self._ingest.abort()
            self._ingest = None
        if self._publisher is not None:
            self._publisher.loop_stop()
            sock = self._publisher.socket()
            if sock is not None:
                sock.close()
            self._publisher = None
        self._close_ingestor()

    def _stop_standard_endpoints(self) -> None:
        for endpoint in (self._csms, self._vtn):
            if endpoint is not None:
                endpoint.stop()
        self._csms = self._vtn = None
        if self._program is not None:
            self._program.close()
            self._program = None

    def close(self) -> None:
        self._stop_standard_endpoints()
        if self._ingest is not None:
            self._ingest.stop()
            self._ingest = None
        if self._publisher is not None:
            self._publisher.disconnect()
            self._publisher.loop_stop()
            self._publisher = None
        self._close_ingestor()

    def _close_ingestor(self) -> None:
        if self._ingestor is not None:
            self._ingestor.close()
            self._ingestor = None

    def __enter__(self) -> LiveTwin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- telemetry -----------------------------------------------------------------------------------------

    def _interval_of(self, ts: pd.Timestamp) -> pd.Timestamp:
        start, step = self.scenario.start, self.scenario.step
        return start + ((ts - start) // step) * step

    def _add_sample(self, ts: pd.Timestamp, device_id: str, values: dict[str, float]) -> None:
        # The first sample of an interval is the one taken at its start: it is what the interval is built from.
        # Never moves the clock: the ingest already refused samples stamped ahead of it.
        bucket = self._buckets.setdefault(self._interval_of(ts), {})
        if device_id not in bucket:
            bucket[device_id] = values

    def _add_samples(self, samples: pd.DataFrame) -> None:
        """``_add_sample`` for a batch of canonical samples, by arrays: only each device's first sample of an
        interval becomes a dict (a device reporting every second sends 60 per 1-minute interval)."""
        start, step = self.scenario.start, self.scenario.step
        frame = samples.assign(interval=start + ((samples["ts"] - start) // step) * step)
        first = frame.groupby(["interval", "device_id"], sort=False)["ts"].transform("min")
        frame = frame[frame["ts"].to_numpy() == first.to_numpy()]
        wide = frame.pivot_table(index=["interval", "device_id"], columns="quantity", values="value",
                                 aggfunc="first")
        quantities = [str(q) for q in wide.columns]
        for (interval, device_id), row in zip(wide.index, wide.to_numpy(), strict=True):
            bucket = self._buckets.setdefault(pd.Timestamp(interval), {})
            if device_id not in bucket:
                bucket[str(device_id)] = {q: float(v) for q, v in zip(quantities, row, strict=True) if v == v}

    def _drain(self) -> None:
        assert self._ingest is not None
        samples = self._ingest.take_samples()
        if len(samples):
            self._add_samples(samples)
        with self._ingest.locked() as ingestor:
            acks = ingestor.take_command_acks()
            received = ingestor.received
        self._stats["acks_accepted"] += sum(1 for a in acks if a.accepted)
        self._stats["acks_refused"] += sum(1 for a in acks if not a.accepted)
        if received != self._last_received:
            self._last_received, self._quiet_since = received, time.monotonic()

    def _offline(self) -> list[str]:
        assert self._ingest is not None
        with self._ingest.locked() as ingestor:
            return [d for d in ingestor.offline_devices(now=datetime.now(UTC), timeout=self.offline_timeout)
                    if d in self.devices]

    def _wait_for(self, t: pd.Timestamp, stop: threading.Event) -> str | None:
        """Block until interval ``t`` can be stepped; return why ("complete" | "deadline"), None if stopped.

        Only the twin's clock says when: not before ``t`` begins on it, however complete the telemetry looks."""
        grace = self.deadline * self.scenario.step
        offline: set[str] = set()
        offline_at = -1.0
        while not stop.is_set():
            self._drain()
            now = self.clock.now()
            if now >= t:
                if time.monotonic() - offline_at > 0.25:  # a walk over every device: not at every 10-ms poll
                    offline, offline_at = set(self._offline()), time.monotonic()
                expected = set(self.devices) - offline
                if expected and expected <= set(self._buckets.get(t, {})):
                    return "complete"
                # Past the deadline, step with what arrived once the ingest has gone quiet (during a catch-up
                # burst after a restart the interval's samples are still being archived).
                if now >= t + grace and time.monotonic() - self._quiet_since > 0.1:
                    return "deadline"
            time.sleep(0.01)
        return None

    # --- one interval ------------------------------------------------------------------------------------------

    def _fill(self, t: pd.Timestamp) -> tuple[int, int]:
        """Write interval ``t``'s measurements into the inputs; return (devices measured, values forecast)."""
        bucket = self._buckets.get(t, {})
        load_p, load_q, pv, flex = {}, {}, {}, {}
        for device_id, values in bucket.items():
            if device_id in self._loads:
                load_p[self._loads[device_id]] = values.get("p_kw", np.nan) / 1000.0
                load_q[self._loads[device_id]] = values.get("q_kvar", np.nan) / 1000.0
            elif device_id not in self._commanded and "p_kw" in values:
                # Running on its own, a PV inverter produces all that is available and a flexible load draws
                # its request: the reading is the exogenous value. Under a setpoint it is not: keep the forecast.
                kind = self._kind.get(device_id)
                if kind == "pv":
                    pv[device_id] = max(-values["p_kw"], 0.0) / 1000.0
                elif kind == "flex_load":
                    flex[device_id] = max(values["p_kw"], 0.0) / 1000.0
        load_p = {k: v for k, v in load_p.items() if not np.isnan(v)}
        load_q = {k: v for k, v in load_q.items() if not np.isnan(v)}
        self.live.fill(t, load_p_mw=load_p, load_q_mvar=load_q, pv_avail_mw=pv, flex_base_mw=flex)
        forecast = (len(self._loads) - len(load_p)) + sum(1 for d in self.devices if d not in bucket and d not in self._loads)
        return len(bucket), forecast

    def _initial_soc(self, t: pd.Timestamp) -> None:
        bucket = self._buckets.get(t, {})
        soc = {d: v["soc_pct"] / 100.0 for d, v in bucket.items() if "soc_pct" in v and d in self._kind.index}
        self.live.set_soc(soc)

    def _submit_dropouts(self, offline: list[str]) -> int:
        """A device gone offline becomes a one-interval participant dropout in every policy's comms model, so
        their setpoints stop reaching it and it falls back when its held setpoint expires."""
        participants = sorted({self._participant[d] for d in offline if d in self._participant.index})
        for pid in participants:
            self.channel.submit(OperatorCommand(kind=CommandKind.PARTICIPANT_DROPOUT, duration=self.scenario.step,
                                                operator="live-twin", participant_id=pid))
        return len(participants)

    def _on_lead(self, record: StepRecord) -> None:
        """The controlling policy's record of the interval being stepped: command the devices at once."""
        t, offline, t0 = self._interval
        sent, released = self._publish_setpoints(t, record, offline)
        self._lead_sent = (sent, released, time.monotonic() - t0)

    def _publish_setpoints(self, t: pd.Timestamp, record: StepRecord, offline: set[str]) -> tuple[int, int]:
        """Signed commands for every asset the controlling policy holds a setpoint for; a release (expired
        command) for one it stopped holding. Skipped for intervals already over (catch-up after a restart)."""
        self._remember_plans(t, record)
        if self._publisher is None or self.clock.now() >= t + self.scenario.step:
            return 0, 0
        held = record.fallback.index[~record.fallback.to_numpy(bool)]
        sent = released = 0
        until = t + self.scenario.setpoint_ttl
        valid_until = format_ts(until.to_pydatetime())
        by_ven: dict[str, dict[str, float]] = {}
        for asset_id in map(str, held):
            if asset_id in offline:
                continue
            p_kw = float(record.outcome.p_requested_mw[asset_id]) * 1000.0
            transport = self.plan.transport.get(asset_id, Transport.MQTT)
            if transport is Transport.OPENADR:
                by_ven.setdefault(self.plan.ven_of(asset_id), {})[asset_id] = p_kw
                continue
            if transport is Transport.OCPP:
                sent += self._send_profile(t, asset_id, *self._profile_periods(t, asset_id, p_kw=p_kw))
                continue
            self._send_command(t, asset_id, p_kw=p_kw, q_kvar=float(record.outcome.q_mvar[asset_id]) * 1000.0,
                               valid_until=valid_until)
            sent += 1
        for ven, setpoints in sorted(by_ven.items()):
            assert self._vtn is not None
            self._vtn.send_setpoints(ven, setpoints, start=t, valid_to=until)
            self._stats["commands"] += len(setpoints)
            sent += len(setpoints)
        for asset_id in sorted(self._commanded - set(map(str, held))):
            if asset_id in offline:
                continue
            transport = self.plan.transport.get(asset_id, Transport.MQTT)
            if transport is Transport.MQTT:
                self._send_command(t, asset_id, p_kw=0.0, q_kvar=0.0, valid_until=format_ts(t.to_pydatetime()))
                released += 1
            elif transport is Transport.OCPP:  # an already expired TxProfile releases the charger
                released += self._send_profile(t, asset_id, [(0, 0.0)], t)
            # OpenADR: the setpoint event simply ends at its setpoint_ttl
        self._commanded = set(map(str, held))
        return sent, released

    def _remember_plans(self, t: pd.Timestamp, record: StepRecord) -> None:
        """Keep the schedules that reached OCPP chargers in interval ``t`` (the engine held them)."""
        if record.held_schedule is None or not len(self._ocpp_devices):
            return
        rows, plans = record.held_schedule
        ids = pd.Index(record.outcome.ids[rows]).astype(str)
        for i in np.flatnonzero(ids.isin(self._ocpp_devices)):
            self._ocpp_plans[ids[i]] = (t, plans[i])

    def _profile_periods(self, t: pd.Timestamp, device_id: str, *,
                         p_kw: float) -> tuple[list[tuple[int, float]], pd.Timestamp]:
        """A held charger's TxProfile from ``t``: the rest of the controller's schedule, one period (seconds
        from ``t``, kW) per interval, valid until the setpoint expires (``p_kw`` alone if no plan is known)."""
        ttl = self.scenario.setpoint_ttl
        since, plan_mw = self._ocpp_plans.get(device_id, (t, np.zeros(0)))
        periods = remaining_periods_kw(plan_mw, held_from=since, at=t, step=self.scenario.step)
        return (periods, since + ttl) if periods else ([(0, p_kw)], t + ttl)

    def _send_profile(self, t: pd.Timestamp, device_id: str, periods_kw: list[tuple[int, float]],
                      valid_to: pd.Timestamp) -> int:
        """A TxProfile for an OCPP charger (1 if sent; when not, the live table says why)."""
        assert self._csms is not None
        outcome = self._csms.send_setpoint(device_id, start=t.to_pydatetime(), periods_kw=periods_kw,
                                           valid_to=valid_to.to_pydatetime())
        if not outcome.sent:
            self._not_sent.append(f"{device_id}: {outcome.detail}")
            return 0
        self._command_wall[(t, device_id)] = time.time()
        self._stats["commands"] += 1
        return 1

    def _send_command(self, t: pd.Timestamp, device_id: str, *, p_kw: float, q_kvar: float, valid_until: str) -> None:
        assert self._publisher is not None
        topic = self.devices[device_id].topic(Channel.CMD)
        payload = {"device_id": device_id, "cmd_seq": time.time_ns() // 1000, "ts": format_ts(t.to_pydatetime()),
                   "p_setpoint_kw": p_kw, "q_setpoint_kvar": q_kvar, "valid_until": valid_until}
        signed = sign_payload(payload, topic=topic, private_key=self._operator_signer)
        self._publisher.publish(topic, encode_payload(signed), qos=1)
        self._command_wall[(t, device_id)] = time.time()
        self._stats["commands"] += 1

    # --- the loop ----------------------------------------------------------------------------------------------

    def run(self, *, stop: threading.Event | None = None) -> LiveResult:
        """Step every interval on the twin's clock until the scenario's end or ``stop``. ``status.json`` keeps a
        heartbeat (``twin.records.runstore.Heartbeat``) with the backlog, so a reader tells a live twin from a
        killed one; a twin stopped on purpose (``stop``, Ctrl-C, SIGTERM) says "interrupted", one that failed
        says "failed" (and re-raises): either resumes by running it again on the same folder."""
        stop = stop or threading.Event()
        times = self.scenario.times[self.scenario.times >= self.resume_at]
        total = len(self.scenario.times)
        done = total - len(times)
        heartbeat = Heartbeat(self.store).start()
        heartbeat.write(done=done, total=total, state="running", live=self._last_backlog or {})
        try:
            done = self._step_all(times, done=done, total=total, stop=stop, heartbeat=heartbeat)
        except BaseException as exc:  # Ctrl-C or SIGTERM (through the CLI's handler): interrupted; else failed
            state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            heartbeat.write(done=done + self._stats["intervals"], total=total, state=state, live=self._last_backlog)
            raise
        finally:
            heartbeat.stop()
        if done == total:
            heartbeat.write(done=done, total=total, state="finished", live=self._last_backlog)
            self._write_kpis()
        else:
            heartbeat.write(done=done, total=total, state="interrupted", live=self._last_backlog)
        return LiveResult(path=self.out, intervals=self._stats["intervals"], commands_sent=self._stats["commands"],
                          acks_accepted=self._stats["acks_accepted"], acks_refused=self._stats["acks_refused"],
                          command_wall=dict(self._command_wall), ocpp_url=self.ocpp_url, openadr_url=self.openadr_url)

    def _step_all(self, times: pd.DatetimeIndex, *, done: int, total: int, stop: threading.Event,
                  heartbeat: Heartbeat) -> int:
        """The loop: wait for each interval, step the policies, command the devices, record; the intervals
        done when it ends."""
        recorder = Recorder(step=self.scenario.step)
        engine = None
        live_rows: list[dict[str, Any]] = []
        try:
            for t in times:
                waited = time.monotonic()
                trigger = self._wait_for(t, stop)
                if trigger is None:
                    break
                wait_s = time.monotonic() - waited
                offline = self._offline()
                measured, forecast = self._fill(t)
                dropouts = self._submit_dropouts(offline)
                self._publish_prices(t)
                dr_events = self._operator_dr_events(t)
                if engine is None:
                    self._initial_soc(t)
                    engine = iterate_policies(self._engine_scenario(t), self.live.inputs, run_dir=self.out,
                                              lead=self.control, on_lead=self._on_lead)
                t0 = time.monotonic()
                self._interval = (t, set(offline), t0)
                records = next(engine)  # the controlling policy steps first: its setpoints leave before the shadows'
                sent, released, lead_s = self._lead_sent
                step_s = time.monotonic() - t0
                self._drain()
                acks = (self._stats["acks_accepted"], self._stats["acks_refused"])
                live_rows.append({"time": t, "measured": measured, "expected": len(self.devices),
                                  "forecast_filled": forecast, "offline": ",".join(sorted(offline)),
                                  "dropouts_submitted": dropouts, "commands_sent": sent, "releases_sent": released,
                                  "acks_accepted": acks[0], "acks_refused": acks[1], "trigger": trigger,
                                  "wait_s": wait_s, "lead_s": lead_s, "step_s": step_s,
                                  "dr_events_issued": dr_events,
                                  "not_sent": "; ".join(self._not_sent)})
                self._not_sent = []
                recorder.add(records)
                t1 = time.monotonic()
                for rec in recorder.freeze(since=len(recorder) - 1).values():
                    self.store.append(rec)
                live_rows[-1]["flush_s"] = time.monotonic() - t1
                backlog = self._last_backlog = self._backlog(t)
                live_rows[-1].update(backlog)
                self._append_live(live_rows[-1:])
                self._buckets.pop(t, None)
                done += 1
                self._stats["intervals"] += 1
                heartbeat.write(done=done, total=total, state="running", live=backlog, durable=True)
        finally:
            if engine is not None:
                engine.close()
        return done

    def _backlog(self, t: pd.Timestamp) -> dict[str, Any]:
        """How far behind the twin is once interval ``t`` is done: simulated seconds past the start of the next
        interval (0 while it keeps up), messages received but not yet judged, and telemetry sequence numbers
        missing so far (what QoS-0 telemetry lost; the cumulative registers keep settlement exact)."""
        assert self._ingest is not None
        behind = (self.clock.now() - (t + self.scenario.step)).total_seconds()
        return {"behind_s": round(max(0.0, behind), 3), "ingest_queue": self._ingest.backlog(),
                "seq_missing": self._ingest.total_missing()}

    def _append_live(self, rows: list[dict[str, Any]]) -> None:
        folder = self.out / LIVE_DIR / "intervals"
        folder.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(rows).set_index("time")[list(_LIVE_COLUMNS)]
        part = len(list(folder.glob("part-*.parquet")))
        tmp = folder / f".part-{part:06d}.parquet.tmp"
        frame.to_parquet(tmp)
        tmp.replace(folder / f"part-{part:06d}.parquet")

    def _write_kpis(self) -> None:
        from controllers.api import NetworkLimits
        from twin.records.kpis import compute_kpis

        limits = NetworkLimits(**self.scenario.limits.model_dump())
        kpis = {}
        for entry in self.scenario.controllers:
            tables = {name: self.store.read_table(entry.name, name) for name in PolicyRecords.TABLES}
            kpis[entry.name] = compute_kpis(PolicyRecords(policy=entry.name, step=self.scenario.step, **tables),
                                            limits=limits)
        self.store.write_kpis(kpis)


def load_operator_key(path: Path) -> Ed25519PrivateKey:
    """The operator's signing key (PEM, as ``gridtwin broker`` writes it); never creates one."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise ValueError(f"operator_key={str(path)!r}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise ValueError(f"operator_key={str(path)!r}: not a PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"operator_key={str(path)!r}: not an Ed25519 private key")
    return key


def read_live_table(run_dir: Path) -> pd.DataFrame:
    """The per-interval live table of a run (measured devices, offline devices, commands, acks, trigger)."""
    parts = sorted((Path(run_dir) / LIVE_DIR / "intervals").glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{run_dir}: no live intervals recorded")
    return pd.concat([pd.read_parquet(p) for p in parts])


def run_live(
    scenario: Scenario,
    *,
    broker_host: str,
    broker_port: int,
    credentials: LiveCredentials | Path,
    keys: KeyRegistry | Path,
    operator_key: Ed25519PrivateKey | Path,
    control: str,
    speed: float = 60.0,
    out: Path,
    inputs: RunInputs | None = None,
    stop: threading.Event | None = None,
    start_at: float | None = None,
    field_auth: FieldAuth | Path | None = None,
    ocpp_listen: tuple[str, int] = ("127.0.0.1", 0),
    openadr_listen: tuple[str, int] = ("127.0.0.1", 0),
    on_started: Callable[[LiveTwin], None] | None = None,
) -> LiveResult:
    """Run the live twin until the scenario's end (or ``stop``); blocking. Re-running on the same ``out``
    resumes after the last recorded interval, with the run's own MQTT session (which replays what arrived
    meanwhile) and clock. ``start_at``: Unix time of the scenario's start on the twin's clock (new runs).
    ``field_auth``: OCPP password hashes and VEN fingerprints (``field_auth.json``), when the scenario's
    ``[live]`` table uses OCPP or OpenADR; the CSMS and the VTN listen on ``ocpp_listen`` / ``openadr_listen``
    (port 0: a free one); ``on_started`` is told once they do (the CLI prints their addresses)."""
    creds = credentials if isinstance(credentials, LiveCredentials) else LiveCredentials.from_file(credentials)
    creds = creds.with_address(broker_host, broker_port)
    registry = keys if isinstance(keys, KeyRegistry) else KeyRegistry.from_file(keys)
    key = operator_key if isinstance(operator_key, Ed25519PrivateKey) else load_operator_key(operator_key)
    if public_key_b64(key) != creds.operator_public_key:
        raise ValueError("operator_key: its public key is not the credentials' operator_public_key "
                         f"{creds.operator_public_key!r}: the devices would refuse every setpoint")
    auth = field_auth if isinstance(field_auth, FieldAuth) or field_auth is None else FieldAuth.from_file(field_auth)
    twin = LiveTwin(scenario=scenario, credentials=creds, keys=registry, operator_key=key, control=control,
                    speed=speed, out=out, inputs=inputs, start_at=start_at, field_auth=auth, ocpp_listen=ocpp_listen,
                    openadr_listen=openadr_listen)
    with twin:
        if on_started is not None:
            on_started(twin)
        return twin.run(stop=stop)


def live_command(
    scenario: ScenarioArg,
    broker: Annotated[str, typer.Option("--broker", help="Broker address, mqtt://HOST:PORT.")] = "mqtt://127.0.0.1:1883",
    control: Annotated[str | None, typer.Option(
        "--control", help="Policy whose setpoints go to the devices (default: the first); the others run as shadows.")]
    = None,
    speed: SpeedOpt = 60.0,
    out: Annotated[Path, typer.Option("--out", help="Run folder (an existing one is resumed).")] = Path("runs/live"),
    keys: Annotated[Path, typer.Option("--keys", help="Device public-key registry JSON.")] = Path("live/device_keys.json"),
    credentials: CredentialsOpt = Path("live/credentials.json"),
    start_at: StartAtOpt = None,
    field_auth: Annotated[Path | None, typer.Option(
        "--field-auth", help="OCPP password hashes and VEN certificate fingerprints (default: field_auth.json "
                             "beside --keys), when the scenario's [live] table uses OCPP or OpenADR.")] = None,
    ocpp: Annotated[str, typer.Option(
        "--ocpp", metavar="HOST:PORT", help="Where the OCPP 2.0.1 CSMS listens (port 0: a free one).")]
    = "127.0.0.1:0",
    openadr: Annotated[str, typer.Option(
        "--openadr", metavar="HOST:PORT", help="Where the OpenADR 2.0b VTN listens (port 0: a free one).")]
    = "127.0.0.1:0",
) -> None:
    """Run the live twin: ingest telemetry (MQTT, OCPP, OpenADR), step every policy, command the devices with
    one of them."""
    from twin.live.simulator import _check_speed, _load_or_bad
    from twin.settlement import keystore

    host, port = broker_url_or_bad(broker)
    _check_speed(speed)
    anchor = start_at_or_bad(start_at)
    loaded = _load_or_bad(scenario)
    creds = credentials_or_bad(credentials)
    names = [c.name for c in loaded.controllers]
    chosen = control if control is not None else names[0]
    if chosen not in names:
        raise typer.BadParameter(f"--control={chosen!r} is not a policy of {scenario}; expected one of {names}",
                                 param_hint="--control")
    try:
        registry = KeyRegistry.from_file(keys)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"--keys={str(keys)!r}: {exc}", param_hint="--keys") from None
    listen = {}
    for option, value in (("--ocpp", ocpp), ("--openadr", openadr)):
        try:
            listen[option] = parse_ocpp_address(value, option=option)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint=option) from None
    auth: FieldAuth | None = None
    if loaded.live.uses_ocpp or loaded.live.uses_openadr:
        auth_path = field_auth if field_auth is not None else keys.parent / FIELD_AUTH_FILENAME
        try:
            auth = FieldAuth.from_file(auth_path)
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"--field-auth={str(auth_path)!r}: {getattr(exc, 'strerror', None) or exc}",
                                     param_hint="--field-auth") from None

    def announce(twin: LiveTwin) -> None:
        for what, url in (("OCPP CSMS", twin.ocpp_url), ("OpenADR VTN", twin.openadr_url)):
            if url is not None:
                typer.echo(f"{what}: {url}")
    from twin.run import Terminated, stop_on_sigterm

    stop_on_sigterm()
    try:
        session = LiveSession.read(out)
        if session is None and anchor is None:
            anchor = time.time()
        clock_anchor = session.clock.wall_start if session is not None and anchor is None else anchor
        typer.echo(f"twin clock: {loaded.start.isoformat()} happens at Unix time {clock_anchor:.3f} at speed {speed:g}"
                   f" ({'resumed run' if session else 'new run'}); start the devices with --start-at {clock_anchor:.3f}")
        operator_key = keystore.operator_key(create=False, name=keystore.SETPOINT_KEY_FILENAME)
        with protocol_log(out / LIVE_DIR / "protocols.log") as log:
            if auth is not None:
                typer.echo(f"OCPP / OpenADR library log: {log}")
            result = run_live(loaded, broker_host=host, broker_port=port, credentials=creds, keys=registry,
                              operator_key=operator_key, control=chosen, speed=speed, out=out, start_at=anchor,
                              field_auth=auth, ocpp_listen=listen["--ocpp"], openadr_listen=listen["--openadr"],
                              on_started=announce)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM: status.json says "interrupted"
        done = RunStore(out).status().get("done", 0)
        typer.echo(f"interrupted after {done} intervals: run gridtwin live again with --out {out} to resume it",
                   err=True)
        raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
    typer.echo(f"run folder {result.path}: {result.intervals} intervals, {result.commands_sent} setpoints sent, "
               f"acks {result.acks_accepted} accepted / {result.acks_refused} refused")

