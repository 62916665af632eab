"""Test helper: a controller that records which asset columns the twin hands it (reset and act)."""

from __future__ import annotations

from controllers.api import ControllerSpec, Dispatch, Observation

SEEN: dict[str, list[str]] = {}


class PhaseSpy:
    """Sends nothing; remembers the asset table's columns of its spec and of its last observation."""

    reads_grid = False

    def reset(self, spec: ControllerSpec, *, seed: int) -> None:
        del seed
        SEEN["spec"] = list(spec.assets.columns)

    def act(self, observation: Observation) -> Dispatch:
        SEEN["observation"] = list(observation.assets.columns)
        return Dispatch.empty()
