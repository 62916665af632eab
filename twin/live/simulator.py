"""The field side of a live run: provisioning (device ids, topics, broker credentials, keys) and a simulator
in which every DER of the scenario's fleet and every native load is an MQTT device.

Provisioning makes a random Ed25519 key per device (never derived from anything in the scenario) and hands
it to the device with its broker account in ``credentials.json`` (0600); the twin gets only the public keys
(``device_keys.json``). The simulated devices sign with the keys they were provisioned with.

DER devices run the same physics as the twin (``twin.devices.physics.FleetPhysics``), publish signed telemetry in
simulated UTC, obey signed setpoints from their ``cmd`` topic until they expire, acknowledge them on
``cmd/ack`` and otherwise run their autonomous default. Native loads publish their profile as meter readings.
``gridtwin broker`` and ``gridtwin devices`` are thin wrappers around :func:`start_broker` and
:func:`run_devices`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import paho.mqtt.client as mqtt
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from controllers.api import AssetKind
from twin.devices.physics import FleetPhysics
from twin.live.aio import AsyncRunner
from twin.live.session_pool import SessionPool
from twin.live.broker import BrokerCredentials, MosquittoBroker
from twin.live.canonical import Transport
from twin.live.clock import SimClock
from twin.live.device import DeviceClient
from twin.live.field_identity import FIELD_AUTH_FILENAME, FieldAuth, X509Identity, hash_secret, load_vtn_identity, \
    new_ocpp_password
from twin.live.messages import (
    Channel,
    CommandPayload,
    DeviceAddress,
    MessageError,
    decode_json_object,
    describe_validation_error,
)
from twin.live.mqtt import MqttConnectError, format_ts
from twin.live.ocpp_charger import ChargingLimit, OcppCharger, ProfileAnswer
from twin.live.openadr_ven import OpenAdrVen, Setpoint
from twin.live.signing import (
    KeyRegistry,
    SignatureCheck,
    new_private_key,
    private_key_b64,
    private_key_from_b64,
    public_key_b64,
    verify_payload,
)
from twin.live.protocol_log import protocol_log
from twin.live.transports import FieldPlan
from twin.telemetry import load_device_id

if TYPE_CHECKING:
    from twin.inputs import RunInputs
    from twin.scenario import Scenario

__all__ = [
    "CREDENTIALS_FORMAT",
    "METER_KIND",
    "NATIVE_LOAD_SITE",
    "BrokerSetup",
    "FieldSimulator",
    "LiveCredentials",
    "SimulatorReport",
    "broker_command",
    "devices_command",
    "fleet_devices",
    "parse_broker_url",
    "run_devices",
    "start_broker",
]

CREDENTIALS_FORMAT = "gridtwin-broker-credentials/1"
#: Device sessions opened concurrently by ``FieldSimulator.connect``.
_CONNECT_AT_ONCE = 32
#: Site (topic segment) of the feeder's own load meters; DER devices use their ``participant_id``.
NATIVE_LOAD_SITE = "feeder"
#: Kind under which native-load meters publish. The topic contract (``DeviceAddress``) only knows the four DER
#: kinds; a flexible load is the nearest (a consumer, load convention). The twin tells meters apart by their
#: ``load-<idx>`` device id, never by this kind.
METER_KIND = AssetKind.FLEX_LOAD


# --------------------------------------------------------------------------------------------- provisioning


def fleet_devices(inputs: RunInputs) -> dict[str, DeviceAddress]:
    """Every field device of a run: one per fleet asset (site = participant) and one per native load."""
    devices: dict[str, DeviceAddress] = {}
    for asset_id, row in inputs.assets.iterrows():
        devices[str(asset_id)] = DeviceAddress(
            site=str(row["participant_id"]), kind=AssetKind(str(row["kind"])), device_id=str(asset_id)
        )
    for index in inputs.net.load.index:
        device_id = load_device_id(int(index))
        devices[device_id] = DeviceAddress(site=NATIVE_LOAD_SITE, kind=METER_KIND, device_id=device_id)
    return devices


def parse_broker_url(url: str) -> tuple[str, int]:
    """``mqtt://HOST:PORT`` → (host, port); errors name the value."""
    parsed = urlparse(url)
    if parsed.scheme != "mqtt" or not parsed.hostname:
        raise ValueError(f"broker={url!r} must look like mqtt://HOST:PORT (TLS is not supported)")
    try:
        port = parsed.port
    except ValueError:
        raise ValueError(f"broker={url!r}: the port is not a number in 1..65535") from None
    return parsed.hostname, port or 1883


