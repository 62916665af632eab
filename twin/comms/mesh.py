"""Who is a mesh neighbour of whom: participants close to each other along the feeder.

Two participants are neighbours when their buses are at most ``hops`` lines/trafos apart, and consecutive
participants in depth-first order from the substation are always neighbours, so the mesh is connected the
way a radio mesh strung along a feeder would be.
"""

from __future__ import annotations

import networkx as nx
import pandapower as pp
import pandapower.topology as top
import pandas as pd

__all__ = ["mesh_neighbours"]


def mesh_neighbours(net: pp.pandapowerNet, assets: pd.DataFrame, *, hops: int = 2) -> dict[str, tuple[str, ...]]:
    graph = top.create_nxgraph(net, respect_switches=True, multi=False)
    bus_of: dict[str, set[int]] = {}
    for pid, bus in zip(assets["participant_id"].astype(str), assets["bus"].astype(int)):
        bus_of.setdefault(pid, set()).add(bus)
    participants = sorted(bus_of)
    slack = int(net.ext_grid.bus.iloc[0])
    order = {b: i for i, b in enumerate(nx.dfs_preorder_nodes(graph, slack))}
    at_bus: dict[int, set[str]] = {}
    for pid, buses in bus_of.items():
        for bus in buses:
            at_bus.setdefault(bus, set()).add(pid)
    links: dict[str, set[str]] = {p: set() for p in participants}
    # Participants within ``hops`` of each other: a bounded breadth-first search from each DER bus, then the
    # participants at the buses it reached (linear in the fleet, not quadratic).
    for bus, here in at_bus.items():
        for nearby in nx.single_source_shortest_path_length(graph, bus, cutoff=hops):
            for other in at_bus.get(nearby, ()):
                for pid in here:
                    if other != pid:
                        links[pid].add(other)
                        links[other].add(pid)
    chain = sorted(participants, key=lambda p: (min(order.get(b, 10**9) for b in bus_of[p]), p))
    for a, b in zip(chain, chain[1:]):
        links[a].add(b)
        links[b].add(a)
    return {p: tuple(sorted(links[p])) for p in participants}
