"""Benchmark: network-aware DePIN and the central SCADA optimizer on feeders of 13 to 8,772 participants.

Both policies run with network limits on the same feeder, fleet and profiles, one summer day at 15-minute
steps. Each (feeder, policy) runs in its own process, so its peak memory is its own and a central optimizer that
cannot keep up can be stopped at a time limit (that is a finding, reported with its numbers, not a failure).

    python bench/bench_depin_scale.py [--feeders rural1 urban6 mvlv-rural mvlv-semiurb] [--hours 24]
        [--decide-every 15min] [--time-limit 1800] [--faults]

Per policy: wall time per decision, rounds, messages and bytes per participant per interval, time per round
(and per round per 1,000 participants), the last round's primal and dual residuals, energy cost and its gap to
SCADA,
violation bus-intervals (AC voltage outside [0.95, 1.05] pu + 2e-3, loadings above 100 % + 1) and peak RSS.
``--faults`` adds a DePIN run with a control-centre outage, 10 % participant dropout and 10 % message loss over
the whole day, reported against the fault-free run. Results are printed and written to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FEEDERS = {
    "rural1": "simbench:1-LV-rural1--0-sw",
    "urban6": "simbench:1-LV-urban6--0-sw",
    "mvlv-rural": "simbench:1-MVLV-rural-all-0-sw",
    "mvlv-semiurb": "simbench:1-MVLV-semiurb-all-0-sw",
}
FLEET = {"pv_penetration": 1.5, "battery_share": 0.3, "ev_share": 0.3, "flex_share": 0.2}
V_TOL_PU, LOADING_TOL_PERCENT = 2e-3, 1.0
START = pd.Timestamp("2016-06-06T00:00:00Z")


def scenario_dict(feeder: str, policy: str, *, hours: float, decide_every: str, faults: bool) -> dict[str, Any]:
    controllers = {
        "depin": {"name": "depin", "mode": "agents", "target": "controllers.depin:NetworkAdmm"},
        "scada": {"name": "scada", "mode": "central", "target": "controllers.optimizing:OptimizingController",
                  "kwargs": {"network": True, "solver": "OSQP"}},
    }
    end = START + pd.Timedelta(hours=hours)
    spec: dict[str, Any] = {
        "name": f"scale-{policy}", "seed": 7, "feeder": feeder, "start": START.isoformat(), "end": end.isoformat(),
        "horizon": "6h", "decision_period": decide_every,
        "setpoint_ttl": _duration(max(pd.Timedelta(decide_every), pd.Timedelta("30min"))),
        "fleet": FLEET, "power_flow": {"engine": "fast"}, "comms": {"rounds": 200},
        "network": {"sensitivities": policy == "scada", "refresh": "15min", "monitored_buses": "assets"},
        "controllers": [controllers[policy]],
    }
    if faults:
        window = {"start": START.isoformat(), "end": end.isoformat()}
        spec["faults"] = [{"kind": "control_centre_outage", **window},
                          {"kind": "participant_dropout", "share": 0.1, **window},
                          {"kind": "message_loss", "loss": 0.1, **window}]
    return spec


def _duration(td: pd.Timedelta) -> str:
    return f"{int(td.total_seconds() // 60)}min"


def run_one(spec: dict[str, Any], out: mp.Queue, workers: int = 1) -> None:
    """One (feeder, policy) in this process: build, run, summarize, peak RSS."""
    from twin.inputs import build_inputs
    from twin.run import run_scenario
    from twin.scenario import parse_scenario

    t0 = time.perf_counter()
    scenario = parse_scenario(spec)
    inputs = build_inputs(scenario)
    t_inputs = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = run_scenario(scenario, runs_root=None, inputs=inputs, agent_workers=workers)
    wall = time.perf_counter() - t1
    name = scenario.controllers[0].name
    rec = result.records[name]
    sm = rec.summary
    every = max(1, int(pd.Timedelta(spec["decision_period"]) / scenario.step))
    decisions = sm[sm["rounds"] > 0] if name == "depin" else sm.iloc[::every]
    n_part = int(inputs.assets["participant_id"].nunique())
    vm = rec.vm_pu.to_numpy()
    loading = np.concatenate([rec.line_loading_percent.to_numpy(), rec.trafo_loading_percent.to_numpy()], axis=1)
    decide = sm["t_telemetry_s"] + sm["t_optimize_s"] + sm["t_coordinate_s"]
    rounds = decisions["rounds"]
    out.put({
        "policy": name, "participants": n_part, "assets": len(inputs.assets), "buses": len(inputs.net.bus),
        "inputs_s": t_inputs, "run_s": wall, "intervals": len(sm),
        "decision_s_mean": float(decide[decide > 0].mean()) if (decide > 0).any() else 0.0,
        "decision_s_max": float(decide.max()),
        "rounds_mean": float(rounds.mean()) if len(rounds) else 0.0, "rounds_max": float(sm["rounds"].max()),
        "primal_residual_mw_max": float(decisions["primal_residual_mw"].max()) if name == "depin" else None,
        "dual_residual_mw_max": float(decisions["dual_residual_mw"].max()) if name == "depin" else None,
        "edge_step_ms_max": float(1e3 * decisions["t_edge_step_s"].max()) if name == "depin" else None,
        "round_ms_per_1000": (float(1e6 * decisions["t_optimize_s"].sum() / max(rounds.sum(), 1) / n_part)
                              if name == "depin" else None),
        "round_ms": float(1e3 * decisions["t_optimize_s"].sum() / max(rounds.sum(), 1)) if name == "depin" else None,
        "messages_per_participant_per_interval": float(sm["messages"].mean() / n_part),
        "bytes_per_participant_per_interval": float(sm["bytes"].mean() / n_part),
        "central_bytes_per_interval": float(sm["central_bytes"].mean()),
        "cost_eur": float(sm["cost_eur"].sum()),
        "voltage_violation_bus_intervals": int(((vm > 1.05 + V_TOL_PU) | (vm < 0.95 - V_TOL_PU)).sum()),
        "loading_violation_branch_intervals": int((loading > 100.0 + LOADING_TOL_PERCENT).sum()),
        "vm_max_pu": float(np.nanmax(vm)), "vm_min_pu": float(np.nanmin(vm)), "loading_max_percent": float(np.nanmax(loading)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    })


def run_isolated(spec: dict[str, Any], *, time_limit_s: float, workers: int = 1) -> dict[str, Any]:
    queue: mp.Queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=run_one, args=(spec, queue, workers))
    t0 = time.perf_counter()
    proc.start()
    proc.join(time_limit_s)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return {"policy": spec["controllers"][0]["name"], "error": f"did not finish within {time_limit_s:.0f} s",
                "run_s": time.perf_counter() - t0}
    if proc.exitcode != 0 or queue.empty():
        return {"policy": spec["controllers"][0]["name"], "error": f"exit code {proc.exitcode}",
                "run_s": time.perf_counter() - t0}
    return queue.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeders", nargs="+", default=list(FEEDERS), choices=list(FEEDERS))
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--decide-every", default="15min")
    parser.add_argument("--time-limit", type=float, default=1800.0, help="seconds per (feeder, policy) run")
    parser.add_argument("--policies", nargs="+", default=["depin", "scada"], choices=["depin", "scada"])
    parser.add_argument("--faults", action="store_true", help="also run DePIN under outage + dropout + loss")
    parser.add_argument("--agent-workers", type=int, default=1,
                        help="Dask worker processes DePIN's participants are spread over (1 = in-process)")
    args = parser.parse_args()
    rows = []
    for key in args.feeders:
        for policy in args.policies:
            spec = scenario_dict(FEEDERS[key], policy, hours=args.hours, decide_every=args.decide_every, faults=False)
            row = {"feeder": key, **run_isolated(spec, time_limit_s=args.time_limit, workers=args.agent_workers)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.faults:
            spec = scenario_dict(FEEDERS[key], "depin", hours=args.hours, decide_every=args.decide_every, faults=True)
            row = {"feeder": key, "faults": True, **run_isolated(spec, time_limit_s=args.time_limit, workers=args.agent_workers)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = pd.DataFrame(rows)
    faulted = table["faults"].eq(True) if "faults" in table else pd.Series(False, index=table.index)
    if "cost_eur" in table:
        # DePIN's cost against SCADA's on the same feeder, and a faulted DePIN run's against the fault-free one.
        scada = table[(table["policy"] == "scada") & ~faulted].set_index("feeder")["cost_eur"]
        clean = table[(table["policy"] == "depin") & ~faulted].set_index("feeder")["cost_eur"]
        table["cost_gap_to_scada"] = [(r.cost_eur - scada.get(r.feeder, np.nan)) / abs(scada.get(r.feeder, np.nan))
                                      if r.policy == "depin" and not f else np.nan
                                      for r, f in zip(table.itertuples(), faulted, strict=True)]
        table["cost_gap_to_fault_free"] = [(r.cost_eur - clean.get(r.feeder, np.nan)) / abs(clean.get(r.feeder, np.nan))
                                           if f else np.nan for r, f in zip(table.itertuples(), faulted, strict=True)]
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(table.to_string(index=False))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"depin_scale_{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(rows, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
