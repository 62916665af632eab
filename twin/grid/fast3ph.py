"""Fast unbalanced power flow for long studies: power-grid-model's asymmetric calculation over a whole batch.

Owns the translation of a prepared pandapower feeder (``twin.grid.three_phase.prepare_three_phase_net``) into a
power-grid-model model that reproduces pandapower's sequence-component model exactly, and the batch solve of
per-bus, per-phase injections. Three details make the two models the same:

* pandapower's Dyn zero-sequence T model (leakage split ``si0_hv_partial`` around the zero-sequence magnetizing
  impedance) is not power-grid-model's; the transformer is given an unearthed secondary (Dy, no zero-sequence
  path) and the LV bus a zero-sequence-only shunt equal to pandapower's, ``z_lv + z_hv || z_mag0``.
* pandapower's external grid is an ideal positive-sequence source with its short-circuit impedance
  ``1.1 U² / S_sc`` in the negative and zero sequence; power-grid-model's source has that impedance in every
  sequence, so its internal voltage is corrected per interval until the positive-sequence slack voltage is the
  set point to 1e-9 pu (two batch solves on the catalog feeders: the correction contracts by the tiny source
  impedance).
* ``runpp_3ph`` has only pandapower's T model of a transformer (magnetizing branch between two halves of the
  leakage impedance); here each transformer is a half-impedance transformer to an internal node holding the
  magnetizing shunt, and a line of the other half on to the LV bus. (With power-grid-model's own magnetizing
  placement the two differ by ~7e-7 pu per transformer loading of a household feeder, growing with load.)
* one wye ``asym_load`` per bus carries that bus's injection, as in ``ReferenceThreePhase``.

Each batch is solved by power-grid-model's constant-admittance current iteration (one factorization for all
intervals), with Newton-Raphson for any interval it does not converge on. Tests hold it to 1e-6 pu of
``runpp_3ph`` on every catalog feeder that has (or is completed with) 3-phase data.
"""

from __future__ import annotations

import numba
import numpy as np
import pandapower as pp
import pandas as pd
from power_grid_model import (
    CalculationMethod,
    ComponentType,
    DatasetType,
    LoadGenType,
    PowerGridModel,
    WindingType,
    initialize_array,
)
from power_grid_model.errors import PowerGridBatchError, PowerGridError

from twin.grid.three_phase import (
    ThreePhaseError,
    ThreePhaseResult,
    _check_injections,
    prepare_three_phase_net,
    sequence_components,
)

__all__ = ["FastThreePhase"]

#: pandapower's voltage factor for the external grid's short-circuit impedance outside short-circuit studies.
_C_EXT_GRID = 1.1
#: Largest positive-sequence slack voltage error (pu) left after the source correction.
_SLACK_TOLERANCE_PU = 1e-9
_MAX_CORRECTIONS = 6
_MAX_ITERATIONS = 100
_FIRST_PASS_TOLERANCE = 1e-5
_NODE_OUTPUT = {ComponentType.node: ["u_pu", "u_angle"]}
_FULL_OUTPUT = {ComponentType.node: ["u_pu", "u_angle"], ComponentType.line: ["i_from", "i_to", "p_from", "q_from"]}
#: Bounds one batch call's memory (intervals per call; a 907-bus feeder's output is ~0.3 MB per interval).
_CHUNK = 2016


