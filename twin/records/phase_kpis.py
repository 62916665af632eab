"""Per-phase KPIs of a three-phase run, and the three-phase evaluation of each policy's recorded dispatch.

Owns the numbers a grid engineer reads off an unbalanced LV feeder: voltage-violation bus-intervals per phase,
the voltage unbalance factor (|V2| / |V1|) against EN 50160's 2 % limit, the worst phase of every bus, the largest
phase and neutral currents; and ``evaluate_three_phase``, which solves each policy's recorded asset powers (with
the native loads on their phases) on the three-phase model and writes ``three_phase/`` into the run folder:
the KPIs, a per-bus table, and the per-interval tables the dashboard's feeder map colours by (``INTERVAL_TABLES``,
time × bus, float32, in ``twin.records.parts``' matrix layout).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from controllers.api import NetworkLimits
from twin.grid.fast3ph import FastThreePhase
from twin.grid.three_phase import PHASES, ReferenceThreePhase, ThreePhaseResult
from twin.grid.three_phase_run import three_phase_injections
from twin.records.parts import write_part
from twin.records.phase_tables import EN50160_VUF_LIMIT_PERCENT, INTERVAL_TABLES, interval_table_path
from twin.inputs import RunInputs

__all__ = ["EN50160_VUF_LIMIT_PERCENT", "INTERVAL_TABLES", "PhaseKpis", "bus_phase_table",
           "compute_phase_kpis", "evaluate_three_phase", "interval_tables"]

EN50160_SHARE = 0.95


@dataclass(frozen=True)
class PhaseKpis:
    """One policy's per-phase KPIs over the run (bus-intervals count a bus in an interval once)."""

    #: Bus-intervals with that phase's voltage outside [v_min_pu, v_max_pu].
    undervoltage_bus_intervals: dict[str, int]
    overvoltage_bus_intervals: dict[str, int]
    #: Bus-intervals with any phase outside the band (what a balanced model would have to catch).
    voltage_violation_bus_intervals: int
    vm_min_pu: float
    vm_max_pu: float
    vuf_max_percent: float
    #: Bus-intervals above EN 50160's 2 %, and buses where more than 5 % of intervals are (EN 50160 breached).
    vuf_above_limit_bus_intervals: int
    vuf_en50160_breached_buses: int
    #: The phase with the most out-of-band bus-intervals (ties: the one farthest from 1 pu).
    worst_phase: str
    line_i_max_ka: dict[str, float]
    neutral_i_max_ka: float
    not_converged_intervals: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_phase_kpis(result: ThreePhaseResult, limits: NetworkLimits) -> PhaseKpis:
    """KPIs of ``result`` (NaN intervals, i.e. not converged, are left out and counted)."""
    ok = result.converged
    vm = result.vm_pu[ok]
    vuf = result.vuf_percent[ok]
    under = vm < limits.v_min_pu
    over = vm > limits.v_max_pu
    per_phase = (under | over).sum(axis=(0, 1))
    deviation = np.nanmax(np.abs(vm - 1.0), axis=(0, 1)) if vm.size else np.zeros(3)
    worst = int(_worst_by_bus(per_phase[None, :], deviation[None, :])[0])
    above = vuf > EN50160_VUF_LIMIT_PERCENT
    share_above = above.mean(axis=0) if len(vuf) else np.zeros(vuf.shape[1])
    return PhaseKpis(
        undervoltage_bus_intervals={p: int(n) for p, n in zip(PHASES, under.sum(axis=(0, 1)), strict=True)},
        overvoltage_bus_intervals={p: int(n) for p, n in zip(PHASES, over.sum(axis=(0, 1)), strict=True)},
        voltage_violation_bus_intervals=int((under | over).any(axis=2).sum()),
        vm_min_pu=float(np.nanmin(vm)) if vm.size else float("nan"),
        vm_max_pu=float(np.nanmax(vm)) if vm.size else float("nan"),
        vuf_max_percent=float(np.nanmax(vuf)) if vuf.size else float("nan"),
        vuf_above_limit_bus_intervals=int(above.sum()),
        vuf_en50160_breached_buses=int((share_above > 1.0 - EN50160_SHARE).sum()),
        worst_phase=PHASES[worst],
        line_i_max_ka={p: float(np.nanmax(result.line_i_ka[ok][..., k], initial=0.0)) for k, p in enumerate(PHASES)},
        neutral_i_max_ka=float(np.nanmax(result.line_i_n_ka[ok], initial=0.0)),
        not_converged_intervals=int((~ok).sum()),
    )


