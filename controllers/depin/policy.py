"""The DePIN policy: participant agents and grid nodes coordinating by ADMM along the feeder tree.

One round (``coordinate``), in the order the messages travel (``controllers.coordination.ROUND_PASSES``):

1. every participant takes its local step on the last signal it heard and sends its net trajectory to its bus
   node (uplink);
2. nodes sum their subtree's trajectories towards the root (flows_up): every node now knows the participants'
   share of its branch flow, the root the fleet's share of the feeder head;
3. from the root down, nodes add their branch's voltage coefficient times that flow (voltages_down): every node
   knows the participants' share of its voltage;
4. every owner of a constraint updates its consensus target and dual (``GridNodes.update``) and the rows near a
   limit arm themselves;
5. the voltage duals are summed up the tree (duals_up), with each node's residuals (the root takes the largest);
6. the locational signal and weight are path-summed down (prices_down) with the root's stopping decision, its ρ
   scale, the over-relaxation of the next round and the head row's ρ, and every node passes them to its
   participants (downlink).

A decision's first round also carries each participant's share of the feeder-head row (what its assets can move
in each period) on the uplink and flows up, and the fleet's mean share down with the prices (``head_share``).

The twin decides which of these messages arrive (``RoundDelivery``); a lost message leaves its receiver with the
last one it heard. A participant that hears nothing keeps optimizing its own assets on the last signal it got
(the last prices: local autonomy), and its inverters follow IEEE 1547 volt-var on its own bus voltage.
"""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from controllers.api import AssetKind, Dispatch, Observation
from controllers.coordination import AgentNetworkSpec, GridObservation, RoundDelivery, RoundOutcome
from controllers.depin.grid_nodes import GridNodes, GridSettings
from controllers.depin.participants import Participants, summing_matrix
from controllers.depin.sweeps import TreeSweeps
from controllers.dispatch_model import DispatchWeights
from controllers.volt_var import volt_var_q_mvar

__all__ = ["NetworkAdmm"]

#: Wire size of one number (float64) and of a message's framing (ids, round, sequence, signature).
_NUMBER_BYTES = 8
_FRAME_BYTES = 96
#: Rounds between two changes of ρ (each change makes the next round a plain, unrelaxed one).
_BALANCE_EVERY = 5


