"""Ed25519 signatures of ledger checkpoints: the hex form of public keys and signature checks.

The operator's private key lives in the key store (:mod:`twin.settlement.keystore`), outside every run
folder; this module only handles public material.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from twin.settlement.keystore import public_key_hex

__all__ = ["public_key_hex", "signature_valid"]


def signature_valid(*, public_key_hex_: str, signature_hex: str, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex_)).verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
