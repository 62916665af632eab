"""Benchmark: wall time of a 16-variant study, serial vs a Dask LocalCluster of single-threaded workers.

Run by hand:  python bench/bench_study.py [--hours 6] [--workers 2]

The study sweeps scenarios/study-base.toml (SimBench rural LV, two policies) over PV penetration (4) x battery
share (2) x seed (2). "Cold" runs are what a user sees: the serial run pays pandapower's numba compilation
(no on-disk cache) once in this process, the Dask run once per worker process plus cluster start-up. "Warm"
runs repeat the study in the already-compiled process and on a cluster whose workers ran a warm-up study,
so they measure the executors alone. The script also checks that both executors give the same KPI table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from twin.studies import NONDETERMINISTIC_COLUMNS, run_study

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "scenarios" / "study-base.toml"


def write_study(folder: Path, *, hours: int) -> Path:
    end = pd.Timestamp("2016-06-06T00:00:00Z") + pd.Timedelta(hours=hours)
    path = folder / "bench-study.toml"
    path.write_text(
        f'name = "bench"\nbase = "{BASE}"\n'
        '"fleet.pv_penetration" = [0.5, 1.0, 1.5, 2.0]\n'
        '"fleet.battery_share" = [0.2, 0.6]\n'
        "seed = [1, 2]\n"
        f'end = ["{end.isoformat()}"]\n',  # a one-value axis: a fixed override of the base period
        encoding="utf-8",
    )
    return path


def write_warmup(folder: Path, *, workers: int) -> Path:
    path = folder / "warmup.toml"
    seeds = ", ".join(str(100 + i) for i in range(workers))
    path.write_text(f'base = "{BASE}"\nseed = [{seeds}]\nend = ["2016-06-06T01:00:00+00:00"]\n', encoding="utf-8")
    return path


def timed(study: Path, out: Path, **kwargs: object) -> tuple[float, pd.DataFrame]:
    started = time.perf_counter()
    result = run_study(study, out_dir=out, progress=False, **kwargs)  # type: ignore[arg-type]
    wall = time.perf_counter() - started
    if result.failed:
        raise SystemExit(f"variants failed: {[(f.variant_id, f.error) for f in result.failed]}")
    return wall, result.results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, default=6, help="simulated hours per variant (15-minute steps)")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    args = parser.parse_args()
    from distributed import LocalCluster

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        study = write_study(folder, hours=args.hours)
        cold_serial_s, serial = timed(study, folder / "serial-cold", executor="serial")
        cold_dask_s, dask = timed(study, folder / "dask-cold", executor="dask", workers=args.workers)
        warm_serial_s, _ = timed(study, folder / "serial-warm", executor="serial")
        with LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
        ) as cluster:
            address = cluster.scheduler_address
            timed(write_warmup(folder, workers=args.workers), folder / "warmup", scheduler=address)
            warm_dask_s, _ = timed(study, folder / "dask-warm", scheduler=address)
    drop = list(NONDETERMINISTIC_COLUMNS)
    identical = serial.drop(columns=drop).equals(dask.drop(columns=drop))
    variants = serial["variant_id"].nunique()
    print(f"study: {variants} variants x {args.hours} h at 15 min x 2 policies, feeder simbench:1-LV-rural1--0-sw")
    print(f"machine: {os.cpu_count()} CPUs, load average (1 min) {os.getloadavg()[0]:.1f} at the end")
    print(f"{'':22s}{'serial':>10s}{f'dask x{args.workers}':>10s}{'speed-up':>10s}")
    for name, a, b in (("cold (as a user runs)", cold_serial_s, cold_dask_s), ("warm (executor only)", warm_serial_s, warm_dask_s)):
        print(f"{name:22s}{a:9.1f}s{b:9.1f}s{a / b:9.2f}x")
    print(f"mean variant run time (cold): serial {serial['run_s'].mean():.2f} s, dask {dask['run_s'].mean():.2f} s")
    print(f"identical KPI tables (without {', '.join(drop)}): {identical}")


if __name__ == "__main__":  # required: Dask's worker processes re-import this module when they start
    main()
