"""The result of one AC power flow, as every solver of the grid model reports it (labelled by pandapower index)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

__all__ = ["PowerFlowResult"]

@dataclass(frozen=True)
class PowerFlowResult:
    """One solved (or failed) power flow. Series are indexed by pandapower element index."""

    vm_pu: pd.Series
    va_degree: pd.Series
    line_loading_percent: pd.Series
    trafo_loading_percent: pd.Series
    #: Feeder-head exchange with the external grid, load convention (positive = import into the feeder).
    p_head_mw: float
    q_head_mvar: float
    losses_mw: float
    converged: bool
