"""Plotly figures of a run, shared by the operator dashboard and the HTML reports: pure functions of labelled
DataFrames (the run store's tables, a feeder topology, a study's KPI table) to ``go.Figure``.

Nothing here reads files, runs a power flow or imports pandapower; colours and units are decided once here so
the dashboard and the reports look the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from twin.grid.topology import FeederTopology

__all__ = [
    "LOADING_BANDS",
    "PLOTLY_CONFIG",
    "POLICY_PALETTE",
    "asset_figure",
    "cost_figure",
    "difference_figure",
    "empty_figure",
    "fallback_figure",
    "feeder_map_figure",
    "head_power_figure",
    "kpi_comparison_figure",
    "loading_band",
    "payments_figure",
    "policy_colors",
    "study_figure",
    "voltage_envelope_figure",
]

#: Branch loading classes: (lower %, upper %, legend label, colour). A branch falls in the first band whose
#: upper bound it does not exceed; the last band is an overload.
LOADING_BANDS: tuple[tuple[float, float, str, str], ...] = (
    (-math.inf, 50.0, "loading ≤ 50 %", "#2e7d32"),
    (50.0, 80.0, "loading 50–80 %", "#c0a000"),
    (80.0, 100.0, "loading 80–100 %", "#ef6c00"),
    (100.0, math.inf, "loading > 100 %", "#c62828"),
)
_NO_DATA_COLOUR = "#9e9e9e"

#: The plotly config of every figure shown (dashboard and reports): plotly.js 3 offers "Share chart..." (an
#: upload to Plotly's cloud) unless ``showSendToCloud`` is false; the machines are offline and run data stays
#: on them, so no upload or Chart Studio button anywhere.
PLOTLY_CONFIG: dict = {
    "displaylogo": False,
    "showSendToCloud": False,
    "plotlyServerURL": "",
    "modeBarButtonsToRemove": ["sendChartToCloud", "sendDataToCloud", "editInChartStudio"],
}

#: Colour-blind-safe policy colours (Okabe–Ito), assigned in the order policies are listed.
POLICY_PALETTE: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")

# Low voltage blue, nominal pale, high voltage red (a fixed range so colours mean the same in every frame).
_VOLTAGE_SCALE = [[0.0, "#08306b"], [0.25, "#4292c6"], [0.5, "#f7f7f7"], [0.75, "#ef6548"], [1.0, "#7f0000"]]
_VOLTAGE_RANGE = (0.90, 1.10)
#: A small template: plotly's named templates are deep-copied on every use (~45 ms a figure).
_TEMPLATE_LAYOUT = dict(
    font=dict(family="system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size=12, color="#1f2933"),
    paper_bgcolor="#ffffff", plot_bgcolor="#ffffff", colorway=list(POLICY_PALETTE),
    xaxis=dict(gridcolor="#e8edf3", zerolinecolor="#c9d2dc", linecolor="#c9d2dc", automargin=True),
    yaxis=dict(gridcolor="#e8edf3", zerolinecolor="#c9d2dc", linecolor="#c9d2dc", automargin=True),
    hoverlabel=dict(font=dict(size=12)),
)


def _template() -> go.layout.Template:
    return go.layout.Template(layout=_TEMPLATE_LAYOUT)


_LAYOUT = dict( margin=dict(l=60, r=20, t=50, b=40), hovermode="x unified",
               legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0))


def policy_colors(policies: Sequence[str]) -> dict[str, str]:
    """A stable colour per policy (by position in ``policies``)."""
    return {p: POLICY_PALETTE[i % len(POLICY_PALETTE)] for i, p in enumerate(policies)}


def empty_figure(message: str) -> go.Figure:
    """A blank figure that says why there is nothing to show."""
    fig = go.Figure()
    fig.update_layout(
        template=_template(), margin=dict(l=20, r=20, t=20, b=20), height=260,
        xaxis=dict(visible=False), yaxis=dict(visible=False),
        annotations=[dict(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                          font=dict(size=15, color="#555"))],
    )
    return fig


def loading_band(loading_percent: float) -> int | None:
    """Index into LOADING_BANDS of a branch loading; None when the loading is unknown (NaN)."""
    if loading_percent is None or not np.isfinite(loading_percent):
        return None
    return int(_bands(np.array([loading_percent], dtype=float), np.array([True]))[0])


def _segments(x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Polyline coordinates of separate segments; NaN breaks the line between them. Float arrays, not lists
    with None: plotly validates and serializes them in bulk (a 900-line feeder: ms instead of 100s of ms)."""
    n = len(x0)
    xs = np.full(3 * n, np.nan)
    ys = np.full(3 * n, np.nan)
    xs[0::3], xs[1::3] = x0, x1
    ys[0::3], ys[1::3] = y0, y1
    return xs, ys


