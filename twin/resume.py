"""Where a killed, failed or interrupted run continues from (``gridtwin run --resume RUN``), and the check that
its re-simulated past is the past it stored.

A resumed run re-simulates its committed intervals from the start — same scenario, seed, run options and
operator commands, each applied again at the interval it was applied at — and continues from there. Its
ledgers see the re-settled intervals as no-ops (an entry that came out different is a LedgerConflictError),
and its re-simulated records must equal the stored ones (wall-clock timing columns aside), so the resumed
run's tables and ledgers are those of an uninterrupted run, or it stops with exit 2 saying what changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twin.commands import CommandChannel, CommandError, OperatorCommand
from twin.engine.lockstep import Replay
from twin.records.recorder import TIMING_COLUMNS, PolicyRecords
from twin.records.runstore import STALE_AFTER_S, RunStore, run_liveness
from twin.scenario import Scenario, ScenarioError, parse_scenario

__all__ = ["ResumeError", "ResumePoint", "check_resimulated", "resume_point", "scenario_key"]


class ResumeError(ValueError):
    """A run that cannot be resumed (bad input: exit 2); the message names the folder and why."""


@dataclass(frozen=True)
class ResumePoint:
    """A run folder to continue: its scenario, the run options it began with (``pace``, ``open_loop``,
    ``flush_every``) and what the engine replays (``replay.committed`` intervals are committed)."""

    run_dir: Path
    scenario: Scenario
    options: dict[str, Any]
    replay: Replay

    @property
    def committed(self) -> int:
        return self.replay.committed


def scenario_key(scenario: Scenario) -> dict[str, Any]:
    """The scenario as meta.json stores it (JSON types), for comparing a given scenario with a run's."""
    return json.loads(json.dumps(scenario.to_toml_dict(), default=str))


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{path or 'scenario'}: the run has {a!r}, the file {b!r}"


def _replayed_commands(run_dir: Path) -> tuple[tuple[tuple[pd.Timestamp, OperatorCommand], ...], pd.Timestamp | None]:
    """The commands the run's engine applied (in the order it took them) and the first interval it took any."""
    done = CommandChannel(run_dir).done
    applied: list[tuple[pd.Timestamp, OperatorCommand]] = []
    taken: list[pd.Timestamp] = []
    for path in sorted(done.glob("*.json")) if done.exists() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            at = record.get("taken_at") or record.get("applied_at")
            if at is not None:
                taken.append(pd.Timestamp(at))
            if record.get("applied_at") is not None:
                command = OperatorCommand.from_dict(json.loads(record["raw"]))
                applied.append((pd.Timestamp(record["applied_at"]), command))
        except (OSError, ValueError, KeyError, TypeError, CommandError) as exc:
            raise ResumeError(f"RUN={str(run_dir)!r}: operator command record {path.name} is unreadable ({exc}); "
                              "the run's past cannot be replayed") from None
    applied.sort(key=lambda item: item[0])  # stable: commands of one interval keep their order
    return tuple(applied), (min(taken) if taken else None)


def resume_point(run_dir: Path, *, scenario: Scenario | None = None) -> ResumePoint:
    """Check that ``run_dir`` is a run this process may continue, and say from where. ResumeError (exit 2):
    not a run folder, a folder renamed or copied from another run, a finished run, a scenario that differs
    from the run's, or a status the tables do not back."""
    run_dir = Path(run_dir)
    where = f"RUN={str(run_dir)!r}"
    store = RunStore(run_dir)
    try:
        meta = store.meta()
    except (OSError, ValueError):
        raise ResumeError(f"{where}: not a run folder (no readable meta.json)") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("scenario"), dict):
        raise ResumeError(f"{where}: not a run folder (meta.json holds no scenario)")
    run_id = meta.get("run_id")
    if not isinstance(run_id, str):
        raise ResumeError(f"{where}: meta.json names no run_id (a run from before resumable runs); start a new run")
    if run_id != run_dir.name:
        raise ResumeError(f"{where}: this folder was made as run {run_id!r} and has been renamed or copied; a run "
                          "folder is bound to its run id, so a copy cannot be settled again under another name")
    state, why = run_liveness(run_dir)
    if state == "finished":
        raise ResumeError(f"{where}: the run already finished ({why}); nothing to resume")
    if state == "running":
        raise ResumeError(f"{where}: the run is still running ({why}); stop it first (a writer on another "
                          f"machine counts as stopped {STALE_AFTER_S:.0f} s after its last heartbeat)")
    if state == "unknown":
        raise ResumeError(f"{where}: no readable status.json ({why}); not a run this version can resume")
    try:
        base_dir = Path(str(meta.get("scenario_base_dir", run_dir)))
        stored = parse_scenario(meta["scenario"], base_dir=base_dir, source=f"{run_dir}/meta.json")
    except ScenarioError as exc:
        raise ResumeError(f"{where}: the scenario in meta.json no longer validates: {exc}") from None
    if scenario is not None:
        difference = _first_difference(meta["scenario"], scenario_key(scenario))
        if difference is not None:
            raise ResumeError(f"{where}: the scenario changed since the run began ({difference}); a resumed run "
                              "must continue the same scenario — start a new run")
        stored = scenario
    status = store.status()
    committed, total = status.get("done"), len(stored.times)
    if not isinstance(committed, int) or not 0 <= committed <= total or status.get("total") != total:
        raise ResumeError(f"{where}: status.json says {committed!r} of {status.get('total')!r} intervals are done, "
                          f"which does not fit the run's {total} intervals")
    options = meta.get("run_options") if isinstance(meta.get("run_options"), dict) else {}
    commands, stepping_from = _replayed_commands(run_dir)
    return ResumePoint(run_dir=run_dir, scenario=stored, options=dict(options),
                       replay=Replay(committed=committed, commands=commands, stepping_from=stepping_from))


def _same(stored: pd.DataFrame, again: pd.DataFrame) -> str | None:
    """None when equal (NaN = NaN), else the first (time, column) that differs."""
    if list(stored.columns) != list(again.columns) or not stored.index.equals(again.index):
        return "its columns or times"
    for column in stored.columns:
        a, b = stored[column].to_numpy(), again[column].to_numpy()
        if a.dtype.kind == "f" or b.dtype.kind == "f":
            equal = (a == b) | (pd.isna(a) & pd.isna(b))
        else:
            equal = a == b
        if not np.all(equal):
            return f"column {column!r} at {stored.index[int(np.argmin(equal))].isoformat()}"
    return None


def check_resimulated(store: RunStore, records: dict[str, PolicyRecords], *, committed: int) -> None:
    """The re-simulated first ``committed`` intervals equal what the run stored (every table of every
    policy; wall-clock timing columns aside). ResumeError names the first difference."""
    for policy, rec in records.items():
        for name in PolicyRecords.TABLES:
            again = getattr(rec, name).iloc[:committed]
            stored = store.read_table(policy, name).iloc[:committed]
            if name == "summary":
                again, stored = (t.drop(columns=[c for c in TIMING_COLUMNS if c in t.columns]) for t in (again, stored))
            stored.index = pd.DatetimeIndex(stored.index, name=again.index.name)
            stored.columns = stored.columns.astype(str)
            difference = _same(stored, again)
            if difference is not None:
                raise ResumeError(
                    f"RUN={str(store.path)!r}: re-simulating the {committed} committed intervals gave policy "
                    f"{policy!r} a different {name} ({difference}): the scenario's inputs (telemetry, fleet or "
                    "plug-in code, package versions) changed since the run began; start a new run")
