"""The engine's entry point: Settlement.settle_interval turns meter registers into balanced ledger entries
under every declared rule, once. One worked interval, checked by hand."""

from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

import twin.settlement

from twin.settlement.contracts import SettlementConfig
from twin.settlement.ledger import Ledger, LedgerConflictError, verify
from twin.settlement.settle import Settlement, meters_frame

SCENARIO = (Path(twin.settlement.__file__).parent / "example_settlement.toml").read_text(encoding="utf-8")

EVENT_START = pd.Timestamp("2024-07-17T16:00Z")
Q = pd.Timedelta("15min")


def history() -> pd.DataFrame:
    """Hourly kW. alice: weekdays 100 kW, weekends 40 kW, event day 130 kW until the event → CAISO B′ = 120
    kW (ratio 1.3 capped to 1.2) and meter-before = 130 kW. bob: 8 kW flat → meter-before = 8 kW."""
    index = pd.date_range("2024-06-01", "2024-07-17T16:00", freq="1h", tz="UTC", inclusive="left")
    alice = [130.0 if ts.date() == EVENT_START.date() else 40.0 if ts.weekday() >= 5 else 100.0 for ts in index]
    return pd.DataFrame({"alice": alice, "bob": 8.0}, index=index)


def meters(*, alice_imp=20.0, bob_exp=1.0, carol_imp=4.0) -> pd.DataFrame:
    start = pd.DataFrame({"e_imp_kwh": [1000.0, 50.0, 300.0], "e_exp_kwh": [10.0, 700.0, 0.0]},
                         index=["alice", "bob", "carol"])
    end = start.copy()
    end.loc["alice", "e_imp_kwh"] += alice_imp
    end.loc["bob", "e_exp_kwh"] += bob_exp
    end.loc["carol", "e_imp_kwh"] += carol_imp
    return meters_frame(start_registers=start, end_registers=end)


@pytest.fixture
def settlement(tmp_path):
    path = tmp_path / "scenario.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    config = SettlementConfig.from_toml(path)
    s = Settlement.for_run(tmp_path / "run", config=config, run_id="run-1")
    yield s
    s.ledger.close()  # closing twice is harmless; tests that close early reopen nothing


def amounts(result):
    return {(e.key.participant, e.key.rule): {p.account: p.amount for p in e.postings} for e in result.entries}


def test_event_interval_worked_example(settlement):
    # Interval 16:00–16:15, inside the event. alice imports 20 kWh (80 kW), bob exports 1 kWh, carol imports 4.
    result = settlement.settle_interval(start=EVENT_START, end=EVENT_START + Q, meters=meters(),
                                        load_history_kw=history())
    got = amounts(result)
    # Capacity: 60 kW × 4.00/kW-month, quarter-hour 1600 of July → 0.080645 (see test_contracts).
    assert got[("alice", "capacity")] == {"operator": Decimal("-0.080645"), "participant:alice": Decimal("0.080645")}
    # CAISO B′ = 120 kW → 30 kWh in 15 min; alice used 20 → 10 kWh delivered × 0.50 = 5.000000.
    assert result.delivered_kwh["alice"]["caiso_10_in_10"] == Decimal(10)
    assert got[("alice", "performance")] == {"operator": Decimal("-5"), "participant:alice": Decimal("5")}
    # Penalty: owed 60 × 0.8 × 0.25 h = 12 kWh, delivered 10 → 2 kWh short × 3650/MWh = 7.300000.
    assert got[("alice", "penalty")] == {"operator": Decimal("7.3"), "participant:alice": Decimal("-7.3")}
    # P2P mid-market, deficit: S = 1 (bob), D = 24 (alice 20, carol 4). bob gets c = 0.175; the grid sells
    # 23 kWh at 0.30 = 6.900000; buyers pay 7.075000 split 20:4 → quotas 5.8958333 and 1.1791667 →
    # floors 5.895833 + 1.179166, the spare micro-unit to carol's larger remainder → 1.179167.
    assert got[("community:street-7", "p2p_mid_market")] == {
        "grid": Decimal("6.9"), "participant:alice": Decimal("-5.895833"), "participant:bob": Decimal("0.175"),
        "participant:carol": Decimal("-1.179167")}
    # Pool: 4.00 per 4-hour event → 0.250000 per quarter-hour, shared by meter-before delivery:
    # alice 130 kW × 0.25 h − 20 = 12.5 kWh, bob 8 × 0.25 − (−1) = 3 kWh → 0.25 × 12.5/15.5 = 0.2016129…
    # and 0.0483870…; floors 201612 + 48387, the spare micro-unit to alice (.903 > .097).
    assert got[("pool:flex", "reward_pool")] == {
        "pool:flex": Decimal("-0.25"), "participant:alice": Decimal("0.201613"), "participant:bob": Decimal("0.048387")}
    assert result.net_amounts()["participant:alice"] == \
        Decimal("0.080645") + 5 - Decimal("7.3") - Decimal("5.895833") + Decimal("0.201613")
    assert result.appended == (1, 2, 3, 4, 5)


def test_resettling_writes_nothing_and_changed_inputs_conflict(settlement):
    kwargs = dict(start=EVENT_START, end=EVENT_START + Q, meters=meters(), load_history_kw=history())
    first = settlement.settle_interval(**kwargs)
    settlement.ledger.close()
    db = settlement.ledger.path
    before = db.read_bytes()
    resumed = Settlement.for_run(db.parent, config=settlement.config, run_id="run-1")  # a fresh process
    again = resumed.settle_interval(**kwargs)
    assert again.already_settled and again.existing == first.appended and again.entries == first.entries
    with pytest.raises(LedgerConflictError, match="different content"):
        resumed.settle_interval(**{**kwargs, "meters": meters(alice_imp=21.0)})
    resumed.ledger.close()
    assert db.read_bytes() == before
    with Ledger.open(db, read_only=True) as ledger:
        assert ledger.size() == 5


