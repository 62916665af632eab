"""The run-wide time navigation every chart and the map share: the run's time axis, the user's zoom range and
cursor (held in the browser as one ``dcc.Store``), how chart events and the time bar change them, and how a
time chart is drawn with them (range, cursor line, shaded fault and demand-response windows).

Pure functions of plain values: the store's JSON comes from the browser and may be anything, so
``TimeView.from_store`` accepts only what it understands and falls back to "whole run, follow the latest".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go

__all__ = ["Axis", "TimeView", "click_time", "decorate", "zoom_from_relayout"]

#: Fill colour and opacity of shaded windows by category.
WINDOW_STYLE = {"fault": ("#c62828", 0.10), "dr": ("#f0a202", 0.16)}
CURSOR_COLOUR = "#14213d"


def _stamp(value: Any) -> pd.Timestamp | None:
    """A UTC timestamp from text or a number (plotly sends dates as text); None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str) and (len(value) > 40 or not value.strip()):
        return None
    try:
        stamp = pd.Timestamp(value, unit="ms") if isinstance(value, (int, float)) else pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError, OSError):
        return None
    if pd.isna(stamp) or not pd.Timestamp("1900-01-01") <= stamp.tz_localize(None) <= pd.Timestamp("2200-01-01"):
        return None
    # Plotly shows and returns UTC times without a zone (the figures are drawn in UTC).
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _text_stamp(value: Any) -> pd.Timestamp | None:
    return _stamp(value) if isinstance(value, str) else None


