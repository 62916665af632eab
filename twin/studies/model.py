"""Study files: a base scenario plus sweep axes, expanded into validated variants with stable ids.

Owns parsing, validation and expansion only (no execution). Every error is a ``StudyError`` naming the
study file, the key and the value. Every variant is validated as a ``Scenario`` (and its controllers are
instantiated) here, so a bad value fails before any work starts.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import itertools
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from controllers.api import load_controller
from twin.scenario import Scenario, ScenarioError, parse_scenario

__all__ = ["Study", "StudyError", "Variant", "load_study", "parse_study"]

#: Top-level keys of a study file that are not sweep axes.
STUDY_KEYS = frozenset({"name", "description", "base", "mode", "variants"})
#: Keys a ``[[variants]]`` table may carry besides scenario overrides.
VARIANT_KEYS = frozenset({"label"})
#: Controller fields addressable as ``controllers.<name>.<field>`` (the name is the address, so not itself).
CONTROLLER_FIELDS = frozenset({"target", "kwargs"})
ID_LENGTH = 10


class StudyError(ValueError):
    """A study file that cannot be used; the message names the file, the key and the offending value."""


@dataclass(frozen=True)
class Variant:
    """One point of a study: the overrides applied to the base and the full scenario they give.

    ``scenario`` is a plain TOML-like dict (picklable, cheap to ship to a Dask worker); ``params`` holds the
    overrides encoded as Parquet-friendly scalars, keyed by dotted scenario key, in axis order.
    """

    variant_id: str
    label: str
    overrides: Mapping[str, Any]
    params: Mapping[str, Any]
    scenario: Mapping[str, Any]
    base_dir: Path


@dataclass(frozen=True)
class Study:
    name: str
    path: Path
    base_path: Path
    mode: Literal["grid", "list"]
    axes: tuple[str, ...]
    variants: tuple[Variant, ...]
    description: str = ""

    def variant(self, variant_id: str) -> Variant:
        for v in self.variants:
            if v.variant_id == variant_id:
                return v
        raise KeyError(f"variant_id={variant_id!r} is not in study {self.name!r}")


# -- keys ------------------------------------------------------------------------------------------


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for nested tables, so ``fleet.pv_penetration = [..]`` (a TOML table) and the quoted
    ``"fleet.pv_penetration" = [..]`` mean the same. Lists are leaves: a value is never a table."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, prefix=f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _model_of(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _check_key(key: str, *, base: Mapping[str, Any], source: str) -> None:
    """Raise unless ``key`` names a scenario field (or ``controllers.<name>.target|kwargs[.<kwarg>]``)."""
    parts = key.split(".")
    if parts[0] == "controllers" and len(parts) > 1:
        names = [c.get("name") for c in base.get("controllers", [])]
        if parts[1] not in names:
            raise StudyError(f"{source}: key {key!r}: no controller named {parts[1]!r} in the base (has {names})")
        if len(parts) < 3 or parts[2] not in CONTROLLER_FIELDS or (parts[2] == "target" and len(parts) > 3) or len(parts) > 4:
            raise StudyError(
                f"{source}: key {key!r}: address a controller as 'controllers.<name>.target' or "
                "'controllers.<name>.kwargs[.<argument>]'"
            )
        return
    model: type[BaseModel] | None = Scenario
    for i, part in enumerate(parts):
        fields = {k: f for k, f in model.model_fields.items() if k != "base_dir"} if model else {}
        if part not in fields:
            where = ".".join(parts[:i]) or "scenario"
            raise StudyError(f"{source}: key {key!r} is not a scenario key ({where} has: {', '.join(sorted(fields))})")
        model = _model_of(fields[part].annotation)
        if model is None and i < len(parts) - 1:
            raise StudyError(f"{source}: key {key!r}: {'.'.join(parts[: i + 1])!r} has no sub-keys")


def _apply(scenario: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if parts[0] == "controllers" and len(parts) > 1:
        entry = next(c for c in scenario["controllers"] if c.get("name") == parts[1])
        if len(parts) == 4:
            entry.setdefault("kwargs", {})[parts[3]] = copy.deepcopy(value)
        else:
            entry[parts[2]] = copy.deepcopy(value)
        return
    node = scenario
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = copy.deepcopy(value)


def _lookup(data: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted key of a (validated) scenario dict, or None where it has none."""
    parts = key.split(".")
    if parts[0] == "controllers" and len(parts) > 1:
        entry = next((c for c in data.get("controllers", []) if c.get("name") == parts[1]), {})
        value: Any = entry.get(parts[2])
        return value.get(parts[3]) if len(parts) == 4 and isinstance(value, Mapping) else value
    node: Any = data
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


