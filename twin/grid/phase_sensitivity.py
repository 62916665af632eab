"""Per-phase voltage and unbalance sensitivities of an unbalanced feeder (issue 18.4's linearization).

Owns, at one operating point of the three-phase model (``twin.grid.fast3ph``, held to ``runpp_3ph``), the
change of every bus's phase-to-neutral voltage (phasor and magnitude, from which the unbalance factor, EN
50160's |V2|/|V1|, follows) per MW more *consumed* on one phase of one bus (load convention, as ``twin.grid.sensitivity``), for
the (bus, phase) connection points a controller can move. Computed as central differences of the exact model,
all perturbations in one power-grid-model batch (one factorization): 2 k + 1 intervals for k connection
points, so the cost grows with the controllable points, not with the buses. Truncation error is O(δ²); the
solver's tolerance adds at most ``tolerance / δ`` (1e-8 pu / 1 kW: 1e-5 pu/MW).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twin.grid.fast3ph import FastThreePhase
from twin.grid.three_phase import ThreePhaseError, sequence_components

__all__ = ["PhaseSensitivities", "phase_sensitivities"]

PHASES = ("a", "b", "c")


@dataclass(frozen=True)
class PhaseSensitivities:
    """At one operating point: the phasors ``v[bus, phase]`` (pu), and per connection point ``k`` (``points[k]``
    = (bus label, phase index)) their change ``dv_dp[k, bus, phase]`` (complex pu/MW) and that of their
    magnitudes ``dvm_dp[k, bus, phase]`` (pu/MW) for one MW more consumed there.

    Unbalance is predicted through the phasors, not through VUF itself: |V2| has a kink where V2 passes near
    zero (a bus that is nearly balanced), so a derivative of VUF is no use there, while V2 is linear to first
    order everywhere. An optimizer's unbalance limit is then |V2| ≤ limit × |V1|, a second-order cone."""

    bus: pd.Index
    points: tuple[tuple[object, int], ...]
    v: np.ndarray
    dv_dp: np.ndarray
    dvm_dp: np.ndarray

    @property
    def vm_pu(self) -> np.ndarray:
        return np.abs(self.v)

    @property
    def vuf_percent(self) -> np.ndarray:
        return _vuf(self.v)

    def predict_v(self, dp_mw: np.ndarray) -> np.ndarray:
        """Linear prediction of the phasors after consuming ``dp_mw[k]`` more at each point, ``[bus, phase]``."""
        return self.v + np.tensordot(np.asarray(dp_mw, dtype=float), self.dv_dp, axes=(0, 0))

    def predict_vm(self, dp_mw: np.ndarray) -> np.ndarray:
        return self.vm_pu + np.tensordot(np.asarray(dp_mw, dtype=float), self.dvm_dp, axes=(0, 0))

    def predict_vuf(self, dp_mw: np.ndarray) -> np.ndarray:
        return _vuf(self.predict_v(dp_mw))


def _vuf(v: np.ndarray) -> np.ndarray:
    seq = np.abs(sequence_components(v))
    return 100.0 * seq[..., 2] / seq[..., 1]


def phase_sensitivities(solver: FastThreePhase, p_mw: np.ndarray, q_mvar: np.ndarray,
                        points: Sequence[tuple[object, int | str]], *, delta_mw: float = 1e-3) -> PhaseSensitivities:
    """Sensitivities at the operating point ``p_mw[bus, phase]`` / ``q_mvar`` (MW, load convention, the
    solver's bus order) for the connection ``points`` (bus label, phase as 0..2 or 'a'..'c'); each point is
    perturbed by ±``delta_mw`` of active power, its reactive power held."""
    n_bus = len(solver.bus)
    p_mw, q_mvar = np.asarray(p_mw, dtype=float), np.asarray(q_mvar, dtype=float)
    if p_mw.shape != (n_bus, 3) or q_mvar.shape != (n_bus, 3):
        raise ThreePhaseError(f"p_mw/q_mvar: expected shape ({n_bus}, 3), got {p_mw.shape} and {q_mvar.shape}")
    if not (np.isfinite(delta_mw) and delta_mw > 0):
        raise ValueError(f"delta_mw={delta_mw!r}: must be a positive number of MW")
    rows, phases = _positions(solver.bus, points)
    k = len(rows)
    p = np.repeat(p_mw[None], 2 * k + 1, axis=0)
    q = np.repeat(q_mvar[None], 2 * k + 1, axis=0)
    step = np.arange(k)
    p[1 + step, rows, phases] += delta_mw
    p[1 + k + step, rows, phases] -= delta_mw
    result = solver.solve(p, q)
    if not result.converged.all():
        bad = np.flatnonzero(~result.converged)
        raise ThreePhaseError(f"the three-phase power flow did not converge at {len(bad)} of the "
                              f"{2 * k + 1} perturbed operating points (first: interval {int(bad[0])})")
    v, vm = result.v_complex, result.vm_pu
    return PhaseSensitivities(
        bus=solver.bus, points=tuple((solver.bus[r], int(f)) for r, f in zip(rows, phases)), v=v[0],
        dv_dp=(v[1:1 + k] - v[1 + k:]) / (2 * delta_mw), dvm_dp=(vm[1:1 + k] - vm[1 + k:]) / (2 * delta_mw))


def _positions(bus: pd.Index, points: Sequence[tuple[object, int | str]]) -> tuple[np.ndarray, np.ndarray]:
    if len(points) == 0:
        raise ValueError("points: give at least one (bus, phase) connection point")
    labels = [p[0] for p in points]
    rows = bus.get_indexer(labels)
    if (rows < 0).any():
        raise ValueError(f"points: bus {labels[int(np.flatnonzero(rows < 0)[0])]!r} is not a bus of the feeder")
    phases = np.empty(len(points), dtype=np.int64)
    for i, (_, phase) in enumerate(points):  # validation of a list given once per linearization
        if isinstance(phase, str) and phase in PHASES:
            phases[i] = PHASES.index(phase)
        elif isinstance(phase, (int, np.integer)) and not isinstance(phase, bool) and 0 <= int(phase) <= 2:
            phases[i] = int(phase)
        else:
            raise ValueError(f"points[{i}]: phase {phase!r} must be 0, 1, 2 or 'a', 'b', 'c'")
    return rows, phases
