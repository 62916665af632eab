"""Study files: grid and list expansion, stable ids, validation errors naming key and value, the CLI surface.

Nothing here runs a power flow: a study is validated completely before any variant starts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from twin.scenario import parse_scenario
from twin.studies import StudyError, load_study, run_study
from twin.studies.cli import study as study_command

BASE = """
feeder = "cigre-lv"
start = "2016-06-06T10:00:00Z"
end = "2016-06-06T12:00:00Z"
horizon = "1h"
seed = 7

[fleet]
pv_penetration = 1.0

[[controllers]]
name = "none"
target = "controllers.baseline:NoControl"

[[controllers]]
name = "shaver"
target = "controllers.baseline:PeakShaver"
kwargs = { shave_fraction = 0.8 }
"""


def write_study(tmp_path: Path, body: str, *, base: str = BASE) -> Path:
    (tmp_path / "base.toml").write_text(base, encoding="utf-8")
    path = tmp_path / "study.toml"
    path.write_text('base = "base.toml"\n' + body, encoding="utf-8")
    return path


def test_grid_mode_expands_the_product_and_applies_each_override(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path, '"fleet.pv_penetration" = [0.5, 1.5]\nseed = [1, 2, 3]\n'))
    assert study.mode == "grid" and study.name == "study"
    assert study.axes == ("fleet.pv_penetration", "seed")
    assert len(study.variants) == 6
    assert [dict(v.overrides) for v in study.variants[:2]] == [
        {"fleet.pv_penetration": 0.5, "seed": 1}, {"fleet.pv_penetration": 0.5, "seed": 2},
    ]
    assert len({v.variant_id for v in study.variants}) == 6
    last = parse_scenario(dict(study.variants[-1].scenario))
    assert (last.fleet.pv_penetration, last.seed, last.feeder) == (1.5, 3, "cigre-lv")
    assert study.variants[0].label == "fleet.pv_penetration=0.5 seed=1"
    assert study.variants[0].base_dir == tmp_path.resolve()


def test_variant_id_is_a_short_hash_of_the_overrides_independent_of_axis_order(tmp_path: Path) -> None:
    a = load_study(write_study(tmp_path, 'seed = [1, 2]\n"fleet.pv_penetration" = [0.5]\n'))
    b = load_study(write_study(tmp_path, '"fleet.pv_penetration" = [0.5]\nseed = [1, 2]\n'))
    assert sorted(v.variant_id for v in a.variants) == sorted(v.variant_id for v in b.variants)
    # Pinned: a change of the id scheme would silently orphan every finished variant of every study.
    canonical = json.dumps({"fleet.pv_penetration": 0.5, "seed": 1}, sort_keys=True, separators=(",", ":"))
    assert a.variants[0].variant_id == hashlib.sha256(canonical.encode()).hexdigest()[:10] == "3812678a2b"


def test_nested_tables_mean_the_same_as_quoted_dotted_keys(tmp_path: Path) -> None:
    quoted = load_study(write_study(tmp_path, '"fleet.battery_share" = [0.1, 0.9]\n'))
    nested = load_study(write_study(tmp_path, "[fleet]\nbattery_share = [0.1, 0.9]\n"))
    assert [v.variant_id for v in quoted.variants] == [v.variant_id for v in nested.variants]


def test_list_mode_labels_controller_kwargs_and_base_values_for_missing_keys(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path, """
name = "picked"
mode = "list"
[[variants]]
label = "gentle"
"controllers.shaver.kwargs.shave_fraction" = 0.9
[[variants]]
seed = 3
"tariff.peak_hours" = [16, 22]
"""))
    assert study.name == "picked" and study.mode == "list"
    first, second = study.variants
    assert first.label == "gentle"
    assert second.label == "seed=3 tariff.peak_hours=[16,22]"
    shaver = parse_scenario(dict(first.scenario)).controllers[1]
    assert shaver.kwargs == {"shave_fraction": 0.9}
    # Keys a variant leaves alone show the base value, so every column means the same in every row.
    assert dict(first.params) == {"controllers.shaver.kwargs.shave_fraction": 0.9, "seed": 7, "tariff.peak_hours": "[17,21]"}
    assert dict(second.params) == {"controllers.shaver.kwargs.shave_fraction": 0.8, "seed": 3, "tariff.peak_hours": "[16,22]"}


def test_a_controller_set_axis_is_labelled_by_policy_names(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path, """
controllers = [
  [{ name = "none", target = "controllers.baseline:NoControl" }],
  [{ name = "none", target = "controllers.baseline:NoControl" },
   { name = "hard", target = "controllers.baseline:PeakShaver", kwargs = { shave_fraction = 0.5 } }],
]
"""))
    assert [v.label for v in study.variants] == ["controllers=none", "controllers=none+hard"]
    assert [len(parse_scenario(dict(v.scenario)).controllers) for v in study.variants] == [1, 2]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ('"fleet.bateries" = [1, 2]\n', ["'fleet.bateries'", "battery_share"]),
        ("seeed = [1, 2]\n", ["'seeed'"]),
        ('"seed.x" = [1]\n', ["'seed.x'", "no sub-keys"]),
        ("seed = []\n", ["'seed'", "empty"]),
        ("seed = 3\n", ["'seed'", "= 3", "array"]),
        ('"fleet.pv_penetration" = [0.5, "high"]\n', ["fleet.pv_penetration", "'high'"]),
        ('"fleet.battery_share" = [0.5, 1.5]\n', ["fleet.battery_share", "1.5", "battery_share=1.5"]),
        ('"controllers.shaver.kwargs.shave_fraction" = [0.5, 2.0]\n', ["controllers.shaver", "shave_fraction=2.0"]),
        ('"controllers.nobody.kwargs.x" = [1]\n', ["'controllers.nobody.kwargs.x'", "'nobody'"]),
        ("seed = [1, 1]\n", ["'seed'", "repeats", "1"]),
        ('mode = "random"\nseed = [1]\n', ["mode='random'"]),
        ("", ["at least one sweep axis"]),
        ('mode = "list"\nseed = [1]\n[[variants]]\nseed = 2\n', ["'seed'", "outside [[variants]]"]),
        ('mode = "list"\n[[variants]]\nlabel = "empty"\n', ["variants[0]", "'empty'", "overrides nothing"]),
        ('mode = "list"\n[[variants]]\nseed = 1\n[[variants]]\nseed = 1\n', ["same overrides", '{"seed":1}']),
    ],
)
def test_bad_study_names_key_and_value(tmp_path: Path, body: str, named: list[str]) -> None:
    path = write_study(tmp_path, body)
    with pytest.raises(StudyError) as err:
        load_study(path)
    message = str(err.value)
    assert str(path) in message
    for fragment in named:
        assert fragment in message


def test_missing_or_invalid_base_is_named(tmp_path: Path) -> None:
    study = tmp_path / "study.toml"
    study.write_text("seed = [1]\n", encoding="utf-8")
    with pytest.raises(StudyError, match="base is missing"):
        load_study(study)
    study.write_text('base = "nope.toml"\nseed = [1]\n', encoding="utf-8")
    with pytest.raises(StudyError, match="nope.toml"):
        load_study(study)
    with pytest.raises(StudyError, match=r"base='base.toml' is not a valid scenario[\s\S]*step"):
        load_study(write_study(tmp_path, "seed = [1]\n", base=BASE.replace('horizon = "1h"', 'step = "fifteen"')))


def test_bad_study_fails_before_any_output_is_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(StudyError):
        run_study(write_study(tmp_path, '"fleet.pv_penetration" = [0.5, -1.0]\n'), out_dir=out, executor="serial")
    assert not out.exists()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"executor": "threads"}, "executor='threads'"),
        ({"scheduler": "localhost:8786"}, "scheduler='localhost:8786'"),
        ({"scheduler": "tcp://127.0.0.1:1", "executor": "serial"}, "executor='dask'"),
        ({"workers": 0}, "workers=0"),
    ],
)
def test_bad_run_arguments_are_named(tmp_path: Path, kwargs: dict, named: str) -> None:
    with pytest.raises(StudyError) as err:
        run_study(write_study(tmp_path, "seed = [1]\n"), out_dir=tmp_path / "out", progress=False, **kwargs)
    assert named in str(err.value)


def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _group() -> None:
        """A group, like twin.cli's app (a lone command would swallow its own name as an argument)."""

    app.command("study")(study_command)  # exactly how twin.cli registers it
    return app


