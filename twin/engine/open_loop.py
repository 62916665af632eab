"""Open-loop replay: step the devices interval by interval, then solve a whole block of intervals' power flows in
one batch (DESIGN.md §6: "Open-loop replays batch the whole period").

Only for policies whose decisions never read the power flow (``PolicyTwin.reads_grid`` is False: no control,
rule-based or fixed schedules, no sensitivities) on the fast engine. One thing still feeds back: an inverter on
its autonomous default follows IEEE 1547 volt-var on the *previous* interval's voltage. The block is solved as a
fixed point of that: voltages -> volt-var Q -> batch power flow -> voltages, until Q stops changing (a
contraction, and causal: after k rounds the first k intervals are exact). The answer is the stepped path's to
the solver's tolerance (tests compare them); a block that does not settle is solved step by step instead.
"""

from __future__ import annotations

import dataclasses
import time as wallclock
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from twin.grid.results import PowerFlowResult
from twin.records.recorder import StepRecord

if TYPE_CHECKING:
    from twin.engine.policy_twin import IntervalParts, PolicyTwin

__all__ = ["block_length", "can_replay_open_loop", "replay_block"]

#: Volt-var Q (Mvar) that changes by less than this between two rounds is settled.
Q_TOLERANCE_MVAR = 1e-12
#: Rounds of the fixed point before the block falls back to stepping.
MAX_ROUNDS = 60
#: Bound on bus values a block holds at once (intervals x buses), and its longest span.
_BLOCK_VALUES = 2_000_000
_BLOCK_INTERVALS = 672


def can_replay_open_loop(twins: list[PolicyTwin]) -> bool:
    """Every policy on the fast engine with a decider that never reads the power flow."""
    return bool(twins) and all(t.grid.engine == "fast" and not t.reads_grid for t in twins)


def block_length(twins: list[PolicyTwin]) -> int:
    """Intervals per batch: a week at 15 minutes, fewer on large feeders (memory)."""
    n_bus = max(len(t.grid.labels.bus) for t in twins)
    return max(1, min(_BLOCK_INTERVALS, _BLOCK_VALUES // max(n_bus, 1)))


def replay_block(twins: list[PolicyTwin], times: pd.DatetimeIndex) -> Iterator[list[StepRecord]]:
    """The StepRecords of every policy for ``times``, as the stepped engine would give them, per interval."""
    per_twin = [_replay(twin, times) for twin in twins]
    for records in zip(*per_twin, strict=True):
        yield list(records)


def _replay(twin: PolicyTwin, times: pd.DatetimeIndex) -> list[StepRecord]:
    twin._open_loop = True  # a decider that reads observation.grid now fails loudly instead of reading stale data
    try:
        parts = [twin.advance_devices(t, volt_var=False) for t in times]
    finally:
        twin._open_loop = False
    t0 = wallclock.perf_counter()
    parts, results = _solve(twin, parts)
    power_flow_s = (wallclock.perf_counter() - t0) / max(len(parts), 1)
    return [twin.finish(p, pf, power_flow_s=power_flow_s) for p, pf in zip(parts, results, strict=True)]


def _solve(twin: PolicyTwin, parts: list[IntervalParts]) -> tuple[list[IntervalParts], list[PowerFlowResult]]:
    """The block's power flows with the autonomous inverters' volt-var settled; the parts get their final Q."""
    grid, arrays = twin.grid, twin.arrays
    rows = np.array([p.row for p in parts])
    p_assets = np.column_stack([p.outcome.p for p in parts])
    valid = np.column_stack([p.valid for p in parts])
    q_held = np.column_stack([p.q_held for p in parts])
    load_q = arrays.load_q_mvar[rows].T
    p_bus = grid.bus_p_many(load_p_mw=arrays.load_p_mw[rows].T, sgen_p_mw=arrays.sgen_p_mw[rows].T,
                            asset_p_mw=p_assets)
    first = twin._volt_var_q()  # the interval before the block: the twin's last power flow
    volt_var = np.zeros_like(p_assets)
    q_assets = None
    batch = None
    fast = grid.fast
    for _ in range(MAX_ROUNDS):
        if batch is not None:
            volt_var[:, 1:] = np.where(batch.converged[None, :-1], twin.volt_var_q(batch.vm[:, :-1]), 0.0)
        volt_var[:, 0] = first
        q_new = twin.physics.clip_q(p_assets, np.where(valid, q_held, volt_var))
        if q_assets is not None and np.max(np.abs(q_new - q_assets), initial=0.0) <= Q_TOLERANCE_MVAR:
            break
        q_assets = q_new
        q_bus = grid.bus_q_many(load_q_mvar=load_q, asset_q_mvar=q_assets)
        batch = fast.solve_many_arrays(p_bus, q_bus, v_start=None if batch is None else batch.v_internal)
    else:
        return _stepped(twin, parts, q_held)
    assert batch is not None and q_assets is not None
    # Each interval's outcome gets its settled Q in place: no record of the block has left yet.
    for k, part in enumerate(parts):
        part.outcome.q[:] = q_assets[:, k]
    settled = parts
    results = batch.results()
    last = settled[-1]
    grid.set_injection_arrays(load_p_mw=arrays.load_p_mw[last.row], load_q_mvar=arrays.load_q_mvar[last.row],
                              sgen_p_mw=arrays.sgen_p_mw[last.row], asset_p_mw=last.outcome.p,
                              asset_q_mvar=last.outcome.q)
    twin.last_pf, twin._last_time = results[-1], last.time
    return settled, results


def _stepped(twin: PolicyTwin, parts: list[IntervalParts],
             q_held: np.ndarray) -> tuple[list[IntervalParts], list[PowerFlowResult]]:
    """The block solved interval by interval (the fixed point did not settle)."""
    settled, results = [], []
    for k, part in enumerate(parts):
        q_set = np.where(part.valid, q_held[:, k], twin._volt_var_q())
        outcome = dataclasses.replace(part.outcome, q=twin.physics.clip_q(part.outcome.p, q_set))
        part = dataclasses.replace(part, outcome=outcome)
        settled.append(part)
        results.append(twin.solve_grid(part))
    return settled, results
