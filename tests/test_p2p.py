"""Peer-to-peer community prices (closed forms) and one interval of community settlement."""

from decimal import Decimal

import pytest

from twin.settlement.p2p import (
    P2PMethod,
    bill_sharing_prices,
    mid_market_prices,
    sdr_prices,
    settle_community,
    supply_demand_ratio,
)

LB, LS = Decimal("0.30"), Decimal("0.05")  # grid buy λb, feed-in λs
TOL = Decimal("1e-9")


def close(a, b):
    return abs(Decimal(a) - Decimal(b)) < TOL


def test_mid_market_surplus_blends_the_export_price():
    # c = (0.30 + 0.05)/2 = 0.175. PV 150, load 100: 100 kWh trade at c, 50 go to the grid at λs →
    # export price (100·0.175 + 50·0.05)/150 = 20/150 = 0.133333…; import at c.
    prices = mid_market_prices(grid_buy=LB, feed_in=LS, supply_kwh=Decimal(150), demand_kwh=Decimal(100))
    assert close(prices.sell, "0.1333333333333")
    assert prices.buy == Decimal("0.175")


def test_mid_market_deficit_blends_the_import_price():
    # PV 100, load 150: (100·0.175 + 50·0.30)/150 = 32.5/150 = 0.216666…; export at c.
    prices = mid_market_prices(grid_buy=LB, feed_in=LS, supply_kwh=Decimal(100), demand_kwh=Decimal(150))
    assert close(prices.buy, "0.2166666666667")
    assert prices.sell == Decimal("0.175")


def test_sdr_prices_worked_examples():
    # SDR 0.5: P_sell = 0.30·0.05 / (0.25·0.5 + 0.05) = 0.015/0.175 = 0.0857142857…;
    # P_buy = 0.0857142857·0.5 + 0.30·0.5 = 0.1928571428…
    assert supply_demand_ratio(supply_kwh=Decimal(10), demand_kwh=Decimal(20)) == Decimal("0.5")
    prices = sdr_prices(grid_buy=LB, feed_in=LS, supply_kwh=Decimal(10), demand_kwh=Decimal(20))
    assert close(prices.sell, "0.0857142857143")
    assert close(prices.buy, "0.1928571428571")
    # SDR 0: nobody sells, buyers pay the grid price; SDR ≥ 1 (and no demand): both λs.
    zero = sdr_prices(grid_buy=LB, feed_in=LS, supply_kwh=Decimal(0), demand_kwh=Decimal(20))
    assert zero.buy == LB
    for supply, demand in ((20, 20), (30, 20), (5, 0)):
        prices = sdr_prices(grid_buy=LB, feed_in=LS, supply_kwh=Decimal(supply), demand_kwh=Decimal(demand))
        assert prices.buy == prices.sell == LS


def test_bill_sharing_bills_only_the_net_grid_exchange():
    # Demand 20, supply 10: the community imports 10 kWh at 0.30 = 3.00, shared by 20 kWh of demand →
    # 0.15/kWh; sellers get nothing (their energy stayed inside). Surplus 30 vs 20: 10 kWh exported at 0.05
    # = 0.50 shared by 30 kWh of supply → 0.016666…; buyers pay nothing.
    deficit = bill_sharing_prices(grid_buy=LB, feed_in=LS, supply_kwh=Decimal(10), demand_kwh=Decimal(20))
    assert deficit.buy == Decimal("0.15") and deficit.sell == 0
    surplus = bill_sharing_prices(grid_buy=LB, feed_in=LS, supply_kwh=Decimal(30), demand_kwh=Decimal(20))
    assert close(surplus.sell, "0.0166666666667") and surplus.buy == 0


def test_prices_refuse_an_inverted_tariff():
    with pytest.raises(ValueError, match="below feed_in"):
        mid_market_prices(grid_buy=LS, feed_in=LB, supply_kwh=Decimal(1), demand_kwh=Decimal(1))


def test_settle_community_interval_sdr_worked_example():
    # alice exports 10 kWh; bob and carol import 10 kWh each → S = 10, D = 20, SDR 0.5.
    # alice receives 10 × 0.0857142857… = 0.857142857… → 0.857143.
    # The grid sells the 10 kWh shortfall at 0.30 → receives 3.000000.
    # Buyers pay 0.857143 + 3.000000 = 3.857143, split 10:10 → quotas 1.9285715 each; the odd micro-unit
    # goes to the first key on the tie → bob 1.928572, carol 1.928571.
    result = settle_community(
        imports_kwh={"alice": Decimal(0), "bob": Decimal(10), "carol": Decimal(10)},
        exports_kwh={"alice": Decimal(10)}, grid_buy=LB, feed_in=LS, method=P2PMethod.SDR)
    assert result.amounts == {"alice": Decimal("0.857143"), "bob": Decimal("-1.928572"),
                              "carol": Decimal("-1.928571")}
    assert result.grid_amount == Decimal("3.000000")
    assert sum(result.amounts_micro.values()) + result.grid_micro == 0


