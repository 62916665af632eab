"""The engine's entry point to settlement: turn one interval's meter registers into ledger entries under
every declared contract, community and reward pool — exactly once per interval, however often it is called.

Usage (the engine, once per interval, after the power flow and verification)::

    settlement = Settlement.for_run(run_dir, config=SettlementConfig.from_toml(scenario), run_id=run_id)
    result = settlement.settle_interval(start=t, end=t + step, meters=meters_frame(...),
                                        load_history_kw=history, unverified=rejected_participants)
    ...
    settlement.close()   # signs the closing checkpoint and closes the ledger

Every checkpoint the ledger signs is delivered at once to every participant's witness file
(``<run_dir>/witnesses/``, :mod:`twin.settlement.witness`), so each keeps the heads that pin its history.

Energy comes only from differences of cumulative registers (DESIGN.md §7), so a lost telemetry message
delays settled energy but never changes it. Every amount is computed in Decimal and stored in micro-units;
an interval's entries are appended in one transaction, so a crash leaves the interval either fully settled
or not at all, and calling again with the same inputs is a no-op.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from twin.settlement.baselines import ENERGY_QUANTUM_KWH, Baseline, BaselineMethod, compute_baseline
from twin.settlement.contracts import (
    CapacityPayment,
    DrEvent,
    EventKind,
    NonPerformancePenalty,
    PerformancePayment,
    RewardPool,
    SettlementConfig,
)
from twin.settlement.dr_program import DrProgram
from twin.settlement.ledger import AppendOutcome, Checkpoint, EntryDraft, EntryKey, Ledger, participant_account
from twin.settlement.money import allocate_largest_remainder, from_micro, to_decimal, to_micro
from twin.settlement.p2p import settle_community
from twin.settlement.rules import capacity_payment_micro, hours, penalty_rate_per_mwh
from twin.settlement.witness import WITNESS_DIRNAME, WitnessStore

__all__ = [
    "GRID_ACCOUNT",
    "METER_COLUMNS",
    "OPERATOR_ACCOUNT",
    "IntervalEnergy",
    "IntervalSettlement",
    "Settlement",
    "meters_frame",
    "pool_account",
]

#: The DSO/aggregator that pays for capacity and flexibility and collects penalties.
OPERATOR_ACCOUNT = "operator"
#: The energy retailer on the other side of a community's net grid exchange.
GRID_ACCOUNT = "grid"
METER_COLUMNS = ("e_imp_kwh_start", "e_imp_kwh_end", "e_exp_kwh_start", "e_exp_kwh_end")
_ZERO = Decimal(0)


def pool_account(name: str) -> str:
    return f"pool:{name}"


def meters_frame(*, start_registers: pd.DataFrame, end_registers: pd.DataFrame) -> pd.DataFrame:
    """The ``meters`` argument of :meth:`Settlement.settle_interval` from two register snapshots, each
    indexed by participant_id with columns ``e_imp_kwh`` and ``e_exp_kwh`` (cumulative kWh)."""
    frame = pd.DataFrame({
        "e_imp_kwh_start": start_registers["e_imp_kwh"], "e_imp_kwh_end": end_registers["e_imp_kwh"],
        "e_exp_kwh_start": start_registers["e_exp_kwh"], "e_exp_kwh_end": end_registers["e_exp_kwh"],
    })
    frame.index.name = "participant_id"
    return frame


@dataclass(frozen=True)
class IntervalEnergy:
    """One participant's metered energy in the interval (kWh, register differences)."""

    import_kwh: Decimal
    export_kwh: Decimal

    @property
    def net_kwh(self) -> Decimal:
        """Load convention: positive = net consumption from the grid."""
        return self.import_kwh - self.export_kwh


