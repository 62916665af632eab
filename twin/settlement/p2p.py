"""Peer-to-peer community settlement: closed-form internal prices (mid-market rate, supply–demand ratio,
bill sharing) and the settlement of one interval of a community into balanced micro-unit amounts.

Prices are per kWh in the grid's currency; λb is the grid's retail (buy) price, λs its feed-in price,
λb ≥ λs ≥ 0. "Supply" is the community members' total net export and "demand" their total net import
in the interval (REFERENCES.md, peer-to-peer community prices).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType

from twin.settlement.money import allocate_largest_remainder, from_micro, money, to_micro

__all__ = [
    "CommunitySettlement",
    "P2PMethod",
    "P2PPrices",
    "bill_sharing_prices",
    "community_prices",
    "mid_market_prices",
    "sdr_prices",
    "settle_community",
    "supply_demand_ratio",
]

_ZERO = Decimal(0)


class P2PMethod(StrEnum):
    MID_MARKET = "mid_market"
    SDR = "sdr"
    BILL_SHARING = "bill_sharing"


@dataclass(frozen=True)
class P2PPrices:
    """What a net importer pays (``buy``) and a net exporter receives (``sell``) per kWh."""

    buy: Decimal
    sell: Decimal


def _check(grid_buy: Decimal, feed_in: Decimal, supply_kwh: Decimal, demand_kwh: Decimal) -> None:
    for name, value in (("grid_buy", grid_buy), ("feed_in", feed_in), ("supply_kwh", supply_kwh),
                        ("demand_kwh", demand_kwh)):
        if not isinstance(value, (Decimal, int)) or isinstance(value, bool):
            raise TypeError(f"{name}={value!r}: expected a Decimal")
        if value < 0:
            raise ValueError(f"{name}={value!r}: must be >= 0")
    if grid_buy < feed_in:
        raise ValueError(f"grid_buy={grid_buy} is below feed_in={feed_in}: no community can beat the grid")


def mid_market_prices(*, grid_buy: Decimal, feed_in: Decimal, supply_kwh: Decimal, demand_kwh: Decimal) -> P2PPrices:
    """Internal trades at c = (λb + λs)/2. In surplus the excess is sold at λs and blended into the export
    price (D·c + (S − D)·λs)/S; in deficit the shortfall is bought at λb and blended into the import price."""
    _check(grid_buy, feed_in, supply_kwh, demand_kwh)
    mid = (grid_buy + feed_in) / 2
    if supply_kwh > demand_kwh:
        return P2PPrices(buy=mid, sell=(demand_kwh * mid + (supply_kwh - demand_kwh) * feed_in) / supply_kwh)
    if supply_kwh < demand_kwh:
        return P2PPrices(buy=(supply_kwh * mid + (demand_kwh - supply_kwh) * grid_buy) / demand_kwh, sell=mid)
    return P2PPrices(buy=mid, sell=mid)


def supply_demand_ratio(*, supply_kwh: Decimal, demand_kwh: Decimal) -> Decimal | None:
    """SDR = supply / demand; None when there is no demand (an infinite ratio)."""
    return None if demand_kwh == 0 else supply_kwh / demand_kwh


def sdr_prices(*, grid_buy: Decimal, feed_in: Decimal, supply_kwh: Decimal, demand_kwh: Decimal) -> P2PPrices:
    """For 0 ≤ SDR < 1: P_sell = λb·λs / ((λb − λs)·SDR + λs), P_buy = P_sell·SDR + λb·(1 − SDR);
    for SDR ≥ 1 both are λs (the community is long and its marginal kWh goes to the grid)."""
    _check(grid_buy, feed_in, supply_kwh, demand_kwh)
    sdr = supply_demand_ratio(supply_kwh=supply_kwh, demand_kwh=demand_kwh)
    if sdr is None or sdr >= 1:
        return P2PPrices(buy=feed_in, sell=feed_in)
    denominator = (grid_buy - feed_in) * sdr + feed_in
    # λs = 0 with no supply is 0/0; with nothing to sell the sell price is moot, so take λs.
    sell = grid_buy * feed_in / denominator if denominator else feed_in
    return P2PPrices(buy=sell * sdr + grid_buy * (1 - sdr), sell=sell)


def bill_sharing_prices(*, grid_buy: Decimal, feed_in: Decimal, supply_kwh: Decimal, demand_kwh: Decimal) -> P2PPrices:
    """Trades inside the community are free; only the net grid exchange is billed, pro rata:
    buy = λb × net import / demand, sell = λs × net export / supply."""
    _check(grid_buy, feed_in, supply_kwh, demand_kwh)
    net_import = max(_ZERO, demand_kwh - supply_kwh)
    net_export = max(_ZERO, supply_kwh - demand_kwh)
    return P2PPrices(
        buy=grid_buy * net_import / demand_kwh if demand_kwh else _ZERO,
        sell=feed_in * net_export / supply_kwh if supply_kwh else _ZERO,
    )


_PRICERS = {
    P2PMethod.MID_MARKET: mid_market_prices,
    P2PMethod.SDR: sdr_prices,
    P2PMethod.BILL_SHARING: bill_sharing_prices,
}


def community_prices(method: P2PMethod | str, *, grid_buy: Decimal, feed_in: Decimal, supply_kwh: Decimal,
                     demand_kwh: Decimal) -> P2PPrices:
    return _PRICERS[P2PMethod(method)](grid_buy=grid_buy, feed_in=feed_in, supply_kwh=supply_kwh,
                                       demand_kwh=demand_kwh)


@dataclass(frozen=True)
class CommunitySettlement:
    """One interval of a community. ``amounts_micro``: per participant, positive = receives; ``grid_micro``:
    what the grid (the retailer) receives (negative when it pays for net export). They sum to zero."""

    method: P2PMethod
    prices: P2PPrices
    supply_kwh: Decimal
    demand_kwh: Decimal
    amounts_micro: Mapping[str, int]
    grid_micro: int

    @property
    def amounts(self) -> dict[str, Decimal]:
        return {who: from_micro(m) for who, m in self.amounts_micro.items()}

    @property
    def grid_amount(self) -> Decimal:
        return from_micro(self.grid_micro)


def settle_community(
    *,
    imports_kwh: Mapping[str, Decimal],
    exports_kwh: Mapping[str, Decimal],
    grid_buy: Decimal,
    feed_in: Decimal,
    method: P2PMethod | str = P2PMethod.MID_MARKET,
) -> CommunitySettlement:
    """Settle one interval: each member is netted (import − export) in the interval, net importers pay
    ``buy`` per kWh and net exporters receive ``sell``.

    Rounding: the grid's amount is rounded to micro-units, the sellers' total once, and the buyers' total is
    their sum, so the entry balances exactly; each side is split by largest remainder over the members' kWh.
    Whatever the price method, the grid's amount is λb × net community import, or −λs × net export. Under
    bill sharing the side that exchanges nothing with the grid gets exactly 0 (sellers in a deficit
    interval, buyers in a surplus one).
    """
    grid_buy, feed_in = money(grid_buy), money(feed_in)
    members = sorted(set(imports_kwh) | set(exports_kwh))
    net = {m: Decimal(imports_kwh.get(m, _ZERO)) - Decimal(exports_kwh.get(m, _ZERO)) for m in members}
    demand = {m: v for m, v in net.items() if v > 0}
    supply = {m: -v for m, v in net.items() if v < 0}
    total_demand, total_supply = sum(demand.values(), _ZERO), sum(supply.values(), _ZERO)
    method = P2PMethod(method)
    prices = community_prices(method, grid_buy=grid_buy, feed_in=feed_in, supply_kwh=total_supply,
                              demand_kwh=total_demand)
    grid_exact = grid_buy * (total_demand - total_supply) if total_demand >= total_supply \
        else -feed_in * (total_supply - total_demand)
    grid_micro = to_micro(grid_exact)
    if method is P2PMethod.BILL_SHARING:
        # Only the grid exchange is billed: in surplus the sellers share exactly what the grid pays and the
        # buyers pay exactly 0; in deficit the buyers share exactly what the grid is owed. (Going through the
        # rounded pro-rata price could leave ±1 micro-unit with the other side.)
        sellers_micro = max(0, -grid_micro)
    else:
        sellers_micro = to_micro(prices.sell * total_supply)
    buyers_micro = sellers_micro + grid_micro
    amounts = {m: 0 for m in members}
    if supply:
        amounts.update(allocate_largest_remainder(sellers_micro, supply))
    if demand:
        amounts.update({m: -v for m, v in allocate_largest_remainder(buyers_micro, demand).items()})
    elif buyers_micro:  # no buyers: sellers' receipts are exactly what the grid pays (λs·S) up to rounding
        grid_micro = -sellers_micro
    return CommunitySettlement(method=method, prices=prices, supply_kwh=total_supply, demand_kwh=total_demand,
                               amounts_micro=MappingProxyType(amounts), grid_micro=grid_micro)
