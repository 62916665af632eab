"""Device physics of the DER fleet: what a setpoint actually does to each asset over one interval.

Owns the dynamic state of batteries (SOC), EV sessions (energy still needed), flexible loads (deferred
energy with deadlines) and PV (available vs produced power), and the clipping of setpoints to ratings and
state limits. Array-native: every method works on arrays in asset order (``FleetPhysics.ids``), vectorized
over the whole fleet; the labelled wrappers (``advance``, ``autonomous_p_mw``, ``state_frame``) are for the
edges (observations, the live device simulator, tests).
Load convention throughout: positive p_mw charges / consumes, negative discharges / produces.
"""

from __future__ import annotations

import copy
import math
import weakref
from dataclasses import dataclass

import numba
import numpy as np
import pandas as pd

from controllers.api import AssetKind

__all__ = ["autonomous_kernel", "CLIP_REASONS", "ClipReason", "FleetPhysics", "IntervalOutcome", "STATE_COLUMNS", "StateCapture"]

#: Tolerance below which a clip is not worth recording (numerical noise from solvers).
_CLIP_TOL_MW = 1e-9


class ClipReason:
    """Why a setpoint was changed before it reached the device (recorded per asset and interval)."""

    RATING = "rating"
    SOC = "soc"
    AVAILABLE = "available"
    NOT_CONNECTED = "not_connected"
    DEADLINE = "deadline"


#: Clip reasons by code (``IntervalOutcome.clip_code``): 0 = the setpoint applied as asked.
CLIP_REASONS: tuple[str, ...] = ("", ClipReason.RATING, ClipReason.SOC, ClipReason.AVAILABLE,
                                 ClipReason.NOT_CONNECTED, ClipReason.DEADLINE)
_CODE = {reason: np.int8(code) for code, reason in enumerate(CLIP_REASONS)}
_REASON_OBJECTS = np.array(CLIP_REASONS, dtype=object)

#: Kind codes of the compiled physics (``_advance_kernel``).
_KIND_ORDER = (AssetKind.PV, AssetKind.BATTERY, AssetKind.EV_CHARGER, AssetKind.FLEX_LOAD)
_PV, _BATTERY, _EV, _FLEX = range(4)

#: Columns of ``FleetPhysics.state_arrays`` / ``state_frame``, in order.
STATE_COLUMNS: tuple[str, ...] = ("soc_mwh", "ev_connected", "ev_energy_needed_mwh", "ev_departure",
                                  "flex_backlog_mwh", "flex_deadline", "e_imp_mwh", "e_exp_mwh")


@dataclass(frozen=True)
class IntervalOutcome:
    """What the fleet did over ``[time, time + step)``: arrays in the order of ``ids`` (asset_id); the
    labelled Series (``p_mw``, ``clipped``, ...) are built on access."""

    time: pd.Timestamp
    ids: pd.Index
    p: np.ndarray
    q: np.ndarray
    p_requested: np.ndarray
    clip_code: np.ndarray  # int8 codes into CLIP_REASONS
    soc: np.ndarray  # batteries at the interval end; NaN for other kinds
    pv_curtailed_mwh: float
    ev_unmet_mwh: float  # energy still needed by EVs that departed during this interval
    flex_unserved_mwh: float  # deferred energy that missed its deadline
    e_imp: np.ndarray  # energy drawn from the grid in this interval, >= 0
    e_exp: np.ndarray  # energy fed into the grid in this interval, >= 0

    def _series(self, values: np.ndarray) -> pd.Series:
        return pd.Series(values.copy(), index=self.ids)

    @property
    def p_mw(self) -> pd.Series:
        return self._series(self.p)

    @property
    def q_mvar(self) -> pd.Series:
        return self._series(self.q)

    @property
    def p_requested_mw(self) -> pd.Series:
        return self._series(self.p_requested)

    @property
    def soc_mwh(self) -> pd.Series:
        return self._series(self.soc)

    @property
    def e_imp_mwh(self) -> pd.Series:
        return self._series(self.e_imp)

    @property
    def e_exp_mwh(self) -> pd.Series:
        return self._series(self.e_exp)

    @property
    def clipped(self) -> pd.Series:
        """Clip reason per asset ("" when the setpoint applied as asked)."""
        return pd.Series(_REASON_OBJECTS[self.clip_code], index=self.ids, dtype=object).astype(str)

    @property
    def n_clipped(self) -> int:
        return int(np.count_nonzero(self.clip_code))


