"""dashboards.data and dashboards.pages: what the pages show, from small run folders written with the real
RunStore / CommandChannel / Ledger — no browser, no power flow."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dashboards import pages
from dashboards.data import RunData, reference_policy
from dashboards.events import run_events
from dashboards.synthetic import SyntheticTwin, radial_topology
from twin.commands import CommandChannel, OperatorCommand
from twin.records.kpis import compute_kpis
from twin.records.recorder import SUMMARY_COLUMNS, PolicyRecords
from twin.records.runstore import RunStore
from twin.grid.topology import FEEDER_FILENAME

T0 = pd.Timestamp("2016-06-06T00:00:00Z")
STEP = pd.Timedelta("15min")


def hand_records(policy: str, start: int, vm_rows: list[list[float]], *, loading: float = 40.0,
                 fallback: list[list[bool]] | None = None) -> PolicyRecords:
    """Records of a 3-bus feeder (buses 0, 1, 2; line 0; trafo 0; assets A, B) for len(vm_rows) intervals."""
    n = len(vm_rows)
    index = pd.DatetimeIndex([T0 + (start + i) * STEP for i in range(n)], name="time")
    vm = np.array(vm_rows, dtype=float)
    summary = pd.DataFrame(0.0, index=index, columns=list(SUMMARY_COLUMNS))
    summary["p_head_mw"] = 0.1
    summary["cost_eur"] = 2.0
    summary["vm_min_pu"], summary["vm_max_pu"] = vm.min(axis=1), vm.max(axis=1)
    summary["converged"] = True
    if "controller_online" in summary.columns:
        summary["controller_online"] = True
    fb = np.array(fallback if fallback is not None else [[False, False]] * n, dtype=bool)
    summary["n_fallback"] = fb.sum(axis=1)
    assets = ["A", "B"]
    tables = {
        "summary": summary,
        "vm_pu": pd.DataFrame(vm, index=index, columns=["0", "1", "2"]),
        "line_loading_percent": pd.DataFrame(loading, index=index, columns=["0"]),
        "trafo_loading_percent": pd.DataFrame(30.0, index=index, columns=["0"]),
        "asset_p_mw": pd.DataFrame(0.001, index=index, columns=assets),
        "asset_setpoint_mw": pd.DataFrame(0.002, index=index, columns=assets),
        "asset_soc_mwh": pd.DataFrame(0.005, index=index, columns=["A"]),
        "asset_clipped": pd.DataFrame("", index=index, columns=assets),
        "asset_fallback": pd.DataFrame(fb, index=index, columns=assets),
        "asset_reported_p_mw": pd.DataFrame(0.001, index=index, columns=assets),
    }
    fields = set(PolicyRecords.TABLES)
    return PolicyRecords(policy=policy, step=STEP, **{k: v for k, v in tables.items() if k in fields})


def new_run(path: Path, policies: tuple[str, ...] = ("depin", "scada"), *, state: str = "running") -> RunStore:
    store = RunStore(path)
    store.write_meta({"scenario": {"name": "hand", "step": "15min",
                                   "limits": {"v_min_pu": 0.95, "v_max_pu": 1.05, "loading_max_percent": 100.0}},
                      "policies": list(policies),
                      "assets": [{"asset_id": "A", "kind": "battery", "bus": "1", "participant_id": "P1"},
                                 {"asset_id": "B", "kind": "pv", "bus": "2", "participant_id": "P2"}]})
    store.write_status(done=0, total=96, state=state)
    return store


def test_reference_policy_prefers_scada() -> None:
    assert reference_policy(["depin", "central-scada"]) == "central-scada"
    assert reference_policy(["depin", "central"]) == "central"
    assert reference_policy(["a", "b"]) == "a" and reference_policy([]) is None


def test_tables_are_read_incrementally_and_match_the_run_store(tmp_path: Path) -> None:
    store = new_run(tmp_path)
    store.append(hand_records("depin", 0, [[1.0, 0.99, 0.98], [1.0, 0.98, 0.97]]))
    data = RunData(tmp_path)
    assert data.table("depin", "vm_pu")["2"].tolist() == [0.98, 0.97]
    store.append(hand_records("depin", 2, [[1.0, 0.97, 0.96]]))
    vm = data.table("depin", "vm_pu")
    assert vm["2"].tolist() == [0.98, 0.97, 0.96]
    assert data._tables[("depin", "vm_pu")].parts == 2  # the first part was not read again
    pd.testing.assert_frame_equal(vm, store.read_table("depin", "vm_pu"))
    assert data.table("scada", "vm_pu").empty  # no parts yet: empty, not an error


def test_a_read_while_the_twin_writes_an_interval_sees_whole_intervals(tmp_path: Path) -> None:
    store = new_run(tmp_path)
    store.append(hand_records("depin", 0, [[1.0, 0.94, 0.93], [1.0, 1.0, 1.0]]))
    store.append(hand_records("depin", 2, [[1.0, 0.99, 0.99]]))
    # The twin had written interval 2's voltages but not yet its loadings when the dashboard read them.
    for name in ("line_loading_percent", "trafo_loading_percent", "summary"):
        parts = sorted((tmp_path / "depin" / name).glob("part-*.parquet"))
        parts[-1].unlink()
    records = RunData(tmp_path).records("depin")
    assert len(records.vm_pu) == len(records.line_loading_percent) == len(records.summary) == 2
    kpis = RunData(tmp_path).kpis()  # no shape error: the KPIs of the two whole intervals
    assert kpis.at["voltage_violation_bus_intervals", "depin"] == 2


def test_warming_reads_every_table_once(tmp_path: Path) -> None:
    store = new_run(tmp_path)
    store.append(hand_records("depin", 0, [[1.0, 0.99, 0.98], [1.0, 0.98, 0.97]]))
    data = RunData(tmp_path)
    data.warm()
    written = {name for name in PolicyRecords.TABLES if (tmp_path / "depin" / name).is_dir()}
    assert {n for (p, n), c in data._tables.items() if p == "depin" and c.parts == 1} == written
    assert data.table("depin", "vm_pu")["2"].tolist() == [0.98, 0.97]  # from the cache, the same frame


def test_live_kpis_are_recomputed_in_the_background_and_the_last_shown_meanwhile(tmp_path: Path) -> None:
    store = new_run(tmp_path)
    store.append(hand_records("depin", 0, [[1.0, 0.94, 0.93]]))
    data = RunData(tmp_path, live_kpis_every_s=0.0)
    assert data.kpis().at["voltage_violation_bus_intervals", "depin"] == 2  # the first: computed right away
    store.append(hand_records("depin", 1, [[1.0, 0.94, 1.0]]))
    store.write_status(done=2, total=8, state="running")
    assert data.kpis().at["voltage_violation_bus_intervals", "depin"] == 2  # the last ones, while it recomputes
    deadline = time.monotonic() + 20
    while data.kpis().at["voltage_violation_bus_intervals", "depin"] != 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert data.kpis().at["voltage_violation_bus_intervals", "depin"] == 3  # 2 + bus 1 in interval 1


def test_live_kpis_then_the_runs_kpis(tmp_path: Path) -> None:
    store = new_run(tmp_path)
    rec = hand_records("depin", 0, [[1.0, 0.94, 0.93], [1.0, 1.0, 1.0]])
    store.append(rec)
    data = RunData(tmp_path)
    live = data.kpis()
    assert list(live.columns) == ["depin"]
    assert live.at["voltage_violation_bus_intervals", "depin"] == 2  # buses 1 and 2, interval 0
    assert live.at["energy_cost_eur", "depin"] == 4.0
    store.write_kpis({"depin": compute_kpis(rec)})
    assert data.kpis().equals(store.kpis())


def test_events_name_the_buses_assets_and_onsets_and_staleness_is_an_alarm(tmp_path: Path) -> None:
    store = new_run(tmp_path)
    store.append(hand_records("scada", 0, [[1.0, 1.0, 1.0], [1.0, 0.97, 0.93], [1.0, 1.0, 1.0]], loading=130.0,
                              fallback=[[False, False], [False, True], [False, False]]))
    store.append(hand_records("depin", 0, [[1.0, 1.0, 1.0], [1.0, 1.0, 1.06], [1.0, 1.0, 1.06]]))
    data = RunData(tmp_path)
    events = run_events(data).set_index("kind", drop=False)
    low = events.loc["undervoltage"]
    assert low["policy"] == "scada" and low["severity"] == "critical"
    assert low["message"] == ("voltage below 0.95 pu for 1 interval(s); lowest 0.9300 pu at bus 2, "
                              "2016-06-06 00:15 UTC")
    assert (low["start"], low["end"]) == (T0 + STEP, T0 + 2 * STEP)  # onset and end of the episode
    high = events.loc["overvoltage"]
    assert high["policy"] == "depin" and high["start"] == T0 + STEP
    assert pd.isna(high["end"])  # the run is still going and so is the episode
    over = events.loc["overload"]
    assert over["message"].startswith("loading above 100 % for 3 interval(s); max 130 % on line 0")
    # B falls back in 1 of 3 intervals: not scada's normal state, so it is an event
    assert events.loc["fallback", "message"] == ("1 asset(s) on autonomous fallback (not this policy's normal "
                                                 "state): B")
    assert not pages.status_alarms(data, stale_after_s=60)
    old = (datetime.now(UTC) - timedelta(seconds=300)).isoformat()
    (tmp_path / "status.json").write_text(f'{{"done": 2, "total": 96, "state": "running", "updated_utc": "{old}"}}')
    stale = [a for a in pages.status_alarms(data, stale_after_s=60) if "stale telemetry" in a["message"]]
    assert len(stale) == 1 and stale[0]["severity"] == "critical"


def test_a_policy_that_never_controls_an_asset_raises_no_fallback_event(tmp_path: Path) -> None:
    store = new_run(tmp_path, ("no-control",))
    store.append(hand_records("no-control", 0, [[1.0, 1.0, 1.0]] * 4, fallback=[[True, True]] * 4))
    assert "fallback" not in set(run_events(RunData(tmp_path))["kind"])


def test_the_map_follows_the_cursor_and_jumps_to_the_worst_moment(tmp_path: Path) -> None:
    store = new_run(tmp_path)
    (tmp_path / FEEDER_FILENAME).write_text(json.dumps(radial_topology(3).to_dict()))
    store.append(hand_records("scada", 0, [[1.0, 0.99, 0.98], [1.0, 0.96, 0.94], [1.0, 1.0, 1.01]]))
    data = RunData(tmp_path)
    latest, caption = pages.map_view(data, policy="scada", view=None, click=None)
    buses = next(t for t in latest.data if t.name == "buses")
    assert [float(v) for v in buses.marker.color] == pytest.approx([1.0, 1.0, 1.01], abs=1e-6)  # float32 colours
    assert caption.startswith("scada at 2016-06-06 00:30 UTC (latest, following the run)")
    assert pages.jump_time(data, "scada", "vmin") == T0 + STEP
    worst, caption = pages.map_view(data, policy="scada", view={"cursor": (T0 + STEP).isoformat()}, click=None)
    assert [float(v) for v in next(t for t in worst.data if t.name == "buses").marker.color] == pytest.approx(
        [1.0, 0.96, 0.94], abs=1e-6)
    assert caption.startswith("scada at 2016-06-06 00:15 UTC;")
    assert pages.map_view(data, policy="nope", view=None, click=None)[1].startswith("scada")  # the reference
    (tmp_path / FEEDER_FILENAME).unlink()
    missing, _ = pages.map_view(RunData(tmp_path), policy="scada", view=None, click=None)
    assert "no feeder.json" in missing.layout.annotations[0].text


def test_command_history_and_fault_windows(tmp_path: Path) -> None:
    new_run(tmp_path)
    channel = CommandChannel(tmp_path)
    for kind, extra in (("backhaul_cut", {}), ("participant_dropout", {"participant_id": "P2"}), ("clear_faults", {})):
        channel.submit(OperatorCommand.from_dict({"kind": kind, "duration": "2h", "operator": "alice", **extra}))
    data = RunData(tmp_path)
    history = data.command_history()
    assert history["state"].tolist() == ["pending"] * 3 and history["operator"].tolist() == ["alice"] * 3
    for (_, path, _), at in zip(channel.take(), (T0, T0 + STEP, T0 + 4 * STEP)):
        channel.finish(path, verdict="applied", applied_at=at)
    history = data.command_history()
    assert history["kind"].tolist() == ["clear_faults", "participant_dropout", "backhaul_cut"]  # newest first
    assert set(history["verdict"]) == {"applied"}
    windows = data.fault_windows()
    assert windows["label"].tolist() == ["backhaul cut", "participant dropout P2"]
    assert windows["end"].tolist() == [T0 + 4 * STEP, T0 + 4 * STEP]  # cut short by clear_faults


def test_submit_fault_validates_and_uses_the_command_channel(tmp_path: Path) -> None:
    store = new_run(tmp_path)
    data = RunData(tmp_path)
    ok, message = pages.submit_fault(data, operator="alice", kind="backhaul_cut", duration="30min", participant=None)
    assert ok and message.startswith("submitted backhaul_cut for 30min (command ")
    (cmd,) = CommandChannel(tmp_path).take()
    assert cmd[0].operator == "alice" and cmd[0].duration == pd.Timedelta("30min")
    assert pages.submit_fault(data, operator="a", kind="meteor", duration="1h", participant=None) == (
        False, "kind='meteor': expected one of control_centre_outage, backhaul_cut, participant_dropout, clear_faults, dr_event")
    assert pages.submit_fault(data, operator="a", kind="backhaul_cut", duration="-1h", participant=None)[1] == (
        "duration='-1h': must be positive")
    assert pages.submit_fault(data, operator="a", kind="participant_dropout", duration="1h", participant="P9")[1] == (
        "participant_id='P9': not a participant of this run")
    store.write_status(done=96, total=96, state="finished")
    assert pages.submit_fault(data, operator="a", kind="backhaul_cut", duration="1h", participant=None) == (
        False, "the run is finished: no twin is running to apply a command")
    assert len(CommandChannel(tmp_path).take()) == 1  # nothing else was queued


def test_ledgers_per_policy_are_verified_and_tampering_is_shown(tmp_path: Path) -> None:
    twin = SyntheticTwin(tmp_path, radial_topology(6), n_intervals=8, n_assets=4)
    twin.write_start()
    twin.advance(8)
    data = RunData(tmp_path, ledger_every_s=0.0)  # re-verify on every change
    assert data.ledgers() == {}
    assert pages.settlement_status(data, None)[0].children == pages.NO_LEDGER
    twin.settle(checkpoint_every=4)
    assert list(data.ledgers()) == ["depin", "scada"]
    view = data.ledger("depin")
    assert view.verified and view.entries == 8 * 2 and view.checkpoints == 2
    assert view.participants == ("P00", "P01")
    # P00 gets 0.0125 EUR, P01 0.0150 EUR an interval from the operator
    assert view.balances["participant:P01"] == Decimal("0.12")  # exact: the ledger never uses floats
    assert data.payments()["depin"].sum() == pytest.approx(8 * 0.0275)
    assert data.payments()["scada"].sum() == pytest.approx(8 * 0.0275 * 1.25)
    statement, page, rows, csv = pages.statement_view(data, "depin", "P01")
    assert "total" in str(statement) and "0.12" in str(statement)
    assert (page, rows, csv) == (0, "rows 1–8 of 8", "/export/statement.csv?ledger=depin&participant=P01")
    with sqlite3.connect(tmp_path / "depin" / "ledger.sqlite") as conn:  # an insider rewrites a posting
        conn.execute("DROP TRIGGER postings_no_update")
        conn.execute("UPDATE postings SET amount_micro = amount_micro + 1000000 WHERE entry_seq = 3 "
                     "AND account LIKE 'participant:%'")
    tampered = data.ledger("depin")
    assert not tampered.verified and tampered.first_bad_entry == 3
    alarms = [a for a in pages.status_alarms(data, stale_after_s=60) if a["policy"] == "depin"
              and "ledger" in a["message"]]
    assert alarms and "first bad entry 3" in alarms[0]["message"]
    assert "FAILED" in str(pages.settlement_status(data, "depin")[0])
    throttled = RunData(tmp_path, ledger_every_s=3600.0)
    first = throttled.ledger("scada")
    with sqlite3.connect(tmp_path / "scada" / "ledger.sqlite") as conn:
        conn.execute("DROP TRIGGER postings_no_update")
        conn.execute("UPDATE postings SET amount_micro = amount_micro + 1 WHERE entry_seq = 1 "
                     "AND account LIKE 'participant:%'")
    assert throttled.ledger("scada") is first  # within ledger_every_s: the last verification stands
    assert not RunData(tmp_path).ledger("scada").verified
    background = RunData(tmp_path, ledger_every_s=1e-9)
    stale = background.ledger("depin")
    with sqlite3.connect(tmp_path / "depin" / "ledger.sqlite") as conn:
        conn.execute("INSERT INTO ledger_meta(key, value) VALUES ('touched', '1')")  # the file changes
    assert background.ledger("depin") is stale  # answered at once; re-verification runs in the background
    deadline = time.monotonic() + 10
    while background.ledger("depin") is stale and time.monotonic() < deadline:
        time.sleep(0.05)
    assert background.ledger("depin") is not stale and not background.ledger("depin").verified


def test_studies_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    new_run(run)
    assert pages.studies_layout(RunData(run)).children.children.startswith("no studies")
    studies = tmp_path / "studies"
    studies.mkdir()
    pd.DataFrame({"variant_id": ["pv50", "pv50", "pv100", "pv100"], "policy": ["depin", "scada"] * 2,
                  "energy_cost_eur": [10.0, 12.0, 8.0, 11.0], "converged": [True] * 4}).to_parquet(studies / "pv.parquet")
    pd.DataFrame({"x": [1]}).to_parquet(studies / "bad.parquet")
    (studies / "junk.parquet").write_text("not parquet")
    data = RunData(run, studies_dir=studies)
    assert data.study_names() == ["bad.parquet", "junk.parquet", "pv.parquet"]
    options, default = pages.study_kpi_options(data, "pv.parquet")
    assert default == "energy_cost_eur" and [o["value"] for o in options] == ["energy_cost_eur"]
    fig, _ = pages.study_view(data, "pv.parquet", "energy_cost_eur")
    assert [float(v) for v in next(t for t in fig.data if t.name == "depin").y] == [10.0, 8.0]
    assert "missing column(s) variant_id, policy" in pages.study_view(data, "bad.parquet", None)[1].children
    assert "not a readable Parquet table" in pages.study_view(data, "junk.parquet", None)[1].children
    assert "is not in" in data.study("../run/meta.json").error  # only files inside the folder


def test_synthetic_twin_applies_commands_like_the_engine(tmp_path: Path) -> None:
    twin = SyntheticTwin(tmp_path, radial_topology(10), n_intervals=12, n_assets=4)
    twin.write_start()
    twin.advance(2)
    CommandChannel(tmp_path).submit(OperatorCommand.from_dict({"kind": "control_centre_outage", "duration": "30min",
                                                               "operator": "bob"}))
    twin.advance(4)
    data = RunData(tmp_path)
    assert data.command_history()["verdict"].tolist() == ["applied"]
    assert data.table("scada", "summary")["n_fallback"].tolist() == [0, 0, 4, 4, 0, 0]
    assert data.table("depin", "summary")["n_fallback"].tolist() == [0] * 6
    assert data.status()["done"] == 6
