"""Reference policies without optimization: no control, and a rule-based battery peak shaver."""

from __future__ import annotations

import pandas as pd

from controllers.api import AssetKind, ControllerSpec, Dispatch, Observation

__all__ = ["NoControl", "PeakShaver"]


class NoControl:
    """Sends nothing: every device runs on its autonomous default (the "do nothing" reference)."""

    #: Never reads ``observation.grid``: the twin may replay it open loop (the whole period's power flow in one
    #: batch, ``twin.engine.open_loop``).
    reads_grid = False

    def __init__(self) -> None:
        self._nothing = Dispatch.empty()  # the same empty dispatch every interval (the engine never mutates one)

    def reset(self, spec: ControllerSpec, *, seed: int) -> None:
        del spec, seed

    def act(self, observation: Observation) -> Dispatch:
        return self._nothing


class PeakShaver:
    """Batteries discharge when the feeder's net load is above a threshold and soak up reverse flow.

    Net load is the current interval's forecast of uncontrolled load minus fleet PV, plus EVs and flexible
    loads at their autonomous draw. Above ``threshold_mw`` the batteries discharge the excess; below
    ``charge_below_mw`` (default 0: the feeder exports) they charge with the surplus, so they store PV
    rather than buying energy. ``threshold_mw=None`` shaves to ``shave_fraction`` of the peak net load
    forecast over the horizon (so a week-long run adapts to each day). Batteries share the work in
    proportion to their power rating.
    """

    #: Reads the forecast and the device state, never ``observation.grid``: open-loop replay is exact.
    reads_grid = False

    def __init__(
        self, *, threshold_mw: float | None = None, shave_fraction: float = 0.8, charge_below_mw: float = 0.0
    ) -> None:
        if threshold_mw is not None and threshold_mw < 0:
            raise ValueError(f"threshold_mw={threshold_mw!r} must be >= 0")
        if not 0 < shave_fraction <= 1:
            raise ValueError(f"shave_fraction={shave_fraction!r} must be in (0, 1]")
        self.threshold_mw = threshold_mw
        self.shave_fraction = shave_fraction
        self.charge_below_mw = charge_below_mw
        self._batteries: pd.Index = pd.Index([])

    def reset(self, spec: ControllerSpec, *, seed: int) -> None:
        del seed
        self._batteries = spec.assets.index[spec.assets["kind"].astype(str) == AssetKind.BATTERY]

    def _net_load_mw(self, obs: Observation) -> pd.Series:
        """Forecast feeder net load per interval of the horizon, without the batteries."""
        f = obs.forecast
        net = f.base_load_mw.sum(axis=1) - f.pv_avail_mw.sum(axis=1) + f.flex_base_mw.sum(axis=1)
        ev = obs.state["ev_connected"].astype(bool)
        ev_rate = obs.assets.loc[ev[ev].index, "p_max_mw"].sum() if ev.any() else 0.0
        return net + ev_rate

    def act(self, observation: Observation) -> Dispatch:
        if len(self._batteries) == 0:
            return Dispatch.empty()
        net = self._net_load_mw(observation)
        now = float(net.iloc[0])
        threshold = self.threshold_mw if self.threshold_mw is not None else self.shave_fraction * float(net.max())
        rating = observation.assets.loc[self._batteries, "p_max_mw"].astype(float)
        share = rating / rating.sum()
        if now > threshold:
            p = -(now - threshold) * share
        elif now < self.charge_below_mw:
            p = (self.charge_below_mw - now) * share
        else:
            p = 0.0 * share
        # Batteries that are full (or empty) are not asked to go further: that would only be clipped.
        soc = observation.state.loc[self._batteries, "soc_mwh"].astype(float)
        e_max = observation.assets.loc[self._batteries, "e_max_mwh"].astype(float)
        full = soc >= observation.assets.loc[self._batteries, "soc_max"].astype(float) * e_max - 1e-9
        empty = soc <= observation.assets.loc[self._batteries, "soc_min"].astype(float) * e_max + 1e-9
        p = p.where(~((p > 0) & full) & ~((p < 0) & empty), 0.0)
        return Dispatch.from_mapping(p.clip(-rating, rating).to_dict(), net_load_mw=now, threshold_mw=threshold)