@dataclass(frozen=True)
class _Branches:
    """Drawable branches as parallel arrays (numpy: a DataFrame here costs more than the whole figure)."""

    kind: np.ndarray
    ids: np.ndarray
    names: np.ndarray
    in_service: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    x1: np.ndarray
    y1: np.ndarray
    loading: np.ndarray


def _branches(topology: FeederTopology, line_loading: pd.Series | None, trafo_loading: pd.Series | None) -> _Branches:
    pos = {b: i for i, b in enumerate(topology.buses.index)}
    bx, by = topology.buses["x"].to_numpy(float), topology.buses["y"].to_numpy(float)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("kind", "ids", "names", "in_service", "a", "b", "loading")}
    for kind, table, a, b, loading in (
        ("line", topology.lines, "from_bus", "to_bus", line_loading),
        ("trafo", topology.trafos, "hv_bus", "lv_bus", trafo_loading),
    ):
        n = len(table)
        ids = table.index.astype(str)
        cols["kind"].append(np.full(n, kind, dtype=object))
        cols["ids"].append(np.asarray(ids, dtype=object))
        cols["names"].append(table["name"].to_numpy(dtype=object))
        cols["in_service"].append(table["in_service"].to_numpy(bool) if "in_service" in table.columns
                                  else np.ones(n, dtype=bool))
        cols["a"].append(np.array([pos.get(v, -1) for v in table[a]], dtype=int))
        cols["b"].append(np.array([pos.get(v, -1) for v in table[b]], dtype=int))
        cols["loading"].append(loading.reindex(ids).to_numpy(float) if loading is not None else np.full(n, np.nan))
    joined = {k: np.concatenate(v) if v else np.array([]) for k, v in cols.items()}
    a, b = joined["a"].astype(int), joined["b"].astype(int)
    keep = (a >= 0) & (b >= 0)
    a, b = a[keep], b[keep]
    return _Branches(kind=joined["kind"][keep], ids=joined["ids"][keep], names=joined["names"][keep],
                     in_service=joined["in_service"][keep].astype(bool), x0=bx[a], y0=by[a], x1=bx[b], y1=by[b],
                     loading=joined["loading"][keep].astype(float))


def _bands(loading: np.ndarray, in_service: np.ndarray) -> np.ndarray:
    """LOADING_BANDS index per branch; -1 for unknown loading or out of service."""
    out = np.full(len(loading), -1, dtype=int)
    finite = np.isfinite(loading) & in_service
    uppers = np.array([upper for _, upper, _, _ in LOADING_BANDS])
    out[finite] = np.minimum(np.searchsorted(uppers, loading[finite], side="left"), len(LOADING_BANDS) - 1)
    return out


