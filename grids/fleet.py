"""DER fleets: the static asset table (index ``asset_id``), its CSV form and validation, and EV sessions.

This module owns how a fleet of PV systems, batteries, EV chargers and flexible loads is placed on a feeder
(seeded, one participant per load), how a fleet file is read and checked, and the EV plug-in sessions that
drive the EV chargers. It is static data: no clock, no control, no money.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd
import pandapower as pp

from grids.profiles import utc_timestamp

__all__ = [
    "ASSET_COLUMNS",
    "AssetKind",
    "EV_SESSION_COLUMNS",
    "FleetError",
    "FleetRatings",
    "PHASE_COLUMN",
    "PHASE_VALUES",
    "build_fleet",
    "generate_ev_sessions",
    "participant_id_for_load",
    "read_fleet_csv",
    "validate_ev_sessions",
    "validate_fleet",
    "write_fleet_csv",
]


class AssetKind(StrEnum):
    """Mirrors ``controllers.api.AssetKind``: grids is static data and must not import controllers."""

    PV = "pv"
    BATTERY = "battery"
    EV_CHARGER = "ev_charger"
    FLEX_LOAD = "flex_load"


#: Mirrors ``controllers.api.ASSET_COLUMNS`` (a test pins the two together).
ASSET_COLUMNS: tuple[str, ...] = (
    "kind",
    "bus",
    "participant_id",
    "p_max_mw",
    "e_max_mwh",
    "eta_charge",
    "eta_discharge",
    "soc_min",
    "soc_max",
    "soc_init",
    "s_max_mva",
    "v2g",
    "flex_window",
)
EV_SESSION_COLUMNS: tuple[str, ...] = ("asset_id", "arrival", "departure", "energy_mwh")
#: Optional column: the asset's phase connection in three-phase runs (grids.phases fills it when absent).
PHASE_COLUMN = "phase"
PHASE_VALUES: tuple[str, ...] = ("a", "b", "c", "abc")

_ID_PREFIX: Mapping[AssetKind, str] = {
    AssetKind.PV: "pv",
    AssetKind.BATTERY: "bat",
    AssetKind.EV_CHARGER: "ev",
    AssetKind.FLEX_LOAD: "flex",
}
_RATINGS = ("p_max_mw", "e_max_mwh", "s_max_mva")
_PV_TOLERANCE_MW = 1e-6
_FRACTIONS = ("soc_min", "soc_max", "soc_init")
_EFFICIENCIES = ("eta_charge", "eta_discharge")


class FleetError(ValueError):
    """A bad fleet table or EV session table; the message names the row, the field and the value."""


@dataclass(frozen=True)
class FleetRatings:
    """Per-asset ratings used by ``build_fleet``; defaults suit LV households (pass larger ones for MV)."""

    #: PV size as a multiple of the host participant's load ``p_mw`` (its peak): one roof's worth.
    pv_size_per_load_mw: float = 1.0
    #: Inverter apparent power over rated active power: headroom for reactive power at full output.
    inverter_s_over_p: float = 1.1
    battery_p_mw: float = 0.005
    battery_e_mwh: float = 0.010
    battery_eta: float = 0.95
    battery_soc_min: float = 0.1
    battery_soc_max: float = 0.95
    battery_soc_init: float = 0.5
    ev_p_mw: float = 0.011
    ev_eta: float = 0.92
    #: Share of EV chargers that are bidirectional (V2G).
    ev_v2g_share: float = 0.25
    flex_p_mw: float = 0.003
    flex_window: pd.Timedelta = pd.Timedelta("4h")


def build_fleet(
    net: pp.pandapowerNet,
    *,
    pv_penetration: float,
    battery_share: float,
    ev_share: float,
    flex_share: float,
    seed: int,
    ratings: FleetRatings = FleetRatings(),
) -> pd.DataFrame:
    """A seeded DER fleet on ``net``: one participant ``"p-<load index>"`` per load, at that load's bus.

    ``pv_penetration`` = installed fleet PV (MWp) / sum of the loads' ``p_mw``. Each PV host gets a system of
    ``ratings.pv_size_per_load_mw`` × its load ``p_mw``; hosts are drawn in seeded order until the target is
    met (the last host gets the remainder, so the total is exact); if every participant hosts and the target is
    still not met, all systems are scaled up to it. ``battery_share``, ``ev_share`` and ``flex_share`` are the
    fractions of participants (rounded half up to a whole number) that get a battery, an EV charger or a
    flexible load, drawn independently. Asset ids are ``"<prefix>-<load index:04d>"`` (``pv-0007``,
    ``bat-0003``, ``ev-0012``, ``flex-0001``), so an id names its participant. Same inputs ⇒ identical table.
    """
    for name, share in (("battery_share", battery_share), ("ev_share", ev_share), ("flex_share", flex_share)):
        if not 0.0 <= share <= 1.0:
            raise FleetError(f"{name}={share!r} is not a fraction in [0, 1]")
    if not pv_penetration >= 0.0:
        raise FleetError(f"pv_penetration={pv_penetration!r} must be >= 0")
    rng = np.random.default_rng(seed)
    loads = net.load
    rows: list[dict[str, Any]] = []
    rows += _pv_rows(loads, pv_penetration=pv_penetration, ratings=ratings, rng=rng)
    for kind, share in (
        (AssetKind.BATTERY, battery_share),
        (AssetKind.EV_CHARGER, ev_share),
        (AssetKind.FLEX_LOAD, flex_share),
    ):
        count = math.floor(share * len(loads) + 0.5)
        hosts = np.sort(rng.choice(loads.index.to_numpy(), size=count, replace=False))
        v2g = rng.random(count) < ratings.ev_v2g_share
        rows += [_asset_row(kind, int(idx), loads, ratings, v2g=bool(v2g[i])) for i, idx in enumerate(hosts)]
    return _as_table(rows)


def _pv_rows(
    loads: pd.DataFrame, *, pv_penetration: float, ratings: FleetRatings, rng: np.random.Generator
) -> list[dict[str, Any]]:
    target = pv_penetration * float(loads["p_mw"].sum())
    order = rng.permutation(loads.index.to_numpy())
    sizes: dict[int, float] = {}
    remaining = target
    for idx in order:
        # 1 W: below this the rest is float rounding, not a PV system.
        if remaining <= _PV_TOLERANCE_MW:
            break
        roof = ratings.pv_size_per_load_mw * float(loads.at[idx, "p_mw"])
        if roof > 0.0:
            sizes[int(idx)] = min(roof, remaining)
            remaining -= sizes[int(idx)]
    if remaining > _PV_TOLERANCE_MW and sizes:
        scale = target / sum(sizes.values())
        sizes = {idx: size * scale for idx, size in sizes.items()}
    return [_asset_row(AssetKind.PV, idx, loads, ratings, pv_mwp=sizes[idx]) for idx in sorted(sizes)]


def participant_id_for_load(load_index: int) -> str:
    """The participant behind a native load (one household or business per load): ``p-<load index>``."""
    return f"p-{load_index}"


def _asset_row(
    kind: AssetKind,
    load_idx: int,
    loads: pd.DataFrame,
    ratings: FleetRatings,
    *,
    pv_mwp: float = 0.0,
    v2g: bool = False,
) -> dict[str, Any]:
    # Fields that do not apply to a kind get neutral values (no storage, lossless, SOC unused).
    row: dict[str, Any] = {
        "asset_id": f"{_ID_PREFIX[kind]}-{load_idx:04d}",
        "kind": kind.value,
        "bus": int(loads.at[load_idx, "bus"]),
        "participant_id": participant_id_for_load(load_idx),
        "p_max_mw": 0.0,
        "e_max_mwh": 0.0,
        "eta_charge": 1.0,
        "eta_discharge": 1.0,
        "soc_min": 0.0,
        "soc_max": 1.0,
        "soc_init": 0.0,
        "s_max_mva": 0.0,
        "v2g": False,
        "flex_window": pd.Timedelta(0),
    }
    if kind is AssetKind.PV:
        row.update(p_max_mw=pv_mwp, s_max_mva=pv_mwp * ratings.inverter_s_over_p)
    elif kind is AssetKind.BATTERY:
        row.update(
            p_max_mw=ratings.battery_p_mw,
            e_max_mwh=ratings.battery_e_mwh,
            eta_charge=ratings.battery_eta,
            eta_discharge=ratings.battery_eta,
            soc_min=ratings.battery_soc_min,
            soc_max=ratings.battery_soc_max,
            soc_init=ratings.battery_soc_init,
            s_max_mva=ratings.battery_p_mw * ratings.inverter_s_over_p,
        )
    elif kind is AssetKind.EV_CHARGER:
        # The car's battery is not a fleet asset: sessions carry the energy it needs (generate_ev_sessions).
        row.update(
            p_max_mw=ratings.ev_p_mw,
            eta_charge=ratings.ev_eta,
            eta_discharge=ratings.ev_eta,
            s_max_mva=ratings.ev_p_mw * (ratings.inverter_s_over_p if v2g else 1.0),
            v2g=v2g,
        )
    else:
        row.update(p_max_mw=ratings.flex_p_mw, s_max_mva=ratings.flex_p_mw, flex_window=ratings.flex_window)
    return row


def _as_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    phased = any(PHASE_COLUMN in row for row in rows)
    table = pd.DataFrame(rows, columns=["asset_id", *ASSET_COLUMNS, *((PHASE_COLUMN,) if phased else ())])
    table = table.astype(
        {
            "kind": object,
            "bus": "int64",
            "participant_id": object,
            **{c: "float64" for c in (*_RATINGS, *_FRACTIONS, *_EFFICIENCIES)},
            "v2g": bool,
            "flex_window": "timedelta64[ns]",
        }
    )
    return table.set_index("asset_id")


# ----------------------------------------------------------------------------------------------- validation


def validate_fleet(df: pd.DataFrame, net: pp.pandapowerNet) -> None:
    """Raise ``FleetError`` naming the asset, the field and the value for the first problem found."""
    _validate_rows(df, net, where=lambda asset_id: f"asset {asset_id!r}")


def _validate_rows(df: pd.DataFrame, net: pp.pandapowerNet, *, where: Callable[[Any], str]) -> None:
    if df.index.name != "asset_id":
        raise FleetError(f"fleet table index must be named 'asset_id', not {df.index.name!r}")
    missing = [c for c in ASSET_COLUMNS if c not in df.columns]
    if missing:
        raise FleetError(f"fleet table lacks columns {missing}; expected {list(ASSET_COLUMNS)}")
    duplicated = df.index[df.index.duplicated()]
    if len(duplicated):
        raise FleetError(f"{where(duplicated[0])}: field 'asset_id': duplicate value {duplicated[0]!r}")
    kinds = {kind.value for kind in AssetKind}
    buses = set(net.bus.index.tolist())
    for asset_id, row in df.iterrows():
        at = where(asset_id)
        if not isinstance(asset_id, str) or not asset_id:
            raise FleetError(f"{at}: field 'asset_id': value {asset_id!r} is not a non-empty string")
        if row["kind"] not in kinds:
            raise FleetError(f"{at}: field 'kind': unknown value {row['kind']!r}; expected one of {sorted(kinds)}")
        if row["bus"] not in buses:
            raise FleetError(f"{at}: field 'bus': value {row['bus']!r} is not a bus of the feeder")
        if not isinstance(row["participant_id"], str) or not row["participant_id"]:
            raise FleetError(f"{at}: field 'participant_id': value {row['participant_id']!r} is empty")
        for field in _RATINGS:
            if not row[field] >= 0.0:  # also catches NaN
                raise FleetError(f"{at}: field {field!r}: rating {row[field]!r} must be >= 0")
        for field in _FRACTIONS:
            if not 0.0 <= row[field] <= 1.0:
                raise FleetError(f"{at}: field {field!r}: value {row[field]!r} is not a fraction in [0, 1]")
        if row["soc_min"] > row["soc_max"]:
            raise FleetError(f"{at}: field 'soc_min': value {row['soc_min']!r} exceeds soc_max={row['soc_max']!r}")
        if not row["soc_min"] <= row["soc_init"] <= row["soc_max"]:
            raise FleetError(
                f"{at}: field 'soc_init': value {row['soc_init']!r} is outside "
                f"[soc_min, soc_max] = [{row['soc_min']!r}, {row['soc_max']!r}]"
            )
        for field in _EFFICIENCIES:
            if not 0.0 < row[field] <= 1.0:
                raise FleetError(f"{at}: field {field!r}: efficiency {row[field]!r} is not in (0, 1]")
        if row["kind"] == AssetKind.BATTERY and not row["e_max_mwh"] > 0.0:
            raise FleetError(f"{at}: field 'e_max_mwh': a battery needs a capacity > 0, got {row['e_max_mwh']!r}")
        if not isinstance(row["v2g"], (bool, np.bool_)):
            raise FleetError(f"{at}: field 'v2g': value {row['v2g']!r} is not a boolean")
        if not isinstance(row["flex_window"], pd.Timedelta) or row["flex_window"] < pd.Timedelta(0):
            raise FleetError(f"{at}: field 'flex_window': value {row['flex_window']!r} is not a duration >= 0")
        if PHASE_COLUMN in df.columns and row[PHASE_COLUMN] not in PHASE_VALUES:
            raise FleetError(f"{at}: field 'phase': value {row[PHASE_COLUMN]!r} is not one of {list(PHASE_VALUES)}")


# ----------------------------------------------------------------------------------------------- CSV


def write_fleet_csv(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write the fleet as CSV: ``asset_id`` first, durations as ISO 8601 (``PT4H``), booleans as true/false."""
    out = df.loc[:, [*ASSET_COLUMNS, *((PHASE_COLUMN,) if PHASE_COLUMN in df.columns else ())]].copy()
    out["flex_window"] = [pd.Timedelta(w).isoformat() for w in out["flex_window"]]
    out["v2g"] = np.where(out["v2g"].astype(bool), "true", "false")
    out.to_csv(path, index_label="asset_id")


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def read_fleet_csv(path: str | os.PathLike[str], net: pp.pandapowerNet) -> pd.DataFrame:
    """Read and validate a fleet CSV (header ``asset_id`` + ASSET_COLUMNS, optionally ``phase``). Errors name the
    file line."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("asset_id", *ASSET_COLUMNS) if c not in raw.columns]
    if missing:
        raise FleetError(f"{os.fspath(path)}: missing columns {missing}; expected {['asset_id', *ASSET_COLUMNS]}")
    rows: list[dict[str, Any]] = []
    for position, record in enumerate(raw.to_dict("records")):
        line = position + 2  # the header is line 1
        row = _parse_row(record, at=f"{os.fspath(path)} line {line} (asset {record['asset_id']!r})")
        if PHASE_COLUMN in raw.columns:
            row[PHASE_COLUMN] = record[PHASE_COLUMN].strip()
        rows.append(row)
    table = _as_table(rows) if rows else _as_table([])
    # Later rows overwrite earlier ones, so a duplicate id points at its second occurrence (the one to fix).
    line_of = {row["asset_id"]: position + 2 for position, row in enumerate(rows)}
    _validate_rows(
        table,
        net,
        where=lambda asset_id: f"{os.fspath(path)} line {line_of.get(asset_id, '?')} (asset {asset_id!r})",
    )
    return table


def _parse_row(record: Mapping[str, str], *, at: str) -> dict[str, Any]:
    row: dict[str, Any] = {"asset_id": record["asset_id"].strip(), "kind": record["kind"].strip()}
    row["participant_id"] = record["participant_id"].strip()
    try:
        row["bus"] = int(record["bus"])
    except ValueError:
        raise FleetError(f"{at}: field 'bus': value {record['bus']!r} is not an integer bus index") from None
    for field in (*_RATINGS, *_FRACTIONS, *_EFFICIENCIES):
        try:
            row[field] = float(record[field])
        except ValueError:
            raise FleetError(f"{at}: field {field!r}: value {record[field]!r} is not a number") from None
    flag = record["v2g"].strip().lower()
    if flag not in _TRUE | _FALSE:
        raise FleetError(f"{at}: field 'v2g': value {record['v2g']!r} is not true/false")
    row["v2g"] = flag in _TRUE
    try:
        row["flex_window"] = pd.Timedelta(record["flex_window"].strip() or "0s")
    except ValueError:
        raise FleetError(f"{at}: field 'flex_window': value {record['flex_window']!r} is not a duration") from None
    if row["flex_window"] is pd.NaT:
        raise FleetError(f"{at}: field 'flex_window': value {record['flex_window']!r} is not a duration")
    return row


# ----------------------------------------------------------------------------------------------- EV sessions

#: Session model of ``generate_ev_sessions`` (times of day on the profiles' clock, see grids.profiles).
EV_PLUG_IN_PROBABILITY = 0.85
EV_ARRIVAL_MEAN, EV_ARRIVAL_SD = pd.Timedelta("18h"), pd.Timedelta("90min")
EV_ARRIVAL_RANGE = (pd.Timedelta("15h"), pd.Timedelta("23h"))
EV_DEPARTURE_MEAN, EV_DEPARTURE_SD = pd.Timedelta("7h30min"), pd.Timedelta("1h")
EV_DEPARTURE_RANGE = (pd.Timedelta("5h"), pd.Timedelta("10h"))
EV_ENERGY_MEAN_MWH, EV_ENERGY_SD_MWH = 0.010, 0.004
EV_ENERGY_RANGE_MWH = (0.002, 0.030)


def generate_ev_sessions(
    fleet: pd.DataFrame,
    *,
    start: Any,
    end: Any,
    step: pd.Timedelta = pd.Timedelta("15min"),
    seed: int,
) -> pd.DataFrame:
    """Seeded plug-in sessions for every EV charger of ``fleet``, with arrival in ``[start, end)``.

    Each evening a car plugs in with probability 0.85, arriving around 18:00 (sd 1.5 h, within 15:00-23:00)
    and leaving the next morning around 07:30 (sd 1 h, within 05:00-10:00); both are floored to the ``step``
    grid. ``energy_mwh`` is what the car's battery must receive by departure (about 10 kWh, sd 4 kWh, within
    2-30 kWh), capped at what the charger can deliver: ``p_max_mw × eta_charge × (departure − arrival)``.
    A departure may fall after ``end``. Columns ``asset_id, arrival, departure, energy_mwh``, sorted by arrival.

    Prefix-stable: each evening's draws come from a generator of its own, seeded by ``seed`` and the date, so
    a day's sessions are the same whether the period holds that one day or a whole year.
    """
    start_ts, end_ts = utc_timestamp(start, name="start"), utc_timestamp(end, name="end")
    step = pd.Timedelta(step)
    if not end_ts > start_ts:
        raise FleetError(f"end={end_ts.isoformat()} is not after start={start_ts.isoformat()}")
    if step <= pd.Timedelta(0):
        raise FleetError(f"step={step} must be positive")
    evs = fleet[fleet["kind"] == AssetKind.EV_CHARGER].sort_index()
    days = pd.date_range(start_ts.floor("D") - pd.Timedelta("1D"), end_ts.ceil("D"), freq="D")
    shape = (len(evs), len(days))
    plugged = np.empty(shape, dtype=bool)
    arrival_offset = np.empty(shape, dtype="timedelta64[ns]")
    departure_offset = np.empty(shape, dtype="timedelta64[ns]")
    energy = np.empty(shape)
    for k, day in enumerate(days):
        rng = np.random.default_rng([seed % 2**64, day.toordinal()])  # this evening's draws only: prefix-stable
        plugged[:, k] = rng.random(len(evs)) < EV_PLUG_IN_PROBABILITY
        arrival_offset[:, k] = _clipped_normal(rng, EV_ARRIVAL_MEAN, EV_ARRIVAL_SD, EV_ARRIVAL_RANGE, len(evs))
        departure_offset[:, k] = _clipped_normal(rng, EV_DEPARTURE_MEAN, EV_DEPARTURE_SD, EV_DEPARTURE_RANGE, len(evs))
        energy[:, k] = np.clip(rng.normal(EV_ENERGY_MEAN_MWH, EV_ENERGY_SD_MWH, len(evs)), *EV_ENERGY_RANGE_MWH)
    day_ns = days.tz_convert(None).to_numpy().astype("datetime64[ns]")[None, :]
    arrival = _floor_to_grid(day_ns + arrival_offset, step)
    departure = _floor_to_grid(day_ns + np.timedelta64(1, "D") + departure_offset, step)
    hours = (departure - arrival) / np.timedelta64(1, "h")
    deliverable = evs["p_max_mw"].to_numpy()[:, None] * evs["eta_charge"].to_numpy()[:, None] * hours
    energy = np.minimum(energy, deliverable)
    start_ns, end_ns = start_ts.tz_convert(None).to_datetime64(), end_ts.tz_convert(None).to_datetime64()
    keep = plugged & (arrival >= start_ns) & (arrival < end_ns)
    asset_ids = np.broadcast_to(evs.index.to_numpy()[:, None], shape)
    sessions = pd.DataFrame(
        {
            "asset_id": asset_ids[keep].astype(object),
            "arrival": pd.DatetimeIndex(arrival[keep]).tz_localize("UTC"),
            "departure": pd.DatetimeIndex(departure[keep]).tz_localize("UTC"),
            "energy_mwh": energy[keep].astype(float),
        }
    )
    return sessions.sort_values(["arrival", "asset_id"], kind="stable").reset_index(drop=True)


def _clipped_normal(
    rng: np.random.Generator,
    mean: pd.Timedelta,
    sd: pd.Timedelta,
    bounds: tuple[pd.Timedelta, pd.Timedelta],
    shape: int | tuple[int, ...],
) -> np.ndarray:
    minutes = np.clip(
        rng.normal(mean / pd.Timedelta("1min"), sd / pd.Timedelta("1min"), shape),
        bounds[0] / pd.Timedelta("1min"),
        bounds[1] / pd.Timedelta("1min"),
    )
    return (minutes * 60e9).astype("int64").astype("timedelta64[ns]")


def _floor_to_grid(times: np.ndarray, step: pd.Timedelta) -> np.ndarray:
    ns = times.astype("datetime64[ns]").astype("int64")
    return (ns - ns % step.value).astype("datetime64[ns]")


def validate_ev_sessions(df: pd.DataFrame, fleet: pd.DataFrame) -> None:
    """Raise ``FleetError`` naming the session row, the field and the value for the first problem found.

    Checks: the columns, that ``asset_id`` is an EV charger of ``fleet``, tz-aware UTC ``arrival`` before
    ``departure``, ``energy_mwh`` >= 0 and deliverable at the charger's rating, and no overlapping sessions
    on one charger.
    """
    missing = [c for c in EV_SESSION_COLUMNS if c not in df.columns]
    if missing:
        raise FleetError(f"EV sessions lack columns {missing}; expected {list(EV_SESSION_COLUMNS)}")
    chargers = fleet[fleet["kind"] == AssetKind.EV_CHARGER]
    for field in ("arrival", "departure"):
        dtype = df[field].dtype
        if not isinstance(dtype, pd.DatetimeTZDtype) or str(dtype.tz) != "UTC":
            raise FleetError(f"EV sessions: field {field!r}: dtype {dtype} is not a tz-aware UTC timestamp")
    for position, row in enumerate(df.itertuples(index=False)):
        at = f"EV session row {position} (asset {row.asset_id!r})"
        if row.asset_id not in chargers.index:
            raise FleetError(f"{at}: field 'asset_id': value {row.asset_id!r} is not an EV charger of the fleet")
        if pd.isna(row.arrival) or pd.isna(row.departure) or not row.departure > row.arrival:
            raise FleetError(
                f"{at}: field 'departure': value {row.departure} is not after arrival {row.arrival}"
            )
        if not row.energy_mwh >= 0.0 or not np.isfinite(row.energy_mwh):
            raise FleetError(f"{at}: field 'energy_mwh': value {row.energy_mwh!r} must be a finite number >= 0")
        charger = chargers.loc[row.asset_id]
        hours = (row.departure - row.arrival) / pd.Timedelta("1h")
        deliverable = charger["p_max_mw"] * charger["eta_charge"] * hours
        if row.energy_mwh > deliverable * (1 + 1e-9):
            raise FleetError(
                f"{at}: field 'energy_mwh': value {row.energy_mwh!r} exceeds the {deliverable!r} MWh the charger "
                f"can deliver in {row.departure - row.arrival}"
            )
    ordered = df.assign(_row=np.arange(len(df))).sort_values(["asset_id", "arrival"], kind="stable")
    previous_departure = ordered.groupby("asset_id", sort=False)["departure"].shift()
    overlap = ordered["arrival"] < previous_departure
    if overlap.any():
        row = ordered[overlap].iloc[0]
        raise FleetError(
            f"EV session row {row['_row']} (asset {row['asset_id']!r}): field 'arrival': value {row['arrival']} "
            f"is before the departure of the charger's previous session"
        )
