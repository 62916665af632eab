"""Phase connections of a four-wire LV feeder: which phase each native load and each fleet asset is on.

Owns the ``phase`` column (``a``, ``b``, ``c`` or ``abc`` for a three-phase connection) and how it is filled:
the IEEE European LV feeder keeps the phases of its own single-phase houses; any other feeder gets a seeded
allocation of its LV loads (a seeded permutation dealt round-robin over a, b, c, so the phases differ by at most
one household; loads on MV buses are three-phase); a fleet asset sits on its host's phase when its rating fits a single-phase connection, else on
all three. Static data: no clock, no power flow.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandapower as pp
import pandapower.networks as pn
import pandas as pd

from grids.fleet import PHASE_COLUMN, PHASE_VALUES, FleetError

__all__ = [
    "PHASE_COLUMN",
    "Phase",
    "PhaseAllocation",
    "SINGLE_PHASE_MAX_MW",
    "allocate_phases",
    "asset_phases",
    "load_phases",
    "validate_phase_column",
]

#: Loads on buses at or above this voltage are three-phase.
LV_MAX_KV = 1.0
#: The largest single-phase connection: 32 A at 230 V (a 7.4 kW wallbox); larger assets are three-phase.
SINGLE_PHASE_MAX_MW = 0.0074


class Phase(StrEnum):
    A = "a"
    B = "b"
    C = "c"
    ABC = "abc"


_VALID = PHASE_VALUES


@dataclass(frozen=True)
class PhaseAllocation:
    """The phases of a run: per native load (index = load index) and per asset, and how they were chosen."""

    loads: pd.Series
    assets: pd.Series
    #: One sentence for the run's metadata (seeded or from the feeder's data, and the seed).
    method: str


def load_phases(net: pp.pandapowerNet, *, feeder: str, seed: int) -> tuple[pd.Series, str]:
    """The phase of every native load of ``net`` and a sentence saying where it came from."""
    if feeder == "ieee-eu-lv":
        # The catalog keeps the IEEE feeder's load indices; each house has power on exactly one phase.
        asym = pn.ieee_european_lv_asymmetric().asymmetric_load
        powers = np.abs(asym[["p_a_mw", "p_b_mw", "p_c_mw"]].to_numpy()) + np.abs(
            asym[["q_a_mvar", "q_b_mvar", "q_c_mvar"]].to_numpy())
        phases = pd.Series(np.array(["a", "b", "c"], dtype=object)[powers.argmax(axis=1)], index=asym.index)
        if not phases.index.equals(net.load.index):
            raise FleetError("the IEEE European LV feeder's loads do not match its single-phase load table")
        return phases.rename(PHASE_COLUMN), "the IEEE European LV feeder's own single-phase house connections"
    # A load on a medium-voltage bus stands for a whole LV area or a business: three-phase.
    lv = net.bus.loc[net.load["bus"], "vn_kv"].to_numpy(dtype=float) < LV_MAX_KV
    rng = np.random.default_rng(seed)
    order = rng.permutation(int(lv.sum()))
    dealt = np.full(len(net.load), Phase.ABC.value, dtype=object)
    lv_dealt = np.empty(int(lv.sum()), dtype=object)
    lv_dealt[order] = np.array(["a", "b", "c"], dtype=object)[np.arange(int(lv.sum())) % 3]
    dealt[lv] = lv_dealt
    return (pd.Series(dealt, index=net.load.index, name=PHASE_COLUMN),
            f"seeded allocation (seed {seed}): a seeded permutation of the LV loads dealt round-robin over a, b, c; "
            f"loads on buses of {LV_MAX_KV:g} kV and above three-phase")


def asset_phases(assets: pd.DataFrame, loads: pd.Series, load_bus: pd.Series, *,
                 single_phase_max_mw: float = SINGLE_PHASE_MAX_MW) -> pd.Series:
    """Each asset on its host's phase (the load at its bus, lowest index first) if ``p_max_mw`` fits one phase.

    An asset rated above ``single_phase_max_mw``, or at a bus with no native load, is three-phase (``abc``).
    """
    host = loads.groupby(load_bus.reindex(loads.index)).first() if len(loads) else pd.Series(dtype=object)
    on_host = assets["bus"].map(host)
    single = (assets["p_max_mw"].to_numpy(dtype=float) <= single_phase_max_mw) & on_host.notna().to_numpy()
    values = np.where(single, on_host.fillna(Phase.ABC.value).to_numpy(dtype=object), Phase.ABC.value)
    return pd.Series(values.astype(object), index=assets.index, name=PHASE_COLUMN)


def allocate_phases(net: pp.pandapowerNet, assets: pd.DataFrame, *, feeder: str, seed: int) -> PhaseAllocation:
    """Phases for the native loads and the fleet; an asset table that already has a ``phase`` column keeps it."""
    loads, method = load_phases(net, feeder=feeder, seed=seed)
    if PHASE_COLUMN in assets.columns:
        validate_phase_column(assets)
        return PhaseAllocation(loads=loads, assets=assets[PHASE_COLUMN].astype(object),
                               method=method + "; asset phases from the fleet table")
    return PhaseAllocation(loads=loads, assets=asset_phases(assets, loads, net.load["bus"]),
                           method=method + f"; assets on their host's phase up to {SINGLE_PHASE_MAX_MW * 1e3:g} kW, "
                                           "three-phase above")


def validate_phase_column(assets: pd.DataFrame) -> None:
    """Raise ``FleetError`` naming the asset and the value if a ``phase`` is not one of a, b, c, abc."""
    if PHASE_COLUMN not in assets.columns:
        return
    bad = ~assets[PHASE_COLUMN].isin(_VALID)
    if bad.any():
        asset_id = assets.index[bad.to_numpy()][0]
        value = assets.loc[asset_id, PHASE_COLUMN]
        raise FleetError(f"asset {asset_id!r}: field 'phase': value {value!r} is not one of {list(_VALID)}")
