"""Per-participant agent plug-ins on a Dask cluster: the same run as in-process, and an agent's error names
its worker."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import make_scenario
from twin.inputs import build_inputs
from twin.records.recorder import TIMING_COLUMNS
from twin.run import run_scenario

FLEET = {"pv_penetration": 1.0, "battery_share": 0.5, "ev_share": 0.3, "flex_share": 0.3}


def test_agents_on_a_dask_cluster_give_the_same_run_as_in_process() -> None:
    """Evening peak on CIGRE LV with 10 % mesh loss (seeded): every recorded table, the agents' diagnostics
    (how many peers each heard) included, is identical whether the 15 agents run here or on two Dask workers;
    only timings differ."""
    s = make_scenario(feeder="cigre-lv", fleet=FLEET, start="2016-06-06T17:00:00Z", end="2016-06-06T18:30:00Z",
                      horizon="3h", comms={"rounds": 4},
                      faults=[{"kind": "message_loss", "loss": 0.1, "start": "2016-06-06T17:00:00Z",
                               "end": "2016-06-06T18:30:00Z"}],
                      controllers=[{"name": "mesh", "mode": "agents", "target": "engine_helpers:GossipAgent"}])
    inputs = build_inputs(s)
    here = run_scenario(s, runs_root=None, inputs=inputs).records["mesh"]
    there = run_scenario(s, runs_root=None, inputs=inputs, agent_workers=2).records["mesh"]
    assert (here.summary["messages"] > 0).all() and (here.summary["dropped_messages"] > 0).any()
    for table in ("summary", "asset_p_mw", "asset_setpoint_mw", "asset_soc_mwh", "vm_pu"):
        pd.testing.assert_frame_equal(getattr(here, table).drop(columns=list(TIMING_COLUMNS), errors="ignore"),
                                      getattr(there, table).drop(columns=list(TIMING_COLUMNS), errors="ignore"))


def test_an_agent_failing_on_a_worker_is_reported_with_its_error() -> None:
    """The agent's own error reaches the user with its worker's name; a controller in agents mode is refused
    before any cluster starts."""
    s = make_scenario(feeder="cigre-lv", fleet=FLEET, end="2016-06-06T01:00:00Z", comms={"rounds": 3},
                      controllers=[{"name": "bad", "mode": "agents", "target": "engine_helpers:FailingAgent"}])
    with pytest.raises(Exception, match=r"agent worker gridtwin-agents-\d: .*p-\d+: boom in round 1"):
        run_scenario(s, runs_root=None, agent_workers=2)
    wrong = make_scenario(feeder="cigre-lv", fleet=FLEET, end="2016-06-06T01:00:00Z", controllers=[
        {"name": "ctl", "mode": "agents", "target": "controllers.baseline:NoControl"}])
    with pytest.raises(ValueError, match=r"NoControl does not implement .*\(an Agent\).*use mode = 'ideal'"):
        run_scenario(wrong, runs_root=None, agent_workers=2)
