"""Where a DePIN policy's per-participant edge agents run: all in this process, or spread over a Dask cluster.

``LocalAgents`` keeps every agent here. ``DaskAgents`` places the agents on the workers of a Dask cluster — a
new local cluster of worker processes, or an existing one at a scheduler address (the same kind of cluster
studies use, ``twin.cluster``) — as stateful actors: each worker holds its share of the agents for the whole
run, as each would run on its own premises, so the agents of a coordination round solve in parallel. Only an
agent's observation (once per interval), its inbox and its proposal cross a process boundary; the engine still
moves every message over the comms model. Agents are deterministic, so both give the same run (tested).

Workers get the parent's ``sys.path``, so a plug-in agent importable here is importable there.
"""

from __future__ import annotations

import copyreg
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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

__all__ = ["AgentGroup", "AgentSetup", "DaskAgents", "LocalAgents", "start_agents"]


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


class AgentGroup:
    """One worker's share of the agents: a Dask actor, built on its worker and kept there for the run."""

    def __init__(self, path: list[str], setups: list[AgentSetup]) -> None:
        sys.path[:0] = [p for p in path if p not in sys.path]
        self.agents = {s.spec.participant_id: build_agent(s) for s in setups}
        self.seen: dict[str, Observation] = {}

    def propose(self, batch: Mapping[str, tuple[Observation | None, tuple[AgentMessage, ...]]],
                round_index: int) -> dict[str, Proposal]:
        out = {}
        for pid, (obs, inbox) in batch.items():
            if obs is not None:
                self.seen[pid] = obs
            out[pid] = self.agents[pid].propose(self.seen[pid], inbox, round_index=round_index)
        return out


class DaskAgents:
    """The agents spread over the workers of a Dask cluster (``workers`` local processes, or the cluster at
    ``scheduler``), balanced by their number of assets; group ``i`` is named ``gridtwin-agents-i`` in errors."""

    def __init__(self, setups: Sequence[AgentSetup], *, workers: int = 2, scheduler: str | None = None) -> None:
        from twin.cluster import DaskCluster

        self._participants = [s.spec.participant_id for s in setups]
        self._cluster = DaskCluster(scheduler=scheduler, workers=workers)
        try:
            client = self._cluster.open()
            addresses = sorted(client.scheduler_info()["workers"])
            groups: list[list[AgentSetup]] = [[] for _ in range(max(1, min(len(addresses), len(setups))))]
            for setup in sorted(setups, key=lambda s: -len(s.spec.assets)):  # largest first onto the lightest
                min(groups, key=lambda g: sum(len(s.spec.assets) for s in g)).append(setup)
            futures = [client.submit(AgentGroup, list(sys.path), group, actor=True, workers=[addresses[i]],
                                     allow_other_workers=False, key=f"gridtwin-agents-{i}-{id(self)}")
                       for i, group in enumerate(groups)]
            with client.as_current():  # actor handles bind to the current client (this one is not the default)
                self._groups = [self._wait(i, f) for i, f in enumerate(futures)]
        except BaseException:
            self._cluster.close()
            raise
        self.worker_of = {s.spec.participant_id: i for i, g in enumerate(groups) for s in g}
        self._sent: dict[str, tuple[int, int]] = {}  # participant -> (time, id) of the observation its group holds

    @staticmethod
    def _wait(i: int, future: Any) -> Any:
        try:
            return future.result()
        except Exception as exc:  # noqa: BLE001 — raised again with the group's name and the agent's error
            raise RuntimeError(f"agent worker gridtwin-agents-{i}: {type(exc).__name__}: {exc}") from exc

    @property
    def participants(self) -> list[str]:
        return list(self._participants)

    def propose(self, requests: Requests, *, round_index: int) -> dict[str, Proposal]:
        batches: list[dict[str, tuple[Observation | None, tuple[AgentMessage, ...]]]] = [{} for _ in self._groups]
        for pid, (obs, inbox) in requests.items():
            key = (obs.time.value, id(obs))  # the observation changes once per interval, not per round
            batches[self.worker_of[pid]][pid] = (obs if self._sent.get(pid) != key else None, inbox)
            self._sent[pid] = key
        pending = [(i, self._groups[i].propose(batch, round_index)) for i, batch in enumerate(batches) if batch]
        proposals: dict[str, Proposal] = {}
        for i, future in pending:  # every group computes at once; collect in order
            proposals |= self._wait(i, future)
        return {pid: proposals[pid] for pid in requests}

    def close(self) -> None:
        self._groups = []
        self._cluster.close()


def start_agents(setups: Sequence[AgentSetup], *, workers: int = 1,
                 scheduler: str | None = None) -> LocalAgents | DaskAgents:
    """The agents of one policy: in this process (``workers`` <= 1 and no scheduler), or on a Dask cluster of
    ``workers`` local processes or at ``scheduler``."""
    if scheduler is None and (workers <= 1 or len(setups) < 2):
        return LocalAgents(setups)
    return DaskAgents(setups, workers=max(workers, 1), scheduler=scheduler)
