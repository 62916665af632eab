"""Benchmark: a long run of the comparison (SCADA optimizer + DePIN agents) on a SimBench LV feeder, with
wall time per stage. Run by hand; prints a table and the extrapolation to a year.

    python bench/bench_year.py [--days 365] [--engine fast] [--rounds 30] [--horizon 12h] [--decide-every 1h]
                               [--agent-workers 1] [--scada-solver HIGHS] [--policies scada depin]

Stages per policy (from the run's records): telemetry (reading meters and the comms uplink into
observations), optimize (the controller's or the agents' own computation), coordinate (moving setpoints and
mesh messages through the comms model), devices (setpoints and device physics), power_flow, settle; plus
inputs (profiles, fleet, EV sessions) and recording (everything else around the engine), measured around
the run.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import pandas as pd

from twin.inputs import build_inputs
from twin.records.recorder import STAGE_COLUMNS
from twin.run import run_scenario
from twin.scenario import format_duration, parse_scenario


DECIDE_STAGES = ("telemetry", "optimize", "coordinate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--engine", default="fast", choices=["pandapower", "fast"])
    parser.add_argument("--rounds", type=int, default=30,
                        help="DePIN rounds budget per decision (the agents stop earlier when their residuals say so)")
    parser.add_argument("--horizon", default="12h")
    parser.add_argument("--start", default="2016-01-01T00:00:00Z")
    parser.add_argument("--decide-every", default=None,
                        help="decision_period (default: every 15-min step); devices follow schedules in between")
    parser.add_argument("--agent-workers", type=int, default=1, help="processes for the DePIN agents")
    parser.add_argument("--scada-solver", default="HIGHS", choices=["CLARABEL", "HIGHS", "OSQP"],
                        help="the SCADA optimizer's solver: HIGHS re-runs its simplex from the previous decision's "
                             "basis (same objective as CLARABEL to ~1e-7, possibly another optimal vertex); CLARABEL "
                             "is the controller's default")
    parser.add_argument("--policies", nargs="+", default=["scada", "depin"], choices=["scada", "depin"],
                        help="which policies to run (one alone: the run's CPU time is that policy's and the engine's)")
    args = parser.parse_args()
    cadence = {} if args.decide_every is None else {"decision_period": args.decide_every,
                                                    "setpoint_ttl": max(pd.Timedelta(args.decide_every),
                                                                        pd.Timedelta("30min"))}
    start = pd.Timestamp(args.start)
    scenario = parse_scenario({
        "name": "bench-year", "seed": 1, "feeder": "simbench:1-LV-rural1--0-sw",
        "start": start.isoformat(), "end": (start + pd.Timedelta(days=args.days)).isoformat(),
        "horizon": args.horizon, "power_flow": {"engine": args.engine}, "comms": {"rounds": args.rounds}, **cadence,
        "fleet": {"pv_penetration": 1.0, "battery_share": 0.4, "ev_share": 0.4, "flex_share": 0.3},
        "controllers": [c for c in (
            {"name": "scada", "mode": "central", "target": "controllers.optimizing:OptimizingController",
             "kwargs": {"network": False, "solver": args.scada_solver}},
            {"name": "depin", "mode": "agents", "target": "controllers.depin:NetworkAdmm"},
        ) if c["name"] in args.policies],
    })
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    inputs = build_inputs(scenario)
    t_inputs = time.perf_counter() - t0
    t1, c1 = time.perf_counter(), time.process_time()
    result = run_scenario(scenario, runs_root=None, inputs=inputs, agent_workers=args.agent_workers)
    total, cpu = time.perf_counter() - t1, time.process_time() - c1
    n = len(scenario.times)
    print(f"{args.days} days, {n} intervals, engine {args.engine}, DePIN rounds {args.rounds}, horizon {args.horizon}, "
          f"decisions every {format_duration(scenario.decision_period or scenario.step)}, agent workers {args.agent_workers}, "
          f"SCADA solver {args.scada_solver}")
    print(f"inputs (profiles, fleet, sessions): {t_inputs:8.1f} s")
    accounted = 0.0
    for policy, rec in result.records.items():
        s = rec.summary
        stages = {stage: float(s[column].sum()) for stage, column in STAGE_COLUMNS.items()}
        stages["decide, other"] = float(s["compute_s"].sum()) - sum(stages[k] for k in DECIDE_STAGES)
        accounted += sum(stages.values())
        print(f"{policy:8} " + "  ".join(f"{k} {v:7.1f} s" for k, v in stages.items()))
        decisions = int((s["t_optimize_s"] > 0).sum())
        if decisions:
            print(f"{'':8} optimize per decision: {1e3 * stages['optimize'] / decisions:6.2f} ms wall over {decisions} "
                  f"decisions")
    print(f"recording, KPIs and engine overhead: {total - accounted:8.1f} s")
    print(f"total run: {total:8.1f} s  ({n / total:6.2f} intervals/s); a year (35,136 intervals) ≈ "
          f"{35136 * total / n / 60:6.1f} min")
    # The stages above are wall times; on a shared machine the process's own CPU time is the steadier figure.
    print(f"run CPU time: {cpu:8.1f} s; a year ≈ {35136 * cpu / n / 60:6.1f} min of CPU")
    print(f"load average (1 min) before / after the run: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    for k in ("energy_cost_eur", "peak_import_mw"):
        print(k, {p: round(getattr(v, k), 3) for p, v in result.kpis.items()})


if __name__ == "__main__":
    main()