class NetworkAdmm:
    """Network-aware DePIN coordination (implements ``controllers.coordination.AgentNetwork``).

    ``rho`` (EUR/MW² per period) weighs the feeder-head row, ``rho_voltage`` / ``rho_loading`` the voltage and
    loading rows per MW-equivalent (default: ``rho``). Stopping rule: every row's primal and dual residual (MW at
    the row's own bus) below ``tolerance_mw + relative_tolerance × the row's size`` (for the head row the largest
    of the participants' change, its consensus value and the head's own flow: Boyd et al. §3.3.1's
    max(‖Ax‖, ‖Bz‖, ‖c‖), so the rule does not depend on where the changes are counted from).

    ``head_share``: how the feeder-head row's mismatch is shared among the assets (a penalty per copy of the row,
    fixed for a decision; ``Participants.local_step``): ``"range"`` in proportion to what each asset can move in
    each period (its own power range; PV at night and unplugged EVs take none), ``"count"`` equally among the
    assets that can move, ``"uniform"`` equally among all (plain sharing ADMM). The optimum is the same; the
    rounds are not: with equal shares the assets that can move close only their fraction of the mismatch per
    round. The shares travel once per decision, on the first round's uplink and flows (each participant's sum,
    summed up the tree) and prices (the fleet's mean share, from the root). ``batch``: solve every participant's local step in one
    vectorized call (same result as one by one). Cost and slack weights as ``OptimizingController``'s.

    Acceleration (the fixed point, hence the optimum, is plain ADMM's): while only the feeder-head row is armed the
    rows are over-relaxed by ``relaxation`` (α; Boyd et al. §3.4.3; 1 turns it off) and ρ is balanced on the
    relative residuals in the first ``balance_rounds``; while voltage or loading rows are armed, rounds are plain
    and ρ is balanced on the absolute ones in the first ``network_balance_rounds`` (``_balance`` /
    ``_balance_network``).
    """

    def __init__(
        self,
        *,
        rho: float = 1.0e4,
        rho_voltage: float | None = None,
        rho_loading: float | None = None,
        tolerance_mw: float = 1e-4,
        relative_tolerance: float = 1e-3,
        batch: bool = True,
        demand_charge_eur_per_mw: float = 0.0,
        head_slack_cost_eur_per_mwh: float = 1000.0,
        voltage_slack_cost_eur_per_pu_h: float = 1.0e5,
        loading_slack_cost_eur_per_percent_h: float = 100.0,
        pv_curtailment_cost_eur_per_mwh: float = 1.0,
        flex_curtailment_cost_eur_per_mwh: float = 500.0,
        ev_unmet_cost_eur_per_mwh: float = 1000.0,
        terminal_soc_shortfall_cost_eur_per_mwh: float = 1000.0,
        throughput_cost_eur_per_mwh: float = 0.01,
        arm_margin_pu: float = 0.01,
        arm_margin_loading: float = 0.1,
        isolation_rounds: int = 2,
        volt_var: bool = True,
        balance_rounds: int = 30,
        network_balance_rounds: int = 100,
        relaxation: float = 1.6,
        head_share: str = "range",
    ) -> None:
        if not tolerance_mw > 0:
            raise ValueError(f"tolerance_mw={tolerance_mw!r} must be > 0")
        if not relative_tolerance >= 0:
            raise ValueError(f"relative_tolerance={relative_tolerance!r} must be >= 0")
        if isolation_rounds < 1:
            raise ValueError(f"isolation_rounds={isolation_rounds!r} must be >= 1")
        if head_share not in ("range", "count", "uniform"):
            raise ValueError(f"head_share={head_share!r} must be 'range', 'count' or 'uniform'")
        self.settings = GridSettings(
            rho_eur_per_mw2=rho, rho_voltage_eur_per_mw2=rho if rho_voltage is None else rho_voltage,
            rho_loading_eur_per_mw2=rho if rho_loading is None else rho_loading,
            voltage_slack_cost_eur_per_pu_h=voltage_slack_cost_eur_per_pu_h,
            loading_slack_cost_eur_per_percent_h=loading_slack_cost_eur_per_percent_h,
            head_slack_cost_eur_per_mwh=head_slack_cost_eur_per_mwh, demand_charge_eur_per_mw=demand_charge_eur_per_mw,
            arm_margin_pu=arm_margin_pu, arm_margin_loading=arm_margin_loading, relaxation=relaxation,
        )
        self.weights = DispatchWeights(
            pv_curtailment_cost_eur_per_mwh=pv_curtailment_cost_eur_per_mwh,
            flex_curtailment_cost_eur_per_mwh=flex_curtailment_cost_eur_per_mwh,
            ev_unmet_cost_eur_per_mwh=ev_unmet_cost_eur_per_mwh,
            terminal_soc_shortfall_cost_eur_per_mwh=terminal_soc_shortfall_cost_eur_per_mwh,
            throughput_cost_eur_per_mwh=throughput_cost_eur_per_mwh,
        )
        self.tolerance_mw = tolerance_mw
        self.relative_tolerance = relative_tolerance
        self.batch = batch
        self.isolation_rounds = isolation_rounds
        self.volt_var = volt_var
        self.balance_rounds = balance_rounds
        self.network_balance_rounds = network_balance_rounds
        self.head_share = head_share

    # -- per run -----------------------------------------------------------------------------------
    def reset(self, spec: AgentNetworkSpec, *, seed: int) -> None:
        del seed  # deterministic
        self.spec = spec
        tree = spec.tree
        self.sweeps = TreeSweeps.of(tree)
        n_nodes, T = tree.n_nodes, spec.horizon
        assets = spec.assets
        self.participants = Participants(assets=assets, participants=spec.participants, step=spec.step, horizon=T,
                                         weights=self.weights, batch=self.batch, dask_client=spec.dask_client,
                                         head_share=self.head_share)
        self.node_of_asset = spec.node_of_participant[self.participants.owner]
        self._sum_by_node = summing_matrix(spec.node_of_participant, n_nodes)  # participants → their bus node
        assets_at_node = np.bincount(self.node_of_asset, minlength=n_nodes).astype(float)
        self.grid = GridNodes(sweeps=self.sweeps, assets_at_node=assets_at_node, horizon=T,
                              hours=spec.step / pd.Timedelta("1h"), settings=self.settings)
        n_part = len(spec.participants)
        # What each receiver last heard on each link (stale values stand in for lost messages).
        self.heard_uplink = np.zeros((n_part, T))  # at the node, from each participant
        self.heard_flows = np.zeros((n_nodes, T))  # at the parent, from each child
        self.heard_volts = np.zeros((n_nodes, T))  # at each node, from its parent
        self.heard_duals = np.zeros((n_nodes, T + 1))
        self.heard_resid = np.zeros((n_nodes, 7))
        self.heard_prices = np.zeros((n_nodes, T + 6))  # [σ, ω, L, stop, ρ scale, α, ρ of the head row]
        self.heard_prices[:, T + 3] = 1.0
        self.heard_prices[:, T + 4] = 1.0
        self._relax = 1.0  # the over-relaxation the root sends for the next round
        # At each participant from its node: [σ, W of the network rows, stop, α, ρ of the head row].
        self.heard_signal = np.zeros((n_part, T + 4))
        self.heard_signal[:, T + 2] = 1.0
        self.heard_signal[:, T + 3] = self.settings.rho_eur_per_mw2
        # The feeder-head shares (``Participants.local_step``), once per decision: each participant's sum up to
        # its node, subtree sums up the tree, the fleet's mean share f back down from the root.
        self.heard_share_uplink = np.zeros((n_part, T))
        self.heard_share_flows = np.zeros((n_nodes, T))
        self.heard_share_down = np.ones((n_nodes, T))
        self.heard_share = np.ones((n_part, T))
        self.silent = np.zeros(n_part, dtype=np.int64)
        self.mu = 1.0  # the root's ρ scale (kept from one decision to the next)
        self._time: pd.Timestamp | None = None
        self._is_pv_or_battery = assets["kind"].astype(str).isin([AssetKind.PV, AssetKind.BATTERY]).to_numpy()
        self.message_bytes = {
            "uplink": _FRAME_BYTES + _NUMBER_BYTES * T,
            "flows_up": _FRAME_BYTES + _NUMBER_BYTES * T,
            "voltages_down": _FRAME_BYTES + _NUMBER_BYTES * T,
            "duals_up": _FRAME_BYTES + _NUMBER_BYTES * (T + 8),
            "prices_down": _FRAME_BYTES + _NUMBER_BYTES * (T + 6),
            "downlink": _FRAME_BYTES + _NUMBER_BYTES * (T + 4),
        }
        # A decision's first round also carries the head shares (T numbers) on the passes that move them.
        share_passes = ("uplink", "flows_up", "prices_down", "downlink") if self.head_share != "uniform" else ()
        self.first_message_bytes = {k: v + (_NUMBER_BYTES * T if k in share_passes else 0)
                                    for k, v in self.message_bytes.items()}

    # -- per decision ------------------------------------------------------------------------------
    def begin(self, grid: GridObservation, participants: Observation, *, active: np.ndarray) -> None:
        shift = 0 if self._time is None else int((grid.time - self._time) / self.spec.step)
        self._time = grid.time
        self.grid.begin(grid, shift=shift)
        self.participants.begin(participants, shift=shift)
        self.observation = participants
        self.active = np.asarray(active, dtype=bool)
        T = self.spec.horizon
        # Uplinks are changes from this decision's measured point: a participant not heard from yet counts as
        # carrying on as measured. The grid nodes' own messages recede with the horizon.
        self.heard_uplink[...] = 0.0
        for heard in (self.heard_flows, self.heard_volts):
            heard[...] = _shift_rows(heard, shift)
        self.heard_duals[:, :T] = _shift_rows(self.heard_duals[:, :T], shift)
        self.heard_prices[:, :T] = _shift_rows(self.heard_prices[:, :T], shift)
        self.heard_signal[:, :T] = _shift_rows(self.heard_signal[:, :T], shift)
        for heard in (self.heard_share_down, self.heard_share):
            heard[...] = _shift_rows(heard, shift)
        self.heard_prices[:, T + 2] = 0.0  # no stop heard yet in this decision
        self.heard_signal[:, T + 1] = 0.0
        self.heard_signal[:, T + 2] = 1.0  # a decision starts with a plain round
        self.rounds = 0
        self._last_balance = -10
        self.stats: dict[str, Any] = {"local_step_s": 0.0, "grid_s": 0.0}
        self.residuals = (np.inf, np.inf)

    def coordinate(self, round_index: int, delivery: RoundDelivery) -> RoundOutcome:
        T = self.spec.horizon
        sweeps, grid = self.sweeps, self.grid
        active = delivery.active & self.active
        # 1. Local steps on the last signal each participant heard; uplink of the net trajectories.
        t0 = time.perf_counter()
        self.participants.local_step(self.heard_signal[:, :T], self.heard_signal[:, T], active=active,
                                     alpha=self.heard_signal[:, T + 2], head_rho=self.heard_signal[:, T + 3],
                                     head_share=self.heard_share)
        t1 = time.perf_counter()
        sent = active & delivery.uplink
        if round_index == 0 and self.head_share != "uniform":
            self._shares_round(delivery, active)
        trajectories = self.participants.net_trajectories()
        self.heard_uplink[sent] = trajectories[sent]
        own = self._sum_by_node @ self.heard_uplink
        # 2.–3. Participants' share of every branch flow, then of every voltage.
        x_flow = sweeps.up(own, delivered=delivery.flows_up, heard=self.heard_flows)
        x_volt = sweeps.down(np.zeros(T), grid.a[:, None] * x_flow, delivered=delivery.voltages_down,
                             heard=self.heard_volts)
        # 4. Owners: adopt the ρ scale last heard from the root, arm, update, residuals.
        mu_heard = self.heard_prices[:, T + 3].copy()
        mu_heard[0] = self.mu
        grid.rescale(mu_heard)
        grid.arm(x_volt, x_flow, keep=round_index > 0)
        # Over-relaxation while only the feeder-head row is armed (as the root last said), except in a decision's
        # first round and where ρ just changed (a plain round restarts the participants' memory of the iterate).
        relax = self.heard_prices[:, T + 4].copy()
        relax[0] = self._relax
        alpha = np.where((round_index == 0) | grid.rho_changed, 1.0, relax)
        rows = grid.update(x_flow[0], x_volt, x_flow, alpha=alpha)
        # 5. Voltage duals and residuals up the tree.
        totals = sweeps.up(grid.duals_up_own(), delivered=delivery.duals_up, heard=self.heard_duals)
        # Each row's residuals against its own tolerance (absolute + relative to the row's size); the root takes
        # the largest ratio and the largest residuals (MW-equivalent, for the record).
        allowed = self.tolerance_mw + self.relative_tolerance * grid.scale_node
        floor = self.tolerance_mw
        own_resid = np.stack([grid.primal_node / allowed, grid.dual_node / allowed, grid.primal_node,
                              grid.dual_node, grid.scale_node, grid.price_node,
                              (grid.armed_v | grid.armed_l).astype(float)], axis=1)
        resid = sweeps.up(own_resid, delivered=delivery.duals_up, heard=self.heard_resid, combine="max")
        primal, dual = float(resid[0, 2]), float(resid[0, 3])
        converged = round_index > 0 and resid[0, 0] <= 1.0 and resid[0, 1] <= 1.0
        network_rows = bool(resid[0, 6] > 0)
        if network_rows:
            self._balance_network(round_index, primal, dual)
        else:
            self._balance(round_index, primal / max(float(resid[0, 4]), floor), dual / max(float(resid[0, 5]), floor))
        self._relax = 1.0 if network_rows else self.settings.relaxation
        # 6. Signals down; each node hands its own to its participants.
        root, step = grid.prices_down(totals)
        rho_head = float(grid.mu[0]) * self.settings.rho_eur_per_mw2  # the head row's ρ in this round's L
        root = np.concatenate([root, [1.0 if converged else 0.0, self.mu, self._relax, rho_head]])
        step = np.concatenate([step, np.zeros((sweeps.n_nodes, 4))], axis=1)
        values = sweeps.down(root, step, delivered=delivery.prices_down, heard=self.heard_prices)
        sigma, omega, load_w, stop = values[:, :T], values[:, T], values[:, T + 1], values[:, T + 2]
        rho_h = values[:, T + 5]
        node = self.spec.node_of_participant
        heard = delivery.downlink & active
        at = node[heard]
        self.heard_signal[heard, :T] = sigma[at]
        self.heard_signal[heard, T] = omega[at] + load_w[at] - rho_h[at]  # the network rows' part of W
        self.heard_signal[heard, T + 1] = stop[at]
        self.heard_signal[heard, T + 2] = alpha[at]
        self.heard_signal[heard, T + 3] = rho_h[at]
        if round_index == 0 and self.head_share != "uniform":
            self.heard_share[heard] = self.heard_share_down[at]
        self.silent = np.where(heard, 0, self.silent + 1)
        t2 = time.perf_counter()
        self.rounds = round_index + 1
        self.residuals = (primal, dual)
        self.stats["local_step_s"] += t1 - t0
        self.stats["grid_s"] += t2 - t1
        return RoundOutcome(
            primal_residual_mw=primal, dual_residual_mw=dual, converged=converged,
            message_bytes=MappingProxyType(dict(self.first_message_bytes if round_index == 0 else self.message_bytes)),
            diagnostics=MappingProxyType({"armed_voltage_rows": rows.armed_voltage,
                                          "armed_loading_rows": rows.armed_loading}),
        )

    def _shares_round(self, delivery: RoundDelivery, active: np.ndarray) -> None:
        """The head shares of this decision, on the first round's messages: every participant adds the sum of
        its assets' shares to its uplink, the nodes sum them up the tree with the flows, and the root's fleet
        mean f_t = Σ d_t / N (N the assets sharing the head row; 1 where nothing can move) goes down with the
        prices (its nodes keep it for the decision and pass it on with the first downlink)."""
        T = self.spec.horizon
        sent = active & delivery.uplink
        self.heard_share_uplink[sent] = self.participants.shares()[sent]
        own = self._sum_by_node @ self.heard_share_uplink
        total = self.sweeps.up(own, delivered=delivery.flows_up, heard=self.heard_share_flows)[0]
        f = np.where(total > 0, total / self.grid.n_assets, 1.0)
        self.sweeps.down(f, np.zeros((self.sweeps.n_nodes, T)), delivered=delivery.prices_down,
                         heard=self.heard_share_down)
        self.heard_share_down[0] = f

    def _balance(self, round_index: int, primal: float, dual: float) -> None:
        """Residual balancing at the root on the relative residuals (the primal one against the rows' sizes, the
        dual one against their scaled duals, so that both scale with ρ as in Boyd et al. §3.4.1): ρ grows by
        √(primal / dual) when that ratio is above 5 and shrinks by it below 1/5 (OSQP's rule; at most ×10 a step).
        Only in the first ``balance_rounds`` of a decision and a few rounds apart, so that ρ settles and ADMM's
        convergence guarantee applies to the rest."""
        if round_index >= self.balance_rounds or round_index - self._last_balance < _BALANCE_EVERY:
            return
        if not (primal > 0 and dual > 0):
            return
        ratio = primal / dual
        if not (ratio > 5.0 or ratio < 0.2):
            return
        factor = float(np.clip(np.sqrt(ratio), 0.1, 10.0))
        mu = float(np.clip(self.mu * factor, 1e-4, 1e4))
        if mu == self.mu:
            return
        self.mu = mu
        self._last_balance = round_index

    def _balance_network(self, round_index: int, primal: float, dual: float) -> None:
        """Residual balancing while network rows are armed: a primal residual far above the dual one means ρ is
        too small, and the reverse too large (τ = 2, ratio 10, every other round in the first
        ``network_balance_rounds``)."""
        if round_index >= self.network_balance_rounds or round_index - self._last_balance < 2:
            return
        if primal > 10 * dual and self.mu < 1e4:
            self.mu *= 2.0
        elif dual > 10 * primal and self.mu > 1e-4:
            self.mu /= 2.0
        else:
            return
        self._last_balance = round_index

    def dispatch(self) -> Dispatch:
        """Every active participant's first-period setpoints, the rest of the plan as the schedule; isolated
        participants' inverters on volt-var."""
        ids = self.spec.assets.index
        p = self.participants.p
        keep = self.active[self.participants.owner]
        periods = pd.date_range(self._time, periods=self.spec.horizon, freq=self.spec.step)
        p_mw = pd.Series(p[keep, 0], index=ids[keep], dtype=float)
        schedule = pd.DataFrame(p[keep, 1:], index=ids[keep], columns=periods[1:])
        isolated = self.silent >= self.isolation_rounds
        q_mvar = pd.Series(dtype=float)
        if self.volt_var and isolated.any():
            alone = keep & isolated[self.participants.owner] & self._is_pv_or_battery
            if alone.any():
                vm = self.observation.state.get("vm_pu")
                if vm is not None:
                    assets = self.spec.assets.loc[ids[alone]]
                    q_mvar = volt_var_q_mvar(assets, pd.Series(vm.loc[ids[alone]].to_numpy(float),
                                                              index=assets["bus"].to_numpy()).groupby(level=0).first())
        primal, dual = self.residuals
        return Dispatch(p_mw=p_mw, q_mvar=q_mvar, schedule_mw=schedule, diagnostics=MappingProxyType({
            "rounds": self.rounds, "primal_residual_mw": primal, "dual_residual_mw": dual, "rho_scale": self.mu,
            "isolated_participants": int((isolated & self.active).sum()),
            "local_step_s": self.stats["local_step_s"], "grid_s": self.stats["grid_s"],
            "edge_step_s": self.participants.edge_time_s,
        }))


def _shift_rows(a: np.ndarray, k: int) -> np.ndarray:
    if k <= 0 or a.shape[-1] == 0:
        return a
    kept = a[:, min(k, a.shape[-1] - 1):]
    return np.pad(kept, [(0, 0), (0, a.shape[-1] - kept.shape[-1])], mode="edge")
