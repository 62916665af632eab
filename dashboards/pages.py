"""The dashboard's pages: a static layout per page and the content functions its callbacks call.

Content functions are plain functions of a ``RunData`` (and the page's control values) returning figures and
HTML components, so they are unit-tested without a browser; ``dashboards.app`` only wires them to callbacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import dcc, html

from dashboards.components import Alarm, fmt, fmt_duration, graph, html_table, kpi_cards, notice
from dashboards.data import RunData, age_text, reference_policy
from twin.commands import CommandKind
from twin.reporting.figures import (
    asset_figure,
    cost_figure,
    empty_figure,
    fallback_figure,
    feeder_map_figure,
    head_power_figure,
    payments_figure,
    study_figure,
    voltage_envelope_figure,
)
from twin.records.kpis import KPI_LABELS

__all__ = ["PAGES", "OverviewView", "overview_alarms", "overview_view", "page_layout"]

#: (path, nav label)
PAGES: tuple[tuple[str, str], ...] = (
    ("/", "Overview"),
    ("/comparison", "Comparison"),
    ("/assets", "Assets"),
    ("/settlement", "Settlement"),
    ("/faults", "Faults"),
    ("/studies", "Studies"),
)

MOMENTS = (
    ("latest", "latest interval"),
    ("vmin", "lowest voltage"),
    ("vmax", "highest voltage"),
    ("loading", "highest loading"),
)


def _policy_options(data: RunData) -> tuple[list[dict[str, str]], str | None]:
    policies = data.policies()
    return [{"label": p, "value": p} for p in policies], reference_policy(policies)


def _waiting(data: RunData) -> html.Div | None:
    if not data.meta():
        return notice(f"waiting for the run in {data.run_dir} to start (no meta.json yet)", kind="warning")
    return None


# -- Overview ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OverviewView:
    figure: go.Figure
    caption: str
    alarms: list[Alarm]
    cards: Any


def _moment_row(data: RunData, policy: str, moment: str) -> int | None:
    summary = data.table(policy, "summary")
    if len(summary) == 0:
        return None
    if moment == "vmin" and summary["vm_min_pu"].notna().any():
        return int(np.nanargmin(summary["vm_min_pu"].to_numpy(float)))
    if moment == "vmax" and summary["vm_max_pu"].notna().any():
        return int(np.nanargmax(summary["vm_max_pu"].to_numpy(float)))
    if moment == "loading":
        lines = data.table(policy, "line_loading_percent").to_numpy(float)
        if lines.size and np.isfinite(lines).any():
            return int(np.nanargmax(np.nanmax(np.where(np.isfinite(lines), lines, -np.inf), axis=1)))
    return len(summary) - 1


def _row_at(frame: pd.DataFrame, row: int) -> pd.Series | None:
    if len(frame) <= row:
        return None
    return frame.iloc[row]


def overview_view(data: RunData, *, policy: str | None, moment: str = "latest", stale_after_s: float = 60.0) -> OverviewView:
    """The feeder map of one policy at one interval, the run's alarms and the KPI cards."""
    policies = data.policies()
    policy = policy if policy in policies else reference_policy(policies)
    limits = data.limits()
    topology = data.topology()
    alarms = overview_alarms(data, stale_after_s=stale_after_s)
    cards = kpi_cards(data.kpis(), labels=KPI_LABELS, reference=reference_policy(list(data.kpis().columns)))
    if topology is None:
        fig = empty_figure("no feeder.json in this run: the feeder cannot be drawn")
        return OverviewView(fig, "", alarms, cards)
    row = _moment_row(data, policy, moment) if policy else None
    if row is None:
        fig = feeder_map_figure(topology, v_min_pu=limits.v_min_pu, v_max_pu=limits.v_max_pu)
        return OverviewView(fig, "no interval recorded yet: the feeder is drawn without a power flow", alarms, cards)
    vm = _row_at(data.table(policy, "vm_pu"), row)
    lines = _row_at(data.table(policy, "line_loading_percent"), row)
    trafos = _row_at(data.table(policy, "trafo_loading_percent"), row)
    time = data.table(policy, "summary").index[row]
    fig = feeder_map_figure(topology, vm_pu=vm, line_loading_percent=lines, trafo_loading_percent=trafos,
                            v_min_pu=limits.v_min_pu, v_max_pu=limits.v_max_pu)
    label = dict(MOMENTS).get(moment, moment)
    vm_values = vm.to_numpy(float) if vm is not None else np.array([])
    span = (f"; voltages {np.nanmin(vm_values):.3f}–{np.nanmax(vm_values):.3f} pu"
            if vm_values.size and np.isfinite(vm_values).any() else "")
    caption = f"{policy} at {fmt(pd.Timestamp(time))} ({label}){span}"
    return OverviewView(fig, caption, alarms, cards)


