"""What issue 17 asks of the dashboard's views, without a browser: the comparison at a glance (absolute
differences, better by meaning, the biggest driver), events and alarms (onset, end, acknowledge, shelve, the
cursor), time navigation (zoom, cursor, playback), drill-down (assets of a bus, kW for households), export
(CSV routes, no formulas), hygiene (compressed, cache-controlled static files, studies by parameters,
balances in natural order), refused faults no policy can feel, and waiting for a run."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from dash import html

from dashboards import create_app, pages
from dashboards.alarms import AlarmBook, alarms_at
from dashboards.data import RunData
from dashboards.events import episodes, felt_by, run_events, windows
from dashboards.glance import GLANCE_ROWS, better_of, driver_sentences, glance_table
from dashboards.mapview import asset_unit, clicked_bus
from dashboards.pages.studies import column_title, variant_labels
from dashboards.synthetic import SyntheticTwin, radial_topology
from dashboards.tables import natural_key, next_page
from dashboards.timebar import scrubber_marks, step_view
from dashboards.timeline import Axis, TimeView, decorate, zoom_from_relayout
from twin.commands import CommandChannel, OperatorCommand
from twin.reporting.figures import head_power_figure

T0 = pd.Timestamp("2016-06-06T00:00:00Z")
STEP = pd.Timedelta("15min")


def _summary(cost: list[float], p_head: list[float], online: list[bool] | None = None,
             price: list[float] | None = None) -> pd.DataFrame:
    index = pd.DatetimeIndex([T0 + i * STEP for i in range(len(cost))], name="time")
    return pd.DataFrame({"cost_eur": cost, "p_head_mw": p_head,
                         "controller_online": online if online is not None else [True] * len(cost),
                         "price_eur_per_mwh": price if price is not None else [100.0] * len(cost)}, index=index)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16-interval run: scada and depin, a scheduled 1-hour centre outage, a DR event, ledgers."""
    run = tmp_path_factory.mktemp("views") / "run"
    twin = SyntheticTwin(run, radial_topology(12, seed=1), n_intervals=16, n_assets=6, seed=1,
                         faults=[("control_centre_outage", "2016-06-06T01:00:00Z", "2016-06-06T02:00:00Z")],
                         dr_events=[("2016-06-06T02:00:00Z", "2016-06-06T03:00:00Z")])
    twin.write_start()
    twin.advance(12)
    twin.settle()
    return run


# -- 1. the comparison at a glance --------------------------------------------------------------------------
def test_glance_shows_absolute_differences_with_units_and_marks_the_better_by_meaning() -> None:
    kpis = pd.DataFrame({"scada": {"energy_cost_eur": 45.23, "pv_curtailed_mwh": 0.0, "controller_offline_intervals": 8,
                                   "central_kbytes": 380.2},
                         "depin": {"energy_cost_eur": 33.81, "pv_curtailed_mwh": 0.0004, "controller_offline_intervals": 0,
                                   "central_kbytes": 0.0}})
    summaries = {p: _summary([0.0] * 96, [0.0] * 96) for p in ("scada", "depin")}
    text = str(glance_table(kpis, summaries, reference="scada"))
    assert "-11.42 EUR better" in text  # 33.81 - 45.23, lower cost is better
    assert re.findall(r"[+-]\d[\d.,]* %", text) == ["+8.3 %"]  # no relative changes: only uptime is in %
    assert "same" in text  # 0.0004 MWh curtailed shows as 0.000: the same at the shown precision
    assert "+8.3 % better" in text  # uptime: 100 % vs 1 - 8/96 = 91.7 %, higher is better
    assert "-380.2 kB better" in text  # participant data at a central point: less is better
    rows = {r.key: r for r in GLANCE_ROWS}
    assert better_of(rows["energy_cost_eur"], {"scada": 45.23, "depin": 33.81}) == {"depin"}
    assert better_of(rows["controller_uptime_percent"], {"scada": 91.7, "depin": 100.0}) == {"depin"}
    assert better_of(rows["pv_curtailed_mwh"], {"scada": 0.0, "depin": 0.0004}) == set()  # equal when shown
    assert better_of(rows["participant_earnings_eur"], {"scada": 1.0, "depin": 2.0}) == set()  # a transfer


