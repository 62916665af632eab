"""Benchmark: the twin replaying a week with no control next to pandapower's own ``run_timeseries``
(``ConstControl`` on the same feeder and profiles), in one process, as ratios. Run by hand; prints a table.

    python bench/bench_replay.py [--days 7] [--feeders kerber-dorfnetz simbench:1-LV-rural1--0-sw]
                                 [--big] [--pandapower] [--cache ~/.cache/gridtwin-bench]

Both sides solve exactly the same injections (the fleet is empty; the check column is the largest |Δvm|
between the twin's recorded voltages and run_timeseries' results). ``run_timeseries`` is timed after a short
warm-up run (its numba kernels compile on first use, ~20 s, which would flatter the twin), with numba on
(pandapower's default, its fastest here) and, for the record, off. The twin is timed end to end
(``twin.run.run_scenario``: building the policy's twin, every step, recording, KPIs), on the fast engine:

- ``stepped``: every interval decides, advances the devices, solves one power flow and records
  (``open_loop=False``: what any controller that reads the grid gets);
- ``open loop``: NoControl never reads the grid, so the devices are stepped and the power flows of each block
  are solved in one batch (``twin.engine.open_loop``);
- ``batch pf``: the power flows of the week alone, in one ``FastPowerFlow.solve_many_arrays`` call on the
  same bus injections (what the open-loop replay's power flow costs without the devices, records and KPIs
  around it);
- ``--pandapower`` adds the model-of-record engine (``pandapower.runpp`` every step).

Under each feeder's row, the stepped run's time per interval split by stage as the twin timed it (decide,
devices, power flow, settle) and the rest (building the twin, recording, the sequencer, KPIs).

Each side's time is the best of ``--repeat`` runs (the machine is shared; the best run is the least disturbed).
The twin's runs follow a short warm-up run on the same inputs, which builds what every grid model of a feeder
and fleet shares in a process (``twin.grid.powerflow``: the net with the fleet attached and the fast solver),
as a run's further policies and a study's further runs find it.

``--big`` adds SimBench ``1-MVLV-semiurb-all-0-sw`` (9,099 buses). Its inputs take 10–20 s to build, so every
feeder's inputs are cached (pickled) under ``--cache``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import pickle
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from pandapower.control import ConstControl
from pandapower.timeseries import DFData, OutputWriter, run_timeseries

from twin.engine.input_arrays import InputArrays
from twin.grid.powerflow import GridModel
from twin.inputs import RunInputs, build_inputs
from twin.run import run_scenario
from twin.scenario import Scenario, parse_scenario

BIG = "simbench:1-MVLV-semiurb-all-0-sw"


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


def cached_inputs(scenario: Scenario, cache: Path | None) -> RunInputs:
    """``build_inputs``, pickled under ``cache`` by feeder and period (the 9,099-bus feeder takes ~15 s)."""
    if cache is None:
        return build_inputs(scenario)
    key = hashlib.sha256(f"{scenario.feeder}|{scenario.start}|{scenario.end}|{scenario.horizon}".encode()).hexdigest()
    path = Path(cache).expanduser() / f"inputs-{key[:16]}.pickle"
    if path.exists():
        return pickle.loads(path.read_bytes())
    inputs = build_inputs(scenario)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(inputs))
    return inputs


def time_run_timeseries(inputs: RunInputs, n: int, *, numba: bool = False) -> tuple[float, pd.DataFrame]:
    """Wall time of pandapower's run_timeseries over the first ``n`` intervals, and its bus voltages."""
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
        run_timeseries(net, time_steps=range(n), verbose=False, numba=numba, lightsim2grid=False)
    return time.perf_counter() - t0, ow.output["res_bus.vm_pu"]


def time_twin(scenario: Scenario, inputs: RunInputs, *, open_loop: bool) -> tuple[float, np.ndarray, pd.DataFrame]:
    """Wall time of one whole run of the twin, its recorded bus voltages and its summary table (the stages'
    wall times per interval)."""
    t0 = time.perf_counter()
    result = run_scenario(scenario, runs_root=None, inputs=inputs, open_loop=open_loop)
    records = result.records["none"]
    return time.perf_counter() - t0, records.vm_pu.to_numpy(), records.summary


#: The stages of an interval the summary times (``twin.records.recorder.STAGE_COLUMNS``), as printed.
_STAGES = (("decide", ("t_telemetry_s", "t_optimize_s", "t_coordinate_s")), ("devices", ("t_devices_s",)),
           ("power flow", ("t_power_flow_s",)), ("settle", ("t_settle_s",)))


def stage_profile(total_s: float, summary: pd.DataFrame) -> str:
    """Where a stepped run's time per interval goes (µs): each stage as the twin timed it, and the rest
    (building the twin, recording, the sequencer, KPIs: everything around the stages)."""
    n = max(len(summary), 1)
    parts = [(name, float(summary[list(columns)].to_numpy().sum()) / n * 1e6) for name, columns in _STAGES]
    total = total_s / n * 1e6
    rest = total - sum(us for _, us in parts)
    return f"{'':34} stepped, per interval: {total:6.1f} us = " + " + ".join(
        f"{name} {us:.1f}" for name, us in parts) + f" + the rest {rest:.1f} (build, record, sequence, KPIs)"


