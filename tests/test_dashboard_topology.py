"""twin.grid.topology: feeder.json from a pandapower net — geodata when present, else a BFS tree layout."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from twin.grid.topology import (
    TOPOLOGY_FORMAT,
    TopologyError,
    feeder_topology,
    read_feeder_topology,
    tree_layout,
    write_feeder_topology,
)


def _net(geo: list | None) -> dict[str, pd.DataFrame]:
    """0 (ext grid) —trafo— 1; 1—2, 1—3 lines; 3—4 by a closed bus-bus switch; 5 isolated."""
    bus = pd.DataFrame({"name": ["MV", "LV", None, "c", "d", "lonely"], "vn_kv": [20.0, 0.4, 0.4, 0.4, 0.4, 0.4]},
                       index=[0, 1, 2, 3, 4, 5])
    if geo is not None:
        bus["geo"] = geo
    return {
        "bus": bus,
        "line": pd.DataFrame({"from_bus": [1, 1], "to_bus": [2, 3], "name": ["l0", "l1"], "in_service": [True, False]},
                             index=[10, 11]),
        "trafo": pd.DataFrame({"hv_bus": [0], "lv_bus": [1], "name": ["T1"], "in_service": [True]}, index=[0]),
        "switch": pd.DataFrame({"bus": [3, 1], "element": [4, 10], "et": ["b", "l"], "closed": [True, True]}),
        "ext_grid": pd.DataFrame({"bus": [0]}),
    }


def test_tree_layout_by_hand() -> None:
    # 0 ─ 1 ─ {2, 3}; 3 ─ 4.  Leaves in DFS order get x = 0, 1; parents sit over their children.
    xy = tree_layout(["0", "1", "2", "3", "4"], [("0", "1"), ("1", "3"), ("1", "2"), ("3", "4")], ["0"])
    assert xy.loc["2"].tolist() == [0.0, -2.0]
    assert xy.loc["4"].tolist() == [1.0, -3.0]
    assert xy.loc["3"].tolist() == [1.0, -2.0]
    assert xy.loc["1"].tolist() == [0.5, -1.0]
    assert xy.loc["0"].tolist() == [0.5, 0.0]


def test_tree_layout_places_unreached_buses_and_survives_long_chains() -> None:
    xy = tree_layout(["0", "1", "9"], [("0", "1")], ["0"])
    assert xy.loc["9", "y"] == 0.0 and xy.loc["9", "x"] > xy.loc["1", "x"]  # its own tree, to the right
    n = 5000  # deeper than Python's recursion limit
    chain = tree_layout([str(i) for i in range(n)], [(str(i), str(i + 1)) for i in range(n - 1)], ["0"])
    assert chain.loc[str(n - 1), "y"] == -(n - 1)


def test_geodata_is_used_when_every_bus_has_a_point() -> None:
    geo = [json.dumps({"type": "Point", "coordinates": [float(i), 2.0 * i]}) for i in range(5)]
    geo.append({"type": "Point", "coordinates": [9.0, 9.0]})  # pandapower may hold dicts too
    topo = feeder_topology(_net(geo))
    assert topo.layout == "geodata"
    assert topo.buses.loc["3", ["x", "y"]].tolist() == [3.0, 6.0]
    assert topo.buses.loc["5", ["x", "y"]].tolist() == [9.0, 9.0]
    assert topo.lines.loc["11"].tolist() == ["1", "3", "l1", False]
    assert topo.trafos.loc["0"].tolist() == ["0", "1", "T1", True]
    assert topo.links.loc["switch:0"].tolist() == ["3", "4", "switch"]  # bus-bus only; the line switch is not a link
    assert len(topo.links) == 1 and topo.ext_grid_buses == ("0",)


@pytest.mark.parametrize("geo", [None, [None] * 6, ['{"type": "Point", "coordinates": [1, 1]}'] * 6])
def test_tree_layout_when_geodata_is_missing_or_degenerate(geo: list | None) -> None:
    topo = feeder_topology(_net(geo))
    assert topo.layout == "tree"
    y = topo.buses["y"]
    assert y["0"] == 0.0 and y["1"] == -1.0 and y["2"] == -2.0 and y["3"] == -2.0 and y["4"] == -3.0  # via the switch
    assert topo.buses["name"].tolist() == ["MV", "LV", "", "c", "d", "lonely"]


def test_write_read_roundtrip_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "run" / "feeder.json"
    written = write_feeder_topology(_net(None), path)
    back = read_feeder_topology(path)
    pd.testing.assert_frame_equal(back.buses, written.buses)
    pd.testing.assert_frame_equal(back.lines, written.lines)
    assert back.layout == "tree" and back.ext_grid_buses == ("0",)
    assert json.loads(path.read_text())["format"] == TOPOLOGY_FORMAT
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(TopologyError, match="format='something-else'"):
        read_feeder_topology(bad)
    data = json.loads(path.read_text())
    del data["lines"]["to_bus"]
    bad.write_text(json.dumps(data))
    with pytest.raises(TopologyError, match="lines: missing column"):
        read_feeder_topology(bad)
    bad.write_text("{not json")
    with pytest.raises(TopologyError, match="not a readable feeder topology"):
        read_feeder_topology(bad)


@pytest.mark.slow
def test_catalog_feeders() -> None:
    from grids.catalog import load_feeder

    ieee = feeder_topology(load_feeder("ieee-eu-lv"))
    assert ieee.layout == "geodata" and len(ieee.buses) == 907 and len(ieee.lines) == 905
    kerber = feeder_topology(load_feeder("kerber-dorfnetz"))  # ships without geodata
    assert kerber.layout == "tree" and kerber.buses[["x", "y"]].notna().all().all()
    assert kerber.buses.loc[kerber.ext_grid_buses[0], "y"] == 0.0
