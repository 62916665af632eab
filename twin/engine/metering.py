"""Participant meters and per-interval settlement of one policy's twin.

Owns each participant's cumulative import/export registers (kWh) — the household's own load plus its
DERs, netted at the meter every interval — and the hand-off of their register differences to
``twin.settlement`` once per interval. Meters net by incidence matrices built once (native load -> owner,
asset -> owner), so an ordinary interval is two sparse products, never a groupby. Registers are built from what the participant *reports* (false
telemetry shows up here), so the physics check can refuse to pay for what the grid did not see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandapower as pp
import pandas as pd
import scipy.sparse as sp

from grids.fleet import participant_id_for_load
from grids.profiles import feeder_profiles
from twin.grid.verification import FeederVerifier
from twin.inputs import RunInputs
from twin.scenario import Scenario
from twin.settlement import Settlement, SettlementConfig, meters_frame
from twin.settlement.contracts import DrEvent
from twin.settlement.ledger import EntryDraft
from twin.settlement.settle import IntervalSettlement

__all__ = ["DeferredLedgers", "Meters", "PolicySettlement", "participant_of_load", "settlement_history_kw"]

#: Baselines look back this far (CAISO 10-in-10 over 45 calendar days, plus the adjustment window).
HISTORY = pd.Timedelta("46D")


def participant_of_load(load_index: pd.Index) -> pd.Series:
    """The participant behind each native load, named as grids.fleet names the owners of its DERs, so a
    participant's DERs and its own load meet at one meter."""
    return pd.Series([participant_id_for_load(i) for i in load_index], index=load_index, name="participant_id")


def settlement_history_kw(scenario: Scenario, inputs: RunInputs) -> pd.DataFrame:
    """Each participant's load before the run (kW), as its own household load: the baselines' look-back.

    Before the run no policy controlled anything, so the business-as-usual load is the household's own.
    """
    try:
        before = feeder_profiles(inputs.net, start=scenario.start - HISTORY, end=scenario.start, step=scenario.step,
                                 seed=0)
    except ValueError as exc:
        raise ValueError(f"settlement: baselines need {HISTORY.days} days of load before start="
                         f"{scenario.start.isoformat()!r}, which the profiles do not have ({exc})") from None
    owner = participant_of_load(before.load_p_mw.columns)
    return before.load_p_mw.T.groupby(owner).sum().T * 1e3


def _owner_incidence(owner: pd.Series, participants: pd.Index) -> sp.csr_matrix:
    """(n_participant x n_element) 0/1 matrix: which participant owns each element."""
    rows = participants.get_indexer(owner.to_numpy())
    return sp.csr_matrix((np.ones(len(owner)), (rows, np.arange(len(owner)))), shape=(len(participants), len(owner)))


@dataclass
class Meters:
    """Cumulative registers per participant (kWh). ``advance`` nets one interval at each meter."""

    participants: pd.Index
    load_owner: pd.Series  # native load index → participant id
    asset_owner: pd.Series  # asset id → participant id
    e_imp_kwh: np.ndarray
    e_exp_kwh: np.ndarray

    def __post_init__(self) -> None:
        self._load_incidence = _owner_incidence(self.load_owner, self.participants)
        self._asset_incidence = _owner_incidence(self.asset_owner, self.participants)

    @classmethod
    def create(cls, *, load_index: pd.Index, assets: pd.DataFrame) -> Meters:
        load_owner = participant_of_load(load_index)
        asset_owner = assets["participant_id"].astype(str)
        participants = pd.Index(sorted(set(load_owner) | set(asset_owner)), name="participant_id")
        zeros = np.zeros(len(participants))
        return cls(participants, load_owner, asset_owner, zeros.copy(), zeros.copy())

    def registers(self) -> pd.DataFrame:
        return pd.DataFrame({"e_imp_kwh": self.e_imp_kwh.copy(), "e_exp_kwh": self.e_exp_kwh.copy()},
                            index=self.participants)

    def net_kw_arrays(self, *, load_p_mw: np.ndarray, asset_p_mw: np.ndarray) -> np.ndarray:
        """Each participant's net power at its meter (kW, load convention, ``participants`` order) from native
        load power (``load_owner`` order) and asset power (``asset_owner`` order)."""
        return (self._load_incidence @ load_p_mw + self._asset_incidence @ asset_p_mw) * 1e3

    def net_kw(self, *, load_p_mw: pd.Series, asset_p_mw: pd.Series) -> pd.Series:
        """``net_kw_arrays`` by label (loads by pandapower index, assets by asset_id; missing = 0)."""
        kw = self.net_kw_arrays(load_p_mw=load_p_mw.reindex(self.load_owner.index, fill_value=0.0).to_numpy(float),
                                asset_p_mw=asset_p_mw.reindex(self.asset_owner.index, fill_value=0.0).to_numpy(float))
        return pd.Series(kw, index=self.participants)

    def advance(self, net_kw: np.ndarray, *, hours: float) -> None:
        kw = np.asarray(net_kw, dtype=float)
        self.e_imp_kwh += np.maximum(kw, 0.0) * hours
        self.e_exp_kwh += np.maximum(-kw, 0.0) * hours


