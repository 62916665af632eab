"""Exogenous profiles: resampling by hand, windows, SimBench values, synthetic profiles for other feeders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import simbench as sb

from grids import ExogenousProfiles, ProfileError, feeder_profiles, load_feeder
from grids.profiles import DATA_START, resample

SIMBENCH = "simbench:1-LV-rural1--0-sw"
QUARTER = pd.Timedelta("15min")


@pytest.fixture(scope="module")
def simbench_net():
    return load_feeder(SIMBENCH)


def test_resample_15_min_to_1_h_is_the_mean_by_hand() -> None:
    index = pd.date_range("2016-03-01T00:00Z", periods=8, freq="15min")
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 4.0, 4.0]}, index=index)
    hourly = resample(frame, start=index[0], end=index[0] + pd.Timedelta("2h"), step=pd.Timedelta("1h"))
    assert hourly["a"].tolist() == [3.0, 2.0]  # (1+2+3+6)/4, (0+0+4+4)/4
    assert hourly.index.freq == pd.Timedelta("1h")
    assert hourly.index[1] == pd.Timestamp("2016-03-01T01:00Z")


def test_resample_finer_forward_fills() -> None:
    index = pd.date_range("2016-03-01T00:00Z", periods=2, freq="15min")
    frame = pd.DataFrame({"a": [1.0, 5.0]}, index=index)
    fine = resample(frame, start=index[0], end=index[0] + pd.Timedelta("30min"), step=pd.Timedelta("5min"))
    assert fine["a"].tolist() == [1.0, 1.0, 1.0, 5.0, 5.0, 5.0]


def test_simbench_values_equal_simbench_absolute_values(simbench_net) -> None:
    profiles = feeder_profiles(simbench_net, start="2016-06-01", end="2016-06-02")
    absolute = sb.get_absolute_values(simbench_net, profiles_instead_of_study_cases=True)
    # 1 June 12:00 is row 152 days * 96 + 48 = 14640 (Jan 31 + Feb 29 + Mar 31 + Apr 30 + May 31 = 152 days).
    row = 152 * 96 + 48
    ts = pd.Timestamp("2016-06-01T12:00Z")
    np.testing.assert_array_equal(profiles.load_p_mw.loc[ts].to_numpy(), absolute[("load", "p_mw")].iloc[row])
    np.testing.assert_array_equal(profiles.load_q_mvar.loc[ts].to_numpy(), absolute[("load", "q_mvar")].iloc[row])
    np.testing.assert_array_equal(profiles.sgen_p_mw.loc[ts].to_numpy(), absolute[("sgen", "p_mw")].iloc[row])
    assert list(profiles.load_p_mw.columns) == list(simbench_net.load.index)
    assert list(profiles.sgen_p_mw.columns) == list(simbench_net.sgen.index)
    assert (profiles.sgen_p_mw >= 0).all().all()  # native generation is generator output


def test_simbench_hourly_is_the_mean_of_four_quarters(simbench_net) -> None:
    quarters = feeder_profiles(simbench_net, start="2016-06-01", end="2016-06-02")
    hours = feeder_profiles(simbench_net, start="2016-06-01", end="2016-06-02", step=pd.Timedelta("1h"))
    assert hours.step == pd.Timedelta("1h") and len(hours.load_p_mw) == 24
    np.testing.assert_allclose(hours.load_p_mw.iloc[13], quarters.load_p_mw.iloc[52:56].mean(), rtol=1e-12)
    np.testing.assert_allclose(hours.pv_per_mwp.iloc[13], quarters.pv_per_mwp.iloc[52:56].mean(), rtol=1e-12)


def test_time_convention_and_full_year(simbench_net) -> None:
    year = feeder_profiles(simbench_net, start="2016-01-01", end="2017-01-01")
    assert len(year.load_p_mw) == 35_136  # 366 days x 96, no DST gap or repeat
    assert year.index[0] == DATA_START
    assert str(year.index.tz) == "UTC" and year.step == QUARTER
    assert year.index.is_unique and year.index.is_monotonic_increasing
    assert year.pv_per_mwp.max() == pytest.approx(1.0)  # normalized to its peak
    assert year.pv_per_mwp.min() == 0.0
    assert 0.0 <= year.flex_per_mw.min() and year.flex_per_mw.max() == pytest.approx(1.0)


def test_window_is_half_open_and_keeps_the_step(simbench_net) -> None:
    profiles = feeder_profiles(simbench_net, start="2016-06-01", end="2016-06-02")
    window = profiles.window("2016-06-01T06:00Z", "2016-06-01T07:00Z")
    assert isinstance(window, ExogenousProfiles)
    assert list(window.index) == list(pd.date_range("2016-06-01T06:00Z", periods=4, freq="15min"))
    assert window.step == QUARTER
    pd.testing.assert_frame_equal(window.load_p_mw, profiles.load_p_mw.iloc[24:28])
    with pytest.raises(ProfileError, match="2016-06-03"):
        profiles.window("2016-06-01T06:00Z", "2016-06-03T00:00Z")


@pytest.mark.parametrize(
    ("start", "end", "step", "named"),
    [
        ("2015-12-31", "2016-01-02", QUARTER, "start=2015-12-31"),
        ("2016-12-31", "2017-01-02", QUARTER, "end=2017-01-02"),
        ("2016-02-01", "2016-01-01", QUARTER, "end=2016-01-01"),
        ("2016-01-01", "2016-01-02", pd.Timedelta("7min"), "step=0 days 00:07:00"),
        ("2016-01-01", "2016-01-01T01:30", pd.Timedelta("1h"), "end - start"),
    ],
)
def test_bad_spans_name_the_value(simbench_net, start, end, step, named) -> None:
    with pytest.raises(ProfileError, match=named):
        feeder_profiles(simbench_net, start=start, end=end, step=step)


def test_synthetic_profiles_scale_the_peak_to_the_base_case() -> None:
    net = load_feeder("baran-wu-33")
    year = feeder_profiles(net, start="2016-01-01", end="2017-01-01", seed=1)
    # Shapes are normalized to a peak of 1, so each load's yearly maximum is its base-case p_mw.
    np.testing.assert_allclose(year.load_p_mw.max().to_numpy(), net.load["p_mw"].to_numpy(), rtol=1e-12)
    assert (year.load_p_mw.min() > 0).all()
    assert list(year.load_q_mvar.columns) == list(net.load.index)
    assert year.sgen_p_mw.shape == (35_136, 0)


def test_synthetic_sgens_follow_their_type() -> None:
    net = load_feeder("cigre-mv-der")
    profiles = feeder_profiles(net, start="2016-06-01", end="2016-06-02")
    pv = net.sgen.index[net.sgen["type"] == "PV"]
    chp = net.sgen.index[net.sgen["type"] == "CHP diesel"]
    np.testing.assert_allclose(
        profiles.sgen_p_mw[pv].to_numpy(), np.outer(profiles.pv_per_mwp, net.sgen.loc[pv, "p_mw"]), rtol=1e-12
    )
    assert (profiles.sgen_p_mw[chp] == net.sgen.loc[chp, "p_mw"].to_numpy()).all().all()  # dispatchable, flat
    assert profiles.sgen_p_mw.loc["2016-06-01T00:00Z", pv].sum() == 0.0  # no sun at midnight


def test_synthetic_assignment_is_seeded() -> None:
    net = load_feeder("ieee-eu-lv")
    kwargs = dict(start="2016-01-04", end="2016-01-05")
    a = feeder_profiles(net, seed=7, **kwargs)
    b = feeder_profiles(net, seed=7, **kwargs)
    c = feeder_profiles(net, seed=8, **kwargs)
    pd.testing.assert_frame_equal(a.load_p_mw, b.load_p_mw, check_exact=True)
    assert not a.load_p_mw.equals(c.load_p_mw)


def test_profiles_reject_mismatched_indexes() -> None:
    index = pd.date_range("2016-01-01T00:00Z", periods=2, freq="15min")
    frame = pd.DataFrame({0: [1.0, 2.0]}, index=index)
    series = pd.Series([0.0, 1.0], index=index)
    with pytest.raises(ProfileError, match="pv_per_mwp"):
        ExogenousProfiles(frame, frame, frame, series.iloc[:1], series)


def test_simbench_window_equals_simbenchs_own_absolute_values() -> None:
    """Only the run's rows are scaled to absolute values (a year of an MV/LV grid's 5,000+ loads was 7.7 GB):
    the window equals the same rows of ``simbench.get_absolute_values`` over the whole year."""
    net = load_feeder("simbench:1-LV-rural1--0-sw")
    start, end = pd.Timestamp("2016-03-27T00:00:00Z"), pd.Timestamp("2016-03-28T12:00:00Z")
    window = feeder_profiles(net, start=start, end=end)
    full = sb.get_absolute_values(net, profiles_instead_of_study_cases=True)
    i0 = int((start - DATA_START) / pd.Timedelta("15min"))
    rows = slice(i0, i0 + len(window.load_p_mw))
    for mine, (element, column) in ((window.load_p_mw, ("load", "p_mw")), (window.load_q_mvar, ("load", "q_mvar")),
                                    (window.sgen_p_mw, ("sgen", "p_mw"))):
        reference = full[(element, column)].iloc[rows].reindex(columns=mine.columns, fill_value=0.0)
        np.testing.assert_array_equal(mine.to_numpy(), reference.to_numpy(float))
