"""Edge agents over worker processes: the same run as in-process, and an agent's error names its worker."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import make_scenario
from twin.inputs import build_inputs
from twin.records.recorder import TIMING_COLUMNS
from twin.run import run_scenario

FLEET = {"pv_penetration": 1.0, "battery_share": 0.5, "ev_share": 0.3, "flex_share": 0.3}


def test_agents_in_worker_processes_give_the_same_run_as_in_process() -> None:
    """Evening peak on CIGRE LV with 10 % mesh loss (seeded): every recorded table is identical whether the
    15 agents run here or over 2 processes, and only timings differ."""
    s = make_scenario(feeder="cigre-lv", fleet=FLEET, start="2016-06-06T17:00:00Z", end="2016-06-06T18:30:00Z",
                      horizon="3h", comms={"rounds": 4},
                      faults=[{"kind": "message_loss", "loss": 0.1, "start": "2016-06-06T17:00:00Z",
                               "end": "2016-06-06T18:30:00Z"}],
                      controllers=[{"name": "depin", "mode": "agents", "target": "controllers.depin:AdmmAgent"}])
    inputs = build_inputs(s)
    here = run_scenario(s, runs_root=None, inputs=inputs).records["depin"]
    there = run_scenario(s, runs_root=None, inputs=inputs, agent_workers=2).records["depin"]
    assert (here.summary["messages"] > 0).all() and (here.summary["dropped_messages"] > 0).any()
    for table in ("summary", "asset_p_mw", "asset_setpoint_mw", "asset_soc_mwh", "vm_pu"):
        pd.testing.assert_frame_equal(getattr(here, table).drop(columns=list(TIMING_COLUMNS), errors="ignore"),
                                      getattr(there, table).drop(columns=list(TIMING_COLUMNS), errors="ignore"))


def test_an_agent_failing_in_a_worker_is_reported_with_its_error() -> None:
    s = make_scenario(feeder="cigre-lv", fleet=FLEET, end="2016-06-06T01:00:00Z", comms={"rounds": 3},
                      controllers=[{"name": "bad", "mode": "agents", "target": "engine_helpers:FailingAgent"}])
    with pytest.raises(RuntimeError, match=r"agent worker gridtwin-agents-\d: ValueError: p-\d+: boom in round 1"):
        run_scenario(s, runs_root=None, agent_workers=2)
    wrong = make_scenario(feeder="cigre-lv", fleet=FLEET, end="2016-06-06T01:00:00Z", controllers=[
        {"name": "ctl", "mode": "agents", "target": "controllers.baseline:NoControl"}])
    with pytest.raises(RuntimeError,
                       match=r"(?s)agent worker gridtwin-agents-\d: ValueError: .*mode 'agents' needs an Agent"):
        run_scenario(wrong, runs_root=None, agent_workers=2)
