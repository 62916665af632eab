"""The grid-owned side of the DePIN policy: the nodes that own the feeder's constraints, all simulated at once.

Every bus of the feeder tree is a grid node (substation, cabinet, line sensor) owned by the DSO. The root owns
the feeder-head row (energy at the tariff, the soft peak limit, the demand charge); every node owns the voltage
row of its bus and the loading row of the branch to its parent. A row is linear in the participants' powers
around the measured operating point (``controllers.coordination.TreeOperatingPoint``):

    head:    y(t)   = y0 + Σ_all (base(t) − base0) + Σ_assets (p_a(t) − p_a0)
    voltage: v_k(t) = v0_k + Σ_{b ∈ path(k)} a_b (Σ_{subtree(b)} (base − base0) + Σ_{assets in subtree(b)} (p_a − p_a0))
    loading: F_c(t) = F0_c + Σ_{subtree(c)} (base − base0) + Σ_{assets in subtree(c)} (p_a − p_a0),   |F_c| ≤ cap_c

with a_b the branch's voltage coefficient (pu/MW), cap_c = sqrt((L_max / k_c)² − Q0_c²) the active power the
branch may carry at its operating-point reactive flow (k_c: loading % per MVA), base0 the DSO's estimate of the
uncontrolled load when the operating point was measured and p_a0 what each asset's own meter measured then.
The base-load terms are the DSO's own forecast per node, so each node knows its row's constant; the
participants' part X_k = Σ_a A_ka (p_a − p_a0) arrives as aggregates by the sweeps
(``controllers.depin.sweeps``). A participant never heard from counts as carrying on as measured.

Coordination is *sharing ADMM* (Boyd et al., "Distributed Optimization and Statistical Learning via ADMM", §7.3)
with one shared row per constraint: every asset a with A_ka ≠ 0 shares row k, N_k of them. Per row, with
Z_k = N_k z̄_k and the scaled dual U_k = N_k u_k (both per period):

    Z_k ← argmin g_k(Z) + (ρ_k / 2N_k) ‖Z − (X_k + U_k)‖²        (closed form: FeederCost, or a soft clip)
    U_k ← U_k + X_k − Z_k,        s_k = (X_k − Z_k + U_k) / N_k

and each asset's local step (``controllers.local_steps``) minimizes f_a(p) + Σ_k ρ_k/2 ‖A_ka (p − p_a⁻) + s_k‖²
= f_a(p) + W_a/2 ‖p − (p_a⁻ − σ_a / W_a)‖² with the *locational* signal σ_a = Σ_k ρ_k A_ka s_k and weight
W_a = Σ_k ρ_k A_ka². On the tree both are path sums that one up and one down sweep deliver (``prices``):
A_ka = 1 for the head and for the loading rows on a's path, and A_ka = R_lca(k,a) (the path sum of a_b to the
lowest common ancestor) for voltage rows. Only rows that can bind take part ("armed": within a margin of their
limit in some period of the plan); an idle row would only add curvature. ρ_k is scaled per row so that every
row weighs like the head row per MW-equivalent: ρ_v / R_k² for the voltage at k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from controllers.api import NetworkLimits
from controllers.coordination import GridObservation
from controllers.depin.sweeps import TreeSweeps
from controllers.feeder_cost import FeederCost

__all__ = ["GridNodes", "GridSettings", "RowUpdate"]


@dataclass(frozen=True)
class GridSettings:
    """The grid side's tuning and prices (EUR; slack costs per unit of violation and hour, as the central
    optimizer's ``DispatchWeights``)."""

    rho_eur_per_mw2: float = 1.0e4
    rho_voltage_eur_per_mw2: float = 1.0e4
    rho_loading_eur_per_mw2: float = 1.0e4
    voltage_slack_cost_eur_per_pu_h: float = 1.0e5
    loading_slack_cost_eur_per_percent_h: float = 100.0
    head_slack_cost_eur_per_mwh: float = 1000.0
    demand_charge_eur_per_mw: float = 0.0
    arm_margin_pu: float = 0.01
    arm_margin_loading: float = 0.1
    #: A voltage row keeps its coefficients only where the path to the root carries some resistance.
    min_path_sensitivity_pu_per_mw: float = 1e-9
    #: Over-relaxation α of every row's z- and u-update (Boyd et al. §3.4.3), in (0, 2); 1 is plain ADMM.
    relaxation: float = 1.0

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"GridSettings.{name}: must be finite and >= 0, got {value!r}")
        if not 0 < self.relaxation < 2:
            raise ValueError(f"GridSettings.relaxation: must be in (0, 2), got {self.relaxation!r}")
        for name in ("rho_eur_per_mw2", "rho_voltage_eur_per_mw2", "rho_loading_eur_per_mw2"):
            if not getattr(self, name) > 0:
                raise ValueError(f"GridSettings.{name}: must be > 0")


