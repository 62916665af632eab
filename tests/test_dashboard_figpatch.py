"""dashboards.figpatch: a redrawn figure goes to the browser as the edits of only the properties that changed, and
the browser's figure with the edits applied is the redrawn figure (the oracle: a plain applier of Dash's patch
operations, below; the browser's own applier is checked in Chromium by test_dashboard_control_room); the map
callback of a synthetic feeder sends nothing at a parked cursor, and never a dash.Patch (a Patch arriving after
the user left the page throws in dash-renderer)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.io.json import to_json_plotly

from dashboards import create_app
from dashboards.figpatch import figure_digests, figure_update
from dashboards.synthetic import SyntheticTwin, radial_topology


def _json(value: Any) -> Any:
    return json.loads(to_json_plotly(value))


def _apply(target: Any, message: dict[str, Any]) -> Any:
    """Dash's Assign / Delete / Append operations, as dash-renderer's patch.ts applies them."""
    out = copy.deepcopy(target)
    for op in _json(message)["operations"]:
        *where, last = op["location"]
        node = out
        for key in where:
            node = node[key]
        if op["operation"] == "Assign":
            node[last] = op["params"]["value"]
        elif op["operation"] == "Delete":
            del node[last]
        elif op["operation"] == "Append":
            node[last].append(op["params"]["value"])
        else:
            raise AssertionError(f"unexpected patch operation {op['operation']}")
    return out


def _figure(colours: list[float], *, ring: bool = False, title: str = "") -> go.Figure:
    fig = go.Figure([go.Scatter(x=np.arange(3.0), y=np.zeros(3), mode="lines", name="lines"),
                     go.Scatter(x=np.arange(3.0), y=np.ones(3), mode="markers", name="buses",
                                marker=dict(color=np.array(colours), size=5), hovertext=[f"{c} pu" for c in colours])])
    if ring:
        fig.add_trace(go.Scatter(x=[1.0], y=[1.0], mode="markers", name="voltage outside"))
    fig.update_layout(uirevision="feeder")
    if title:
        fig.update_layout(title=title)
    return fig


def _operations(message: dict[str, Any]) -> list[tuple[str, list[Any]]]:
    return [(op["operation"], op["location"]) for op in _json(message)["operations"]]


def test_the_first_figure_goes_whole_and_an_unchanged_one_as_an_empty_patch() -> None:
    fig = _figure([1.0, 0.99, 0.98])
    first = figure_update(fig, None)
    assert first["figure"] is fig and "operations" not in first
    again = figure_update(_figure([1.0, 0.99, 0.98]), first["digests"])
    assert _operations(again) == [] and again["digests"] == first["digests"]
    assert again["base"] == first["digests"]["id"]  # the browser applies edits only to the figure they were made for


def test_a_new_interval_sends_only_the_colours_and_texts_that_changed() -> None:
    before = _figure([1.0, 0.99, 0.98])
    after = _figure([1.0, 0.97, 0.98])
    update = figure_update(after, figure_digests(before))
    assert _operations(update) == [("Assign", ["data", 1, "hovertext"]), ("Assign", ["data", 1, "marker"])]
    assert _apply(_json(before), update) == _json(after)


def test_traces_and_layout_keys_that_come_and_go_are_added_and_removed() -> None:
    plain, ringed = _figure([1.0, 0.9, 1.0]), _figure([1.0, 0.9, 1.0], ring=True, title="worst moment")
    grow = figure_update(ringed, figure_digests(plain))
    assert ("Append", ["data"]) in _operations(grow)
    assert _apply(_json(plain), grow) == _json(ringed)
    shrink = figure_update(plain, figure_digests(ringed))
    assert ("Delete", ["data", 2]) in _operations(shrink) and ("Delete", ["layout", "title"]) in _operations(shrink)
    assert _apply(_json(ringed), shrink) == _json(plain)


def test_digests_the_browser_mangled_get_the_whole_figure() -> None:
    fig = _figure([1.0, 1.0, 1.0])
    good = figure_digests(fig)
    for sent in ("x", {"data": "x", "layout": {}}, {"data": [{"x": 1}], "layout": {}}, {"data": [], "layout": []},
                 {**good, "id": 7}, {"data": good["data"], "layout": good["layout"]}):
        assert figure_update(fig, sent)["figure"] is fig, sent


def test_the_map_at_a_parked_cursor_sends_no_figure(tmp_path: Path) -> None:
    run = tmp_path / "run"
    twin = SyntheticTwin(run, radial_topology(400), n_intervals=8, n_assets=20, seed=1)
    twin.write_start()
    twin.advance(4)
    client = create_app(run).server.test_client()
    key = next(k for k in create_app(run).callback_map if "ov-map-server.data" in k and "ov-caption" in k)

    def refresh(view: Any, sent: Any) -> tuple[int, dict[str, Any]]:
        body = {"output": key, "outputs": [{"id": i, "property": p} for i, p in
                                           (o.rsplit(".", 1) for o in key.strip(".").split("..."))],
                "inputs": [{"id": "run-version", "property": "data", "value": [1]},
                           {"id": "time-view", "property": "data", "value": view},
                           {"id": "ov-policy", "property": "value", "value": "scada"},
                           {"id": "ov-map", "property": "clickData", "value": None},
                           {"id": "ov-map-mode", "property": "value", "value": None}],  # no three phases: ignored
                "state": [{"id": "ov-map", "property": "relayoutData", "value": None},
                          {"id": "ov-map-sent", "property": "data", "value": sent}],
                "changedPropIds": ["run-version.data"]}
        response = client.post("/_dash-update-component", json=body)
        assert response.status_code == 200, response.data[:300]
        assert b"__dash_patch_update" not in response.data  # plain data: nothing for dash-renderer to patch
        return len(response.data), json.loads(response.data)["response"]

    parked = {"cursor": "2016-06-06T00:15:00+00:00"}
    whole, first = refresh(parked, None)
    assert "data" in first["ov-map-server"]["data"]["figure"]  # the whole figure
    held = first["ov-map-server"]["data"]["digests"]  # what APPLY_FIGURE_JS keeps in ov-map-sent
    twin.advance(2)  # two more intervals: the map at the parked cursor does not change
    small, second = refresh(parked, held)
    assert second["ov-map-server"]["data"]["operations"] == [] and small < whole / 20
    moved, third = refresh({"cursor": "2016-06-06T00:30:00+00:00"}, held)
    changed = {tuple(op["location"][:3]) for op in third["ov-map-server"]["data"]["operations"]}
    assert ("data", 0, "x") not in changed and moved < whole  # coordinates stay; colours and texts move


def test_the_maps_hover_numbers_are_arrays_beside_static_labels(tmp_path: Path) -> None:
    from dashboards.data import RunData
    from dashboards.pages import map_view

    run = tmp_path / "run"
    twin = SyntheticTwin(run, radial_topology(6), n_intervals=4, n_assets=2, seed=1)
    twin.write_start()
    twin.advance(2)
    data = RunData(run)
    fig, _ = map_view(data, policy="scada", view={"cursor": "2016-06-06T00:15:00+00:00"}, click=None)
    buses = next(t for t in fig.data if t.name == "buses")
    vm = data.table("scada", "vm_pu").iloc[1]
    assert buses.hovertext is None and buses.hovertemplate == "%{text}: %{marker.color:.4f} pu<extra></extra>"
    assert list(buses.text) == [f"bus {b}" for b in vm.index]
    assert np.allclose(np.asarray(buses.marker.color, float), vm.to_numpy(float), atol=1e-6)  # float32 of the row
    branches = next(t for t in fig.data if t.name == "branches")
    loading = data.table("scada", "line_loading_percent").iloc[1]
    assert branches.hovertemplate == "%{text}: %{customdata:.1f} %<extra></extra>"
    assert list(branches.text[:len(loading)]) == [f"line {i} (L{i})" for i in loading.index]  # radial_topology names
    assert np.allclose(np.asarray(branches.customdata[:len(loading)], float), loading.to_numpy(float), atol=0.051)
    empty = tmp_path / "empty"
    SyntheticTwin(empty, radial_topology(6), n_intervals=4, n_assets=2, seed=1).write_start()
    drawn, _ = map_view(RunData(empty), policy="scada", view=None, click=None)  # no interval: no numbers yet
    buses = next(t for t in drawn.data if t.name == "buses")
    assert buses.hovertemplate is None and set(buses.hovertext) == {f"bus {b}: no data" for b in range(6)}
