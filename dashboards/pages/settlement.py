"""Settlement: a ledger's verification and last signed checkpoint, its balances (natural order: p-2 before
p-10, amounts as numbers), its payments over the shared time axis, and a participant's statement, paged and
exportable as CSV."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import dash
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, State, ctx, dcc, html

from dashboards.components import fmt, graph, html_table, notice
from dashboards.data import LedgerView, RunData, reference_policy
from dashboards.pages.common import Context, register_chart_time, text, time_chart, waiting
from dashboards.tables import natural_key, next_page, page_controls, paged_table
from twin.reporting.figures import empty_figure, payments_figure

__all__ = ["NO_LEDGER", "balances_frame", "layout", "ledger_options", "register", "settlement_status",
           "statement_view"]

NO_LEDGER = "no ledger in this run"
SIGN_NOTE = ("Amounts are what each account received: + = paid to that account, − = paid by it; "
             "every entry balances to zero.")


def ledger_options(data: RunData) -> tuple[list[dict[str, str]], str | None]:
    labels = list(data.ledgers())
    # The reference's ledger first, as on every other page (the one the others are compared with).
    return [{"label": label, "value": label} for label in labels], reference_policy(labels)


def _ledger(data: RunData, label: str | None) -> LedgerView | None:
    if not label:
        return None
    try:
        return data.ledger(label)
    except ImportError:  # twin.settlement missing in a partial install: show "no ledger"
        return None


def balances_frame(ledger: LedgerView) -> pd.DataFrame:
    """Accounts in natural order (operator and pools first, then participants p-0, p-1, p-2, ..., p-10), the
    balance as a number."""
    accounts = sorted(ledger.balances, key=lambda a: (a.startswith("participant:"), natural_key(a)))
    return pd.DataFrame({"account": accounts,
                         "balance [EUR]": [float(Decimal(ledger.balances[a])) for a in accounts]})


def settlement_status(data: RunData, label: str | None, view: Any = None, *, page: Any = 0,
                      trigger: str | None = None) -> tuple[Any, Any, go.Figure, list[dict[str, str]], int, str]:
    """(verification status and checkpoint, balances page, this ledger's payments, participants, balance
    page, its label)."""
    ledger = _ledger(data, label)
    if ledger is None:
        return notice(NO_LEDGER, kind="info"), None, empty_figure(NO_LEDGER), [], 0, ""
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
    balances = balances_frame(ledger)
    page = next_page(page, trigger=trigger, prev_id="stb-prev", next_id="stb-next", n_rows=len(balances))
    table, page_label = paged_table(balances, page=page, table_id="st-balance-table", empty="no postings yet",
                                    formats={"balance [EUR]": lambda v: fmt(float(v), 2)})
    payments = ledger.payments.rename(columns={"participants": label}) if len(ledger.payments) else ledger.payments
    figure = payments_figure(payments, title=f"Paid to participants, {label} (cumulative)")
    figure.update_yaxes(title_text="EUR (+ = received)")
    if figure.data:
        figure = time_chart(figure, data, view)
    options = [{"label": p, "value": p} for p in sorted(ledger.participants, key=natural_key)]
    return (html.Div([html.Div(status, className="ledger-status", id="st-verify"), checkpoint]),
            html.Div([html.Div(SIGN_NOTE, className="muted"), table]), figure, options, page, page_label)


#: Posting columns as an operator reads them (the CSV export keeps the ledger's own names).
_POSTING_HEADERS = {"seq": "entry", "interval_start": "interval start", "interval_end": "interval end",
                    "rule_version": "rule version", "amount": "amount [EUR]", "balance": "balance [EUR]"}


def statement_view(data: RunData, label: str | None, participant: str | None, *, page: Any = 0,
                   trigger: str | None = None) -> tuple[Any, int, str, str]:
    """(a participant's statement with one page of postings, that page, its label, the CSV link)."""
    ledger = _ledger(data, label)
    if ledger is None:
        return notice(NO_LEDGER), 0, "", ""
    if not participant:
        return notice("choose a participant"), 0, "", ""
    if participant not in ledger.participants:
        return notice(f"no statement for {participant!r} in {label}"), 0, "", ""
    statement = data.statement(label, participant)
    by_rule = pd.DataFrame({"rule": list(statement.by_rule), "amount [EUR]": list(statement.by_rule.values())})
    rows = statement.rows.drop(columns=["detail"], errors="ignore").iloc[::-1].rename(columns=_POSTING_HEADERS)
    page = next_page(page, trigger=trigger, prev_id="st-prev", next_id="st-next", n_rows=len(rows))
    table, page_label = paged_table(rows, page=page, table_id="st-rows")
    csv = "/export/statement.csv?" + urlencode({"ledger": label, "participant": participant})
    return html.Div([
        html.Div([html.Span(f"Statement of {participant} ({label}): total "),
                  html.Strong(f"{fmt(statement.total)} EUR"), html.Span(" (+ = paid to the participant)",
                                                                    className="muted")],
                 className="caption", id="st-total"),
        html_table(by_rule, table_id="st-by-rule"),
        html.Div("Postings (newest first)", className="caption"),
        table,
    ]), page, page_label, csv


def layout(data: RunData) -> html.Div:
    options, default = ledger_options(data)
    return html.Div([
        waiting(data),
        html.Div([
            html.Label(["Ledger ", dcc.Dropdown(id="st-ledger", options=options, value=default, clearable=False,
                                                className="dropdown", placeholder=NO_LEDGER)]),
        ], className="controls"),
        html.Div([html.H3("Ledger verification"), html.Div(id="st-status")], className="panel"),
        html.Div([html.Div([html.H3("Balances"), dcc.Store(id="stb-page", data=0), page_controls("stb"),
                            html.Div(id="st-balances")], className="panel"),
                  html.Div([graph("st-payments")], className="panel")], className="split"),
        html.Div([
            html.Div([html.H3("Participant statement", className="inline"),
                      html.A("statement as CSV", id="st-csv", href="", className="button button-quiet")],
                     className="panel-head"),
            dcc.Dropdown(id="st-participant", options=[], value=None, className="dropdown wide",
                         placeholder="participant"),
            dcc.Store(id="st-page", data=0),
            page_controls("st"),
            html.Div(id="st-statement"),
        ], className="panel"),
    ])


def register(app: dash.Dash, c: Context) -> None:
    data = c.data

    @app.callback(Output("st-status", "children"), Output("st-balances", "children"),
                  Output("st-payments", "figure"), Output("st-participant", "options"),
                  Output("stb-page", "data"), Output("stb-page-label", "children"),
                  Input("run-version", "data"), Input("time-view", "data"), Input("st-ledger", "value"),
                  Input("stb-prev", "n_clicks"), Input("stb-next", "n_clicks"), State("stb-page", "data"))
    def settlement(_v: Any, view: Any, label: Any, _p: Any, _n: Any, page: Any) -> tuple[Any, ...]:
        trigger = ctx.triggered_id if ctx.triggered_id in ("stb-prev", "stb-next", "st-ledger") else None
        return settlement_status(data, text(label), view, page=page, trigger=trigger)

    @app.callback(Output("st-participant", "value"), Input("st-participant", "options"),
                  State("st-participant", "value"))
    def default_participant(options: Any, current: Any) -> Any:
        values = [o["value"] for o in options if isinstance(o, dict) and "value" in o] if isinstance(options, list) else []
        if current in values:
            return dash.no_update
        return values[0] if values else None

    @app.callback(Output("st-statement", "children"), Output("st-page", "data"), Output("st-page-label", "children"),
                  Output("st-csv", "href"),
                  Input("run-version", "data"), Input("st-ledger", "value"), Input("st-participant", "value"),
                  Input("st-prev", "n_clicks"), Input("st-next", "n_clicks"), State("st-page", "data"))
    def statement(_v: Any, label: Any, participant: Any, _p: Any, _n: Any, page: Any) -> Any:
        trigger = ctx.triggered_id if ctx.triggered_id in ("st-prev", "st-next", "st-ledger", "st-participant") else None
        return statement_view(data, text(label), text(participant), page=page, trigger=trigger)

    register_chart_time(app, ["st-payments"])
