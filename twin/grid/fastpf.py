"""Fast exact AC power flow for long studies, on pandapower's own admittance matrix.

Owns the cached network model (``NetworkModel``: pandapower's internal Ybus, branch admittances and bus/branch
lookups, taken from one ``pandapower.runpp``) and the solver that re-uses it for new constant-PQ bus
injections (``FastPowerFlow``). Radial and weakly meshed feeders with only slack buses are solved by an
implicit Z-bus fixed point (one sparse LU of the non-slack admittance block, factorized once); feeders with
voltage-controlled generators, and any step the fixed point does not converge on, fall back to Newton–Raphson.
Results reproduce ``pandapower.runpp`` (bus voltages, loadings as pandapower defines them, head exchange,
losses) to solver tolerance; tests check 1e-6 pu on every catalog feeder.

The model is a snapshot: rebuild it (``FastPowerFlow.from_net``) after a topology, tap or line-parameter change.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import pandapower as pp
import pandas as pd
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from pandapower.pypower.idx_brch import F_BUS, T_BUS
from pandapower.pypower.idx_bus import BASE_KV, PD, QD
from pandapower.pypower.idx_gen import GEN_BUS, PG

from twin.grid.injections import INJECTION_ELEMENTS, bus_injections
from twin.grid.results import GridLabels, PowerFlowResult

__all__ = ["BatchArrays", "BatchResult", "FastPowerFlow", "NetworkModel"]

_SQRT3 = np.sqrt(3.0)
#: Complex values per column block of a batch solve (bounds its memory: 2e6 x 16 B per work array).
_BATCH_VALUES = 2_000_000
#: Element tables whose power pandapower adds to bus demand but ``bus_injections`` does not model.
_UNMODELLED_ELEMENTS = ("ward", "xward", "motor", "svc", "ssc", "tcsc", "vsc", "dcline")


@dataclass(frozen=True)
class NetworkModel:
    """pandapower's internal (ppci) network at one topology, with the lookups back to element indices.

    ``bus_ppci[i]`` is the internal bus of the i-th row of ``net.bus`` (-1: out of service or isolated).
    ``*_branch[i]`` is the internal branch of the i-th line/trafo (-1: not energized); its loading then is
    ``*_idle_loading`` (0, or NaN when an end bus is isolated, as pandapower reports it).
    Loading of an energized branch side = ``coef * |I_side|`` (``* vm_side`` for power-based trafo loading),
    with ``I`` in per unit; the branch loading is the larger side, as in pandapower.
    """

    base_mva: float
    bus_index: pd.Index
    bus_ppci: np.ndarray
    injection_map: sp.csr_matrix  # (n_ppci, n_pd_bus): sums pandapower buses into internal buses
    ybus: sp.csr_matrix
    yf: sp.csr_matrix
    yt: sp.csr_matrix
    branch_from: np.ndarray
    branch_to: np.ndarray
    ref: np.ndarray
    pv: np.ndarray
    pq: np.ndarray
    v_set: np.ndarray  # complex setpoints at ref buses, magnitudes at pv buses (1.0 elsewhere)
    s_gen_pu: np.ndarray  # fixed active generation of voltage-controlled gens, generator convention
    line_index: pd.Index
    line_branch: np.ndarray
    line_coef: np.ndarray  # (n_line, 2): from / to side
    line_idle_loading: np.ndarray
    trafo_index: pd.Index
    trafo_branch: np.ndarray
    trafo_coef: np.ndarray  # (n_trafo, 2): hv / lv side
    trafo_idle_loading: np.ndarray
    trafo_power_based: bool
    ybus_ref: sp.csr_matrix  # rows of Ybus at the slack buses (head exchange)
    loss_branches: np.ndarray  # internal branches of energized lines and trafos (their P losses: losses_mw)

    @property
    def n_bus(self) -> int:
        return self.ybus.shape[0]

    @classmethod
    def from_solved_net(cls, net: pp.pandapowerNet) -> NetworkModel:
        """Read the model from ``net._ppc`` after a converged ``pandapower.runpp(net)``."""
        ppc = getattr(net, "_ppc", None)
        if ppc is None or "internal" not in ppc or "Ybus" not in ppc["internal"]:
            raise ValueError("net has no solved power flow: run pandapower.runpp(net) first")
        options = net._options
        if options.get("voltage_depend_loads", False):
            raise ValueError("voltage_depend_loads=True is not supported: the fast path is constant-PQ only")
        if options.get("distributed_slack", False):
            raise ValueError("distributed_slack=True is not supported by the fast path")
        for element in _UNMODELLED_ELEMENTS:
            if element in net and len(net[element]) and net[element]["in_service"].any():
                raise ValueError(f"net has in-service {element!r} elements, which the fast path does not model")
        internal = ppc["internal"]
        base_mva = float(ppc["baseMVA"])
        ybus = sp.csr_matrix(internal["Ybus"])
        n_bus = ybus.shape[0]
        bus_index = net.bus.index
        lookup = net._pd2ppc_lookups["bus"]
        bus_ppci = np.asarray(lookup[bus_index.to_numpy()], dtype=np.int64)
        bus_ppci = np.where((bus_ppci >= 0) & (bus_ppci < n_bus), bus_ppci, -1)
        connected = np.flatnonzero(bus_ppci >= 0)
        injection_map = sp.csr_matrix(
            (np.ones(connected.size), (bus_ppci[connected], connected)), shape=(n_bus, len(bus_index))
        )

        ppci_bus = internal["bus"]
        ppci_branch = internal["branch"]
        branch_from = ppci_branch[:, F_BUS].real.astype(np.int64)
        branch_to = ppci_branch[:, T_BUS].real.astype(np.int64)
        base_kv = ppci_bus[:, BASE_KV].real

        v_solved = np.asarray(internal["V"], dtype=complex)
        ref = np.asarray(internal["ref"], dtype=np.int64)
        pv = np.asarray(internal["pv"], dtype=np.int64)
        pq = np.asarray(internal["pq"], dtype=np.int64)
        v_set = np.ones(n_bus, dtype=complex)
        v_set[ref] = v_solved[ref]
        v_set[pv] = np.abs(v_solved[pv])

        gen = internal["gen"]
        gen_bus = gen[:, GEN_BUS].real.astype(np.int64)
        s_gen_pu = np.zeros(n_bus, dtype=complex)
        at_pv = np.isin(gen_bus, pv)
        np.add.at(s_gen_pu, gen_bus[at_pv], gen[at_pv, PG].real / base_mva)

        _check_demand_is_modelled(net, ppci_bus, injection_map, base_mva=base_mva)

        branch_is = np.asarray(ppc["internal"]["branch_is"], dtype=bool)
        ppc_to_ppci_branch = np.where(branch_is, np.cumsum(branch_is) - 1, -1)
        ppc_branch = ppc["branch"]
        ppc_bus_energized = np.zeros(ppc["bus"].shape[0], dtype=bool)
        ppc_bus_energized[:n_bus] = True

        def branch_rows(element: str) -> tuple[np.ndarray, np.ndarray]:
            start, stop = net._pd2ppc_lookups["branch"].get(element, (0, 0))
            rows = np.arange(start, stop)
            ends = ppc_branch[rows][:, [F_BUS, T_BUS]].real.astype(np.int64)
            idle = np.where(ppc_bus_energized[ends].all(axis=1), 0.0, np.nan)
            return ppc_to_ppci_branch[rows], idle

        line_branch, line_idle = branch_rows("line")
        line = net.line
        i_max_ka = (line["max_i_ka"] * line["df"] * line["parallel"]).to_numpy(float)
        line_coef = np.full((len(line), 2), np.nan)
        on = line_branch >= 0
        for side, ends in enumerate((branch_from, branch_to)):
            kv = base_kv[ends[line_branch[on]]]
            with np.errstate(divide="ignore"):
                line_coef[on, side] = base_mva * 100.0 / (_SQRT3 * kv * i_max_ka[on])

        trafo_branch, trafo_idle = branch_rows("trafo")
        trafo = net.trafo
        power_based = options.get("trafo_loading", "current") == "power"
        rating = (trafo["sn_mva"] * trafo["parallel"] * trafo["df"]).to_numpy(float)
        trafo_coef = np.full((len(trafo), 2), np.nan)
        on = trafo_branch >= 0
        for side, (ends, vn_column) in enumerate(((branch_from, "vn_hv_kv"), (branch_to, "vn_lv_kv"))):
            kv = base_kv[ends[trafo_branch[on]]]
            if power_based:
                trafo_coef[on, side] = base_mva * 100.0 / rating[on]
            else:
                trafo_coef[on, side] = base_mva * trafo[vn_column].to_numpy(float)[on] * 100.0 / (kv * rating[on])

        energized = np.concatenate([line_branch, trafo_branch])
        return cls(
            ybus_ref=sp.csr_matrix(ybus[ref]),
            loss_branches=energized[energized >= 0],
            base_mva=base_mva,
            bus_index=bus_index,
            bus_ppci=bus_ppci,
            injection_map=injection_map,
            ybus=ybus,
            yf=sp.csr_matrix(internal["Yf"]),
            yt=sp.csr_matrix(internal["Yt"]),
            branch_from=branch_from,
            branch_to=branch_to,
            ref=ref,
            pv=pv,
            pq=pq,
            v_set=v_set,
            s_gen_pu=s_gen_pu,
            line_index=line.index,
            line_branch=line_branch,
            line_coef=line_coef,
            line_idle_loading=line_idle,
            trafo_index=trafo.index,
            trafo_branch=trafo_branch,
            trafo_coef=trafo_coef,
            trafo_idle_loading=trafo_idle,
            trafo_power_based=power_based,
        )

    def specified_power_pu(self, p_bus_mw: np.ndarray, q_bus_mvar: np.ndarray) -> np.ndarray:
        """Net injection per internal bus (generator convention, per unit) from pandapower-bus loads (MW, load
        convention). Accepts vectors (n_pd,) or matrices (n_pd, n_cases)."""
        load_pu = self.injection_map @ (p_bus_mw + 1j * q_bus_mvar) / self.base_mva
        if load_pu.ndim == 2:
            return self.s_gen_pu[:, None] - load_pu
        return self.s_gen_pu - load_pu

    def branch_loading(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Line and trafo loading (%) for internal voltages ``v`` (n,) or (n, n_cases), pandapower's way."""
        return self._loading(v, np.abs(self.yf @ v), np.abs(self.yt @ v))

    def evaluate(self, v: np.ndarray, s_spec_pu: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Line loading, trafo loading, losses (MW) and head import (MVA, load convention) at voltages ``v``.

        Branch currents are computed once and shared by loadings and losses.
        """
        i_from = self.yf @ v
        i_to = self.yt @ v
        line_loading, trafo_loading = self._loading(v, np.abs(i_from), np.abs(i_to))
        rows = self.loss_branches
        s_loss = v[self.branch_from[rows]] * np.conj(i_from[rows]) + v[self.branch_to[rows]] * np.conj(i_to[rows])
        losses = s_loss.real.sum(axis=0) * self.base_mva
        # the slack supplies its computed bus injection plus whatever is consumed at the slack bus itself
        ref = self.ref
        head = (v[ref] * np.conj(self.ybus_ref @ v) - s_spec_pu[ref]).sum(axis=0) * self.base_mva
        return line_loading, trafo_loading, losses, head

    def _loading(self, v: np.ndarray, i_from: np.ndarray, i_to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vm = np.abs(v)

        def loading(branch: np.ndarray, coef: np.ndarray, idle: np.ndarray, by_power: bool) -> np.ndarray:
            out = np.empty((len(branch),) + v.shape[1:])
            out[...] = idle.reshape((-1,) + (1,) * (v.ndim - 1))
            on = branch >= 0
            rows = branch[on]
            expand = (slice(None),) + (None,) * (v.ndim - 1)
            side_from = coef[on, 0][expand] * i_from[rows]
            side_to = coef[on, 1][expand] * i_to[rows]
            if by_power:
                side_from = side_from * vm[self.branch_from[rows]]
                side_to = side_to * vm[self.branch_to[rows]]
            out[on] = np.maximum(side_from, side_to)
            return out

        return (
            loading(self.line_branch, self.line_coef, self.line_idle_loading, False),
            loading(self.trafo_branch, self.trafo_coef, self.trafo_idle_loading, self.trafo_power_based),
        )


def _check_demand_is_modelled(
    net: pp.pandapowerNet, ppci_bus: np.ndarray, injection_map: sp.csr_matrix, *, base_mva: float
) -> None:
    """Refuse nets whose internal bus demand is not what ``bus_injections`` sums (e.g. wards, motors)."""
    p_mw, q_mvar = bus_injections(net)
    demand = injection_map @ (p_mw.to_numpy() + 1j * q_mvar.to_numpy())
    internal = ppci_bus[:, PD].real + 1j * ppci_bus[:, QD].real
    gap = np.abs(demand - internal)
    if gap.size and gap.max() > 1e-9 * max(1.0, base_mva):
        modelled = ", ".join(name for name, _ in INJECTION_ELEMENTS)
        raise ValueError(
            f"net has bus demand the fast path does not model (only {modelled} and asymmetric loads/sgens): "
            f"largest gap {gap.max():.3g} MVA at internal bus {int(gap.argmax())}"
        )


def jacobian(ybus: sp.csr_matrix, v: np.ndarray, pvpq: np.ndarray, pq: np.ndarray) -> sp.csc_matrix:
    """Polar power-flow Jacobian d[P(pvpq); Q(pq)] / d[Va(pvpq); Vm(pq)] at ``v``."""
    i_bus = ybus @ v
    v_norm = v / np.abs(v)
    # dS/dVm = diag(V) conj(Y diag(V/|V|)) + conj(diag(I)) diag(V/|V|)
    ds_dvm = sp.csr_matrix(ybus.multiply(v_norm[None, :]).conj().multiply(v[:, None]))
    ds_dvm = ds_dvm + sp.diags(np.conj(i_bus) * v_norm)
    # dS/dVa = j diag(V) conj(diag(I) - Y diag(V))
    ds_dva = sp.csr_matrix((sp.diags(i_bus) - ybus.multiply(v[None, :])).conj().multiply(1j * v[:, None]))
    ds_dva_rows_p = ds_dva[pvpq]
    ds_dvm_rows_p = ds_dvm[pvpq]
    ds_dva_rows_q = ds_dva[pq]
    ds_dvm_rows_q = ds_dvm[pq]
    return sp.bmat(
        [
            [ds_dva_rows_p[:, pvpq].real, ds_dvm_rows_p[:, pq].real],
            [ds_dva_rows_q[:, pvpq].imag, ds_dvm_rows_q[:, pq].imag],
        ],
        format="csc",
    )


def newton_raphson(
    model: NetworkModel, s_spec_pu: np.ndarray, v_start: np.ndarray, *, tolerance_pu: float, max_iteration: int
) -> tuple[np.ndarray, bool]:
    """Plain polar Newton–Raphson for one case; returns the voltages and whether it converged."""
    pvpq = np.concatenate([model.pv, model.pq])
    pq = model.pq
    n_angle = pvpq.size
    v = v_start.astype(complex, copy=True)
    vm = np.abs(v)
    va = np.angle(v)
    for iteration in range(max_iteration + 1):
        mismatch = v * np.conj(model.ybus @ v) - s_spec_pu
        residual = np.concatenate([mismatch[pvpq].real, mismatch[pq].imag])
        if not np.all(np.isfinite(residual)):
            return v, False
        if residual.size == 0 or np.max(np.abs(residual)) < tolerance_pu:
            return v, True
        if iteration == max_iteration:
            break
        try:
            step = spla.spsolve(jacobian(model.ybus, v, pvpq, pq), -residual)
        except RuntimeError:  # singular Jacobian
            return v, False
        va[pvpq] += step[:n_angle]
        vm[pq] += step[n_angle:]
        v = vm * np.exp(1j * va)
    return v, False


@dataclass(frozen=True)
class BatchArrays:
    """Power flows of many cases as arrays, one column per case (``vm``: n_bus x n_case in ``labels.bus``
    order, loadings n_line / n_trafo x n_case); the scalars are per case."""

    labels: GridLabels
    vm: np.ndarray
    va: np.ndarray
    line_loading: np.ndarray
    trafo_loading: np.ndarray
    p_head_mw: np.ndarray
    q_head_mvar: np.ndarray
    losses_mw: np.ndarray
    converged: np.ndarray
    #: Internal (ppci) complex voltages, n_internal x n_case (NaN where a case did not converge): a warm start.
    v_internal: np.ndarray

    def results(self) -> list[PowerFlowResult]:
        """Every case's result; their arrays are rows of one block (shared, read-only)."""
        blocks = [np.ascontiguousarray(a.T) for a in (self.vm, self.va, self.line_loading, self.trafo_loading)]
        for block in blocks:
            block.flags.writeable = False
        vm, va, line, trafo = blocks
        return [PowerFlowResult(labels=self.labels, vm=vm[k], va=va[k], line_loading=line[k], trafo_loading=trafo[k],
                                p_head_mw=float(self.p_head_mw[k]), q_head_mvar=float(self.q_head_mvar[k]),
                                losses_mw=float(self.losses_mw[k]), converged=bool(self.converged[k]))
                for k in range(len(self.converged))]

    def result(self, case: int) -> PowerFlowResult:
        """The single-case result of column ``case``."""
        return PowerFlowResult(
            labels=self.labels, vm=self.vm[:, case].copy(), va=self.va[:, case].copy(),
            line_loading=self.line_loading[:, case].copy(), trafo_loading=self.trafo_loading[:, case].copy(),
            p_head_mw=float(self.p_head_mw[case]), q_head_mvar=float(self.q_head_mvar[case]),
            losses_mw=float(self.losses_mw[case]), converged=bool(self.converged[case]),
        )


@dataclass(frozen=True)
class BatchResult:
    """Power flows of many cases (rows = the index of the injection frames, e.g. time)."""

    vm_pu: pd.DataFrame
    va_degree: pd.DataFrame
    line_loading_percent: pd.DataFrame
    trafo_loading_percent: pd.DataFrame
    #: Feeder-head exchange with the external grid, load convention (positive = import into the feeder).
    p_head_mw: pd.Series
    q_head_mvar: pd.Series
    losses_mw: pd.Series
    converged: pd.Series

    def result_at(self, label: object) -> PowerFlowResult:
        """The single-case result of one row."""
        labels = GridLabels(bus=self.vm_pu.columns, line=self.line_loading_percent.columns,
                            trafo=self.trafo_loading_percent.columns)
        return PowerFlowResult(
            labels=labels,
            vm=self.vm_pu.loc[label].to_numpy(float),
            va=self.va_degree.loc[label].to_numpy(float),
            line_loading=self.line_loading_percent.loc[label].to_numpy(float),
            trafo_loading=self.trafo_loading_percent.loc[label].to_numpy(float),
            p_head_mw=float(self.p_head_mw.loc[label]),
            q_head_mvar=float(self.q_head_mvar.loc[label]),
            losses_mw=float(self.losses_mw.loc[label]),
            converged=bool(self.converged.loc[label]),
        )


class FastPowerFlow:
    """A power-flow solver built once from a net and re-used for new bus injections.

    Holds the last solution as a warm start for the next ``solve`` (a cache: it changes the iteration count,
    not the answer beyond the tolerance). Not thread-safe; use one instance per twin copy.
    """

    def __init__(self, model: NetworkModel, *, tolerance_mva: float, max_iteration: int) -> None:
        self.model = model
        self.tolerance_mva = tolerance_mva
        self.max_iteration = max_iteration
        self._tolerance_pu = tolerance_mva / model.base_mva
        self._use_zbus = model.pv.size == 0 and model.pq.size > 0
        self._v_no_load = self._no_load_voltage()
        self._v_last = self._v_no_load.copy()
        self._bus_positions = _energized_positions(model)
        self.labels = GridLabels(bus=model.bus_index, line=model.line_index, trafo=model.trafo_index)
        self._case = _CaseArrays.of(model, self._bus_positions)
        self._step_args: dict[int, tuple] = {}  # _step_case's static arguments by element map (solve_elements)

    @classmethod
    def from_net(
        cls, net: pp.pandapowerNet, *, tolerance_mva: float = 1e-9, max_iteration: int = 100, copy_net: bool = True
    ) -> FastPowerFlow:
        """Run ``pandapower.runpp`` once on a copy of ``net`` and cache its admittance model.

        The net's topology, switch states, tap positions, ext_grid setpoints and gen setpoints are frozen
        into the model; its loads are not (they come with every ``solve``). ``copy_net=False`` runs it on
        ``net`` itself (which then holds that power flow's results and pandapower's lookups).
        """
        solved = copy.deepcopy(net) if copy_net else net
        # numba=False: pandapower's numba kernels compile for ~7 s on first use, and the model is the same; an
        # explicit flat magnitude start skips pandapower's slow slack-voltage lookup (the model takes the slack and
        # generator setpoints, not the solution).
        options = {"numba": False, "init_vm_pu": "flat"}
        try:
            pp.runpp(solved, **options)
        except pp.LoadflowNotConverged:
            # Only the admittance model is needed: retry with all injections switched off (then on again).
            scaling = {element: solved[element]["scaling"].copy() for element, _ in INJECTION_ELEMENTS}
            for element in scaling:
                solved[element]["scaling"] = 0.0
            try:
                pp.runpp(solved, **options)
            finally:
                for element, values in scaling.items():
                    solved[element]["scaling"] = values
        return cls(NetworkModel.from_solved_net(solved), tolerance_mva=tolerance_mva, max_iteration=max_iteration)

    def fresh(self) -> FastPowerFlow:
        """A solver sharing this one's model and factors, with its own warm start (no-load voltages)."""
        other = copy.copy(self)
        other._v_last = self._v_no_load.copy()
        other._step_args = self._step_args  # read-only arguments: shared
        return other

    @property
    def bus_index(self) -> pd.Index:
        return self.model.bus_index

    # ------------------------------------------------------------------ single case
    def solve(self, *, p_bus_mw: pd.Series, q_bus_mvar: pd.Series) -> PowerFlowResult:
        """Solve for bus loads (MW / Mvar, load convention, indexed by pandapower bus; missing buses = 0).

        Never raises on non-convergence: returns ``converged=False`` with NaN results.
        """
        return self.solve_arrays(self._bus_vector(p_bus_mw, "p_bus_mw"), self._bus_vector(q_bus_mvar, "q_bus_mvar"))

    def solve_arrays(self, p_bus_mw: np.ndarray, q_bus_mvar: np.ndarray) -> PowerFlowResult:
        """``solve`` for injection arrays ordered like ``bus_index`` (the engine's per-step call: no pandas,
        compiled single-case kernels around the fixed point)."""
        return self.solve_specified(self._case.specified(self.model, p_bus_mw, q_bus_mvar))

    def solve_specified(self, s_spec: np.ndarray) -> PowerFlowResult:
        """``solve`` for the net injection per internal bus (generator convention, per unit)."""
        model = self.model
        v, converged = self._solve_vector(s_spec)
        if converged:
            self._v_last = v
        else:
            v = np.full(model.n_bus, np.nan + 0j)
        vm, va, line_loading, trafo_loading, losses, head = self._case.evaluate(model, v, s_spec)
        return PowerFlowResult(labels=self.labels, vm=vm, va=va, line_loading=line_loading,
                               trafo_loading=trafo_loading, p_head_mw=float(head.real), q_head_mvar=float(head.imag),
                               losses_mw=float(losses), converged=bool(converged))

    def solve_elements(self, element_map: tuple, load_p: np.ndarray, sgen_p: np.ndarray, asset_p: np.ndarray,
                       load_q: np.ndarray, asset_q: np.ndarray) -> PowerFlowResult:
        """``solve_specified`` of the injection ``specified_from_elements(*element_map..., x_p, x_q)`` with
        x_p = [load_p, sgen_p, asset_p] and x_q = [load_q, asset_q] (the engine's per-step call): one compiled call
        from element powers to the results, which land in one block (``vm``, ``va``, loadings are read-only views
        of it). The same kernels inside, so the same numbers."""
        if self._use_zbus:
            args = self._step_args.get(id(element_map))
            if args is None or args[0] is not element_map:
                args = self._step_args[id(element_map)] = (element_map, *self._step_arguments(element_map))
            _, ints, floats, cplx, meta, coef, layout = args
            out = np.empty(layout[-1] + 3)
            v, converged = _step_packed(ints, floats, cplx, meta, coef, load_p, sgen_p, asset_p, load_q, asset_q,
                                        self._v_last, out)
        if not self._use_zbus or not converged:  # Newton-Raphson from the same injection, as before
            kp, kq, const = element_map
            x_p, x_q = np.concatenate([load_p, sgen_p, asset_p]), np.concatenate([load_q, asset_q])
            return self.solve_specified(specified_from_elements(*kp, *kq, x_p, x_q, const, self.model.base_mva))
        self._v_last = v
        out.flags.writeable = False
        n_bus, n_line, n_trafo, end = layout
        p_head, q_head, losses = out[end:end + 3].tolist()
        result = object.__new__(PowerFlowResult)  # every field, without the frozen __init__'s per-field setattr
        object.__setattr__(result, "__dict__", {
            "labels": self.labels, "vm": out[:n_bus], "va": out[n_bus:2 * n_bus], "line_loading": out[2 * n_bus:n_line],
            "trafo_loading": out[n_line:n_trafo], "p_head_mw": p_head, "q_head_mvar": q_head, "losses_mw": losses,
            "converged": True})
        return result

    def _step_arguments(self, element_map: tuple) -> tuple[Any, ...]:
        """The static arguments of ``_step_packed`` around the per-step ones, built once per element map: the
        arrays of each dtype stacked into one, their offsets and the scalars in ``meta`` (numba unboxes every
        argument on every call: ~0.15 us each)."""
        kp, kq, const = element_map
        model, case = self.model, self._case
        l_ptr, l_idx, l_val, u_ptr, u_idx, u_val, u_inv_diag, perm_r, perm_c = self._factors.arrays
        ints, int_at = _stacked(np.int64, kp[0], kp[1], kq[0], kq[1], l_ptr, l_idx, u_ptr, u_idx, perm_r, perm_c,
                                model.pq, case.yf[0], case.yf[1], case.yt[0], case.yt[1], case.ybus_ref[0],
                                case.ybus_ref[1], case.branch_from, case.branch_to, case.line_branch,
                                case.trafo_branch, case.loss_branches, case.ref, case.bus_positions, case.bus_internal)
        floats, float_at = _stacked(np.float64, kp[2], kq[2], case.line_idle, case.trafo_idle)
        cplx, cplx_at = _stacked(np.complex128, const, l_val, u_val, u_inv_diag, model.v_set, self._minus_y_pq_ref_v,
                                 case.yf[2], case.yt[2], case.ybus_ref[2])
        pre = (ints, int_at, floats, float_at, cplx, cplx_at, case.line_coef, case.trafo_coef)
        post = (float(model.base_mva), float(self._tolerance_pu), int(self.max_iteration),
                bool(model.trafo_power_based), int(case.n_bus))
        n_bus = case.n_bus
        n_line = 2 * n_bus + len(case.line_branch)
        n_trafo = n_line + len(case.trafo_branch)
        # _step_packed's arguments: the same arrays and scalars, fewer of them (the scalars end ``floats`` and
        # ``meta``; both loading coefficient tables in one, lines first).
        packed_floats = np.concatenate([floats, [post[0], post[1]]])
        meta = np.concatenate([[len(int_at), len(float_at), len(cplx_at), post[2], int(post[3]), post[4],
                                len(case.line_coef)], int_at, float_at, cplx_at]).astype(np.int64)
        coef = np.ascontiguousarray(np.concatenate([np.asarray(case.line_coef, float).reshape(-1, 2),
                                                    np.asarray(case.trafo_coef, float).reshape(-1, 2)]))
        return ints, packed_floats, cplx, meta, coef, (n_bus, n_line, n_trafo, n_trafo)

    def solve_voltages(self, *, p_bus_mw: np.ndarray, q_bus_mvar: np.ndarray) -> tuple[np.ndarray, bool]:
        """Internal complex voltages for injection arrays ordered like ``bus_index`` (no pandas overhead)."""
        s_spec = self.model.specified_power_pu(np.asarray(p_bus_mw, float), np.asarray(q_bus_mvar, float))
        v, converged = self._solve_vector(s_spec)
        if converged:
            self._v_last = v
        return v, converged

    def _solve_vector(self, s_spec: np.ndarray) -> tuple[np.ndarray, bool]:
        if self._use_zbus:
            pq = self.model.pq
            v_pq, converged = _zbus_case(*self._factors.arrays, s_spec[pq], self._v_last[pq], self._minus_y_pq_ref_v,
                                         self._tolerance_pu, self.max_iteration)
            if converged:
                v = self.model.v_set.copy()
                v[pq] = v_pq
                return v, True
        return newton_raphson(
            self.model, s_spec, self._v_no_load, tolerance_pu=self._tolerance_pu, max_iteration=30
        )

    # ------------------------------------------------------------------ many cases
    def solve_many(self, *, p_bus_mw: pd.DataFrame, q_bus_mvar: pd.DataFrame) -> BatchResult:
        """Solve every row (e.g. each time step) of bus-load frames (rows × pandapower bus, MW / Mvar, load
        convention; missing bus columns = 0). Cases are independent: use it when the power flow does not feed
        back into dispatch (open-loop replay)."""
        if not p_bus_mw.index.equals(q_bus_mvar.index):
            raise ValueError("p_bus_mw and q_bus_mvar must have the same row index")
        model = self.model
        batch = self.solve_many_arrays(self._bus_matrix(p_bus_mw, "p_bus_mw"), self._bus_matrix(q_bus_mvar, "q_bus_mvar"))
        rows = p_bus_mw.index
        return BatchResult(
            vm_pu=pd.DataFrame(batch.vm.T, index=rows, columns=model.bus_index),
            va_degree=pd.DataFrame(batch.va.T, index=rows, columns=model.bus_index),
            line_loading_percent=pd.DataFrame(batch.line_loading.T, index=rows, columns=model.line_index),
            trafo_loading_percent=pd.DataFrame(batch.trafo_loading.T, index=rows, columns=model.trafo_index),
            p_head_mw=pd.Series(batch.p_head_mw, index=rows, name="p_head_mw"),
            q_head_mvar=pd.Series(batch.q_head_mvar, index=rows, name="q_head_mvar"),
            losses_mw=pd.Series(batch.losses_mw, index=rows, name="losses_mw"),
            converged=pd.Series(batch.converged, index=rows, name="converged"),
        )

    def solve_many_arrays(self, p_bus_mw: np.ndarray, q_bus_mvar: np.ndarray, *,
                          v_start: np.ndarray | None = None) -> BatchArrays:
        """``solve_many`` on arrays: injections ``n_bus x n_case`` ordered like ``bus_index``. ``v_start``
        (internal voltages, ``n_internal x n_case``) warm-starts the fixed point (a cache: the answers agree to
        the tolerance either way). Cases are solved in column blocks that bound the memory on large feeders.
        The last converged case becomes the warm start of the next single ``solve``."""
        model = self.model
        s_all = model.specified_power_pu(np.asarray(p_bus_mw, float), np.asarray(q_bus_mvar, float))
        n_case = s_all.shape[1]
        block = max(1, _BATCH_VALUES // max(model.n_bus, 1))
        v = np.empty((model.n_bus, n_case), dtype=complex)
        converged = np.zeros(n_case, dtype=bool)
        for first in range(0, n_case, block):
            cols = slice(first, min(first + block, n_case))
            v[:, cols], converged[cols] = self._solve_block(
                s_all[:, cols], None if v_start is None else v_start[:, cols])
        if converged.any():
            self._v_last = v[:, np.flatnonzero(converged)[-1]].copy()
        v_out = v.copy()
        v_out[:, ~converged] = np.nan
        vm, va, line_loading, trafo_loading, losses, head = self._case.evaluate_many(model, v_out, s_all)
        return BatchArrays(labels=self.labels, vm=vm, va=va, line_loading=line_loading, trafo_loading=trafo_loading,
                           p_head_mw=np.asarray(head.real, float), q_head_mvar=np.asarray(head.imag, float),
                           losses_mw=np.asarray(losses, float), converged=converged, v_internal=v_out)

    def _solve_block(self, s_spec: np.ndarray, v_start: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        n_case = s_spec.shape[1]
        if self._use_zbus:
            v, converged = self._zbus_chain(s_spec, v_start)
        else:
            v = np.repeat(self._v_no_load[:, None], n_case, axis=1)
            converged = np.zeros(n_case, dtype=bool)
        for case in np.flatnonzero(~converged):
            v[:, case], converged[case] = newton_raphson(
                self.model, s_spec[:, case], self._v_no_load, tolerance_pu=self._tolerance_pu, max_iteration=30
            )
        return v, converged

    # ------------------------------------------------------------------ internals
    def _no_load_voltage(self) -> np.ndarray:
        """Voltages with zero injections (exact when there are no PV buses): the fixed point's start."""
        model = self.model
        v = model.v_set.copy()
        if not self._use_zbus:
            return v
        ybus = model.ybus.tocsc()
        pq, ref = model.pq, model.ref
        self._factors = _LuFactors.of(ybus[pq][:, pq].tocsc())
        self._y_pq_ref_v = np.asarray(ybus[pq][:, ref] @ model.v_set[ref], dtype=complex)
        self._minus_y_pq_ref_v = -self._y_pq_ref_v
        v[pq] = self._factors.solve(-self._y_pq_ref_v[:, None])[:, 0]
        return v

    def _zbus_chain(self, s_spec: np.ndarray, v_start: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The cases one after another with the single-case fixed point (``_zbus_case``, what a step solves),
        each started from its column of ``v_start`` where that is finite, else from the case before it (the
        first from this solver's last solution): consecutive intervals are close, so few iterations each, and
        each case stops when it has converged."""
        pq = self.model.pq
        s_cases = np.ascontiguousarray(s_spec[pq].T)
        if v_start is None:
            starts = np.zeros_like(s_cases)
            has_start = np.zeros(len(s_cases), dtype=bool)
        else:
            starts = np.ascontiguousarray(v_start[pq].T)
            has_start = np.isfinite(starts).all(axis=1)
        v_pq, converged = _zbus_chain(*self._factors.arrays, s_cases, starts, has_start,
                                      np.ascontiguousarray(self._v_last[pq]), self._minus_y_pq_ref_v,
                                      self._tolerance_pu, self.max_iteration)
        v = np.repeat(self.model.v_set[:, None], s_spec.shape[1], axis=1)
        v[pq] = v_pq.T
        return v, converged

    def _bus_vector(self, values: pd.Series, name: str) -> np.ndarray:
        if values.index.equals(self.model.bus_index):
            return values.to_numpy(dtype=float)
        _check_labels(values.index, self.model.bus_index, name)
        return values.reindex(self.model.bus_index, fill_value=0.0).to_numpy(dtype=float)

    def _bus_matrix(self, values: pd.DataFrame, name: str) -> np.ndarray:
        if not values.columns.equals(self.model.bus_index):
            _check_labels(values.columns, self.model.bus_index, name)
            values = values.reindex(columns=self.model.bus_index, fill_value=0.0)
        return values.to_numpy(dtype=float).T


@dataclass(frozen=True)
class _LuFactors:
    """A sparse LU (Pr A Pc = L U) unpacked into CSR arrays for the numba triangular solves."""

    arrays: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, matrix: sp.csc_matrix) -> _LuFactors:
        # Diagonal pivots where acceptable (an admittance matrix's diagonal dominates its column): no fill on a
        # radial feeder, so the triangular solves of every fixed-point iteration touch each branch once (with
        # SuperLU's default partial pivoting U had 2.5x the entries of L on kerber-dorfnetz).
        lu = spla.splu(matrix, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.1, options={"SymmetricMode": True})
        lower = sp.csr_matrix(sp.tril(lu.L, k=-1))
        upper = sp.csr_matrix(lu.U)
        diagonal = upper.diagonal()
        strict_upper = sp.csr_matrix(sp.triu(upper, k=1))
        return cls(
            arrays=(
                lower.indptr.astype(np.int64),
                lower.indices.astype(np.int64),
                lower.data.astype(complex),
                strict_upper.indptr.astype(np.int64),
                strict_upper.indices.astype(np.int64),
                strict_upper.data.astype(complex),
                (1.0 / diagonal).astype(complex),
                lu.perm_r.astype(np.int64),
                lu.perm_c.astype(np.int64),
            )
        )

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        return _lu_solve(*self.arrays, np.ascontiguousarray(rhs, dtype=complex))


@numba.njit(cache=True, nogil=True)
def _lu_solve(l_ptr, l_idx, l_val, u_ptr, u_idx, u_val, u_inv_diag, perm_r, perm_c, rhs):  # pragma: no cover
    """Solve A X = RHS for all columns with A's sparse LU factors (x = Pc U^-1 L^-1 Pr b)."""
    n, m = rhs.shape
    work = np.empty_like(rhs)
    for i in range(n):  # element loops, not row slices: a slice assignment compiles numba's shape checks (~2 s)
        for c in range(m):
            work[perm_r[i], c] = rhs[i, c]
    for i in range(n):
        for k in range(l_ptr[i], l_ptr[i + 1]):
            j = l_idx[k]
            value = l_val[k]
            for c in range(m):
                work[i, c] -= value * work[j, c]
    for i in range(n - 1, -1, -1):
        for k in range(u_ptr[i], u_ptr[i + 1]):
            j = u_idx[k]
            value = u_val[k]
            for c in range(m):
                work[i, c] -= value * work[j, c]
        for c in range(m):
            work[i, c] *= u_inv_diag[i]
    out = np.empty_like(rhs)
    for i in range(n):
        for c in range(m):
            out[i, c] = work[perm_c[i], c]
    return out


@numba.njit(cache=True, nogil=True)
def _zbus_case(l_ptr, l_idx, l_val, u_ptr, u_idx, u_val, u_inv_diag, perm_r, perm_c, s_pq, v_pq, offset, tolerance,
               max_iteration):  # pragma: no cover
    """Fixed point V <- Y_qq^-1 (conj(S / V) + offset) for one case, until the power mismatch < tolerance.

    The mismatch at the new iterate equals S (V_new - V_old) / V_old (because Y_qq V_new + Y_qr V_r equals
    conj(S / V_old)), so it is checked without another product with Ybus. Work arrays are allocated once; a
    step and a batch (``_zbus_chain``) run this same kernel, so they give the same voltages from the same start."""
    n = len(s_pq)
    v = v_pq.copy()
    v_new = np.empty_like(v)
    work = np.empty_like(v)
    tolerance_squared = tolerance * tolerance
    converged = False
    for _ in range(max_iteration):
        for i in range(n):
            work[perm_r[i]] = np.conj(s_pq[i] / v[i]) + offset[i]
        for i in range(n):
            for k in range(l_ptr[i], l_ptr[i + 1]):
                work[i] -= l_val[k] * work[l_idx[k]]
        for i in range(n - 1, -1, -1):
            for k in range(u_ptr[i], u_ptr[i + 1]):
                work[i] -= u_val[k] * work[u_idx[k]]
            work[i] *= u_inv_diag[i]
        done = True
        finite = True
        for i in range(n):
            v_new[i] = work[perm_c[i]]
            step = s_pq[i] * (v_new[i] - v[i])
            old = v[i]
            left = step.real * step.real + step.imag * step.imag
            right = tolerance_squared * (old.real * old.real + old.imag * old.imag)
            if not (left < right):
                done = False
                if not (np.isfinite(left) and np.isfinite(right)):
                    finite = False
        v, v_new = v_new, v
        converged = done and finite
        if done or not finite:
            break
    return v, converged


@numba.njit(cache=True, nogil=True)
def _zbus_chain(l_ptr, l_idx, l_val, u_ptr, u_idx, u_val, u_inv_diag, perm_r, perm_c, s_cases, starts, has_start,
                v_first, offset, tolerance, max_iteration):  # pragma: no cover - compiled
    """``_zbus_case`` for each row of ``s_cases`` in turn: from its row of ``starts`` where ``has_start``, else
    from the last converged case before it (``v_first`` before any). Returns V per case (rows) and convergence."""
    m, n = s_cases.shape
    v_out = np.empty((m, n), dtype=np.complex128)
    converged = np.zeros(m, dtype=np.bool_)
    previous = v_first.copy()
    for c in range(m):
        start = starts[c] if has_start[c] else previous
        v, ok = _zbus_case(l_ptr, l_idx, l_val, u_ptr, u_idx, u_val, u_inv_diag, perm_r, perm_c, s_cases[c], start,
                           offset, tolerance, max_iteration)
        for i in range(n):  # element by element: a row assignment compiles numba's shape checks
            v_out[c, i] = v[i]
        converged[c] = ok
        if ok:
            previous = v
    return v_out, converged


def _energized_positions(model: NetworkModel) -> tuple[np.ndarray, np.ndarray]:
    positions = np.flatnonzero(model.bus_ppci >= 0)
    return positions, model.bus_ppci[positions]


def _check_labels(labels: pd.Index, known: pd.Index, name: str) -> None:
    unknown = labels.difference(known)
    if len(unknown):
        raise ValueError(f"{name}: unknown bus indices {list(unknown[:5])}")


# -- one case, compiled: the engine's per-step path (same arithmetic as NetworkModel.specified_power_pu / evaluate)

def _csr(matrix: sp.spmatrix, dtype: type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = sp.csr_matrix(matrix)
    return m.indptr.astype(np.int64), m.indices.astype(np.int64), m.data.astype(dtype)


@dataclass(frozen=True)
class _CaseArrays:
    """NetworkModel's matrices and lookups as flat arrays for the compiled single-case kernels."""

    injection: tuple[np.ndarray, np.ndarray, np.ndarray]
    yf: tuple[np.ndarray, np.ndarray, np.ndarray]
    yt: tuple[np.ndarray, np.ndarray, np.ndarray]
    ybus_ref: tuple[np.ndarray, np.ndarray, np.ndarray]
    s_gen_pu: np.ndarray
    branch_from: np.ndarray
    branch_to: np.ndarray
    line_branch: np.ndarray
    line_coef: np.ndarray
    line_idle: np.ndarray
    trafo_branch: np.ndarray
    trafo_coef: np.ndarray
    trafo_idle: np.ndarray
    loss_branches: np.ndarray
    ref: np.ndarray
    bus_positions: np.ndarray
    bus_internal: np.ndarray
    n_bus: int

    @classmethod
    def of(cls, model: NetworkModel, positions: tuple[np.ndarray, np.ndarray]) -> _CaseArrays:
        return cls(
            injection=_csr(model.injection_map, float), yf=_csr(model.yf, complex), yt=_csr(model.yt, complex),
            ybus_ref=_csr(model.ybus_ref, complex), s_gen_pu=model.s_gen_pu.astype(complex),
            branch_from=model.branch_from, branch_to=model.branch_to,
            line_branch=model.line_branch.astype(np.int64), line_coef=np.ascontiguousarray(model.line_coef),
            line_idle=model.line_idle_loading.astype(float), trafo_branch=model.trafo_branch.astype(np.int64),
            trafo_coef=np.ascontiguousarray(model.trafo_coef), trafo_idle=model.trafo_idle_loading.astype(float),
            loss_branches=model.loss_branches.astype(np.int64), ref=model.ref, bus_positions=positions[0],
            bus_internal=positions[1], n_bus=len(model.bus_index),
        )

    def specified(self, model: NetworkModel, p_bus_mw: np.ndarray, q_bus_mvar: np.ndarray) -> np.ndarray:
        return _specified_case(*self.injection, np.asarray(p_bus_mw, dtype=float),
                               np.asarray(q_bus_mvar, dtype=float), self.s_gen_pu, model.base_mva)

    def evaluate_many(self, model: NetworkModel, v: np.ndarray, s_spec: np.ndarray) -> tuple[np.ndarray, ...]:
        """``evaluate`` of many cases (``v``, ``s_spec``: internal buses x cases); the per-bus / per-branch results
        as (n x n_case) views of case-major blocks (a case's row is contiguous)."""
        vm, va, line, trafo, losses, head = _evaluate_many(
            np.ascontiguousarray(v.T), np.ascontiguousarray(s_spec.T), *self.yf, *self.yt, *self.ybus_ref,
            self.branch_from, self.branch_to, self.line_branch, self.line_coef, self.line_idle, self.trafo_branch,
            self.trafo_coef, self.trafo_idle, model.trafo_power_based, self.loss_branches, self.ref,
            self.bus_positions, self.bus_internal, self.n_bus, model.base_mva)
        return vm.T, va.T, line.T, trafo.T, losses, head

    def evaluate(self, model: NetworkModel, v: np.ndarray, s_spec: np.ndarray) -> tuple[np.ndarray, ...]:
        """Bus vm / va (pandapower bus order), line and trafo loading, losses (MW), head import (MVA)."""
        return _evaluate_case(v, s_spec, *self.yf, *self.yt, *self.ybus_ref, self.branch_from, self.branch_to,
                              self.line_branch, self.line_coef, self.line_idle, self.trafo_branch, self.trafo_coef,
                              self.trafo_idle, model.trafo_power_based, self.loss_branches, self.ref,
                              self.bus_positions, self.bus_internal, self.n_bus, model.base_mva)


@numba.njit(cache=True, nogil=True)
def _evaluate_many(v, s_spec, f_ptr, f_idx, f_val, t_ptr, t_idx, t_val, r_ptr, r_idx, r_val, branch_from, branch_to,
                   line_branch, line_coef, line_idle, trafo_branch, trafo_coef, trafo_idle, power_based, loss_rows,
                   ref, positions, internal, n_bus, base_mva):  # pragma: no cover - compiled
    """``_evaluate_case`` for every row of ``v`` / ``s_spec`` (cases x internal buses): per-case rows of bus vm /
    va, line and trafo loading, and per-case losses and head import (the step's kernel, so the same numbers)."""
    m = v.shape[0]
    vm = np.empty((m, n_bus))
    va = np.empty((m, n_bus))
    line = np.empty((m, len(line_branch)))
    trafo = np.empty((m, len(trafo_branch)))
    losses = np.empty(m)
    head = np.empty(m, dtype=np.complex128)
    for c in range(m):
        vm_c, va_c, line_c, trafo_c, losses[c], head[c] = _evaluate_case(
            v[c], s_spec[c], f_ptr, f_idx, f_val, t_ptr, t_idx, t_val, r_ptr, r_idx, r_val, branch_from, branch_to,
            line_branch, line_coef, line_idle, trafo_branch, trafo_coef, trafo_idle, power_based, loss_rows, ref,
            positions, internal, n_bus, base_mva)
        for k in range(n_bus):  # element by element: a row assignment compiles numba's shape checks
            vm[c, k] = vm_c[k]
            va[c, k] = va_c[k]
        for k in range(len(line_branch)):
            line[c, k] = line_c[k]
        for k in range(len(trafo_branch)):
            trafo[c, k] = trafo_c[k]
    return vm, va, line, trafo, losses, head


@numba.njit(cache=True, nogil=True)
def specified_from_elements(p_ptr, p_idx, p_val, q_ptr, q_idx, q_val, x_p, x_q, const, base_mva):  # pragma: no cover
    """const - (Kp x_p + j Kq x_q) / base for one case: net injection per internal bus straight from element
    powers (Kp, Kq: element -> internal bus, CSR; const: generation minus constant demand)."""
    n = len(p_ptr) - 1
    out = np.empty(n, dtype=np.complex128)
    for i in range(n):
        acc_p = 0.0
        for k in range(p_ptr[i], p_ptr[i + 1]):
            acc_p += p_val[k] * x_p[p_idx[k]]
        acc_q = 0.0
        for k in range(q_ptr[i], q_ptr[i + 1]):
            acc_q += q_val[k] * x_q[q_idx[k]]
        out[i] = const[i] - (acc_p + 1j * acc_q) / base_mva
    return out


@numba.njit(cache=True, nogil=True)
def _specified_case(ptr, idx, val, p, q, s_gen, base_mva):  # pragma: no cover - compiled
    """s_gen - M (p + jq) / base for one case (M: pandapower bus -> internal bus, CSR)."""
    n = len(ptr) - 1
    out = np.empty(n, dtype=np.complex128)
    for i in range(n):
        acc = 0.0 + 0.0j
        for k in range(ptr[i], ptr[i + 1]):
            j = idx[k]
            acc += val[k] * (p[j] + 1j * q[j])
        out[i] = s_gen[i] - acc / base_mva
    return out


@numba.njit(cache=True, inline="always")
def _cabs(z):  # pragma: no cover - compiled
    """|z| as sqrt(re² + im²): a tenth of the cost of abs (hypot, which guards against overflow that per-unit
    voltages and currents never come near); the same to ~1e-16 relative."""
    return math.sqrt(z.real * z.real + z.imag * z.imag)


@numba.njit(cache=True, inline="always")
def _nan_max(a, b):  # pragma: no cover - compiled
    if a != a or b != b:
        return np.nan
    return a if a > b else b


@numba.njit(cache=True, nogil=True)
def _evaluate_case(v, s_spec, f_ptr, f_idx, f_val, t_ptr, t_idx, t_val, r_ptr, r_idx, r_val, branch_from, branch_to,
                   line_branch, line_coef, line_idle, trafo_branch, trafo_coef, trafo_idle, power_based, loss_rows,
                   ref, positions, internal, n_bus, base_mva):  # pragma: no cover - compiled
    n_branch = len(f_ptr) - 1
    i_from = np.zeros(n_branch, dtype=np.complex128)
    i_to = np.zeros(n_branch, dtype=np.complex128)
    for b in range(n_branch):
        acc = 0.0 + 0.0j
        for k in range(f_ptr[b], f_ptr[b + 1]):
            acc += f_val[k] * v[f_idx[k]]
        i_from[b] = acc
        acc = 0.0 + 0.0j
        for k in range(t_ptr[b], t_ptr[b + 1]):
            acc += t_val[k] * v[t_idx[k]]
        i_to[b] = acc
    line = np.empty(len(line_branch))
    for k in range(len(line_branch)):
        b = line_branch[k]
        if b < 0:
            line[k] = line_idle[k]
        else:
            line[k] = _nan_max(line_coef[k, 0] * _cabs(i_from[b]), line_coef[k, 1] * _cabs(i_to[b]))
    trafo = np.empty(len(trafo_branch))
    for k in range(len(trafo_branch)):
        b = trafo_branch[k]
        if b < 0:
            trafo[k] = trafo_idle[k]
        else:
            side_from = trafo_coef[k, 0] * _cabs(i_from[b])
            side_to = trafo_coef[k, 1] * _cabs(i_to[b])
            if power_based:
                side_from = side_from * _cabs(v[branch_from[b]])
                side_to = side_to * _cabs(v[branch_to[b]])
            trafo[k] = _nan_max(side_from, side_to)
    losses = 0.0
    for r in loss_rows:
        losses += (v[branch_from[r]] * np.conj(i_from[r]) + v[branch_to[r]] * np.conj(i_to[r])).real
    head = 0.0 + 0.0j
    for k in range(len(ref)):
        acc = 0.0 + 0.0j
        for j in range(r_ptr[k], r_ptr[k + 1]):
            acc += r_val[j] * v[r_idx[j]]
        head += v[ref[k]] * np.conj(acc) - s_spec[ref[k]]
    vm = np.full(n_bus, np.nan)
    va = np.full(n_bus, np.nan)
    for k in range(len(positions)):
        x = v[internal[k]]
        vm[positions[k]] = _cabs(x)
        va[positions[k]] = np.arctan2(x.imag, x.real) * (180.0 / np.pi)
    return vm, va, line, trafo, losses * base_mva, head * base_mva


def _stacked(dtype: type, *arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``arrays`` (1-D) end to end as one array of ``dtype``, and where each starts (and the last ends)."""
    bounds = np.zeros(len(arrays) + 1, dtype=np.int64)
    bounds[1:] = np.cumsum([len(a) for a in arrays])
    stacked = np.concatenate([np.asarray(a, dtype=dtype).ravel() for a in arrays]) if arrays else np.zeros(0, dtype)
    return np.ascontiguousarray(stacked, dtype=dtype), bounds


@numba.njit(cache=True, nogil=True)
def _step_packed(ints, floats, cplx, meta, coef, load_p, sgen_p, asset_p, load_q, asset_q, v_last,
                 out):  # pragma: no cover - compiled
    """``_step_case`` with its static arguments packed (``FastPowerFlow._step_arguments``): 12 arguments to
    unbox per call instead of 20; the same kernel inside, so the same numbers."""
    n_oi, n_of, n_oc = meta[0], meta[1], meta[2]
    max_iteration, power_based, n_bus, n_line = meta[3], meta[4] != 0, meta[5], meta[6]
    k = 7
    oi = meta[k:k + n_oi]
    of = meta[k + n_oi:k + n_oi + n_of]
    oc = meta[k + n_oi + n_of:k + n_oi + n_of + n_oc]
    m = len(floats)
    return _step_case(ints, oi, floats[:m - 2], of, cplx, oc, coef[:n_line], coef[n_line:], load_p, sgen_p, asset_p,
                      load_q, asset_q, v_last, out, floats[m - 2], floats[m - 1], max_iteration, power_based, n_bus)


@numba.njit(cache=True, nogil=True)
def _step_case(ints, oi, floats, of, cplx, oc, line_coef, trafo_coef, load_p, sgen_p, asset_p, load_q, asset_q,
               v_last, out, base_mva, tolerance, max_iteration, power_based, n_bus):  # pragma: no cover - compiled
    """One interval from element powers (x_p = [load_p, sgen_p, asset_p], x_q = [load_q, asset_q]):
    ``specified_from_elements``, the fixed point (``_zbus_case``) from
    ``v_last`` and, when it converged, ``_evaluate_case`` written into ``out`` (vm, va, line and trafo loading,
    then p_head, q_head, losses). The static arrays come stacked by dtype (``FastPowerFlow._step_arguments``).
    Returns the internal voltages and whether the fixed point converged."""
    p_ptr, p_idx, q_ptr, q_idx = ints[oi[0]:oi[1]], ints[oi[1]:oi[2]], ints[oi[2]:oi[3]], ints[oi[3]:oi[4]]
    l_ptr, l_idx, u_ptr, u_idx = ints[oi[4]:oi[5]], ints[oi[5]:oi[6]], ints[oi[6]:oi[7]], ints[oi[7]:oi[8]]
    perm_r, perm_c, pq = ints[oi[8]:oi[9]], ints[oi[9]:oi[10]], ints[oi[10]:oi[11]]
    f_ptr, f_idx, t_ptr, t_idx = ints[oi[11]:oi[12]], ints[oi[12]:oi[13]], ints[oi[13]:oi[14]], ints[oi[14]:oi[15]]
    r_ptr, r_idx = ints[oi[15]:oi[16]], ints[oi[16]:oi[17]]
    branch_from, branch_to = ints[oi[17]:oi[18]], ints[oi[18]:oi[19]]
    line_branch, trafo_branch, loss_rows = ints[oi[19]:oi[20]], ints[oi[20]:oi[21]], ints[oi[21]:oi[22]]
    ref, positions, internal = ints[oi[22]:oi[23]], ints[oi[23]:oi[24]], ints[oi[24]:oi[25]]
    p_val, q_val = floats[of[0]:of[1]], floats[of[1]:of[2]]
    line_idle, trafo_idle = floats[of[2]:of[3]], floats[of[3]:of[4]]
    const, l_val, u_val, u_inv_diag = cplx[oc[0]:oc[1]], cplx[oc[1]:oc[2]], cplx[oc[2]:oc[3]], cplx[oc[3]:oc[4]]
    v_set, offset, f_val, t_val, r_val = (cplx[oc[4]:oc[5]], cplx[oc[5]:oc[6]], cplx[oc[6]:oc[7]], cplx[oc[7]:oc[8]],
                                          cplx[oc[8]:oc[9]])
    n_load, n_sgen, n_asset = len(load_p), len(sgen_p), len(asset_p)
    x_p = np.empty(n_load + n_sgen + n_asset)
    x_q = np.empty(n_load + n_asset)
    for j in range(n_load):
        x_p[j] = load_p[j]
        x_q[j] = load_q[j]
    for j in range(n_sgen):
        x_p[n_load + j] = sgen_p[j]
    for j in range(n_asset):
        x_p[n_load + n_sgen + j] = asset_p[j]
        x_q[n_load + j] = asset_q[j]
    s_spec = specified_from_elements(p_ptr, p_idx, p_val, q_ptr, q_idx, q_val, x_p, x_q, const, base_mva)
    n_pq = len(pq)
    s_pq = np.empty(n_pq, dtype=np.complex128)
    v_pq = np.empty(n_pq, dtype=np.complex128)
    for i in range(n_pq):
        s_pq[i] = s_spec[pq[i]]
        v_pq[i] = v_last[pq[i]]
    v_new, converged = _zbus_case(l_ptr, l_idx, l_val, u_ptr, u_idx, u_val, u_inv_diag, perm_r, perm_c, s_pq, v_pq,
                                  offset, tolerance, max_iteration)
    v = v_set.copy()
    if not converged:
        return v, False
    for i in range(n_pq):
        v[pq[i]] = v_new[i]
    vm, va, line, trafo, losses, head = _evaluate_case(
        v, s_spec, f_ptr, f_idx, f_val, t_ptr, t_idx, t_val, r_ptr, r_idx, r_val, branch_from, branch_to,
        line_branch, line_coef, line_idle, trafo_branch, trafo_coef, trafo_idle, power_based, loss_rows, ref,
        positions, internal, n_bus, base_mva)
    k = 0
    for j in range(n_bus):
        out[k + j] = vm[j]
    k += n_bus
    for j in range(n_bus):
        out[k + j] = va[j]
    k += n_bus
    for j in range(len(line)):
        out[k + j] = line[j]
    k += len(line)
    for j in range(len(trafo)):
        out[k + j] = trafo[j]
    k += len(trafo)
    out[k] = head.real
    out[k + 1] = head.imag
    out[k + 2] = losses
    return v, True
