"""Server-side paged tables: filter a frame, cut one page, and the page controls (previous / next) that go
with it. Only the rows of the page shown travel to the browser, so a 7,000-asset fleet stays light.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
from dash import html

from dashboards.components import html_table

__all__ = ["PAGE_SIZE", "filter_rows", "natural_key", "next_page", "page_controls", "paged_table"]

PAGE_SIZE = 25
_MAX_FILTER = 100


def natural_key(text: Any) -> tuple[Any, ...]:
    """Sort key that orders ``p-2`` before ``p-10`` (digit runs compare as numbers)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower())
                 for part in re.split(r"(\d+)", str(text)) if part)


def filter_rows(frame: pd.DataFrame, text: Any, *, columns: list[str]) -> pd.DataFrame:
    """Rows where any of ``columns`` contains every word of ``text`` (case-insensitive; not a regex)."""
    if not isinstance(text, str) or not text.strip() or frame.empty:
        return frame
    words = text.strip().lower()[:_MAX_FILTER].split()
    haystack = frame[columns].astype(str).agg(" ".join, axis=1).str.lower()
    keep = pd.Series(True, index=frame.index)
    for word in words:
        keep &= haystack.str.contains(word, regex=False)
    return frame[keep]


def next_page(page: Any, *, trigger: str | None, prev_id: str, next_id: str, n_rows: int,
              page_size: int = PAGE_SIZE) -> int:
    """The page to show after ``trigger`` (the id of the control that changed): previous / next step within
    the pages there are; any other trigger (a filter) goes back to the first page."""
    last = max(0, math.ceil(n_rows / page_size) - 1)
    current = page if isinstance(page, int) and not isinstance(page, bool) else 0
    if trigger == prev_id:
        current -= 1
    elif trigger == next_id:
        current += 1
    elif trigger is not None:
        current = 0
    return min(max(current, 0), last)


def page_controls(prefix: str) -> html.Div:
    return html.Div([
        html.Button("◀ previous", id=f"{prefix}-prev", n_clicks=0, className="button button-quiet"),
        html.Span(id=f"{prefix}-page-label", className="muted page-label"),
        html.Button("next ▶", id=f"{prefix}-next", n_clicks=0, className="button button-quiet"),
    ], className="pager")


def paged_table(frame: pd.DataFrame, *, page: int, table_id: str, page_size: int = PAGE_SIZE,
                formats: Mapping[str, Callable[[Any], str]] | None = None, empty: str = "nothing to show",
                cells: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> tuple[html.Div, str]:
    """(the rows of page ``page`` as a table, "rows a–b of N"). ``cells`` may turn the page's frame into
    components (links) after cutting, so only shown rows pay for them."""
    n = len(frame)
    start = page * page_size
    shown = frame.iloc[start:start + page_size]
    label = f"rows {start + 1:,}–{start + len(shown):,} of {n:,}" if n else "no rows"
    if cells is not None and len(shown):
        shown = cells(shown)
    return html_table(shown, max_rows=page_size, formats=formats, table_id=table_id, empty=empty), label
