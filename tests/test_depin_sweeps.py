"""Message passing along the feeder tree (controllers.depin.sweeps) and the grid nodes' signal arithmetic.

The sweeps are checked against a plain per-node, per-message loop (the slow path as the oracle), with random
trees, random message loss and the receivers' stale copies carried over rounds. The locational signal σ and the
weight W that the sweeps deliver are checked against their definitions written out densely:
σ_a = Σ_k ρ_k A_ka s_k and W_a = Σ_k ρ_k A_ka² with A_ka = 1 (head), 1 for the loading rows on a's path, and
the path sum of the voltage coefficients to the lowest common ancestor (voltage rows).
"""

from __future__ import annotations

import numpy as np
import pytest

from controllers.coordination import FeederTree
from controllers.depin.sweeps import TreeSweeps


def random_tree(n: int, rng: np.random.Generator) -> FeederTree:
    parent = np.array([-1] + [int(rng.integers(0, i)) for i in range(1, n)])
    depth = np.zeros(n, dtype=np.int64)
    for i in range(1, n):
        depth[i] = depth[parent[i]] + 1
    # breadth-first renumbering, as FeederTreeModel builds it (parents first, levels contiguous)
    order = np.lexsort((np.arange(n), depth))
    new = np.empty(n, dtype=np.int64)
    new[order] = np.arange(n)
    parent_bfs = np.array([-1 if parent[o] < 0 else new[parent[o]] for o in order])
    return FeederTree(bus=np.arange(n), parent=parent_bfs, depth=depth[order], branch=("",) + ("line:0",) * (n - 1),
                      node_of_bus={i: i for i in range(n)})


def oracle_up(tree: FeederTree, own: np.ndarray, delivered: np.ndarray, heard: np.ndarray) -> np.ndarray:
    total = own.copy()
    for node in sorted(range(1, tree.n_nodes), key=lambda i: -tree.depth[i]):  # deepest first
        if delivered[node]:
            heard[node] = total[node]
        total[tree.parent[node]] += heard[node]
    return total


def oracle_down(tree: FeederTree, root: np.ndarray, step: np.ndarray, delivered: np.ndarray,
                heard: np.ndarray) -> np.ndarray:
    value = np.zeros_like(step)
    value[0] = root
    for node in sorted(range(1, tree.n_nodes), key=lambda i: tree.depth[i]):
        if delivered[node]:
            heard[node] = value[tree.parent[node]]
        value[node] = heard[node] + step[node]
    return value


@pytest.mark.parametrize("seed", range(5))
def test_sweeps_equal_a_per_message_loop_with_loss_and_stale_copies(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tree = random_tree(40, rng)
    sweeps = TreeSweeps.of(tree)
    heard_up, heard_up_ref = np.zeros((40, 3)), np.zeros((40, 3))
    heard_dn, heard_dn_ref = np.zeros((40, 3)), np.zeros((40, 3))
    for _ in range(4):  # rounds: what was heard carries over
        own = rng.normal(size=(40, 3))
        lost = rng.random(40) < 0.3
        got = sweeps.up(own, delivered=~lost, heard=heard_up)
        np.testing.assert_allclose(got, oracle_up(tree, own, ~lost, heard_up_ref), atol=1e-12)
        np.testing.assert_allclose(heard_up, heard_up_ref, atol=1e-12)
        step, root = rng.normal(size=(40, 3)), rng.normal(size=3)
        lost = rng.random(40) < 0.3
        got = sweeps.down(root, step, delivered=~lost, heard=heard_dn)
        np.testing.assert_allclose(got, oracle_down(tree, root, step, ~lost, heard_dn_ref), atol=1e-12)


def test_max_combine_and_exact_sums() -> None:
    tree = random_tree(25, np.random.default_rng(3))
    sweeps = TreeSweeps.of(tree)
    own = np.arange(25, dtype=float)[:, None]
    assert sweeps.subtree_sum(own)[0, 0] == pytest.approx(own.sum())
    every = np.ones(25, dtype=bool)
    assert sweeps.up(own, delivered=every, heard=np.zeros_like(own), combine="max")[0, 0] == 24.0
    # path sums: depth when every step is 1 (the root's own step included)
    assert np.array_equal(sweeps.path_sum(np.ones((25, 1)))[:, 0], tree.depth + 1.0)


def test_grid_signal_and_weight_equal_their_dense_definitions() -> None:
    """σ and W through the sweeps (GridNodes.prices_down over the duals-up totals) against the dense sums."""
    from controllers.api import NetworkLimits
    from controllers.depin.grid_nodes import GridNodes, GridSettings

    rng = np.random.default_rng(11)
    n, T = 30, 4
    tree = random_tree(n, rng)
    sweeps = TreeSweeps.of(tree)
    grid = GridNodes(sweeps=sweeps, assets_at_node=np.ones(n), horizon=T, hours=0.25, settings=GridSettings())
    grid.limits = NetworkLimits()
    a = np.r_[0.0, -rng.uniform(0.01, 0.2, n - 1)]
    grid.a = a
    grid.R = sweeps.path_sum(a[:, None])[:, 0]
    grid.R_parent = np.r_[0.0, grid.R[tree.parent[1:]]]
    grid.rho_v = np.r_[0.0, rng.uniform(1, 5, n - 1)]
    grid.rho_l = rng.uniform(1, 5, n)
    grid.armed_v = rng.random(n) < 0.5
    grid.armed_v[0] = False
    grid.armed_l = rng.random(n) < 0.5
    grid.armed_l[0] = False
    grid.s_v, grid.s_l, grid.s_head = rng.normal(size=(n, T)), rng.normal(size=(n, T)), rng.normal(size=T)
    totals = sweeps.subtree_sum(grid.duals_up_own())
    root, step = grid.prices_down(totals)
    values = sweeps.path_sum(np.vstack([root, step[1:]]))
    sigma, weight = values[:, :T], values[:, T] + values[:, T + 1]

    ancestors = [{0}]
    for node in range(1, n):
        ancestors.append(ancestors[tree.parent[node]] | {node})
    rho_h = grid.settings.rho_eur_per_mw2
    for node in range(n):  # an asset at ``node``
        s_expected = rho_h * grid.s_head.copy()
        w_expected = rho_h
        for k in range(1, n):
            if grid.armed_l[k] and k in ancestors[node]:  # branch k is on the asset's path
                s_expected += grid.rho_l[k] * grid.s_l[k]
                w_expected += grid.rho_l[k]
            if grid.armed_v[k]:
                common = ancestors[node] & ancestors[k]
                coefficient = sum(a[c] for c in common)  # R at the lowest common ancestor
                s_expected += grid.rho_v[k] * coefficient * grid.s_v[k]
                w_expected += grid.rho_v[k] * coefficient**2
        np.testing.assert_allclose(sigma[node], s_expected, rtol=1e-12, atol=1e-12)
        assert weight[node] == pytest.approx(w_expected, rel=1e-12)
