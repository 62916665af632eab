"""Benchmark: the twin replaying one week (NoControl, so every step is telemetry → devices → power flow →
record) next to pandapower's own ``run_timeseries`` with ``ConstControl`` on the same feeder and profiles,
in the same process. Run by hand; prints a table.

    python bench/bench_replay.py [--days 7] [--feeders kerber-dorfnetz simbench:1-LV-rural1--0-sw]

The twin is timed with both power-flow engines (pandapower = model of record, fast = cached-Ybus Newton).
The fleet is empty so both sides solve exactly the same injections; the check column is the largest
|Δvm| between the twin's recorded voltages and run_timeseries' results.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import numpy as np
import pandas as pd
from pandapower.control import ConstControl
from pandapower.timeseries import DFData, OutputWriter, run_timeseries

from twin.inputs import build_inputs
from twin.run import run_scenario
from twin.scenario import parse_scenario


def scenario_for(feeder: str, days: int, engine: str) -> dict:
    return {
        "name": f"bench-{engine}",
        "feeder": feeder,
        "start": "2016-06-06T00:00:00Z",
        "end": (pd.Timestamp("2016-06-06T00:00:00Z") + pd.Timedelta(days=days)).isoformat(),
        "fleet": {"pv_penetration": 0.0, "battery_share": 0.0, "ev_share": 0.0, "flex_share": 0.0},
        "power_flow": {"engine": engine},
        "controllers": [{"name": "none", "target": "controllers.baseline:NoControl"}],
    }


def time_run_timeseries(inputs, n: int) -> tuple[float, pd.DataFrame]:
    net = copy.deepcopy(inputs.net)
    p = inputs.profiles.load_p_mw.iloc[:n].reset_index(drop=True)
    q = inputs.profiles.load_q_mvar.iloc[:n].reset_index(drop=True)
    ConstControl(net, element="load", variable="p_mw", element_index=p.columns, data_source=DFData(p),
                 profile_name=p.columns)
    ConstControl(net, element="load", variable="q_mvar", element_index=q.columns, data_source=DFData(q),
                 profile_name=q.columns)
    if len(net.sgen):
        g = inputs.profiles.sgen_p_mw.iloc[:n].reset_index(drop=True)
        ConstControl(net, element="sgen", variable="p_mw", element_index=g.columns, data_source=DFData(g),
                     profile_name=g.columns)
    ow = OutputWriter(net, output_path=None)
    ow.log_variable("res_bus", "vm_pu")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_timeseries(net, time_steps=range(n), verbose=False, numba=False, lightsim2grid=False)
    return time.perf_counter() - t0, ow.output["res_bus.vm_pu"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--feeders", nargs="+", default=["kerber-dorfnetz", "simbench:1-LV-rural1--0-sw"])
    args = parser.parse_args()
    print(f"{'feeder':32} {'steps':>6} {'run_timeseries':>15} {'twin/pandapower':>16} {'twin/fast':>10} "
          f"{'ratio pp':>9} {'ratio fast':>11} {'max|dvm|':>9}")
    for feeder in args.feeders:
        rates = {}
        vm = {}
        for engine in ("pandapower", "fast"):
            scenario = parse_scenario(scenario_for(feeder, args.days, engine))
            inputs = build_inputs(scenario)
            t0 = time.perf_counter()
            result = run_scenario(scenario, runs_root=None, inputs=inputs)
            elapsed = time.perf_counter() - t0
            n = len(scenario.times)
            rates[engine] = n / elapsed
            vm[engine] = result.records["none"].vm_pu.to_numpy()
        ts_s, ts_vm = time_run_timeseries(inputs, n)
        rates["ts"] = n / ts_s
        dv = max(np.nanmax(np.abs(vm[e] - ts_vm.to_numpy())) for e in ("pandapower", "fast"))
        print(f"{feeder:32} {n:6d} {rates['ts']:12.1f}/s {rates['pandapower']:13.1f}/s {rates['fast']:7.1f}/s "
              f"{rates['pandapower'] / rates['ts']:8.2f}x {rates['fast'] / rates['ts']:10.2f}x {dv:9.1e}")


if __name__ == "__main__":
    main()
