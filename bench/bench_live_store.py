"""Benchmark: the live run store at 10,000 devices — what appending one interval costs, and how long the dashboard
takes to refresh on it while it grows.

    flock /tmp/gridtwin-bench.lock .venv/bin/python bench/bench_live_store.py --assets 10000 --intervals 120

The live twin appends each interval to the run store as one new Parquet part per table (``RunStore.append``:
nothing written is ever rewritten while the run goes). This writes such a store with the real ``RunStore`` for
``--assets`` devices of two policies at 1-minute intervals (``dashboards.synthetic.SyntheticTwin``: no power
flow), timing every append, then has ``bench/bench_dashboard.py --run`` time every dashboard page's refresh on
it (cold, warm, and live: one more interval appended before each request). Writes
``bench/results/bench_live_store.json`` with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dashboards.synthetic import SyntheticTwin
from grids.catalog import load_feeder
from twin.grid.topology import feeder_topology

sys.path.insert(0, str(Path(__file__).parent))
from bench_live_latency import _uptime  # noqa: E402  (bench scripts are not a package)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=10_000)
    parser.add_argument("--intervals", type=int, default=120, help="1-minute intervals recorded before timing")
    parser.add_argument("--feeder", default="ieee-eu-lv")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_live_store.json")
    args = parser.parse_args()
    if args.assets < 1 or args.intervals < 1 or args.repeat < 1:
        parser.error("--assets, --intervals and --repeat must be at least 1")
    uptime_before = _uptime()
    with tempfile.TemporaryDirectory(prefix="gridtwin-bench-store-") as tmp:
        run = Path(tmp) / "live-run"
        twin = SyntheticTwin(run, feeder_topology(load_feeder(args.feeder)), step="1min",
                             n_intervals=args.intervals + 10 * args.repeat + 10, n_assets=args.assets, seed=3,
                             name="live-10k")
        twin.write_start()
        appends = []
        for _ in range(args.intervals):
            t0 = time.perf_counter()
            twin.advance(1)  # one part per table per interval, as the live twin writes
            appends.append(time.perf_counter() - t0)
        parts = len(list(run.rglob("part-*.parquet")))
        size_mb = sum(p.stat().st_size for p in run.rglob("*")) / 2**20
        dash = subprocess.run([sys.executable, str(Path(__file__).parent / "bench_dashboard.py"), "--run", str(run),
                               "--repeat", str(args.repeat)], capture_output=True, text=True, timeout=3600)
    if dash.returncode != 0:
        print(dash.stdout, dash.stderr, file=sys.stderr)
        return 1
    pages = next((json.loads(line) for line in reversed(dash.stdout.splitlines()) if line.startswith("{")), {})
    result = {
        "assets": args.assets, "policies": 2, "intervals": args.intervals, "parts": parts,
        "store_mb": round(size_mb, 1),
        "append_s_median": round(statistics.median(appends), 3), "append_s_max": round(max(appends), 3),
        "append_s_last10_median": round(statistics.median(appends[-10:]), 3),
        "dashboard_pages": pages, "dashboard_report": dash.stdout.strip().splitlines()[-1] if dash.stdout else "",
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "uptime_before": uptime_before, "uptime_after": _uptime()},
        "argv": sys.argv[1:], "result": result}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
