"""The DePIN z-update's feeder-head cost, minimized exactly in closed form with numpy.

This module owns one job: given one ADMM round's feeder-level terms, return the fleet total ``s`` (MW per
period, load convention; the feeder head imports ``y = base + s``) that minimizes

    h Σ_t [λexp_t s_t + σ_t max(y_t, 0) + c max(y_t - L, 0)]  +  D max(0, max_t y_t)  +  q Σ_t (s_t - g_t)²

with σ = max(λimp - λexp, 0) the import/export spread, L the soft head limit at c EUR/MWh, D the demand
charge (EUR/MW on the peak import) and g the ADMM target. It is a drop-in for the cvxpy ``FeederCost`` in
``controllers.depin`` (same constructor and ``solve`` keywords) and it is exact, not iterative:

1. Without the peak term the problem separates by period. Each f_t(s) is convex piecewise linear in s plus
   q (s - g_t)², with kinks where y = 0 (slope rises by h σ_t) and y = L (by h c). Its derivative is strictly
   increasing, so the minimizer s*_t is where it crosses zero: on a linear piece of slope a that is
   u = g_t - a / 2q if u lies on the piece, else the kink between two pieces (see ``_prox``, which works
   in the head y, where the kinks are the same 0 and L in every period).
2. With D > 0, let P >= 0 be the peak import. For fixed P the periods separate again under y_t <= P, and
   clipping a 1-D convex minimizer to an upper bound is exact: s_t(P) = min(s*_t, P - base_t). The reduced
   cost F(P) = Σ_t f_t(s_t(P)) + D P is convex with right derivative
       φ(P) = D + Σ_{t: y*_t > P} f_t'(P - base_t),        y* = base + s*,
   non-decreasing and piecewise linear with knots only at 0, L and the y*_t (a period stops being clipped
   at y*_t; its slope jumps at y = L). So evaluate φ at the knots, take the first knot where φ >= 0, and the
   optimal P is the root of the linear piece before it, or that knot itself if φ jumps over zero there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["FeederCost"]


def _check(name: str, value: object, ok: bool, must: str) -> None:
    if not ok:
        raise ValueError(f"FeederCost: {name}={value!r} must be {must}")


@dataclass(frozen=True, kw_only=True)
class FeederCost:
    """The shared feeder-head cost g(s) of the DePIN z-update (see the module docstring for the math).

    ``quad`` is q (EUR/MW² per period), ``hours`` the period length h. Solving never fails: ``solve``
    returns the exact minimizer for any valid input and raises ``ValueError`` on invalid input.
    """

    horizon: int
    hours: float
    quad: float
    demand_charge_eur_per_mw: float
    head_slack_cost_eur_per_mwh: float

    def __post_init__(self) -> None:
        n = self.horizon
        _check("horizon", n, isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 1, "an int >= 1")
        for name in ("hours", "quad"):
            value = getattr(self, name)
            _check(name, value, math.isfinite(value) and value > 0, "finite and > 0")
        for name in ("demand_charge_eur_per_mw", "head_slack_cost_eur_per_mwh"):
            value = getattr(self, name)
            _check(name, value, math.isfinite(value) and value >= 0, "finite and >= 0")

    def solve(self, *, base: np.ndarray, price_imp: np.ndarray, price_exp: np.ndarray, limit: float,
              target: np.ndarray) -> np.ndarray:
        """The minimizing fleet total s (MW, length ``horizon``)."""
        arrays = {"base": base, "price_imp": price_imp, "price_exp": price_exp, "target": target}
        for name, value in arrays.items():
            a = np.asarray(value, dtype=float)
            _check(f"{name}.shape", a.shape, a.shape == (self.horizon,), f"({self.horizon},) (the horizon)")
            bad = np.flatnonzero(~np.isfinite(a))
            if bad.size:
                _check(f"{name}[{bad[0]}]", a[bad[0]], False, "finite")
            arrays[name] = a
        _check("limit", limit, math.isfinite(limit), "finite")
        base, target = arrays["base"], arrays["target"]
        h, q, c, D = self.hours, self.quad, self.head_slack_cost_eur_per_mwh, self.demand_charge_eur_per_mw
        price_exp = arrays["price_exp"]
        spread = np.maximum(arrays["price_imp"] - price_exp, 0.0)

        # Work in the head y = base + s: the kinks are then the same two numbers, 0 and L, in every period,
        # so a period stuck at a kink has y* exactly equal to it (s-space kinks L - base would round), and
        # step 2's "still clipped" test y* > P is exact at those knots.
        kinks = sorted([(0.0, h * spread), (float(limit), np.full_like(spread, h * c))], key=lambda kw: kw[0])
        y = _prox(center=base + target, a0=h * price_exp, kinks=kinks, quad=q)
        if D == 0 or y.max() <= 0:
            return y - base  # no peak charge, or the peak import is already 0: capping y at P never binds

        # Step 2: φ at every knot P_k >= 0 (rows) from a K x T matrix of per-period right derivatives at
        # y = P_k; T is a day of periods, so O(T²) is cheaper than sorting tricks and easier to check.
        knots = np.unique(np.concatenate(([0.0, limit], y)))
        knots = knots[knots >= 0][:, None]
        # P >= 0 means y >= 0, so the import spread always counts; the head-limit slope from y = L on.
        slope = h * (price_exp + spread) + h * c * (knots >= limit) + 2 * q * (knots - base - target)
        # A period still clipped (y* > P) has a negative slope there; min(., 0) only guards against rounding.
        clipped = np.where(y > knots, np.minimum(slope, 0.0), 0.0)
        phi = D + clipped.sum(axis=1)
        # At the largest knot (max y* > 0) nothing is clipped, so φ = D > 0 there and argmax finds a knot.
        j = int(np.argmax(phi >= 0))
        if j == 0:
            peak = 0.0
        else:  # φ < 0 at knots[j-1], linear with slope 2q·(#clipped) up to knots[j]; #clipped >= 1 as φ < D
            lo, hi = knots[j - 1, 0], knots[j, 0]
            peak = min(lo - phi[j - 1] / (2 * q * np.count_nonzero(clipped[j - 1])), hi)
        return np.minimum(y, peak) - base


def _prox(*, center: np.ndarray, a0: np.ndarray, kinks: list[tuple[float, np.ndarray]], quad: float) -> np.ndarray:
    """argmin_y a0 y + w1 max(y - k1, 0) + w2 max(y - k2, 0) + quad (y - center)², elementwise, for kinks
    k1 <= k2 (scalars) with slope jumps w1, w2 >= 0 (arrays)."""
    (k1, w1), (k2, w2) = kinks
    # Stationary point of each linear piece: left of k1, between the kinks, right of k2 (u0 >= u1 >= u2).
    u0 = center - a0 / (2 * quad)
    u1 = center - (a0 + w1) / (2 * quad)
    u2 = center - (a0 + w1 + w2) / (2 * quad)
    # The increasing derivative crosses zero on exactly one piece or jumps over zero at a kink; the nest
    # picks it: u2 if u2 >= k2, else k2 if u1 >= k2, else u1 if u1 >= k1, else k1 if u0 >= k1, else u0.
    return np.minimum(u0, np.maximum(k1, np.minimum(u1, np.maximum(k2, u2))))
