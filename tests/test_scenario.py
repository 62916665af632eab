"""Scenario files: the embedded demo validates; every bad key is named with its value; CLI exits 2."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from twin.cli import app
from twin.scenario import ScenarioError, demo_scenario_path, load_scenario, parse_scenario

BASE = {
    "feeder": "cigre-lv",
    "start": "2016-06-06T00:00:00Z",
    "end": "2016-06-06T02:00:00Z",
    "controllers": [{"name": "none", "target": "controllers.baseline:NoControl"}],
}


def test_demo_scenario_is_valid_and_one_week() -> None:
    s = load_scenario(demo_scenario_path())
    assert s.step == pd.Timedelta("15min")
    assert len(s.times) == 7 * 96
    assert s.times[0] == pd.Timestamp("2016-06-06", tz="UTC")
    assert s.horizon_steps == 48  # a 12-hour look-ahead
    assert s.feeder.startswith("simbench:")


@pytest.mark.parametrize(
    ("patch", "key", "value"),
    [
        ({"step": "fifteen"}, "step", "'fifteen'"),
        ({"step": "-15min"}, "step", "'-15min'"),
        ({"start": "yesterday"}, "start", "'yesterday'"),
        ({"end": "2016-06-05T00:00:00Z"}, "end", "2016-06-05"),
        ({"fleet": {"battery_share": 1.5}}, "fleet.battery_share", "1.5"),
        ({"fleet": {"bateries": 3}}, "fleet.bateries", "3"),
        ({"power_flow": {"engine": "magic"}}, "power_flow.engine", "'magic'"),
        ({"controllers": [{"name": "x", "target": "no_colon"}]}, "target", "'no_colon'"),
        ({"controllers": []}, "controllers", "at least one"),
        ({"tariff": {"peak_hours": [20, 17]}}, "tariff.peak_hours", "[20, 17]"),
        ({"decision_period": "20min"}, "decision_period", "0 days 00:20:00 is not a whole number of step"),
        ({"decision_period": "1h"}, "decision_period", "longer than setpoint_ttl"),
        ({"decision_period": "48h", "setpoint_ttl": "48h"}, "decision_period", "longer than horizon"),
    ],
)
def test_bad_scenario_names_key_and_value(patch: dict, key: str, value: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario({**BASE, **patch}, source="bad.toml")
    message = str(err.value)
    assert "bad.toml" in message
    assert key in message
    assert value in message


def test_relative_paths_resolve_from_the_scenario_folder(tmp_path: Path) -> None:
    s = parse_scenario(BASE, base_dir=tmp_path)
    assert s.resolve("fleet.csv") == tmp_path / "fleet.csv"


def test_cli_bad_scenario_exits_2_with_named_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('feeder = "cigre-lv"\nstart = "2016-06-06"\nend = "2016-06-07"\nstep = "soon"\n'
                   '[[controllers]]\nname = "n"\ntarget = "controllers.baseline:NoControl"\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["run", str(bad)])
    assert result.exit_code == 2
    assert "step" in result.output and "'soon'" in result.output


def test_cli_not_toml_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("feeder = [unclosed\n", encoding="utf-8")
    r1 = CliRunner().invoke(app, ["validate", str(broken)])
    r2 = CliRunner().invoke(app, ["validate", str(tmp_path / "nope.toml")])
    assert r1.exit_code == 2 and "not valid TOML" in r1.output
    assert r2.exit_code == 2 and "cannot read" in r2.output


@pytest.mark.parametrize("path", sorted(p for p in (Path(__file__).parents[1] / "scenarios").glob("*.toml")
                                        if not p.name.startswith("study-")), ids=lambda p: p.name)
def test_sample_scenarios_validate(path: Path) -> None:
    s = load_scenario(path)
    assert len(s.times) > 0 and s.controllers
