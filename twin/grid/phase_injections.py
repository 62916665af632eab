"""Per-bus, per-phase injections of a three-phase run: loads, generators and fleet assets onto (bus, phase).

Owns the sparse incidence from elements (native loads, native generators, fleet assets, in that column order) to
the ``[bus, phase]`` grid the three-phase solvers take. A single-phase element puts all its power on its phase; a
three-phase one (``abc``) a third on each. Native generators (``net.sgen``) are three-phase. Load convention
throughout (a producing PV system is negative). One sparse product per batch, no per-element Python work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandapower as pp
import pandas as pd
import scipy.sparse as sp

from twin.grid.three_phase import ThreePhaseError

__all__ = ["PhaseIncidence"]

_PHASE_ROW = {"a": (0,), "b": (1,), "c": (2,), "abc": (0, 1, 2)}


@dataclass(frozen=True)
class PhaseIncidence:
    """``matrix[(bus_position * 3 + phase), element]``: the share of each element's power on each bus phase."""

    bus: pd.Index
    loads: pd.Index
    sgens: pd.Index
    assets: pd.Index
    matrix: sp.csr_matrix

    @classmethod
    def build(cls, net: pp.pandapowerNet, *, load_phase: pd.Series, assets: pd.DataFrame,
              asset_phase: pd.Series) -> PhaseIncidence:
        """From the net's loads and sgens and the fleet (``assets['bus']``), with their phases."""
        if not load_phase.index.equals(net.load.index):
            raise ThreePhaseError("load phases must be given for exactly the feeder's loads, in its order")
        if not asset_phase.index.equals(assets.index):
            raise ThreePhaseError("asset phases must be given for exactly the fleet's assets, in its order")
        buses = np.concatenate([net.load["bus"].to_numpy(), net.sgen["bus"].to_numpy(), assets["bus"].to_numpy()])
        phases = np.concatenate([load_phase.to_numpy(dtype=object), np.full(len(net.sgen), "abc", dtype=object),
                                 asset_phase.to_numpy(dtype=object)])
        unknown = sorted({str(p) for p in phases} - set(_PHASE_ROW))
        if unknown:
            raise ThreePhaseError(f"phase {unknown[0]!r} is not one of {sorted(_PHASE_ROW)}")
        positions = net.bus.index.get_indexer(buses)
        if (positions < 0).any():
            raise ThreePhaseError(f"bus {buses[positions < 0][0]!r} is not a bus of the feeder")
        single = np.array([len(_PHASE_ROW[p]) == 1 for p in phases])
        first = np.array([_PHASE_ROW[p][0] for p in phases])
        cols_single = np.flatnonzero(single)
        cols_three = np.flatnonzero(~single)
        rows = np.concatenate([positions[cols_single] * 3 + first[cols_single],
                               (positions[cols_three, None] * 3 + np.arange(3)[None, :]).ravel()])
        cols = np.concatenate([cols_single, np.repeat(cols_three, 3)])
        vals = np.concatenate([np.ones(len(cols_single)), np.full(3 * len(cols_three), 1.0 / 3.0)])
        matrix = sp.csr_matrix((vals, (rows, cols)), shape=(3 * len(net.bus), len(phases)))
        return cls(bus=pd.Index(net.bus.index), loads=pd.Index(net.load.index), sgens=pd.Index(net.sgen.index),
                   assets=pd.Index(assets.index), matrix=matrix)

    def spread(self, load_mw: np.ndarray, sgen_mw: np.ndarray, asset_mw: np.ndarray) -> np.ndarray:
        """``[t, bus, phase]`` from ``load_mw[t, load]`` (consumption), ``sgen_mw[t, sgen]`` (generation, so it
        enters negated) and ``asset_mw[t, asset]`` (load convention)."""
        steps = load_mw.shape[0]
        for name, arr, n in (("load", load_mw, len(self.loads)), ("sgen", sgen_mw, len(self.sgens)),
                             ("asset", asset_mw, len(self.assets))):
            if arr.shape != (steps, n):
                raise ThreePhaseError(f"{name} powers must be [{steps} intervals, {n}]; got {arr.shape}")
        elements = np.concatenate([load_mw, -sgen_mw, asset_mw], axis=1)
        return (self.matrix @ elements.T).T.reshape(steps, len(self.bus), 3)
