"""Targets a hostile scenario might name. Each leaves a marker file if it is ever called or instantiated,
so a test can prove that refusing it happened before anything ran."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MARKER_ENV = "GRIDTWIN_BAIT_MARKER"


def _touch(what: str) -> None:
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).write_text(what, encoding="utf-8")


def make_controller(**kwargs: Any) -> Any:
    """A factory function, not a class: it must never be called."""
    _touch("factory called")
    raise AssertionError("the factory ran")


class NotAController:
    """A class without the protocol: it must never be instantiated."""

    def __init__(self, **kwargs: Any) -> None:
        _touch("NotAController instantiated")


class StrictController:
    """Implements the Controller protocol, and takes exactly one keyword argument."""

    def __init__(self, *, gain: float = 1.0) -> None:
        _touch("StrictController instantiated")
        self.gain = gain

    def reset(self, spec: Any, *, seed: int) -> None: ...

    def act(self, observation: Any) -> Any: ...

