"""Run a scenario end to end: inputs → lock-step engine → records → KPIs → run store.

Used by the CLI (``gridtwin run``, ``gridtwin demo``) and by tests; it reports progress through a callback
so the CLI can draw a progress bar without this module knowing about terminals.

Before the first interval it makes every check ``gridtwin validate`` makes (``twin.preflight``). A plug-in that
raises (or returns something that is not a Dispatch / Proposal) ends the run with ``RunFailed`` naming the
policy, the method, the interval and the exception; its traceback goes to ``RUN/log.txt``.

Crash consistency: a run with a folder commits in chunks of intervals — their run-store parts, then every
policy's ledger entries (one transaction each, ``twin.engine.metering.DeferredLedgers``), then ``done`` in
``status.json``, the commit point — so an interval is recorded and settled, or neither; a heartbeat thread
keeps ``status.json`` fresh while the writer lives, and a writer that stops on its own says "failed" or
"interrupted". ``resume_run`` continues a stopped run (``twin.resume``).
"""

from __future__ import annotations

import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from controllers.api import NetworkLimits
from twin.engine import iterate_policies
from twin.engine.lockstep import Replay
from twin.engine.metering import DeferredLedgers
from twin.grid.topology import write_feeder_topology
from twin.engine.plugin_calls import PluginError, guarded_entry
from twin.inputs import RunInputs
from twin.preflight import check_against_feeder, check_plugins, prepare_run
from twin.grid.three_phase_run import phase_metadata
from twin.records.kpis import Kpis, compute_kpis
from twin.records.phase_kpis import evaluate_three_phase
from twin.records.recorder import PolicyRecords, Recorder
from twin.records.runstore import Heartbeat, RunStore, new_run_dir
from twin.resume import ResumeError, check_resimulated, resume_point
from twin.scenario import Scenario
from twin.settlement.earnings import write_run_earnings
from twin.settlement.keystore import run_public_key
from twin.settlement.ledger import LedgerConflictError

__all__ = ["LOG_FILE", "RunFailed", "RunResult", "Terminated", "resume_run", "run_scenario"]

#: A replay's tables with this many parts or more are merged into one file when the run ends.
COMPACT_PARTS = 32

#: Where a failed run's traceback goes, inside its run folder.
LOG_FILE = "log.txt"


