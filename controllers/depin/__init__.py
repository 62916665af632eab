"""The DePIN policy: participant agents and grid nodes coordinating by ADMM along the feeder tree
(``policy.NetworkAdmm``; the arithmetic of each side in ``participants`` and ``grid_nodes``, the message
passing in ``sweeps``)."""

from controllers.depin.policy import NetworkAdmm

__all__ = ["NetworkAdmm"]
