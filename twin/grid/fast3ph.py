"""Fast unbalanced power flow for long studies: power-grid-model's asymmetric calculation over a whole batch.

Owns the translation of a prepared pandapower feeder (``twin.grid.three_phase.prepare_three_phase_net``) into a
power-grid-model model that reproduces pandapower's sequence-component model exactly, and the batch solve of
per-bus, per-phase injections. These details make the two models the same:

* pandapower's Dyn zero-sequence T model (leakage split ``si0_hv_partial`` around the zero-sequence magnetizing
  impedance) is not power-grid-model's; the transformer is given an unearthed secondary (Dy, no zero-sequence
  path) and the LV bus a zero-sequence-only shunt equal to pandapower's, ``z_lv + z_hv || z_mag0``.
* pandapower's external grid is an ideal positive-sequence source with its short-circuit impedance
  ``1.1 U² / S_sc`` in the negative and zero sequence; power-grid-model's source has that impedance in every
  sequence, so its positive-sequence slack voltage sags by the source current. With constant-power loads on a
  linear network the solution for source voltage ``αE`` and loads ``|α|² S`` is exactly ``α`` times the
  solution for ``E`` and ``S``: so each interval is solved once with its loads pre-scaled by the sag predicted
  from its injections, the result is scaled by ``α = set point / slack voltage`` (now exact, for loads off by
  the factor ``λ = |α|² x pre-scale``), and the small remaining load error is corrected to first order from the
  feeder's no-load voltages (remainder about ``|1 - λ| D²``, ``D`` the largest voltage drop). Intervals whose
  remainder could exceed 1e-9 pu (weak grids: a low ``S_sc``) are solved again with a Newton step on the
  pre-scale; in the bench's week on the IEEE European LV feeder none is, so one batch solve does it all.
* ``runpp_3ph`` has only pandapower's T model of a transformer (magnetizing branch between two halves of the
  leakage impedance); here each transformer is a half-impedance transformer to an internal node holding the
  magnetizing shunt, and a line of the other half on to the LV bus. (With power-grid-model's own magnetizing
  placement the two differ by ~7e-7 pu per transformer loading of a household feeder, growing with load.)
* one wye ``asym_load`` per bus carries that bus's injection, as in ``ReferenceThreePhase``.

Each batch is solved by power-grid-model's constant-admittance current iteration (one factorization for all
intervals), with Newton-Raphson for any interval it does not converge on; only the loads of buses with an
injection in the batch are updated. power-grid-model's cost per interval is mostly fixed (about 1 ms on the
907-bus IEEE feeder, however few the iterations), which is why the number of batch solves is what counts. Tests
hold it to 1e-6 pu of ``runpp_3ph`` on every catalog feeder that has (or is completed with) 3-phase data.
"""

from __future__ import annotations

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
#: Largest remainder (pu) of the first-order load-scaling correction accepted; an interval whose estimated
#: remainder is larger is solved again.
_SLACK_TOLERANCE_PU = 1e-9
#: Margin on the remainder estimate ``|1 - λ| D²`` (within 5 % of the true remainder on the catalog feeders).
_REMAINDER_MARGIN = 2.0
_MAX_PASSES = 4
_MAX_ITERATIONS = 100
_NODE_OUTPUT = {ComponentType.node: ["u_pu", "u_angle"]}
_FULL_OUTPUT = {ComponentType.node: ["u_pu", "u_angle"], ComponentType.line: ["i_from", "i_to", "p_from", "q_from"]}
#: Bounds one batch call's memory (intervals per call; a 907-bus feeder's output is ~0.3 MB per interval).
_CHUNK = 2016
#: Intervals per block of the neutral-current computation (bounds its temporaries).
_NEUTRAL_BLOCK = 64


