"""Where a DePIN policy's edge agents run: all in this process, or spread over worker processes.

``LocalAgents`` keeps every agent here. ``ProcessAgents`` starts worker processes and places each agent in
one of them for the whole run — as it would run on its own premises — so the agents of a coordination round
solve in parallel on as many cores as there are workers. Only an agent's observation (once per interval), its
inbox and its proposal cross a process boundary; the engine still moves every message over the comms model.
Agents are deterministic, so both give the same run (tested).

Workers are started with ``spawn`` (no inherited threads or locks) and get the parent's ``sys.path``, so a
plug-in agent importable here is importable there.
"""

from __future__ import annotations

import copyreg
import multiprocessing
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import MappingProxyType
from typing import Any

from controllers.api import (
    Agent,
    AgentMessage,
    AgentSpec,
    Observation,
    Proposal,
    load_controller,
)

__all__ = ["AgentSetup", "LocalAgents", "ProcessAgents", "start_agents"]


def _read_only(mapping: dict[str, Any]) -> MappingProxyType:
    return MappingProxyType(mapping)


# Observations and dispatches carry read-only mappings; they cross the process boundary as plain dicts.
copyreg.pickle(MappingProxyType, lambda m: (_read_only, (dict(m),)))

#: A round's request per participant: its observation and what reached its inbox.
Requests = Mapping[str, tuple[Observation, tuple[AgentMessage, ...]]]


@dataclass(frozen=True)
class AgentSetup:
    """How to build one participant's agent: the plug-in, its keyword arguments, its spec and seed."""

    target: str
    kwargs: Mapping[str, Any]
    spec: AgentSpec
    seed: int


def build_agent(setup: AgentSetup) -> Agent:
    agent = load_controller(setup.target, **dict(setup.kwargs))
    if not isinstance(agent, Agent):
        raise ValueError(f"controllers.target={setup.target!r}: mode 'agents' needs an Agent (reset + propose), "
                         "not a Controller")
    agent.reset(setup.spec, seed=setup.seed)
    return agent


class LocalAgents:
    """Every agent in this process (the default, and what tests inspect through ``agents``)."""

    def __init__(self, setups: Sequence[AgentSetup]) -> None:
        self.agents: dict[str, Agent] = {s.spec.participant_id: build_agent(s) for s in setups}

    @property
    def participants(self) -> list[str]:
        return list(self.agents)

    def propose(self, requests: Requests, *, round_index: int) -> dict[str, Proposal]:
        return {pid: self.agents[pid].propose(obs, inbox, round_index=round_index)
                for pid, (obs, inbox) in requests.items()}

    def close(self) -> None:
        pass


class ProcessAgents:
    """The agents spread over ``workers`` processes, balanced by their number of assets."""

    def __init__(self, setups: Sequence[AgentSetup], *, workers: int) -> None:
        if workers < 2:
            raise ValueError(f"agent_workers={workers}: a process pool needs at least 2 (use LocalAgents)")
        self._participants = [s.spec.participant_id for s in setups]
        groups: list[list[AgentSetup]] = [[] for _ in range(min(workers, len(setups)))]
        for setup in sorted(setups, key=lambda s: -len(s.spec.assets)):  # largest first onto the lightest
            min(groups, key=lambda g: sum(len(s.spec.assets) for s in g)).append(setup)
        context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        self.worker_of: dict[str, int] = {}
        try:
            for i, group in enumerate(groups):
                here, there = context.Pipe()
                process = context.Process(target=_serve, args=(there,), name=f"gridtwin-agents-{i}", daemon=True)
                process.start()
                there.close()
                here.send(("init", list(sys.path), list(group)))
                self._workers.append((process, here))
                self.worker_of |= {s.spec.participant_id: i for s in group}
            for i in range(len(self._workers)):
                self._receive(i)  # "ready", or the error that stopped an agent from starting
        except BaseException:
            self.close()
            raise
        self._sent: dict[str, tuple[int, int]] = {}  # participant -> (time, id) of the observation its worker holds

    @property
    def participants(self) -> list[str]:
        return list(self._participants)

    def propose(self, requests: Requests, *, round_index: int) -> dict[str, Proposal]:
        batches: list[dict[str, tuple[Observation | None, tuple[AgentMessage, ...]]]] = [{} for _ in self._workers]
        for pid, (obs, inbox) in requests.items():
            key = (obs.time.value, id(obs))  # the observation changes once per interval, not per round
            batches[self.worker_of[pid]][pid] = (obs if self._sent.get(pid) != key else None, inbox)
            self._sent[pid] = key
        busy = [i for i, batch in enumerate(batches) if batch]
        for i in busy:
            self._workers[i][1].send(("propose", batches[i], round_index))
        proposals: dict[str, Proposal] = {}
        for i in busy:
            proposals |= self._receive(i)
        return {pid: proposals[pid] for pid in requests}

    def _receive(self, i: int) -> Any:
        process, conn = self._workers[i]
        try:
            kind, payload = conn.recv()
        except EOFError:
            raise RuntimeError(f"agent worker {process.name} exited (code {process.exitcode}) mid-run") from None
        if kind == "error":
            raise RuntimeError(f"agent worker {process.name}: {payload}")
        return payload

    def close(self) -> None:
        for process, conn in self._workers:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for process, conn in self._workers:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
            conn.close()
        self._workers = []


def start_agents(setups: Sequence[AgentSetup], *, workers: int = 1) -> LocalAgents | ProcessAgents:
    """The agents of one policy, in this process (``workers`` <= 1) or over that many worker processes."""
    if workers <= 1 or len(setups) < 2:
        return LocalAgents(setups)
    return ProcessAgents(setups, workers=workers)


def _serve(conn: Connection) -> None:
    """A worker: builds its agents, then answers rounds until told to close (or its parent goes away)."""
    agents: dict[str, Agent] = {}
    seen: dict[str, Observation] = {}
    while True:
        try:
            kind, *args = conn.recv()
        except EOFError:
            return
        if kind == "close":
            return
        try:
            if kind == "init":
                path, setups = args
                sys.path[:0] = [p for p in path if p not in sys.path]
                agents = {s.spec.participant_id: build_agent(s) for s in setups}
                conn.send(("ok", "ready"))
            elif kind == "propose":
                batch, round_index = args
                out = {}
                for pid, (obs, inbox) in batch.items():
                    if obs is not None:
                        seen[pid] = obs
                    out[pid] = agents[pid].propose(seen[pid], inbox, round_index=round_index)
                conn.send(("ok", out))
        except Exception as exc:  # noqa: BLE001 — reported to the parent, which raises it with the worker's name
            what = "".join(traceback.format_exception_only(exc)).strip()
            conn.send(("error", f"{what}\n{traceback.format_exc(limit=8)}"))
