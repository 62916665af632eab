"""Test-only plug-ins, loaded by the engine through "engine_helpers:Class" like any outside controller."""

from __future__ import annotations

import pandas as pd

from controllers.api import AgentMessage, AgentSpec, AssetKind, ControllerSpec, Dispatch, Observation, Proposal


class ChargeAllBatteries:
    """Asks every battery for ``p_mw`` during the intervals listed in ``at_hours`` (UTC hour of day)."""

    def __init__(self, *, p_mw: float, at_hours: tuple[int, ...] = tuple(range(24))) -> None:
        self.p_mw = p_mw
        self.at_hours = set(at_hours)
        self.batteries: list[str] = []

    def reset(self, spec: ControllerSpec, *, seed: int) -> None:
        self.batteries = list(spec.assets.index[spec.assets["kind"].astype(str) == AssetKind.BATTERY])

    def act(self, observation: Observation) -> Dispatch:
        if observation.time.hour not in self.at_hours:
            return Dispatch.empty()
        return Dispatch.from_mapping({b: self.p_mw for b in self.batteries})


class GossipAgent:
    """Broadcasts its battery count to its mesh neighbours each round and records how many peers it heard."""

    def __init__(self) -> None:
        self.heard: set[str] = set()

    def reset(self, spec: AgentSpec, *, seed: int) -> None:
        self.spec = spec
        self.heard = set()

    def propose(self, observation: Observation, inbox: tuple[AgentMessage, ...], *, round_index: int) -> Proposal:
        self.heard |= {m.sender for m in inbox}
        bats = observation.assets.index[observation.assets["kind"].astype(str) == AssetKind.BATTERY]
        dispatch = Dispatch.from_mapping({b: 0.0 for b in bats}, heard=len(self.heard))
        return Proposal(dispatch=dispatch, outbox=(AgentMessage(self.spec.participant_id, "*", {"n": len(bats)}),))


class RampSchedule:
    """Dispatches every battery ``p_mw`` now and a schedule rising by ``p_mw`` each later period; counts calls."""

    reads_grid = False  # a fixed schedule: the twin may replay it open loop

    calls: list = []  # noqa: RUF012 — shared on purpose: the test reads what the engine's instance did

    def __init__(self, *, p_mw: float, periods: int = 4, off_grid: bool = False) -> None:
        self.p_mw, self.periods, self.off_grid = p_mw, periods, off_grid

    def reset(self, spec: ControllerSpec, *, seed: int) -> None:
        self.step = spec.step
        self.batteries = list(spec.assets.index[spec.assets["kind"].astype(str) == AssetKind.BATTERY])

    def act(self, observation: Observation) -> Dispatch:
        RampSchedule.calls.append(observation.time)
        shift = pd.Timedelta("7min") if self.off_grid else pd.Timedelta(0)
        columns = [observation.time + k * self.step + shift for k in range(1, self.periods)]
        schedule = pd.DataFrame([[self.p_mw * (k + 1) for k in range(1, self.periods)]] * len(self.batteries),
                                index=self.batteries, columns=columns)
        return Dispatch(p_mw=pd.Series(self.p_mw, index=self.batteries), schedule_mw=schedule)


class FailingAgent(GossipAgent):
    """Gossips, then raises in round ``fail_round`` of its first interval (for error-reporting tests)."""

    def __init__(self, *, fail_round: int = 1) -> None:
        super().__init__()
        self.fail_round = fail_round

    def propose(self, observation: Observation, inbox: tuple[AgentMessage, ...], *, round_index: int) -> Proposal:
        if round_index == self.fail_round:
            raise ValueError(f"{self.spec.participant_id}: boom in round {round_index}")
        return super().propose(observation, inbox, round_index=round_index)


class ClaimsNotToReadTheGrid:
    """Declares ``reads_grid = False`` and then reads ``observation.grid`` (the open-loop replay must refuse)."""

    reads_grid = False

    def reset(self, spec: ControllerSpec, *, seed: int) -> None:
        del spec, seed

    def act(self, observation: Observation) -> Dispatch:
        _ = observation.grid
        return Dispatch.empty()
