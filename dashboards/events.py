"""The run-wide event log: what happened, to which policy, from when to when — read from a run folder.

Events are scenario and operator faults, demand-response events, limit violations, controller outages,
non-converged power flows, fallbacks that are not a policy's normal state and rejected operator commands;
each with a stable id (so an alarm keeps its acknowledgement across refreshes), a severity, an onset and an
end (None while it goes on in a live run). ``windows`` are the fault and DR periods every time chart shades;
``felt_by`` says which policies a fault can act on (from each policy's mode), so one that none can feel is
refused before it is submitted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dashboards.components import fmt
from dashboards.data import RunData

__all__ = ["EVENT_COLUMNS", "FAULT_LABELS", "episodes", "felt_by", "run_events", "windows"]

EVENT_COLUMNS = ["id", "severity", "kind", "policy", "start", "end", "message", "source"]

FAULT_LABELS = {
    "control_centre_outage": "control-centre outage",
    "backhaul_cut": "backhaul cut",
    "participant_dropout": "participant dropout",
    "message_loss": "message loss",
    "false_telemetry": "false telemetry",
    "dr_event": "DR event",
    "clear_faults": "clear all faults",
}

#: Which policy modes each fault acts on (twin.comms.links and the engine's policy twin): an "ideal" policy
#: uses no comms at all; a central one polls and commands over the backhaul; agents talk over the mesh.
_FELT_BY_MODE = {
    "control_centre_outage": ("central",),
    "backhaul_cut": ("central",),
    "participant_dropout": ("central", "agents"),
    "message_loss": ("central", "agents"),
    "false_telemetry": ("ideal", "central"),
}
_MODE_TEXT = {"ideal": "uses no comms (perfect information)", "central": "is central (over the backhaul)",
              "agents": "coordinates its agents over the mesh", "?": "has an unknown mode"}


def felt_by(kind: str, modes: Mapping[str, str], *, has_settlement: bool) -> tuple[list[str], str]:
    """(policies a fault of ``kind`` can change, why the others cannot). Unknown modes count as feeling it."""
    if kind == "dr_event":
        return (list(modes), "") if has_settlement else ([], "this run has no [settlement] contracts to call a "
                                                             "demand-response event under")
    acting = _FELT_BY_MODE.get(kind)
    if acting is None:
        return list(modes), ""
    felt = [p for p, m in modes.items() if m in acting or m == "?"]
    others = [f"{p} {_MODE_TEXT.get(m, _MODE_TEXT['?'])}" for p, m in modes.items() if p not in felt]
    reason = (f"a {FAULT_LABELS.get(kind, kind)} acts only on {' or '.join(acting)} policies; " + "; ".join(others)
              if others else "")
    return felt, reason


def episodes(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True in ``mask`` as (first index, index after the last)."""
    flags = np.asarray(mask, dtype=bool)
    if not flags.any():
        return []
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _label(kind: str, participants: Sequence[str] = (), **extra: Any) -> str:
    text = FAULT_LABELS.get(kind, kind.replace("_", " "))
    if participants:
        shown = ", ".join(participants[:3]) + (f" +{len(participants) - 3}" if len(participants) > 3 else "")
        text += f" {shown}"
    if kind == "message_loss" and extra.get("loss"):
        text += f" {float(extra['loss']):.0%}"
    return text


