"""The Dask cluster that studies and spread-out edge agents compute on: a new ``LocalCluster`` of
single-threaded worker processes on loopback (pandapower is not thread-safe per net), or an existing cluster at
a scheduler address. One place for both, so a study and a run use the same kind of cluster with the same
settings."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["DaskCluster"]


class DaskCluster:
    """Opens a client (``open``) on a new local cluster of ``workers`` processes or on ``scheduler``; ``close``
    stops what it started. ``allowed_failures`` applies to clusters started here."""

    def __init__(self, *, scheduler: str | None = None, workers: int = 2, allowed_failures: int = 3,
                 connect_timeout_s: float = 30.0, silence_logs: int = logging.ERROR) -> None:
        if scheduler is not None and "://" not in scheduler:
            raise ValueError(f"scheduler={scheduler!r} must be an address like 'tcp://HOST:PORT'")
        if workers < 1:
            raise ValueError(f"workers={workers!r} must be at least 1")
        if allowed_failures < 0:
            raise ValueError(f"allowed_failures={allowed_failures!r} must be >= 0")
        self.scheduler = scheduler
        self.workers = workers
        self.allowed_failures = allowed_failures
        self.connect_timeout_s = connect_timeout_s
        self.silence_logs = silence_logs
        self._cluster: Any = None
        self.client: Any = None

    def open(self) -> Any:
        """The client; raises ConnectionError naming the scheduler if it cannot be reached."""
        from distributed import Client, LocalCluster

        if self.scheduler is not None:
            try:
                self.client = Client(self.scheduler, timeout=self.connect_timeout_s, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise ConnectionError(f"scheduler={self.scheduler!r}: cannot connect ({exc})") from None
            return self.client
        self._cluster = LocalCluster(
            n_workers=self.workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            silence_logs=self.silence_logs,
            scheduler_kwargs={
                "allowed_failures": self.allowed_failures,
                # No dashboard, and the scheduler's health/metrics HTTP server on a free loopback port: its
                # default 8787 is taken as soon as two clusters (or a cluster and a notebook) run at once.
                "dashboard": False,
                "dashboard_address": "127.0.0.1:0",
            },
        )
        try:
            self.client = Client(self._cluster, set_as_default=False)
        except BaseException:
            self._cluster.close()
            self._cluster = None
            raise
        return self.client

    def close(self) -> None:
        # Client first, then the cluster it talks to: the reverse order leaves the client reconnecting to a
        # dead scheduler and warns on shutdown.
        try:
            if self.client is not None:
                self.client.close()
        finally:
            self.client = None
            if self._cluster is not None:
                self._cluster.close()
                self._cluster = None
