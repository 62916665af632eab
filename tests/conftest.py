"""Shared fixtures: small scenarios built in code, and run inputs cached per test session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from twin.inputs import RunInputs, build_inputs
from twin.scenario import Scenario, parse_scenario

# Tests never touch a developer's own operator key: one throw-away key store per test session, set before
# anything opens a ledger (subprocesses inherit it).
_KEY_STORE = tempfile.mkdtemp(prefix="gridtwin-test-keys-")
os.environ["GRIDTWIN_KEY_DIR"] = _KEY_STORE
os.environ.pop("GRIDTWIN_TRUSTED_KEY", None)
atexit.register(shutil.rmtree, _KEY_STORE, ignore_errors=True)

ONE_DAY_RURAL: dict[str, Any] = {
    "name": "rural-day",
    "seed": 7,
    "feeder": "simbench:1-LV-rural1--0-sw",
    "start": "2016-06-06T00:00:00Z",
    "end": "2016-06-07T00:00:00Z",
    "fleet": {"pv_penetration": 1.0, "battery_share": 0.4, "ev_share": 0.4, "flex_share": 0.3},
    "controllers": [
        {"name": "none", "target": "controllers.baseline:NoControl"},
        {"name": "shaver", "target": "controllers.baseline:PeakShaver"},
    ],
}


def make_scenario(base: dict[str, Any] = ONE_DAY_RURAL, base_dir: Path = Path("."), **overrides: Any) -> Scenario:
    return parse_scenario({**base, **overrides}, base_dir=base_dir, source="test scenario")


@pytest.fixture(scope="session")
def rural_day() -> tuple[Scenario, RunInputs]:
    scenario = make_scenario()
    return scenario, build_inputs(scenario)