def feeder_map_figure(
    topology: FeederTopology,
    *,
    vm_pu: pd.Series | None = None,
    line_loading_percent: pd.Series | None = None,
    trafo_loading_percent: pd.Series | None = None,
    v_min_pu: float = 0.95,
    v_max_pu: float = 1.05,
    title: str = "",
    height: int = 560,
) -> go.Figure:
    """The feeder drawn from its topology: buses coloured by voltage (pu, fixed 0.90–1.10 scale), lines and
    transformers coloured by loading band (LOADING_BANDS), buses outside [v_min_pu, v_max_pu] ringed.

    ``vm_pu`` is indexed by bus id, the loadings by line / trafo id (strings, as in the run store). Missing
    values are drawn grey. Traces: one per (loading band, branch kind) that has branches, one invisible
    hover layer at branch midpoints (``name="branches"``), ``"buses"``, ``"voltage violation"`` (when any)
    and ``"external grid"``.
    """
    fig = go.Figure()
    br = _branches(topology, line_loading_percent, trafo_loading_percent)
    band = _bands(br.loading, br.in_service)
    n_bus = len(topology.buses)
    line_width = 2.5 if n_bus < 300 else 1.6
    groups = [(label, colour, f"band{i}", band == i) for i, (_, _, label, colour) in enumerate(LOADING_BANDS)]
    groups.append(("no data / out of service", _NO_DATA_COLOUR, "nodata", band == -1))
    for label, colour, group, mask in groups:
        shown = False
        for kind, width in (("line", line_width), ("trafo", line_width * 2.6)):
            sel = mask & (br.kind == kind)
            if not sel.any():
                continue
            xs, ys = _segments(br.x0[sel], br.y0[sel], br.x1[sel], br.y1[sel])
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines", hoverinfo="skip", name=label, legendgroup=group, showlegend=not shown,
                line=dict(color=colour, width=width, dash="dot" if group == "nodata" else "solid"),
                meta={"kind": kind, "count": int(sel.sum())},
            ))
            shown = True
    if len(br.ids):
        text = [
            f"{k} {i}{f' ({n})' if isinstance(n, str) and n else ''}: " + (f"{v:.1f} %" if np.isfinite(v) else "no data")
            for k, i, n, v in zip(br.kind, br.ids, br.names, br.loading)
        ]
        fig.add_trace(go.Scatter(
            x=(br.x0 + br.x1) / 2, y=(br.y0 + br.y1) / 2, mode="markers", marker=dict(size=8, color="rgba(0,0,0,0)"),
            hovertext=text, hoverinfo="text", name="branches", showlegend=False,
        ))
    links = topology.links
    if len(links):
        xy = topology.buses[["x", "y"]]
        xs, ys = _segments(xy["x"].reindex(links["from_bus"]).to_numpy(), xy["y"].reindex(links["from_bus"]).to_numpy(),
                           xy["x"].reindex(links["to_bus"]).to_numpy(), xy["y"].reindex(links["to_bus"]).to_numpy())
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#616161", width=1, dash="dash"),
                                 hoverinfo="skip", name="switch / 3-winding", showlegend=False))
    buses = topology.buses
    vm = vm_pu.reindex(buses.index).to_numpy(float) if vm_pu is not None else np.full(n_bus, np.nan)
    size = 11 if n_bus < 60 else 8 if n_bus < 300 else 5
    names = [f" ({n})" if n else "" for n in buses["name"]]
    fig.add_trace(go.Scatter(
        x=buses["x"].to_numpy(), y=buses["y"].to_numpy(), mode="markers", name="buses", showlegend=False,
        marker=dict(
            size=size, color=vm, colorscale=_VOLTAGE_SCALE, cmin=_VOLTAGE_RANGE[0], cmax=_VOLTAGE_RANGE[1],
            line=dict(width=0.5, color="#424242"),
            colorbar=dict(title=dict(text="Voltage [pu]"), thickness=14, len=0.75,
                          tickvals=[0.90, v_min_pu, 1.0, v_max_pu, 1.10]),
        ),
        hovertext=[f"bus {b}{n}: " + (f"{v:.4f} pu" if np.isfinite(v) else "no data")
                   for b, n, v in zip(buses.index, names, vm)],
        hoverinfo="text",
    ))
    with np.errstate(invalid="ignore"):
        bad = (vm < v_min_pu) | (vm > v_max_pu)
    if bad.any():
        fig.add_trace(go.Scatter(
            x=buses["x"].to_numpy()[bad], y=buses["y"].to_numpy()[bad], mode="markers",
            marker=dict(size=size + 8, symbol="circle-open", color="#000000", line=dict(width=2)),
            name=f"voltage outside {v_min_pu:g}–{v_max_pu:g} pu", hoverinfo="skip",
        ))
    roots = [b for b in topology.ext_grid_buses if b in buses.index]
    if roots:
        fig.add_trace(go.Scatter(
            x=buses.loc[roots, "x"].to_numpy(), y=buses.loc[roots, "y"].to_numpy(), mode="markers",
            marker=dict(size=size + 10, symbol="square", color="#212121"), name="external grid",
            hovertext=[f"external grid at bus {b}" for b in roots], hoverinfo="text",
        ))
    fig.update_layout(
        template=_template(), height=height, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
        title=dict(text=title) if title else None, hovermode="closest", uirevision="feeder",
        legend=dict(orientation="h", yanchor="top", y=-0.02, xanchor="left", x=0),
        xaxis=dict(visible=False), yaxis=dict(visible=False),
    )
    if topology.layout == "geodata":
        fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return fig


