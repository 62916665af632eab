"""Benchmark of the DePIN agents' proximal local step (run by hand: ``python bench/bench_local_steps.py``).

Owns nothing the product uses. It builds a synthetic fleet the way ``grids.fleet.build_fleet`` would (one
participant per load; per participant one PV system, a battery with probability 0.5, an EV charger with 0.3
(a quarter of them V2G), a flexible load with 0.3; ``FleetRatings`` defaults: kW-scale LV households), fills
one interval's ``DispatchInputs`` with plausible numbers (midday PV, EVs plugged in for part of the horizon
with an energy need, flexible requests with a 4 h window, batteries at a random SOC), and times
``AssetProx.solve`` at ``rho`` = 1e4 EUR/MW^2 (``NetworkAdmm``'s default):

* cold: the first solve of an interval (interior point + polish for every chain);
* warm: later ADMM rounds, targets moved by a small step (``--step-mw``), the previous active set first;
* one participant alone (an edge device's cost per round), cold and warm.

Prints milliseconds per call (median and max over ``--rounds`` warm rounds) and the solver diagnostics. On a
shared machine the numbers move with the load; the process CPU time is printed next to the wall time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd

from controllers.dispatch_model import DispatchInputs, DispatchWeights
from controllers.local_steps import KIND_ORDER, AssetProx

T0 = pd.Timestamp("2024-06-01 08:00", tz="UTC")
STEP = pd.Timedelta("15min")
RHO = 1.0e4


def fleet(participants: int, rng: np.random.Generator) -> pd.DataFrame:
    """An asset table like ``build_fleet`` makes with ``FleetRatings()`` (ids name their participant)."""
    rows: dict[str, dict[str, object]] = {}
    base = {"e_max_mwh": 0.0, "eta_charge": 1.0, "eta_discharge": 1.0, "soc_min": 0.0, "soc_max": 1.0,
            "soc_init": 0.0, "v2g": False, "flex_window": pd.Timedelta(0)}
    for i in range(participants):
        pid, bus = f"p-{i}", i % 200
        peak = float(rng.uniform(0.003, 0.008))  # the participant's load peak (MW)
        rows[f"pv-{i:04d}"] = dict(base, kind="pv", bus=bus, participant_id=pid, p_max_mw=peak, s_max_mva=1.1 * peak)
        if rng.random() < 0.5:
            rows[f"bat-{i:04d}"] = dict(base, kind="battery", bus=bus, participant_id=pid, p_max_mw=0.005,
                                        e_max_mwh=0.010, eta_charge=0.95, eta_discharge=0.95, soc_min=0.1,
                                        soc_max=0.95, soc_init=0.5, s_max_mva=0.0055)
        if rng.random() < 0.3:
            rows[f"ev-{i:04d}"] = dict(base, kind="ev_charger", bus=bus, participant_id=pid, p_max_mw=0.011,
                                       eta_charge=0.92, eta_discharge=0.92, v2g=bool(rng.random() < 0.25),
                                       s_max_mva=0.011)
        if rng.random() < 0.3:
            rows[f"flex-{i:04d}"] = dict(base, kind="flex_load", bus=bus, participant_id=pid, p_max_mw=0.003,
                                         flex_window=pd.Timedelta("4h"), s_max_mva=0.003)
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("asset_id")


def interval_inputs(prox: AssetProx, assets: pd.DataFrame, rng: np.random.Generator) -> DispatchInputs:
    """One interval's numbers, in the dispatch model's kind order, computed as ``inputs_from_observation``
    would from a plausible observation."""
    T, h = prox.horizon, prox.hours
    ids = prox.ids
    hours = np.arange(T) * h
    a = assets
    b, e, f, v = (ids[k] for k in KIND_ORDER)
    e_max = a.loc[b, "e_max_mwh"].to_numpy(float)
    lo, hi = 0.1 * e_max, 0.95 * e_max
    soc0 = rng.uniform(lo, hi)
    pmax_b = np.tile(a.loc[b, "p_max_mw"].to_numpy(float)[:, None], (1, T))
    p_e = a.loc[e, "p_max_mw"].to_numpy(float)
    v2g = a.loc[e, "v2g"].to_numpy(bool)
    connected = rng.random(len(e)) < 0.6
    departure = rng.uniform(0.5, 1.5 * T * h, len(e))
    share = np.clip((departure[:, None] - hours[None, :]) / h, 0.0, 1.0) * connected[:, None]
    ev_ch = share * p_e[:, None]
    need = connected * rng.uniform(0.002, 0.03, len(e))
    after = np.minimum(np.maximum(departure - T * h, 0.0) * p_e * 0.92, need)
    fbase = rng.uniform(0.0, 0.003, (len(f), T)) * (rng.random((len(f), T)) < 0.6)
    fpmax = np.tile(a.loc[f, "p_max_mw"].to_numpy(float)[:, None], (1, T))
    b0 = rng.uniform(0.0, 0.002, len(f)) * (rng.random(len(f)) < 0.5)
    window = 16
    requested = np.concatenate([np.zeros((len(f), 1)), np.cumsum(fbase * h, axis=1)], axis=1)
    t_idx = np.arange(1, T + 1)
    cap = requested[:, 1:] - np.take_along_axis(requested, np.maximum(t_idx[None, :] - window, 0), axis=1)
    cap += b0[:, None] * (t_idx[None, :] < rng.integers(1, T + 1, len(f))[:, None])
    sun = np.clip(np.sin(np.pi * (8 + hours) / 24.0 - np.pi / 4), 0.0, None)
    pv = a.loc[v, "p_max_mw"].to_numpy(float)[:, None] * sun[None, :] * rng.uniform(0.6, 1.0, (len(v), T))
    return DispatchInputs(
        time=T0, periods=pd.date_range(T0, periods=T, freq=STEP), price_eur_per_mwh=rng.uniform(50, 300, T),
        head_fixed_mw=-pv.sum(axis=0), head_limit_mw=1e6, billed_peak_mw=0.0, bat_soc0_mwh=soc0,
        bat_soc_target_mwh=soc0, bat_p_max_mw=pmax_b, ev_ch_max_mw=ev_ch, ev_dis_max_mw=ev_ch * v2g[:, None],
        ev_need_mwh=need, ev_need_after_horizon_mwh=after, ev_hours_to_departure=departure, flex_base_mw=fbase,
        flex_p_max_mw=fpmax, flex_backlog0_mwh=b0, flex_backlog_cap_mwh=cap, pv_avail_mw=pv, v_rows=(),
        v_sens_pu_per_mw=np.zeros((0, 0)), v_lo_headroom_pu=np.zeros((0, T)), v_hi_headroom_pu=np.zeros((0, T)),
        l_rows=(), l_sens_percent_per_mw=np.zeros((0, 0)), l_headroom_percent=np.zeros((0, T)))


def timed(fn):  # type: ignore[no-untyped-def]
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def run(assets: pd.DataFrame, *, horizon: int, rounds: int, step_mw: float, seed: int, label: str) -> None:
    rng = np.random.default_rng(seed)
    prox, build_ms, _ = timed(lambda: AssetProx.build(assets, step=STEP, horizon=horizon, weights=DispatchWeights()))
    inputs = interval_inputs(prox, assets, rng)
    _, inputs_ms, _ = timed(lambda: prox.set_inputs(inputs))
    n = len(assets)
    weight = np.full((n, horizon), RHO)
    p_max = assets["p_max_mw"].to_numpy(float)[:, None]
    target = rng.normal(0.0, 0.5, (n, horizon)) * p_max
    cold, cold_ms, cold_cpu = timed(lambda: prox.solve(weight, target))
    warm_ms, warm_cpu, its = [], [], []
    result = cold
    for _ in range(rounds):
        target = target + rng.normal(0.0, step_mw, target.shape)
        result, ms, cpu = timed(lambda t=target: prox.solve(weight, t))
        warm_ms.append(ms)
        warm_cpu.append(cpu)
        its.append((result.active_set_iterations, result.ipm_chains))
    counts = assets["kind"].value_counts().to_dict()
    print(f"{label}: {n} assets {counts}, T={horizon}; build {build_ms:.0f} ms, set_inputs {inputs_ms:.1f} ms")
    print(f"  cold  {cold_ms:8.1f} ms (cpu {cold_cpu:.1f})  ipm iterations {cold.ipm_iterations}, "
          f"active-set solves {cold.active_set_iterations}, max KKT {cold.max_kkt_residual:.1e}, "
          f"unverified {len(cold.unverified)}")
    if rounds:
        fell_back = sum(1 for _, i in its if i > 0)
        print(f"  warm  {statistics.median(warm_ms):8.1f} ms median, {max(warm_ms):.1f} max (cpu median "
              f"{statistics.median(warm_cpu):.1f}) over {rounds} rounds; active-set solves "
              f"{statistics.median([a for a, _ in its]):.0f} median; rounds where some chain needed the "
              f"interior point: {fell_back} (chains per round: {max(i for _, i in its)} at most); "
              f"max KKT {result.max_kkt_residual:.1e}, "
              f"unverified {len(result.unverified)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=1000)
    parser.add_argument("--horizons", type=int, nargs="+", default=[24, 48])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--step-mw", type=float, default=1e-4, help="per-round change of the targets (MW)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    assets = fleet(args.participants, np.random.default_rng(args.seed))
    for horizon in args.horizons:
        run(assets, horizon=horizon, rounds=args.rounds, step_mw=args.step_mw, seed=args.seed,
            label=f"fleet of {args.participants} participants")
    # The richest participant (most assets) alone: an edge device's local step.
    sizes = assets.groupby("participant_id").size()
    one = assets[assets["participant_id"] == sizes.idxmax()]
    for horizon in args.horizons:
        run(one, horizon=horizon, rounds=args.rounds, step_mw=args.step_mw, seed=args.seed,
            label=f"participant {sizes.idxmax()} alone")


if __name__ == "__main__":
    main()
