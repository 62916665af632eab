"""Physics before payment: false telemetry is caught by state estimation, honest telemetry is not."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import numpy as np
import pandas as pd
import pandapower as pp
import pytest
from pandapower.estimation import estimate

import grids
from twin.grid.powerflow import GridModel, PowerFlowResult
from twin.grid.verification import (
    FeederVerifier,
    MeasurementSigmas,
    participant_buses_of,
    reported_bus_injections,
    verify_interval,
)

CIGRE = "cigre-lv"
RURAL = "simbench:1-LV-rural1--0-sw"
# cigre-lv: alice (bus 18, R17) and bob (bus 16, R15) on the same residential LV network, carol's PV in the
# commercial network (bus 40, C17). Rural: alice bus 9, bob bus 13, carol bus 5.
FLEETS = {
    CIGRE: [("bat-a", "battery", 18, "alice"), ("bat-b", "battery", 16, "bob"), ("pv-c", "pv", 40, "carol")],
    RURAL: [("bat-a", "battery", 9, "alice"), ("bat-b", "battery", 13, "bob"), ("pv-c", "pv", 5, "carol")],
}
#: True powers, load convention: both batteries discharge 20 kW, the PV produces 10 kW.
TRUE_P_MW = pd.Series({"bat-a": -0.020, "bat-b": -0.020, "pv-c": -0.010})


def fleet(rows: list[tuple[str, str, int, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"asset_id": aid, "kind": kind, "bus": bus, "participant_id": pid, "p_max_mw": 0.03, "e_max_mwh": 0.05,
          "eta_charge": 0.95, "eta_discharge": 0.95, "soc_min": 0.1, "soc_max": 0.9, "soc_init": 0.5,
          "s_max_mva": 0.03, "v2g": False, "flex_window": pd.Timedelta(0)} for aid, kind, bus, pid in rows]
    ).set_index("asset_id")


@dataclasses.dataclass
class Solved:
    grid: GridModel
    assets: pd.DataFrame
    measured: PowerFlowResult
    verifier: FeederVerifier

    def books(self, scale: dict[str, float]) -> tuple[pd.Series, pd.Series]:
        """The DSO's per-bus books when asset ``a`` reports ``scale[a]`` x its true power."""
        reported = TRUE_P_MW * pd.Series(scale, dtype=float).reindex(TRUE_P_MW.index).fillna(1.0)
        return reported_bus_injections(self.grid.net, asset_bus=self.assets["bus"], true_p_mw=TRUE_P_MW,
                                       reported_p_mw=reported)

    def verify(self, scale: dict[str, float], **kwargs: object) -> object:
        p_books, q_books = self.books(scale)
        return self.verifier.verify(measured=self.measured, reported_p_mw=p_books, reported_q_mvar=q_books,
                                    participant_buses=participant_buses_of(self.assets), **kwargs)


def solve(name: str, rows: list[tuple[str, str, int, str]]) -> Solved:
    net = grids.load_feeder(name)
    assets = fleet(rows)
    grid = GridModel(net, assets)
    grid.set_injections(load_p_mw=net.load.p_mw, load_q_mvar=net.load.q_mvar, sgen_p_mw=net.sgen.p_mw,
                        asset_p_mw=TRUE_P_MW.reindex(assets.index), asset_q_mvar=pd.Series(0.0, index=assets.index))
    measured = grid.solve()
    assert measured.converged
    return Solved(grid, assets, measured, FeederVerifier.from_net(grid.net))


@pytest.fixture(scope="module", params=[CIGRE, RURAL])
def solved(request: pytest.FixtureRequest) -> Solved:
    return solve(request.param, FLEETS[request.param])


def test_honest_telemetry_flags_nobody(solved: Solved) -> None:
    result = solved.verify({})
    assert not result.failed
    assert result.flagged == frozenset()
    assert not result.bad_data_detected
    assert result.chi2 < 1e-2 < result.chi2_threshold  # exact telemetry: J is numerical noise only
    # The estimate reproduces the books: the discharging batteries' buses carry -20 kW plus native load.
    p_books, _ = solved.books({})
    bus_a = int(solved.assets.at["bat-a", "bus"])
    assert result.estimated_p_mw[bus_a] == pytest.approx(p_books[bus_a], abs=1e-5)


@pytest.mark.parametrize("scale, discrepancy_mw", [(0.5, 0.010), (0.0, 0.020), (2.0, -0.020)])
def test_a_participant_misreporting_its_battery_is_flagged_alone(solved: Solved, scale: float,
                                                                  discrepancy_mw: float) -> None:
    # alice's battery discharges 20 kW; she reports 10 kW, 0 kW or 40 kW. Reported minus true is then
    # +10 kW, +20 kW (claims more consumption) or -20 kW (claims delivery the grid never saw).
    result = solved.verify({"bat-a": scale})
    assert not result.failed
    assert result.flagged == {"alice"}  # bob and carol report honestly and are not flagged
    assert result.bad_measurements[0] == ("p_mw", int(solved.assets.at["bat-a", "bus"]))
    assert result.discrepancy_p_mw["alice"] == pytest.approx(discrepancy_mw, abs=2e-4)
    assert result.normalized_residuals.max() >= 3.0


def test_overclaiming_is_caught_on_cigre_without_ambiguity() -> None:
    s = solve(CIGRE, FLEETS[CIGRE])
    result = s.verify({"bat-b": 2.0})
    assert result.flagged == {"bob"} and result.ambiguous == frozenset()
    assert result.discrepancy_p_mw["bob"] == pytest.approx(-0.020, abs=2e-4)