def overview_alarms(data: RunData, *, stale_after_s: float = 60.0) -> list[Alarm]:
    """Alarms at each policy's latest interval: voltage and loading limits, fallbacks, a controller offline,
    a non-converged power flow; plus a stale run store, rejected operator commands and a ledger that does
    not verify."""
    alarms: list[Alarm] = []
    status = data.status()
    age = data.status_age_s(status)
    if status.get("state") == "running" and age is not None and age > stale_after_s:
        alarms.append(Alarm("critical", f"stale telemetry: the twin has not written a new interval for "
                                        f"{age:.0f} s (status.json updated {age_text(age)})"))
    if status.get("state") == "unknown" and data.meta():
        alarms.append(Alarm("warning", "no status.json: the run's progress is unknown"))
    limits = data.limits()
    for policy in data.policies():
        summary = data.table(policy, "summary")
        if len(summary) == 0:
            continue
        last = summary.iloc[-1]
        when = fmt(pd.Timestamp(summary.index[-1]))
        vm = _row_at(data.table(policy, "vm_pu"), len(summary) - 1)
        if vm is not None:
            values = vm.astype(float)
            low, high = values[values < limits.v_min_pu], values[values > limits.v_max_pu]
            if len(low):
                alarms.append(Alarm("critical", f"{len(low)} bus(es) below {limits.v_min_pu:g} pu at {when} "
                                                f"(lowest {low.min():.4f} pu at bus {low.idxmin()})", policy))
            if len(high):
                alarms.append(Alarm("critical", f"{len(high)} bus(es) above {limits.v_max_pu:g} pu at {when} "
                                                f"(highest {high.max():.4f} pu at bus {high.idxmax()})", policy))
        for table, what in (("line_loading_percent", "line"), ("trafo_loading_percent", "transformer")):
            loading = _row_at(data.table(policy, table), len(summary) - 1)
            if loading is not None:
                over = loading.astype(float)[loading.astype(float) > limits.loading_max_percent]
                if len(over):
                    alarms.append(Alarm("critical", f"{len(over)} {what}(s) above {limits.loading_max_percent:g} % "
                                                    f"at {when} (max {over.max():.0f} % on {over.idxmax()})", policy))
        fallback = _row_at(data.table(policy, "asset_fallback"), len(summary) - 1)
        if fallback is not None and fallback.astype(bool).any():
            ids = list(fallback.index[fallback.astype(bool)])
            shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
            alarms.append(Alarm("warning", f"{len(ids)} asset(s) on autonomous fallback at {when}: {shown}", policy))
        if "controller_online" in summary.columns and not bool(last["controller_online"]):
            alarms.append(Alarm("critical", f"controller offline at {when} (control centre or backhaul fault)",
                                policy))
        if "converged" in summary.columns and not bool(last["converged"]):
            alarms.append(Alarm("critical", f"power flow did not converge at {when}", policy))
    history = data.command_history()
    rejected = history[(history["state"] == "done") & (history["verdict"] == "rejected")]
    if len(rejected):
        latest = rejected.iloc[0]
        alarms.append(Alarm("info", f"{len(rejected)} operator command(s) rejected; latest: {latest['kind']} — "
                                    f"{latest['detail']}"))
    for label in data.ledgers():
        ledger = _safe_ledger(data, label)
        if ledger is None or ledger.verified:
            continue
        if ledger.status == "incomplete":
            if status.get("state") != "running":  # while the twin runs, an open ledger is expected
                alarms.append(Alarm("warning", f"settlement ledger is incomplete: {'; '.join(ledger.notes)}", label))
            continue
        where = f" (first bad entry {ledger.first_bad_entry})" if ledger.first_bad_entry else ""
        alarms.append(Alarm("critical", f"settlement ledger does not verify{where}: {'; '.join(ledger.problems)}",
                            label))
    return alarms


