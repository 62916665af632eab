"""The engine: each policy's copy of the twin (``policy_twin``), the lock-step sequencer over all of them
(``lockstep``), and where a DePIN policy's edge agents run (``agent_pool``)."""

from twin.engine.lockstep import iterate_policies
from twin.engine.policy_twin import PolicyTwin, build_comms

__all__ = ["PolicyTwin", "build_comms", "iterate_policies"]
