"""Device physics, each case worked out by hand in the comments (15-minute step: h = 0.25 h)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from controllers.volt_var import volt_var_q_share
from twin.devices.physics import ClipReason, FleetPhysics

T0 = pd.Timestamp("2016-06-06 00:00", tz="UTC")
STEP = pd.Timedelta("15min")


def asset(kind: str, **kw: object) -> dict[str, object]:
    row = dict(kind=kind, bus=1, participant_id="p-1", p_max_mw=1.0, e_max_mwh=0.0, eta_charge=1.0,
               eta_discharge=1.0, soc_min=0.0, soc_max=1.0, soc_init=0.0, s_max_mva=1.0, v2g=False,
               flex_window=pd.Timedelta(0))
    row.update(kw)
    return row


def fleet(**rows: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("asset_id")


NO_SESSIONS = pd.DataFrame({"asset_id": pd.Series(dtype=str), "arrival": pd.Series(dtype="datetime64[ns, UTC]"),
                            "departure": pd.Series(dtype="datetime64[ns, UTC]"), "energy_mwh": pd.Series(dtype=float)})
EMPTY = pd.Series(dtype=float)


def step(phys: FleetPhysics, t: pd.Timestamp, p: dict[str, float], *, pv: dict[str, float] | None = None,
         flex: dict[str, float] | None = None):
    return phys.advance(t, p_setpoint_mw=pd.Series(p, dtype=float), q_setpoint_mvar=EMPTY,
                        pv_avail_mw=pd.Series(pv or {}, dtype=float), flex_base_mw=pd.Series(flex or {}, dtype=float))


@pytest.fixture
def battery() -> FleetPhysics:
    # 1 MW / 2 MWh, eta_c 0.9, eta_d 0.8, SOC window 10 %..90 % = 0.2..1.8 MWh, starts at 50 % = 1.0 MWh.
    a = fleet(bat=asset("battery", e_max_mwh=2.0, eta_charge=0.9, eta_discharge=0.8, soc_min=0.1, soc_max=0.9,
                        soc_init=0.5))
    return FleetPhysics(a, NO_SESSIONS, step=STEP)


def test_battery_charge_uses_charge_efficiency(battery: FleetPhysics) -> None:
    out = step(battery, T0, {"bat": 0.8})
    # 0.8 MW * 0.9 * 0.25 h = 0.18 MWh stored
    assert out.soc_mwh["bat"] == pytest.approx(1.18)
    assert out.clipped["bat"] == ""
    assert out.e_imp_mwh["bat"] == pytest.approx(0.2)


def test_battery_discharge_uses_discharge_efficiency(battery: FleetPhysics) -> None:
    out = step(battery, T0, {"bat": -1.0})
    # delivering 1 MW for 0.25 h takes 0.25 / 0.8 = 0.3125 MWh out of the battery
    assert out.soc_mwh["bat"] == pytest.approx(1.0 - 0.3125)
    assert out.e_exp_mwh["bat"] == pytest.approx(0.25)


def test_battery_rating_clip_is_recorded(battery: FleetPhysics) -> None:
    out = step(battery, T0, {"bat": 2.0})
    assert out.p_mw["bat"] == pytest.approx(1.0)
    assert out.p_requested_mw["bat"] == pytest.approx(2.0)
    assert out.clipped["bat"] == ClipReason.RATING
    assert out.soc_mwh["bat"] == pytest.approx(1.0 + 1.0 * 0.9 * 0.25)


def test_battery_soc_limit_clip(battery: FleetPhysics) -> None:
    for k in range(3):  # 3 x 0.225 MWh -> 1.675 MWh
        step(battery, T0 + k * STEP, {"bat": 1.0})
    out = step(battery, T0 + 3 * STEP, {"bat": 1.0})
    # room 1.8 - 1.675 = 0.125 MWh -> at most 0.125 / (0.9 * 0.25) = 0.5556 MW
    assert out.p_mw["bat"] == pytest.approx(0.125 / 0.225)
    assert out.clipped["bat"] == ClipReason.SOC
    assert out.soc_mwh["bat"] == pytest.approx(1.8)


def test_ev_session_unmet_energy_recorded_at_departure() -> None:
    a = fleet(ev=asset("ev_charger", p_max_mw=0.011, e_max_mwh=0.06, eta_charge=0.9))
    sessions = pd.DataFrame({"asset_id": ["ev"], "arrival": [T0], "departure": [T0 + 2 * STEP], "energy_mwh": [0.01]})
    phys = FleetPhysics(a, sessions, step=STEP)
    assert phys.state_frame(T0).loc["ev", "ev_connected"]
    out1 = step(phys, T0, {"ev": 0.05})  # clipped to 11 kW rating
    assert out1.p_mw["ev"] == pytest.approx(0.011)
    assert out1.clipped["ev"] == ClipReason.RATING
    out2 = step(phys, T0 + STEP, {"ev": 0.011})
    # delivered 2 * 0.011 * 0.9 * 0.25 = 0.00495 MWh of 0.01 -> 0.00505 unmet when it leaves at T0 + 30 min
    assert out1.ev_unmet_mwh == 0.0
    assert out2.ev_unmet_mwh == pytest.approx(0.01 - 0.00495)
    out3 = step(phys, T0 + 2 * STEP, {"ev": 0.011})
    assert out3.p_mw["ev"] == 0.0 and out3.clipped["ev"] == ClipReason.NOT_CONNECTED


def test_ev_stops_when_full_and_autonomous_charges_at_full_rate() -> None:
    a = fleet(ev=asset("ev_charger", p_max_mw=0.011, e_max_mwh=0.06))
    sessions = pd.DataFrame({"asset_id": ["ev"], "arrival": [T0], "departure": [T0 + 8 * STEP], "energy_mwh": [0.004]})
    phys = FleetPhysics(a, sessions, step=STEP)
    phys.state_frame(T0)
    auto = phys.autonomous_p_mw(pv_avail_mw=EMPTY, flex_base_mw=EMPTY)
    assert auto["ev"] == pytest.approx(0.011)  # need 0.004 MWh -> 0.016 MW would be needed, rate caps at 11 kW
    step(phys, T0, {"ev": 0.011})  # 0.00275 MWh delivered, 0.00125 left
    out = step(phys, T0 + STEP, {"ev": 0.011})
    assert out.p_mw["ev"] == pytest.approx(0.00125 / 0.25)
    assert out.clipped["ev"] == ClipReason.SOC


def test_flexible_load_defers_within_window_then_must_serve() -> None:
    # 4 kW request every interval; window 1 h = 4 intervals: a request made at T0 is due by T0 + 1 h.
    a = fleet(fl=asset("flex_load", p_max_mw=0.02, flex_window=pd.Timedelta("1h")))
    phys = FleetPhysics(a, NO_SESSIONS, step=STEP)
    base = {"fl": 0.004}
    for k in range(3):  # defer everything for 45 minutes
        out = step(phys, T0 + k * STEP, {"fl": 0.0}, flex=base)
        assert out.p_mw["fl"] == 0.0 and out.clipped["fl"] == ""
    state = phys.state_frame(T0 + 3 * STEP)
    assert state.loc["fl", "flex_backlog_mwh"] == pytest.approx(3 * 0.001)
    assert state.loc["fl", "flex_deadline"] == T0 + 4 * STEP  # T0's request must be done by T0 + 1 h
    # Fourth interval: T0's 0.001 MWh falls due -> at least 0.001 / 0.25 = 4 kW even though 0 was asked.
    out = step(phys, T0 + 3 * STEP, {"fl": 0.0}, flex=base)
    assert out.p_mw["fl"] == pytest.approx(0.004)
    assert out.clipped["fl"] == ClipReason.DEADLINE
    assert out.flex_unserved_mwh == 0.0
    # Serving more than request + backlog is clipped to it: 4 kW + 3 * 1 kWh / 0.25 h = 16 kW.
    out = step(phys, T0 + 4 * STEP, {"fl": 0.02}, flex=base)
    assert out.p_mw["fl"] == pytest.approx(0.016)
    assert phys.state_frame(T0 + 5 * STEP).loc["fl", "flex_backlog_mwh"] == pytest.approx(0.0)


def test_flexible_energy_is_conserved() -> None:
    a = fleet(fl=asset("flex_load", p_max_mw=0.02, flex_window=pd.Timedelta("2h")))
    phys = FleetPhysics(a, NO_SESSIONS, step=STEP)
    rng = np.random.default_rng(3)
    requested = served = 0.0
    for k in range(40):
        b = float(rng.uniform(0, 0.006))
        out = step(phys, T0 + k * STEP, {"fl": float(rng.choice([0.0, 0.005, 0.02]))}, flex={"fl": b})
        requested += b * 0.25
        served += out.p_mw["fl"] * 0.25
        assert out.flex_unserved_mwh == 0.0  # 20 kW always suffices to catch up
    backlog = phys.state_frame(T0 + 40 * STEP).loc["fl", "flex_backlog_mwh"]
    assert served + backlog == pytest.approx(requested)


def test_pv_curtailment_and_clip() -> None:
    a = fleet(pv=asset("pv", p_max_mw=0.01, s_max_mva=0.01))
    phys = FleetPhysics(a, NO_SESSIONS, step=STEP)
    out = step(phys, T0, {"pv": -0.004}, pv={"pv": 0.006})
    # produces 4 of 6 kW available: 2 kW * 0.25 h = 0.5 kWh curtailed
    assert out.p_mw["pv"] == pytest.approx(-0.004)
    assert out.pv_curtailed_mwh == pytest.approx(0.0005)
    out = step(phys, T0 + STEP, {"pv": -0.009}, pv={"pv": 0.006})
    assert out.p_mw["pv"] == pytest.approx(-0.006) and out.clipped["pv"] == ClipReason.AVAILABLE
    out = step(phys, T0 + 2 * STEP, {"pv": 0.003}, pv={"pv": 0.006})  # PV cannot consume
    assert out.p_mw["pv"] == 0.0 and out.clipped["pv"] == ClipReason.AVAILABLE


@pytest.mark.parametrize(
    ("vm", "share"),
    [(0.90, 0.44), (0.92, 0.44), (0.95, 0.22), (0.98, 0.0), (1.00, 0.0), (1.02, 0.0), (1.05, -0.22), (1.08, -0.44), (1.10, -0.44)],
)
def test_volt_var_ieee1547_category_b_points(vm: float, share: float) -> None:
    assert volt_var_q_share(vm) == pytest.approx(share)