def _utc(value: Any) -> pd.Timestamp | None:
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        return None
    if pd.isna(stamp):
        return None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def windows(data: RunData) -> pd.DataFrame:
    """Fault and DR-event periods of the run — scheduled in the scenario and applied by operators — as rows
    of start, end (UTC), kind, category ("fault" | "dr"), label and source ("scenario" | "operator").
    An applied ``clear_faults`` ends every fault active at that moment, as the engine does."""
    rows: list[dict[str, Any]] = []
    scenario = data.meta().get("scenario")
    scenario = scenario if isinstance(scenario, dict) else {}
    for fault in scenario.get("faults") or []:
        if not isinstance(fault, dict):
            continue
        start, end, kind = _utc(fault.get("start")), _utc(fault.get("end")), str(fault.get("kind", "fault"))
        if start is None or end is None or end <= start:
            continue
        parts = [str(p) for p in fault.get("participants") or []]
        rows.append({"start": start, "end": end, "kind": kind, "category": "fault", "source": "scenario",
                     "label": _label(kind, parts, loss=fault.get("loss"))})
    settlement = scenario.get("settlement")
    for event in (settlement.get("events") or []) if isinstance(settlement, dict) else []:
        start, end = (_utc(event.get("start")), _utc(event.get("end"))) if isinstance(event, dict) else (None, None)
        if start is not None and end is not None and end > start:
            rows.append({"start": start, "end": end, "kind": "dr_event", "category": "dr", "source": "scenario",
                         "label": "DR event"})
    history = data.command_history()
    applied = history[(history["state"] == "done") & (history["verdict"] == "applied")].iloc[::-1]
    for cmd in applied.itertuples(index=False):
        start = _utc(cmd.applied_at)
        if start is None:
            continue
        if cmd.kind == "clear_faults":
            for row in rows:
                if row["category"] == "fault" and row["start"] <= start < row["end"]:
                    row["end"] = max(start, row["start"])
            continue
        try:
            end = start + pd.Timedelta(cmd.duration)
        except (ValueError, TypeError):
            continue
        kind = str(cmd.kind)
        parts = [str(cmd.participant_id)] if isinstance(cmd.participant_id, str) and cmd.participant_id else []
        rows.append({"start": start, "end": end, "kind": kind, "category": "dr" if kind == "dr_event" else "fault",
                     "source": "operator", "label": _label(kind, parts) + f" (operator {cmd.operator})"})
    frame = pd.DataFrame(rows, columns=["start", "end", "kind", "category", "label", "source"])
    return frame[frame["end"] > frame["start"]].sort_values("start", kind="stable").reset_index(drop=True)


def _event(severity: str, kind: str, policy: str, start: pd.Timestamp, end: pd.Timestamp | None, message: str,
           source: str) -> dict[str, Any]:
    return {"id": f"{kind}|{policy}|{start.isoformat()}", "severity": severity, "kind": kind, "policy": policy,
            "start": start, "end": end, "message": message, "source": source}


def _span(index: pd.DatetimeIndex, i0: int, i1: int, step: pd.Timedelta, open_end: bool) -> tuple[
        pd.Timestamp, pd.Timestamp | None]:
    """Onset and end of intervals [i0, i1); no end while a running twin is still in the episode."""
    end = None if open_end and i1 == len(index) else pd.Timestamp(index[i1 - 1]) + step
    return pd.Timestamp(index[i0]), end


def _policy_events(data: RunData, policy: str, *, running: bool) -> list[dict[str, Any]]:
    summary = data.table(policy, "summary")
    if len(summary) == 0:
        return []
    index = pd.DatetimeIndex(summary.index)
    step, limits = data.step(), data.limits()
    out: list[dict[str, Any]] = []

    def add(mask: np.ndarray, severity: str, kind: str, describe: Any) -> None:
        for i0, i1 in episodes(mask):
            start, end = _span(index, i0, i1, step, running)
            out.append(_event(severity, kind, policy, start, end, describe(i0, i1), "run"))

    def worst_bus(i0: int, i1: int, low: bool) -> str:
        vm = data.table(policy, "vm_pu")
        if len(vm) < i1 or vm.shape[1] == 0:
            return ""
        block = vm.iloc[i0:i1].to_numpy(float)
        if not np.isfinite(block).any():
            return ""
        flat = int(np.nanargmin(block) if low else np.nanargmax(block))
        r, c = divmod(flat, block.shape[1])
        return f"{block[r, c]:.4f} pu at bus {vm.columns[c]}, {fmt(pd.Timestamp(index[i0 + r]))}"

    with np.errstate(invalid="ignore"):
        low = summary["vm_min_pu"].to_numpy(float) < limits.v_min_pu
        high = summary["vm_max_pu"].to_numpy(float) > limits.v_max_pu
    add(low, "critical", "undervoltage",
        lambda a, b: f"voltage below {limits.v_min_pu:g} pu for {b - a} interval(s); lowest {worst_bus(a, b, True)}")
    add(high, "critical", "overvoltage",
        lambda a, b: f"voltage above {limits.v_max_pu:g} pu for {b - a} interval(s); highest {worst_bus(a, b, False)}")
    loads = [data.table(policy, t) for t in ("line_loading_percent", "trafo_loading_percent")]
    blocks = [f.to_numpy(float) for f in loads if len(f) == len(summary) and f.shape[1]]
    if blocks:
        values = np.hstack(blocks)
        finite = np.where(np.isfinite(values), values, -np.inf)
        peak = finite.max(axis=1)
        names = [str(c) for f in loads if len(f) == len(summary) and f.shape[1] for c in f.columns]
        kinds = [k for f, k in zip(loads, ("line", "transformer"))
                 if len(f) == len(summary) and f.shape[1] for _ in f.columns]

        def overload(a: int, b: int) -> str:
            r = a + int(np.argmax(peak[a:b]))
            c = int(np.argmax(finite[r]))
            return (f"loading above {limits.loading_max_percent:g} % for {b - a} interval(s); max "
                    f"{peak[r]:.0f} % on {kinds[c]} {names[c]}, {fmt(pd.Timestamp(index[r]))}")

        add(peak > limits.loading_max_percent, "critical", "overload", overload)
    if "controller_online" in summary.columns:
        add(~summary["controller_online"].astype(bool).to_numpy(), "critical", "controller_offline",
            lambda a, b: f"controller offline for {b - a} interval(s): no dispatch reached the devices")
    if "converged" in summary.columns:
        add(~summary["converged"].astype(bool).to_numpy(), "critical", "non_converged",
            lambda a, b: f"power flow did not converge in {b - a} interval(s)")
    fallback = data.table(policy, "asset_fallback")
    if len(fallback) == len(summary) and fallback.shape[1]:
        flags = fallback.to_numpy(dtype=bool)
        # An asset on fallback most of the time is that policy's normal state (it does not control it).
        usual = flags.mean(axis=0) > 0.5
        unusual = flags & ~usual
        ids = np.asarray(fallback.columns.astype(str))

        def fallen(a: int, b: int) -> str:
            hit = ids[unusual[a:b].any(axis=0)]
            shown = ", ".join(hit[:5]) + (f" and {len(hit) - 5} more" if len(hit) > 5 else "")
            return f"{len(hit)} asset(s) on autonomous fallback (not this policy's normal state): {shown}"

        add(unusual.any(axis=1), "warning", "fallback", fallen)
    return out


