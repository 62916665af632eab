"""Message passing along the feeder tree, for every node at once: sums up the tree and path sums down it.

Each sweep moves one message per branch, level by level (the deepest first going up, the root first going
down), vectorized over the nodes of a level. Delivery is decided by the twin (a boolean per node's branch);
a receiver that did not get this round's message uses the last one it got on that branch (``heard``, kept by
the caller between rounds), which is what a real node would do with a lost packet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from controllers.coordination import FeederTree

__all__ = ["TreeSweeps"]


@dataclass(frozen=True)
class TreeSweeps:
    """The tree's levels and parents, indexed once; ``up`` and ``down`` move (n_nodes, k) arrays.

    Each level's nodes are kept sorted by parent, with the start of every parent's run of children, so that
    summing children into parents is one ``np.add.reduceat`` per level rather than a scatter per element.
    """

    parent: np.ndarray
    levels: tuple[np.ndarray, ...]  # node indices per depth, sorted by parent; levels[0] = [0]
    parents_of_level: tuple[np.ndarray, ...]  # the distinct parents of each level's nodes
    run_starts: tuple[np.ndarray, ...]  # where each of those parents' children start in the level

    @classmethod
    def of(cls, tree: FeederTree) -> TreeSweeps:
        levels = [np.asarray(level) for level in tree.levels()]
        if levels[0].tolist() != [0]:
            raise ValueError("feeder tree: node 0 must be the only root")
        sorted_levels, parents, starts = [levels[0]], [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        for level in levels[1:]:
            level = level[np.argsort(tree.parent[level], kind="stable")]
            p = tree.parent[level]
            first = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])
            sorted_levels.append(level)
            parents.append(p[first])
            starts.append(first)
        return cls(parent=tree.parent, levels=tuple(sorted_levels), parents_of_level=tuple(parents),
                   run_starts=tuple(starts))

    @property
    def n_nodes(self) -> int:
        return int(self.parent.size)

    def up(self, own: np.ndarray, *, delivered: np.ndarray, heard: np.ndarray,
           combine: str = "sum") -> np.ndarray:
        """Subtree totals: every node sends ``own + (what it heard from its children)`` to its parent.

        ``heard[c]`` is the parent's copy of child c's last delivered message (updated in place where
        ``delivered[c]``). ``combine="max"`` aggregates maxima instead of sums (residuals). Returns each node's
        total (its own value combined with its children's delivered or stale messages).
        """
        total = np.array(own, dtype=float, copy=True)
        reduce = np.add if combine == "sum" else np.maximum
        for depth in range(len(self.levels) - 1, 0, -1):
            nodes = self.levels[depth]
            arrived = nodes[delivered[nodes]]
            heard[arrived] = total[arrived]
            parents = self.parents_of_level[depth]
            total[parents] = reduce(total[parents], reduce.reduceat(heard[nodes], self.run_starts[depth], axis=0))
        return total

    def down(self, root: np.ndarray, step: np.ndarray, *, delivered: np.ndarray, heard: np.ndarray) -> np.ndarray:
        """Path sums from the root: node value = (its parent's value, as last heard) + ``step`` at the node.

        ``root``: the root's value (shape of one row); ``step``: (n_nodes, k), the increment each node adds for
        itself (its own branch's term). ``heard[c]``: c's copy of its parent's last delivered message.
        """
        value = np.empty_like(np.asarray(step, dtype=float))
        value[0] = root
        for nodes in self.levels[1:]:
            arrived = nodes[delivered[nodes]]
            heard[arrived] = value[self.parent[arrived]]
            value[nodes] = heard[nodes] + step[nodes]
        return value

    def subtree_sum(self, own: np.ndarray) -> np.ndarray:
        """Exact subtree totals (no messages lost): for data the grid side already has (static counts,
        its own load forecast)."""
        every = np.ones(self.n_nodes, dtype=bool)
        return self.up(own, delivered=every, heard=np.zeros_like(np.asarray(own, dtype=float)))

    def path_sum(self, step: np.ndarray) -> np.ndarray:
        """Exact sums of ``step`` over the path from the root to each node (the root's own step included)."""
        every = np.ones(self.n_nodes, dtype=bool)
        step = np.asarray(step, dtype=float)
        return self.down(step[0], step, delivered=every, heard=np.zeros_like(step))
