"""Fast Ed25519 for the per-message paths: libsodium (Debian's ``libsodium23``) where the system has it, else the
``cryptography`` package (OpenSSL). ``verifier_for`` serves the ingest's fast path, ``signer_for`` the simulated
devices (every telemetry message is signed).

Measured on the 2-core reference machine: a check costs 58 µs of CPU with libsodium against 150-200 µs with
OpenSSL — the check is most of what an ingest that verifies every message costs; a signature 18 µs against 32 µs.
libsodium is the stricter verifier (it also refuses small-order and non-canonical points), so whatever it accepts
OpenSSL accepts; a signature it refuses goes back to the ingest's reference path, which decides with
``cryptography``. Ed25519 signatures are deterministic (RFC 8032): both libraries sign a message with a key to the
same 64 bytes (tested).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

__all__ = ["BACKEND", "Signer", "Verifier", "signer_for", "verifier_for"]

#: (signature 64 bytes, message) → valid?
Verifier = Callable[[bytes, bytes], bool]
#: message → signature (64 bytes)
Signer = Callable[[bytes], bytes]


def _load_sodium() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("sodium")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        if lib.sodium_init() < 0:
            return None
        verify = lib.crypto_sign_verify_detached
    except (OSError, AttributeError):
        return None
    verify.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulonglong, ctypes.c_char_p)
    verify.restype = ctypes.c_int
    try:
        sign, seed_keypair = lib.crypto_sign_detached, lib.crypto_sign_seed_keypair
    except AttributeError:
        return None
    sign.argtypes = (ctypes.c_char_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulonglong, ctypes.c_char_p)
    sign.restype = ctypes.c_int
    seed_keypair.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p)
    seed_keypair.restype = ctypes.c_int
    return lib


_SODIUM = _load_sodium()
BACKEND = "libsodium" if _SODIUM is not None else "cryptography"


def verifier_for(public_key: Ed25519PublicKey) -> Verifier:
    """A check of signatures by ``public_key`` (built once per device, used for every message)."""
    if _SODIUM is not None:
        raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        verify = _SODIUM.crypto_sign_verify_detached

        def check_sodium(signature: bytes, message: bytes) -> bool:
            # Lengths are fixed here: libsodium reads exactly 64 signature and 32 key bytes.
            return len(signature) == 64 and verify(signature, message, len(message), raw) == 0

        return check_sodium

    def check_openssl(signature: bytes, message: bytes) -> bool:
        try:
            public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    return check_openssl


def signer_for(private_key: Ed25519PrivateKey) -> Signer:
    """Signatures by ``private_key`` (built once per device, used for every message it sends)."""
    if _SODIUM is not None:
        seed = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        public, secret = ctypes.create_string_buffer(32), ctypes.create_string_buffer(64)
        if _SODIUM.crypto_sign_seed_keypair(public, secret, seed) == 0:
            sign, secret_bytes = _SODIUM.crypto_sign_detached, secret.raw

            def sign_sodium(message: bytes) -> bytes:
                out = ctypes.create_string_buffer(64)  # per call: a device signs acks and telemetry from two threads
                sign(out, None, message, len(message), secret_bytes)
                return out.raw

            return sign_sodium
    return private_key.sign
