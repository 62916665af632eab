"""Physics before payment: checks one interval's participant telemetry against the network (DESIGN.md §6).

Owns the measurement model the DSO trusts (smart-meter bus voltages, the substation P/Q meter, known
injections), the weighted-least-squares state estimation over it (pandapower's WLS estimator), the
chi-square test, the largest-normalized-residual identification, and the mapping from bad injections back
to the participants whose telemetry claimed them.

Usage (the engine, once per settlement-relevant interval, after the power flow)::

    verifier = FeederVerifier.from_net(grid.net)          # once per run (per topology)
    p_books, q_books = reported_bus_injections(grid.net, asset_bus=assets["bus"], true_p_mw=outcome.p_mw,
                                               reported_p_mw=record.reported_p_mw)
    check = verifier.verify(measured=record.power_flow, reported_p_mw=p_books, reported_q_mvar=q_books,
                            participant_buses=participant_buses_of(assets))
    settlement.settle_interval(..., unverified=check.flagged)
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time as wallclock
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import pandapower as pp
import pandas as pd
from pandapower.estimation.algorithm.base import WLSAlgorithm
from pandapower.estimation.idx_bus import (
    P_IDX,
    P_STD,
    Q_IDX,
    Q_STD,
    VM,
    VM_IDX,
    VM_STD,
    P,
    Q,
)
from pandapower.estimation.ppc_conversion import ExtendedPPCI, pp2eppci
from pandapower.pypower.idx_bus import bus_cols
from scipy.stats import chi2 as chi2_distribution

from twin.grid.injections import bus_injections
from twin.grid.results import PowerFlowResult

__all__ = [
    "DEFAULT_SIGMAS",
    "FeederVerifier",
    "MeasurementSigmas",
    "VerificationResult",
    "participant_buses_of",
    "reported_bus_injections",
    "verify_interval",
]

_log = logging.getLogger(__name__)

#: pandapower floors every measurement sigma at this many per unit (WLSAlgorithm); an exact zero
#: injection (a bus with nothing connected) is weighted at that floor.
_SIGMA_FLOOR_PU = 1e-5
#: Element tables whose in-service rows make a bus a (possibly) non-zero injection.
_INJECTING_TABLES = ("load", "sgen", "storage", "gen", "motor", "ward", "xward", "asymmetric_load",
                     "asymmetric_sgen")


@dataclass(frozen=True)
class MeasurementSigmas:
    """Standard deviations of the measurement model (MW, Mvar, pu); the estimator weighs by 1/sigma².

    They are meter accuracies, not tuning knobs: a normalized residual of 3 then means "3 sigma off".
    ``participant_*`` weigh a participant's reported injection (the telemetry under test); ``known_*``
    weigh injections the DSO knows without participants (native loads on its own revenue meters,
    ``trusted_buses``). Buses with nothing connected are exact zeros (weighted at pandapower's floor).
    """

    #: Smart-meter voltage channel, 15-min average (class 0.2: ±0.2 % max error; averaging 900 one-second
    #: samples leaves mostly the calibration error, ≈ 0.05 %).
    vm_pu: float = 0.0005
    #: Substation P/Q meter at the feeder head (class 0.5S on ~0.1 MW of LV transformer flow).
    head_p_mw: float = 0.0005
    head_q_mvar: float = 0.0005
    #: A participant's reported net injection per bus: device-side telemetry (inverter/EVSE sensors,
    #: ~3 % of a 20–30 kW rating), the claim under test. Looser than a revenue meter on purpose: the
    #: estimator should move a discrepancy onto a claim before it moves it onto a DSO meter.
    participant_p_mw: float = 0.001
    participant_q_mvar: float = 0.001
    #: A native load on a DSO revenue meter (class 1 on a few kW, 15-min register difference).
    known_p_mw: float = 0.0001
    known_q_mvar: float = 0.0001


DEFAULT_SIGMAS = MeasurementSigmas()


@dataclass(frozen=True)
class VerificationResult:
    """One interval's physics check. ``flagged`` participants' claimed injection is not what the grid saw."""

    flagged: frozenset[str]
    #: Weighted sum of squared residuals J of the first (all-measurement) estimate, and the chi-square
    #: critical value for its m - n degrees of freedom at ``1 - chi2_false_alarm``.
    chi2: float
    chi2_threshold: float
    bad_data_detected: bool
    #: |r_i| / sqrt(Omega_ii) of the first estimate, index (quantity, bus) with quantity "p_mw" / "q_mvar"
    #: (bus injection; at the slack bus it carries the substation meter) or "vm_pu". Buses joined by
    #: closed bus-bus switches are one electrical bus, named by its lowest index (the slack if inside).
    normalized_residuals: pd.Series
    #: Measurements the largest-normalized-residual loop removed, in order, as (quantity, bus).
    bad_measurements: tuple[tuple[str, int], ...]
    #: Per flagged participant: reported minus estimated net injection at its suspect electrical bus(es)
    #: (MW, load convention; the bus total when others share it). Negative = the telemetry claimed less
    #: consumption (more delivery) than the grid saw: the unverified part of a claimed delivery.
    discrepancy_p_mw: Mapping[str, float]
    #: Flagged participants sharing the bad electrical bus with another participant: the physics sees one
    #: bus injection, so the verdict covers all of them and cannot say which one lied.
    ambiguous: frozenset[str]
    failed: bool
    reason: str = ""
    elapsed_ms: float = 0.0
    estimator_runs: int = 0
    #: Estimated injection per electrical bus after bad-data removal (MW / Mvar, load convention).
    estimated_p_mw: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))
    estimated_q_mvar: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))


def participant_buses_of(assets: pd.DataFrame) -> dict[str, frozenset[int]]:
    """``participant_id -> buses`` of an asset table (index asset_id, columns ``participant_id``, ``bus``)."""
    return {str(pid): frozenset(int(b) for b in rows["bus"])
            for pid, rows in assets.groupby(assets["participant_id"].astype(str))}


def reported_bus_injections(
    net: pp.pandapowerNet,
    *,
    asset_bus: pd.Series,
    true_p_mw: pd.Series,
    reported_p_mw: pd.Series,
    true_q_mvar: pd.Series | None = None,
    reported_q_mvar: pd.Series | None = None,
) -> tuple[pd.Series, pd.Series]:
    """Per-bus P/Q (load convention) as the DSO's books have them: the net's true injections with every
    asset's true power replaced by what its telemetry reported.

    ``net`` holds the interval's true injections (as the GridModel solved them). Built from loads, sgens
    and storage (``bus_injections``), never from ``res_bus``, which would count shunts twice. Series are
    indexed by asset_id; without Q series, Q is taken as reported truthfully.
    """
    p_bus, q_bus = bus_injections(net)
    bus = asset_bus.astype(int)
    p_lie = reported_p_mw.reindex(bus.index).fillna(0.0) - true_p_mw.reindex(bus.index).fillna(0.0)
    p_bus = p_bus.add(p_lie.groupby(bus).sum(), fill_value=0.0)
    if true_q_mvar is not None and reported_q_mvar is not None:
        q_lie = reported_q_mvar.reindex(bus.index).fillna(0.0) - true_q_mvar.reindex(bus.index).fillna(0.0)
        q_bus = q_bus.add(q_lie.groupby(bus).sum(), fill_value=0.0)
    return p_bus.rename("p_mw"), q_bus.rename("q_mvar")


def verify_interval(
    net: pp.pandapowerNet,
    *,
    measured: PowerFlowResult,
    reported_p_mw: pd.Series,
    reported_q_mvar: pd.Series,
    participant_buses: Mapping[str, Collection[int]],
    trusted_buses: Collection[int] = (),
    **options: Any,
) -> VerificationResult:
    """One-shot :meth:`FeederVerifier.verify` (builds the estimator model each call: ~100 ms more);
    ``options`` are those of :meth:`FeederVerifier.from_net` (sigmas, threshold, margin, ...).

    Never raises on bad numbers or an unusable feeder: the result then has ``failed=True`` and flags nobody.
    """
    started = wallclock.perf_counter()
    try:
        verifier = FeederVerifier.from_net(net, **options)
    except _VERIFICATION_ERRORS as exc:
        _log.warning("verification model could not be built: %s", exc)
        return _failed(f"{type(exc).__name__}: {exc}", elapsed_ms=(wallclock.perf_counter() - started) * 1e3)
    result = verifier.verify(measured=measured, reported_p_mw=reported_p_mw, reported_q_mvar=reported_q_mvar,
                             participant_buses=participant_buses, trusted_buses=trusted_buses)
    return dataclasses.replace(result, elapsed_ms=(wallclock.perf_counter() - started) * 1e3)


class _EstimationFailed(Exception):
    pass


# pandapower reports unobservable or singular measurement sets as UserWarning / LinAlgError and bad inputs
# as assorted numpy/pandas errors; none may stop the engine and none is evidence against a participant.
_VERIFICATION_ERRORS = (_EstimationFailed, UserWarning, np.linalg.LinAlgError, ValueError, KeyError,
                        IndexError, ZeroDivisionError, FloatingPointError)


class FeederVerifier:
    """The estimator model of one feeder topology, built once and re-filled with measurements per interval.

    Converting a pandapower net for estimation costs ~100 ms; WLS on the converted model ~10 ms per
    iteration. Rebuild (``from_net``) when the topology (switches, lines in service) changes. ``verify``
    refills the model in place: one verifier per policy twin, not shared between threads.
    """

    def __init__(self, *, eppci: ExtendedPPCI, groups: list[list[int]], representative: np.ndarray,
                 slack_ppci: int, injecting_buses: frozenset[int], sigmas: MeasurementSigmas,
                 threshold: float, margin: float, chi2_false_alarm: float, max_removals: int,
                 max_iterations: int) -> None:
        self._eppci = eppci
        self._groups = groups  # ppci bus -> pandapower buses merged into it ([] for pandapower's aux buses)
        self._representative = representative  # ppci bus -> the pandapower bus that names it (-1: aux)
        self._slack_ppci = slack_ppci
        self._injecting_buses = injecting_buses
        self.sigmas = sigmas
        self.threshold = threshold
        self.margin = margin
        self._zero = np.zeros(len(groups), dtype=bool)  # this interval's exact-zero-injection ppci buses
        self.chi2_false_alarm = chi2_false_alarm
        self.max_removals = max_removals
        self.max_iterations = max_iterations

    @classmethod
    def from_net(
        cls,
        net: pp.pandapowerNet,
        *,
        sigmas: MeasurementSigmas = DEFAULT_SIGMAS,
        threshold: float = 3.0,
        margin: float = 3.0,
        chi2_false_alarm: float = 0.01,
        max_removals: int = 5,
        max_iterations: int = 30,
    ) -> FeederVerifier:
        """Convert ``net``'s topology and impedances for estimation; its injections and results are ignored.

        ``threshold``: largest normalized residual that counts as bad data (3 = "3 sigma"). ``margin``: a
        rival explanation whose squared normalized residual is within ``margin²`` of the largest makes the
        identification ambiguous. ``chi2_false_alarm``: false-alarm probability of the chi-square test.
        """
        slack = _slack_bus(net)
        est = copy.deepcopy(net)  # the conversion writes lookups and options into the net
        # pandapower insists on one measurement to convert; the real ones are written per interval.
        est.measurement = pd.DataFrame({"name": ["template"], "measurement_type": ["v"], "element_type": ["bus"],
                                        "element": [slack], "value": [1.0], "std_dev": [1.0], "side": [None]})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandapower assigns into DataFrame slices while converting
            _, _, eppci = pp2eppci(est, zero_injection=None)
        lookup = np.asarray(est._pd2ppc_lookups["bus"])
        n_ppci = eppci["bus"].shape[0]
        groups: list[list[int]] = [[] for _ in range(n_ppci)]
        for bus in est.bus.index[est.bus.in_service.astype(bool)]:
            k = int(lookup[int(bus)])
            if 0 <= k < n_ppci:
                groups[k].append(int(bus))
        slack_ppci = int(lookup[slack])
        representative = np.array([(slack if k == slack_ppci else min(g)) if g else -1
                                   for k, g in enumerate(groups)], dtype=np.int64)
        injecting = set()
        for table in _INJECTING_TABLES:
            if table in est and len(est[table]):
                rows = est[table]
                injecting |= set(rows.loc[rows.in_service.astype(bool), "bus"].astype(int))
        return cls(eppci=eppci, groups=groups, representative=representative, slack_ppci=slack_ppci,
                   injecting_buses=frozenset(injecting), sigmas=sigmas, threshold=threshold, margin=margin,
                   chi2_false_alarm=chi2_false_alarm, max_removals=max_removals, max_iterations=max_iterations)

    def verify(
        self,
        *,
        measured: PowerFlowResult,
        reported_p_mw: pd.Series,
        reported_q_mvar: pd.Series,
        participant_buses: Mapping[str, Collection[int]],
        trusted_buses: Collection[int] = (),
    ) -> VerificationResult:
        """Check reported injections against measured voltages and the feeder-head meter; flag the liars.

        ``measured``: the interval's power flow read as the DSO's meters (``vm_pu`` at every bus, the
        feeder-head exchange). ``reported_p_mw`` / ``reported_q_mvar``: net injection per pandapower bus,
        load convention, as the DSO's books have it (participants' telemetry plus known native loads, see
        :func:`reported_bus_injections`); missing buses count as zero. ``participant_buses``: the buses of
        each participant's assets. ``trusted_buses``: participant buses whose injection the DSO meters
        itself (weighted as known, never attributed). Never raises: failure flags nobody.
        """
        started = wallclock.perf_counter()
        try:
            result = self._verify(measured=measured, reported_p_mw=reported_p_mw, reported_q_mvar=reported_q_mvar,
                                  participant_buses=participant_buses, trusted_buses=trusted_buses)
        except _VERIFICATION_ERRORS as exc:
            _log.warning("verification failed: %s", exc)
            result = _failed(f"{type(exc).__name__}: {exc}")
        return dataclasses.replace(result, elapsed_ms=(wallclock.perf_counter() - started) * 1e3)

    # -- one interval ------------------------------------------------------------------------------------
    def _verify(
        self,
        *,
        measured: PowerFlowResult,
        reported_p_mw: pd.Series,
        reported_q_mvar: pd.Series,
        participant_buses: Mapping[str, Collection[int]],
        trusted_buses: Collection[int],
    ) -> VerificationResult:
        if not measured.converged:
            raise _EstimationFailed("the interval's power flow did not converge: there is nothing measured")
        trusted = {int(b) for b in trusted_buses}
        untrusted = {int(b) for buses in participant_buses.values() for b in buses} - trusted
        owners = [frozenset(pid for pid, buses in participant_buses.items()
                            if (set(group) - trusted) & {int(b) for b in buses}) for group in self._groups]
        labels = self._fill_measurements(measured=measured, reported_p_mw=reported_p_mw,
                                         reported_q_mvar=reported_q_mvar, untrusted=untrusted)
        first = self._estimate(labels)
        runs = 1
        chi2_threshold = float(chi2_distribution.ppf(1.0 - self.chi2_false_alarm, max(first.dof, 1)))
        residuals = pd.Series(first.normalized, index=pd.MultiIndex.from_tuples(
            [lbl[:2] for lbl in first.labels], names=["quantity", "bus"]), name="normalized_residual")
        removed: list[tuple[str, int]] = []
        flagged: set[str] = set()
        ambiguous: set[str] = set()
        suspect_buses: set[int] = set()
        reason = ""
        current = first
        # One bad measurement at a time: a gross error smears residuals onto its neighbours; removing only
        # the largest and re-estimating lets honest neighbours fall back below the threshold.
        while len(removed) < self.max_removals:
            found = self._identify(current, owners)
            if found is None:
                break
            quantity, bus, k = found.label
            removed.append((quantity, bus))
            if found.on_dso_meter:
                reason = f"largest residual on a DSO meter ({quantity} at bus {bus}); nothing attributed"
                break
            accused = set(owners[k]).union(*(owners[j] for j in found.rival_buses))
            flagged |= accused
            if found.ambiguous or len(owners[k]) > 1:
                ambiguous |= accused
            suspect_buses |= {k, *found.rival_buses}
            self._drop(quantity, k)
            labels = [lbl for lbl in labels if lbl != (quantity, bus, k)]
            current = self._estimate(labels)
            runs += 1
        discrepancy = self._discrepancy(flagged, suspect_buses, owners, reported_p_mw, current.p_mw)
        return VerificationResult(
            flagged=frozenset(flagged), chi2=first.chi2, chi2_threshold=chi2_threshold,
            bad_data_detected=bool(first.chi2 > chi2_threshold or removed), normalized_residuals=residuals,
            bad_measurements=tuple(removed), discrepancy_p_mw=MappingProxyType(discrepancy),
            ambiguous=frozenset(ambiguous), failed=False, reason=reason, estimator_runs=runs,
            estimated_p_mw=current.p_mw, estimated_q_mvar=current.q_mvar)

    def _identify(
        self, est: _Estimate, owners: list[frozenset[str]],
    ) -> _Identification | None:
        """The largest normalized residual if it reaches the threshold, with the rival buses it cannot be
        told apart from, and whether it sits on a DSO meter (voltage or the substation meter).

        Exact zero injections are physics, not data, and are never suspects. Removing measurement i lowers
        J by rN_i² (one gross error), so rN_top² - rN_j² is twice the log-likelihood ratio of "top is bad"
        over "j is bad"; a rival within ``margin²`` of the top, owned by a different set of participants,
        makes the identification ambiguous.
        """
        suspect = np.array([q == "vm_pu" or not self._zero[k] for q, _, k in est.labels])
        if not suspect.any():
            return None
        rn = np.where(suspect, est.normalized, 0.0)
        top = int(np.argmax(rn))
        if rn[top] < self.threshold:
            return None
        quantity, bus, k = est.labels[top]
        on_dso_meter = quantity == "vm_pu" or k == self._slack_ppci
        rivals: set[int] = set()
        dso_rival = False
        for j, (q_j, _, k_j) in enumerate(est.labels):
            if j == top or not suspect[j] or rn[top] ** 2 - rn[j] ** 2 >= self.margin ** 2:
                continue
            if q_j == "vm_pu" or k_j == self._slack_ppci:
                dso_rival = True  # a DSO meter explains it about as well: ambiguous, but accuses nobody
            elif owners[k_j] != owners[k]:
                rivals.add(k_j)
        return _Identification(label=(quantity, bus, k), rival_buses=frozenset(rivals),
                               ambiguous=bool(rivals) or dso_rival, on_dso_meter=on_dso_meter)

    def _discrepancy(
        self,
        flagged: set[str],
        suspect_buses: set[int],
        owners: list[frozenset[str]],
        reported_p_mw: pd.Series,
        estimated_p_mw: pd.Series,
    ) -> dict[str, float]:
        """Reported minus estimated injection, summed over each flagged participant's suspect buses."""
        out: dict[str, float] = {}
        for k in sorted(suspect_buses):
            gap = float(reported_p_mw.reindex(self._groups[k]).fillna(0.0).sum()
                        - estimated_p_mw[int(self._representative[k])])
            for pid in owners[k] & flagged:
                out[pid] = out.get(pid, 0.0) + gap
        return out

    def _fill_measurements(
        self,
        *,
        measured: PowerFlowResult,
        reported_p_mw: pd.Series,
        reported_q_mvar: pd.Series,
        untrusted: set[int],
    ) -> list[tuple[str, int, int]]:
        """Write this interval's z and sigma into the converted model, per ppci bus (fused buses summed)."""
        s = self.sigmas
        bus_table = self._eppci["bus"]
        base = float(self._eppci["baseMVA"])
        head = np.array([measured.p_head_mw, measured.q_head_mvar], dtype=float)
        if not np.isfinite(head).all():
            raise _EstimationFailed("feeder-head meter reading missing")
        zero_sigma = _SIGMA_FLOOR_PU * base
        p_books = reported_p_mw.astype(float)
        q_books = reported_q_mvar.astype(float)
        labels: list[tuple[str, int, int]] = []
        for k, group in enumerate(self._groups):
            p_load = q_load = var_p = var_q = 0.0
            for bus in group:
                p_load += float(p_books.get(bus, 0.0))
                q_load += float(q_books.get(bus, 0.0))
                if bus in untrusted:
                    var_p, var_q = var_p + s.participant_p_mw ** 2, var_q + s.participant_q_mvar ** 2
                elif bus in self._injecting_buses or p_books.get(bus, 0.0) or q_books.get(bus, 0.0):
                    var_p, var_q = var_p + s.known_p_mw ** 2, var_q + s.known_q_mvar ** 2
            self._zero[k] = var_p == 0.0 and k != self._slack_ppci
            if k == self._slack_ppci:
                # Slack-bus injection = what the books say is consumed there - what the head meter imports.
                p_load, q_load = p_load - head[0], q_load - head[1]
                var_p, var_q = var_p + s.head_p_mw ** 2, var_q + s.head_q_mvar ** 2
            sigma_p, sigma_q = max(np.sqrt(var_p), zero_sigma), max(np.sqrt(var_q), zero_sigma)
            vm = [float(measured.vm_pu.get(bus, np.nan)) for bus in group]
            if group and not np.isfinite(vm).all():
                raise _EstimationFailed(f"voltage reading missing at bus {group}")
            row = bus_table[k]
            # ppci is generator convention in per unit; our books are load convention in MW.
            row[bus_cols + P], row[bus_cols + P_STD], row[bus_cols + P_IDX] = -p_load / base, sigma_p / base, k
            row[bus_cols + Q], row[bus_cols + Q_STD], row[bus_cols + Q_IDX] = -q_load / base, sigma_q / base, k
            if group:
                row[bus_cols + VM], row[bus_cols + VM_STD], row[bus_cols + VM_IDX] = np.mean(vm), s.vm_pu, k
            else:
                row[bus_cols + VM] = row[bus_cols + VM_STD] = row[bus_cols + VM_IDX] = np.nan
            name = int(self._representative[k])
            labels += [("p_mw", name, k), ("q_mvar", name, k)] + ([("vm_pu", name, k)] if group else [])
        self._eppci._initialize_meas()
        # Start from the measured magnitudes: the DSO has them, and it saves the estimator an iteration.
        v_start = np.array([np.mean([measured.vm_pu[b] for b in g]) if g else 1.0 for g in self._groups])
        e = self._eppci
        e.v_init = v_start
        e.E_init = np.r_[e.delta_init[e.non_slack_bus_mask], v_start]
        e.reset()
        return labels

    def _drop(self, quantity: str, k: int) -> None:
        col = P if quantity == "p_mw" else Q
        self._eppci["bus"][k, [bus_cols + col, bus_cols + col + 1]] = np.nan
        self._eppci._initialize_meas()  # re-starts from the last estimate (eppci.E), a warm start

    def _estimate(self, labels: list[tuple[str, int, int]]) -> _Estimate:
        e = self._eppci
        solver = WLSAlgorithm(1e-7, self.max_iterations, _log)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome = solver.estimate(e)
        if outcome is False or not solver.successful:
            raise _EstimationFailed(f"WLS estimator did not converge in {self.max_iterations} iterations")
        r = solver.r.ravel()
        weight = np.diag(solver.R_inv)
        H = solver.H
        # Residual covariance Omega = R - H G^-1 H^T (diagonal only). A critical measurement has
        # Omega_ii ~ 0 and a residual ~ 0 that says nothing, so it gets no normalized residual at all.
        omega = 1.0 / weight - np.einsum("ij,ji->i", H, np.linalg.solve(solver.Gm, H.T))
        detectable = omega > 1e-6 / weight
        normalized = np.where(detectable, np.abs(r) / np.sqrt(np.where(detectable, omega, 1.0)), 0.0)
        # z is ordered p(bus), q(bus), v(bus) by ppci bus; ``labels`` was built per bus, so reorder it.
        mask = e.non_nan_meas_mask
        by_key = {(q, k): lbl for lbl in labels for q in [lbl[0]] for k in [lbl[2]]}
        ordered = ([by_key[("p_mw", int(k))] for k in mask["pbus"]] + [by_key[("q_mvar", int(k))] for k in mask["qbus"]]
                   + [by_key[("vm_pu", int(k))] for k in mask["vm"]])
        if len(ordered) != r.size:
            raise _EstimationFailed(f"{r.size} residuals for {len(ordered)} measurements")
        ybus, _, _ = e.get_Y()
        s_bus = e.V * np.conj(ybus @ e.V) * float(e["baseMVA"])  # injection, generator convention
        real = self._representative >= 0
        names = pd.Index(self._representative[real], name="bus")
        return _Estimate(normalized=normalized, labels=ordered, chi2=float(np.sum(r * r * weight)),
                         dof=int(r.size - H.shape[1]),
                         p_mw=pd.Series(-s_bus.real[real], index=names, name="p_mw"),
                         q_mvar=pd.Series(-s_bus.imag[real], index=names, name="q_mvar"))


