"""Contract declarations (TOML, validation errors) and the capacity and penalty rule arithmetic."""

from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

import twin.settlement

from twin.settlement.baselines import BaselineMethod
from twin.settlement.contracts import (
    CapacityPayment,
    ContractError,
    EventKind,
    NonPerformancePenalty,
    SettlementConfig,
)
from twin.settlement.p2p import P2PMethod
from twin.settlement.rules import capacity_payment_micro, non_performance_penalty, penalty_rate_per_mwh

SCENARIO = (Path(twin.settlement.__file__).parent / "example_settlement.toml").read_text(encoding="utf-8")


def write(tmp_path, text):
    path = tmp_path / "scenario.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_scenario_toml_declares_contracts_communities_pools_and_events(tmp_path):
    config = SettlementConfig.from_toml(write(tmp_path, SCENARIO))
    (alice,) = config.contracts
    capacity, performance, penalty = alice.rules
    assert isinstance(capacity, CapacityPayment)
    assert (capacity.name, capacity.version, capacity.committed_kw) == ("capacity", "2", Decimal("60"))
    assert performance.baseline is BaselineMethod.CAISO_10_IN_10
    assert isinstance(penalty, NonPerformancePenalty) and penalty.balancing_ratio == Decimal("0.8")
    assert penalty.expected_hours == 30
    assert config.communities[0].method is P2PMethod.MID_MARKET
    assert config.reward_pools[0].pot == Decimal("4.00")
    assert config.events[0].kind is EventKind.ECONOMIC
    assert config.events[0].start == pd.Timestamp("2024-07-17T16:00Z")
    assert config.participants() == {"alice", "bob", "carol"}


@pytest.mark.parametrize(
    ("old", "new", "field", "value"),
    [
        ('price_per_kwh = "0.50"', "price_per_kwh = 0.50", "contracts[0].rules[1].performance_payment.price_per_kwh",
         "0.5"),
        ('balancing_ratio = "0.8"', 'balancing_ratio = "1.5"', "rules[2].non_performance_penalty.balancing_ratio",
         "1.5"),
        ('baseline = "caiso_10_in_10"\n  price', 'baseline = "nyiso"\n  price', "performance_payment.baseline",
         "nyiso"),
        ('committed_kw = "60"\n  price', 'committed_kw = "-5"\n  price', "capacity_payment.committed_kw", "-5"),
        ("end = 2024-07-17T20:00:00Z", "end = 2024-07-17T15:00:00Z", "events[0]", "15:00"),
        ("start = 2024-07-17T16:00:00Z", "start = 2024-07-17T16:00:00", "events[0].start", "16:00"),
        ('feed_in_per_kwh = "0.05"', 'feed_in_per_kwh = "0.50"', "communities[0]", "0.50"),
        ('kind = "capacity_payment"', 'kind = "capacity_paymnet"', "contracts[0].rules[0]", "capacity_paymnet"),
        ('baseline_tz = "UTC"', 'baseline_tz = "Mars/Olympus"', "baseline_tz", "Mars/Olympus"),
        ('  name = "performance"', '  name = "capacity"', "contracts[0].rules", "capacity"),
        ('pot = "4.00"', 'pot = "4.00"\nsurprise = 1', "reward_pools[0].surprise", "1"),
    ],
)
def test_bad_declarations_name_the_field_and_the_value(tmp_path, old, new, field, value):
    assert old in SCENARIO
    with pytest.raises(ContractError) as excinfo:
        SettlementConfig.from_toml(write(tmp_path, SCENARIO.replace(old, new, 1)))
    message = str(excinfo.value)
    assert field in message and value in message, message


def test_overlapping_events_and_missing_section_are_refused(tmp_path):
    overlap = SCENARIO.replace('kind = "economic"', 'kind = "economic"\n[[settlement.events]]\n'
                               "start = 2024-07-17T19:00:00Z\nend = 2024-07-17T21:00:00Z")
    with pytest.raises(ContractError, match="events overlap"):
        SettlementConfig.from_toml(write(tmp_path, overlap))
    with pytest.raises(ContractError, match=r"no \[settlement\] table"):
        SettlementConfig.from_toml(write(tmp_path, "[other]\nx = 1\n"))
    with pytest.raises(ContractError, match="not valid TOML"):
        SettlementConfig.from_toml(write(tmp_path, "[settlement\n"))


def test_pjm_capacity_performance_penalty_worked_example():
    # Rate = Net CONE × 365 / 30 = 300 × 365 / 30 = 3,650 per MWh. Committed 10 MW × balancing ratio 0.8
    # = 8 MW expected; 5 MW delivered for one 5-minute interval → (8 − 5) × 3650 × 5/60 = 912.50.
    assert penalty_rate_per_mwh(net_cone_per_mw_day=Decimal(300)) == Decimal(3650)
    penalty = non_performance_penalty(committed_mw=Decimal(10), balancing_ratio=Decimal("0.8"),
                                      delivered_mw=Decimal(5), net_cone_per_mw_day=Decimal(300),
                                      duration=pd.Timedelta("5min"))
    assert penalty == Decimal("912.50")
    # Delivering at or above the expected 8 MW costs nothing.
    assert non_performance_penalty(committed_mw=Decimal(10), balancing_ratio=Decimal("0.8"), delivered_mw=Decimal(9),
                                   net_cone_per_mw_day=Decimal(300), duration=pd.Timedelta("5min")) == 0


def test_capacity_payment_prorates_without_rounding_drift():
    # 60 kW × 4.00 per kW-month = 240.00 for July (31 days = 2976 quarter-hours). The interval
    # 17 July 16:00–16:15 is quarter-hour 1600 of the month: round(240·1601/2976) − round(240·1600/2976)
    # = 129.112903 − 129.032258 = 0.080645.
    start = pd.Timestamp("2024-07-17T16:00Z")
    micro = capacity_payment_micro(committed_kw=Decimal(60), price_per_kw_month=Decimal("4.00"), start=start,
                                   end=start + pd.Timedelta("15min"))
    assert micro == 80_645
    # Every quarter-hour of the month sums to exactly 240.000000, although 240/2976 is not a whole micro-unit.
    edges = pd.date_range("2024-07-01", "2024-08-01", freq="15min", tz="UTC")
    total = sum(capacity_payment_micro(committed_kw=Decimal(60), price_per_kw_month=Decimal("4.00"), start=a, end=b)
                for a, b in zip(edges[:-1], edges[1:]))
    assert total == 240_000_000
    # An interval across a month boundary is split at it: one hour at the end of July (31 days) plus one at
    # the start of August (31 days) = 2 × 240/744 = 0.645161 (each half rounded on its own month-to-date).
    across = capacity_payment_micro(committed_kw=Decimal(60), price_per_kw_month=Decimal("4.00"),
                                    start=pd.Timestamp("2024-07-31T23:00Z"), end=pd.Timestamp("2024-08-01T01:00Z"))
    assert across == (240_000_000 - 239_677_419) + 322_581
