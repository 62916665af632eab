"""Constant-power bus injections of a pandapower net, in the twin's load convention.

Owns the one conversion from pandapower's element tables to per-bus P/Q: loads and storage count as
consumption, static generators (generator convention in pandapower) are subtracted. External grids, gens and
shunts are *not* injections here: the slack and voltage-controlled generators are solved for, and shunts are
part of the admittance matrix (summing them in would count them twice, see REFERENCES.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pandapower as pp
import pandas as pd
import scipy.sparse as sp

__all__ = ["bus_injection_profiles", "bus_injections", "element_incidence", "INJECTION_ELEMENTS"]

#: Element tables summed into bus injections, with their sign in load convention.
INJECTION_ELEMENTS: tuple[tuple[str, float], ...] = (("load", 1.0), ("sgen", -1.0), ("storage", 1.0))
#: Unbalanced tables pandapower's balanced power flow also sees (as the sum of the three phases).
_ASYMMETRIC_ELEMENTS: tuple[tuple[str, float], ...] = (("asymmetric_load", 1.0), ("asymmetric_sgen", -1.0))


def bus_injections(net: pp.pandapowerNet) -> tuple[pd.Series, pd.Series]:
    """P (MW) and Q (Mvar) per bus in load convention (positive = consumption), indexed like ``net.bus``.

    In-service elements only, each multiplied by its ``scaling``; buses without injections get 0.
    Asymmetric loads/sgens, if any, contribute the sum of their phases, as in pandapower's balanced power flow.
    """
    bus_index = net.bus.index
    p_mw = np.zeros(len(bus_index))
    q_mvar = np.zeros(len(bus_index))
    for _, table, factor, rows in _weighted_elements(net, INJECTION_ELEMENTS):
        np.add.at(p_mw, rows, factor * table["p_mw"].to_numpy(float))
        np.add.at(q_mvar, rows, factor * table["q_mvar"].to_numpy(float))
    for _, table, factor, rows in _weighted_elements(net, _ASYMMETRIC_ELEMENTS):
        p_total = table[["p_a_mw", "p_b_mw", "p_c_mw"]].to_numpy(float).sum(axis=1)
        q_total = table[["q_a_mvar", "q_b_mvar", "q_c_mvar"]].to_numpy(float).sum(axis=1)
        np.add.at(p_mw, rows, factor * p_total)
        np.add.at(q_mvar, rows, factor * q_total)
    return (
        pd.Series(p_mw, index=bus_index, name="p_mw"),
        pd.Series(q_mvar, index=bus_index, name="q_mvar"),
    )


def element_incidence(net: pp.pandapowerNet, element: str, positions: np.ndarray) -> sp.csr_matrix:
    """(n_bus x len(positions)) matrix that sums the ``p_mw`` (or ``q_mvar``) of the rows ``positions`` of
    ``net[element]`` onto their buses as ``bus_injections`` does: sign (load convention) x scaling x in_service.
    Built once; the engine then turns a vector of element powers into bus injections with one product."""
    bus_index = net.bus.index
    sign = dict(INJECTION_ELEMENTS)[element]
    table = net[element]
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) == 0:
        return sp.csr_matrix((len(bus_index), 0))
    weight = sign * table["scaling"].to_numpy(float)[positions] * table["in_service"].to_numpy(bool)[positions]
    rows = _bus_positions(bus_index, table["bus"].iloc[positions], element)
    return sp.csr_matrix((weight, (rows, np.arange(len(positions)))), shape=(len(bus_index), len(positions)))


def bus_injection_profiles(
    net: pp.pandapowerNet, *, profiles: Mapping[tuple[str, str], pd.DataFrame]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bus P and Q over time (rows = the profiles' index, columns = ``net.bus`` index), load convention.

    ``profiles`` maps ``(element, column)`` (e.g. ``("load", "p_mw")``, the keys of SimBench's
    ``get_absolute_values``) to a time x element-index frame of that column's values; elements or columns
    without a profile keep their value in the net. Scaling and in_service apply as in ``bus_injections``.
    All non-empty frames must share one row index (empty frames, as SimBench returns for absent elements, are
    ignored).
    """
    frames = [
        frame
        for (element, _), frame in profiles.items()
        if element in dict(INJECTION_ELEMENTS) and frame.shape[1] > 0
    ]
    if not frames:
        raise ValueError("profiles: no frame for any of " + ", ".join(name for name, _ in INJECTION_ELEMENTS))
    times = frames[0].index
    for frame in frames[1:]:
        if not frame.index.equals(times):
            raise ValueError("profiles: all frames must share the same row index")
    bus_index = net.bus.index
    totals = {"p_mw": np.zeros((len(times), len(bus_index))), "q_mvar": np.zeros((len(times), len(bus_index)))}
    for element, table, factor, rows in _weighted_elements(net, INJECTION_ELEMENTS):
        to_bus = sp.csr_matrix((factor, (np.arange(len(table)), rows)), shape=(len(table), len(bus_index)))
        for column, total in totals.items():
            static = table[column].to_numpy(float)
            frame = profiles.get((element, column))
            if frame is None or frame.shape[1] == 0:
                values = np.broadcast_to(static, (len(times), len(table)))
            else:
                unknown = frame.columns.difference(table.index)
                if len(unknown):
                    raise ValueError(f"profiles[({element!r}, {column!r})]: unknown {element} {list(unknown[:5])}")
                values = frame.reindex(columns=table.index).to_numpy(float)
                values = np.where(np.isnan(values), static, values)
            total += np.asarray(to_bus.T @ values.T).T
    return (
        pd.DataFrame(totals["p_mw"], index=times, columns=bus_index),
        pd.DataFrame(totals["q_mvar"], index=times, columns=bus_index),
    )


def _weighted_elements(
    net: pp.pandapowerNet, elements: tuple[tuple[str, float], ...]
) -> Iterator[tuple[str, pd.DataFrame, np.ndarray, np.ndarray]]:
    """Each non-empty element table with its per-row weight (sign x scaling x in_service) and bus positions."""
    for element, sign in elements:
        table = net[element] if element in net else None
        if table is None or table.empty:
            continue
        factor = sign * table["scaling"].to_numpy(float) * table["in_service"].to_numpy(bool)
        yield element, table, factor, _bus_positions(net.bus.index, table["bus"], element)


def _bus_positions(bus_index: pd.Index, buses: pd.Series, element: str) -> np.ndarray:
    rows = bus_index.get_indexer(buses.to_numpy())
    if (rows < 0).any():
        raise ValueError(f"net.{element}: bus {buses.to_numpy()[rows < 0][0]} is not in net.bus")
    return rows
