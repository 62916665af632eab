"""Running studies: resumable serial runs, serial == Dask (exactly), and a worker killed mid-study.

Scenarios are tiny (CIGRE LV, 2 hours at 15 minutes). The Dask tests share one real ``LocalCluster`` of two
single-threaded worker processes, started with ``allowed_failures=1`` so a variant that kills its worker
fails with ``KilledWorker`` after its second death instead of its fourth.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from study_helpers import runs_counted
from twin.studies import NONDETERMINISTIC_COLUMNS, run_study

pytestmark = pytest.mark.slow

PERIOD = """
feeder = "cigre-lv"
start = "2016-06-06T10:00:00Z"
end = "2016-06-06T12:00:00Z"
horizon = "1h"
"""
TWO_POLICIES = PERIOD + """
[[controllers]]
name = "no-control"
target = "controllers.baseline:NoControl"

[[controllers]]
name = "peak-shaver"
target = "controllers.baseline:PeakShaver"
"""

#: A plug-in's exception ends its variant as the CLI reports it: the policy, the method, the exception.
PROBE_FAILED = "policy 'probe' (study_helpers:Probe): reset raised RuntimeError: probe told to fail before the first interval"


def probe_base(tmp_path: Path) -> str:
    return PERIOD + f"""
[[controllers]]
name = "probe"
target = "study_helpers:Probe"
kwargs = {{ count_dir = "{tmp_path / 'runs'}" }}
"""


def write(tmp_path: Path, *, base: str, study: str) -> Path:
    (tmp_path / "runs").mkdir(exist_ok=True)
    (tmp_path / "base.toml").write_text(base, encoding="utf-8")
    path = tmp_path / "study.toml"
    path.write_text('base = "base.toml"\n' + study, encoding="utf-8")
    return path


def deterministic(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=list(NONDETERMINISTIC_COLUMNS))


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", silence_logs=logging.CRITICAL,
        scheduler_kwargs={"allowed_failures": 1, "dashboard": False, "dashboard_address": "127.0.0.1:0"},
    ) as cluster:
        yield cluster.scheduler_address


def test_serial_study_is_resumable_and_reports_failures(tmp_path: Path) -> None:
    study = write(tmp_path, base=probe_base(tmp_path), study="""
mode = "list"
[[variants]]
seed = 1
[[variants]]
seed = 2
[[variants]]
label = "broken"
"controllers.probe.kwargs.mode" = "raise"
""")
    out = tmp_path / "out"
    first = run_study(study, out_dir=out, executor="serial", progress=False)
    ok_ids = [v.variant_id for v in first.study.variants[:2]]
    broken = first.study.variants[2].variant_id
    assert runs_counted(tmp_path / "runs") == 3
    assert first.executed == (*ok_ids, broken) and first.skipped == ()
    assert [(f.variant_id, f.label, f.error_type, f.error) for f in first.failed] == [
        (broken, "broken", "RunFailed", PROBE_FAILED)
    ]
    record = json.loads((out / "failed" / f"{broken}.json").read_text(encoding="utf-8"))
    assert record["error_type"] == "RunFailed" and "study_helpers.py" in record["traceback"]
    assert sorted(p.stem for p in (out / "variants").glob("*.parquet")) == sorted(ok_ids)
    results = pd.read_parquet(out / "results.parquet")
    assert list(results["variant_id"]) == ok_ids and list(results["seed"]) == [1, 2]
    assert list(results.columns[:4]) == ["variant_id", "label", "policy", "energy_cost_eur"]

    # Again: the finished variants are skipped (no run), the failed one is tried again.
    second = run_study(study, out_dir=out, executor="serial", progress=False)
    assert runs_counted(tmp_path / "runs") == 4
    assert second.skipped == tuple(ok_ids) and second.executed == (broken,)
    pd.testing.assert_frame_equal(second.results, results)

    # A lost file re-runs just that variant; a changed base makes every finished file stale.
    (out / "variants" / f"{ok_ids[0]}.parquet").unlink()
    third = run_study(study, out_dir=out, executor="serial", progress=False)
    assert third.executed == (ok_ids[0], broken) and runs_counted(tmp_path / "runs") == 6
    (tmp_path / "base.toml").write_text(probe_base(tmp_path).replace("12:00", "11:00"), encoding="utf-8")
    fourth = run_study(study, out_dir=out, executor="serial", progress=False)
    assert fourth.skipped == () and runs_counted(tmp_path / "runs") == 9


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    from twin.studies.variant import atomic_write

    target = tmp_path / "variants" / "abc.parquet"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"finished"))

    def crash_midway(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt  # what a Ctrl-C between write and rename looks like

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash_midway)
    assert target.read_bytes() == b"finished"
    assert [p.name for p in target.parent.iterdir()] == ["abc.parquet"]


def test_serial_and_dask_give_identical_kpi_tables(tmp_path: Path, scheduler: str) -> None:
    study = write(tmp_path, base=TWO_POLICIES, study='"fleet.pv_penetration" = [0.5, 1.5]\nseed = [1, 2]\n')
    serial = run_study(study, out_dir=tmp_path / "serial", executor="serial", progress=False)
    dask = run_study(study, out_dir=tmp_path / "dask", scheduler=scheduler, progress=False)
    assert serial.ok and dask.ok and len(dask.executed) == 4
    assert len(serial.results) == 8 and serial.results["energy_cost_eur"].nunique() == 8
    pd.testing.assert_frame_equal(deterministic(serial.results), deterministic(dask.results), check_exact=True)
    on_disk = pq.read_table(tmp_path / "dask" / "results.parquet").to_pandas()
    pd.testing.assert_frame_equal(deterministic(on_disk), deterministic(serial.results), check_exact=True)

    report = (tmp_path / "dask" / "report.html").read_text(encoding="utf-8")
    assert "<script src=" not in report  # plotly.js inline: the machines are offline
    assert report.count("plotly.js v") == 1 and report.count("Plotly.newPlot") >= 4
    assert "policy minus no-control, across fleet.pv_penetration" in report


def test_a_killed_worker_fails_only_its_variant(tmp_path: Path, scheduler: str) -> None:
    base = probe_base(tmp_path)
    study = write(tmp_path, base=base, study="""