def _write_private(path: Path, text: str) -> None:
    """Atomic write of a secrets file, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True, kw_only=True)
class LiveCredentials:
    """What provisioning hands out: the broker address, every account's password, every device's signing key
    and the operator's public key (devices check setpoint signatures with it). Written by whoever starts the
    broker (``start_broker``); a real deployment hands each device only its own entries."""

    host: str
    port: int
    twin: BrokerCredentials
    device_passwords: Mapping[str, str] = field(repr=False)
    operator_public_key: str  # base64 raw Ed25519
    #: device_id → base64 raw Ed25519 private key, random at provisioning
    device_signing_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: EV charger (charging station id) → OCPP HTTP Basic password, random at provisioning
    ocpp_passwords: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: participant (VEN id) → its OpenADR signing key and certificate, random at provisioning
    ven_identities: Mapping[str, X509Identity] = field(default_factory=dict, repr=False)
    #: the VTN's certificate (public): VENs check the VTN's signatures against it
    vtn_certificate: str | None = None

    def device(self, device_id: str) -> BrokerCredentials:
        if device_id not in self.device_passwords:
            raise KeyError(f"device_id {device_id!r} has no broker account in these credentials")
        return BrokerCredentials(username=device_id, password=self.device_passwords[device_id])

    def device_key(self, device_id: str) -> Ed25519PrivateKey:
        """The signing key provisioned for ``device_id``."""
        encoded = self.device_signing_keys.get(device_id)
        if encoded is None:
            raise KeyError(f"device_id {device_id!r} has no signing key in these credentials (field 'device_keys'); "
                           "provision again with `gridtwin broker`")
        return private_key_from_b64(encoded, what=f"credentials field 'device_keys.{device_id}'")

    def public_keys(self) -> KeyRegistry:
        """The registry of the devices' public keys (what the twin verifies telemetry with)."""
        return KeyRegistry({d: self.device_key(d).public_key() for d in sorted(self.device_signing_keys)})

    def with_address(self, host: str, port: int) -> LiveCredentials:
        return dataclasses.replace(self, host=host, port=port)

    def ocpp_password(self, station_id: str) -> str:
        if station_id not in self.ocpp_passwords:
            raise KeyError(f"charging station {station_id!r} has no OCPP password in these credentials (field "
                           "'ocpp'); provision again with `gridtwin broker`")
        return self.ocpp_passwords[station_id]

    def ven_identity(self, ven_id: str) -> X509Identity:
        if ven_id not in self.ven_identities:
            raise KeyError(f"VEN {ven_id!r} has no OpenADR identity in these credentials (field 'openadr'); "
                           "provision again with `gridtwin broker`")
        return self.ven_identities[ven_id]

    def operator_key(self) -> Ed25519PublicKey:
        return KeyRegistry.from_json(
            {"format": "gridtwin-device-keys/1", "devices": {"operator": self.operator_public_key}}
        ).get("operator")  # type: ignore[return-value]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CREDENTIALS_FORMAT, "host": self.host, "port": self.port,
            "twin": {"username": self.twin.username, "password": self.twin.password},
            "devices": dict(sorted(self.device_passwords.items())),
            "device_keys": dict(sorted(self.device_signing_keys.items())),
            "operator_public_key": self.operator_public_key,
            "ocpp": dict(sorted(self.ocpp_passwords.items())),
            "openadr": {"vtn_certificate": self.vtn_certificate,
                        "vens": {v: i.to_json() for v, i in sorted(self.ven_identities.items())}},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LiveCredentials:
        if not isinstance(data, Mapping) or data.get("format") != CREDENTIALS_FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"credentials field 'format' is {found!r}, expected {CREDENTIALS_FORMAT!r}")
        try:
            twin = data["twin"]
            creds = cls(
                host=str(data["host"]), port=int(data["port"]),
                twin=BrokerCredentials(username=str(twin["username"]), password=str(twin["password"])),
                device_passwords={str(k): str(v) for k, v in dict(data["devices"]).items()},
                operator_public_key=str(data["operator_public_key"]),
                device_signing_keys={str(k): str(v) for k, v in dict(data.get("device_keys") or {}).items()},
                ocpp_passwords={str(k): str(v) for k, v in dict(data.get("ocpp") or {}).items()},
                ven_identities={str(k): X509Identity.from_json(v, what=f"credentials field 'openadr.vens.{k}'")
                                for k, v in dict((data.get("openadr") or {}).get("vens") or {}).items()},
                vtn_certificate=(data.get("openadr") or {}).get("vtn_certificate"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"credentials: missing or malformed field {exc}") from None
        creds.operator_key()  # fail here, naming the field, rather than at the first command
        for device_id in creds.device_signing_keys:
            creds.device_key(device_id)
        return creds

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> LiveCredentials:
        path = Path(path)
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise ValueError(f"credentials file {path} is not JSON: {exc.msg} at line {exc.lineno}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        _write_private(Path(path), json.dumps(self.to_json(), indent=2) + "\n")


@dataclass(frozen=True, kw_only=True)
class BrokerSetup:
    """A started broker and the files written for the devices and the twin."""

    broker: MosquittoBroker
    credentials_path: Path
    keys_path: Path
    operator_key_path: Path
    #: the twin's side of the OCPP and OpenADR credentials (password hashes, VEN certificate fingerprints)
    field_auth_path: Path


def start_broker(
    scenario: Scenario,
    *,
    out: Path,
    port: int | None = None,
    host: str = "127.0.0.1",
    inputs: RunInputs | None = None,
    workdir: Path | None = None,
) -> BrokerSetup:
    """Start a private mosquitto for the scenario's devices and write, into ``out``: ``credentials.json``
    (broker accounts, every device's random signing key, every EV charger's OCPP password and every
    participant's OpenADR key and certificate, 0600), ``device_keys.json`` (the devices' public keys, for the
    twin) and ``field_auth.json`` (OCPP password hashes and VEN certificate fingerprints, for the twin). The twin
    signs setpoints with its key from the operator's key store (``setpoints_ed25519.pem``, created once; never
    in ``out``), and its OpenADR VTN signs with ``openadr_vtn.key`` there. Stop it with ``setup.broker.stop()``."""
    from twin.inputs import build_inputs
    from twin.settlement import keystore

    inputs = inputs if inputs is not None else build_inputs(scenario)
    devices = fleet_devices(inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    operator_key_path = keystore.operator_key_path().with_name(keystore.SETPOINT_KEY_FILENAME)
    operator = keystore.operator_key(create=True, name=keystore.SETPOINT_KEY_FILENAME)
    vtn = load_vtn_identity(create=True)
    chargers = sorted(str(a) for a in inputs.assets.index[inputs.assets["kind"].astype(str) == AssetKind.EV_CHARGER])
    participants = sorted(set(inputs.assets["participant_id"].astype(str)))
    broker = MosquittoBroker(devices=list(devices.values()), host=host, port=port, workdir=workdir).start()
    try:
        ocpp_passwords = {c: new_ocpp_password() for c in chargers}
        vens = {p: X509Identity.new(p) for p in participants}
        credentials = LiveCredentials(
            host=broker.host, port=broker.port, twin=broker.twin_credentials,
            device_passwords={d: broker.credentials(d).password for d in devices},
            operator_public_key=public_key_b64(operator),
            device_signing_keys={d: private_key_b64(new_private_key()) for d in sorted(devices)},
            ocpp_passwords=ocpp_passwords, ven_identities=vens, vtn_certificate=vtn.cert_pem,
        )
        credentials_path, keys_path = out / "credentials.json", out / "device_keys.json"
        field_auth_path = out / FIELD_AUTH_FILENAME
        credentials.save(credentials_path)
        credentials.public_keys().save(keys_path)
        FieldAuth(ocpp={c: hash_secret(p) for c, p in ocpp_passwords.items()},
                  openadr={v: i.fingerprint for v, i in vens.items()}).save(field_auth_path)
    except BaseException:
        broker.stop()
        raise
    return BrokerSetup(broker=broker, credentials_path=credentials_path, keys_path=keys_path,
                       operator_key_path=operator_key_path, field_auth_path=field_auth_path)


# ------------------------------------------------------------------------------------------------ simulator


@dataclass(frozen=True, kw_only=True)
class _Held:
    cmd_seq: int
    p_mw: float
    q_mvar: float
    valid_until: pd.Timestamp


@dataclass(frozen=True, kw_only=True)
class SimulatorReport:
    """What the field did: counts, the true power of every DER per interval, and wall-clock logs."""

    published: dict[str, int]  # telemetry messages per device (every one acknowledged by the broker, QoS 1)
    commands_accepted: int
    commands_refused: int
    refusals: tuple[str, ...]
    #: Long table: time, device_id, p_mw, q_mvar, soc_mwh, source ("command" | "autonomous").
    truth: pd.DataFrame
    #: (interval time, device_id) → Unix time its telemetry for that interval was published.
    telemetry_wall: dict[tuple[pd.Timestamp, str], float]
    #: (command ts, device_id) → Unix time the command arrived at the device.
    command_wall: dict[tuple[pd.Timestamp, str], float]

    @property
    def total_published(self) -> int:
        return sum(self.published.values())


class FieldSimulator:
    """Every device of a run in one process: one MQTT session (and Last Will) per device, one shared physics.

    ``connect()`` opens the sessions; ``run()`` paces the simulated clock until the scenario ends (or ``stop()``);
    ``kill_site()`` cuts the links of a site's devices mid-run (they keep running on their own physics).
    """

    def __init__(
        self,
        *,
        scenario: Scenario,
        inputs: RunInputs,
        credentials: LiveCredentials,
        speed: float = 60.0,
        publish_every: pd.Timedelta | None = None,
        device_ids: Collection[str] | None = None,
        keepalive_s: int = 10,
        command_window: float = 0.5,
        clock: SimClock | None = None,
        ocpp_url: str | None = None,
        openadr_url: str | None = None,
        telemetry_qos: int = 1,
    ) -> None:
        if telemetry_qos not in (0, 1):
            raise ValueError(f"telemetry_qos={telemetry_qos!r} must be 0 or 1")
        self.telemetry_qos = telemetry_qos
        self.scenario = scenario
        self.inputs = inputs
        self.credentials = credentials
        self.speed = speed
        self.step = scenario.step
        self.publish_every = publish_every if publish_every is not None else scenario.step
        if not isinstance(self.publish_every, pd.Timedelta) or self.publish_every <= pd.Timedelta(0):
            raise ValueError(f"publish_every={self.publish_every!r} must be a positive pd.Timedelta")
        if not 0 < command_window < 1:
            raise ValueError(f"command_window={command_window!r} must be a fraction of the step in (0, 1)")
        self.command_window = command_window
        self.keepalive_s = keepalive_s
        self._clock = clock
        every = fleet_devices(inputs)
        wanted = set(every) if device_ids is None else set(device_ids)
        unknown = sorted(wanted - set(every))
        if unknown:
            raise ValueError(f"device_ids: {unknown[0]!r} is not a device of this scenario")
        self.addresses = {d: a for d, a in every.items() if d in wanted}
        unkeyed = sorted(d for d in self.addresses if d not in credentials.device_signing_keys)
        if unkeyed:
            raise ValueError(f"credentials: device_id {unkeyed[0]!r} has no provisioned signing key "
                             f"({len(unkeyed)} devices without one); provision again with `gridtwin broker`")
        self._operator_key = credentials.operator_key()
        assets = inputs.assets.loc[[d for d in inputs.assets.index if d in wanted]]
        sessions = inputs.ev_sessions[inputs.ev_sessions["asset_id"].isin(assets.index)]
        self.physics = FleetPhysics(assets, sessions, step=scenario.step)
        self._der = assets.index
        self._kind = assets["kind"].astype(str)
        self._p_max = assets["p_max_mw"].astype(float)
        self._v2g = assets["v2g"].astype(bool)
        self._loads = [(d, int(d.removeprefix("load-"))) for d in sorted(self.addresses) if d.startswith("load-")]
        self._load_e_imp = dict.fromkeys((d for d, _ in self._loads), 0.0)
        self._load_e_exp = dict.fromkeys((d for d, _ in self._loads), 0.0)
        self.plan = FieldPlan.from_scenario(scenario, inputs)
        self._ocpp_url, self._openadr_url = ocpp_url, openadr_url
        if self.plan.devices(Transport.OCPP) and ocpp_url is None:
            raise ValueError("ocpp_url=None: the scenario's EV chargers speak OCPP ([live.transports] ev_charger = "
                             "\"ocpp\"); give the CSMS address `gridtwin live` printed (--ocpp ws://HOST:PORT/ocpp)")
        if self.plan.openadr is not None and openadr_url is None:
            raise ValueError("openadr_url=None: the scenario uses OpenADR ([live]); give the VTN address `gridtwin "
                             "live` printed (--openadr http://HOST:PORT/OpenADR2/Simple/2.0b)")
        self._clients: dict[str, DeviceClient] = {}
        #: Every MQTT session of this simulator is driven by one thread (epoll), not a thread per device.
        self._pool: SessionPool | None = None
        self._chargers: dict[str, OcppCharger] = {}
        self._vens: dict[str, OpenAdrVen] = {}
        self._runner: AsyncRunner | None = None
        self._dead: set[str] = set()
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}
        self._last_cmd_seq: dict[str, int] = {}
        self._refuse_setpoints: dict[str, str] = {}
        self._stop = threading.Event()
        self._applied: pd.Series | None = None  # p_mw of the last applied interval
        self._applied_q: pd.Series | None = None
        self._applied_interval: pd.Timestamp | None = None
        self._soc_start = self.physics.soc.copy()
        self._reg_start = (self.physics.e_imp_register_mwh.copy(), self.physics.e_exp_register_mwh.copy())
        self._load_booked_until = scenario.start
        self._truth: list[dict[str, Any]] = []
        self._published: dict[str, int] = dict.fromkeys(self.addresses, 0)
        self._accepted = 0
        self._refusals: list[str] = []
        self._telemetry_wall: dict[tuple[pd.Timestamp, str], float] = {}
        self._command_wall: dict[tuple[pd.Timestamp, str], float] = {}

    # --- sessions ------------------------------------------------------------------------------------------

    def connect(self, *, timeout_s: float = 10.0) -> None:
        """Open every device's session: MQTT devices with a retained ``online`` status, an ``offline`` will and a
        ``cmd`` subscription; OCPP chargers with BootNotification; one VEN per participant (with OpenADR)."""
        now = self.scenario.start.to_pydatetime()
        try:
            if self._runner is None and (self.plan.devices(Transport.OCPP) or self.plan.openadr is not None):
                self._runner = AsyncRunner(name="field-protocols").start()
            mqtt_devices = []
            for device_id, address in sorted(self.addresses.items()):
                transport = self.plan.transport.get(device_id, Transport.MQTT)
                if transport is Transport.OCPP:
                    self._connect_charger(device_id, now=now, timeout_s=timeout_s)
                elif transport is Transport.MQTT:  # OpenADR devices are reported by their participant's VEN
                    mqtt_devices.append((device_id, address))
            if mqtt_devices and self._pool is None:
                self._pool = SessionPool(name="field-mqtt").start()
            # Sessions open a few dozen at a time: each waits for its CONNACK, SUBACK and the online PUBACK, and
            # thousands of devices one after the other would take minutes.
            with concurrent.futures.ThreadPoolExecutor(max_workers=_CONNECT_AT_ONCE,
                                                       thread_name_prefix="connect") as connecting:
                for future in [connecting.submit(self._connect_mqtt, d, a, now=now, timeout_s=timeout_s)
                               for d, a in mqtt_devices]:
                    future.result()
            vens = [self._make_ven(participant) for participant in sorted(self.plan.vens)]
            if vens:
                assert self._runner is not None

                async def register_all() -> None:
                    await asyncio.gather(*(ven.start_async() for ven in vens))

                self._vens.update((ven.ven_id, ven) for ven in vens)
                self._runner.run(register_all(), timeout_s=max(timeout_s, 30.0))
        except BaseException:
            self.close()
            raise

    def _connect_mqtt(self, device_id: str, address: DeviceAddress, *, now: Any, timeout_s: float) -> None:
        client = DeviceClient(
            address=address, private_key=self.credentials.device_key(device_id),
            credentials=self.credentials.device(device_id), host=self.credentials.host,
            port=self.credentials.port, keepalive_s=self.keepalive_s, telemetry_qos=self.telemetry_qos,
            pool=self._pool,
        )
        client.connect(now=now, timeout_s=timeout_s)
        with self._lock:
            self._clients[device_id] = client
        if device_id in self._der:
            self._subscribe(client, timeout_s=timeout_s)

    def _connect_charger(self, device_id: str, *, now: Any, timeout_s: float) -> None:
        assert self._runner is not None and self._ocpp_url is not None

        def on_limit(limit: ChargingLimit) -> ProfileAnswer:
            accepted, reason, _ = self._hold(device_id, cmd_seq=limit.profile_id, p_kw=limit.limit_kw, q_kvar=0.0,
                                             ts=pd.Timestamp(limit.start),
                                             valid_until=pd.Timestamp(limit.valid_to or limit.start + self.step))
            return ProfileAnswer(accepted=accepted, reason=None if accepted else "Rejected: " + (reason or ""))

        charger = OcppCharger(station_id=device_id, url=self._ocpp_url, password=self.credentials.ocpp_password(device_id),
                              runner=self._runner, on_limit=on_limit)
        charger.connect(now=now, timeout_s=timeout_s)
        self._chargers[device_id] = charger

    def _make_ven(self, participant: str) -> OpenAdrVen:
        assert self._runner is not None and self._openadr_url is not None and self.plan.openadr is not None
        if self.credentials.vtn_certificate is None:
            raise ValueError("credentials field 'openadr.vtn_certificate' is missing; provision again with "
                             "`gridtwin broker`")
        if self._clock is None:
            raise ValueError("start_at: the VENs map OpenADR's real times with the clock anchor, which must be known "
                             "before they start; give start_at as a Unix time (a number)")
        clock = self._clock
        opt_out = set(self.plan.openadr.opt_out)
        devices = [(d, self._kind.get(d) == AssetKind.BATTERY) for d in self.plan.vens[participant]
                   if d in self.addresses]

        def on_setpoints(setpoints: list[Setpoint]) -> bool:
            return all(self._hold(sp.device_id, cmd_seq=sp.cmd_seq, p_kw=sp.p_kw, q_kvar=0.0,
                                  ts=sp.start, valid_until=sp.valid_to)[0] for sp in setpoints)

        ven = OpenAdrVen(ven_id=participant, url=self._openadr_url, identity=self.credentials.ven_identity(participant),
                         vtn_certificate=self.credentials.vtn_certificate, runner=self._runner,
                         clock=lambda: self._clock or clock,
                         devices=devices, opt_in=lambda *_: participant not in opt_out, on_setpoints=on_setpoints)
        return ven

    def _subscribe(self, device: DeviceClient, *, timeout_s: float) -> None:
        topic = device.address.topic(Channel.CMD)
        subscribed = threading.Event()
        paho = device.client

        def on_connect(client: mqtt.Client, _u: object, _f: Any, reason_code: Any, _p: Any) -> None:
            if not reason_code.is_failure:  # clean sessions: subscribe again after an automatic reconnect
                client.subscribe(topic, qos=1)

        paho.on_connect = on_connect
        paho.on_subscribe = lambda *_args: subscribed.set()
        paho.on_message = lambda _c, _u, message: self._on_command(device, message)
        paho.subscribe(topic, qos=1)
        if not subscribed.wait(timeout_s):
            raise ConnectionError(f"device {device.address.device_id!r}: no SUBACK for {topic} within {timeout_s} s")

    def kill_site(self, site: str) -> list[str]:
        """Cut the links of every device at ``site`` without DISCONNECT (the broker then publishes their
        ``offline`` wills). The devices keep running: held setpoints until they expire, then autonomous."""
        killed = sorted(d for d, a in self.addresses.items() if a.site == site and d not in self._dead)
        if not killed:
            raise ValueError(f"site {site!r} has no connected device in this simulator")
        with self._lock:
            self._dead.update(killed)
        for device_id in killed:
            if device_id in self._clients:
                self._clients[device_id].abort()
            elif device_id in self._chargers:
                self._chargers[device_id].abort()
        if site in self._vens:
            self._vens.pop(site).stop()
        return killed

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """End every live session gracefully (retained ``offline``)."""
        now = self._sim_now().to_pydatetime()
        live = [c for d, c in self._clients.items() if d not in self._dead]
        with concurrent.futures.ThreadPoolExecutor(max_workers=_CONNECT_AT_ONCE, thread_name_prefix="close") as closing:
            for future in [closing.submit(client.close, now=now) for client in live]:
                try:
                    future.result()
                except (RuntimeError, ValueError, OSError):
                    pass  # a session that cannot say goodbye leaves its Last Will to the broker
        self._clients.clear()
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
        for device_id, charger in self._chargers.items():
            if device_id not in self._dead:
                try:
                    charger.close(now=self._sim_now().to_pydatetime())
                except (ConnectionError, TimeoutError):
                    pass
        self._chargers.clear()
        for ven in self._vens.values():
            ven.stop()
        self._vens.clear()
        if self._runner is not None:
            self._runner.stop()
            self._runner = None

    def _sim_now(self) -> pd.Timestamp:
        return self._clock.now() if self._clock is not None else self.scenario.start

    # --- commands (paho network threads) -----------------------------------------------------------------

    def _refuse(self, device: DeviceClient, *, cmd_seq: int, reason: str) -> None:
        with self._lock:
            self._refusals.append(f"{device.address.device_id}: {reason}")
        self._ack(device, cmd_seq=cmd_seq, accepted=False, applied_p_kw=None, reason=reason)

    def _ack(self, device: DeviceClient, *, cmd_seq: int, accepted: bool, applied_p_kw: float | None,
             reason: str | None) -> None:
        payload: dict[str, Any] = {"device_id": device.address.device_id, "cmd_seq": cmd_seq,
                                   "ts": format_ts(self._sim_now().to_pydatetime()), "accepted": accepted}
        if applied_p_kw is not None:
            payload["applied_p_kw"] = applied_p_kw
        if reason:
            payload["reason"] = reason
        if device.address.device_id not in self._dead:
            device.publish(channel=Channel.CMD_ACK, payload=device.sign(payload, channel=Channel.CMD_ACK))

    def _on_command(self, device: DeviceClient, message: mqtt.MQTTMessage) -> None:
        device_id = device.address.device_id
        wall = time.time()
        try:
            raw = decode_json_object(bytes(message.payload))
        except MessageError as exc:
            self._refuse(device, cmd_seq=0, reason=str(exc))
            return
        seq = raw.get("cmd_seq") if isinstance(raw.get("cmd_seq"), int) and raw.get("cmd_seq", -1) >= 0 else 0
        check = verify_payload(raw, topic=message.topic, public_key=self._operator_key)
        if check is not SignatureCheck.VALID:
            self._refuse(device, cmd_seq=seq, reason=f"field 'sig': {check.value}")
            return
        try:
            command = CommandPayload.model_validate(raw)
        except ValidationError as exc:
            self._refuse(device, cmd_seq=seq, reason=describe_validation_error(exc))
            return
        if command.device_id != device_id:
            self._refuse(device, cmd_seq=seq, reason=f"field 'device_id' value {command.device_id!r} is not {device_id!r}")
            return
        accepted, reason, applied = self._hold(
            device_id, cmd_seq=command.cmd_seq, p_kw=command.p_setpoint_kw, q_kvar=command.q_setpoint_kvar or 0.0,
            ts=pd.Timestamp(command.ts), valid_until=pd.Timestamp(command.valid_until), wall=wall)
        if not accepted:
            self._refuse(device, cmd_seq=command.cmd_seq, reason=reason or "refused")
            return
        self._ack(device, cmd_seq=command.cmd_seq, accepted=True, applied_p_kw=applied, reason=reason)

    def _hold(self, device_id: str, *, cmd_seq: int, p_kw: float, q_kvar: float, ts: pd.Timestamp,
              valid_until: pd.Timestamp, wall: float | None = None) -> tuple[bool, str | None, float]:
        """The one setpoint rule of every device, whatever protocol brought the setpoint: hold it until it
        expires (an expired one releases the device). Return (accepted, reason, applied kW)."""
        wall = time.time() if wall is None else wall
        with self._lock:
            if self._refuse_setpoints.get(device_id):
                self._refusals.append(f"{device_id}: {self._refuse_setpoints[device_id]}")
                return False, self._refuse_setpoints[device_id], 0.0
            last = self._last_cmd_seq.get(device_id, -1)
            if cmd_seq <= last:
                return False, f"field 'cmd_seq' value {cmd_seq} is not newer than {last} (replayed or reordered)", 0.0
            self._last_cmd_seq[device_id] = cmd_seq
            if valid_until <= ts:
                self._held.pop(device_id, None)  # an already-expired command releases the device
            else:
                self._held[device_id] = _Held(cmd_seq=cmd_seq, p_mw=p_kw / 1000.0, q_mvar=q_kvar / 1000.0,
                                              valid_until=valid_until)
            self._accepted += 1
            self._command_wall[(ts, device_id)] = wall
        lo, hi = self._rating_box(device_id)
        applied = float(np.clip(p_kw, lo * 1000.0, hi * 1000.0))
        reason = "clipped to rating" if applied != p_kw else None
        if valid_until <= ts:
            applied, reason = 0.0, "released: autonomous from now on"
        return True, reason, applied

    def refuse_setpoints(self, device_id: str, reason: str = "NotAllowed") -> None:
        """Fault injection: this device refuses every setpoint from now on (an OCPP charger answers Rejected)."""
        with self._lock:
            self._refuse_setpoints[device_id] = reason

    def charger(self, device_id: str) -> OcppCharger:
        """The OCPP link of an EV charger (tests: drop it, reconnect it)."""
        return self._chargers[device_id]

    def _rating_box(self, device_id: str) -> tuple[float, float]:
        p_max, kind = float(self._p_max[device_id]), self._kind[device_id]
        if kind == AssetKind.BATTERY:
            return -p_max, p_max
        if kind == AssetKind.EV_CHARGER:
            return (-p_max if self._v2g[device_id] else 0.0), p_max
        if kind == AssetKind.PV:
            return -p_max, 0.0
        return 0.0, p_max

    # --- the paced loop --------------------------------------------------------------------------------------

    def _setpoints(self, time_: pd.Timestamp) -> tuple[pd.Series, pd.Series, pd.Series]:
        """p, q and source per DER for the interval starting at ``time_``: a held, valid command, else the
        autonomous default (the same rule as the twin's engine)."""
        row = self.inputs.at(time_)
        pv_avail = self.inputs.pv_avail_mw.iloc[row]
        flex_base = self.inputs.flex_base_mw.iloc[row]
        self.physics.state_frame(time_)  # plugs in EVs that arrived, as the engine does before deciding
        p = self.physics.autonomous_p_mw(pv_avail_mw=pv_avail, flex_base_mw=flex_base)
        q = pd.Series(0.0, index=self._der)
        source = pd.Series("autonomous", index=self._der, dtype=object)
        with self._lock:
            held = {d: h for d, h in self._held.items() if h.valid_until > time_}
        for device_id, h in held.items():
            p[device_id], q[device_id], source[device_id] = h.p_mw, h.q_mvar, "command"
        return p, q, source

    def _events(self) -> list[tuple[pd.Timestamp, int, pd.Timestamp]]:
        """(when, 0 = publish | 1 = apply, interval) in simulated time, in order."""
        events = []
        ticks = pd.date_range(self.scenario.start, self.scenario.end, freq=self.publish_every, inclusive="left")
        for tick in ticks:
            interval = self.scenario.start + ((tick - self.scenario.start) // self.step) * self.step
            events.append((tick, 0, interval))
        for interval in self.scenario.times:
            events.append((interval + self.command_window * self.step, 1, interval))
        return sorted(events)

    def run(self, *, clock: SimClock | None = None) -> SimulatorReport:
        """Pace the whole scenario (blocking). ``clock`` defaults to starting the scenario now."""
        self._clock = clock or self._clock or SimClock.starting_now(sim_start=self.scenario.start, speed=self.speed)
        for when, kind, interval in self._events():
            if not self._clock.sleep_until(when, stop=self._stop):
                break
            if kind == 0:
                self._publish(when, interval)
            else:
                self._apply(interval)
        return self.report()

    def _apply(self, interval: pd.Timestamp) -> None:
        p, q, source = self._setpoints(interval)
        row = self.inputs.at(interval)
        self._soc_start = self.physics.soc.copy()
        self._reg_start = (self.physics.e_imp_register_mwh.copy(), self.physics.e_exp_register_mwh.copy())
        outcome = self.physics.advance(
            interval, p_setpoint_mw=p, q_setpoint_mvar=q, pv_avail_mw=self.inputs.pv_avail_mw.iloc[row],
            flex_base_mw=self.inputs.flex_base_mw.iloc[row],
        )
        self._applied, self._applied_q, self._applied_interval = outcome.p_mw, outcome.q_mvar, interval
        for device_id in self._der:
            self._truth.append({"time": interval, "device_id": device_id, "p_mw": float(outcome.p_mw[device_id]),
                                "q_mvar": float(outcome.q_mvar[device_id]),
                                "soc_mwh": float(outcome.soc_mwh[device_id]), "source": source[device_id]})

    def _load_registers(self, interval: pd.Timestamp) -> None:
        """Book native-load energy of every whole interval before ``interval`` into the meter registers."""
        h = self.physics.hours
        while self._load_booked_until < interval:
            profile = self.inputs.profiles.load_p_mw.iloc[self.inputs.at(self._load_booked_until)]
            for device_id, index in self._loads:
                e_kwh = float(profile[index]) * 1000.0 * h
                self._load_e_imp[device_id] += max(e_kwh, 0.0)
                self._load_e_exp[device_id] += max(-e_kwh, 0.0)
            self._load_booked_until += self.step

    def _publish(self, tick: pd.Timestamp, interval: pd.Timestamp) -> None:
        """Telemetry of every live device at ``tick``: the power flowing now, registers and SOC. Before this
        interval's setpoints are applied that is what the setpoint in force (or the autonomous default) gives."""
        hours_in = (tick - interval) / pd.Timedelta("1h")
        if self._applied_interval == interval:
            assert self._applied is not None and self._applied_q is not None
            p_der, q_der = self._applied, self._applied_q
            p = p_der.to_numpy()
            e_imp = self._reg_start[0] + np.maximum(p, 0.0) * hours_in
            e_exp = self._reg_start[1] + np.maximum(-p, 0.0) * hours_in
            soc = self._soc_start + (self.physics.soc - self._soc_start) * ((tick - interval) / self.step)
        else:
            p_der, q_der, _ = self._setpoints(interval)
            box = np.array([self._rating_box(d) for d in self._der]).reshape(-1, 2)
            p_der = pd.Series(np.clip(p_der.to_numpy(), box[:, 0], box[:, 1]), index=self._der)
            e_imp, e_exp = self.physics.e_imp_register_mwh, self.physics.e_exp_register_mwh
            soc = self.physics.soc
        ts = tick.to_pydatetime()
        wall = time.time()
        with self._lock:
            dead = set(self._dead)
        bat = self.physics.is_kind[AssetKind.BATTERY]
        # Every device's values as plain lists, computed by arrays once per tick: the loop below only sends.
        p_kw = (p_der.reindex(self._der).to_numpy(float) * 1000.0).tolist()
        q_kvar = (q_der.reindex(self._der).to_numpy(float) * 1000.0).tolist()
        e_imp_kwh = (np.asarray(e_imp, float) * 1000.0).tolist()
        e_exp_kwh = (np.asarray(e_exp, float) * 1000.0).tolist()
        e_max = self.physics.e_max
        has_soc = bat & (e_max > 0)
        soc_pct = np.clip(np.divide(soc, e_max, out=np.zeros(len(e_max)), where=has_soc) * 100.0, 0.0, 100.0)
        socs = [float(v) if ok else None for v, ok in zip(soc_pct.tolist(), has_soc.tolist(), strict=True)]
        plugged = self.physics.ev_connected.astype(bool).tolist()
        for i, device_id in enumerate(self._der):
            if device_id in dead:
                continue
            self._send(device_id, ts=ts, wall=wall, interval=interval, p_kw=p_kw[i], q_kvar=q_kvar[i],
                       e_imp_kwh=e_imp_kwh[i], e_exp_kwh=e_exp_kwh[i], soc_pct=socs[i], plugged=plugged[i])
        self._load_registers(interval)
        row = self.inputs.at(interval)
        load_p = self.inputs.profiles.load_p_mw.iloc[row]
        load_q = self.inputs.profiles.load_q_mvar.iloc[row]
        for device_id, index in self._loads:
            if device_id in dead:
                continue
            p_kw = float(load_p[index]) * 1000.0
            self._send(device_id, ts=ts, wall=wall, interval=interval, p_kw=p_kw, q_kvar=float(load_q[index]) * 1000.0,
                       e_imp_kwh=self._load_e_imp[device_id] + max(p_kw, 0.0) * hours_in,
                       e_exp_kwh=self._load_e_exp[device_id] + max(-p_kw, 0.0) * hours_in, soc_pct=None)

    def _send(self, device_id: str, *, ts: Any, wall: float, interval: pd.Timestamp, plugged: bool = False,
              **values: Any) -> None:
        values = {k: v for k, v in values.items() if v is not None}
        transport = self.plan.transport.get(device_id, Transport.MQTT)
        if transport is Transport.OCPP:
            self._chargers[device_id].publish_telemetry(ts=ts, plugged=plugged, **values)
        elif transport is Transport.OPENADR:
            ven = self._vens.get(self.plan.ven_of(device_id))
            if ven is None:
                return
            ven.publish_telemetry(device_id, ts=ts, **values)
        else:
            self._clients[device_id].publish_telemetry(ts=ts, **values)
        self._published[device_id] += 1
        self._telemetry_wall.setdefault((interval, device_id), wall)

    def report(self) -> SimulatorReport:
        with self._lock:
            return SimulatorReport(
                published=dict(self._published), commands_accepted=self._accepted,
                commands_refused=len(self._refusals), refusals=tuple(self._refusals),
                truth=pd.DataFrame(self._truth, columns=["time", "device_id", "p_mw", "q_mvar", "soc_mwh", "source"]),
                telemetry_wall=dict(self._telemetry_wall), command_wall=dict(self._command_wall),
            )


def run_devices(
    scenario: Scenario,
    *,
    broker_host: str,
    broker_port: int,
    credentials: LiveCredentials | Path,
    keys: Path | None = None,
    speed: float = 60.0,
    publish_every: pd.Timedelta | None = None,
    inputs: RunInputs | None = None,
    device_ids: Collection[str] | None = None,
    keepalive_s: int = 10,
    start_at: float | Callable[[], float] | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[FieldSimulator], None] | None = None,
    ocpp_url: str | None = None,
    openadr_url: str | None = None,
    telemetry_qos: int = 1,
) -> SimulatorReport:
    """Run the scenario's field devices against the broker until the scenario's end (blocking).

    ``credentials`` are the broker accounts and device signing keys (a ``LiveCredentials`` or its JSON file);
    ``broker_host`` / ``broker_port`` override the address in it. With ``keys``, the devices' public-key
    registry is written there for the twin. ``start_at`` (Unix time) anchors simulated ``scenario.start`` so several device
    processes share one clock (a callable is asked once every device is connected, after ``on_ready``);
    default: as soon as every device is connected. ``publish_every`` defaults to
    ``scenario.step``. ``on_ready`` is called once connected (tests use it to get the simulator).
    ``ocpp_url`` / ``openadr_url``: the twin's CSMS and VTN, for devices whose kind speaks OCPP or OpenADR
    (the scenario's ``[live]`` table); the clock anchor must be known before the VENs start, so give
    ``start_at`` as a number when the scenario uses OpenADR.
    """
    from twin.inputs import build_inputs

    creds = credentials if isinstance(credentials, LiveCredentials) else LiveCredentials.from_file(credentials)
    creds = creds.with_address(broker_host, broker_port)
    inputs = inputs if inputs is not None else build_inputs(scenario)
    simulator = FieldSimulator(
        scenario=scenario, inputs=inputs, credentials=creds, speed=speed, publish_every=publish_every,
        device_ids=device_ids, keepalive_s=keepalive_s, ocpp_url=ocpp_url, openadr_url=openadr_url,
        telemetry_qos=telemetry_qos, clock=SimClock(sim_start=scenario.start, speed=speed, wall_start=start_at)
        if isinstance(start_at, (int, float)) else None,
    )
    if keys is not None:
        KeyRegistry({d: creds.device_key(d).public_key() for d in sorted(simulator.addresses)}).save(keys)
    simulator.connect()
    try:
        if on_ready is not None:
            on_ready(simulator)
        anchor = start_at() if callable(start_at) else start_at
        clock = SimClock(sim_start=scenario.start, speed=speed, wall_start=anchor if anchor is not None else time.time())
        if stop is not None:
            threading.Thread(target=lambda: (stop.wait(), simulator.stop()), daemon=True).start()
        return simulator.run(clock=clock)
    finally:
        simulator.close()


# ------------------------------------------------------------------------------------ typer-facing commands
# The lead mounts these on the main CLI (``app.command("devices")(devices_command)``); they only parse and
# report, and answer bad input with typer.BadParameter naming the option and the value (exit code 2).

ScenarioArg = Annotated[Path, typer.Argument(metavar="SCENARIO", help="Scenario TOML file.", show_default=False)]
BrokerOpt = Annotated[str, typer.Option("--broker", help="Broker address, mqtt://HOST:PORT.")]
SpeedOpt = Annotated[float, typer.Option("--speed", help="Simulated seconds per wall-clock second.")]
CredentialsOpt = Annotated[Path, typer.Option(
    "--credentials", help="Broker accounts JSON written by `gridtwin broker` (credentials.json).")]


def _load_or_bad(path: Path) -> Scenario:
    from twin.scenario import ScenarioError, load_scenario

    try:
        return load_scenario(path)
    except ScenarioError as exc:
        raise typer.BadParameter(str(exc), param_hint="SCENARIO") from None


def _check_speed(speed: float) -> None:
    if not speed > 0:
        raise typer.BadParameter(f"--speed={speed!r} must be a positive number of simulated seconds per second",
                                 param_hint="--speed")


def broker_url_or_bad(broker: str) -> tuple[str, int]:
    try:
        return parse_broker_url(broker)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--broker") from None


def credentials_or_bad(path: Path) -> LiveCredentials:
    try:
        return LiveCredentials.from_file(path)
    except OSError as exc:
        raise typer.BadParameter(f"--credentials={str(path)!r}: cannot read ({exc.strerror})",
                                 param_hint="--credentials") from None
    except ValueError as exc:
        raise typer.BadParameter(f"--credentials={str(path)!r}: {exc}", param_hint="--credentials") from None


StartAtOpt = Annotated[str | None, typer.Option(
    "--start-at", metavar="WHEN",
    help="Wall-clock time (Unix seconds or ISO 8601 UTC) at which simulated time starts; give `gridtwin live` "
         "and `gridtwin devices` the same value so both clocks agree (the twin prints its own).")]


def parse_start_at(value: str) -> float:
    """``--start-at``: Unix seconds, or an ISO 8601 time with a zone; errors name the value."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        stamp = pd.NaT
    if pd.isna(stamp) or stamp.tzinfo is None:
        raise ValueError(f"--start-at={value!r}: expected Unix seconds or an ISO 8601 time with a zone "
                         "(e.g. 2026-01-01T12:00:00Z)")
    return stamp.timestamp()


def start_at_or_bad(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_start_at(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--start-at") from None


def devices_command(
    scenario: ScenarioArg,
    broker: BrokerOpt = "mqtt://127.0.0.1:1883",
    speed: SpeedOpt = 60.0,
    keys: Annotated[Path | None, typer.Option(
        "--keys", help="Write the devices' public-key registry (JSON) here, for the twin.")] = None,
    credentials: CredentialsOpt = Path("live/credentials.json"),
    start_at: StartAtOpt = None,
    ocpp: Annotated[str | None, typer.Option(
        "--ocpp", metavar="URL", help="The twin's OCPP CSMS, ws://HOST:PORT/ocpp (`gridtwin live` prints it), for EV "
                                      "chargers the scenario runs over OCPP.")] = None,
    openadr: Annotated[str | None, typer.Option(
        "--openadr", metavar="URL", help="The twin's OpenADR VTN, http://HOST:PORT/OpenADR2/Simple/2.0b (`gridtwin "
                                         "live` prints it), when the scenario uses OpenADR.")] = None,
    publish_every: Annotated[str | None, typer.Option(
        "--publish-every", metavar="DURATION",
        help="Telemetry period of every device in simulated time, e.g. 1s or 15min (default: the scenario's step).")]
    = None,
    telemetry_qos: Annotated[int, typer.Option(
        "--telemetry-qos", help="MQTT QoS of telemetry: 1, or 0 as Sparkplug B sends data (the twin counts sequence "
                                "gaps; cumulative registers keep settlement exact). Status and acks stay QoS 1.")] = 1,
    processes: Annotated[int, typer.Option(
        "--processes", help="Split the devices over this many processes (MQTT-only scenarios); one process "
                            "signs and sends a few thousand messages a second.")] = 1,
) -> None:
    """Simulate the scenario's field devices (every DER and native load) against a broker, a CSMS and a VTN."""
    host, port = broker_url_or_bad(broker)
    _check_speed(speed)
    anchor = start_at_or_bad(start_at)
    every = _publish_every_or_bad(publish_every)
    if telemetry_qos not in (0, 1):
        raise typer.BadParameter(f"--telemetry-qos={telemetry_qos!r} must be 0 or 1", param_hint="--telemetry-qos")
    if processes < 1:
        raise typer.BadParameter(f"--processes={processes!r} must be at least 1", param_hint="--processes")
    loaded = _load_or_bad(scenario)
    creds = credentials_or_bad(credentials)
    for option, value, schemes in (("--ocpp", ocpp, ("ws",)), ("--openadr", openadr, ("http", "https"))):
        if value is not None and (urlparse(value).scheme not in schemes or not urlparse(value).hostname):
            raise typer.BadParameter(f"{option}={value!r} must look like {schemes[0]}://HOST:PORT/...",
                                     param_hint=option)
    if loaded.live.uses_openadr and anchor is None:
        raise typer.BadParameter("--start-at is required when the scenario uses OpenADR (VENs map OpenADR's real "
                                 "times to simulated time with the shared clock anchor)", param_hint="--start-at")
    if processes > 1 and (loaded.live.uses_ocpp or loaded.live.uses_openadr):
        raise typer.BadParameter(f"--processes={processes}: only scenarios whose devices all speak MQTT can be split "
                                 "over processes ([live] uses OCPP or OpenADR)", param_hint="--processes")
    try:
        if processes > 1:
            _devices_in_processes(scenario, loaded, creds, credentials=credentials, keys=keys, host=host, port=port,
                                  speed=speed, publish_every=every, telemetry_qos=telemetry_qos, anchor=anchor,
                                  processes=processes)
            return
        with protocol_log(credentials.parent / "devices-protocols.log"):
            report = run_devices(loaded, broker_host=host, broker_port=port, credentials=creds, keys=keys,
                                 speed=speed, start_at=anchor, ocpp_url=ocpp, openadr_url=openadr,
                                 publish_every=every, telemetry_qos=telemetry_qos)
    except (ValueError, KeyError) as exc:
        raise typer.BadParameter(str(exc).strip("'\"")) from None
    except ConnectionError as exc:
        if isinstance(exc, MqttConnectError):
            raise  # the CLI names --broker for these
        raise typer.BadParameter(str(exc)) from None
    typer.echo(f"published {report.total_published} telemetry messages from {len(report.published)} devices; "
               f"commands accepted {report.commands_accepted}, refused {report.commands_refused}; "
               f"peak memory {_peak_rss_mb():.0f} MB")


def field_process_main(scenario_path: str, device_ids: list[str], credentials_path: str, host: str, port: int,
                       speed: float, publish_every: str | None, telemetry_qos: int, start_at: float | None,
                       ready: Any, go: Any, results: Any) -> None:
    """One process of ``run_devices_in_processes``: its share of the devices, until the scenario ends."""
    from twin.inputs import build_inputs
    from twin.live.field_processes import rss_mb
    from twin.scenario import load_scenario

    scenario = load_scenario(Path(scenario_path))
    inputs = build_inputs(scenario)
    before = rss_mb()
    box: dict[str, float] = {}

    def on_ready(_sim: Any) -> None:
        box["sessions_mb"] = rss_mb() - before
        ready.put(len(device_ids))
        anchor = go.get()
        box["at"] = anchor if start_at is None else start_at

    try:
        report = run_devices(scenario, broker_host=host, broker_port=port, credentials=Path(credentials_path),
                             speed=speed, publish_every=pd.Timedelta(publish_every) if publish_every else None,
                             inputs=inputs, device_ids=device_ids, start_at=lambda: box["at"], on_ready=on_ready,
                             telemetry_qos=telemetry_qos)
    except BaseException as exc:  # handed to the parent, which names it
        ready.put(-1)
        results.put({"error": f"{type(exc).__name__}: {exc}"})
        return
    results.put({"published": report.total_published, "accepted": report.commands_accepted,
                 "refused": report.commands_refused, "peak_mb": rss_mb("VmHWM"),
                 "sessions_mb": box.get("sessions_mb", float("nan"))})


def _publish_every_or_bad(value: str | None) -> pd.Timedelta | None:
    if value is None:
        return None
    try:
        every = pd.Timedelta(value)
    except (ValueError, TypeError):
        every = pd.NaT
    if pd.isna(every) or every <= pd.Timedelta(0):
        raise typer.BadParameter(f"--publish-every={value!r} must be a positive duration such as 1s or 15min",
                                 param_hint="--publish-every")
    return every


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            return next(int(line.split()[1]) / 1024.0 for line in handle if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return float("nan")


def _devices_in_processes(path: Path, loaded: Scenario, creds: LiveCredentials, *, credentials: Path,
                          keys: Path | None, host: str, port: int, speed: float, publish_every: pd.Timedelta | None,
                          telemetry_qos: int, anchor: float | None, processes: int) -> None:
    from twin.inputs import build_inputs
    from twin.live.field_processes import run_devices_in_processes

    devices = sorted(fleet_devices(build_inputs(loaded)))
    unkeyed = [d for d in devices if d not in creds.device_signing_keys]
    if unkeyed:
        raise ValueError(f"credentials: device_id {unkeyed[0]!r} has no provisioned signing key; provision again "
                         "with `gridtwin broker`")
    if keys is not None:
        KeyRegistry({d: creds.device_key(d).public_key() for d in devices}).save(keys)
    try:
        run = run_devices_in_processes(path, devices, processes=processes, credentials_path=credentials, host=host,
                                       port=port, speed=speed, publish_every=publish_every,
                                       telemetry_qos=telemetry_qos, start_at=anchor, child=field_process_main)
    except RuntimeError as exc:
        raise ValueError(str(exc)) from None
    typer.echo(f"published {run.published} telemetry messages from {run.devices} devices in {run.processes} "
               f"processes; commands accepted {run.commands_accepted}, refused {run.commands_refused}; peak memory "
               f"{'+'.join(f'{m:.0f}' for m in run.peak_rss_mb)} MB, device sessions {run.kb_per_device:.1f} kB "
               "per device")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def broker_command(
    scenario: ScenarioArg,
    port: Annotated[int | None, typer.Option(help="Loopback port (default: a free one).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for credentials.json (accounts, device signing keys) and "
                                           "device_keys.json (public keys).")]
    = Path("live"),
) -> None:
    """Start a private mosquitto for the scenario's devices, provision accounts and random device keys, run
    until Ctrl-C."""
    loaded = _load_or_bad(scenario)
    if port is not None and not 0 < port < 65536:
        raise typer.BadParameter(f"--port={port!r} must be in 1..65535", param_hint="--port")
    try:
        setup = start_broker(loaded, out=out, port=port)
    except ValueError as exc:  # the key store (KeyStoreError), or a scenario the fleet cannot be built from
        raise typer.BadParameter(str(exc)) from None
    typer.echo(f"broker mqtt://{setup.broker.host}:{setup.broker.port} (pid {setup.broker.pid})\n"
               f"credentials: {setup.credentials_path}\nkeys: {setup.keys_path}\n"
               f"OCPP / OpenADR verifiers: {setup.field_auth_path}\n"
               f"setpoint signing key: {setup.operator_key_path}\nCtrl-C to stop")
    # A plain `kill` (SIGTERM, as service managers send) must stop the broker too, not orphan it.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while setup.broker.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        setup.broker.stop()
