"""Run a scenario end to end: inputs → lock-step engine → records → KPIs → run store.

Used by the CLI (``gridtwin run``, ``gridtwin demo``) and by tests; it reports progress through a callback
so the CLI can draw a progress bar without this module knowing about terminals.

Before the first interval it makes every check ``gridtwin validate`` makes (``twin.preflight``). A plug-in that
raises (or returns something that is not a Dispatch / Proposal) ends the run with ``RunFailed`` naming the
policy, the method, the interval and the exception; its traceback goes to ``RUN/log.txt``.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from controllers.api import NetworkLimits
from twin.engine import iterate_policies
from twin.grid.topology import write_feeder_topology
from twin.engine.plugin_calls import PluginError, guarded_entry
from twin.inputs import RunInputs
from twin.preflight import check_against_feeder, check_plugins, prepare_run
from twin.records.kpis import Kpis, compute_kpis
from twin.records.recorder import PolicyRecords, Recorder
from twin.records.runstore import RunStore, new_run_dir
from twin.scenario import Scenario
from twin.settlement.keystore import run_public_key

__all__ = ["LOG_FILE", "RunFailed", "RunResult", "run_scenario"]

#: Where a failed run's traceback goes, inside its run folder.
LOG_FILE = "log.txt"


class RunFailed(Exception):
    """A run that stopped while stepping: ``message`` says who failed where (one line), ``log_path`` holds the
    traceback (None without a run folder), ``exit_code`` is 1 (a plug-in or internal failure)."""

    def __init__(self, message: str, *, path: Path | None, log_path: Path | None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message, self.path, self.log_path, self.exit_code = message, path, log_path, exit_code


def _write_log(path: Path | None, exc: BaseException) -> Path | None:
    """Append the failure and its traceback(s) to ``RUN/log.txt``; the plug-in's own traceback first."""
    if path is None:
        return None
    log = Path(path) / LOG_FILE
    parts = [f"{datetime.now(UTC).isoformat()} run failed: {exc}\n"]
    if isinstance(exc, PluginError) and exc.traceback_text:
        parts.append("plug-in traceback:\n" + exc.traceback_text)
    engine = traceback.format_exception(exc, chain=not isinstance(exc, PluginError))
    parts.append("engine traceback:\n" + "".join(engine))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as handle:
        handle.write("\n".join(parts) + "\n")
    return log


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
    open_loop: bool = True,
) -> RunResult:
    """Run every policy of ``scenario``; write a run folder unless both ``out`` and ``runs_root`` are None.

    Records are appended to the run folder every ``flush_every`` intervals, so a dashboard can follow it.
    With ``pace`` (simulated seconds per wall-clock second) each interval waits for its wall-clock slot and
    is flushed at once: a paced replay behaves like a live feed for the dashboard and operator commands.
    ``agent_workers`` > 1 runs the edge agents of agent policies over that many processes (same results).
    ``open_loop`` (not with ``pace``): when no policy reads the power flow, replay open loop (the power flows
    of each block in one batch, same records); ``False`` steps every interval.
    """
    if inputs is None:
        inputs = prepare_run(scenario)
    else:
        check_plugins(scenario)
        check_against_feeder(scenario, inputs)
    path = out or (new_run_dir(runs_root, scenario.name) if runs_root is not None else None)
    store = RunStore(path) if path is not None else None
    total = len(scenario.times)
    if store is not None:
        meta = {
            "scenario": scenario.to_toml_dict(),
            "seed": scenario.seed,
            "policies": [c.name for c in scenario.controllers],
            "n_intervals": total,
            "feeder": scenario.feeder,
            "assets": inputs.assets.reset_index().astype(str).to_dict(orient="records"),
        }
        if inputs.telemetry is not None:  # what the telemetry file held and what was left out of it, counted
            t = inputs.telemetry
            meta["telemetry"] = {"source": t.source, "rows_read": t.rows_read,
                                 "duplicates_dropped": t.duplicates_dropped,
                                 "unknown_rows_ignored": t.unknown_rows_ignored,
                                 "unknown_devices": list(t.unknown_devices)}
        if scenario.settlement is not None:
            # Published with the run; verifiers still name the key they trust (it is never taken from here).
            meta["operator_public_key"] = run_public_key(path)
        store.write_meta(meta)
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

    # Plug-ins are built and called through the guard (twin.engine.plugin_calls) until the engine wraps its
    # own call sites; the results are the same.
    entries = tuple(guarded_entry(e) for e in scenario.controllers)
    steps = iterate_policies(scenario, inputs, entries=entries, run_dir=path, agent_workers=agent_workers,
                             open_loop=open_loop and pace is None)
    try:
        for i, records in enumerate(steps, start=1):
            if pace is not None:
                next_slot += interval_s
                time.sleep(max(0.0, next_slot - time.monotonic()))
            recorder.add(records)
            if i - flushed >= flush_every:
                flush("running")
            if on_progress is not None:
                on_progress(i, total)
    except ValueError as exc:  # bad input the engine found while stepping: exit 2 as before, with a log
        _write_log(path, exc)
        if store is not None:
            store.write_status(done=flushed, total=total, state="failed")
        raise
    except Exception as exc:  # noqa: BLE001 — a plug-in's failure, or the engine's own: never a bare traceback
        # An agent worker's failure arrives as a RuntimeError carrying the worker's PluginError text.
        log = _write_log(path, exc)
        if store is not None:
            store.write_status(done=flushed, total=total, state="failed")
        first_line = (str(exc).strip().splitlines() or [""])[0]
        message = first_line if isinstance(exc, PluginError) else f"{type(exc).__name__}: {first_line}"
        raise RunFailed(message, path=path, log_path=log) from exc
    if store is not None and pace is not None:
        flush("running")
        store.compact()
    flush("finished")
    records = recorder.freeze()
    limits = NetworkLimits(**scenario.limits.model_dump())
    kpis = {name: compute_kpis(rec, limits=limits, ev_sessions=inputs.ev_sessions, assets=inputs.assets)
            for name, rec in records.items()}
    if store is not None:
        store.write_kpis(kpis)
    return RunResult(path=path, kpis=kpis, records=records)
