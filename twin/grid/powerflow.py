"""AC power flow of one twin copy: the only module that calls pandapower's solvers.

pandapower is the model of record (``PandapowerEngine``); ``twin.grid.fastpf`` may serve long studies when the
scenario asks for it, and must match ``pandapower.runpp`` to 1e-6 pu.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import numba
import numpy as np
import pandapower as pp
import pandas as pd
import scipy.sparse as sp

from controllers.api import AssetKind, Sensitivities
from twin.grid.fastpf import FastPowerFlow
from twin.grid.injections import bus_injections, element_incidence
from twin.grid.results import GridLabels, PowerFlowResult
from twin.grid.sensitivity import compute_sensitivities, sensitivities_at


#: Power mismatch (MVA) the fast engine solves to. Tighter than pandapower's default (1e-8) so that a step solved
#: from the last interval's voltages and a batch solved from scratch (open-loop replay) agree to ~1e-12 pu, and
#: branch loadings (differences of voltages) to ~1e-9 %; it costs a couple of fixed-point iterations per step.
FAST_TOLERANCE_MVA = 1e-12

#: What every grid model of one feeder and fleet shares, by the (net, assets) objects it was built from and
#: their content: the net with the fleet attached (never written), the element positions and incidence
#: matrices, and the fast engine's solver. Built once per feeder and fleet, so a run's policies, a study's
#: runs and a benchmark's repetitions each skip the copy of the net and the runpp behind the admittance model.
_TEMPLATES: dict[tuple[int, int, int], _Template] = {}

#: Columns whose values the shared parts are a snapshot of (an edited net or fleet is not served stale parts).
_FINGERPRINT_COLUMNS = (
    ("bus", ("in_service",)), ("line", ("in_service", "length_km")), ("trafo", ("in_service", "tap_pos")),
    ("switch", ("closed",)), ("ext_grid", ("vm_pu", "va_degree", "in_service")), ("gen", ("vm_pu", "in_service")),
    ("load", ("bus", "p_mw", "q_mvar", "scaling", "in_service")),
    ("sgen", ("bus", "p_mw", "q_mvar", "scaling", "in_service")),
    ("storage", ("bus", "p_mw", "q_mvar", "scaling", "in_service")),
    ("asymmetric_load", ("bus", "p_a_mw", "p_b_mw", "p_c_mw", "q_a_mvar", "q_b_mvar", "q_c_mvar", "in_service")),
    ("asymmetric_sgen", ("bus", "p_a_mw", "p_b_mw", "p_c_mw", "q_a_mvar", "q_b_mvar", "q_c_mvar", "in_service")),
)


def _fingerprint(net: pp.pandapowerNet, assets: pd.DataFrame) -> int:
    """What a grid model is a snapshot of: the net's topology and injections, the fleet's kinds and buses."""
    parts: list[Any] = [len(net.bus), len(net.line), len(net.trafo), len(net.load), len(net.sgen), len(net.storage)]
    for element, columns in _FINGERPRINT_COLUMNS:
        table = net[element] if element in net else None
        if table is not None and len(table):
            parts.append(hash(table.index.to_numpy().tobytes()))
            for column in columns:
                if column in table:
                    parts.append(hash(table[column].to_numpy().tobytes()))
    parts += [tuple(assets.index.astype(str)), tuple(assets["kind"].astype(str)),
              hash(assets["bus"].to_numpy(np.int64).tobytes())] if len(assets) else [0]
    return hash(tuple(parts))


def clear_solver_cache() -> None:
    """Forget the shared parts (the next grid model builds its own and runs pandapower again; for benchmarks)."""
    _TEMPLATES.clear()


class _Template:
    """The shared, read-only parts of every grid model of one (net, assets) pair."""

    def __init__(self, model: GridModel) -> None:
        self.parts = dict(model.__dict__)  # the built net and everything derived from it
        self.net: pp.pandapowerNet = model._own_net
        self.solver: tuple[FastPowerFlow, tuple[Any, ...]] | None = None

    @classmethod
    def of(cls, net: pp.pandapowerNet, assets: pd.DataFrame) -> _Template:
        key = (id(net), id(assets), _fingerprint(net, assets))
        hit = _TEMPLATES.get(key)
        if hit is not None and hit.sources[0]() is net and hit.sources[1]() is assets:
            return hit
        template = cls(GridModel._built(net, assets))
        try:  # forgotten with the net it was built from
            template.sources = (weakref.ref(net, lambda _, key=key: _TEMPLATES.pop(key, None)), weakref.ref(assets))
        except TypeError:  # not weak-referenceable: no sharing
            return template
        _TEMPLATES[key] = template
        return template

    sources: tuple[weakref.ref, weakref.ref]

    def fast_solver(self, model: GridModel) -> tuple[FastPowerFlow, tuple[Any, ...]]:
        """The fast engine's solver and the element -> internal-bus maps (one runpp of a copy of the net)."""
        if self.solver is None:
            solver = FastPowerFlow.from_net(self.net, tolerance_mva=FAST_TOLERANCE_MVA, copy_net=True)
            fm = solver.model
            kp = sp.csr_matrix(fm.injection_map @ model._inj_p)
            kq = sp.csr_matrix(fm.injection_map @ model._inj_q)
            const = fm.s_gen_pu - fm.injection_map @ (model._inj_p_const + 1j * model._inj_q_const) / fm.base_mva
            specified = tuple((m.indptr.astype(np.int64), m.indices.astype(np.int64), m.data.astype(float))
                              for m in (kp, kq)) + (np.asarray(const, dtype=complex),)
            self.solver = (solver, specified)
        return self.solver


