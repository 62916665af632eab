"""The report stays small: long runs are drawn as aggregates a person cannot tell apart, plotly.js sits beside
the page once, and the full-resolution data is linked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