class FastThreePhase:
    """A power-grid-model model of one prepared feeder; ``solve`` runs a batch of intervals in one call."""

    def __init__(self, model: PowerGridModel, *, bus: pd.Index, line: pd.Index, source_u: complex,
                 source_node: int, line_from_positions: np.ndarray, line_from_u_rated: np.ndarray,
                 error_tolerance: float) -> None:
        self._model = model
        self.bus = bus
        self.line = line
        self._source_u = source_u
        self._source_node = source_node
        self._line_from_positions = line_from_positions
        self._line_from_u_rated = line_from_u_rated
        self._tolerance = error_tolerance

    @classmethod
    def from_net(cls, net: pp.pandapowerNet, *, error_tolerance: float = 1e-8) -> FastThreePhase:
        """Build the model from ``net`` (a copy is prepared as for the reference solver)."""
        net, _ = prepare_three_phase_net(net)
        data = _input_data(net)
        try:
            model = PowerGridModel(data, system_frequency=float(net.f_hz))
        except PowerGridError as exc:
            raise ThreePhaseError(f"power-grid-model rejected the feeder: {exc}") from exc
        eg = net.ext_grid.iloc[0]
        u = float(eg["vm_pu"]) * np.exp(1j * np.deg2rad(float(eg["va_degree"])))
        from_pos = net.bus.index.get_indexer(net.line["from_bus"])
        return cls(model, bus=pd.Index(net.bus.index), line=pd.Index(net.line.index), source_u=u,
                   source_node=int(net.bus.index.get_loc(eg["bus"])), line_from_positions=from_pos,
                   line_from_u_rated=net.bus["vn_kv"].to_numpy(dtype=float)[from_pos] * 1e3,
                   error_tolerance=error_tolerance)

    def solve(self, p_mw: np.ndarray, q_mvar: np.ndarray) -> ThreePhaseResult:
        """Per-phase results for ``p_mw[t, bus, phase]`` / ``q_mvar`` (MW, load convention), all intervals at once."""
        p_mw, q_mvar = _check_injections(p_mw, q_mvar, len(self.bus))
        parts = [self._solve_chunk(p_mw[s:s + _CHUNK], q_mvar[s:s + _CHUNK]) for s in range(0, len(p_mw), _CHUNK)]
        return ThreePhaseResult(
            bus=self.bus, line=self.line,
            **{field: np.concatenate([getattr(r, field) for r in parts])
               for field in ("vm_pu", "va_degree", "line_i_ka", "line_i_n_ka", "converged")},
        )

    def _calculate(self, loads: np.ndarray, source: np.ndarray | None, converged: np.ndarray, tolerance: float,
                   outputs: dict) -> dict:
        """One batch call by the constant-admittance current iteration (one factorization for the whole batch);
        intervals it cannot solve are solved again by Newton-Raphson, and any that still fail are marked in
        ``converged`` (in place) and come back as NaN."""
        out = self._call(loads, source, CalculationMethod.iterative_current, converged, tolerance, outputs)
        failed = np.flatnonzero(~converged)
        if len(failed):
            retry = np.ones(len(failed), dtype=bool)
            again = self._call(loads[failed], None if source is None else source[failed],
                               CalculationMethod.newton_raphson, retry, tolerance, outputs)
            for component, values in again.items():
                for name, array in values.items():
                    out[component][name][failed] = array
            converged[failed] = retry
        return out

    def _call(self, loads: np.ndarray, source: np.ndarray | None, method: CalculationMethod, converged: np.ndarray,
              tolerance: float, outputs: dict) -> dict:
        for _ in range(2):
            run_loads = loads
            if not converged.all():  # a failed interval is solved unloaded, then discarded
                run_loads = loads.copy()
                run_loads["p_specified"][~converged] = 0.0
                run_loads["q_specified"][~converged] = 0.0
            try:
                update = {ComponentType.asym_load: run_loads}
                if source is not None:
                    update[ComponentType.source] = source
                return self._model.calculate_power_flow(
                    symmetric=False, update_data=update, calculation_method=method, error_tolerance=tolerance,
                    max_iterations=_MAX_ITERATIONS, output_component_types=outputs,
                )
            except PowerGridBatchError as exc:
                converged[np.asarray(exc.failed_scenarios, dtype=int)] = False
        raise ThreePhaseError("power-grid-model failed on an unloaded feeder")

    def _solve_chunk(self, p_mw: np.ndarray, q_mvar: np.ndarray) -> ThreePhaseResult:
        steps, n_bus = p_mw.shape[0], len(self.bus)
        loads = initialize_array(DatasetType.update, ComponentType.asym_load, (steps, n_bus), empty=True)
        loads["id"] = _load_ids(n_bus)[None, :]
        loads["p_specified"] = p_mw * 1e6
        loads["q_specified"] = q_mvar * 1e6
        loads["status"] = 1
        source = initialize_array(DatasetType.update, ComponentType.source, (steps, 1))
        source["id"] = _SOURCE_ID
        u_internal = np.full(steps, self._source_u, dtype=complex)
        converged = np.ones(steps, dtype=bool)
        for k in range(_MAX_CORRECTIONS):
            source["u_ref"] = np.abs(u_internal)[:, None]
            source["u_ref_angle"] = np.angle(u_internal)[:, None]
            # The first solve only measures the source current for the correction (needed to ~1e-4 of itself),
            # so it stops early; the solve whose answers are kept runs to the full tolerance.
            # It also needs no source update (the model's own source is at the set point) and no branch results.
            if k == 0:
                out = self._calculate(loads, None, converged, _FIRST_PASS_TOLERANCE, _NODE_OUTPUT)
            else:
                out = self._calculate(loads, source, converged, self._tolerance, _FULL_OUTPUT)
            nodes = out[ComponentType.node]
            slack = nodes["u_pu"][:, self._source_node, :] * np.exp(1j * nodes["u_angle"][:, self._source_node, :])
            error = self._source_u - sequence_components(slack)[:, 1]
            if k > 0 and np.nanmax(np.abs(error[converged]), initial=0.0) < _SLACK_TOLERANCE_PU:
                break
            u_internal = u_internal + np.where(converged, error, 0.0)
        # Columnar output (attribute -> [t, component, phase]); the internal T-model nodes and lines come after the
        # real ones.
        n_bus, n_line = len(self.bus), len(self.line)
        vm = nodes["u_pu"][:, :n_bus]
        angle = nodes["u_angle"][:, :n_bus]
        lines = {name: values[:, :n_line] for name, values in out[ComponentType.line].items()}
        i_ka = np.maximum(lines["i_from"], lines["i_to"]) / 1e3
        i_n = _neutral_current_ka(out[ComponentType.line], nodes["u_pu"], nodes["u_angle"], self._line_from_positions,
                                  self._line_from_u_rated)
        va = np.rad2deg(angle)
        for arr in (vm, va, i_ka, i_n):
            arr[~converged] = np.nan
        return ThreePhaseResult(bus=self.bus, line=self.line, vm_pu=vm, va_degree=va, line_i_ka=i_ka,
                                line_i_n_ka=i_n, converged=converged)


