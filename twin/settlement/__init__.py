"""Contract-style settlement and the tamper-evident ledger (DESIGN.md §8).

The engine's entry point is :class:`Settlement` (``settle_interval`` once per interval); scenario
declarations are :class:`SettlementConfig`; the ledger file is :class:`Ledger`, checked by :func:`verify`.
This package must not import dashboards or pandapower.
"""

from twin.settlement.baselines import (
    Baseline,
    BaselineError,
    BaselineMethod,
    caiso_10_in_10,
    compute_baseline,
    meter_before_meter_after,
    performance_kwh,
    pjm_high_4_of_5,
)
from twin.settlement.contracts import (
    CapacityPayment,
    Community,
    ContractError,
    DrEvent,
    EventKind,
    NonPerformancePenalty,
    ParticipantContract,
    PerformancePayment,
    RewardPool,
    SettlementConfig,
)
from twin.settlement.ledger import (
    LEDGER_FILENAME,
    AuditReport,
    Checkpoint,
    EntryDraft,
    EntryKey,
    InclusionProof,
    Ledger,
    LedgerConflictError,
    LedgerError,
    LedgerStatus,
    Statement,
    VerifyReport,
    audit,
    verify,
    verify_consistency,
    verify_inclusion,
)
from twin.settlement.money import allocate_largest_remainder, from_micro, money, round_micro, to_micro
from twin.settlement.p2p import CommunitySettlement, P2PMethod, P2PPrices, settle_community
from twin.settlement.settle import IntervalSettlement, Settlement, meters_frame

__all__ = [
    "LEDGER_FILENAME",
    "AuditReport",
    "Baseline",
    "BaselineError",
    "BaselineMethod",
    "CapacityPayment",
    "Checkpoint",
    "Community",
    "CommunitySettlement",
    "ContractError",
    "DrEvent",
    "EntryDraft",
    "EntryKey",
    "EventKind",
    "InclusionProof",
    "IntervalSettlement",
    "Ledger",
    "LedgerConflictError",
    "LedgerError",
    "LedgerStatus",
    "NonPerformancePenalty",
    "P2PMethod",
    "P2PPrices",
    "ParticipantContract",
    "PerformancePayment",
    "RewardPool",
    "Settlement",
    "SettlementConfig",
    "Statement",
    "VerifyReport",
    "allocate_largest_remainder",
    "audit",
    "caiso_10_in_10",
    "compute_baseline",
    "from_micro",
    "meter_before_meter_after",
    "meters_frame",
    "money",
    "performance_kwh",
    "pjm_high_4_of_5",
    "round_micro",
    "settle_community",
    "to_micro",
    "verify",
    "verify_consistency",
    "verify_inclusion",
]