def test_the_driver_sentence_names_the_outage_and_what_it_cost() -> None:
    # 8 intervals; scada is offline in 4-5 (01:00-01:30) and pays 2 EUR more each there, 0.1 EUR more elsewhere
    scada = _summary([1.1, 1.1, 1.1, 1.1, 3.0, 3.0, 1.1, 1.1], [0.02] * 4 + [0.05, 0.04] + [0.02] * 2,
                     online=[True] * 4 + [False, False] + [True] * 2)
    depin = _summary([1.0] * 8, [0.02] * 4 + [0.03, 0.03] + [0.02] * 2)
    spans = pd.DataFrame([{"start": T0 + 4 * STEP, "end": T0 + 6 * STEP, "kind": "control_centre_outage",
                           "category": "fault", "label": "control-centre outage", "source": "scenario"}])
    (sentence,) = driver_sentences({"scada": scada, "depin": depin}, reference="scada", windows=spans, step=STEP)
    assert sentence.startswith("depin is 4.60 EUR cheaper than scada (8.00 vs 12.60 EUR).")
    # 2 × (3.0 - 1.0) = 4.00 EUR of the 4.60, and a 0.05 - 0.03 = 0.020 MW higher peak
    assert ("Biggest driver: scada lost control Mon 06 Jun 01:00–01:30 (control-centre outage): it paid 4.00 EUR "
            "more than depin there, 0.020 MW higher peak.") in sentence


# -- 2. events and alarms ---------------------------------------------------------------------------------
def test_episodes_by_hand() -> None:
    assert episodes(np.array([0, 1, 1, 0, 1], dtype=bool)) == [(1, 3), (4, 5)]
    assert episodes(np.zeros(3, dtype=bool)) == []


def test_scenario_and_operator_faults_and_dr_events_are_windows_and_events(synthetic: Path) -> None:
    data = RunData(synthetic)
    spans = windows(data)
    assert spans[["kind", "category", "source"]].values.tolist() == [
        ["control_centre_outage", "fault", "scenario"], ["dr_event", "dr", "scenario"]]
    events = run_events(data)
    outage = events[events["kind"] == "control_centre_outage"].iloc[0]
    assert outage["message"].endswith("felt by scada") and outage["severity"] == "warning"
    offline = events[events["kind"] == "controller_offline"].iloc[0]
    assert (offline["policy"], offline["start"], offline["end"]) == ("scada", T0 + 4 * STEP, T0 + 8 * STEP)
    assert "controller_offline" not in set(events[events["policy"] == "depin"]["kind"])


def test_felt_by_follows_each_policys_mode() -> None:
    modes = {"no-control": "ideal", "scada": "central", "depin": "agents"}
    assert felt_by("backhaul_cut", modes, has_settlement=False)[0] == ["scada"]
    assert felt_by("participant_dropout", modes, has_settlement=False)[0] == ["scada", "depin"]
    felt, why = felt_by("control_centre_outage", {"no-control": "ideal"}, has_settlement=False)
    assert felt == [] and "no-control uses no comms" in why
    assert felt_by("dr_event", modes, has_settlement=False) == (
        [], "this run has no [settlement] contracts to call a demand-response event under")


def test_alarms_follow_the_cursor_and_stay_until_acknowledged(synthetic: Path) -> None:
    events = run_events(RunData(synthetic))
    book = AlarmBook()
    before, _ = alarms_at(events, T0 + 2 * STEP, book)
    assert not any(r.policy == "scada" and "controller offline" in r.message for r in before)
    during, _ = alarms_at(events, T0 + 5 * STEP, book)
    offline = next(r for r in during if "controller offline" in r.message)
    assert offline.state == "active" and offline.start == T0 + 4 * STEP
    after, _ = alarms_at(events, T0 + 10 * STEP, book)
    assert next(r for r in after if r.id == offline.id).state == "cleared"  # ended, not yet acknowledged
    assert book.acknowledge([offline.id], operator="alice") == 1
    assert offline.id not in {r.id for r in alarms_at(events, T0 + 10 * STEP, book)[0]}
    still, _ = alarms_at(events, T0 + 5 * STEP, book)  # while active it stays listed, acknowledged
    assert next(r for r in still if r.id == offline.id).acked_by == "alice"
    book.shelve([offline.id], operator="bob")
    shelved_rows, shelved = alarms_at(events, T0 + 5 * STEP, book)
    assert offline.id not in {r.id for r in shelved_rows} and shelved == 1
    assert book.unshelve_all() == 1


