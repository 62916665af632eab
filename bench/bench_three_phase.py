"""Benchmark: a week of uncontrolled three-phase replay on the IEEE European LV feeder (907 buses), fast path
(power-grid-model, one batch) against pandapower's ``runpp_3ph`` stepped interval by interval, in one run.

    flock /tmp/gridtwin-bench.lock .venv/bin/python bench/bench_three_phase.py [--days 7] [--sample 12]

Both solve the same ``[t, bus, phase]`` injections (twin.grid.three_phase_run: native single-phase houses on
their own phases, a seeded fleet with PV at availability and EVs charging at full power on arrival, no control).
``runpp_3ph`` takes over a second per interval here, so it is timed on ``--sample`` intervals spread evenly over
the week (after one untimed warm-up call that compiles its numba kernels) and its week is extrapolated from
their mean: the printout says so. The fast path is timed on the whole week, including building its model, and
checked against ``runpp_3ph`` on every sampled interval. Exit code 1 if the ratio is below 50 or the check fails.
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np
import pandas as pd

from twin.grid.fast3ph import FastThreePhase
from twin.grid.three_phase import ReferenceThreePhase
from twin.grid.three_phase_run import three_phase_injections, uncontrolled_asset_mw
from twin.inputs import build_inputs
from twin.scenario import parse_scenario

TARGET_RATIO = 50.0
TOLERANCE_PU = 1e-6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--sample", type=int, default=12, help="runpp_3ph intervals timed (spread over the period)")
    parser.add_argument("--start", default="2016-06-06")
    args = parser.parse_args()
    start = pd.Timestamp(args.start, tz="UTC")
    scenario = parse_scenario({
        "name": "bench-three-phase", "feeder": "ieee-eu-lv", "seed": 7,
        "start": start.isoformat(), "end": (start + pd.Timedelta(days=args.days)).isoformat(),
        "power_flow": {"engine": "fast", "phases": "three_phase"},
        "fleet": {"pv_penetration": 0.6, "battery_share": 0.0, "ev_share": 0.4, "flex_share": 0.0},
        "controllers": [{"name": "none", "target": "controllers.baseline:NoControl"}],
    })
    inputs = build_inputs(scenario)
    index = pd.date_range(scenario.start, scenario.end, freq=scenario.step, inclusive="left")
    p, q = three_phase_injections(inputs, index, uncontrolled_asset_mw(inputs, index))
    steps = len(index)
    print(f"IEEE European LV feeder: {len(inputs.net.bus)} buses, {len(inputs.net.load)} single-phase houses, "
          f"{len(inputs.assets)} assets; {steps} intervals of {scenario.step} ({args.days} days)")
    print(f"phase allocation: {inputs.phases.method if inputs.phases else '-'}")

    t0 = time.perf_counter()
    fast = FastThreePhase.from_net(inputs.net)
    result = fast.solve(p, q)
    fast_s = time.perf_counter() - t0
    print(f"fast path (power-grid-model batch, model build included): {fast_s:.2f} s for {steps} intervals "
          f"({fast_s / steps * 1e3:.2f} ms per interval), all converged: {bool(result.converged.all())}")

    reference = ReferenceThreePhase.from_net(inputs.net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference.solve(p[:1], q[:1])  # warm-up: numba compiles runpp_3ph's kernels once per process
    sample = np.unique(np.linspace(0, steps - 1, args.sample).round().astype(int))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = reference.solve(p[sample], q[sample])
    ref_per_step = (time.perf_counter() - t0) / len(sample)
    ref_week = ref_per_step * steps
    print(f"runpp_3ph stepped: {ref_per_step:.3f} s per interval, mean of {len(sample)} sampled intervals; "
          f"the {steps}-interval period EXTRAPOLATED from that mean: {ref_week:.0f} s")

    dv = np.abs(ref.v_complex - result.v_complex[sample])
    di = np.abs(ref.line_i_ka - result.line_i_ka[sample])
    print(f"agreement on the sampled intervals: max |dV| {np.nanmax(dv):.2e} pu, max |dI| {np.nanmax(di) * 1e3:.2e} A, "
          f"both converged: {bool(ref.converged.all())}")
    vuf = result.vuf_percent
    print(f"week (fast path): vm {np.nanmin(result.vm_pu):.4f}..{np.nanmax(result.vm_pu):.4f} pu, "
          f"max VUF {np.nanmax(vuf):.3f} %, bus-intervals above the EN 50160 2 % limit: {int((vuf > 2.0).sum())}")
    ratio = ref_week / fast_s
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"ratio runpp_3ph (extrapolated) / fast path: {ratio:.0f}x (target >= {TARGET_RATIO:.0f}x); "
          f"peak RSS of this process {peak_mb:.0f} MB")
    ok = ratio >= TARGET_RATIO and np.nanmax(dv) <= TOLERANCE_PU and bool(ref.converged.all())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
