"""Benchmark: settling ordinary intervals (no DR event) of a large fleet into the ledger, with its witnesses.
Run by hand; prints milliseconds per interval for the meters frame, the drafting and the commit (SQLite
append, periodic signed checkpoint, delivery of each head to every participant's witness file).

    python bench/bench_settlement.py [--participants 100,1000,8772] [--intervals 40] [--contract-share 0.5]

Every participant is in one P2P community; a share of them also holds a capacity contract (one ledger entry
each per interval), so an interval appends about participants × share + 1 entries.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from twin.settlement.contracts import SettlementConfig
from twin.settlement.settle import Settlement, meters_frame


def run(n: int, intervals: int, share: float) -> dict[str, float]:
    pids = [f"p-{i}" for i in range(n)]
    config = SettlementConfig.model_validate({
        "checkpoint_every": 256,
        "contracts": [{"participant": p, "rules": [{"kind": "capacity_payment", "name": "capacity",
                                                    "committed_kw": "5", "price_per_kw_month": "4.00"}]}
                      for p in pids[: int(n * share)]],
        "communities": [{"name": "street", "members": pids, "grid_buy_per_kwh": "0.30", "feed_in_per_kwh": "0.06"}],
    })
    rng = np.random.default_rng(0)
    imp, exp = np.zeros(n), np.zeros(n)
    t0, step = pd.Timestamp("2016-01-01T00:00Z"), pd.Timedelta("15min")
    spent = {"meters": 0.0, "draft": 0.0, "commit": 0.0}
    entries = 0
    with tempfile.TemporaryDirectory() as folder:
        settlement = Settlement.for_run(Path(folder), config=config, run_id="bench")
        try:
            for k in range(intervals):
                a = time.perf_counter()
                before = pd.DataFrame({"e_imp_kwh": imp, "e_exp_kwh": exp}, index=pids)
                imp, exp = imp + rng.uniform(0, 0.5, n), exp + rng.uniform(0, 0.3, n)
                after = pd.DataFrame({"e_imp_kwh": imp, "e_exp_kwh": exp}, index=pids)
                meters = meters_frame(start_registers=before, end_registers=after)
                b = time.perf_counter()
                drafted = settlement.draft_interval(start=t0 + k * step, end=t0 + (k + 1) * step, meters=meters)
                c = time.perf_counter()
                settlement.commit(drafted.entries)
                d = time.perf_counter()
                spent["meters"] += b - a
                spent["draft"] += c - b
                spent["commit"] += d - c
                entries += len(drafted.entries)
        finally:
            settlement.close()
    return {**{k: v / intervals * 1e3 for k, v in spent.items()}, "entries": entries / intervals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", default="100,1000,8772")
    parser.add_argument("--intervals", type=int, default=40)
    parser.add_argument("--contract-share", type=float, default=0.5)
    args = parser.parse_args()
    print(f"{'participants':>12} {'entries/int':>11} {'meters ms':>9} {'draft ms':>9} {'commit ms':>9} "
          f"{'µs/participant':>14}")
    for n in (int(x) for x in args.participants.split(",")):
        r = run(n, args.intervals, args.contract_share)
        total = r["meters"] + r["draft"] + r["commit"]
        print(f"{n:>12,} {r['entries']:>11.0f} {r['meters']:>9.1f} {r['draft']:>9.1f} {r['commit']:>9.1f} "
              f"{total / n * 1e3:>14.1f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
