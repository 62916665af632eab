"""Device physics of the DER fleet: what a setpoint actually does to each asset over one interval.

Owns the dynamic state of batteries (SOC), EV sessions (energy still needed), flexible loads (deferred
energy with deadlines) and PV (available vs produced power), and the clipping of setpoints to ratings and
state limits. Vectorized over assets of a kind; exposed as labelled Series (index = asset_id).
Load convention throughout: positive p_mw charges / consumes, negative discharges / produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from controllers.api import AssetKind

__all__ = ["ClipReason", "FleetPhysics", "IntervalOutcome"]

#: Tolerance below which a clip is not worth recording (numerical noise from solvers).
_CLIP_TOL_MW = 1e-9


class ClipReason:
    """Why a setpoint was changed before it reached the device (recorded per asset and interval)."""

    RATING = "rating"
    SOC = "soc"
    AVAILABLE = "available"
    NOT_CONNECTED = "not_connected"
    DEADLINE = "deadline"


@dataclass(frozen=True)
class IntervalOutcome:
    """What the fleet did over ``[time, time + step)`` (index = asset_id)."""

    time: pd.Timestamp
    p_mw: pd.Series
    q_mvar: pd.Series
    p_requested_mw: pd.Series
    clipped: pd.Series  # reason string, "" when the setpoint applied as asked
    soc_mwh: pd.Series  # batteries at the interval end; NaN for other kinds
    pv_curtailed_mwh: float
    ev_unmet_mwh: float  # energy still needed by EVs that departed during this interval
    flex_unserved_mwh: float  # deferred energy that missed its deadline
    e_imp_mwh: pd.Series  # energy drawn from the grid in this interval, >= 0
    e_exp_mwh: pd.Series  # energy fed into the grid in this interval, >= 0


class FleetPhysics:
    """The engine-owned dynamic state of one fleet. ``advance`` applies one interval and returns what happened."""

    def __init__(self, assets: pd.DataFrame, ev_sessions: pd.DataFrame, *, step: pd.Timedelta) -> None:
        self.assets = assets
        self.step = step
        self.hours = step / pd.Timedelta("1h")
        ids = assets.index
        kinds = assets["kind"].astype(str)
        self.ids = ids
        self.is_kind = {kind: (kinds == kind).to_numpy() for kind in AssetKind}
        self.p_max = assets["p_max_mw"].to_numpy(float)
        self.e_max = assets["e_max_mwh"].to_numpy(float)
        self.eta_c = assets["eta_charge"].to_numpy(float)
        self.eta_d = assets["eta_discharge"].to_numpy(float)
        self.soc_min = assets["soc_min"].to_numpy(float) * self.e_max
        self.soc_max = assets["soc_max"].to_numpy(float) * self.e_max
        self.s_max = assets["s_max_mva"].to_numpy(float)
        self.v2g = assets["v2g"].to_numpy(bool)
        self.soc = np.where(self.is_kind[AssetKind.BATTERY], assets["soc_init"].to_numpy(float) * self.e_max, np.nan)
        # EV sessions: per charger, the active session's need and departure.
        self.sessions = ev_sessions.sort_values("arrival").reset_index(drop=True)
        self.ev_need = np.zeros(len(ids))
        self.ev_departure = np.full(len(ids), np.datetime64("NaT"), dtype="datetime64[ns]")
        self.ev_connected = np.zeros(len(ids), dtype=bool)
        self._next_session = 0
        self._pos = pd.Series(np.arange(len(ids)), index=ids)
        # Flexible loads: a request made in interval k may be served in intervals k .. k + w - 1 (w = window
        # in steps, at least 1 = not deferrable). Unserved energy is kept by age; stored ages 0 .. w - 2.
        window_steps = (assets["flex_window"] / step).fillna(0).astype(int).to_numpy()
        self.flex_window_steps = np.where(self.is_kind[AssetKind.FLEX_LOAD], np.maximum(window_steps, 1), 0)
        self.flex_buckets = np.zeros((len(ids), max(1, int(self.flex_window_steps.max(initial=1)) - 1)))
        self.e_imp_register_mwh = np.zeros(len(ids))
        self.e_exp_register_mwh = np.zeros(len(ids))

    # -- state the controllers may see -------------------------------------------------------------
    def state_frame(self, time: pd.Timestamp) -> pd.DataFrame:
        self._update_sessions(time)
        backlog = self.flex_buckets.sum(axis=1)
        return pd.DataFrame(
            {
                "soc_mwh": self.soc,
                "ev_connected": self.ev_connected,
                "ev_energy_needed_mwh": np.where(self.ev_connected, self.ev_need, 0.0),
                "ev_departure": pd.to_datetime(self.ev_departure).tz_localize("UTC"),
                "flex_backlog_mwh": backlog,
                "flex_deadline": self._flex_deadline(time),
                "e_imp_mwh": self.e_imp_register_mwh,
                "e_exp_mwh": self.e_exp_register_mwh,
            },
            index=self.ids,
        )

    def _flex_deadline(self, time: pd.Timestamp) -> pd.Series:
        # Stored bucket a is age a + 1 in the interval starting at ``time``; its last allowed interval is
        # the one where it reaches age w - 1, which ends at time + (w - 1 - a) steps.
        deadlines = []
        for i in range(len(self.ids)):
            nonzero = np.nonzero(self.flex_buckets[i] > _CLIP_TOL_MW)[0]
            if len(nonzero) == 0:
                deadlines.append(pd.NaT)
            else:
                oldest = int(nonzero.max())
                deadlines.append(time + (int(self.flex_window_steps[i]) - 1 - oldest) * self.step)
        return pd.Series(pd.to_datetime(deadlines, utc=True), index=self.ids)

    def autonomous_p_mw(self, *, pv_avail_mw: pd.Series, flex_base_mw: pd.Series) -> pd.Series:
        """The default a device falls back to without a valid setpoint: batteries idle, EVs at full rate
        until full, flexible loads serve their request (and anything due), PV at full output."""
        p = np.zeros(len(self.ids))
        ev = self.is_kind[AssetKind.EV_CHARGER] & self.ev_connected
        p[ev] = np.minimum(self.p_max[ev], self.ev_need[ev] / (self.eta_c[ev] * self.hours))
        flex = self.is_kind[AssetKind.FLEX_LOAD]
        base = flex_base_mw.reindex(self.ids).fillna(0.0).to_numpy()
        p[flex] = base[flex] + self.flex_buckets[flex].sum(axis=1) / self.hours
        pv = self.is_kind[AssetKind.PV]
        p[pv] = -pv_avail_mw.reindex(self.ids).fillna(0.0).to_numpy()[pv]
        return pd.Series(np.minimum(p, np.where(flex | ev, self.p_max, np.inf)), index=self.ids)

    # -- one interval ------------------------------------------------------------------------------
    def advance(
        self,
        time: pd.Timestamp,
        *,
        p_setpoint_mw: pd.Series,
        q_setpoint_mvar: pd.Series,
        pv_avail_mw: pd.Series,
        flex_base_mw: pd.Series,
    ) -> IntervalOutcome:
        """Apply setpoints (index asset_id; every asset present) for ``[time, time + step)``."""
        self._update_sessions(time)
        h = self.hours
        req = p_setpoint_mw.reindex(self.ids).to_numpy(float)
        p = req.copy()
        reason = np.full(len(self.ids), "", dtype=object)

        def clip(mask: np.ndarray, lo: np.ndarray, hi: np.ndarray, why: str) -> None:
            new = np.clip(p, lo, hi)
            changed = mask & (np.abs(new - p) > _CLIP_TOL_MW)
            reason[changed & (reason == "")] = why
            p[mask] = new[mask]

        # Batteries: rating, then what the SOC allows in this interval.
        bat = self.is_kind[AssetKind.BATTERY]
        clip(bat, -self.p_max, self.p_max, ClipReason.RATING)
        with np.errstate(invalid="ignore", divide="ignore"):
            p_charge_max = np.maximum(self.soc_max - self.soc, 0.0) / (self.eta_c * h)
            p_dis_max = np.maximum(self.soc - self.soc_min, 0.0) * self.eta_d / h
        clip(bat, -p_dis_max, p_charge_max, ClipReason.SOC)
        # EVs: nothing when unplugged; otherwise rating, need, and V2G only where allowed.
        ev = self.is_kind[AssetKind.EV_CHARGER]
        clip(ev & ~self.ev_connected, np.zeros_like(p), np.zeros_like(p), ClipReason.NOT_CONNECTED)
        evc = ev & self.ev_connected
        lo_ev = np.where(self.v2g, -self.p_max, 0.0)
        clip(evc, lo_ev, self.p_max, ClipReason.RATING)
        with np.errstate(invalid="ignore", divide="ignore"):
            p_need_max = self.ev_need / (self.eta_c * h)
            v2g_room = np.maximum(self.e_max - self.ev_need, 0.0) * self.eta_d / h
        clip(evc, np.where(self.v2g, -v2g_room, 0.0), p_need_max, ClipReason.SOC)
        # Flexible loads: serve at least what falls due, at most request + backlog, within rating.
        flex = self.is_kind[AssetKind.FLEX_LOAD]
        base = flex_base_mw.reindex(self.ids).fillna(0.0).to_numpy()
        due = self._flex_due_mwh(base) / h
        clip(flex, np.zeros_like(p), self.p_max, ClipReason.RATING)
        hi_flex = base + self.flex_buckets.sum(axis=1) / h
        clip(flex, np.minimum(due, self.p_max), np.maximum(hi_flex, 0.0), ClipReason.DEADLINE)
        # PV: produce between 0 and what the sun offers.
        pv = self.is_kind[AssetKind.PV]
        avail = pv_avail_mw.reindex(self.ids).fillna(0.0).to_numpy()
        clip(pv, -avail, np.zeros_like(p), ClipReason.AVAILABLE)

        q = self._clip_q(p, q_setpoint_mvar.reindex(self.ids).fillna(0.0).to_numpy(float))
        soc_end, ev_unmet, flex_unserved, curtailed = self._integrate(time, p, base, avail)
        e = p * h
        self.e_imp_register_mwh += np.maximum(e, 0.0)
        self.e_exp_register_mwh += np.maximum(-e, 0.0)
        return IntervalOutcome(
            time=time,
            p_mw=pd.Series(p, index=self.ids),
            q_mvar=pd.Series(q, index=self.ids),
            p_requested_mw=pd.Series(req, index=self.ids),
            clipped=pd.Series(reason, index=self.ids, dtype=object).astype(str),
            soc_mwh=pd.Series(soc_end, index=self.ids),
            pv_curtailed_mwh=curtailed,
            ev_unmet_mwh=ev_unmet,
            flex_unserved_mwh=flex_unserved,
            e_imp_mwh=pd.Series(np.maximum(e, 0.0), index=self.ids),
            e_exp_mwh=pd.Series(np.maximum(-e, 0.0), index=self.ids),
        )

    def _clip_q(self, p: np.ndarray, q: np.ndarray) -> np.ndarray:
        # Only inverters (PV, battery) make reactive power, within what their rating leaves beside P.
        inverter = self.is_kind[AssetKind.PV] | self.is_kind[AssetKind.BATTERY]
        q_room = np.sqrt(np.maximum(self.s_max**2 - p**2, 0.0))
        return np.where(inverter, np.clip(q, -q_room, q_room), 0.0)

    def _integrate(
        self, time: pd.Timestamp, p: np.ndarray, base: np.ndarray, avail: np.ndarray
    ) -> tuple[np.ndarray, float, float, float]:
        h = self.hours
        bat = self.is_kind[AssetKind.BATTERY]
        charge = np.maximum(p, 0.0)
        discharge = np.maximum(-p, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = charge * self.eta_c * h - discharge / self.eta_d * h
        self.soc = np.where(bat, np.clip(self.soc + delta, self.soc_min, self.soc_max), self.soc)

        ev = self.is_kind[AssetKind.EV_CHARGER] & self.ev_connected
        with np.errstate(invalid="ignore", divide="ignore"):
            ev_delta = charge * self.eta_c * h - discharge / self.eta_d * h
        self.ev_need = np.where(ev, np.maximum(self.ev_need - ev_delta, 0.0), self.ev_need)
        end = time + self.step
        departing = ev & (self.ev_departure <= end.tz_convert(None).to_datetime64())
        ev_unmet = float(self.ev_need[departing].sum())
        self.ev_need[departing] = 0.0
        self.ev_connected[departing] = False
        self.ev_departure[departing] = np.datetime64("NaT")

        flex_unserved = self._serve_flex(p, base)
        pv = self.is_kind[AssetKind.PV]
        curtailed = float(((avail + p) * h)[pv].sum())
        return self.soc.copy(), ev_unmet, flex_unserved, max(curtailed, 0.0)

    def _flex_due_mwh(self, base: np.ndarray) -> np.ndarray:
        """Energy whose last allowed interval is this one (the request itself when w = 1)."""
        due = np.zeros(len(self.ids))
        for i in np.nonzero(self.is_kind[AssetKind.FLEX_LOAD])[0]:
            w = int(self.flex_window_steps[i])
            due[i] = base[i] * self.hours if w == 1 else self.flex_buckets[i, w - 2]
        return due

    def _serve_flex(self, p: np.ndarray, base: np.ndarray) -> float:
        """Add this interval's request, serve oldest first, age the rest; return energy past its deadline."""
        h = self.hours
        unserved = 0.0
        for i in np.nonzero(self.is_kind[AssetKind.FLEX_LOAD])[0]:
            w = int(self.flex_window_steps[i])
            pending = np.concatenate([[base[i] * h], self.flex_buckets[i, : w - 1]])  # ages 0 .. w - 1
            served = p[i] * h
            for age in range(w - 1, -1, -1):  # oldest first
                take = min(served, pending[age])
                pending[age] -= take
                served -= take
            unserved += float(pending[w - 1])
            self.flex_buckets[i, : w - 1] = pending[: w - 1]
        return unserved

    def _update_sessions(self, time: pd.Timestamp) -> None:
        """Plug in every EV whose session has started by ``time`` (sessions sorted by arrival)."""
        sessions = self.sessions
        while self._next_session < len(sessions) and sessions.at[self._next_session, "arrival"] <= time:
            row = sessions.iloc[self._next_session]
            self._next_session += 1
            if row["asset_id"] not in self._pos.index or row["departure"] <= time:
                continue
            i = int(self._pos[row["asset_id"]])
            self.ev_connected[i] = True
            self.ev_need[i] = float(row["energy_mwh"])
            self.ev_departure[i] = pd.Timestamp(row["departure"]).tz_convert(None).to_datetime64()
