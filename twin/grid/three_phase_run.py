"""A three-phase run's grid side: its metadata, and the uncontrolled three-phase replay of its inputs.

Owns what a ``[power_flow] phases = "three_phase"`` run states about itself (the phase allocation, the
zero-sequence data that had to be assumed) and the open-loop replay with no control: native loads and
generators from the profiles, PV at its available power, flexible loads at their base, batteries idle and EVs
charging at full power from arrival until their session's energy is delivered, spread onto (bus, phase) and
solved by the fast path (power-grid-model, one batch) or by the model of record (``runpp_3ph``, step by step).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd

from grids.fleet import AssetKind
from twin.grid.fast3ph import FastThreePhase
from twin.grid.phase_injections import PhaseIncidence
from twin.grid.three_phase import ReferenceThreePhase, ThreePhaseError, ThreePhaseResult, prepare_three_phase_net
from twin.inputs import RunInputs

__all__ = ["phase_metadata", "three_phase_replay", "uncontrolled_asset_mw"]


def phase_metadata(inputs: RunInputs) -> dict[str, Any]:
    """What the run's metadata says about its phases (``inputs.phases`` must be set)."""
    if inputs.phases is None:
        raise ThreePhaseError("phase metadata asked of a balanced run")
    _, assumptions = prepare_three_phase_net(inputs.net)
    counts = inputs.phases.loads.value_counts().reindex(["a", "b", "c"], fill_value=0)
    return {
        "phases": "three_phase",
        "allocation": inputs.phases.method,
        "loads_per_phase": {str(k): int(v) for k, v in counts.items()},
        "assets_per_phase": {str(k): int(v) for k, v in inputs.phases.assets.value_counts().sort_index().items()},
        "zero_sequence_assumptions": list(assumptions) or ["none: the feeder carries its own 3-phase data"],
    }


def uncontrolled_asset_mw(inputs: RunInputs, index: pd.DatetimeIndex) -> np.ndarray:
    """``[t, asset]`` MW (load convention) with no control: PV at availability, flex at base, batteries idle,
    each EV session charging at ``p_max_mw`` from arrival until its energy is in (last interval partial)."""
    assets = inputs.assets
    out = np.zeros((len(index), len(assets)))
    kinds = assets["kind"].astype(str).to_numpy()
    pv = np.flatnonzero(kinds == AssetKind.PV)
    flex = np.flatnonzero(kinds == AssetKind.FLEX_LOAD)
    out[:, pv] = -inputs.pv_avail_mw.reindex(index)[assets.index[pv]].to_numpy()
    out[:, flex] = inputs.flex_base_mw.reindex(index)[assets.index[flex]].to_numpy()
    sessions = inputs.ev_sessions
    if len(sessions) and len(index) > 1:
        step_h = (index[1] - index[0]) / pd.Timedelta("1h")
        col = assets.index.get_indexer(sessions["asset_id"])
        p_max = assets["p_max_mw"].to_numpy()[col]
        eta = assets["eta_charge"].to_numpy()[col]
        start = index.searchsorted(sessions["arrival"])
        stop = np.minimum(index.searchsorted(sessions["departure"]), len(index))
        full = sessions["energy_mwh"].to_numpy() / (p_max * eta * step_h)  # intervals at full power
        n_steps = np.minimum(np.ceil(full).astype(int), np.maximum(stop - start, 0))
        rows = np.repeat(start, n_steps) + _ranges(n_steps)
        session = np.repeat(np.arange(len(sessions)), n_steps)
        share = np.clip(full[session] - _ranges(n_steps), 0.0, 1.0)
        keep = rows < len(index)
        np.add.at(out, (rows[keep], col[session][keep]), (p_max[session] * share)[keep])
    return out


def _ranges(counts: np.ndarray) -> np.ndarray:
    """0..n-1 for each n of ``counts``, concatenated."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=int)
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total) - offsets


def three_phase_injections(inputs: RunInputs, index: pd.DatetimeIndex,
                           asset_mw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``p_mw, q_mvar [t, bus, phase]`` for ``index`` with the assets at ``asset_mw`` (reactive power: the native
    loads' own; assets at unity power factor, as in the balanced twin)."""
    if inputs.phases is None:
        raise ThreePhaseError("a three-phase replay needs a run prepared with phases = 'three_phase'")
    net = inputs.net
    incidence = PhaseIncidence.build(net, load_phase=inputs.phases.loads, assets=inputs.assets,
                                     asset_phase=inputs.phases.assets)
    prof = inputs.profiles
    load_p = prof.load_p_mw.reindex(index)[net.load.index].to_numpy()
    load_q = prof.load_q_mvar.reindex(index)[net.load.index].to_numpy()
    sgen_p = prof.sgen_p_mw.reindex(index)[net.sgen.index].to_numpy() if len(net.sgen) else np.zeros((len(index), 0))
    p = incidence.spread(load_p, sgen_p, asset_mw)
    q = incidence.spread(load_q, np.zeros_like(sgen_p), np.zeros_like(asset_mw))
    return p, q


def three_phase_replay(inputs: RunInputs, index: pd.DatetimeIndex, *,
                       engine: Literal["fast", "pandapower"] = "fast") -> ThreePhaseResult:
    """The uncontrolled replay over ``index``: the fast path in one batch, or ``runpp_3ph`` interval by interval."""
    p, q = three_phase_injections(inputs, index, uncontrolled_asset_mw(inputs, index))
    solver = FastThreePhase.from_net(inputs.net) if engine == "fast" else ReferenceThreePhase.from_net(inputs.net)
    return solver.solve(p, q)