_SOURCE_ID = 1
_ID_BASE = {"node": 1_000_000, "line": 2_000_000, "trafo": 3_000_000, "load": 4_000_000, "link": 5_000_000,
            "shunt": 6_000_000, "mid": 7_000_000, "half": 8_000_000}


def _load_ids(n_bus: int) -> np.ndarray:
    return _ID_BASE["load"] + np.arange(n_bus)


def _neutral_current_ka(lines: dict[str, np.ndarray], vm: np.ndarray, angle: np.ndarray, from_pos: np.ndarray,
                        u_rated: np.ndarray) -> np.ndarray:
    """3|I0| at each line's from end. power-grid-model reports phase current magnitudes only; the phasors are
    I = conj(S / V) from the from-end power and voltage (one compiled pass, no temporaries of the batch's size)."""
    # Whole (contiguous) output arrays: the kernel reads only the first len(from_pos) lines.
    return _neutral_kernel(lines["p_from"], lines["q_from"], vm, angle, from_pos.astype(np.int64),
                           u_rated / np.sqrt(3.0) * 1e3)


@numba.njit(cache=True)
def _neutral_kernel(p, q, vm, angle, from_pos, i_base):  # pragma: no cover - compiled
    steps, n_line = p.shape[0], from_pos.shape[0]
    out = np.empty((steps, n_line))
    for t in range(steps):
        for k in range(n_line):
            b = from_pos[k]
            re = 0.0
            im = 0.0
            for ph in range(3):
                v = vm[t, b, ph]
                vr = v * np.cos(angle[t, b, ph])
                vi = v * np.sin(angle[t, b, ph])
                inv = 1.0 / (v * v) if v > 0.0 else np.nan
                re += (p[t, k, ph] * vr + q[t, k, ph] * vi) * inv
                im += (p[t, k, ph] * vi - q[t, k, ph] * vr) * inv
            out[t, k] = np.hypot(re, im) / i_base[k]
    return out


