"""Money arithmetic for settlement: Decimal amounts, integer micro-units, half-even rounding, and
largest-remainder allocation so that parts always sum exactly to the whole (DESIGN.md §3).

Floats are refused everywhere here: ``0.1 + 0.1 + 0.1 != 0.3`` in binary floating point, and a ledger
that cannot balance to the last micro-unit cannot be audited.
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal

__all__ = [
    "MICRO_PER_UNIT",
    "allocate_largest_remainder",
    "from_micro",
    "money",
    "round_micro",
    "to_decimal",
    "to_micro",
]

#: Integer micro-units per currency unit: the ledger stores every amount as an int of these.
MICRO_PER_UNIT = 1_000_000
_MICRO = Decimal("0.000001")
#: Wide enough that no intermediate product of realistic amounts is rounded before we round on purpose.
_EXACT = decimal.Context(prec=80, rounding=ROUND_HALF_EVEN)


def _refuse_float(value: object, what: str) -> None:
    if isinstance(value, float):
        raise TypeError(
            f"{what}={value!r} is a float; money must be a Decimal built from a string, e.g. Decimal('{value}')"
        )
    if isinstance(value, bool):
        raise TypeError(f"{what}={value!r} is a bool, not an amount")


def money(value: str | int | Decimal) -> Decimal:
    """A finite Decimal amount from a string, int or Decimal, e.g. ``money("1.23")``. Floats raise TypeError."""
    _refuse_float(value, "money")
    if not isinstance(value, (str, int, Decimal)):
        raise TypeError(f"money={value!r} has type {type(value).__name__}; expected str, int or Decimal")
    try:
        amount = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except decimal.InvalidOperation:
        raise ValueError(f"money={value!r} is not a decimal number") from None
    if not amount.is_finite():
        raise ValueError(f"money={value!r} is not finite")
    return amount


def to_decimal(value: object, *, what: str = "value") -> Decimal:
    """A Decimal from a measurement that may arrive as a float (meter registers, load series).

    This is the one sanctioned door for floats: they become the Decimal of their shortest repr, so
    ``0.1`` becomes ``Decimal('0.1')`` rather than ``Decimal('0.1000000000000000055511151231257827...')``.
    Use it for physical quantities at the boundary, never for prices or amounts (use :func:`money`).
    """
    if isinstance(value, bool):
        raise TypeError(f"{what}={value!r} is a bool, not a number")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, (int, str)):
        result = money(value)
    elif isinstance(value, float):
        result = Decimal(repr(float(value)))  # float(): numpy 2 scalars repr as "np.float64(...)"
    else:
        try:  # numpy scalars
            result = Decimal(repr(float(value)))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise TypeError(f"{what}={value!r} has type {type(value).__name__}; expected a number") from None
    if not result.is_finite():
        raise ValueError(f"{what}={value!r} is not a finite number")
    return result


def round_micro(value: Decimal) -> Decimal:
    """``value`` rounded to a whole micro-unit with ROUND_HALF_EVEN (banker's rounding)."""
    _refuse_float(value, "round_micro")
    return _EXACT.quantize(Decimal(value), _MICRO)


def to_micro(value: Decimal | int) -> int:
    """Integer micro-units of ``value``, rounded half-even: ``to_micro(Decimal("1.2345675")) == 1234568``."""
    _refuse_float(value, "to_micro")
    if not isinstance(value, (Decimal, int)):
        raise TypeError(f"to_micro({value!r}): expected Decimal or int, got {type(value).__name__}")
    scaled = _EXACT.scaleb(Decimal(value), 6)
    if not scaled.is_finite():
        raise ValueError(f"to_micro({value!r}): not finite")
    return int(scaled.to_integral_value(rounding=ROUND_HALF_EVEN))


def from_micro(micro: int) -> Decimal:
    """The Decimal amount of ``micro`` micro-units, always with six decimal places."""
    if isinstance(micro, bool) or not isinstance(micro, int):
        raise TypeError(f"from_micro({micro!r}): expected int micro-units, got {type(micro).__name__}")
    return Decimal(micro).scaleb(-6, _EXACT)


def allocate_largest_remainder(total_micro: int, weights: Mapping[str, Decimal | int]) -> dict[str, int]:
    """Split ``total_micro`` in proportion to ``weights`` so the integer parts sum exactly to the total.

    Each key gets the floor of its exact quota; the micro-units left over go one each to the largest
    fractional remainders, ties broken by key (ascending) so the result never depends on dict order.
    A negative total is split as its magnitude and negated, so payers and payees round alike.
    Weights must be non-negative and, unless the total is zero, not all zero.
    """
    if isinstance(total_micro, bool) or not isinstance(total_micro, int):
        raise TypeError(f"total_micro={total_micro!r}: expected int micro-units")
    # Each weight as an integer mantissa and a power of ten, exactly (Decimal's own digits): scaled to the
    # smallest exponent they all become integers over one common denominator, so quotas and remainders are
    # integer divisions (the same numbers as exact fractions, without Fraction's cost on every interval).
    mantissas: dict[str, tuple[int, int]] = {}
    for key, weight in weights.items():
        _refuse_float(weight, f"weights[{key!r}]")
        if not isinstance(weight, (Decimal, int)):
            raise TypeError(f"weights[{key!r}]={weight!r}: expected Decimal or int")
        if not Decimal(weight).is_finite() or weight < 0:
            raise ValueError(f"weights[{key!r}]={weight!r}: weights must be finite and >= 0")
        if isinstance(weight, int):
            mantissas[key] = (weight, 0)
        else:
            sign_bit, digits, exponent = weight.as_tuple()
            mantissa = int("".join(map(str, digits)) or "0")
            mantissas[key] = (-mantissa if sign_bit else mantissa, int(exponent))
    if total_micro == 0:
        return {key: 0 for key in weights}
    low = min((e for _, e in mantissas.values()), default=0)
    exact = {key: m * 10 ** (e - low) for key, (m, e) in mantissas.items()}
    weight_sum = sum(exact.values())
    if weight_sum == 0:
        raise ValueError(f"cannot allocate {total_micro} micro-units: weights are empty or all zero")
    sign, magnitude = (-1, -total_micro) if total_micro < 0 else (1, total_micro)
    parts, remainders = {}, {}
    for key, w in exact.items():
        parts[key], remainders[key] = divmod(magnitude * w, weight_sum)
    leftover = magnitude - sum(parts.values())
    by_remainder = sorted(exact, key=lambda k: (-remainders[k], k))
    for key in by_remainder[:leftover]:
        parts[key] += 1
    return {key: sign * parts[key] for key in weights}
