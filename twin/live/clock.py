"""Simulated time for live runs: a paced clock anchored at a wall-clock instant, for the field simulator and
for the twin, each holding its own.

Simulated UTC runs ``speed`` times faster than the wall clock: simulated ``sim_start`` happens at Unix time
``wall_start``. The twin's clock is its own (DESIGN.md §7): device timestamps are judged against it and never
move it, so a device claiming a time ahead of the twin cannot make it skip intervals. To agree, the twin and
the devices are given the same anchor (``--start-at``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

__all__ = ["SimClock"]


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

    def sim_at(self, wall: float, *, resolution: pd.Timedelta = pd.Timedelta(seconds=1)) -> pd.Timestamp:
        """The simulated time at Unix time ``wall``, rounded to ``resolution``: a time that crossed a wire in
        real time (OpenADR) comes back to the simulated second it was sent for, whatever the speed."""
        return (self.sim_start + pd.Timedelta(seconds=(wall - self.wall_start) * self.speed)).round(resolution)

    def sleep_until(self, sim: pd.Timestamp, *, stop: threading.Event) -> bool:
        """Wait for simulated time ``sim``; False if ``stop`` was set first."""
        delay = self.wall_at(sim) - time.time()
        if delay <= 0:
            return not stop.is_set()
        return not stop.wait(delay)

    def to_json(self) -> dict[str, Any]:
        return {"sim_start": self.sim_start.isoformat(), "speed": self.speed, "wall_start": self.wall_start}

    @classmethod
    def from_json(cls, data: Any) -> SimClock:
        try:
            return cls(sim_start=pd.Timestamp(data["sim_start"]), speed=float(data["speed"]),
                       wall_start=float(data["wall_start"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"clock: missing or malformed field {exc}") from None
