"""The array-native engine gives the tables the engine before it gave (issue 13): a small set of scenarios kept in
``tests/data/golden`` (made with ``bench/golden_tables.py save --tables-only`` on the previous engine, at the
fast engine's current solver tolerance), compared to 1e-9 with NaNs in the same places."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "data" / "golden"
_SPEC = importlib.util.spec_from_file_location("golden_tables", Path(__file__).parents[1] / "bench" / "golden_tables.py")
golden_tables = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(golden_tables)


@pytest.mark.parametrize("name", sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()))
def test_the_engine_gives_the_golden_tables(name: str) -> None:
    assert golden_tables.differences(GOLDEN / name, name) == []
