"""Unbalanced three-phase power flow of record: pandapower's ``runpp_3ph``, stepped one interval at a time.

Owns (1) readying a feeder for a sequence-component power flow (``prepare_three_phase_net``: the zero-sequence
line data, transformer vector group and external-grid short-circuit data that ``runpp_3ph`` needs, completed by
stated assumptions where a feeder lacks them), (2) the per-phase result arrays every three-phase solver returns
(``ThreePhaseResult``, with the symmetrical components and the voltage unbalance factor) and (3) the reference
solver (``ReferenceThreePhase``). Injections are per bus and phase (``p_mw[t, bus, phase]``, load convention,
wye phase-to-neutral constant power); ``twin.grid.phase_injections`` builds them from loads and assets.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import pandapower as pp
import pandas as pd

__all__ = [
    "PHASES",
    "ReferenceThreePhase",
    "ThreePhaseError",
    "ThreePhaseResult",
    "ZERO_SEQUENCE_DEFAULTS",
    "prepare_three_phase_net",
    "sequence_components",
]

PHASES: tuple[str, str, str] = ("a", "b", "c")
_A = np.exp(2j * np.pi / 3)

#: What ``prepare_three_phase_net`` assumes where a feeder has no zero-sequence data (stated in run metadata).
#: Lines: r0 = 3 r1, x0 = 3 x1, c0 = c1 (a four-core LV cable whose neutral carries the return current; the IEEE
#: European LV feeder's own cables have r0/r1 between 2.4 and 4). Transformers: Dyn with vk0 = vk, vkr0 = vkr and
#: the zero-sequence magnetizing data of the IEEE feeder's transformer (pandapower's suggested values). External
#: grid: pandapower's suggested short-circuit data where missing.
ZERO_SEQUENCE_DEFAULTS: dict[str, float | str] = {
    "line_r0_over_r1": 3.0,
    "line_x0_over_x1": 3.0,
    "line_c0_over_c1": 1.0,
    "trafo_vector_group": "Dyn",
    "trafo_mag0_percent": 100.0,
    "trafo_mag0_rx": 0.0,
    "trafo_si0_hv_partial": 0.9,
    "ext_grid_s_sc_max_mva": 1000.0,
    "ext_grid_rx_max": 0.1,
    "ext_grid_x0x_max": 1.0,
    "ext_grid_r0x0_max": 0.1,
}
_TRAFO_MODEL = "t"  # runpp_3ph supports only the T model
_THREE_PHASE_GROUPS = {"dyn", "ynyn", "yyn", "ynd", "yny", "yzn"}


class ThreePhaseError(ValueError):
    """A feeder or an injection array cannot be used for a three-phase power flow; the message says why."""


def prepare_three_phase_net(net: pp.pandapowerNet) -> tuple[pp.pandapowerNet, tuple[str, ...]]:
    """A copy of ``net`` ready for ``runpp_3ph``, and the assumptions made to get there (empty: none).

    Missing zero-sequence data are completed from ``ZERO_SEQUENCE_DEFAULTS``; a vector group written with its
    clock number (``Dyn5``) is written without it (the clock is ``shift_degree``). ``sn_mva`` is set to 1: it is
    only the per-unit base, and ``runpp_3ph``'s fixed outer tolerance (3e-8 pu of it) is then 0.03 W, which
    keeps its answers within 1e-8 pu of the converged solution on LV feeders.
    """
    net = copy.deepcopy(net)
    notes: list[str] = []
    d = ZERO_SEQUENCE_DEFAULTS
    for column, ratio_key, base in (("r0_ohm_per_km", "line_r0_over_r1", "r_ohm_per_km"),
                                    ("x0_ohm_per_km", "line_x0_over_x1", "x_ohm_per_km"),
                                    ("c0_nf_per_km", "line_c0_over_c1", "c_nf_per_km")):
        missing = _missing(net.line, column)
        if missing.any():
            net.line[column] = net.line[column].astype(float) if column in net.line else np.nan
            net.line.loc[missing, column] = net.line.loc[missing, base].astype(float) * float(d[ratio_key])
            notes.append(f"line.{column} = {d[ratio_key]} x {base} on {int(missing.sum())} of {len(net.line)} lines")
    if len(net.trafo):
        _complete_trafos(net, notes)
    for column, key in (("s_sc_max_mva", "ext_grid_s_sc_max_mva"), ("rx_max", "ext_grid_rx_max"),
                        ("x0x_max", "ext_grid_x0x_max"), ("r0x0_max", "ext_grid_r0x0_max")):
        missing = _missing(net.ext_grid, column)
        if missing.any():
            net.ext_grid[column] = net.ext_grid[column].astype(float) if column in net.ext_grid else np.nan
            net.ext_grid.loc[missing, column] = float(d[key])
            notes.append(f"ext_grid.{column} = {d[key]}")
    if len(net.ext_grid) != 1:
        raise ThreePhaseError(f"a three-phase feeder needs exactly one ext_grid, this one has {len(net.ext_grid)}")
    if len(net.get("gen", [])) and net.gen["in_service"].any():
        raise ThreePhaseError("voltage-controlled generators (net.gen) are not supported in three-phase mode")
    net.sn_mva = 1e-3
    if "tap_dependency_table" not in net.trafo:
        net.trafo["tap_dependency_table"] = False
    return net, tuple(notes)


def _missing(table: pd.DataFrame, column: str) -> pd.Series:
    if column not in table:
        return pd.Series(True, index=table.index)
    values = pd.to_numeric(table[column], errors="coerce")
    return values.isna()


def _complete_trafos(net: pp.pandapowerNet, notes: list[str]) -> None:
    d = ZERO_SEQUENCE_DEFAULTS
    groups = net.trafo["vector_group"] if "vector_group" in net.trafo else pd.Series(None, index=net.trafo.index)
    written = [str(g).rstrip("0123456789") if isinstance(g, str) and g else None for g in groups]
    unknown = [g for g in written if g is not None and g.lower() not in _THREE_PHASE_GROUPS]
    if unknown:
        raise ThreePhaseError(f"trafo.vector_group {unknown[0]!r} is not one runpp_3ph supports "
                              f"({sorted(_THREE_PHASE_GROUPS)})")
    if any(g is None for g in written):
        notes.append(f"trafo.vector_group = {d['trafo_vector_group']!r} where missing")
    net.trafo["vector_group"] = [g if g is not None else d["trafo_vector_group"] for g in written]
    for column, value in (("vk0_percent", net.trafo["vk_percent"]), ("vkr0_percent", net.trafo["vkr_percent"]),
                          ("mag0_percent", d["trafo_mag0_percent"]), ("mag0_rx", d["trafo_mag0_rx"]),
                          ("si0_hv_partial", d["trafo_si0_hv_partial"])):
        missing = _missing(net.trafo, column)
        if missing.any():
            net.trafo[column] = net.trafo[column].astype(float) if column in net.trafo else np.nan
            fill = value.loc[missing] if isinstance(value, pd.Series) else value
            net.trafo.loc[missing, column] = fill
            source = "vk_percent" if column == "vk0_percent" else "vkr_percent" if column == "vkr0_percent" else value
            notes.append(f"trafo.{column} = {source}")


def sequence_components(v_abc: np.ndarray) -> np.ndarray:
    """Zero, positive and negative sequence of phasors ``v_abc[..., 3]`` (last axis a, b, c), same shape."""
    a, b, c = v_abc[..., 0], v_abc[..., 1], v_abc[..., 2]
    return np.stack([(a + b + c) / 3, (a + _A * b + _A**2 * c) / 3, (a + _A**2 * b + _A * c) / 3], axis=-1)


@dataclass(frozen=True)
class ThreePhaseResult:
    """Per-phase results of a batch of intervals, arrays ``[t, element, phase]`` in the net's table order.

    ``vm_pu`` / ``va_degree``: phase-to-neutral voltage of each bus; ``line_i_ka``: each line's phase current
    (the larger of its two ends, as pandapower reports it); ``line_i_n_ka``: the neutral/earth return current
    3|I0| at the line's from end; ``converged[t]``.
    """

    bus: pd.Index
    line: pd.Index
    vm_pu: np.ndarray
    va_degree: np.ndarray
    line_i_ka: np.ndarray
    line_i_n_ka: np.ndarray
    converged: np.ndarray

    @property
    def v_complex(self) -> np.ndarray:
        return self.vm_pu * np.exp(1j * np.deg2rad(self.va_degree))

    @property
    def v_sequence_pu(self) -> np.ndarray:
        """``|V0|, |V1|, |V2|`` per interval and bus, ``[t, bus, 3]``."""
        return np.abs(sequence_components(self.v_complex))

    @property
    def vuf_percent(self) -> np.ndarray:
        """Voltage unbalance factor |V2| / |V1| (EN 50160's measure), percent, ``[t, bus]``."""
        seq = self.v_sequence_pu
        return 100.0 * seq[..., 2] / seq[..., 1]

    @property
    def worst_phase(self) -> np.ndarray:
        """Index (0 = a, 1 = b, 2 = c) of the phase farthest from 1 pu, ``[t, bus]``."""
        return np.argmax(np.abs(self.vm_pu - 1.0), axis=-1)


class ReferenceThreePhase:
    """pandapower's ``runpp_3ph`` on one prepared feeder, one interval at a time (the model of record).

    Every native load, generator and storage is taken out of service; one wye ``asymmetric_load`` per bus
    carries that bus's per-phase injection, so this solver and the fast path see the same input arrays.
    """

    def __init__(self, net: pp.pandapowerNet) -> None:
        self.net = net
        self.bus = pd.Index(net.bus.index)
        self.line = pd.Index(net.line.index)

    @classmethod
    def from_net(cls, net: pp.pandapowerNet) -> ReferenceThreePhase:
        """Prepare a copy of ``net`` (``prepare_three_phase_net``) with one zeroed asymmetric load per bus."""
        net, _ = prepare_three_phase_net(net)
        for element in ("load", "sgen", "storage", "asymmetric_load", "asymmetric_sgen"):
            if element in net and len(net[element]):
                net[element]["in_service"] = False
        net.asymmetric_load = net.asymmetric_load.iloc[0:0]
        for bus in net.bus.index:  # once per feeder, at build time
            pp.create_asymmetric_load(net, bus, p_a_mw=0.0, type="wye")
        return cls(net)

    def solve(self, p_mw: np.ndarray, q_mvar: np.ndarray) -> ThreePhaseResult:
        """Run ``runpp_3ph`` for each interval of ``p_mw[t, bus, phase]`` / ``q_mvar`` (MW, load convention)."""
        p_mw, q_mvar = _check_injections(p_mw, q_mvar, len(self.bus))
        steps, n_bus, n_line = p_mw.shape[0], len(self.bus), len(self.line)
        vm = np.full((steps, n_bus, 3), np.nan)
        va = np.full((steps, n_bus, 3), np.nan)
        i_ka = np.full((steps, n_line, 3), np.nan)
        i_n = np.full((steps, n_line), np.nan)
        ok = np.zeros(steps, dtype=bool)
        asym = self.net.asymmetric_load
        p_cols = ["p_a_mw", "p_b_mw", "p_c_mw"]
        q_cols = ["q_a_mvar", "q_b_mvar", "q_c_mvar"]
        for t in range(steps):  # the reference is stepped on purpose: it is what the fast path is timed against
            asym[p_cols] = p_mw[t]
            asym[q_cols] = q_mvar[t]
            try:
                with warnings.catch_warnings():
                    # pandapower 3.x warns about its own internal pandas usage in runpp_3ph; not ours to fix.
                    warnings.simplefilter("ignore", FutureWarning)
                    pp.runpp_3ph(self.net, init="auto", trafo_model=_TRAFO_MODEL)  # DC angles: a flat start diverges behind a 150° Dyn5
            except pp.LoadflowNotConverged:
                continue
            res = self.net.res_bus_3ph
            vm[t] = res[["vm_a_pu", "vm_b_pu", "vm_c_pu"]].to_numpy()
            va[t] = res[["va_a_degree", "va_b_degree", "va_c_degree"]].to_numpy()
            lines = self.net.res_line_3ph
            i_ka[t] = lines[["i_a_ka", "i_b_ka", "i_c_ka"]].to_numpy()
            i_n[t] = lines["i_n_from_ka"].to_numpy()
            ok[t] = True
        return ThreePhaseResult(bus=self.bus, line=self.line, vm_pu=vm, va_degree=va, line_i_ka=i_ka,
                                line_i_n_ka=i_n, converged=ok)


def _check_injections(p_mw: np.ndarray, q_mvar: np.ndarray, n_bus: int) -> tuple[np.ndarray, np.ndarray]:
    p_mw, q_mvar = np.asarray(p_mw, dtype=float), np.asarray(q_mvar, dtype=float)
    if p_mw.ndim == 2:
        p_mw, q_mvar = p_mw[None], q_mvar[None]
    if p_mw.shape != q_mvar.shape or p_mw.ndim != 3 or p_mw.shape[1:] != (n_bus, 3):
        raise ThreePhaseError(f"injections must be [t, {n_bus} buses, 3 phases]; got p {p_mw.shape}, q {q_mvar.shape}")
    if not (np.isfinite(p_mw).all() and np.isfinite(q_mvar).all()):
        raise ThreePhaseError("injections hold NaN or infinite values")
    return p_mw, q_mvar