@dataclass(frozen=True)
class IntervalSettlement:
    """What settling one interval produced. ``entries`` are the drafts computed now (identical on a re-run);
    ``appended`` the sequence numbers written by this call, ``existing`` those already in the ledger.
    ``delivered_kwh[participant][method]`` is verified flexibility against each baseline used (event only)."""

    start: pd.Timestamp
    end: pd.Timestamp
    event: DrEvent | None
    energy: Mapping[str, IntervalEnergy]
    delivered_kwh: Mapping[str, Mapping[BaselineMethod, Decimal]]
    entries: tuple[EntryDraft, ...]
    appended: tuple[int, ...]
    existing: tuple[int, ...]
    checkpoint: Checkpoint | None = None

    @property
    def already_settled(self) -> bool:
        return not self.appended and bool(self.existing)

    def net_amounts(self) -> dict[str, Decimal]:
        """Net amount per account over this interval's entries (positive = receives)."""
        totals: dict[str, int] = {}
        for entry in self.entries:
            for posting in entry.postings:
                totals[posting.account] = totals.get(posting.account, 0) + posting.amount_micro
        return {account: from_micro(m) for account, m in sorted(totals.items())}


def _utc(ts: Any, what: str) -> pd.Timestamp:
    stamp = pd.Timestamp(ts)
    if stamp.tzinfo is None:
        raise ValueError(f"{what}={ts!r} must be tz-aware (UTC)")
    return stamp.tz_convert("UTC")


def _energy(value: Decimal) -> Decimal:
    return value.quantize(ENERGY_QUANTUM_KWH, rounding=ROUND_HALF_EVEN)


def _interval_energy(meters: pd.DataFrame, needed: Collection[str]) -> dict[str, IntervalEnergy]:
    missing_cols = [c for c in METER_COLUMNS if c not in meters.columns]
    if missing_cols:
        raise ValueError(f"meters: missing columns {missing_cols}; expected {list(METER_COLUMNS)}")
    missing = sorted(set(needed) - set(map(str, meters.index)))
    if missing:
        raise ValueError(f"meters: no registers for participant(s) {missing}")
    columns = meters if tuple(meters.columns) == METER_COLUMNS else meters[list(METER_COLUMNS)]  # meters_frame's
    if all(dtype == np.float64 for dtype in columns.dtypes):
        return _float_energy(columns)
    return _decimal_energy(columns.index, columns.to_numpy())


def _decimal_energy(index: Sequence[Any], rows: np.ndarray) -> dict[str, IntervalEnergy]:
    """The reference: every register as the Decimal of its shortest repr, differences rounded half-even to
    the energy quantum. Registers of any type (a bad one is named)."""
    energy = {}
    for pid, row in zip(index, rows.tolist()):  # Python scalars: a bad one is named as 'nan', not np.float64(nan)
        values = {c: to_decimal(v, what=f"meters[{pid!r}].{c}") for c, v in zip(METER_COLUMNS, row)}
        for register in ("e_imp_kwh", "e_exp_kwh"):
            a, b = values[f"{register}_start"], values[f"{register}_end"]
            if b < a:
                raise ValueError(f"meters[{pid!r}].{register}: register went backwards from {a} to {b}")
        energy[str(pid)] = IntervalEnergy(
            import_kwh=_energy(values["e_imp_kwh_end"] - values["e_imp_kwh_start"]),
            export_kwh=_energy(values["e_exp_kwh_end"] - values["e_exp_kwh_start"]),
        )
    return energy


def _float_energy(columns: pd.DataFrame) -> dict[str, IntervalEnergy]:
    """:func:`_decimal_energy` of float registers, on arrays: each difference rounded to whole quanta in
    floating point, which is the exact Decimal rounding unless the value lies within the float error of a
    half quantum; those rows (and any bad one, for its message) take the Decimal path."""
    values = columns.to_numpy()
    start, end = values[:, [0, 2]], values[:, [1, 3]]
    scaled = (end - start) * _QUANTA_PER_KWH
    # |shortest repr − float| ≤ ½ ulp per register, plus the subtraction's and the product's rounding.
    error = 8 * np.finfo(float).eps * _QUANTA_PER_KWH * np.maximum(np.abs(start), np.abs(end)) + 1e-9
    exact = ~(np.isfinite(values).all(axis=1) & (end >= start).all(axis=1) & (np.abs(values) < 1e9).all(axis=1)
              & (np.abs(scaled - np.floor(scaled) - 0.5) > error).all(axis=1))
    quanta = np.rint(np.where(exact[:, None], 0.0, scaled)).astype(np.int64)
    index = columns.index
    energy = {}
    if exact.any():  # raises on a bad register, naming it
        energy = _decimal_energy(index[exact], values[exact])
    for pid, (imp, exp) in zip(index[~exact], quanta[~exact].tolist()):
        energy[str(pid)] = IntervalEnergy(import_kwh=_from_quanta(imp), export_kwh=_from_quanta(exp))
    return energy if not exact.any() else {str(pid): energy[str(pid)] for pid in index}


