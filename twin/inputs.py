"""Everything exogenous to a run, built once from the scenario and shared by every policy's twin copy.

Owns: the feeder, the fleet, EV sessions, the replayed load/PV series (from the feeder's profiles or a
telemetry file), the tariff as a price series, and the per-bus uncontrolled load the controllers forecast.
Policies differ only in decisions, never in these inputs (DESIGN.md §6 "Comparison").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pandapower as pp

import grids
from controllers.api import AssetKind
from grids.fleet import PHASE_COLUMN, build_fleet, generate_ev_sessions, read_fleet_csv
from grids.phases import PhaseAllocation, allocate_phases
from grids.profiles import DATA_END, DATA_START, ExogenousProfiles, feeder_profiles
from twin.scenario import Scenario, ScenarioError, TariffSpec

if TYPE_CHECKING:
    from twin.telemetry import TelemetryFile

__all__ = ["RunInputs", "build_inputs", "derive_seed", "known_device_ids", "tariff_prices"]


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
    #: The telemetry file the load and generation came from (with its counts of dropped rows), if any.
    telemetry: TelemetryFile | None = None
    #: Three-phase runs only (``[power_flow] phases = "three_phase"``): the phase of every native load and asset
    #: (also the assets' ``phase`` column) and how it was chosen, for the run's metadata.
    phases: PhaseAllocation | None = None

    def at(self, time: pd.Timestamp) -> int:
        """Row position of interval ``time`` in the input series."""
        return int(self.price_eur_per_mwh.index.get_loc(time))


def _bus_aggregate(frame: pd.DataFrame, buses: pd.Series, all_buses: pd.Index) -> pd.DataFrame:
    """Sum element columns onto their buses: (time × element) @ (element × bus) incidence."""
    if frame.shape[1] == 0:
        return pd.DataFrame(0.0, index=frame.index, columns=all_buses)
    incidence = pd.get_dummies(buses.reindex(frame.columns)).reindex(columns=all_buses, fill_value=0).astype(float)
    return pd.DataFrame(frame.to_numpy() @ incidence.to_numpy(), index=frame.index, columns=all_buses)


def known_device_ids(net: pp.pandapowerNet, assets: pd.DataFrame) -> frozenset[str]:
    """Every device a telemetry file of this feeder may report: its loads, its generators, the fleet's assets."""
    from twin.telemetry import load_device_id, sgen_device_id

    return frozenset([load_device_id(int(i)) for i in net.load.index]
                     + [sgen_device_id(int(i)) for i in net.sgen.index] + [str(a) for a in assets.index])


@contextmanager
def _named(key: str, value: object) -> Iterator[None]:
    """Turn a failure while reading what ``key`` names into a ScenarioError that names the key and value."""
    try:
        yield
    except ScenarioError:
        raise
    except (ValueError, OSError) as exc:
        raise ScenarioError(f"{key}={value!r}: {exc}") from None


def _read_telemetry_file(scenario: Scenario, net: pp.pandapowerNet, assets: pd.DataFrame) -> TelemetryFile:
    from twin.telemetry import load_telemetry

    spec = scenario.telemetry
    path = scenario.resolve(spec.path or "")
    with _named("telemetry.path", spec.path):
        if not path.is_file():
            raise ScenarioError(f"telemetry.path={spec.path!r}: no such file ({path})")
        return load_telemetry(path, known_devices=known_device_ids(net, assets), unknown_devices=spec.unknown_devices)


def _padded_profiles(net: pp.pandapowerNet, scenario: Scenario, seed: int,
                     telemetry: TelemetryFile | None) -> ExogenousProfiles:
    """Profiles for the run plus one horizon; past the data's end the last day repeats (documented)."""
    end = scenario.end + scenario.horizon
    if telemetry is not None:
        from twin.telemetry import telemetry_to_profiles

        shapes = _padded_profiles(net, scenario, seed, None)  # PV and flexible-load shapes, padded alike
        with _named("telemetry.path", scenario.telemetry.path):
            return telemetry_to_profiles(
                telemetry.frame, net, start=scenario.start, end=end, step=scenario.step,
                pv_per_mwp=shapes.pv_per_mwp, flex_per_mw=shapes.flex_per_mw, source=telemetry.source,
            )
    if end <= DATA_END:
        return feeder_profiles(net, start=scenario.start, end=end, step=scenario.step, seed=seed)
    # The horizon runs past the shipped year (e.g. a run ending on 31 December): use what exists
    # and repeat the final day's values, so the last intervals still get a full forecast window.
    day = pd.Timedelta("1D")
    base = feeder_profiles(net, start=scenario.start - day, end=scenario.end, step=scenario.step, seed=seed)
    return _extend(base.window(scenario.start, scenario.end), end, day)


def check_period_in_data(scenario: Scenario) -> None:
    """The run's period must lie inside the profile data (2016): both telemetry sources take shapes from it."""
    span = f"[{DATA_START.isoformat()}, {DATA_END.isoformat()})"
    if not DATA_START <= scenario.start < DATA_END:
        raise ScenarioError(f"start={scenario.start.isoformat()!r} is outside the profile data {span}")
    if scenario.end > DATA_END:
        raise ScenarioError(f"end={scenario.end.isoformat()!r} is after the profile data {span}")
    if scenario.start - pd.Timedelta("1D") < DATA_START and scenario.end + scenario.horizon > DATA_END:
        raise ScenarioError(f"start={scenario.start.isoformat()!r} .. end={scenario.end.isoformat()!r}: a run over "
                            f"the whole data year {span} leaves no day to repeat for the last horizon; end earlier")


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
    """Load the feeder, place or read the fleet, and build every exogenous series for the run.

    Anything the scenario names that cannot be used (an unknown feeder, a missing or bad fleet or telemetry
    file, a period outside the data) raises ``ScenarioError`` naming the key and the value.
    """
    with _named("feeder", scenario.feeder):
        net = grids.load_feeder(scenario.feeder)
    seed = scenario.seed
    fleet_spec = scenario.fleet
    if fleet_spec.csv:
        path = scenario.resolve(fleet_spec.csv)
        with _named("fleet.csv", fleet_spec.csv):
            if not path.is_file():
                raise ScenarioError(f"fleet.csv={fleet_spec.csv!r}: no such file ({path})")
            assets = read_fleet_csv(path, net)
    else:
        assets = build_fleet(
            net,
            pv_penetration=fleet_spec.pv_penetration,
            battery_share=fleet_spec.battery_share,
            ev_share=fleet_spec.ev_share,
            flex_share=fleet_spec.flex_share,
            seed=derive_seed(seed, "fleet"),
        )
    phases = None
    if scenario.power_flow.phases == "three_phase":
        with _named("fleet.csv" if fleet_spec.csv else "feeder", fleet_spec.csv or scenario.feeder):
            phases = allocate_phases(net, assets, feeder=scenario.feeder, seed=derive_seed(seed, "phases"))
        assets = assets.assign(**{PHASE_COLUMN: phases.assets})
    check_period_in_data(scenario)
    telemetry = _read_telemetry_file(scenario, net, assets) if scenario.telemetry.source == "file" else None
    with _named("start", scenario.start.isoformat()):
        profiles = _padded_profiles(net, scenario, derive_seed(seed, "profiles"), telemetry)
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
        telemetry=telemetry,
        phases=phases,
    )
