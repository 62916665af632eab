"""The feeder tree the DePIN grid nodes coordinate along, and its operating point (twin.grid.feeder_tree).

The operating point is read off a solved voltage vector; every branch quantity is checked against pandapower's
own results for the same net (flows at the node's end of each branch, loadings, the head exchange). The voltage
coefficients are a linearization: checked against the exact Jacobian's self-sensitivities (within 4 % on the LV
catalog feeders, measured: 1.5–3.7 %) and against an AC re-solve after a small change (within 5 %).
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pandapower as pp
import pytest

from grids.catalog import load_feeder
from twin.grid.fastpf import NetworkModel
from twin.grid.feeder_tree import FeederTreeModel
from twin.grid.injections import bus_injections
from twin.grid.sensitivity import compute_sensitivities

RADIAL = ["cigre-lv", "kerber-dorfnetz", "baran-wu-33", "simbench:1-LV-rural1--0-sw", "simbench:1-LV-urban6--0-sw"]
LV = ["cigre-lv", "kerber-dorfnetz", "simbench:1-LV-rural1--0-sw", "simbench:1-LV-urban6--0-sw"]


@functools.cache
def _solved(name: str) -> pp.pandapowerNet:
    net = load_feeder(name)
    pp.runpp(net, numba=False, tolerance_mva=1e-10)
    return net


def _tree_and_point(net: pp.pandapowerNet):
    model = NetworkModel.from_solved_net(net)
    tm = FeederTreeModel.build(model, net._ppc["internal"]["branch"])
    p, q = bus_injections(net)
    op = tm.operating_point(np.asarray(net._ppc["internal"]["V"]), p_bus_mw=p.to_numpy(), q_bus_mvar=q.to_numpy(),
                            time=None)
    return tm, op


@pytest.mark.parametrize("name", RADIAL)
def test_tree_is_breadth_first_from_the_slack_and_covers_every_energized_bus(name: str) -> None:
    net = _solved(name)
    tm, _ = _tree_and_point(net)
    tree = tm.tree
    assert tree.chords == ()  # radial in operation: every in-service branch is a tree edge
    assert tree.parent[0] == -1 and tree.depth[0] == 0
    assert np.all(tree.parent[1:] < np.arange(1, tree.n_nodes))  # parents come first
    assert np.all(tree.depth[1:] == tree.depth[tree.parent[1:]] + 1)
    energized = set(net.res_bus.index[net.res_bus.vm_pu.notna()])
    assert set(tree.node_of_bus) == energized
    assert tree.bus[0] in set(net.ext_grid.bus)
    assert sorted(np.concatenate(tree.levels()).tolist()) == list(range(tree.n_nodes))


@pytest.mark.parametrize("name", RADIAL)
def test_operating_point_equals_pandapowers_results(name: str) -> None:
    net = _solved(name)
    tm, op = _tree_and_point(net)
    tree = tm.tree
    assert op.head_p_mw == pytest.approx(net.res_ext_grid.p_mw.sum(), abs=1e-9)
    np.testing.assert_allclose(op.vm_pu, net.res_bus.vm_pu.loc[tree.bus].to_numpy(), atol=1e-9)
    for node in range(1, tree.n_nodes):
        kind, index = tree.branch[node].split(":")
        res = (net.res_line if kind == "line" else net.res_trafo).loc[int(index)]
        table = net.line if kind == "line" else net.trafo
        far = "to_bus" if kind == "line" else "lv_bus"
        near_end = "to" if kind == "line" else "lv"
        node_buses = {b for b, n in tree.node_of_bus.items() if n == node}
        # The node is one end of its branch; power into its subtree is minus what enters the branch there.
        if int(table.at[int(index), far]) in node_buses:
            expected = -res[f"p_{near_end}_mw"]
        else:
            expected = -res["p_from_mw" if kind == "line" else "p_hv_mw"]
        assert op.flow_p_mw[node] == pytest.approx(expected, abs=1e-9), tree.branch[node]
        assert op.loading_percent[node] == pytest.approx(res["loading_percent"], abs=1e-9), tree.branch[node]
        s_abs = abs(complex(op.flow_p_mw[node], op.flow_q_mvar[node]))
        if s_abs > 1e-6:
            assert op.loading_percent_per_mva[node] * s_abs == pytest.approx(res["loading_percent"], rel=1e-12)


@pytest.mark.parametrize("name", LV)
def test_voltage_coefficients_match_the_jacobian_self_sensitivities(name: str) -> None:
    """The path sum of the branch coefficients to a bus is d|V_bus|/dP_bus on a radial feeder; the exact value is
    the Jacobian's (twin.grid.sensitivity). DistFlow with the branches' own loss terms stays within 4 % of it."""
    net = _solved(name)
    tm, op = _tree_and_point(net)
    tree = tm.tree
    path = np.zeros(tree.n_nodes)
    for node in range(1, tree.n_nodes):
        path[node] = path[tree.parent[node]] + op.voltage_per_mw[node]
    exact = compute_sensitivities(net).dvm_dp_pu_per_mw
    jac = np.array([exact.at[tree.bus[n], tree.bus[n]] for n in range(1, tree.n_nodes)])
    assert np.all(path[1:] < 0)  # consuming more lowers every voltage
    assert np.max(np.abs(path[1:] - jac)) <= 0.04 * np.max(np.abs(jac))


def test_anchored_tree_model_predicts_an_ac_resolve() -> None:
    """10 kW more at the deepest bus of SimBench rural1: the tree predicts every voltage change, v0 + Σ_path a ΔF,
    within 5 % of what the AC power flow gives (the model is anchored at the measured point: no offset)."""
    net = copy.deepcopy(_solved("simbench:1-LV-rural1--0-sw"))
    tm, op = _tree_and_point(net)
    tree = tm.tree
    deepest = int(np.argmax(tree.depth))
    pp.create_load(net, bus=int(tree.bus[deepest]), p_mw=0.010)
    pp.runpp(net, numba=False, tolerance_mva=1e-10)
    on_path = np.zeros(tree.n_nodes, dtype=bool)
    node = deepest
    while node > 0:
        on_path[node] = True
        node = tree.parent[node]
    predicted = np.zeros(tree.n_nodes)
    for node in range(1, tree.n_nodes):  # the flow changes by 0.010 MW on every branch of the path
        predicted[node] = predicted[tree.parent[node]] + op.voltage_per_mw[node] * 0.010 * on_path[node]
    actual = net.res_bus.vm_pu.loc[tree.bus].to_numpy() - op.vm_pu
    assert actual[deepest] < -1e-3  # a change worth predicting
    np.testing.assert_allclose(predicted, actual, rtol=0, atol=0.05 * abs(actual[deepest]))


def test_meshed_feeder_keeps_a_spanning_tree_and_names_the_chords() -> None:
    net = copy.deepcopy(_solved("simbench:1-LV-rural1--0-sw"))
    tm, _ = _tree_and_point(net)
    deep = [int(b) for b in tm.tree.bus[np.argsort(tm.tree.depth)[-2:]]]
    line = pp.create_line_from_parameters(net, deep[0], deep[1], length_km=0.1, r_ohm_per_km=0.2, x_ohm_per_km=0.08,
                                          c_nf_per_km=0.0, max_i_ka=0.2)
    pp.runpp(net, numba=False)
    meshed, _ = _tree_and_point(net)
    assert meshed.tree.n_nodes == tm.tree.n_nodes
    assert len(meshed.tree.chords) == 1
    assert meshed.tree.chords[0].startswith("line:")
    assert f"line:{line}" in set(meshed.tree.branch) | set(meshed.tree.chords)