def _input_data(net: pp.pandapowerNet) -> dict[ComponentType, np.ndarray]:
    bus_pos = pd.Series(np.arange(len(net.bus)), index=net.bus.index)
    node_id = _ID_BASE["node"] + np.arange(len(net.bus))
    u_rated = net.bus["vn_kv"].to_numpy(dtype=float) * 1e3
    nodes = initialize_array(DatasetType.input, ComponentType.node, len(net.bus))
    nodes["id"] = node_id
    nodes["u_rated"] = u_rated
    data: dict[ComponentType, np.ndarray] = {ComponentType.node: nodes}
    if not net.bus["in_service"].all():
        raise ThreePhaseError("out-of-service buses are not supported by the fast three-phase path")

    trafo, shunts, mid_nodes, half_lines = _trafos(net, bus_pos, node_id)
    data[ComponentType.node] = np.concatenate([nodes, mid_nodes])
    data[ComponentType.line] = np.concatenate([_lines(net, bus_pos, node_id), half_lines])
    data[ComponentType.transformer] = trafo
    data[ComponentType.shunt] = shunts
    links = _links(net, bus_pos, node_id)
    if len(links):
        data[ComponentType.link] = links

    eg = net.ext_grid.iloc[0]
    source = initialize_array(DatasetType.input, ComponentType.source, 1)
    source["id"] = _SOURCE_ID
    source["node"] = node_id[bus_pos[eg["bus"]]]
    source["status"] = 1
    source["u_ref"] = float(eg["vm_pu"])
    source["u_ref_angle"] = np.deg2rad(float(eg["va_degree"]))
    # power-grid-model's source impedance is u_rated² / sk; pandapower's is c u² / S_sc.
    source["sk"] = float(eg["s_sc_max_mva"]) * 1e6 / _C_EXT_GRID
    source["rx_ratio"] = float(eg["rx_max"])
    # Only the magnitude ratio can be given; the zero sequence of the source matters only behind an earthed
    # HV winding, which the transformers supported here (delta HV) do not have.
    source["z01_ratio"] = float(eg["x0x_max"]) * np.hypot(1.0, float(eg["r0x0_max"])) / np.hypot(1.0, float(eg["rx_max"]))
    data[ComponentType.source] = source

    loads = initialize_array(DatasetType.input, ComponentType.asym_load, len(net.bus))
    loads["id"] = _load_ids(len(net.bus))
    loads["node"] = node_id
    loads["status"] = 1
    loads["type"] = LoadGenType.const_power
    loads["p_specified"] = 0.0
    loads["q_specified"] = 0.0
    data[ComponentType.asym_load] = loads
    return data


