"""Per-phase sensitivities (twin.grid.phase_sensitivity) on the IEEE European LV feeder: their linear prediction
of a few kW moved on single phases matches pandapower's own runpp_3ph (an independent solver) to second order,
and their signs are the physics of a wye-connected LV feeder."""

from __future__ import annotations

import numpy as np
import pytest

from grids.catalog import load_feeder
from twin.grid.fast3ph import FastThreePhase
from twin.grid.phase_sensitivity import phase_sensitivities
from twin.grid.three_phase import ReferenceThreePhase

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def feeder():
    net = load_feeder("ieee-eu-lv")
    rng = np.random.default_rng(3)
    pos = net.bus.index.get_indexer(net.load["bus"])
    p = np.zeros((len(net.bus), 3))
    np.add.at(p, (pos, rng.integers(0, 3, len(pos))), rng.uniform(1e-3, 4e-3, len(pos)))
    q = p * 0.33
    loads = net.load["bus"].to_numpy()
    points = [(int(loads[i]), "abc"[i % 3]) for i in rng.choice(len(loads), size=6, replace=False)]
    return net, p, q, points


def test_a_few_kw_on_single_phases_are_predicted_to_second_order(feeder) -> None:
    net, p, q, points = feeder
    sens = phase_sensitivities(FastThreePhase.from_net(net), p, q, points)
    dp = np.array([0.004, -0.002, 0.003, 0.0, 0.005, -0.001])  # MW: a few kW up and down

    def moved(scale: float) -> np.ndarray:
        out = p.copy()
        for (bus, phase), d in zip(points, dp):
            out[net.bus.index.get_loc(bus), "abc".index(phase)] += scale * d
        return out

    exact = ReferenceThreePhase.from_net(net).solve(np.stack([p, moved(1.0), moved(0.5)]), np.stack([q, q, q]))
    assert exact.converged.all()
    assert np.abs(exact.vm_pu[0] - sens.vm_pu).max() < 1e-6  # the operating point is pandapower's
    change = np.abs(exact.vm_pu[1] - exact.vm_pu[0]).max()
    error = np.abs(exact.vm_pu[1] - sens.predict_vm(dp)).max()
    half = np.abs(exact.vm_pu[2] - sens.predict_vm(dp / 2)).max()
    assert change > 1e-2 and error < 0.03 * change, (change, error)  # measured: 0.0191 pu, 0.00036 pu
    assert half < 0.3 * error  # second order: half the step, a quarter of the error
    vuf_change = np.abs(exact.vuf_percent[1] - exact.vuf_percent[0]).max()
    vuf_error = np.abs(exact.vuf_percent[1] - sens.predict_vuf(dp)).max()
    assert vuf_change > 0.1 and vuf_error < 0.05 * vuf_change, (vuf_change, vuf_error)  # measured: 0.229, 0.0048


def test_consuming_on_a_phase_lowers_that_phase_most(feeder) -> None:
    net, p, q, points = feeder
    sens = phase_sensitivities(FastThreePhase.from_net(net), p, q, points)
    for k, (bus, phase) in enumerate(points):
        row, f = net.bus.index.get_loc(bus), "abc".index(phase)
        own = sens.dvm_dp[k, row]
        assert own[f] < 0 and own[f] == own.min()  # its own phase drops, more than the others
        assert (sens.dvm_dp[k, :, f] <= 1e-9).all()  # and nowhere on the feeder does that phase rise


def test_bad_points_are_named(feeder) -> None:
    net, p, q, _ = feeder
    solver = FastThreePhase.from_net(net)
    with pytest.raises(ValueError, match="bus 'nowhere' is not a bus of the feeder"):
        phase_sensitivities(solver, p, q, [("nowhere", "a")])
    with pytest.raises(ValueError, match=r"points\[0\]: phase 'd' must be"):
        phase_sensitivities(solver, p, q, [(int(net.bus.index[5]), "d")])
    with pytest.raises(ValueError, match="delta_mw=0"):
        phase_sensitivities(solver, p, q, [(int(net.bus.index[5]), 0)], delta_mw=0)
