"""Customer baselines, each against a worked example written out in the test."""

from datetime import date
from decimal import Decimal

import pandas as pd
import pytest

from twin.settlement.baselines import (
    BaselineError,
    BaselineMethod,
    DayType,
    caiso_10_in_10,
    compute_baseline,
    day_type,
    meter_before_meter_after,
    performance_kwh,
    pjm_high_4_of_5,
)

EVENT_DAY = date(2024, 7, 17)  # a Wednesday
EVENT_START = pd.Timestamp("2024-07-17T16:00Z")
EVENT_END = pd.Timestamp("2024-07-17T20:00Z")


def series(level_of, *, step="1h", start="2024-06-01", end="2024-07-18"):
    """Load in kW over [start, end) at ``step``; ``level_of(ts)`` gives each reading."""
    index = pd.date_range(start, end, freq=step, tz="UTC", inclusive="left")
    return pd.Series([float(level_of(ts)) for ts in index], index=index)


def event_day_profile(ts, *, before, during, other=100):
    """The event day: ``before`` until the event, ``during`` in it; other days ``other(day)`` or a level."""
    if ts.date() == EVENT_DAY:
        return during if ts >= EVENT_START else before
    return other(ts.date()) if callable(other) else other


def test_day_types_treat_holidays_as_sundays():
    assert day_type(date(2024, 7, 17)) == DayType.WEEKDAY
    assert day_type(date(2024, 7, 20)) == DayType.SATURDAY
    assert day_type(date(2024, 7, 21)) == DayType.SUNDAY_HOLIDAY
    assert day_type(date(2024, 7, 4), holidays={date(2024, 7, 4)}) == DayType.SUNDAY_HOLIDAY


@pytest.mark.parametrize("step", ["1h", "15min"])
def test_caiso_10_in_10_capped_adjustment_worked_example(step):
    # Ten eligible weekdays at 100 kW → B = 100. The adjustment window (12:00–15:00, the three hours
    # starting four hours before the 16:00 event) runs at 130 kW → r = 390/300 = 1.3, capped to 1.2 →
    # B′ = 120 kW. Event load 80 kW for 4 h → performance (120 − 80) × 4 = 160 kWh; uncapped 200 kWh.
    load = series(lambda ts: event_day_profile(ts, before=130, during=80), step=step)
    baseline = caiso_10_in_10(load_kw=load, event_start=EVENT_START, event_end=EVENT_END)
    assert len(baseline.days) == 10
    assert baseline.adjustment == Decimal("1.2")
    assert set(baseline.unadjusted_kw) == {Decimal(100)}
    assert set(baseline.kw) == {Decimal(120)}
    assert performance_kwh(baseline=baseline, load_kw=load) == Decimal(160)

    uncapped = caiso_10_in_10(load_kw=load, event_start=EVENT_START, event_end=EVENT_END,
                              ratio_cap=(Decimal(0), Decimal(10)))
    assert uncapped.adjustment == Decimal("1.3")
    assert performance_kwh(baseline=uncapped, load_kw=load) == Decimal(200)


def test_caiso_lower_cap_and_no_negative_performance():
    # Window at 50 kW → r = 0.5, capped up to 0.8 → B′ = 80 kW; load 90 kW is above it → 0 kWh, not −40.
    load = series(lambda ts: event_day_profile(ts, before=50, during=90))
    baseline = caiso_10_in_10(load_kw=load, event_start=EVENT_START, event_end=EVENT_END)
    assert baseline.adjustment == Decimal("0.8")
    assert performance_kwh(baseline=baseline, load_kw=load) == Decimal(0)


