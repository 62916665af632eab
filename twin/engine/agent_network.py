"""How the twin steps a DePIN agent network (``controllers.coordination.AgentNetwork``) through one decision.

Owns what each party may see and what reaches it: the grid nodes get the feeder tree, its operating point from
the twin's last power flow and the DSO's forecast of the uncontrolled load per node; the participants get
their own assets' state (their own meters: SOC, EV energy, backlog, the voltage at their connection point) and
their own forecasts; the comms model draws every round's message fates (``CommsModel.draw_round``) and counts
the traffic. The network's arithmetic is the policy's; this module only sequences it.
"""

from __future__ import annotations

import copy
import time as wallclock
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import pandapower as pp
import pandas as pd
import scipy.sparse as sp

from controllers.api import Dispatch, Forecast, Observation
from controllers.coordination import AgentNetwork, AgentNetworkSpec, GridObservation
from twin.cluster import DaskCluster
from twin.grid.fastpf import NetworkModel
from twin.grid.feeder_tree import FeederTreeModel

#: The policy twin that owns this runner (``twin.engine.policy_twin.PolicyTwin``; not imported: it imports this).
PolicyTwin = Any

__all__ = ["AgentNetworkRunner", "is_agent_network"]


def is_agent_network(obj: object) -> bool:
    return isinstance(obj, AgentNetwork)