def _time_layout(fig: go.Figure, *, title: str, yaxis_title: str, height: int) -> go.Figure:
    # Title above the legend above the plot, so neither hides the other in a narrow panel.
    fig.update_layout(**{**_LAYOUT, "margin": dict(l=60, r=20, t=78, b=40)}, template=_template(), height=height,
                      title=dict(text=title, x=0.01, xanchor="left", y=0.97, yanchor="top"), uirevision="time")
    fig.update_yaxes(title_text=yaxis_title)
    return fig


def head_power_figure(summaries: Mapping[str, pd.DataFrame], *, p_head_max_mw: float | None = None,
                      height: int = 340) -> go.Figure:
    """Feeder-head active power (MW, import positive) over time, one line per policy."""
    colours = policy_colors(list(summaries))
    fig = go.Figure()
    for policy, summary in summaries.items():
        fig.add_trace(go.Scatter(x=summary.index, y=summary["p_head_mw"].to_numpy(float), mode="lines",
                                 name=policy, line=dict(color=colours[policy], width=1.8, shape="hv")))
    if p_head_max_mw is not None:
        fig.add_hline(y=p_head_max_mw, line=dict(color="#c62828", dash="dash", width=1),
                      annotation_text=f"limit {p_head_max_mw:g} MW", annotation_position="top left")
    return _time_layout(fig, title="Feeder-head power (import > 0)", yaxis_title="P [MW]", height=height)


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def voltage_envelope_figure(summaries: Mapping[str, pd.DataFrame], *, v_min_pu: float = 0.95,
                            v_max_pu: float = 1.05, height: int = 340) -> go.Figure:
    """Per policy, the band between the lowest and the highest bus voltage of each interval, with the limits.

    Two traces per policy: ``"<policy> max"`` then ``"<policy> min"`` (filled up to the max).
    """
    colours = policy_colors(list(summaries))
    fig = go.Figure()
    for policy, summary in summaries.items():
        colour = colours[policy]
        fig.add_trace(go.Scatter(x=summary.index, y=summary["vm_max_pu"].to_numpy(float), mode="lines",
                                 name=f"{policy} max", legendgroup=policy, showlegend=False,
                                 line=dict(color=colour, width=1)))
        fig.add_trace(go.Scatter(x=summary.index, y=summary["vm_min_pu"].to_numpy(float), mode="lines",
                                 name=f"{policy} min", legendgroup=policy, fill="tonexty",
                                 fillcolor=_rgba(colour, 0.18), line=dict(color=colour, width=1)))
    for value, label in ((v_min_pu, "Vmin"), (v_max_pu, "Vmax")):
        fig.add_hline(y=value, line=dict(color="#c62828", dash="dash", width=1),
                      annotation_text=f"{label} {value:g} pu", annotation_position="top left")
    return _time_layout(fig, title="Voltage envelope: lowest and highest bus voltage", yaxis_title="V [pu]",
                        height=height)


