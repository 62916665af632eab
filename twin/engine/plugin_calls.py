"""Calls into plug-ins (controllers and edge agents), guarded: a plug-in's failure becomes one ``PluginError``
naming the policy, the method, the interval and the exception, with the traceback kept for the run's log.

Two ways to use it, same errors:

- ``call_plugin(policy, target, "act", lambda: controller.act(observation), interval=t)`` (and
  ``checked_dispatch`` on its result) at each call site in the engine;
- ``guarded_entry(entry)``: a scenario's controller entry whose target is a ``GuardedController`` /
  ``GuardedAgent`` wrapping the real plug-in, so an unchanged engine builds and calls it through the guard
  (how ``twin.run`` uses it today).

A plug-in's own bad input is its author's problem, not the user's: the CLI ends the run with exit code 1
and the one-line message, and writes the traceback to ``RUN/log.txt``.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from controllers.api import AgentSpec, ControllerSpec, Dispatch, Observation, Proposal

__all__ = ["GuardedAgent", "GuardedController", "PluginError", "call_plugin", "checked_dispatch", "checked_proposal",
           "guarded_entry", "GuardedAgentNetwork"]


class PluginError(Exception):
    """A plug-in raised, or returned something that is not what the protocol promises.

    ``policy``: the scenario's policy name; ``agent``: the participant, for an edge agent; ``method``:
    ``__init__``, ``reset``, ``act`` or ``propose (round k)``; ``interval``: the interval start (None before
    the run); ``error``: ``"TypeName: message"`` of the exception; ``traceback_text``: the formatted traceback.
    """

    def __init__(self, *, policy: str, target: str, method: str, interval: pd.Timestamp | None, error: str,
                 traceback_text: str = "", agent: str | None = None) -> None:
        self.policy, self.target, self.method, self.agent = policy, target, method, agent
        self.interval, self.error, self.traceback_text = interval, error, traceback_text
        super().__init__(self.message())

    def message(self) -> str:
        when = "before the first interval" if self.interval is None else f"at interval {self.interval.isoformat()}"
        who = f"policy {self.policy!r}" + (f" agent {self.agent!r}" if self.agent else "")
        return f"{who} ({self.target}): {self.method} raised {self.error} {when}"

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries (agents in worker processes)
        return _rebuild, (self.policy, self.target, self.method, self.interval, self.error, self.traceback_text,
                          self.agent)


def _rebuild(policy: str, target: str, method: str, interval: pd.Timestamp | None, error: str,
             traceback_text: str, agent: str | None) -> PluginError:
    return PluginError(policy=policy, target=target, method=method, interval=interval, error=error,
                       traceback_text=traceback_text, agent=agent)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text and text[0] else type(exc).__name__


def call_plugin(policy: str, target: str, method: str, call: Callable[[], Any], *,
                interval: pd.Timestamp | None = None, agent: str | None = None) -> Any:
    """``call()`` (a plug-in method bound to its arguments); any exception it raises becomes a ``PluginError``."""
    try:
        return call()
    except PluginError:
        raise
    except Exception as exc:  # noqa: BLE001 — whatever a plug-in raises is reported the same way
        raise PluginError(policy=policy, target=target, method=method, interval=interval, error=_describe(exc),
                          traceback_text=traceback.format_exc(), agent=agent) from exc


def _dispatch_problem(result: Any) -> str | None:
    if not isinstance(result, Dispatch):
        return f"returned a {type(result).__name__}, not a controllers.api.Dispatch"
    if not isinstance(result.p_mw, pd.Series) or not isinstance(result.q_mvar, pd.Series):
        return "returned a Dispatch whose p_mw or q_mvar is not a pandas Series"
    if result.schedule_mw is not None and not isinstance(result.schedule_mw, pd.DataFrame):
        return "returned a Dispatch whose schedule_mw is not a pandas DataFrame"
    return None


def checked_dispatch(policy: str, target: str, result: Any, *, interval: pd.Timestamp | None) -> Dispatch:
    """``result`` if it is a Dispatch of Series (and a DataFrame schedule), else a ``PluginError`` from ``act``."""
    problem = _dispatch_problem(result)
    if problem is not None:
        raise PluginError(policy=policy, target=target, method="act", interval=interval, error=f"TypeError: {problem}")
    return result


def checked_proposal(policy: str, target: str, result: Any, *, interval: pd.Timestamp | None,
                     method: str = "propose", agent: str | None = None) -> Proposal:
    """``result`` if it is a Proposal carrying a valid Dispatch, else a ``PluginError`` from ``propose``."""
    if isinstance(result, Proposal):
        problem = _dispatch_problem(result.dispatch)
        problem = None if problem is None else f"returned a Proposal whose dispatch {problem.removeprefix('returned ')}"
    else:
        problem = f"returned a {type(result).__name__}, not a controllers.api.Proposal"
    if problem is not None:
        raise PluginError(policy=policy, target=target, method=method, interval=interval, error=f"TypeError: {problem}",
                          agent=agent)
    return result


def _build(policy: str, target: str, kwargs: Mapping[str, Any]) -> Any:
    factory = call_plugin(policy, target, "__init__", lambda: _resolve(target))
    return call_plugin(policy, target, "__init__", lambda: factory(**dict(kwargs)))


def _resolve(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


class GuardedController:
    """A Controller that builds and calls the plug-in ``target`` through the guard (same results)."""

    def __init__(self, *, plugin: str, plugin_kwargs: Mapping[str, Any], policy: str) -> None:
        self._target, self._policy = plugin, policy
        self._inner = _build(policy, plugin, plugin_kwargs)

    def reset(self, spec: ControllerSpec, *, seed: int) -> None:
        call_plugin(self._policy, self._target, "reset", lambda: self._inner.reset(spec, seed=seed))

    def act(self, observation: Observation) -> Dispatch:
        result = call_plugin(self._policy, self._target, "act", lambda: self._inner.act(observation),
                             interval=observation.time)
        return checked_dispatch(self._policy, self._target, result, interval=observation.time)

    @property
    def reads_grid(self) -> bool:
        """The plug-in's own declaration (``reads_grid = False``: it never reads ``observation.grid``, so the
        twin may replay it open loop); True when it makes none."""
        return bool(getattr(self._inner, "reads_grid", True))


class GuardedAgent:
    """An edge Agent that builds and calls the plug-in ``target`` through the guard (same results)."""

    def __init__(self, *, plugin: str, plugin_kwargs: Mapping[str, Any], policy: str) -> None:
        self._target, self._policy, self._agent = plugin, policy, None
        self._inner = _build(policy, plugin, plugin_kwargs)

    def reset(self, spec: AgentSpec, *, seed: int) -> None:
        self._agent = spec.participant_id
        call_plugin(self._policy, self._target, "reset", lambda: self._inner.reset(spec, seed=seed), agent=self._agent)

    def propose(self, observation: Observation, inbox: tuple[Any, ...], *, round_index: int) -> Proposal:
        method = f"propose (round {round_index})"
        result = call_plugin(self._policy, self._target, method,
                             lambda: self._inner.propose(observation, inbox, round_index=round_index),
                             interval=observation.time, agent=self._agent)
        return checked_proposal(self._policy, self._target, result, interval=observation.time, method=method,
                                agent=self._agent)


class GuardedAgentNetwork:
    """A DePIN agent network (``controllers.coordination.AgentNetwork``) built and called through the guard."""

    def __init__(self, *, plugin: str, plugin_kwargs: Mapping[str, Any], policy: str) -> None:
        self._target, self._policy = plugin, policy
        self._inner = _build(policy, plugin, plugin_kwargs)
        self._time: pd.Timestamp | None = None

    def reset(self, spec: Any, *, seed: int) -> None:
        call_plugin(self._policy, self._target, "reset", lambda: self._inner.reset(spec, seed=seed))

    def begin(self, grid: Any, participants: Observation, *, active: Any) -> None:
        self._time = participants.time
        call_plugin(self._policy, self._target, "begin", lambda: self._inner.begin(grid, participants, active=active),
                    interval=self._time)

    def coordinate(self, round_index: int, delivery: Any) -> Any:
        return call_plugin(self._policy, self._target, f"coordinate (round {round_index})",
                           lambda: self._inner.coordinate(round_index, delivery), interval=self._time)

    def dispatch(self) -> Dispatch:
        result = call_plugin(self._policy, self._target, "dispatch", self._inner.dispatch, interval=self._time)
        return checked_dispatch(self._policy, self._target, result, interval=self._time)

    def __getattr__(self, name: str) -> Any:  # diagnostics and tests read the network's own attributes
        return getattr(self.__dict__["_inner"], name)


def _is_agent_network(target: str) -> bool:
    try:
        cls = _resolve(target)
    except Exception:  # noqa: BLE001 — the guard reports it when the target is built
        return False
    return isinstance(cls, type) and all(callable(getattr(cls, m, None)) for m in ("begin", "coordinate", "dispatch"))


def guarded_entry(entry: Any) -> Any:
    """The scenario's controller ``entry`` with its target wrapped in the guard for its mode."""
    if entry.mode == "agents":
        wrapper = GuardedAgentNetwork if _is_agent_network(entry.target) else GuardedAgent
    else:
        wrapper = GuardedController
    return entry.model_copy(update={
        "target": f"{__name__}:{wrapper.__name__}",
        "kwargs": {"plugin": entry.target, "plugin_kwargs": dict(entry.kwargs), "policy": entry.name},
    })
