"""The array-native engine against its slow references (STYLE.md rule 11): the per-asset loops it replaced, the
whole-array numpy versions of its compiled kernels, a groupby for the meters, plain observations, and the stepped
path for the open-loop replay."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import make_scenario
from controllers.api import Observation
from controllers.baseline import PeakShaver
from controllers.testing import check_controller
from controllers.volt_var import volt_var_q_mvar
from twin.commands import CommandChannel, OperatorCommand
from twin.devices.physics import FleetPhysics
from twin.engine import PolicyTwin, iterate_policies
from twin.engine.metering import Meters
from twin.engine.observe import LazyObservation
from twin.inputs import build_inputs
from twin.records.recorder import PolicyRecords, Recorder

T0 = pd.Timestamp("2016-06-06 00:00", tz="UTC")
STEP = pd.Timedelta("15min")
H = 0.25
TOL = 1e-9


# -- the per-asset loops the physics had (the oracle) -----------------------------------------------------------

def flex_deadline_loop(buckets: np.ndarray, window: np.ndarray, time: pd.Timestamp) -> list[pd.Timestamp]:
    deadlines = []
    for i in range(len(buckets)):
        nonzero = np.nonzero(buckets[i] > 1e-9)[0]
        if len(nonzero) == 0:
            deadlines.append(pd.NaT)
        else:
            deadlines.append(time + (int(window[i]) - 1 - int(nonzero.max())) * STEP)
    return deadlines


def flex_due_loop(buckets: np.ndarray, window: np.ndarray, flex: np.ndarray, base: np.ndarray) -> np.ndarray:
    due = np.zeros(len(buckets))
    for i in np.nonzero(flex)[0]:
        w = int(window[i])
        due[i] = base[i] * H if w == 1 else buckets[i, w - 2]
    return due


def serve_flex_loop(buckets: np.ndarray, window: np.ndarray, flex: np.ndarray, p: np.ndarray,
                    base: np.ndarray) -> float:
    unserved = 0.0
    for i in np.nonzero(flex)[0]:
        w = int(window[i])
        pending = np.concatenate([[base[i] * H], buckets[i, : w - 1]])
        served = p[i] * H
        for age in range(w - 1, -1, -1):
            take = min(served, pending[age])
            pending[age] -= take
            served -= take
        unserved += float(pending[w - 1])
        buckets[i, : w - 1] = pending[: w - 1]
    return unserved


def random_fleet(rng: np.random.Generator, n: int = 24) -> pd.DataFrame:
    kinds = rng.choice(["pv", "battery", "ev_charger", "flex_load"], size=n)
    e_max = np.where(kinds == "battery", rng.uniform(0.005, 0.02, n), np.where(kinds == "ev_charger", 0.06, 0.0))
    return pd.DataFrame({
        "kind": kinds, "bus": 1, "participant_id": [f"p-{i % 5}" for i in range(n)],
        "p_max_mw": rng.uniform(0.003, 0.012, n), "e_max_mwh": e_max,
        "eta_charge": rng.uniform(0.85, 1.0, n), "eta_discharge": rng.uniform(0.85, 1.0, n),
        "soc_min": 0.1, "soc_max": 0.9, "soc_init": rng.uniform(0.1, 0.9, n), "s_max_mva": rng.uniform(0.004, 0.015, n),
        "v2g": rng.random(n) < 0.5,
        "flex_window": [pd.Timedelta(minutes=int(m)) for m in rng.choice([0, 15, 60, 120, 240], size=n)],
    }, index=pd.Index([f"a{i}" for i in range(n)], name="asset_id"))


def random_sessions(assets: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    evs = assets.index[assets["kind"] == "ev_charger"]
    rows = []
    for k in range(40):
        arrival = T0 + int(rng.integers(0, 80)) * STEP
        rows.append({"asset_id": rng.choice(evs), "arrival": arrival,
                     "departure": arrival + int(rng.integers(1, 20)) * STEP, "energy_mwh": rng.uniform(0.002, 0.03)})
    return pd.DataFrame(rows).sort_values("arrival").reset_index(drop=True)


def inputs_at(assets: pd.DataFrame, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(assets)
    kind = assets["kind"].to_numpy()
    return {"p_setpoint": rng.normal(0, 0.01, n) * rng.choice([0.0, 1.0, 3.0], n),
            "q_setpoint": rng.normal(0, 0.005, n),
            "pv_avail": np.where(kind == "pv", rng.uniform(0, 0.012, n), 0.0),
            "flex_base": np.where(kind == "flex_load", rng.uniform(0, 0.005, n), 0.0)}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_vectorized_flex_rules_equal_the_per_asset_loops(seed: int) -> None:
    rng = np.random.default_rng(seed)
    phys = FleetPhysics(random_fleet(rng), random_sessions(random_fleet(rng), rng)[:0], step=STEP)
    flex = phys.is_kind["flex_load"]
    for k in range(60):
        t = T0 + k * STEP
        phys.flex_buckets[flex] = np.where(rng.random(phys.flex_buckets[flex].shape) < 0.5,
                                           rng.uniform(0, 0.002, phys.flex_buckets[flex].shape), 0.0)
        # columns past a load's window are never written
        cols = np.arange(phys.flex_buckets.shape[1])[None, :]
        phys.flex_buckets[cols >= np.maximum(phys.flex_window_steps - 1, 0)[:, None]] = 0.0
        base = np.where(flex, rng.uniform(0, 0.004, len(flex)), 0.0)
        p = np.where(flex, rng.uniform(0, 0.012, len(flex)), 0.0)
        expected = pd.to_datetime(flex_deadline_loop(phys.flex_buckets, phys.flex_window_steps, t), utc=True)
        got = pd.DatetimeIndex(phys.flex_deadline_ns(t).view("datetime64[ns]")).tz_localize("UTC")
        assert got.equals(pd.DatetimeIndex(expected))
        np.testing.assert_allclose(phys._flex_due_mwh(base),
                                   flex_due_loop(phys.flex_buckets, phys.flex_window_steps, flex, base), atol=1e-15)
        oracle = phys.flex_buckets.copy()
        unserved_loop = serve_flex_loop(oracle, phys.flex_window_steps, flex, p, base)
        unserved = phys._serve_flex(p, base)
        assert unserved == pytest.approx(unserved_loop, abs=1e-15)
        np.testing.assert_allclose(phys.flex_buckets, oracle, atol=1e-15)


@pytest.mark.parametrize("seed", [4, 5])
def test_compiled_physics_equals_the_numpy_reference(seed: int) -> None:
    """Two fleets stepped side by side for a day of random setpoints: kernel vs whole-array numpy."""
    rng = np.random.default_rng(seed)
    assets = random_fleet(rng)
    sessions = random_sessions(assets, rng)
    fast, slow = FleetPhysics(assets, sessions, step=STEP), FleetPhysics(assets, sessions, step=STEP)
    codes = set()
    for k in range(96):
        t = T0 + k * STEP
        x = inputs_at(assets, rng)
        for name in ("soc_mwh", "ev_connected", "ev_energy_needed_mwh", "flex_backlog_mwh", "e_imp_mwh"):
            np.testing.assert_allclose(fast.state_arrays(t)[name].astype(float),
                                       slow.state_arrays_numpy(t)[name].astype(float), atol=1e-15, err_msg=name)
        for name in ("ev_departure", "flex_deadline"):
            np.testing.assert_array_equal(fast.state_arrays(t)[name], slow.state_arrays_numpy(t)[name])
        np.testing.assert_allclose(fast.autonomous(pv_avail=x["pv_avail"], flex_base=x["flex_base"]),
                                   slow.autonomous_numpy(pv_avail=x["pv_avail"], flex_base=x["flex_base"]), atol=1e-15)
        a, b = fast.advance_arrays(t, **x), slow.advance_arrays_numpy(t, **x)
        for field in ("p", "q", "p_requested", "soc", "e_imp", "e_exp"):
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), atol=1e-15, err_msg=field)
        np.testing.assert_array_equal(a.clip_code, b.clip_code)
        for field in ("pv_curtailed_mwh", "ev_unmet_mwh", "flex_unserved_mwh"):
            assert getattr(a, field) == pytest.approx(getattr(b, field), abs=1e-15)
        codes |= set(a.clipped)
    assert {"", "rating", "soc", "available", "not_connected"} <= codes  # the random day exercised the rules


def test_a_state_capture_is_its_own_interval_even_when_read_late() -> None:
    rng = np.random.default_rng(7)
    assets = random_fleet(rng)
    phys = FleetPhysics(assets, random_sessions(assets, rng), step=STEP)
    for k in range(10):
        phys.advance_arrays(T0 + k * STEP, **inputs_at(assets, rng))
    t = T0 + 10 * STEP
    capture = phys.capture_state(t)
    now = copy.deepcopy(phys).state_arrays(t)
    phys.advance_arrays(t, **inputs_at(assets, rng))  # the devices move on before anyone reads the capture
    late = capture.arrays()
    for name, values in now.items():
        np.testing.assert_array_equal(late[name], values, err_msg=name)


def test_meters_by_incidence_equal_the_groupby() -> None:
    rng = np.random.default_rng(8)
    assets = random_fleet(rng)
    load_index = pd.Index([3, 0, 7, 5, 2])
    meters = Meters.create(load_index=load_index, assets=assets)
    load_p = pd.Series(rng.uniform(0, 0.01, len(load_index)), index=load_index)
    asset_p = pd.Series(rng.normal(0, 0.01, len(assets)), index=assets.index)
    own_load = load_p.groupby(meters.load_owner.reindex(load_p.index)).sum()
    own_assets = asset_p.groupby(meters.asset_owner.reindex(asset_p.index)).sum()
    expected = (own_load.reindex(meters.participants, fill_value=0.0)
                + own_assets.reindex(meters.participants, fill_value=0.0)) * 1e3
    got = meters.net_kw_arrays(load_p_mw=load_p.to_numpy(), asset_p_mw=asset_p.to_numpy())
    np.testing.assert_allclose(got, expected.to_numpy(), atol=1e-12)
    pd.testing.assert_series_equal(meters.net_kw(load_p_mw=load_p, asset_p_mw=asset_p), expected, check_names=False)


def test_setpoints_and_volt_var_equal_the_labelled_rules(rural_day) -> None:
    """The engine's compiled setpoint pass = held setpoints, else the autonomous default with volt-var Q."""
    scenario, inputs = rural_day
    s = make_scenario(power_flow={"engine": "fast"})
    twin = PolicyTwin.create(s.controllers[1], inputs, s)
    for t in s.times[:50]:
        twin.step(t)
    t = s.times[50]
    vm = twin.last_pf.vm_pu
    row = twin.arrays.row(t)
    pv, flex = twin.arrays.pv_avail(row), twin.arrays.flex_base(row)
    planned, valid = twin._held_setpoints(t)
    p_expected = np.where(valid, planned, twin.physics.autonomous_numpy(pv_avail=pv, flex_base=flex))
    q_expected = np.where(valid, twin.held_q, volt_var_q_mvar(inputs.assets, vm).to_numpy())
    parts = twin.advance_devices(t)
    np.testing.assert_allclose(parts.outcome.p_requested, p_expected, atol=1e-15)
    np.testing.assert_array_equal(parts.valid, valid)
    np.testing.assert_allclose(twin.volt_var_q(twin.last_pf.vm), volt_var_q_mvar(inputs.assets, vm).to_numpy(),
                               atol=1e-15)
    clipped = twin.physics.clip_q(parts.outcome.p, q_expected)
    np.testing.assert_allclose(parts.outcome.q, clipped, atol=1e-15)