def _lines(net: pp.pandapowerNet, bus_pos: pd.Series, node_id: np.ndarray) -> np.ndarray:
    line = net.line
    if (line.get("g_us_per_km", pd.Series(0.0, index=line.index)).fillna(0.0) != 0).any() or (
        line.get("g0_us_per_km", pd.Series(0.0, index=line.index)).fillna(0.0) != 0).any():
        raise ThreePhaseError("lines with shunt conductance are not supported by the fast three-phase path")
    length = line["length_km"].to_numpy(dtype=float)
    parallel = line["parallel"].to_numpy(dtype=float)
    arr = initialize_array(DatasetType.input, ComponentType.line, len(line))
    arr["id"] = _ID_BASE["line"] + np.arange(len(line))
    arr["from_node"] = node_id[bus_pos[line["from_bus"]].to_numpy()]
    arr["to_node"] = node_id[bus_pos[line["to_bus"]].to_numpy()]
    status = line["in_service"].to_numpy(dtype=bool) & _branch_switch_closed(net, "l", line.index)
    arr["from_status"] = status.astype(np.int8)
    arr["to_status"] = status.astype(np.int8)
    for ours, theirs, scale in (("r1", "r_ohm_per_km", 1.0), ("x1", "x_ohm_per_km", 1.0),
                                ("r0", "r0_ohm_per_km", 1.0), ("x0", "x0_ohm_per_km", 1.0)):
        arr[ours] = line[theirs].to_numpy(dtype=float) * length / parallel * scale
    arr["c1"] = line["c_nf_per_km"].to_numpy(dtype=float) * 1e-9 * length * parallel
    arr["c0"] = line["c0_nf_per_km"].to_numpy(dtype=float) * 1e-9 * length * parallel
    arr["tan1"] = 0.0
    arr["tan0"] = 0.0
    arr["i_n"] = line["max_i_ka"].to_numpy(dtype=float) * 1e3 * parallel * line["df"].to_numpy(dtype=float)
    return arr


def _branch_switch_closed(net: pp.pandapowerNet, et: str, index: pd.Index) -> np.ndarray:
    closed = np.ones(len(index), dtype=bool)
    sw = net.switch[(net.switch["et"] == et) & ~net.switch["closed"].astype(bool)] if len(net.switch) else net.switch
    if len(sw):
        closed &= ~index.isin(sw["element"].to_numpy())
    return closed


