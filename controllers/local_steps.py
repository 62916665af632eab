"""Exact, vectorized proximal local steps for every DER asset kind: the DePIN agents' ADMM x-update.

This module owns ``p_a = argmin_p f_a(p) + sum_t w[a,t]/2 (p_t - c[a,t])^2`` for many assets at once, where
``f_a`` is asset ``a``'s part of ``controllers.dispatch_model`` (built with ``head_limit=False``,
``proximal=True`` and no energy price term; the backlog value ``max(max(price), 0)`` is read from the inputs as
that model does). The cvxpy model is the definition; this is array code that must equal it (tested).

Math, per kind (load convention, MW; ``h`` = step in hours):

* PV: ``curt = clip(avail + c - C_pv h / w, 0, avail)``, ``p = curt - avail`` (separable per period).
* V1G EV charger: ``need`` only falls, so only the delivered total ``E = h eta_c sum ch`` is constrained
  (``E <= need_0``, unmet ``= max(need_0 - after - E, 0)``). With the multiplier ``mu`` of delivered energy,
  ``ch_t(mu) = clip(c_t - h (kappa - mu eta_c) / w_t, 0, ch_max_t)`` and ``E(mu)`` is piecewise linear and
  nondecreasing: ``mu`` is 0, the unmet cost ``U``, or the exact root of ``E(mu) = target`` found between two
  sorted breakpoints (a water-filling, exact to rounding).
* Battery, V2G charger, flexible load: a *chain*. Per period two decisions ``x_t`` in a box, cost
  ``w_t/2 (a.x_t - c_t)^2 + q_t.x_t``, a scalar state ``S_t = S_{t-1} + g_t.x_t + d_t`` in a tube
  ``lo_t <= S_t <= hi_t``, and a terminal cost ``beta S``. The terminal shortfall (``M max(target - S_T, 0)``)
  is one extra period ``T`` whose decision is the shortfall ``y >= 0`` (cost ``M y``, ``S_{T+1} = S_T + y >=
  target``), so every chain has ``L = T + 1`` periods. Battery: ``x = (ch, dis)``, ``S`` = SOC; V2G: ``x =
  (ch, dis)``, ``S`` = energy delivered (``need_0 - need``); flexible load: ``x = (served, curtailed)``,
  ``S`` = backlog. ``ch`` and ``dis`` are separate, as in the cvxpy relaxation.

The chain solver (``_solve_chains``), exact first and fast second:

* presolve: each tube is cut to the reachable states, so a state the boxes force onto a bound becomes a fixed
  state (otherwise no point is strictly feasible and an interior point stalls);
* a batched primal-dual interior point (Mehrotra predictor-corrector). Eliminating ``x_t`` (a 2x2 solve per
  period) leaves, in the order ``(mu_0, S_0, mu_1, S_1, ...)`` of dynamics multipliers and states, one
  *tridiagonal* Newton system per chain; all chains are stacked into one tridiagonal system (the couplings
  between chains are exact zeros, so no pivoting crosses a chain and each chain's arithmetic is its own) and
  LAPACK ``gttrf/gttrs`` solves it. Step lengths, centring and stopping are per chain, so a chain's result does
  not depend on the batch;
* the interior point only finds the active set: once a chain's residuals are small, every iteration reads the
  active set off its iterate and solves that active set's KKT system exactly (the same tridiagonal shape:
  ``S_t - S_{t-1} - k_t mu_t = e_t`` or ``mu_t = mu0`` where a free decision without curvature pins the
  multiplier, and ``mu_t = mu_{t+1}`` or ``S_t = bound``); the chain stops when a complete KKT check (bounds,
  stationarity, signs of the active bounds' multipliers, all relative) passes at 1e-9 (it reads ~1e-15);
* the two ways the optimum is not unique are made explicit rather than left to a solver: the split of energy
  among periods that charge and discharge at once (or curtail) inside one segment (spread in proportion to
  each period's range), and the multiplier of a segment where nothing is free (chosen inside its interval);
* warm start: between ADMM rounds only ``c`` (and maybe ``w``) moves, so a solve first tries the previous
  active set and corrects it segment by segment (primal-dual active-set steps), and runs the interior point
  only for the chains that do not verify within a few passes.

An energy price ``lambda`` (EUR/MWh) on the asset would be the linear term ``h lambda . p``: it is the same as
the target ``c - h lambda / w`` (the tests fold the dispatch model's price into the target this way).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.linalg.lapack import dgttrf, dgttrs

from controllers.api import AssetKind
from controllers.dispatch_inputs import KIND_ORDER, DispatchInputs
from controllers.dispatch_model import DispatchWeights, throughput_cost_eur_per_mwh

__all__ = ["KIND_ORDER", "AssetProx", "ProxResult", "power_range_mw"]

# KIND_ORDER (re-exported): the row order of the per-kind arrays of ``DispatchInputs``, batteries, EV chargers,
# flexible loads, PV; within a kind the asset table's order.

#: Relative KKT residual up to which an active-set solution is accepted as exact (it is ~1e-15 when the
#: active set is right; anything that is not right misses by far more).
_KKT_TOL = 1e-9
_IPM_MAX_ITER = 80
#: Primal-dual active-set iterations from a warm start before the interior point takes over.
_WARM_PDAS_ITER = 12
#: Active-set corrections after an interior-point solve.
_POLISH_ITER = 4
#: Box or tube narrower than this (relative to the chain's scale) is treated as fixed at its lower end.
_FIXED_REL = 1e-13

_DEFAULT_WEIGHTS = DispatchWeights()

# Decision statuses in an active set.
_FREE, _LOW, _UP, _FROZEN = 0, 1, 2, 3
# State statuses.
_S_FREE, _S_LO, _S_HI = 0, 1, 2


# ============================================================================ the generic chain
_RAW = ("a", "g", "q", "d", "lx", "ux", "lo", "hi", "s0", "beta")
#: Fields of ``_Chains`` with the decision axis first: (2, n, L) (or (2, n) for ``a``). Component-first keeps
#: every per-decision operation on contiguous memory (three times faster than strided ``x[..., j]``).
_BY_DECISION = frozenset({"a", "g", "q", "lx", "ux", "a_full", "fixed_x", "has_lx", "has_ux", "curv", "mu_single"})


@dataclass(frozen=True)
class _Chains:
    """``n`` chains of ``L`` periods, two decisions per period (see the module docstring), with the arrays
    every solve needs derived once (build with :meth:`build`).

    Shapes: ``a`` (2, n); ``g``, ``q``, ``lx``, ``ux`` (2, n, L), decision first; ``d``, ``lo``, ``hi``
    (n, L); ``s0``, ``beta`` (n,). ``ux`` / ``lo`` / ``hi`` may be infinite. The last period is the terminal
    one: no prox term (the weight ``w`` and target ``c`` of each solve are 0 there).
    """

    a: np.ndarray
    g: np.ndarray
    q: np.ndarray
    d: np.ndarray
    lx: np.ndarray
    ux: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    s0: np.ndarray
    beta: np.ndarray
    # derived
    a_full: np.ndarray  # a broadcast to (2, n, L)
    x_scale: np.ndarray  # (n,) unit of decisions (MW): largest box width or drift
    s_scale: np.ndarray  # (n,) unit of states (MWh)
    fixed_x: np.ndarray  # box of zero width
    fixed_s: np.ndarray  # tube of zero width (after tightening)
    has_lx: np.ndarray
    has_ux: np.ndarray
    has_lo: np.ndarray
    has_hi: np.ndarray
    curv: np.ndarray  # (2, n, L) the decision's own prox curvature w a_j^2 > 0 (real periods, a_j != 0)
    cross: np.ndarray  # (n, L) g_0 a_1 - g_1 a_0: power and energy are independent directions
    pair_ok: np.ndarray  # (n, L) both decisions free pins the multiplier (cross != 0, a real period)
    mu_pair: np.ndarray  # (n, L) that multiplier: (a_1 q_0 - a_0 q_1) / cross (dumping)
    mu_single: np.ndarray  # (2, n, L) q_j / g_j: the multiplier a free decision without curvature pins
    last: np.ndarray  # (n, L) beta in the last period, 0 elsewhere

    @classmethod
    def build(cls, **raw: np.ndarray) -> _Chains:
        """From arrays with the decision axis last (``a`` (n, 2), ``g`` ... (n, L, 2)): tubes tightened,
        decision axis moved first, derived arrays computed."""
        first = {k: np.ascontiguousarray(np.moveaxis(np.asarray(raw[k], dtype=float), -1, 0))
                 for k in ("a", "g", "q", "lx", "ux")}
        rest = {k: np.asarray(raw[k], dtype=float) for k in ("d", "lo", "hi", "s0", "beta")}
        a, g, q, lx, ux = (first[k] for k in ("a", "g", "q", "lx", "ux"))
        d, s0, beta = rest["d"], rest["s0"], rest["beta"]
        lo, hi = _tighten(g=g, lx=lx, ux=ux, d=d, s0=s0, lo=rest["lo"], hi=rest["hi"])
        n, L = d.shape
        a_full = np.ascontiguousarray(np.broadcast_to(a[:, :, None], g.shape))
        width = np.maximum(np.where(np.isfinite(ux), ux - lx, 0.0).max(axis=(0, 2), initial=0.0), 0.0)
        gmax = np.abs(g).max(axis=(0, 2), initial=0.0)
        drift = np.abs(d).max(axis=1, initial=0.0) / np.where(gmax > 0, gmax, 1.0)  # a flexible load's request
        x_scale = np.maximum(width, drift)
        x_scale = np.where(x_scale > 0, x_scale, 1.0)
        finite = np.concatenate([np.where(np.isfinite(lo), np.abs(lo), 0.0), np.where(np.isfinite(hi), np.abs(hi), 0.0),
                                 np.abs(s0)[:, None], (x_scale * gmax)[:, None]], axis=1)
        s_scale = finite.max(axis=1)
        s_scale = np.where(s_scale > 0, s_scale, 1.0)
        fixed_x = (ux - lx) <= _FIXED_REL * x_scale[None, :, None]
        fixed_s = (hi - lo) <= _FIXED_REL * s_scale[:, None]
        real = np.ones((n, L), dtype=bool)
        real[:, -1] = False
        curv = (a_full != 0) & real[None]
        cross = g[0] * a[1][:, None] - g[1] * a[0][:, None]
        pair_ok = (cross != 0) & real
        with np.errstate(divide="ignore", invalid="ignore"):
            mu_pair = np.where(pair_ok, (a[1][:, None] * q[0] - a[0][:, None] * q[1]) / cross, 0.0)
            mu_single = np.where(g != 0, q / g, 0.0)
        last = np.zeros((n, L))
        last[:, -1] = beta
        return cls(a=a, g=g, q=q, d=d, lx=lx, ux=ux, lo=lo, hi=hi, s0=s0, beta=beta, a_full=a_full,
                   x_scale=x_scale, s_scale=s_scale, fixed_x=fixed_x, fixed_s=fixed_s,
                   has_lx=np.isfinite(lx) & ~fixed_x, has_ux=np.isfinite(ux) & ~fixed_x,
                   has_lo=np.isfinite(lo) & ~fixed_s, has_hi=np.isfinite(hi) & ~fixed_s,
                   curv=curv, cross=cross, pair_ok=pair_ok, mu_pair=mu_pair, mu_single=mu_single, last=last)

    @property
    def n(self) -> int:
        return int(self.d.shape[0])

    def take(self, rows: np.ndarray) -> _Chains:
        """The chains ``rows``: a view that indexes each array the first time it is read (an active-set pass
        on a few chains reads a fraction of the fields; copying all of them cost more than the pass)."""
        return _ChainRows(self, np.asarray(rows))  # type: ignore[return-value]


class _ChainRows:
    """Some rows of a ``_Chains`` (see ``_Chains.take``); reads like one."""

    def __init__(self, parent: _Chains, rows: np.ndarray) -> None:
        self._parent = parent
        self._rows = rows

    def __getattr__(self, name: str) -> np.ndarray:
        value = getattr(self._parent, name)
        value = value[:, self._rows] if name in _BY_DECISION else value[self._rows]
        setattr(self, name, value)  # once: later reads find it without __getattr__
        return value

    @property
    def n(self) -> int:
        return int(self._rows.size)

    def take(self, rows: np.ndarray) -> _ChainRows:
        return _ChainRows(self._parent, self._rows[rows])


def _tighten(*, g: np.ndarray, lx: np.ndarray, ux: np.ndarray, d: np.ndarray, s0: np.ndarray, lo: np.ndarray,
             hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each tube cut to the states that are reachable from ``S_0`` and from which the rest of the tube stays
    reachable (forward and backward over the decision boxes).

    The feasible set does not change, but a state the boxes force onto a bound (an unavailable battery that
    starts full) becomes a fixed state instead of a bound no point can be strictly inside: without a strictly
    feasible point the multipliers of such a bound are unbounded and an interior point stalls.
    """
    with np.errstate(invalid="ignore"):
        e_lx, e_ux = np.where(g == 0, 0.0, g * lx), np.where(g == 0, 0.0, g * ux)  # 0 * inf: moves no energy
    step_lo = d + _sum2(np.minimum(e_lx, e_ux))
    step_hi = d + _sum2(np.maximum(e_lx, e_ux))
    lo, hi = lo.astype(float), hi.astype(float)
    L = d.shape[1]
    prev_lo = prev_hi = s0
    for t in range(L):
        lo[:, t] = np.maximum(lo[:, t], prev_lo + step_lo[:, t])
        hi[:, t] = np.minimum(hi[:, t], prev_hi + step_hi[:, t])
        prev_lo, prev_hi = lo[:, t], hi[:, t]
    for t in range(L - 2, -1, -1):
        lo[:, t] = np.maximum(lo[:, t], lo[:, t + 1] - step_hi[:, t + 1])
        hi[:, t] = np.minimum(hi[:, t], hi[:, t + 1] - step_lo[:, t + 1])
    crossed = lo > hi  # only by rounding: the kinds here are feasible by construction
    mid = 0.5 * (lo + hi)
    return np.where(crossed, mid, lo), np.where(crossed, mid, hi)


