"""The run's exogenous inputs as arrays, indexed once: the rows the engine reads each interval.

``RunInputs`` keeps labelled frames (what controllers' forecasts are cut from); the engine's per-step reads
(native load and generation for the power flow, available PV and flexible-load requests for the devices, the
price) come from here, aligned once with the grid model's element order and the fleet's asset order.
Shared by every policy's twin of a run (built once per ``RunInputs``).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twin.inputs import RunInputs

__all__ = ["InputArrays"]

_CACHE: dict[int, tuple[weakref.ref, InputArrays]] = {}


@dataclass(frozen=True)
class InputArrays:
    """Row ``r`` of every array is interval ``inputs.price_eur_per_mwh.index[r]``."""

    load_p_mw: np.ndarray  # time × native load, in net.load order
    load_q_mvar: np.ndarray
    sgen_p_mw: np.ndarray  # time × native sgen, in net.sgen order (generator output)
    pv_avail_mw: np.ndarray  # time × PV asset (``pv_positions`` in asset order)
    pv_positions: np.ndarray
    flex_base_mw: np.ndarray  # time × flexible load (``flex_positions`` in asset order)
    flex_positions: np.ndarray
    price_eur_per_mwh: np.ndarray  # time
    times_ns: np.ndarray  # interval starts (int64 ns)
    n_assets: int

    @classmethod
    def of(cls, inputs: RunInputs) -> InputArrays:
        """The arrays of ``inputs`` (built on first use, then shared while ``inputs`` lives)."""
        key = id(inputs)
        hit = _CACHE.get(key)
        if hit is not None and hit[0]() is inputs:
            return hit[1]
        arrays = cls._build(inputs)
        _CACHE[key] = (weakref.ref(inputs, lambda _, key=key: _CACHE.pop(key, None)), arrays)
        return arrays

    @classmethod
    def _build(cls, inputs: RunInputs) -> InputArrays:
        net, profiles, assets = inputs.net, inputs.profiles, inputs.assets

        def columns(frame: pd.DataFrame, order: pd.Index) -> np.ndarray:
            if frame.columns.equals(order):
                return frame.to_numpy(float)
            return frame.reindex(columns=order).to_numpy(float)

        return cls(
            load_p_mw=columns(profiles.load_p_mw, net.load.index),
            load_q_mvar=columns(profiles.load_q_mvar, net.load.index),
            sgen_p_mw=columns(profiles.sgen_p_mw, net.sgen.index),
            pv_avail_mw=_nan_to_zero(inputs.pv_avail_mw.to_numpy(float)),
            pv_positions=assets.index.get_indexer(inputs.pv_avail_mw.columns),
            flex_base_mw=_nan_to_zero(inputs.flex_base_mw.to_numpy(float)),
            flex_positions=assets.index.get_indexer(inputs.flex_base_mw.columns),
            price_eur_per_mwh=inputs.price_eur_per_mwh.to_numpy(float),
            times_ns=pd.DatetimeIndex(inputs.price_eur_per_mwh.index).as_unit("ns").asi8.copy(),
            n_assets=len(assets),
        )

    def row(self, time: pd.Timestamp) -> int:
        """Row of interval ``time`` (KeyError if it is not one)."""
        row = self.row_of.get(time.value)
        if row is None:
            raise KeyError(time)
        return row

    def price(self, row: int) -> float:
        """The price of interval ``row`` (EUR/MWh) as a Python float."""
        return self.prices[row]

    @property
    def row_of(self) -> dict[int, int]:
        """Interval start (int64 ns) -> row (the first, were one repeated); built on first use."""
        rows = self.__dict__.get("_rows")
        if rows is None:
            rows = self.__dict__["_rows"] = {t: r for r, t in reversed(list(enumerate(self.times_ns.tolist())))}
        return rows

    @property
    def prices(self) -> list[float]:
        """``price_eur_per_mwh`` as Python floats (a per-step read without a numpy scalar)."""
        prices = self.__dict__.get("_prices")
        if prices is None:
            prices = self.__dict__["_prices"] = self.price_eur_per_mwh.tolist()
        return prices

    @property
    def pv_avail_rows(self) -> np.ndarray:
        """time x asset available PV power (``pv_avail`` of every row; read-only)."""
        return self._full("_pv_full", self.pv_avail_mw, self.pv_positions)

    @property
    def flex_base_rows(self) -> np.ndarray:
        """time x asset requested flexible draw (``flex_base`` of every row; read-only)."""
        return self._full("_flex_full", self.flex_base_mw, self.flex_positions)

    def pv_avail(self, row: int) -> np.ndarray:
        """Available PV power per asset (asset order; 0 for other kinds) in interval ``row`` (read-only)."""
        return self._full("_pv_full", self.pv_avail_mw, self.pv_positions)[row]

    def flex_base(self, row: int) -> np.ndarray:
        """Requested draw per flexible load (asset order; 0 for other kinds) in interval ``row`` (read-only)."""
        return self._full("_flex_full", self.flex_base_mw, self.flex_positions)[row]

    def _full(self, name: str, compact: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """time x asset, built on first use (per-step reads are then row views, no allocation)."""
        full = self.__dict__.get(name)
        if full is None:
            full = np.zeros((len(compact), self.n_assets))
            full[:, positions] = compact
            full.flags.writeable = False
            self.__dict__[name] = full
        return full


def _nan_to_zero(values: np.ndarray) -> np.ndarray:
    """Missing values count as 0 (as the devices read them: nothing available, nothing requested)."""
    return np.where(np.isnan(values), 0.0, values)