def _from_quanta(quanta: int) -> Decimal:
    known = _QUANTA_DECIMALS.get(quanta)
    if known is not None:
        return known
    return Decimal(quanta).scaleb(_QUANTUM_EXPONENT).quantize(ENERGY_QUANTUM_KWH)


_QUANTUM_EXPONENT = int(ENERGY_QUANTUM_KWH.as_tuple().exponent)  # the quantum is a power of ten: 1e-6 kWh
_QUANTA_PER_KWH = 10 ** -_QUANTUM_EXPONENT
_QUANTA_DECIMALS = {0: Decimal(0).quantize(ENERGY_QUANTUM_KWH)}


class Settlement:
    """Settles intervals of one run into one ledger. Keep one per run; it caches each event's baselines
    (they depend only on history before the event, so a restarted process recomputes the same ones).

    With a DR program register (``config.dr_program`` or ``program``), ``config.events`` is the declared
    events plus every event the program issued so far, re-read whenever the program issues one; for those,
    only participants taking part are settled for the event (see :meth:`takes_part`).
    """

    def __init__(self, *, ledger: Ledger, config: SettlementConfig, run_id: str,
                 program: DrProgram | None = None) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self._declared = config
        self._program = program
        self._merged: SettlementConfig | None = None
        self._merged_version = -1
        self._baselines: dict[tuple[pd.Timestamp, str, BaselineMethod], Baseline] = {}

    @property
    def config(self) -> SettlementConfig:
        """The configuration in force: the declared one plus the events the DR program issued."""
        program = self._program
        if program is None:
            return self._declared
        version = program.version()
        if self._merged is None or version != self._merged_version:
            declared = self._declared.events
            known = {e.event_id for e in declared if e.event_id is not None}
            issued = tuple(e.as_dr_event() for e in program.events() if e.event_id not in known)
            self._merged = self._declared.model_copy(update={"events": (*declared, *issued)})
            self._merged_version = version
        return self._merged

    @config.setter
    def config(self, value: SettlementConfig) -> None:  # an operator-declared event joins (the engine)
        self._declared, self._merged = value, None

    def takes_part(self, event: DrEvent, participant: str, start: pd.Timestamp) -> bool:
        """Is ``participant`` settled for ``event`` in the interval starting at ``start``? Always for a declared
        event and for an emergency event (a capacity obligation cannot be declined); for an economic or test
        event the DR program issued, only if the participant's latest answer before ``start`` was optIn."""
        program = self._program
        if program is None or event.kind is EventKind.EMERGENCY or not program.knows(event.event_id):
            return True
        return participant in program.opted_in(str(event.event_id), at=start)

    @classmethod
    def for_run(cls, run_dir: Path | str, *, config: SettlementConfig, run_id: str) -> Settlement:
        """Open (or resume) ``<run_dir>/ledger.sqlite`` with the operator key from the key store; signed heads
        go to every participant's witness file in ``<run_dir>/witnesses/`` as they are made (heads a killed
        writer signed but never delivered are delivered now)."""
        ledger = Ledger.open_run(run_dir, run_id=run_id)
        program = None
        try:
            witnesses = WitnessStore(Path(run_dir) / WITNESS_DIRNAME)
            participants = sorted(config.participants())
            witnesses.catch_up(ledger.checkpoints(), participants)
            ledger.on_checkpoint.append(lambda checkpoint: witnesses.deliver(checkpoint, participants))
            if config.dr_program is not None:
                program = DrProgram.open(config.dr_program, create=False)
        except BaseException:
            ledger.close()
            raise
        return cls(ledger=ledger, config=config, run_id=run_id, program=program)

    def close(self, *, complete: bool = True) -> Checkpoint | None:
        """Sign the closing checkpoint (when there is a key) and close the ledger. ``complete=False`` (the
        run stopped early: failed, interrupted) signs an ordinary checkpoint instead, so every entry is covered
        but the ledger stays open for a resumed run and verify reports it incomplete."""
        try:
            if self.ledger.signer is not None:
                return self.ledger.checkpoint(closing=complete)
            return None
        finally:
            self.ledger.close()
            if self._program is not None:
                self._program.close()

    # -- the entry point -------------------------------------------------------------------------------
    def settle_interval(
        self,
        *,
        start: pd.Timestamp,
        end: pd.Timestamp,
        meters: pd.DataFrame,
        load_history_kw: pd.DataFrame | None = None,
        unverified: Collection[str] = (),
    ) -> IntervalSettlement:
        """Settle [start, end): :meth:`draft_interval`, then :meth:`commit` its entries (one transaction).

        ``meters``: index participant_id, columns :data:`METER_COLUMNS` (cumulative kWh registers at start
        and end; see :func:`meters_frame`). ``load_history_kw``: index = UTC interval starts, one column
        per participant, average kW (load convention); needed in event intervals for baselines, covering
        the baseline lookback (45 days) and the same-day adjustment window. ``unverified``: participants
        whose flexibility the physics check rejected this interval; they are credited with no delivery
        (so no performance payment or pool share, and a penalty if they were committed).
        """
        drafted = self.draft_interval(start=start, end=end, meters=meters, load_history_kw=load_history_kw,
                                      unverified=unverified)
        outcome, checkpoint = self.commit(drafted.entries)
        return dataclasses.replace(drafted, appended=outcome.appended, existing=outcome.existing,
                                   checkpoint=checkpoint)

    def commit(self, drafts: Sequence[EntryDraft]) -> tuple[AppendOutcome, Checkpoint | None]:
        """Append drafted entries (of one or many intervals) in one transaction, with the periodic checkpoint
        they make due; entries already in the ledger are no-ops (LedgerConflictError if they differ)."""
        last = self.ledger.last_checkpoint()
        outcome = self.ledger.append_all(drafts, checkpoint_every=self.config.checkpoint_every)
        after = self.ledger.last_checkpoint()
        return outcome, (after if outcome.appended and after != last else None)

    def draft_interval(
        self,
        *,
        start: pd.Timestamp,
        end: pd.Timestamp,
        meters: pd.DataFrame,
        load_history_kw: pd.DataFrame | None = None,
        unverified: Collection[str] = (),
    ) -> IntervalSettlement:
        """The entries settling [start, end) would append, computed without touching the ledger (``appended``
        and ``existing`` are empty): a caller that commits several intervals at once (the run, together with
        its run store) commits them later with :meth:`commit`. Arguments as :meth:`settle_interval`."""
        start, end = _utc(start, "start"), _utc(end, "end")
        if end <= start:
            raise ValueError(f"interval {start}..{end} is empty")
        energy = _interval_energy(meters, self.config.participants())
        event = self._event_for(start, end)
        delivered = self._delivered(event, start, end, energy, load_history_kw, frozenset(unverified)) if event else {}
        drafts = [
            *self._contract_entries(start, end, event, delivered),
            *self._community_entries(start, end, energy),
            *self._pool_entries(start, end, event, delivered),
        ]
        return IntervalSettlement(
            start=start, end=end, event=event, energy=MappingProxyType(energy),
            delivered_kwh=MappingProxyType({p: MappingProxyType(d) for p, d in delivered.items()}),
            entries=tuple(drafts), appended=(), existing=(),
        )

    # -- events and baselines --------------------------------------------------------------------------
    def _event_for(self, start: pd.Timestamp, end: pd.Timestamp) -> DrEvent | None:
        for event in self.config.events:
            e_start, e_end = pd.Timestamp(event.start).tz_convert("UTC"), pd.Timestamp(event.end).tz_convert("UTC")
            if e_start <= start and end <= e_end:
                return event
            if start < e_end and e_start < end:
                raise ValueError(f"interval {start}..{end} straddles event {e_start}..{e_end}; "
                                 f"events must start and end on interval boundaries")
        return None

    def _event_days(self) -> set[date]:
        days: set[date] = set()
        tz = self.config.baseline_tz
        for event in self.config.events:
            first = pd.Timestamp(event.start).tz_convert(tz).date()
            last = (pd.Timestamp(event.end) - pd.Timedelta("1us")).tz_convert(tz).date()
            days.update(first + timedelta(days=i) for i in range((last - first).days + 1))
        return days

    def _methods(self) -> dict[str, set[BaselineMethod]]:
        needed: dict[str, set[BaselineMethod]] = {}
        for contract in self.config.contracts:
            needed.setdefault(contract.participant, set()).update(contract.baseline_methods())
        for pool in self.config.reward_pools:
            for member in pool.members:
                needed.setdefault(member, set()).add(pool.baseline)
        return needed

    def _baseline(self, event: DrEvent, participant: str, method: BaselineMethod,
                  history: pd.DataFrame | None) -> Baseline:
        key = (pd.Timestamp(event.start), participant, method)
        if key not in self._baselines:
            if history is None or participant not in history.columns:
                raise ValueError(f"load_history_kw: needed for participant {participant!r} in the event starting "
                                 f"{event.start.isoformat()} ({method} baseline)")
            self._baselines[key] = compute_baseline(
                method, load_kw=history[participant], event_start=pd.Timestamp(event.start),
                event_end=pd.Timestamp(event.end), event_days=self._event_days(),
                holidays=self.config.holidays, tz=self.config.baseline_tz)
        return self._baselines[key]

    def _delivered(self, event: DrEvent, start: pd.Timestamp, end: pd.Timestamp,
                   energy: Mapping[str, IntervalEnergy], history: pd.DataFrame | None,
                   unverified: frozenset[str]) -> dict[str, dict[BaselineMethod, Decimal]]:
        span_h = hours(end - start)
        delivered: dict[str, dict[BaselineMethod, Decimal]] = {}
        for participant, methods in sorted(self._methods().items()):
            for method in sorted(methods):
                baseline = self._baseline(event, participant, method, history)
                if end - start > baseline.step:
                    raise ValueError(f"interval {start}..{end} is longer than the baseline step {baseline.step}")
                baseline_kwh = baseline.kw_at(start) * span_h
                absent = participant in unverified or not self.takes_part(event, participant, start)
                kwh = _ZERO if absent else max(_ZERO, baseline_kwh - energy[participant].net_kwh)
                delivered.setdefault(participant, {})[method] = _energy(kwh)
        return delivered

    # -- entries ---------------------------------------------------------------------------------------
    def _key(self, start: pd.Timestamp, participant: str, rule: str, version: str) -> EntryKey:
        return EntryKey(run_id=self.run_id, interval_start=start, participant=participant, rule=rule,
                        rule_version=version)

    def _contract_entries(self, start: pd.Timestamp, end: pd.Timestamp, event: DrEvent | None,
                          delivered: Mapping[str, Mapping[BaselineMethod, Decimal]]) -> list[EntryDraft]:
        drafts = []
        for contract in self.config.contracts:
            who = participant_account(contract.participant)
            # An opted-out participant is outside this event: no payment and no penalty for it.
            own_event = event if event is not None and self.takes_part(event, contract.participant, start) else None
            for rule in contract.rules:
                amount, detail = self._rule_amount(rule, start, end, own_event,
                                                   delivered.get(contract.participant, {}))
                if amount:
                    drafts.append(EntryDraft.create(
                        key=self._key(start, contract.participant, rule.name, rule.version), interval_end=end,
                        postings={OPERATOR_ACCOUNT: -amount, who: amount}, detail=detail))
        return drafts

    def _rule_amount(self, rule: Any, start: pd.Timestamp, end: pd.Timestamp, event: DrEvent | None,
                     delivered: Mapping[BaselineMethod, Decimal]) -> tuple[int, dict[str, object]]:
        """Micro-units the operator pays the participant under ``rule`` (negative: the participant pays)."""
        if isinstance(rule, CapacityPayment):
            micro = capacity_payment_micro(committed_kw=rule.committed_kw, price_per_kw_month=rule.price_per_kw_month,
                                           start=start, end=end)
            return micro, {"kind": rule.kind, "committed_kw": rule.committed_kw,
                           "price_per_kw_month": rule.price_per_kw_month}
        if event is None:
            return 0, {}
        kwh = delivered[rule.baseline]
        if isinstance(rule, PerformancePayment):
            return to_micro(kwh * rule.price_per_kwh), {
                "kind": rule.kind, "baseline": rule.baseline, "delivered_kwh": kwh,
                "price_per_kwh": rule.price_per_kwh, "event_kind": event.kind}
        assert isinstance(rule, NonPerformancePenalty)
        # In energy terms so no 1/12-hour division is ever rounded: (C·BR·Δt − delivered kWh)⁺ × rate / 1000.
        owed_kwh = rule.committed_kw * rule.balancing_ratio * hours(end - start)
        shortfall_kwh = max(_ZERO, owed_kwh - kwh)
        rate = penalty_rate_per_mwh(net_cone_per_mw_day=rule.net_cone_per_mw_day, expected_hours=rule.expected_hours)
        return -to_micro(shortfall_kwh * rate / 1000), {
            "kind": rule.kind, "baseline": rule.baseline, "delivered_kwh": kwh, "owed_kwh": _energy(owed_kwh),
            "shortfall_kwh": _energy(shortfall_kwh), "rate_per_mwh": rate, "event_kind": event.kind}

    def _community_entries(self, start: pd.Timestamp, end: pd.Timestamp,
                           energy: Mapping[str, IntervalEnergy]) -> list[EntryDraft]:
        drafts = []
        for community in self.config.communities:
            result = settle_community(
                imports_kwh={m: energy[m].import_kwh for m in community.members},
                exports_kwh={m: energy[m].export_kwh for m in community.members},
                grid_buy=community.grid_buy_per_kwh, feed_in=community.feed_in_per_kwh, method=community.method)
            postings = {participant_account(m): v for m, v in result.amounts_micro.items()}
            postings[GRID_ACCOUNT] = result.grid_micro
            if sum(1 for v in postings.values() if v) >= 2:
                drafts.append(EntryDraft.create(
                    key=self._key(start, f"community:{community.name}", f"p2p_{community.method}", community.version),
                    interval_end=end, postings=postings,
                    detail={"buy_price": result.prices.buy, "sell_price": result.prices.sell,
                            "supply_kwh": result.supply_kwh, "demand_kwh": result.demand_kwh}))
        return drafts

    def _pool_entries(self, start: pd.Timestamp, end: pd.Timestamp, event: DrEvent | None,
                      delivered: Mapping[str, Mapping[BaselineMethod, Decimal]]) -> list[EntryDraft]:
        if event is None:
            return []
        drafts = []
        for pool in self.config.reward_pools:
            weights = {m: delivered[m][pool.baseline] for m in pool.members if delivered[m][pool.baseline] > 0}
            if not weights:
                continue  # nobody delivered: the slice stays in the pool
            pot = self._pot_slice(pool, event, start, end)
            shares = allocate_largest_remainder(pot, weights)
            postings = {participant_account(m): v for m, v in shares.items()}
            postings[pool_account(pool.name)] = -pot
            drafts.append(EntryDraft.create(
                key=self._key(start, f"pool:{pool.name}", "reward_pool", pool.version), interval_end=end,
                postings=postings,
                detail={"pot_slice": from_micro(pot), "baseline": pool.baseline,
                        **{f"delivered_kwh:{m}": w for m, w in sorted(weights.items())}}))
        return drafts

    @staticmethod
    def _pot_slice(pool: RewardPool, event: DrEvent, start: pd.Timestamp, end: pd.Timestamp) -> int:
        if pool.per == "interval":
            return to_micro(pool.pot)
        e_start = pd.Timestamp(event.start)
        length = int((pd.Timestamp(event.end) - e_start) / pd.Timedelta("1us"))

        def to_date(t: pd.Timestamp) -> int:
            return to_micro(pool.pot * int((t - e_start) / pd.Timedelta("1us")) / length)

        return to_date(end) - to_date(start)

