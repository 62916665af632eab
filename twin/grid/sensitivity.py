"""Voltage and branch-loading sensitivities to bus injections, from the AC power-flow Jacobian.

Owns the linearization the twin hands to controllers (``controllers.api.Sensitivities``): at a solved
operating point, d|V|/dP and d|V|/dQ of every monitored bus with respect to one more MW / Mvar *consumed* at
each bus (load convention, so consuming more mostly lowers voltage), and d(loading %)/dP of every monitored
line and trafo by the chain rule through the branch currents, with loading defined exactly as pandapower does.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandapower as pp
import pandas as pd
import scipy.sparse.linalg as spla

from controllers.api import Sensitivities
from twin.grid.fastpf import FastPowerFlow, NetworkModel, jacobian
from twin.grid.injections import bus_injections

__all__ = ["branch_labels", "compute_sensitivities", "linearize", "sensitivities_at"]


def compute_sensitivities(
    net: pp.pandapowerNet,
    *,
    monitored_buses: Iterable[int] | None = None,
    monitored_branches: Iterable[str] | None = None,
) -> Sensitivities:
    """Sensitivities at the operating point of the last converged ``pandapower.runpp(net)``.

    ``monitored_buses``: pandapower bus indices for the rows (default: all buses).
    ``monitored_branches``: ``"line:<idx>"`` / ``"trafo:<idx>"`` labels (default: all lines and trafos).
    Columns are always every bus of ``net.bus``. Raises ``ValueError`` if the net holds no converged result.
    """
    if not getattr(net, "converged", False):
        raise ValueError("net has no converged power flow: run pandapower.runpp(net) first")
    model = NetworkModel.from_solved_net(net)
    p_bus_mw, q_bus_mvar = bus_injections(net)
    return linearize(
        model,
        np.asarray(net._ppc["internal"]["V"], dtype=complex),
        p_bus_mw=p_bus_mw,
        q_bus_mvar=q_bus_mvar,
        monitored_buses=monitored_buses,
        monitored_branches=monitored_branches,
    )


def sensitivities_at(
    solver: FastPowerFlow,
    *,
    p_bus_mw: pd.Series,
    q_bus_mvar: pd.Series,
    monitored_buses: Iterable[int] | None = None,
    monitored_branches: Iterable[str] | None = None,
) -> Sensitivities:
    """Solve with the fast path for these bus loads, then linearize there (no pandapower call)."""
    bus_index = solver.bus_index
    p_full = p_bus_mw.reindex(bus_index, fill_value=0.0).astype(float)
    q_full = q_bus_mvar.reindex(bus_index, fill_value=0.0).astype(float)
    v, converged = solver.solve_voltages(p_bus_mw=p_full.to_numpy(), q_bus_mvar=q_full.to_numpy())
    if not converged:
        raise ValueError("power flow did not converge at the requested operating point")
    return linearize(
        solver.model,
        v,
        p_bus_mw=p_full,
        q_bus_mvar=q_full,
        monitored_buses=monitored_buses,
        monitored_branches=monitored_branches,
    )


def branch_labels(model: NetworkModel) -> list[str]:
    """All branch labels of the model, lines first: ``"line:<idx>"``, ``"trafo:<idx>"``."""
    return [f"line:{i}" for i in model.line_index] + [f"trafo:{i}" for i in model.trafo_index]


def linearize(
    model: NetworkModel,
    v: np.ndarray,
    *,
    p_bus_mw: pd.Series,
    q_bus_mvar: pd.Series,
    monitored_buses: Iterable[int] | None = None,
    monitored_branches: Iterable[str] | None = None,
) -> Sensitivities:
    """Sensitivities of ``model`` at internal voltages ``v`` (a converged solution for these injections)."""
    bus_rows = _bus_rows(model, monitored_buses)
    labels, kinds, positions = _branch_rows(model, monitored_branches)

    pvpq = np.concatenate([model.pv, model.pq])
    pq = model.pq
    vm = np.abs(v)
    internal_rows = model.bus_ppci[model.bus_index.get_indexer(bus_rows)]
    d_va_dp, d_vm_dp, d_vm_dq = _voltage_sensitivities(model, v, pvpq, _buses_needed(model, internal_rows, kinds, positions))

    p_column = _column_of_bus(model, pvpq)
    q_column = _column_of_bus(model, pq)
    dvm_dp = _select(d_vm_dp, internal_rows, p_column)
    dvm_dq = _select(d_vm_dq, internal_rows, q_column)

    line_loading, trafo_loading = model.branch_loading(v)
    flat = np.where(kinds == 0, positions, len(model.line_index) + positions)
    loading = np.concatenate([line_loading, trafo_loading])[flat]
    d_loading = _branch_loading_rows(model, v, vm, d_va_dp, d_vm_dp, kinds, positions)
    dloading_dp = _select(d_loading, np.arange(len(labels)), p_column, keep_rows=True)
    dloading_dp[np.isnan(loading)] = np.nan  # branches with an isolated end: NaN like their loading

    columns = model.bus_index
    return Sensitivities(
        vm_pu=pd.Series(_take(vm, internal_rows), index=bus_rows, name="vm_pu"),
        dvm_dp_pu_per_mw=pd.DataFrame(dvm_dp, index=bus_rows, columns=columns),
        dvm_dq_pu_per_mvar=pd.DataFrame(dvm_dq, index=bus_rows, columns=columns),
        loading_percent=pd.Series(loading, index=pd.Index(labels, dtype=object), name="loading_percent"),
        dloading_dp_percent_per_mw=pd.DataFrame(dloading_dp, index=pd.Index(labels, dtype=object), columns=columns),
        p_bus_mw=p_bus_mw.rename("p_mw"),
        q_bus_mvar=q_bus_mvar.rename("q_mvar"),
    )


def _buses_needed(model: NetworkModel, internal_rows: np.ndarray, kinds: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Internal buses whose voltage sensitivities the monitored rows need: the monitored buses and the end
    buses of the monitored energized branches (a branch current depends only on its two end voltages)."""
    flat = np.where(kinds == 0, positions, len(model.line_index) + positions)
    branch = np.concatenate([model.line_branch, model.trafo_branch])[flat]
    branch = branch[branch >= 0]
    return np.unique(
        np.concatenate([internal_rows[internal_rows >= 0], model.branch_from[branch], model.branch_to[branch]])
    )


