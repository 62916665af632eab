"""Benchmark: peak memory and run-store size of long runs, each case in its own process (so each peak is its own).
Run by hand; prints a table.

    python bench/bench_memory.py [--cases year-rural1 week-semiurb] [--keep DIR] [--report RUN]

- ``year-rural1``: a whole year (2016, 15 min) on SimBench ``1-LV-rural1--0-sw`` with the demo's fleet, no control
  and a rule-based peak shaver, fast engine, written to a run store;
- ``week-semiurb``: a week on ``1-MVLV-semiurb-all-0-sw`` (9,099 buses), no control, fast engine, empty fleet.

Peak RSS is the process's maximum resident set (``getrusage``), including Python, pandas, pandapower and the
inputs; the store size counts every file of the run folder. ``--report RUN`` also writes and sizes RUN's report.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "year-rural1": {
        "name": "year-rural1", "seed": 1, "feeder": "simbench:1-LV-rural1--0-sw",
        "start": "2016-01-01T00:00:00Z", "end": "2016-12-31T00:00:00Z", "power_flow": {"engine": "fast"},
        "fleet": {"pv_penetration": 1.0, "battery_share": 0.4, "ev_share": 0.4, "flex_share": 0.3},
        "controllers": [{"name": "no-control", "target": "controllers.baseline:NoControl"},
                        {"name": "peak-shaver", "target": "controllers.baseline:PeakShaver"}],
    },
    "week-semiurb": {
        "name": "week-semiurb", "seed": 1, "feeder": "simbench:1-MVLV-semiurb-all-0-sw",
        "start": "2016-06-06T00:00:00Z", "end": "2016-06-13T00:00:00Z", "power_flow": {"engine": "fast"},
        "fleet": {"pv_penetration": 0.0, "battery_share": 0.0, "ev_share": 0.0, "flex_share": 0.0},
        "controllers": [{"name": "no-control", "target": "controllers.baseline:NoControl"}],
    },
}


def _one(case: str, out: Path) -> dict:
    """Run ``case`` in this process; what it cost."""
    from twin.inputs import build_inputs
    from twin.run import run_scenario
    from twin.scenario import parse_scenario

    scenario = parse_scenario(CASES[case])
    t0 = time.perf_counter()
    inputs = build_inputs(scenario)
    t1 = time.perf_counter()
    run_scenario(scenario, out=out, inputs=inputs)
    t2 = time.perf_counter()
    files = [p for p in out.rglob("*") if p.is_file()]
    return {"case": case, "intervals": len(scenario.times), "policies": len(scenario.controllers),
            "inputs_s": t1 - t0, "run_s": t2 - t1,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "store_mb": sum(p.stat().st_size for p in files) / 1e6, "files": len(files)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--keep", type=Path, default=None, help="write the run folders here (default: a temp dir)")
    parser.add_argument("--report", type=Path, default=None, help="also (re)write RUN/report.html and size it")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_one(args.child[0], Path(args.child[1]))))
        return
    root = args.keep or Path(tempfile.mkdtemp(prefix="gridtwin-bench-memory-"))
    print(f"{'case':14} {'intervals':>9} {'policies':>8} {'inputs':>8} {'run':>8} {'peak RSS':>10} {'store':>9} "
          f"{'files':>6}")
    for case in args.cases:
        done = subprocess.run([sys.executable, __file__, "--child", case, str(root / case)], check=True,
                              capture_output=True, text=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{r['case']:14} {r['intervals']:9d} {r['policies']:8d} {r['inputs_s']:7.1f}s {r['run_s']:7.1f}s "
              f"{r['peak_rss_mb']:8.0f}MB {r['store_mb']:7.1f}MB {r['files']:6d}", flush=True)
    if args.report is not None:
        from twin.reporting.report import write_report

        page = write_report(args.report)
        extra = sum(p.stat().st_size for p in page.parent.glob("plotly*.js"))
        print(f"report {page}: {page.stat().st_size / 1e6:.2f} MB (+ {extra / 1e6:.2f} MB plotly.js beside it)")


if __name__ == "__main__":
    main()