def cost_figure(summaries: Mapping[str, pd.DataFrame], *, height: int = 420) -> go.Figure:
    """Energy cost per interval (top) and cumulated over the run (bottom), one colour per policy.

    Traces per policy: ``"<policy>"`` (per interval, EUR) and ``"<policy> cumulative"`` (EUR).
    """
    colours = policy_colors(list(summaries))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("Energy cost per interval", "Cumulative energy cost"))
    for policy, summary in summaries.items():
        cost = summary["cost_eur"].to_numpy(float)
        fig.add_trace(go.Scatter(x=summary.index, y=cost, mode="lines", name=policy, legendgroup=policy,
                                 line=dict(color=colours[policy], width=1.2, shape="hv")), row=1, col=1)
        fig.add_trace(go.Scatter(x=summary.index, y=np.nancumsum(cost), mode="lines", name=f"{policy} cumulative",
                                 legendgroup=policy, showlegend=False,
                                 line=dict(color=colours[policy], width=2)), row=2, col=1)
    fig.update_layout(**_LAYOUT, template=_template(), height=height, uirevision="time")
    fig.update_yaxes(title_text="EUR", row=1, col=1)
    fig.update_yaxes(title_text="EUR", row=2, col=1)
    return fig


def difference_figure(summaries: Mapping[str, pd.DataFrame], *, reference: str, height: int = 420) -> go.Figure:
    """Each policy minus ``reference``: feeder-head power per interval (top, MW) and cumulative energy cost
    (bottom, EUR; below zero = cheaper than the reference so far). Traces: ``"<policy> ΔP"``, ``"<policy> Δcost"``."""
    if reference not in summaries or len(summaries) < 2:
        return empty_figure("a difference view needs the reference and at least one other policy")
    colours = policy_colors(list(summaries))
    ref = summaries[reference]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=(f"Feeder-head power minus {reference}", f"Cumulative energy cost minus {reference}"))
    for policy, summary in summaries.items():
        if policy == reference:
            continue
        index = summary.index.intersection(ref.index)
        dp = summary.loc[index, "p_head_mw"].to_numpy(float) - ref.loc[index, "p_head_mw"].to_numpy(float)
        dc = np.nancumsum(summary.loc[index, "cost_eur"].to_numpy(float) - ref.loc[index, "cost_eur"].to_numpy(float))
        fig.add_trace(go.Scatter(x=index, y=dp, mode="lines", name=f"{policy} ΔP", legendgroup=policy,
                                 line=dict(color=colours[policy], width=1.2, shape="hv")), row=1, col=1)
        fig.add_trace(go.Scatter(x=index, y=dc, mode="lines", name=f"{policy} Δcost", legendgroup=policy,
                                 showlegend=False, line=dict(color=colours[policy], width=2)), row=2, col=1)
    for row in (1, 2):
        fig.add_hline(y=0, line=dict(color="#616161", width=1), row=row, col=1)
    fig.update_layout(**_LAYOUT, template=_template(), height=height, uirevision="time")
    fig.update_yaxes(title_text="ΔP [MW]", row=1, col=1)
    fig.update_yaxes(title_text="ΔEUR", row=2, col=1)
    return fig


def payments_figure(payments: pd.DataFrame, *, height: int = 320,
                    title: str = "Cumulative payments to participants") -> go.Figure:
    """Cumulative sums of ``payments`` (index: interval end, UTC; one column per series, EUR per interval)."""
    if payments.empty:
        return empty_figure("no settlement payments yet")
    colours = policy_colors([str(c) for c in payments.columns])
    fig = go.Figure()
    for column in payments.columns:
        fig.add_trace(go.Scatter(x=payments.index, y=payments[column].astype(float).cumsum().to_numpy(),
                                 mode="lines", name=str(column), line=dict(color=colours[str(column)], width=2,
                                                                           shape="hv")))
    return _time_layout(fig, title=title, yaxis_title="EUR", height=height)