class RunFailed(Exception):
    """A run that stopped while stepping: ``message`` says who failed where (one line), ``log_path`` holds the
    traceback (None without a run folder), ``exit_code`` is 1 (a plug-in or internal failure)."""

    def __init__(self, message: str, *, path: Path | None, log_path: Path | None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message, self.path, self.log_path, self.exit_code = message, path, log_path, exit_code


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by the CLI's SIGTERM handler: the run stops as "interrupted" (exit 143)."""


def stop_on_sigterm() -> None:
    """SIGTERM stops a run (``gridtwin run``, ``gridtwin live``) like Ctrl-C does: its status says
    "interrupted" and it can be resumed."""

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


def _note(path: Path | None, line: str) -> None:
    if path is not None:
        with open(Path(path) / LOG_FILE, "a", encoding="utf-8") as handle:
            handle.write(f"{datetime.now(UTC).isoformat()} {line}\n")


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

    Records are committed to the run folder every ``flush_every`` intervals, so a dashboard can follow it.
    With ``pace`` (simulated seconds per wall-clock second) each interval waits for its wall-clock slot and
    is committed at once: a paced replay behaves like a live feed for the dashboard and operator commands.
    ``agent_workers`` > 1 runs the edge agents of agent policies over that many processes (same results).
    ``open_loop`` (not with ``pace``): when no policy reads the power flow, replay open loop (the power flows
    of each block in one batch, same records); ``False`` steps every interval. ``out`` must not be a run
    folder already (ValueError: resume it with :func:`resume_run`).
    """
    if inputs is None:
        inputs = prepare_run(scenario)
    else:
        check_plugins(scenario)
        check_against_feeder(scenario, inputs)
    if out is not None and (Path(out) / "meta.json").exists():
        raise ValueError(f"--out={str(out)!r}: already a run folder; continue it with gridtwin run --resume "
                         f"{out}, or choose a new folder")
    path = out or (new_run_dir(runs_root, scenario.name) if runs_root is not None else None)
    store = RunStore(path) if path is not None else None
    if store is not None and path is not None:
        meta = {
            # The run id is the folder's name when it was made: ledger entries carry it, and a folder renamed
            # or copied is refused by resume and reported by ledger verify.
            "run_id": path.name,
            "scenario": scenario.to_toml_dict(),
            "scenario_base_dir": str(Path(scenario.base_dir).resolve()),
            "seed": scenario.seed,
            "policies": [c.name for c in scenario.controllers],
            "n_intervals": len(scenario.times),
            "feeder": scenario.feeder,
            "run_options": {"pace": pace, "open_loop": open_loop, "flush_every": flush_every},
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
        if inputs.phases is not None:  # issue 18: the phase allocation and any assumed zero-sequence data
            meta["three_phase"] = phase_metadata(inputs)
        store.write_meta(meta)
        write_feeder_topology(inputs.net, path / "feeder.json")
    return _execute(scenario, inputs, path=path, store=store, flush_every=flush_every, pace=pace,
                    on_progress=on_progress, agent_workers=agent_workers, open_loop=open_loop, replay=None)


def resume_run(
    run_dir: Path,
    *,
    scenario: Scenario | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    agent_workers: int = 1,
) -> RunResult:
    """Continue a killed, failed or interrupted run in ``run_dir`` to its end: its committed intervals are
    re-simulated (checked against the stored records and ledgers) and the rest run as they would have, so
    the tables and ledgers are those of an uninterrupted run. ``scenario``, when given, must be the run's.
    ResumeError (a ValueError: exit 2) when the folder is not a run, is finished, was renamed or copied,
    or its scenario or inputs changed."""
    point = resume_point(Path(run_dir), scenario=scenario)
    scenario = point.scenario
    try:
        inputs = prepare_run(scenario)
    except ValueError as exc:
        raise ResumeError(f"RUN={str(run_dir)!r}: the run's scenario no longer prepares: {exc}") from None
    meta = RunStore(point.run_dir).meta()
    if meta.get("assets") != inputs.assets.reset_index().astype(str).to_dict(orient="records"):
        raise ResumeError(f"RUN={str(run_dir)!r}: the scenario now builds a different asset table than the run's "
                          "(its fleet file changed?); start a new run")
    store = RunStore(point.run_dir)
    store.truncate(point.committed, times=scenario.times)
    options = point.options
    _note(point.run_dir, f"resumed after {point.committed} committed intervals")
    return _execute(scenario, inputs, path=point.run_dir, store=store,
                    flush_every=int(options.get("flush_every") or 96), pace=options.get("pace"),
                    on_progress=on_progress, agent_workers=agent_workers,
                    open_loop=bool(options.get("open_loop", True)), replay=point.replay)


def _execute(scenario: Scenario, inputs: RunInputs, *, path: Path | None, store: RunStore | None, flush_every: int,
             pace: float | None, on_progress: Callable[[int, int], None] | None, agent_workers: int,
             open_loop: bool, replay: Replay | None) -> RunResult:
    """Step every policy, committing the run folder in chunks (parts, then ledgers, then status)."""
    total = len(scenario.times)
    past = replay.committed if replay is not None else 0  # intervals already committed (a resumed run)
    committed = past
    heartbeat = Heartbeat(store).start() if store is not None else None
    if heartbeat is not None:
        heartbeat.write(done=committed, total=total, state="running")
    ledgers = DeferredLedgers() if store is not None and scenario.settlement is not None else None
    recorder = Recorder(step=scenario.step)
    if pace is not None:
        flush_every = 1
        interval_s = scenario.step.total_seconds() / pace
        next_slot = time.monotonic()

    def commit() -> None:
        """Everything recorded so far, in commit order: run-store parts, each policy's ledger, status."""
        nonlocal committed
        upto = len(recorder)
        if store is None or heartbeat is None or upto <= committed:
            return
        for rec in recorder.freeze(since=committed).values():
            store.append(rec)
        if ledgers is not None:
            ledgers.commit(before=scenario.start + upto * scenario.step)
        committed = upto
        heartbeat.write(done=committed, total=total, state="running", durable=True)

    def stopped(state: str) -> None:
        if heartbeat is not None:
            heartbeat.write(done=committed, total=total, state=state)
            heartbeat.stop()

    # Plug-ins are built and called through the guard (twin.engine.plugin_calls) until the engine wraps its
    # own call sites; the results are the same.
    entries = tuple(guarded_entry(e) for e in scenario.controllers)
    steps = iterate_policies(scenario, inputs, entries=entries, run_dir=path, agent_workers=agent_workers,
                             open_loop=open_loop and pace is None, ledgers=ledgers, replay=replay)
    try:
        for i, records in enumerate(steps, start=1):
            recorder.add(records)
            if i <= past:  # the resumed run's past, re-simulated: check it, never write it again
                if i == past and store is not None:
                    check_resimulated(store, recorder.freeze(), committed=past)
                    if ledgers is not None:  # re-settled: no-ops, or a LedgerConflictError if it came out different
                        ledgers.commit(before=scenario.start + past * scenario.step)
                if on_progress is not None:
                    on_progress(i, total)
                continue
            if pace is not None:
                next_slot += interval_s
                time.sleep(max(0.0, next_slot - time.monotonic()))
            if i - committed >= flush_every or i == total:  # the last chunk before the ledgers close
                commit()
            if on_progress is not None:
                on_progress(i, total)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM through the CLI's handler (Terminated)
        steps.close()
        stopped("interrupted")
        code = 143 if isinstance(exc, Terminated) else 130
        where = f"; resume it with gridtwin run --resume {path}" if path is not None else ""
        _note(path, f"interrupted after {committed} committed intervals")
        raise RunFailed(f"interrupted after {committed} of {total} intervals{where}", path=path,
                        log_path=Path(path) / LOG_FILE if path is not None else None, exit_code=code) from None
    except (ResumeError, LedgerConflictError) as exc:  # a resumed run whose past came out different
        steps.close()
        stopped("failed")
        log = _write_log(path, exc)
        message = str(exc) if isinstance(exc, ResumeError) else (
            f"RUN={str(path)!r}: re-settling the committed intervals gave different ledger entries ({exc}); the "
            "scenario's inputs changed since the run began; start a new run")
        raise RunFailed(message, path=path, log_path=log, exit_code=2) from exc
    except ValueError as exc:  # bad input the engine found while stepping: exit 2 as before, with a log
        steps.close()
        _write_log(path, exc)
        stopped("failed")
        raise
    except Exception as exc:  # noqa: BLE001 — a plug-in's failure, or the engine's own: never a bare traceback
        # An agent worker's failure arrives as a RuntimeError carrying the worker's PluginError text.
        steps.close()
        log = _write_log(path, exc)
        stopped("failed")
        first_line = (str(exc).strip().splitlines() or [""])[0]
        message = first_line if isinstance(exc, PluginError) else f"{type(exc).__name__}: {first_line}"
        raise RunFailed(message, path=path, log_path=log) from exc
    records = recorder.freeze()
    limits = NetworkLimits(**scenario.limits.model_dump())
    kpis = {name: compute_kpis(rec, limits=limits, ev_sessions=inputs.ev_sessions, assets=inputs.assets)
            for name, rec in records.items()}
    if store is not None:
        commit()  # nothing left, unless the run had no intervals to step
        # One file per table for readers: a paced run writes a part per interval, a long replay one per day.
        store.compact(min_parts=1 if pace is not None else COMPACT_PARTS)
        store.write_kpis(kpis)
        if inputs.phases is not None:  # issue 18: each policy's dispatch on the three-phase model, after the run
            evaluate_three_phase(inputs, {name: rec.asset_p_mw for name, rec in records.items()}, limits,
                                 engine="fast" if scenario.power_flow.engine == "fast" else "pandapower", out=path)
        if scenario.settlement is not None:  # what each participant earned under each policy, from the ledgers
            write_run_earnings(path, [c.name for c in scenario.controllers])
        stopped("finished")
    return RunResult(path=path, kpis=kpis, records=records)
