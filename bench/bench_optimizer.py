"""Benchmark of the dispatch model's re-solve time (run by hand: ``python bench/bench_optimizer.py``).

Owns nothing the product uses. It builds the 96-period (15 min, 24 h) model for synthetic mixed fleets of
10 / 100 / 500 assets, re-solves it with changed Parameter values (prices, base load, SOC: a receding
horizon), and prints the median wall time split into cvxpy overhead (parameter update, compilation through the
cached DPP map, unpacking) and solver time (``problem.solver_stats.solve_time``), plus the process CPU time
of the whole re-solve (the honest number on a shared, loaded machine), for Clarabel (re-solved through the
canonical form kept from cvxpy, and through ``problem.solve`` as ``CLARABEL-cvxpy``), warm-started HiGHS and OSQP, with
and without network constraints (10 monitored buses on a synthetic 40-bus radial feeder; the sensitivity
matrix changes every re-solve, as a refreshed linearization would).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import pandas as pd

from controllers.api import AssetKind, Forecast, Observation, Sensitivities
from controllers.dispatch_model import DispatchModel, DispatchWeights

STEP = pd.Timedelta("15min")
HORIZON = 96
N_BUSES = 40
T0 = pd.Timestamp("2024-06-01", tz="UTC")
#: Solver label -> cvxpy options. OSQP: loose tolerances + warm start (cvxpy's default for re-solves).
#: CLARABEL-fast: 1e-6 tolerances and no iterative refinement (halves the per-iteration cost here).
SOLVER_OPTIONS: dict[str, dict[str, object]] = {
    "CLARABEL": {},
    "CLARABEL-fast": {"tol_gap_abs": 1e-6, "tol_gap_rel": 1e-6, "tol_feas": 1e-6, "iterative_refinement_enable": False},
    "OSQP": {"eps_abs": 1e-3, "eps_rel": 1e-3, "max_iter": 4000},
    "HIGHS": {},
    "CLARABEL-cvxpy": {},
}
#: Labels solved through cvxpy's problem.solve (DispatchModel.solve(direct=False)); the others through the
#: canonical form kept from cvxpy (Clarabel: the same numbers; HiGHS: warm-started simplex).
VIA_CVXPY = frozenset({"CLARABEL-cvxpy"})
KINDS = (AssetKind.BATTERY, AssetKind.EV_CHARGER, AssetKind.FLEX_LOAD, AssetKind.PV)


def fleet(n: int, rng: np.random.Generator) -> pd.DataFrame:
    rows = {}
    for i in range(n):
        kind = KINDS[i % 4]
        p_max = float(rng.uniform(0.005, 0.02))
        rows[f"a{i:04d}"] = dict(
            kind=kind,
            bus=int(rng.integers(1, N_BUSES)),
            participant_id=f"p{i}",
            p_max_mw=p_max,
            e_max_mwh=2 * p_max if kind == AssetKind.BATTERY else 0.0,
            eta_charge=0.95,
            eta_discharge=0.95,
            soc_min=0.1,
            soc_max=0.9,
            soc_init=0.5,
            s_max_mva=1.1 * p_max,
            v2g=kind == AssetKind.EV_CHARGER and i % 8 == 1,
            flex_window=pd.Timedelta("2h"),
        )
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("asset_id")


def radial_sensitivities(rng: np.random.Generator, scale: float) -> pd.DataFrame:
    """dV/dP of a radial feeder: bus i's voltage responds to bus j by the shared path resistance."""
    depth = np.arange(N_BUSES)
    shared = np.minimum.outer(depth, depth) * (depth[:, None] > 0) * (depth[None, :] > 0)
    return pd.DataFrame(-scale * shared * rng.uniform(0.9, 1.1), index=depth, columns=depth)


def observation(assets: pd.DataFrame, rng: np.random.Generator, k: int) -> Observation:
    idx = pd.date_range(T0 + k * STEP, periods=HORIZON, freq=STEP)
    hours = (idx.hour + idx.minute / 60).to_numpy()
    base = pd.DataFrame(
        rng.uniform(0.0, 0.03, (HORIZON, N_BUSES)) * (1 + np.cos((hours - 19) / 24 * 2 * np.pi))[:, None],
        index=idx,
        columns=range(N_BUSES),
    )
    sun = np.clip(np.sin((hours - 6) / 12 * np.pi), 0, None)
    pv_ids = assets.index[assets["kind"] == AssetKind.PV]
    pv = pd.DataFrame(np.outer(sun, assets.loc[pv_ids, "p_max_mw"]), index=idx, columns=pv_ids)
    fl_ids = assets.index[assets["kind"] == AssetKind.FLEX_LOAD]
    flex = pd.DataFrame(0.5 * np.tile(assets.loc[fl_ids, "p_max_mw"].to_numpy(), (HORIZON, 1)), index=idx, columns=fl_ids)
    price = pd.Series(60 + 40 * np.sin((hours - 12) / 24 * 2 * np.pi) + rng.normal(0, 3, HORIZON), index=idx)
    state = pd.DataFrame(index=assets.index)
    state["available"] = True
    state["soc_mwh"] = assets["e_max_mwh"] * rng.uniform(0.3, 0.7, len(assets))
    state["ev_connected"] = True
    state["ev_energy_needed_mwh"] = assets["p_max_mw"] * rng.uniform(0.5, 3.0, len(assets))
    state["ev_departure"] = idx[0] + pd.to_timedelta(rng.uniform(2, 12, len(assets)), unit="h")
    state["flex_backlog_mwh"] = 0.0
    state["flex_deadline"] = pd.Series(pd.NaT, index=assets.index, dtype="datetime64[ns, UTC]")
    S = radial_sensitivities(rng, scale=0.002)  # far end: ~0.08 pu/MW
    p_bus = base.iloc[0]
    sens = Sensitivities(
        vm_pu=pd.Series(1.02 + S.to_numpy() @ p_bus.to_numpy(), index=S.index),
        dvm_dp_pu_per_mw=S,
        dvm_dq_pu_per_mvar=0.5 * S,
        loading_percent=pd.Series(dtype=float),
        dloading_dp_percent_per_mw=pd.DataFrame(columns=S.columns, dtype=float),
        p_bus_mw=p_bus,
        q_bus_mvar=0.0 * p_bus,
    )
    return Observation(
        time=idx[0], step=STEP, assets=assets, state=state, forecast=Forecast(base, pv, flex, price), sensitivities=sens
    )