def test_caiso_eligible_days_skip_weekends_holidays_and_event_days():
    # 4 July (a Thursday holiday) at 500 kW and 10 July (a past event day) at 300 kW must be skipped, as must
    # weekends at 40 kW; the ten most recent remaining weekdays are all at 100 kW.
    holiday, past_event = date(2024, 7, 4), date(2024, 7, 10)

    def level(day):
        return {holiday: 500, past_event: 300}.get(day, 40 if day.weekday() >= 5 else 100)

    load = series(lambda ts: event_day_profile(ts, before=100, during=70, other=level))
    baseline = caiso_10_in_10(load_kw=load, event_start=EVENT_START, event_end=EVENT_END,
                              event_days={past_event}, holidays={holiday})
    expected = [date(2024, 7, d) for d in (16, 15, 12, 11, 9, 8, 5, 3, 2, 1)]
    assert list(baseline.days) == expected
    assert set(baseline.kw) == {Decimal(100)}
    assert performance_kwh(baseline=baseline, load_kw=load) == Decimal(120)  # (100 − 70) × 4 h

    # Without the calendar, the holiday and the event day are the most recent weekdays and pull B up.
    naive = caiso_10_in_10(load_kw=load, event_start=EVENT_START, event_end=EVENT_END)
    assert holiday in naive.days and past_event in naive.days
    assert set(naive.unadjusted_kw) == {Decimal(160)}  # (8 × 100 + 300 + 500) / 10


def test_pjm_high_4_of_5_additive_adjustment_worked_example():
    # Five most recent weekdays (most recent first) at 100, 110, 90, 120, 130 kW; older weekdays at 1000 kW
    # must not matter. The highest four (130, 120, 110, 100) average B = 115 kW. Window load 125 kW →
    # Δ = mean(125 − 115) = +10 → B′ = 125 kW. Event 16:00–18:00 at 85 kW → (125 − 85) × 2 = 80 kWh.
    levels = {date(2024, 7, 16): 100, date(2024, 7, 15): 110, date(2024, 7, 12): 90, date(2024, 7, 11): 120,
              date(2024, 7, 10): 130}
    load = series(lambda ts: event_day_profile(ts, before=125, during=85, other=lambda d: levels.get(d, 1000)))
    end = pd.Timestamp("2024-07-17T18:00Z")
    baseline = pjm_high_4_of_5(load_kw=load, event_start=EVENT_START, event_end=end)
    assert baseline.days == (date(2024, 7, 16), date(2024, 7, 15), date(2024, 7, 11), date(2024, 7, 10))
    assert set(baseline.unadjusted_kw) == {Decimal(115)}
    assert baseline.adjustment == Decimal(10)
    assert set(baseline.kw) == {Decimal(125)}
    assert performance_kwh(baseline=baseline, load_kw=load) == Decimal(80)


def test_pjm_adjustment_is_symmetric_downwards():
    # Same history, window at 100 kW → Δ = −15 → B′ = 100 kW; load 85 kW → (100 − 85) × 2 = 30 kWh.
    levels = {date(2024, 7, 16): 100, date(2024, 7, 15): 110, date(2024, 7, 12): 90, date(2024, 7, 11): 120,
              date(2024, 7, 10): 130}
    load = series(lambda ts: event_day_profile(ts, before=100, during=85, other=lambda d: levels.get(d, 1000)))
    baseline = pjm_high_4_of_5(load_kw=load, event_start=EVENT_START, event_end=pd.Timestamp("2024-07-17T18:00Z"))
    assert baseline.adjustment == Decimal(-15)
    assert performance_kwh(baseline=baseline, load_kw=load) == Decimal(30)


def test_pjm_weekend_uses_highest_2_of_3_like_days():
    # A Saturday event (20 July): like days are the three previous Saturdays at 50, 70, 60 kW (Sundays at
    # 999 kW are not alike). Highest two: 70 and 60 → B = 65 kW, unadjusted.
    saturday = pd.Timestamp("2024-07-20T10:00Z")
    levels = {date(2024, 7, 13): 50, date(2024, 7, 6): 70, date(2024, 6, 29): 60}

    def level(ts):
        d = ts.date()
        return levels.get(d, 999 if d.weekday() == 6 else 10 if d.weekday() == 5 else 100)

    load = series(level, end="2024-07-21")
    baseline = pjm_high_4_of_5(load_kw=load, event_start=saturday, event_end=saturday + pd.Timedelta("2h"),
                               adjust=False)
    assert baseline.days == (date(2024, 7, 6), date(2024, 6, 29))
    assert set(baseline.kw) == {Decimal(65)}


