"""DESIGN.md §2: which package may import which, checked over the source's import statements (ast)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "grids": {"twin", "controllers", "dashboards"},
    "controllers": {"twin", "grids", "dashboards", "pandapower"},
    "twin": {"dashboards"},
    "dashboards": {"pandapower", "twin.engine", "twin.grid.powerflow", "twin.grid.fastpf"},
}

#: What runs the rooms (the run, the CLI, its checks, live and studies): no room imports them.
OUTSIDE = {"twin.live", "twin.studies", "twin.run", "twin.cli", "twin.preflight"}

#: The rooms of the twin, in the order data flows through them (README, "Packages"): a room may use the ones
#: before it in the flow, never the sequencer or the rooms after it. The grid model, the device physics and the
#: comms model know nothing of each other; the sequencer (twin/engine) uses them all and nothing after it.
ROOMS = {
    "twin/grid": {"twin.engine", "twin.devices", "twin.comms", "twin.records", "twin.settlement", "twin.reporting"}
    | OUTSIDE,
    "twin/devices": {"twin.engine", "twin.grid", "twin.comms", "twin.records", "twin.settlement", "twin.reporting"}
    | OUTSIDE,
    "twin/comms": {"twin.engine", "twin.grid", "twin.devices", "twin.records", "twin.settlement", "twin.reporting"}
    | OUTSIDE,
    "twin/engine": {"twin.reporting"} | OUTSIDE,
    "twin/records": {"twin.engine", "twin.settlement", "twin.reporting"} | OUTSIDE,
    "twin/reporting": {"twin.engine", "twin.settlement"} | OUTSIDE,
    "twin/settlement": {"twin.engine", "twin.records", "twin.reporting"} | OUTSIDE,
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def violations(package: str, banned_modules: set[str] | None = None) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for lineno, module in imported_modules(path):
            for banned in FORBIDDEN[package] if banned_modules is None else banned_modules:
                if module == banned or module.startswith(banned + "."):
                    out.append(f"{path.relative_to(ROOT)}:{lineno} imports {module}")
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_import_rules(package: str) -> None:
    assert (ROOT / package / "__init__.py").exists()
    assert violations(package) == []


def test_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "mod.py"
    bad.write_text("import os\nfrom pandapower.networks import case33bw\n", encoding="utf-8")
    assert (2, "pandapower.networks") in imported_modules(bad)


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_twin_rooms_import_only_what_comes_before_them(room: str) -> None:
    assert (ROOT / room / "__init__.py").exists()
    assert violations(room, ROOMS[room]) == []


def test_every_twin_package_is_a_room_or_runs_them() -> None:
    """A new folder under twin/ has to take a place in the flow (or be one of the runners) to be checked."""
    packages = {f"twin/{p.parent.name}" for p in (ROOT / "twin").glob("*/__init__.py")}
    placed = set(ROOMS) | {m.replace(".", "/") for m in OUTSIDE}
    assert packages - placed == set()


def module_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports anywhere in its source (lazy imports included)."""
    modules = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path

    def owner(module: str) -> str | None:
        while module and module not in modules:
            module = module.rpartition(".")[0]
        return module or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
                targets |= {owner(n) if n in modules else owner(node.module) for n in names}
            elif isinstance(node, ast.Import):
                targets |= {owner(alias.name) for alias in node.names}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


@pytest.mark.parametrize("package", ["twin", "controllers", "grids", "dashboards"])
def test_no_import_cycles(package: str) -> None:
    assert import_cycles(module_graph(package)) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
