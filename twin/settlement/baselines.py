"""Customer baselines for demand-response settlement: what a participant would have consumed during an
event had there been no event, and the performance measured against it (REFERENCES.md, demand response).

Methods: CAISO 10-in-10 with a capped multiplicative same-day adjustment, PJM high-4-of-5 with a symmetric
additive adjustment and the low-usage screen, and meter-before/meter-after for storage. No baseline is
floored: a net exporter's baseline is negative, so it is paid only for a reduction it measurably made.
Inputs are load series in kW (load convention, average over each interval, labelled by interval start,
tz-aware UTC); days, weekdays and holidays are judged in the local calendar ``tz``. All arithmetic is Decimal so settlement stays exact.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, time
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum

import pandas as pd

from twin.settlement.money import to_decimal
from twin.settlement.rules import hours

__all__ = [
    "Baseline",
    "BaselineError",
    "BaselineMethod",
    "DayType",
    "ENERGY_QUANTUM_KWH",
    "caiso_10_in_10",
    "compute_baseline",
    "day_type",
    "meter_before_meter_after",
    "performance_kwh",
    "pjm_high_4_of_5",
]

#: Settled energy is kept to the milliwatt-hour: finer than any revenue meter, coarse enough to be exact.
ENERGY_QUANTUM_KWH = Decimal("0.000001")
_ZERO = Decimal(0)


class BaselineError(ValueError):
    """The history cannot support the requested baseline (too few eligible days, missing readings)."""


class BaselineMethod(StrEnum):
    CAISO_10_IN_10 = "caiso_10_in_10"
    PJM_HIGH_4_OF_5 = "pjm_high_4_of_5"
    METER_BEFORE_METER_AFTER = "meter_before_meter_after"


class DayType(StrEnum):
    WEEKDAY = "weekday"
    SATURDAY = "saturday"
    #: Sundays and holidays are alike for load: both programmes treat a holiday as a Sunday.
    SUNDAY_HOLIDAY = "sunday_holiday"


def day_type(day: date, *, holidays: Collection[date] = ()) -> DayType:
    """The like-day class of ``day``: a weekday holiday counts as a Sunday."""
    if day in holidays or day.weekday() == 6:
        return DayType.SUNDAY_HOLIDAY
    return DayType.SATURDAY if day.weekday() == 5 else DayType.WEEKDAY


@dataclass(frozen=True)
class Baseline:
    """An adjusted baseline over one event window.

    ``kw`` is the adjusted baseline B′ (kW, Decimal) per slot of the event, indexed by slot start (UTC);
    ``unadjusted_kw`` is B before the same-day adjustment. ``adjustment`` is the capped ratio (CAISO), the
    additive offset in kW (PJM) or 0 (meter-before/meter-after); ``days`` are the local dates averaged,
    most recent first; ``screened_out`` the candidate days PJM's low-usage screen replaced.
    """

    method: BaselineMethod
    kw: pd.Series
    unadjusted_kw: pd.Series
    adjustment: Decimal
    days: tuple[date, ...]
    step: pd.Timedelta
    screened_out: tuple[date, ...] = ()

    def kw_at(self, ts: pd.Timestamp) -> Decimal:
        """B′ of the slot containing ``ts``; a KeyError outside the event window."""
        ts = pd.Timestamp(ts)
        pos = self.kw.index.searchsorted(ts, side="right") - 1
        if pos < 0 or ts >= self.kw.index[pos] + self.step:
            raise KeyError(f"{ts} is outside the baseline window {self.kw.index[0]}..{self.kw.index[-1] + self.step}")
        return self.kw.iloc[pos]


def _step_of(load_kw: pd.Series) -> pd.Timedelta:
    index = load_kw.index
    if not isinstance(index, pd.DatetimeIndex) or index.tz is None:
        raise ValueError("load_kw: index must be a tz-aware DatetimeIndex (UTC)")
    if len(index) < 2 or not index.is_monotonic_increasing or not index.is_unique:
        raise ValueError("load_kw: index must be sorted, unique, with at least two readings")
    steps = index[1:] - index[:-1]
    step = steps.min()
    if (steps % step != pd.Timedelta(0)).any():
        raise ValueError(f"load_kw: readings are not on a regular {step} grid")
    return step


def _slots(start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> pd.DatetimeIndex:
    if end <= start:
        raise ValueError(f"event window {start}..{end} is empty")
    return pd.date_range(start, end, freq=step, inclusive="left")


def _readings(load_kw: pd.Series, slots: pd.DatetimeIndex) -> list[Decimal]:
    """The readings of ``load_kw`` at ``slots`` as Decimal (``_History.actual`` without indexing the rest)."""
    values = load_kw.reindex(slots)
    missing = values.index[values.isna().to_numpy()]
    if len(missing):
        raise BaselineError(f"load_kw has no reading at {missing[0]} (needed for the same-day adjustment)")
    return [to_decimal(v, what=f"load_kw[{ts}]") for ts, v in zip(values.index, values.to_numpy())]


class _History:
    """A load series addressable by (local date, local time of day), values as Decimal."""

    def __init__(self, load_kw: pd.Series, tz: str) -> None:
        self.step = _step_of(load_kw)
        self.tz = tz
        clean = load_kw.dropna()
        local = clean.index.tz_convert(tz)
        self.by_ts = {ts: to_decimal(v, what=f"load_kw[{ts}]") for ts, v in zip(clean.index, clean.to_numpy())}
        self.by_local = {(lt.date(), lt.time()): self.by_ts[ts] for lt, ts in zip(local, clean.index)}

    def where(self, ts: pd.Timestamp, event_day: date) -> tuple[int, time]:
        """``ts`` as (day offset from the event day, local time of day): a window crossing midnight maps
        onto the day before each baseline day, not onto the baseline day itself."""
        lt = ts.tz_convert(self.tz)
        return (lt.date() - event_day).days, lt.time()

    def on_day(self, day: date, places: list[tuple[int, time]]) -> list[Decimal] | None:
        values = [self.by_local.get((date.fromordinal(day.toordinal() + off), tod)) for off, tod in places]
        return None if any(v is None for v in values) else values  # type: ignore[return-value]

    def actual(self, slots: pd.DatetimeIndex) -> list[Decimal]:
        missing = [ts for ts in slots if ts not in self.by_ts]
        if missing:
            raise BaselineError(f"load_kw has no reading at {missing[0]} (needed for the same-day adjustment)")
        return [self.by_ts[ts] for ts in slots]


def _eligible_days(
    history: _History,
    *,
    event_day: date,
    places: list[tuple[int, time]],
    like: Collection[DayType],
    event_days: Collection[date],
    holidays: Collection[date],
    lookback_days: int,
    wanted: int | None,
) -> list[tuple[date, list[Decimal]]]:
    """Up to ``wanted`` (None: all) most recent like days before the event day that had no event and full
    readings, most recent first."""
    found: list[tuple[date, list[Decimal]]] = []
    for back in range(1, lookback_days + 1):
        day = date.fromordinal(event_day.toordinal() - back)
        if day in event_days or day_type(day, holidays=holidays) not in like:
            continue
        values = history.on_day(day, places)
        if values is not None:
            found.append((day, values))
            if len(found) == wanted:
                break
    return found


def _mean(rows: list[list[Decimal]]) -> list[Decimal]:
    return [sum(col, _ZERO) / len(rows) for col in zip(*rows)]


@dataclass(frozen=True)
class _Window:
    event: pd.DatetimeIndex
    adjust: pd.DatetimeIndex
    places: list[tuple[int, time]]
    event_day: date


def _window(
    history: _History, event_start: pd.Timestamp, event_end: pd.Timestamp, adjustment_window: pd.Timedelta,
    adjustment_gap: pd.Timedelta,
) -> _Window:
    event_start, event_end = pd.Timestamp(event_start), pd.Timestamp(event_end)
    if event_start.tzinfo is None or event_end.tzinfo is None:
        raise ValueError(f"event window {event_start}..{event_end} must be tz-aware (UTC)")
    event = _slots(event_start, event_end, history.step)
    adjust_start = event_start - adjustment_gap - adjustment_window
    adjust = _slots(adjust_start, event_start - adjustment_gap, history.step) if adjustment_window > pd.Timedelta(0) \
        else pd.DatetimeIndex([], tz="UTC")
    event_day = event_start.tz_convert(history.tz).date()
    places = [history.where(ts, event_day) for ts in event.append(adjust)]
    return _Window(event=event, adjust=adjust, places=places, event_day=event_day)


def _series(index: pd.DatetimeIndex, values: list[Decimal]) -> pd.Series:
    return pd.Series(values, index=index, dtype=object)


def caiso_10_in_10(
    *,
    load_kw: pd.Series,
    event_start: pd.Timestamp,
    event_end: pd.Timestamp,
    event_days: Collection[date] = (),
    holidays: Collection[date] = (),
    tz: str = "UTC",
    weekday_days: int = 10,
    weekend_days: int = 4,
    min_days: int | None = None,
    lookback_days: int = 45,
    adjustment_window: pd.Timedelta = pd.Timedelta("3h"),
    adjustment_gap: pd.Timedelta = pd.Timedelta("1h"),
    ratio_cap: tuple[Decimal, Decimal] = (Decimal("0.8"), Decimal("1.2")),
    adjust: bool = True,
) -> Baseline:
    """CAISO 10-in-10: mean of the 10 most recent eligible non-event weekdays (weekend/holiday events: the
    4 most recent weekend days or holidays), times r = Σ_window L / Σ_window B capped to ``ratio_cap``.

    The adjustment window is the ``adjustment_window`` ending ``adjustment_gap`` before the event (by
    default the three hours starting four hours before). Fewer eligible days than wanted within
    ``lookback_days`` are accepted down to ``min_days`` (default: half the wanted number, rounded up).
    """
    history = _History(load_kw, tz)
    win = _window(history, event_start, event_end, adjustment_window, adjustment_gap)
    weekend_event = day_type(win.event_day, holidays=holidays) != DayType.WEEKDAY
    like = (DayType.SATURDAY, DayType.SUNDAY_HOLIDAY) if weekend_event else (DayType.WEEKDAY,)
    wanted = weekend_days if weekend_event else weekday_days
    floor = math.ceil(wanted / 2) if min_days is None else min_days
    days = _eligible_days(history, event_day=win.event_day, places=win.places, like=like, event_days=event_days,
                          holidays=holidays, lookback_days=lookback_days, wanted=wanted)
    if len(days) < floor:
        raise BaselineError(f"caiso_10_in_10: {len(days)} eligible day(s) in {lookback_days} days before "
                            f"{win.event_day}; need at least {floor}")
    base = _mean([values for _, values in days])
    n_event = len(win.event)
    base_event, base_adjust = base[:n_event], base[n_event:]
    ratio = Decimal(1)
    if adjust and len(win.adjust):
        window_base = sum(base_adjust, _ZERO)
        if window_base > 0:
            low, high = ratio_cap
            ratio = min(high, max(low, sum(history.actual(win.adjust), _ZERO) / window_base))
    return Baseline(
        method=BaselineMethod.CAISO_10_IN_10,
        kw=_series(win.event, [b * ratio for b in base_event]),
        unadjusted_kw=_series(win.event, base_event),
        adjustment=ratio,
        days=tuple(day for day, _ in days),
        step=history.step,
    )


def pjm_high_4_of_5(
    *,
    load_kw: pd.Series,
    event_start: pd.Timestamp,
    event_end: pd.Timestamp,
    event_days: Collection[date] = (),
    holidays: Collection[date] = (),
    tz: str = "UTC",
    lookback_days: int = 45,
    adjustment_window: pd.Timedelta = pd.Timedelta("3h"),
    adjustment_gap: pd.Timedelta = pd.Timedelta("1h"),
    adjust: bool = True,
    low_usage_share: Decimal | None = Decimal("0.25"),
) -> Baseline:
    """PJM economic default: of the 5 most recent eligible weekdays take the 4 with the highest load over the
    event hours (weekend/holiday events: highest 2 of the 3 most recent like days — Saturdays for a
    Saturday, Sundays and holidays for a Sunday or holiday), average them, then add
    Δ = mean over the adjustment window of (L − B). B′ = B + Δ is not floored: for a net exporter it is
    negative, and performance max(0, B′ − L) pays only a reduction below it.

    Low-usage screen (PJM Manual 11, wording to be checked against the current revision): a candidate day
    whose average event-period usage is below ``low_usage_share`` (25 %) of the average event-period usage
    over the 5 (weekend: 3) most recent eligible days is replaced by the next most recent eligible day that
    is not low, within ``lookback_days``. The screen applies to consumers (a positive average); ``None``
    turns it off.
    """
    history = _History(load_kw, tz)
    win = _window(history, event_start, event_end, adjustment_window, adjustment_gap)
    kind = day_type(win.event_day, holidays=holidays)
    pool, keep = (5, 4) if kind == DayType.WEEKDAY else (3, 2)
    n_event = len(win.event)
    candidates = _eligible_days(history, event_day=win.event_day, places=win.places, like=(kind,),
                                event_days=event_days, holidays=holidays, lookback_days=lookback_days, wanted=None)
    days, screened = _screen_low_usage(candidates, n_event=n_event, pool=pool, share=low_usage_share)
    if len(days) < pool:
        low = f" ({len(screened)} more screened out as low-usage days)" if screened else ""
        raise BaselineError(f"pjm_high_4_of_5: {len(days)} eligible {kind} day(s) in {lookback_days} days before "
                            f"{win.event_day}{low}; need {pool}")
    # Rank by energy over the event hours; on a tie the more recent day wins (stable sort keeps recency).
    ranked = sorted(days, key=lambda dv: -sum(dv[1][:n_event], _ZERO))[:keep]
    ranked.sort(key=lambda dv: dv[0], reverse=True)
    base = _mean([values for _, values in ranked])
    base_event, base_adjust = base[:n_event], base[n_event:]
    delta = _ZERO
    if adjust and len(win.adjust):
        actual = history.actual(win.adjust)
        delta = sum((a - b for a, b in zip(actual, base_adjust)), _ZERO) / len(actual)
    return Baseline(
        method=BaselineMethod.PJM_HIGH_4_OF_5,
        kw=_series(win.event, [b + delta for b in base_event]),
        unadjusted_kw=_series(win.event, base_event),
        adjustment=delta,
        days=tuple(day for day, _ in ranked),
        step=history.step,
        screened_out=screened,
    )


def _screen_low_usage(
    candidates: list[tuple[date, list[Decimal]]], *, n_event: int, pool: int, share: Decimal | None
) -> tuple[list[tuple[date, list[Decimal]]], tuple[date, ...]]:
    """The ``pool`` most recent candidates that pass PJM's low-usage screen, and the days it replaced."""
    first = candidates[:pool]
    if share is None or len(first) < pool:
        return first, ()

    def usage(values: list[Decimal]) -> Decimal:  # average event-period usage of one day
        return sum(values[:n_event], _ZERO) / n_event

    average = sum((usage(v) for _, v in first), _ZERO) / pool
    if average <= 0:
        return first, ()
    threshold = share * average
    kept = [(day, v) for day, v in candidates if usage(v) >= threshold][:pool]
    last = kept[-1][0] if len(kept) == pool else None
    screened = tuple(day for day, v in candidates if usage(v) < threshold and (last is None or day > last))
    return kept, screened


