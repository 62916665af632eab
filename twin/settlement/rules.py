"""The arithmetic of the contract rules that are not baselines or P2P: capacity payments pro-rated to an
interval, and PJM Capacity Performance–style non-performance penalties. Pure functions of Decimals.
"""

from __future__ import annotations

import calendar
from decimal import Decimal
from functools import lru_cache

import pandas as pd

from twin.settlement.money import money, round_micro, to_micro

__all__ = [
    "capacity_payment_micro",
    "hours",
    "non_performance_penalty",
    "penalty_rate_per_mwh",
]

_US_PER_HOUR = Decimal(3_600_000_000)


def hours(span: pd.Timedelta) -> Decimal:
    """A duration in hours, exactly (microsecond resolution): 5 min → 1/12 only when multiplied first,
    so callers multiply by this and divide last."""
    return Decimal(int(span / pd.Timedelta("1us"))) / _US_PER_HOUR


def penalty_rate_per_mwh(*, net_cone_per_mw_day: Decimal, expected_hours: Decimal = Decimal(30)) -> Decimal:
    """PJM Capacity Performance penalty rate = Net CONE [per MW-day] × 365 / expected performance hours (30)."""
    return money(net_cone_per_mw_day) * 365 / money(expected_hours)


def non_performance_penalty(
    *,
    committed_mw: Decimal,
    balancing_ratio: Decimal,
    delivered_mw: Decimal,
    net_cone_per_mw_day: Decimal,
    duration: pd.Timedelta,
    expected_hours: Decimal = Decimal(30),
) -> Decimal:
    """(committed × balancing ratio − delivered)⁺ [MW] × rate [per MWh] × duration [h], rounded to micro-units."""
    shortfall_mw = max(Decimal(0), money(committed_mw) * money(balancing_ratio) - money(delivered_mw))
    rate = penalty_rate_per_mwh(net_cone_per_mw_day=net_cone_per_mw_day, expected_hours=expected_hours)
    micros = int(duration / pd.Timedelta("1us"))
    return round_micro(shortfall_mw * rate * micros / _US_PER_HOUR)


def _month_bounds(ts: pd.Timestamp) -> tuple[pd.Timestamp, pd.Timestamp]:
    start = ts.tz_convert("UTC").normalize().replace(day=1)
    days = calendar.monthrange(start.year, start.month)[1]
    return start, start + pd.Timedelta(days=days)


# Cached: every interval pays each contract of the same terms the same amount, and a fleet's contracts share
# a few terms (a 0.3 ms computation per contract per interval is most of an ordinary interval's settlement).
@lru_cache(maxsize=4096)
def capacity_payment_micro(
    *,
    committed_kw: Decimal,
    price_per_kw_month: Decimal,
    start: pd.Timestamp,
    end: pd.Timestamp,
) -> int:
    """committed_kw × price per kW-month, pro-rated to [start, end) by the share of the (UTC calendar) month.

    Each interval gets round(month-to-date at end) − round(month-to-date at start), so the intervals of a
    month always add up to exactly the monthly amount however the month is cut (rounding never drifts).
    """
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    if end <= start:
        raise ValueError(f"interval {start}..{end} is empty")
    monthly = money(committed_kw) * money(price_per_kw_month)
    total, cursor = 0, start
    while cursor < end:
        month_start, month_end = _month_bounds(cursor)
        stop = min(end, month_end)
        length = int((month_end - month_start) / pd.Timedelta("1us"))

        def to_date(t: pd.Timestamp) -> int:
            return to_micro(monthly * int((t - month_start) / pd.Timedelta("1us")) / length)

        total += to_date(stop) - to_date(cursor)
        cursor = stop
    return total