@dataclass(frozen=True)
class RowUpdate:
    """One round's constraint owners, as the root aggregates them (MW-equivalent)."""

    primal_residual_mw: float
    dual_residual_mw: float
    armed_voltage: int
    armed_loading: int


class GridNodes:
    """Every grid node's state and arithmetic for one DePIN policy; arrays are (nodes, periods)."""

    def __init__(self, *, sweeps: TreeSweeps, assets_at_node: np.ndarray, horizon: int, hours: float,
                 settings: GridSettings) -> None:
        self.sweeps = sweeps
        self.T = horizon
        self.hours = hours
        self.settings = settings
        n = sweeps.n_nodes
        self.n_assets = max(int(assets_at_node.sum()), 1)
        # Assets sharing each loading row: those in the subtree (static, the registry's public data).
        self.n_subtree = np.maximum(sweeps.subtree_sum(assets_at_node.astype(float)[:, None])[:, 0], 1.0)
        s = settings
        self.feeder = FeederCost(horizon=horizon, hours=hours, quad=s.rho_eur_per_mw2 / (2 * self.n_assets),
                                 demand_charge_eur_per_mw=s.demand_charge_eur_per_mw,
                                 head_slack_cost_eur_per_mwh=s.head_slack_cost_eur_per_mwh)
        zeros = np.zeros((n, horizon))
        self.u_head = np.zeros(horizon)
        self.z_head = np.zeros(horizon)
        self.u_v, self.z_v = zeros.copy(), zeros.copy()
        self.u_l, self.z_l = zeros.copy(), zeros.copy()
        self.armed_v = np.zeros(n, dtype=bool)
        self.armed_l = np.zeros(n, dtype=bool)
        self.new_v = np.zeros(n, dtype=bool)
        self.new_l = np.zeros(n, dtype=bool)
        self.rho_changed = np.zeros(n, dtype=bool)
        self.s_head = np.zeros(horizon)
        self.s_v, self.s_l = zeros.copy(), zeros.copy()
        self._time = None
        # Residual balancing (Boyd et al. §3.4.1): every node's ρ is scaled by the factor the root last told it.
        self.mu = np.ones(n)

    # -- per decision ------------------------------------------------------------------------------
    def begin(self, grid: GridObservation, *, shift: int) -> None:
        """Read the operating point and the DSO's forecast; shift the duals by ``shift`` periods (warm start)."""
        op, tree, limits = grid.operating_point, grid.tree, grid.limits
        self.limits: NetworkLimits = limits
        sweeps = self.sweeps
        a = np.nan_to_num(op.voltage_per_mw, nan=0.0)
        a[0] = 0.0
        self.a = a
        self.R = sweeps.path_sum(a[:, None])[:, 0]  # each node's self-sensitivity (pu/MW, negative)
        self.R_parent = np.where(tree.parent >= 0, self.R[np.maximum(tree.parent, 0)], 0.0)
        # Uncontrolled load over the horizon relative to the operating point; the participants report their own
        # change from what their meters measured there, so the measured point anchors both.
        delta = grid.base_load_node_mw.T - grid.base_load_node_measured_mw[:, None]
        flow_base = sweeps.subtree_sum(delta)
        self.const_head = op.head_p_mw + flow_base[0]
        self.const_v = op.vm_pu[:, None] + sweeps.path_sum(a[:, None] * flow_base)
        self.const_l = np.nan_to_num(op.flow_p_mw)[:, None] + flow_base
        k = op.loading_percent_per_mva
        with np.errstate(divide="ignore", invalid="ignore"):
            s_max = np.where(k > 0, limits.loading_max_percent / k, np.inf)
        q0 = np.nan_to_num(op.flow_q_mvar)
        self.cap = np.sqrt(np.maximum(s_max**2 - q0**2, 0.0))
        self.cap[0] = np.inf
        self.loading_cost_per_mw_h = self.settings.loading_slack_cost_eur_per_percent_h * np.nan_to_num(k, nan=0.0)
        has_row = np.abs(self.R) > self.settings.min_path_sensitivity_pu_per_mw
        has_row[0] = False
        self.has_voltage_row = has_row
        s = self.settings
        with np.errstate(divide="ignore"):
            self.rho_v = np.where(has_row, s.rho_voltage_eur_per_mw2 / np.where(has_row, self.R, 1.0) ** 2, 0.0)
        self.rho_l = np.where(np.isfinite(self.cap), s.rho_loading_eur_per_mw2, 0.0)
        self.price = grid.price_eur_per_mwh
        feed = grid.feed_in_eur_per_mwh
        self.price_exp = self.price if feed is None else np.minimum(feed, self.price)
        self.head_limit = 1e6 if limits.p_head_max_mw is None else float(limits.p_head_max_mw)
        for name in ("u_head", "z_head", "u_v", "z_v", "u_l", "z_l", "s_head", "s_v", "s_l"):
            setattr(self, name, _shift(getattr(self, name), shift))
        # Rows stay armed into the next decision while they are still near their limit (checked on the
        # first aggregates of the decision, ``arm``); until then they keep their warm-started duals.

    # -- per round ---------------------------------------------------------------------------------
    def arm(self, x_v: np.ndarray, x_l: np.ndarray, *, keep: bool) -> None:
        """Arm the rows whose value in the current plan comes within the margin of a limit in some period.
        ``keep=False`` (first round of a decision) also disarms rows that moved well away from theirs."""
        s, lim = self.settings, self.limits
        before_v, before_l = self.armed_v.copy(), self.armed_l.copy()
        v = self.const_v + x_v
        near_v = self.has_voltage_row & ((v > lim.v_max_pu - s.arm_margin_pu) |
                                         (v < lim.v_min_pu + s.arm_margin_pu)).any(axis=1)
        flow = np.abs(self.const_l + x_l)
        near_l = np.isfinite(self.cap) & (flow > (1.0 - s.arm_margin_loading) * self.cap[:, None]).any(axis=1)
        if keep:
            self.armed_v |= near_v
            self.armed_l |= near_l
        else:
            far_v = self.has_voltage_row & ~((v > lim.v_max_pu - 2 * s.arm_margin_pu) |
                                             (v < lim.v_min_pu + 2 * s.arm_margin_pu)).any(axis=1)
            far_l = ~(flow > (1.0 - 2 * s.arm_margin_loading) * self.cap[:, None]).any(axis=1)
            for armed, near, far, rows in ((self.armed_v, near_v, far_v, (self.u_v, self.z_v, self.s_v)),
                                           (self.armed_l, near_l, far_l, (self.u_l, self.z_l, self.s_l))):
                drop = armed & far
                armed[drop] = False
                for r in rows:
                    r[drop] = 0.0
                armed |= near
        for armed, rows in ((self.armed_v, (self.u_v, self.s_v)), (self.armed_l, (self.u_l, self.s_l))):
            for r in rows:
                r[~armed] = 0.0
        # Rows armed in this round start their relaxation at consensus (their z is the participants' share).
        self.new_v = self.armed_v & ~before_v
        self.new_l = self.armed_l & ~before_l

    def rescale(self, mu: np.ndarray) -> None:
        """Nodes that heard a new ρ scale from the root adopt it; their scaled duals U = N y / ρ follow."""
        mu = np.asarray(mu, dtype=float)
        changed = mu != self.mu
        self.rho_changed = changed
        if not changed.any():
            return
        ratio = np.where(changed, self.mu / mu, 1.0)
        for u in (self.u_v, self.u_l):
            u *= ratio[:, None]
        if changed[0]:
            self.u_head = self.u_head * ratio[0]
            s = self.settings
            self.feeder = FeederCost(horizon=self.T, hours=self.hours, quad=mu[0] * s.rho_eur_per_mw2 / (2 * self.n_assets),
                                     demand_charge_eur_per_mw=s.demand_charge_eur_per_mw,
                                     head_slack_cost_eur_per_mwh=s.head_slack_cost_eur_per_mwh)
        self.mu = mu.copy()

    def update(self, x_head: np.ndarray, x_v: np.ndarray, x_l: np.ndarray, *, alpha: np.ndarray) -> RowUpdate:
        """Every owner's z- and u-update on the participants' aggregates of this round; sets ``s_*`` and each
        node's residuals (``primal_node`` / ``dual_node``, MW-equivalent at the row's own bus).

        ``alpha`` (per node): the over-relaxation each node applies this round (1 = plain ADMM: in the first round
        of a decision and where the node's ρ changed). Relaxed, a row's update reads (Boyd et al. §3.4.3)

            X̂ = α X + (1 − α) Z⁻,   Z ← prox(X̂ + U),   U ← U + X̂ − Z,   s = (2U − (2 − α) U⁻) / N

        (s at α = 1 is (X − Z + U) / N, the plain signal); the participants complete it with their own memory
        (``Participants.local_step``)."""
        h, s, n = self.hours, self.settings, self.sweeps.n_nodes
        primal, dual = np.zeros(n), np.zeros(n)
        alpha = np.broadcast_to(np.asarray(alpha, dtype=float), (n,))
        # Head row (the root).
        z_prev, u_prev, a0 = self.z_head, self.u_head, float(alpha[0])
        x_hat = x_head if a0 == 1.0 else a0 * x_head + (1.0 - a0) * z_prev
        self.z_head = self.feeder.solve(base=self.const_head, price_imp=self.price, price_exp=self.price_exp,
                                        limit=self.head_limit, target=x_hat + u_prev)
        self.u_head = u_prev + x_hat - self.z_head
        self.s_head = (2.0 * self.u_head - (2.0 - a0) * u_prev) / self.n_assets
        primal[0] = np.max(np.abs(x_head - self.z_head), initial=0.0)
        dual[0] = np.max(np.abs(self.z_head - z_prev), initial=0.0)
        scale = np.zeros(n)  # each row's size (MW-equivalent): the stopping rule is relative to it
        scale[0] = max(np.max(np.abs(x_head), initial=0.0), np.max(np.abs(self.z_head), initial=0.0),
                       np.max(np.abs(self.const_head + self.z_head), initial=0.0))
        # Each row's scaled dual (MW-equivalent): the size its dual residual is measured against when ρ is
        # balanced (Boyd et al. §3.4.1 with both residuals relative, as OSQP does).
        price = np.zeros(n)
        price[0] = np.max(np.abs(self.u_head), initial=0.0)
        # Voltage rows (armed ones): soft band [v_min, v_max] at voltage_slack_cost per pu and hour.
        lim = self.limits
        av = np.flatnonzero(self.armed_v)
        if av.size:
            weight = self.mu[av, None] * self.rho_v[av, None] / self.n_assets
            a_row = np.where(self.new_v[av], 1.0, alpha[av])[:, None]
            u_prev = self.u_v[av]
            q = a_row * x_v[av] + (1.0 - a_row) * self.z_v[av] + u_prev
            z = _soft_band(self.const_v[av] + q, lo=lim.v_min_pu, hi=lim.v_max_pu,
                           reach=s.voltage_slack_cost_eur_per_pu_h * h / weight) - self.const_v[av]
            per_mw = np.abs(self.R[av, None])  # pu per MW at the row's own bus: residuals in MW there
            dual[av] = np.max(np.abs(z - self.z_v[av]) / per_mw, axis=1)
            primal[av] = np.max(np.abs(x_v[av] - z) / per_mw, axis=1)
            scale[av] = np.max(np.maximum(np.abs(x_v[av]), np.abs(z)) / per_mw, axis=1)
            price[av] = np.max(np.abs(q - z) / per_mw, axis=1)
            self.z_v[av] = z
            self.u_v[av] = q - z
            self.s_v[av] = (2.0 * self.u_v[av] - (2.0 - a_row) * u_prev) / self.n_assets
        al = np.flatnonzero(self.armed_l)
        if al.size:
            weight = self.mu[al, None] * self.rho_l[al, None] / self.n_subtree[al, None]
            a_row = np.where(self.new_l[al], 1.0, alpha[al])[:, None]
            u_prev = self.u_l[al]
            q = a_row * x_l[al] + (1.0 - a_row) * self.z_l[al] + u_prev
            cap = self.cap[al, None]
            reach = self.loading_cost_per_mw_h[al, None] * h / weight
            z = _soft_band(self.const_l[al] + q, lo=-cap, hi=cap, reach=reach) - self.const_l[al]
            dual[al] = np.maximum(dual[al], np.max(np.abs(z - self.z_l[al]), axis=1))
            primal[al] = np.maximum(primal[al], np.max(np.abs(x_l[al] - z), axis=1))
            scale[al] = np.maximum(scale[al], np.max(np.maximum(np.abs(x_l[al]), np.abs(z)), axis=1))
            price[al] = np.maximum(price[al], np.max(np.abs(q - z), axis=1))
            self.z_l[al] = z
            self.u_l[al] = q - z
            self.s_l[al] = (2.0 * self.u_l[al] - (2.0 - a_row) * u_prev) / self.n_subtree[al, None]
        self.primal_node, self.dual_node, self.scale_node, self.price_node = primal, dual, scale, price
        return RowUpdate(primal_residual_mw=float(primal.max(initial=0.0)), dual_residual_mw=float(dual.max(initial=0.0)),
                         armed_voltage=int(av.size), armed_loading=int(al.size))

    def duals_up_own(self) -> np.ndarray:
        """Each node's own part of the duals-up message, (n, T + 1): [ρ_k s_k, ρ_k] of its armed voltage row
        (summed over subtrees by the sweep: S_v and M)."""
        rho_v = np.where(self.armed_v, self.mu * self.rho_v, 0.0)
        return np.concatenate([rho_v[:, None] * self.s_v, rho_v[:, None]], axis=1)

    def prices_down(self, dual_totals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The root's row and every node's own step of the prices-down sweep, columns [σ (T), ω, L], from the
        subtree totals ``dual_totals`` = [S_v (T), M] each node holds after the duals-up sweep.

        A node's path values are then: σ = Σ_path (a_b S_v(b) + ρ_b s_b [armed loading]) + ρ_head s_head, the
        locational signal; ω = Ω + R² M with Ω(c) = Ω(p) + R_p² (M(p) − M(c)), so that ω is the voltage rows'
        share of the weight W; L = ρ_head + Σ_path ρ_b [armed loading]. W = ω + L.
        """
        T = self.T
        S_v, M = dual_totals[:, :T], dual_totals[:, T]
        rho_l = np.where(self.armed_l, self.mu * self.rho_l, 0.0)
        sigma_step = self.a[:, None] * S_v + rho_l[:, None] * self.s_l
        omega_step = (self.R**2 - self.R_parent**2) * M
        step = np.concatenate([sigma_step, omega_step[:, None], rho_l[:, None]], axis=1)
        rho_h = self.mu[0] * self.settings.rho_eur_per_mw2
        root = np.concatenate([rho_h * self.s_head + sigma_step[0], [omega_step[0], rho_h + rho_l[0]]])
        return root, step


def _soft_band(value: np.ndarray, *, lo: np.ndarray | float, hi: np.ndarray | float,
               reach: np.ndarray | float) -> np.ndarray:
    """argmin_y c·dist(y, [lo, hi]) + (w/2)(y − value)²: the value moved towards the band by at most
    ``reach`` = c / w (the prox of a soft limit)."""
    above = np.maximum(value - hi, 0.0)
    below = np.maximum(lo - value, 0.0)
    return value - np.minimum(above, reach) + np.minimum(below, reach)


def _shift(a: np.ndarray, k: int) -> np.ndarray:
    """Recede the horizon by k periods (the last value stands in for the new ones)."""
    if k <= 0 or a.shape[-1] == 0:
        return a
    kept = a[..., min(k, a.shape[-1] - 1):]
    return np.pad(kept, [(0, 0)] * (a.ndim - 1) + [(0, a.shape[-1] - kept.shape[-1])], mode="edge")