class FastThreePhase:
    """A power-grid-model model of one prepared feeder; ``solve`` runs a batch of intervals in one call."""

    def __init__(self, model: PowerGridModel, *, bus: pd.Index, line: pd.Index, source_u: complex,
                 source_z_pu: complex, source_node: int, no_load_v: np.ndarray, line_from_positions: np.ndarray,
                 line_from_u_rated: np.ndarray, error_tolerance: float) -> None:
        self._model = model
        self.bus = bus
        self.line = line
        self._source_u = source_u
        self._source_z = source_z_pu
        self._source_node = source_node
        self._no_load_v = no_load_v
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
        source_node = int(net.bus.index.get_loc(eg["bus"]))
        from_pos = net.bus.index.get_indexer(net.line["from_bus"])
        return cls(model, bus=pd.Index(net.bus.index), line=pd.Index(net.line.index), source_u=u,
                   source_z_pu=_source_impedance_pu(data[ComponentType.source][0]), source_node=source_node,
                   no_load_v=_no_load_voltages(model, len(net.bus), source_node, u, error_tolerance),
                   line_from_positions=from_pos,
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

    def _calculate(self, loads: np.ndarray, converged: np.ndarray, outputs: dict) -> dict:
        """One batch call by the constant-admittance current iteration (one factorization for the whole batch);
        intervals it cannot solve are solved again by Newton-Raphson, and any that still fail are marked in
        ``converged`` (in place) and come back as NaN."""
        out = self._call(loads, CalculationMethod.iterative_current, converged, outputs)
        failed = np.flatnonzero(~converged)
        if len(failed):
            retry = np.ones(len(failed), dtype=bool)
            again = self._call(loads[failed], CalculationMethod.newton_raphson, retry, outputs)
            for component, values in again.items():
                for name, array in values.items():
                    out[component][name][failed] = array
            converged[failed] = retry
        return out

    def _call(self, loads: np.ndarray, method: CalculationMethod, converged: np.ndarray, outputs: dict) -> dict:
        for _ in range(2):
            run_loads = loads
            if not converged.all():  # a failed interval is solved unloaded, then discarded
                run_loads = loads.copy()
                run_loads["p_specified"][~converged] = 0.0
                run_loads["q_specified"][~converged] = 0.0
            try:
                return self._model.calculate_power_flow(
                    symmetric=False, update_data={ComponentType.asym_load: run_loads}, calculation_method=method,
                    error_tolerance=self._tolerance, max_iterations=_MAX_ITERATIONS, output_component_types=outputs,
                )
            except PowerGridBatchError as exc:
                converged[np.asarray(exc.failed_scenarios, dtype=int)] = False
        raise ThreePhaseError("power-grid-model failed on an unloaded feeder")

    def _solve_chunk(self, p_mw: np.ndarray, q_mvar: np.ndarray) -> ThreePhaseResult:
        steps, n_bus, n_line = p_mw.shape[0], len(self.bus), len(self.line)
        # Buses with no injection in the whole batch keep the model's zero load (fewer updates per interval).
        active = np.flatnonzero((p_mw != 0).any(axis=(0, 2)) | (q_mvar != 0).any(axis=(0, 2)))
        if not len(active):
            active = np.array([0])
        p_active, q_active = p_mw[:, active], q_mvar[:, active]
        u = self._source_u
        # Pre-scale of the loads that cancels the slack's sag behind the source impedance, predicted from the
        # injections alone (power-grid-model's per unit is 1 MVA; losses are neglected, so it is a first guess).
        s_pu = p_active.sum(axis=(1, 2)) + 1j * q_active.sum(axis=(1, 2))
        scale = np.abs((u - self._source_z * np.conj(s_pu / u)) / u) ** 2
        alpha = np.ones(steps, dtype=complex)
        lam = np.ones(steps)
        converged = np.ones(steps, dtype=bool)
        pending = np.arange(steps)
        out: dict = {}
        x = np.empty((steps, n_bus, 3), dtype=complex)  # the solves' bus voltages, before any correction
        for _ in range(_MAX_PASSES):
            ok = np.ones(len(pending), dtype=bool)
            part = self._calculate(self._load_update(p_active[pending], q_active[pending], scale[pending], active),
                                   ok, _FULL_OUTPUT)
            converged[pending] = ok
            if not out:
                out = part
            else:
                for component, values in part.items():
                    for name, array in values.items():
                        out[component][name][pending] = array
            x_p = _phasors(part[ComponentType.node], n_bus)
            x[pending] = x_p
            # Scaled by alpha, the solve is exact for the slack set point and loads lam * S.
            a = u / sequence_components(x_p[:, self._source_node])[:, 1]
            lam_p = np.abs(a) ** 2 * scale[pending]
            alpha[pending], lam[pending] = a, lam_p
            drop = np.abs(self._no_load_v - a[:, None, None] * x_p).max(axis=(1, 2))
            redo = ok & (_REMAINDER_MARGIN * np.abs(1.0 - lam_p) * drop**2 > _SLACK_TOLERANCE_PU)
            if not redo.any():
                break
            # Newton step on the pre-scale for lam = 1, with lam ~ scale * (1 + c * scale).
            s_r, l_r = scale[pending[redo]], lam_p[redo]
            scale[pending[redo]] = s_r - (l_r - 1.0) / (2.0 * l_r / s_r - 1.0)
            pending = pending[redo]
        # First order in the load error: v(1) = v0 - (v0 - v(lam)) / lam, v0 the no-load voltages (constant-power
        # currents scale with the load: |I| |alpha| / lam).
        v = self._no_load_v - (self._no_load_v - alpha[:, None, None] * x) / lam[:, None, None]
        vm = np.abs(v)
        va = np.rad2deg(np.angle(v))
        current_scale = (np.abs(alpha) / lam)[:, None]
        lines = out[ComponentType.line]
        i_ka = np.maximum(lines["i_from"][:, :n_line], lines["i_to"][:, :n_line]) * (current_scale[..., None] / 1e3)
        i_n = _neutral_current_ka(lines, x, self._line_from_positions, self._line_from_u_rated) * current_scale
        for arr in (vm, va, i_ka, i_n):
            arr[~converged] = np.nan
        return ThreePhaseResult(bus=self.bus, line=self.line, vm_pu=vm, va_degree=va, line_i_ka=i_ka,
                                line_i_n_ka=i_n, converged=converged)

    def _load_update(self, p_mw: np.ndarray, q_mvar: np.ndarray, scale: np.ndarray, active: np.ndarray) -> np.ndarray:
        """The batch update of the loads of the ``active`` buses (``p_mw[t, active bus, phase]``), scaled."""
        loads = initialize_array(DatasetType.update, ComponentType.asym_load, (len(p_mw), len(active)), empty=True)
        loads["id"] = _load_ids(len(self.bus))[active][None, :]
        factor = (scale * 1e6)[:, None, None]
        loads["p_specified"] = p_mw * factor
        loads["q_specified"] = q_mvar * factor
        loads["status"] = 1
        return loads


def _phasors(nodes: dict[str, np.ndarray], n_bus: int) -> np.ndarray:
    """Complex phase voltages (pu) of the real buses, ``[t, bus, phase]`` (the internal T-model nodes follow them)."""
    return nodes["u_pu"][:, :n_bus] * np.exp(1j * nodes["u_angle"][:, :n_bus])


def _source_impedance_pu(source: np.void) -> complex:
    """power-grid-model's source impedance on its 1 MVA base: ``|z| = 1 MVA / sk`` at ``rx_ratio``."""
    x = 1e6 / float(source["sk"]) / np.hypot(1.0, float(source["rx_ratio"]))
    return complex(float(source["rx_ratio"]) * x, x)


def _no_load_voltages(model: PowerGridModel, n_bus: int, source_node: int, u: complex,
                      tolerance: float) -> np.ndarray:
    """The feeder's voltages with no load and the slack at its set point, ``[bus, phase]`` (the model is linear
    without loads, so scaling a solve by ``set point / slack voltage`` is exact)."""
    try:
        out = model.calculate_power_flow(symmetric=False, calculation_method=CalculationMethod.iterative_current,
                                         error_tolerance=tolerance, max_iterations=_MAX_ITERATIONS,
                                         output_component_types=_NODE_OUTPUT)
    except PowerGridError as exc:
        raise ThreePhaseError(f"power-grid-model failed on the unloaded feeder: {exc}") from exc
    x = _phasors({k: v[None] for k, v in out[ComponentType.node].items()}, n_bus)[0]
    return x * (u / sequence_components(x[source_node])[1])


_SOURCE_ID = 1
_ID_BASE = {"node": 1_000_000, "line": 2_000_000, "trafo": 3_000_000, "load": 4_000_000, "link": 5_000_000,
            "shunt": 6_000_000, "mid": 7_000_000, "half": 8_000_000}


def _load_ids(n_bus: int) -> np.ndarray:
    return _ID_BASE["load"] + np.arange(n_bus)


def _neutral_current_ka(lines: dict[str, np.ndarray], v_bus: np.ndarray, from_pos: np.ndarray,
                        u_rated: np.ndarray) -> np.ndarray:
    """3|I0| at each line's from end. power-grid-model reports phase current magnitudes only; the phasors are
    I = conj(S / V) from the from-end power and the bus voltages ``v_bus[t, bus, phase]`` of the same solve (in
    blocks of intervals: temporaries stay small)."""
    steps, n_line = v_bus.shape[0], len(from_pos)
    i_base = u_rated / np.sqrt(3.0) * 1e3
    out = np.empty((steps, n_line))
    with np.errstate(divide="ignore", invalid="ignore"):  # an isolated bus (0 V) gives NaN, as it should
        for s in range(0, steps, _NEUTRAL_BLOCK):
            block = slice(s, s + _NEUTRAL_BLOCK)
            power = lines["p_from"][block, :n_line] + 1j * lines["q_from"][block, :n_line]
            out[block] = np.abs(np.conj(power / v_bus[block][:, from_pos]).sum(axis=-1)) / i_base
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
