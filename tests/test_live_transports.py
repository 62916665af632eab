"""The same live twin whatever the transport: a run whose EV chargers speak OCPP 2.0.1 and whose flexible
loads report through their participants' OpenADR VENs, against a real mosquitto (the meters and the other
DERs), the twin's CSMS and VTN on loopback, and the field simulator — compared with the same run all over MQTT,
and settled from the events the VTN actually issued with the VENs' answers.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from twin.commands import CommandChannel, CommandKind, OperatorCommand
from twin.inputs import RunInputs, build_inputs
from twin.live.field_identity import FieldAuth
from twin.live.live_run import LIVE_DIR, LiveTwin, load_operator_key, read_live_table
from twin.live.signing import KeyRegistry
from twin.live.simulator import BrokerSetup, FieldSimulator, LiveCredentials, SimulatorReport, run_devices, start_broker
from twin.records.runstore import RunStore
from twin.scenario import Scenario
from twin.settlement.dr_program import DrProgram, Opt
from twin.settlement.ledger import Ledger

try:
    from conftest import ONE_DAY_RURAL, make_scenario
except ImportError:  # tests/ collected as a package
    from tests.conftest import ONE_DAY_RURAL, make_scenario

pytestmark = pytest.mark.slow

SPEED = 150.0  # a 15-minute interval every 6 s (the first DR interval also builds 46 days of baseline history)
LEAD_S = 15.0  # the twin's warm-up, then every MQTT device, OCPP charger and VEN connecting
CHARGE_KW = 2.0
THEN_KW = 1.5  # the controller's schedule for the interval after each decision
TRANSPORTS = {"ev_charger": "ocpp", "flex_load": "openadr"}
OPTS_OUT = "p-4"
SETTLEMENT: dict[str, Any] = {
    "events": [{"start": "2016-06-06T17:30:00Z", "end": "2016-06-06T18:00:00Z", "kind": "economic"}],
    "contracts": [
        {"participant": p, "rules": [{"kind": "non_performance_penalty", "name": "penalty",
                                       "baseline": "caiso_10_in_10", "committed_kw": "1",
                                       "net_cone_per_mw_day": "300"}]}
        for p in ("p-9", OPTS_OUT)
    ],
    "checkpoint_every": 8,
}


def _scenario(*, live: dict[str, Any] | None, settlement: dict[str, Any] | None) -> Scenario:
    extra: dict[str, Any] = {"live": live} if live is not None else {}
    if settlement is not None:
        extra["settlement"] = settlement
    return make_scenario(
        ONE_DAY_RURAL, name="live-transports", start="2016-06-06T17:00:00Z", end="2016-06-06T19:30:00Z",
        horizon="2h", **extra,
        controllers=[
            {"name": "none", "target": "controllers.baseline:NoControl"},
            {"name": "charge", "target": "transport_helpers:ChargeBatteriesAndEvs", "mode": "central",
             "kwargs": {"p_mw": CHARGE_KW / 1000.0, "then_mw": [THEN_KW / 1000.0]}},
        ],
    )


@pytest.fixture(scope="module")
def inputs() -> RunInputs:
    return build_inputs(_scenario(live=None, settlement=None))


@pytest.fixture()
def broker(inputs: RunInputs, tmp_path: Path) -> Iterator[BrokerSetup]:
    setup = start_broker(_scenario(live=None, settlement=None), out=tmp_path / "provision", inputs=inputs)
    try:
        yield setup
    finally:
        setup.broker.stop()


class _Run:
    """One live run: the twin (CSMS and VTN included) and the field simulator, each in its thread."""

    def __init__(self, scenario: Scenario, inputs: RunInputs, setup: BrokerSetup, out: Path) -> None:
        self.out = out
        anchor = time.time() + LEAD_S
        self.twin = LiveTwin(
            scenario=scenario, credentials=LiveCredentials.from_file(setup.credentials_path),
            keys=KeyRegistry.from_file(setup.keys_path), operator_key=load_operator_key(setup.operator_key_path),
            control="charge", speed=SPEED, out=out, inputs=inputs, start_at=anchor,
            field_auth=FieldAuth.from_file(setup.field_auth_path)).start()
        self.box: dict[str, Any] = {}
        self.ready = threading.Event()
        self.sim: FieldSimulator | None = None

        def field() -> None:
            def on_ready(sim: FieldSimulator) -> None:
                self.sim = sim
                self.ready.set()

            try:
                self.box["report"] = run_devices(
                    scenario, broker_host=setup.broker.host, broker_port=setup.broker.port,
                    credentials=setup.credentials_path, speed=SPEED, inputs=inputs, start_at=anchor,
                    on_ready=on_ready, ocpp_url=self.twin.ocpp_url, openadr_url=self.twin.openadr_url)
            except BaseException as exc:  # surfaced by finish()
                self.box["field_error"] = exc
                self.ready.set()

        def twin() -> None:
            try:
                self.box["result"] = self.twin.run()
            except BaseException as exc:
                self.box["twin_error"] = exc

        self.threads = [threading.Thread(target=field, daemon=True), threading.Thread(target=twin, daemon=True)]
        for thread in self.threads:
            thread.start()
        assert self.ready.wait(60), "the field did not connect"
        assert "field_error" not in self.box, self.box.get("field_error")

    def wait_done(self, n: int, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while RunStore(self.out).status().get("done", 0) < n:
            assert time.monotonic() < deadline, RunStore(self.out).status()
            time.sleep(0.05)

    def finish(self) -> SimulatorReport:
        for thread in self.threads:
            thread.join(120)
        self.twin.close()
        for key in ("field_error", "twin_error"):
            assert key not in self.box, self.box[key]
        return self.box["report"]

    def archive(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.out / LIVE_DIR / "telemetry.sqlite") as db:
            return db.execute(sql).fetchall()


def test_one_run_with_ocpp_chargers_and_an_openadr_event(inputs: RunInputs, broker: BrokerSetup,
                                                         tmp_path: Path) -> None:
    scenario = _scenario(live={"transports": TRANSPORTS, "openadr": {"opt_out": [OPTS_OUT], "notice": "15min"}},
                         settlement=SETTLEMENT)
    run = _Run(scenario, inputs, broker, tmp_path / "run")
    assert run.twin.ocpp_url and run.twin.ocpp_url.startswith("ws://127.0.0.1:")
    assert run.twin.openadr_url and run.twin.openadr_url.startswith("http://127.0.0.1:")
    assert run.sim is not None
    charger = run.sim.charger("ev-0009")
    run.wait_done(4)  # then the operator calls a DR event: the VTN issues it after the program's notice
    CommandChannel(run.out).submit(OperatorCommand(kind=CommandKind.DR_EVENT, duration=pd.Timedelta("30min"),
                                                   operator="ann"))
    report = run.finish()
    n = len(scenario.times)
    assert RunStore(run.out).status()["state"] == "finished" and RunStore(run.out).status()["done"] == n

    # Every message each transport delivered is in the one archive, judged the same way; nothing refused.
    counts = dict(((t, c, v), k) for t, c, v, k in run.archive(
        "SELECT transport, channel, verdict, COUNT(*) FROM raw_messages GROUP BY transport, channel, verdict"))
    evs = [d for d in report.published if d.startswith("ev-")]
    flex = [d for d in report.published if d.startswith("flex-")]
    assert counts[("ocpp", "telemetry", "accepted")] == sum(report.published[d] for d in evs)
    assert counts[("openadr", "telemetry", "accepted")] == sum(report.published[d] for d in flex)
    assert not [key for key in counts if key[2] == "rejected"], counts

    # The controller's EV setpoints became TxProfiles for the chargers with a car plugged in; they accepted
    # them, and the charger that had a car from the start charged at the setpoint, as the twin computed.
    assert counts[("ocpp", "cmd/ack", "accepted")] >= 5
    truth = report.truth.pivot(index="time", columns="device_id", values="p_mw")
    source = report.truth.pivot(index="time", columns="device_id", values="source")
    later = truth.index[1:]
    live = read_live_table(run.out)
    assert (source.loc[later, "ev-0009"] == "command").all(), (source["ev-0009"], live[["offline", "commands_sent", "releases_sent", "acks_accepted", "trigger", "not_sent"]].to_string())
    assert truth.loc[later, "ev-0009"].to_numpy() == pytest.approx(CHARGE_KW / 1000.0)
    twin_p = RunStore(run.out).read_table("charge", "asset_p_mw")
    assert twin_p.loc[later, "ev-0009"].to_numpy() == pytest.approx(truth.loc[later, "ev-0009"].to_numpy())
    live = read_live_table(run.out)
    assert "no transaction" in " ".join(live["not_sent"])  # chargers without a car: no TxProfile, said why
    # Each TxProfile carried the controller's schedule, one period per 15-minute interval until the setpoint
    # expires (setpoint_ttl 30 min): 2 kW now, 1.5 kW from 900 s; the charger's answer is archived with it.
    profiles = list(charger.profiles)
    assert len(profiles) >= len(later)
    assert {p.periods_kw for p in profiles} == {((0, CHARGE_KW), (900, THEN_KW))}
    assert {p.valid_to - p.start for p in profiles} == {pd.Timedelta("30min")}
    assert {pd.Timestamp(p.start) for p in profiles} >= set(later)
    acks = run.archive("SELECT verdict, detail FROM raw_messages WHERE device_id = 'ev-0009' AND channel = 'cmd/ack'")
    assert len(acks) == len(profiles) and all(v == "accepted" for v, _ in acks)
    assert all("SetChargingProfile Accepted" in d and "2000 W from 0 s, 1500 W from 900 s" in d for _, d in acks)

    # The program: the scenario's event and the operator's, as the VTN issued them, and every VEN's answer.
    program = DrProgram.open(run.out / LIVE_DIR / "openadr" / "program.sqlite", create=False)
    try:
        events = {e.source.split(":")[0]: e for e in program.events()}
        assert set(events) == {"scenario", "operator"}
        operator = events["operator"]
        assert operator.end - operator.start == pd.Timedelta("30min") and operator.source == "operator:ann"
        answers = program.answers("scenario-0", at=scenario.end)
        assert answers[OPTS_OUT] is Opt.OUT and answers["p-9"] is Opt.IN and len(answers) == 13
    finally:
        program.close()
    done = CommandChannel(run.out).history()
    assert list(done["verdict"]) == ["applied"] and "issued by the OpenADR VTN" in done["detail"].iloc[0]

    # Settlement paid for exactly those events, and only for the participant that opted in.
    ledger = Ledger.open(run.out / "charge" / "ledger.sqlite", read_only=True)
    try:
        opted_in = ledger.statement("p-9").rows
        opted_out = ledger.statement(OPTS_OUT).rows
    finally:
        ledger.close()
    penalised = sorted(pd.Timestamp(t) for t in opted_in.loc[opted_in["rule"] == "penalty", "interval_start"])
    expected = [pd.Timestamp("2016-06-06T17:30:00Z"), pd.Timestamp("2016-06-06T17:45:00Z"),
                operator.start, operator.start + scenario.step]
    assert penalised == expected
    assert opted_out.empty or "penalty" not in set(opted_out["rule"])


def test_controllers_see_the_same_observations_whatever_the_transport(inputs: RunInputs, broker: BrokerSetup,
                                                                      tmp_path: Path) -> None:
    tables = {}
    for name, live in (("mqtt", None), ("mixed", {"transports": TRANSPORTS})):
        run = _Run(_scenario(live=live, settlement=None), inputs, broker, tmp_path / name)
        run.finish()
        assert set(read_live_table(run.out)["trigger"]) == {"complete"}  # every interval fully measured
        store = RunStore(run.out)
        tables[name] = {t: store.read_table("charge", t) for t in ("summary", "asset_p_mw", "vm_pu")}
        if name == "mixed":
            transports = {t for (t,) in run.archive("SELECT DISTINCT transport FROM raw_messages")}
            assert transports == {"mqtt", "ocpp", "openadr"}
    physical = ["p_head_mw", "q_head_mvar", "losses_mw", "vm_min_pu", "vm_max_pu"]
    pd.testing.assert_frame_equal(tables["mqtt"]["summary"][physical], tables["mixed"]["summary"][physical])
    pd.testing.assert_frame_equal(tables["mqtt"]["asset_p_mw"], tables["mixed"]["asset_p_mw"])
    pd.testing.assert_frame_equal(tables["mqtt"]["vm_pu"], tables["mixed"]["vm_pu"])


def test_live_commands_name_the_bad_option_and_value(inputs: RunInputs, broker: BrokerSetup, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from twin.cli import app

    scenario = Path(__file__).resolve().parent.parent / "scenarios" / "live-ocpp-openadr.toml"
    creds = str(broker.credentials_path)
    url = f"mqtt://{broker.broker.host}:{broker.broker.port}"
    cases = [
        (["live", str(scenario), "--broker", url, "--credentials", creds, "--keys", str(broker.keys_path),
          "--ocpp", "nonsense"], "--ocpp='nonsense' must look like HOST:PORT"),
        (["live", str(scenario), "--broker", url, "--credentials", creds, "--keys", str(broker.keys_path),
          "--field-auth", str(tmp_path / "none.json")], "--field-auth="),
        (["devices", str(scenario), "--broker", url, "--credentials", creds, "--start-at", "5"],
         "give the CSMS address"),
        (["devices", str(scenario), "--broker", url, "--credentials", creds],
         "--start-at is required when the scenario uses OpenADR"),
        (["devices", str(scenario), "--broker", url, "--credentials", creds, "--start-at", "5", "--ocpp", "http://x"],
         "--ocpp='http://x' must look like ws://HOST:PORT"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.replace("│", " ").split()), result.output
        assert "Traceback" not in result.output
