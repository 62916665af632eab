"""AC power flow of one twin copy: the only module that calls pandapower's solvers.

pandapower is the model of record (``PandapowerEngine``); ``twin.grid.fastpf`` may serve long studies when the
scenario asks for it, and must match ``pandapower.runpp`` to 1e-6 pu.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pandapower as pp
import pandas as pd

from controllers.api import AssetKind, Sensitivities
from twin.grid.fastpf import FastPowerFlow
from twin.grid.injections import bus_injections
from twin.grid.results import PowerFlowResult
from twin.grid.sensitivity import compute_sensitivities, sensitivities_at


class GridModel:
    """One twin copy's pandapower net with the fleet attached, and the power flow over it.

    Fleet assets become their own pandapower elements (PV → sgen, battery → storage, EV/flex → load) so
    the feeder's native loads and generators keep their identity. This is the single place where the load
    convention is converted to pandapower's generator convention for sgens.
    """

    def __init__(self, net: pp.pandapowerNet, assets: pd.DataFrame, *, engine: str = "pandapower") -> None:
        if engine not in ("pandapower", "fast"):
            raise ValueError(f"power_flow.engine={engine!r}: expected 'pandapower' or 'fast'")
        self.net = copy.deepcopy(net)
        self.engine = engine
        self.native_load_index = self.net.load.index.copy()
        self.native_sgen_index = self.net.sgen.index.copy()
        self.asset_ids = assets.index
        kinds = assets["kind"].astype(str)
        self._pv = assets.index[kinds == AssetKind.PV]
        self._bat = assets.index[kinds == AssetKind.BATTERY]
        self._load_like = assets.index[kinds.isin([AssetKind.EV_CHARGER, AssetKind.FLEX_LOAD])]
        self._pv_el = self._add(pp.create_sgen, assets.loc[self._pv], prefix="fleet-pv")
        self._bat_el = self._add(pp.create_storage, assets.loc[self._bat], prefix="fleet-bat", max_e_mwh=0.0)
        self._load_el = self._add(pp.create_load, assets.loc[self._load_like], prefix="fleet-load")
        self.ext_grid_index = self.net.ext_grid.index
        self._native_load_pos = self.net.load.index.get_indexer(self.native_load_index)
        self._fleet_load_pos = self.net.load.index.get_indexer(self._load_el)
        self._native_sgen_pos = self.net.sgen.index.get_indexer(self.native_sgen_index)
        self._fleet_sgen_pos = self.net.sgen.index.get_indexer(self._pv_el)
        self._fleet_storage_pos = self.net.storage.index.get_indexer(self._bat_el)
        self._fast: Any = None

    def _add(self, create: Any, rows: pd.DataFrame, *, prefix: str, **extra: Any) -> np.ndarray:
        return np.array(
            [create(self.net, bus=int(r.bus), p_mw=0.0, q_mvar=0.0, name=f"{prefix}:{aid}", **extra)
             for aid, r in rows.iterrows()],
            dtype=int,
        )

    def set_injections(
        self,
        *,
        load_p_mw: pd.Series,
        load_q_mvar: pd.Series,
        sgen_p_mw: pd.Series,
        asset_p_mw: pd.Series,
        asset_q_mvar: pd.Series,
    ) -> None:
        """Write one interval's powers into the net. Native sgen_p_mw is generator output (>= 0)."""
        net = self.net
        p = asset_p_mw.reindex(self.asset_ids).fillna(0.0)
        q = asset_q_mvar.reindex(self.asset_ids).fillna(0.0)
        # Whole-column assignment: per-cell .loc writes cost ~1 ms each and dominate small feeders.
        load_p = net.load["p_mw"].to_numpy(float, copy=True)
        load_q = net.load["q_mvar"].to_numpy(float, copy=True)
        load_p[self._native_load_pos] = load_p_mw.reindex(self.native_load_index).to_numpy(float)
        load_q[self._native_load_pos] = load_q_mvar.reindex(self.native_load_index).to_numpy(float)
        load_p[self._fleet_load_pos] = p[self._load_like].to_numpy(float)
        load_q[self._fleet_load_pos] = q[self._load_like].to_numpy(float)
        net.load["p_mw"], net.load["q_mvar"] = load_p, load_q
        sgen_p = net.sgen["p_mw"].to_numpy(float, copy=True)
        sgen_q = net.sgen["q_mvar"].to_numpy(float, copy=True)
        sgen_p[self._native_sgen_pos] = sgen_p_mw.reindex(self.native_sgen_index).to_numpy(float)
        # sgen is generator convention: producing PV (negative load-convention p) is a positive sgen p.
        sgen_p[self._fleet_sgen_pos] = -p[self._pv].to_numpy(float)
        sgen_q[self._fleet_sgen_pos] = -q[self._pv].to_numpy(float)
        net.sgen["p_mw"], net.sgen["q_mvar"] = sgen_p, sgen_q
        if len(net.storage):
            st_p = net.storage["p_mw"].to_numpy(float, copy=True)
            st_q = net.storage["q_mvar"].to_numpy(float, copy=True)
            st_p[self._fleet_storage_pos] = p[self._bat].to_numpy(float)
            st_q[self._fleet_storage_pos] = q[self._bat].to_numpy(float)
            net.storage["p_mw"], net.storage["q_mvar"] = st_p, st_q

    def solve(self, time: pd.Timestamp | None = None) -> PowerFlowResult:
        """Run the AC power flow on the injections currently in the net; never raises on divergence."""
        if self.engine == "fast":
            return self._solve_fast()
        net = self.net
        try:
            # numba=False: its JIT compile costs ~15 s per process, more than a week of small-feeder steps.
            pp.runpp(net, init="results" if self._has_results() else "auto", numba=False)
        except pp.LoadflowNotConverged:
            return self._failed()
        return PowerFlowResult(
            vm_pu=net.res_bus.vm_pu.copy(),
            va_degree=net.res_bus.va_degree.copy(),
            line_loading_percent=net.res_line.loading_percent.copy(),
            trafo_loading_percent=net.res_trafo.loading_percent.copy(),
            p_head_mw=float(net.res_ext_grid.p_mw.sum()),
            q_head_mvar=float(net.res_ext_grid.q_mvar.sum()),
            losses_mw=float(net.res_line.pl_mw.sum() + net.res_trafo.pl_mw.sum()),
            converged=True,
        )

    def _has_results(self) -> bool:
        return bool(self.net.converged) if "converged" in self.net else False

    def _failed(self) -> PowerFlowResult:
        nan = float("nan")
        net = self.net
        return PowerFlowResult(
            vm_pu=pd.Series(nan, index=net.bus.index),
            va_degree=pd.Series(nan, index=net.bus.index),
            line_loading_percent=pd.Series(nan, index=net.line.index),
            trafo_loading_percent=pd.Series(nan, index=net.trafo.index),
            p_head_mw=nan,
            q_head_mvar=nan,
            losses_mw=nan,
            converged=False,
        )

    def sensitivities(self, *, monitored_buses: list[int] | None, monitored_branches: list[str] | None) -> Sensitivities:
        """Linearize at the operating point of the last solve (needs a converged one)."""
        if self.engine == "fast" and self._fast is not None:
            p_bus, q_bus = bus_injections(self.net)
            return sensitivities_at(self._fast, p_bus_mw=p_bus, q_bus_mvar=q_bus, monitored_buses=monitored_buses,
                                    monitored_branches=monitored_branches)
        return compute_sensitivities(self.net, monitored_buses=monitored_buses, monitored_branches=monitored_branches)

    def _solve_fast(self) -> PowerFlowResult:
        if self._fast is None:
            pp.runpp(self.net, numba=False)
            self._fast = FastPowerFlow.from_net(self.net)
        p_bus, q_bus = bus_injections(self.net)
        return self._fast.solve(p_bus_mw=p_bus, q_bus_mvar=q_bus)
