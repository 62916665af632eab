"""CSV exports and the run's report, as plain GET routes (a link downloads them; scripts can too):

    /export/kpis.csv                                  KPI × policy, with labels
    /export/fleet.csv?policy=P                        the fleet table of one policy (every asset)
    /export/events.csv                                the run-wide event log
    /export/series.csv?policy=P&table=summary         one recorded table of one policy (time × columns)
    /export/statement.csv?ledger=L&participant=X      a participant's settlement postings
    /report                                           RUN/report.html (written by gridtwin compare / demo)

Every argument is checked against the run (a policy, table, ledger or participant it has); anything else is
answered 400 naming the argument and the value. Text cells that a spreadsheet would run as a formula are
quoted (OWASP CSV injection): run folders are not trusted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import flask
import pandas as pd

from dashboards.data import RunData
from twin.records.kpis import KPI_LABELS
from twin.records.recorder import PolicyRecords

__all__ = ["EXPORTS", "csv_text", "install_exports"]

EXPORTS = ("kpis", "fleet", "events", "series", "statement")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _safe_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_text(frame: pd.DataFrame, *, index: bool = False) -> str:
    """``frame`` as CSV with formula-like text cells quoted."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].map(_safe_cell)
    if index and out.index.dtype == object:
        out.index = out.index.map(_safe_cell)
    return out.to_csv(index=index)


class BadRequest(ValueError):
    pass


def _arg(name: str, allowed: list[str]) -> str:
    value = flask.request.args.get(name)
    if value not in allowed:
        shown = ", ".join(allowed[:10]) + (" ..." if len(allowed) > 10 else "")
        raise BadRequest(f"{name}={value!r}: expected one of {shown or '(none in this run)'}")
    return str(value)


def _file_name(data: RunData, what: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{data.run_name()}-{what}").strip("-")[:120] or "export"
    return f"{stem}.csv"


def _csv_response(data: RunData, what: str, text: str) -> flask.Response:
    response = flask.Response(text, mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{_file_name(data, what)}"'
    response.headers["Cache-Control"] = "no-store"
    return response


def install_exports(server: flask.Flask, data: RunData, *, fleet: Callable[[RunData, str], pd.DataFrame],
                    events: Callable[[RunData], pd.DataFrame]) -> None:
    """Add the export and report routes to ``server``; ``fleet`` and ``events`` build those tables (the same
    functions the pages use)."""

    def kpis() -> flask.Response:
        table = data.kpis()
        frame = table.copy()
        frame.insert(0, "kpi", list(table.index))
        frame.insert(1, "label", [KPI_LABELS.get(k, k) for k in table.index])
        return _csv_response(data, "kpis", csv_text(frame))

    def fleet_csv() -> flask.Response:
        policy = _arg("policy", data.policies())
        return _csv_response(data, f"fleet-{policy}", csv_text(fleet(data, policy)))

    def events_csv() -> flask.Response:
        frame = events(data).drop(columns=["id"])
        return _csv_response(data, "events", csv_text(frame))

    def series() -> flask.Response:
        policy = _arg("policy", data.policies())
        table = flask.request.args.get("table", "summary")
        if table not in PolicyRecords.TABLES:
            raise BadRequest(f"table={table!r}: expected one of {', '.join(PolicyRecords.TABLES)}")
        frame = data.table(policy, table)
        frame = frame.copy()
        frame.index = pd.DatetimeIndex(frame.index).strftime("%Y-%m-%dT%H:%M:%SZ") if len(frame) else frame.index
        frame.index.name = "time"
        return _csv_response(data, f"{policy}-{table}", csv_text(frame, index=True))

    def statement() -> flask.Response:
        ledgers = list(data.ledgers())
        label = _arg("ledger", ledgers)
        view = data.ledger(label)
        participant = _arg("participant", list(view.participants) if view is not None else [])
        rows = data.statement(label, participant).rows.drop(columns=["detail"], errors="ignore")
        return _csv_response(data, f"statement-{label}-{participant}", csv_text(rows))

    def report() -> flask.Response:
        path = data.run_dir / "report.html"
        if not path.is_file():
            return flask.Response(
                "<!doctype html><title>no report</title><p>This run has no report.html yet: "
                "<code>gridtwin report RUN</code> writes it (gridtwin compare and demo do so at the end).</p>",
                status=404, mimetype="text/html")
        response = flask.send_file(path, mimetype="text/html", conditional=True, max_age=0)
        response.headers["Content-Security-Policy"] = "connect-src 'none'; form-action 'none'"
        return response

    routes: dict[str, Callable[[], flask.Response]] = {
        "/export/kpis.csv": kpis, "/export/fleet.csv": fleet_csv, "/export/events.csv": events_csv,
        "/export/series.csv": series, "/export/statement.csv": statement, "/report": report,
    }
    for rule, view in routes.items():
        server.add_url_rule(rule, f"gridtwin_{view.__name__}", _answering_bad_requests(view), methods=["GET"])


def _answering_bad_requests(view: Callable[[], flask.Response]) -> Callable[[], flask.Response]:
    def wrapped() -> flask.Response:
        try:
            return view()
        except BadRequest as exc:
            return flask.Response(f"{exc}\n", status=400, mimetype="text/plain")

    wrapped.__name__ = view.__name__
    return wrapped
