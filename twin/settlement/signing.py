"""The operator's Ed25519 key that signs ledger checkpoints: load it, or create it on first use.

DEMO KEY MANAGEMENT: the private key is an unencrypted PKCS#8 PEM file (mode 0600) stored next to the
ledger, as ``operator_ed25519.pem``. Anyone who can read the run folder can forge checkpoints. A production
deployment would keep the key in an HSM or a KMS and publish the public key out of band.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "OPERATOR_KEY_FILENAME",
    "load_or_create_operator_key",
    "load_operator_public_key",
    "public_key_hex",
    "signature_valid",
]

OPERATOR_KEY_FILENAME = "operator_ed25519.pem"


def load_or_create_operator_key(path: Path) -> Ed25519PrivateKey:
    """The key at ``path``; if there is none, a new one written atomically (two racing processes agree)."""
    path = Path(path)
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".operator-key-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            try:
                os.link(tmp, path)  # fails if another process won the race; then we use its key
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def load_operator_public_key(path: Path) -> Ed25519PublicKey:
    """The public half of the key file at ``path`` (for verifying; never creates a key)."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key.public_key()


def public_key_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def signature_valid(*, public_key_hex_: str, signature_hex: str, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex_)).verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        return False
    return True