class StateCapture:
    """The fleet's state at one time, taken lazily: the arrays are computed when first read, and copied
    before the physics changes (so an observation nobody reads costs nothing, and one read later still sees
    its own interval)."""

    __slots__ = ("__weakref__", "_arrays", "_physics", "_time")

    def __init__(self, physics: FleetPhysics, time: pd.Timestamp) -> None:
        self._physics: FleetPhysics | None = physics
        self._time = time
        self._arrays: dict[str, np.ndarray] | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        """``FleetPhysics.state_arrays`` at the captured time."""
        if self._arrays is None:
            assert self._physics is not None
            self._arrays = self._physics._state_now(self._time)
            self._physics = None
        return self._arrays


@dataclass(frozen=True)
class _InitialState:
    """A fleet's state as built (``FleetPhysics.fresh`` starts its copies from it)."""

    soc: np.ndarray
    ev_need: np.ndarray
    ev_departure: np.ndarray
    ev_connected: np.ndarray
    flex_buckets: np.ndarray
    e_imp_register_mwh: np.ndarray
    e_exp_register_mwh: np.ndarray


class FleetPhysics:
    """The engine-owned dynamic state of one fleet. ``advance_arrays`` applies one interval and returns what
    happened; every per-asset quantity is an array in ``ids`` order."""

    def __init__(self, assets: pd.DataFrame, ev_sessions: pd.DataFrame, *, step: pd.Timedelta) -> None:
        self.assets = assets
        self.step = step
        self.hours = step / pd.Timedelta("1h")
        ids = assets.index
        kinds = assets["kind"].astype(str)
        self.ids = ids
        n = len(ids)
        self.is_kind = {kind: (kinds == kind).to_numpy() for kind in AssetKind}
        self.p_max = assets["p_max_mw"].to_numpy(float)
        self.e_max = assets["e_max_mwh"].to_numpy(float)
        self.eta_c = assets["eta_charge"].to_numpy(float)
        self.eta_d = assets["eta_discharge"].to_numpy(float)
        self.soc_min = assets["soc_min"].to_numpy(float) * self.e_max
        self.soc_max = assets["soc_max"].to_numpy(float) * self.e_max
        self.s_max = assets["s_max_mva"].to_numpy(float)
        self.v2g = assets["v2g"].to_numpy(bool)
        self.soc = self._initial_soc(assets)
        self._inverter = self.is_kind[AssetKind.PV] | self.is_kind[AssetKind.BATTERY]
        self._ev_or_flex = self.is_kind[AssetKind.FLEX_LOAD] | self.is_kind[AssetKind.EV_CHARGER]
        self._zeros = np.zeros(n)
        # EV sessions (sorted by arrival once): per charger, the active session's need and departure.
        self.sessions = ev_sessions.sort_values("arrival").reset_index(drop=True)
        self._session_arrival_ns = _utc_ns(self.sessions["arrival"])
        self._session_departure = _utc_ns(self.sessions["departure"]).astype("datetime64[ns]")
        self._session_pos = ids.get_indexer(self.sessions["asset_id"]) if n else np.full(len(self.sessions), -1)
        self._session_energy = self.sessions["energy_mwh"].to_numpy(float)
        self.ev_need = np.zeros(n)
        self.ev_departure = np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
        self.ev_connected = np.zeros(n, dtype=bool)
        self._next_session = 0
        # Flexible loads: a request made in interval k may be served in intervals k .. k + w - 1 (w = window
        # in steps, at least 1 = not deferrable). Unserved energy is kept by age; stored ages 0 .. w - 2.
        window_steps = (assets["flex_window"] / step).fillna(0).astype(int).to_numpy()
        self.flex_window_steps = np.where(self.is_kind[AssetKind.FLEX_LOAD], np.maximum(window_steps, 1), 0)
        self.flex_buckets = np.zeros((n, max(1, int(self.flex_window_steps.max(initial=1)) - 1)))
        self._flex_rows = np.flatnonzero(self.is_kind[AssetKind.FLEX_LOAD])
        w = self.flex_window_steps[self._flex_rows]
        width = int(w.max(initial=1))
        # Serving order j = 0, 1, ... is oldest first: order j of flex row i holds age w_i - 1 - j (if >= 0).
        self._flex_age = w[:, None] - 1 - np.arange(width)[None, :]
        self._flex_order_valid = self._flex_age >= 0
        self._flex_age_clipped = np.maximum(self._flex_age, 0)
        self._flex_due_column = np.maximum(w - 2, 0)
        self._flex_single = w == 1
        self._flex_width = width
        self._kind_code = np.full(n, -1, dtype=np.int8)
        for code, kind in enumerate(_KIND_ORDER):
            self._kind_code[self.is_kind[kind]] = code
        self.e_imp_register_mwh = np.zeros(n)
        self.e_exp_register_mwh = np.zeros(n)
        self._captures: list[weakref.ref[StateCapture]] = []
        self._initial = _InitialState(**{name: getattr(self, name).copy() for name in self._STATE})
        empty = np.empty(0)
        self._no_fleet = dict(ids=ids, p=empty, q=empty, p_requested=empty, clip_code=np.empty(0, dtype=np.int8),
                              soc=empty, pv_curtailed_mwh=0.0, ev_unmet_mwh=0.0, flex_unserved_mwh=0.0,
                              e_imp=empty, e_exp=empty) if n == 0 else None

    #: The attributes ``advance_arrays`` and the session updates change (``fresh`` copies them).
    _STATE = ("soc", "ev_need", "ev_departure", "ev_connected", "flex_buckets", "e_imp_register_mwh",
              "e_exp_register_mwh")

    def fresh(self) -> FleetPhysics:
        """A copy as built: its own state (SOC, EV sessions, deferred energy, meter registers; before this
        one's first interval), the ratings and session tables shared (read-only). What a twin of the same
        fleet starts from, without reading the asset table again, except its ``soc_init`` column (a live
        twin sets the batteries' measured SOC there before it starts)."""
        other = copy.copy(self)
        for name in self._STATE:
            setattr(other, name, getattr(self._initial, name).copy())
        other.soc = self._initial_soc(self.assets)
        other._next_session = 0
        other._captures = []
        return other

    def _initial_soc(self, assets: pd.DataFrame) -> np.ndarray:
        """Batteries' SOC at the start (MWh; NaN for other kinds), from the assets' ``soc_init`` fraction."""
        return np.where(self.is_kind[AssetKind.BATTERY], assets["soc_init"].to_numpy(float) * self.e_max, np.nan)

    # -- state the controllers may see -------------------------------------------------------------
    def capture_state(self, time: pd.Timestamp) -> StateCapture:
        """The state at the start of ``time`` (EVs that arrived plugged in now), to be read later."""
        self.update_sessions(time)
        capture = StateCapture(self, time)
        if self._no_fleet is None:  # no fleet: no state that could change before it is read
            self._captures.append(weakref.ref(capture))
        return capture

    def _freeze_captures(self) -> None:
        """Before the state changes: every capture still held (and not yet read) takes its copy now."""
        for ref in self._captures:
            capture = ref()
            if capture is not None:
                capture.arrays()
        self._captures.clear()

    def state_arrays(self, time: pd.Timestamp) -> dict[str, np.ndarray]:
        """The state at the start of ``time`` (EVs that arrived plugged in), as copies: column -> array in
        ``ids`` order (``STATE_COLUMNS``; times are UTC ``datetime64[ns]``, NaT where none)."""
        self.update_sessions(time)
        return self._state_now(time)

    def _state_now(self, time: pd.Timestamp) -> dict[str, np.ndarray]:
        soc, connected, needed, departure, backlog, deadline, e_imp, e_exp = _state_kernel(
            self.soc, self.ev_connected, self.ev_need, self.ev_departure.view(np.int64), self.flex_buckets,
            self.flex_window_steps, time.value, self.step.value, self.e_imp_register_mwh, self.e_exp_register_mwh,
            _CLIP_TOL_MW)
        return {"soc_mwh": soc, "ev_connected": connected, "ev_energy_needed_mwh": needed,
                "ev_departure": departure.view("datetime64[ns]"), "flex_backlog_mwh": backlog,
                "flex_deadline": deadline.view("datetime64[ns]"), "e_imp_mwh": e_imp, "e_exp_mwh": e_exp}

    def state_arrays_numpy(self, time: pd.Timestamp) -> dict[str, np.ndarray]:
        """``state_arrays`` as whole-array numpy operations (the reference)."""
        self.update_sessions(time)
        return {
            "soc_mwh": self.soc.copy(),
            "ev_connected": self.ev_connected.copy(),
            "ev_energy_needed_mwh": np.where(self.ev_connected, self.ev_need, 0.0),
            "ev_departure": self.ev_departure.copy(),
            "flex_backlog_mwh": self.flex_buckets.sum(axis=1),
            "flex_deadline": self.flex_deadline_ns(time).astype("datetime64[ns]"),
            "e_imp_mwh": self.e_imp_register_mwh.copy(),
            "e_exp_mwh": self.e_exp_register_mwh.copy(),
        }

    def state_frame(self, time: pd.Timestamp) -> pd.DataFrame:
        """``state_arrays`` as a table (index asset_id; times tz-aware UTC)."""
        return state_frame_of(self.state_arrays(time), self.ids)

    def flex_deadline_ns(self, time: pd.Timestamp) -> np.ndarray:
        """Per asset, when its oldest deferred energy must be served (int64 ns; NaT's value where none).

        Stored bucket a is age a + 1 in the interval starting at ``time``; its last allowed interval is the one
        where it reaches age w - 1, which ends at time + (w - 1 - a) steps."""
        owed = self.flex_buckets > _CLIP_TOL_MW
        width = owed.shape[1]
        oldest = width - 1 - np.argmax(owed[:, ::-1], axis=1)
        deadline = time.value + (self.flex_window_steps - 1 - oldest).astype(np.int64) * self.step.value
        return np.where(owed.any(axis=1), deadline, np.iinfo(np.int64).min)

    def autonomous(self, *, pv_avail: np.ndarray, flex_base: np.ndarray) -> np.ndarray:
        """The default a device falls back to without a valid setpoint: batteries idle, EVs at full rate
        until full, flexible loads serve their request (and anything due), PV at full output. ``pv_avail`` and
        ``flex_base`` are arrays in ``ids`` order (0 for other kinds)."""
        return autonomous_kernel(self._kind_code, self.p_max, self.eta_c, self.ev_connected, self.ev_need,
                                  self.flex_buckets, np.asarray(pv_avail, dtype=float),
                                  np.asarray(flex_base, dtype=float), self.hours)

    def autonomous_numpy(self, *, pv_avail: np.ndarray, flex_base: np.ndarray) -> np.ndarray:
        """``autonomous`` as whole-array numpy operations (the reference)."""
        p = np.zeros(len(self.ids))
        ev = self.is_kind[AssetKind.EV_CHARGER] & self.ev_connected
        p[ev] = np.minimum(self.p_max[ev], self.ev_need[ev] / (self.eta_c[ev] * self.hours))
        flex = self.is_kind[AssetKind.FLEX_LOAD]
        p[flex] = flex_base[flex] + self.flex_buckets[flex].sum(axis=1) / self.hours
        pv = self.is_kind[AssetKind.PV]
        p[pv] = -pv_avail[pv]
        return np.minimum(p, np.where(self._ev_or_flex, self.p_max, np.inf))

    def autonomous_p_mw(self, *, pv_avail_mw: pd.Series, flex_base_mw: pd.Series) -> pd.Series:
        """``autonomous`` by label (``pv_avail_mw`` / ``flex_base_mw`` by asset_id; missing = 0)."""
        return pd.Series(self.autonomous(pv_avail=self._by_id(pv_avail_mw), flex_base=self._by_id(flex_base_mw)),
                         index=self.ids)

    def _by_id(self, values: pd.Series) -> np.ndarray:
        return values.reindex(self.ids).fillna(0.0).to_numpy(float)

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
        """``advance_arrays`` by label: setpoints by asset_id (every asset present), missing Q = 0."""
        return self.advance_arrays(
            time, p_setpoint=p_setpoint_mw.reindex(self.ids).to_numpy(float),
            q_setpoint=self._by_id(q_setpoint_mvar), pv_avail=self._by_id(pv_avail_mw),
            flex_base=self._by_id(flex_base_mw))

    def advance_arrays(self, time: pd.Timestamp, *, p_setpoint: np.ndarray, q_setpoint: np.ndarray,
                       pv_avail: np.ndarray, flex_base: np.ndarray) -> IntervalOutcome:
        """Apply setpoints (arrays in ``ids`` order) for ``[time, time + step)``: clip them to ratings and
        state limits, integrate SOC, EV need and deferred load, and return what happened.

        One compiled pass over the fleet (``_advance_kernel``); ``advance_arrays_numpy`` is the same physics
        as whole-array numpy operations, kept as the readable reference the tests hold the kernel to."""
        if self._no_fleet is not None:  # no fleet: nothing moves (the kernel's answer, without its call)
            self._captures.clear()  # no state to copy: a capture reads empty arrays whenever it is read
            fields = self._no_fleet.copy()  # empty arrays, shared: nothing writes to them
            fields["time"] = time
            outcome = object.__new__(IntervalOutcome)
            object.__setattr__(outcome, "__dict__", fields)
            return outcome
        self.update_sessions(time)
        if self._captures:
            self._freeze_captures()
        n = len(self.ids)
        # The kernel writes into one block (p, q, soc, e_imp, e_exp, p_requested, then the three scalars):
        # views of it are cheaper than a returned array each.
        out = np.empty(6 * n + 3)
        code = np.zeros(n, dtype=np.int8)
        _advance_kernel(
            self._kind_code, self.p_max, self.e_max, self.eta_c, self.eta_d, self.soc_min, self.soc_max, self.s_max,
            self.v2g, self.flex_window_steps, np.asarray(pv_avail, dtype=float), np.asarray(flex_base, dtype=float),
            self.hours, time.value + self.step.value, np.asarray(p_setpoint, dtype=float),
            np.asarray(q_setpoint, dtype=float), self.soc, self.ev_connected, self.ev_need,
            self.ev_departure.view(np.int64), self.flex_buckets, self.e_imp_register_mwh, self.e_exp_register_mwh,
            _CLIP_TOL_MW, out, code)
        curtailed, ev_unmet, flex_unserved = out[6 * n:].tolist()
        outcome = object.__new__(IntervalOutcome)  # every field, without the frozen __init__'s per-field setattr
        object.__setattr__(outcome, "__dict__", {
            "time": time, "ids": self.ids, "p": out[:n], "q": out[n:2 * n], "p_requested": out[5 * n:6 * n],
            "clip_code": code, "soc": out[2 * n:3 * n], "pv_curtailed_mwh": max(curtailed, 0.0),
            "ev_unmet_mwh": ev_unmet, "flex_unserved_mwh": flex_unserved, "e_imp": out[3 * n:4 * n],
            "e_exp": out[4 * n:5 * n]})
        return outcome

    def advance_arrays_numpy(self, time: pd.Timestamp, *, p_setpoint: np.ndarray, q_setpoint: np.ndarray,
                             pv_avail: np.ndarray, flex_base: np.ndarray) -> IntervalOutcome:
        """``advance_arrays`` as whole-array numpy operations (the reference: same state changes, same
        outcome to rounding)."""
        self.update_sessions(time)
        if self._captures:
            self._freeze_captures()
        h = self.hours
        req = np.array(p_setpoint, dtype=float)
        p = req.copy()
        reason = np.zeros(len(self.ids), dtype=np.int8)
        zeros = self._zeros

        def clip(mask: np.ndarray, lo: np.ndarray, hi: np.ndarray, why: str) -> None:
            new = np.clip(p, lo, hi)
            changed = mask & (np.abs(new - p) > _CLIP_TOL_MW)
            reason[changed & (reason == 0)] = _CODE[why]
            p[mask] = new[mask]

        # Batteries: rating, then what the SOC allows in this interval.
        bat = self.is_kind[AssetKind.BATTERY]
        if bat.any():
            clip(bat, -self.p_max, self.p_max, ClipReason.RATING)
            with np.errstate(invalid="ignore", divide="ignore"):
                p_charge_max = np.maximum(self.soc_max - self.soc, 0.0) / (self.eta_c * h)
                p_dis_max = np.maximum(self.soc - self.soc_min, 0.0) * self.eta_d / h
            clip(bat, -p_dis_max, p_charge_max, ClipReason.SOC)
        # EVs: nothing when unplugged; otherwise rating, need, and V2G only where allowed.
        ev = self.is_kind[AssetKind.EV_CHARGER]
        if ev.any():
            clip(ev & ~self.ev_connected, zeros, zeros, ClipReason.NOT_CONNECTED)
            evc = ev & self.ev_connected
            lo_ev = np.where(self.v2g, -self.p_max, 0.0)
            clip(evc, lo_ev, self.p_max, ClipReason.RATING)
            with np.errstate(invalid="ignore", divide="ignore"):
                p_need_max = self.ev_need / (self.eta_c * h)
                v2g_room = np.maximum(self.e_max - self.ev_need, 0.0) * self.eta_d / h
            clip(evc, np.where(self.v2g, -v2g_room, 0.0), p_need_max, ClipReason.SOC)
        # Flexible loads: serve at least what falls due, at most request + backlog, within rating.
        flex = self.is_kind[AssetKind.FLEX_LOAD]
        if flex.any():
            due = self._flex_due_mwh(flex_base) / h
            clip(flex, zeros, self.p_max, ClipReason.RATING)
            hi_flex = flex_base + self.flex_buckets.sum(axis=1) / h
            clip(flex, np.minimum(due, self.p_max), np.maximum(hi_flex, 0.0), ClipReason.DEADLINE)
        # PV: produce between 0 and what the sun offers.
        pv = self.is_kind[AssetKind.PV]
        if pv.any():
            clip(pv, -pv_avail, zeros, ClipReason.AVAILABLE)

        q = self.clip_q(p, np.asarray(q_setpoint, dtype=float))
        soc_end, ev_unmet, flex_unserved, curtailed = self._integrate(time, p, flex_base, pv_avail)
        e = p * h
        e_imp, e_exp = np.maximum(e, 0.0), np.maximum(-e, 0.0)
        self.e_imp_register_mwh += e_imp
        self.e_exp_register_mwh += e_exp
        return IntervalOutcome(time=time, ids=self.ids, p=p, q=q, p_requested=req, clip_code=reason, soc=soc_end,
                               pv_curtailed_mwh=curtailed, ev_unmet_mwh=ev_unmet, flex_unserved_mwh=flex_unserved,
                               e_imp=e_imp, e_exp=e_exp)

    def clip_q(self, p: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Only inverters (PV, battery) make reactive power, within what their rating leaves beside P. Works
        on (n_asset,) or (n_asset, n_interval) arrays."""
        q_room = np.sqrt(np.maximum(self.s_max.reshape((-1,) + (1,) * (p.ndim - 1)) ** 2 - p**2, 0.0))
        inverter = self._inverter.reshape((-1,) + (1,) * (p.ndim - 1))
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

        ev_unmet = 0.0
        ev = self.is_kind[AssetKind.EV_CHARGER] & self.ev_connected
        if ev.any():
            self.ev_need = np.where(ev, np.maximum(self.ev_need - delta, 0.0), self.ev_need)
            end = np.datetime64(time.value + self.step.value, "ns")
            departing = ev & (self.ev_departure <= end)
            ev_unmet = float(self.ev_need[departing].sum())
            self.ev_need[departing] = 0.0
            self.ev_connected[departing] = False
            self.ev_departure[departing] = np.datetime64("NaT")

        flex_unserved = self._serve_flex(p, base) if len(self._flex_rows) else 0.0
        pv = self.is_kind[AssetKind.PV]
        curtailed = float(((avail + p) * h)[pv].sum())
        return self.soc.copy(), ev_unmet, flex_unserved, max(curtailed, 0.0)

    def _flex_due_mwh(self, base: np.ndarray) -> np.ndarray:
        """Energy whose last allowed interval is this one (the request itself when w = 1)."""
        due = np.zeros(len(self.ids))
        rows = self._flex_rows
        due[rows] = np.where(self._flex_single, base[rows] * self.hours, self.flex_buckets[rows, self._flex_due_column])
        return due

    def _serve_flex(self, p: np.ndarray, base: np.ndarray) -> float:
        """Add this interval's request, serve oldest first, age the rest; return energy past its deadline.

        Vectorized over flexible loads: in serving order (oldest first) the energy taken from each age is
        what the served energy leaves after the older ones, clipped to [0, pending]."""
        h = self.hours
        rows = self._flex_rows
        width = self._flex_width
        pending = np.zeros((len(rows), width))  # by age 0 .. width - 1
        pending[:, 0] = base[rows] * h
        pending[:, 1:] = self.flex_buckets[rows, : width - 1]
        ordered = np.where(self._flex_order_valid, np.take_along_axis(pending, self._flex_age_clipped, axis=1), 0.0)
        before = np.cumsum(ordered, axis=1) - ordered
        taken = np.clip((p[rows] * h)[:, None] - before, 0.0, ordered)
        left = ordered - taken  # by serving order: column 0 is the oldest age, w - 1
        unserved = float(left[:, 0].sum())
        # Back to ages: age a sits at serving order w - 1 - a, the same index map as the other way round.
        by_age = np.take_along_axis(left, self._flex_age_clipped, axis=1)
        kept = self._flex_age[:, : width - 1] > 0  # ages 0 .. w - 2 are stored; order index w-1-a > 0
        current = self.flex_buckets[rows, : width - 1]
        self.flex_buckets[rows, : width - 1] = np.where(kept, by_age[:, : width - 1], current)
        return unserved

    def update_sessions(self, time: pd.Timestamp) -> None:
        """Plug in every EV whose session has started by ``time`` (sessions sorted by arrival)."""
        t = time.value
        arrival = self._session_arrival_ns
        k = self._next_session
        if k < len(arrival) and arrival[k] <= t and self._captures:
            self._freeze_captures()
        while k < len(arrival) and arrival[k] <= t:
            i = self._session_pos[k]
            departure = self._session_departure[k]
            k += 1
            if i < 0 or departure.astype(np.int64) <= t:
                continue
            self.ev_connected[i] = True
            self.ev_need[i] = self._session_energy[k - 1]
            self.ev_departure[i] = departure
        self._next_session = k



def state_frame_of(state: dict[str, np.ndarray], ids: pd.Index) -> pd.DataFrame:
    """A state table from ``FleetPhysics.state_arrays``-style columns (datetime64 columns become UTC)."""
    columns = {}
    for name, values in state.items():
        if values.dtype.kind == "M":
            columns[name] = pd.DatetimeIndex(values).tz_localize("UTC")
        else:
            columns[name] = values
    return pd.DataFrame(columns, index=ids)


def _utc_ns(column: pd.Series) -> np.ndarray:
    """A column of UTC times as int64 nanoseconds."""
    values = pd.DatetimeIndex(column)
    if values.tz is not None:
        values = values.tz_convert(None)
    return values.as_unit("ns").asi8.copy()


# -- the compiled interval ------------------------------------------------------------------------------------
# Each asset's rules in the order ``advance_arrays_numpy`` applies them to whole arrays; NaN propagates as numpy
# does (np.clip / np.maximum return NaN when any argument is NaN), division by zero gives inf (numpy's errors).

@numba.njit(cache=True, inline="always")
def _max0(x):  # pragma: no cover - compiled
    return x if (x > 0.0 or x != x) else 0.0


@numba.njit(cache=True, inline="always")
def _clip(x, lo, hi):  # pragma: no cover - compiled
    if x != x or lo != lo or hi != hi:
        return math.nan
    return min(max(x, lo), hi)


@numba.njit(cache=True, inline="always")
def _min_nan(a, b):  # pragma: no cover - compiled
    if a != a or b != b:
        return math.nan
    return a if a < b else b


@numba.njit(cache=True, nogil=True)
def _state_kernel(soc, ev_connected, ev_need, ev_departure, buckets, window, time_ns, step_ns, e_imp, e_exp,
                  tol):  # pragma: no cover - compiled
    """Copies of the state columns, with EV energy still needed (0 when unplugged), flex backlog and the
    deadline of the oldest deferred energy (int64 ns, NaT's value where none); see ``state_arrays_numpy``."""
    n = len(soc)
    nat = np.iinfo(np.int64).min
    needed = np.zeros(n)
    backlog = np.zeros(n)
    deadline = np.full(n, nat, dtype=np.int64)
    for i in range(n):
        if ev_connected[i]:
            needed[i] = ev_need[i]
        total = 0.0
        oldest = -1
        for a in range(buckets.shape[1]):
            total += buckets[i, a]
            if buckets[i, a] > tol:
                oldest = a
        backlog[i] = total
        if oldest >= 0:
            deadline[i] = time_ns + (window[i] - 1 - oldest) * step_ns
    return (soc.copy(), ev_connected.copy(), needed, ev_departure.copy(), backlog, deadline, e_imp.copy(),
            e_exp.copy())


@numba.njit(cache=True, error_model="numpy", nogil=True)
def autonomous_kernel(kind, p_max, eta_c, ev_connected, ev_need, buckets, pv_avail, flex_base, h):  # pragma: no cover
    """``FleetPhysics.autonomous`` per asset (see ``autonomous_numpy``)."""
    n = len(kind)
    p = np.zeros(n)
    for i in range(n):
        k = kind[i]
        if k == 2:
            x = _min_nan(p_max[i], ev_need[i] / (eta_c[i] * h)) if ev_connected[i] else 0.0
            p[i] = _min_nan(x, p_max[i])
        elif k == 3:
            backlog = 0.0
            for a in range(buckets.shape[1]):
                backlog += buckets[i, a]
            p[i] = _min_nan(flex_base[i] + backlog / h, p_max[i])
        elif k == 0:
            p[i] = -pv_avail[i]
    return p


@numba.njit(cache=True, error_model="numpy", nogil=True)
def _advance_kernel(kind, p_max, e_max, eta_c, eta_d, soc_min, soc_max, s_max, v2g, window, pv_avail, flex_base,
                    h, end_ns, p_set, q_set, soc, ev_connected, ev_need, ev_departure, buckets, e_imp_register,
                    e_exp_register, tol, out, code):  # pragma: no cover - compiled
    """One interval for every asset; the state arrays (soc ... registers) change in place. Writes into ``out``
    (6 n + 3 values) p, q, SOC at the end, energy imported / exported, the setpoints as requested, then [PV
    energy not produced (may be < 0), EV energy unmet, flex unserved]; and the clip codes into ``code`` (zeros)."""
    nat = np.iinfo(np.int64).min
    n = len(p_set)
    p = out[:n]
    q = out[n:2 * n]
    e_imp = out[3 * n:4 * n]
    e_exp = out[4 * n:5 * n]
    req = out[5 * n:6 * n]
    for i in range(n):
        p[i] = p_set[i]
        q[i] = q_set[i]
        req[i] = p_set[i]
        e_imp[i] = 0.0
        e_exp[i] = 0.0
    curtailed = 0.0
    ev_unmet = 0.0
    flex_unserved = 0.0
    n_buckets = buckets.shape[1]
    for i in range(len(p)):
        x = p[i]
        reason = 0
        k = kind[i]
        if k == 1:  # battery: rating, then what the SOC allows in this interval
            new = _clip(x, -p_max[i], p_max[i])
            if abs(new - x) > tol and reason == 0:
                reason = 1
            x = new
            hi = _max0(soc_max[i] - soc[i]) / (eta_c[i] * h)
            lo = -(_max0(soc[i] - soc_min[i]) * eta_d[i] / h)
            new = _clip(x, lo, hi)
            if abs(new - x) > tol and reason == 0:
                reason = 2
            x = new
        elif k == 2:  # EV: nothing when unplugged; otherwise rating, need, and V2G only where allowed
            if not ev_connected[i]:
                new = _clip(x, 0.0, 0.0)
                if abs(new - x) > tol and reason == 0:
                    reason = 4
                x = new
            else:
                new = _clip(x, -p_max[i] if v2g[i] else 0.0, p_max[i])
                if abs(new - x) > tol and reason == 0:
                    reason = 1
                x = new
                hi = ev_need[i] / (eta_c[i] * h)
                lo = -(_max0(e_max[i] - ev_need[i]) * eta_d[i] / h) if v2g[i] else 0.0
                new = _clip(x, lo, hi)
                if abs(new - x) > tol and reason == 0:
                    reason = 2
                x = new
        elif k == 3:  # flexible load: at least what falls due, at most request + backlog, within rating
            w = window[i]
            backlog = 0.0
            for a in range(n_buckets):
                backlog += buckets[i, a]
            due = (flex_base[i] * h if w == 1 else buckets[i, w - 2]) / h
            new = _clip(x, 0.0, p_max[i])
            if abs(new - x) > tol and reason == 0:
                reason = 1
            x = new
            new = _clip(x, min(due, p_max[i]) if due == due else math.nan, _max0(flex_base[i] + backlog / h))
            if abs(new - x) > tol and reason == 0:
                reason = 5
            x = new
        elif k == 0:  # PV: between 0 and what the sun offers
            new = _clip(x, -pv_avail[i], 0.0)
            if abs(new - x) > tol and reason == 0:
                reason = 3
            x = new
        p[i] = x
        code[i] = reason
        # Reactive power: inverters only, within what the rating leaves beside P.
        if k == 0 or k == 1:
            room = math.sqrt(_max0(s_max[i] ** 2 - x**2))
            q[i] = _clip(q[i], -room, room)
        else:
            q[i] = 0.0
        delta = _max0(x) * eta_c[i] * h - _max0(-x) / eta_d[i] * h
        if k == 1:
            soc[i] = _clip(soc[i] + delta, soc_min[i], soc_max[i])
        elif k == 2 and ev_connected[i]:
            ev_need[i] = _max0(ev_need[i] - delta)
            if ev_departure[i] != nat and ev_departure[i] <= end_ns:
                ev_unmet += ev_need[i]
                ev_need[i] = 0.0
                ev_connected[i] = False
                ev_departure[i] = nat
        elif k == 3:  # add this interval's request, serve oldest first, age the rest
            w = window[i]
            pending = np.empty(w)  # by age 0 .. w - 1
            pending[0] = flex_base[i] * h
            for a in range(1, w):
                pending[a] = buckets[i, a - 1]
            served = x * h
            for age in range(w - 1, -1, -1):
                take = min(served, pending[age])
                pending[age] -= take
                served -= take
            flex_unserved += pending[w - 1]
            for a in range(w - 1):
                buckets[i, a] = pending[a]
        elif k == 0:
            curtailed += (pv_avail[i] + x) * h
        e = x * h
        e_imp[i] = _max0(e)
        e_exp[i] = _max0(-e)
        e_imp_register[i] += e_imp[i]
        e_exp_register[i] += e_exp[i]
    for i in range(n):
        out[2 * n + i] = soc[i]
    out[6 * n] = curtailed
    out[6 * n + 1] = ev_unmet
    out[6 * n + 2] = flex_unserved
