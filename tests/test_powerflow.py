"""The twin's power flow against references nobody here wrote, and the load-convention boundary."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pandapower as pp
import pandapower.networks as pn
import pytest

import grids
from twin.grid.powerflow import GridModel

EMPTY_FLEET = pd.DataFrame(columns=["kind", "bus", "participant_id", "p_max_mw", "e_max_mwh", "eta_charge",
                                    "eta_discharge", "soc_min", "soc_max", "soc_init", "s_max_mva", "v2g",
                                    "flex_window"]).rename_axis("asset_id")


def solve_as_is(net: pp.pandapowerNet) -> object:
    model = GridModel(net, EMPTY_FLEET)
    n = model.net
    model.set_injections(load_p_mw=n.load.p_mw, load_q_mvar=n.load.q_mvar, sgen_p_mw=n.sgen.p_mw,
                         asset_p_mw=pd.Series(dtype=float), asset_q_mvar=pd.Series(dtype=float))
    return model.solve()


def test_baran_wu_33_bus_base_case_matches_the_published_result() -> None:
    # Baran & Wu (1989): losses 202.68 kW, minimum voltage 0.9131 pu at the 18th bus.
    result = solve_as_is(grids.load_feeder("baran-wu-33"))
    assert result.converged
    assert result.losses_mw * 1e3 == pytest.approx(202.68, abs=0.5)
    assert result.vm_pu.min() == pytest.approx(0.9131, abs=0.001)
    assert result.vm_pu.idxmin() == 17  # 0-based index of the 18th bus


@pytest.mark.parametrize("name", ["cigre-lv", "cigre-mv-der", "kerber-dorfnetz", "baran-wu-33", "ieee-eu-lv",
                                  "simbench:1-LV-rural1--0-sw"])
def test_twin_power_flow_equals_runpp_on_catalog_feeders(name: str) -> None:
    net = grids.load_feeder(name)
    reference = copy.deepcopy(net)
    pp.runpp(reference, numba=False)
    result = solve_as_is(net)
    # DESIGN §6 tolerance; both solve to pandapower's default mismatch, so they agree to ~1e-7 pu.
    np.testing.assert_allclose(result.vm_pu.to_numpy(), reference.res_bus.vm_pu.to_numpy(), atol=1e-6)
    assert result.p_head_mw == pytest.approx(float(reference.res_ext_grid.p_mw.sum()), abs=1e-6)


def test_fleet_powers_enter_pandapower_in_the_right_sign() -> None:
    # A producing PV (-0.02 MW, load convention) and a charging battery (+0.01 MW) on CIGRE LV must give
    # the same power flow as plain pandapower loads of -0.02 and +0.01 MW at those buses.
    net = grids.load_feeder("cigre-lv")
    fleet = pd.DataFrame(
        {"kind": ["pv", "battery"], "bus": [net.load.bus.iloc[0], net.load.bus.iloc[1]], "participant_id": ["a", "b"],
         "p_max_mw": [0.03, 0.01], "e_max_mwh": [0.0, 0.02], "eta_charge": [1.0, 0.95], "eta_discharge": [1.0, 0.95],
         "soc_min": [0.0, 0.1], "soc_max": [1.0, 0.9], "soc_init": [0.0, 0.5], "s_max_mva": [0.03, 0.01],
         "v2g": [False, False], "flex_window": [pd.Timedelta(0)] * 2},
        index=pd.Index(["pv-1", "bat-1"], name="asset_id"),
    )
    model = GridModel(net, fleet)
    model.set_injections(load_p_mw=net.load.p_mw, load_q_mvar=net.load.q_mvar, sgen_p_mw=net.sgen.p_mw,
                         asset_p_mw=pd.Series({"pv-1": -0.02, "bat-1": 0.01}),
                         asset_q_mvar=pd.Series({"pv-1": 0.0, "bat-1": 0.0}))
    result = model.solve()
    reference = copy.deepcopy(net)
    pp.create_load(reference, bus=int(fleet.bus.iloc[0]), p_mw=-0.02)
    pp.create_load(reference, bus=int(fleet.bus.iloc[1]), p_mw=0.01)
    pp.runpp(reference, numba=False)
    np.testing.assert_allclose(result.vm_pu.to_numpy(), reference.res_bus.vm_pu.to_numpy(), atol=1e-9)
    # And the PV did raise the voltage at its bus compared with no fleet at all.
    base = solve_as_is(net)
    assert result.vm_pu[fleet.bus.iloc[0]] > base.vm_pu[fleet.bus.iloc[0]]


def test_models_of_one_feeder_share_its_parts_but_not_their_state() -> None:
    net = grids.load_feeder("cigre-lv")
    first, second = GridModel(net, EMPTY_FLEET, engine="fast"), GridModel(net, EMPTY_FLEET, engine="fast")
    assert first._template is second._template and first.fast is not second.fast
    first.set_injections(load_p_mw=net.load.p_mw * 2, load_q_mvar=net.load.q_mvar * 2, sgen_p_mw=net.sgen.p_mw,
                         asset_p_mw=pd.Series(dtype=float), asset_q_mvar=pd.Series(dtype=float))
    doubled = first.solve()
    as_is = solve_as_is(net)
    # the second model (and the source net) never saw the first one's injections
    assert first.net.load.p_mw.sum() == pytest.approx(2 * net.load.p_mw.sum())
    assert second.net.load.p_mw.sum() == pytest.approx(net.load.p_mw.sum())
    assert doubled.vm_pu.min() < as_is.vm_pu.min() - 1e-3
    # the same net edited in place is a new snapshot: it gets its own parts
    net.load["p_mw"] *= 1.5
    scaled = GridModel(net, EMPTY_FLEET)
    assert scaled._template is not first._template
    net.line.loc[net.line.index[-1], "length_km"] *= 2
    assert GridModel(net, EMPTY_FLEET)._template not in (first._template, scaled._template)


def test_non_converged_power_flow_is_reported_not_raised() -> None:
    net = pn.case33bw()
    model = GridModel(net, EMPTY_FLEET)
    model.set_injections(load_p_mw=net.load.p_mw * 50, load_q_mvar=net.load.q_mvar * 50, sgen_p_mw=net.sgen.p_mw,
                         asset_p_mw=pd.Series(dtype=float), asset_q_mvar=pd.Series(dtype=float))
    result = model.solve()
    assert not result.converged
    assert result.vm_pu.isna().all() and np.isnan(result.p_head_mw)
