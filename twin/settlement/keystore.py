"""Where the operator's signing key lives, and which public key a verifier trusts (DESIGN.md §8).

The private key never sits beside the data it signs. It lives in a key store outside every run folder:
``$GRIDTWIN_KEY_DIR`` if set, else ``$XDG_CONFIG_HOME/gridtwin/keys``, else ``~/.config/gridtwin/keys``. The
folder is created with mode 0700 and the key (``operator_ed25519.pem``, unencrypted PKCS#8) with mode 0600 on
first use by a writer; a key readable by anyone else is refused. Its public half is also written as
``operator_ed25519.pub`` (PEM), the file an operator publishes.

A verifier trusts, in this order: the public-key file it names (``--public-key FILE``); the file named by
``$GRIDTWIN_TRUSTED_KEY``; the public half of its own key store's key. Never a key found in a run folder or
inside the ledger itself: whoever can write those could also have written the key.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "KEY_DIR_ENV",
    "OPERATOR_KEY_FILENAME",
    "OPERATOR_PUBLIC_FILENAME",
    "SETPOINT_KEY_FILENAME",
    "TRUSTED_KEY_ENV",
    "KeyStoreError",
    "TrustedKey",
    "check_outside",
    "key_dir",
    "load_public_key_file",
    "operator_key",
    "operator_key_path",
    "public_key_hex",
    "public_key_pem",
    "run_public_key",
    "trusted_key",
]

KEY_DIR_ENV = "GRIDTWIN_KEY_DIR"
TRUSTED_KEY_ENV = "GRIDTWIN_TRUSTED_KEY"
OPERATOR_KEY_FILENAME = "operator_ed25519.pem"
OPERATOR_PUBLIC_FILENAME = "operator_ed25519.pub"
#: The live twin signs device setpoints with its own key (one key, one purpose), kept in the same store.
SETPOINT_KEY_FILENAME = "setpoints_ed25519.pem"


class KeyStoreError(ValueError):
    """A key that is missing, unreadable, badly protected or in the wrong place; the message names the path."""


def key_dir() -> Path:
    """The key store folder (it may not exist yet)."""
    configured = os.environ.get(KEY_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME")
    base = Path(config_home).expanduser() if config_home else Path.home() / ".config"
    return base / "gridtwin" / "keys"


def operator_key_path(store: Path | None = None) -> Path:
    return (store if store is not None else key_dir()) / OPERATOR_KEY_FILENAME


def public_key_hex(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Hex of the raw 32-byte public key (the form checkpoints and run metadata carry)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def public_key_pem(public_hex: str) -> bytes:
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _check_private(path: Path) -> None:
    if os.name == "posix" and _mode(path) & 0o077:
        raise KeyStoreError(f"operator key {str(path)!r} is accessible by other users (mode {_mode(path):04o}); "
                            f"run: chmod 600 {path}")


def _prepare_dir(store: Path) -> None:
    if not store.exists():
        store.mkdir(parents=True, mode=0o700)
        os.chmod(store, 0o700)  # mkdir's mode is filtered by the umask
    elif not store.is_dir():
        raise KeyStoreError(f"key store {str(store)!r} is not a folder (set {KEY_DIR_ENV} to a folder)")
    if os.name == "posix" and _mode(store) & 0o022:
        raise KeyStoreError(f"key store {str(store)!r} is writable by other users (mode {_mode(store):04o}); "
                            f"run: chmod 700 {store}")


def _write_new_key(path: Path) -> None:
    """Write a fresh key atomically; if another process won the race, keep its key."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".operator-key-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def operator_key(*, create: bool = False, store: Path | None = None,
                 name: str = OPERATOR_KEY_FILENAME) -> Ed25519PrivateKey:
    """The operator's private key from the key store; with ``create``, a new one on first use. ``name``:
    which of the store's keys (the ledger's by default, :data:`SETPOINT_KEY_FILENAME` for live setpoints)."""
    store = store if store is not None else key_dir()
    path = store / name
    if not path.exists():
        if not create:
            raise KeyStoreError(f"no operator key at {str(path)!r}: the key store is {KEY_DIR_ENV}={str(store)!r}; "
                                "a settling run creates it, or point the variable at the folder that holds it")
        _prepare_dir(store)
        _write_new_key(path)
    _check_private(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise KeyStoreError(f"operator key {str(path)!r}: cannot read ({exc.strerror})") from None
    except (ValueError, TypeError) as exc:
        raise KeyStoreError(f"operator key {str(path)!r}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyStoreError(f"operator key {str(path)!r}: not an Ed25519 private key")
    public = path.with_suffix(".pub")
    if not public.exists():
        _write_public(public, public_key_hex(key))
    return key


def _write_public(path: Path, public_hex: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".operator-pub-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(public_key_pem(public_hex))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def load_public_key_file(path: Path | str) -> str:
    """The hex public key in a file: PEM (``-----BEGIN PUBLIC KEY-----``), 64 hex digits, or base64 of the
    raw 32 bytes. A private-key file is refused: verifiers should never need one."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"public key {str(path)!r}: cannot read ({exc.strerror})") from None
    text = raw.decode("ascii", errors="replace").strip()
    if "PRIVATE KEY" in text:
        raise KeyStoreError(f"public key {str(path)!r} holds a private key: name the public half "
                            f"({OPERATOR_PUBLIC_FILENAME}) instead")
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(raw)
        except (ValueError, TypeError) as exc:
            raise KeyStoreError(f"public key {str(path)!r}: not a PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyStoreError(f"public key {str(path)!r}: not an Ed25519 key")
        return public_key_hex(key)
    if len(text) == 64:
        try:
            return bytes.fromhex(text).hex()
        except ValueError:
            pass
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == 32:
        return decoded.hex()
    raise KeyStoreError(f"public key {str(path)!r}: expected a PEM public key, 64 hex digits or base64 of "
                        f"32 bytes, got {text[:40]!r}")


@dataclass(frozen=True)
class TrustedKey:
    """A public key a verifier trusts, and where the trust came from (for messages)."""

    public_key: str
    source: str


def trusted_key(explicit: Path | str | None = None) -> TrustedKey | None:
    """The key to verify signatures with: ``explicit`` file, then ``$GRIDTWIN_TRUSTED_KEY``, then the public
    half of this machine's key store key; None when there is none."""
    if explicit is not None:
        return TrustedKey(load_public_key_file(explicit), f"--public-key {explicit}")
    configured = os.environ.get(TRUSTED_KEY_ENV)
    if configured:
        return TrustedKey(load_public_key_file(configured), f"{TRUSTED_KEY_ENV}={configured}")
    store = key_dir()
    if (store / OPERATOR_KEY_FILENAME).exists():
        return TrustedKey(public_key_hex(operator_key(store=store)), f"the key store {store}")
    if (store / OPERATOR_PUBLIC_FILENAME).exists():
        return TrustedKey(load_public_key_file(store / OPERATOR_PUBLIC_FILENAME), f"the key store {store}")
    return None


def check_outside(folder: Path, *, store: Path | None = None) -> None:
    """Refuse a key store inside ``folder`` (a run folder): a key next to its data protects nothing."""
    store = (store if store is not None else key_dir()).resolve()
    folder = Path(folder).resolve()
    if store == folder or folder in store.parents:
        raise KeyStoreError(f"key store {str(store)!r} is inside the run folder {str(folder)!r}: keep "
                            f"{KEY_DIR_ENV} outside every run folder")


def run_public_key(run_dir: Path | str) -> str:
    """The public key (hex) a run's ledgers will be signed with, for its metadata: the key store's key,
    created on first use; refused when the key store lies inside ``run_dir``."""
    check_outside(Path(run_dir))
    return public_key_hex(operator_key(create=True))
