"""Reading an observation into the numbers of one dispatch solve, for any subset of the asset table.

This module owns ``DispatchInputs`` (the arrays of one solve, in the model's asset order: by kind — batteries,
EV chargers, flexible loads, PV — and within a kind as in the asset table) and ``DispatchReader``, which turns an
``Observation`` into them. It is apart from the cvxpy model (``controllers.dispatch_model``) so that the DePIN
agents' local steps (``controllers.local_steps``), which never build a cvxpy problem, read a fleet of thousands
of assets the same way the central optimizer does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from controllers.api import AssetKind, Observation

__all__ = ["KIND_ORDER", "DispatchInputs", "DispatchReader"]

#: Row order of assets in the model (PV last: its fixed "-available" part is an offset on the last rows).
KIND_ORDER: tuple[AssetKind, ...] = (AssetKind.BATTERY, AssetKind.EV_CHARGER, AssetKind.FLEX_LOAD, AssetKind.PV)

#: Headroom given to an empty network slot (pu or percent): never binding (its sensitivity row is zero),
#: and small so that the interior-point solvers stay well scaled (1e3 here cost them iterations).
_UNMONITORED_HEADROOM = 1.0
#: Margin (MW) above the largest reachable feeder-head import used as the bound when there is no limit.
_NO_HEAD_LIMIT_MARGIN_MW = 1.0


@dataclass(frozen=True)
class DispatchInputs:
    """The numbers of one solve, in the model's asset order (arrays; rows = assets of a kind, cols = periods)."""

    time: pd.Timestamp
    periods: pd.DatetimeIndex
    price_eur_per_mwh: np.ndarray
    head_fixed_mw: np.ndarray  # base load + uncurtailed fleet PV (negative), summed over buses
    head_limit_mw: float
    billed_peak_mw: float
    bat_soc0_mwh: np.ndarray
    bat_soc_target_mwh: np.ndarray
    bat_p_max_mw: np.ndarray  # (nb, T): rating x availability
    ev_ch_max_mw: np.ndarray  # (ne, T): rating x connected share x availability
    ev_dis_max_mw: np.ndarray  # (ne, T): as above, 0 unless v2g
    ev_need_mwh: np.ndarray
    ev_need_after_horizon_mwh: np.ndarray  # what may still be delivered after the horizon, before departure
    ev_hours_to_departure: np.ndarray  # inf when unknown
    flex_base_mw: np.ndarray  # (nf, T)
    flex_p_max_mw: np.ndarray  # (nf, T)
    flex_backlog0_mwh: np.ndarray
    flex_backlog_cap_mwh: np.ndarray  # (nf, T + 1)
    pv_avail_mw: np.ndarray  # (npv, T)
    v_rows: tuple[Any, ...]
    v_sens_pu_per_mw: np.ndarray  # (slots, asset buses)
    v_lo_headroom_pu: np.ndarray  # (slots, T)
    v_hi_headroom_pu: np.ndarray  # (slots, T)
    l_rows: tuple[Any, ...]
    l_sens_percent_per_mw: np.ndarray
    l_headroom_percent: np.ndarray
    notes: tuple[str, ...] = ()
    #: Export price per period (EUR/MWh); None = exports valued at the import price.
    feed_in_eur_per_mwh: np.ndarray | None = None


def _kind_ids(assets: pd.DataFrame, kind: AssetKind) -> list[Any]:
    return [a for a, k in assets["kind"].items() if str(k) == kind.value]


