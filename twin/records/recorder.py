"""Recording: turns each interval's StepRecords into per-policy labelled tables (time × bus, time × asset...).

Owns the in-memory accumulation only; twin.records.runstore writes the tables to disk and twin.records.kpis reads them.
A StepRecord carries arrays (power flow, device outcome, fallbacks, reported power) in the order of labels held
once per run; rows are appended as those arrays and become labelled tables only in ``freeze``, so a year of
15-minute steps stays cheap.
"""

from __future__ import annotations

import array
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from twin.devices.physics import CLIP_REASONS, IntervalOutcome
from twin.grid.results import PowerFlowResult

__all__ = ["STAGE_COLUMNS", "StepRecord", "SUMMARY_COLUMNS", "TIMING_COLUMNS", "PolicyRecords", "Recorder"]

@dataclass(frozen=True)
class StepRecord:
    """What one policy's twin did in one interval: the input to recording, KPIs and settlement."""

    policy: str
    time: pd.Timestamp
    power_flow: PowerFlowResult
    outcome: IntervalOutcome
    fallback_mask: np.ndarray  # bool per asset (outcome.ids order): ran on its autonomous default
    reported_p: np.ndarray  # per asset, what its telemetry claimed (differs from outcome under false telemetry)
    price_eur_per_mwh: float
    feed_in_eur_per_mwh: float
    compute_s: float
    traffic: dict[str, int]  # messages, bytes, dropped, central_bytes in this interval
    rounds: int
    controller_online: bool
    #: Net settlement amounts of this interval (EUR, float for reporting only — the ledger holds Decimal):
    #: "operator" (negative = pays) and "participants" (sum over participants, positive = earns).
    settlement_eur: dict[str, float] = field(default_factory=dict)
    #: Participants whose claimed behaviour the physics check could not confirm in this interval.
    unverified: frozenset[str] = frozenset()
    diagnostics: Any = field(default_factory=lambda: MappingProxyType({}))
    #: Wall time of each stage of this interval (s): decide (= telemetry + optimize + coordinate: reading
    #: telemetry into observations, the controllers' or agents' own computation, moving messages over the
    #: comms model), devices (setpoints and physics), power_flow, settle (verification and ledger).
    stage_s: dict[str, float] = field(default_factory=dict)
    #: The controller's setpoint schedules that reached devices in this interval, as the devices hold them
    #: (None: none did): asset positions (``outcome.ids`` order) and, per position, MW for the intervals
    #: ``time + k * step``, k = 0 .. ceil(setpoint_ttl / step) - 1 (a period left open holds the one before).
    #: Not recorded; the live twin sends them on (an OCPP TxProfile's periods).
    held_schedule: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def fallback(self) -> pd.Series:
        """Per asset_id: True = ran on its autonomous default (no valid setpoint)."""
        return pd.Series(self.fallback_mask.copy(), index=self.outcome.ids)

    @property
    def reported_p_mw(self) -> pd.Series:
        """Per asset_id, the power its telemetry claimed (MW)."""
        return pd.Series(self.reported_p.copy(), index=self.outcome.ids)


_CLIP_TEXT = np.array(CLIP_REASONS, dtype=object)

SUMMARY_COLUMNS = (
    "p_head_mw",
    "q_head_mvar",
    "losses_mw",
    "vm_min_pu",
    "vm_max_pu",
    "converged",
    "price_eur_per_mwh",
    "cost_eur",
    "pv_curtailed_mwh",
    "ev_unmet_mwh",
    "flex_unserved_mwh",
    "n_clipped",
    "n_fallback",
    "compute_s",
    "messages",
    "bytes",
    "dropped_messages",
    "central_bytes",
    "rounds",
    "primal_residual_mw",
    "dual_residual_mw",
    "controller_online",
    "operator_eur",
    "participants_eur",
    "n_unverified",
    "t_telemetry_s",
    "t_optimize_s",
    "t_coordinate_s",
    "t_devices_s",
    "t_power_flow_s",
    "t_settle_s",
    "t_edge_step_s",
)


