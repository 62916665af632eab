"""Observations as the engine hands them to plug-ins: built lazily, with only what the plug-in reads.

The twin's per-step state lives in arrays (DESIGN.md §6); the labelled tables of ``controllers.api.Observation``
(asset table, state, forecast, grid snapshot) are what a plug-in sees at the edge. ``LazyObservation`` is an
``Observation`` whose fields are computed on first access from values captured when it was made, so a
controller that reads nothing (``NoControl``) costs nothing, and one read later still sees the interval it was
made for. It reads, copies, pickles and checks (``controllers.testing``) as a plain ``Observation``; pickling or
deep-copying one gives a plain, fully built ``Observation``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from controllers.api import NetworkLimits, Observation

__all__ = ["LazyObservation"]

_FIELDS = tuple(f.name for f in dataclasses.fields(Observation))


class LazyObservation(Observation):
    """An ``Observation`` whose fields named in ``build`` are computed by those callables on first access.

    Constructed like ``Observation`` (every field by keyword, so ``dataclasses.replace`` works); ``build`` maps a
    field name to a zero-argument callable that makes its value, once.
    """

    def __init__(self, time: Any = None, step: Any = None, assets: Any = None, state: Any = None,
                 forecast: Any = None, limits: NetworkLimits | None = None, grid: Any = None,
                 sensitivities: Any = None, signals: Mapping[str, Any] | None = None, *,
                 build: Mapping[str, Callable[[], Any]] | None = None) -> None:
        given = {"time": time, "step": step, "assets": assets, "state": state, "forecast": forecast,
                 "limits": NetworkLimits() if limits is None else limits, "grid": grid,
                 "sensitivities": sensitivities, "signals": MappingProxyType({}) if signals is None else signals}
        build = dict(build or {})
        unknown = set(build) - set(_FIELDS)
        if unknown:
            raise ValueError(f"build: {sorted(unknown)[0]!r} is not an Observation field")
        self.__dict__["_values"] = {k: v for k, v in given.items() if k not in build}
        self.__dict__["_build"] = build

    @classmethod
    def of(cls, values: dict[str, Any], build: dict[str, Callable[[], Any]]) -> LazyObservation:
        """The engine's per-step constructor: ``values`` (fields given) and ``build`` (fields made on first
        access) together name every field exactly once (the engine's fixed call sites; no checks, no copies:
        both dicts become the observation's own)."""
        obj = object.__new__(cls)
        obj.__dict__["_values"] = values
        obj.__dict__["_build"] = build
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return Observation, tuple(getattr(self, name) for name in _FIELDS)


def _lazy_field(name: str) -> property:
    def get(self: LazyObservation) -> Any:
        values = self.__dict__["_values"]
        if name not in values:
            values[name] = self.__dict__["_build"].pop(name)()
        return values[name]

    get.__name__ = name
    return property(get, doc=f"Observation.{name}, computed on first access.")


for _name in _FIELDS:
    setattr(LazyObservation, _name, _lazy_field(_name))
