"""The feeder map of a three-phase run coloured by what an unbalanced LV feeder is judged by: the positive-sequence
voltage (what a balanced model shows), the worst phase's voltage, or the voltage unbalance factor, with the hover
naming each bus's worst phase and VUF at the cursor's interval and the buses above EN 50160's 2 % ringed.

Owns the modes (``MAP_MODES``) and recolouring the map ``twin.reporting.figures.feeder_map_figure`` drew; the
numbers come from ``RunData.three_phase`` (arrays per interval, no per-bus Python on a refresh).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboards.data import PhaseTables
from twin.records.phase_tables import EN50160_VUF_LIMIT_PERCENT

__all__ = ["DEFAULT_MODE", "MAP_MODES", "VUF_RING_NAME", "colour_title", "map_mode", "phase_caption", "phase_hover",
           "recolour_by_unbalance", "values_for_mode"]

#: Map colouring of a three-phase run: value -> label in the selector.
MAP_MODES = {
    "v1": "voltage (positive sequence / balanced)",
    "worst": "worst-phase voltage",
    "vuf": "unbalance (VUF %)",
}
DEFAULT_MODE = "v1"
VUF_RING_NAME = f"VUF above {EN50160_VUF_LIMIT_PERCENT:g} % (EN 50160 limit)"
#: VUF colour scale, percent: 0 .. twice the limit, the limit at its middle (white -> orange -> dark red).
_VUF_RANGE = (0.0, 2.0 * EN50160_VUF_LIMIT_PERCENT)
_VUF_SCALE = [[0.0, "#f7fbff"], [0.25, "#fdd49e"], [0.5, "#fc8d59"], [0.75, "#d7301f"], [1.0, "#7f0000"]]
_PHASE_LETTERS = np.array(["a", "b", "c", "–"], dtype=object)  # index -1 (no data) takes the last
_COLORBAR_TITLES = {"v1": "V1 [pu]", "worst": "worst phase [pu]"}


def map_mode(value: Any) -> str:
    """The mode a selector value names; anything else (a crafted request, no selector) is the default."""
    return value if isinstance(value, str) and value in MAP_MODES else DEFAULT_MODE


def values_for_mode(at: dict[str, np.ndarray], mode: str, buses: pd.Index) -> pd.Series:
    """The per-bus voltage the map colours by in a voltage mode (V1, or the worst phase's magnitude); in the
    unbalance mode V1 (the buses are recoloured by VUF afterwards)."""
    return pd.Series(at["vm_worst_pu"] if mode == "worst" else at["v1_pu"], index=buses)


def _rounded(values: np.ndarray, digits: int) -> np.ndarray:
    out = np.round(values.astype(float), digits).astype(object)
    out[~np.isfinite(values.astype(float))] = None
    return out


def phase_hover(trace: go.Scatter, at: dict[str, np.ndarray], buses: pd.Index) -> None:
    """The bus trace's hover: its label, V1, the worst phase (a/b/c) with its voltage, and the VUF; the bus id
    stays first in ``customdata`` (what a click reads)."""
    letters = _PHASE_LETTERS[at["worst"]]
    trace.customdata = np.column_stack([np.asarray(buses, dtype=object), letters, _rounded(at["vuf_percent"], 3),
                                        _rounded(at["vm_worst_pu"], 4), _rounded(at["v1_pu"], 4)])
    label = "%{text}" if trace.text is not None else "bus %{customdata[0]}"
    trace.hovertemplate = (label + "<br>V1 %{customdata[4]:.4f} pu · worst phase %{customdata[1]} "
                           "%{customdata[3]:.4f} pu<br>VUF %{customdata[2]:.2f} %<extra></extra>")


def colour_title(fig: go.Figure, mode: str) -> None:
    for trace in fig.data:
        if trace.name == "buses" and mode in _COLORBAR_TITLES:
            trace.marker.colorbar.title.text = _COLORBAR_TITLES[mode]


def recolour_by_unbalance(fig: go.Figure, at: dict[str, np.ndarray], xy: pd.DataFrame) -> int:
    """Colour the buses by VUF (0..4 %, EN 50160's 2 % at the middle), drop the voltage rings and ring the
    buses above 2 % instead (the ring's legend entry is there even when none is). Returns how many are."""
    vuf = at["vuf_percent"]
    size = 8
    for trace in fig.data:
        if trace.name == "buses":
            size = int(trace.marker.size or size)
            trace.marker.color = vuf.astype(np.float32)
            trace.marker.colorscale = _VUF_SCALE
            trace.marker.cmin, trace.marker.cmax = _VUF_RANGE
            trace.marker.colorbar.title.text = f"VUF [%] (EN 50160 limit {EN50160_VUF_LIMIT_PERCENT:g} %)"
            trace.marker.colorbar.tickvals = [0.0, 1.0, EN50160_VUF_LIMIT_PERCENT, 3.0, _VUF_RANGE[1]]
            trace.marker.colorbar.ticktext = ["0", "1", f"{EN50160_VUF_LIMIT_PERCENT:g} limit", "3",
                                              f"≥{_VUF_RANGE[1]:g}"]
    fig.data = tuple(t for t in fig.data if not str(t.name).startswith("voltage outside"))
    with np.errstate(invalid="ignore"):
        above = vuf > EN50160_VUF_LIMIT_PERCENT
    x = xy["x"].to_numpy(float)[above]
    y = xy["y"].to_numpy(float)[above]
    fig.add_trace(go.Scatter(
        x=x if above.any() else [None], y=y if above.any() else [None], mode="markers", name=VUF_RING_NAME,
        hoverinfo="skip", marker=dict(size=size + 9, symbol="circle-open", color="#d7301f", line=dict(width=2.5))))
    return int(above.sum())


def phase_caption(tables: PhaseTables | None, at: dict[str, np.ndarray], buses: pd.Index, above: int | None) -> str:
    """The caption's three-phase part: the largest VUF (its bus and worst phase) and the buses above 2 %."""
    vuf = at["vuf_percent"]
    if tables is None or not np.isfinite(vuf).any():
        return "; no three-phase result at this interval"
    k = int(np.nanargmax(vuf))
    count = int(np.sum(vuf > EN50160_VUF_LIMIT_PERCENT)) if above is None else above
    return (f"; VUF max {vuf[k]:.2f} % at bus {buses[k]} (worst phase {_PHASE_LETTERS[at['worst'][k]]}); "
            f"{count} bus(es) above EN 50160's {EN50160_VUF_LIMIT_PERCENT:g} %")
