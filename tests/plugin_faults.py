"""Test-only plug-ins that fail in each way a real one can ("plugin_faults:Class" in a scenario)."""

from __future__ import annotations

from controllers.api import AgentMessage, AgentSpec, ControllerSpec, Dispatch, Observation, Proposal


class FailsIn:
    """Raises ``RuntimeError("boom in <method>")`` in ``method`` (``__init__``, ``reset`` or ``act``), from the
    interval starting at ``after_hour`` on (UTC hour of day) for ``act``."""

    def __init__(self, *, method: str = "act", after_hour: int = 0) -> None:
        if method == "__init__":
            raise RuntimeError("boom in __init__")
        self.method, self.after_hour = method, after_hour

    def reset(self, spec: ControllerSpec, *, seed: int) -> None:
        if self.method == "reset":
            raise RuntimeError("boom in reset")

    def act(self, observation: Observation) -> Dispatch:
        if self.method == "act" and observation.time.hour >= self.after_hour:
            raise RuntimeError("boom in act")
        return Dispatch.empty()


class ReturnsDict:
    """``act`` returns a plain dict of setpoints instead of a Dispatch."""

    def reset(self, spec: ControllerSpec, *, seed: int) -> None:
        del spec, seed

    def act(self, observation: Observation) -> dict[str, float]:  # type: ignore[override]
        return {}


class AgentFailsInPropose:
    """An edge agent whose ``propose`` raises ``ZeroDivisionError`` in round 1."""

    def reset(self, spec: AgentSpec, *, seed: int) -> None:
        self.spec = spec

    def propose(self, observation: Observation, inbox: tuple[AgentMessage, ...], *, round_index: int) -> Proposal:
        if round_index == 1:
            return Proposal(dispatch=Dispatch.empty(share=1 / 0))
        return Proposal(dispatch=Dispatch.empty())


def not_a_class(**kwargs: object) -> Dispatch:
    """A factory function: plug-ins must be classes."""
    return Dispatch.empty()
