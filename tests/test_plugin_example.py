"""The README's plug-in example, run exactly as written: a controller from outside the repository, named
"my_controllers:PriceFollower" in a scenario, compared as one more policy by `gridtwin compare`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from twin.cli import app
from twin.scenario import demo_scenario_path

README = Path(__file__).resolve().parents[1] / "README.md"


def block(marker: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {marker}:start -->\n```\w+\n(.*?)```\n<!-- {marker}:end -->", text, re.S)
    assert match, f"README has no {marker} block"
    return match.group(1)


@pytest.fixture
def outside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "my_controllers.py").write_text(block("plugin-example"), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("my_controllers", None)


def test_readme_plugin_runs_as_one_more_policy(outside: Path) -> None:
    demo = demo_scenario_path().read_text(encoding="utf-8")
    # The example exactly as the README gives it; only the period is cut to three hours to keep the test short
    # (without the demo's outage and DR events, which fall later in its week).
    demo = demo[:demo.index("[[faults]]")] + demo[demo.index("[[controllers]]"):]
    demo = demo.replace('end = "2016-06-13T00:00:00Z"', 'end = "2016-06-06T03:00:00Z"')
    scenario = outside / "mine.toml"
    scenario.write_text(demo + "\n" + block("plugin-scenario"), encoding="utf-8")
    result = CliRunner().invoke(app, ["compare", str(scenario), "--runs-root", str(outside / "runs")])
    assert result.exit_code == 0, result.output
    run = next((outside / "runs").iterdir())
    from twin.records.runstore import RunStore

    assert RunStore(run).policies()[-1] == "price-follower"
    assert "price-follower" in RunStore(run).kpis().columns
    assert (run / "report.html").exists()
    p = RunStore(run).read_table("price-follower", "asset_p_mw")
    bats = [c for c in p.columns if c.startswith("bat-")]
    # Night-time price is 180 EUR/MWh (cheap): the follower charges every battery it can.
    assert (p[bats].iloc[0] > 0).all()


def test_readme_plugin_passes_check_controller(outside: Path, rural_day: tuple) -> None:
    import importlib

    from controllers.api import ControllerSpec
    from controllers.testing import check_controller
    from twin.engine import PolicyTwin

    scenario, inputs = rural_day
    module = importlib.import_module("my_controllers")
    twin = PolicyTwin.create(scenario.controllers[0], inputs, scenario)
    observations = [twin.observe_for_test(t) for t in scenario.times[:4]] + [twin.observe_for_test(scenario.times[70])]
    spec = ControllerSpec(assets=inputs.assets, step=scenario.step, horizon=scenario.horizon_steps)
    dispatches = check_controller(lambda: module.PriceFollower(), spec, observations)
    assert dispatches[-1].p_mw.min() < 0  # 17:30 is peak price (400): discharge
