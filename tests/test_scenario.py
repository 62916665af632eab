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
    assert s.horizon_steps == 32  # an 8-hour look-ahead
    assert s.decision_period == pd.Timedelta("1h")
    assert s.feeder.startswith("simbench:")
    # The whole story: settled under contracts, one control-centre outage, the network-aware DePIN policy.
    assert s.settlement_config() is not None and len(s.settlement_config().contracts) == 2
    assert [f.kind for f in s.faults] == ["control_centre_outage"]
    assert [c.target for c in s.controllers if c.mode == "agents"] == ["controllers.depin:NetworkAdmm"]


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


@pytest.mark.parametrize(
    ("patch", "line"),
    [
        ({"step": 15}, 'step: 15 is not a duration; write "15min"'),
        ({"step": "15"}, "step: '15' has no unit; write \"15min\""),
        ({"horizon": 24}, 'horizon: 24 is not a duration; write "24h"'),
        ({"comms": {"mesh": {"latency": 100}}}, 'comms.mesh.latency: 100 is not a duration; write "100ms"'),
        ({"step": "7min"}, "step: '7min' must be between 1min and 1d and divide 15min"),
        ({"horizon": "36500d"}, "horizon: '36500d' is longer than the 7d maximum"),
        ({"setpoint_ttl": "30d"}, "setpoint_ttl: '30d' is longer than the 7d maximum"),
        ({"fleet": {"pv_penetration": float("inf")}}, "fleet.pv_penetration: Input should be a finite number (got inf)"),
        ({"limits": {"v_min_pu": float("nan")}}, "limits.v_min_pu: Input should be a finite number (got nan)"),
        ({"limits": {"v_min_pu": 1.06}}, "limits: limits.v_min_pu=1.06 must be below limits.v_max_pu=1.05"),
        ({"tariff": {"peak_eur_per_mwh": "400"}}, "tariff.peak_eur_per_mwh: '400' is not a number"),
        ({"seed": True}, "seed: True is not an integer"),
        ({"start": 20160606}, "start: 20160606 is not a timestamp"),
        ({"start": "now"}, "start: 'now' is not a timestamp"),
        ({"start": "2016-06-06T00:05:00Z"}, "start='2016-06-06T00:05:00+00:00' is not on the 15min grid"),
        ({"end": "2046-06-06T00:00:00Z", "step": "1min"}, "at most 1,000,000 are allowed"),
        ({"controllers": [{"name": "x", "target": "a:B", "kwargs": {"rho": [1.0, float("nan")]}}]},
         "controllers[0].kwargs: rho[1] = nan is not a finite number"),
        ({"faults": [{"kind": "backhaul_cut", "start": "2016-06-05T23:00:00Z", "end": "2016-06-06T01:00:00Z"}]},
         "faults[0].start='2016-06-05T23:00:00+00:00' is before the run's start"),
        ({"faults": [{"kind": "false_telemetry", "participants": ["p-1"], "scale": -1.0, "start": "2016-06-06T00:00:00Z",
                      "end": "2016-06-06T01:00:00Z"}]}, "faults[0].scale: Input should be greater than or equal to 0"),
        ({"settlement": {"events": [{"start": "2016-06-06T03:00:00Z", "end": "2016-06-06T04:00:00Z"}]}},
         "settlement.events[0].end='2016-06-06T04:00:00+00:00' is after the run's end"),
        ({"base_dir": "/etc"}, "base_dir: not a scenario key"),
        ({"faults": [{"kind": "message_loss", "loss": 0.1, "policies": ["depin-faults"], "start": "2016-06-06T00:00:00Z",
                      "end": "2016-06-06T01:00:00Z"}]}, "faults[0].policies: 'depin-faults' is not a policy"),
    ],
)
def test_static_checks_name_the_key_and_the_value(patch: dict, line: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario({**BASE, **patch}, source="bad.toml")
    assert line in str(err.value), str(err.value)


def test_a_scenario_file_that_is_not_utf8_names_the_byte_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'feeder = "cigre-lv"\nname = "Gr\xfc\xdfe"\n')
    with pytest.raises(ScenarioError, match=r"latin1.toml: not UTF-8 text \(byte 0xfc on line 2\)"):
        load_scenario(path)
