"""Sending a redrawn figure as only what changed: a digest of every trace property and layout key, kept by the
browser beside the figure, and the list of edits that turns the figure those digests describe into the new one.

A live refresh of the 9,099-bus map redraws the whole figure (~2 MB of coordinates, colours and hover text);
with the cursor parked, nothing in it changes, and with the cursor following the run only the colours and
texts of the new interval do. The edits travel as plain data (Dash's Assign / Delete / Append operations, but
not as a ``dash.Patch``) and the browser applies them itself (``APPLY_FIGURE_JS``): a Patch that arrives after
the user left the page meets no store and dash-renderer throws "Cannot patch undefined"; plain data for a
component that is gone is dropped. Each message names the digests it was computed against (``base``); the
browser applies edits only to the figure those digests describe, and otherwise forgets its digests so the next
refresh sends the whole figure.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import plotly.graph_objects as go

__all__ = ["APPLY_FIGURE_JS", "figure_digests", "figure_update"]


def figure_update(fig: go.Figure, sent: Any) -> dict[str, Any]:
    """The message that brings the browser to ``fig``: ``{"figure": fig}`` when ``sent`` (the digests the
    browser holds, as it sent them back) describes no figure, else ``{"operations": [...], "base": <id of
    sent>}``; both carry ``digests``, the digests of ``fig`` (with their ``id``) for the browser to keep."""
    full = fig.to_plotly_json()
    traces: list[dict[str, Any]] = list(full.get("data") or [])
    layout: dict[str, Any] = dict(full.get("layout") or {})
    digests: dict[str, Any] = {"data": [{k: _digest(v) for k, v in t.items()} for t in traces],
                               "layout": {k: _digest(v) for k, v in layout.items()}}
    digests["id"] = _digest([digests["data"], digests["layout"]])
    old = _valid(sent)
    if old is None:
        return {"figure": fig, "digests": digests}
    ops: list[dict[str, Any]] = []

    def assign(location: list[Any], value: Any) -> None:
        ops.append({"operation": "Assign", "location": location, "params": {"value": value}})

    for i, (trace, now) in enumerate(zip(traces, digests["data"], strict=True)):
        if i >= len(old["data"]):
            ops.append({"operation": "Append", "location": ["data"], "params": {"value": trace}})
            continue
        before = old["data"][i]
        for key, digest in now.items():
            if before.get(key) != digest:
                assign(["data", i, key], trace[key])
        ops.extend({"operation": "Delete", "location": ["data", i, key], "params": {}}
                   for key in sorted(before.keys() - now.keys()))
    ops.extend({"operation": "Delete", "location": ["data", i], "params": {}}
               for i in reversed(range(len(traces), len(old["data"]))))
    for key, digest in digests["layout"].items():
        if old["layout"].get(key) != digest:
            assign(["layout", key], layout[key])
    ops.extend({"operation": "Delete", "location": ["layout", key], "params": {}}
               for key in sorted(old["layout"].keys() - digests["layout"].keys()))
    return {"operations": ops, "base": old["id"], "digests": digests}


#: The browser's half: apply a figure_update message to the graph. Arguments: the message (from a store), the
#: graph's id, the figure the graph holds, the digests held beside it; returns (figure, digests to hold). Edits
#: are applied copy-on-write along their paths (Plotly.react redraws what changed, and the figure it held is
#: never mutated). The zoom the graph shows when the message arrives is kept: a zoom made while a refresh was
#: on its way (its request carried the zoom from before) stays too, which Plotly's ``uirevision`` does not
#: do when Dash replaces the figure.
APPLY_FIGURE_JS = """
function(message, graphId, shownFigure, heldDigests) {
    const noUpdate = window.dash_clientside.no_update;
    if (!message || typeof message !== 'object' || !message.digests) { return [noUpdate, noUpdate]; }
    let fig;
    if (message.figure) {
        fig = message.figure;
    } else {
        const ops = message.operations;
        if (!Array.isArray(ops) || !shownFigure || !heldDigests || heldDigests.id !== message.base) {
            return [noUpdate, null];  // edits for a figure this graph does not hold: the next refresh sends it whole
        }
        if (ops.length === 0) { return [noUpdate, message.digests]; }
        const root = Object.assign({}, shownFigure);
        const copied = new Set();
        const container = function (location) {  // the node at location, copied once per message
            let node = root;
            for (let i = 0; i < location.length; i++) {
                const path = JSON.stringify(location.slice(0, i + 1));
                if (!copied.has(path)) {
                    const child = node[location[i]];
                    node[location[i]] = Array.isArray(child) ? child.slice() : Object.assign({}, child || {});
                    copied.add(path);
                }
                node = node[location[i]];
            }
            return node;
        };
        for (const op of ops) {
            const where = op.location.slice(0, -1), last = op.location[op.location.length - 1];
            if (op.operation === 'Assign') {
                container(where)[last] = op.params.value;
            } else if (op.operation === 'Delete') {
                const node = container(where);
                if (Array.isArray(node)) { node.splice(last, 1); } else { delete node[last]; }
            } else if (op.operation === 'Append') {
                container(op.location).push(op.params.value);
            } else {
                return [noUpdate, null];
            }
        }
        fig = root;
    }
    const gd = document.querySelector('#' + graphId + ' .js-plotly-plot');
    const shown = gd && gd.layout;
    if (shown) {
        const layout = Object.assign({}, fig.layout || {});
        for (const axis of ['xaxis', 'yaxis']) {
            const now = shown[axis];
            if (now && now.autorange === false && Array.isArray(now.range) && now.range.length === 2) {
                layout[axis] = Object.assign({}, layout[axis] || {}, {range: now.range.slice(), autorange: false});
            }
        }
        fig = Object.assign({}, fig, {layout: layout});
    }
    return [fig, message.digests];
}
"""


def figure_digests(fig: go.Figure) -> dict[str, Any]:
    digests: dict[str, Any] = figure_update(fig, None)["digests"]
    return digests


def _valid(sent: Any) -> dict[str, Any] | None:
    """``sent`` when it has the shape figure_update gives its digests (it comes from the browser), else None."""
    if not isinstance(sent, dict) or not isinstance(sent.get("data"), list) or not isinstance(sent.get("layout"), dict):
        return None
    if not isinstance(sent.get("id"), str):
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
