"""The exact numpy z-update (controllers.feeder_cost) against hand-worked cases and an independent cvxpy model."""

from __future__ import annotations

from typing import Any

import cvxpy as cp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.feeder_cost import FeederCost

CTOR = {"horizon": 1, "hours": 1.0, "quad": 1.0, "demand_charge_eur_per_mw": 0.0, "head_slack_cost_eur_per_mwh": 0.0}


def objective(s: np.ndarray, ctor: dict[str, Any], data: dict[str, Any]) -> float:
    """The problem as stated in the module docstring, evaluated at ``s`` with plain numpy."""
    h, q = ctor["hours"], ctor["quad"]
    y = data["base"] + s
    spread = np.maximum(data["price_imp"] - data["price_exp"], 0.0)
    return float(h * (data["price_exp"] @ s + spread @ np.maximum(y, 0.0))
                 + h * ctor["head_slack_cost_eur_per_mwh"] * np.maximum(y - data["limit"], 0.0).sum()
                 + ctor["demand_charge_eur_per_mw"] * max(0.0, y.max())
                 + q * ((s - data["target"]) ** 2).sum())


def reference(ctor: dict[str, Any], data: dict[str, Any]) -> tuple[np.ndarray, float]:
    """The same problem written directly in cvxpy (its pos/max atoms, not depin's epigraph variables)."""
    s = cp.Variable(ctor["horizon"])
    y = data["base"] + s
    spread = np.maximum(data["price_imp"] - data["price_exp"], 0.0)
    cost = (ctor["hours"] * (data["price_exp"] @ s + spread @ cp.pos(y))
            + ctor["hours"] * ctor["head_slack_cost_eur_per_mwh"] * cp.sum(cp.pos(y - data["limit"]))
            + ctor["demand_charge_eur_per_mw"] * cp.pos(cp.max(y))
            + ctor["quad"] * cp.sum_squares(s - data["target"]))
    problem = cp.Problem(cp.Minimize(cost))
    # An interior-point method creeps up on the kinks: at Clarabel's 1e-10 gap the heads of kinked periods
    # can still be ~1e-4 MW off, so tighten everything until it agrees to 1e-6 MW (1e-7 on these seeds).
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-10,
                  max_iter=1000)
    assert problem.status == cp.OPTIMAL
    return np.asarray(s.value, dtype=float), float(problem.value)