def bench(
    n: int,
    *,
    solver: str,
    network_rows: int,
    network_periods: int | None,
    repeats: int,
    demand_charge_eur_per_mw: float = 100.0,
) -> dict[str, object]:
    rng = np.random.default_rng(n)
    assets = fleet(n, rng)
    t = time.perf_counter()
    model = DispatchModel.build(
        assets,
        step=STEP,
        horizon=HORIZON,
        weights=DispatchWeights(demand_charge_eur_per_mw=demand_charge_eur_per_mw),
        n_voltage_rows=network_rows,
        network_periods=network_periods,
        head_limit=False,
    )
    build_s = time.perf_counter() - t
    options = dict(SOLVER_OPTIONS[solver])
    direct = solver not in VIA_CVXPY
    label = solver
    solver = solver.split("-")[0]
    observations = [observation(assets, rng, k) for k in range(repeats + 1)]
    inputs = [model.inputs_from_observation(o) for o in observations]
    first = model.solve(inputs[0], solver=solver, solver_options=options, direct=direct)  # compiles the DPP map
    walls, solves, cpus, statuses = [], [], [], []
    for inp in inputs[1:]:
        cpu = time.process_time()
        sol = model.solve(inp, solver=solver, solver_options=options, direct=direct)
        cpus.append(time.process_time() - cpu)
        walls.append(sol.wall_time_s)
        solves.append(sol.solve_time_s)
        statuses.append("fallback" if sol.fallback else sol.status)
    wall, solve = statistics.median(walls), statistics.median(solves)
    return {
        "assets": n,
        "solver": label,
        "network": ("off" if not network_rows else f"{network_rows} buses x {network_periods or HORIZON} periods")
        + ("" if demand_charge_eur_per_mw else ", no peak"),
        "build_s": build_s,
        "first_s": first.wall_time_s,
        "median_wall_ms": 1e3 * wall,
        "median_solver_ms": 1e3 * solve,
        "median_cvxpy_ms": 1e3 * (wall - solve),
        "median_cpu_ms": 1e3 * statistics.median(cpus),
        "statuses": ",".join(sorted(set(statuses))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--solvers", nargs="+", default=list(SOLVER_OPTIONS), choices=list(SOLVER_OPTIONS))
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {HORIZON} periods of {STEP}")
    # (voltage rows, network periods, demand charge): the demand charge couples all assets in every period.
    variants = [(0, None, 0.0), (0, None, 100.0), (10, 16, 100.0), (10, None, 100.0)]
    header = f"{'assets':>6} {'solver':>13} {'network':>33} {'wall ms':>9} {'solver ms':>9} {'cvxpy ms':>9} {'cpu ms':>9} {'first s':>8}  status"
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        for rows, periods, demand_charge in variants:
            for solver in args.solvers:
                if solver == "OSQP" and n > 200:
                    # cvxpy's QP path densifies an (n_variables x n_parameters) coefficient matrix while
                    # compiling: ~61 GiB at 500 assets. Skipped until the model has fewer Parameters.
                    print(f"{n:>6} {solver:>13} {'skipped: cvxpy QP compile needs ~61 GiB':>33}", flush=True)
                    continue
                repeats = args.repeats if n <= 100 else max(2, args.repeats // 2)
                r = bench(
                    n,
                    solver=solver,
                    network_rows=rows,
                    network_periods=periods,
                    repeats=repeats,
                    demand_charge_eur_per_mw=demand_charge,
                )
                print(
                    f"{r['assets']:>6} {r['solver']:>13} {r['network']:>33} {r['median_wall_ms']:>9.1f}"
                    f" {r['median_solver_ms']:>9.1f} {r['median_cvxpy_ms']:>9.1f} {r['median_cpu_ms']:>9.1f}"
                    f" {r['first_s']:>8.2f}  {r['statuses']}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
