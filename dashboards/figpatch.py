"""Sending a redrawn figure as only what changed: a digest of every trace property and layout key, kept by the
browser beside the figure, and a ``dash.Patch`` of the properties whose digest differs.

A live refresh of the 9,099-bus map redraws the whole figure (~2 MB of coordinates, colours and hover text);
with the cursor parked, nothing in it changes, and with the cursor following the run only the colours and
texts of the new interval do. The browser applies the patch to the figure it holds, so the figure it ends with
is the one the server drew. Dash drops the answer of a request a newer one for the same outputs superseded, so
a patch always meets the figure its digests describe.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import plotly.graph_objects as go
from dash import Patch

__all__ = ["figure_digests", "figure_update"]


def figure_update(fig: go.Figure, sent: Any) -> tuple[Any, dict[str, Any]]:
    """(what to send: ``fig`` itself when ``sent`` describes no figure, else a Patch turning the figure
    ``sent`` describes into ``fig``; the digests of ``fig``, for the browser to send back next time)."""
    full = fig.to_plotly_json()
    traces: list[dict[str, Any]] = list(full.get("data") or [])
    layout: dict[str, Any] = dict(full.get("layout") or {})
    digests = {"data": [{k: _digest(v) for k, v in t.items()} for t in traces],
               "layout": {k: _digest(v) for k, v in layout.items()}}
    old = _valid(sent)
    if old is None:
        return fig, digests
    patch = Patch()
    for i, (trace, now) in enumerate(zip(traces, digests["data"], strict=True)):
        if i >= len(old["data"]):
            patch["data"].append(trace)
            continue
        before = old["data"][i]
        for key, digest in now.items():
            if before.get(key) != digest:
                patch["data"][i][key] = trace[key]
        for key in before.keys() - now.keys():
            del patch["data"][i][key]
    for i in reversed(range(len(traces), len(old["data"]))):
        del patch["data"][i]
    for key, digest in digests["layout"].items():
        if old["layout"].get(key) != digest:
            patch["layout"][key] = layout[key]
    for key in old["layout"].keys() - digests["layout"].keys():
        del patch["layout"][key]
    return patch, digests


def figure_digests(fig: go.Figure) -> dict[str, Any]:
    return figure_update(fig, None)[1]


def _valid(sent: Any) -> dict[str, Any] | None:
    """``sent`` when it has the shape figure_update gives its digests (it comes from the browser), else None."""
    if not isinstance(sent, dict) or not isinstance(sent.get("data"), list) or not isinstance(sent.get("layout"), dict):
        return None
    parts = [*sent["data"], sent["layout"]]
    if not all(isinstance(p, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in p.items())
               for p in parts):
        return None
    return sent


def _digest(value: Any) -> str:
    h = hashlib.blake2b(digest_size=8)
    _feed(h, value)
    return h.hexdigest()


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, np.ndarray):
        h.update(f"a{value.dtype.str}{value.shape}".encode())
        if value.dtype == object:
            _feed(h, value.tolist())
        else:
            h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        h.update(b"{")
        for key in sorted(value, key=str):
            h.update(repr(key).encode())
            _feed(h, value[key])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        try:
            h.update(b"l" + json.dumps(value).encode())
        except TypeError:  # numpy scalars, nested arrays: one by one
            h.update(b"L")
            for item in value:
                _feed(h, item)
    else:
        h.update(b"s" + repr(value).encode())
