"""Tools for controller authors: ``check_controller`` (a contract checker) and ``FunctionController``.

``check_controller`` runs a controller on observations you provide and fails loudly, naming the rule, when
it breaks the contract of DESIGN.md §4: protocol, determinism for a seed, no mutation of the observation,
only known assets, setpoints within ratings, and DPP for any cvxpy problem it exposes.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from types import MappingProxyType
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from controllers.api import AssetKind, Controller, ControllerSpec, Dispatch, Observation

__all__ = ["ContractViolation", "FunctionController", "check_controller"]


class ContractViolation(AssertionError):
    """A controller broke the plug-in contract; the message names the rule."""


class FunctionController:
    """Adapt a plain function ``fn(observation) -> Dispatch | Mapping[asset_id, p_mw]`` into a controller."""

    def __init__(self, fn: Callable[[Observation], Dispatch | Mapping[str, float]]) -> None:
        self.fn = fn

    def reset(self, spec: ControllerSpec, *, seed: int) -> None:
        del spec, seed

    def act(self, observation: Observation) -> Dispatch:
        out = self.fn(observation)
        return out if isinstance(out, Dispatch) else Dispatch.from_mapping(out)


def _fingerprint(obs: Observation) -> bytes:
    return pickle.dumps(
        (obs.time, obs.step, obs.assets, obs.state, obs.forecast, obs.limits, obs.grid, obs.sensitivities, dict(obs.signals))
    )


def _copy(obs: Observation) -> Observation:
    """A deep copy (signals are a read-only mapping proxy, which deepcopy cannot copy as such)."""
    return dataclasses.replace(
        copy.deepcopy(dataclasses.replace(obs, signals={})), signals=MappingProxyType(copy.deepcopy(dict(obs.signals)))
    )


def _rating_bounds(assets: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    kind = assets["kind"].astype(str)
    p_max = assets["p_max_mw"].astype(float)
    lo = pd.Series(0.0, index=assets.index)
    hi = p_max.copy()
    lo[kind == AssetKind.BATTERY] = -p_max
    lo[(kind == AssetKind.EV_CHARGER) & assets["v2g"].astype(bool)] = -p_max
    lo[kind == AssetKind.PV] = -p_max
    hi[kind == AssetKind.PV] = 0.0
    return lo, hi


def check_controller(
    make: Callable[[], Controller],
    spec: ControllerSpec,
    observations: Iterable[Observation],
    *,
    seed: int = 0,
    tolerance_mw: float = 1e-6,
) -> list[Dispatch]:
    """Check a controller against the contract; return its dispatches. ``make`` builds a fresh instance."""
    observations = list(observations)
    if not observations:
        raise ValueError("observations: give at least one Observation to check against")
    first = make()
    if not isinstance(first, Controller):
        raise ContractViolation("protocol: the object needs reset(spec, *, seed) and act(observation) -> Dispatch")
    second = make()
    first.reset(copy.deepcopy(spec), seed=seed)
    second.reset(copy.deepcopy(spec), seed=seed)
    _check_dpp(first)
    lo, hi = _rating_bounds(spec.assets)
    out = []
    for obs in observations:
        before = _fingerprint(obs)
        d1 = first.act(obs)
        if _fingerprint(obs) != before:
            raise ContractViolation(f"no mutation: act() changed the observation at {obs.time}")
        d2 = second.act(_copy(obs))
        if not isinstance(d1, Dispatch):
            raise ContractViolation(f"protocol: act() returned {type(d1).__name__}, expected Dispatch")
        if not (d1.p_mw.index.equals(d2.p_mw.index) and np.allclose(d1.p_mw, d2.p_mw, atol=1e-9, equal_nan=True)):
            raise ContractViolation(f"determinism: two instances reset with seed={seed} disagree at {obs.time}")
        unknown = d1.p_mw.index.difference(spec.assets.index)
        if len(unknown):
            raise ContractViolation(f"known assets: dispatch names unknown asset_id {unknown[0]!r}")
        _check_ratings(d1.p_mw, lo, hi, tolerance_mw, what="p_mw", time=obs.time)
        if d1.schedule_mw is not None:
            try:
                d1.schedule_offsets(obs.time, spec.step)
            except ValueError as exc:
                raise ContractViolation(f"schedule: {exc}") from None
            unknown = d1.schedule_mw.index.difference(spec.assets.index)
            if len(unknown):
                raise ContractViolation(f"known assets: schedule_mw names unknown asset_id {unknown[0]!r}")
            for column in d1.schedule_mw.columns:
                _check_ratings(d1.schedule_mw[column], lo, hi, tolerance_mw, what=f"schedule_mw[{column}]",
                               time=obs.time)
        out.append(d1)
    return out


def _check_ratings(p: pd.Series, lo: pd.Series, hi: pd.Series, tolerance_mw: float, *, what: str,
                   time: pd.Timestamp) -> None:
    p = p.dropna()
    bad = p[(p < lo.reindex(p.index) - tolerance_mw) | (p > hi.reindex(p.index) + tolerance_mw)]
    if len(bad):
        aid = bad.index[0]
        raise ContractViolation(
            f"within ratings: {aid} {what}={float(bad.iloc[0])!r} outside [{lo[aid]}, {hi[aid]}] at {time}")


def _check_dpp(controller: Any) -> None:
    """Any cvxpy problem the controller exposes as ``.problem`` or ``.problems`` must be DPP."""
    problems = []
    for attr in ("problem", "problems"):
        value = getattr(controller, attr, None)
        if value is None:
            continue
        problems.extend(value if isinstance(value, (list, tuple)) else [value])
    for problem in problems:
        is_dpp = getattr(problem, "is_dpp", None)
        if callable(is_dpp) and not is_dpp():
            raise ContractViolation("DPP: the controller's cvxpy problem is not DPP; re-solves will recompile")
