"""The result of one AC power flow, as every solver of the grid model reports it.

Values are arrays in the order of the net's tables; the labels (pandapower bus / line / trafo indices) are held
once per grid model (``GridLabels``) and put on the arrays only when someone reads a labelled Series (an
observation, a verification, a test): the engine's own per-step work never builds one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["GridLabels", "PowerFlowResult"]


@dataclass(frozen=True)
class GridLabels:
    """The pandapower indices the arrays of a ``PowerFlowResult`` are ordered by (one object per grid model)."""

    bus: pd.Index
    line: pd.Index
    trafo: pd.Index


@dataclass(frozen=True)
class PowerFlowResult:
    """One solved (or failed) power flow. ``vm`` / ``va`` follow ``labels.bus``, loadings ``labels.line`` and
    ``labels.trafo``; the labelled Series (``vm_pu``, ...) are built on access, as copies."""

    labels: GridLabels
    vm: np.ndarray
    va: np.ndarray
    line_loading: np.ndarray
    trafo_loading: np.ndarray
    #: Feeder-head exchange with the external grid, load convention (positive = import into the feeder).
    p_head_mw: float
    q_head_mvar: float
    losses_mw: float
    converged: bool

    @property
    def vm_pu(self) -> pd.Series:
        return pd.Series(self.vm.copy(), index=self.labels.bus, name="vm_pu")

    @property
    def va_degree(self) -> pd.Series:
        return pd.Series(self.va.copy(), index=self.labels.bus, name="va_degree")

    @property
    def line_loading_percent(self) -> pd.Series:
        return pd.Series(self.line_loading.copy(), index=self.labels.line, name="loading_percent")

    @property
    def trafo_loading_percent(self) -> pd.Series:
        return pd.Series(self.trafo_loading.copy(), index=self.labels.trafo, name="loading_percent")

    @classmethod
    def failed(cls, labels: GridLabels) -> PowerFlowResult:
        """A power flow that did not converge: NaN everywhere."""
        nan = float("nan")
        return cls(labels=labels, vm=np.full(len(labels.bus), nan), va=np.full(len(labels.bus), nan),
                   line_loading=np.full(len(labels.line), nan), trafo_loading=np.full(len(labels.trafo), nan),
                   p_head_mw=nan, q_head_mvar=nan, losses_mw=nan, converged=False)
