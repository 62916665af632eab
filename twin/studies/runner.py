"""Run a study end to end: expand the study file, skip finished variants, execute the rest, collect, report.

Owns the study output folder::

    OUT/study.json                  what was expanded (variant ids, labels, overrides)
    OUT/variants/<variant_id>.parquet  one finished variant's KPI rows (atomic; makes re-runs resumable)
    OUT/failed/<variant_id>.json    why a variant failed (removed once it succeeds)
    OUT/results.parquet             every finished variant's rows, in study order
    OUT/report.html                 plotly figures, plotly.js inline
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from twin.studies.executors import DaskExecutor, Executor, Outcome, SerialExecutor
from twin.studies.model import Study, StudyError, Variant, load_study
from twin.studies.report import write_report
from twin.studies.variant import (
    atomic_write_text,
    read_variant,
    scenario_fingerprint,
    variant_is_current,
    write_failure,
    write_parquet,
    write_variant,
)

__all__ = ["StudyResult", "VariantFailure", "run_study"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VariantFailure:
    variant_id: str
    label: str
    error_type: str
    error: str
    path: Path


@dataclass(frozen=True)
class StudyResult:
    """What a study run did. ``executed`` ran in this call (successfully or not); ``skipped`` had finished
    in an earlier call; ``results`` holds every finished variant's rows (``results_path`` on disk)."""

    study: Study
    out_dir: Path
    results: pd.DataFrame
    executed: tuple[str, ...]
    skipped: tuple[str, ...]
    failed: tuple[VariantFailure, ...]
    results_path: Path
    report_path: Path

    @property
    def ok(self) -> bool:
        return not self.failed


def _variant_path(out_dir: Path, variant_id: str) -> Path:
    return out_dir / "variants" / f"{variant_id}.parquet"


def _failure_path(out_dir: Path, variant_id: str) -> Path:
    return out_dir / "failed" / f"{variant_id}.json"


def _write_manifest(study: Study, out_dir: Path) -> None:
    manifest = {
        "name": study.name,
        "description": study.description,
        "study_file": str(study.path.resolve()),
        "base": str(study.base_path),
        "mode": study.mode,
        "axes": list(study.axes),
        "variants": [{"variant_id": v.variant_id, "label": v.label, "overrides": dict(v.overrides)}
                     for v in study.variants],
    }
    atomic_write_text(out_dir / "study.json", json.dumps(manifest, indent=2, default=str) + "\n")


def _executor(kind: str, *, scheduler: str | None, workers: int, allowed_failures: int) -> Executor:
    if kind == "serial":
        if scheduler is not None:
            raise StudyError(f"scheduler={scheduler!r} needs executor='dask', not 'serial'")
        return SerialExecutor()
    if kind == "dask":
        return DaskExecutor(scheduler=scheduler, workers=workers, allowed_failures=allowed_failures)
    raise StudyError(f"executor={kind!r} must be 'dask' or 'serial'")


def _record(out_dir: Path, variant: Variant, outcome: Outcome, fingerprint: str) -> VariantFailure | None:
    """Persist one outcome: the rows atomically, or the failure next to them (and never both)."""
    failure_path = _failure_path(out_dir, variant.variant_id)
    if outcome.frame is not None:
        write_variant(_variant_path(out_dir, variant.variant_id), outcome.frame, fingerprint=fingerprint)
        failure_path.unlink(missing_ok=True)
        return None
    error_type, error = outcome.error_type or "Error", outcome.error or ""
    write_failure(failure_path, {
        "variant_id": variant.variant_id, "label": variant.label, "overrides": dict(variant.overrides),
        "error_type": error_type, "error": error, "traceback": outcome.traceback,
    })
    logger.warning("variant %s (%s) failed: %s: %s", variant.variant_id, variant.label, error_type, error)
    return VariantFailure(variant_id=variant.variant_id, label=variant.label, error_type=error_type,
                          error=error, path=failure_path)


def _progress(console: Console | None, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console or Console(stderr=True), disable=not enabled, transient=False,
    )


def _collect(study: Study, out_dir: Path, finished: Sequence[str]) -> pd.DataFrame:
    done = set(finished)
    frames = [read_variant(_variant_path(out_dir, v.variant_id)) for v in study.variants if v.variant_id in done]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run_study(
    study_path: str | Path,
    *,
    out_dir: str | Path,
    scheduler: str | None = None,
    workers: int = 2,
    executor: Literal["dask", "serial"] = "dask",
    progress: bool = True,
    allowed_failures: int = 3,
    console: Console | None = None,
) -> StudyResult:
    """Run every unfinished variant of the study at ``study_path`` and write ``out_dir``.

    ``executor="dask"`` starts a ``LocalCluster`` of ``workers`` single-threaded processes, or uses the
    cluster at ``scheduler`` (``"tcp://HOST:PORT"``). A variant that fails is reported (``failed`` and
    ``out_dir/failed/<id>.json``) without stopping the others; run again to retry only what is missing.
    Raises ``StudyError`` for a bad study file or argument, before any variant runs.
    """
    study = load_study(study_path)
    runner = _executor(executor, scheduler=scheduler, workers=workers, allowed_failures=allowed_failures)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_manifest(study, out)

    fingerprints = {v.variant_id: scenario_fingerprint(v.scenario) for v in study.variants}
    skipped = {v.variant_id for v in study.variants
               if variant_is_current(_variant_path(out, v.variant_id), fingerprint=fingerprints[v.variant_id])}
    todo = [v for v in study.variants if v.variant_id not in skipped]
    executed: set[str] = set()
    failures: list[VariantFailure] = []
    if todo:
        with _progress(console, progress) as bar, runner:
            task = bar.add_task(f"study {study.name}", total=len(todo), failed=0)
            by_id = {v.variant_id: v for v in todo}
            for outcome in runner.run(todo):
                variant = by_id[outcome.variant_id]
                failure = _record(out, variant, outcome, fingerprints[variant.variant_id])
                executed.add(variant.variant_id)
                if failure is not None:
                    failures.append(failure)
                bar.update(task, advance=1, failed=len(failures))

    failed_ids = {f.variant_id for f in failures}
    finished = [v.variant_id for v in study.variants if v.variant_id in (skipped | executed) - failed_ids]
    results = _collect(study, out, finished)
    results_path = out / "results.parquet"
    write_parquet(results_path, results)
    failure_table = pd.DataFrame(
        [{"variant_id": f.variant_id, "label": f.label, "error_type": f.error_type, "error": f.error} for f in failures],
        columns=["variant_id", "label", "error_type", "error"],
    )
    report_path = write_report(out / "report.html", study=study, results=results, failures=failure_table)
    # Every tuple in study order, so a result does not depend on which worker finished first.
    in_order = [v.variant_id for v in study.variants]
    return StudyResult(
        study=study, out_dir=out, results=results,
        executed=tuple(i for i in in_order if i in executed), skipped=tuple(i for i in in_order if i in skipped),
        failed=tuple(sorted(failures, key=lambda f: in_order.index(f.variant_id))),
        results_path=results_path, report_path=report_path,
    )
