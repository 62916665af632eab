"""The field simulator in several processes: a scenario's devices split among them, one shared clock anchor.

One process signs and publishes about 5,000 telemetry messages a second on a free core; a fleet of 10,000 devices
reporting every second needs more than one. Each process runs ``run_devices`` for its share of the devices (its
own physics, its own ``SessionPool``); they all connect first, then the parent gives them one anchor (or the
one the operator gave with ``--start-at``) so simulated time agrees across them and with the twin.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

__all__ = ["FieldRun", "rss_mb", "run_devices_in_processes"]


@dataclass(frozen=True, kw_only=True)
class FieldRun:
    """What every process of a field run did, summed, and what it cost in memory."""

    devices: int
    processes: int
    published: int
    commands_accepted: int
    commands_refused: int
    #: Resident memory of each process at its peak (MB) and per device over all processes (kB).
    peak_rss_mb: tuple[float, ...]
    sessions_rss_mb: tuple[float, ...]
    wall_s: float

    @property
    def kb_per_device(self) -> float:
        """Memory the device sessions and their physics added, per device (peak minus the process's own)."""
        return sum(self.sessions_rss_mb) * 1024.0 / max(self.devices, 1)


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory now (``VmRSS``) or at its peak (``VmHWM``), in MB."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return float("nan")


def run_devices_in_processes(scenario_path: Path, device_ids: list[str], *, processes: int, credentials_path: Path,
                             host: str, port: int, speed: float, publish_every: pd.Timedelta | None,
                             telemetry_qos: int, start_at: float | None,
                             child: Callable[..., None]) -> FieldRun:
    """Run ``device_ids`` split over ``processes`` spawned processes until the scenario ends (blocking).

    ``child`` is the process's main (``twin.live.simulator.field_process_main``; passed in so this module
    does not import the simulator that imports it)."""
    if processes < 1:
        raise ValueError(f"processes={processes!r} must be at least 1")
    ctx = mp.get_context("spawn")  # never fork a process that runs paho or protocol threads
    ready, go, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    shares = [device_ids[i::processes] for i in range(processes) if device_ids[i::processes]]
    every = str(publish_every) if publish_every is not None else None
    procs = [ctx.Process(target=child, args=(str(scenario_path), share, str(credentials_path), host, port, speed,
                                              every, telemetry_qos, start_at, ready, go, results), daemon=True)
             for share in shares]
    t0 = time.perf_counter()
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            if ready.get(timeout=3600) < 0:
                raise RuntimeError(results.get(timeout=10)["error"])
        anchor = time.time() + 1.0
        for _ in procs:
            go.put(anchor)
        outs = []
        while len(outs) < len(procs):
            try:
                outs.append(results.get(timeout=1.0))
            except queue.Empty:
                if all(not p.is_alive() for p in procs) and results.empty():
                    break
        errors = [o["error"] for o in outs if "error" in o]
        if errors or len(outs) < len(procs):
            raise RuntimeError(errors[0] if errors else "a device process ended without a report")
    finally:
        for proc in procs:
            proc.join(60)
            if proc.is_alive():
                proc.terminate()  # our own child, by its handle
    return FieldRun(devices=len(device_ids), processes=len(procs), published=sum(o["published"] for o in outs),
                    commands_accepted=sum(o["accepted"] for o in outs),
                    commands_refused=sum(o["refused"] for o in outs),
                    peak_rss_mb=tuple(round(o["peak_mb"], 1) for o in outs),
                    sessions_rss_mb=tuple(round(o["sessions_mb"], 1) for o in outs),
                    wall_s=round(time.perf_counter() - t0, 1))

