"""Where study variants run: in this process (serial) or on a Dask distributed cluster.

An executor takes variants and yields one ``Outcome`` per variant as it finishes (in completion order);
a variant that raises, or whose worker process dies repeatedly (``KilledWorker``), yields a failed outcome
and the others carry on. Executors write nothing: the study runner owns the output folder.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import pandas as pd

from twin.cluster import DaskCluster
from twin.studies.model import StudyError, Variant
from twin.studies.variant import run_variant, scenario_fingerprint

__all__ = ["DaskExecutor", "Executor", "Outcome", "SerialExecutor"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """A finished variant: its KPI rows, or the error that stopped it (type, message, traceback)."""

    variant_id: str
    frame: pd.DataFrame | None = None
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.frame is not None


class Executor(Protocol):
    """Runs variants and yields their outcomes; used as a context manager so clusters are always closed."""

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...

    def run(self, variants: Sequence[Variant]) -> Iterator[Outcome]: ...


def _call(variant: Variant) -> pd.DataFrame:
    return run_variant(
        dict(variant.scenario), variant_id=variant.variant_id, label=variant.label,
        params=dict(variant.params), base_dir=variant.base_dir,
    )


def _failed(variant_id: str, exc: BaseException, tb: TracebackType | None) -> Outcome:
    return Outcome(
        variant_id=variant_id,
        error_type=type(exc).__name__,
        error=str(exc),
        traceback="".join(traceback.format_exception(type(exc), exc, tb)),
    )


class SerialExecutor:
    """Runs variants one after the other in this process (debugging, tiny studies, no Dask needed)."""

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, variants: Sequence[Variant]) -> Iterator[Outcome]:
        for variant in variants:
            try:
                frame = _call(variant)
            except Exception as exc:  # noqa: BLE001 - one bad variant must not stop the study
                yield _failed(variant.variant_id, exc, exc.__traceback__)
            else:
                yield Outcome(variant_id=variant.variant_id, frame=frame)


class DaskExecutor:
    """Runs variants as Dask tasks: on a new ``LocalCluster`` of single-threaded worker processes
    (pandapower is not thread-safe per net), or on an existing cluster at ``scheduler``.

    At most one variant per worker thread is in flight: when a worker process dies, only the variant it
    was running counts a failure towards ``allowed_failures``, not variants merely queued behind it.
    ``allowed_failures`` applies to clusters this executor starts; an existing scheduler keeps its own
    ``distributed.scheduler.allowed-failures`` setting.
    """

    def __init__(
        self,
        *,
        scheduler: str | None = None,
        workers: int = 2,
        allowed_failures: int = 3,
        connect_timeout_s: float = 30.0,
        silence_logs: int = logging.ERROR,
    ) -> None:
        try:
            self._cluster = DaskCluster(scheduler=scheduler, workers=workers, allowed_failures=allowed_failures,
                                        connect_timeout_s=connect_timeout_s, silence_logs=silence_logs)
        except ValueError as exc:
            raise StudyError(str(exc)) from None
        self.scheduler = scheduler
        self.workers = workers
        self._client: Any = None

    def __enter__(self) -> DaskExecutor:
        try:
            self._client = self._cluster.open()
        except ConnectionError as exc:
            raise StudyError(str(exc)) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._client = None
        self._cluster.close()

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("DaskExecutor is not open; use it as a context manager")
        return self._client

    def _capacity(self) -> int:
        # Never 0: while every worker is restarting, one variant still waits on the scheduler, so the
        # completion loop below never runs dry before the study is done.
        return max(1, sum(self.client.nthreads().values()))

    def run(self, variants: Sequence[Variant]) -> Iterator[Outcome]:
        from distributed import as_completed

        client = self.client
        queue = iter(variants)
        in_flight: dict[str, Variant] = {}
        completed = as_completed(loop=client.loop)  # this client is not the default one: name its loop

        def top_up() -> None:
            while len(in_flight) < self._capacity():
                variant = next(queue, None)
                if variant is None:
                    return
                # The key carries the scenario's fingerprint too: on a shared scheduler, the same overrides of
                # another study's base are a different task, and Dask would otherwise merge equal keys.
                key = f"variant-{variant.variant_id}-{scenario_fingerprint(variant.scenario)[:12]}"
                future = client.submit(_call, variant, key=key, retries=0)
                in_flight[future.key] = variant
                completed.add(future)

        top_up()
        for future in completed:
            variant = in_flight.pop(future.key)
            yield self._outcome(variant, future)
            future.release()  # the rows are on this side now; let the worker forget them
            top_up()

    def _outcome(self, variant: Variant, future: Any) -> Outcome:
        from distributed import KilledWorker

        if future.status == "finished":
            try:
                return Outcome(variant_id=variant.variant_id, frame=future.result())
            except Exception as exc:  # noqa: BLE001 - e.g. the result could not be fetched
                return _failed(variant.variant_id, exc, exc.__traceback__)
        if future.status != "error":
            return Outcome(variant_id=variant.variant_id, error_type="CancelledError",
                           error=f"the task ended {future.status!r} (the scheduler or client went away)")
        exc = future.exception()
        if isinstance(exc, KilledWorker):
            worker = getattr(exc.last_worker, "address", exc.last_worker)
            return Outcome(
                variant_id=variant.variant_id,
                error_type="KilledWorker",
                error=(f"the worker process died {exc.allowed_failures + 1} times while running this variant "
                       f"(allowed failures: {exc.allowed_failures}; last worker: {worker})"),
            )
        return _failed(variant.variant_id, exc, future.traceback())

