"""The feeder's drawable topology: bus positions and branches as from/to bus pairs, stored as ``RUN/feeder.json``.

Owns the one place that turns a pandapower net into something a figure can draw without pandapower:
bus x/y from the net's GeoJSON geodata (``net.bus.geo``), or, when that is missing or degenerate, a
deterministic tree layout by breadth-first search from the external-grid bus. The net is only read
(duck-typed as a mapping of DataFrames), so this module needs no pandapower import.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "FEEDER_FILENAME",
    "TOPOLOGY_FORMAT",
    "FeederTopology",
    "TopologyError",
    "feeder_topology",
    "read_feeder_topology",
    "tree_layout",
    "write_feeder_topology",
]

FEEDER_FILENAME = "feeder.json"
TOPOLOGY_FORMAT = "gridtwin-feeder-topology/1"


class TopologyError(ValueError):
    """A feeder.json that cannot be used; the message names the field."""


@dataclass(frozen=True)
class FeederTopology:
    """Drawable feeder. All ids are strings, matching the column labels of the run store's tables.

    ``buses``: index bus id; columns x, y, name, vn_kv. ``lines``: index line id; from_bus, to_bus, name,
    in_service. ``trafos``: index trafo id; hv_bus, lv_bus, name, in_service. ``links``: other bus-to-bus
    connections drawn without a loading (closed bus-bus switches, three-winding transformer windings);
    columns from_bus, to_bus, kind. ``layout`` is ``"geodata"`` or ``"tree"``.
    """

    buses: pd.DataFrame
    lines: pd.DataFrame
    trafos: pd.DataFrame
    links: pd.DataFrame
    ext_grid_buses: tuple[str, ...]
    layout: str

    def to_dict(self) -> dict[str, Any]:
        def columns(frame: pd.DataFrame) -> dict[str, list[Any]]:
            out: dict[str, list[Any]] = {"id": [str(i) for i in frame.index]}
            for col in frame.columns:
                out[str(col)] = [None if isinstance(v, float) and math.isnan(v) else v for v in frame[col].tolist()]
            return out

        return {
            "format": TOPOLOGY_FORMAT,
            "layout": self.layout,
            "ext_grid_buses": list(self.ext_grid_buses),
            "buses": columns(self.buses),
            "lines": columns(self.lines),
            "trafos": columns(self.trafos),
            "links": columns(self.links),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeederTopology:
        if data.get("format") != TOPOLOGY_FORMAT:
            raise TopologyError(f"format={data.get('format')!r}: expected {TOPOLOGY_FORMAT!r}")
        required = {
            "buses": ("x", "y", "name", "vn_kv"),
            "lines": ("from_bus", "to_bus", "name"),
            "trafos": ("hv_bus", "lv_bus", "name"),
            "links": ("from_bus", "to_bus", "kind"),
        }
        frames = {}
        for key, cols in required.items():
            table = data.get(key)
            if not isinstance(table, Mapping) or "id" not in table:
                raise TopologyError(f"{key}={table!r}: expected an object of columns with an 'id' column")
            missing = [c for c in cols if c not in table]
            if missing:
                raise TopologyError(f"{key}: missing column(s) {', '.join(missing)}")
            try:
                frame = pd.DataFrame({c: table[c] for c in cols}, index=pd.Index([str(i) for i in table["id"]], name="id"))
            except ValueError as exc:
                raise TopologyError(f"{key}: columns of different lengths ({exc})") from None
            if key in ("lines", "trafos"):
                frame["in_service"] = [bool(v) for v in table.get("in_service", [True] * len(frame))]
            frames[key] = frame
        try:
            frames["buses"] = frames["buses"].astype({"x": float, "y": float, "vn_kv": float})
        except (TypeError, ValueError) as exc:
            raise TopologyError(f"buses: x, y and vn_kv must be numbers ({exc})") from None
        for key, cols in (("lines", ("from_bus", "to_bus")), ("trafos", ("hv_bus", "lv_bus")), ("links", ("from_bus", "to_bus"))):
            frames[key] = frames[key].astype({c: str for c in cols})
        return cls(
            buses=frames["buses"],
            lines=frames["lines"],
            trafos=frames["trafos"],
            links=frames["links"],
            ext_grid_buses=tuple(str(b) for b in data.get("ext_grid_buses", [])),
            layout=str(data.get("layout", "")),
        )


def _sort_key(label: str) -> tuple[int, int | str]:
    return (0, int(label)) if label.lstrip("-").isdigit() else (1, label)


def _point(geo: Any) -> tuple[float, float] | None:
    """(x, y) of a GeoJSON Point given as a string or a dict; None for anything else."""
    if isinstance(geo, str):
        try:
            geo = json.loads(geo)
        except ValueError:
            return None
    if not isinstance(geo, Mapping) or geo.get("type") != "Point":
        return None
    coords = geo.get("coordinates")
    if not isinstance(coords, (list, tuple)) or len(coords) < 2:
        return None
    try:
        x, y = float(coords[0]), float(coords[1])
    except (TypeError, ValueError):
        return None
    return (x, y) if pd.notna(x) and pd.notna(y) else None


def _geodata(bus: pd.DataFrame) -> pd.DataFrame | None:
    """Bus x/y from ``bus.geo`` when every bus has a point and they are not all the same point."""
    if "geo" not in bus.columns or len(bus) == 0:
        return None
    points = [_point(g) for g in bus["geo"]]
    if any(p is None for p in points) or len(set(points)) < 2:
        return None
    return pd.DataFrame(points, index=bus.index.astype(str), columns=["x", "y"])


def tree_layout(buses: list[str], edges: list[tuple[str, str]], roots: list[str]) -> pd.DataFrame:
    """Layered tree layout: y = -BFS depth from the roots; leaves spaced by one in DFS order, parents centred
    over their children. Deterministic (neighbours visited in bus-id order); buses not reached from a root
    start trees of their own. Returns x, y by bus id."""
    known = set(buses)
    adjacency: dict[str, list[str]] = {b: [] for b in buses}
    for a, b in edges:
        if a in known and b in known and a != b:
            adjacency[a].append(b)
            adjacency[b].append(a)
    for nbrs in adjacency.values():
        nbrs.sort(key=_sort_key)
    children: dict[str, list[str]] = {b: [] for b in buses}
    depth: dict[str, int] = {}
    tree_roots: list[str] = []
    for root in [r for r in roots if r in known] + sorted(buses, key=_sort_key):
        if root in depth:
            continue
        tree_roots.append(root)
        depth[root] = 0
        queue = deque([root])
        while queue:
            bus = queue.popleft()
            for nbr in adjacency[bus]:
                if nbr not in depth:
                    depth[nbr] = depth[bus] + 1
                    children[bus].append(nbr)
                    queue.append(nbr)
    x: dict[str, float] = {}
    next_leaf = 0.0
    for root in tree_roots:
        # Iterative post-order: a deep radial feeder would overflow recursion.
        stack: list[tuple[str, bool]] = [(root, False)]
        while stack:
            bus, expanded = stack.pop()
            kids = children[bus]
            if not kids:
                x[bus] = next_leaf
                next_leaf += 1.0
            elif expanded:
                x[bus] = (x[kids[0]] + x[kids[-1]]) / 2.0
            else:
                stack.append((bus, True))
                stack.extend((kid, False) for kid in reversed(kids))
        next_leaf += 1.0  # a gap between separate trees
    return pd.DataFrame({"x": [x[b] for b in buses], "y": [-float(depth[b]) for b in buses]}, index=pd.Index(buses, name="id"))


def _table(net: Mapping[str, Any], name: str) -> pd.DataFrame:
    try:
        frame = net[name]
    except (KeyError, AttributeError):
        return pd.DataFrame()
    return frame if isinstance(frame, pd.DataFrame) else pd.DataFrame()


def _names(frame: pd.DataFrame) -> list[str]:
    if "name" not in frame.columns:
        return [""] * len(frame)
    return ["" if pd.isna(n) else str(n) for n in frame["name"]]


def _in_service(frame: pd.DataFrame) -> list[bool]:
    if "in_service" not in frame.columns:
        return [True] * len(frame)
    return [bool(v) for v in frame["in_service"].fillna(True)]


def feeder_topology(net: Mapping[str, Any]) -> FeederTopology:
    """The drawable topology of a pandapower net (read only)."""
    bus = _table(net, "bus")
    if len(bus) == 0:
        raise TopologyError("net.bus is empty: nothing to draw")
    bus_ids = [str(b) for b in bus.index]
    line, trafo = _table(net, "line"), _table(net, "trafo")
    lines = pd.DataFrame(
        {"from_bus": line.get("from_bus", pd.Series(dtype=int)).astype(str).tolist(),
         "to_bus": line.get("to_bus", pd.Series(dtype=int)).astype(str).tolist(), "name": _names(line),
         "in_service": _in_service(line)},
        index=pd.Index(line.index.astype(str), name="id"),
    )
    trafos = pd.DataFrame(
        {"hv_bus": trafo.get("hv_bus", pd.Series(dtype=int)).astype(str).tolist(),
         "lv_bus": trafo.get("lv_bus", pd.Series(dtype=int)).astype(str).tolist(), "name": _names(trafo),
         "in_service": _in_service(trafo)},
        index=pd.Index(trafo.index.astype(str), name="id"),
    )
    link_rows: list[tuple[str, str, str, str]] = []
    switch = _table(net, "switch")
    if len(switch):
        closed = switch["closed"].astype(bool) if "closed" in switch.columns else pd.Series(True, index=switch.index)
        for idx, row in switch[(switch["et"] == "b") & closed].iterrows():
            link_rows.append((f"switch:{idx}", str(row["bus"]), str(row["element"]), "switch"))
    trafo3w = _table(net, "trafo3w")
    for idx, row in trafo3w.iterrows():
        for side in ("mv_bus", "lv_bus"):
            link_rows.append((f"trafo3w:{idx}:{side}", str(row["hv_bus"]), str(row[side]), "trafo3w"))
    links = pd.DataFrame(
        [r[1:] for r in link_rows], columns=["from_bus", "to_bus", "kind"],
        index=pd.Index([r[0] for r in link_rows], name="id"),
    )
    ext_grid = _table(net, "ext_grid")
    roots = [str(b) for b in ext_grid["bus"]] if "bus" in ext_grid.columns else []
    coords = _geodata(bus)
    layout = "geodata"
    if coords is None:
        edges = list(zip(lines["from_bus"], lines["to_bus"])) + list(zip(trafos["hv_bus"], trafos["lv_bus"]))
        edges += list(zip(links["from_bus"], links["to_bus"]))
        coords = tree_layout(bus_ids, edges, roots)
        layout = "tree"
    buses = pd.DataFrame(
        {"x": coords["x"].to_numpy(float), "y": coords["y"].to_numpy(float), "name": _names(bus),
         "vn_kv": bus["vn_kv"].astype(float).tolist() if "vn_kv" in bus.columns else [float("nan")] * len(bus)},
        index=pd.Index(bus_ids, name="id"),
    )
    return FeederTopology(buses=buses, lines=lines, trafos=trafos, links=links, ext_grid_buses=tuple(roots), layout=layout)


def write_feeder_topology(net: Mapping[str, Any], path: Path) -> FeederTopology:
    """Write the net's drawable topology to ``path`` (normally ``RUN/feeder.json``) atomically; return it."""
    topology = feeder_topology(net)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(topology.to_dict(), allow_nan=False, default=_json_default), encoding="utf-8")
    os.replace(tmp, path)
    return topology


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"{value!r} is not JSON serializable")


def read_feeder_topology(path: Path) -> FeederTopology:
    """Read a feeder.json written by :func:`write_feeder_topology` (raises TopologyError when malformed)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise TopologyError(f"{path}: not a readable feeder topology ({exc})") from None
    if not isinstance(data, Mapping):
        raise TopologyError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return FeederTopology.from_dict(data)