def test_pjm_needs_five_eligible_weekdays():
    load = series(lambda ts: 100, start="2024-07-12")  # 12, 15, 16 July: only three weekdays
    with pytest.raises(BaselineError, match="3 eligible weekday"):
        pjm_high_4_of_5(load_kw=load, event_start=EVENT_START, event_end=EVENT_END)


def test_meter_before_meter_after_for_storage():
    # A battery site draws 5 kW in the 15 minutes before the event and exports 15 kW (−15, load
    # convention) for the 2-hour event → performance (5 − (−15)) × 2 h = 40 kWh.
    index = pd.date_range("2024-07-17T15:00Z", "2024-07-17T19:00Z", freq="15min", inclusive="left")
    load = pd.Series([5.0 if ts < EVENT_START else -15.0 for ts in index], index=index)
    baseline = meter_before_meter_after(load_kw=load, event_start=EVENT_START,
                                        event_end=pd.Timestamp("2024-07-17T18:00Z"))
    assert set(baseline.kw) == {Decimal(5)}
    assert performance_kwh(baseline=baseline, load_kw=load) == Decimal(40)
    assert baseline.kw_at(pd.Timestamp("2024-07-17T16:20Z")) == Decimal(5)
    with pytest.raises(KeyError):
        baseline.kw_at(pd.Timestamp("2024-07-17T18:00Z"))


def test_compute_baseline_dispatches_by_method_name():
    load = series(lambda ts: event_day_profile(ts, before=130, during=80))
    baseline = compute_baseline("caiso_10_in_10", load_kw=load, event_start=EVENT_START, event_end=EVENT_END)
    assert baseline.method is BaselineMethod.CAISO_10_IN_10
    assert set(baseline.kw) == {Decimal(120)}


def test_naive_index_is_refused():
    load = pd.Series([1.0, 2.0], index=pd.date_range("2024-07-17", periods=2, freq="1h"))
    with pytest.raises(ValueError, match="tz-aware"):
        caiso_10_in_10(load_kw=load, event_start=EVENT_START, event_end=EVENT_END)


def test_days_and_weekends_are_judged_in_the_local_calendar():
    # Auckland (UTC+12 in July): an event on local Wednesday 17 July 08:00–10:00 is Tuesday 20:00–22:00 UTC.
    # Loads are 100 kW on local weekdays and 40 kW on local weekends. In the local calendar the ten
    # eligible days are all weekdays → B = 100 kW. Judged in UTC, the 20:00 UTC slot of a UTC Friday is
    # local Saturday morning (40 kW), so B would come out lower.
    tz = "Pacific/Auckland"
    start, end = pd.Timestamp("2024-07-16T20:00Z"), pd.Timestamp("2024-07-16T22:00Z")
    load = series(lambda ts: 40 if ts.tz_convert(tz).weekday() >= 5 else 100)
    local = caiso_10_in_10(load_kw=load, event_start=start, event_end=end, tz=tz, adjust=False)
    assert set(local.kw) == {Decimal(100)} and local.days[0] == date(2024, 7, 16)
    utc = caiso_10_in_10(load_kw=load, event_start=start, event_end=end, adjust=False)
    assert set(utc.kw) == {Decimal(100) - Decimal(60) * 2 / 10}  # two of ten days are local Saturdays: 88 kW


