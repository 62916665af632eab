"""`gridtwin validate` makes every check `run` makes before it steps (twin.preflight): each bad scenario of
issue 15 exits 2 with one message naming the key and the value, and a scenario that validates starts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import tomllib
from typer.testing import CliRunner

from grids import feeder_profiles, load_feeder
from twin.cli import app
from twin.preflight import prepare_run
from twin.run import run_scenario
from twin.scenario import ScenarioError, parse_scenario
from twin.telemetry import profiles_to_telemetry, write_telemetry

runner = CliRunner()

BASE = """\
name = "probe"
feeder = "cigre-lv"
start = "2016-06-06T00:00:00Z"
end = "2016-06-06T01:00:00Z"

[[controllers]]
name = "none"
target = "controllers.baseline:NoControl"
"""


def validate(tmp_path: Path, text: str, name: str = "probe.toml") -> Any:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return runner.invoke(app, ["validate", str(path)])


def with_(text: str, **lines: str) -> str:
    """BASE with top-level keys replaced (``key="toml value"``) before the first table."""
    head, _, tail = text.partition("\n[[controllers]]")
    kept = [line for line in head.splitlines() if line.split("=")[0].strip() not in lines]
    return "\n".join(kept + [f"{k} = {v}" for k, v in lines.items()]) + "\n\n[[controllers]]" + tail


def test_the_base_probe_validates(tmp_path: Path) -> None:
    result = validate(tmp_path, BASE)
    assert result.exit_code == 0, result.output
    assert "ok — cigre-lv, 4 intervals of 15min" in result.output


SETTLEMENT_P999 = """
[settlement]
[[settlement.contracts]]
participant = "p-999"
  [[settlement.contracts.rules]]
  kind = "capacity_payment"
  committed_kw = "1"
  price_per_kw_month = "1"
