"""Faults: the operator's fault and DR-event injection (reviewed, then confirmed), the faults active at the
latest interval (scenario and operator), assets on fallback over the shared time axis, and the command history.

A fault no policy of the run can feel (a backhaul cut when no policy is central, a DR event without
settlement contracts, clearing when nothing is active) is refused with the reason before it is submitted.
"""

from __future__ import annotations

import logging
from typing import Any

import dash
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, State, ctx, dcc, html

from dashboards.components import fmt, fmt_duration, graph, html_table, notice
from dashboards.data import RunData
from dashboards.events import FAULT_LABELS, felt_by, windows
from dashboards.pages.common import Context, clicked, register_chart_time, text, time_chart, waiting
from twin.commands import CommandKind
from twin.reporting.figures import empty_figure, fallback_figure

__all__ = ["FAULT_KINDS", "check_fault", "faults_view", "layout", "register", "submit_fault"]

_log = logging.getLogger(__name__)

FAULT_KINDS = (
    (CommandKind.CONTROL_CENTRE_OUTAGE, "control-centre outage"),
    (CommandKind.BACKHAUL_CUT, "backhaul cut"),
    (CommandKind.PARTICIPANT_DROPOUT, "participant dropout"),
    (CommandKind.DR_EVENT, "demand-response event"),
    (CommandKind.CLEAR_FAULTS, "clear all faults"),
)
_HIDDEN = {"display": "none"}


def layout(data: RunData, *, operator: str | None, auth_enabled: bool) -> html.Div:
    participants = data.participants()
    if operator:
        form = html.Div([
            html.Div(["Logged in as operator ", html.Strong(operator), ". Commands go to the running twin through "
                      "its command channel and apply from its next interval. Review a command, then confirm it."],
                     className="caption"),
            html.Div([
                html.Label(["Fault ", dcc.Dropdown(id="fault-kind", clearable=False, className="dropdown",
                                                   value=CommandKind.BACKHAUL_CUT.value,
                                                   options=[{"label": l, "value": k.value} for k, l in FAULT_KINDS])]),
                html.Label(["Duration ", dcc.Input(id="fault-duration", type="text", value="1h", debounce=True,
                                                   className="text-input")]),
                html.Label(["Participant (for a dropout) ", dcc.Dropdown(id="fault-participant", className="dropdown",
                                                         options=[{"label": p, "value": p} for p in participants],
                                                         value=participants[0] if participants else None)]),
                html.Button("Review…", id="fault-review", n_clicks=0, className="button"),
            ], className="controls"),
            html.Div(id="op-fault-confirm"),
            html.Div([html.Button("Confirm: inject", id="fault-submit", n_clicks=0, className="button button-danger"),
                      html.Button("Cancel", id="fault-cancel", n_clicks=0, className="button button-quiet")],
                     id="op-fault-confirm-box", className="controls confirm-box", style=_HIDDEN),
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
        waiting(data),
        form,
        html.Div([html.H3("Active faults"), html.Div(id="fault-active")], className="panel"),
        html.Div([graph("fault-effect")], className="panel"),
        html.Div([html.H3("Command history"), html.Div(id="fault-history")], className="panel"),
    ])


def faults_view(data: RunData, view: Any = None) -> tuple[Any, go.Figure, Any]:
    """(faults active at the latest interval and pending commands, fallback figure on the shared time axis
    with every fault and DR window, command history table)."""
    spans = windows(data)
    summaries = data.summaries()
    axis = data.axis()
    # Applied commands start at the twin's next interval, which may not be recorded yet.
    now = axis.end if axis.end is not None else None
    active = spans[spans["end"] > axis.latest] if now is not None and len(spans) else spans.iloc[0:0]
    history = data.command_history()
    pending = history[history["state"] == "pending"]
    items = [html.Li(f"{w.label}: {fmt(w.start)} → {fmt(w.end)} ({w.source}"
                     f"{', scheduled' if now is not None and w.start > now else ''})")
             for w in active.itertuples(index=False)]
    items += [html.Li(f"{FAULT_LABELS.get(str(p.kind), str(p.kind))} (pending: waits for the twin's next interval)")
              for p in pending.itertuples(index=False)]
    active_view = html.Ul(items, id="fault-active-list") if items else notice("no active fault")
    figure = (time_chart(fallback_figure(summaries), data, view) if summaries
              else empty_figure("no intervals recorded yet"))
    table = history.drop(columns=["file", "issued_utc"])
    return active_view, figure, html_table(
        table, max_rows=50, table_id="fault-history-table", empty="no operator commands yet",
        formats={"duration": fmt_duration, "applied_at": _time_text,
                 "participant_id": lambda v: "" if v is None or pd.isna(v) else str(v)})


def _time_text(value: Any) -> str:
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        return str(value)
    return "" if pd.isna(stamp) else fmt(stamp)


