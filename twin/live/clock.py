"""Simulated time for live runs: the field simulator's paced clock and the twin's clock read off device timestamps.

Simulated UTC runs ``speed`` times faster than the wall clock. The simulator anchors simulated ``start`` at a
wall-clock instant (Unix time, so several device processes agree); the twin has no anchor of its own and
extrapolates from the newest device timestamp it received (DESIGN.md §6: telemetry drives the twin).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pandas as pd

__all__ = ["SimClock", "TelemetryClock"]


def _check_speed(speed: float) -> float:
    if not speed > 0:
        raise ValueError(f"speed={speed!r} must be a positive number of simulated seconds per wall-clock second")
    return float(speed)


@dataclass(frozen=True, kw_only=True)
class SimClock:
    """Simulated time ``sim_start`` happens at Unix time ``wall_start``; it then runs at ``speed``."""

    sim_start: pd.Timestamp
    speed: float
    wall_start: float

    def __post_init__(self) -> None:
        _check_speed(self.speed)
        if self.sim_start.tzinfo is None:
            raise ValueError(f"sim_start={self.sim_start!r} must be timezone-aware UTC")

    @classmethod
    def starting_now(cls, *, sim_start: pd.Timestamp, speed: float, delay_s: float = 0.0) -> SimClock:
        return cls(sim_start=sim_start, speed=speed, wall_start=time.time() + delay_s)

    def now(self) -> pd.Timestamp:
        return (self.sim_start + pd.Timedelta(seconds=(time.time() - self.wall_start) * self.speed)).floor("us")

    def wall_at(self, sim: pd.Timestamp) -> float:
        """The Unix time at which simulated time ``sim`` happens."""
        return self.wall_start + (sim - self.sim_start).total_seconds() / self.speed

    def sleep_until(self, sim: pd.Timestamp, *, stop: threading.Event) -> bool:
        """Wait for simulated time ``sim``; False if ``stop`` was set first."""
        delay = self.wall_at(sim) - time.time()
        if delay <= 0:
            return not stop.is_set()
        return not stop.wait(delay)


class TelemetryClock:
    """The twin's estimate of simulated time: the newest device ``ts`` seen, advanced at ``speed`` since then.

    Thread-safe; ``observe`` is fed with every accepted sample's ``ts``.
    """

    def __init__(self, *, speed: float) -> None:
        self.speed = _check_speed(speed)
        self._lock = threading.Lock()
        self._newest: pd.Timestamp | None = None
        self._wall_at_newest = 0.0

    def observe(self, ts: pd.Timestamp, *, wall: float | None = None) -> None:
        with self._lock:
            if self._newest is None or ts > self._newest:
                self._newest = ts
                self._wall_at_newest = time.time() if wall is None else wall

    def now(self) -> pd.Timestamp | None:
        """None until the first sample arrived."""
        with self._lock:
            if self._newest is None:
                return None
            return self._newest + pd.Timedelta(seconds=(time.time() - self._wall_at_newest) * self.speed)