"""

FAULT = """
[[faults]]
kind = "{kind}"
start = "{start}"
end = "{end}"
{extra}
"""


@pytest.mark.parametrize(
    ("text", "named"),
    [
        # Issue 15: "validate says ok to files that run then refuses".
        (with_(BASE, feeder='"nope"'), ["feeder='nope'", "unknown feeder"]),
        (BASE.replace("baseline:NoControl", "baseline:Nope"), ["controllers[0].target", "'controllers.baseline:Nope'",
                                                               "no attribute 'Nope'"]),
        (BASE.replace("controllers.baseline:NoControl", "no_such_module:X"), ["controllers[0].target",
                                                                              "cannot import module 'no_such_module'"]),
        (BASE.replace("controllers.baseline:NoControl", "os:system"), ["controllers[0].target", "'os:system'",
                                                                       "not a class"]),
        (BASE + 'kwargs = { shave = 0.5 }\n', ["controllers[0].kwargs", "'shave': 0.5", "unexpected keyword"]),
        (BASE.replace("controllers.baseline:NoControl", "controllers.baseline:PeakShaver")
         + 'kwargs = { shave_fraction = 0.5 }\nmode = "agents"\n', ["controllers[0].target", "does not implement", "(an Agent)"]),
        (BASE.replace("controllers.baseline:NoControl", "controllers.depin:NetworkAdmm") + 'mode = "central"\n',
         ["controllers[0].target", "does not implement", "use mode = 'agents'"]),
        (BASE + FAULT.format(kind="participant_dropout", start="2016-06-06T00:00:00Z", end="2016-06-06T00:30:00Z",
                             extra='participants = ["p-99"]'), ["faults[0].participants", "'p-99'"]),
        (BASE + SETTLEMENT_P999, ["settlement.contracts[0].participant", "'p-999'"]),
        (BASE + "[network]\nmonitored_buses = [0, 1, 4242]\n", ["network.monitored_buses", "4242"]),
        (BASE + '[telemetry]\nsource = "file"\npath = "missing.parquet"\n', ["telemetry.path='missing.parquet'",
                                                                             "no such file"]),
        (BASE + '[fleet]\ncsv = "missing.csv"\n', ["fleet.csv='missing.csv'", "no such file"]),
        (with_(BASE, start='"2016-06-06T00:05:00Z"'), ["start='2016-06-06T00:05:00+00:00'", "not on the 15min grid"]),
        # "Nonsense runs with exit 0".
        (BASE + "[fleet]\npv_penetration = inf\n", ["fleet.pv_penetration", "finite", "inf"]),
        (BASE + "[tariff]\npeak_eur_per_mwh = nan\n", ["tariff.peak_eur_per_mwh", "finite", "nan"]),
        (BASE + "[tariff]\nfeed_in_eur_per_mwh = -inf\n", ["tariff.feed_in_eur_per_mwh", "finite", "-inf"]),
        (BASE + "[limits]\nv_min_pu = 1.10\n", ["limits.v_min_pu=1.1", "limits.v_max_pu=1.05"]),
        (BASE + "[limits]\nv_min_pu = nan\n", ["limits.v_min_pu", "finite", "nan"]),
        (BASE + FAULT.format(kind="backhaul_cut", start="2016-06-07T00:00:00Z", end="2016-06-07T01:00:00Z", extra=""),
         ["faults[0].end='2016-06-07T01:00:00+00:00'", "after the run's end"]),
        (BASE + FAULT.format(kind="false_telemetry", start="2016-06-06T00:00:00Z", end="2016-06-06T00:30:00Z",
                             extra='participants = ["p-1"]\nscale = nan'), ["faults[0].scale", "nan"]),
        (BASE + '[settlement]\n[[settlement.events]]\nstart = 2016-06-09T17:00:00Z\nend = 2016-06-09T18:00:00Z\n',
         ["settlement.events[0].end='2016-06-09T18:00:00+00:00'", "after the run's end"]),
        (BASE + '[settlement]\n[[settlement.events]]\nstart = 2016-06-06T00:05:00Z\nend = 2016-06-06T00:30:00Z\n',
         ["settlement.events[0].start='2016-06-06T00:05:00+00:00'", "not an interval boundary"]),
        (with_(BASE, horizon='"36500d"'), ["horizon", "'36500d'", "longer than the 7d maximum"]),
        (with_(BASE, step="15"), ["step", 'write "15min"']),
        (with_(BASE, step='"15"'), ["step", "'15' has no unit"]),
        (with_(BASE, start='"2015-06-06T00:00:00Z"', end='"2015-06-06T01:00:00Z"'),
         ["start='2015-06-06T00:00:00+00:00'", "outside the profile data"]),
        (BASE + '[comms]\nround_period = "soon"\n', ["comms.round_period", "'soon'"]),
        (BASE + 'kwargs = { x = nan }\n', ["controllers[0].kwargs", "x = nan"]),
    ],
)
def test_validate_refuses_what_run_refuses_naming_key_and_value(tmp_path: Path, text: str, named: list[str]) -> None:
    result = validate(tmp_path, text)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = " ".join(result.output.split())  # the terminal may wrap long lines
    for part in named:
        assert part in message, message


def test_a_huge_horizon_is_refused_before_any_work(tmp_path: Path) -> None:
    started = time.perf_counter()
    result = validate(tmp_path, with_(BASE, horizon='"36500d"', end='"2016-12-31T00:00:00Z"'))
    assert result.exit_code == 2 and "horizon" in result.output
    assert time.perf_counter() - started < 5.0  # was a hang


def test_run_refuses_the_same_file_with_the_same_message(tmp_path: Path) -> None:
    """validate == run by construction: both go through prepare_run before the first interval."""
    path = tmp_path / "probe.toml"
    path.write_text(BASE + FAULT.format(kind="participant_dropout", start="2016-06-06T00:00:00Z",
                                        end="2016-06-06T00:30:00Z", extra='participants = ["p-99"]'), encoding="utf-8")
    checked = runner.invoke(app, ["validate", str(path)])
    ran = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "run"), "--agent-workers", "1"])
    assert checked.exit_code == ran.exit_code == 2
    line = next(line for line in checked.output.splitlines() if "faults[0]" in line)
    assert line.strip() in " ".join(ran.output.split()) or "'p-99'" in ran.output
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_prepare_run_is_what_run_scenario_checks(tmp_path: Path) -> None:
    data = tomllib.loads(BASE + SETTLEMENT_P999)
    scenario = parse_scenario(data, base_dir=tmp_path)
    with pytest.raises(ScenarioError, match=r"settlement.contracts\[0\].participant: 'p-999'"):
        prepare_run(scenario)
    with pytest.raises(ScenarioError, match=r"settlement.contracts\[0\].participant: 'p-999'"):
        run_scenario(scenario, out=tmp_path / "run")


def _telemetry_file(tmp_path: Path, *, extra_rows: pd.DataFrame | None = None) -> Path:
    net = load_feeder("cigre-lv")
    profiles = feeder_profiles(net, start="2016-06-06T00:00:00Z", end="2016-06-07T00:00:00Z")
    frame = profiles_to_telemetry(profiles, net)
    if extra_rows is not None:
        frame = pd.concat([frame, extra_rows], ignore_index=True)
    path = tmp_path / "telemetry.parquet"
    write_telemetry(frame, path)
    return path


def test_telemetry_file_with_an_unknown_device_is_refused_unless_ignored(tmp_path: Path) -> None:
    stranger = pd.DataFrame({"ts": [pd.Timestamp("2016-06-06T00:00Z")] * 2, "device_id": ["meter-x", "meter-x"],
                             "quantity": ["p_kw", "q_kvar"], "value": [1.0, 0.5], "quality": ["good", "good"],
                             "seq": [1, 1]})
    _telemetry_file(tmp_path, extra_rows=stranger)
    text = BASE + '[telemetry]\nsource = "file"\npath = "telemetry.parquet"\n'
    refused = validate(tmp_path, text)
    assert refused.exit_code == 2
    message = " ".join(refused.output.split())
    assert "telemetry.parquet" in message and "field 'device_id'" in message and "'meter-x'" in message
    assert "row " in message
    ignored = validate(tmp_path, text.replace('path = "telemetry.parquet"',
                                              'path = "telemetry.parquet"\nunknown_devices = "ignore"'))
    assert ignored.exit_code == 0, ignored.output
    assert "2 rows of 1 unknown devices ignored" in " ".join(ignored.output.split())


def test_settlement_week_and_demo_still_validate(tmp_path: Path) -> None:
    root = Path(__file__).parents[1]
    for path in (root / "scenarios" / "settlement-week.toml", root / "twin" / "scenarios" / "demo.toml"):
        result = runner.invoke(app, ["validate", str(path)])
        assert result.exit_code == 0, result.output