def time_batch_pf(inputs: RunInputs, n: int) -> float:
    """Wall time of the first ``n`` intervals' power flows in one batch (the twin's fast engine, no fleet)."""
    grid = GridModel(inputs.net, inputs.assets, engine="fast")
    a = InputArrays.of(inputs)
    empty = np.zeros((len(inputs.assets), n))
    p_bus = grid.bus_p_many(load_p_mw=a.load_p_mw[:n].T, sgen_p_mw=a.sgen_p_mw[:n].T, asset_p_mw=empty)
    q_bus = grid.bus_q_many(load_q_mvar=a.load_q_mvar[:n].T, asset_q_mvar=empty)
    fast = grid.fast
    t0 = time.perf_counter()
    batch = fast.solve_many_arrays(p_bus, q_bus)
    elapsed = time.perf_counter() - t0
    assert batch.converged.all()
    return elapsed


def best(repeat: int, run, *args, **kwargs):  # noqa: ANN001, ANN201 - a bench helper
    """The fastest of ``repeat`` runs of ``run`` (its time, and the output of that run)."""
    results = [run(*args, **kwargs) for _ in range(repeat)]
    return min(results, key=lambda r: r[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--feeders", nargs="+", default=["simbench:1-LV-rural1--0-sw", "kerber-dorfnetz"])
    parser.add_argument("--big", action="store_true", help=f"add {BIG} (9,099 buses)")
    parser.add_argument("--pandapower", action="store_true", help="also time the twin on the pandapower engine")
    parser.add_argument("--repeat", type=int, default=2, help="runs per side; each side's best run counts")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/gridtwin-bench"),
                        help="where built inputs are pickled (reruns skip the 10-20 s of the big feeder)")
    args = parser.parse_args()
    feeders = args.feeders + ([BIG] if args.big else [])
    print(f"{'feeder':34} {'buses':>6} {'steps':>6} {'run_timeseries':>22} {'twin stepped':>22} "
          f"{'twin open loop':>22} {'batch pf':>20} {'max|dvm|':>9}")
    for feeder in feeders:
        scenario = parse_scenario(scenario_for(feeder, args.days, "fast"))
        inputs = cached_inputs(scenario, args.cache)
        n = len(scenario.times)
        warm = parse_scenario({**scenario_for(feeder, 1, "fast"), "end": "2016-06-06T01:00:00Z"})
        for open_loop in (False, True):  # numba kernels load from their cache; the first solve sets up
            time_twin(warm, inputs, open_loop=open_loop)
        time_run_timeseries(inputs, 2, numba=True)  # pandapower's numba kernels compile here, not in the timing
        ts_s, ts_vm = best(args.repeat, time_run_timeseries, inputs, n, numba=True)
        ts_off_s, _ = time_run_timeseries(inputs, n, numba=False)  # for the record: once
        stepped_s, stepped_vm, stepped_summary = best(args.repeat, time_twin, scenario, inputs, open_loop=False)
        open_s, open_vm, _ = best(args.repeat, time_twin, scenario, inputs, open_loop=True)
        batch_s = min(time_batch_pf(inputs, n) for _ in range(args.repeat + 1))  # the first one compiles nothing new
        dv = max(float(np.nanmax(np.abs(vm - ts_vm.to_numpy()))) for vm in (stepped_vm, open_vm))
        rate = {"ts": n / ts_s, "ts_off": n / ts_off_s, "stepped": n / stepped_s, "open": n / open_s,
                "batch": n / batch_s}
        print(f"{feeder:34} {len(inputs.net.bus):6d} {n:6d} {rate['ts']:9.1f}/s (nb off {rate['ts_off']:6.1f}) "
              f"{rate['stepped']:9.0f}/s {rate['stepped'] / rate['ts']:8.1f}x {rate['open']:9.0f}/s "
              f"{rate['open'] / rate['ts']:8.1f}x {rate['batch']:9.0f}/s {rate['batch'] / rate['ts']:7.0f}x "
              f"{dv:9.1e}", flush=True)
        print(stage_profile(stepped_s, stepped_summary), flush=True)
        if args.pandapower:
            pp_scenario = parse_scenario(scenario_for(feeder, args.days, "pandapower"))
            pp_s, pp_vm, _ = best(args.repeat, time_twin, pp_scenario, inputs, open_loop=False)
            print(f"{'':34} twin on the pandapower engine: {n / pp_s:7.1f}/s = {n / pp_s / rate['ts']:5.2f}x "
                  f"run_timeseries, max|dvm| {float(np.nanmax(np.abs(pp_vm - ts_vm.to_numpy()))):.1e}", flush=True)
    print("ratios are to run_timeseries with numba; 'nb off' is its rate with numba=False")


if __name__ == "__main__":
    main()
