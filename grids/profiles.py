"""Exogenous time series for a feeder: load P/Q, native generation and per-unit PV and flexible-load shapes.

This module owns ``ExogenousProfiles`` (the time × element series every run is fed with) and how they are
built from the SimBench year of 15-minute profiles that ships inside the ``simbench`` wheel (no downloads).

Time convention. SimBench stamps its 35,136 rows ``"dd.mm.YYYY HH:MM"`` in German wall-clock time *with*
daylight saving (27 Mar 2016 jumps from 01:45 to 03:00, 30 Oct repeats 02:00-02:45), while the rows
themselves are consecutive 15-minute intervals. We ignore the stamps and label row ``k`` as
``2016-01-01T00:00Z + k * 15 min``: the series is *treated as UTC*, giving 35,136 unique, gap-free labels
covering the UTC year 2016. As the rows are consecutive intervals from 00:00 CET, a label is the CET
(UTC+1, no DST) time written as UTC; every series shares that offset, so their shapes stay mutually
consistent. Intervals are labelled by their start, ``[t, t + step)``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pandapower as pp
import simbench as sb

from grids.catalog import is_simbench_net

__all__ = [
    "COMMERCIAL_PROFILES",
    "DATA_END",
    "DATA_START",
    "ExogenousProfiles",
    "FLEX_PROFILE",
    "HOUSEHOLD_PROFILES",
    "NATIVE_STEP",
    "PV_PROFILE",
    "ProfileError",
    "WIND_PROFILE",
    "feeder_profiles",
    "resample",
    "utc_timestamp",
]

#: Resolution of the shipped SimBench data and first / one-past-last interval start it covers.
NATIVE_STEP = pd.Timedelta("15min")
DATA_START = pd.Timestamp("2016-01-01T00:00:00Z")
DATA_END = pd.Timestamp("2017-01-01T00:00:00Z")
_N_ROWS = 35_136  # 366 days x 96 intervals

#: Standard load profiles assigned to loads of non-SimBench feeders (BDEW H0 households, G0/G1 commercial).
HOUSEHOLD_PROFILES: tuple[str, ...] = ("H0-A", "H0-B", "H0-C")
COMMERCIAL_PROFILES: tuple[str, ...] = ("G0-A", "G1-A")
#: Share of loads of a non-SimBench feeder that get a commercial rather than a household profile.
COMMERCIAL_SHARE = 0.2
#: PV shape used for fleet PV (and native PV of non-SimBench feeders) unless a SimBench net has its own.
PV_PROFILE = "PV5"
#: Wind shape for native wind turbines of non-SimBench feeders.
WIND_PROFILE = "WP4"
#: Flexible-load shape: SimBench's ground-source heat pump ("Soil_Alternative_1"), the archetypal deferrable
#: load (heat is stored in the building and the tank); strongly seasonal, zero in summer nights.
FLEX_PROFILE = "Soil_Alternative_1"


class ProfileError(ValueError):
    """Bad arguments for building or windowing profiles (names the argument and the value)."""


def utc_timestamp(value: Any, *, name: str) -> pd.Timestamp:
    """``value`` as a tz-aware UTC timestamp; naive values are read as UTC. ``name`` labels errors."""
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ProfileError(f"{name}={value!r} is not a timestamp ({exc})") from None
    if ts is pd.NaT:
        raise ProfileError(f"{name}={value!r} is not a timestamp")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


@dataclass(frozen=True)
class ExogenousProfiles:
    """Time × element series, index = interval start (tz-aware UTC DatetimeIndex with a fixed freq)."""

    load_p_mw: pd.DataFrame  # columns = net.load index (load convention)
    load_q_mvar: pd.DataFrame  # columns = net.load index
    sgen_p_mw: pd.DataFrame  # columns = net.sgen index; native feeder generation >= 0 (generator output)
    pv_per_mwp: pd.Series  # available PV output per MW-peak installed (0..~1), for fleet PV assets
    flex_per_mw: pd.Series  # normalized flexible-load draw shape (0..1) for fleet flex loads

    def __post_init__(self) -> None:
        index = self.load_p_mw.index
        if not isinstance(index, pd.DatetimeIndex) or str(index.tz) != "UTC" or index.freq is None:
            raise ProfileError("profiles need a tz-aware UTC DatetimeIndex with a fixed freq")
        for field_name in ("load_q_mvar", "sgen_p_mw", "pv_per_mwp", "flex_per_mw"):
            if not getattr(self, field_name).index.equals(index):
                raise ProfileError(f"{field_name} has a different time index from load_p_mw")

    @property
    def index(self) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(self.load_p_mw.index)

    @property
    def step(self) -> pd.Timedelta:
        return pd.Timedelta(self.index.freq)

    def window(self, start: Any, end: Any) -> ExogenousProfiles:
        """The intervals starting in ``[start, end)``; both must lie within the covered span."""
        start_ts, end_ts = utc_timestamp(start, name="start"), utc_timestamp(end, name="end")
        first, stop = self.index[0], self.index[-1] + self.step
        if not first <= start_ts < end_ts <= stop:
            raise ProfileError(
                f"window start={start_ts.isoformat()}, end={end_ts.isoformat()} is not inside the profiles' "
                f"span [{first.isoformat()}, {stop.isoformat()})"
            )
        # Positional slicing keeps the index's freq.
        i0, i1 = self.index.searchsorted(start_ts), self.index.searchsorted(end_ts)
        return ExogenousProfiles(
            load_p_mw=self.load_p_mw.iloc[i0:i1],
            load_q_mvar=self.load_q_mvar.iloc[i0:i1],
            sgen_p_mw=self.sgen_p_mw.iloc[i0:i1],
            pv_per_mwp=self.pv_per_mwp.iloc[i0:i1],
            flex_per_mw=self.flex_per_mw.iloc[i0:i1],
        )


def feeder_profiles(
    net: pp.pandapowerNet,
    *,
    start: Any,
    end: Any,
    step: pd.Timedelta = NATIVE_STEP,
    seed: int = 0,
) -> ExogenousProfiles:
    """Profiles for ``net`` over ``[start, end)`` at ``step`` (any span inside 2016, see the module docstring).

    SimBench nets (they carry ``net.profiles``) get their own absolute values (``seed`` is unused). Other
    feeders get SimBench
    standard load profiles, each load one chosen with ``seed`` (80 % household H0-A/B/C, 20 % commercial
    G0-A/G1-A), normalized to a peak of 1 and scaled by the load's ``p_mw`` / ``q_mvar``: the net's base case
    is read as its peak. Native sgens get a peak-normalized shape × ``p_mw`` by their ``type``: PV ->
    ``PV_PROFILE``, wind -> ``WIND_PROFILE``, anything else (CHP, fuel cell, ...) runs flat at ``p_mw``.
    ``pv_per_mwp`` is a SimBench PV profile normalized to its peak (so a fleet PV asset reaches its rating in
    the sunniest interval of the year); ``flex_per_mw`` is ``FLEX_PROFILE`` normalized to its peak.
    Steps coarser than 15 min average the intervals they cover; finer steps repeat (forward-fill) them.
    """
    step = _check_step(step)
    start_ts, end_ts = _check_span(start, end, step)
    reference = _reference_shapes()
    # Native 15-minute rows that cover [start, end): from the interval holding `start`. Only these rows are
    # scaled to absolute values: a year of thousands of loads would be gigabytes.
    i0 = int((start_ts.floor(NATIVE_STEP) - DATA_START) // NATIVE_STEP)
    i1 = int(-(-(end_ts - DATA_START) // NATIVE_STEP))  # ceil
    rows = slice(i0, i1)
    if is_simbench_net(net):
        native = _simbench_native(net, reference, rows)
    else:
        native = _synthetic_native(net, reference, rows, seed=seed)
    frames = {name: resample(frame, start=start_ts, end=end_ts, step=step) for name, frame in native.items()}
    return ExogenousProfiles(
        load_p_mw=frames["load_p_mw"],
        load_q_mvar=frames["load_q_mvar"],
        sgen_p_mw=frames["sgen_p_mw"],
        pv_per_mwp=frames["pv_per_mwp"].iloc[:, 0].rename("pv_per_mwp"),
        flex_per_mw=frames["flex_per_mw"].iloc[:, 0].rename("flex_per_mw"),
    )


def _check_step(step: Any) -> pd.Timedelta:
    try:
        step_td = pd.Timedelta(step)
    except (ValueError, TypeError):
        raise ProfileError(f"step={step!r} is not a duration") from None
    if step_td <= pd.Timedelta(0) or (NATIVE_STEP % step_td and step_td % NATIVE_STEP):
        raise ProfileError(f"step={step_td} must be positive and a multiple or a divisor of {NATIVE_STEP}")
    return step_td


def _check_span(start: Any, end: Any, step: pd.Timedelta) -> tuple[pd.Timestamp, pd.Timestamp]:
    start_ts, end_ts = utc_timestamp(start, name="start"), utc_timestamp(end, name="end")
    span = f"[{DATA_START.isoformat()}, {DATA_END.isoformat()})"
    if not DATA_START <= start_ts < DATA_END:
        raise ProfileError(f"start={start_ts.isoformat()} is outside the profile data {span}")
    if not DATA_START < end_ts <= DATA_END:
        raise ProfileError(f"end={end_ts.isoformat()} is outside the profile data {span}")
    if end_ts <= start_ts:
        raise ProfileError(f"end={end_ts.isoformat()} is not after start={start_ts.isoformat()}")
    grid = min(step, NATIVE_STEP)
    if (start_ts - DATA_START) % grid:
        raise ProfileError(f"start={start_ts.isoformat()} is not on the {grid} grid of the profile data")
    if (end_ts - start_ts) % step:
        raise ProfileError(f"end - start = {end_ts - start_ts} is not a whole number of steps of {step}")
    return start_ts, end_ts


def resample(frame: pd.DataFrame, *, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> pd.DataFrame:
    """``frame`` (index = interval starts) on the grid ``[start, end)`` with ``step``.

    Coarser than the frame: each new interval ``[t, t + step)`` is the mean of the rows starting inside it.
    Finer: each new interval takes the row whose interval contains it (forward fill).
    """
    index = pd.date_range(start, end, freq=step, inclusive="left", name="time")
    frame_step = pd.Timedelta(frame.index.freq) if frame.index.freq is not None else NATIVE_STEP
    if step > frame_step:
        bins = np.asarray((frame.index - start) // step)
        inside = (bins >= 0) & (bins < len(index))
        out = frame[inside].groupby(bins[inside]).mean()
        return out.set_axis(index[out.index.to_numpy()]).reindex(index)
    return frame.reindex(index, method="ffill")


def _native_index() -> pd.DatetimeIndex:
    return pd.date_range(DATA_START, periods=_N_ROWS, freq=NATIVE_STEP, name="time")


def _check_simbench_rows(time_column: pd.Series) -> None:
    if len(time_column) != _N_ROWS or str(time_column.iloc[0]) != "01.01.2016 00:00":
        raise ProfileError(
            f"SimBench profiles have {len(time_column)} rows starting {time_column.iloc[0]!r}; "
            f"expected {_N_ROWS} rows from '01.01.2016 00:00'"
        )


@functools.cache
def _reference_shapes() -> pd.DataFrame:
    """Peak-normalized SimBench reference shapes (household, commercial, PV, wind, heat pump), 15-min, 2016."""
    folder = sb.complete_data_path(0)
    load_names = (*HOUSEHOLD_PROFILES, *COMMERCIAL_PROFILES, FLEX_PROFILE)
    load_columns = [f"{name}_{pq}" for name in load_names for pq in ("pload", "qload")]
    load_columns = [c for c in load_columns if not c.startswith(FLEX_PROFILE + "_q")]
    loads = pd.read_csv(os.path.join(folder, "LoadProfile.csv"), sep=";", usecols=["time", *load_columns])
    res = pd.read_csv(os.path.join(folder, "RESProfile.csv"), sep=";", usecols=["time", PV_PROFILE, WIND_PROFILE])
    _check_simbench_rows(loads["time"])
    _check_simbench_rows(res["time"])
    shapes = pd.concat([loads.drop(columns="time"), res.drop(columns="time")], axis=1)
    shapes.index = _native_index()
    # Peak of |x| so reactive shapes that change sign keep their sign and stay within [-1, 1].
    return shapes / shapes.abs().max()


def _simbench_native(net: pp.pandapowerNet, reference: pd.DataFrame, rows: slice) -> dict[str, pd.DataFrame]:
    """The net's own absolute SimBench values on the native rows ``rows``: SimBench's relative profiles times
    each element's rating, exactly as ``simbench.get_absolute_values`` computes them, for those rows only."""
    _check_simbench_rows(net.profiles["load"]["time"])
    index = _native_index()[rows]

    def relative(table: str) -> pd.DataFrame:
        frame = net.profiles.get(table)
        return frame.iloc[rows] if isinstance(frame, pd.DataFrame) else pd.DataFrame(index=range(len(index)))

    def frame(element: str, column: str, columns: pd.Index, profiles: pd.DataFrame) -> pd.DataFrame:
        if len(net[element]) == 0:
            return pd.DataFrame(0.0, index=index, columns=columns)
        values = sb.get_absolute_profiles_from_relative_profiles(net, element, column, relative_profiles=profiles)
        if values is None or values.shape[1] == 0:
            return pd.DataFrame(0.0, index=index, columns=columns)
        out = values.reindex(columns=columns, fill_value=0.0).astype(float)
        out.index = index
        return out

    loads = relative("load")
    generation = sb.merge_dataframes([relative("powerplants"), relative("renewables")])
    return {
        "load_p_mw": frame("load", "p_mw", net.load.index, loads),
        "load_q_mvar": frame("load", "q_mvar", net.load.index, loads),
        "sgen_p_mw": frame("sgen", "p_mw", net.sgen.index, generation),
        "pv_per_mwp": _simbench_pv_shape(net, reference).iloc[rows].to_frame(),
        "flex_per_mw": reference[[f"{FLEX_PROFILE}_pload"]].iloc[rows],
    }


