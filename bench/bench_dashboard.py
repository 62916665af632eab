"""Server-side time of the dashboard's Overview refresh on the IEEE European LV feeder (907 buses) with a week
of 15-minute records of two policies (a synthetic run store written with the real RunStore; no power flow).

Measures the Overview callback through Flask's test client (routing, reading the run store, KPIs, alarms,
the feeder figure and its JSON): cold (first request of a new app), warm (nothing changed) and live (one new
interval appended before each request, as while a paced run writes). Target: < 1 s.

    python bench/bench_dashboard.py [--feeder ieee-eu-lv] [--days 7] [--flush-every 96] [--ledger] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from dashboards import create_app
from dashboards.synthetic import SyntheticTwin
from grids.catalog import load_feeder
from twin.grid.topology import feeder_topology

OVERVIEW = {
    "output": "..ov-map.figure...ov-caption.children...ov-alarms.children...ov-cards.children..",
    "outputs": [{"id": "ov-map", "property": "figure"}, {"id": "ov-caption", "property": "children"},
                {"id": "ov-alarms", "property": "children"}, {"id": "ov-cards", "property": "children"}],
    "inputs": [{"id": "run-version", "property": "data", "value": None},
               {"id": "ov-policy", "property": "value", "value": "scada"},
               {"id": "ov-moment", "property": "value", "value": "latest"}],
    "changedPropIds": ["run-version.data"],
}


def timed(client, body: dict) -> tuple[float, int]:
    t0 = time.perf_counter()
    response = client.post("/_dash-update-component", json=body)
    elapsed = time.perf_counter() - t0
    if response.status_code != 200:
        raise RuntimeError(f"overview callback answered {response.status_code}: {response.data[:300]!r}")
    return elapsed, len(response.data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeder", default="ieee-eu-lv")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--flush-every", type=int, default=96, help="intervals per Parquet part (run_scenario: 96)")
    parser.add_argument("--ledger", action="store_true", help="also settle every interval into per-policy ledgers")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    topology = feeder_topology(load_feeder(args.feeder))
    n = args.days * 96
    with tempfile.TemporaryDirectory(prefix="gridtwin-bench-") as tmp:
        run = Path(tmp) / "run"
        twin = SyntheticTwin(run, topology, n_intervals=n + args.repeat, n_assets=110, seed=1)
        t0 = time.perf_counter()
        twin.write_start()
        while twin.done < n:
            twin.advance(min(args.flush_every, n - twin.done))
        if args.ledger:
            twin.settle()
        written = time.perf_counter() - t0
        parts = len(list(run.rglob("part-*.parquet")))
        print(f"run store: {args.feeder}, {len(topology.buses)} buses, {len(topology.lines)} lines, "
              f"{len(twin.assets)} assets, 2 policies x {n} intervals, {parts} parts "
              f"(written in {written:.1f} s){', with ledgers' if args.ledger else ''}")

        app = create_app(run)
        client = app.server.test_client()
        cold, size = timed(client, OVERVIEW)
        warm = [timed(client, OVERVIEW)[0] for _ in range(args.repeat)]
        live = []
        for _ in range(args.repeat):
            twin.advance(1)
            if args.ledger:
                twin.settle()
            live.append(timed(client, OVERVIEW)[0])
        print(json.dumps({"cold_s": round(cold, 3), "warm_median_s": round(statistics.median(warm), 3),
                          "live_median_s": round(statistics.median(live), 3), "live_max_s": round(max(live), 3),
                          "response_kb": round(size / 1024, 1)}))
        verdict = "OK" if statistics.median(live) < 1.0 and statistics.median(warm) < 1.0 else "SLOW"
        print(f"Overview refresh (server side): warm {statistics.median(warm) * 1e3:.0f} ms, "
              f"live {statistics.median(live) * 1e3:.0f} ms (target < 1000 ms): {verdict}")


if __name__ == "__main__":
    main()
