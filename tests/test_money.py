"""Money: Decimal from strings, micro-units, half-even rounding, largest-remainder allocation."""

from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.settlement.money import (
    allocate_largest_remainder,
    from_micro,
    money,
    round_micro,
    to_decimal,
    to_micro,
)


def test_money_from_string_is_exact_where_float_is_not():
    # The reason floats are banned: 0.1 + 0.1 + 0.1 != 0.3 in binary, == in decimal.
    assert 0.1 + 0.1 + 0.1 != 0.3
    assert money("0.1") + money("0.1") + money("0.1") == money("0.3")
    assert money(" 1.23 ") == Decimal("1.23")
    assert money(7) == Decimal(7)


@pytest.mark.parametrize("bad", [0.1, 1.0, True])
def test_floats_and_bools_are_refused_with_a_clear_type_error(bad):
    with pytest.raises(TypeError, match="money"):
        money(bad)
    with pytest.raises(TypeError):
        to_micro(bad)


def test_money_rejects_garbage_and_non_finite_values():
    with pytest.raises(ValueError, match="'abc'"):
        money("abc")
    with pytest.raises(ValueError, match="not finite"):
        money("NaN")


def test_micro_round_trip_and_half_even():
    assert to_micro(Decimal("1.23")) == 1_230_000
    assert from_micro(1_230_000) == Decimal("1.23")
    assert str(from_micro(5)) == "0.000005"
    # Exactly half a micro-unit rounds to the even neighbour, both directions and signs.
    assert to_micro(Decimal("0.0000005")) == 0
    assert to_micro(Decimal("0.0000015")) == 2
    assert to_micro(Decimal("0.0000025")) == 2
    assert to_micro(Decimal("-0.0000025")) == -2
    assert to_micro(Decimal("1.2345675")) == 1_234_568
    assert round_micro(Decimal("2.0000025")) == Decimal("2.000002")
    # Large amounts stay exact (the default 28-digit context would round these).
    big = Decimal("123456789012345678901234.1234565")
    assert to_micro(big) == 123456789012345678901234123456


def test_to_decimal_takes_floats_by_shortest_repr_for_measurements():
    assert to_decimal(0.1) == Decimal("0.1")
    assert to_decimal(np.float64(0.1)) == Decimal("0.1")
    assert to_decimal(np.int64(3)) == Decimal(3)
    assert to_decimal("2.5") == Decimal("2.5")
    with pytest.raises(ValueError):
        to_decimal(float("nan"))


def test_allocation_worked_example():
    # 100 micro among three equal weights: quotas 33.33 each; one leftover goes to the first key.
    assert allocate_largest_remainder(100, {"b": Decimal(1), "a": Decimal(1), "c": Decimal(1)}) == \
        {"b": 33, "a": 34, "c": 33}
    # 10 micro by 1:2:3 = 1.667, 3.333, 5.0 → floors 1, 3, 5 (9) → the one left goes to the .667.
    assert allocate_largest_remainder(10, {"x": Decimal(1), "y": Decimal(2), "z": Decimal(3)}) == \
        {"x": 2, "y": 3, "z": 5}
    # A negative total splits as its magnitude, negated.
    assert allocate_largest_remainder(-100, {"a": Decimal(1), "b": Decimal(1), "c": Decimal(1)}) == \
        {"a": -34, "b": -33, "c": -33}
    assert allocate_largest_remainder(0, {}) == {}


def test_allocation_refuses_bad_weights():
    with pytest.raises(ValueError, match="all zero"):
        allocate_largest_remainder(5, {"a": Decimal(0)})
    with pytest.raises(ValueError, match="'a'"):
        allocate_largest_remainder(5, {"a": Decimal(-1), "b": Decimal(2)})
    with pytest.raises(TypeError, match="float"):
        allocate_largest_remainder(5, {"a": 0.5})


weights = st.dictionaries(
    keys=st.text(alphabet="abcdefgh", min_size=1, max_size=3),
    values=st.decimals(min_value=0, max_value=10_000, places=3, allow_nan=False, allow_infinity=False),
    min_size=1, max_size=12,
).filter(lambda w: sum(w.values()) > 0)


@settings(max_examples=300, deadline=None)
@given(total=st.integers(min_value=-10**15, max_value=10**15), w=weights)
def test_allocation_parts_sum_to_the_whole_and_stay_within_one_of_the_quota(total, w):
    parts = allocate_largest_remainder(total, w)
    assert sum(parts.values()) == total
    assert list(parts) == list(w)
    weight_sum = sum(w.values())
    for key, part in parts.items():
        quota = Decimal(total) * w[key] / weight_sum
        assert abs(Decimal(part) - quota) < 1
        if w[key] == 0:
            assert part == 0


@settings(max_examples=100, deadline=None)
@given(total=st.integers(min_value=0, max_value=10**9), w=weights)
def test_allocation_does_not_depend_on_key_order(total, w):
    reversed_w = dict(reversed(list(w.items())))
    assert allocate_largest_remainder(total, w) == allocate_largest_remainder(total, reversed_w)
