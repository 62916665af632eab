"""One study variant: run its scenario to a tidy KPI table, and the atomic files that make a study resumable.

``run_variant`` is a pure function of the scenario (and its seed) and is what an executor ships to a Dask
worker; it writes nothing, so a remote cluster needs no shared filesystem. The client writes
``variants/<id>.parquet`` (temp file + ``os.replace``) and ``failed/<id>.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "FIXED_COLUMNS",
    "atomic_write",
    "atomic_write_text",
    "kpi_columns",
    "NONDETERMINISTIC_COLUMNS",
    "read_variant",
    "run_variant",
    "scenario_fingerprint",
    "variant_is_current",
    "write_failure",
    "write_parquet",
    "write_variant",
]

#: Identity columns of every KPI row, before the KPI columns and then the swept parameters.
FIXED_COLUMNS = ("variant_id", "label", "policy")
#: Columns that measure this machine's speed, not the scenario: they differ between runs of one variant.
NONDETERMINISTIC_COLUMNS = ("compute_ms_per_step", "run_s")
_FINGERPRINT_KEY = b"gridtwin.scenario_sha256"


def kpi_columns() -> list[str]:
    """Every KPI the twin computes, in the order ``Kpis`` declares them."""
    from twin.records.kpis import Kpis  # twin.records.kpis pulls in pandapower: only when a variant actually runs

    return [f.name for f in dataclasses.fields(Kpis)]


def scenario_fingerprint(scenario: Mapping[str, Any]) -> str:
    """SHA-256 of the full variant scenario: a finished file whose base has since changed is stale."""
    text = json.dumps(scenario, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run_variant(
    scenario: Mapping[str, Any],
    *,
    variant_id: str,
    label: str = "",
    params: Mapping[str, Any] | None = None,
    base_dir: Path = Path("."),
) -> pd.DataFrame:
    """Run every policy of ``scenario`` (a TOML-like dict) and return one KPI row per policy.

    Columns: ``variant_id``, ``label``, ``policy``, one per KPI (``Kpis`` field order), ``run_s``, then
    the swept parameters (``params``) as columns.
    """
    # Imported here so a Dask worker pays for pandapower only when it runs a variant, and so importing
    # twin.studies (for the CLI's --help) stays light.
    from twin.run import run_scenario
    from twin.scenario import parse_scenario

    started = time.perf_counter()
    parsed = parse_scenario(dict(scenario), base_dir=Path(base_dir), source=f"variant {variant_id}")
    result = run_scenario(parsed, runs_root=None, out=None)
    run_s = time.perf_counter() - started
    rows = []
    for policy, kpis in result.kpis.items():
        row: dict[str, Any] = {"variant_id": variant_id, "label": label, "policy": policy}
        row.update(kpis.as_dict())
        row["run_s"] = run_s
        row.update(params or {})
        rows.append(row)
    return pd.DataFrame(rows, columns=[*FIXED_COLUMNS, *kpi_columns(), "run_s", *(params or {})])


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write via a temp file in the same folder and ``os.replace`` it: a crash leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet(path: Path, frame: pd.DataFrame, *, metadata: Mapping[bytes, bytes] | None = None) -> None:
    """Write ``frame`` (no index) atomically, with extra key/value pairs in the Parquet footer."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **(metadata or {})})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def write_variant(path: Path, frame: pd.DataFrame, *, fingerprint: str) -> None:
    write_parquet(path, frame, metadata={_FINGERPRINT_KEY: fingerprint.encode()})


def read_variant(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def variant_is_current(path: Path, *, fingerprint: str) -> bool:
    """True if ``path`` holds a finished result of exactly this scenario (reads the footer only)."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return False  # unreadable or foreign file: run the variant again rather than trust it
    return metadata.get(_FINGERPRINT_KEY) == fingerprint.encode()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_failure(path: Path, record: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(dict(record), indent=2, default=str) + "\n")
