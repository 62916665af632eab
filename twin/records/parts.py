"""The on-disk format of one part of a run-store table (``RUN/<policy>/<table>/part-NNNNNN.parquet``): writing
a frame as a part, atomically, and reading parts back as one frame.

Two layouts, both Parquet:

- **matrix** (the wide per-interval tables: time × bus, line, trafo or asset, one dtype): two columns, ``time``
  and ``values``, a fixed-size list of the row's values; the column labels, their dtype and (for text) the
  categories are in the file's key-value metadata under ``gridtwin``. Reading or writing such a part costs
  about the same whatever its width: Parquet pays per column (footer, column chunks), and a 9,099-column
  part cost 0.4-0.9 s to read and 1.5-3.5 s to write however few rows it held.
- **columns** (the summary, and any frame the matrix layout cannot hold): one Parquet column per frame column,
  as ``DataFrame.to_parquet`` writes it. Every part written before the matrix layout existed is such a part,
  so old run folders read as before.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["PART_GLOB", "part_number", "part_paths", "read_part", "read_parts", "write_part"]

#: The parts of a table folder (temporary files end in ``.tmp`` and never match).
PART_GLOB = "part-*.parquet"
#: Key of the matrix layout's description in a part's Parquet key-value metadata.
_META_KEY = b"gridtwin"
_LAYOUT_VERSION = 1
#: Value dtypes the matrix layout stores as they are; text is stored as integer codes into its categories.
_NUMERIC_KINDS = "fbiu"


def part_number(path: Path) -> int:
    """N of ``part-N.parquet`` (-1 when the name is not a part's)."""
    try:
        return int(path.name.split(".", 1)[0].removeprefix("part-"))
    except ValueError:
        return -1


def part_paths(folder: Path) -> list[Path]:
    """A table folder's parts in the order they were written (by number; [] when there is no such folder)."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob(PART_GLOB) if part_number(p) >= 0), key=part_number)


def write_part(frame: pd.DataFrame, path: Path, *, matrix: bool) -> None:
    """``frame`` as the part ``path``, written to a temporary name and renamed, so a reader never sees half a
    part. ``matrix``: in the matrix layout when the frame allows it (string column labels, one value dtype, no
    missing text, at least one column); else, and when False, in the columns layout."""
    table = _matrix_table(frame) if matrix else None
    if table is None:
        table = pa.Table.from_pandas(frame)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_part(path: Path) -> pd.DataFrame:
    return read_parts([path])


def read_parts(paths: Sequence[Path]) -> pd.DataFrame:
    """The parts concatenated in the order given (rows are not de-duplicated), whatever their layout."""
    # One small file at a time: threads and a read buffer only add overhead (memory-mapped, single-threaded
    # reads measured 2-3x faster here for 1-row parts).
    tables = [pq.ParquetFile(p, memory_map=True).read(use_threads=False) for p in paths]
    if not tables:
        return pd.DataFrame()
    seen: dict[bytes, dict[str, Any]] = {}  # a table's parts share their labels: decode them once
    described = [_description(t, seen) for t in tables]
    if all(d is not None for d in described):
        return _matrix_frames(tables, described)  # type: ignore[arg-type]
    if not any(d is not None for d in described):
        try:
            return _columns_to_pandas(pa.concat_tables(tables))
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # parts with different schemas: let pandas align them
            pass
    return pd.concat([_matrix_frames([t], [d]) if d is not None else _columns_to_pandas(t)
                      for t, d in zip(tables, described, strict=True)])


# -- matrix layout ------------------------------------------------------------------------------------------
def _matrix_table(frame: pd.DataFrame) -> pa.Table | None:
    """The frame in the matrix layout, or None when it does not fit it."""
    columns = list(frame.columns)
    if not columns or not all(isinstance(c, str) for c in columns) or frame.columns.nlevels != 1:
        return None
    dtypes = set(frame.dtypes)
    if len(dtypes) != 1:
        return None
    dtype = dtypes.pop()
    values = frame.to_numpy()
    description: dict[str, Any] = {"layout": "matrix", "version": _LAYOUT_VERSION, "index": frame.index.name,
                                   "columns": columns, "columns_name": frame.columns.name}
    if isinstance(dtype, np.dtype) and dtype.kind in _NUMERIC_KINDS:
        flat = pa.array(values.reshape(-1))
        description["dtype"] = dtype.str
    elif dtype == object or isinstance(dtype, pd.StringDtype):
        cells = values.reshape(-1)
        if not all(isinstance(v, str) for v in cells):  # None / NaN text: the columns layout keeps them as they are
            return None
        codes, categories = pd.factorize(cells)
        flat = pa.array(codes.astype(np.int32))
        description.update(dtype="text", categories=[str(c) for c in categories])
    else:
        return None
    if not isinstance(frame.index.name, (str, type(None))) or not isinstance(frame.columns.name, (str, type(None))):
        return None
    rows = pa.FixedSizeListArray.from_arrays(flat, len(columns))
    return pa.table({"time": pa.array(frame.index), "values": rows},
                    metadata={_META_KEY: json.dumps(description).encode()})


def _description(table: pa.Table, seen: dict[bytes, dict[str, Any]]) -> dict[str, Any] | None:
    raw = (table.schema.metadata or {}).get(_META_KEY)
    if raw is None:
        return None
    if raw in seen:
        return seen[raw]
    description = seen[raw] = json.loads(raw)
    if description.get("layout") != "matrix" or description.get("version") != _LAYOUT_VERSION:
        raise ValueError(f"run-store part with layout {description.get('layout')!r} version "
                         f"{description.get('version')!r}: written by a newer gridtwin than this one")
    return description


def _matrix_values(table: pa.Table, description: dict[str, Any]) -> np.ndarray:
    width = len(description["columns"])
    column = table.column("values")
    flat = (column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)).flatten()
    if description["dtype"] == "text":
        categories = np.asarray(description["categories"], dtype=object)
        codes = flat.to_numpy(zero_copy_only=False)
        return categories[codes].reshape(-1, width) if len(categories) else np.empty((len(table), width), object)
    return flat.to_numpy(zero_copy_only=False).astype(np.dtype(description["dtype"]), copy=False).reshape(-1, width)


def _matrix_frames(tables: list[pa.Table], described: list[dict[str, Any]]) -> pd.DataFrame:
    """Matrix parts as one frame: one array concatenation when they share their labels and dtype."""
    first = described[0]
    same = all(d is first or (d["columns"] == first["columns"] and d["dtype"] == first["dtype"]) for d in described[1:])
    if not same:
        return pd.concat([_matrix_frames([t], [d]) for t, d in zip(tables, described, strict=True)])
    blocks = [_matrix_values(t, d) for t, d in zip(tables, described, strict=True)]
    values = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    times = pa.chunked_array([c for t in tables for c in t.column("time").chunks], type=tables[0].schema.field(
        "time").type)
    index = pd.Index(times.to_pandas(use_threads=False), name=first["index"])
    return pd.DataFrame(values, index=index, columns=pd.Index(first["columns"], name=first["columns_name"]),
                        copy=False)


# -- columns layout -----------------------------------------------------------------------------------------
def _columns_to_pandas(table: pa.Table) -> pd.DataFrame:
    """``table.to_pandas()``, but one 2-D block for a wide float table written in the columns layout (a run
    folder from before the matrix layout): pandas' column-by-column conversion costs ~20 ms for a 900-column
    table however few rows it has."""
    names = [n for n in table.column_names if n != "time"]
    if "time" not in table.column_names or not names or not all(
            pa.types.is_floating(table.schema.field(n).type) for n in names) or len(names) < 32:
        return table.to_pandas(use_threads=False)
    values = np.column_stack([table.column(n).to_numpy() for n in names]).astype(float, copy=False)
    index = pd.DatetimeIndex(table.column("time").to_pandas(use_threads=False), name="time")
    try:
        column_name = json.loads((table.schema.metadata or {})[b"pandas"])["column_indexes"][0]["name"]
    except (KeyError, IndexError, TypeError, ValueError):
        column_name = None
    return pd.DataFrame(values, index=index, columns=pd.Index(names, name=column_name))