def test_settle_community_nets_each_member_and_pays_the_grid_for_surplus():
    # Mid-market, surplus: alice imports 2 and exports 14 (net −12), bob imports 8 → S = 12, D = 8.
    # bob pays 8 × 0.175 = 1.400000; the grid buys 4 kWh at 0.05 = 0.20 (grid amount −0.200000);
    # alice receives 1.40 + 0.20 = 1.600000 (= 12 × (8·0.175 + 4·0.05)/12).
    result = settle_community(imports_kwh={"alice": Decimal(2), "bob": Decimal(8)},
                              exports_kwh={"alice": Decimal(14), "bob": Decimal(0)},
                              grid_buy=LB, feed_in=LS, method="mid_market")
    assert result.amounts == {"alice": Decimal("1.6"), "bob": Decimal("-1.4")}
    assert result.grid_amount == Decimal("-0.2")
    assert result.supply_kwh == 12 and result.demand_kwh == 8


@pytest.mark.parametrize("method", list(P2PMethod))
def test_settle_community_always_balances_to_the_micro_unit(method):
    imports = {"a": Decimal("1.234567"), "b": Decimal("0.333333"), "c": Decimal("0"), "d": Decimal("7.000001")}
    exports = {"a": Decimal("0"), "b": Decimal("0"), "c": Decimal("3.141593"), "d": Decimal("0.5")}
    result = settle_community(imports_kwh=imports, exports_kwh=exports, grid_buy=Decimal("0.2917"),
                              feed_in=Decimal("0.0613"), method=method)
    assert sum(result.amounts_micro.values()) + result.grid_micro == 0
    # The grid's side is λb × net import whatever the method: D = 1.234567 + 0.333333 + 6.500001, S = 3.141593.
    assert result.grid_micro == round((Decimal("8.067901") - Decimal("3.141593")) * Decimal("0.2917") * 10**6)
    assert result.amounts_micro["c"] > 0 or method == P2PMethod.BILL_SHARING


def test_bill_sharing_charges_a_net_importer_exactly_zero_in_surplus():
    # alice exports 2.437225 kWh, bob 1.765265, carol imports 2.934600: S = 4.202490, D = 2.934600.
    # Net export 1.267890 kWh × 0.05 = 0.0633945 → the grid pays 0.063394 (half-even), 63394 micro-units.
    # The sellers share exactly that: quotas 63394 × 2.437225 / 4.202490 = 36765.21 and × 1.765265 / 4.202490
    # = 26628.79 → floors 36765 + 26628 = 63393, the leftover unit to the larger remainder (bob) → 26629.
    # carol pays exactly 0. (Through the rounded price, sell × S rounded to 63395, and carol paid 1.)
    result = settle_community(imports_kwh={"carol": Decimal("2.934600")},
                              exports_kwh={"alice": Decimal("2.437225"), "bob": Decimal("1.765265")},
                              grid_buy=LB, feed_in=LS, method=P2PMethod.BILL_SHARING)
    assert result.grid_micro == -63394
    assert dict(result.amounts_micro) == {"alice": 36765, "bob": 26629, "carol": 0}
    assert sum(result.amounts_micro.values()) + result.grid_micro == 0


def test_bill_sharing_never_bills_the_idle_side_over_many_intervals():
    import random

    rng = random.Random(15)
    for _ in range(2000):
        kwh = [Decimal(rng.randint(0, 9_000_000)) / 10**6 for _ in range(4)]
        result = settle_community(imports_kwh={"a": kwh[0], "b": kwh[1]}, exports_kwh={"c": kwh[2], "d": kwh[3]},
                                  grid_buy=Decimal("0.2917"), feed_in=Decimal("0.0613"), method="bill_sharing")
        buyers = result.amounts_micro["a"] + result.amounts_micro["b"]
        sellers = result.amounts_micro["c"] + result.amounts_micro["d"]
        if result.supply_kwh >= result.demand_kwh:
            assert buyers == 0 and sellers == -result.grid_micro
        else:
            assert sellers == 0 and buyers == -result.grid_micro
