"""The feeder map at the cursor and the drill-down it leads to: DER locations drawn over the buses, the bus
a user clicked ringed, and that bus's assets and trends.

The map is ``twin.reporting.figures.feeder_map_figure`` (the same drawing as the report) plus a DER layer
(one marker per bus and asset kind) and bus ids in ``customdata``, so a click on a bus or a DER names it. A
three-phase run's map can be coloured by ``dashboards.phasemap``'s modes instead of the balanced voltage.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboards.data import RunData
from dashboards.phasemap import colour_title, phase_hover, recolour_by_unbalance, values_for_mode
from twin.grid.topology import FeederTopology
from twin.reporting.figures import feeder_map_figure, policy_colors

__all__ = ["DER_SYMBOLS", "asset_unit", "bus_assets", "clicked_bus", "keep_zoom", "map_figure",
           "phases_at"]

#: Marker symbol and colour per asset kind.
DER_SYMBOLS = {
    "battery": ("square", "#6a3d9a"),
    "pv": ("star", "#e6a100"),
    "ev_charger": ("diamond", "#1f78b4"),
    "flex_load": ("triangle-up", "#33a02c"),
}
#: An asset this small (rated power) is a household's: shown in kW and kWh.
HOUSEHOLD_MAX_MW = 0.1


def asset_unit(p_max_mw: Any) -> tuple[str, float]:
    """("kW", 1000) for household-sized assets, ("MW", 1) otherwise (and when the rating is unknown)."""
    try:
        rating = float(p_max_mw)
    except (TypeError, ValueError):
        return "MW", 1.0
    return ("kW", 1000.0) if np.isfinite(rating) and 0 < abs(rating) < HOUSEHOLD_MAX_MW else ("MW", 1.0)


def bus_assets(data: RunData, bus: str) -> pd.DataFrame:
    assets = data.assets()
    if "bus" not in assets.columns:
        return assets.iloc[0:0]
    return assets[assets["bus"].astype(str) == str(bus)]


def clicked_bus(click: Any, topology: FeederTopology | None) -> str | None:
    """The bus id a map click names (a bus or a DER marker carries it in ``customdata``), else None."""
    if topology is None or not isinstance(click, dict):
        return None
    points = click.get("points")
    if not isinstance(points, list) or not points or not isinstance(points[0], dict):
        return None
    custom = points[0].get("customdata")
    if isinstance(custom, list) and custom:
        custom = custom[0]
    if isinstance(custom, (str, int)) and not isinstance(custom, bool) and str(custom) in topology.buses.index:
        return str(custom)
    return None


def keep_zoom(fig: go.Figure, relayout: Any) -> go.Figure:
    """Apply the user's last pan / zoom of the map (its ``relayoutData``) to a redrawn map, so the figure the
    server sends already has it (``figpatch.APPLY_FIGURE_JS`` then applies the zoom shown when it arrives)."""
    if not isinstance(relayout, dict):
        return fig
    for axis in ("xaxis", "yaxis"):
        pair = relayout.get(f"{axis}.range")
        if not (isinstance(pair, list) and len(pair) == 2):
            pair = [relayout.get(f"{axis}.range[0]"), relayout.get(f"{axis}.range[1]")]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in pair) and (
                pair[0] != pair[1]):
            fig.update_layout({axis: {"range": [float(pair[0]), float(pair[1])], "autorange": False}})
    return fig


def _der_trace(topology: FeederTopology, assets: pd.DataFrame, *, spread: float) -> list[go.Scatter]:
    if "bus" not in assets.columns or "kind" not in assets.columns or len(assets) == 0:
        return []
    xy = topology.buses[["x", "y"]]
    frame = pd.DataFrame({"bus": assets["bus"].astype(str), "kind": assets["kind"].astype(str)})
    frame = frame[frame["bus"].isin(xy.index)]
    counts = frame.groupby(["kind", "bus"]).size()
    # On a big feeder thousands of full-size markers would hide the bus voltages they sit on.
    size, opacity = (8, 1.0) if len(xy) < 300 else (5, 0.55)
    traces = []
    for k, (kind, (symbol, colour)) in enumerate(DER_SYMBOLS.items()):
        if kind not in counts.index.get_level_values(0):
            continue
        per_bus = counts.loc[kind]
        angle = np.pi / 4 + k * np.pi / 2  # each kind on its own side of the bus
        x = xy["x"].reindex(per_bus.index).to_numpy(float) + spread * np.cos(angle)
        y = xy["y"].reindex(per_bus.index).to_numpy(float) + spread * np.sin(angle)
        traces.append(go.Scatter(
            x=x, y=y, mode="markers", name=kind.replace("_", " "), legendgroup="der",
            marker=dict(symbol=symbol, size=size, color=colour, opacity=opacity, line=dict(width=0.5, color="#ffffff")),
            customdata=np.asarray(per_bus.index, dtype=object),
            hovertext=[f"{n} {kind.replace('_', ' ')} at bus {b}" for b, n in per_bus.items()], hoverinfo="text"))
    return traces


#: Hover layers of the feeder map whose per-point texts become a static label and a number: the buses (voltage,
#: which is also their colour) and the branches (loading, kept in customdata), with the hover's format.
_HOVER_UNITS = {"buses": ("marker.color", ":.4f} pu"), "branches": ("customdata", ":.1f} %")}


def _hover_as_numbers(trace: go.Scatter) -> None:
    """Replace the trace's hover texts ("bus 12 (name): 0.9987 pu", "line 3: 45.1 %", "...: no data") by the static
    labels (``text``) and a hovertemplate that formats the number, held as float32: between two intervals only the
    numbers change, so a live refresh of a big feeder sends ~50 kB arrays instead of ~300 kB of text each (the
    texts are parsed back, so the hover reads as the figure drew it). A text not in that form: left as it is."""
    texts = trace.hovertext
    if texts is None or isinstance(texts, str) or len(texts) == 0:
        return
    labels, numbers = [], []
    for t in texts:
        label, sep, value = str(t).rpartition(": ")
        value = value.removesuffix(" pu").removesuffix(" %")
        try:
            number = float("nan") if value == "no data" else float(value)
        except ValueError:
            return
        if not sep:
            return
        labels.append(label)
        numbers.append(number)
    where, unit = _HOVER_UNITS[str(trace.name)]
    values = np.asarray(trace.marker.color if where == "marker.color" else numbers, dtype=float)
    if where == "marker.color":
        trace.marker.color = values.astype(np.float32)
    else:
        trace.customdata = np.asarray(values, dtype=np.float32)
    trace.text = labels
    trace.hovertext = None
    trace.hovertemplate = "%{text}: %{" + where + unit + "<extra></extra>"


def phases_at(data: RunData, topology: FeederTopology, policy: str | None,
              row: int | None) -> dict[str, np.ndarray] | None:
    """``policy``'s three-phase results at its interval ``row``, per bus of the map (None: no such results)."""
    tables = data.three_phase(policy) if policy and data.has_three_phase() else None
    summary = data.table(policy, "summary") if policy else pd.DataFrame()
    if tables is None or row is None or len(summary) <= row:
        return None
    return tables.at(summary.index[row], topology.buses.index)


