"""What every page shares: the app context its callbacks get, reading control values sent by the browser,
the time view, and the "waiting for the run" notice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dash
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, State, ctx, html

from dashboards.alarms import AlarmBook
from dashboards.auth import OperatorAuth
from dashboards.components import notice
from dashboards.data import RunData, reference_policy
from dashboards.events import windows
from dashboards.timeline import Axis, TimeView, click_time, decorate, zoom_from_relayout

__all__ = ["Context", "chart_time", "clicked", "cursor_row", "policy_options", "register_chart_time", "text", "time_chart",
           "waiting"]


@dataclass
class Context:
    """What page callbacks work with: the run, the operator role, the alarm book and settings (one per app)."""

    data: RunData
    auth: OperatorAuth
    book: AlarmBook = field(default_factory=AlarmBook)
    stale_after_s: float = 60.0


def text(value: Any) -> str | None:
    """A control value as the string it should be; anything else (a crafted request) counts as unset."""
    return value if isinstance(value, str) else None


def policy_options(data: RunData) -> tuple[list[dict[str, str]], str | None]:
    policies = data.policies()
    return [{"label": p, "value": p} for p in policies], reference_policy(policies)


def waiting(data: RunData) -> html.Div | None:
    if not data.meta():
        where = data.run_dir if data.run_dir.is_dir() else f"{data.run_dir} (not created yet)"
        return notice(f"waiting for the run in {where} to start (no meta.json yet); this page updates when it "
                      "does", kind="warning")
    return None


def time_chart(fig: go.Figure, data: RunData, view: Any) -> go.Figure:
    """``fig`` with the shared time range and cursor, and the run's fault and DR windows shaded."""
    return decorate(fig, TimeView.from_store(view), data.axis(), windows(data))


def view_and_axis(data: RunData, view: Any) -> tuple[TimeView, Axis]:
    return TimeView.from_store(view), data.axis()


def cursor_row(data: RunData, policy: str | None, view: Any) -> tuple[int | None, pd.Timestamp | None]:
    """(row of ``policy``'s tables at the cursor, its time), None before any interval."""
    if not policy:
        return None, None
    summary = data.table(policy, "summary")
    if len(summary) == 0:
        return None, None
    cursor = TimeView.from_store(view).cursor_on(data.axis())
    if cursor is None:
        return len(summary) - 1, pd.Timestamp(summary.index[-1])
    row = int(pd.DatetimeIndex(summary.index).searchsorted(cursor, side="right")) - 1
    row = min(max(row, 0), len(summary) - 1)
    return row, pd.Timestamp(summary.index[row])


def clicked() -> str | None:
    """The id of the button whose click fired this callback, else None. When a page is inserted, Dash may
    fire a callback with every input "changed" and ``n_clicks`` 0: that is no click."""
    clicks = [str(t.get("prop_id", "")) for t in ctx.triggered if isinstance(t, Mapping)
              and str(t.get("prop_id", "")).endswith(".n_clicks") and isinstance(t.get("value"), int)
              and not isinstance(t.get("value"), bool) and t.get("value") >= 1]
    # One click at a time (a text field left by that click may arrive in the same request).
    return clicks[0].rsplit(".", 1)[0] if len(clicks) == 1 else None


def chart_time(current: TimeView, triggered: Mapping[str, Any]) -> Any:
    """The time view after a time chart's event (``ctx.triggered[0]``): a zoom (``relayoutData``) sets the
    shared range, a double click resets it, a click (``clickData``) puts the cursor there."""
    prop = str(triggered.get("prop_id", "")) if isinstance(triggered, Mapping) else ""
    value = triggered.get("value") if isinstance(triggered, Mapping) else None
    if prop.endswith(".clickData"):
        when = click_time(value)
        return dash.no_update if when is None else current.with_(cursor=when, playing=False).to_store()
    if prop.endswith(".relayoutData"):
        zoom = zoom_from_relayout(value)
        if zoom == "reset":
            return current.with_(start=None, end=None).to_store()
        if isinstance(zoom, tuple):
            return current.with_(start=zoom[0], end=zoom[1]).to_store()
    return dash.no_update


def register_chart_time(app: dash.Dash, graph_ids: Sequence[str]) -> None:
    """One callback taking zooms and clicks of a page's time charts (all on the same page) into the shared
    time view."""
    inputs = [Input(g, prop) for g in graph_ids for prop in ("relayoutData", "clickData")]

    @app.callback(Output("time-view", "data", allow_duplicate=True), *inputs, State("time-view", "data"),
                  prevent_initial_call=True)
    def page_time(*args: Any) -> Any:
        if len(ctx.triggered) != 1:  # the page was inserted: nothing was zoomed or clicked
            return dash.no_update
        return chart_time(TimeView.from_store(args[-1]), ctx.triggered[0])
