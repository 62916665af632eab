"""Test-only plug-in for the live transport tests, loaded as "transport_helpers:ChargeBatteriesAndEvs"."""

from __future__ import annotations

from controllers.api import AssetKind, ControllerSpec, Dispatch, Observation


class ChargeBatteriesAndEvs:
    """Asks every battery and every EV charger for ``p_mw`` in every interval (the twin clips to what an EV
    can take: nothing while no car is plugged in)."""

    def __init__(self, *, p_mw: float) -> None:
        self.p_mw = p_mw
        self.assets: list[str] = []

    def reset(self, spec: ControllerSpec, *, seed: int) -> None:
        kinds = spec.assets["kind"].astype(str)
        self.assets = list(spec.assets.index[(kinds == AssetKind.BATTERY) | (kinds == AssetKind.EV_CHARGER)])

    def act(self, observation: Observation) -> Dispatch:
        return Dispatch.from_mapping({a: self.p_mw for a in self.assets})
