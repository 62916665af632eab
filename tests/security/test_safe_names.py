"""Point 7: safe names. Policy and run names become folder names verbatim, so they are checked: no path
components, no ``..``, no control characters, nothing a file system might fold together; one folder per
policy, and a clash is an error naming both names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dashboards.data import RunData
from twin.names import check_policy_names
from twin.records.runstore import new_run_dir, policy_dir
from twin.scenario import ScenarioError, parse_scenario

BASE = {
    "feeder": "cigre-lv",
    "start": "2016-06-06T00:00:00Z",
    "end": "2016-06-06T02:00:00Z",
}


def _policies(*names: str) -> dict:
    return {**BASE, "controllers": [{"name": n, "target": "controllers.baseline:NoControl"} for n in names]}


@pytest.mark.parametrize(("name", "says"), [
    ("..", "must not contain '..'"),
    ("../outside", "path separator"),
    ("a/b", "path separator"),
    ("a\\b", "path separator"),
    ("/etc", "path separator"),
    (".hidden", "must start with a letter or digit"),
    ("x..y", "must not contain '..'"),
    ("tab\there", "control or format characters"),
    ("nul\x00", "control or format characters"),
    ("sca\u200bda", "control or format characters"),  # a zero-width space
    ("scäda", "must be ASCII"),
    ("ｓｃａｄａ", "must be ASCII"),  # fullwidth: NFKC-folds to 'scada'
    ("", "at least 1 character"),  # the scenario model says it first
    ("x" * 65, "at most 64"),
    ("commands", "is reserved"),
    ("LIVE", "is reserved"),
    ("has space", "must start with a letter or digit and hold only letters, digits, '.', '_' and '-'"),
])
def test_unsafe_policy_names_are_refused_naming_field_and_value(name: str, says: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(_policies(name), source="names.toml")
    message = str(err.value)
    assert "names.toml" in message and "controllers" in message and repr(name) in message and says in message
    with pytest.raises(ValueError, match="policy="):
        policy_dir(Path("/run"), name)


@pytest.mark.parametrize(("a", "b", "says"), [
    ("scada", "scada", "is used twice"),
    ("SCADA", "scada", "differ only in case"),
    ("DePIN", "depin", "differ only in case"),
])
def test_two_names_for_one_folder_are_an_error_naming_both(a: str, b: str, says: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(_policies(a, b), source="clash.toml")
    message = str(err.value)
    assert repr(a) in message and repr(b) in message and says in message
    with pytest.raises(ValueError, match=says):
        check_policy_names([a, b])


def test_each_policy_gets_exactly_its_own_folder(tmp_path: Path) -> None:
    scenario = parse_scenario(_policies("scada", "depin-v2", "peak_shaver.1"))
    folders = {c.name: policy_dir(tmp_path, c.name) for c in scenario.controllers}
    assert {p.name for p in folders.values()} == {"scada", "depin-v2", "peak_shaver.1"}
    assert all(p.parent == tmp_path for p in folders.values())


@pytest.mark.parametrize("name", ["../../etc", "a/b", "..", "\x1b[31mred", ""])
def test_unsafe_run_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario({**_policies("scada"), "name": name}, source="run.toml")
    assert "name" in str(err.value) and repr(name) in str(err.value)
    with pytest.raises(ValueError, match="run name="):
        new_run_dir(tmp_path, name)
    assert list(tmp_path.iterdir()) == []


def test_a_run_name_stays_one_folder_under_the_runs_root(tmp_path: Path) -> None:
    path = new_run_dir(tmp_path, "cigre lv day")
    assert path.parent == tmp_path and path.name.startswith("cigre-lv-day-")


def test_the_dashboard_never_reads_outside_the_run_for_a_crafted_policy_name(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    outside = tmp_path / "outside" / "summary"
    outside.mkdir(parents=True)
    (run / "meta.json").write_text(json.dumps({"policies": ["../outside", "ok"], "scenario": {"name": "x"}}))
    data = RunData(run)
    assert data.policies() == ["ok"]
    assert data.table("../outside", "summary").empty  # a request naming another folder reads nothing