def _periods_of(window: Any, step: pd.Timedelta) -> int:
    if window is None or pd.isna(window):
        return 0
    return int(pd.Timedelta(window) // step)


class DispatchReader:
    """The static part of reading observations for one asset table: ids by kind, the model's row order, and
    the static asset columns as arrays (read once). ``n_voltage_rows`` / ``n_loading_rows``: network slots
    (0 = no network inputs)."""

    def __init__(self, assets: pd.DataFrame, *, step: pd.Timedelta, horizon: int, n_voltage_rows: int = 0,
                 n_loading_rows: int = 0) -> None:
        unknown = sorted({str(k) for k in assets["kind"]} - {k.value for k in KIND_ORDER})
        if unknown:
            raise ValueError(f"assets.kind: unknown kinds {unknown}")
        self.assets = assets
        self.step = step
        self.horizon = horizon
        self.n_voltage_rows = n_voltage_rows
        self.n_loading_rows = n_loading_rows
        self._hours = step / pd.Timedelta("1h")  # read every interval: not re-derived from the Timedelta
        self.ids = {kind: _kind_ids(assets, kind) for kind in AssetKind}
        self.buses = tuple(dict.fromkeys(assets["bus"].tolist()))
        self._order = [a for k in KIND_ORDER for a in self.ids[k]]
        self._slice: dict[AssetKind, slice] = {}
        start = 0
        for kind in KIND_ORDER:
            n = len(self.ids[kind])
            self._slice[kind] = slice(start, start + n)
            start += n
        ordered = assets.loc[self._order]
        self._static = {name: ordered[name].to_numpy(float)
                        for name in ("e_max_mwh", "soc_min", "soc_max", "soc_init", "p_max_mw", "eta_charge")}
        self._static["v2g"] = ordered["v2g"].fillna(False).astype(bool).to_numpy()
        windows = ordered["flex_window"].iloc[self._slice[AssetKind.FLEX_LOAD]]
        self._flex_window = np.array([_periods_of(w, step) for w in windows], dtype=int)
        self._order_index = pd.Index(self._order, dtype=object)
        self._state_rows: tuple[pd.Index | None, np.ndarray] = (None, np.zeros(0, dtype=int))
        self._columns = {kind: pd.Index(self.ids[kind], dtype=object) for kind in (AssetKind.PV, AssetKind.FLEX_LOAD)}

    @property
    def hours(self) -> float:
        return self._hours

    @property
    def order(self) -> list[Any]:
        """Asset ids in the model's row order."""
        return list(self._order)

    def read(self, obs: Observation, *, include_base_load: bool = True, head_limit_built: bool = True) -> DispatchInputs:
        """Read the observation into the numbers of one solve. Pure: the observation is not modified.

        ``include_base_load``: the feeder-head import includes the uncontrolled base load (central); an agent
        optimising only its own meter passes False. Signals read: ``billed_peak_mw`` (the peak already set in
        the billing period; default 0) and ``battery_soc_target_mwh`` (a Mapping asset_id -> MWh).
        """
        T, h, step = self.horizon, self.hours, self.step
        notes: list[str] = []
        periods = pd.date_range(obs.time, periods=T, freq=step)
        fc = obs.forecast

        def frame(df: pd.DataFrame, cols: pd.Index, what: str) -> np.ndarray:
            """(T, len(cols)): rows at the horizon's period starts (last known value carried forward)."""
            if len(df.index) == 0:
                notes.append(f"{what}: empty forecast, zeros used")
                return np.zeros((T, len(cols)))
            if len(df.index) >= T and df.index[:T].equals(periods):  # the usual case: aligned, no gaps
                if df.columns.equals(cols):
                    values = df.to_numpy(dtype=float)[:T]
                else:
                    pos = df.columns.get_indexer(cols)
                    values = df.to_numpy(dtype=float)[:T, np.maximum(pos, 0)]
                    values[:, pos < 0] = np.nan
                if not np.isnan(values).any():
                    return values
            out = df if df.columns.equals(cols) else df.reindex(columns=cols)
            out = out.astype(float)
            out = out.reindex(out.index.union(periods)).ffill().reindex(periods)
            if out.isna().to_numpy().any():
                notes.append(f"{what}: missing forecast values, zeros used")
                out = out.fillna(0.0)
            return out.to_numpy()

        prices = fc.price_eur_per_mwh
        price = prices.to_numpy(dtype=float)[:T].copy()
        if not (len(price) == T and prices.index[:T].equals(periods) and not np.isnan(price).any()):
            price = frame(prices.to_frame("price"), pd.Index(["price"]), "price")[:, 0]  # gaps, misaligned
        base_frame = fc.base_load_mw
        base = frame(base_frame, base_frame.columns, "base_load_mw") if len(base_frame.columns) else None
        # State columns in the model's row order, by position (no reindexed copy of the whole table); an asset
        # missing from the state reads as NaN, as a reindex would give.
        state = obs.state
        if state.index.equals(self._order_index):
            rows = None
        else:
            # The twin's state has the same index every interval: its positions are looked up once.
            cached_index, rows = self._state_rows
            if cached_index is None or not state.index.equals(cached_index):
                rows = state.index.get_indexer(self._order_index)
                self._state_rows = (state.index, rows)
            if (rows < 0).any():
                state, rows = state.reindex(self._order), None
        static = self._static

        def column(name: str, kind: AssetKind | None = None) -> np.ndarray | None:
            """One state column in the model's order (or the rows of one kind); None when absent."""
            if name not in state.columns:
                return None
            values = state[name].to_numpy()
            if rows is not None:
                values = values[rows]
            return values if kind is None else values[self._slice[kind]]

        def flags(values: np.ndarray | None, n: int, default: bool) -> np.ndarray:
            if values is None:
                return np.full(n, default)
            return np.where(pd.isna(values), False, values).astype(bool)

        def amounts(values: np.ndarray | None, n: int) -> np.ndarray:
            """Energy amounts: missing = 0, never negative."""
            return np.zeros(n) if values is None else np.maximum(np.nan_to_num(values.astype(float)), 0.0)

        def hours_until(name: str, kind: AssetKind) -> np.ndarray:
            """Hours from now until a per-asset time (inf when unknown)."""
            n = len(self.ids[kind])
            if name not in state.columns or n == 0:
                return np.full(n, np.inf)
            series = state[name]
            if isinstance(series.dtype, pd.DatetimeTZDtype):  # the twin's own observations: UTC datetimes
                at = series.to_numpy(dtype="datetime64[ns]")
                at = (at if rows is None else at[rows])[self._slice[kind]]
                hours_left = (at - np.datetime64(pd.Timestamp(obs.time).value, "ns")) / np.timedelta64(1, "h")
                return np.where(np.isnat(at), np.inf, hours_left)
            values = series.to_numpy()
            values = (values if rows is None else values[rows])[self._slice[kind]]
            at = pd.DatetimeIndex(pd.to_datetime(values, utc=True))
            return np.where(at.isna(), np.inf, ((at - obs.time) / pd.Timedelta("1h")).to_numpy(float))

        avail = flags(column("available"), len(self._order), True)

        # PV
        pv_arr = np.maximum(frame(fc.pv_avail_mw, self._columns[AssetKind.PV], "pv_avail_mw").T, 0.0) \
            * avail[self._slice[AssetKind.PV]][:, None]

        head_fixed = -pv_arr.sum(axis=0)
        if include_base_load and base is not None:
            head_fixed = head_fixed + base.sum(axis=1)

        # batteries
        sb = self._slice[AssetKind.BATTERY]
        b_ids = self.ids[AssetKind.BATTERY]
        e_max = static["e_max_mwh"][sb]
        lo, hi = static["soc_min"][sb] * e_max, static["soc_max"][sb] * e_max
        soc_column = column("soc_mwh", AssetKind.BATTERY)
        soc0 = np.full(len(b_ids), np.nan) if soc_column is None else soc_column.astype(float)
        missing = np.isnan(soc0)
        soc0 = np.where(missing, static["soc_init"][sb] * e_max, soc0)
        if missing.any():
            notes.append(f"soc_mwh missing for {list(np.array(b_ids, dtype=object)[missing])}: soc_init used")
        clipped = np.clip(soc0, lo, hi)
        if np.any(np.abs(clipped - soc0) > 1e-9):
            notes.append("battery soc outside [soc_min, soc_max]: clipped for planning")
        soc0 = clipped
        target_map = obs.signals.get("battery_soc_target_mwh", {}) or {}
        target = np.array([float(target_map.get(a, s)) for a, s in zip(b_ids, soc0)]) if target_map else soc0.copy()
        target = np.clip(target, lo, hi)
        bat_pmax = np.tile((static["p_max_mw"][sb] * avail[sb])[:, None], (1, T))

        # EVs: connected share of each period, before departure
        se = self._slice[AssetKind.EV_CHARGER]
        n_e = len(self.ids[AssetKind.EV_CHARGER])
        connected = flags(column("ev_connected", AssetKind.EV_CHARGER), n_e, False) & avail[se]
        need = np.where(connected, amounts(column("ev_energy_needed_mwh", AssetKind.EV_CHARGER), n_e), 0.0)
        start_h = np.arange(T) * h  # period starts, hours from now
        dep_h = hours_until("ev_departure", AssetKind.EV_CHARGER)
        share = np.clip((dep_h[:, None] - start_h[None, :]) / h, 0.0, 1.0) * connected[:, None]
        p_e, v2g, eta_c_e = static["p_max_mw"][se], static["v2g"][se], static["eta_charge"][se]
        ev_ch_max = share * p_e[:, None]
        ev_dis_max = ev_ch_max * v2g[:, None]
        horizon_h = T * h
        # energy that can still be delivered between the horizon end and departure (unknown departure: all)
        after = np.maximum(np.nan_to_num(dep_h, posinf=horizon_h) - horizon_h, 0.0) * p_e * eta_c_e
        ev_after = np.where(np.isfinite(dep_h), np.minimum(after, need), need)

        # flexible loads
        sf = self._slice[AssetKind.FLEX_LOAD]
        f_ids = self.ids[AssetKind.FLEX_LOAD]
        f_avail = avail[sf]
        fbase = np.maximum(frame(fc.flex_base_mw, self._columns[AssetKind.FLEX_LOAD], "flex_base_mw").T, 0.0) \
            * f_avail[:, None]
        fpmax = np.tile((static["p_max_mw"][sf] * f_avail)[:, None], (1, T))
        b0 = amounts(column("flex_backlog_mwh", AssetKind.FLEX_LOAD), len(f_ids))
        # Backlog at the start of period t may only hold energy requested in the last W periods, plus the
        # initial backlog while before its deadline (energy requested in k is served by the end of k + W).
        deadline_h = hours_until("flex_deadline", AssetKind.FLEX_LOAD)
        W = self._flex_window
        deadline_h = np.where(np.isfinite(deadline_h), deadline_h, W * h)
        requested = np.concatenate([np.zeros((len(f_ids), 1)), np.cumsum(fbase * h, axis=1)], axis=1)
        t_idx = np.arange(1, T + 1)
        earlier = np.maximum(t_idx[None, :] - W[:, None], 0)
        cap = requested[:, 1:] - np.take_along_axis(requested, earlier, axis=1)
        cap += b0[:, None] * ((start_h[None, :] + h) < deadline_h[:, None] - 1e-9)  # period ends before it

        # network
        # The network rows read labelled frames; built only when the model has network slots.
        networked = bool(self.n_voltage_rows or self.n_loading_rows)
        base_df = pd.DataFrame(base, index=periods, columns=base_frame.columns) \
            if networked and base is not None else None
        pv_df = pd.DataFrame(pv_arr.T, index=periods, columns=self._columns[AssetKind.PV]) if networked else None
        v_rows, v_sens, v_lo, v_hi, l_rows, l_sens, l_head = self._network_inputs(
            obs, base=base_df, pv=pv_df, bat_pmax=bat_pmax, ev_ch_max=ev_ch_max, fpmax=fpmax, notes=notes
        )

        head_limit = obs.limits.p_head_max_mw
        if head_limit is not None and not head_limit_built:
            notes.append(f"p_head_max_mw={head_limit} not enforced: the model was built without a head limit")
        if head_limit is None:  # a bound that cannot bind: big-M values hurt the solvers' scaling
            reach = bat_pmax.sum(axis=0) + ev_ch_max.sum(axis=0) + fpmax.sum(axis=0) + pv_arr.sum(axis=0)
            head_limit = float(np.max(head_fixed + reach)) + _NO_HEAD_LIMIT_MARGIN_MW
        return DispatchInputs(
            time=obs.time,
            periods=periods,
            price_eur_per_mwh=price,
            head_fixed_mw=head_fixed,
            head_limit_mw=float(head_limit),
            billed_peak_mw=float(obs.signals.get("billed_peak_mw", 0.0)),
            feed_in_eur_per_mwh=(np.minimum(float(obs.signals["feed_in_eur_per_mwh"]), price)
                                 if "feed_in_eur_per_mwh" in obs.signals else None),
            bat_soc0_mwh=soc0,
            bat_soc_target_mwh=target,
            bat_p_max_mw=bat_pmax,
            ev_ch_max_mw=ev_ch_max,
            ev_dis_max_mw=ev_dis_max,
            ev_need_mwh=need,
            ev_need_after_horizon_mwh=ev_after,
            ev_hours_to_departure=dep_h,
            flex_base_mw=fbase,
            flex_p_max_mw=fpmax,
            flex_backlog0_mwh=b0,
            flex_backlog_cap_mwh=cap,
            pv_avail_mw=pv_arr,
            v_rows=v_rows,
            v_sens_pu_per_mw=v_sens,
            v_lo_headroom_pu=v_lo,
            v_hi_headroom_pu=v_hi,
            l_rows=l_rows,
            l_sens_percent_per_mw=l_sens,
            l_headroom_percent=l_head,
            notes=tuple(notes),
        )

    def _network_inputs(
        self,
        obs: Observation,
        *,
        base: pd.DataFrame | None,
        pv: pd.DataFrame | None,
        bat_pmax: np.ndarray,
        ev_ch_max: np.ndarray,
        fpmax: np.ndarray,
        notes: list[str],
    ) -> tuple[tuple[Any, ...], np.ndarray, np.ndarray, np.ndarray, tuple[Any, ...], np.ndarray, np.ndarray]:
        """Screen the sensitivity rows and fill the fixed number of network slots."""
        T, m, k, nbus = self.horizon, self.n_voltage_rows, self.n_loading_rows, len(self.buses)
        v_sens, l_sens = np.zeros((m, nbus)), np.zeros((k, nbus))
        v_lo = np.full((m, T), _UNMONITORED_HEADROOM)
        v_hi = np.full((m, T), _UNMONITORED_HEADROOM)
        l_head = np.full((k, T), _UNMONITORED_HEADROOM)
        sens = obs.sensitivities
        if not (m or k):
            return (), v_sens, v_lo, v_hi, (), l_sens, l_head
        if sens is None:
            notes.append("no sensitivities in the observation: network constraints inactive")
            return (), v_sens, v_lo, v_hi, (), l_sens, l_head

        pv_bus = pv.T.groupby(self.assets.loc[list(pv.columns), "bus"].to_numpy()).sum().T
        # Largest power swing each asset bus can make (MW), for worst-case screening.
        swing = pd.Series(0.0, index=pd.Index(self.buses, dtype=object))
        for kind, arr in (
            (AssetKind.BATTERY, bat_pmax),
            (AssetKind.EV_CHARGER, ev_ch_max),
            (AssetKind.FLEX_LOAD, fpmax),
            (AssetKind.PV, pv.to_numpy().T),
        ):
            for a, row in zip(self.ids[kind], arr):
                swing[self.assets.at[a, "bus"]] += float(row.max(initial=0.0))

        def delta(cols: pd.Index) -> np.ndarray:
            """Bus injections relative to the operating point with all fleet assets at 0 (T x cols)."""
            d = np.zeros((T, len(cols)))
            if base is not None:
                d += base.reindex(columns=cols, fill_value=0.0).to_numpy()
            d -= pv_bus.reindex(columns=cols, fill_value=0.0).to_numpy()
            d -= sens.p_bus_mw.reindex(cols).fillna(0.0).to_numpy(float)[None, :]
            return d

        def rows(
            S: pd.DataFrame, x0: pd.Series, what: str
        ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
            S = S.astype(float)
            x0 = x0.reindex(S.index).astype(float)
            bad = S.isna().any(axis=1) | x0.isna()
            if bad.any():
                notes.append(f"{what}: rows {list(S.index[bad])} have missing values and are not monitored")
                S, x0 = S.loc[~bad], x0.loc[~bad]
            const = x0.to_numpy()[None, :] + delta(S.columns) @ S.to_numpy().T  # T x rows
            S_assets = S.reindex(columns=pd.Index(self.buses, dtype=object), fill_value=0.0)
            reach = np.abs(S_assets.to_numpy()) @ swing.to_numpy()
            return S_assets, const, reach

        lim = obs.limits
        v_rows: tuple[Any, ...] = ()
        if m:
            S_a, vconst, reach = rows(sens.dvm_dp_pu_per_mw, sens.vm_pu, "voltage")
            lo, hi = vconst - lim.v_min_pu, lim.v_max_pu - vconst
            score = np.minimum(lo.min(axis=0, initial=np.inf), hi.min(axis=0, initial=np.inf)) - reach
            pick = np.argsort(score, kind="stable")[:m]
            v_rows = tuple(S_a.index[pick])
            n = len(pick)
            v_sens[:n], v_lo[:n], v_hi[:n] = S_a.to_numpy()[pick], lo[:, pick].T, hi[:, pick].T
        l_rows: tuple[Any, ...] = ()
        if k:
            S_a, lconst, reach = rows(sens.dloading_dp_percent_per_mw, sens.loading_percent, "loading")
            head = lim.loading_max_percent - lconst
            score = head.min(axis=0, initial=np.inf) - reach
            pick = np.argsort(score, kind="stable")[:k]
            l_rows = tuple(S_a.index[pick])
            n = len(pick)
            l_sens[:n], l_head[:n] = S_a.to_numpy()[pick], head[:, pick].T
        return v_rows, v_sens, v_lo, v_hi, l_rows, l_sens, l_head
