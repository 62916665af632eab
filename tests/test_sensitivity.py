"""Jacobian sensitivities must agree with finite differences of pandapower.runpp (1 kW / 1 kvar steps)."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pandapower as pp
import pandas as pd
import pytest

from grids.catalog import load_feeder
from twin.grid.fastpf import FastPowerFlow
from twin.grid.injections import bus_injections
from twin.grid.sensitivity import compute_sensitivities, sensitivities_at

STEP_MW = 0.001
REL_TOL = 1e-3


@functools.cache
def _solved(name: str) -> pp.pandapowerNet:
    net = load_feeder(name)
    pp.runpp(net, tolerance_mva=1e-12)
    return net


def _perturbed(net: pp.pandapowerNet, bus: int, *, p_mw: float, q_mvar: float) -> pp.pandapowerNet:
    changed = copy.deepcopy(net)
    pp.create_load(changed, bus=bus, p_mw=p_mw, q_mvar=q_mvar)
    pp.runpp(changed, tolerance_mva=1e-12)
    return changed


def _central_difference(net: pp.pandapowerNet, bus: int, *, reactive: bool) -> tuple[pd.Series, pd.Series]:
    """d vm / d (consumption) and d line-loading / d (consumption) at ``bus`` by +-1 kW (or kvar)."""
    step = {"p_mw": 0.0, "q_mvar": 0.0}
    step["q_mvar" if reactive else "p_mw"] = STEP_MW
    up = _perturbed(net, bus, **step)
    down = _perturbed(net, bus, **{key: -value for key, value in step.items()})
    return (
        (up.res_bus.vm_pu - down.res_bus.vm_pu) / (2 * STEP_MW),
        (up.res_line.loading_percent - down.res_line.loading_percent) / (2 * STEP_MW),
    )


def _relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    return float(np.max(np.abs(analytic - numeric)) / np.max(np.abs(numeric)))


@pytest.mark.parametrize("name", ["cigre-lv", "baran-wu-33"])
def test_matches_finite_differences_of_runpp(name: str) -> None:
    net = _solved(name)
    sens = compute_sensitivities(net)
    rng = np.random.default_rng(3)
    buses = rng.choice(net.load.bus.unique(), size=3, replace=False)
    line_labels = [f"line:{index}" for index in net.line.index]
    for bus in buses:
        dvm_dp, dloading_dp = _central_difference(net, bus, reactive=False)
        dvm_dq, _ = _central_difference(net, bus, reactive=True)
        assert _relative_error(sens.dvm_dp_pu_per_mw[bus].to_numpy(), dvm_dp.to_numpy()) < REL_TOL
        assert _relative_error(sens.dvm_dq_pu_per_mvar[bus].to_numpy(), dvm_dq.to_numpy()) < REL_TOL
        analytic = sens.dloading_dp_percent_per_mw.loc[line_labels, bus].to_numpy()
        assert _relative_error(analytic, dloading_dp.to_numpy()) < REL_TOL


def test_trafo_loading_sensitivity_matches_finite_difference() -> None:
    net = _solved("cigre-lv")
    bus = int(net.load.bus.iloc[0])
    sens = compute_sensitivities(net, monitored_buses=[], monitored_branches=["trafo:0"])
    up = _perturbed(net, bus, p_mw=STEP_MW, q_mvar=0.0)
    down = _perturbed(net, bus, p_mw=-STEP_MW, q_mvar=0.0)
    numeric = (up.res_trafo.loading_percent.loc[0] - down.res_trafo.loading_percent.loc[0]) / (2 * STEP_MW)
    assert sens.dloading_dp_percent_per_mw.loc["trafo:0", bus] == pytest.approx(numeric, rel=REL_TOL)


def test_signs_and_operating_point() -> None:
    net = _solved("baran-wu-33")
    sens = compute_sensitivities(net)
    slack = int(net.ext_grid.bus.iloc[0])
    # consuming more anywhere on a radial feeder without DER lowers every voltage; the slack is held
    others = sens.dvm_dp_pu_per_mw.drop(index=slack, columns=slack)
    assert (others.to_numpy() < 0).all()
    assert (sens.dvm_dp_pu_per_mw[slack] == 0).all() and (sens.dvm_dp_pu_per_mw.loc[slack] == 0).all()
    # the far end reacts more than a bus near the substation (Baran & Wu: bus 17 is the weakest)
    assert sens.dvm_dp_pu_per_mw.loc[17, 17] < sens.dvm_dp_pu_per_mw.loc[1, 1]
    pd.testing.assert_series_equal(sens.vm_pu, net.res_bus.vm_pu, check_names=False, atol=1e-12)
    labels = [f"line:{index}" for index in net.line.index]
    np.testing.assert_allclose(sens.loading_percent.loc[labels], net.res_line.loading_percent, atol=1e-9)
    p_bus_mw, q_bus_mvar = bus_injections(net)
    pd.testing.assert_series_equal(sens.p_bus_mw, p_bus_mw, check_names=False)
    assert sens.p_bus_mw.sum() == pytest.approx(3.715)  # Baran & Wu total demand, 3715 kW


def test_monitored_subset_equals_rows_of_the_full_result() -> None:
    net = _solved("cigre-lv")
    full = compute_sensitivities(net)
    buses = [4, 15, 30]
    branches = ["trafo:1", "line:5", "line:0"]
    subset = compute_sensitivities(net, monitored_buses=buses, monitored_branches=branches)
    assert list(subset.dvm_dp_pu_per_mw.index) == buses
    assert list(subset.dloading_dp_percent_per_mw.index) == branches
    pd.testing.assert_frame_equal(subset.dvm_dp_pu_per_mw, full.dvm_dp_pu_per_mw.loc[buses], atol=1e-12)
    pd.testing.assert_frame_equal(subset.dvm_dq_pu_per_mvar, full.dvm_dq_pu_per_mvar.loc[buses], atol=1e-12)
    pd.testing.assert_frame_equal(
        subset.dloading_dp_percent_per_mw, full.dloading_dp_percent_per_mw.loc[branches], atol=1e-12
    )


def test_fast_path_sensitivities_equal_the_pandapower_ones() -> None:
    net = _solved("kerber-dorfnetz")
    p_bus_mw, q_bus_mvar = bus_injections(net)
    fast = sensitivities_at(FastPowerFlow.from_net(net), p_bus_mw=p_bus_mw, q_bus_mvar=q_bus_mvar)
    reference = compute_sensitivities(net)
    # the fast path solves to 1e-9 MVA, the reference to 1e-12: operating points differ by ~1e-10 pu
    pd.testing.assert_frame_equal(fast.dvm_dp_pu_per_mw, reference.dvm_dp_pu_per_mw, rtol=0, atol=1e-7)
    pd.testing.assert_frame_equal(
        fast.dloading_dp_percent_per_mw, reference.dloading_dp_percent_per_mw, rtol=1e-6, atol=1e-7
    )


def test_isolated_buses_have_nan_rows_and_zero_columns() -> None:
    net = load_feeder("cigre-lv")
    net.line.loc[3, "in_service"] = False  # isolates buses 6..11, 17..19
    pp.runpp(net)
    sens = compute_sensitivities(net)
    assert sens.dvm_dp_pu_per_mw.loc[8].isna().all()
    energized = net.res_bus.vm_pu.notna()
    assert energized.sum() == len(net.bus) - 9
    assert (sens.dvm_dp_pu_per_mw.loc[energized, 8] == 0).all()  # injecting at an isolated bus changes nothing
    assert sens.dloading_dp_percent_per_mw.loc["line:3"].isna().all()
    assert sens.dvm_dp_pu_per_mw.loc[4].notna().all()


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="runpp"):
        compute_sensitivities(load_feeder("cigre-lv"))
    net = _solved("cigre-lv")
    with pytest.raises(ValueError, match="monitored_branches"):
        compute_sensitivities(net, monitored_branches=["cable:1"])
    with pytest.raises(ValueError, match="monitored_branches"):
        compute_sensitivities(net, monitored_branches=["line:9999"])
    with pytest.raises(ValueError, match="monitored_buses"):
        compute_sensitivities(net, monitored_buses=[9999])