#: The per-record values of the summary, in the order _PolicyBuffer.add stores them.
_SCALAR_COLUMNS = ("p_head_mw", "q_head_mvar", "losses_mw", "converged", "price_eur_per_mwh", "feed_in_eur_per_mwh",
                   "pv_curtailed_mwh", "ev_unmet_mwh", "flex_unserved_mwh", "compute_s", "messages", "bytes",
                   "dropped_messages", "central_bytes", "rounds", "primal_residual_mw", "dual_residual_mw",
                   "controller_online", "operator_eur",
                   "participants_eur", "n_unverified", "t_telemetry_s", "t_optimize_s", "t_coordinate_s",
                   "t_devices_s", "t_power_flow_s", "t_settle_s", "t_edge_step_s")

def _number(diagnostics: Any, key: str) -> float:
    """A coordinating policy's scalar diagnostic (its last round's primal or dual residual, the seconds one edge
    device spends on its own local step), NaN otherwise."""
    if not diagnostics:  # the usual case (no diagnostics): skip the Mapping check
        return math.nan
    value = diagnostics.get(key) if isinstance(diagnostics, Mapping) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


#: Stages of an interval with their wall-time column (decide = telemetry + optimize + coordinate).
STAGE_COLUMNS = {
    "telemetry": "t_telemetry_s",
    "optimize": "t_optimize_s",
    "coordinate": "t_coordinate_s",
    "devices": "t_devices_s",
    "power_flow": "t_power_flow_s",
    "settle": "t_settle_s",
}

#: Wall-clock measurements: they describe the machine, not the scenario, so they differ run to run.
TIMING_COLUMNS = ("compute_s", "t_telemetry_s", "t_optimize_s", "t_coordinate_s", "t_devices_s", "t_power_flow_s",
                  "t_settle_s", "t_edge_step_s")


@dataclass(frozen=True)
class PolicyRecords:
    """All recorded series of one policy; index = interval start (UTC)."""

    policy: str
    step: pd.Timedelta
    summary: pd.DataFrame
    vm_pu: pd.DataFrame  # time × bus
    line_loading_percent: pd.DataFrame  # time × line
    trafo_loading_percent: pd.DataFrame  # time × trafo
    asset_p_mw: pd.DataFrame  # time × asset, what the device did
    asset_setpoint_mw: pd.DataFrame  # time × asset, what reached it (held setpoint or autonomous default)
    asset_soc_mwh: pd.DataFrame  # time × battery, at interval end
    asset_clipped: pd.DataFrame  # time × asset, clip reason ("" = none)
    asset_fallback: pd.DataFrame  # time × asset, True = autonomous default
    asset_reported_p_mw: pd.DataFrame  # time × asset, what telemetry claimed (false telemetry differs)

    TABLES = (
        "summary",
        "vm_pu",
        "line_loading_percent",
        "trafo_loading_percent",
        "asset_p_mw",
        "asset_setpoint_mw",
        "asset_soc_mwh",
        "asset_clipped",
        "asset_fallback",
        "asset_reported_p_mw",
    )


#: One record's summary values (``_SCALAR_COLUMNS``) as packed into a buffer's bytes.
_SCALARS = struct.Struct(f"={len(_SCALAR_COLUMNS)}d")
#: Each summary column's position.
_SUMMARY_POSITION = {name: k for k, name in enumerate(SUMMARY_COLUMNS)}
#: The tables made of one row per record (all but the summary).
_ROW_TABLES = tuple(name for name in PolicyRecords.TABLES if name != "summary")