def map_figure(data: RunData, topology: FeederTopology, *, policy: str | None, row: int | None,
               selected_bus: str | None, mode: str | None = None,
               phases: dict[str, np.ndarray] | None = None) -> go.Figure:
    """The feeder of ``policy`` at interval ``row`` (None: drawn without a power flow), with DERs and the
    selected bus ringed. With ``phases`` (``phases_at``) and a ``mode`` of ``dashboards.phasemap.MAP_MODES`` the
    buses are coloured by that quantity of the three-phase results and the hover names the worst phase and VUF."""
    limits = data.limits()
    buses = topology.buses
    three_phase = phases is not None and mode is not None

    def at(name: str) -> pd.Series | None:
        frame = data.table(policy, name) if policy else pd.DataFrame()
        return frame.iloc[row] if row is not None and len(frame) > row else None

    vm = values_for_mode(phases, mode, buses.index) if three_phase else at("vm_pu")
    fig = feeder_map_figure(topology, vm_pu=vm, line_loading_percent=at("line_loading_percent"),
                            trafo_loading_percent=at("trafo_loading_percent"), v_min_pu=limits.v_min_pu,
                            v_max_pu=limits.v_max_pu)
    for trace in fig.data:
        if trace.name == "buses":
            trace.customdata = np.asarray(buses.index, dtype=object)
        if row is not None and trace.name in _HOVER_UNITS:
            _hover_as_numbers(trace)
        if three_phase and trace.name == "buses":
            phase_hover(trace, phases, buses.index)
    if three_phase:
        colour_title(fig, mode)
        if mode == "vuf":
            recolour_by_unbalance(fig, phases, buses[["x", "y"]])
    width = float(np.ptp(buses["x"].to_numpy(float))) if len(buses) else 1.0
    height = float(np.ptp(buses["y"].to_numpy(float))) if len(buses) else 1.0
    spread = 0.012 * max(width, height, 1e-9)
    fig.add_traces(_der_trace(topology, data.assets(), spread=spread))
    if selected_bus is not None and selected_bus in buses.index:
        fig.add_trace(go.Scatter(x=[buses.at[selected_bus, "x"]], y=[buses.at[selected_bus, "y"]], mode="markers",
                                 name=f"selected: bus {selected_bus}", hoverinfo="skip",
                                 marker=dict(size=24, symbol="circle-open", color="#ff00aa", line=dict(width=3))))
    fig.update_layout(clickmode="event")
    return fig