def test_an_alarm_action_takes_only_known_alarms(synthetic: Path) -> None:
    from dashboards.auth import OperatorAuth

    context = pages.Context(data=RunData(synthetic), auth=OperatorAuth("pw"))
    view = {"cursor": (T0 + 5 * STEP).isoformat()}
    assert pages.overview.alarm_action(context, operator="a", action="ov-ack", selected=["made-up", 5],
                                       view=view) == "select one or more alarms first"
    rows, _, _ = pages.alarm_rows(context, view)
    assert pages.overview.alarm_action(context, operator="a", action="ov-ack", selected=[rows[0].id],
                                       view=view) == "1 alarm(s) acknowledged by a"


def test_a_fault_no_policy_can_feel_is_refused_with_the_reason(tmp_path: Path) -> None:
    twin = SyntheticTwin(tmp_path, radial_topology(6), policies=("no-control",), n_intervals=8, n_assets=2)
    twin.write_start()
    twin.advance(2)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["scenario"]["controllers"] = [{"name": "no-control", "mode": "ideal"}]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    data = RunData(tmp_path)
    ok, message = pages.submit_fault(data, operator="a", kind="backhaul_cut", duration="30min", participant=None)
    assert not ok and message == ("refused: no policy of this run can feel a backhaul cut — a backhaul cut acts only "
                                  "on central policies; no-control uses no comms (perfect information)")
    ok, message = pages.submit_fault(data, operator="a", kind="dr_event", duration="30min", participant=None)
    assert not ok and "no [settlement] contracts" in message
    ok, message = pages.submit_fault(data, operator="a", kind="clear_faults", duration="15min", participant=None)
    assert not ok and message == "refused: no fault is active or scheduled to clear"
    assert CommandChannel(tmp_path).take() == []


def test_review_says_who_feels_a_fault_before_it_is_submitted(synthetic: Path) -> None:
    ok, message, command = pages.check_fault(RunData(synthetic), operator="a", kind="backhaul_cut", duration="30min",
                                             participant=None)
    assert ok and command is not None
    assert message == ("backhaul cut for 30min from 2016-06-06 03:00 UTC. Felt by: scada. Not affected: depin "
                       "coordinates its agents over the mesh.")
    assert CommandChannel(synthetic).take() == []  # reviewing submits nothing


# -- 3. time navigation -----------------------------------------------------------------------------------
def test_zoom_cursor_and_playback_transitions() -> None:
    axis = Axis(T0, STEP, 8)
    assert zoom_from_relayout({"xaxis.range[0]": "2016-06-06 00:30", "xaxis.range[1]": "2016-06-06 01:00"}) == (
        T0 + 2 * STEP, T0 + 4 * STEP)
    assert zoom_from_relayout({"xaxis2.range": ["2016-06-06 00:30", "2016-06-06 01:00"]}) == (
        T0 + 2 * STEP, T0 + 4 * STEP)
    assert zoom_from_relayout({"xaxis.autorange": True}) == "reset"
    assert zoom_from_relayout({"autosize": True}) is None and zoom_from_relayout(["x"]) is None
    assert zoom_from_relayout({"xaxis.range[0]": -1, "xaxis.range[1]": 6}) is None  # a blank chart, no dates
    follow = TimeView()
    assert follow.cursor_on(axis) == T0 + 7 * STEP  # following: the latest interval
    back = step_view(follow, axis, "tb-back")
    assert back.cursor == T0 + 6 * STEP and not back.following
    playing = step_view(back, axis, "tb-play")
    assert playing.playing and playing.cursor == T0 + 6 * STEP
    ticked = step_view(playing, axis, "tb-play-tick")
    assert ticked.cursor == T0 + 7 * STEP and ticked.playing
    assert not step_view(ticked, axis, "tb-play-tick").playing  # stops at the end
    assert step_view(ticked, axis, "tb-live").following
    assert step_view(follow, axis, "tb-slider", slider=2).cursor == T0 + 2 * STEP


def test_the_time_view_from_the_browser_is_checked() -> None:
    assert TimeView.from_store({"start": "x", "end": 5, "cursor": [1], "playing": "yes"}) == TimeView()
    assert TimeView.from_store({"start": "2016-06-06T01:00Z", "end": "2016-06-06T00:00Z"}).start is None
    assert Axis.from_store({"start": "2016-06-06T00:00Z", "step_s": -1, "n": 3}).n == 0


