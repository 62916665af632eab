"""The command line as a user meets it: listings, bad arguments (exit 2, field named), exports."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from twin.cli import app

runner = CliRunner()


def test_feeders_lists_the_catalog_with_counts() -> None:
    result = runner.invoke(app, ["feeders"])
    assert result.exit_code == 0, result.output
    for name in ("cigre-lv", "cigre-mv-der", "kerber-dorfnetz", "ieee-eu-lv", "baran-wu-33"):
        assert name in result.output
    assert "33" in result.output  # Baran-Wu's 33 buses


def test_dashboard_is_mounted_and_refuses_what_cannot_become_a_run_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["dashboard", str(tmp_path / "file")])
    assert result.exit_code == 2 and "not a folder" in result.output
    result = runner.invoke(app, ["dashboard", str(tmp_path / "no" / "run")])
    assert result.exit_code == 2 and "no such folder, nor its parent" in result.output
    # An empty folder is fine (the dashboard waits for the run): starting it is covered by the dashboard tests.


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "meta.json" in result.output


def test_export_simbench_writes_canonical_telemetry(tmp_path: Path) -> None:
    out = tmp_path / "rural.parquet"
    result = runner.invoke(app, ["telemetry", "export-simbench", "1-LV-rural1--0-sw", "--out", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert list(frame.columns[:4]) == ["ts", "device_id", "quantity", "value"]
    assert frame["ts"].min() == pd.Timestamp("2016-01-01", tz="UTC")


def test_export_simbench_bad_suffix_and_unknown_code(tmp_path: Path) -> None:
    r1 = runner.invoke(app, ["telemetry", "export-simbench", "1-LV-rural1--0-sw", "--out", str(tmp_path / "x.txt")])
    assert r1.exit_code == 2 and "--out" in r1.output
    r2 = runner.invoke(app, ["telemetry", "export-simbench", "no-such-code", "--out", str(tmp_path / "x.csv")])
    assert r2.exit_code == 2 and "no-such-code" in r2.output