def run_events(data: RunData) -> pd.DataFrame:
    """Every event of the run so far (``EVENT_COLUMNS``), in order of onset. Cached until the run changes."""
    status = data.status()
    history = data.command_history()
    key = (status.get("done"), status.get("updated_utc"), status.get("state"), len(history),
           tuple(history["verdict"].astype(str)), tuple(data.policies()), str(data.meta().get("created_utc")))
    return data.memoized("events", key, lambda: _compute_events(data, history, running=status.get("state") == "running"))


def _compute_events(data: RunData, history: pd.DataFrame, *, running: bool) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    modes = data.policy_modes()
    settles = bool(data.ledgers()) or data.has_settlement()
    for w in windows(data).itertuples(index=False):
        felt, _ = felt_by(str(w.kind), modes, has_settlement=settles)
        who = f"; felt by {', '.join(felt)}" if felt else "; no policy of this run can feel it"
        severity = "info" if w.category == "dr" else "warning"
        rows.append(_event(severity, str(w.kind), "", pd.Timestamp(w.start), pd.Timestamp(w.end),
                           f"{w.label} {fmt(pd.Timestamp(w.start))} → {fmt(pd.Timestamp(w.end))}{who}", str(w.source)))
    for policy in data.policies():
        rows.extend(_policy_events(data, policy, running=running))
    rejected = history[(history["state"] == "done") & (history["verdict"] == "rejected")]
    for cmd in rejected.itertuples(index=False):
        # The twin does not record the interval it took a rejected command at: no onset in run time.
        stamp = _submitted_at(str(cmd.file))
        when = f" (submitted {fmt(stamp)}, wall clock)" if stamp is not None else ""
        rows.append({"id": f"command_rejected||{cmd.file}", "severity": "info", "kind": "command_rejected",
                     "policy": "", "start": pd.NaT, "end": pd.NaT, "source": "operator",
                     "message": f"operator command {cmd.kind} by {cmd.operator} rejected{when}: {cmd.detail}"})
    frame = pd.DataFrame(rows, columns=EVENT_COLUMNS)
    if len(frame):
        frame = frame.sort_values("start", kind="stable", na_position="last").reset_index(drop=True)
    return frame


def _submitted_at(file_name: str) -> pd.Timestamp | None:
    """Command files start with their submission time (twin.commands.CommandChannel.submit), wall clock UTC."""
    try:
        return pd.Timestamp(pd.to_datetime(file_name.split("-", 1)[0], format="%Y%m%dT%H%M%S%f"), tz="UTC")
    except (ValueError, TypeError):
        return None
