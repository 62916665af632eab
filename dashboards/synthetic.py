"""A synthetic run store for dashboard demos, browser tests and benchmarks: plausible, deterministic records
written with the real ``RunStore`` and ``CommandChannel`` — but no power flow and no controllers.

Voltages follow the distance from the external grid times the net load (PV lifts, load sags), loadings the
share of the feeder downstream of each branch; an operator command is taken and applied like the engine does
(a central controller loses its assets to fallback under a control-centre outage or backhaul cut, a dropped
participant's assets fall back under every policy). Only for showing and measuring the dashboard.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from twin.commands import CommandChannel, CommandKind, OperatorCommand
from twin.records.kpis import compute_kpis
from twin.records.recorder import SUMMARY_COLUMNS, PolicyRecords
from twin.records.runstore import RunStore, policy_dir
from twin.grid.topology import FEEDER_FILENAME, FeederTopology, tree_layout

__all__ = ["SyntheticTwin", "radial_topology"]

_KINDS = ("battery", "pv", "ev_charger", "flex_load")


def _is_central(policy: str) -> bool:
    return any(word in policy.lower() for word in ("scada", "central"))


def _tree(topology: FeederTopology) -> tuple[pd.Series, pd.Series]:
    """(BFS depth per bus, number of buses downstream of each bus incl. itself) from the external grid."""
    buses = list(topology.buses.index)
    adjacency: dict[str, list[str]] = {b: [] for b in buses}
    edges = (list(zip(topology.lines["from_bus"], topology.lines["to_bus"]))
             + list(zip(topology.trafos["hv_bus"], topology.trafos["lv_bus"]))
             + list(zip(topology.links["from_bus"], topology.links["to_bus"])))
    for a, b in edges:
        if a in adjacency and b in adjacency:
            adjacency[a].append(b)
            adjacency[b].append(a)
    depth: dict[str, int] = {}
    parent: dict[str, str] = {}
    order: list[str] = []
    for root in [r for r in topology.ext_grid_buses if r in adjacency] + buses:
        if root in depth:
            continue
        depth[root] = 0
        queue = deque([root])
        while queue:
            bus = queue.popleft()
            order.append(bus)
            for nbr in adjacency[bus]:
                if nbr not in depth:
                    depth[nbr], parent[nbr] = depth[bus] + 1, bus
                    queue.append(nbr)
    downstream = dict.fromkeys(buses, 1)
    for bus in reversed(order):
        if bus in parent:
            downstream[parent[bus]] += downstream[bus]
    return pd.Series(depth).reindex(buses).astype(float), pd.Series(downstream).reindex(buses).astype(float)


def radial_topology(n_buses: int = 20, *, seed: int = 0) -> FeederTopology:
    """A made-up radial LV feeder (no pandapower): MV bus 0 (external grid) —transformer— bus 1, then each
    further bus hangs off a random earlier one; drawn with the BFS tree layout."""
    if n_buses < 2:
        raise ValueError(f"n_buses={n_buses!r}: need at least 2 (MV and LV side of the transformer)")
    rng = np.random.default_rng(seed)
    ids = [str(i) for i in range(n_buses)]
    parents = [str(int(rng.integers(max(1, i - 4), i))) for i in range(2, n_buses)]
    lines = pd.DataFrame({"from_bus": parents, "to_bus": ids[2:], "name": [f"L{i}" for i in range(n_buses - 2)],
                          "in_service": True}, index=pd.Index([str(i) for i in range(n_buses - 2)], name="id"))
    trafos = pd.DataFrame({"hv_bus": ["0"], "lv_bus": ["1"], "name": ["T1"], "in_service": [True]},
                          index=pd.Index(["0"], name="id"))
    edges = [("0", "1"), *zip(parents, ids[2:])]
    xy = tree_layout(ids, edges, ["0"])
    buses = pd.DataFrame({"x": xy["x"].to_numpy(), "y": xy["y"].to_numpy(), "name": [""] * n_buses,
                          "vn_kv": [20.0] + [0.4] * (n_buses - 1)}, index=pd.Index(ids, name="id"))
    links = pd.DataFrame(columns=["from_bus", "to_bus", "kind"], index=pd.Index([], name="id"))
    return FeederTopology(buses=buses, lines=lines, trafos=trafos, links=links, ext_grid_buses=("0",), layout="tree")


@dataclasses.dataclass
class _Fault:
    kind: CommandKind
    start: pd.Timestamp
    end: pd.Timestamp
    participant: str | None


class SyntheticTwin:
    """Writes a run folder interval by interval, like ``gridtwin run --pace`` would (see module docstring)."""

    def __init__(self, run_dir: Path, topology: FeederTopology, *, policies: Sequence[str] = ("depin", "scada"),
                 start: str = "2016-06-06T00:00:00Z", step: str = "15min", n_intervals: int = 672,
                 n_assets: int = 12, seed: int = 0, name: str = "synthetic",
                 faults: Sequence[tuple[str, str, str]] = (), dr_events: Sequence[tuple[str, str]] = ()) -> None:
        self.run_dir = Path(run_dir)
        self.topology = topology
        self.policies = list(policies)
        self.step = pd.Timedelta(step)
        self.times = pd.date_range(pd.Timestamp(start), periods=n_intervals, freq=self.step, name="time")
        self.name = name
        self.store = RunStore(self.run_dir)
        self.channel = CommandChannel(self.run_dir)
        self.done = 0
        #: Scenario faults (kind, start, end), scheduled like a scenario's [[faults]]; DR events (start, end).
        self.scheduled = [_Fault(CommandKind(k), pd.Timestamp(a), pd.Timestamp(b), None) for k, a, b in faults]
        self.dr_events = [(pd.Timestamp(a), pd.Timestamp(b)) for a, b in dr_events]
        self.faults: list[_Fault] = list(self.scheduled)
        rng = np.random.default_rng(seed)
        self.depth, self.downstream = _tree(topology)
        buses = [b for b in topology.buses.index if self.depth[b] > 0] or list(topology.buses.index)
        ids = [f"A{i:03d}" for i in range(n_assets)]
        self.assets = pd.DataFrame({
            "kind": [_KINDS[i % len(_KINDS)] for i in range(n_assets)],
            "bus": rng.choice(buses, size=n_assets),
            "participant_id": [f"P{i // 2:02d}" for i in range(n_assets)],
            "p_max_mw": np.round(rng.uniform(0.004, 0.012, n_assets), 4),
            "e_max_mwh": 0.0,
        }, index=pd.Index(ids, name="asset_id"))
        self.assets.loc[self.assets["kind"] == "battery", "e_max_mwh"] = 0.013
        self.noise = rng.normal(0.0, 1.0, size=(n_intervals, len(topology.buses)))
        self.asset_noise = rng.normal(0.0, 1.0, size=(n_intervals, n_assets))
        self._bases: dict[str, dict[str, np.ndarray]] = {}

    # -- writing ---------------------------------------------------------------------------------------
    def write_start(self) -> None:
        topo = self.topology.to_dict()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / FEEDER_FILENAME).write_text(json.dumps(topo), encoding="utf-8")
        self.store.write_meta({
            "scenario": {"name": self.name, "step": str(self.step), "start": self.times[0].isoformat(),
                         "limits": {"v_min_pu": 0.95, "v_max_pu": 1.05, "loading_max_percent": 100.0},
                         "controllers": [{"name": p, "mode": "central" if _is_central(p) else "agents"}
                                         for p in self.policies],
                         "faults": [{"kind": f.kind.value, "start": f.start.isoformat(), "end": f.end.isoformat(),
                                     "participants": [f.participant] if f.participant else []}
                                    for f in self.scheduled],
                         **({"settlement": {"events": [{"start": a.isoformat(), "end": b.isoformat()}
                                                       for a, b in self.dr_events]}} if self.dr_events else {})},
            "seed": 0, "policies": self.policies, "n_intervals": len(self.times), "feeder": "synthetic",
            "assets": self.assets.reset_index().astype(str).to_dict(orient="records"),
        })
        self.store.write_status(done=0, total=len(self.times), state="running")

    def advance(self, n: int = 1) -> None:
        """Take pending operator commands, then record the next ``n`` intervals of every policy."""
        if self.done >= len(self.times):
            return
        self._take_commands(self.times[self.done])
        end = min(self.done + n, len(self.times))
        for policy in self.policies:
            self.store.append(self.records(policy, self.done, end))
        self.done = end
        state = "running" if self.done < len(self.times) else "finished"
        self.store.write_status(done=self.done, total=len(self.times), state=state)

    def finish(self) -> None:
        while self.done < len(self.times):
            self.advance(96)
        self.store.write_kpis({p: compute_kpis(self.records(p, 0, len(self.times))) for p in self.policies})

    def settle(self, *, checkpoint_every: int = 24) -> None:
        """Write each policy's ledger (``RUN/<policy>/ledger.sqlite``, as the engine does) for the intervals done so
        far: a capacity payment per participant per interval (operator → participant), a signed checkpoint
        every ``checkpoint_every`` intervals and at the end."""
        participants = sorted(set(self.assets["participant_id"]))
        for n, policy in enumerate(self.policies):
            self._settle_policy(policy, participants, checkpoint_every=checkpoint_every, scale=1.0 + 0.25 * n)

    def _settle_policy(self, policy: str, participants: list[str], *, checkpoint_every: int, scale: float) -> None:
        from twin.settlement.ledger import EntryDraft, EntryKey, Ledger, participant_account

        folder = policy_dir(self.run_dir, policy)
        folder.mkdir(parents=True, exist_ok=True)
        with Ledger.open_run(folder) as ledger:
            for i, start in enumerate(self.times[: self.done]):
                drafts = []
                for k, pid in enumerate(participants):
                    micro = int((12_500 + 2_500 * k) * scale)  # EUR 0.0125.. per interval, in micro-units
                    key = EntryKey(run_id=f"{self.run_dir.name}:{policy}", interval_start=start, participant=pid, rule="capacity",
                                   rule_version="1")
                    drafts.append(EntryDraft.create(key=key, interval_end=start + self.step,
                                                    postings={"operator": -micro, participant_account(pid): micro},
                                                    detail={"kind": "capacity"}))
                outcome = ledger.append_all(drafts)
                if outcome.appended and (i + 1) % checkpoint_every == 0:
                    ledger.checkpoint(closing=i + 1 == self.done)
            ledger.checkpoint(closing=True)  # as the engine's settlement does when it stops

    def _take_commands(self, time: pd.Timestamp) -> None:
        for command, path, reason in self.channel.take():
            if command is None:
                self.channel.finish(path, verdict="rejected", applied_at=None, detail=reason)
                continue
            verdict, detail = self._apply(command, time)
            self.channel.finish(path, verdict=verdict, applied_at=time, detail=detail)

    def _apply(self, command: OperatorCommand, time: pd.Timestamp) -> tuple[str, str]:
        if command.kind is CommandKind.CLEAR_FAULTS:
            for fault in self.faults:
                if fault.start <= time < fault.end:
                    fault.end = time
            return "applied", "all active faults cleared"
        if command.participant_id and command.participant_id not in set(self.assets["participant_id"]):
            return "rejected", f"participant_id={command.participant_id!r} is not in this feeder"
        self.faults.append(_Fault(command.kind, time, time + command.duration, command.participant_id))
        return "applied", f"{command.kind.value} until {(time + command.duration).isoformat()}"

    # -- the numbers -----------------------------------------------------------------------------------
    def _fallback(self, policy: str, times: pd.DatetimeIndex) -> np.ndarray:
        out = np.zeros((len(times), len(self.assets)), dtype=bool)
        for fault in self.faults:
            active = np.asarray((times >= fault.start) & (times < fault.end))
            if fault.kind is CommandKind.DR_EVENT:
                continue  # a DR event changes payments, not who controls the assets
            if fault.kind is CommandKind.PARTICIPANT_DROPOUT:
                out[np.ix_(active, (self.assets["participant_id"] == fault.participant).to_numpy())] = True
            elif _is_central(policy):
                out[active, :] = True
        return out

    def _base(self, policy: str) -> dict[str, np.ndarray]:
        """Every interval's numbers without faults (computed once per policy, then sliced)."""
        if policy in self._bases:
            return self._bases[policy]
        times = self.times
        hours = np.asarray(times.hour + times.minute / 60.0, dtype=float)
        load = 0.55 + 0.25 * np.exp(-((hours - 8) / 2.0) ** 2) + 0.45 * np.exp(-((hours - 19) / 2.2) ** 2)
        pv = np.clip(np.sin((hours - 6) / 14 * np.pi), 0, None) * 1.1
        flex = 0.6 if _is_central(policy) else 0.85  # how much of the swing the policy's assets absorb
        net = (load - pv) * (1 - 0.3 * flex)
        dist = (self.depth / max(self.depth.max(), 1.0)).to_numpy()
        vm = 1.012 - 0.085 * np.outer(net, dist) + 0.002 * self.noise
        share = (self.downstream / self.downstream.max()).to_numpy()
        lines, trafos = self.topology.lines, self.topology.trafos
        deeper = np.where(self.depth.reindex(lines["to_bus"]).to_numpy() >= self.depth.reindex(lines["from_bus"]).to_numpy(),
                          lines["to_bus"].to_numpy(), lines["from_bus"].to_numpy())
        line_share = pd.Series(share, index=self.topology.buses.index).reindex(deeper).fillna(0).to_numpy()
        kinds = self.assets["kind"].to_numpy()
        p_max = self.assets["p_max_mw"].to_numpy(float)
        setpoint = np.zeros((len(times), len(kinds)))
        bat = kinds == "battery"
        setpoint[:, bat] = np.outer(np.clip(-(net - net.mean()) * 1.6, -1, 1), p_max[bat]) * flex
        setpoint[:, kinds == "pv"] = -np.outer(pv, p_max[kinds == "pv"])
        setpoint[:, kinds == "ev_charger"] = np.outer((hours >= 20) | (hours < 5), p_max[kinds == "ev_charger"]) * 0.8
        setpoint[:, kinds == "flex_load"] = np.outer(load, p_max[kinds == "flex_load"]) * 0.5
        hours_per_step = self.step / pd.Timedelta("1h")
        soc = np.clip(0.0065 + np.cumsum(setpoint[:, bat] * 0.95, axis=0) * hours_per_step, 0.0013, 0.0117)
        p_head = net * 0.05 * max(1.0, len(self.topology.buses) / 40) ** 0.5
        price = np.where((hours >= 17) & (hours < 21), 400.0, 180.0)
        base = {"net": net, "vm": vm, "lines": 125.0 * np.outer(np.abs(net), np.sqrt(line_share)),
                "trafos": np.outer(np.abs(net), np.full(len(trafos), 92.0)), "setpoint": setpoint, "soc": soc,
                "p_head": p_head, "price": price}
        self._bases[policy] = base
        return base

    def records(self, policy: str, i0: int, i1: int) -> PolicyRecords:
        """Intervals ``[i0, i1)`` of ``policy`` as the engine would record them (faults applied)."""
        base = {k: v[i0:i1] for k, v in self._base(policy).items()}
        times = self.times[i0:i1]
        index = pd.DatetimeIndex(times, name="time")
        kinds = self.assets["kind"].to_numpy()
        p_max = self.assets["p_max_mw"].to_numpy(float)
        fallback = self._fallback(policy, times)
        setpoint = base["setpoint"]
        actual = np.clip(setpoint, -p_max, p_max) + 0.0002 * self.asset_noise[i0:i1]
        actual = np.where(fallback, 0.2 * setpoint, actual)
        clipped = np.where(np.abs(setpoint) > 0.97 * p_max, "rating", "")
        vm = base["vm"] + 0.01 * fallback.mean(axis=1, keepdims=True) * (base["net"][:, None] < 0)
        p_head = base["p_head"] * (1 + 0.05 * fallback.mean(axis=1))
        price = base["price"]
        cost = (np.where(p_head > 0, p_head, 0) * price - np.where(p_head < 0, -p_head, 0) * 60.0) * 0.25
        summary = pd.DataFrame(0.0, index=index, columns=list(SUMMARY_COLUMNS))
        values = {
            "p_head_mw": p_head, "q_head_mvar": 0.2 * p_head, "losses_mw": 0.03 * np.abs(p_head),
            "vm_min_pu": vm.min(axis=1), "vm_max_pu": vm.max(axis=1), "converged": 1.0,
            "price_eur_per_mwh": price, "cost_eur": cost, "n_clipped": (clipped != "").sum(axis=1),
            "n_fallback": fallback.sum(axis=1), "compute_s": 0.01, "controller_online": 1.0,
        }
        if _is_central(policy) and len(kinds):
            values["controller_online"] = (~fallback.all(axis=1)).astype(float)
        for column, value in values.items():
            if column in summary.columns:
                summary[column] = value
        for flag in ("converged", "controller_online"):
            if flag in summary.columns:
                summary[flag] = summary[flag].astype(bool)
        assets = self.assets.index
        tables = {
            "summary": summary,
            "vm_pu": pd.DataFrame(vm, index=index, columns=self.topology.buses.index),
            "line_loading_percent": pd.DataFrame(base["lines"], index=index, columns=self.topology.lines.index),
            "trafo_loading_percent": pd.DataFrame(base["trafos"], index=index, columns=self.topology.trafos.index),
            "asset_p_mw": pd.DataFrame(actual, index=index, columns=assets),
            "asset_setpoint_mw": pd.DataFrame(setpoint, index=index, columns=assets),
            "asset_soc_mwh": pd.DataFrame(base["soc"], index=index, columns=assets[kinds == "battery"]),
            "asset_clipped": pd.DataFrame(clipped, index=index, columns=assets).astype(str),
            "asset_fallback": pd.DataFrame(fallback, index=index, columns=assets),
            "asset_reported_p_mw": pd.DataFrame(actual, index=index, columns=assets),
        }
        names = {f.name for f in dataclasses.fields(PolicyRecords)} - {"policy", "step"}
        for frame in tables.values():
            frame.columns = frame.columns.astype(str)
        return PolicyRecords(policy=policy, step=self.step, **{k: v for k, v in tables.items() if k in names})