# -- values, ids, labels ---------------------------------------------------------------------------


def _json_default(value: Any) -> str:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    raise TypeError(f"{value!r} of type {type(value).__name__} is not a TOML value")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)


def variant_id_of(overrides: Mapping[str, Any]) -> str:
    """A short, stable hash of the overrides: the same overrides give the same id on every machine."""
    return hashlib.sha256(_canonical(dict(overrides)).encode()).hexdigest()[:ID_LENGTH]


def _show(value: Any) -> str:
    if isinstance(value, Sequence) and not isinstance(value, str) and value and all(
        isinstance(v, Mapping) and "name" in v for v in value
    ):
        return "+".join(str(v["name"]) for v in value)  # a controller set reads best as its names
    if isinstance(value, str):
        return value
    text = _canonical(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _label(overrides: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_show(v)}" for k, v in overrides.items()) or "base"


def _encode_params(variants: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One type per parameter column across the study, so every variant's Parquet file concatenates:
    bool, int, float (ints widen when mixed with floats or missing), else a string (JSON for structures)."""
    columns: dict[str, list[Any]] = {k: [v.get(k) for v in variants] for k in keys}
    encoded: dict[str, list[Any]] = {}
    for key, values in columns.items():
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, bool) for v in present) and len(present) == len(values):
            encoded[key] = values
        elif present and all(isinstance(v, int) and not isinstance(v, bool) for v in present) and len(present) == len(values):
            encoded[key] = values
        elif present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            encoded[key] = [float("nan") if v is None else float(v) for v in values]
        else:
            encoded[key] = [None if v is None else v if isinstance(v, str) else
                            v.isoformat() if isinstance(v, (dt.date, dt.time)) else _canonical(v) for v in values]
    return [{k: encoded[k][i] for k in keys} for i in range(len(variants))]


# -- parsing ---------------------------------------------------------------------------------------


def _read_toml(path: Path, *, what: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StudyError(f"{path}: cannot read {what} ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{path}: not valid TOML ({exc})") from None


def _grid_overrides(data: Mapping[str, Any], *, source: str) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    axes = _flatten({k: v for k, v in data.items() if k not in STUDY_KEYS})
    if not axes:
        raise StudyError(f"{source}: mode='grid' needs at least one sweep axis, e.g. \"fleet.pv_penetration\" = [0.5, 1.0]")
    for key, values in axes.items():
        if not isinstance(values, list):
            raise StudyError(f"{source}: axis {key!r} = {values!r} must be an array of values, e.g. {key} = [{values!r}]")
        if not values:
            raise StudyError(f"{source}: axis {key!r} = [] is empty; give it at least one value")
        seen: set[str] = set()
        for value in values:
            if _canonical(value) in seen:
                raise StudyError(f"{source}: axis {key!r} repeats the value {value!r}")
            seen.add(_canonical(value))
    keys = tuple(axes)
    return keys, [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def _list_overrides(data: Mapping[str, Any], *, source: str) -> tuple[tuple[str, ...], list[dict[str, Any]], list[str | None]]:
    stray = sorted(k for k in data if k not in STUDY_KEYS)
    if stray:
        raise StudyError(f"{source}: key {stray[0]!r} is outside [[variants]]; with mode='list' each variant lists its own overrides")
    tables = data.get("variants")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, Mapping) for t in tables):
        raise StudyError(f"{source}: variants={tables!r}: mode='list' needs one or more [[variants]] tables")
    overrides, labels = [], []
    for i, table in enumerate(tables):
        label = table.get("label")
        if label is not None and not isinstance(label, str):
            raise StudyError(f"{source}: variants[{i}].label={label!r} must be a string")
        flat = _flatten({k: v for k, v in table.items() if k not in VARIANT_KEYS})
        if not flat:
            raise StudyError(f"{source}: variants[{i}] (label={label!r}) overrides nothing")
        overrides.append(flat)
        labels.append(label)
    keys = tuple(dict.fromkeys(k for o in overrides for k in o))
    return keys, overrides, labels


def _check_controllers(scenario: Scenario, *, source: str, checked: set[str]) -> None:
    """Check each controller once per distinct (target, mode, kwargs) as ``run`` does (twin.preflight: a class
    implementing its mode's protocol, its constructor taking the kwargs), then build it once — only a checked
    class is called — so that bad values (``shave_fraction = 2.0``) fail here, not on a worker."""
    from twin.preflight import check_plugin  # it imports the scenario machinery this module extends

    for entry in scenario.controllers:
        key = _canonical([entry.target, entry.mode, entry.kwargs])
        if key in checked:
            continue
        try:
            check_plugin(entry, where=f"controllers.{entry.name}")
            load_controller(entry.target, **entry.kwargs)
        except (ValueError, TypeError) as exc:
            raise StudyError(f"{source}: controllers.{entry.name}: {exc}") from None
        checked.add(key)


def parse_study(data: Mapping[str, Any], *, path: Path) -> Study:
    """Validate and expand a study document read from ``path`` (used for relative paths and messages)."""
    source = str(path)
    not_strings = [k for k in ("base", "mode") if k in data and not isinstance(data[k], str)]
    if not_strings:
        raise StudyError(f"{source}: {not_strings[0]}={data[not_strings[0]]!r} must be a string")
    if "base" not in data:
        raise StudyError(f"{source}: base is missing; set base = \"path/to/scenario.toml\" (relative to the study file)")
    mode = data.get("mode", "grid")
    if mode not in ("grid", "list"):
        raise StudyError(f"{source}: mode={mode!r} must be 'grid' or 'list'")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise StudyError(f"{source}: name={name!r} must be a non-empty string")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise StudyError(f"{source}: description={description!r} must be a string")
    base_path = (path.parent / data["base"]).resolve()
    base_raw = _read_toml(base_path, what="base scenario")
    try:
        base = parse_scenario(base_raw, base_dir=base_path.parent, source=str(base_path))
    except ScenarioError as exc:
        raise StudyError(f"{source}: base={data['base']!r} is not a valid scenario:\n{exc}") from None

    labels: list[str | None]
    if mode == "grid":
        keys, overrides = _grid_overrides(data, source=source)
        labels = [None] * len(overrides)
    else:
        keys, overrides, labels = _list_overrides(data, source=source)
    for key in keys:
        _check_key(key, base=base_raw, source=source)

    base_values = base.to_toml_dict()
    filled = [{k: o.get(k, _lookup(base_values, k)) for k in keys} for o in overrides]
    params = _encode_params(filled, keys)
    variants: list[Variant] = []
    ids: dict[str, str] = {}
    checked: set[str] = set()
    for over, label, param in zip(overrides, labels, params):
        vid = variant_id_of(over)
        label = label or _label(over)
        if vid in ids:
            raise StudyError(f"{source}: variants {ids[vid]!r} and {label!r} have the same overrides ({_canonical(over)})")
        ids[vid] = label
        scenario = copy.deepcopy(base_raw)
        for key, value in over.items():
            _apply(scenario, key, value)
        where = f"{source}: variant {label!r} ({vid})"
        try:
            validated = parse_scenario(scenario, base_dir=base_path.parent, source=where)
        except ScenarioError as exc:
            raise StudyError(str(exc)) from None
        _check_controllers(validated, source=where, checked=checked)
        variants.append(
            Variant(variant_id=vid, label=label, overrides=over, params=param, scenario=scenario, base_dir=base_path.parent)
        )
    return Study(name=name, path=path, base_path=base_path, mode=mode, axes=keys, variants=tuple(variants),
                 description=description)


def load_study(path: str | Path) -> Study:
    """Read, validate and expand a study TOML file."""
    path = Path(path)
    return parse_study(_read_toml(path, what="study file"), path=path)