def test_every_time_chart_gets_the_range_the_cursor_and_the_windows() -> None:
    axis = Axis(T0, STEP, 8)
    fig = head_power_figure({"scada": _summary([1.0] * 8, [0.1] * 8)})
    spans = pd.DataFrame([{"start": T0 + STEP, "end": T0 + 2 * STEP, "category": "fault", "label": "backhaul cut"},
                          {"start": T0 + 3 * STEP, "end": T0 + 4 * STEP, "category": "dr", "label": "DR event"}])
    view = TimeView(start=T0 + STEP, end=T0 + 5 * STEP, cursor=T0 + 2 * STEP)
    decorate(fig, view, axis, spans)
    assert list(fig.layout.xaxis.range) == [pd.Timestamp("2016-06-06 00:15"), pd.Timestamp("2016-06-06 01:15")]
    names = [s.name for s in fig.layout.shapes]
    assert names[-3:] == ["window: backhaul cut", "window: DR event", "cursor"]
    assert fig.layout.shapes[-1].x0 == pd.Timestamp("2016-06-06 00:30")


# -- 4. drill-down ----------------------------------------------------------------------------------------
def test_household_assets_in_kw_and_a_map_click_names_its_bus(synthetic: Path) -> None:
    assert asset_unit("0.005") == ("kW", 1000.0) and asset_unit(2.5) == ("MW", 1.0) and asset_unit(None)[0] == "MW"
    data = RunData(synthetic)
    topology = data.topology()
    assert clicked_bus({"points": [{"customdata": "3"}]}, topology) == "3"
    assert clicked_bus({"points": [{"customdata": ["3"]}]}, topology) == "3"
    assert clicked_bus({"points": [{"customdata": "../../etc"}]}, topology) is None
    frame = pages.fleet_frame(data, "scada")
    assert "P now [kW]" in frame.columns and len(frame) == 6
    battery = frame[frame["kind"] == "battery"].iloc[0]
    assert 0 < battery["SOC now [kWh]"] <= 13.0  # 0.013 MWh battery in kWh
    fig = pages.asset_view(data, "scada", str(frame[frame["kind"] == "pv"].iloc[0]["asset"]))
    assert fig.layout.yaxis.title.text == "kW"
    assert pd.Timestamp(fig.layout.xaxis.range[0]).year == 2016  # never plotly's default years for PV


def test_the_bus_drill_down_lists_its_assets(synthetic: Path) -> None:
    data = RunData(synthetic)
    bus = str(data.assets()["bus"].iloc[0])
    panel, figure, style = pages.bus_view(data, policy="scada", view=None, click={"points": [{"customdata": bus}]})
    text = str(panel)
    assert f"Bus {bus}" in text and str(data.assets().index[0]) in text and " kW" in text
    assert style == {"height": "420px"} and [t.name for t in figure.data][0] == "depin V"


def test_fleet_filters_and_pages(tmp_path: Path) -> None:
    twin = SyntheticTwin(tmp_path, radial_topology(10), n_intervals=4, n_assets=60)
    twin.write_start()
    twin.advance(4)
    data = RunData(tmp_path)
    _, page, label, csv_link = pages.fleet_page(data, "scada", search=None, kind=None, flagged=[], page=0,
                                                trigger=None)
    assert (page, label, csv_link) == (0, "rows 1–25 of 60", "/export/fleet.csv?policy=scada")
    _, page, label, _ = pages.fleet_page(data, "scada", search=None, kind=None, flagged=[], page=page,
                                         trigger="as-next")
    assert (page, label) == (1, "rows 26–50 of 60")
    _, page, label, _ = pages.fleet_page(data, "scada", search=None, kind="battery", flagged=[], page=2,
                                         trigger="as-kind")
    assert (page, label) == (0, "rows 1–15 of 15")  # a filter goes back to the first page
    table, _, label, _ = pages.fleet_page(data, "scada", search="A007", kind=None, flagged=[], page=0,
                                          trigger="as-filter")
    assert label == "rows 1–1 of 1" and "A007" in str(table)
    assert next_page(5, trigger="as-next", prev_id="as-prev", next_id="as-next", n_rows=60) == 2  # clipped


