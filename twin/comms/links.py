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

    def count_many(self, channel: str, n_bytes: np.ndarray, *, delivered: np.ndarray) -> None:
        """``count`` for many messages at once (``n_bytes`` and ``delivered`` per message)."""
        self.messages[channel] += int(n_bytes.size)
        self.bytes[channel] += int(n_bytes.sum())
        self.delivered_bytes[channel] += int(n_bytes[delivered].sum())
        self.dropped[channel] += int(n_bytes.size - np.count_nonzero(delivered))

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
        self._index = {p: i for i, p in enumerate(self.participants)}
        self._ids = np.array(self.participants, dtype=object)
        # The mesh as arrays (CSR over participant indices), for drawing a whole round's copies at once.
        lists = [[self._index[n] for n in self.neighbours.get(p, ()) if n in self._index] for p in self.participants]
        self._nb_count = np.array([len(x) for x in lists], dtype=np.int64)
        self._nb_ptr = np.concatenate([[0], np.cumsum(self._nb_count)])[:-1] if lists else np.zeros(0, np.int64)
        self._nb_idx = np.array([n for x in lists for n in x], dtype=np.int64)
        self._nb_keys = np.sort(np.repeat(np.arange(len(lists)), self._nb_count) * len(lists) + self._nb_idx)
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

    def active_mask(self, time: pd.Timestamp, participants: Iterable[str] | None = None) -> np.ndarray:
        """True for every participant (of ``participants``, default all, in that order) that has not dropped
        out at ``time``."""
        ids = self._ids if participants is None else np.array(list(participants), dtype=object)
        out = np.ones(len(ids), dtype=bool)
        for f in self._active(FaultKind.PARTICIPANT_DROPOUT, time):
            out &= False if not f.participants else ~np.isin(ids, list(f.participants))
        return out

    def dropped_out(self, participant: str, time: pd.Timestamp) -> bool:
        return any(not f.participants or participant in f.participants
                   for f in self._active(FaultKind.PARTICIPANT_DROPOUT, time))

    def backhaul_mask(self, time: pd.Timestamp, participants: np.ndarray) -> np.ndarray:
        """True for every participant (in that order) whose backhaul link is up: not dropped out, not cut."""
        ids = np.asarray(participants, dtype=object)
        out = self.active_mask(time, ids)
        for f in self._active(FaultKind.BACKHAUL_CUT, time):
            out &= False if not f.participants else ~np.isin(ids, list(f.participants))
        return out

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
    def uplinks(self, participants: np.ndarray, time: pd.Timestamp, *, n_bytes: np.ndarray) -> np.ndarray:
        """Telemetry reports from participants' devices to the control centre (one per participant, in that
        order, of ``n_bytes`` each): which were delivered."""
        return self._backhaul("telemetry_uplink", participants, time, n_bytes)

    def downlinks(self, participants: np.ndarray, time: pd.Timestamp, *, n_bytes: np.ndarray) -> np.ndarray:
        """Setpoints from the control centre to participants' devices (one message each): which arrived."""
        return self._backhaul("setpoint_downlink", participants, time, n_bytes)

    def _backhaul(self, channel: str, participants: np.ndarray, time: pd.Timestamp,
                  n_bytes: np.ndarray) -> np.ndarray:
        """One backhaul message per participant, drawn at once: a message goes only while the control centre
        is up and the participant's link is; each that goes is lost with the backhaul's loss probability (plus
        any message-loss fault). One draw per message that goes, in order, as message-by-message delivery would."""
        ok = np.zeros(len(participants), dtype=bool)
        if self.control_centre_up(time):
            ok = self.backhaul_mask(time, participants)
            going = np.flatnonzero(ok)
            ok[going] = self.rng.random(going.size) >= self._loss(self.backhaul.loss, time)
        self.traffic.count_many(channel, np.asarray(n_bytes, dtype=np.int64), delivered=ok)
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
        """Deliver one coordination round of a per-agent plug-in's mesh messages; returns what arrived.

        A message travels one hop, to an electrical neighbour of its sender (``neighbours``: participants within
        ``comms.mesh_hops`` of each other along the feeder). ``recipient="*"`` is a local broadcast to every
        neighbour; a message to a participant that is not a neighbour is lost. Nothing is relayed, so a round
        costs O(N × neighbours) transmissions, never N². Each (message, neighbour) copy counts as one message
        in the traffic and is lost independently with the mesh's loss probability (plus any message-loss
        fault), all of a round's copies drawn at once; dropped-out participants neither send nor receive, and
        nothing arrives when the mesh's latency exceeds the round.
        """
        messages = list(messages)
        if not messages:
            return []
        active = self.active_mask(time)
        index = self._index
        sender = np.array([index.get(m.sender, -1) for m in messages], dtype=np.int64)
        sends = sender >= 0
        sends[sends] = active[sender[sends]]
        broadcast = np.array([m.recipient == "*" for m in messages], dtype=bool)
        target = np.array([index.get(m.recipient, -1) for m in messages], dtype=np.int64)
        # Every copy: (message, recipient). A broadcast has one copy per neighbour; a unicast one copy, which
        # only a neighbour can receive.
        fan_out = np.where(broadcast, self._nb_count[np.maximum(sender, 0)], 1) * sends
        copy_of = np.repeat(np.arange(len(messages)), fan_out)
        first = np.cumsum(fan_out) - fan_out
        rank = np.arange(copy_of.size) - first[copy_of]
        to = target[copy_of]
        wide = broadcast[copy_of]
        to[wide] = self._nb_idx[self._nb_ptr[sender[copy_of[wide]]] + rank[wide]]
        reachable = (to >= 0) & np.isin(sender[copy_of] * len(index) + to, self._nb_keys)
        reachable[reachable] = active[to[reachable]]
        in_time = self.mesh.latency <= round_period
        arrived = reachable & (self.rng.random(copy_of.size) >= self._loss(self.mesh.loss, time)) & in_time
        sizes = np.array([payload_size_bytes(m.payload) for m in messages], dtype=np.int64)[copy_of]
        self.traffic.messages["mesh"] += int(copy_of.size)
        self.traffic.bytes["mesh"] += int(sizes.sum())
        self.traffic.delivered_bytes["mesh"] += int(sizes[arrived].sum())
        self.traffic.dropped["mesh"] += int(copy_of.size - np.count_nonzero(arrived))
        names = self.participants
        return [AgentMessage(messages[k].sender, names[r], messages[k].payload)
                for k, r in zip(copy_of[arrived].tolist(), to[arrived].tolist(), strict=True)]