@dataclass(frozen=True)
class Axis:
    """The intervals recorded so far: ``n`` intervals of ``step`` from ``start`` (labelled by their start)."""

    start: pd.Timestamp | None
    step: pd.Timedelta
    n: int

    @classmethod
    def of(cls, index: pd.DatetimeIndex, step: pd.Timedelta) -> Axis:
        if len(index) == 0:
            return cls(None, step, 0)
        return cls(pd.Timestamp(index[0]), step, len(index))

    @property
    def end(self) -> pd.Timestamp | None:
        """End of the last recorded interval."""
        return None if self.start is None else self.start + self.n * self.step

    @property
    def latest(self) -> pd.Timestamp | None:
        return None if self.start is None or self.n == 0 else self.start + (self.n - 1) * self.step

    def index_of(self, time: pd.Timestamp) -> int:
        """The interval holding ``time``, clipped to the recorded ones."""
        if self.start is None or self.n == 0:
            return 0
        i = int((time - self.start) // self.step)
        return min(max(i, 0), self.n - 1)

    def time_at(self, index: int) -> pd.Timestamp | None:
        if self.start is None or self.n == 0:
            return None
        return self.start + min(max(int(index), 0), self.n - 1) * self.step

    def to_store(self) -> dict[str, Any]:
        return {"start": self.start.isoformat() if self.start is not None else None,
                "step_s": self.step.total_seconds(), "n": self.n}

    @classmethod
    def from_store(cls, data: Any) -> Axis:
        if not isinstance(data, Mapping):
            return cls(None, pd.Timedelta("15min"), 0)
        step_s, n = data.get("step_s"), data.get("n")
        ok = (isinstance(step_s, (int, float)) and not isinstance(step_s, bool) and math.isfinite(step_s)
              and 0 < step_s <= 86400 * 31 and isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 10**7)
        start = _stamp(data.get("start"))
        if not ok or start is None:
            return cls(None, pd.Timedelta("15min"), 0)
        return cls(start, pd.Timedelta(seconds=float(step_s)), int(n))


@dataclass(frozen=True)
class TimeView:
    """What the user looks at: a zoom range (None: the whole run) and a cursor (None: the latest interval,
    following a live run); ``playing`` while the time bar plays the run forward."""

    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    cursor: pd.Timestamp | None = None
    playing: bool = False

    @classmethod
    def from_store(cls, data: Any) -> TimeView:
        if not isinstance(data, Mapping):
            return cls()
        start, end = _stamp(data.get("start")), _stamp(data.get("end"))
        if start is None or end is None or end <= start:
            start = end = None
        return cls(start=start, end=end, cursor=_stamp(data.get("cursor")), playing=data.get("playing") is True)

    def to_store(self) -> dict[str, Any]:
        iso = (lambda t: t.isoformat() if t is not None else None)
        return {"start": iso(self.start), "end": iso(self.end), "cursor": iso(self.cursor), "playing": self.playing}

    @property
    def following(self) -> bool:
        return self.cursor is None

    def cursor_on(self, axis: Axis) -> pd.Timestamp | None:
        """The interval the cursor is in (the latest when following), or None before any interval."""
        if axis.n == 0:
            return None
        return axis.time_at(axis.index_of(self.cursor)) if self.cursor is not None else axis.latest

    def range_on(self, axis: Axis) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        if self.start is not None and self.end is not None:
            return self.start, self.end
        if axis.start is None or axis.end is None:
            return None
        return axis.start, axis.end

    def with_(self, **changes: Any) -> TimeView:
        return TimeView(**{**self.__dict__, **changes})


def zoom_from_relayout(relayout: Any) -> tuple[pd.Timestamp, pd.Timestamp] | str | None:
    """A chart's ``relayoutData`` as a new x range, ``"reset"`` (autorange: a double click) or None (the event
    is not about the time axis: a legend click, the y axis, autosize)."""
    if not isinstance(relayout, Mapping):
        return None
    for key, value in relayout.items():
        if not isinstance(key, str) or not key.startswith("xaxis"):
            continue
        axis = key.split(".", 1)[0]
        if key.endswith(".autorange") and value is True:
            return "reset"
        # A date axis reports its range as text; numbers come from a chart without a time axis (a blank one).
        if key == f"{axis}.range" and isinstance(value, list) and len(value) == 2:
            lo, hi = _text_stamp(value[0]), _text_stamp(value[1])
        elif key == f"{axis}.range[0]":
            lo, hi = _text_stamp(value), _text_stamp(relayout.get(f"{axis}.range[1]"))
        else:
            continue
        if lo is not None and hi is not None and hi > lo:
            return lo, hi
    return None


def click_time(click: Any) -> pd.Timestamp | None:
    """The time of the point a user clicked on a time chart (``clickData``), else None."""
    if not isinstance(click, Mapping):
        return None
    points = click.get("points")
    if not isinstance(points, list) or not points or not isinstance(points[0], Mapping):
        return None
    return _stamp(points[0].get("x"))


def _naive(t: pd.Timestamp) -> pd.Timestamp:
    # Plotly has no time zones: draw everything in UTC wall time.
    return t.tz_convert("UTC").tz_localize(None) if t.tzinfo is not None else t


def decorate(fig: go.Figure, view: TimeView, axis: Axis, windows: pd.DataFrame | None = None) -> go.Figure:
    """Give a time chart the shared range, the cursor line and the shaded windows (``windows``: rows with
    ``start``, ``end``, ``category`` ("fault" | "dr") and ``label``). Mutates and returns ``fig``."""
    span = view.range_on(axis)
    if span is not None:
        fig.update_xaxes(range=[_naive(span[0]), _naive(span[1])], type="date", autorange=False)
    shapes = []
    annotations = []
    if windows is not None and len(windows):
        for i, row in enumerate(windows.itertuples(index=False)):
            colour, opacity = WINDOW_STYLE.get(str(row.category), WINDOW_STYLE["fault"])
            x0, x1 = _naive(pd.Timestamp(row.start)), _naive(pd.Timestamp(row.end))
            shapes.append(dict(type="rect", xref="x", yref="paper", x0=x0, x1=x1, y0=0, y1=1, fillcolor=colour,
                               opacity=opacity, line_width=0, layer="below", name=f"window: {row.label}"))
            annotations.append(dict(x=x0, xref="x", y=1, yref="paper", yanchor="top", xanchor="left",
                                    text=str(row.label), showarrow=False, yshift=-12 * (i % 3),
                                    font=dict(size=10, color=colour)))
    cursor = view.cursor_on(axis)
    if cursor is not None:
        shapes.append(dict(type="line", xref="x", yref="paper", x0=_naive(cursor), x1=_naive(cursor), y0=0, y1=1,
                           line=dict(color=CURSOR_COLOUR, width=1.5, dash="dot"), name="cursor"))
    fig.update_layout(shapes=list(fig.layout.shapes or ()) + shapes,
                      annotations=list(fig.layout.annotations or ()) + annotations)
    return fig