# -- 5. export and hygiene -------------------------------------------------------------------------------
def test_csv_exports_and_bad_arguments(synthetic: Path) -> None:
    client = create_app(synthetic).server.test_client()
    kpis = client.get("/export/kpis.csv")
    assert kpis.status_code == 200 and kpis.mimetype == "text/csv"
    assert "attachment" in kpis.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(kpis.get_data(as_text=True))))
    assert rows[0]["kpi"] == "energy_cost_eur" and rows[0]["label"] == "Energy cost [EUR]"
    series = list(csv.reader(io.StringIO(client.get("/export/series.csv?policy=scada&table=vm_pu")
                                         .get_data(as_text=True))))
    assert series[0][0] == "time" and series[1][0] == "2016-06-06T00:00:00Z" and len(series) == 1 + 12
    fleet = client.get("/export/fleet.csv?policy=depin").get_data(as_text=True)
    assert fleet.splitlines()[0].startswith("asset,kind,participant,bus,P now [kW]")
    statement = client.get("/export/statement.csv?ledger=scada&participant=P00")
    assert statement.status_code == 200 and len(statement.get_data(as_text=True).splitlines()) == 1 + 12
    events = client.get("/export/events.csv").get_data(as_text=True)
    assert "controller_offline" in events
    for bad, says in (("/export/fleet.csv?policy=../meta", "policy='../meta': expected one of depin, scada"),
                      ("/export/series.csv?policy=scada&table=secrets", "table='secrets'"),
                      ("/export/statement.csv?ledger=scada&participant=nobody", "participant='nobody'")):
        response = client.get(bad)
        assert response.status_code == 400 and says in response.get_data(as_text=True)
    assert client.get("/report").status_code == 404  # no report.html in this run


def test_csv_cells_that_would_run_as_formulas_are_quoted() -> None:
    from dashboards.export import csv_text

    text = csv_text(pd.DataFrame({"account": ["=HYPERLINK(\"x\")", "p-1", "+1", "@SUM(A1)"], "v": [-1.5, 2, 3, 4]}))
    assert text.splitlines()[1:] == ['"\'=HYPERLINK(""x"")",-1.5', "p-1,2.0", "'+1,3.0", "'@SUM(A1),4.0"]