def _trafos(net: pp.pandapowerNet, bus_pos: pd.Series,
            node_id: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tr = net.trafo
    groups = tr["vector_group"].astype(str).str.lower() if len(tr) else pd.Series(dtype=str)
    if len(tr) and (groups != "dyn").any():
        raise ThreePhaseError(f"the fast three-phase path supports Dyn transformers only, not "
                              f"{tr['vector_group'][groups != 'dyn'].iloc[0]!r}")
    if len(tr) and (tr["tap_pos"].fillna(0.0) != tr["tap_neutral"].fillna(0.0)).any():
        raise ThreePhaseError("the fast three-phase path supports transformers at their neutral tap only")
    n = len(tr)
    arr = initialize_array(DatasetType.input, ComponentType.transformer, n)
    shunts = initialize_array(DatasetType.input, ComponentType.shunt, 2 * n)
    mids = initialize_array(DatasetType.input, ComponentType.node, n)
    halves = initialize_array(DatasetType.input, ComponentType.line, n)
    if n == 0:
        return arr, shunts, mids, halves
    parallel = tr["parallel"].to_numpy(dtype=float)
    sn = tr["sn_mva"].to_numpy(dtype=float) * 1e6 * parallel
    u1 = tr["vn_hv_kv"].to_numpy(dtype=float) * 1e3
    u2 = tr["vn_lv_kv"].to_numpy(dtype=float) * 1e3
    hv = node_id[bus_pos[tr["hv_bus"]].to_numpy()]
    lv_pos = bus_pos[tr["lv_bus"]].to_numpy()
    status = (tr["in_service"].to_numpy(dtype=bool) & _branch_switch_closed(net, "t", tr.index)).astype(np.int8)
    mid_id = _ID_BASE["mid"] + np.arange(n)
    mids["id"] = mid_id
    mids["u_rated"] = net.bus["vn_kv"].to_numpy(dtype=float)[lv_pos] * 1e3
    uk = tr["vk_percent"].to_numpy(dtype=float) / 100
    ukr = tr["vkr_percent"].to_numpy(dtype=float) / 100
    arr["id"] = _ID_BASE["trafo"] + np.arange(n)
    arr["from_node"] = hv
    arr["to_node"] = mid_id
    arr["from_status"] = status
    arr["to_status"] = status
    arr["u1"], arr["u2"], arr["sn"] = u1, u2, sn
    # The HV half of the T: half the leakage impedance, no magnetizing (it is the shunt at the internal node).
    arr["uk"] = uk / 2
    arr["pk"] = ukr / 2 * sn
    arr["i0"] = 0.0
    arr["p0"] = 0.0
    z_base = u2**2 / sn
    halves["id"] = _ID_BASE["half"] + np.arange(n)
    halves["from_node"] = mid_id
    halves["to_node"] = node_id[lv_pos]
    halves["from_status"] = status
    halves["to_status"] = status
    halves["r1"] = ukr / 2 * z_base
    halves["x1"] = np.sqrt(uk**2 - ukr**2) / 2 * z_base
    halves["r0"], halves["x0"] = halves["r1"], halves["x1"]  # carries no zero-sequence current (Dy)
    halves["c1"] = halves["c0"] = halves["tan1"] = halves["tan0"] = 0.0
    halves["i_n"] = sn / (np.sqrt(3.0) * u2)
    # pandapower's magnetizing admittance (i0_percent, pfe_kw), inductive, at the T's middle.
    y_m = tr["i0_percent"].to_numpy(dtype=float) / 100 / z_base
    g_m = tr["pfe_kw"].to_numpy(dtype=float) * 1e3 * parallel / u2**2
    shunts["id"][n:] = _ID_BASE["shunt"] + n + np.arange(n)
    shunts["node"][n:] = mid_id
    shunts["status"][n:] = status
    shunts["g1"][n:] = g_m
    shunts["b1"][n:] = -np.sqrt(np.maximum(y_m**2 - g_m**2, 0.0))
    shunts["g0"][n:], shunts["b0"][n:] = 0.0, 0.0
    arr["winding_from"] = WindingType.delta
    arr["winding_to"] = WindingType.wye  # unearthed here; the zero-sequence path is the shunt below
    arr["clock"] = np.round(tr["shift_degree"].to_numpy(dtype=float) / 30.0).astype(int) % 12
    arr["tap_side"] = 0
    arr["tap_pos"] = 0
    arr["tap_min"] = 0
    arr["tap_max"] = 0
    arr["tap_nom"] = 0
    arr["tap_size"] = 0.0
    # pandapower's Dyn zero-sequence T model seen from the LV side (pd2ppc_zero, trafo_model "t").
    z_sc = tr["vk0_percent"].to_numpy(dtype=float) / 100 * z_base
    r_sc = tr["vkr0_percent"].to_numpy(dtype=float) / 100 * z_base
    z0k = r_sc + 1j * np.sqrt(z_sc**2 - r_sc**2)
    mag0 = tr["mag0_percent"].to_numpy(dtype=float) / 100 * z_sc
    rx = tr["mag0_rx"].to_numpy(dtype=float)
    x_m = mag0 / np.sqrt(rx**2 + 1)
    z_m = x_m * rx + 1j * x_m
    si0 = tr["si0_hv_partial"].to_numpy(dtype=float)
    z_hv, z_lv = si0 * z0k, (1 - si0) * z0k
    y0 = 1.0 / (z_lv + z_hv * z_m / (z_hv + z_m))
    shunts["id"][:n] = _ID_BASE["shunt"] + np.arange(n)
    shunts["node"][:n] = node_id[lv_pos]
    shunts["status"][:n] = status
    shunts["g1"][:n], shunts["b1"][:n] = 0.0, 0.0
    shunts["g0"][:n], shunts["b0"][:n] = y0.real, y0.imag
    return arr, shunts, mids, halves


def _links(net: pp.pandapowerNet, bus_pos: pd.Series, node_id: np.ndarray) -> np.ndarray:
    sw = net.switch[(net.switch["et"] == "b") & net.switch["closed"].astype(bool)] if len(net.switch) else net.switch
    arr = initialize_array(DatasetType.input, ComponentType.link, len(sw))
    if len(sw):
        arr["id"] = _ID_BASE["link"] + np.arange(len(sw))
        arr["from_node"] = node_id[bus_pos[sw["bus"]].to_numpy()]
        arr["to_node"] = node_id[bus_pos[sw["element"]].to_numpy()]
        arr["from_status"] = 1
        arr["to_status"] = 1
    return arr
