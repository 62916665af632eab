"""Golden tables: run a representative set of scenarios and save (or compare) every recorded table.

Made before the engine went array-native (issue 13) so the rewrite can be checked to change nothing:

    python bench/golden_tables.py save    --out /tmp/golden            # run, save inputs and tables
    python bench/golden_tables.py compare --out /tmp/golden [--only X] # re-run on the saved inputs, compare

``save`` pickles each scenario's ``RunInputs`` next to its tables, and ``compare`` re-runs on those inputs, so
a change to fleet placement, EV sessions or profiles elsewhere does not show up as an engine difference
(``--tables-only`` saves no inputs; ``compare`` then builds them: how ``tests/test_golden_tables.py`` uses the
small set kept in ``tests/data/golden``).
Tables are compared to 1e-9 (absolute) with NaNs in the same places; wall-clock columns are skipped.
Policies are stepped through ``twin.engine.iterate_policies`` and recorded by ``twin.records.recorder`` (the
run store and KPIs are derived from these tables).
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any

# Ledgers sign with an operator key from a key store; a throw-away one keeps a developer's own key untouched.
os.environ.setdefault("GRIDTWIN_KEY_DIR", tempfile.mkdtemp(prefix="gridtwin-golden-keys-"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # engine_helpers plug-ins

RURAL = "simbench:1-LV-rural1--0-sw"
FLEET = {"pv_penetration": 1.0, "battery_share": 0.4, "ev_share": 0.4, "flex_share": 0.3}
DAY = {"start": "2016-06-06T00:00:00Z", "end": "2016-06-07T00:00:00Z"}
NONE = {"name": "none", "target": "controllers.baseline:NoControl"}
SHAVER = {"name": "shaver", "target": "controllers.baseline:PeakShaver"}

SETTLEMENT = {
    "checkpoint_every": 64,
    "events": [{"start": "2016-06-08T17:00:00Z", "end": "2016-06-08T19:00:00Z"}],
    "contracts": [
        {"participant": "p-1", "rules": [
            {"kind": "capacity_payment", "name": "capacity", "committed_kw": "5", "price_per_kw_month": "4.00"},
            {"kind": "performance_payment", "name": "performance", "baseline": "meter_before_meter_after",
             "price_per_kwh": "0.50"}]},
        {"participant": "p-4", "rules": [
            {"kind": "performance_payment", "name": "performance", "baseline": "caiso_10_in_10",
             "price_per_kwh": "0.50"}]},
    ],
    "communities": [{"name": "village", "method": "mid_market", "members": [f"p-{i}" for i in range(13)],
                     "grid_buy_per_kwh": "0.30", "feed_in_per_kwh": "0.06"}],
    "reward_pools": [{"name": "flex", "pot": "10.00", "per": "event", "baseline": "meter_before_meter_after",
                      "members": ["p-1", "p-4", "p-7"]}],
}

#: name → scenario (a dict for twin.scenario.parse_scenario).
SCENARIOS: dict[str, dict[str, Any]] = {
    "rural-day": {"name": "rural-day", "seed": 7, "feeder": RURAL, **DAY, "fleet": FLEET,
                  "controllers": [NONE, SHAVER]},
    "rural-day-fast": {"name": "rural-day-fast", "seed": 7, "feeder": RURAL, **DAY, "fleet": FLEET,
                       "power_flow": {"engine": "fast"}, "controllers": [NONE, SHAVER]},
    "kerber-fast": {"name": "kerber-fast", "seed": 3, "feeder": "kerber-dorfnetz", **DAY,
                    "fleet": {"pv_penetration": 1.5, "battery_share": 0.3, "ev_share": 0.3, "flex_share": 0.3},
                    "power_flow": {"engine": "fast"}, "controllers": [NONE, SHAVER]},
    "optimizer-network": {
        "name": "optimizer-network", "seed": 5, "feeder": RURAL, "start": "2016-06-06T10:00:00Z",
        "end": "2016-06-06T14:00:00Z", "horizon": "4h", "fleet": FLEET,
        "network": {"sensitivities": True, "refresh": "15min", "monitored_buses": "assets"},
        "controllers": [
            {"name": "scada", "mode": "central", "target": "controllers.optimizing:OptimizingController",
             "kwargs": {"network": True}},
            {"name": "ideal", "mode": "ideal", "target": "controllers.optimizing:OptimizingController",
             "kwargs": {"network": False}},
        ]},
    "depin": {
        "name": "depin", "seed": 11, "feeder": RURAL, "start": "2016-06-06T17:00:00Z",
        "end": "2016-06-06T19:00:00Z", "horizon": "3h", "fleet": FLEET, "comms": {"rounds": 3,
                                                                                   "mesh": {"loss": 0.1}},
        "controllers": [{"name": "depin", "mode": "agents", "target": "controllers.depin:NetworkAdmm"},
                        {"name": "gossip", "mode": "agents", "target": "engine_helpers:GossipAgent"}]},
    "settlement-faults": {
        "name": "settlement-faults", "seed": 42, "feeder": RURAL, "start": "2016-06-08T00:00:00Z",
        "end": "2016-06-09T00:00:00Z", "fleet": FLEET, "settlement": SETTLEMENT,
        "faults": [
            {"kind": "control_centre_outage", "start": "2016-06-08T16:00:00Z", "end": "2016-06-08T18:00:00Z"},
            {"kind": "false_telemetry", "participants": ["p-4"], "scale": 3.0,
             "start": "2016-06-08T17:00:00Z", "end": "2016-06-08T19:00:00Z"},
            {"kind": "backhaul_cut", "participants": ["p-7"], "start": "2016-06-08T06:00:00Z",
             "end": "2016-06-08T08:00:00Z"},
        ],
        "controllers": [NONE, SHAVER,
                        {"name": "scada", "mode": "central", "target": "controllers.baseline:PeakShaver"},
                        {"name": "charge", "mode": "central", "target": "engine_helpers:ChargeAllBatteries",
                         "kwargs": {"p_mw": -0.002, "at_hours": [17, 18]}}]},
    "false-telemetry": {
        "name": "false-telemetry", "seed": 7, "feeder": "cigre-lv", "start": "2016-06-06T16:00:00Z",
        "end": "2016-06-06T18:00:00Z",
        "fleet": {"pv_penetration": 0.0, "battery_share": 1.0, "ev_share": 0.0, "flex_share": 0.0},
        "settlement": {"events": [{"start": "2016-06-06T17:00:00Z", "end": "2016-06-06T17:30:00Z"}],
                       "contracts": [{"participant": f"p-{i}", "rules": [
                           {"kind": "performance_payment", "name": "perf", "baseline": "meter_before_meter_after",
                            "price_per_kwh": "0.50"}]} for i in range(15)]},
        "faults": [{"kind": "false_telemetry", "participants": ["p-0"], "scale": 4.0,
                    "start": "2016-06-06T17:00:00Z", "end": "2016-06-06T17:30:00Z"}],
        "controllers": [{"name": "dr", "target": "engine_helpers:ChargeAllBatteries",
                         "kwargs": {"p_mw": -0.005, "at_hours": [17]}}]},
    "decision-period": {
        "name": "decision-period", "seed": 9, "feeder": RURAL, "start": "2016-06-06T06:00:00Z",
        "end": "2016-06-06T12:00:00Z", "horizon": "3h", "decision_period": "1h", "setpoint_ttl": "1h",
        "fleet": FLEET,
        "controllers": [
            {"name": "ramp", "mode": "central", "target": "engine_helpers:RampSchedule", "kwargs": {"p_mw": 0.0005}},
            {"name": "opt", "mode": "central", "target": "controllers.optimizing:OptimizingController",
             "kwargs": {"network": False}}]},
    "forecast-noise": {"name": "forecast-noise", "seed": 13, "feeder": RURAL, **DAY, "fleet": FLEET,
                       "forecast": {"kind": "noisy", "noise": 0.2}, "controllers": [SHAVER]},
    "persistence-fast": {"name": "persistence-fast", "seed": 17, "feeder": "cigre-lv", **DAY,
                         "fleet": {"pv_penetration": 2.0, "battery_share": 0.5, "ev_share": 0.5, "flex_share": 0.5},
                         "forecast": {"kind": "persistence"}, "power_flow": {"engine": "fast"},
                         "controllers": [NONE, SHAVER]},
}

TOLERANCE = 1e-9
ADDED_COLUMNS = ("primal_residual_mw", "dual_residual_mw", "t_edge_step_s")


def run_tables(name: str, inputs: Any, run_dir: Path) -> dict[str, dict[str, pd.DataFrame]]:
    """Step every policy of scenario ``name`` over ``inputs``; the recorded tables by policy and table."""
    from twin.engine import iterate_policies
    from twin.records.recorder import PolicyRecords, Recorder
    from twin.scenario import parse_scenario

    scenario = parse_scenario(SCENARIOS[name], source=f"golden:{name}")
    recorder = Recorder(step=scenario.step)
    for records in iterate_policies(scenario, inputs, run_dir=run_dir):
        recorder.add(records)
    return {policy: {t: getattr(rec, t) for t in PolicyRecords.TABLES} for policy, rec in recorder.freeze().items()}


def build(name: str) -> Any:
    from twin.inputs import build_inputs
    from twin.scenario import parse_scenario

    return build_inputs(parse_scenario(SCENARIOS[name], source=f"golden:{name}"))


def save(out: Path, names: list[str], *, tables_only: bool = False) -> None:
    for name in names:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        inputs = build(name)
        if not tables_only:
            (folder / "inputs.pickle").write_bytes(pickle.dumps(inputs))
        with tempfile.TemporaryDirectory() as tmp:
            tables = run_tables(name, inputs, Path(tmp) / "run")
        for policy, by_table in tables.items():
            for table, frame in by_table.items():
                path = folder / policy / f"{table}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                frame.to_parquet(path)
        print(f"saved {name}: {', '.join(tables)}", flush=True)


def compare_frames(got: pd.DataFrame, want: pd.DataFrame, *, skip: tuple[str, ...] = ()) -> str | None:
    """None when equal (floats to TOLERANCE, NaNs alike), else what differs."""
    if not got.index.equals(want.index):
        return f"index differs ({len(got)} vs {len(want)} rows)"
    # Columns added to the summary after the tables were saved (the DePIN rounds' last residuals, issue 12;
    # tests/test_depin.py checks them), compared only where the saved table has them.
    got = got.drop(columns=[c for c in ADDED_COLUMNS if c in got.columns and c not in want.columns])
    if list(got.columns) != list(want.columns):
        return f"columns differ: {list(got.columns)[:5]} vs {list(want.columns)[:5]}"
    worst: tuple[float, str] = (0.0, "")
    for column in got.columns:
        if column in skip:
            continue
        a, b = got[column], want[column]
        if a.dtype.kind in "fiub" and b.dtype.kind in "fiub":
            x, y = a.to_numpy(float), b.to_numpy(float)
            if not np.array_equal(np.isnan(x), np.isnan(y)):
                return f"{column}: NaN in different places"
            gap = float(np.nanmax(np.abs(x - y), initial=0.0))
            if gap > worst[0]:
                worst = (gap, column)
            if a.dtype.kind == "b" or b.dtype.kind == "b":
                if not np.array_equal(x, y):
                    return f"{column}: booleans differ"
        elif not a.astype(str).equals(b.astype(str)):
            return f"{column}: values differ (dtype {a.dtype} vs {b.dtype})"
    if worst[0] > TOLERANCE:
        return f"{worst[1]}: max |diff| {worst[0]:.3g}"
    return None


def differences(folder: Path, name: str) -> list[str]:
    """Run scenario ``name`` (on ``folder``'s saved inputs, else freshly built ones) and list every table that
    differs from the one saved in ``folder`` (empty: the same tables)."""
    from twin.records.recorder import TIMING_COLUMNS

    saved_inputs = folder / "inputs.pickle"
    inputs = pickle.loads(saved_inputs.read_bytes()) if saved_inputs.exists() else build(name)
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        tables = run_tables(name, inputs, Path(tmp) / "run")
        for policy, by_table in tables.items():
            for table, frame in by_table.items():
                roundtrip = Path(tmp) / "roundtrip.parquet"
                frame.to_parquet(roundtrip)  # the dtypes the saved table has
                problem = compare_frames(pd.read_parquet(roundtrip), pd.read_parquet(folder / policy / f"{table}.parquet"),
                                         skip=TIMING_COLUMNS)
                if problem:
                    problems.append(f"{policy}/{table}: {problem}")
    return problems


def compare(out: Path, names: list[str]) -> int:
    failures = 0
    for name in names:
        problems = differences(out / name, name)
        failures += bool(problems)
        print(f"{name}: " + ("same tables (1e-9)" if not problems else "DIFFERS\n  " + "\n  ".join(problems)),
              flush=True)
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["save", "compare"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/gridtwin-golden"))
    parser.add_argument("--only", nargs="*", default=None, help="scenario names (default: all)")
    parser.add_argument("--tables-only", action="store_true", help="save: no pickled inputs (compare builds them)")
    args = parser.parse_args()
    names = args.only or list(SCENARIOS)
    if args.action == "save":
        save(args.out, names, tables_only=args.tables_only)
    else:
        sys.exit(1 if compare(args.out, names) else 0)


if __name__ == "__main__":
    main()
