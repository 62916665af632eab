"""Everything exogenous to a run, built once from the scenario and shared by every policy's twin copy.

Owns: the feeder, the fleet, EV sessions, the replayed load/PV series (from the feeder's profiles or a
telemetry file), the tariff as a price series, and the per-bus uncontrolled load the controllers forecast.
Policies differ only in decisions, never in these inputs (DESIGN.md §6 "Comparison").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandapower as pp

import grids
from controllers.api import AssetKind
from grids.fleet import build_fleet, generate_ev_sessions, read_fleet_csv
from grids.profiles import ExogenousProfiles, feeder_profiles
from twin.scenario import Scenario, TariffSpec

__all__ = ["RunInputs", "build_inputs", "derive_seed", "tariff_prices"]


def derive_seed(seed: int, purpose: str) -> int:
    """A stable, independent seed for one purpose (fleet placement, EV sessions, comms...) of a run."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def tariff_prices(index: pd.DatetimeIndex, tariff: TariffSpec) -> pd.Series:
    """Time-of-use import price per interval (peak hours in UTC, [start, end))."""
    hours = index.hour
    start, end = tariff.peak_hours
    peak = (hours >= start) & (hours < end)
    prices = np.where(peak, tariff.peak_eur_per_mwh, tariff.offpeak_eur_per_mwh)
    return pd.Series(prices, index=index, name="price_eur_per_mwh", dtype=float)


@dataclass(frozen=True)
class RunInputs:
    """Exogenous inputs over ``[start, end + horizon)`` so every interval has a full forecast window."""

    net: pp.pandapowerNet
    assets: pd.DataFrame
    ev_sessions: pd.DataFrame
    profiles: ExogenousProfiles
    price_eur_per_mwh: pd.Series
    base_load_bus_mw: pd.DataFrame  # time × bus, native loads minus native generation (load convention)
    pv_avail_mw: pd.DataFrame  # time × PV asset
    flex_base_mw: pd.DataFrame  # time × flex asset

    def at(self, time: pd.Timestamp) -> int:
        """Row position of interval ``time`` in the input series."""
        return int(self.price_eur_per_mwh.index.get_loc(time))


def _bus_aggregate(frame: pd.DataFrame, buses: pd.Series, all_buses: pd.Index) -> pd.DataFrame:
    """Sum element columns onto their buses: (time × element) @ (element × bus) incidence."""
    if frame.shape[1] == 0:
        return pd.DataFrame(0.0, index=frame.index, columns=all_buses)
    incidence = pd.get_dummies(buses.reindex(frame.columns)).reindex(columns=all_buses, fill_value=0).astype(float)
    return pd.DataFrame(frame.to_numpy() @ incidence.to_numpy(), index=frame.index, columns=all_buses)


def _padded_profiles(net: pp.pandapowerNet, scenario: Scenario, seed: int) -> ExogenousProfiles:
    """Profiles for the run plus one horizon; past the data's end the last day repeats (documented)."""
    end = scenario.end + scenario.horizon
    if scenario.telemetry.source == "file":
        from twin.telemetry import read_telemetry, telemetry_to_profiles

        shapes = feeder_profiles(net, start=scenario.start, end=end, step=scenario.step, seed=seed)
        frame = read_telemetry(scenario.resolve(scenario.telemetry.path or ""))
        return telemetry_to_profiles(
            frame, net, start=scenario.start, end=end, step=scenario.step,
            pv_per_mwp=shapes.pv_per_mwp, flex_per_mw=shapes.flex_per_mw,
        )
    try:
        return feeder_profiles(net, start=scenario.start, end=end, step=scenario.step, seed=seed)
    except ValueError:
        # The horizon runs past the shipped year (e.g. a run ending on 31 December): use what exists
        # and repeat the final day's values, so the last intervals still get a full forecast window.
        day = pd.Timedelta("1D")
        base = feeder_profiles(net, start=scenario.start - day, end=scenario.end, step=scenario.step, seed=seed)
        return _extend(base.window(scenario.start, scenario.end), end, day)


def _extend(profiles: ExogenousProfiles, end: pd.Timestamp, period: pd.Timedelta) -> ExogenousProfiles:
    """Extend every series to ``end`` by repeating the values one ``period`` (one day) earlier."""
    last = profiles.load_p_mw.index[-1]
    index = pd.date_range(profiles.load_p_mw.index[0], end, freq=profiles.step, inclusive="left")
    repeats = int(np.ceil((end - last) / period)) + 1

    def ext(obj: pd.DataFrame | pd.Series) -> pd.DataFrame | pd.Series:
        out = obj.reindex(index)
        for k in range(1, repeats + 1):
            out = out.fillna(obj.reindex(index - k * period).set_axis(index))
        return out

    return ExogenousProfiles(
        load_p_mw=ext(profiles.load_p_mw), load_q_mvar=ext(profiles.load_q_mvar),
        sgen_p_mw=ext(profiles.sgen_p_mw), pv_per_mwp=ext(profiles.pv_per_mwp),
        flex_per_mw=ext(profiles.flex_per_mw),
    )


def build_inputs(scenario: Scenario) -> RunInputs:
    """Load the feeder, place or read the fleet, and build every exogenous series for the run."""
    net = grids.load_feeder(scenario.feeder)
    seed = scenario.seed
    fleet_spec = scenario.fleet
    if fleet_spec.csv:
        assets = read_fleet_csv(scenario.resolve(fleet_spec.csv), net)
    else:
        assets = build_fleet(
            net,
            pv_penetration=fleet_spec.pv_penetration,
            battery_share=fleet_spec.battery_share,
            ev_share=fleet_spec.ev_share,
            flex_share=fleet_spec.flex_share,
            seed=derive_seed(seed, "fleet"),
        )
    profiles = _padded_profiles(net, scenario, derive_seed(seed, "profiles"))
    index = profiles.load_p_mw.index
    sessions = generate_ev_sessions(
        assets, start=scenario.start, end=scenario.end + scenario.horizon, step=scenario.step,
        seed=derive_seed(seed, "ev_sessions"),
    )
    all_buses = net.bus.index
    base = _bus_aggregate(profiles.load_p_mw, net.load.bus, all_buses) - _bus_aggregate(
        profiles.sgen_p_mw, net.sgen.bus, all_buses
    )
    kinds = assets["kind"].astype(str)
    pv = assets.index[kinds == AssetKind.PV]
    flex = assets.index[kinds == AssetKind.FLEX_LOAD]
    pv_avail = pd.DataFrame(
        np.outer(profiles.pv_per_mwp.to_numpy(), assets.loc[pv, "p_max_mw"].to_numpy()), index=index, columns=pv
    )
    flex_base = pd.DataFrame(
        np.outer(profiles.flex_per_mw.to_numpy(), assets.loc[flex, "p_max_mw"].to_numpy()), index=index, columns=flex
    )
    return RunInputs(
        net=net,
        assets=assets,
        ev_sessions=sessions,
        profiles=profiles,
        price_eur_per_mwh=tariff_prices(index, scenario.tariff),
        base_load_bus_mw=base,
        pv_avail_mw=pv_avail,
        flex_base_mw=flex_base,
    )
