"""The only sequencer: steps every policy's twin copy through the same exogenous inputs in lock-step.

Per interval it applies the operator commands that arrived, then steps each policy's twin
(``twin.engine.policy_twin``) once; it opens every policy's settlement before the first interval and closes
it after the last. When asked to (``open_loop``) and no policy needs feedback from the power flow, it replays
blocks of intervals open loop instead (``twin.engine.open_loop``: devices stepped, power flows batched), until
an operator command arrives; from then on it steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from twin.commands import CommandChannel
from twin.engine.open_loop import block_length, can_replay_open_loop, replay_block
from twin.engine.policy_twin import PolicyTwin
from twin.inputs import RunInputs
from twin.records.recorder import StepRecord
from twin.records.runstore import policy_dir
from twin.scenario import ControllerEntry, Scenario
from twin.engine.metering import Meters, PolicySettlement, settlement_history_kw

__all__ = ["iterate_policies"]


def iterate_policies(
    scenario: Scenario,
    inputs: RunInputs,
    *,
    entries: tuple[ControllerEntry, ...] | None = None,
    run_dir: Path | None = None,
    agent_workers: int = 1,
    open_loop: bool = False,
) -> Iterator[list[StepRecord]]:
    """Yield, per interval, one StepRecord per policy — all twins advanced in lock-step.

    With ``run_dir``, operator commands dropped into its command channel are applied to every policy's
    twin at the start of the next interval (same fault for all, so the comparison stays fair).
    ``agent_workers`` > 1 runs each agent policy's edge agents over that many processes (same results).
    ``open_loop=True`` lets it batch the power flows of whole blocks when every policy allows it (the same
    records; a block is computed before its first interval is yielded, so not for live or paced runs).
    """
    twins: list[PolicyTwin] = []
    try:
        for e in entries or scenario.controllers:
            twins.append(PolicyTwin.create(e, inputs, scenario, agent_workers=agent_workers))
        yield from _run_twins(scenario, inputs, twins, run_dir, open_loop=open_loop)
    finally:
        for twin in twins:
            twin.close()


def _run_twins(scenario: Scenario, inputs: RunInputs, twins: list[PolicyTwin],
               run_dir: Path | None, *, open_loop: bool = False) -> Iterator[list[StepRecord]]:
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
                history_before=history_before, step=scenario.step,
            )
    channel = CommandChannel(run_dir) if run_dir is not None else None
    try:
        yield from _lockstep(scenario, twins, channel, open_loop=open_loop)
    finally:
        for twin in twins:
            if twin.settlement is not None:
                twin.settlement.close()


def _lockstep(scenario: Scenario, twins: list[PolicyTwin], channel: CommandChannel | None, *,
              open_loop: bool = False) -> Iterator[list[StepRecord]]:
    times = scenario.times
    done = 0
    if open_loop and can_replay_open_loop(twins):
        length = block_length(twins)
        # An operator command switches the run to stepping at the next block (it is applied there).
        while done < len(times) and not (channel is not None and channel.take()):
            block = times[done:done + length]
            yield from replay_block(twins, block)
            done += len(block)
    for time in times[done:]:
        if channel is not None:
            taken = channel.take()
            for command, path, reason in taken:
                if command is None:
                    channel.finish(path, verdict="rejected", applied_at=None, detail=reason)
                    continue
                verdicts = {t.name: t.apply_command(command, time) for t in twins}
                verdict = "applied" if all(v == "applied" for v, _ in verdicts.values()) else "rejected"
                detail = next(iter(verdicts.values()))[1]
                channel.finish(path, verdict=verdict, applied_at=time, detail=detail)
        yield [twin.step(time) for twin in twins]