class _PolicyBuffer:
    """One policy's records as they arrive: each table's rows (the records' own arrays, appended, never copied),
    the summary's values packed into bytes (``_SCALARS``) and the intervals' starts (int64 ns); ``freeze`` stacks
    them into tables in one pass per table."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.n = 0
        self.times_ns = array.array("q")
        self.tz: Any = None
        self.rows: dict[str, list[np.ndarray]] = {name: [] for name in _ROW_TABLES}
        self.scalars = bytearray()
        self.columns: dict[str, pd.Index] = {"summary": pd.Index(SUMMARY_COLUMNS)}
        self._no_soc = np.empty(0)

    def _first(self, rec: StepRecord) -> None:
        """The tables' columns, from the first record (every record of a run has the same labels)."""
        pf, out = rec.power_flow, rec.outcome
        self._soc_rows = np.flatnonzero(np.isfinite(out.soc))
        self._soc_all = len(self._soc_rows) == len(out.soc)
        self.tz = rec.time.tz
        labels = pf.labels
        self.columns = {
            "vm_pu": labels.bus,
            "line_loading_percent": labels.line,
            "trafo_loading_percent": labels.trafo,
            "asset_p_mw": out.ids,
            "asset_setpoint_mw": out.ids,
            "asset_soc_mwh": out.ids[self._soc_rows],
            "asset_clipped": out.ids,
            "asset_fallback": out.ids,
            "asset_reported_p_mw": out.ids,
            "summary": pd.Index(SUMMARY_COLUMNS),
        }
        r = self.rows
        self._appends = (r["vm_pu"].append, r["line_loading_percent"].append, r["trafo_loading_percent"].append,
                         r["asset_p_mw"].append, r["asset_setpoint_mw"].append, r["asset_soc_mwh"].append,
                         r["asset_clipped"].append, r["asset_fallback"].append, r["asset_reported_p_mw"].append)

    def add(self, rec: StepRecord) -> None:
        if self.n == 0:
            self._first(rec)
        pf, out = rec.power_flow, rec.outcome
        traffic, stage, settled, diagnostics = rec.traffic, rec.stage_s, rec.settlement_eur, rec.diagnostics
        # What only this record knows; the summary's derived columns (Vmin/Vmax, cost, counts) are computed
        # for all rows at once in freeze.
        if diagnostics:
            primal, dual = _number(diagnostics, "primal_residual_mw"), _number(diagnostics, "dual_residual_mw")
            edge = _number(diagnostics, "edge_step_s")
        else:  # the usual case (no diagnostics)
            primal = dual = edge = math.nan
        if traffic:
            messages, n_bytes = traffic.get("messages", 0), traffic.get("bytes", 0)
            dropped, central = traffic.get("dropped", 0), traffic.get("central_bytes", 0)
        else:
            messages = n_bytes = dropped = central = 0
        get = stage.get
        self.scalars += _SCALARS.pack(
            pf.p_head_mw, pf.q_head_mvar, pf.losses_mw, pf.converged, rec.price_eur_per_mwh,
            rec.feed_in_eur_per_mwh, out.pv_curtailed_mwh, out.ev_unmet_mwh, out.flex_unserved_mwh, rec.compute_s,
            messages, n_bytes, dropped, central, rec.rounds, primal, dual, rec.controller_online,
            settled.get("operator", 0.0) if settled else 0.0, settled.get("participants", 0.0) if settled else 0.0,
            len(rec.unverified), get("telemetry", 0.0), get("optimize", 0.0), get("coordinate", 0.0),
            get("devices", 0.0), get("power_flow", 0.0), get("settle", 0.0), edge,
        )
        self.times_ns.append(rec.time.value)
        self.n += 1
        vm, line, trafo, p, setpoint, soc, clipped, fallback, reported = self._appends
        vm(pf.vm)
        line(pf.line_loading)
        trafo(pf.trafo_loading)
        p(out.p)
        setpoint(out.p_requested)
        soc(out.soc if self._soc_all else out.soc[self._soc_rows] if len(self._soc_rows) else self._no_soc)
        clipped(out.clip_code)
        fallback(rec.fallback_mask)
        reported(rec.reported_p)

    def _summary(self, since: int, tables: dict[str, np.ndarray], hours: float) -> np.ndarray:
        # a copy: a view would pin the bytearray, which must still grow
        raw = np.frombuffer(self.scalars, dtype=float, offset=since * _SCALARS.size).reshape(
            -1, len(_SCALAR_COLUMNS)).copy()
        column = dict(zip(_SCALAR_COLUMNS, raw.T, strict=True))
        converged = column["converged"] > 0
        p_head = column["p_head_mw"]
        cost = (column["price_eur_per_mwh"] * (np.maximum(p_head, 0.0) * hours)
                - column["feed_in_eur_per_mwh"] * (np.maximum(-p_head, 0.0) * hours))
        vm = tables["vm_pu"]
        with np.errstate(invalid="ignore"):
            vm_min = np.fmin.reduce(vm, axis=1) if vm.shape[1] else np.full(len(raw), np.nan)
            vm_max = np.fmax.reduce(vm, axis=1) if vm.shape[1] else np.full(len(raw), np.nan)
        derived = {
            "vm_min_pu": np.where(converged, vm_min, np.nan),
            "vm_max_pu": np.where(converged, vm_max, np.nan),
            "cost_eur": np.where(converged, cost, np.nan),
            "n_clipped": np.count_nonzero(tables["asset_clipped"], axis=1).astype(float),
            "n_fallback": np.count_nonzero(tables["asset_fallback"], axis=1).astype(float),
        }
        return np.column_stack([derived[c] if c in derived else column[c] for c in SUMMARY_COLUMNS]) \
            if len(raw) else np.empty((0, len(SUMMARY_COLUMNS)))

    def freeze(self, step: pd.Timedelta, *, since: int = 0) -> PolicyRecords:
        starts = np.frombuffer(self.times_ns, dtype=np.int64)[since:].copy()  # a copy: the array must still grow
        index = pd.DatetimeIndex(starts.view("datetime64[ns]"), name="time")
        if self.tz is not None:
            index = index.tz_localize(self.tz)
        data: dict[str, np.ndarray] = {}
        for name in _ROW_TABLES:
            data[name] = _stacked(self.rows[name][since:], len(self.columns.get(name, ())))
        data["summary"] = self._summary(since, data, step / pd.Timedelta("1h"))
        tables = {}
        labels = self._labels()
        for name in PolicyRecords.TABLES:
            values = data[name]
            if name == "asset_clipped":  # the reasons' text (str objects, as astype(str) leaves them)
                values = _CLIP_TEXT[values.astype(np.intp)]
            elif name == "asset_fallback" and values.dtype != np.bool_:
                values = values.astype(bool)
            tables[name] = pd.DataFrame(values, index=index, columns=labels[name].copy(), copy=False)
        summary = tables["summary"]
        for flag in ("converged", "controller_online"):  # bool columns in place (isetitem: no column lookup)
            position = _SUMMARY_POSITION[flag]
            summary.isetitem(position, data["summary"][:, position].astype(bool))
        return PolicyRecords(policy=self.policy, step=step, **tables)

    def _labels(self) -> dict[str, pd.Index]:
        """Each table's column labels as text (as the tables carry them), made once the columns are known."""
        key = tuple(map(id, self.columns.values()))
        cached = self.__dict__.get("_labels_cache")
        if cached is None or cached[0] != key:
            labels = {name: self.columns.get(name, pd.Index([])).astype(str) for name in PolicyRecords.TABLES}
            cached = self._labels_cache = (key, labels)
        return cached[1]