class PolicySettlement:
    """Settles one policy's intervals into its own ledger (``<folder>/ledger.sqlite``).

    Baselines need each participant's load history: before the run it comes from ``history_before`` (built
    on first need), during the run from the metered intervals themselves.

    ``deferred``: intervals are drafted as they are stepped and reach the ledger only at :meth:`commit`, one
    transaction per call, so a run can commit its ledger and its run store at the same interval boundary.
    """

    def __init__(self, *, folder: Path, config: SettlementConfig, run_id: str, meters: Meters,
                 history_before: Callable[[], pd.DataFrame], step: pd.Timedelta, deferred: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.settlement = Settlement.for_run(folder, config=config, run_id=run_id)
        self.deferred = deferred
        self._drafted: list[tuple[pd.Timestamp, tuple[EntryDraft, ...]]] = []  # deferred: not yet committed
        self.meters = meters
        self.step = step
        self.hours = step / pd.Timedelta("1h")
        self._history_before = history_before
        self._before: pd.DataFrame | None = None
        self._metered_times: list[pd.Timestamp] = []
        self._metered_kw: list[np.ndarray] = []
        self._verifier: FeederVerifier | None = None

    @property
    def events(self) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
        return [(pd.Timestamp(e.start), pd.Timestamp(e.end)) for e in self.settlement.config.events]

    def in_event(self, time: pd.Timestamp) -> bool:
        """Is ``[time, time + step)`` inside a DR event (where delivery is paid, so it is verified)?"""
        return any(start <= time < end for start, end in self.events)

    def declare_event(self, *, start: pd.Timestamp, end: pd.Timestamp) -> None:
        """An operator-declared DR event joins the contracts' event list from now on."""
        config = self.settlement.config
        event = DrEvent(start=start.to_pydatetime(), end=end.to_pydatetime())
        self.settlement.config = config.model_copy(update={"events": (*config.events, event)})

    def verifier(self, net: pp.pandapowerNet) -> FeederVerifier:
        """The state-estimation check for this twin's feeder, built on first use. Threshold 4 rather than
        the textbook 3: on noisy real meters 3 flags an honest participant in ~1 % of intervals."""
        if self._verifier is None:
            self._verifier = FeederVerifier.from_net(net, threshold=4.0)
        return self._verifier

    def _history(self) -> pd.DataFrame:
        if self._before is None:
            self._before = self._history_before().reindex(columns=self.meters.participants, fill_value=0.0)
        metered = pd.DataFrame(np.vstack(self._metered_kw), index=pd.DatetimeIndex(self._metered_times),
                               columns=self.meters.participants)
        return pd.concat([self._before, metered])

    def settle(self, time: pd.Timestamp, *, load_p_mw: np.ndarray, reported_asset_p_mw: np.ndarray,
               unverified: frozenset[str] = frozenset()) -> IntervalSettlement:
        """Meter and settle ``[time, time + step)``: native load power in ``meters.load_owner`` order and the
        assets' reported power in ``meters.asset_owner`` order (arrays, MW)."""
        start = self.meters.registers()
        net_kw = self.meters.net_kw_arrays(load_p_mw=load_p_mw, asset_p_mw=reported_asset_p_mw)
        self.meters.advance(net_kw, hours=self.hours)
        end = self.meters.registers()
        self._metered_times.append(time)
        self._metered_kw.append(net_kw)
        settle = self.settlement.draft_interval if self.deferred else self.settlement.settle_interval
        result = settle(
            start=time, end=time + self.step, meters=meters_frame(start_registers=start, end_registers=end),
            load_history_kw=self._history() if self.in_event(time) else None, unverified=unverified,
        )
        if self.deferred:
            self._drafted.append((time, result.entries))
        return result

    def commit(self, *, before: pd.Timestamp) -> None:
        """Deferred: append the drafted entries of every interval starting before ``before``, in one
        transaction (already settled ones are no-ops; LedgerConflictError if they differ)."""
        due = [entries for time, entries in self._drafted if time < before]
        self._drafted = [(time, entries) for time, entries in self._drafted if time >= before]
        drafts = [d for entries in due for d in entries]
        if drafts:
            self.settlement.commit(drafts)

    def close(self, *, complete: bool = True) -> None:
        """Close the ledger: signing its closing checkpoint when the run is ``complete``. Drafts not committed
        are dropped (their intervals were not recorded either), and the ledger is then not complete."""
        complete = complete and not self._drafted
        self._drafted = []
        self.settlement.close(complete=complete)


class DeferredLedgers:
    """A run's hand on its policies' deferred settlements (``PolicySettlement(deferred=True)``): the run commits
    them at the interval boundaries where it commits its run store (``twin.run``)."""

    def __init__(self) -> None:
        self.settlements: list[PolicySettlement] = []

    def commit(self, *, before: pd.Timestamp) -> None:
        """Commit every policy's drafted intervals that start before ``before`` (one transaction each)."""
        for settlement in self.settlements:
            settlement.commit(before=before)