class GridModel:
    """One twin copy's pandapower net with the fleet attached, and the power flow over it.

    Fleet assets become their own pandapower elements (PV → sgen, battery → storage, EV/flex → load) so
    the feeder's native loads and generators keep their identity. This is the single place where the load
    convention is converted to pandapower's generator convention for sgens.
    """

    def __init__(self, net: pp.pandapowerNet, assets: pd.DataFrame, *, engine: str = "pandapower") -> None:
        if engine not in ("pandapower", "fast"):
            raise ValueError(f"power_flow.engine={engine!r}: expected 'pandapower' or 'fast'")
        template = _Template.of(net, assets)
        self.__dict__.update(template.parts)
        self._template = template
        self.engine = engine
        # This model's own net is a copy of the template's, made when first needed (the pandapower engine's first
        # solve, or a reader of ``net``): the fast engine solves from arrays and usually never needs one.
        self._own_net = None
        self._fast = None
        self._x_p = None
        self._x_q = None
        self._x_parts = None
        self._tables_stale = False

    @classmethod
    def _built(cls, net: pp.pandapowerNet, assets: pd.DataFrame) -> GridModel:
        """A model built from scratch: its own copy of ``net`` with the fleet attached, and what derives from it."""
        self = cls.__new__(cls)
        self._own_net = copy.deepcopy(net)
        self.native_load_index = self._net.load.index.copy()
        self.native_sgen_index = self._net.sgen.index.copy()
        self.asset_ids = assets.index
        kinds = assets["kind"].astype(str)
        self._pv = assets.index[kinds == AssetKind.PV]
        self._bat = assets.index[kinds == AssetKind.BATTERY]
        self._load_like = assets.index[kinds.isin([AssetKind.EV_CHARGER, AssetKind.FLEX_LOAD])]
        self._pv_el = self._add(pp.create_sgens, assets.loc[self._pv], prefix="fleet-pv")
        self._bat_el = self._add(pp.create_storages, assets.loc[self._bat], prefix="fleet-bat", max_e_mwh=0.0)
        self._load_el = self._add(pp.create_loads, assets.loc[self._load_like], prefix="fleet-load")
        self.ext_grid_index = self._net.ext_grid.index
        self._native_load_pos = self._net.load.index.get_indexer(self.native_load_index)
        self._fleet_load_pos = self._net.load.index.get_indexer(self._load_el)
        self._native_sgen_pos = self._net.sgen.index.get_indexer(self.native_sgen_index)
        self._fleet_sgen_pos = self._net.sgen.index.get_indexer(self._pv_el)
        self._fleet_storage_pos = self._net.storage.index.get_indexer(self._bat_el)
        self._fast: Any = None
        net = self._net
        self.labels = GridLabels(bus=net.bus.index, line=net.line.index, trafo=net.trafo.index)
        self._pv_pos = assets.index.get_indexer(self._pv)
        self._bat_pos = assets.index.get_indexer(self._bat)
        self._load_like_pos = assets.index.get_indexer(self._load_like)
        self._build_incidence(len(assets))
        self._x_p: np.ndarray | None = None  # [native load p, native sgen p, asset p] of the current interval
        self._x_q: np.ndarray | None = None  # [native load q, asset q]
        self._x_parts: tuple[np.ndarray, ...] | None = None  # what set_injection_arrays was given
        self._tables_stale = False
        return self

    @property
    def _net(self) -> pp.pandapowerNet:
        """This model's own net (copied from the template's on first use)."""
        if self._own_net is None:
            self._own_net = copy.deepcopy(self._template.net)
        return self._own_net

    @property
    def net(self) -> pp.pandapowerNet:
        """The pandapower net, with the current interval's injections in its tables (the fast engine solves
        from arrays and writes the tables only when someone reads the net)."""
        if self._tables_stale:
            self._write_tables()
        return self._net

    def _build_incidence(self, n_assets: int) -> None:
        """Bus injections as one sparse product per interval: element / asset powers -> bus P and Q (load
        convention), weighted as ``bus_injections`` weighs them; what the engine never writes (native sgen Q,
        native storage, asymmetric elements) is a constant."""
        net = self._net
        # PV is an sgen (generator convention: sgen p = -asset p), so its weight is minus the sgen's (-1) weight.
        # The kinds' asset positions are disjoint: each kind's incidence goes to its own columns (one COO build;
        # assigning columns of a LIL matrix took ~0.8 s a kind on the 9,099-bus feeder).
        rows, cols, data = [], [], []
        for positions, element, table_rows, sign in ((self._pv_pos, "sgen", self._fleet_sgen_pos, -1.0),
                                                     (self._bat_pos, "storage", self._fleet_storage_pos, 1.0),
                                                     (self._load_like_pos, "load", self._fleet_load_pos, 1.0)):
            if len(positions):
                kind = sp.coo_matrix(element_incidence(net, element, table_rows))
                rows.append(kind.row)
                cols.append(np.asarray(positions, dtype=np.int64)[kind.col])
                data.append(sign * kind.data)
        asset_p = sp.csr_matrix((np.concatenate(data) if data else np.zeros(0),
                                 (np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64),
                                  np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64))),
                                shape=(len(net.bus), n_assets))
        asset_p.sort_indices()  # as the LIL conversion had them: the same summation order in every product
        load = element_incidence(net, "load", self._native_load_pos)
        sgen = element_incidence(net, "sgen", self._native_sgen_pos)
        self._inj_p = sp.csr_matrix(sp.hstack([load, sgen, asset_p]))
        self._inj_q = sp.csr_matrix(sp.hstack([load, asset_p]))
        self._inj_p_csr = (self._inj_p.indptr.astype(np.int64), self._inj_p.indices.astype(np.int64),
                           self._inj_p.data.astype(float))
        self._inj_q_csr = (self._inj_q.indptr.astype(np.int64), self._inj_q.indices.astype(np.int64),
                           self._inj_q.data.astype(float))
        # The constant part: bus injections with every entry the engine writes set to 0 (then put back).
        kept = {}
        for element, rows, columns in (("load", self._native_load_pos, ("p_mw", "q_mvar")),
                                       ("load", self._fleet_load_pos, ("p_mw", "q_mvar")),
                                       ("sgen", self._native_sgen_pos, ("p_mw",)),
                                       ("sgen", self._fleet_sgen_pos, ("p_mw", "q_mvar")),
                                       ("storage", self._fleet_storage_pos, ("p_mw", "q_mvar"))):
            for column in columns:
                kept.setdefault((element, column), net[element][column].copy())
                values = net[element][column].to_numpy(float, copy=True)
                values[rows] = 0.0
                net[element][column] = values
        p_const, q_const = bus_injections(net)
        for (element, column), values in kept.items():
            net[element][column] = values
        self._inj_p_const, self._inj_q_const = p_const.to_numpy(float), q_const.to_numpy(float)

    def _add(self, create_many: Any, rows: pd.DataFrame, *, prefix: str, **extra: Any) -> np.ndarray:
        """One pandapower element per asset, created in one call (one by one costs ~10 ms each: minutes for a
        fleet of thousands)."""
        if rows.empty:
            return np.zeros(0, dtype=int)
        index = create_many(self._net, buses=rows["bus"].astype(int).to_numpy(), p_mw=np.zeros(len(rows)), q_mvar=0.0,
                            name=[f"{prefix}:{aid}" for aid in rows.index], **extra)
        return np.asarray(index, dtype=int)

    def set_injections(
        self,
        *,
        load_p_mw: pd.Series,
        load_q_mvar: pd.Series,
        sgen_p_mw: pd.Series,
        asset_p_mw: pd.Series,
        asset_q_mvar: pd.Series,
    ) -> None:
        """One interval's powers by label (native loads / sgens by pandapower index, assets by asset_id; missing
        assets = 0). Native sgen_p_mw is generator output (>= 0)."""
        self.set_injection_arrays(
            load_p_mw=load_p_mw.reindex(self.native_load_index).to_numpy(float),
            load_q_mvar=load_q_mvar.reindex(self.native_load_index).to_numpy(float),
            sgen_p_mw=sgen_p_mw.reindex(self.native_sgen_index).to_numpy(float),
            asset_p_mw=asset_p_mw.reindex(self.asset_ids).fillna(0.0).to_numpy(float),
            asset_q_mvar=asset_q_mvar.reindex(self.asset_ids).fillna(0.0).to_numpy(float),
        )

    def set_injection_arrays(self, *, load_p_mw: np.ndarray, load_q_mvar: np.ndarray, sgen_p_mw: np.ndarray,
                             asset_p_mw: np.ndarray, asset_q_mvar: np.ndarray) -> None:
        """One interval's powers as arrays: native loads in ``native_load_index`` order, native sgens in
        ``native_sgen_index`` order, assets in ``asset_ids`` order. The pandapower engine writes them into the
        net's tables now (runpp reads them); the fast engine keeps the arrays and solves from them."""
        # Kept as given (the element vectors [native load, native sgen, asset] P and [native load, asset] Q are
        # put end to end only when read: ``_x``); the fast engine's step kernel reads the pieces.
        self._x_parts = (load_p_mw, sgen_p_mw, asset_p_mw, load_q_mvar, asset_q_mvar)
        self._x_p = self._x_q = None
        if self.engine == "pandapower":
            self._write_tables()
        else:
            self._tables_stale = True

    def _x(self) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        """The current interval's element vectors: [native load p, native sgen p, asset p] and [native load q,
        asset q] (None before any ``set_injection_arrays``)."""
        if self._x_p is None and self._x_parts is not None:
            load_p, sgen_p, asset_p, load_q, asset_q = self._x_parts
            self._x_p = np.concatenate([load_p, sgen_p, asset_p])
            self._x_q = np.concatenate([load_q, asset_q])
        return self._x_p, self._x_q

    def bus_injection_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """P (MW) and Q (Mvar) per bus (``labels.bus`` order, load convention) of the current injections."""
        x_p, x_q = self._x()
        if x_p is None or x_q is None:
            p_bus, q_bus = bus_injections(self._net)
            return p_bus.to_numpy(float), q_bus.to_numpy(float)
        return (_matvec_plus(*self._inj_p_csr, x_p, self._inj_p_const),
                _matvec_plus(*self._inj_q_csr, x_q, self._inj_q_const))

    def bus_p_many(self, *, load_p_mw: np.ndarray, sgen_p_mw: np.ndarray, asset_p_mw: np.ndarray) -> np.ndarray:
        """Bus P (n_bus x n_interval) of many intervals: native loads, native sgens and assets as columns."""
        return self._inj_p_const[:, None] + self._inj_p @ np.vstack([load_p_mw, sgen_p_mw, asset_p_mw])

    def bus_q_many(self, *, load_q_mvar: np.ndarray, asset_q_mvar: np.ndarray) -> np.ndarray:
        """Bus Q (n_bus x n_interval) of many intervals."""
        return self._inj_q_const[:, None] + self._inj_q @ np.vstack([load_q_mvar, asset_q_mvar])

    def _write_tables(self) -> None:
        """Write the current injection arrays into the net (whole columns: per-cell writes cost ~1 ms each)."""
        self._tables_stale = False
        x_p, x_q = self._x()
        if x_p is None or x_q is None:
            return
        net = self._net
        n_load, n_sgen = len(self._native_load_pos), len(self._native_sgen_pos)
        load_p_mw, sgen_p_mw, p = np.split(x_p, [n_load, n_load + n_sgen])
        load_q_mvar, q = np.split(x_q, [n_load])
        load_p = net.load["p_mw"].to_numpy(float, copy=True)
        load_q = net.load["q_mvar"].to_numpy(float, copy=True)
        load_p[self._native_load_pos] = load_p_mw
        load_q[self._native_load_pos] = load_q_mvar
        load_p[self._fleet_load_pos] = p[self._load_like_pos]
        load_q[self._fleet_load_pos] = q[self._load_like_pos]
        net.load["p_mw"], net.load["q_mvar"] = load_p, load_q
        sgen_p = net.sgen["p_mw"].to_numpy(float, copy=True)
        sgen_q = net.sgen["q_mvar"].to_numpy(float, copy=True)
        sgen_p[self._native_sgen_pos] = sgen_p_mw
        # sgen is generator convention: producing PV (negative load-convention p) is a positive sgen p.
        sgen_p[self._fleet_sgen_pos] = -p[self._pv_pos]
        sgen_q[self._fleet_sgen_pos] = -q[self._pv_pos]
        net.sgen["p_mw"], net.sgen["q_mvar"] = sgen_p, sgen_q
        if len(net.storage):
            st_p = net.storage["p_mw"].to_numpy(float, copy=True)
            st_q = net.storage["q_mvar"].to_numpy(float, copy=True)
            st_p[self._fleet_storage_pos] = p[self._bat_pos]
            st_q[self._fleet_storage_pos] = q[self._bat_pos]
            net.storage["p_mw"], net.storage["q_mvar"] = st_p, st_q

    def solve(self, time: pd.Timestamp | None = None) -> PowerFlowResult:
        """Run the AC power flow on the injections currently in the net; never raises on divergence."""
        if self.engine == "fast":
            return self._solve_fast()
        net = self._net
        try:
            # numba=False: its JIT compile costs ~15 s per process, more than a week of small-feeder steps.
            pp.runpp(net, init="results" if self._has_results() else "auto", numba=False)
        except pp.LoadflowNotConverged:
            return self._failed()
        return PowerFlowResult(
            labels=self.labels,
            vm=net.res_bus.vm_pu.to_numpy(float, copy=True),
            va=net.res_bus.va_degree.to_numpy(float, copy=True),
            line_loading=net.res_line.loading_percent.to_numpy(float, copy=True),
            trafo_loading=net.res_trafo.loading_percent.to_numpy(float, copy=True),
            p_head_mw=float(net.res_ext_grid.p_mw.sum()),
            q_head_mvar=float(net.res_ext_grid.q_mvar.sum()),
            losses_mw=float(net.res_line.pl_mw.sum() + net.res_trafo.pl_mw.sum()),
            converged=True,
        )

    def _has_results(self) -> bool:
        return bool(self._net.converged) if "converged" in self._net else False

    def _failed(self) -> PowerFlowResult:
        return PowerFlowResult.failed(self.labels)

    def sensitivities(self, *, monitored_buses: list[int] | None, monitored_branches: list[str] | None) -> Sensitivities:
        """Linearize at the operating point of the last solve (needs a converged one)."""
        if self.engine == "fast" and self._fast is not None:
            p, q = self.bus_injection_arrays()
            p_bus, q_bus = pd.Series(p, index=self.labels.bus), pd.Series(q, index=self.labels.bus)
            return sensitivities_at(self._fast, p_bus_mw=p_bus, q_bus_mvar=q_bus, monitored_buses=monitored_buses,
                                    monitored_branches=monitored_branches)
        return compute_sensitivities(self.net, monitored_buses=monitored_buses, monitored_branches=monitored_branches)

    def operating_point(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last converged solve: internal (ppci) voltages and the bus injections behind them (MW / Mvar,
        load convention, in ``net.bus`` order). Needs a converged solve."""
        p_bus, q_bus = bus_injections(self.net)
        if self.engine == "fast" and self._fast is not None:
            v = self._fast._v_last
        else:
            v = np.asarray(self._net._ppc["internal"]["V"], dtype=complex)
        return v, p_bus.to_numpy(float), q_bus.to_numpy(float)

    def _solve_fast(self) -> PowerFlowResult:
        fast = self.fast
        parts = self._x_parts
        if parts is None:
            return fast.solve_arrays(*self.bus_injection_arrays())
        # Element powers -> internal-bus injection in one product (incidence and bus map multiplied once).
        return fast.solve_elements(self._specified_map, *parts)

    @property
    def fast(self) -> FastPowerFlow:
        """The fast engine's solver (built on first use: one ``runpp`` of a copy for the admittance model,
        shared by every grid model of the same feeder and fleet objects; each gets its own warm start)."""
        if self._fast is None:
            solver, self._specified_map = self._template.fast_solver(self)
            self._fast = solver.fresh()
        return self._fast


@numba.njit(cache=True, nogil=True)
def _matvec_plus(ptr, idx, val, x, const):  # pragma: no cover - compiled
    """const + A x for a CSR matrix A (one interval's bus injections)."""
    out = const.copy()
    for i in range(len(ptr) - 1):
        acc = 0.0
        for k in range(ptr[i], ptr[i + 1]):
            acc += val[k] * x[idx[k]]
        out[i] += acc
    return out