def _safe_ledger(data: RunData, label: str) -> Any:
    try:
        return data.ledger(label)
    except ImportError:  # twin.settlement missing in a partial install: show "no ledger"
        return None


def overview_layout(data: RunData) -> html.Div:
    options, default = _policy_options(data)
    return html.Div([
        _waiting(data),
        html.Div([
            html.Label(["Policy ", dcc.Dropdown(id="ov-policy", options=options, value=default, clearable=False,
                                                className="dropdown")]),
            html.Label(["Show ", dcc.RadioItems(id="ov-moment", options=[{"label": l, "value": v} for v, l in MOMENTS],
                                                value="latest", inline=True, className="radio")]),
        ], className="controls"),
        html.Div([
            html.Div([html.Div(id="ov-caption", className="caption"), graph("ov-map", style={"height": "560px"})],
                     className="panel panel-map"),
            html.Div([html.H3("Alarms"), html.Div(id="ov-alarms")], className="panel panel-alarms"),
        ], className="split"),
        html.H3("KPIs per policy"),
        html.Div(id="ov-cards"),
    ])


# -- Comparison --------------------------------------------------------------------------------------------
def comparison_figures(data: RunData) -> dict[str, Any]:
    summaries = data.summaries()
    limits = data.limits()
    if not summaries:
        blank = empty_figure("no intervals recorded yet")
        return {"head": blank, "voltage": blank, "cost": blank, "payments": blank,
                "kpis": notice("no KPIs yet")}
    payments = (payments_figure(_safe_payments(data)) if data.ledgers()
                else empty_figure("no ledger in this run: no settlement payments"))
    kpis = data.kpis()
    table = kpis.copy()
    table.insert(0, "KPI", [KPI_LABELS.get(k, k) for k in table.index])
    return {
        "head": head_power_figure(summaries, p_head_max_mw=limits.p_head_max_mw),
        "voltage": voltage_envelope_figure(summaries, v_min_pu=limits.v_min_pu, v_max_pu=limits.v_max_pu),
        "cost": cost_figure(summaries),
        "payments": payments,
        "kpis": html_table(table, table_id="cmp-kpi-table"),
    }


def _safe_payments(data: RunData) -> pd.DataFrame:
    try:
        return data.payments()
    except ImportError:
        return pd.DataFrame()


def comparison_layout(data: RunData) -> html.Div:
    return html.Div([
        _waiting(data),
        html.Div([graph("cmp-head")], className="panel"),
        html.Div([graph("cmp-voltage")], className="panel"),
        html.Div([graph("cmp-cost")], className="panel"),
        html.Div([graph("cmp-payments")], className="panel"),
        html.H3("All KPIs"),
        html.Div(id="cmp-kpis"),
    ])


# -- Assets ------------------------------------------------------------------------------------------------
def _asset_label(asset_id: str, assets: pd.DataFrame) -> str:
    if asset_id not in assets.index:
        return asset_id
    row = assets.loc[asset_id]
    parts = [str(row.get(c)) for c in ("kind", "participant_id") if c in assets.columns and str(row.get(c)) not in ("", "nan")]
    return f"{asset_id} · {' · '.join(parts)}" if parts else asset_id


def asset_options(data: RunData, policy: str | None) -> list[dict[str, str]]:
    if not policy:
        return []
    ids = list(data.table(policy, "asset_p_mw").columns)
    assets = data.assets()
    return [{"label": _asset_label(a, assets), "value": a} for a in ids]


