"""The feeder catalog: named distribution feeders as pandapower nets, ready for a balanced ``runpp``.

This module owns the mapping from a feeder name (``cigre-lv``, ``simbench:<code>``, a path to a pandapower
JSON file, ...) to a fresh pandapower net, and the small fixes some published nets need before a balanced
power flow runs on them as returned.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandapower as pp
import pandapower.networks as pn
import pandas as pd
import simbench as sb

__all__ = [
    "DEFAULT_SIMBENCH_CODE",
    "FeederError",
    "FeederInfo",
    "SIMBENCH_PREFIX",
    "UnknownFeederError",
    "feeder_summary",
    "is_simbench_net",
    "list_feeders",
    "load_feeder",
]

SIMBENCH_PREFIX = "simbench:"
#: A small low-voltage SimBench feeder (15 buses, 13 loads, 4 PV systems): the default demo.
DEFAULT_SIMBENCH_CODE = "1-LV-rural1--0-sw"


class FeederError(ValueError):
    """A feeder could not be loaded (bad file, invalid network data)."""


class UnknownFeederError(FeederError):
    """The feeder name is not in the catalog, not a SimBench code and not an existing JSON file."""


@dataclass(frozen=True)
class FeederInfo:
    """One catalog entry as shown by ``gridtwin feeders``."""

    name: str
    description: str


def _ieee_eu_lv() -> pp.pandapowerNet:
    """IEEE European LV test feeder with its single-phase house loads turned into balanced ``net.load`` rows.

    Each of the 55 asymmetric loads sits on one phase; a balanced (positive-sequence) power flow can only
    represent it as a three-phase load of the same total power, so P and Q are the sums over the phases.
    This keeps the feeder's energy and losses of the right order while losing the phase imbalance (use
    ``runpp_3ph`` on the original net for that). The asymmetric rows are removed because pandapower's balanced
    ``runpp`` would otherwise count them a second time.
    """
    net = pn.ieee_european_lv_asymmetric()
    asym = net.asymmetric_load
    pp.create_loads(
        net,
        buses=asym["bus"].to_numpy(),
        p_mw=(asym["p_a_mw"] + asym["p_b_mw"] + asym["p_c_mw"]).to_numpy(),
        q_mvar=(asym["q_a_mvar"] + asym["q_b_mvar"] + asym["q_c_mvar"]).to_numpy(),
        name=asym["name"].to_numpy(),
        index=asym.index.to_numpy(),
    )
    net.asymmetric_load = asym.iloc[0:0].copy()
    # The stored net predates pandapower 3's trafo characteristic tables; without this column every runpp
    # emits a DeprecationWarning (an error under our test settings). No tap of this trafo depends on a table.
    net.trafo["tap_dependency_table"] = False
    return net


_NAMED: dict[str, tuple[str, Callable[[], pp.pandapowerNet]]] = {
    "cigre-lv": (
        "CIGRE European LV benchmark (44 buses; residential, industrial and commercial sub-feeders)",
        pn.create_cigre_network_lv,
    ),
    "cigre-mv-der": (
        "CIGRE European MV benchmark with all DER (15 buses, 13 sgens: PV, wind, CHP, fuel cells; 2 storages)",
        lambda: pn.create_cigre_network_mv(with_der="all"),
    ),
    "kerber-dorfnetz": (
        "Kerber village LV grid (116 buses, 57 household loads)",
        pn.create_kerber_dorfnetz,
    ),
    "ieee-eu-lv": (
        "IEEE European LV test feeder (907 buses, 55 houses; on-peak snapshot, phases summed into balanced loads)",
        _ieee_eu_lv,
    ),
    "baran-wu-33": (
        "Baran & Wu 33-bus 12.66 kV radial distribution system (case33bw)",
        pn.case33bw,
    ),
}


def list_feeders() -> list[FeederInfo]:
    """The named feeders, plus the default SimBench demo feeder (any SimBench code also works)."""
    infos = [FeederInfo(name, description) for name, (description, _) in _NAMED.items()]
    infos.append(
        FeederInfo(
            SIMBENCH_PREFIX + DEFAULT_SIMBENCH_CODE,
            "SimBench LV rural feeder with a year of 15-minute profiles (any 'simbench:<code>' works)",
        )
    )
    return infos


def _valid_names_text() -> str:
    names = ", ".join(repr(info.name) for info in list_feeders())
    return f"valid names: {names}, 'simbench:<code>' (any SimBench code), or a path to a pandapower .json file"


def load_feeder(name: str | os.PathLike[str]) -> pp.pandapowerNet:
    """A fresh copy of the feeder ``name`` (a catalog name, ``simbench:<code>`` or a pandapower JSON path).

    Nets are built once per process and deep-copied on every call, so callers may mutate what they get.
    Raises ``UnknownFeederError`` (listing the valid names) for anything else.
    """
    if isinstance(name, os.PathLike):
        return copy.deepcopy(_load_json(Path(name)))
    if name in _NAMED:
        return copy.deepcopy(_load_named(name))
    if name.startswith(SIMBENCH_PREFIX):
        return copy.deepcopy(_load_simbench(name.removeprefix(SIMBENCH_PREFIX)))
    if name.lower().endswith(".json") or os.sep in name or Path(name).is_file():
        return copy.deepcopy(_load_json(Path(name)))
    raise UnknownFeederError(f"unknown feeder {name!r}; {_valid_names_text()}")


@functools.cache
def _load_named(name: str) -> pp.pandapowerNet:
    return _NAMED[name][1]()


@functools.cache
def _simbench_codes() -> frozenset[str]:
    return frozenset(sb.collect_all_simbench_codes())


@functools.cache
def _load_simbench(code: str) -> pp.pandapowerNet:
    # simbench answers an unknown code with assorted KeyErrors/ValueErrors or warnings; check the list first.
    if code not in _simbench_codes():
        examples = ", ".join(sorted(_simbench_codes())[:3])
        raise UnknownFeederError(
            f"unknown SimBench code {code!r} (feeder {SIMBENCH_PREFIX + code!r}); "
            f"see simbench.collect_all_simbench_codes(), e.g. {examples}; {_valid_names_text()}"
        )
    return sb.get_simbench_net(code)


def _load_json(path: Path) -> pp.pandapowerNet:
    if not path.is_file():
        raise UnknownFeederError(f"feeder file {str(path)!r} does not exist; {_valid_names_text()}")
    stat = path.stat()
    # Key the cache on the file's identity and version so an edited file is re-read.
    return _load_json_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.cache
def _load_json_cached(path: str, mtime_ns: int, size: int) -> pp.pandapowerNet:
    del mtime_ns, size  # part of the cache key only
    try:
        net = pp.from_json(path)
    except Exception as exc:  # pandapower raises many types for a bad file; report one
        raise FeederError(f"feeder file {path!r} is not a pandapower JSON network ({exc})") from exc
    if not isinstance(net, pp.pandapowerNet):
        raise FeederError(f"feeder file {path!r} holds a {type(net).__name__}, not a pandapower network")
    return net


def is_simbench_net(net: pp.pandapowerNet) -> bool:
    """Whether ``net`` carries SimBench profiles (``net.profiles`` with a time column, loads naming profiles)."""
    profiles = net.get("profiles") if hasattr(net, "get") else None
    if not isinstance(profiles, dict):
        return False
    load_profiles = profiles.get("load")
    return (
        isinstance(load_profiles, pd.DataFrame)
        and "time" in load_profiles.columns
        and len(load_profiles) > 0
        and "profile" in net.load.columns
    )


def feeder_summary(net: pp.pandapowerNet) -> dict[str, int | float]:
    """Element counts (``bus``, ``line``, ``trafo``, ``load``, ``sgen``, ``storage``) and installed totals."""
    summary: dict[str, int | float] = {
        element: int(len(net[element])) for element in ("bus", "line", "trafo", "load", "sgen", "storage")
    }
    summary["load_p_mw"] = float(net.load["p_mw"].sum())
    summary["sgen_p_mw"] = float(net.sgen["p_mw"].sum())
    return summary
