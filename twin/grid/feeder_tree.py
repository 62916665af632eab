"""The feeder as a tree of grid nodes, and its operating point, for coordination along it.

Owns building ``controllers.coordination.FeederTree`` from pandapower's internal (ppci) network — one node per
energized internal bus, rooted at the slack, breadth first — and ``TreeOperatingPoint`` from a solved voltage
vector: branch flows into each subtree, loadings as pandapower defines them, and the LinDistFlow voltage
coefficient of every branch, ``d|V_node| / dP_subtree ≈ -(r (1 + 2rP/V²) + 2x²P/V²) / (|V_node| · S_base)``
(Baran & Wu's DistFlow linearized at the operating point, with the branch's own loss terms; 2–4 % from the
Jacobian's self-sensitivities on the LV catalog feeders, against 5–6 % for plain LinDistFlow). The coordination linearizes around the *measured* operating point, so only changes from it go
through the coefficients: the anchored model is exact at the operating point (tested against the Jacobian and
the AC power flow).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandapower.pypower.idx_brch import BR_R, BR_X

from controllers.coordination import FeederTree, TreeOperatingPoint
from twin.grid.fastpf import NetworkModel

__all__ = ["FeederTreeModel"]


@dataclass(frozen=True)
class FeederTreeModel:
    """A feeder tree with the index arrays that read its operating point off a solved voltage vector.

    ``internal[i]``: internal (ppci) bus of node i; ``branch[i]``: internal branch to the parent (-1 at the
    root); ``at_to_end[i]``: the node is the branch's "to" end; ``loading_row[i]``: the branch's position among
    lines followed by trafos (pandapower's loading order); ``r_pu`` / ``x_pu``: the branch's series impedance.
    """

    tree: FeederTree
    model: NetworkModel
    internal: np.ndarray
    branch: np.ndarray
    at_to_end: np.ndarray
    loading_row: np.ndarray
    r_pu: np.ndarray
    x_pu: np.ndarray

    @classmethod
    def build(cls, model: NetworkModel, branch_data: np.ndarray) -> FeederTreeModel:
        """The breadth-first tree of ``model`` rooted at its slack bus. ``branch_data`` is pandapower's internal
        branch matrix (``net._ppc["internal"]["branch"]`` after a solve). A meshed feeder keeps a spanning tree;
        the branches left out are named in ``FeederTree.chords``."""
        if model.ref.size != 1:
            raise ValueError(f"feeder tree: needs exactly one slack bus, the feeder has {model.ref.size}")
        n_branch = model.branch_from.size
        labels = [""] * n_branch
        row_of_branch = np.full(n_branch, -1, dtype=np.int64)
        n_line = len(model.line_index)
        for offset, kind, index, branches in ((0, "line", model.line_index, model.line_branch),
                                              (n_line, "trafo", model.trafo_index, model.trafo_branch)):
            for pos, (label, b) in enumerate(zip(index, branches)):
                if b >= 0:
                    labels[b] = f"{kind}:{label}"
                    row_of_branch[b] = offset + pos
        modelled = np.flatnonzero(row_of_branch >= 0)
        adjacency: list[list[tuple[int, int]]] = [[] for _ in range(model.n_bus)]
        for b in modelled:
            f, t = int(model.branch_from[b]), int(model.branch_to[b])
            adjacency[f].append((t, int(b)))
            adjacency[t].append((f, int(b)))
        root = int(model.ref[0])
        node_of_internal = np.full(model.n_bus, -1, dtype=np.int64)
        node_of_internal[root] = 0
        internal, parent, depth, branch = [root], [-1], [0], [-1]
        queue = deque([root])
        while queue:  # once per run: the tree is static
            bus = queue.popleft()
            for other, b in sorted(adjacency[bus]):
                if node_of_internal[other] >= 0:
                    continue
                node_of_internal[other] = len(internal)
                internal.append(other)
                parent.append(int(node_of_internal[bus]))
                depth.append(depth[parent[-1]] + 1)
                branch.append(b)
                queue.append(other)
        internal_a = np.asarray(internal, dtype=np.int64)
        branch_a = np.asarray(branch, dtype=np.int64)
        used = set(branch_a[1:].tolist())
        chords = tuple(sorted(labels[b] for b in modelled if int(b) not in used))
        energized = np.flatnonzero(model.bus_ppci >= 0)
        nodes = node_of_internal[model.bus_ppci[energized]]
        keep = nodes >= 0
        bus_labels = np.asarray(model.bus_index)[energized[keep]]
        node_of_bus = {int(b): int(nd) for b, nd in zip(bus_labels, nodes[keep])}
        first_bus = np.full(internal_a.size, -1, dtype=np.int64)
        for bus, node in sorted(node_of_bus.items(), reverse=True):
            first_bus[node] = bus
        tree = FeederTree(bus=first_bus, parent=np.asarray(parent, dtype=np.int64),
                          depth=np.asarray(depth, dtype=np.int64),
                          branch=tuple("" if b < 0 else labels[b] for b in branch_a), node_of_bus=node_of_bus,
                          chords=chords)
        safe = np.maximum(branch_a, 0)
        return cls(
            tree=tree, model=model, internal=internal_a, branch=branch_a,
            at_to_end=(model.branch_to[safe] == internal_a) & (branch_a >= 0),
            loading_row=np.where(branch_a >= 0, row_of_branch[safe], -1),
            r_pu=np.where(branch_a >= 0, branch_data[safe, BR_R].real.astype(float), 0.0),
            x_pu=np.where(branch_a >= 0, branch_data[safe, BR_X].real.astype(float), 0.0),
        )

    def operating_point(self, v: np.ndarray, *, p_bus_mw: np.ndarray, q_bus_mvar: np.ndarray,
                        time: pd.Timestamp) -> TreeOperatingPoint:
        """The operating point at internal voltages ``v`` (converged for these bus injections: pandapower bus
        order, MW / Mvar, load convention)."""
        model = self.model
        base = model.base_mva
        load = model.injection_map @ (np.asarray(p_bus_mw, float) + 1j * np.asarray(q_bus_mvar, float))
        b = np.maximum(self.branch, 0)
        node_v = v[self.internal]
        # Power into the node's side of its branch = minus what the node injects into the branch at its end.
        current = np.where(self.at_to_end, model.yt[b] @ v, model.yf[b] @ v)
        flow = -(node_v * np.conj(current)) * base
        flow[0] = 0.0
        line_loading, trafo_loading = model.branch_loading(v)
        loading = np.concatenate([line_loading, trafo_loading])[np.maximum(self.loading_row, 0)]
        loading[0] = np.nan
        # DistFlow linearized at the operating point: one more unit of subtree demand raises the branch's P by
        # 1 + 2rP/v² and its Q by 2xP/v² (its own losses), and the voltage drop by r dP + x dQ (per unit).
        vm_node = np.abs(node_v)
        p_pu = flow.real / base
        r, x = self.r_pu, self.x_pu
        voltage_per_mw = -(r * (1.0 + 2.0 * r * p_pu / vm_node**2) + 2.0 * x * x * p_pu / vm_node**2) / (vm_node * base)
        voltage_per_mw[0] = 0.0
        s_abs = np.abs(flow)
        # Current-based loading: at the operating point loading = k |S|; a branch carrying (almost) nothing
        # takes k from its rating, loading = coef |I| with |I| = |S| / |V| per unit.
        n_line = len(model.line_index)
        row = np.maximum(self.loading_row, 0)
        side = self.at_to_end.astype(int)
        coef = np.where(row < n_line, model.line_coef[np.minimum(row, max(n_line - 1, 0)), side] if n_line else np.nan,
                        model.trafo_coef[np.clip(row - n_line, 0, max(len(model.trafo_index) - 1, 0)), side]
                        if len(model.trafo_index) else np.nan)
        rated = coef / (np.abs(node_v) * base)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_mva = np.where(s_abs > 1e-6, loading / s_abs, rated)
        per_mva[0] = np.nan
        ref = int(model.ref[0])
        head = float((v[ref] * np.conj(model.ybus_ref @ v)).real.sum() * base + load[ref].real)
        return TreeOperatingPoint(
            time=time, vm_pu=np.abs(node_v), p_node_mw=load[self.internal].real,
            q_node_mvar=load[self.internal].imag, flow_p_mw=flow.real, flow_q_mvar=flow.imag,
            loading_percent=loading, loading_percent_per_mva=per_mva, voltage_per_mw=voltage_per_mw, head_p_mw=head,
        )
