"""The mesh a per-agent plug-in talks over: one hop to electrical neighbours, never flooded (issue 12)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from controllers.api import AgentMessage
from twin.comms.links import CommsModel, Fault, FaultKind, LinkSpec

T = pd.Timestamp("2016-06-06T12:00Z")
ROUND = pd.Timedelta("2s")


def _chain(n: int, *, loss: float = 0.0, latency: str = "100ms", faults: tuple[Fault, ...] = ()) -> CommsModel:
    """Participants p-0 … p-(n-1) along a feeder, each a neighbour of the next."""
    names = [f"p-{i}" for i in range(n)]
    neighbours = {p: tuple(names[j] for j in (i - 1, i + 1) if 0 <= j < n) for i, p in enumerate(names)}
    return CommsModel(participants=names, neighbours=neighbours, mesh=LinkSpec(pd.Timedelta(latency), loss),
                      faults=faults, seed=1)


def test_a_broadcast_reaches_the_neighbours_only_and_costs_one_message_per_neighbour() -> None:
    comms = _chain(5)
    got = comms.deliver_mesh([AgentMessage("p-2", "*", {"x": 1.0})], T, round_period=ROUND)
    assert [(m.sender, m.recipient) for m in got] == [("p-2", "p-1"), ("p-2", "p-3")]
    assert comms.traffic.messages["mesh"] == 2 and comms.traffic.bytes["mesh"] == 2 * (4 + 1 + 8)
    end = comms.deliver_mesh([AgentMessage("p-4", "*", {"x": 1.0})], T, round_period=ROUND)
    assert [m.recipient for m in end] == ["p-3"]


def test_a_message_to_a_participant_that_is_not_a_neighbour_is_lost() -> None:
    comms = _chain(5)
    got = comms.deliver_mesh([AgentMessage("p-0", "p-3", {}), AgentMessage("p-0", "p-1", {})], T, round_period=ROUND)
    assert [m.recipient for m in got] == ["p-1"]
    assert comms.traffic.messages["mesh"] == 2 and comms.traffic.dropped["mesh"] == 1


def test_every_participant_broadcasting_costs_linear_traffic() -> None:
    """A round where all N broadcast: 2(N-1) copies on a chain, whatever N (flooding would cost N(N-1))."""
    for n in (10, 1000):
        comms = _chain(n)
        got = comms.deliver_mesh([AgentMessage(f"p-{i}", "*", {"x": 1.0}) for i in range(n)], T, round_period=ROUND)
        assert comms.traffic.messages["mesh"] == len(got) == 2 * (n - 1)


def test_losses_dropouts_and_latency_decide_what_arrives() -> None:
    n = 2001
    lossy = _chain(n, loss=0.2)
    got = lossy.deliver_mesh([AgentMessage(f"p-{i}", "*", {}) for i in range(n)], T, round_period=ROUND)
    copies = 2 * (n - 1)
    # 4000 independent draws at 20 % loss: the share delivered is 0.8 within 5 standard deviations.
    assert abs(len(got) / copies - 0.8) < 5 * np.sqrt(0.2 * 0.8 / copies)
    assert lossy.traffic.dropped["mesh"] == copies - len(got)
    gone = _chain(5, faults=(Fault(FaultKind.PARTICIPANT_DROPOUT, T, T + ROUND, frozenset({"p-1"})),))
    got = gone.deliver_mesh([AgentMessage("p-1", "*", {}), AgentMessage("p-2", "*", {})], T, round_period=ROUND)
    assert [(m.sender, m.recipient) for m in got] == [("p-2", "p-3")]  # p-1 neither sends nor hears
    assert list(gone.active_mask(T)) == [True, False, True, True, True]
    slow = _chain(3, latency="3s")
    assert slow.deliver_mesh([AgentMessage("p-1", "*", {})], T, round_period=ROUND) == []
