"""Test-only plug-in for the EV KPIs ("ev_helpers:NeverChargeEvs")."""

from __future__ import annotations

from controllers.api import AssetKind, ControllerSpec, Dispatch, Observation


class NeverChargeEvs:
    """Holds every EV charger at 0 MW: all charging deferred past the end of the run."""

    def reset(self, spec: ControllerSpec, *, seed: int) -> None:
        self.evs = list(spec.assets.index[spec.assets["kind"].astype(str) == AssetKind.EV_CHARGER])

    def act(self, observation: Observation) -> Dispatch:
        return Dispatch.from_mapping({ev: 0.0 for ev in self.evs})
