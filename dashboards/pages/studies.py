"""Studies: a what-if study's KPI by variant, each variant named by its swept parameters (not its hash id),
with readable column headers."""

from __future__ import annotations

import re
from typing import Any

import dash
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, dcc, html

from dashboards.components import graph, html_table, notice
from dashboards.data import RunData
from dashboards.pages.common import Context, text
from twin.records.kpis import KPI_LABELS
from twin.reporting.figures import empty_figure, study_figure

__all__ = ["NO_STUDIES", "column_title", "layout", "param_columns", "register", "study_kpi_options", "study_view",
           "variant_labels"]

NO_STUDIES = "no studies"
_FIXED = ("variant_id", "label", "policy")
_UNITS = {"eur_per_mwh": "EUR/MWh", "eur_per_mw": "EUR/MW", "eur_per_kwh": "EUR/kWh", "mw": "MW", "mwh": "MWh",
          "kw": "kW", "kwh": "kWh", "pu": "pu", "percent": "%", "eur": "EUR", "s": "s"}


def param_columns(table: pd.DataFrame) -> list[str]:
    """The swept parameters: every column that is not an id, the policy, a KPI or the run time."""
    return [c for c in table.columns if c not in _FIXED and c not in KPI_LABELS and c != "run_s"]


def column_title(column: str) -> str:
    """'fleet.pv_penetration' → 'PV penetration (fleet)'; KPI keys get their labels."""
    if column in KPI_LABELS:
        return KPI_LABELS[column]
    fixed = {"variant_id": "Variant id", "label": "Variant", "policy": "Policy", "run_s": "Run time [s]"}
    if column in fixed:
        return fixed[column]
    *where, name = column.split(".")
    unit = ""
    for suffix, shown in sorted(_UNITS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith("_" + suffix):
            name, unit = name[: -len(suffix) - 1], f" [{shown}]"
            break
    words = re.sub(r"\bpv\b", "PV", re.sub(r"\bev\b", "EV", name.replace("_", " ")))
    context = [w for w in where if w not in ("kwargs", "controllers")]
    return f"{words[:1].upper()}{words[1:]}{unit}" + (f" ({' '.join(context)})" if context else "")


def variant_labels(table: pd.DataFrame) -> pd.Series:
    """A name per row from its swept parameters ('PV penetration (fleet)=0.5 · Seed=2'); the study's own
    ``label`` when there are no parameter columns; the id as a last resort."""
    params = param_columns(table)
    if params:
        def name(row: pd.Series) -> str:
            return " · ".join(f"{column_title(p)}={_value(row[p])}" for p in params)

        return table.apply(name, axis=1)
    if "label" in table.columns:
        return table["label"].astype(str).where(table["label"].astype(str) != "", table["variant_id"].astype(str))
    return table["variant_id"].astype(str)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def layout(data: RunData) -> html.Div:
    names = data.study_names()
    if not names:
        where = f" in {data.studies_dir}" if data.studies_dir else " (start the dashboard with --studies DIR)"
        return html.Div(notice(f"{NO_STUDIES}{where}"), className="panel", id="sd-none")
    return html.Div([
        html.Div([
            html.Label(["Study ", dcc.Dropdown(id="sd-file", options=[{"label": n, "value": n} for n in names],
                                               value=names[0], clearable=False, className="dropdown wide")]),
            html.Label(["KPI ", dcc.Dropdown(id="sd-kpi", options=[], value=None, clearable=False,
                                             className="dropdown wide")]),
        ], className="controls"),
        html.Div([graph("sd-figure")], className="panel"),
        html.Div(id="sd-table"),
    ])


def study_kpi_options(data: RunData, name: str | None) -> tuple[list[dict[str, str]], str | None]:
    if not name:
        return [], None
    study = data.study(name)
    params = set(param_columns(study.table)) if study.table is not None else set()
    kpis = [k for k in study.kpi_columns if k not in params]
    options = [{"label": column_title(k), "value": k} for k in kpis]
    default = "energy_cost_eur" if "energy_cost_eur" in kpis else (options[0]["value"] if options else None)
    return options, default


def _readable(table: pd.DataFrame) -> pd.DataFrame:
    shown = table.copy()
    shown.insert(0, "variant", variant_labels(table).to_numpy())
    shown = shown.drop(columns=[c for c in ("label",) if c in shown.columns])
    return shown.rename(columns={c: column_title(c) for c in shown.columns if c != "variant"}).rename(
        columns={"variant": "Variant"})


def study_view(data: RunData, name: str | None, kpi: str | None) -> tuple[go.Figure, Any]:
    if not name:
        return empty_figure(NO_STUDIES), None
    study = data.study(name)
    if study.table is None:
        return empty_figure(study.error), notice(study.error, kind="warning")
    table = html_table(_readable(study.table), max_rows=200, table_id="sd-table-rows")
    if not kpi or kpi not in study.table.columns:
        return empty_figure("choose a KPI"), table
    labelled = study.table.assign(variant_id=variant_labels(study.table).to_numpy())
    fig = study_figure(labelled, kpi, label=column_title(kpi))
    fig.update_xaxes(title_text="variant (swept parameters)")
    return fig, table


def register(app: dash.Dash, c: Context) -> None:
    @app.callback(Output("sd-kpi", "options"), Output("sd-kpi", "value"), Input("sd-file", "value"))
    def study_kpis(name: Any) -> tuple[Any, Any]:
        return study_kpi_options(c.data, text(name))

    @app.callback(Output("sd-figure", "figure"), Output("sd-table", "children"),
                  Input("sd-file", "value"), Input("sd-kpi", "value"))
    def study(name: Any, kpi: Any) -> tuple[Any, Any]:
        return study_view(c.data, text(name), text(kpi))
