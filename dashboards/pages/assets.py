"""Assets: one asset's power, setpoint, state of charge and flags over the shared time axis (kW / kWh for a
household's assets), and the fleet as a filtered, paged table with a CSV export."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import dash
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, State, ctx, dcc, html

from dashboards.components import fmt, graph, notice
from dashboards.data import RunData
from dashboards.mapview import asset_unit
from dashboards.pages.common import Context, policy_options, register_chart_time, text, time_chart, waiting
from dashboards.tables import filter_rows, next_page, page_controls, paged_table
from twin.reporting.figures import asset_figure, empty_figure

__all__ = ["asset_options", "asset_view", "fleet_frame", "fleet_page", "layout", "register"]

_FILTER_COLUMNS = ["asset", "kind", "participant", "bus"]


def _label(asset_id: str, assets: pd.DataFrame) -> str:
    if asset_id not in assets.index:
        return asset_id
    row = assets.loc[asset_id]
    parts = [str(row.get(c)) for c in ("kind", "participant_id", "bus") if c in assets.columns
             and str(row.get(c)) not in ("", "nan")]
    return f"{asset_id} · {' · '.join(parts)}" if parts else asset_id


def asset_options(data: RunData, policy: str | None) -> list[dict[str, str]]:
    if not policy:
        return []
    assets = data.assets()
    return [{"label": _label(a, assets), "value": a} for a in data.table(policy, "asset_p_mw").columns]


def _fleet_unit(assets: pd.DataFrame) -> tuple[str, float]:
    if "p_max_mw" not in assets.columns or len(assets) == 0:
        return "MW", 1.0
    units = {asset_unit(v) for v in assets["p_max_mw"]}
    return ("kW", 1000.0) if units == {("kW", 1000.0)} else ("MW", 1.0)


def fleet_frame(data: RunData, policy: str) -> pd.DataFrame:
    """Per asset over the run so far: power and setpoint at the latest interval, SOC, intervals clipped and
    on fallback (kW / kWh when every asset is a household's, else MW / MWh). Empty before any interval."""
    actual = data.table(policy, "asset_p_mw")
    if len(actual) == 0:
        return pd.DataFrame(columns=_FILTER_COLUMNS)
    assets = data.assets().reindex(actual.columns)
    unit, scale = _fleet_unit(assets)
    energy = "kWh" if unit == "kW" else "MWh"
    setpoint = data.table(policy, "asset_setpoint_mw")
    soc = data.table(policy, "asset_soc_mwh")
    clipped = data.table(policy, "asset_clipped")
    fallback = data.table(policy, "asset_fallback")
    columns = actual.columns
    frame = pd.DataFrame({"asset": columns.astype(str)}, index=columns)
    for source, name in (("kind", "kind"), ("participant_id", "participant"), ("bus", "bus")):
        frame[name] = assets[source].astype(str).to_numpy() if source in assets.columns else ""
    frame[f"P now [{unit}]"] = actual.iloc[-1].astype(float).to_numpy() * scale
    frame[f"setpoint now [{unit}]"] = (setpoint.iloc[-1].reindex(columns).astype(float).to_numpy() * scale
                                       if len(setpoint) else np.nan)
    frame[f"SOC now [{energy}]"] = (soc.iloc[-1].reindex(columns).astype(float).to_numpy() * scale
                                    if len(soc) else np.nan)
    frame["intervals clipped"] = (((clipped != "") & (clipped != "nan")).sum().reindex(columns).fillna(0)
                                  .astype(int).to_numpy() if len(clipped) else 0)
    frame["intervals on fallback"] = (fallback.astype(bool).sum().reindex(columns).fillna(0).astype(int).to_numpy()
                                      if len(fallback) else 0)
    return frame.reset_index(drop=True)


def fleet_page(data: RunData, policy: str | None, *, search: Any, kind: Any, flagged: Any, page: Any,
               trigger: str | None) -> tuple[Any, int, str, str]:
    """(the page of the filtered fleet table, that page, its "rows a–b of N", the CSV link)."""
    if not policy:
        return notice("no policy"), 0, "", "/export/fleet.csv"
    frame = fleet_frame(data, policy)
    csv = "/export/fleet.csv?" + urlencode({"policy": policy})
    if frame.empty:
        return notice("no intervals recorded yet"), 0, "", csv
    frame = filter_rows(frame, search, columns=_FILTER_COLUMNS)
    if isinstance(kind, str) and kind:
        frame = frame[frame["kind"] == kind]
    if isinstance(flagged, list) and "flagged" in flagged:
        frame = frame[(frame["intervals on fallback"] > 0) | (frame["intervals clipped"] > 0)]
    frame = frame.sort_values(["intervals on fallback", "intervals clipped", "asset"], ascending=[False, False, True],
                              kind="stable")
    page = next_page(page, trigger=trigger, prev_id="as-prev", next_id="as-next", n_rows=len(frame))

    def links(shown: pd.DataFrame) -> pd.DataFrame:
        shown = shown.copy()
        shown["asset"] = [dcc.Link(a, href="/assets?" + urlencode({"policy": policy, "asset": a}))
                          for a in shown["asset"]]
        return shown

    numbers = {c: (lambda v: fmt(v, 2)) for c in frame.columns if "[" in c}
    table, label = paged_table(frame, page=page, table_id="as-fleet-table", formats=numbers, cells=links,
                               empty="no asset matches the filter")
    return table, page, label, csv


def asset_view(data: RunData, policy: str | None, asset_id: str | None, view: Any = None) -> go.Figure:
    if not policy or not asset_id:
        return empty_figure("choose a policy and an asset")
    actual = data.table(policy, "asset_p_mw")
    if asset_id not in actual.columns:
        return empty_figure(f"asset {asset_id!r} has no records for {policy}")

    def col(name: str) -> pd.Series | None:
        frame = data.table(policy, name)
        return frame[asset_id] if asset_id in frame.columns else None

    assets = data.assets()
    rating = assets.at[asset_id, "p_max_mw"] if asset_id in assets.index and "p_max_mw" in assets.columns else None
    unit, _ = asset_unit(rating)
    setpoint = col("asset_setpoint_mw")
    soc = col("asset_soc_mwh")
    if soc is not None and not np.isfinite(soc.to_numpy(float)).any():
        soc = None  # PV, a charger or a load: the table has a column for it, but no storage to show
    fig = asset_figure(asset_id=asset_id, actual_mw=actual[asset_id],
                       setpoint_mw=setpoint if setpoint is not None else actual[asset_id] * np.nan,
                       soc_mwh=soc, clipped=col("asset_clipped"), fallback=col("asset_fallback"),
                       description=f"{policy}: {_label(asset_id, assets)}", power_unit=unit)
    return time_chart(fig, data, view)


#: The asset tables the page offers as CSV (``/export/series.csv``): (table, link label).
_SERIES = (("asset_p_mw", "power [MW]"), ("asset_setpoint_mw", "setpoints [MW]"), ("asset_soc_mwh", "SOC [MWh]"))


def _series_href(policy: str | None, table: str) -> str:
    return "/export/series.csv?" + urlencode({"policy": policy or "", "table": table})


def layout(data: RunData, query: dict[str, str]) -> html.Div:
    options, default = policy_options(data)
    policy = query.get("policy") if query.get("policy") in data.policies() else default
    assets = asset_options(data, policy)
    ids = [o["value"] for o in assets]
    chosen = query.get("asset") if query.get("asset") in ids else (ids[0] if ids else None)
    kinds = sorted({str(k) for k in data.assets().get("kind", pd.Series(dtype=str))})
    return html.Div([
        waiting(data),
        html.Div([
            html.Label(["Policy ", dcc.Dropdown(id="as-policy", options=options, value=policy, clearable=False,
                                                className="dropdown")]),
            html.Label(["Asset ", dcc.Dropdown(id="as-asset", options=assets, value=chosen,
                                               className="dropdown wide")]),
        ], className="controls"),
        html.Div([graph("as-figure"),
                  html.Div(["as CSV, every asset of this policy: ",
                            *[html.A(label, id=f"as-series-{table}", className="button button-quiet",
                                     href=_series_href(policy, table)) for table, label in _SERIES]],
                           className="caption")], className="panel"),
        html.Div([html.H3("Fleet", className="inline"),
                  html.A("fleet as CSV", id="as-fleet-csv", href="/export/fleet.csv", className="button button-quiet")],
                 className="panel-head"),
        html.Div([
            html.Label(["Search ", dcc.Input(id="as-filter", type="text", debounce=True, placeholder="id, kind, "
                                             "participant or bus", className="text-input wide")]),
            html.Label(["Kind ", dcc.Dropdown(id="as-kind", options=[{"label": k.replace("_", " "), "value": k}
                                                                    for k in kinds], value=None,
                                              placeholder="every kind", className="dropdown")]),
            dcc.Checklist(id="as-only", options=[{"label": " only assets with fallback or clipping",
                                                  "value": "flagged"}], value=[], className="radio"),
        ], className="controls"),
        dcc.Store(id="as-page", data=0),
        page_controls("as"),
        html.Div(id="as-fleet"),
    ])


def register(app: dash.Dash, c: Context) -> None:
    data = c.data

    @app.callback(Output("as-asset", "options"), *[Output(f"as-series-{t}", "href") for t, _ in _SERIES],
                  Input("as-policy", "value"))
    def asset_list(policy: Any) -> Any:
        return asset_options(data, text(policy)), *[_series_href(text(policy), t) for t, _ in _SERIES]

    @app.callback(Output("as-fleet", "children"), Output("as-page", "data"), Output("as-page-label", "children"),
                  Output("as-fleet-csv", "href"),
                  Input("run-version", "data"), Input("as-policy", "value"), Input("as-filter", "value"),
                  Input("as-kind", "value"), Input("as-only", "value"), Input("as-prev", "n_clicks"),
                  Input("as-next", "n_clicks"), State("as-page", "data"))
    def fleet(_v: Any, policy: Any, search: Any, kind: Any, flagged: Any, _p: Any, _n: Any, page: Any) -> Any:
        trigger = ctx.triggered_id if isinstance(ctx.triggered_id, str) and ctx.triggered_id != "run-version" else None
        return fleet_page(data, text(policy), search=search, kind=kind, flagged=flagged, page=page, trigger=trigger)

    @app.callback(Output("as-figure", "figure"),
                  Input("run-version", "data"), Input("time-view", "data"), Input("as-policy", "value"),
                  Input("as-asset", "value"))
    def asset(_v: Any, view: Any, policy: Any, asset_id: Any) -> go.Figure:
        return asset_view(data, text(policy), text(asset_id), view)

    register_chart_time(app, ["as-figure"])
