"""Test-only plug-in for the live transport tests, loaded as "transport_helpers:ChargeBatteriesAndEvs"."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from controllers.api import AssetKind, ControllerSpec, Dispatch, Observation


class ChargeBatteriesAndEvs:
    """Asks every battery and every EV charger for ``p_mw`` in every interval (the twin clips to what an EV
    can take: nothing while no car is plugged in), with ``then_mw`` as the schedule of the following
    intervals (one value each) when given."""

    def __init__(self, *, p_mw: float, then_mw: Sequence[float] = ()) -> None:
        self.p_mw = p_mw
        self.then_mw = [float(v) for v in then_mw]
        self.assets: list[str] = []

    def reset(self, spec: ControllerSpec, *, seed: int) -> None:
        kinds = spec.assets["kind"].astype(str)
        self.assets = list(spec.assets.index[(kinds == AssetKind.BATTERY) | (kinds == AssetKind.EV_CHARGER)])

    def act(self, observation: Observation) -> Dispatch:
        dispatch = Dispatch.from_mapping({a: self.p_mw for a in self.assets})
        if not self.then_mw:
            return dispatch
        later = [observation.time + (k + 1) * observation.step for k in range(len(self.then_mw))]
        schedule = pd.DataFrame(np.tile(self.then_mw, (len(self.assets), 1)), index=self.assets, columns=later)
        return Dispatch(p_mw=dispatch.p_mw, schedule_mw=schedule)
