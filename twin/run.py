"""Run a scenario end to end: inputs → lock-step engine → records → KPIs → run store.

Used by the CLI (``gridtwin run``, ``gridtwin demo``) and by tests; it reports progress through a callback
so the CLI can draw a progress bar without this module knowing about terminals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from controllers.api import NetworkLimits
from twin.engine import iterate_policies
from twin.grid.topology import write_feeder_topology
from twin.inputs import RunInputs, build_inputs
from twin.records.kpis import Kpis, compute_kpis
from twin.records.recorder import PolicyRecords, Recorder
from twin.records.runstore import RunStore, new_run_dir
from twin.scenario import Scenario

__all__ = ["RunResult", "run_scenario"]


@dataclass(frozen=True)
class RunResult:
    path: Path | None
    kpis: dict[str, Kpis]
    records: dict[str, PolicyRecords]


def run_scenario(
    scenario: Scenario,
    *,
    runs_root: Path | None = Path("runs"),
    out: Path | None = None,
    inputs: RunInputs | None = None,
    flush_every: int = 96,
    pace: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    agent_workers: int = 1,
) -> RunResult:
    """Run every policy of ``scenario``; write a run folder unless both ``out`` and ``runs_root`` are None.

    Records are appended to the run folder every ``flush_every`` intervals, so a dashboard can follow it.
    With ``pace`` (simulated seconds per wall-clock second) each interval waits for its wall-clock slot and
    is flushed at once: a paced replay behaves like a live feed for the dashboard and operator commands.
    ``agent_workers`` > 1 runs the edge agents of agent policies over that many processes (same results).
    """
    inputs = inputs or build_inputs(scenario)
    path = out or (new_run_dir(runs_root, scenario.name) if runs_root is not None else None)
    store = RunStore(path) if path is not None else None
    total = len(scenario.times)
    if store is not None:
        store.write_meta(
            {
                "scenario": scenario.to_toml_dict(),
                "seed": scenario.seed,
                "policies": [c.name for c in scenario.controllers],
                "n_intervals": total,
                "feeder": scenario.feeder,
                "assets": inputs.assets.reset_index().astype(str).to_dict(orient="records"),
            }
        )
        store.write_status(done=0, total=total, state="running")
        write_feeder_topology(inputs.net, path / "feeder.json")
    recorder = Recorder(step=scenario.step)
    flushed = 0
    if pace is not None:
        flush_every = 1
        interval_s = scenario.step.total_seconds() / pace
        next_slot = time.monotonic()

    def flush(state: str) -> None:
        nonlocal flushed
        if store is None:
            return
        for rec in recorder.freeze(since=flushed).values():
            store.append(rec)
        flushed = len(recorder)
        store.write_status(done=flushed, total=total, state=state)

    for i, records in enumerate(iterate_policies(scenario, inputs, run_dir=path, agent_workers=agent_workers), start=1):
        if pace is not None:
            next_slot += interval_s
            time.sleep(max(0.0, next_slot - time.monotonic()))
        recorder.add(records)
        if i - flushed >= flush_every:
            flush("running")
        if on_progress is not None:
            on_progress(i, total)
    if store is not None and pace is not None:
        flush("running")
        store.compact()
    flush("finished")
    records = recorder.freeze()
    limits = NetworkLimits(**scenario.limits.model_dump())
    kpis = {name: compute_kpis(rec, limits=limits) for name, rec in records.items()}
    if store is not None:
        store.write_kpis(kpis)
    return RunResult(path=path, kpis=kpis, records=records)
