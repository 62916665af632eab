"""The contract between the twin and a network of DePIN edge agents coordinating along the feeder tree.

A DePIN policy is a population: participant agents (one per participant, each seeing only its own assets and
its own connection point) and grid-owned nodes (one per bus of the feeder: the substation, cabinets, line
sensors) that own the feeder-head, voltage and branch-loading constraints and see only aggregates. Messages go
only between electrical neighbours: participant ↔ its bus node, node ↔ its parent node. The twin owns
everything here but the policy's arithmetic: it builds the tree and its operating point from the power flow,
builds each party's observation, and decides — for a whole round at once, as boolean arrays — which messages
arrive (``RoundDelivery``). A policy simulates all its parties in one object (vectorized), so it must honour
the delivery masks exactly: an undelivered message leaves the receiver with the last one it heard.

Orientation: node 0 is the root (the slack bus); nodes are in breadth-first order, so ``parent[i] < i``.
Every quantity on a node's *branch* refers to the branch between the node and its parent, with power flowing
into the node's subtree counted positive (load convention).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from controllers.api import Dispatch, NetworkLimits, Observation

__all__ = [
    "AgentNetwork",
    "AgentNetworkSpec",
    "FeederTree",
    "GridObservation",
    "ROUND_PASSES",
    "RoundDelivery",
    "RoundOutcome",
    "TreeOperatingPoint",
]

#: The message passes of one coordination round, in order. ``uplink``: participants → their bus node;
#: ``flows_up``: node → parent (subtree power); ``voltages_down``: parent → node (voltage change along the
#: path); ``duals_up``: node → parent (constraint prices summed over the subtree); ``prices_down``: parent →
#: node (locational price signal); ``downlink``: node → its participants.
ROUND_PASSES: tuple[str, ...] = ("uplink", "flows_up", "voltages_down", "duals_up", "prices_down", "downlink")


@dataclass(frozen=True)
class FeederTree:
    """The feeder as a rooted tree of grid nodes (static for a run).

    ``bus``: the pandapower bus label of each node (buses joined by closed bus-bus switches share a node; the
    first one names it). ``parent``: parent node (-1 for the root). ``depth``: hops from the root.
    ``branch``: label of the branch to the parent (``"line:<idx>"`` / ``"trafo:<idx>"``, ``""`` at the root).
    ``node_of_bus``: every energized pandapower bus → its node. ``chords``: branches left out to make a meshed
    feeder a tree (empty on radial feeders; their flows are not modelled by the coordination).
    """

    bus: np.ndarray
    parent: np.ndarray
    depth: np.ndarray
    branch: tuple[str, ...]
    node_of_bus: Mapping[int, int]
    chords: tuple[str, ...] = ()

    @property
    def n_nodes(self) -> int:
        return int(self.parent.size)

    @property
    def max_depth(self) -> int:
        return int(self.depth.max(initial=0))

    def levels(self) -> list[np.ndarray]:
        """Node indices by depth (level 0 = the root), each sorted."""
        order = np.argsort(self.depth, kind="stable")
        counts = np.bincount(self.depth, minlength=self.max_depth + 1)
        return np.split(order, np.cumsum(counts)[:-1])


@dataclass(frozen=True)
class TreeOperatingPoint:
    """What the grid nodes measured at the last power flow, and the linearization around it (per node).

    ``vm_pu``: voltage magnitude. ``p_node_mw`` / ``q_node_mvar``: bus injections at the node (load
    convention: consumption positive). Branch quantities (the branch to the parent; root entries 0 / NaN):
    ``flow_p_mw`` / ``flow_q_mvar`` into the subtree, ``loading_percent`` as pandapower reports it,
    ``loading_percent_per_mva`` (loading = this × |S| at the operating point), ``voltage_per_mw``: change of the
    node's voltage relative to its parent's per MW more flowing into the subtree (LinDistFlow, negative).
    ``head_p_mw``: feeder-head import.
    """

    time: pd.Timestamp
    vm_pu: np.ndarray
    p_node_mw: np.ndarray
    q_node_mvar: np.ndarray
    flow_p_mw: np.ndarray
    flow_q_mvar: np.ndarray
    loading_percent: np.ndarray
    loading_percent_per_mva: np.ndarray
    voltage_per_mw: np.ndarray
    head_p_mw: float


@dataclass(frozen=True)
class GridObservation:
    """What the grid-owned nodes see at ``time`` for the horizon: the tree, its operating point, the DSO's own
    forecast of the uncontrolled load per node over the horizon and its estimate of that load in the interval
    the operating point was measured in (aggregates, never a participant's DER data), prices, limits."""

    time: pd.Timestamp
    step: pd.Timedelta
    tree: FeederTree
    operating_point: TreeOperatingPoint
    base_load_node_mw: np.ndarray  # (horizon, n_nodes)
    base_load_node_measured_mw: np.ndarray  # (n_nodes,): at the operating point
    price_eur_per_mwh: np.ndarray  # (horizon,)
    feed_in_eur_per_mwh: float | None
    limits: NetworkLimits


@dataclass(frozen=True)
class AgentNetworkSpec:
    """What a DePIN population learns once per run.

    ``assets``: every participant's asset table (each participant's agent uses only its own rows);
    ``participants``: ids in a fixed order; ``node_of_participant``: the tree node each connects at.
    ``dask_client``: when the run spreads agents over processes or machines (``--agent-workers``), a
    ``distributed.Client`` whose workers may hold shares of the participants for the run; None = in-process.
    """

    assets: pd.DataFrame
    participants: tuple[str, ...]
    node_of_participant: np.ndarray
    tree: FeederTree
    step: pd.Timedelta
    horizon: int
    rounds: int
    limits: NetworkLimits = field(default_factory=NetworkLimits)
    dask_client: Any = None


@dataclass(frozen=True)
class RoundDelivery:
    """Which messages of one round arrive, pass by pass (see ``ROUND_PASSES``), drawn by the twin's comms model.

    ``uplink`` / ``downlink``: per participant (in ``AgentNetworkSpec.participants`` order); ``active``:
    participants that take part at all this round (not dropped out). The tree passes are per node, for the
    message on the node's branch (index 0, the root, has no branch and is always False).
    """

    active: np.ndarray
    uplink: np.ndarray
    flows_up: np.ndarray
    voltages_down: np.ndarray
    duals_up: np.ndarray
    prices_down: np.ndarray
    downlink: np.ndarray

    @classmethod
    def perfect(cls, n_participants: int, n_nodes: int) -> RoundDelivery:
        """Every message arrives (no faults)."""
        party, tree = np.ones(n_participants, dtype=bool), np.ones(n_nodes, dtype=bool)
        tree[0] = False
        return cls(active=party, uplink=party, flows_up=tree, voltages_down=tree, duals_up=tree, prices_down=tree,
                   downlink=party)


@dataclass(frozen=True)
class RoundOutcome:
    """What one round did: residuals (both in MW-equivalent), whether the stopping rule is met, and the wire
    size of one message of each pass (bytes), so the twin can count the traffic it delivered."""

    primal_residual_mw: float
    dual_residual_mw: float
    converged: bool
    message_bytes: Mapping[str, int]
    diagnostics: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@runtime_checkable
class AgentNetwork(Protocol):
    """A DePIN population stepped by the twin: ``reset`` once per run; per decision ``begin`` with every party's
    observation, then ``coordinate`` once per round until it converges or the round budget ends; ``dispatch``
    returns every active participant's setpoints (with their schedules)."""

    def reset(self, spec: AgentNetworkSpec, *, seed: int) -> None: ...

    def begin(self, grid: GridObservation, participants: Observation, *, active: np.ndarray) -> None: ...

    def coordinate(self, round_index: int, delivery: RoundDelivery) -> RoundOutcome: ...

    def dispatch(self) -> Dispatch: ...