def test_two_participants_on_one_bus_are_flagged_together_as_ambiguous() -> None:
    # dave's 20 kW battery sits on alice's bus 18: the network sees one bus injection, not two claims.
    rows = [*FLEETS[CIGRE], ("bat-d", "battery", 18, "dave")]
    s = solve(CIGRE, rows)
    p_books, q_books = reported_bus_injections(
        s.grid.net, asset_bus=s.assets["bus"], true_p_mw=TRUE_P_MW,
        reported_p_mw=TRUE_P_MW.mul(pd.Series({"bat-a": 0.0}), fill_value=1.0))
    result = s.verifier.verify(measured=s.measured, reported_p_mw=p_books, reported_q_mvar=q_books,
                               participant_buses=participant_buses_of(s.assets))
    assert result.flagged == {"alice", "dave"}
    assert result.ambiguous == {"alice", "dave"}


def test_a_trusted_bus_is_never_attributed_to_its_participant() -> None:
    s = solve(CIGRE, FLEETS[CIGRE])
    result = s.verify({"bat-a": 0.0}, trusted_buses=[18])
    assert result.bad_data_detected
    assert result.flagged == frozenset()


def test_a_failed_power_flow_flags_nobody_and_says_so() -> None:
    s = solve(CIGRE, FLEETS[CIGRE])
    nan = np.full(len(s.grid.net.bus), np.nan)
    diverged = dataclasses.replace(s.measured, vm=nan, p_head_mw=float("nan"), converged=False)
    p_books, q_books = s.books({"bat-a": 0.0})
    result = s.verifier.verify(measured=diverged, reported_p_mw=p_books, reported_q_mvar=q_books,
                               participant_buses=participant_buses_of(s.assets))
    assert result.failed and result.flagged == frozenset()
    assert "did not converge" in result.reason


def test_estimator_non_convergence_flags_nobody_and_does_not_raise() -> None:
    s = solve(RURAL, FLEETS[RURAL])
    p_books, q_books = s.books({"bat-a": 0.0})
    # One WLS iteration from the measured start cannot meet the 1e-7 state tolerance.
    result = verify_interval(s.grid.net, measured=s.measured, reported_p_mw=p_books, reported_q_mvar=q_books,
                             participant_buses=participant_buses_of(s.assets), max_iterations=1)
    assert result.failed and result.flagged == frozenset()
    assert "did not converge" in result.reason
    # The same call with the default iteration budget does catch alice.
    assert verify_interval(s.grid.net, measured=s.measured, reported_p_mw=p_books, reported_q_mvar=q_books,
                           participant_buses=participant_buses_of(s.assets)).flagged == {"alice"}


def test_fast_path_matches_pandapower_estimate_on_the_same_measurements() -> None:
    # The verifier refills pandapower's converted model in place; pandapower's public estimate() on a net
    # carrying the same measurements (create_measurement, load convention) must give the same state.
    s = solve(RURAL, FLEETS[RURAL])
    sig = MeasurementSigmas()
    p_books, q_books = s.books({"bat-a": 0.0})  # a bad claim, so the estimate is not trivially exact
    verifier = FeederVerifier.from_net(s.grid.net, threshold=np.inf)  # first estimate only, no removal
    result = verifier.verify(measured=s.measured, reported_p_mw=p_books, reported_q_mvar=q_books,
                             participant_buses=participant_buses_of(s.assets))
    net = copy.deepcopy(s.grid.net)
    slack = int(net.ext_grid.bus.iloc[0])
    participants = set(s.assets["bus"].astype(int))
    with_elements = set(net.load.bus) | set(net.sgen.bus) | set(net.storage.bus)
    for bus in net.bus.index:
        pp.create_measurement(net, "v", "bus", float(s.measured.vm_pu[bus]), sig.vm_pu, element=bus)
        if bus == slack:
            p, q, sp, sq = -s.measured.p_head_mw, -s.measured.q_head_mvar, sig.head_p_mw, sig.head_q_mvar
        else:
            p, q = float(p_books[bus]), float(q_books[bus])
            sp = sq = sig.participant_p_mw if bus in participants else (
                sig.known_p_mw if bus in with_elements else 1e-5)
        pp.create_measurement(net, "p", "bus", p, sp, element=bus)
        pp.create_measurement(net, "q", "bus", q, sq, element=bus)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert estimate(net, algorithm="wls", init="flat", zero_injection=None, tolerance=1e-9)["success"]
    np.testing.assert_allclose(result.estimated_p_mw.sort_index().to_numpy(),
                               net.res_bus_est.p_mw.sort_index().to_numpy(), atol=1e-6)
    assert result.chi2 > result.chi2_threshold  # and alice's 20 kW lie is visible to the chi-square test


def test_reported_books_replace_true_asset_power_by_the_report() -> None:
    s = solve(CIGRE, FLEETS[CIGRE])
    true_books, _ = s.books({})
    lying_books, _ = s.books({"bat-a": 0.5})
    diff = lying_books - true_books
    assert diff[18] == pytest.approx(0.010)  # -0.010 reported instead of -0.020
    assert diff.drop(18).abs().max() == 0.0
    # Native load R17 (0.03325 MW) and alice's -0.020 MW discharge share bus 18.
    assert true_books[18] == pytest.approx(0.03325 - 0.020)