def test_non_event_interval_pays_only_capacity_and_p2p(settlement):
    start = pd.Timestamp("2024-07-17T12:00Z")
    result = settlement.settle_interval(start=start, end=start + Q, meters=meters())  # no history needed
    assert {(e.key.participant, e.key.rule) for e in result.entries} == {
        ("alice", "capacity"), ("community:street-7", "p2p_mid_market")}
    assert result.event is None and result.delivered_kwh == {}


def test_unverified_delivery_earns_nothing_and_is_penalised(settlement):
    # The physics check rejected alice: delivery 0 → no performance entry; penalty 12 kWh × 3.65 = 43.80;
    # the whole pool slice goes to bob.
    result = settlement.settle_interval(start=EVENT_START, end=EVENT_START + Q, meters=meters(),
                                        load_history_kw=history(), unverified={"alice"})
    got = amounts(result)
    assert ("alice", "performance") not in got
    assert got[("alice", "penalty")]["participant:alice"] == Decimal("-43.8")
    assert got[("pool:flex", "reward_pool")] == {"pool:flex": Decimal("-0.25"), "participant:bob": Decimal("0.25")}


def test_bad_inputs_are_named(settlement):
    with pytest.raises(ValueError, match=r"participant\(s\) \['carol'\]"):
        settlement.settle_interval(start=EVENT_START, end=EVENT_START + Q, meters=meters().drop(index="carol"),
                                   load_history_kw=history())
    backwards = meters()
    backwards.loc["bob", "e_exp_kwh_end"] = 1.0
    with pytest.raises(ValueError, match=r"meters\['bob'\].e_exp_kwh: register went backwards"):
        settlement.settle_interval(start=EVENT_START, end=EVENT_START + Q, meters=backwards, load_history_kw=history())
    with pytest.raises(ValueError, match="straddles event"):
        settlement.settle_interval(start=EVENT_START - Q / 3, end=EVENT_START + 2 * Q / 3, meters=meters(),
                                   load_history_kw=history())
    with pytest.raises(ValueError, match="load_history_kw: needed for participant 'alice'"):
        settlement.settle_interval(start=EVENT_START, end=EVENT_START + Q, meters=meters())
    assert settlement.ledger.size() == 0



def test_float_registers_on_arrays_give_the_decimal_references_energy_exactly():
    """The array path rounds in floating point; the reference takes every register's shortest repr as a Decimal
    and rounds half-even. Equal on random registers, on exact ties (0.0000005 kWh: half-even), just off ties,
    near zero and on large registers, to the last digit and in representation (the ledger stores str())."""
    import numpy as np

    from twin.settlement.settle import _decimal_energy, _float_energy

    rng = np.random.default_rng(7)
    n = 4000
    start = rng.uniform(0, 50_000, size=(n, 2))
    start[::3] = np.round(start[::3], 3)  # registers as meters report them (Wh) and as the twin's floats give them
    step = rng.choice([0.0, 5e-7, 1.5e-6, 2.5e-6, 1e-7, 4.9999999e-7, 5.0000001e-7], size=(n, 2))
    step = np.where(rng.random((n, 2)) < 0.5, step, rng.exponential(0.4, size=(n, 2)))
    end = start + step
    start[:10], end[:10] = 0.1, 0.1000005  # an exact tie in decimal: rounds to even (0.000000... 0 quanta)
    start[10:20], end[10:20] = 0.1, 0.1000015  # rounds up to 2 quanta (even)
    frame = pd.DataFrame({"e_imp_kwh_start": start[:, 0], "e_imp_kwh_end": end[:, 0],
                          "e_exp_kwh_start": start[:, 1], "e_exp_kwh_end": end[:, 1]},
                         index=[f"p-{i}" for i in range(n)])
    fast = _float_energy(frame)
    slow = _decimal_energy(frame.index, frame.to_numpy())
    assert list(fast) == list(slow)
    assert all(str(fast[p].import_kwh) == str(slow[p].import_kwh) and
               str(fast[p].export_kwh) == str(slow[p].export_kwh) for p in slow)
    assert str(fast["p-0"].import_kwh) == "0.000000" and str(fast["p-10"].import_kwh) == "0.000002"
    bad = frame.copy()
    bad.loc["p-7", "e_imp_kwh_end"] = np.nan
    with pytest.raises(ValueError, match=r"meters\['p-7'\].e_imp_kwh_end=nan is not a finite number"):
        _float_energy(bad)

def test_a_settled_event_verifies_and_balances(settlement):
    hist = history()
    t = EVENT_START
    while t < pd.Timestamp("2024-07-17T20:00Z"):
        settlement.settle_interval(start=t, end=t + Q, meters=meters(), load_history_kw=hist)
        t += Q
    checkpoint = settlement.close()
    assert checkpoint is not None and checkpoint.tree_size == 16 * 5
    report = verify(settlement.ledger.path)
    assert report.ok, report.problems
    # The event's pool slices add up to exactly the 4.00 pot, and every account nets to zero overall.
    assert report.balances["pool:flex"] == Decimal("-4")
    assert sum(report.balances.values()) == 0


def test_settlement_imports_neither_dashboards_nor_pandapower():
    import ast

    package = Path(twin.settlement.__file__).parent
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in {"dashboards", "pandapower"}, f"{module.name} imports {name}"


def test_public_surface_is_curated():
    assert sorted(twin.settlement.__all__) == sorted(set(twin.settlement.__all__))
    for name in twin.settlement.__all__:
        assert hasattr(twin.settlement, name), name