def bus_trend_figure(data: RunData, bus: str) -> go.Figure:
    """The bus's voltage per policy over the run, and its assets' power (kW/MW) under the first policy."""
    from plotly.subplots import make_subplots

    policies = data.policies()
    colours = policy_colors(policies)
    assets = bus_assets(data, bus)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=(f"Voltage at bus {bus}", "Power of its assets (+ consumes)"))
    for policy in policies:
        vm = data.table(policy, "vm_pu")
        if bus in vm.columns:
            fig.add_trace(go.Scatter(x=vm.index, y=vm[bus].to_numpy(float), mode="lines", name=f"{policy} V",
                                     line=dict(color=colours[policy], width=1.5)), row=1, col=1)
    limits = data.limits()
    for value in (limits.v_min_pu, limits.v_max_pu):
        fig.add_hline(y=value, line=dict(color="#c62828", dash="dash", width=1), row=1, col=1)
    unit = "kW"
    if policies and len(assets):
        power = data.table(policies[0], "asset_p_mw")
        units = {asset_unit(assets.at[a, "p_max_mw"] if "p_max_mw" in assets.columns else None) for a in assets.index}
        unit, scale = ("kW", 1000.0) if units == {("kW", 1000.0)} else ("MW", 1.0)
        for asset in assets.index:
            if asset in power.columns:
                kind = str(assets.at[asset, "kind"]) if "kind" in assets.columns else ""
                fig.add_trace(go.Scatter(x=power.index, y=power[asset].to_numpy(float) * scale, mode="lines",
                                         name=f"{asset} {kind} ({policies[0]})", line=dict(width=1.2, shape="hv")),
                              row=2, col=1)
    fig.update_yaxes(title_text="V [pu]", row=1, col=1)
    fig.update_yaxes(title_text=f"P [{unit}]", row=2, col=1)
    fig.update_layout(height=420, margin=dict(l=60, r=20, t=40, b=30), hovermode="x unified", uirevision="bus",
                      legend=dict(orientation="h", y=-0.15), template=None, paper_bgcolor="#ffffff",
                      plot_bgcolor="#ffffff")
    return fig
