"""Point 5: plug-ins are classes. A controller target must resolve to a class implementing the Controller
or Agent protocol; anything else is refused, naming the target, before it is called — ``os:system`` never
runs. ``gridtwin validate`` checks targets, their protocol and their keyword arguments without running."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from controllers.api import load_controller, resolve_plugin
from twin.cli import app

from .plugin_bait import MARKER_ENV

BAIT = "security.plugin_bait"
runner = CliRunner(env={"COLUMNS": "300"})


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "marker"
    monkeypatch.setenv(MARKER_ENV, str(path))
    return path


@pytest.mark.parametrize(("target", "kwargs", "says"), [
    ("os:system", {"command": "touch {marker}"}, "'system' is a builtin_function_or_method, not a class"),
    ("subprocess:Popen", {"args": ["touch", "{marker}"]}, "class Popen does not implement"),
    (f"{BAIT}:make_controller", {}, "'make_controller' is a function, not a class"),
    (f"{BAIT}:NotAController", {}, "class NotAController does not implement"),
    (f"{BAIT}:StrictController", {"gain": 2.0, "command": "x"}, "bad keyword arguments ['command', 'gain']"),
    (f"{BAIT}:Missing", {}, f"module {BAIT!r} has no attribute 'Missing'"),
])
def test_anything_but_a_protocol_class_is_refused_before_it_is_called(marker: Path, target: str, kwargs: dict,
                                                                     says: str) -> None:
    filled = {k: (v.format(marker=marker) if isinstance(v, str) else [x.format(marker=marker) for x in v])
              if isinstance(v, (str, list)) else v for k, v in kwargs.items()}
    with pytest.raises(ValueError) as err:
        load_controller(target, **filled)
    assert f"controller {target!r}" in str(err.value) and says in str(err.value)
    assert not marker.exists(), marker.read_text()  # nothing ran: no shell, no constructor, no factory


def test_a_protocol_class_with_bindable_arguments_is_built(marker: Path) -> None:
    controller = load_controller(f"{BAIT}:StrictController", gain=3.0)
    assert controller.gain == 3.0 and marker.read_text() == "StrictController instantiated"
    assert resolve_plugin(f"{BAIT}:StrictController", protocol="controller").__name__ == "StrictController"
    with pytest.raises(ValueError, match="does not implement reset.*propose"):
        resolve_plugin(f"{BAIT}:StrictController", protocol="agent")


def _scenario(tmp_path: Path, target: str, kwargs: str = "{}", mode: str = "ideal") -> Path:
    path = tmp_path / "hostile.toml"
    path.write_text(f'''name = "hostile"
feeder = "cigre-lv"
start = "2016-06-06T00:00:00Z"
end = "2016-06-06T01:00:00Z"

[[controllers]]
name = "evil"
mode = "{mode}"
target = "{target}"
kwargs = {kwargs}
''', encoding="utf-8")
    return path


@pytest.mark.parametrize("command", ["validate", "run"])
def test_validate_and_run_refuse_os_system_and_nothing_runs(marker: Path, tmp_path: Path, command: str) -> None:
    scenario = _scenario(tmp_path, "os:system", f'{{ command = "touch {marker}" }}')
    args = [command, str(scenario)] + (["--runs-root", str(tmp_path / "runs")] if command == "run" else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "'os:system'" in result.output and "not a class" in result.output
    assert "Traceback" not in result.output
    assert not marker.exists()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_validate_checks_protocol_and_keyword_arguments_without_running(marker: Path, tmp_path: Path) -> None:
    wrong_kwargs = runner.invoke(app, ["validate", str(_scenario(tmp_path, f"{BAIT}:StrictController",
                                                                 '{ gian = 2.0 }'))])
    assert wrong_kwargs.exit_code == 2 and "gian" in wrong_kwargs.output
    wrong_mode = runner.invoke(app, ["validate", str(_scenario(tmp_path, f"{BAIT}:StrictController", mode="agents"))])
    assert wrong_mode.exit_code == 2 and "propose" in wrong_mode.output
    assert not marker.exists()  # validating never instantiates the plug-in