def test_cli_has_the_documented_options() -> None:
    result = CliRunner().invoke(cli(), ["study", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("STUDY", "--scheduler", "--workers", "--serial", "--out"):
        assert option in result.output


def test_cli_bad_study_exits_2_naming_the_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli(), ["study", str(write_study(tmp_path, "seed = []\n")), "--serial",
                                        "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "'seed'" in result.output and "empty" in result.output


def test_toml_datetimes_and_structures_become_readable_parameter_columns(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path, 'end = [2016-06-06T11:00:00Z, "2016-06-06T12:00:00Z"]\n'
                                             '"tariff.peak_hours" = [[17, 21]]\n'))
    assert [dict(v.params) for v in study.variants] == [
        {"end": "2016-06-06T11:00:00+00:00", "tariff.peak_hours": "[17,21]"},
        {"end": "2016-06-06T12:00:00Z", "tariff.peak_hours": "[17,21]"},
    ]
    assert [len(parse_scenario(dict(v.scenario)).times) for v in study.variants] == [4, 8]


SAMPLES = sorted(p for p in (Path(__file__).resolve().parents[1] / "scenarios").glob("study-*.toml") if p.name != "study-base.toml")


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_sample_studies_validate(path: Path) -> None:
    study = load_study(path)
    assert study.description and len(study.variants) >= 3
    assert study.base_path == path.parent.resolve() / "study-base.toml"


def test_there_are_sample_studies() -> None:
    assert {p.name for p in SAMPLES} == {"study-pv-battery.toml", "study-tariffs.toml"}


def test_public_surface_is_pinned() -> None:
    import twin.studies

    assert sorted(twin.studies.__all__) == [
        "DaskExecutor", "NONDETERMINISTIC_COLUMNS", "Outcome", "SerialExecutor", "Study", "StudyError",
        "StudyResult", "Variant", "VariantFailure", "kpi_distribution_figure", "load_study", "parse_study",
        "policy_delta_figure", "run_study", "run_variant",
    ]
    assert all(hasattr(twin.studies, name) for name in twin.studies.__all__)
