"""twin.records.parts and the run store's use of it: the wide tables as matrix parts (two Parquet columns however
wide), the summary a column per quantity, both read back as the frames written; run folders written before the
matrix layout (a Parquet column per bus) still read, resume, compact and follow in the dashboard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dashboards.data import RunData
from twin.records.parts import part_paths, read_parts, write_part
from twin.records.recorder import SUMMARY_COLUMNS, PolicyRecords
from twin.records.runstore import RunStore

T0 = pd.Timestamp("2016-06-06T00:00:00Z")
STEP = pd.Timedelta("15min")


def _index(start: int, n: int) -> pd.DatetimeIndex:
    return pd.DatetimeIndex([T0 + (start + i) * STEP for i in range(n)], name="time")


def _records(start: int, n: int, *, buses: int = 3) -> PolicyRecords:
    """``n`` intervals from interval ``start`` of a feeder with ``buses`` buses and assets A (battery), B (PV);
    every value says where it is: vm = 1 + interval / 100 + bus / 10_000, asset power = interval / 1000."""
    index = _index(start, n)
    rows = np.arange(start, start + n, dtype=float)[:, None]
    vm = 1.0 + rows / 100 + np.arange(buses)[None, :] / 10_000
    summary = pd.DataFrame(0.0, index=index, columns=list(SUMMARY_COLUMNS))
    summary["p_head_mw"] = rows[:, 0] / 10
    summary["converged"] = True
    summary["controller_online"] = [i % 2 == 0 for i in range(start, start + n)]
    assets = ["A", "B"]
    clipped = [["", "pv_curtailed" if i % 3 == 0 else ""] for i in range(start, start + n)]
    return PolicyRecords(
        policy="none", step=STEP, summary=summary,
        vm_pu=pd.DataFrame(vm, index=index, columns=[str(b) for b in range(buses)]),
        line_loading_percent=pd.DataFrame(np.full((n, 2), 40.0), index=index, columns=["0", "1"]),
        trafo_loading_percent=pd.DataFrame(np.full((n, 1), np.nan), index=index, columns=["0"]),
        asset_p_mw=pd.DataFrame(np.repeat(rows / 1000, 2, axis=1), index=index, columns=assets),
        asset_setpoint_mw=pd.DataFrame(np.repeat(rows / 1000, 2, axis=1), index=index, columns=assets),
        asset_soc_mwh=pd.DataFrame(np.empty((n, 0)), index=index, columns=pd.Index([], dtype=object)),  # no battery
        asset_clipped=pd.DataFrame(clipped, index=index, columns=assets),
        asset_fallback=pd.DataFrame([[i % 2 == 1, False] for i in range(start, start + n)], index=index,
                                    columns=assets),
        asset_reported_p_mw=pd.DataFrame(np.repeat(rows / 1000, 2, axis=1), index=index, columns=assets),
    )


def _store(path: Path) -> RunStore:
    store = RunStore(path)
    store.write_meta({"scenario": {"name": "parts", "step": "15min"}, "policies": ["none"],
                      "assets": [{"asset_id": "A", "kind": "battery", "bus": "1"},
                                 {"asset_id": "B", "kind": "pv", "bus": "2"}]})
    store.write_status(done=0, total=8, state="running")
    return store


def _concat(*records: PolicyRecords, name: str) -> pd.DataFrame:
    return pd.concat([getattr(r, name) for r in records])


def _write_old_format(store: RunStore, records: PolicyRecords) -> None:
    """A chunk as gridtwin wrote it before the matrix layout: ``DataFrame.to_parquet``, a column per bus."""
    for name in PolicyRecords.TABLES:
        folder = store.path / records.policy / name
        folder.mkdir(parents=True, exist_ok=True)
        getattr(records, name).to_parquet(folder / f"part-{len(part_paths(folder)):06d}.parquet")


def test_wide_tables_are_two_parquet_columns_whatever_their_width(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.append(_records(0, 2, buses=500))
    vm_part = tmp_path / "none" / "vm_pu" / "part-000000.parquet"
    assert pq.read_schema(vm_part).names == ["time", "values"]
    assert pq.read_schema(vm_part).field("values").type == pa.list_(pa.float64(), 500)
    # The summary stays a column per quantity (mixed dtypes), readable by any Parquet reader.
    summary_part = tmp_path / "none" / "summary" / "part-000000.parquet"
    assert pq.read_schema(summary_part).names[:2] == ["p_head_mw", "q_head_mvar"]
    vm = store.read_table("none", "vm_pu")
    assert vm.shape == (2, 500) and list(vm.columns[:3]) == ["0", "1", "2"]
    assert vm.at[T0 + STEP, "499"] == pytest.approx(1.0 + 1 / 100 + 499 / 10_000)


def test_every_table_reads_back_as_written(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first, second = _records(0, 3), _records(3, 2)
    store.append(first)
    store.append(second)
    for name in PolicyRecords.TABLES:
        expected = _concat(first, second, name=name)
        got = store.read_table("none", name)
        pd.testing.assert_frame_equal(got, expected, check_freq=False, check_column_type=False, obj=name)
    clipped = store.read_table("none", "asset_clipped")
    assert clipped["B"].tolist() == ["pv_curtailed", "", "", "pv_curtailed", ""]  # intervals 0 and 3
    assert store.read_table("none", "asset_fallback")["A"].tolist() == [False, True, False, True, False]
    assert store.read_table("none", "asset_fallback")["A"].dtype == bool
    assert store.read_table("none", "trafo_loading_percent")["0"].isna().all()  # NaN kept as NaN
    assert store.read_table("none", "asset_soc_mwh").shape == (5, 0)  # no battery: no columns, every interval


def test_text_the_matrix_cannot_hold_and_other_frames_fall_back_to_columns(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": ["x", None], "b": ["y", "z"]}, index=_index(0, 2))
    write_part(frame, tmp_path / "part-000000.parquet", matrix=True)
    assert pq.read_schema(tmp_path / "part-000000.parquet").names == ["a", "b", "time"]
    pd.testing.assert_frame_equal(read_parts([tmp_path / "part-000000.parquet"]), frame)
    mixed = pd.DataFrame({"a": [1.0, 2.0], "ok": [True, False]}, index=_index(0, 2))
    write_part(mixed, tmp_path / "part-000001.parquet", matrix=True)
    pd.testing.assert_frame_equal(read_parts([tmp_path / "part-000001.parquet"]), mixed)


def test_a_part_from_a_newer_layout_is_refused_with_its_version(tmp_path: Path) -> None:
    path = tmp_path / "part-000000.parquet"
    table = pa.table({"time": pa.array(_index(0, 1)), "values": pa.FixedSizeListArray.from_arrays(pa.array([1.0]), 1)},
                     metadata={b"gridtwin": json.dumps({"layout": "matrix", "version": 99}).encode()})
    pq.write_table(table, path)
    with pytest.raises(ValueError, match="version 99: written by a newer gridtwin"):
        read_parts([path])


def test_a_run_folder_in_the_old_format_reads_resumes_and_compacts(tmp_path: Path) -> None:
    store = _store(tmp_path)
    old, kill, new = _records(0, 4), _records(4, 2), _records(6, 2)
    _write_old_format(store, old)
    _write_old_format(store, kill)  # a chunk a kill left past the commit point
    assert pq.read_schema(tmp_path / "none" / "vm_pu" / "part-000000.parquet").names == ["0", "1", "2", "time"]
    for name in PolicyRecords.TABLES:
        pd.testing.assert_frame_equal(store.read_table("none", name), _concat(old, kill, name=name),
                                      check_freq=False, check_column_type=False, obj=name)
    data = RunData(tmp_path)
    assert data.table("none", "vm_pu")["2"].tolist() == pytest.approx([1.0002, 1.0102, 1.0202, 1.0302, 1.0402, 1.0502])
    # Resume: cut back to the 4 committed intervals (one matrix part), then append new chunks after them.
    store.truncate(4, times=_index(0, 8))
    assert [p.name for p in part_paths(tmp_path / "none" / "vm_pu")] == ["part-000000.parquet"]
    store.append(new)
    for name in PolicyRecords.TABLES:
        pd.testing.assert_frame_equal(store.read_table("none", name), _concat(old, new, name=name),
                                      check_freq=False, check_column_type=False, obj=name)
    # The dashboard saw the parts cut back and rewritten: it reads them again, not the 6 intervals it had.
    assert data.table("none", "vm_pu")["2"].tolist() == pytest.approx([1.0002, 1.0102, 1.0202, 1.0302, 1.0602, 1.0702])
    store.compact(min_parts=2)
    assert [p.name for p in part_paths(tmp_path / "none" / "vm_pu")] == ["part-000000.parquet"]
    assert pq.read_schema(tmp_path / "none" / "vm_pu" / "part-000000.parquet").names == ["time", "values"]
    pd.testing.assert_frame_equal(store.read_table("none", "asset_clipped"), _concat(old, new, name="asset_clipped"),
                                  check_freq=False, check_column_type=False)


def test_the_dashboard_reads_only_new_matrix_parts_and_rereads_a_compaction(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = RunData(tmp_path)
    for start in range(4):  # a paced run: one part per interval
        store.append(_records(start, 1))
        assert data.table("none", "asset_p_mw")["B"].tolist() == pytest.approx([i / 1000 for i in range(start + 1)])
    assert data._tables[("none", "asset_p_mw")].parts == 4
    store.compact(min_parts=2)  # the run's end: one merged part under the first part's name
    assert data.table("none", "asset_p_mw")["B"].tolist() == pytest.approx([0.0, 0.001, 0.002, 0.003])
    assert data._tables[("none", "asset_p_mw")].parts == 1