def fleet_table(data: RunData, policy: str | None) -> Any:
    """Per asset over the run so far: last power and setpoint, SOC, intervals clipped and on fallback."""
    if not policy:
        return notice("no policy")
    actual = data.table(policy, "asset_p_mw")
    if len(actual) == 0:
        return notice("no intervals recorded yet")
    setpoint = data.table(policy, "asset_setpoint_mw")
    soc = data.table(policy, "asset_soc_mwh")
    clipped = data.table(policy, "asset_clipped")
    fallback = data.table(policy, "asset_fallback")
    assets = data.assets()
    frame = pd.DataFrame(index=actual.columns)
    frame["asset"] = actual.columns
    for col in ("kind", "participant_id", "bus"):
        frame[col] = assets[col].reindex(actual.columns).astype(str).to_numpy() if col in assets.columns else ""
    frame["p now [MW]"] = actual.iloc[-1].astype(float).to_numpy()
    frame["setpoint now [MW]"] = (setpoint.iloc[-1].reindex(actual.columns).astype(float).to_numpy()
                                  if len(setpoint) else np.nan)
    frame["SOC now [MWh]"] = soc.iloc[-1].reindex(actual.columns).astype(float).to_numpy() if len(soc) else np.nan
    frame["intervals clipped"] = ((clipped != "") & (clipped != "nan")).sum().reindex(actual.columns).fillna(0).astype(int).to_numpy() if len(clipped) else 0
    frame["intervals on fallback"] = fallback.astype(bool).sum().reindex(actual.columns).fillna(0).astype(int).to_numpy() if len(fallback) else 0
    frame = frame.sort_values(["intervals on fallback", "intervals clipped"], ascending=False, kind="stable")
    mw = {c: (lambda v: fmt(v, 4)) for c in ("p now [MW]", "setpoint now [MW]", "SOC now [MWh]")}
    return html_table(frame, max_rows=100, table_id="as-fleet-table", formats=mw)


def asset_view(data: RunData, policy: str | None, asset_id: str | None) -> go.Figure:
    if not policy or not asset_id:
        return empty_figure("choose a policy and an asset")
    actual = data.table(policy, "asset_p_mw")
    if asset_id not in actual.columns:
        return empty_figure(f"asset {asset_id!r} has no records for {policy}")

    def col(name: str) -> pd.Series | None:
        frame = data.table(policy, name)
        return frame[asset_id] if asset_id in frame.columns else None

    return asset_figure(asset_id=asset_id, actual_mw=actual[asset_id], setpoint_mw=col("asset_setpoint_mw")
                        if col("asset_setpoint_mw") is not None else actual[asset_id] * np.nan,
                        soc_mwh=col("asset_soc_mwh"), clipped=col("asset_clipped"), fallback=col("asset_fallback"),
                        description=f"{policy}: {_asset_label(asset_id, data.assets())}")


def assets_layout(data: RunData) -> html.Div:
    options, default = _policy_options(data)
    assets = asset_options(data, default)
    return html.Div([
        _waiting(data),
        html.Div([
            html.Label(["Policy ", dcc.Dropdown(id="as-policy", options=options, value=default, clearable=False,
                                                className="dropdown")]),
            html.Label(["Asset ", dcc.Dropdown(id="as-asset", options=assets,
                                               value=assets[0]["value"] if assets else None, className="dropdown wide")]),
        ], className="controls"),
        html.Div([graph("as-figure")], className="panel"),
        html.H3("Fleet (assets with most fallback / clipped intervals first)"),
        html.Div(id="as-fleet"),
    ])


# -- Settlement --------------------------------------------------------------------------------------------
NO_LEDGER = "no ledger in this run"


def ledger_options(data: RunData) -> tuple[list[dict[str, str]], str | None]:
    labels = list(data.ledgers())
    return [{"label": label, "value": label} for label in labels], (labels[0] if labels else None)


