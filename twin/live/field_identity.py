"""Credentials of field equipment that speaks a standard protocol, made at provisioning (``gridtwin broker``).

- OCPP 2.0.1 charge points authenticate with HTTP Basic (security profile 1): a random password per charging
  station, handed to the charger; the twin keeps only a salted PBKDF2 hash of it.
- OpenADR 2.0b parties sign their XML messages (XMLDSig, as OpenADR requires): every VEN and the VTN get a
  random EC P-256 key with a self-signed X.509 certificate. A party is known to the other by its certificate
  fingerprint (OpenADR's short SHA-256 form), which is public.

The twin's side of all of it (password hashes, VEN fingerprints) is ``field_auth.json``, written beside the
device key registry; the VTN's own key lives in the operator's key store, never in a run folder.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "FIELD_AUTH_FILENAME",
    "FieldAuth",
    "X509Identity",
    "certificate_fingerprint",
    "hash_secret",
    "load_vtn_identity",
    "new_ocpp_password",
    "verify_secret",
]

FIELD_AUTH_FILENAME = "field_auth.json"
_FORMAT = "gridtwin-field-auth/1"
_PBKDF2_ITERATIONS = 60_000
VTN_KEY_FILENAME = "openadr_vtn.key"
VTN_CERT_FILENAME = "openadr_vtn.pem"


def new_ocpp_password() -> str:
    """A random BasicAuthPassword: 32 characters (OCPP 2.0.1 asks for 16 to 40)."""
    return secrets.token_urlsafe(24)


def hash_secret(password: str, *, salt: bytes | None = None, iterations: int = _PBKDF2_ITERATIONS) -> str:
    """``pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>``: what the twin stores instead of the password."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"pbkdf2-sha256${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_secret(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a ``hash_secret`` string (constant-time; False for a malformed hash)."""
    try:
        scheme, iterations, salt_b64, hash_b64 = encoded.split("$")
        if scheme != "pbkdf2-sha256":
            return False
        salt, expected = base64.b64decode(salt_b64, validate=True), base64.b64decode(hash_b64, validate=True)
        digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, int(iterations))
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(digest, expected)


def certificate_fingerprint(cert_pem: str) -> str:
    """OpenADR's fingerprint of a certificate: the last 10 bytes of its DER SHA-256, as ``AA:BB:...``
    (the same function openleadr uses to check a party)."""
    from openleadr.utils import certificate_fingerprint as _fingerprint

    return str(_fingerprint(cert_pem))


@dataclass(frozen=True, kw_only=True)
class X509Identity:
    """A key and its self-signed certificate, both PEM text."""

    cert_pem: str
    key_pem: str = field(repr=False)

    @classmethod
    def new(cls, common_name: str) -> X509Identity:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
                .sign(key, hashes.SHA256()))
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode("ascii")
        return cls(cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), key_pem=key_pem)

    @classmethod
    def from_json(cls, data: Any, *, what: str) -> X509Identity:
        if not isinstance(data, Mapping) or not isinstance(data.get("cert"), str) or not isinstance(data.get("key"), str):
            raise ValueError(f"{what}: expected an object with 'cert' and 'key' PEM strings")
        try:
            ssl.PEM_cert_to_DER_cert(data["cert"])
        except ValueError:
            raise ValueError(f"{what}.cert: not a PEM certificate") from None
        return cls(cert_pem=data["cert"], key_pem=data["key"])

    def to_json(self) -> dict[str, str]:
        return {"cert": self.cert_pem, "key": self.key_pem}

    @property
    def fingerprint(self) -> str:
        return certificate_fingerprint(self.cert_pem)

    def write(self, folder: Path, name: str) -> tuple[Path, Path]:
        """Write ``<name>.pem`` and ``<name>.key`` (0600) into ``folder`` (libraries want file paths)."""
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
        _write_private(cert_path, self.cert_pem)
        _write_private(key_path, self.key_pem)
        return cert_path, key_path


def _write_private(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_vtn_identity(*, create: bool, store: Path | None = None) -> X509Identity:
    """The VTN's key and certificate from the operator's key store (made on first use with ``create``)."""
    from twin.settlement import keystore

    folder = store if store is not None else keystore.key_dir()
    key_path, cert_path = folder / VTN_KEY_FILENAME, folder / VTN_CERT_FILENAME
    if not key_path.exists() or not cert_path.exists():
        if not create:
            raise keystore.KeyStoreError(f"no OpenADR VTN key at {str(key_path)!r}: `gridtwin broker` makes it")
        keystore.operator_key(create=True, store=folder, name=keystore.SETPOINT_KEY_FILENAME)  # prepares the folder
        identity = X509Identity.new("gridtwin-vtn")
        _write_private(key_path, identity.key_pem)
        _write_private(cert_path, identity.cert_pem)
    if os.name == "posix" and key_path.stat().st_mode & 0o077:
        raise keystore.KeyStoreError(f"VTN key {str(key_path)!r} is accessible by other users; run: chmod 600 {key_path}")
    return X509Identity(cert_pem=cert_path.read_text(encoding="ascii"), key_pem=key_path.read_text(encoding="ascii"))


@dataclass(frozen=True, kw_only=True)
class FieldAuth:
    """What the twin needs to authenticate standard-protocol equipment: nothing that lets anyone sign in.

    ``ocpp``: charging station id → password hash; ``openadr``: VEN id → certificate fingerprint.
    """

    ocpp: Mapping[str, str] = field(default_factory=dict)
    openadr: Mapping[str, str] = field(default_factory=dict)

    def check_ocpp(self, station_id: str, password: str) -> bool:
        encoded = self.ocpp.get(station_id)
        return encoded is not None and verify_secret(password, encoded)

    def to_json(self) -> dict[str, Any]:
        return {"format": _FORMAT, "ocpp": dict(sorted(self.ocpp.items())),
                "openadr": dict(sorted(self.openadr.items()))}

    @classmethod
    def from_json(cls, data: Any) -> FieldAuth:
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"field auth field 'format' is {found!r}, expected {_FORMAT!r}")
        out: dict[str, dict[str, str]] = {}
        for section in ("ocpp", "openadr"):
            entries = data.get(section, {})
            if not isinstance(entries, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                           for k, v in entries.items()):
                raise ValueError(f"field auth field {section!r} must map ids to strings")
            out[section] = dict(entries)
        return cls(ocpp=out["ocpp"], openadr=out["openadr"])

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> FieldAuth:
        path = Path(path)
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise ValueError(f"field auth file {path} is not JSON: {exc.msg} at line {exc.lineno}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, json.dumps(self.to_json(), indent=2) + "\n")