@dataclass(frozen=True)
class _ChainPoint:
    """A chain solution: decisions, states, dynamics multipliers, and the active set it verified with."""

    x: np.ndarray  # (2, n, L)
    s: np.ndarray  # (n, L), by the recursion from x
    mu: np.ndarray  # (n, L)
    x_status: np.ndarray  # (2, n, L) int8
    s_status: np.ndarray  # (n, L) int8
    residual: np.ndarray  # (n,) relative KKT residual
    ipm_iterations: int
    pdas_iterations: int
    ipm_chains: int  # chains the interior point solved (the warm active set did not verify)
    fallback_chains: int  # chains with no verified solution


# Reductions over the two decisions of a period, written out.
def _sum2(v: np.ndarray) -> np.ndarray:
    return v[0] + v[1]


def _max2(v: np.ndarray) -> np.ndarray:
    return np.maximum(v[0], v[1])


def _min2(v: np.ndarray) -> np.ndarray:
    return np.minimum(v[0], v[1])


def _chain_max(v: np.ndarray) -> np.ndarray:
    """Per chain, the largest value (of an (n, L) or a by-decision (2, n, L) array)."""
    return (_max2(v) if v.ndim == 3 else v).max(axis=1)


def _chain_sum(v: np.ndarray) -> np.ndarray:
    return (_sum2(v) if v.ndim == 3 else v).sum(axis=1)