def random_instance(seed: int, *, demand: bool, binding: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    rng = np.random.default_rng(seed)
    T = int(rng.integers(1, 49))
    base = rng.normal(0.05, 0.3, T)  # about a third of periods export (PV)
    price_imp = rng.uniform(-50.0, 400.0, T)
    # Spreads from slightly negative (clipped to 0) to very large (EUR 3000/MWh); feed-in may go negative.
    large = rng.random(T) < rng.choice([0.0, 0.3, 1.0])
    price_exp = price_imp - np.where(large, rng.uniform(500.0, 3000.0, T), rng.uniform(-20.0, 100.0, T))
    target = rng.normal(0.0, 0.4, T)
    ctor = {"horizon": T, "hours": float(rng.choice([0.25, 0.5, 1.0])), "quad": float(10 ** rng.uniform(0.5, 4)),
            "demand_charge_eur_per_mw": float(10 ** rng.uniform(0, 4)) if demand else 0.0,
            "head_slack_cost_eur_per_mwh": float(rng.choice([0.0, 1000.0, rng.uniform(0, 5000)]))}
    # A binding limit sits inside the range of heads (and sometimes below 0: must export); else out of reach
    # (100 MW, not depin's 1e6: the far constant spoils the interior-point reference's scaling).
    limit = float(rng.uniform(-0.3, 0.4)) if binding else 100.0
    return ctor, {"base": base, "price_imp": price_imp, "price_exp": price_exp, "limit": limit, "target": target}


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize(("demand", "binding"), [(False, False), (False, True), (True, False), (True, True)])
def test_matches_cvxpy_on_random_instances(seed: int, demand: bool, binding: bool) -> None:
    ctor, data = random_instance(seed, demand=demand, binding=binding)
    s = FeederCost(**ctor).solve(**data)
    s_ref, value_ref = reference(ctor, data)
    # The exact minimizer is never worse than the interior-point one, and they agree to a micro-watt-ish MW.
    assert objective(s, ctor, data) <= value_ref + 1e-9 * (1 + abs(value_ref))
    np.testing.assert_allclose(s, s_ref, rtol=0, atol=1e-6)


def test_an_out_of_reach_limit_changes_nothing() -> None:
    """depin passes limit=1e6 for "no limit"; it must act like any other limit nobody reaches."""
    for seed in range(20):
        ctor, data = random_instance(seed, demand=seed % 2 == 0, binding=False)
        near, far = (FeederCost(**ctor).solve(**(data | {"limit": limit})) for limit in (100.0, 1e6))
        np.testing.assert_array_equal(near, far)


# Hand-worked cases (h = q = 1 unless given). f(s) is the per-period cost; each comment finds where its
# derivative crosses zero.
HAND = [
    # f = 10 max(s,0) + (s-10)²; on s > 0: 10 + 2(s-10) = 0 -> s = 5.
    pytest.param({}, {"base": [0.0], "price_imp": [10.0], "price_exp": [0.0], "limit": 100.0, "target": [10.0]},
                 [5.0], id="import-spread"),
    # + 4 max(s,0) demand charge: 10 + 4 + 2(s-10) = 0 -> s = 3.
    pytest.param({"demand_charge_eur_per_mw": 4.0},
                 {"base": [0.0], "price_imp": [10.0], "price_exp": [0.0], "limit": 100.0, "target": [10.0]},
                 [3.0], id="demand-charge"),
    # + 4 max(s-4,0): below 4 the slope 10 + 2(s-10) is -2 at s = 4, above it 14 + 2(s-10) = +2 -> kink s = 4.
    pytest.param({"head_slack_cost_eur_per_mwh": 4.0},
                 {"base": [0.0], "price_imp": [10.0], "price_exp": [0.0], "limit": 4.0, "target": [10.0]},
                 [4.0], id="head-limit-kink"),
    # PV exports 3 MW: f = 2s + 8 max(s-3,0) + (s-5)². s < 3: 2 + 2(s-5) = 0 -> 4, not < 3; s > 3:
    # 10 + 2(s-5) = 0 -> 0, not > 3 -> kink s = 3, the head sits at exactly 0.
    pytest.param({}, {"base": [-3.0], "price_imp": [10.0], "price_exp": [2.0], "limit": 100.0, "target": [5.0]},
                 [3.0], id="pv-export-kink"),
    # Limit below 0 (must export 1 MW): f = 2s + 8 max(s-3,0) + 4 max(s-2,0) + (s-3)², kinks in s at 2 (limit)
    # and 3 (zero import). s < 2: 2 + 2(s-3) = 0 -> 2, not < 2; 2..3: 6 + 2(s-3) = 0 -> 0 -> kink s = 2.
    pytest.param({"head_slack_cost_eur_per_mwh": 4.0},
                 {"base": [-3.0], "price_imp": [10.0], "price_exp": [2.0], "limit": -1.0, "target": [3.0]},
                 [2.0], id="negative-limit"),
    # T = 2, D = 4: unconstrained s* = [5, 5], heads [5, 6]. For P in [5,6) only t=1 is clipped:
    # 4 + 10 + 2(P-1-10) = 2P - 8 -> 4, not in [5,6). For P in [0,5) both: 4 + 10 + 2(P-10) + 10 + 2(P-11)
    # = 4P - 18 -> P = 4.5, so s = P - base = [4.5, 3.5].
    pytest.param({"horizon": 2, "demand_charge_eur_per_mw": 4.0},
                 {"base": [0.0, 1.0], "price_imp": [10.0, 10.0], "price_exp": [0.0, 0.0], "limit": 100.0,
                  "target": [10.0, 10.0]}, [4.5, 3.5], id="shared-peak"),
    # T = 2, D = 100: at P = 0 the right derivative is 100 + (10 - 20) + (10 - 22) = 78 > 0, so P = 0 and
    # both periods import nothing: s = -base = [0, -1].
    pytest.param({"horizon": 2, "demand_charge_eur_per_mw": 100.0},
                 {"base": [0.0, 1.0], "price_imp": [10.0, 10.0], "price_exp": [0.0, 0.0], "limit": 100.0,
                  "target": [10.0, 10.0]}, [0.0, -1.0], id="peak-at-zero"),
]


@pytest.mark.parametrize(("ctor", "data", "expected"), HAND)
def test_hand_worked_cases(ctor: dict[str, Any], data: dict[str, Any], expected: list[float]) -> None:
    arrays = {k: np.array(v) if isinstance(v, list) else v for k, v in data.items()}
    np.testing.assert_allclose(FeederCost(**(CTOR | ctor)).solve(**arrays), expected, rtol=0, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), demand=st.booleans(), binding=st.booleans(),
       direction_seed=st.integers(0, 2**32 - 1))
def test_no_nearby_point_is_cheaper(seed: int, demand: bool, binding: bool, direction_seed: int) -> None:
    """A convex function's local minimum is global: no small step in any direction lowers the cost."""
    ctor, data = random_instance(seed, demand=demand, binding=binding)
    s = FeederCost(**ctor).solve(**data)
    best = objective(s, ctor, data)
    rng = np.random.default_rng(direction_seed)
    for step in (1e-3, 1e-5):
        for d in (*np.eye(len(s)), *rng.normal(size=(8, len(s)))):
            for sign in (1, -1):
                assert objective(s + sign * step * d, ctor, data) >= best - 1e-9 * (1 + abs(best))


GOOD = {"base": np.zeros(2), "price_imp": np.ones(2), "price_exp": np.zeros(2), "limit": 1.0, "target": np.zeros(2)}


@pytest.mark.parametrize(("ctor", "data", "message"), [
    ({"quad": 0.0}, {}, r"quad=0\.0"),
    ({"hours": -0.25}, {}, r"hours=-0\.25"),
    ({"demand_charge_eur_per_mw": -1.0}, {}, r"demand_charge_eur_per_mw=-1\.0"),
    ({"head_slack_cost_eur_per_mwh": float("nan")}, {}, r"head_slack_cost_eur_per_mwh=nan"),
    ({"horizon": 0}, {}, r"horizon=0"),
    ({}, {"base": np.zeros(3)}, r"base\.shape=\(3,\)"),
    ({}, {"price_imp": np.array([1.0, np.inf])}, r"price_imp\[1\]=.*inf"),
    ({}, {"target": np.array([np.nan, 0.0])}, r"target\[0\]=.*nan"),
    ({}, {"limit": float("nan")}, r"limit=nan"),
])
def test_bad_input_names_the_field_and_value(ctor: dict[str, Any], data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FeederCost(**(CTOR | {"horizon": 2} | ctor)).solve(**(GOOD | data))