def settlement_status(data: RunData, label: str | None) -> tuple[Any, Any, go.Figure, list[dict[str, str]]]:
    """(verification status and last checkpoint, balances table, payments of every ledger, participants)."""
    ledger = _safe_ledger(data, label) if label else None
    if ledger is None:
        return notice(NO_LEDGER, kind="info"), None, empty_figure(NO_LEDGER), []
    trust = (f"signatures checked against the operator key from {ledger.trusted_key_source}"
             if ledger.trusted_key_source else
             "signatures NOT checked against a trusted operator key (none configured on this machine)")
    if ledger.verified:
        status = [html.Span("verified", className="badge badge-ok"),
                  f" {label}: {ledger.entries:,} entries; hash chain, balances and {ledger.checkpoints} signed "
                  f"checkpoint(s) check out, closed (verified at {ledger.read_utc}); {trust}"]
    elif ledger.status == "incomplete":
        status = [html.Span("open", className="badge badge-warning"),
                  f" {label}: {ledger.entries:,} entries; intact so far, {'; '.join(ledger.notes)} "
                  f"(at {ledger.read_utc}); {trust}"]
    else:
        where = f" — first bad entry: {ledger.first_bad_entry}" if ledger.first_bad_entry else ""
        status = [html.Span("FAILED", className="badge badge-critical"),
                  f" {label}: ledger does not verify{where}: {'; '.join(ledger.problems)} (at {ledger.read_utc})"]
    cp = ledger.last_checkpoint
    if cp:
        checkpoint = html.Div([
            html.Div("Last signed checkpoint", className="caption"),
            html.Table([
                html.Tr([html.Td("checkpoint"), html.Td(str(cp["id"]))]),
                html.Tr([html.Td("entries covered"), html.Td(f"{cp['tree_size']:,} of {ledger.entries:,}")]),
                html.Tr([html.Td("Merkle root"), html.Td(html.Code(cp["root_hash"]))]),
                html.Tr([html.Td("operator key"), html.Td(html.Code(cp["public_key"]))]),
                html.Tr([html.Td("signature"), html.Td("valid" if cp["signature_ok"] else "INVALID")]),
            ], className="kv-table", id="st-checkpoint"),
        ])
    else:
        checkpoint = notice("no signed checkpoint yet")
    balances = pd.DataFrame({"account": list(ledger.balances), "balance [EUR]": list(ledger.balances.values())})
    options = [{"label": p, "value": p} for p in ledger.participants]
    return (html.Div([html.Div(status, className="ledger-status", id="st-verify"), checkpoint]),
            html_table(balances, table_id="st-balance-table", empty="no postings yet"),
            payments_figure(_safe_payments(data)), options)


def statement_view(data: RunData, label: str | None, participant: str | None) -> Any:
    ledger = _safe_ledger(data, label) if label else None
    if ledger is None:
        return notice(NO_LEDGER)
    if not participant:
        return notice("choose a participant")
    if participant not in ledger.participants:
        return notice(f"no statement for {participant!r} in {label}")
    statement = data.statement(label, participant)
    by_rule = pd.DataFrame({"rule": list(statement.by_rule), "amount [EUR]": list(statement.by_rule.values())})
    rows = statement.rows.drop(columns=["detail"], errors="ignore").iloc[::-1]
    return html.Div([
        html.Div([html.Span(f"Statement of {participant} ({label}): total "),
                  html.Strong(f"{fmt(statement.total)} EUR")], className="caption", id="st-total"),
        html_table(by_rule, table_id="st-by-rule"),
        html.Div("Postings (newest first)", className="caption"),
        html_table(rows, max_rows=48, table_id="st-rows"),
    ])


def settlement_layout(data: RunData) -> html.Div:
    options, default = ledger_options(data)
    return html.Div([
        _waiting(data),
        html.Div([
            html.Label(["Ledger ", dcc.Dropdown(id="st-ledger", options=options, value=default, clearable=False,
                                                className="dropdown", placeholder=NO_LEDGER)]),
        ], className="controls"),
        html.Div([html.H3("Ledger verification"), html.Div(id="st-status")], className="panel"),
        html.Div([html.Div([html.H3("Balances"), html.Div(id="st-balances")], className="panel"),
                  html.Div([graph("st-payments")], className="panel")], className="split"),
        html.Div([
            html.H3("Participant statement"),
            dcc.Dropdown(id="st-participant", options=[], value=None, className="dropdown wide",
                         placeholder="participant"),
            html.Div(id="st-statement"),
        ], className="panel"),
    ])


