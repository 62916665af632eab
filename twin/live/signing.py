"""Ed25519 signatures of live messages and the registry of device public keys.

A signature covers the topic and the payload's canonical form (sorted-key compact JSON without ``sig``),
so a payload replayed onto another topic, or with any value changed, fails verification. Device keys are
random, made at provisioning (``twin.live.simulator.start_broker``): nothing in a scenario derives them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

__all__ = [
    "KeyRegistry",
    "SignatureCheck",
    "canonical_bytes",
    "new_private_key",
    "private_key_b64",
    "private_key_from_b64",
    "public_key_b64",
    "sign_payload",
    "verify_payload",
]

SIG_FIELD = "sig"
_REGISTRY_FORMAT = "gridtwin-device-keys/1"


class SignatureCheck(StrEnum):
    """Outcome of ``verify_payload``; the non-VALID values double as ingest reject reasons."""

    VALID = "valid"
    UNSIGNED = "unsigned"
    MALFORMED_SIGNATURE = "malformed_signature"
    BAD_SIGNATURE = "bad_signature"


def canonical_bytes(payload: Mapping[str, Any], *, topic: str) -> bytes:
    """The exact bytes a signature covers: the topic, a newline, then sorted-key compact JSON without ``sig``.

    Floats are written by Python's shortest round-trip ``repr``; a device written in another language must
    format numbers the same way (or send integers) for its signatures to verify.
    """
    body = {key: value for key, value in payload.items() if key != SIG_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return topic.encode("utf-8") + b"\n" + text.encode("utf-8")


def sign_payload(payload: Mapping[str, Any], *, topic: str,
                 private_key: Ed25519PrivateKey | Callable[[bytes], bytes]) -> dict[str, Any]:
    """Return a copy of ``payload`` with ``sig`` set for publication on ``topic``. ``private_key``: the key, or
    a signer of it (``twin.live.ed25519_fast.signer_for``: the same signature, faster)."""
    sign = private_key.sign if isinstance(private_key, Ed25519PrivateKey) else private_key
    signature = sign(canonical_bytes(payload, topic=topic))
    signed = {key: value for key, value in payload.items() if key != SIG_FIELD}
    signed[SIG_FIELD] = base64.b64encode(signature).decode("ascii")
    return signed


def verify_payload(payload: Mapping[str, Any], *, topic: str, public_key: Ed25519PublicKey) -> SignatureCheck:
    """Check the ``sig`` of a decoded payload received on ``topic``; never raises for bad input."""
    sig = payload.get(SIG_FIELD)
    if sig is None:
        return SignatureCheck.UNSIGNED
    if not isinstance(sig, str):
        return SignatureCheck.MALFORMED_SIGNATURE
    try:
        signature = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        return SignatureCheck.MALFORMED_SIGNATURE
    if len(signature) != 64:
        return SignatureCheck.MALFORMED_SIGNATURE
    try:
        public_key.verify(signature, canonical_bytes(payload, topic=topic))
    except InvalidSignature:
        return SignatureCheck.BAD_SIGNATURE
    except (TypeError, ValueError):
        # A payload whose values cannot be serialized canonically cannot have been signed by us.
        return SignatureCheck.BAD_SIGNATURE
    return SignatureCheck.VALID


def new_private_key() -> Ed25519PrivateKey:
    """A fresh random device key (from the operating system's CSPRNG)."""
    return Ed25519PrivateKey.generate()


def private_key_b64(key: Ed25519PrivateKey) -> str:
    """Base64 of the raw 32-byte private key, the form provisioning hands to a device."""
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode("ascii")


def private_key_from_b64(encoded: str, *, what: str = "private key") -> Ed25519PrivateKey:
    try:
        raw = base64.b64decode(encoded, validate=True)
        return Ed25519PrivateKey.from_private_bytes(raw)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError(f"{what} is not a base64 32-byte Ed25519 private key") from None


def public_key_b64(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return base64.b64encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


class KeyRegistry:
    """device_id → Ed25519 public key; stored as JSON of base64 raw 32-byte keys."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey] | None = None) -> None:
        self._keys: dict[str, Ed25519PublicKey] = dict(keys or {})

    def add(self, *, device_id: str, public_key: Ed25519PublicKey) -> None:
        self._keys[device_id] = public_key

    def get(self, device_id: str) -> Ed25519PublicKey | None:
        return self._keys.get(device_id)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._keys))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _REGISTRY_FORMAT,
            "devices": {device_id: public_key_b64(self._keys[device_id]) for device_id in sorted(self._keys)},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeyRegistry:
        if not isinstance(data, Mapping) or data.get("format") != _REGISTRY_FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"key registry field 'format' is {found!r}, expected {_REGISTRY_FORMAT!r}")
        devices = data.get("devices")
        if not isinstance(devices, Mapping):
            raise ValueError(f"key registry field 'devices' must be an object, got {type(devices).__name__}")
        keys: dict[str, Ed25519PublicKey] = {}
        for device_id, encoded in devices.items():
            try:
                raw = base64.b64decode(encoded, validate=True)
                keys[device_id] = Ed25519PublicKey.from_public_bytes(raw)
            except (binascii.Error, ValueError, TypeError):
                raise ValueError(
                    f"key registry field 'devices.{device_id}' value {encoded!r} is not a base64 32-byte Ed25519 key"
                ) from None
        return cls(keys)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> KeyRegistry:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"key registry {path} is not JSON: {exc.msg} at line {exc.lineno}") from None
        return cls.from_json(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temp file + rename) so a crash never leaves a half-written registry."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.to_json(), handle, indent=2, sort_keys=True)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