def _simbench_pv_shape(net: pp.pandapowerNet, reference: pd.DataFrame) -> pd.Series:
    """The PV profile most of the net's own PV systems use (same weather as native PV), peak-normalized."""
    renewables = net.profiles.get("renewables")
    used = net.sgen.get("profile", pd.Series(dtype=object)).dropna().astype(str)
    used = used[used.str.startswith("PV")]
    if isinstance(renewables, pd.DataFrame) and len(used):
        name = used.value_counts().sort_index().idxmax()
        if name in renewables.columns:
            shape = renewables[name].astype(float).to_numpy()
            return pd.Series(shape / np.abs(shape).max(), index=_native_index())
    return reference[PV_PROFILE]


def _synthetic_native(net: pp.pandapowerNet, reference: pd.DataFrame, rows: slice, *,
                      seed: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    n_loads = len(net.load)
    commercial = rng.random(n_loads) < COMMERCIAL_SHARE
    names = np.where(
        commercial,
        np.array(COMMERCIAL_PROFILES)[rng.integers(len(COMMERCIAL_PROFILES), size=n_loads)],
        np.array(HOUSEHOLD_PROFILES)[rng.integers(len(HOUSEHOLD_PROFILES), size=n_loads)],
    )
    reference = reference.iloc[rows]  # the draws above do not depend on the window
    p_shapes = reference[[f"{name}_pload" for name in names]].to_numpy()
    q_shapes = reference[[f"{name}_qload" for name in names]].to_numpy()
    index = reference.index
    load_p = pd.DataFrame(p_shapes * net.load["p_mw"].to_numpy(), index=index, columns=net.load.index)
    load_q = pd.DataFrame(q_shapes * net.load["q_mvar"].to_numpy(), index=index, columns=net.load.index)
    sgen_types = net.sgen.get("type", pd.Series("", index=net.sgen.index)).fillna("").astype(str).str.lower()
    sgen_shapes = np.ones((len(index), len(net.sgen)))
    is_pv = sgen_types.str.contains("pv").to_numpy()
    is_wind = sgen_types.str.contains(r"wind|wp|wt|wka", regex=True).to_numpy() & ~is_pv
    sgen_shapes[:, is_pv] = reference[[PV_PROFILE]].to_numpy()
    sgen_shapes[:, is_wind] = reference[[WIND_PROFILE]].to_numpy()
    sgen_p = pd.DataFrame(sgen_shapes * net.sgen["p_mw"].to_numpy(), index=index, columns=net.sgen.index)
    return {
        "load_p_mw": load_p,
        "load_q_mvar": load_q,
        "sgen_p_mw": sgen_p,
        "pv_per_mwp": reference[[PV_PROFILE]],
        "flex_per_mw": reference[[f"{FLEX_PROFILE}_pload"]],
    }