def test_pjm_pays_a_net_exporter_nothing_for_no_response():
    # A PV household exports 2 kW all day, every day, event day included: B = −2 kW, Δ = mean(−2 − (−2)) = 0,
    # B′ = −2 kW (no floor at 0). Event 16:00–18:00 at −2 kW → Σ max(0, −2 − (−2)) × 1 h = 0 kWh.
    # With the old floor B′ = 0 it was paid max(0, 0 − (−2)) × 2 h = 4 kWh, 2.00 EUR at 0.50 EUR/kWh.
    load = series(lambda ts: -2)
    baseline = pjm_high_4_of_5(load_kw=load, event_start=EVENT_START, event_end=pd.Timestamp("2024-07-17T18:00Z"))
    assert set(baseline.kw) == {Decimal(-2)} and baseline.adjustment == 0
    assert performance_kwh(baseline=baseline, load_kw=load) == Decimal(0)
    # A real reduction is still paid: exporting 3 kW more (−5 kW) for the 2 h → (−2 − (−5)) × 2 = 6 kWh.
    responded = series(lambda ts: event_day_profile(ts, before=-2, during=-5, other=-2))
    assert performance_kwh(baseline=baseline, load_kw=responded) == Decimal(6)


def test_pjm_low_usage_screen_replaces_days_below_25_percent():
    # Weekdays before Wed 17 July, most recent first: 16th 100 kW, 15th 10 kW, 12th 110 kW, 11th 15 kW,
    # 10th 120 kW, 9th 90 kW, 8th 130 kW; older weekdays 60 kW. The 5 most recent average
    # (100 + 10 + 110 + 15 + 120) / 5 = 71 kW over the event hours; 25 % of it is 17.75 kW, so the 15th (10) and
    # the 11th (15) are low-usage days, replaced by the next weekdays, the 9th (90) and the 8th (130).
    # Highest 4 of (100, 110, 120, 90, 130): 130, 120, 110, 100 → B = 115 kW; window at 115 kW → Δ = 0.
    # Event 16:00–18:00 at 85 kW → (115 − 85) × 2 h = 60 kWh. Without the screen the highest 4 of
    # (100, 10, 110, 15, 120) are 120, 110, 100, 15 → B = 86.25 kW.
    levels = {date(2024, 7, 16): 100, date(2024, 7, 15): 10, date(2024, 7, 12): 110, date(2024, 7, 11): 15,
              date(2024, 7, 10): 120, date(2024, 7, 9): 90, date(2024, 7, 8): 130}
    load = series(lambda ts: event_day_profile(ts, before=115, during=85, other=lambda d: levels.get(d, 60)))
    end = pd.Timestamp("2024-07-17T18:00Z")
    baseline = pjm_high_4_of_5(load_kw=load, event_start=EVENT_START, event_end=end)
    assert baseline.screened_out == (date(2024, 7, 15), date(2024, 7, 11))
    assert baseline.days == (date(2024, 7, 16), date(2024, 7, 12), date(2024, 7, 10), date(2024, 7, 8))
    assert set(baseline.unadjusted_kw) == {Decimal(115)} and baseline.adjustment == 0
    assert performance_kwh(baseline=baseline, load_kw=load) == Decimal(60)
    unscreened = pjm_high_4_of_5(load_kw=load, event_start=EVENT_START, event_end=end, low_usage_share=None)
    assert set(unscreened.unadjusted_kw) == {Decimal("86.25")}


def test_pjm_low_usage_screen_needs_enough_days_that_pass():
    # Only the 16th and 15th are normal (100 kW); every other weekday idles at 1 kW. The first five average
    # (100 + 100 + 1 + 1 + 1) / 5 = 40.6 kW → threshold 10.15 kW: just two days pass in 45 days.
    load = series(lambda ts: 100 if ts.date() in (date(2024, 7, 16), date(2024, 7, 15)) else 1)
    with pytest.raises(BaselineError, match=r"2 eligible weekday day\(s\).*screened out as low-usage days"):
        pjm_high_4_of_5(load_kw=load, event_start=EVENT_START, event_end=EVENT_END)