def test_static_files_are_compressed_and_cached(synthetic: Path) -> None:
    app = create_app(synthetic)
    client = app.server.test_client()
    index = client.get("/").get_data(as_text=True)
    scripts = [s for s in index.split('"') if s.startswith("/_dash-component-suites/") and s.endswith(".js")]
    renderer = next(s for s in scripts if "dash_renderer" in s)
    response = client.get(renderer, headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    assert "max-age=31536000" in response.headers["Cache-Control"] and "immutable" in response.headers["Cache-Control"]
    body = gzip.decompress(response.data)
    assert len(response.data) < len(body) / 2
    plotly_js = client.get("/_dash-component-suites/plotly/package_data/plotly.min.js",
                           headers={"Accept-Encoding": "br, gzip"})
    assert plotly_js.status_code == 200 and plotly_js.headers["Content-Encoding"] == "br"
    assert len(plotly_js.data) < 1_500_000  # 4.8 MB uncompressed
    assert "max-age=86400" in plotly_js.headers["Cache-Control"]  # an unversioned URL: a day
    css = next(s for s in index.split('"') if s.startswith("/assets/gridtwin.css?m="))
    with client.get(css) as stylesheet:
        assert "max-age=31536000" in stylesheet.headers["Cache-Control"]
    callback = client.post("/_dash-update-component", json={"output": "x"}, headers={"Accept-Encoding": "gzip"})
    assert "max-age" not in callback.headers.get("Cache-Control", "")


def test_balances_in_natural_order_as_numbers() -> None:
    from dashboards.data import LedgerView

    view = LedgerView(entries=0, verified=True, problems=(), first_bad_entry=None, checkpoints=0,
                      last_checkpoint=None, participants=(), payments=pd.DataFrame(),
                      balances={"participant:p-10": "1.50", "participant:p-2": "-0.25", "operator": "-1.25"})
    frame = pages.balances_frame(view)
    assert frame["account"].tolist() == ["operator", "participant:p-2", "participant:p-10"]
    assert frame["balance [EUR]"].tolist() == [-1.25, -0.25, 1.5]
    assert sorted(["p-10", "p-2", "p-1"], key=natural_key) == ["p-1", "p-2", "p-10"]


def test_studies_are_labelled_by_their_swept_parameters() -> None:
    table = pd.DataFrame({"variant_id": ["a1f3", "9c2e"], "label": ["x", "y"], "policy": ["scada"] * 2,
                          "energy_cost_eur": [1.0, 2.0], "run_s": [3.0, 4.0],
                          "fleet.pv_penetration": [0.5, 1.0], "controllers.scada.kwargs.demand_charge_eur_per_mw": [0, 10]})
    assert variant_labels(table).tolist() == [
        "PV penetration (fleet)=0.5 · Demand charge [EUR/MW] (scada)=0",
        "PV penetration (fleet)=1 · Demand charge [EUR/MW] (scada)=10"]
    assert column_title("energy_cost_eur") == "Energy cost [EUR]" and column_title("run_s") == "Run time [s]"


def test_no_upload_button_in_any_served_graph_config(synthetic: Path) -> None:
    app = create_app(synthetic)
    client = app.server.test_client()
    served = client.get("/_dash-layout").get_data(as_text=True)
    for path, _ in pages.PAGES:
        body = {"output": "..page.children...nav.children...who.children...timebar.style...run-name.children..",
                "outputs": [{"id": i, "property": p} for i, p in (("page", "children"), ("nav", "children"),
                                                                  ("who", "children"), ("timebar", "style"),
                                                                  ("run-name", "children"))],
                "inputs": [{"id": "url", "property": "pathname", "value": path},
                           {"id": "url", "property": "search", "value": ""},
                           {"id": "run-meta", "property": "data", "value": None}],
                "changedPropIds": ["url.pathname"]}
        served += client.post("/_dash-update-component", json=body).get_data(as_text=True)
    configs = [json.loads(m) for m in _configs(served)]
    assert len(configs) >= 10
    for config in configs:
        assert config["showSendToCloud"] is False
        assert {"sendChartToCloud", "sendDataToCloud", "editInChartStudio"} <= set(config["modeBarButtonsToRemove"])
    assert '"showSendToCloud": true' not in served.replace(" ", "").replace('":', '": ')


def _configs(text: str) -> list[str]:
    out, key = [], '"config":'
    start = text.find(key)
    while start >= 0:
        i = start + len(key)
        depth, j = 0, i
        while True:
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        out.append(text[i:j + 1])
        start = text.find(key, j)
    return out


def test_the_dashboard_waits_for_a_run_in_an_empty_folder(tmp_path: Path) -> None:
    run = tmp_path / "live"
    app = create_app(run)  # the folder does not exist yet
    client = app.server.test_client()
    assert client.get("/").status_code == 200
    data = RunData(run)
    assert "waiting for the run in" in str(pages.page_layout("/", data, operator=None, auth_enabled=False, query={}))
    twin = SyntheticTwin(run, radial_topology(5), n_intervals=4, n_assets=2)
    twin.write_start()
    twin.advance(2)
    assert pages.page_layout("/", data, operator=None, auth_enabled=False, query={}).children[0] is None
    assert data.axis().n == 2


def test_fuzzed_time_views_never_break_a_page(synthetic: Path) -> None:
    data = RunData(synthetic)
    for view in (None, {"cursor": "1900-01-01"}, {"cursor": "2300-01-01"}, {"start": 1e300, "end": -1},
                 {"cursor": 10**20}, {"cursor": "2016-06-06T05:00Z", "start": "2016-06-06T00:00Z",
                                      "end": "2016-06-06T01:00Z"}):
        figs = pages.comparison_figures(data, view)
        assert isinstance(figs["kpis"], html.Div)
        assert pages.map_view(data, policy="scada", view=view, click=None)[1].startswith("scada at 2016-06-06")


def test_the_maps_zoom_travels_to_the_redrawn_map(synthetic: Path) -> None:
    data = RunData(synthetic)
    zoomed, _ = pages.map_view(data, policy="scada", view=None, click=None,
                               zoom={"xaxis.range[0]": 1.5, "xaxis.range[1]": 4.0, "yaxis.range": [-3, -1]})
    assert list(zoomed.layout.xaxis.range) == [1.5, 4.0] and list(zoomed.layout.yaxis.range) == [-3.0, -1.0]
    reset, _ = pages.map_view(data, policy="scada", view=None, click=None, zoom={"xaxis.autorange": True})
    assert reset.layout.xaxis.range is None


def test_the_scrubber_marks_hours_on_a_day_and_days_on_a_week() -> None:
    t0, step = pd.Timestamp("2016-06-10T00:00:00Z"), pd.Timedelta("15min")
    day = scrubber_marks(Axis(t0, step, 96))
    assert day == {0: "10 Jun", 12: "03:00", 24: "06:00", 36: "09:00", 48: "12:00", 60: "15:00", 72: "18:00",
                   84: "21:00"}  # every 3 h = 12 intervals of 15 min
    assert scrubber_marks(Axis(t0 + pd.Timedelta("1h"), step, 12)) == {8: "03:00"}  # 01:00 + 8 × 15 min
    week = scrubber_marks(Axis(t0, step, 7 * 96))
    assert week == {i * 96: f"{10 + i} Jun" for i in range(7)}