@dataclass(frozen=True)
class _Identification:
    label: tuple[str, int, int]  # (quantity, named bus, ppci bus) of the largest normalized residual
    rival_buses: frozenset[int]  # ppci buses of other owners that explain the data about as well
    ambiguous: bool
    on_dso_meter: bool


@dataclass(frozen=True)
class _Estimate:
    normalized: np.ndarray  # per measurement, aligned with ``labels``
    labels: list[tuple[str, int, int]]  # (quantity, named bus, ppci bus)
    chi2: float
    dof: int
    p_mw: pd.Series
    q_mvar: pd.Series


def _slack_bus(net: pp.pandapowerNet) -> int:
    buses = net.ext_grid.loc[net.ext_grid.in_service.astype(bool), "bus"].astype(int).unique()
    if len(buses) != 1:
        # One substation meter reads one infeed; several infeeds would each need their own meter.
        raise ValueError(f"expected one in-service ext_grid bus, found {sorted(buses.tolist())}")
    return int(buses[0])


def _failed(reason: str, *, elapsed_ms: float = 0.0) -> VerificationResult:
    nan = float("nan")
    return VerificationResult(
        flagged=frozenset(), chi2=nan, chi2_threshold=nan, bad_data_detected=False,
        normalized_residuals=pd.Series(dtype=float, name="normalized_residual"), bad_measurements=(),
        discrepancy_p_mw=MappingProxyType({}), ambiguous=frozenset(), failed=True, reason=reason,
        elapsed_ms=elapsed_ms)