@dataclass
class AgentNetworkRunner:
    """One policy's agent network, its feeder tree and the index arrays that feed it."""

    network: AgentNetwork
    tree_model: FeederTreeModel
    spec: AgentNetworkSpec
    node_incidence: sp.csr_matrix  # (buses of base_load_bus_mw, nodes)
    participant_of_asset: np.ndarray  # position in spec.participants per asset
    stats: dict[str, Any]

    cluster: Any = None  # the Dask cluster the participants are spread over (``workers`` > 1), if any

    @classmethod
    def create(cls, network: AgentNetwork, twin: PolicyTwin, *, seed: int, workers: int = 1) -> AgentNetworkRunner:
        """The runner of ``network`` on ``twin``'s feeder; with ``workers`` > 1 the participants may be spread
        over a Dask cluster of that many local processes (``AgentNetworkSpec.dask_client``; call ``close``)."""
        inputs, scenario = twin.inputs, twin.scenario
        solved = copy.deepcopy(twin.grid.net)
        pp.runpp(solved, numba=False)  # the tree's topology and branch data (static for the run)
        tree_model = FeederTreeModel.build(NetworkModel.from_solved_net(solved), solved._ppc["internal"]["branch"])
        tree = tree_model.tree
        participants = tuple(twin.comms.participants)
        bus_of = inputs.assets.groupby(inputs.assets["participant_id"].astype(str))["bus"].first()
        missing = [p for p in participants if int(bus_of[p]) not in tree.node_of_bus]
        if missing:
            raise ValueError(f"policy {twin.name!r}: participant {missing[0]!r} is not on an energized bus")
        node_of_participant = np.array([tree.node_of_bus[int(bus_of[p])] for p in participants], dtype=np.int64)
        cluster = DaskCluster(workers=workers) if workers > 1 else None
        spec = AgentNetworkSpec(assets=inputs.assets.copy(), participants=participants,
                                node_of_participant=node_of_participant, tree=tree, step=scenario.step,
                                horizon=scenario.horizon_steps, rounds=scenario.comms.rounds, limits=twin.limits,
                                dask_client=cluster.open() if cluster is not None else None)
        try:
            network.reset(spec, seed=seed)
        except BaseException:
            if cluster is not None:
                cluster.close()
            raise
        buses = inputs.base_load_bus_mw.columns
        nodes = np.array([tree.node_of_bus.get(int(b), -1) for b in buses])
        on = nodes >= 0
        incidence = sp.csr_matrix((np.ones(int(on.sum())), (np.flatnonzero(on), nodes[on])),
                                  shape=(len(buses), tree.n_nodes))
        position = {p: i for i, p in enumerate(participants)}
        owner = inputs.assets["participant_id"].astype(str).map(position).to_numpy(dtype=np.int64)
        return cls(network=network, tree_model=tree_model, spec=spec, node_incidence=incidence,
                   participant_of_asset=owner, stats={}, cluster=cluster)

    def close(self) -> None:
        """Stop the Dask cluster the participants were spread over, if any."""
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def decide(self, twin: PolicyTwin, time: pd.Timestamp) -> tuple[Dispatch, pd.Series, int, dict[str, float]]:
        """Coordinate one decision; returns the dispatch, which assets it reached, the rounds used and the
        stage times (telemetry = building the views, optimize = the parties' arithmetic, coordinate = comms)."""
        t0 = wallclock.perf_counter()
        self._initial = twin.last_pf is None
        if self._initial:  # the operating point the grid nodes linearize at
            twin._initial_operating_point(time)
        active = twin.comms.active_mask(time, self.spec.participants)
        grid = self._grid_observation(twin, time)
        participants = self._participant_observation(twin, time)
        self.network.begin(grid, participants, active=active)
        t1 = wallclock.perf_counter()
        optimize_s = coordinate_s = 0.0
        rounds = 0
        n_nodes = self.spec.tree.n_nodes
        for r in range(self.spec.rounds):
            ta = wallclock.perf_counter()
            delivery = twin.comms.draw_round(time, active=active, n_nodes=n_nodes)
            tb = wallclock.perf_counter()
            outcome = self.network.coordinate(r, delivery)
            tc = wallclock.perf_counter()
            twin.comms.count_round(delivery, outcome.message_bytes)
            rounds = r + 1
            optimize_s += tc - tb
            coordinate_s += (tb - ta) + (wallclock.perf_counter() - tc)
            if outcome.converged:
                break
        dispatch = self.network.dispatch()
        unknown = dispatch.p_mw.index.difference(twin.inputs.assets.index)
        if len(unknown):
            raise ValueError(f"policy {twin.name!r}: the agent network dispatched unknown asset {unknown[0]!r}")
        delivered = pd.Series(active[self.participant_of_asset], index=twin.inputs.assets.index)
        delivered &= delivered.index.isin(dispatch.p_mw.dropna().index)
        diagnostics = dict(dispatch.diagnostics)
        diagnostics["field_round_s"] = self.field_round_seconds(twin)
        dispatch = Dispatch(p_mw=dispatch.p_mw, q_mvar=dispatch.q_mvar, schedule_mw=dispatch.schedule_mw,
                            diagnostics=MappingProxyType(diagnostics))
        return dispatch, delivered, rounds, {"telemetry": t1 - t0, "optimize": optimize_s, "coordinate": coordinate_s}

    def field_round_seconds(self, twin: PolicyTwin) -> float:
        """How long one round takes on real links: two hops between participants and their nodes, and four
        sweeps over the tree's depth, each hop at the mesh latency."""
        hops = 2 + 4 * self.spec.tree.max_depth
        return hops * twin.comms.mesh.latency.total_seconds()

    # -- what each side sees -------------------------------------------------------------------------
    def _grid_observation(self, twin: PolicyTwin, time: pd.Timestamp) -> GridObservation:
        v, p_bus, q_bus = twin.grid.operating_point()
        measured = twin._last_time if twin._last_time is not None else time
        op = self.tree_model.operating_point(v, p_bus_mw=p_bus, q_bus_mvar=q_bus, time=measured)
        inputs, T = twin.inputs, self.spec.horizon
        row = inputs.at(time)
        window = slice(row, row + T)
        base = twin._forecast_frame(inputs.base_load_bus_mw, window, time, "base")  # the DSO's own forecast
        base_node = np.asarray(self.node_incidence.T @ base.to_numpy(float).T).T
        # The DSO's estimate of the uncontrolled load in the interval the operating point was measured in (the
        # twin's initial operating point, before the first interval, is measured on that interval's loads).
        measured_row = row if self._initial else max(row - 1, 0)
        base_measured = self.node_incidence.T @ inputs.base_load_bus_mw.to_numpy(float)[measured_row]
        price = inputs.price_eur_per_mwh.to_numpy(float)[window]
        return GridObservation(time=time, step=twin.scenario.step, tree=self.spec.tree, operating_point=op,
                               base_load_node_mw=base_node, base_load_node_measured_mw=np.asarray(base_measured),
                               price_eur_per_mwh=price,
                               feed_in_eur_per_mwh=twin.scenario.tariff.feed_in_eur_per_mwh, limits=twin.limits)

    def _participant_observation(self, twin: PolicyTwin, time: pd.Timestamp) -> Observation:
        """Every participant's own view, side by side (each agent reads only its own rows): its assets' state
        as its meters measure it, the voltage at its connection point, and its own forecasts."""
        inputs, T = twin.inputs, self.spec.horizon
        state = twin._true_state(time)
        pf = twin.last_pf
        if pf is not None and pf.converged:
            state["vm_pu"] = pf.vm_pu.reindex(inputs.assets["bus"]).to_numpy(float)
        else:
            state["vm_pu"] = np.nan
        row = inputs.at(time)
        window = slice(row, row + T)
        forecast = Forecast(
            base_load_mw=pd.DataFrame(index=inputs.price_eur_per_mwh.index[window]),
            pv_avail_mw=twin._forecast_frame(inputs.pv_avail_mw, window, time, "pv"),
            flex_base_mw=twin._forecast_frame(inputs.flex_base_mw, window, time, "flex"),
            price_eur_per_mwh=inputs.price_eur_per_mwh.iloc[window],
        )
        return Observation(time=time, step=twin.scenario.step, assets=inputs.assets, state=state, forecast=forecast,
                           limits=twin.limits, grid=None, sensitivities=None,
                           signals=MappingProxyType({"feed_in_eur_per_mwh": twin.scenario.tariff.feed_in_eur_per_mwh}))