# -- Faults ------------------------------------------------------------------------------------------------
FAULT_KINDS = (
    (CommandKind.CONTROL_CENTRE_OUTAGE, "control-centre outage"),
    (CommandKind.BACKHAUL_CUT, "backhaul cut"),
    (CommandKind.PARTICIPANT_DROPOUT, "participant dropout"),
    (CommandKind.CLEAR_FAULTS, "clear all faults"),
)


def faults_layout(data: RunData, *, operator: str | None, auth_enabled: bool) -> html.Div:
    participants = data.participants()
    if operator:
        form = html.Div([
            html.Div(["Logged in as operator ", html.Strong(operator), ". Commands go to the running twin through "
                      "its command channel and apply from its next interval."], className="caption"),
            html.Div([
                html.Label(["Fault ", dcc.Dropdown(id="fault-kind", clearable=False, className="dropdown",
                                                   value=CommandKind.BACKHAUL_CUT.value,
                                                   options=[{"label": l, "value": k.value} for k, l in FAULT_KINDS])]),
                html.Label(["Duration ", dcc.Input(id="fault-duration", type="text", value="1h", debounce=True,
                                                   className="text-input")]),
                html.Label(["Participant (for a dropout) ", dcc.Dropdown(id="fault-participant", className="dropdown",
                                                         options=[{"label": p, "value": p} for p in participants],
                                                         value=participants[0] if participants else None)]),
                html.Button("Inject", id="fault-submit", n_clicks=0, className="button button-danger"),
            ], className="controls"),
            html.Div(id="op-fault-result", className="result"),
        ], className="panel")
    elif auth_enabled:
        form = html.Div([notice("Viewing is read-only. Fault injection needs the operator role: "),
                         dcc.Link("log in as operator", href="/login?next=/faults", className="button")],
                        className="panel", id="fault-login")
    else:
        form = html.Div(notice("Operator actions are disabled: the dashboard was started without an operator "
                               "password."), className="panel", id="fault-login")
    return html.Div([
        _waiting(data),
        form,
        html.Div([html.H3("Active faults"), html.Div(id="fault-active")], className="panel"),
        html.Div([graph("fault-effect")], className="panel"),
        html.Div([html.H3("Command history"), html.Div(id="fault-history")], className="panel"),
    ])


def faults_view(data: RunData) -> tuple[Any, go.Figure, Any]:
    """(active faults, fallback figure with the fault windows, command history table)."""
    windows = data.fault_windows()
    summaries = data.summaries()
    latest = max((s.index[-1] for s in summaries.values()), default=None)
    if latest is not None and len(windows):
        active = windows[windows["end"] > latest]
    else:
        active = windows.iloc[0:0]
    pending = data.command_history()
    pending = pending[pending["state"] == "pending"]
    items = [html.Li(f"{w.label}: {fmt(w.start)} → {fmt(w.end)}") for w in active.itertuples(index=False)]
    items += [html.Li(f"{str(p.kind).replace('_', ' ')} (pending: waits for the twin's next interval)")
              for p in pending.itertuples(index=False)]
    active_view = html.Ul(items, id="fault-active-list") if items else notice("no active fault")
    figure = fallback_figure(summaries, faults=windows) if summaries else empty_figure("no intervals recorded yet")
    history = data.command_history().drop(columns=["file", "issued_utc"])
    return active_view, figure, html_table(
        history, max_rows=50, table_id="fault-history-table", empty="no operator commands yet",
        formats={"duration": fmt_duration, "applied_at": _time_text,
                 "participant_id": lambda v: "" if v is None or pd.isna(v) else str(v)})


def _time_text(value: Any) -> str:
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        return str(value)
    return "" if pd.isna(stamp) else fmt(stamp)


# -- Studies -----------------------------------------------------------------------------------------------
NO_STUDIES = "no studies"


def studies_layout(data: RunData) -> html.Div:
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
    options = [{"label": KPI_LABELS.get(k, k), "value": k} for k in study.kpi_columns]
    default = "energy_cost_eur" if "energy_cost_eur" in study.kpi_columns else (options[0]["value"] if options else None)
    return options, default


