"""The only sequencer: steps every policy's twin copy through the same exogenous inputs in lock-step.

Per interval it applies the operator commands that arrived, then steps each policy's twin
(``twin.engine.policy_twin``) once; it opens every policy's settlement before the first interval and closes
it after the last. When asked to (``open_loop``) and no policy needs feedback from the power flow, it replays
blocks of intervals open loop instead (``twin.engine.open_loop``: devices stepped, power flows batched), until
an operator command arrives; from then on it steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from twin.commands import CommandChannel, OperatorCommand
from twin.engine.open_loop import block_length, can_replay_open_loop, replay_block
from twin.engine.policy_twin import PolicyTwin
from twin.inputs import RunInputs
from twin.records.recorder import StepRecord
from twin.records.runstore import policy_dir
from twin.scenario import ControllerEntry, Scenario
from twin.engine.metering import DeferredLedgers, Meters, PolicySettlement, settlement_history_kw

__all__ = ["Replay", "iterate_policies"]


@dataclass(frozen=True)
class Replay:
    """What a resumed run re-simulates exactly as it first happened (twin.run): its first ``committed``
    intervals, the operator commands it applied (``commands``: (interval, command), in the order they were
    applied) and the interval its open-loop replay switched to stepping at (``stepping_from``; None: never).
    No new command is taken before interval ``committed``."""

    committed: int
    commands: tuple[tuple[pd.Timestamp, OperatorCommand], ...] = ()
    stepping_from: pd.Timestamp | None = None


def iterate_policies(
    scenario: Scenario,
    inputs: RunInputs,
    *,
    entries: tuple[ControllerEntry, ...] | None = None,
    run_dir: Path | None = None,
    agent_workers: int = 1,
    open_loop: bool = False,
    ledgers: DeferredLedgers | None = None,
    replay: Replay | None = None,
    lead: str | None = None,
    on_lead: Callable[[StepRecord], None] | None = None,
) -> Iterator[list[StepRecord]]:
    """Yield, per interval, one StepRecord per policy — all twins advanced in lock-step.

    With ``run_dir``, operator commands dropped into its command channel are applied to every policy's
    twin at the start of the next interval (same fault for all, so the comparison stays fair).
    ``agent_workers`` > 1 runs each agent policy's edge agents over that many processes (same results).
    ``open_loop=True`` lets it batch the power flows of whole blocks when every policy allows it (the same
    records; a block is computed before its first interval is yielded, so not for live or paced runs).
    ``ledgers``: settle deferred — each policy's intervals reach its ledger when the caller commits them
    (``DeferredLedgers.commit``), not as they are stepped. ``replay``: re-simulate a resumed run's past.
    ``lead``: the policy stepped first in each interval; ``on_lead`` gets its record before the others step (a
    live twin sends the controlling policy's setpoints while its shadows are still deciding). The records
    yielded, and every policy's results, are the same in any order: the twins share nothing that a step changes.
    """
    names = [e.name for e in entries or scenario.controllers]
    if lead is not None and lead not in names:
        raise ValueError(f"lead={lead!r}: not a policy of the scenario; expected one of {names}")
    twins: list[PolicyTwin] = []
    try:
        for e in entries or scenario.controllers:
            twins.append(PolicyTwin.create(e, inputs, scenario, agent_workers=agent_workers))
        yield from _run_twins(scenario, inputs, twins, run_dir, open_loop=open_loop, ledgers=ledgers,
                              replay=replay, lead=names.index(lead) if lead is not None else 0, on_lead=on_lead)
    finally:
        for twin in twins:
            twin.close()


def _run_twins(scenario: Scenario, inputs: RunInputs, twins: list[PolicyTwin],
               run_dir: Path | None, *, open_loop: bool = False, ledgers: DeferredLedgers | None = None,
               replay: Replay | None = None, lead: int = 0,
               on_lead: Callable[[StepRecord], None] | None = None) -> Iterator[list[StepRecord]]:
    config = scenario.settlement_config()
    if config is not None:
        if run_dir is None:
            raise ValueError("settlement: a scenario with a [settlement] table needs a run folder for its ledgers")
        history: list[pd.DataFrame] = []

        def history_before() -> pd.DataFrame:  # built once, on the first event, shared by every policy
            if not history:
                history.append(settlement_history_kw(scenario, inputs))
            return history[0]

        for twin in twins:
            twin.settlement = PolicySettlement(
                folder=policy_dir(run_dir, twin.name), config=config, run_id=f"{run_dir.name}:{twin.name}",
                meters=Meters.create(load_index=inputs.net.load.index, assets=inputs.assets),
                history_before=history_before, step=scenario.step, deferred=ledgers is not None,
            )
            if ledgers is not None:
                ledgers.settlements.append(twin.settlement)
    channel = CommandChannel(run_dir) if run_dir is not None else None
    stepped = 0
    try:
        for records in _lockstep(scenario, twins, channel, open_loop=open_loop, replay=replay, lead=lead,
                                 on_lead=on_lead):
            stepped += 1  # counted before the yield: a caller that closes us after the last interval is complete
            yield records
    finally:
        complete = stepped == len(scenario.times)
        for twin in twins:
            if twin.settlement is not None:
                twin.settlement.close(complete=complete)


def _lockstep(scenario: Scenario, twins: list[PolicyTwin], channel: CommandChannel | None, *,
              open_loop: bool = False, replay: Replay | None = None, lead: int = 0,
              on_lead: Callable[[StepRecord], None] | None = None) -> Iterator[list[StepRecord]]:
    times = scenario.times
    done = 0
    past = replay.committed if replay is not None else 0  # before it, the run's own past replays: no new commands
    again = list(replay.commands) if replay is not None else []
    switch = replay.stepping_from if replay is not None else None

    def switches(at: int) -> bool:  # does the open-loop replay switch to stepping at interval `at`?
        if switch is not None and times[at] >= switch:
            return True
        return at >= past and channel is not None and bool(channel.take())

    if open_loop and can_replay_open_loop(twins):
        length = block_length(twins)
        # An operator command switches the run to stepping at the next block (it is applied there).
        while done < len(times) and not switches(done):
            block = times[done:done + length]
            yield from replay_block(twins, block)
            done += len(block)
    if channel is None and not again and len(twins) == 1 and on_lead is None:
        # One policy, no operator commands to take or apply again: just its steps.
        step = twins[0].step
        for time in times[done:]:
            yield [step(time)]
        return
    for index, time in enumerate(times[done:], start=done):
        while again and again[0][0] <= time:  # a command the run applied before it was resumed: again, here
            _, command = again.pop(0)
            for t in twins:
                t.apply_command(command, time)
        if channel is not None and index >= past:
            taken = channel.take()
            for command, path, reason in taken:
                if command is None:
                    channel.finish(path, verdict="rejected", applied_at=None, detail=reason, taken_at=time)
                    continue
                verdicts = {t.name: t.apply_command(command, time) for t in twins}
                verdict = "applied" if all(v == "applied" for v, _ in verdicts.values()) else "rejected"
                detail = next(iter(verdicts.values()))[1]
                channel.finish(path, verdict=verdict, applied_at=time, detail=detail)
        first = twins[lead].step(time)
        if on_lead is not None:
            on_lead(first)
        yield [first if i == lead else twin.step(time) for i, twin in enumerate(twins)] if len(twins) > 1 else [first]