# -- observations -------------------------------------------------------------------------------------------------

def test_a_lazy_observation_reads_copies_and_pickles_as_a_plain_one(rural_day) -> None:
    scenario, inputs = rural_day
    built: list[str] = []
    obs = LazyObservation(time=T0, step=STEP, build={"state": lambda: built.append("state") or pd.DataFrame({"x": [1]})})
    assert isinstance(obs, Observation) and built == []
    assert obs.state["x"].iloc[0] == 1 and obs.state is obs.state and built == ["state"]
    plain = pickle.loads(pickle.dumps(obs))
    assert type(plain) is Observation and plain.state.equals(obs.state) and plain.time == T0
    assert type(copy.deepcopy(obs)) is Observation
    assert dataclasses.replace(obs, signals={"a": 1}).signals == {"a": 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        obs.time = T0  # type: ignore[misc]
    # the twin's observations pass the plug-in checker like plain ones
    twin = PolicyTwin.create(scenario.controllers[1], inputs, scenario)
    observations = [twin.observe_for_test(t) for t in scenario.times[:3]]
    check_controller(PeakShaver, _spec(twin), observations)


def _spec(twin: PolicyTwin):
    from controllers.api import ControllerSpec

    return ControllerSpec(assets=twin.inputs.assets.copy(), step=twin.scenario.step,
                          horizon=twin.scenario.horizon_steps, limits=twin.limits)


# -- open-loop replay ---------------------------------------------------------------------------------------------

def _records(scenario, inputs, *, open_loop: bool, run_dir: Path | None = None) -> tuple[dict[str, PolicyRecords], list]:
    recorder, steps = Recorder(step=scenario.step), []
    for records in iterate_policies(scenario, inputs, run_dir=run_dir, open_loop=open_loop):
        recorder.add(records)
        steps.append(records)
    return recorder.freeze(), steps


def test_open_loop_replay_equals_the_stepped_path(tmp_path: Path) -> None:
    """No control, a rule-based peak shaver and a central schedule (with an outage), settled into ledgers, on
    the fast engine with enough PV that the inverters' volt-var engages: every table agrees to 1e-9 (pu, MW,
    EUR; loadings relative)."""
    settlement = {"contracts": [{"participant": "p-0", "rules": [
        {"kind": "capacity_payment", "name": "capacity", "committed_kw": "6", "price_per_kw_month": "4.00"}]}]}
    s = make_scenario(power_flow={"engine": "fast"}, settlement=settlement,
                      fleet={"pv_penetration": 2.5, "battery_share": 0.4, "ev_share": 0.4, "flex_share": 0.3},
                      faults=[{"kind": "control_centre_outage", "start": "2016-06-06T10:00:00Z",
                               "end": "2016-06-06T11:00:00Z"}],
                      controllers=[{"name": "none", "target": "controllers.baseline:NoControl"},
                                   {"name": "shaver", "target": "controllers.baseline:PeakShaver"},
                                   {"name": "ramp", "mode": "central", "target": "engine_helpers:RampSchedule",
                                    "kwargs": {"p_mw": 0.0004}}])
    inputs = build_inputs(s)
    stepped, stepped_records = _records(s, inputs, open_loop=False, run_dir=tmp_path / "stepped")
    batched, _ = _records(s, inputs, open_loop=True, run_dir=tmp_path / "batched")
    volt_var = [r for records in stepped_records for r in records
                if np.any((np.abs(r.outcome.q) > 1e-6) & r.fallback_mask)]
    assert volt_var, "the scenario should make autonomous inverters produce volt-var Q"
    from twin.records.recorder import TIMING_COLUMNS

    for policy, want in stepped.items():
        got = batched[policy]
        for table in PolicyRecords.TABLES:
            a, b = getattr(got, table), getattr(want, table)
            assert a.index.equals(b.index) and list(a.columns) == list(b.columns)
            for column in a.columns.difference(TIMING_COLUMNS):
                x, y = a[column], b[column]
                if x.dtype.kind in "fb":
                    np.testing.assert_allclose(x.to_numpy(float), y.to_numpy(float), rtol=TOL, atol=TOL,
                                               err_msg=f"{policy}/{table}/{column}")
                else:
                    assert x.equals(y), f"{policy}/{table}/{column}"
        assert got.summary["operator_eur"].sum() == pytest.approx(want.summary["operator_eur"].sum(), abs=1e-9)


def test_open_loop_is_only_taken_when_every_policy_allows_it(rural_day) -> None:
    _, inputs = rural_day
    from twin.engine.open_loop import can_replay_open_loop

    def twins(**overrides):
        s = make_scenario(end="2016-06-06T01:00:00Z", **overrides)
        return [PolicyTwin.create(e, inputs, s) for e in s.controllers]

    assert can_replay_open_loop(twins(power_flow={"engine": "fast"}))
    assert not can_replay_open_loop(twins())  # the pandapower engine (model of record) steps
    assert not can_replay_open_loop(twins(power_flow={"engine": "fast"}, network={"sensitivities": True}))
    assert not can_replay_open_loop(twins(power_flow={"engine": "fast"}, controllers=[
        {"name": "none", "target": "controllers.baseline:NoControl"},
        {"name": "opt", "target": "controllers.optimizing:OptimizingController", "kwargs": {"network": False}}]))


def test_a_controller_that_reads_the_grid_after_saying_it_does_not_is_refused(rural_day) -> None:
    _, inputs = rural_day
    s = make_scenario(end="2016-06-06T01:00:00Z", power_flow={"engine": "fast"},
                      controllers=[{"name": "liar", "target": "engine_helpers:ClaimsNotToReadTheGrid"}])
    with pytest.raises(RuntimeError, match="reads_grid = False but read observation.grid"):
        _records(s, inputs, open_loop=True)
    stepped, _ = _records(s, inputs, open_loop=False)  # stepping, the grid is there to read
    assert len(stepped["liar"].summary) == 4


def test_an_operator_command_switches_an_open_loop_run_to_stepping(tmp_path: Path, rural_day) -> None:
    _, inputs = rural_day
    s = make_scenario(end="2016-06-06T02:00:00Z", power_flow={"engine": "fast"},
                      controllers=[{"name": "scada", "mode": "central", "target": "controllers.baseline:PeakShaver"}])
    CommandChannel(tmp_path).submit(OperatorCommand.from_dict({"kind": "control_centre_outage", "duration": "30min",
                                                               "operator": "op"}))
    records, _ = _records(s, inputs, open_loop=True, run_dir=tmp_path)
    assert records["scada"].summary["controller_online"].tolist()[:3] == [False, False, True]
    assert list(CommandChannel(tmp_path).history()["verdict"]) == ["applied"]


def test_a_fresh_copy_of_the_physics_starts_as_built_and_moves_on_its_own() -> None:
    """A twin's physics is a fresh copy of one built per run inputs (``FleetPhysics.fresh``): it starts where a
    newly built one starts (even after the original moved on), its steps match that one's exactly, and the two
    share no state; a battery's ``soc_init`` changed in the asset table after the build is read again."""
    rng = np.random.default_rng(11)
    assets = random_fleet(rng)
    sessions = random_sessions(assets, rng)
    template = FleetPhysics(assets, sessions, step=STEP)
    for k in range(20):  # the template moves on: its copies must not
        template.advance_arrays(T0 + k * STEP, **inputs_at(assets, rng))
    copy_, built = template.fresh(), FleetPhysics(assets, sessions, step=STEP)
    for k in range(30):
        t = T0 + k * STEP
        x = inputs_at(assets, rng)
        a, b = copy_.advance_arrays(t, **x), built.advance_arrays(t, **x)
        for field in ("p", "q", "p_requested", "soc", "e_imp", "e_exp", "clip_code"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    other = template.fresh()
    assert np.isnan(other.soc).sum() == np.isnan(built.soc).sum()
    np.testing.assert_array_equal(other.soc, FleetPhysics(assets, sessions, step=STEP).soc)  # untouched by copy_
    battery = assets.index[assets["kind"] == "battery"][0]
    changed = assets.copy()
    template = FleetPhysics(changed, sessions, step=STEP)
    changed.at[battery, "soc_init"] = 0.25
    position = assets.index.get_loc(battery)
    assert template.fresh().soc[position] == pytest.approx(0.25 * changed.at[battery, "e_max_mwh"], abs=1e-15)


def test_a_recorder_frozen_in_chunks_gives_the_tables_frozen_at_once(rural_day) -> None:
    """The run store commits chunks (``freeze(since=...)`` between steps): the chunks are the rows of the whole
    run's tables, and freezing does not stop the recorder taking further intervals."""
    scenario, inputs = rural_day
    whole, chunked = Recorder(step=scenario.step), Recorder(step=scenario.step)
    parts = []
    for i, records in enumerate(iterate_policies(scenario, inputs, open_loop=False)):
        whole.add(records)
        chunked.add(records)
        if i % 7 == 6:
            parts.append(chunked.freeze(since=sum(len(p[next(iter(p))].summary) for p in parts)))
    parts.append(chunked.freeze(since=sum(len(p[next(iter(p))].summary) for p in parts)))
    assert len(whole) == len(chunked) == len(scenario.times)
    full = whole.freeze()
    for name, records in full.items():
        for table in PolicyRecords.TABLES:
            expected = getattr(records, table)
            joined = pd.concat([getattr(p[name], table) for p in parts])
            pd.testing.assert_frame_equal(joined, expected)
        assert records.summary.index.equals(scenario.times.rename("time"))
        assert records.summary["converged"].dtype == bool and records.summary["converged"].all()


def test_input_rows_by_interval_start(rural_day) -> None:
    scenario, inputs = rural_day
    from twin.engine.input_arrays import InputArrays
    arrays = InputArrays.of(inputs)
    for k in (0, 1, len(scenario.times) - 1):
        t = scenario.times[k]
        assert arrays.row(t) == inputs.at(t)
        assert arrays.price(arrays.row(t)) == float(inputs.price_eur_per_mwh.loc[t])
    with pytest.raises(KeyError):
        arrays.row(scenario.times[0] + pd.Timedelta("1min"))