def study_view(data: RunData, name: str | None, kpi: str | None) -> tuple[go.Figure, Any]:
    if not name:
        return empty_figure(NO_STUDIES), None
    study = data.study(name)
    if study.table is None:
        return empty_figure(study.error), notice(study.error, kind="warning")
    if not kpi or kpi not in study.table.columns:
        return empty_figure("choose a KPI"), html_table(study.table, max_rows=200, table_id="sd-table-rows")
    return (study_figure(study.table, kpi, label=KPI_LABELS.get(kpi, kpi)),
            html_table(study.table, max_rows=200, table_id="sd-table-rows"))


# -- Login -------------------------------------------------------------------------------------------------
_LOGIN_ERRORS = {
    "password": "wrong password",
    "name": "enter your operator name (letters, digits, space . _ @ -; at most 64 characters)",
    "disabled": "operator actions are disabled on this dashboard",
}


def login_layout(*, error: str, next_path: str, operator: str | None, auth_enabled: bool) -> html.Div:
    if not auth_enabled:
        return html.Div(notice(_LOGIN_ERRORS["disabled"], kind="warning"), className="panel narrow")
    if operator:
        return html.Div([notice(f"logged in as {operator}"), dcc.Link("go to Faults", href="/faults")],
                        className="panel narrow")
    return html.Div([
        html.H3("Operator login"),
        notice(_LOGIN_ERRORS.get(error, "could not log in"), kind="critical") if error else None,
        html.Form([
            html.Label(["Operator name", html.Br(), dcc.Input(name="operator", id="login-operator", type="text",
                                                              autoComplete="username", required=True)]),
            html.Label(["Password", html.Br(), dcc.Input(name="password", id="login-password", type="password",
                                                         autoComplete="current-password", required=True)]),
            dcc.Input(name="next", id="login-next", type="hidden", value=next_path),
            html.Button("Log in", id="login-submit", type="submit", className="button"),
        ], action="/auth/login", method="POST", className="login-form"),
    ], className="panel narrow")


def page_layout(path: str, data: RunData, *, operator: str | None, auth_enabled: bool, query: dict[str, str]) -> Any:
    """The static layout of the page at ``path`` (a 'not found' notice for unknown paths)."""
    if path in ("/", ""):
        return overview_layout(data)
    if path == "/comparison":
        return comparison_layout(data)
    if path == "/assets":
        return assets_layout(data)
    if path == "/settlement":
        return settlement_layout(data)
    if path == "/faults":
        return faults_layout(data, operator=operator, auth_enabled=auth_enabled)
    if path == "/studies":
        return studies_layout(data)
    if path == "/login":
        from dashboards.auth import safe_next

        nxt = safe_next(query.get("next"))
        return login_layout(error=query.get("error", ""), next_path=nxt, operator=operator, auth_enabled=auth_enabled)
    return html.Div(notice(f"no page at {path}", kind="warning"), className="panel", id="not-found")


def submit_fault(data: RunData, *, operator: str, kind: Any, duration: Any, participant: Any) -> tuple[bool, str]:
    """Validate an operator's fault request and drop it into the run's command channel.

    Returns (accepted, message). Only a running twin takes commands, so a finished run refuses them.
    """
    from twin.commands import CommandError, OperatorCommand

    status = data.status()
    state = status.get("state")
    if state != "running":
        return False, f"the run is {state or 'not started'}: no twin is running to apply a command"
    payload: dict[str, Any] = {"kind": kind, "duration": duration, "operator": operator}
    if kind == CommandKind.PARTICIPANT_DROPOUT.value:
        if not isinstance(participant, str) or participant not in data.participants():
            return False, f"participant_id={participant!r}: not a participant of this run"
        payload["participant_id"] = participant
    # The window must fit in what is left of the run: it applies from the twin's next interval.
    bounds = data.commands.bounds()
    done = status.get("done")
    applies_at = bounds.interval_at(done) if bounds is not None and isinstance(done, int) else None
    try:
        command = OperatorCommand.from_dict(payload, bounds=bounds, applies_at=applies_at)
    except CommandError as exc:
        return False, str(exc)
    command_id = data.commands.submit(command)
    who = f" for {command.participant_id}" if command.participant_id else ""
    return True, f"submitted {command.kind.value}{who} for {fmt_duration(command.duration)} (command {command_id[:8]})"
