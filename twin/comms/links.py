"""The communication and fault model: who can hear whom, when, and what it costs in bytes.

Owns the backhaul (each participant's devices ↔ the control centre), the mesh (participants ↔ their
neighbours along the feeder), scheduled faults (control-centre outage, backhaul cut, participant dropout,
extra message loss, false telemetry) and operator-injected faults. Loss draws come from one seeded
generator, so a run is reproducible. It never touches device or grid state; the engine asks it questions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd

from controllers.api import AgentMessage
from controllers.coordination import ROUND_PASSES, RoundDelivery

__all__ = ["CommsModel", "Fault", "FaultKind", "LinkSpec", "TrafficCounter", "payload_size_bytes"]


class FaultKind(StrEnum):
    CONTROL_CENTRE_OUTAGE = "control_centre_outage"
    BACKHAUL_CUT = "backhaul_cut"
    PARTICIPANT_DROPOUT = "participant_dropout"
    MESSAGE_LOSS = "message_loss"
    FALSE_TELEMETRY = "false_telemetry"


@dataclass(frozen=True)
class LinkSpec:
    """A class of links: one-way latency and independent loss probability per message."""

    latency: pd.Timedelta = pd.Timedelta("1s")
    loss: float = 0.0


@dataclass(frozen=True)
class Fault:
    """A fault active over ``[start, end)``. ``participants`` empty = every participant (for a backhaul cut)."""

    kind: FaultKind
    start: pd.Timestamp
    end: pd.Timestamp
    participants: frozenset[str] = frozenset()
    loss: float = 0.0  # MESSAGE_LOSS: extra loss probability on every link
    scale: float = 1.0  # FALSE_TELEMETRY: reported power = scale × true power

    def active(self, time: pd.Timestamp) -> bool:
        return bool(self.start <= time < self.end)


def payload_size_bytes(payload: Any) -> int:
    """Wire size estimate: 8 bytes per number, UTF-8 length for text, plus 4 bytes per key/item framing."""
    if isinstance(payload, Mapping):
        return sum(4 + len(str(k).encode()) + payload_size_bytes(v) for k, v in payload.items())
    if isinstance(payload, (str, bytes)):
        return len(payload.encode() if isinstance(payload, str) else payload)
    if isinstance(payload, (np.ndarray, pd.Series)):
        return 8 * int(np.asarray(payload).size)
    if isinstance(payload, (list, tuple)):
        return sum(4 + payload_size_bytes(v) for v in payload)
    return 8


@dataclass
class TrafficCounter:
    """Messages and bytes sent by channel; ``central_bytes`` counts participant data that *reached* a
    central point (delivered telemetry uplinks), the privacy measure compared across policies."""

    messages: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    dropped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    delivered_bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def count(self, channel: str, n_bytes: int, *, delivered: bool) -> None:
        self.messages[channel] += 1
        self.bytes[channel] += n_bytes
        if delivered:
            self.delivered_bytes[channel] += n_bytes
        else:
            self.dropped[channel] += 1

    def totals(self) -> dict[str, int]:
        return {
            "messages": sum(self.messages.values()),
            "bytes": sum(self.bytes.values()),
            "dropped": sum(self.dropped.values()),
            "central_bytes": self.delivered_bytes.get("telemetry_uplink", 0),
        }


class CommsModel:
    """Answers reachability questions for one policy's twin copy; draws losses from its own generator."""

    def __init__(
        self,
        *,
        participants: Iterable[str],
        neighbours: Mapping[str, tuple[str, ...]],
        backhaul: LinkSpec = LinkSpec(),
        mesh: LinkSpec = LinkSpec(),
        faults: Iterable[Fault] = (),
        seed: int = 0,
    ) -> None:
        self.participants = tuple(participants)
        self.neighbours = dict(neighbours)
        self.backhaul = backhaul
        self.mesh = mesh
        self.faults: list[Fault] = list(faults)
        self.rng = np.random.default_rng(seed)
        self.traffic = TrafficCounter()

    def add_fault(self, fault: Fault) -> None:
        """Operator-injected faults join the schedule (the engine calls this; nobody else mutates it)."""
        self.faults.append(fault)

    def clear_faults(self, time: pd.Timestamp) -> None:
        """End every fault active at ``time`` (scheduled ones included) from ``time`` on."""
        self.faults = [
            f if not f.active(time) else Fault(f.kind, f.start, time, f.participants, f.loss, f.scale)
            for f in self.faults
        ]

    def _active(self, kind: FaultKind, time: pd.Timestamp) -> list[Fault]:
        return [f for f in self.faults if f.kind == kind and f.active(time)]

    # -- state questions ---------------------------------------------------------------------------
    def control_centre_up(self, time: pd.Timestamp) -> bool:
        return not self._active(FaultKind.CONTROL_CENTRE_OUTAGE, time)

    def dropped_out(self, participant: str, time: pd.Timestamp) -> bool:
        return any(not f.participants or participant in f.participants
                   for f in self._active(FaultKind.PARTICIPANT_DROPOUT, time))

    def backhaul_up(self, participant: str, time: pd.Timestamp) -> bool:
        if self.dropped_out(participant, time):
            return False
        return not any(not f.participants or participant in f.participants
                       for f in self._active(FaultKind.BACKHAUL_CUT, time))

    def false_telemetry_active(self, time: pd.Timestamp) -> bool:
        return bool(self._active(FaultKind.FALSE_TELEMETRY, time))

    def false_telemetry_scale(self, participant: str, time: pd.Timestamp) -> float:
        scale = 1.0
        for f in self._active(FaultKind.FALSE_TELEMETRY, time):
            if participant in f.participants:
                scale *= f.scale
        return scale

    def _loss(self, base: float, time: pd.Timestamp) -> float:
        extra = [f.loss for f in self._active(FaultKind.MESSAGE_LOSS, time)]
        keep = (1.0 - base) * float(np.prod([1.0 - x for x in extra])) if extra else 1.0 - base
        return 1.0 - keep

    # -- traffic -----------------------------------------------------------------------------------
    def uplink(self, participant: str, time: pd.Timestamp, *, n_bytes: int) -> bool:
        """A telemetry report from a participant's devices to the control centre: delivered?"""
        ok = (
            self.control_centre_up(time)
            and self.backhaul_up(participant, time)
            and self.rng.random() >= self._loss(self.backhaul.loss, time)
        )
        self.traffic.count("telemetry_uplink", n_bytes, delivered=ok)
        return ok

    def downlink(self, participant: str, time: pd.Timestamp, *, n_bytes: int) -> bool:
        """A setpoint from the control centre to a participant's device: delivered?"""
        ok = (
            self.control_centre_up(time)
            and self.backhaul_up(participant, time)
            and self.rng.random() >= self._loss(self.backhaul.loss, time)
        )
        self.traffic.count("setpoint_downlink", n_bytes, delivered=ok)
        return ok

    def draw_round(self, time: pd.Timestamp, *, active: np.ndarray, n_nodes: int) -> RoundDelivery:
        """The fate of every message of one coordination round along the feeder tree, drawn at once.

        Participants that dropped out (``active`` False) neither send nor receive; every other message (the
        participants' links to their bus node and each branch of the tree, once per pass) is lost with the
        mesh's loss probability (plus any message-loss fault). Grid nodes never drop out.
        """
        loss = self._loss(self.mesh.loss, time)
        active = np.asarray(active, dtype=bool)
        party = self.rng.random((2, active.size)) >= loss
        tree = self.rng.random((4, n_nodes)) >= loss
        tree[:, 0] = False  # the root has no branch
        return RoundDelivery(active=active, uplink=active & party[0], flows_up=tree[0], voltages_down=tree[1],
                             duals_up=tree[2], prices_down=tree[3], downlink=active & party[1])

    def count_round(self, delivery: RoundDelivery, message_bytes: Mapping[str, int]) -> None:
        """Count one round's tree messages: every link sends once per pass (a dropped-out participant sends
        nothing); bytes count once per transmission."""
        n_part, n_nodes = delivery.active.size, delivery.flows_up.size
        for name in ROUND_PASSES:
            sent = int(delivery.active.sum()) if name == "uplink" else n_part if name == "downlink" else n_nodes - 1
            arrived = int(np.count_nonzero(getattr(delivery, name)))
            size = int(message_bytes.get(name, 0))
            self.traffic.messages["mesh"] += sent
            self.traffic.bytes["mesh"] += sent * size
            self.traffic.delivered_bytes["mesh"] += arrived * size
            self.traffic.dropped["mesh"] += sent - arrived

    def deliver_mesh(
        self, messages: Iterable[AgentMessage], time: pd.Timestamp, *, round_period: pd.Timedelta
    ) -> list[AgentMessage]:
        """Deliver one coordination round of mesh messages; returns what arrived (with recipients set).

        A message to a neighbour goes over one link. A message to ``"*"`` is flooded: every node that
        receives it relays it once, for as many hops as fit in the round (round_period // latency), each
        hop over a link that may lose it. Dropped-out participants neither send nor relay. Bytes count once
        per transmission (the sender and every relay).
        """
        loss = self._loss(self.mesh.loss, time)
        max_hops = int(round_period / self.mesh.latency) if self.mesh.latency > pd.Timedelta(0) else 1_000_000
        out: list[AgentMessage] = []
        for m in messages:
            size = payload_size_bytes(m.payload)
            if self.dropped_out(m.sender, time) or max_hops < 1:
                self.traffic.count("mesh", size, delivered=False)
                continue
            if m.recipient != "*":
                ok = (m.recipient in self.neighbours.get(m.sender, ()) and not self.dropped_out(m.recipient, time)
                      and self.rng.random() >= loss)
                self.traffic.count("mesh", size, delivered=ok)
                if ok:
                    out.append(m)
                continue
            reached = {m.sender}
            frontier = [m.sender]
            for _ in range(max_hops):
                nxt = []
                for node in frontier:
                    self.traffic.count("mesh", size, delivered=True)  # one transmission per relay
                    for nb in self.neighbours.get(node, ()):
                        if nb in reached or self.dropped_out(nb, time):
                            continue
                        if self.rng.random() < loss:
                            self.traffic.dropped["mesh"] += 1  # this hop lost it; another path may still deliver
                            continue
                        reached.add(nb)
                        nxt.append(nb)
                frontier = nxt
                if not frontier:
                    break
            out.extend(AgentMessage(m.sender, r, m.payload) for r in sorted(reached - {m.sender}))
        return out
