"""The time bar under the top bar: a scrubber over the run's intervals, step back / play / step forward,
"live" (follow the latest interval) and "whole run" (reset the zoom). It and every page's time charts share
one ``time-view`` store (``dashboards.timeline.TimeView``); this module owns the bar and its callback."""

from __future__ import annotations

from typing import Any

import dash
import pandas as pd
from dash import Input, Output, State, ctx, dcc, html

from dashboards.components import fmt
from dashboards.timeline import Axis, TimeView

__all__ = ["PLAY_PERIOD_MS", "layout", "register", "scrubber_marks", "step_view"]

#: How often playback advances the cursor by one interval.
PLAY_PERIOD_MS = 700


def layout() -> html.Div:
    return html.Div([
        dcc.Store(id="time-view", data=TimeView().to_store()),
        dcc.Store(id="run-axis", data=None),
        dcc.Interval(id="tb-play-tick", interval=PLAY_PERIOD_MS, disabled=True),
        html.Button("◀", id="tb-back", n_clicks=0, title="one interval back", className="tb-button"),
        html.Button("▶ play", id="tb-play", n_clicks=0, title="play the run forward", className="tb-button"),
        html.Button("▶|", id="tb-forward", n_clicks=0, title="one interval forward", className="tb-button"),
        html.Button("● live", id="tb-live", n_clicks=0, title="follow the latest interval", className="tb-button"),
        html.Div(dcc.Slider(id="tb-slider", min=0, max=1, step=1, value=1, marks=None, updatemode="mouseup",
                            allow_direct_input=False, included=False), className="tb-slider"),
        html.Span(id="tb-cursor", className="tb-cursor"),
        html.Span(id="tb-range", className="tb-range"),
        html.Button("whole run", id="tb-reset", n_clicks=0, title="zoom out to the whole run", className="tb-button"),
    ], id="timebar", className="timebar")


def step_view(view: TimeView, axis: Axis, trigger: str | None, *, slider: Any = None) -> TimeView:
    """The time view after a time-bar control (``trigger``: its id). Playback stops at the latest interval."""
    if axis.n == 0:
        return view
    index = axis.index_of(view.cursor_on(axis))
    if trigger == "tb-slider" and isinstance(slider, (int, float)) and not isinstance(slider, bool):
        target = int(slider)
        return view.with_(cursor=None if target >= axis.n - 1 and view.following else axis.time_at(target),
                          playing=False)
    if trigger == "tb-back":
        return view.with_(cursor=axis.time_at(index - 1), playing=False)
    if trigger == "tb-forward":
        return view.with_(cursor=axis.time_at(index + 1), playing=False)
    if trigger == "tb-live":
        return view.with_(cursor=None, playing=False)
    if trigger == "tb-reset":
        return view.with_(start=None, end=None)
    if trigger == "tb-play":
        if view.playing:
            return view.with_(playing=False)
        start = 0 if index >= axis.n - 1 else index  # at the end: play from the start
        return view.with_(cursor=axis.time_at(start), playing=True)
    if trigger == "tb-play-tick" and view.playing:
        if index >= axis.n - 1:
            return view.with_(playing=False)
        return view.with_(cursor=axis.time_at(index + 1))
    return view


def scrubber_marks(axis: Axis) -> dict[int, str]:
    """One mark per day (a few per run at most, so long runs stay readable); every 3 hours on a run of two
    days or less, where one mark a day would leave the scrubber bare."""
    if axis.start is None or axis.n == 0:
        return {}
    if axis.n * axis.step <= pd.Timedelta("2D") and axis.step <= pd.Timedelta("1h"):
        every = max(1, int(pd.Timedelta("3h") / axis.step))
        first = int(-((axis.start - axis.start.floor("3h")) // axis.step) % every)
        return {i: f"{axis.time_at(i):%d %b}" if axis.time_at(i) == axis.time_at(i).normalize()
                else f"{axis.time_at(i):%H:%M}" for i in range(first, axis.n, every)}
    per_day = max(1, int(pd.Timedelta("1D") / axis.step))
    every = per_day * max(1, (axis.n // per_day) // 8 + 1)
    first = int(-((axis.start - axis.start.normalize()) // axis.step) % per_day)  # the first midnight
    return {i: f"{axis.time_at(i):%d %b}" for i in range(first, axis.n, every)}


def register(app: dash.Dash) -> None:
    @app.callback(Output("time-view", "data"), Output("tb-play-tick", "disabled"), Output("tb-play", "children"),
                  Output("tb-slider", "max"), Output("tb-slider", "value"), Output("tb-slider", "marks"),
                  Output("tb-cursor", "children"), Output("tb-range", "children"), Output("tb-live", "className"),
                  Input("tb-slider", "value"), Input("tb-play-tick", "n_intervals"), Input("tb-back", "n_clicks"),
                  Input("tb-forward", "n_clicks"), Input("tb-play", "n_clicks"), Input("tb-live", "n_clicks"),
                  Input("tb-reset", "n_clicks"), Input("run-axis", "data"), Input("time-view", "data"))
    def time_bar(slider: Any, *args: Any) -> tuple[Any, ...]:
        axis_data, stored = args[-2], args[-1]
        axis = Axis.from_store(axis_data)
        before = TimeView.from_store(stored)
        trigger = ctx.triggered_id if isinstance(ctx.triggered_id, str) else None
        view = step_view(before, axis, trigger, slider=slider)
        cursor = view.cursor_on(axis)
        index = axis.index_of(cursor) if cursor is not None else 0
        span = view.range_on(axis)
        if axis.n == 0:
            cursor_text, range_text = "no interval recorded yet", ""
        else:
            cursor_text = f"cursor {fmt(cursor)}" + (" (latest)" if view.following else "")
            zoom = "showing the whole run" if view.start is None else f"zoom {fmt(span[0])} → {fmt(span[1])}"
            range_text = zoom if span else ""
        out_view = view.to_store() if view != before else dash.no_update
        return (out_view, not view.playing, "❚❚ pause" if view.playing else "▶ play", max(axis.n - 1, 1), index,
                scrubber_marks(axis), cursor_text, range_text,
                "tb-button tb-live-on" if view.following else "tb-button")
