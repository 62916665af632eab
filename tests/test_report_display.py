"""The report stays small: long runs are drawn as aggregates a person cannot tell apart, plotly.js sits beside
the page once, and the full-resolution data is linked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pandas as pd

from conftest import make_scenario
from twin.reporting.report import for_display, write_report
from twin.run import run_scenario


def test_display_aggregates_by_extremes_means_and_sums() -> None:
    index = pd.date_range("2016-06-06", periods=5, freq="15min", tz="UTC")
    summary = pd.DataFrame({"vm_max_pu": [1.01, 1.04, 1.02, 1.00, 1.03], "vm_min_pu": [0.99, 0.97, 0.98, 1.0, 0.96],
                            "p_head_mw": [1.0, 2.0, 3.0, 4.0, 5.0], "cost_eur": [1.0, 1.0, 1.0, 2.0, 2.0]}, index=index)
    shown, k = for_display(summary, points=2)  # 5 intervals in buckets of 3: [0, 1, 2], [3, 4]
    assert k == 3
    assert list(shown.index) == [index[0], index[3]]
    np.testing.assert_allclose(shown["vm_max_pu"], [1.04, 1.03])
    np.testing.assert_allclose(shown["vm_min_pu"], [0.97, 0.96])
    np.testing.assert_allclose(shown["p_head_mw"], [2.0, 4.5])
    np.testing.assert_allclose(shown["cost_eur"], [3.0, 4.0])  # money sums: the cumulative cost is unchanged
    same, one = for_display(summary, points=5)
    assert one == 1 and same is summary


def test_report_keeps_plotly_beside_it_and_links_the_full_data(tmp_path: Path, rural_day) -> None:
    _, inputs = rural_day
    s = make_scenario(end="2016-06-06T02:00:00Z")
    run_scenario(s, out=tmp_path / "run", inputs=inputs)
    page = write_report(tmp_path / "run")
    text = page.read_text(encoding="utf-8")
    assert (tmp_path / "run" / "plotly.min.js").stat().st_size > 1_000_000
    assert page.stat().st_size < 500_000 and '<script src="plotly.min.js"' in text
    for policy in ("none", "shaver"):
        csv = pd.read_csv(tmp_path / "run" / "report-data" / f"{policy}-summary.csv", index_col=0)
        assert len(csv) == 8 and f'href="report-data/{policy}-summary.csv"' in text


#: A week with four policies, settled, with one control-centre outage: what `gridtwin demo` draws.
WEEK_SETTLED = {
    "start": "2016-06-06T00:00:00Z", "end": "2016-06-13T00:00:00Z", "power_flow": {"engine": "fast"},
    "controllers": [
        {"name": "none", "target": "controllers.baseline:NoControl"},
        {"name": "shaver", "target": "controllers.baseline:PeakShaver"},
        {"name": "shaver-60", "target": "controllers.baseline:PeakShaver", "kwargs": {"shave_fraction": 0.6}},
        # At the control centre: the outage cuts it off (the others run on the premises).
        {"name": "central", "mode": "central", "target": "controllers.baseline:PeakShaver"},
    ],
    "faults": [{"kind": "control_centre_outage", "start": "2016-06-10T16:00:00Z", "end": "2016-06-10T22:00:00Z"}],
    "settlement": {
        "events": [{"start": "2016-06-10T17:00:00Z", "end": "2016-06-10T19:00:00Z"}],
        "contracts": [{"participant": "p-1", "rules": [
            {"kind": "capacity_payment", "name": "capacity", "committed_kw": "5", "price_per_kw_month": "4.00"},
            {"kind": "performance_payment", "name": "performance", "baseline": "meter_before_meter_after",
             "price_per_kwh": "0.50"}]}],
        "communities": [{"name": "village", "method": "mid_market", "members": [f"p-{i}" for i in range(13)],
                         "grid_buy_per_kwh": "0.30", "feed_in_per_kwh": "0.06"}],
    },
}


def test_a_settled_week_of_four_policies_fits_in_two_megabytes(tmp_path: Path) -> None:
    """A week at 15 minutes (672 intervals) with four policies is drawn at full resolution and the page stays
    under 2 MB; the earnings table agrees with each ledger's own statement, the outage table counts the 24
    intervals the central policy was cut off for, and every series is a click away."""
    from twin.settlement import Ledger

    s = make_scenario(**WEEK_SETTLED)
    run = tmp_path / "run"
    run_scenario(s, out=run)
    page = write_report(run)
    text = page.read_text(encoding="utf-8")
    assert page.stat().st_size <= 2_000_000, page.stat().st_size
    assert "aggregates of" not in text  # a week is shown interval by interval
    policies = [c["name"] for c in WEEK_SETTLED["controllers"]]
    for policy in policies:
        csv = pd.read_csv(run / "report-data" / f"{policy}-summary.csv", index_col=0)
        assert len(csv) == 672 and f'href="report-data/{policy}-summary.csv"' in text
    # What each participant earns, per policy: the same as the ledger's statement for that participant.
    earnings = pd.read_csv(run / "report-data" / "earnings.csv")
    assert 'href="report-data/earnings.csv"' in text and "Settlement: what each participant earns" in text
    for policy in policies:
        with Ledger.open(run / policy / "ledger.sqlite", read_only=True) as ledger:
            for pid in ("p-1", "p-7"):
                mine = earnings[(earnings["policy"] == policy) & (earnings["participant"] == pid)]["eur"].sum()
                assert mine == pytest.approx(float(ledger.statement(pid).total), abs=1e-6)
                assert f"<td>{mine:,.2f}</td>" in text
    capacity = earnings[(earnings["participant"] == "p-1") & (earnings["rule"] == "capacity")]["eur"]
    # 5 kW × 4 EUR per kW-month for 7 of June's 30 days, under every policy alike.
    assert list(capacity) == pytest.approx([5 * 4.0 * 7 / 30] * 4, abs=2e-6)  # micro-unit rounding
    # The outage: 24 intervals (6 h at 15 min) without a controller for the central policy, none for the others.
    assert "Faults: how each policy rode through them" in text
    assert "<tr><th>central</th><td>24 of 24</td>" in text
    assert "<tr><th>shaver</th><td>0 of 24</td>" in text