def _stacked(rows: list[np.ndarray], width: int) -> np.ndarray:
    """Equal-length rows as one (rows x width) array: end to end and reshaped (one C pass; ``np.array`` of a
    list of arrays inspects each one as a sequence first, ~3x slower)."""
    if not rows:
        return np.empty((0, width))
    if width == 0:  # nothing to stack (a run without a fleet): the rows' dtype, no columns
        return np.empty((len(rows), 0), dtype=rows[0].dtype)
    flat = np.concatenate(rows)
    if len(flat) != len(rows) * width:
        return np.array(rows)  # not equal-length rows: as np.array stacks them (or says why not)
    return flat.reshape(len(rows), width)


class Recorder:
    """Collects StepRecords of every policy; ``freeze()`` returns PolicyRecords by policy name."""

    def __init__(self, *, step: pd.Timedelta) -> None:
        self.step = step
        self.hours = step / pd.Timedelta("1h")
        self._buffers: dict[str, _PolicyBuffer] = {}

    def add(self, records: list[StepRecord]) -> None:
        for rec in records:
            buffer = self._buffers.get(rec.policy)
            if buffer is None:
                buffer = self._buffers[rec.policy] = _PolicyBuffer(rec.policy)
            buffer.add(rec)

    def __len__(self) -> int:
        """Intervals recorded so far."""
        buffers = self._buffers
        if len(buffers) == 1:  # the usual case, called after every interval: no generator
            for buffer in buffers.values():
                return buffer.n
        return min((b.n for b in buffers.values()), default=0)

    def freeze(self, *, since: int = 0) -> dict[str, PolicyRecords]:
        """Tables of every policy from interval ``since`` (0 = the whole run) to the last recorded one."""
        return {name: buf.freeze(self.step, since=since) for name, buf in self._buffers.items()}