def asset_figure(
    *,
    asset_id: str,
    actual_mw: pd.Series,
    setpoint_mw: pd.Series,
    soc_mwh: pd.Series | None = None,
    clipped: pd.Series | None = None,
    fallback: pd.Series | None = None,
    description: str = "",
    height: int = 560,
    power_unit: str = "MW",
) -> go.Figure:
    """One asset over time: setpoint vs actual power (load convention), state of charge (batteries), and
    the intervals where its setpoint was clipped (hover: the reason) or it ran on its autonomous fallback.

    ``power_unit`` "kW" draws power in kW and energy in kWh (household assets); the series stay in MW / MWh.
    Traces: ``"setpoint"``, ``"actual"``, ``"SOC"`` (when given), ``"clipped"`` and ``"fallback"`` (markers at
    the flagged intervals only). The time axis spans the asset's records, whatever the rows show.
    """
    scale = 1000.0 if power_unit == "kW" else 1.0
    energy_unit = "kWh" if power_unit == "kW" else "MWh"
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.5, 0.3, 0.2],
                        subplot_titles=("Power (load convention: + consumes)", "State of charge", "Flags"))
    fig.add_trace(go.Scatter(x=setpoint_mw.index, y=setpoint_mw.to_numpy(float) * scale, name="setpoint", mode="lines",
                             line=dict(color="#0072B2", width=1.5, dash="dash", shape="hv")), row=1, col=1)
    fig.add_trace(go.Scatter(x=actual_mw.index, y=actual_mw.to_numpy(float) * scale, name="actual", mode="lines",
                             line=dict(color="#D55E00", width=1.8, shape="hv")), row=1, col=1)
    if soc_mwh is not None:
        fig.add_trace(go.Scatter(x=soc_mwh.index, y=soc_mwh.to_numpy(float) * scale, name="SOC", mode="lines",
                                 line=dict(color="#009E73", width=1.8)), row=2, col=1)
    else:
        # An empty row is not drawn at all (nor its note): a blank trace keeps its axes on screen.
        fig.add_trace(go.Scatter(x=actual_mw.index[:1], y=[None] * min(len(actual_mw.index), 1), mode="lines",
                                 name="no storage", showlegend=False, hoverinfo="skip"), row=2, col=1)
        fig.add_annotation(text="no storage", showarrow=False, xref="x2 domain", yref="y2 domain", x=0.5, y=0.5)
    if clipped is not None:
        reasons = clipped.astype(str)
        hit = reasons[(reasons != "") & (reasons != "nan")]
        fig.add_trace(go.Scatter(x=hit.index, y=["clipped"] * len(hit), mode="markers", name="clipped",
                                 marker=dict(symbol="square", size=7, color="#ef6c00"),
                                 hovertext=hit.tolist(), hoverinfo="x+text"), row=3, col=1)
    if fallback is not None:
        on = fallback[fallback.astype(bool)]
        fig.add_trace(go.Scatter(x=on.index, y=["fallback"] * len(on), mode="markers", name="fallback",
                                 marker=dict(symbol="square", size=7, color="#c62828")), row=3, col=1)
    fig.update_layout(**{**_LAYOUT, "margin": dict(l=60, r=20, t=90, b=40)}, template=_template(), height=height,
                      uirevision=f"asset-{asset_id}",
                      title=dict(text=f"{asset_id}{' — ' + description if description else ''}", y=0.98, yanchor="top"))
    fig.update_layout(legend=dict(y=1.08))
    if len(actual_mw.index):
        # An empty subplot (no storage, no flags) must not stretch the shared axis to plotly's default years.
        step = actual_mw.index[1] - actual_mw.index[0] if len(actual_mw.index) > 1 else pd.Timedelta(0)
        fig.update_xaxes(range=[actual_mw.index[0], actual_mw.index[-1] + step])
    fig.update_xaxes(type="date")
    fig.update_yaxes(title_text=power_unit, row=1, col=1)
    fig.update_yaxes(title_text=energy_unit, row=2, col=1)
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=["clipped", "fallback"], row=3, col=1)
    return fig