def _per_chain(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """(n,) values shaped to broadcast against ``like`` ((n, L) or (2, n, L))."""
    return values[None, :, None] if like.ndim == 3 else values[:, None]


def _shift_next(values: np.ndarray) -> np.ndarray:
    """``values[:, t + 1]`` with 0 after the last period (the multiplier of a state that does not exist)."""
    out = np.zeros_like(values)
    out[:, :-1] = values[:, 1:]
    return out


def _power(ch: _Chains, x: np.ndarray) -> np.ndarray:
    return ch.a_full[0] * x[0] + ch.a_full[1] * x[1]


def _states(ch: _Chains, x: np.ndarray) -> np.ndarray:
    """The states the decisions imply (the recursion, not a solver's copy of it)."""
    return ch.s0[:, None] + np.cumsum(ch.g[0] * x[0] + ch.g[1] * x[1] + ch.d, axis=1)


def _tridiagonal_factor(lower: np.ndarray, diag: np.ndarray, upper: np.ndarray) -> tuple | None:
    """LU factors (LAPACK gttrf, partial pivoting) of the stacked tridiagonal system of all chains; rows
    (n, 2L) with ``lower[:, 0]`` and ``upper[:, -1]`` the couplings between chains (exact zeros, so no
    pivoting crosses a chain boundary and each chain's arithmetic is its own). None if singular."""
    n, m = diag.shape
    dl, d, du, du2, ipiv, info = dgttrf(lower.ravel()[1:], diag.ravel(), upper.ravel()[:-1])
    return None if info != 0 else (n, m, dl, d, du, du2, ipiv)


def _tridiagonal_apply(factors: tuple, rhs: np.ndarray) -> np.ndarray:
    n, m, dl, d, du, du2, ipiv = factors
    sol, _ = dgttrs(dl, d, du, du2, ipiv, rhs.reshape(-1, 1))
    return sol.reshape(n, m)


def _scales(ch: _Chains, w: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per chain: a gradient scale (EUR per unit of decision) and a multiplier scale (EUR per MWh), from the
    real periods (the terminal period's shortfall cost is a penalty, not a scale of the problem)."""
    xs = np.maximum(ch.x_scale, np.abs(c).max(axis=1))
    grad = np.maximum((w * xs[:, None]).max(axis=1), _chain_max(np.abs(ch.q[:, :, :-1])))
    grad = np.where(grad > 0, grad, 1.0)
    gmax = _chain_max(np.abs(ch.g[:, :, :-1]))
    mult = np.maximum(grad / np.where(gmax > 0, gmax, 1.0), np.abs(ch.beta))
    return grad, mult


def _size(scale: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """What a residual made of ``terms`` is measured against: the terms themselves, floored at a small
    fraction of the chain's largest term and of the chain's natural scale. Rounding in a multiplier that
    should be 0 is relative to the other multipliers of its chain (or to the scale, when all are 0), not to
    itself; the floors still make a real violation count (1e-9 of 1e-6 of the scale is far below any error
    that matters)."""
    return terms + _per_chain(1e-3 * _chain_max(terms) + 1e-6 * scale, terms)


# ---------------------------------------------------------------------------- interior point
#: Once every relative residual of a chain's iterate is below this, each iteration also tries the exact
#: active-set solve of the active set the iterate points at; the chain stops when that verifies.
_POLISH_FROM = 1e-5


@dataclass(frozen=True)
class _Solved:
    """The best exact (or best-effort) solution found for each chain, and how it was found."""

    x: np.ndarray
    mu: np.ndarray
    x_status: np.ndarray
    s_status: np.ndarray
    residual: np.ndarray
    iterations: int
    active_set_iterations: int


@dataclass(frozen=True)
class _Newton:
    """One interior-point iteration: the factored Newton system and the residuals and slacks it is for."""

    ch: _Chains
    w: np.ndarray
    factors: tuple
    det: np.ndarray
    d0: np.ndarray
    d1: np.ndarray
    ag0: np.ndarray  # A^-1 g
    ag1: np.ndarray
    g0: np.ndarray  # g with fixed decisions removed
    g1: np.ndarray
    wa00: np.ndarray  # w a a^T
    wa01: np.ndarray
    wa11: np.ndarray
    rx: np.ndarray
    rs: np.ndarray
    rd: np.ndarray
    sl: np.ndarray
    su: np.ndarray
    sL: np.ndarray
    sU: np.ndarray
    zl: np.ndarray
    zu: np.ndarray
    nl: np.ndarray
    nu: np.ndarray

    def direction(self, tl: Any, tu: Any, tL: Any, tU: Any) -> tuple[np.ndarray, ...]:
        """The Newton direction (dx, dS, dmu, dzl, dzu, dnl, dnu) for complementarity targets ``t`` (0: the
        affine step; sigma mu minus the second-order corrections: Mehrotra's corrector)."""
        ch = self.ch
        sl, su, sL, sU, zl, zu, nl, nu = self.sl, self.su, self.sL, self.sU, self.zl, self.zu, self.nl, self.nu
        hl, hu, hL, hU, fx, fs = ch.has_lx, ch.has_ux, ch.has_lo, ch.has_hi, ch.fixed_x, ch.fixed_s
        n, L = ch.d.shape
        rho = np.where(fx, 0.0, -(self.rx - hl * (tl / sl - zl) + hu * (tu / su - zu)))
        b = np.empty((n, 2 * L))
        b[:, 0::2] = -self.rd + self.ag0 * rho[0] + self.ag1 * rho[1]
        b[:, 1::2] = np.where(fs, 0.0, -(self.rs - hL * (tL / sL - nl) + hU * (tU / sU - nu)))
        sol = _tridiagonal_apply(self.factors, b)
        dmu, dsv = sol[:, 0::2], sol[:, 1::2]
        r0, r1 = rho[0] + self.g0 * dmu, rho[1] + self.g1 * dmu
        dxv = np.empty_like(rho)
        dxv[0] = np.where(fx[0], 0.0, ((self.wa11 + self.d1) * r0 - self.wa01 * r1) / self.det)
        dxv[1] = np.where(fx[1], 0.0, (-self.wa01 * r0 + (self.wa00 + self.d0) * r1) / self.det)
        dzl = np.where(hl, (tl - sl * zl - zl * dxv) / sl, 0.0)
        dzu = np.where(hu, (tu - su * zu + zu * dxv) / su, 0.0)
        dnl = np.where(hL, (tL - sL * nl - nl * dsv) / sL, 0.0)
        dnu = np.where(hU, (tU - sU * nu + nu * dsv) / sU, 0.0)
        return dxv, dsv, dmu, dzl, dzu, dnl, dnu

    def max_step(self, direction: tuple[np.ndarray, ...]) -> np.ndarray:
        """Per chain, the largest step in [0, 1] that keeps every slack and multiplier nonnegative."""
        dxv, dsv, _, dzl, dzu, dnl, dnu = direction
        ch = self.ch

        def ratio(val: np.ndarray, dv: np.ndarray, mask: np.ndarray) -> np.ndarray:
            r = np.where(mask & (dv < 0), -val / dv, np.inf)
            return (_min2(r) if r.ndim == 3 else r).min(axis=1, initial=np.inf)

        return np.minimum.reduce([ratio(self.sl, dxv, ch.has_lx), ratio(self.su, -dxv, ch.has_ux),
                                  ratio(self.sL, dsv, ch.has_lo), ratio(self.sU, -dsv, ch.has_hi),
                                  ratio(self.zl, dzl, ch.has_lx), ratio(self.zu, dzu, ch.has_ux),
                                  ratio(self.nl, dnl, ch.has_lo), ratio(self.nu, dnu, ch.has_hi), np.ones(ch.n)])


def _ipm(ch: _Chains, w: np.ndarray, c: np.ndarray) -> _Solved:
    """Mehrotra predictor-corrector on the chains from a centred start, polished to the exact solution.

    Each chain's iterate, step length and centring are its own; so are its polish attempts, made once its
    residuals are small: the active set is read off the iterate (a bound is active where its scaled multiplier
    exceeds its scaled slack) and solved exactly (``_active_set_solve``), and the chain stops as soon as the
    result passes the KKT check.

    Newton system: eliminating ``dx_t = A_t^-1 (rho_t + g dmu_t)`` with ``A_t = w a a^T + D_t`` (2x2, ``D_t``
    the barrier terms) leaves, per chain, rows ``dS_t - dS_{t-1} - k_t dmu_t = r`` (``k_t = g^T A_t^-1 g``)
    and ``dmu_t - dmu_{t+1} + E_t dS_t = r`` (``E_t`` the state barrier terms): tridiagonal in the order
    ``(mu_0, S_0, mu_1, S_1, ...)``.
    """
    n, L = ch.d.shape
    hl, hu, hL, hU = ch.has_lx, ch.has_ux, ch.has_lo, ch.has_hi
    fx, fs = ch.fixed_x, ch.fixed_s
    xs, ss = ch.x_scale, ch.s_scale
    grad, mult = _scales(ch, w, c)
    lx = np.where(np.isfinite(ch.lx), ch.lx, 0.0)
    ux = np.where(np.isfinite(ch.ux), ch.ux, 0.0)
    lo = np.where(np.isfinite(ch.lo), ch.lo, 0.0)
    hi = np.where(np.isfinite(ch.hi), ch.hi, 0.0)
    xs3, gr3 = xs[None, :, None], grad[None, :, None]

    x = np.where(hl & hu, 0.5 * (lx + ux), np.where(hl, lx + xs3, np.where(hu, ux - xs3, 0.0)))
    x = np.where(fx, lx, x)
    s = np.where(hL & hU, 0.5 * (lo + hi), np.where(hL, lo + ss[:, None], np.where(hU, hi - ss[:, None], np.nan)))
    s = np.where(fs, lo, s)
    for t in range(L):  # a state with no bound at all starts where the one before it is
        prev = ch.s0 if t == 0 else s[:, t - 1]
        s[:, t] = np.where(np.isnan(s[:, t]), prev, s[:, t])
    # Centred start: every complementarity product equal to the chain's gradient x decision scale.
    mu0 = (grad * xs)[:, None]

    def slacks() -> tuple[np.ndarray, ...]:
        # a slack that rounding took to 0 would divide by zero
        return (np.where(hl, np.maximum(x - lx, 1e-300), 1.0), np.where(hu, np.maximum(ux - x, 1e-300), 1.0),
                np.where(hL, np.maximum(s - lo, 1e-300), 1.0), np.where(hU, np.maximum(hi - s, 1e-300), 1.0))

    sl, su, sL, sU = slacks()
    zl = np.where(hl, mu0[None] / sl, 0.0)
    zu = np.where(hu, mu0[None] / su, 0.0)
    nl = np.where(hL, mu0 / sL, 0.0)
    nu = np.where(hU, mu0 / sU, 0.0)
    mu = np.zeros((n, L))
    count = np.maximum(_chain_sum(hl) + _chain_sum(hu) + hL.sum(axis=1) + hU.sum(axis=1), 1)

    a_eff = np.where(fx, 0.0, ch.a_full)
    g_eff = np.where(fx, 0.0, ch.g)
    a0, a1, g0, g1 = a_eff[0], a_eff[1], g_eff[0], g_eff[1]
    cross = g0 * a1 - g1 * a0
    wa00, wa01, wa11 = w * a0 * a0, w * a0 * a1, w * a1 * a1
    reg = (1e-14 * ss / mult)[:, None]  # dual regularization: keeps a period with nothing free from a 0 pivot
    lower = np.zeros((n, 2 * L))
    upper = np.zeros((n, 2 * L))
    diag = np.empty((n, 2 * L))
    lower[:, 2::2] = -1.0
    lower[:, 1::2] = np.where(fs, 0.0, 1.0)
    upper[:, 0::2] = 1.0
    upper[:, 1:-1:2] = np.where(fs[:, :-1], 0.0, -1.0)

    best = {"x": x.copy(), "mu": mu.copy(), "xst": np.zeros(x.shape, np.int8), "sst": np.zeros((n, L), np.int8),
            "res": np.full(n, np.inf)}
    done = np.zeros(n, dtype=bool)
    stalled = np.zeros(n, dtype=bool)
    tries = 0

    def statuses(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        low = hl[:, rows] & (zl[:, rows] / gr3[:, rows] > sl[:, rows] / xs3[:, rows])
        up = hu[:, rows] & (zu[:, rows] / gr3[:, rows] > su[:, rows] / xs3[:, rows])
        xst = np.where(fx[:, rows] | low, _LOW, np.where(up, _UP, _FREE)).astype(np.int8)
        at_lo = hL[rows] & (nl[rows] / mult[rows, None] > sL[rows] / ss[rows, None])
        at_hi = hU[rows] & (nu[rows] / mult[rows, None] > sU[rows] / ss[rows, None])
        sst = np.where(fs[rows] | at_lo, _S_LO, np.where(at_hi, _S_HI, _S_FREE)).astype(np.int8)
        return xst, sst

    def keep_best(rows: np.ndarray, xv: np.ndarray, muv: np.ndarray, xst: np.ndarray, sst: np.ndarray,
                  res: np.ndarray) -> None:
        better = res < best["res"][rows]
        idx = rows[better]
        best["x"][:, idx], best["mu"][idx], best["res"][idx] = xv[:, better], muv[better], res[better]
        best["xst"][:, idx], best["sst"][idx] = xst[:, better], sst[better]

    iterations = 0
    for iterations in range(1, _IPM_MAX_ITER + 1):
        p = a0 * x[0] + a1 * x[1]
        t1 = w[None] * ch.a_full * (p - c)[None]
        t2 = mu[None] * ch.g
        rx = np.where(fx, 0.0, t1 + ch.q - t2 - zl + zu)
        nxt = _shift_next(mu)
        rs = np.where(fs, 0.0, mu - nxt + ch.last - nl + nu)
        prev = np.concatenate([ch.s0[:, None], s[:, :-1]], axis=1)
        rd = s - prev - ch.g[0] * x[0] - ch.g[1] * x[1] - ch.d
        gap = (_chain_sum(sl * zl * hl) + _chain_sum(su * zu * hu) + (sL * nl * hL).sum(axis=1)
               + (sU * nu * hU).sum(axis=1)) / count
        size_x = _size(grad, np.abs(t1) + np.abs(ch.q) + np.abs(t2) + zl + zu)
        size_s = _size(mult, np.abs(mu) + np.abs(nxt) + np.abs(ch.last) + nl + nu)
        err = np.maximum.reduce([_chain_max(np.abs(rx) / size_x), (np.abs(rs) / size_s).max(axis=1),
                                 np.abs(rd).max(axis=1) / ss, gap / (grad * xs)])
        trying = np.flatnonzero(~done & (err <= _POLISH_FROM))
        if trying.size:
            tries += 1
            sub = ch.take(trying) if trying.size < n else ch
            xst, sst = statuses(trying)
            out = _active_set_solve(sub, w[trying], c[trying], xst, sst, x[:, trying], mu[trying])
            if out is not None:
                xp, mup, xst_used, sst_used = out
                res = _kkt(sub, w[trying], c[trying], xp, mup)["residual"]
                keep_best(trying, xp, mup, xst_used, sst_used, res)
                done[trying[res <= _KKT_TOL]] = True
        # A chain whose gap is at rounding level has nothing left to gain from steps (they only degrade it):
        # it waits for the active-set corrections at the end.
        stalled |= (gap <= 1e-15 * grad * xs) | ~np.isfinite(err)
        if (done | stalled).all() or iterations == _IPM_MAX_ITER:
            break
        dd = np.where(fx, 1.0, hl * zl / sl + hu * zu / su)
        d0, d1 = dd[0], dd[1]
        # A = w a a^T + diag(d); written so that nothing cancels when d -> 0 on a free decision (the
        # rank-1 w a a^T alone is singular): det = w (a0^2 d1 + a1^2 d0) + d0 d1, k = g^T A^-1 g.
        det = wa00 * d1 + wa11 * d0 + d0 * d1
        k = (w * cross * cross + g0 * g0 * d1 + g1 * g1 * d0) / det
        ag0 = (w * a1 * cross + g0 * d1) / det  # A^-1 g
        ag1 = (-w * a0 * cross + g1 * d0) / det
        diag[:, 0::2] = -(k + reg)
        diag[:, 1::2] = np.where(fs, 1.0, hL * nl / sL + hU * nu / sU)
        factors = _tridiagonal_factor(lower, diag, upper)
        if factors is None:
            break
        newton = _Newton(ch=ch, w=w, factors=factors, det=det, d0=d0, d1=d1, ag0=ag0, ag1=ag1, g0=g0, g1=g1,
                         wa00=wa00, wa01=wa01, wa11=wa11, rx=rx, rs=rs, rd=rd, sl=sl, su=su, sL=sL, sU=sU, zl=zl,
                         zu=zu, nl=nl, nu=nu)
        aff = newton.direction(0.0, 0.0, 0.0, 0.0)
        al = newton.max_step(aff)[:, None]
        al3 = al[None]
        mu_aff = (_chain_sum(hl * (sl + al3 * aff[0]) * (zl + al3 * aff[3]))
                  + _chain_sum(hu * (su - al3 * aff[0]) * (zu + al3 * aff[4]))
                  + (hL * (sL + al * aff[1]) * (nl + al * aff[5])).sum(axis=1)
                  + (hU * (sU - al * aff[1]) * (nu + al * aff[6])).sum(axis=1)) / count
        sigma = np.clip((mu_aff / np.maximum(gap, 1e-300)) ** 3, 0.0, 1.0)
        sm = (sigma * gap)[:, None]
        tl = hl * (sm[None] - aff[0] * aff[3])
        tu = hu * (sm[None] + aff[0] * aff[4])
        tL = hL * (sm - aff[1] * aff[5])
        tU = hU * (sm + aff[1] * aff[6])
        full = newton.direction(tl, tu, tL, tU)
        dxv, dsv, dmu, dzl, dzu, dnl, dnu = full
        step = np.minimum(1.0, 0.995 * newton.max_step(full))
        step = np.where(done | stalled | ~np.isfinite(step), 0.0, step)
        st, st3 = step[:, None], step[None, :, None]
        x = x + st3 * dxv
        s = s + st * dsv
        mu = mu + st * dmu
        zl, zu = zl + st3 * dzl, zu + st3 * dzu
        nl, nu = nl + st * dnl, nu + st * dnu
        sl, su, sL, sU = slacks()

    pdas_used = tries
    left = np.flatnonzero(~done)
    if left.size:  # active-set corrections from the last iterate
        sub = ch.take(left) if left.size < n else ch
        xst, sst = statuses(left)
        px, pmu, pxst, psst, pres, used = _pdas(sub, w[left], c[left], xst, sst, x[:, left], mu[left],
                                               iterations=_POLISH_ITER)
        keep_best(left, px, pmu, pxst, psst, pres)
        pdas_used += used
        # Still nothing exact (it should not happen; ProxResult.unverified reports it): the last iterate,
        # inside its boxes, if it is the better of the two.
        left = left[best["res"][left] > _KKT_TOL]
        if left.size:
            sub = ch.take(left) if left.size < n else ch
            last_x = np.clip(x[:, left], sub.lx, sub.ux)
            res = _kkt(sub, w[left], c[left], last_x, mu[left])["residual"]
            xst, sst = statuses(left)
            keep_best(left, last_x, mu[left], xst, sst, res)
    return _Solved(x=best["x"], mu=best["mu"], x_status=best["xst"], s_status=best["sst"], residual=best["res"],
                   iterations=iterations, active_set_iterations=pdas_used)


# ---------------------------------------------------------------------------- active-set solve
def _segment_ids(touch: np.ndarray) -> np.ndarray:
    """Global id of the segment each period belongs to: a segment runs up to and including a touched state
    (the multiplier is constant along a segment and may jump only where a state sits on a bound)."""
    n, L = touch.shape
    return np.cumsum(touch, axis=1) - touch + (np.arange(n) * (L + 1))[:, None]


def _touch_ended(touch: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Per period: does its segment end on a touched state (rather than free at the end of the chain)?"""
    ends = np.zeros(seg.max(initial=-1) + 1, dtype=bool)
    ends[seg[touch]] = True
    return ends[seg]


def _classify(ch: _Chains, w: np.ndarray, c: np.ndarray, xst: np.ndarray, xref: np.ndarray) -> dict[str, np.ndarray]:
    """Per period, what the active set leaves free and the resulting row of the KKT system.

    *regular* periods: ``S_t - S_{t-1} - k mu_t = e`` (``k = 0`` when nothing is free); *pinned* periods (a free
    decision without curvature of its own: curtailment, shortfall, or charge and discharge both free) fix the
    multiplier, ``mu_t = mu0``, and the free decision takes whatever energy the states leave.
    """
    free = xst == _FREE
    fixed_val = np.where(xst == _LOW, ch.lx, np.where(xst == _UP, ch.ux, np.where(xst == _FROZEN, xref, 0.0)))
    f0, f1 = free[0], free[1]
    one = f0 ^ f1
    both = f0 & f1

    def pick(arr: np.ndarray) -> np.ndarray:  # the free decision's value, when exactly one is free
        return np.where(f0, arr[0], arr[1])

    def other(arr: np.ndarray) -> np.ndarray:
        return np.where(f0, arr[1], arr[0])

    aj, ai, gj, gi, qj, xi = pick(ch.a_full), other(ch.a_full), pick(ch.g), other(ch.g), pick(ch.q), other(fixed_val)
    regular_one = one & pick(ch.curv)
    pinned_one = one & ~regular_one
    # one free decision with curvature: x_j = x0 + slope mu (its stationarity), energy e + k mu
    wa = np.where(regular_one, w * aj, 1.0)
    aj_ = np.where(regular_one, aj, 1.0)
    x0 = np.where(regular_one, (c - ai * xi - qj / wa) / aj_, 0.0)
    slope = np.where(regular_one, gj / (wa * aj_), 0.0)
    fixed_energy = ch.g[0] * np.where(f0, 0.0, fixed_val[0]) + ch.g[1] * np.where(f1, 0.0, fixed_val[1])
    pinned = pinned_one | both
    e = np.where(pinned, 0.0, ch.d + np.where(regular_one, gi * xi + gj * x0, fixed_energy))
    mu0 = np.where(pinned_one, pick(ch.mu_single), np.where(both, ch.mu_pair, 0.0))
    return {"k": gj * slope, "e": e, "pinned": pinned, "mu0": mu0, "regular_one": regular_one, "x0": x0,
            "slope": slope, "f0": f0, "fixed_val": fixed_val, "both": both, "pinned_one": pinned_one,
            "gj": gj, "gi": gi, "xi": xi}


def _canonical(ch: _Chains, xst: np.ndarray) -> np.ndarray:
    """Both decisions free where that does not pin the multiplier (power and energy in the same direction, or
    the terminal period) has no unique split: freeze the second at its reference value."""
    bad = (xst[0] == _FREE) & (xst[1] == _FREE) & ~ch.pair_ok
    if not bad.any():
        return xst
    out = xst.copy()
    out[1] = np.where(bad, _FROZEN, out[1])
    return out


def _freeze_pinned(ch: _Chains, xst: np.ndarray, pinned: np.ndarray, seg: np.ndarray,
                   touch_ended: np.ndarray) -> np.ndarray:
    """Keep at most one pinned period per segment, none in a segment that ends free (its multiplier is set by
    the terminal value): the others' free energy has no unique split, so it is frozen at the reference (and
    spread after the solve, ``_redistribute``)."""
    flat_seg = seg.ravel()
    flat_pin = pinned.ravel().astype(np.int64)
    csum = np.cumsum(flat_pin)
    start = np.r_[True, flat_seg[1:] != flat_seg[:-1]]
    base = np.maximum.accumulate(np.where(start, np.arange(flat_seg.size), 0))
    rank = (csum - flat_pin - np.where(base > 0, csum[base - 1], 0)).reshape(pinned.shape)  # 0 = first
    freeze = pinned & ((rank >= 1) | ~touch_ended)
    if not freeze.any():
        return xst
    out = xst.copy()
    # freeze the free decision without curvature if there is one, else the second
    first = (out[0] == _FREE) & ~ch.curv[0]
    out[0] = np.where(freeze & first, _FROZEN, out[0])
    out[1] = np.where(freeze & ~first & (out[1] == _FREE), _FROZEN, out[1])
    return out


def _active_set_solve(ch: _Chains, w: np.ndarray, c: np.ndarray, xst: np.ndarray, sst: np.ndarray,
                      xref: np.ndarray, muref: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """Solve the KKT system of one active set exactly; returns (x, mu, x statuses used, s statuses).

    Rows, per period, in the order ``(mu_t, S_t)`` (tridiagonal): the dynamics ``S_t - S_{t-1} - k mu_t = e``
    or ``mu_t = mu0`` (pinned), and ``mu_t - mu_{t+1} = -beta [t = last]`` (free state) or ``S_t = bound``
    (touched). Singular cases are removed first: a segment keeps at most one pinned period (the others'
    non-unique energy split is frozen, then spread), and a segment that nothing determines gets its
    multiplier pinned (then chosen in its feasible interval).
    """
    n, L = ch.d.shape
    # "frozen" is this solve's device for a non-unique split, not part of an active set
    xst = _canonical(ch, np.where(xst == _FROZEN, _FREE, xst).astype(np.int8))
    touch = sst != _S_FREE
    seg = _segment_ids(touch)
    ended = _touch_ended(touch, seg)
    free_comp = xst == _FREE
    f0, f1 = free_comp[0], free_comp[1]
    pinned = (f0 & f1) | ((f0 ^ f1) & ~np.where(f0, ch.curv[0], ch.curv[1]))  # as _classify will find
    free_energy = pinned & ended  # periods whose energy is set by the states, not the multiplier
    xst = _freeze_pinned(ch, xst, pinned, seg, ended)
    cls = _classify(ch, w, c, xst, xref)
    # A segment that ends on a touched state with nothing free and nothing pinned leaves its multiplier
    # undetermined (any value in an interval is optimal): pin it (at its last period) for now.
    determined = np.bincount(seg.ravel(), weights=(cls["pinned"] | (cls["k"] > 0)).ravel(), minlength=seg.max(initial=-1) + 1)
    dual_pin = touch & (determined[seg] == 0)
    pinned = cls["pinned"] | dual_pin
    mu0 = np.where(dual_pin, muref, cls["mu0"])

    lower = np.zeros((n, 2 * L))
    diag = np.empty((n, 2 * L))
    upper = np.zeros((n, 2 * L))
    rhs = np.empty((n, 2 * L))
    lower[:, 2::2] = np.where(pinned[:, 1:], 0.0, -1.0)
    diag[:, 0::2] = np.where(pinned, 1.0, -cls["k"])
    upper[:, 0::2] = np.where(pinned, 0.0, 1.0)
    rhs[:, 0::2] = np.where(pinned, mu0, cls["e"])
    rhs[:, 0] += np.where(pinned[:, 0], 0.0, ch.s0)
    lower[:, 1::2] = np.where(touch, 0.0, 1.0)
    diag[:, 1::2] = np.where(touch, 1.0, 0.0)
    upper[:, 1:-1:2] = np.where(touch[:, :-1], 0.0, -1.0)
    rhs[:, 1::2] = np.where(touch, np.where(sst == _S_HI, ch.hi, ch.lo), -ch.last)
    factors = _tridiagonal_factor(lower, diag, upper)
    if factors is None:
        return None
    sol = _tridiagonal_apply(factors, rhs)
    mu, s = sol[:, 0::2], sol[:, 1::2]
    energy = s - np.concatenate([ch.s0[:, None], s[:, :-1]], axis=1) - ch.d

    x = cls["fixed_val"].copy()
    f0 = cls["f0"]
    # one free decision with curvature: from the multiplier; without: the energy the states leave
    xj = np.where(cls["regular_one"], cls["x0"] + cls["slope"] * mu,
                  (energy - cls["gi"] * cls["xi"]) / np.where(cls["pinned_one"], cls["gj"], 1.0))
    single = cls["regular_one"] | cls["pinned_one"]
    x[0] = np.where(single & f0, xj, x[0])
    x[1] = np.where(single & ~f0, xj, x[1])
    both = cls["both"]
    if both.any():
        # both free (pinned by the pair): power from the stationarity of a decision with curvature, energy
        # from the states; then the 2x2 solve [a; g] x = [power; energy].
        a = ch.a
        use0 = (np.abs(a[0]) >= np.abs(a[1]))[:, None]
        aj = np.where(use0, a[0][:, None], a[1][:, None])
        qj = np.where(use0, ch.q[0], ch.q[1])
        gjj = np.where(use0, ch.g[0], ch.g[1])
        power = c - (qj - mu * gjj) / np.where(both, w * aj, 1.0)
        det2 = np.where(both, -ch.cross, 1.0)  # a0 g1 - a1 g0
        x[0] = np.where(both, (power * ch.g[1] - a[1][:, None] * energy) / det2, x[0])
        x[1] = np.where(both, (a[0][:, None] * energy - ch.g[0] * power) / det2, x[1])
    # the two corrections below touch few chains: run them on those only
    rows = np.flatnonzero(free_energy.any(axis=1))
    if rows.size:
        x[:, rows] = _redistribute(ch.take(rows), x[:, rows], xref[:, rows], free_energy[rows], free_comp[:, rows],
                                   seg[rows])
    rows = np.flatnonzero(dual_pin.any(axis=1))
    if rows.size:
        mu[rows] = _undetermined_multipliers(ch.take(rows), w[rows], c[rows], x[:, rows], mu[rows], muref[rows],
                                             xst[:, rows], sst[rows], seg[rows], dual_pin[rows])
    bad = ~(np.isfinite(_max2(x)).all(axis=1) & np.isfinite(mu).all(axis=1))
    if bad.any():
        x = np.where(bad[None, :, None], xref, x)
        mu = np.where(bad[:, None], muref, mu)
    return x, mu, xst, sst


def _undetermined_multipliers(ch: _Chains, w: np.ndarray, c: np.ndarray, x: np.ndarray, mu: np.ndarray,
                              muref: np.ndarray, xst: np.ndarray, sst: np.ndarray, seg: np.ndarray,
                              dual_pin: np.ndarray) -> np.ndarray:
    """The multiplier of each segment that nothing determines: the reference value clipped into the interval
    that keeps its fixed decisions' and its touched states' multipliers signed right.

    Such a segment's multiplier enters no other segment's equations, so it can be chosen after the solve;
    taking the reference as is would leave a wrong sign that the active-set update then "corrects" wrongly.
    """
    n, L = mu.shape
    g = ch.g
    grad = w[None] * ch.a_full * (_power(ch, x) - c)[None] + ch.q  # r_j = grad_j - mu g_j
    ratio = grad / np.where(g != 0, g, 1.0)
    low, up = (xst == _LOW) & ~ch.fixed_x & (g != 0), (xst == _UP) & ~ch.fixed_x & (g != 0)
    # at the lower bound r >= 0: mu <= ratio if g > 0, mu >= ratio if g < 0; at the upper bound reversed
    upper_b = _min2(np.where((low & (g > 0)) | (up & (g < 0)), ratio, np.inf))
    lower_b = _max2(np.where((low & (g < 0)) | (up & (g > 0)), ratio, -np.inf))
    nxt = _shift_next(mu)
    real = ~ch.fixed_s
    # the touch that ends the segment: nu = mu_{t+1} - mu_t - beta_last has the sign of its side
    upper_b = np.where((sst == _S_HI) & real, np.minimum(upper_b, nxt - ch.last), upper_b)
    lower_b = np.where((sst == _S_LO) & real, np.maximum(lower_b, nxt - ch.last), lower_b)
    # the touch that ends the segment before (seen from the period after it)
    prev_mu = np.concatenate([np.zeros((n, 1)), mu[:, :-1]], axis=1)
    prev_st = np.concatenate([np.zeros((n, 1), np.int8), np.where(real, sst, _S_FREE)[:, :-1]], axis=1)
    lower_b = np.where(prev_st == _S_HI, np.maximum(lower_b, prev_mu), lower_b)
    upper_b = np.where(prev_st == _S_LO, np.minimum(upper_b, prev_mu), upper_b)
    flat = seg.ravel()
    change = np.r_[True, flat[1:] != flat[:-1]]
    starts = np.flatnonzero(change)
    index = np.cumsum(change) - 1  # each period's segment, as a position in starts
    lo_t = np.maximum.reduceat(lower_b.ravel(), starts)[index].reshape(n, L)
    hi_t = np.minimum.reduceat(upper_b.ravel(), starts)[index].reshape(n, L)
    ref = np.add.reduceat(np.where(dual_pin, muref, 0.0).ravel(), starts)[index].reshape(n, L)  # one pin each
    chosen = np.where(lo_t <= hi_t, np.clip(ref, lo_t, hi_t),
                      np.where(np.isfinite(lo_t) & np.isfinite(hi_t), 0.5 * (lo_t + hi_t), ref))
    degenerate = np.zeros(seg.max(initial=-1) + 1, dtype=bool)
    degenerate[seg[dual_pin]] = True
    return np.where(degenerate[seg], chosen, mu)


def _redistribute(ch: _Chains, x: np.ndarray, xref: np.ndarray, group: np.ndarray, free: np.ndarray,
                  seg: np.ndarray) -> np.ndarray:
    """Spread the energy of the periods in ``group`` (pinned multiplier, energy free) over all of them.

    Within a segment such periods share one multiplier, and only their total energy is fixed (by the states at
    the segment's ends); the solve let one of them take all of it. Each has a free coordinate ``tau`` along
    the direction ``v`` that moves energy but not power (dumping: ``v = (1, 1)``; curtailment or shortfall:
    that decision). Keep each segment's total and move every ``tau`` from the reference split by the same
    multiple ``lambda`` of its range, so a small change of the total moves every period a little instead of
    one period a lot. (The optimum is not unique in this split; any split inside the boxes and the tube is
    optimal, and the KKT check decides.)
    """
    if not group.any():
        return x
    both = free[0] & free[1]
    a = ch.a_full
    v = np.where(both[None], np.stack([-a[1], a[0]]), free.astype(float))
    vv = _sum2(v * v)
    vv = np.where(vv > 0, vv, 1.0)
    tau = _sum2(v * x) / vv
    tau_ref = _sum2(v * xref) / vv
    base = x - tau[None] * v
    moving = v != 0
    vsafe = np.where(moving, v, 1.0)
    lo_end = np.where(moving, (ch.lx - base) / vsafe, -np.inf)
    hi_end = np.where(moving, (ch.ux - base) / vsafe, np.inf)
    span = _min2(np.maximum(lo_end, hi_end)) - _max2(np.minimum(lo_end, hi_end))
    span = np.where(np.isfinite(span), np.maximum(span, 0.0), ch.x_scale[:, None])
    gamma = _sum2(ch.g * v)  # energy per unit of tau
    ids = seg[group]
    size = seg.max(initial=-1) + 1
    need = np.bincount(ids, weights=(gamma * (tau - tau_ref))[group], minlength=size)
    reach = np.bincount(ids, weights=(gamma * span)[group], minlength=size)
    lam = np.where(reach != 0, need / np.where(reach != 0, reach, 1.0), 0.0)
    tau_new = np.where(group, tau_ref + lam[seg] * span, tau)
    return np.where(group[None], base + tau_new[None] * v, x)


def _kkt(ch: _Chains, w: np.ndarray, c: np.ndarray, x: np.ndarray, mu: np.ndarray) -> dict[str, np.ndarray]:
    """Relative KKT residual of (x, mu) for the original problem (states by the recursion), per chain: bounds
    (relative to the chain's scales), stationarity in x and in S with the multipliers of active bounds signed
    right (relative to ``_size``)."""
    grad, mult = _scales(ch, w, c)
    s = _states(ch, x)
    t1 = w[None] * ch.a_full * (_power(ch, x) - c)[None]
    t2 = mu[None] * ch.g
    r = t1 + ch.q - t2
    size = _size(grad, np.abs(t1) + np.abs(ch.q) + np.abs(t2))
    xs3 = ch.x_scale[None, :, None]
    at_l = (x - ch.lx) <= _KKT_TOL * xs3
    at_u = (ch.ux - x) <= _KKT_TOL * xs3
    vx = np.where(at_l, np.where(at_u, 0.0, np.maximum(-r, 0.0)), np.where(at_u, np.maximum(r, 0.0), np.abs(r)))
    vx = np.where(ch.fixed_x, 0.0, vx) / size
    px = np.maximum(np.maximum(ch.lx - x, x - ch.ux), 0.0) / xs3
    nxt = _shift_next(mu)
    xi = nxt - mu - ch.last  # nu_hi - nu_lo of each state
    ssize = _size(mult, np.abs(nxt) + np.abs(mu) + np.abs(ch.last))
    tol_s = _KKT_TOL * ch.s_scale[:, None]
    at_lo = (s - ch.lo) <= tol_s
    at_hi = (ch.hi - s) <= tol_s
    vs = np.where(at_hi, np.where(at_lo, 0.0, np.maximum(-xi, 0.0)), np.where(at_lo, np.maximum(xi, 0.0), np.abs(xi)))
    vs = np.where(ch.fixed_s, 0.0, vs) / ssize
    ps = np.maximum(np.maximum(ch.lo - s, s - ch.hi), 0.0) / ch.s_scale[:, None]
    res = np.maximum.reduce([_chain_max(vx), _chain_max(px), vs.max(axis=1), ps.max(axis=1)])
    return {"residual": np.where(np.isfinite(res), res, np.inf), "s": s, "r": r, "xi": xi, "size": size,
            "ssize": ssize}


def _pdas_update(ch: _Chains, x: np.ndarray, xst: np.ndarray, sst: np.ndarray,
                 k: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One primal-dual active-set update, segment by segment.

    Given the touched states, the segments are independent problems. In a segment where the solution leaves
    a box or the tube, every violated bound joins (that is always safe); in a segment without such a
    violation only the bound with the worst wrong-signed multiplier leaves. Releasing every wrong-signed
    bound at once is the classic overshoot: one wrong bound shifts the segment's multiplier, which makes its
    right neighbours look wrong too.
    """
    tol = _KKT_TOL
    n, L = sst.shape
    xs3, ss = ch.x_scale[None, :, None], ch.s_scale[:, None]
    r, size, s, xi, ssize = k["r"], k["size"], k["s"], k["xi"], k["ssize"]
    rel = r / size
    # A frozen split whose gradient is not 0 was not a free split after all: the decision goes to the bound
    # its gradient points to (re-freezing it would repeat the same solve).
    frozen = xst == _FROZEN
    xst = np.where(frozen & (rel > tol), _LOW, np.where(frozen & (rel < -tol), _UP, np.where(frozen, _FREE, xst)))
    free = xst == _FREE
    below = free & (x < ch.lx - tol * xs3)
    above = free & (x > ch.ux + tol * xs3)
    sfree = (sst == _S_FREE) & ~ch.fixed_s
    s_below = sfree & (s < ch.lo - tol * ss)
    s_above = sfree & (s > ch.hi + tol * ss)
    # wrong-signed multipliers (relative size), and touched states the solution has left
    bad_low = np.where((xst == _LOW) & ~ch.fixed_x, np.maximum(-rel, 0.0), 0.0)
    bad_up = np.where((xst == _UP) & ~ch.fixed_x, np.maximum(rel, 0.0), 0.0)
    srel = xi / ssize
    interior = (s > ch.lo + tol * ss) & (s < ch.hi - tol * ss)
    bad_lo = np.where((sst == _S_LO) & ~ch.fixed_s, np.where(interior, np.inf, np.maximum(srel, 0.0)), 0.0)
    bad_hi = np.where((sst == _S_HI) & ~ch.fixed_s, np.where(interior, np.inf, np.maximum(-srel, 0.0)), 0.0)

    seg = _segment_ids(sst != _S_FREE)
    size_seg = seg.max(initial=-1) + 1
    # A touched state the recursion puts outside the tube: its segment had nothing free (the multiplier was
    # undetermined) and its fixed decisions miss the bound. Release those that would move the state back.
    touched = (sst != _S_FREE) & ~ch.fixed_s
    need_up = np.zeros(size_seg, dtype=bool)
    need_down = np.zeros(size_seg, dtype=bool)
    need_up[seg[touched & (s < ch.lo - tol * ss)]] = True
    need_down[seg[touched & (s > ch.hi + tol * ss)]] = True
    up_t, down_t = need_up[seg][None], need_down[seg][None]
    raises = ((xst == _LOW) & (ch.g > 0)) | ((xst == _UP) & (ch.g < 0))  # leaving the bound raises the state
    lowers = ((xst == _LOW) & (ch.g < 0)) | ((xst == _UP) & (ch.g > 0))
    unstick = ((up_t & raises) | (down_t & lowers)) & ~ch.fixed_x
    primal = below[0] | below[1] | above[0] | above[1] | s_below | s_above | (up_t | down_t)[0]
    seg_primal = np.bincount(seg.ravel(), weights=primal.ravel(), minlength=size_seg) > 0
    # the worst dual violation of each segment without a primal one (the first period, if several tie)
    candidates = (bad_low[0], bad_low[1], bad_up[0], bad_up[1], bad_lo, bad_hi)
    x_worst = np.maximum.reduce(candidates[:4])
    # Decision bounds go first: a touched state whose multiplier looks wrong is usually the victim of a
    # wrong decision bound in its segment (which shifted the segment's multiplier), rarely the cause.
    x_seg = np.bincount(seg.ravel(), weights=(x_worst > tol).ravel(), minlength=size_seg) > 0
    s_worst = np.where(x_seg[seg], 0.0, np.maximum(bad_lo, bad_hi))
    worst_here = np.maximum(x_worst, s_worst)
    candidates = candidates[:4] + (np.where(x_seg[seg], 0.0, bad_lo), np.where(x_seg[seg], 0.0, bad_hi))
    flat_seg = seg.ravel()
    seg_worst = np.zeros(size_seg)
    np.maximum.at(seg_worst, flat_seg, worst_here.ravel())
    pick = (worst_here > tol) & (worst_here == seg_worst[seg]) & ~seg_primal[seg]
    order = np.arange(n * L).reshape(n, L)
    first = np.full(size_seg, n * L)
    np.minimum.at(first, flat_seg[pick.ravel()], order.ravel()[pick.ravel()])
    pick &= order == first[seg]
    which = np.zeros((n, L), dtype=np.int8)  # which candidate is the worst (the first, if several tie)
    for index in range(len(candidates) - 1, -1, -1):
        which = np.where(candidates[index] == worst_here, index, which)

    new = np.where(below, _LOW, np.where(above, _UP, np.where(unstick, _FREE, xst)))
    for jj in (0, 1):
        release = pick & ((which == jj) | (which == 2 + jj))
        new[jj] = np.where(release, _FREE, new[jj])
    new = np.where(ch.fixed_x, _LOW, new).astype(np.int8)
    snew = np.where(s_below, _S_LO, np.where(s_above, _S_HI, sst))
    snew = np.where(pick & (which >= 4), _S_FREE, snew)
    snew = np.where(ch.fixed_s, _S_LO, snew).astype(np.int8)
    return new, snew


def _pdas(ch: _Chains, w: np.ndarray, c: np.ndarray, xst: np.ndarray, sst: np.ndarray, xref: np.ndarray,
          muref: np.ndarray, *, iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Active-set solves with updates until every chain verifies (or ``iterations`` run out); each pass
    works only on the chains that have not verified yet. The references (the split of non-unique energy and
    undetermined multipliers) stay those of the start."""
    n = ch.n
    best_x, best_mu = xref.copy(), muref.copy()
    best_xst, best_sst = xst.copy(), sst.copy()
    best_res = np.full(n, np.inf)
    todo = np.arange(n)
    used = 0
    sub, w_s, c_s, xref_s, muref_s = ch, w, c, xref, muref
    for used in range(1, iterations + 1):
        out = _active_set_solve(sub, w_s, c_s, xst, sst, xref_s, muref_s)
        if out is None:
            break
        x, mu, xst_used, sst_used = out
        k = _kkt(sub, w_s, c_s, x, mu)
        res = k["residual"]
        better = res < best_res[todo]
        idx = todo[better]
        best_x[:, idx], best_mu[idx], best_res[idx] = x[:, better], mu[better], res[better]
        best_xst[:, idx], best_sst[idx] = xst_used[:, better], sst_used[better]
        failing = res > _KKT_TOL
        if not failing.any() or used == iterations:
            break
        keep = np.flatnonzero(failing)
        todo = todo[keep]
        if keep.size < sub.n:
            sub = sub.take(keep)
            w_s, c_s, xref_s, muref_s = w_s[keep], c_s[keep], xref_s[:, keep], muref_s[keep]
            x, xst_used, sst_used = x[:, keep], xst_used[:, keep], sst_used[keep]
            k = {name: (v[:, keep] if v.ndim == 3 else v[keep]) for name, v in k.items()}
        xst, sst = _pdas_update(sub, x, xst_used, sst_used, k)
    return best_x, best_mu, best_xst, best_sst, best_res, used


def _solve_chains(ch: _Chains, w: np.ndarray, c: np.ndarray, warm: _ChainPoint | None) -> _ChainPoint:
    """Exact solution of every chain: the warm active set first, the polished interior point where that does
    not verify."""
    # Masked array code computes both branches of every where(): inf and nan in the branch not taken are
    # expected, and the KKT check, not a warning, judges the result.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        n, L = ch.d.shape
        x = np.zeros((2, n, L))
        mu = np.zeros((n, L))
        xst = np.zeros((2, n, L), dtype=np.int8)
        sst = np.zeros((n, L), dtype=np.int8)
        res = np.full(n, np.inf)
        pdas_used = 0
        if n == 0:  # a participant without storage or flexible loads: nothing to solve
            return _ChainPoint(x=x, s=np.zeros((0, L)), mu=mu, x_status=xst, s_status=sst, residual=res,
                               ipm_iterations=0, pdas_iterations=0, ipm_chains=0, fallback_chains=0)
        if warm is not None and warm.x.shape == x.shape:
            x, mu, xst, sst, res, pdas_used = _pdas(ch, w, c, warm.x_status, warm.s_status, warm.x, warm.mu,
                                                    iterations=_WARM_PDAS_ITER)
        cold = np.flatnonzero(res > _KKT_TOL)
        iterations = 0
        if cold.size:
            sub = ch.take(cold) if cold.size < n else ch
            solved = _ipm(sub, w[cold], c[cold])
            iterations = solved.iterations
            pdas_used += solved.active_set_iterations
            better = solved.residual < res[cold]
            idx = cold[better]
            x[:, idx], mu[idx], res[idx] = solved.x[:, better], solved.mu[better], solved.residual[better]
            xst[:, idx], sst[idx] = solved.x_status[:, better], solved.s_status[better]
        failed = int(np.count_nonzero(res > _KKT_TOL))
        return _ChainPoint(x=x, s=_states(ch, x), mu=mu, x_status=xst, s_status=sst, residual=res,
                           ipm_iterations=iterations, pdas_iterations=pdas_used, ipm_chains=int(cold.size),
                           fallback_chains=failed)


# ============================================================================ closed forms
def _water_fill_v1g(*, w: np.ndarray, c: np.ndarray, ch_max: np.ndarray, h_eta: np.ndarray, h_kappa: np.ndarray,
                    need: np.ndarray, after: np.ndarray, unmet_cost: float) -> tuple[np.ndarray, np.ndarray]:
    """V1G chargers: the exact charge (m, T) and the multiplier of delivered energy (m,).

    ``E(mu) = h eta sum_t clip(c_t - (h kappa - mu h eta) / w_t, 0, ch_max_t)`` is piecewise linear and
    nondecreasing in ``mu``, with its breakpoints where a period's charge leaves 0 or reaches ``ch_max``;
    the optimum is ``mu = 0``, ``mu = U`` (cannot be met), or the root of ``E(mu) = need - after`` (shortfall
    boundary, ``0 < mu < U``) or of ``E(mu) = need`` (the cap, ``mu < 0``).
    """
    m, T = c.shape
    if m == 0:
        return np.zeros((0, T)), np.zeros(0)
    he = h_eta[:, None]

    def charge(mu: np.ndarray) -> np.ndarray:
        return np.clip(c - (h_kappa[:, None] - mu[:, None] * he) / w, 0.0, ch_max)

    # Breakpoints and the slope of E(mu) between them.
    mu_lo = (h_kappa[:, None] - w * c) / he
    mu_hi = (h_kappa[:, None] + w * (ch_max - c)) / he
    slope = he * he / w
    points = np.concatenate([mu_lo, mu_hi], axis=1)
    delta = np.concatenate([slope, -slope], axis=1)
    order = np.argsort(points, axis=1, kind="stable")
    points = np.take_along_axis(points, order, axis=1)
    run = np.cumsum(np.take_along_axis(delta, order, axis=1), axis=1)  # slope right of each breakpoint
    e_at = np.concatenate([np.zeros((m, 1)), np.cumsum(run[:, :-1] * np.diff(points, axis=1), axis=1)], axis=1)

    def root(target: np.ndarray) -> np.ndarray:
        k = (e_at < target[:, None]).sum(axis=1)  # first breakpoint with E >= target
        k0 = np.maximum(k - 1, 0)
        base = np.take_along_axis(points, k0[:, None], axis=1)[:, 0]
        e0 = np.take_along_axis(e_at, k0[:, None], axis=1)[:, 0]
        sl = np.take_along_axis(run, k0[:, None], axis=1)[:, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            mu = np.where((k > 0) & (sl > 0), base + (target - e0) / sl, base)
        return mu

    def energy(mu: np.ndarray) -> np.ndarray:
        return h_eta * charge(mu).sum(axis=1)

    short_target = need - after
    zero = np.zeros(m)
    e0 = energy(zero)
    full = np.full(m, float(unmet_cost))
    e_full = energy(full)
    mu = np.where(e0 > need, root(need),
                  np.where(e0 < short_target, np.where(e_full <= short_target, full, root(short_target)), zero))
    # The root is exact up to rounding; keep it inside the interval its case allows.
    mu = np.where(e0 > need, np.minimum(mu, 0.0), np.where(e0 < short_target, np.clip(mu, 0.0, unmet_cost), mu))
    return charge(mu), mu


# ============================================================================ the assets
@dataclass(frozen=True)
class ProxResult:
    """One proximal local step for every asset of an ``AssetProx`` (rows in the asset table's order).

    ``p_mw``: (assets, periods), load convention. ``objective_eur``: ``f_a(p)`` per asset (without the prox
    term); ``prox_eur``: the prox term ``sum_t w/2 (p - c)^2`` per asset. ``max_kkt_residual``: the largest
    relative KKT residual over the chains (~1e-15 when exact); ``unverified``: assets whose solution did not
    pass the KKT check (empty unless something is wrong). ``ipm_iterations``: interior-point iterations (0 when
    the warm active set verified everywhere), ``ipm_chains``: how many chains (batteries, V2G chargers, flexible
    loads) needed it; ``active_set_iterations``: active-set passes.
    """

    p_mw: np.ndarray
    objective_eur: np.ndarray
    prox_eur: np.ndarray
    asset_ids: pd.Index
    ipm_iterations: int
    ipm_chains: int
    active_set_iterations: int
    max_kkt_residual: float
    unverified: tuple[Any, ...]
    warm_started: bool
    solve_time_s: float

    def p_frame(self, periods: pd.Index | None = None) -> pd.DataFrame:
        """``p_mw`` labelled: index asset_id, columns ``periods`` (default 0 … T-1)."""
        return pd.DataFrame(self.p_mw, index=self.asset_ids, columns=periods)


@dataclass(frozen=True)
class _Inputs:
    """The numbers of one interval, per kind, in the dispatch model's order (see ``AssetProx.set_inputs``)."""

    chains: _Chains
    v1g_ch_max: np.ndarray
    v1g_need: np.ndarray
    v1g_after: np.ndarray
    pv_avail: np.ndarray
    backlog_value: float


class AssetProx:
    """Proximal local steps for a fixed asset table (any subset of the fleet; one participant's assets to time
    an edge device alone).

    Build once per run (:meth:`build`), give each interval's numbers (:meth:`set_inputs`), then call
    :meth:`solve` every ADMM round. The result for an asset depends only on that asset's own data, weight and
    target (and on ``has_pv``, which is explicit per asset), never on the other assets in the batch.
    """

    def __init__(self, *, asset_ids: pd.Index, ids: dict[AssetKind, list[Any]], step: pd.Timedelta, horizon: int,
                 weights: DispatchWeights, static: dict[str, np.ndarray], throughput_cost: np.ndarray) -> None:
        self.asset_ids = asset_ids
        self.ids = ids
        self.step = step
        self.horizon = horizon
        self.weights = weights
        self._static = static
        self._kappa = throughput_cost
        order = [a for k in KIND_ORDER for a in ids[k]]
        position = {a: i for i, a in enumerate(order)}
        self._order = order
        self._table_from_order = np.array([position[a] for a in asset_ids], dtype=int)
        self._order_from_table = np.argsort(self._table_from_order)
        counts = [len(ids[k]) for k in KIND_ORDER]
        edges = np.cumsum([0] + counts)
        self._slice = {k: slice(int(edges[i]), int(edges[i + 1])) for i, k in enumerate(KIND_ORDER)}
        self._inputs: _Inputs | None = None
        self._warm: _ChainPoint | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, assets: pd.DataFrame, *, step: pd.Timedelta, horizon: int,
              weights: DispatchWeights = _DEFAULT_WEIGHTS, has_pv: bool | None = None) -> AssetProx:
        """Read the static columns of ``assets`` (index asset_id, columns ``controllers.api.ASSET_COLUMNS``).

        ``has_pv``: whether PV curtailment is in the model each battery / V2G charger belongs to, which sets
        its throughput cost (``dispatch_model.throughput_cost_eur_per_mwh``). None: per participant, whether
        that participant has a PV asset in ``assets`` (what its own agent's dispatch model has). A bool: the
        same for every asset (True reproduces a central model of a fleet with PV).
        """
        if horizon < 1:
            raise ValueError(f"horizon: must be >= 1 period, got {horizon}")
        if not step > pd.Timedelta(0):
            raise ValueError(f"step: must be a positive Timedelta, got {step!r}")
        missing = [col for col in ("kind", "participant_id", "p_max_mw", "e_max_mwh", "eta_charge", "eta_discharge",
                                   "soc_min", "soc_max", "v2g") if col not in assets.columns]
        if missing:
            raise ValueError(f"assets: missing columns {missing}")
        if not assets.index.is_unique:
            raise ValueError("assets: index (asset_id) must be unique")
        kinds = assets["kind"].map(str)
        unknown = sorted(set(kinds) - {k.value for k in KIND_ORDER})
        if unknown:
            raise ValueError(f"assets.kind: unknown kinds {unknown}")
        ids = {k: [a for a, v in kinds.items() if v == k.value] for k in KIND_ORDER}
        order = [a for k in KIND_ORDER for a in ids[k]]
        ordered = assets.loc[order]
        static = {name: ordered[name].to_numpy(float)
                  for name in ("p_max_mw", "e_max_mwh", "eta_charge", "eta_discharge", "soc_min", "soc_max")}
        static["v2g"] = ordered["v2g"].fillna(False).astype(bool).to_numpy()
        for name in ("eta_charge", "eta_discharge"):
            chain_rows = np.r_[np.arange(len(ids[AssetKind.BATTERY])),
                               len(ids[AssetKind.BATTERY]) + np.arange(len(ids[AssetKind.EV_CHARGER]))]
            eta = static[name][chain_rows]
            if not np.all((eta > 0) & (eta <= 1)):
                raise ValueError(f"assets.{name}: must be in (0, 1] for batteries and EV chargers")
        if has_pv is None:
            with_pv = set(assets.loc[ids[AssetKind.PV], "participant_id"])
            pv_flag = ordered["participant_id"].isin(with_pv).to_numpy()
        else:
            pv_flag = np.full(len(order), bool(has_pv))
        kind_of = ordered["kind"].map(str).to_numpy()
        is_bat = kind_of == AssetKind.BATTERY.value
        is_ev = kind_of == AssetKind.EV_CHARGER.value
        kappa = throughput_cost_eur_per_mwh(weights, eta_charge=static["eta_charge"],
                                            eta_discharge=static["eta_discharge"],
                                            can_dump=is_bat | (is_ev & static["v2g"]), has_pv=pv_flag)
        kappa = np.where(is_bat | is_ev, kappa, 0.0)  # only storage and chargers pay for throughput
        return cls(asset_ids=pd.Index(assets.index, name="asset_id"), ids=ids, step=step, horizon=horizon,
                   weights=weights, static=static, throughput_cost=kappa)

    @property
    def hours(self) -> float:
        return self.step / pd.Timedelta("1h")

    @property
    def asset_order(self) -> list[Any]:
        """Asset ids in the order of ``DispatchInputs``' per-kind arrays (batteries, EVs, flexible loads, PV)."""
        return list(self._order)

    @property
    def throughput_cost_eur_per_mwh(self) -> pd.Series:
        """kappa per asset (EUR/MWh of throughput; PV and flexible loads have none)."""
        return pd.Series(self._kappa, index=pd.Index(self._order, name="asset_id")).reindex(self.asset_ids)

    # ------------------------------------------------------------------ inputs
    def set_inputs(self, inputs: DispatchInputs) -> None:
        """The numbers of one interval: ``DispatchModel.inputs_from_observation(obs, include_base_load=False)``
        of a model over the same asset table, i.e. per-kind arrays whose rows are that kind's assets in the
        asset table's order (``asset_order``). Forgets the warm start (the active set belongs to an interval)."""
        T, h, w = self.horizon, self.hours, self.weights
        nb, ne, nf, npv = (len(self.ids[k]) for k in KIND_ORDER)

        def arr(name: str, shape: tuple[int, ...]) -> np.ndarray:
            value = np.asarray(getattr(inputs, name), dtype=float)
            if value.shape != shape:
                raise ValueError(f"inputs.{name}: needs shape {shape}, got {value.shape}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"inputs.{name}: must be finite")
            return value

        price = np.asarray(inputs.price_eur_per_mwh, dtype=float)
        if price.shape != (T,) or not np.all(np.isfinite(price)):
            raise ValueError(f"inputs.price_eur_per_mwh: needs {T} finite values, got shape {price.shape}")
        backlog_value = max(float(np.max(price, initial=0.0)), 0.0)  # as the dispatch model values it
        soc0 = arr("bat_soc0_mwh", (nb,))
        target = arr("bat_soc_target_mwh", (nb,))
        bat_pmax = arr("bat_p_max_mw", (nb, T))
        ev_ch = arr("ev_ch_max_mw", (ne, T))
        ev_dis = arr("ev_dis_max_mw", (ne, T))
        need = arr("ev_need_mwh", (ne,))
        after = arr("ev_need_after_horizon_mwh", (ne,))
        fbase = arr("flex_base_mw", (nf, T))
        fpmax = arr("flex_p_max_mw", (nf, T))
        b0 = arr("flex_backlog0_mwh", (nf,))
        cap = arr("flex_backlog_cap_mwh", (nf, T))
        pv = arr("pv_avail_mw", (npv, T))
        for name, value in (("bat_p_max_mw", bat_pmax), ("ev_ch_max_mw", ev_ch), ("ev_dis_max_mw", ev_dis),
                            ("ev_need_mwh", need), ("ev_need_after_horizon_mwh", after), ("flex_base_mw", fbase),
                            ("flex_p_max_mw", fpmax), ("flex_backlog0_mwh", b0), ("flex_backlog_cap_mwh", cap),
                            ("pv_avail_mw", pv)):
            if np.any(value < 0):
                raise ValueError(f"inputs.{name}: must be >= 0")

        st, kappa = self._static, self._kappa
        sb, se = self._slice[AssetKind.BATTERY], self._slice[AssetKind.EV_CHARGER]
        v2g = st["v2g"][se]
        L = T + 1
        parts: list[dict[str, np.ndarray]] = []
        # batteries: x = (ch, dis), S = SOC, terminal shortfall below the target
        M = w.terminal_soc_shortfall_cost_eur_per_mwh
        e_max = st["e_max_mwh"][sb]
        parts.append(self._storage_chain(
            eta_c=st["eta_charge"][sb], eta_d=st["eta_discharge"][sb], kappa=kappa[sb], ch_max=bat_pmax,
            dis_max=bat_pmax, lo=st["soc_min"][sb] * e_max, hi=st["soc_max"][sb] * e_max, s0=soc0,
            terminal=target, shortfall_cost=M))
        # V2G chargers: x = (ch, dis), S = energy delivered (need_0 - need) in [0, need_0]
        U = w.ev_unmet_cost_eur_per_mwh
        parts.append(self._storage_chain(
            eta_c=st["eta_charge"][se][v2g], eta_d=st["eta_discharge"][se][v2g], kappa=kappa[se][v2g],
            ch_max=ev_ch[v2g], dis_max=ev_dis[v2g], lo=np.zeros(int(v2g.sum())), hi=need[v2g],
            s0=np.zeros(int(v2g.sum())), terminal=need[v2g] - after[v2g], shortfall_cost=U))
        # flexible loads: x = (served, curtailed), S = backlog in [0, cap_t], backlog at the end valued
        n = nf
        g = np.zeros((n, L, 2))
        g[:, :T, :] = -h
        q = np.zeros((n, L, 2))
        q[:, :T, 1] = w.flex_curtailment_cost_eur_per_mwh * h
        d = np.zeros((n, L))
        d[:, :T] = h * fbase
        ux = np.zeros((n, L, 2))
        ux[:, :T, 0] = fpmax
        ux[:, :T, 1] = np.inf
        lo = np.full((n, L), -np.inf)
        hi = np.full((n, L), np.inf)
        lo[:, :T] = 0.0
        hi[:, :T] = cap
        parts.append({"a": np.tile([1.0, 0.0], (n, 1)), "g": g, "q": q, "d": d, "lx": np.zeros((n, L, 2)), "ux": ux,
                          "lo": lo, "hi": hi, "s0": b0, "beta": np.full(n, backlog_value)})
        chains = _Chains.build(**{name: np.concatenate([part[name] for part in parts], axis=0) for name in _RAW})
        self._inputs = _Inputs(chains=chains, v1g_ch_max=ev_ch[~v2g], v1g_need=need[~v2g],
                               v1g_after=np.minimum(after[~v2g], need[~v2g]), pv_avail=pv,
                               backlog_value=backlog_value)
        self._warm = None

    def _storage_chain(self, *, eta_c: np.ndarray, eta_d: np.ndarray, kappa: np.ndarray, ch_max: np.ndarray,
                       dis_max: np.ndarray, lo: np.ndarray, hi: np.ndarray, s0: np.ndarray, terminal: np.ndarray,
                       shortfall_cost: float) -> dict[str, np.ndarray]:
        """A battery or V2G charger: ``S += h (eta_c ch - dis / eta_d)``, throughput ``h kappa (ch + dis)``, and
        the terminal period's shortfall ``y >= 0`` (cost ``shortfall_cost``) with ``S_T + y >= terminal``."""
        T, h = self.horizon, self.hours
        n, L = len(s0), T + 1
        g = np.zeros((n, L, 2))
        g[:, :T, 0] = (h * eta_c)[:, None]
        g[:, :T, 1] = (-h / eta_d)[:, None]
        g[:, T, 0] = 1.0
        q = np.zeros((n, L, 2))
        q[:, :T, :] = (h * kappa)[:, None, None]
        q[:, T, 0] = shortfall_cost
        ux = np.zeros((n, L, 2))
        ux[:, :T, 0] = ch_max
        ux[:, :T, 1] = dis_max
        lo_t = np.full((n, L), -np.inf)
        hi_t = np.full((n, L), np.inf)
        lo_t[:, :T] = lo[:, None]
        hi_t[:, :T] = hi[:, None]
        if shortfall_cost > 0:  # no cost: the shortfall is free and the target does not matter
            ux[:, T, 0] = np.inf
            lo_t[:, T] = terminal
        return {"a": np.tile([1.0, -1.0], (n, 1)), "g": g, "q": q, "d": np.zeros((n, L)), "lx": np.zeros((n, L, 2)),
                    "ux": ux, "lo": lo_t, "hi": hi_t, "s0": np.asarray(s0, dtype=float), "beta": np.zeros(n)}

    # ------------------------------------------------------------------ solving
    def solve(self, weight: np.ndarray, target: np.ndarray, *, warm_start: bool = True) -> ProxResult:
        """``argmin_p f(p) + sum w/2 (p - c)^2`` for every asset; ``weight`` (> 0) and ``target`` (MW) are
        (assets, periods) arrays in the asset table's row order. ``warm_start``: try the last solve's active set
        first (same interval only); the answer is the same either way, up to rounding."""
        start = time.perf_counter()
        if self._inputs is None:
            raise RuntimeError("AssetProx.solve: call set_inputs first")
        T, h, wts = self.horizon, self.hours, self.weights
        shape = (len(self.asset_ids), T)
        w_tab = _checked(weight, "weight", shape, positive=True)
        c_tab = _checked(target, "target", shape)
        w_all, c_all = w_tab[self._order_from_table], c_tab[self._order_from_table]
        inp = self._inputs
        p = np.empty(shape)
        objective = np.empty(shape[0])
        sb, se, sf, sp = (self._slice[k] for k in KIND_ORDER)
        st = self._static
        v2g = st["v2g"][se]
        ev_rows = np.arange(se.start, se.stop)
        chain_rows = np.r_[np.arange(sb.start, sb.stop), ev_rows[v2g], np.arange(sf.start, sf.stop)]

        # chains: batteries, V2G chargers, flexible loads
        ch = inp.chains
        L = T + 1
        wc = np.zeros((ch.n, L))
        cc = np.zeros((ch.n, L))
        wc[:, :T], cc[:, :T] = w_all[chain_rows], c_all[chain_rows]
        warm = self._warm if warm_start else None
        point = _solve_chains(ch, wc, cc, warm)
        self._warm = point
        x, s = point.x, point.s
        p[chain_rows] = _power(ch, x)[:, :T]
        kappa = self._kappa
        throughput = h * kappa[chain_rows] * (x[0, :, :T] + x[1, :, :T]).sum(axis=1)
        nb, nv = sb.stop - sb.start, int(v2g.sum())
        # shortfall below the terminal target, by the recursion (what the cvxpy variable equals at its optimum)
        short_cost = np.where(np.isfinite(ch.lo[:, T]), np.maximum(ch.lo[:, T] - s[:, T - 1], 0.0), 0.0)
        storage = throughput + np.r_[wts.terminal_soc_shortfall_cost_eur_per_mwh * short_cost[:nb],
                                     wts.ev_unmet_cost_eur_per_mwh * short_cost[nb:nb + nv],
                                     np.zeros(ch.n - nb - nv)]
        flex = (wts.flex_curtailment_cost_eur_per_mwh * h * x[1, nb + nv:, :T].sum(axis=1)
                + inp.backlog_value * s[nb + nv:, T - 1])
        objective[chain_rows] = storage + np.r_[np.zeros(nb + nv), flex]

        # V1G chargers: water-filling on one multiplier
        v1 = ev_rows[~v2g]
        eta_v1 = st["eta_charge"][v1]
        ch_v1, _ = _water_fill_v1g(w=w_all[v1], c=c_all[v1], ch_max=inp.v1g_ch_max, h_eta=h * eta_v1,
                                   h_kappa=h * kappa[v1], need=inp.v1g_need, after=inp.v1g_after,
                                   unmet_cost=wts.ev_unmet_cost_eur_per_mwh)
        p[v1] = ch_v1
        delivered = h * eta_v1 * ch_v1.sum(axis=1)
        objective[v1] = (wts.ev_unmet_cost_eur_per_mwh * np.maximum(inp.v1g_need - inp.v1g_after - delivered, 0.0)
                         + h * kappa[v1] * ch_v1.sum(axis=1))

        # PV: a clip per period
        avail = inp.pv_avail
        cost_pv = wts.pv_curtailment_cost_eur_per_mwh * h
        curt = np.clip(avail + c_all[sp] - cost_pv / w_all[sp], 0.0, avail)
        p[sp] = curt - avail
        objective[sp] = cost_pv * curt.sum(axis=1)

        prox = 0.5 * (w_all * (p - c_all) ** 2).sum(axis=1)
        tab = self._table_from_order
        bad_chain = point.residual > _KKT_TOL
        unverified = tuple(self._order[i] for i in chain_rows[bad_chain])
        return ProxResult(
            p_mw=p[tab], objective_eur=objective[tab], prox_eur=prox[tab], asset_ids=self.asset_ids,
            ipm_iterations=point.ipm_iterations, ipm_chains=point.ipm_chains,
            active_set_iterations=point.pdas_iterations,
            max_kkt_residual=float(point.residual.max(initial=0.0)), unverified=unverified,
            warm_started=warm is not None, solve_time_s=time.perf_counter() - start)


def power_range_mw(inputs: DispatchInputs, kinds: np.ndarray) -> np.ndarray:
    """How far each asset's power can move in each period (MW, (assets, periods), asset-table order): twice the
    rating for a battery (full charge to full discharge), charge plus discharge limit for an EV charger, the
    flexible load's rating, the PV available for curtailment. ``kinds``: each asset's kind (table order), as the
    per-kind rows of ``inputs`` are that kind's assets in table order. 0 where the asset cannot move at all (PV at
    night, an EV not plugged in): the ADMM's share of each row goes to the assets that can."""
    kinds = np.asarray([str(k) for k in kinds])
    T = len(np.asarray(inputs.price_eur_per_mwh))
    out = np.zeros((kinds.size, T))
    for kind, value in ((AssetKind.BATTERY, 2.0 * np.asarray(inputs.bat_p_max_mw, dtype=float)),
                        (AssetKind.EV_CHARGER, np.asarray(inputs.ev_ch_max_mw, dtype=float)
                         + np.asarray(inputs.ev_dis_max_mw, dtype=float)),
                        (AssetKind.FLEX_LOAD, np.asarray(inputs.flex_p_max_mw, dtype=float)),
                        (AssetKind.PV, np.asarray(inputs.pv_avail_mw, dtype=float))):
        rows = np.flatnonzero(kinds == kind.value)
        if value.shape != (rows.size, T):
            raise ValueError(f"inputs for {kind.value}: needs shape {(rows.size, T)}, got {value.shape}")
        out[rows] = np.maximum(np.nan_to_num(value), 0.0)
    return out


def _checked(value: Any, name: str, shape: tuple[int, int], *, positive: bool = False) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.shape != shape:
        raise ValueError(f"{name}: needs shape {shape} (assets in table order x periods), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: must be finite")
    if positive and not np.all(arr > 0):
        raise ValueError(f"{name}: must be > 0")
    return arr
