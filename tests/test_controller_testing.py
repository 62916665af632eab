"""controllers.testing: check_controller catches each contract violation; FunctionController adapts a function."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from controllers.api import ControllerSpec, Dispatch, Observation
from controllers.baseline import NoControl, PeakShaver
from controllers.testing import ContractViolation, FunctionController, check_controller
from twin.engine import PolicyTwin


@pytest.fixture(scope="module")
def case(rural_day: tuple) -> tuple[ControllerSpec, list[Observation]]:
    scenario, inputs = rural_day
    twin = PolicyTwin.create(scenario.controllers[0], inputs, scenario)
    observations = [twin.observe_for_test(t) for t in scenario.times[68:72]]  # 17:00-18:00, evening peak
    return ControllerSpec(assets=inputs.assets, step=scenario.step, horizon=scenario.horizon_steps), observations


def first_battery(obs: Observation) -> str:
    return str(obs.assets.index[obs.assets["kind"].astype(str) == "battery"][0])


def test_shipped_controllers_pass(case: tuple) -> None:
    spec, observations = case
    assert all(d.p_mw.empty for d in check_controller(NoControl, spec, observations))
    shaved = check_controller(PeakShaver, spec, observations)
    assert any((d.p_mw < 0).any() for d in shaved)  # the evening peak is shaved by discharging


def test_function_controller_adapts_a_plain_function(case: tuple) -> None:
    spec, observations = case
    out = check_controller(lambda: FunctionController(lambda obs: {first_battery(obs): -0.001}), spec, observations)
    assert out[0].p_mw.to_dict() == {first_battery(observations[0]): -0.001}


@pytest.mark.parametrize(
    ("fn", "rule"),
    [
        (lambda obs: {first_battery(obs): 99.0}, "within ratings"),
        (lambda obs: {"bat-nope": 0.0}, "known assets"),
        (lambda obs: {first_battery(obs): random.random() * 1e-3}, "determinism"),
        (lambda obs: (obs.state.__setitem__("p_mw", 1.0), {})[1], "no mutation"),
    ],
    ids=["rating", "unknown", "nondeterministic", "mutates"],
)
def test_each_violation_is_named(case: tuple, fn: object, rule: str) -> None:
    spec, observations = case
    with pytest.raises(ContractViolation, match=rule):
        check_controller(lambda: FunctionController(fn), spec, [o for o in observations])


def test_not_a_controller_is_refused(case: tuple) -> None:
    spec, observations = case
    with pytest.raises(ContractViolation, match="protocol"):
        check_controller(lambda: object(), spec, observations)
    assert isinstance(Dispatch.empty(), Dispatch) and pd.Series(dtype=float).empty


def scheduled(obs: Observation, *, p_later: float, offset: str = "15min", asset: str | None = None) -> Dispatch:
    b = first_battery(obs)
    later = pd.DataFrame({obs.time + pd.Timedelta(offset): [p_later]}, index=[asset or b])
    return Dispatch(p_mw=pd.Series({b: 0.001}), schedule_mw=later)


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"p_later": 99.0}, r"within ratings: bat-\S+ schedule_mw\[.*\]=99\.0"),
        ({"p_later": 0.0, "offset": "7min"}, "schedule: schedule_mw column .* not a period start"),
        ({"p_later": 0.0, "offset": "-15min"}, "schedule: schedule_mw column .* not a period start"),
        ({"p_later": 0.0, "asset": "bat-nope"}, "known assets: schedule_mw names unknown asset_id 'bat-nope'"),
    ],
    ids=["rating", "off-grid", "past", "unknown"],
)
def test_schedules_are_checked_like_setpoints(case: tuple, kwargs: dict, rule: str) -> None:
    spec, observations = case

    class Scheduler:
        def reset(self, spec: ControllerSpec, *, seed: int) -> None:
            pass

        def act(self, observation: Observation) -> Dispatch:
            return scheduled(observation, **kwargs)

    with pytest.raises(ContractViolation, match=rule):
        check_controller(Scheduler, spec, observations)


def test_a_valid_schedule_passes(case: tuple) -> None:
    spec, observations = case

    class Scheduler:
        def reset(self, spec: ControllerSpec, *, seed: int) -> None:
            pass

        def act(self, observation: Observation) -> Dispatch:
            return scheduled(observation, p_later=-0.001, offset="30min")

    out = check_controller(Scheduler, spec, observations)
    assert out[0].schedule_offsets(observations[0].time, spec.step).tolist() == [2]