def fallback_figure(summaries: Mapping[str, pd.DataFrame], *, faults: pd.DataFrame | None = None,
                    height: int = 320) -> go.Figure:
    """Assets on autonomous fallback per interval and policy, with operator fault windows shaded.

    ``faults``: rows with ``start``, ``end`` (UTC) and ``label``; each becomes a shaded band (a layout shape).
    """
    colours = policy_colors(list(summaries))
    fig = go.Figure()
    for policy, summary in summaries.items():
        fig.add_trace(go.Scatter(x=summary.index, y=summary["n_fallback"].to_numpy(float), mode="lines",
                                 name=policy, line=dict(color=colours[policy], width=1.8, shape="hv")))
    if faults is not None:
        for i, row in enumerate(faults.itertuples(index=False)):
            fig.add_vrect(x0=row.start, x1=row.end, fillcolor="#c62828", opacity=0.12, line_width=0,
                          annotation=dict(text=str(row.label), yshift=-16 * (i % 4), font=dict(size=11)),
                          annotation_position="top left")
    fig = _time_layout(fig, title="Assets on autonomous fallback", yaxis_title="assets", height=height)
    fig.update_yaxes(rangemode="tozero")
    return fig


def kpi_comparison_figure(kpis: pd.DataFrame, *, labels: Mapping[str, str] | None = None,
                          height: int = 420) -> go.Figure:
    """KPI × policy table as horizontal bars relative to the first policy (100 % = first policy's value)."""
    if kpis.empty:
        return empty_figure("no KPIs")
    colours = policy_colors([str(c) for c in kpis.columns])
    reference = kpis.iloc[:, 0].astype(float)
    names = [labels.get(k, k) if labels else k for k in kpis.index]
    fig = go.Figure()
    for policy in kpis.columns:
        values = kpis[policy].astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(reference.abs() > 0, 100.0 * values / reference, np.nan)
        fig.add_trace(go.Bar(y=names, x=rel, orientation="h", name=str(policy), marker_color=colours[str(policy)],
                             hovertext=[f"{v:,.3f}" for v in values], hoverinfo="text+name"))
    fig.update_layout(template=_template(), height=height, barmode="group", margin=dict(l=220, r=20, t=40, b=40),
                      xaxis_title=f"% of {kpis.columns[0]}", title=dict(text="KPIs relative to the first policy"))
    return fig


def study_figure(table: pd.DataFrame, kpi: str, *, label: str | None = None, height: int = 380) -> go.Figure:
    """A study's KPI by variant (x: ``variant_id``), one bar colour per policy."""
    missing = [c for c in ("variant_id", "policy", kpi) if c not in table.columns]
    if missing:
        return empty_figure(f"study table has no column {', '.join(missing)}")
    policies = [str(p) for p in pd.unique(table["policy"])]
    colours = policy_colors(policies)
    fig = go.Figure()
    for policy in policies:
        rows = table[table["policy"].astype(str) == policy]
        fig.add_trace(go.Bar(x=rows["variant_id"].astype(str).to_numpy(), y=rows[kpi].to_numpy(float),
                             name=policy, marker_color=colours[policy]))
    fig.update_layout(template=_template(), height=height, barmode="group", margin=dict(l=60, r=20, t=50, b=60),
                      title=dict(text=label or kpi), xaxis_title="variant", yaxis_title=label or kpi,
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0))
    return fig