mode = "list"
[[variants]]
seed = 1
[[variants]]
label = "killer"
"controllers.probe.kwargs.mode" = "kill"
"controllers.probe.kwargs.count_dir" = "KILLS"
[[variants]]
label = "raiser"
"controllers.probe.kwargs.mode" = "raise"
[[variants]]
seed = 2
""".replace("KILLS", str(tmp_path / "kills")))
    (tmp_path / "kills").mkdir()
    result = run_study(study, out_dir=tmp_path / "out", scheduler=scheduler, progress=False)
    ids = {v.label: v.variant_id for v in result.study.variants}
    assert {(f.label, f.variant_id, f.error_type) for f in result.failed} == {
        ("killer", ids["killer"], "KilledWorker"), ("raiser", ids["raiser"], "RunFailed"),
    }
    killed = next(f for f in result.failed if f.label == "killer")
    assert "died 2 times" in killed.error
    assert runs_counted(tmp_path / "kills") == 2  # allowed_failures=1: one retry, then KilledWorker
    assert json.loads(killed.path.read_text(encoding="utf-8"))["error_type"] == "KilledWorker"
    assert list(result.results["variant_id"].unique()) == [ids["seed=1"], ids["seed=2"]]
    assert "killer" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")


def test_own_local_cluster_reports_a_failing_variant(tmp_path: Path) -> None:
    study = write(tmp_path, base=probe_base(tmp_path), study='"controllers.probe.kwargs.mode" = ["raise"]\n')
    result = run_study(study, out_dir=tmp_path / "out", workers=1, progress=False)
    assert [(f.error_type, f.error) for f in result.failed] == [("RunFailed", PROBE_FAILED)]
    assert result.results.empty and runs_counted(tmp_path / "runs") == 1


def test_cli_runs_a_study_and_exits_1_listing_failed_variants(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from twin.studies.cli import study as study_command

    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("study")(study_command)
    study = write(tmp_path, base=probe_base(tmp_path), study='"controllers.probe.kwargs.mode" = ["ok", "raise"]\n')
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["study", str(study), "--serial", "--out", str(out)], terminal_width=200)
    assert result.exit_code == 1, result.output
    broken = json.loads((out / "study.json").read_text(encoding="utf-8"))["variants"][1]
    assert broken["overrides"] == {"controllers.probe.kwargs.mode": "raise"}
    assert broken["variant_id"] in result.output and "probe told to fail" in result.output
    assert "1 ran, 0 already finished, 1 failed" in result.output
    assert (out / "results.parquet").exists() and (out / "report.html").exists()
