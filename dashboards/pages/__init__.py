"""The dashboard's pages, one module each: a layout, the content functions its callbacks call (plain functions
of a ``RunData`` and the page's control values, unit-tested without a browser) and ``register(app, context)``
for its callbacks. ``page_layout`` routes a path to its page."""

from __future__ import annotations

from typing import Any

import dash
from dash import html

from dashboards.components import notice
from dashboards.data import RunData
from dashboards.pages import assets, comparison, events_log, faults, login, overview, settlement, studies
from dashboards.pages.assets import asset_options, asset_view, fleet_frame, fleet_page
from dashboards.pages.common import Context
from dashboards.pages.comparison import figures as comparison_figures
from dashboards.pages.faults import FAULT_KINDS, check_fault, faults_view, submit_fault
from dashboards.pages.overview import alarm_panel, alarm_rows, bus_view, jump_time, map_view, status_alarms
from dashboards.pages.settlement import NO_LEDGER, balances_frame, ledger_options, settlement_status, statement_view
from dashboards.pages.studies import NO_STUDIES, study_kpi_options, study_view
from dashboards.pages.studies import layout as studies_layout

__all__ = ["FAULT_KINDS", "NO_LEDGER", "NO_STUDIES", "PAGES", "TIMELESS", "Context", "alarm_panel", "alarm_rows",
           "asset_options", "asset_view", "balances_frame", "bus_view", "check_fault", "comparison_figures",
           "faults_view", "fleet_frame", "fleet_page", "jump_time", "ledger_options", "map_view", "page_layout",
           "register_pages", "settlement_status", "statement_view", "status_alarms", "studies_layout",
           "study_kpi_options", "study_view", "submit_fault"]

#: (path, nav label)
PAGES: tuple[tuple[str, str], ...] = (
    ("/", "Overview"),
    ("/comparison", "Comparison"),
    ("/events", "Events"),
    ("/assets", "Assets"),
    ("/settlement", "Settlement"),
    ("/faults", "Faults"),
    ("/studies", "Studies"),
)
#: Pages without a time axis: the time bar is hidden there.
TIMELESS = ("/studies", "/login")


def page_layout(path: str, data: RunData, *, operator: str | None, auth_enabled: bool, query: dict[str, str]) -> Any:
    """The static layout of the page at ``path`` (a 'not found' notice for unknown paths)."""
    if path in ("/", ""):
        return overview.layout(data, operator=operator, auth_enabled=auth_enabled)
    if path == "/comparison":
        return comparison.layout(data)
    if path == "/events":
        return events_log.layout(data)
    if path == "/assets":
        return assets.layout(data, query)
    if path == "/settlement":
        return settlement.layout(data)
    if path == "/faults":
        return faults.layout(data, operator=operator, auth_enabled=auth_enabled)
    if path == "/studies":
        return studies.layout(data)
    if path == "/login":
        from dashboards.auth import safe_next

        nxt = safe_next(query.get("next"))
        return login.layout(error=query.get("error", ""), next_path=nxt, operator=operator, auth_enabled=auth_enabled)
    return html.Div(notice(f"no page at {path}", kind="warning"), className="panel", id="not-found")


def register_pages(app: dash.Dash, context: Context) -> None:
    for page in (overview, comparison, events_log, assets, settlement, faults, studies):
        page.register(app, context)