def bus_phase_table(result: ThreePhaseResult, limits: NetworkLimits) -> pd.DataFrame:
    """Per bus: its worst phase (most out-of-band intervals, then farthest from 1 pu), extreme phase voltages,
    largest and 95th-percentile VUF, and the share of intervals above 2 % (what the feeder map and report show)."""
    ok = result.converged
    vm = result.vm_pu[ok]
    out_of_band = ((vm < limits.v_min_pu) | (vm > limits.v_max_pu)).sum(axis=0)  # [bus, phase]
    deviation = np.nanmax(np.abs(vm - 1.0), axis=0)
    worst = _worst_by_bus(out_of_band, deviation)
    vuf = result.vuf_percent[ok]
    return pd.DataFrame({
        "worst_phase": np.array(PHASES, dtype=object)[worst],
        "vm_min_pu": np.nanmin(vm, axis=(0, 2)),
        "vm_max_pu": np.nanmax(vm, axis=(0, 2)),
        "violations_worst_phase": out_of_band[np.arange(len(worst)), worst],
        "vuf_max_percent": np.nanmax(vuf, axis=0),
        "vuf_p95_percent": np.nanpercentile(vuf, 95, axis=0),
        "vuf_share_above_limit": (vuf > EN50160_VUF_LIMIT_PERCENT).mean(axis=0),
    }, index=pd.Index(result.bus, name="bus"))


def interval_tables(result: ThreePhaseResult, index: pd.DatetimeIndex) -> dict[str, pd.DataFrame]:
    """``INTERVAL_TABLES`` of ``result`` (time × bus id as text, float32)."""
    columns = pd.Index(result.bus.astype(str), name="bus")
    seq = result.v_sequence_pu
    with np.errstate(invalid="ignore", divide="ignore"):
        vuf = 100.0 * seq[..., 2] / seq[..., 1]
    blocks = {"vm_a_pu": result.vm_pu[..., 0], "vm_b_pu": result.vm_pu[..., 1], "vm_c_pu": result.vm_pu[..., 2],
              "v1_pu": seq[..., 1], "vuf_percent": vuf}
    return {name: pd.DataFrame(blocks[name].astype(np.float32), index=index, columns=columns)
            for name in INTERVAL_TABLES}


def _worst_by_bus(count: np.ndarray, deviation: np.ndarray) -> np.ndarray:
    # Most violations first, then the larger deviation: a key that orders both at once.
    scale = np.nanmax(deviation, initial=0.0) + 1.0
    return np.argmax(count + np.nan_to_num(deviation) / scale, axis=1)


def evaluate_three_phase(inputs: RunInputs, asset_p_mw: dict[str, pd.DataFrame], limits: NetworkLimits, *,
                         engine: Literal["fast", "pandapower"] = "fast",
                         out: Path | None = None) -> dict[str, tuple[ThreePhaseResult, PhaseKpis]]:
    """Solve each policy's recorded asset powers (time × asset) on the three-phase model; write
    ``three_phase/kpis.json``, ``three_phase/<policy>-buses.parquet`` and the policy's ``INTERVAL_TABLES``
    under ``out`` if given."""
    solver = FastThreePhase.from_net(inputs.net) if engine == "fast" else ReferenceThreePhase.from_net(inputs.net)
    results: dict[str, tuple[ThreePhaseResult, PhaseKpis]] = {}
    index: dict[str, pd.DatetimeIndex] = {}
    for policy, frame in asset_p_mw.items():
        p, q = three_phase_injections(inputs, pd.DatetimeIndex(frame.index),
                                      frame.reindex(columns=inputs.assets.index, fill_value=0.0).to_numpy())
        result = solver.solve(p, q)
        results[policy] = (result, compute_phase_kpis(result, limits))
        index[policy] = pd.DatetimeIndex(frame.index, name="time")
    if out is not None:
        folder = out / "three_phase"
        folder.mkdir(parents=True, exist_ok=True)
        for policy, (result, _) in results.items():
            table = bus_phase_table(result, limits)
            tmp = folder / f"{policy}-buses.parquet.tmp"
            table.to_parquet(tmp)
            os.replace(tmp, folder / f"{policy}-buses.parquet")
            for name, frame in interval_tables(result, index[policy]).items():
                write_part(frame, interval_table_path(out, policy, name), matrix=True)
        tmp = folder / "kpis.json.tmp"
        tmp.write_text(json.dumps({policy: k.to_dict() for policy, (_, k) in results.items()}, indent=1),
                       encoding="utf-8")
        os.replace(tmp, folder / "kpis.json")
    return results