def _voltage_sensitivities(
    model: NetworkModel, v: np.ndarray, pvpq: np.ndarray, needed: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dVa/dP, d|V|/dP (n_bus x n_pvpq) and d|V|/dQ (n_bus x n_pq) per MW / Mvar consumed, filled for the
    ``needed`` internal buses only (other rows 0).

    Only the rows of J^-1 that are needed are computed, by solving with J transposed; a sparse LU with a
    symmetric-pattern ordering has little fill on feeders, so all rows cost O(n^2), not a dense O(n^3).
    """
    pq = model.pq
    n_angle, n_bus = pvpq.size, model.n_bus
    n_equation = n_angle + pq.size
    angle_row = np.full(n_bus, -1, dtype=np.int64)
    angle_row[pvpq] = np.arange(n_angle)
    magnitude_row = np.full(n_bus, -1, dtype=np.int64)
    magnitude_row[pq] = n_angle + np.arange(pq.size)
    with_angle = needed[angle_row[needed] >= 0]
    with_magnitude = needed[magnitude_row[needed] >= 0]
    equation_rows = np.concatenate([angle_row[with_angle], magnitude_row[with_magnitude]])
    d_va_dp = np.zeros((n_bus, n_angle))
    d_vm_dp = np.zeros((n_bus, n_angle))
    d_vm_dq = np.zeros((n_bus, pq.size))
    if not equation_rows.size:
        return d_va_dp, d_vm_dp, d_vm_dq
    lu = spla.splu(jacobian(model.ybus, v, pvpq, pq), permc_spec="MMD_AT_PLUS_A")
    unit = np.zeros((n_equation, equation_rows.size))
    unit[equation_rows, np.arange(equation_rows.size)] = 1.0
    inverse_rows = lu.solve(unit, trans="T").T  # rows of J^-1
    to_mw = -1.0 / model.base_mva  # one more MW consumed is -1/base per-unit injection
    k = with_angle.size
    d_va_dp[with_angle] = inverse_rows[:k, :n_angle] * to_mw
    d_vm_dp[with_magnitude] = inverse_rows[k:, :n_angle] * to_mw
    d_vm_dq[with_magnitude] = inverse_rows[k:, n_angle:] * to_mw
    return d_va_dp, d_vm_dp, d_vm_dq


def _branch_loading_rows(
    model: NetworkModel,
    v: np.ndarray,
    vm: np.ndarray,
    d_va: np.ndarray,
    d_vm: np.ndarray,
    kinds: np.ndarray,
    positions: np.ndarray,
) -> np.ndarray:
    """d(loading %) / d(column injection) for each monitored branch, through the larger-current side.

    Rows of branches that are not energized are 0 (nothing at a connected bus changes them), or NaN when an
    end bus is isolated (their loading is NaN too).
    """
    out = np.zeros((len(kinds), d_va.shape[1]))
    if not len(kinds):
        return out
    flat = np.where(kinds == 0, positions, len(model.line_index) + positions)
    branch = np.concatenate([model.line_branch, model.trafo_branch])[flat]
    coef = np.concatenate([model.line_coef, model.trafo_coef])[flat]
    idle = np.concatenate([model.line_idle_loading, model.trafo_idle_loading])[flat]
    by_power = (kinds == 1) & model.trafo_power_based
    on = np.flatnonzero(branch >= 0)
    out[np.flatnonzero((branch < 0) & np.isnan(idle))] = np.nan
    if not on.size:
        return out
    rows = branch[on]
    dv = v[:, None] * (1j * d_va + d_vm / vm[:, None])  # dV/dx for every column
    sides = []
    for side, (y_side, ends) in enumerate(((model.yf, model.branch_from), (model.yt, model.branch_to))):
        current = y_side[rows] @ v
        magnitude = np.abs(current)
        with np.errstate(divide="ignore", invalid="ignore"):
            d_magnitude = np.where(
                magnitude[:, None] > 0, (np.conj(current)[:, None] * (y_side[rows] @ dv)).real / magnitude[:, None], 0.0
            )
        c = coef[on, side][:, None]
        value = c[:, 0] * magnitude
        slope = c * d_magnitude
        power = by_power[on]
        if power.any():
            vm_end = vm[ends[rows]]
            slope[power] = c[power] * (vm_end[power, None] * d_magnitude[power] + magnitude[power, None] * d_vm[ends[rows][power]])
            value[power] = value[power] * vm_end[power]
        sides.append((value, slope))
    (value_from, slope_from), (value_to, slope_to) = sides
    out[on] = np.where((value_from >= value_to)[:, None], slope_from, slope_to)
    return out


def _bus_rows(model: NetworkModel, monitored: Iterable[int] | None) -> pd.Index:
    if monitored is None:
        return model.bus_index
    rows = pd.Index(list(monitored))
    unknown = rows.difference(model.bus_index)
    if len(unknown):
        raise ValueError(f"monitored_buses: unknown bus indices {list(unknown[:5])}")
    return rows


def _branch_rows(model: NetworkModel, monitored: Iterable[str] | None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Labels, kind (0 line, 1 trafo) and table position of each monitored branch."""
    if monitored is None:
        n_line, n_trafo = len(model.line_index), len(model.trafo_index)
        kinds = np.repeat(np.array([0, 1], dtype=np.int64), [n_line, n_trafo])
        positions = np.concatenate([np.arange(n_line), np.arange(n_trafo)]).astype(np.int64)
        return branch_labels(model), kinds, positions
    labels = list(monitored)
    kinds = np.empty(len(labels), dtype=np.int64)
    numbers = np.empty(len(labels), dtype=np.int64)
    codes = {"line": 0, "trafo": 1}
    for row, label in enumerate(labels):
        kind, _, index = str(label).partition(":")
        if kind not in codes or not index.lstrip("-").isdigit():
            raise ValueError(f"monitored_branches: bad label {label!r}; expected 'line:<idx>' or 'trafo:<idx>'")
        kinds[row], numbers[row] = codes[kind], int(index)
    positions = np.empty(len(labels), dtype=np.int64)
    for code, table_index in ((0, model.line_index), (1, model.trafo_index)):
        mine = kinds == code
        positions[mine] = table_index.get_indexer(numbers[mine])
    missing = np.flatnonzero(positions < 0)
    if missing.size:
        raise ValueError(f"monitored_branches: no such branch {labels[missing[0]]!r}")
    return labels, kinds, positions


def _column_of_bus(model: NetworkModel, internal_buses: np.ndarray) -> np.ndarray:
    """For each pandapower bus, its column among ``internal_buses`` (-1: not one of them)."""
    where = np.full(model.n_bus, -1, dtype=np.int64)
    where[internal_buses] = np.arange(internal_buses.size)
    internal = model.bus_ppci
    return np.where(internal >= 0, where[np.maximum(internal, 0)], -1)


def _select(matrix: np.ndarray, rows: np.ndarray, columns: np.ndarray, *, keep_rows: bool = False) -> np.ndarray:
    """matrix[rows][:, columns] with zero columns where ``columns < 0`` and (unless keep_rows) NaN rows where
    ``rows < 0`` (buses that are not energized)."""
    picked = matrix[np.maximum(rows, 0)] if matrix.shape[0] else np.zeros((len(rows), 0))
    out = np.zeros((len(rows), len(columns)))
    valid = columns >= 0
    out[:, valid] = picked[:, columns[valid]]
    if not keep_rows:
        out[rows < 0] = np.nan
    return out


def _take(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.where(rows >= 0, values[np.maximum(rows, 0)], np.nan)
