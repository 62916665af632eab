"""Test-only controllers for the study tests: a do-nothing policy that counts its runs and can fail on cue.

Addressed from study files as ``study_helpers:Probe`` (pytest puts tests/ on ``sys.path``; spawned Dask
workers inherit it).
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

from controllers.api import ControllerSpec, Dispatch, Observation

MODES = ("ok", "raise", "kill")


class Probe:
    """Sends nothing. ``reset`` leaves one file in ``count_dir`` per run (so tests count executed runs),
    then, by ``mode``: 'ok' carries on, 'raise' raises, 'kill' SIGKILLs its own (Dask worker) process."""

    def __init__(self, *, mode: str = "ok", count_dir: str | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} must be one of {MODES}")
        self.mode = mode
        self.count_dir = count_dir

    def reset(self, spec: ControllerSpec, *, seed: int) -> None:
        del spec, seed
        if self.count_dir is not None:
            Path(self.count_dir, f"{os.getpid()}-{uuid.uuid4().hex}").touch()
        if self.mode == "raise":
            raise RuntimeError("probe told to fail")
        if self.mode == "kill":
            from distributed import get_worker

            get_worker()  # raises ValueError outside a Dask worker: never SIGKILL the test runner itself
            os.kill(os.getpid(), signal.SIGKILL)

    def act(self, observation: Observation) -> Dispatch:
        del observation
        return Dispatch.empty()


def runs_counted(count_dir: Path) -> int:
    return sum(1 for _ in Path(count_dir).iterdir())