def check_fault(data: RunData, *, operator: str, kind: Any, duration: Any, participant: Any) -> tuple[
        bool, str, Any]:
    """Validate an operator's request without submitting it: (acceptable, why not / what it will do, the
    command to submit or None). Only a running twin takes commands; a fault no policy can feel is refused."""
    from twin.commands import CommandError, OperatorCommand

    status = data.status()
    state = status.get("state")
    if state != "running":
        why = f" ({status['reason']})" if status.get("reason") and state in ("stopped", "failed", "interrupted") else ""
        return False, f"the run is {state or 'not started'}{why}: no twin is running to apply a command", None
    payload: dict[str, Any] = {"kind": kind, "duration": duration, "operator": operator}
    if kind == CommandKind.PARTICIPANT_DROPOUT.value:
        if not isinstance(participant, str) or participant not in data.participants():
            return False, f"participant_id={participant!r}: not a participant of this run", None
        payload["participant_id"] = participant
    # The window must fit in what is left of the run: it applies from the twin's next interval.
    bounds = data.commands.bounds()
    done = status.get("done")
    applies_at = bounds.interval_at(done) if bounds is not None and isinstance(done, int) else None
    try:
        command = OperatorCommand.from_dict(payload, bounds=bounds, applies_at=applies_at)
    except CommandError as exc:
        return False, str(exc), None
    label = FAULT_LABELS.get(command.kind.value, command.kind.value)
    modes = data.policy_modes()
    if command.kind is CommandKind.CLEAR_FAULTS:
        spans = windows(data)
        at = applies_at or data.axis().latest
        open_faults = spans[(spans["category"] == "fault") & (spans["end"] > at)] if at is not None else spans
        if len(open_faults) == 0:
            return False, "refused: no fault is active or scheduled to clear", None
        return True, f"Clear {len(open_faults)} active or scheduled fault(s) from {fmt(at)}.", command
    felt, reason = felt_by(command.kind.value, modes, has_settlement=data.has_settlement() or bool(data.ledgers()))
    if not felt:
        return False, f"refused: no policy of this run can feel a {label} — {reason}", None
    who = f" for {command.participant_id}" if command.participant_id else ""
    start = fmt(applies_at) if applies_at is not None else "the twin's next interval"
    unaffected = f" Not affected: {reason.split('; ', 1)[1]}." if "; " in reason else ""
    return True, (f"{label}{who} for {fmt_duration(command.duration)} from {start}. Felt by: {', '.join(felt)}."
                  f"{unaffected}"), command


def submit_fault(data: RunData, *, operator: str, kind: Any, duration: Any, participant: Any) -> tuple[bool, str]:
    """Validate an operator's fault request and drop it into the run's command channel: (accepted, message)."""
    ok, message, command = check_fault(data, operator=operator, kind=kind, duration=duration,
                                       participant=participant)
    if not ok:
        return False, message
    command_id = data.commands.submit(command)
    who = f" for {command.participant_id}" if command.participant_id else ""
    return True, f"submitted {command.kind.value}{who} for {fmt_duration(command.duration)} (command {command_id[:8]})"


def register(app: dash.Dash, c: Context) -> None:
    data = c.data

    @app.callback(Output("fault-active", "children"), Output("fault-effect", "figure"),
                  Output("fault-history", "children"), Input("run-version", "data"), Input("time-view", "data"))
    def faults(_v: Any, view: Any) -> tuple[Any, ...]:
        return faults_view(data, view)

    # Operator actions: output ids start with "op-", so auth's guard lets only an operator reach them.
    @app.callback(Output("op-fault-confirm", "children"), Output("op-fault-confirm-box", "style"),
                  Input("fault-review", "n_clicks"), Input("fault-cancel", "n_clicks"), Input("fault-kind", "value"),
                  Input("fault-duration", "value"), Input("fault-participant", "value"),
                  Input("op-fault-result", "children"), prevent_initial_call=True)
    def review(_r: Any, _c: Any, kind: Any, duration: Any, participant: Any, _result: Any) -> tuple[Any, Any]:
        operator = c.auth.current_operator()
        if operator is None:
            return notice("operator login required", kind="critical"), _HIDDEN
        if clicked() != "fault-review":  # cancelled, the form changed, or the command went out
            return None, _HIDDEN
        ok, message, _ = check_fault(data, operator=operator, kind=text(kind), duration=text(duration),
                                     participant=text(participant))
        if not ok:
            return notice(message, kind="critical"), _HIDDEN
        return notice(f"Confirm: {message}", kind="warning"), {"display": "flex"}

    @app.callback(Output("op-fault-result", "children"), Input("fault-submit", "n_clicks"),
                  State("fault-kind", "value"), State("fault-duration", "value"), State("fault-participant", "value"),
                  prevent_initial_call=True)
    def inject(_clicks: Any, kind: Any, duration: Any, participant: Any) -> Any:
        if clicked() != "fault-submit":
            return dash.no_update
        operator = c.auth.current_operator()
        if operator is None:  # the guard already refused; never act without an operator
            return notice("operator login required", kind="critical")
        ok, message = submit_fault(data, operator=operator, kind=text(kind), duration=text(duration),
                                   participant=text(participant))
        if ok:
            _log.info("operator %s: %s", operator, message)
        return notice(message, kind="ok" if ok else "critical")

    register_chart_time(app, ["fault-effect"])