def meter_before_meter_after(
    *,
    load_kw: pd.Series,
    event_start: pd.Timestamp,
    event_end: pd.Timestamp,
    window: pd.Timedelta | None = None,
) -> Baseline:
    """Meter-before/meter-after (storage): the baseline is the mean load over ``window`` just before the event
    (default: the one interval before it), held flat through the event."""
    step = _step_of(load_kw)
    event_start, event_end = pd.Timestamp(event_start), pd.Timestamp(event_end)
    event = _slots(event_start, event_end, step)
    # Only the readings just before the event count: read those, not the whole look-back (which the other
    # methods walk day by day), so an event's baseline costs the same whatever history the caller holds.
    before = _readings(load_kw, _slots(event_start - (window or step), event_start, step))
    level = sum(before, _ZERO) / len(before)
    flat = _series(event, [level] * len(event))
    return Baseline(method=BaselineMethod.METER_BEFORE_METER_AFTER, kw=flat, unadjusted_kw=flat,
                    adjustment=_ZERO, days=(), step=step)


def compute_baseline(
    method: BaselineMethod | str,
    *,
    load_kw: pd.Series,
    event_start: pd.Timestamp,
    event_end: pd.Timestamp,
    event_days: Collection[date] = (),
    holidays: Collection[date] = (),
    tz: str = "UTC",
) -> Baseline:
    """The baseline of ``method`` with each method's default parameters."""
    method = BaselineMethod(method)
    if method is BaselineMethod.METER_BEFORE_METER_AFTER:
        return meter_before_meter_after(load_kw=load_kw, event_start=event_start, event_end=event_end)
    build = caiso_10_in_10 if method is BaselineMethod.CAISO_10_IN_10 else pjm_high_4_of_5
    return build(load_kw=load_kw, event_start=event_start, event_end=event_end, event_days=event_days,
                 holidays=holidays, tz=tz)


def performance_kwh(*, baseline: Baseline, load_kw: pd.Series) -> Decimal:
    """Σ over the event slots of max(0, B′(h) − L(h)) × Δt, in kWh, rounded half-even to 1e-6 kWh."""
    step_h = hours(baseline.step)
    total = _ZERO
    for ts, b in baseline.kw.items():
        if ts not in load_kw.index or pd.isna(load_kw[ts]):
            raise BaselineError(f"load_kw has no reading at {ts} inside the event")
        total += max(_ZERO, b - to_decimal(load_kw[ts], what=f"load_kw[{ts}]")) * step_h
    return total.quantize(ENERGY_QUANTUM_KWH, rounding=ROUND_HALF_EVEN)
