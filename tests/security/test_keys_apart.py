"""Point 1: keys apart from the data. The operator key lives in a key store outside run folders (0600 in a
0700 folder, created on first use, a clear error when missing); the public key is in the run's metadata and
the ledger; ``verify`` checks against a key the user names and refuses without one unless ``--unsigned``;
device keys are random at provisioning and nothing derives them from a scenario."""

from __future__ import annotations

import json
import shutil
import sqlite3
import stat
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

import twin.live.signing
from twin.settlement import keystore
from twin.settlement.cli import ledger_app
from twin.settlement.ledger import EntryDraft, EntryKey, Ledger, LedgerError, verify

T0 = pd.Timestamp("2024-07-01T00:00Z")
Q = pd.Timedelta("15min")
runner = CliRunner(env={"COLUMNS": "300"})


def _draft(i: int, amount: int = 1_000_000) -> EntryDraft:
    return EntryDraft.create(
        key=EntryKey(run_id="r", interval_start=T0 + i * Q, participant="alice", rule="capacity", rule_version="1"),
        interval_end=T0 + (i + 1) * Q, postings={"operator": -amount, "participant:alice": amount})


def _ledger(folder: Path, n: int = 4) -> Path:
    with Ledger.open_run(folder) as ledger:
        for i in range(n):
            ledger.append(_draft(i))
        ledger.checkpoint(closing=True)
    return folder / "ledger.sqlite"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh key store of this test only (the session's store stays untouched)."""
    path = tmp_path / "keys"
    monkeypatch.setenv(keystore.KEY_DIR_ENV, str(path))
    monkeypatch.delenv(keystore.TRUSTED_KEY_ENV, raising=False)
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_operator_key_is_made_in_the_key_store_private_and_never_in_the_run_folder(store: Path,
                                                                                      tmp_path: Path) -> None:
    run = tmp_path / "run" / "policy"
    _ledger(run)
    key_file = store / keystore.OPERATOR_KEY_FILENAME
    assert key_file.is_file() and _mode(key_file) == 0o600 and _mode(store) == 0o700
    # Nothing secret next to the data: no key file, and no file holding a private key, anywhere in the run.
    for path in (tmp_path / "run").rglob("*"):
        assert path.suffix != ".pem"
        if path.is_file():
            assert b"PRIVATE KEY" not in path.read_bytes(), path
    # The public half is recorded in the ledger (and published beside the key in the store).
    public = keystore.public_key_hex(keystore.operator_key())
    with Ledger.open(run / "ledger.sqlite", read_only=True) as ledger:
        assert ledger.public_key() == public
    assert keystore.load_public_key_file(store / keystore.OPERATOR_PUBLIC_FILENAME) == public


def test_a_key_store_inside_a_run_folder_or_readable_by_others_is_refused(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    monkeypatch.setenv(keystore.KEY_DIR_ENV, str(run / "keys"))
    with pytest.raises(keystore.KeyStoreError, match="is inside the run folder"):
        Ledger.open_run(run)
    loose = tmp_path / "loose"
    monkeypatch.setenv(keystore.KEY_DIR_ENV, str(loose))
    keystore.operator_key(create=True)
    (loose / keystore.OPERATOR_KEY_FILENAME).chmod(0o644)
    with pytest.raises(keystore.KeyStoreError, match=r"accessible by other users \(mode 0644\)"):
        keystore.operator_key()


def test_a_missing_key_is_a_clear_error_where_it_must_exist(store: Path) -> None:
    with pytest.raises(keystore.KeyStoreError, match=f"no operator key at .*{keystore.KEY_DIR_ENV}="):
        keystore.operator_key(create=False)
    result = runner.invoke(ledger_app, ["public-key"])
    assert result.exit_code == 2 and "no operator key at" in result.output


def test_meta_json_publishes_the_public_key_of_a_settling_run(rural_day, tmp_path: Path) -> None:
    from twin.run import run_scenario

    scenario, inputs = rural_day
    short = scenario.model_copy(update={
        "end": scenario.start + 2 * scenario.step,
        "settlement": {"contracts": [{"participant": "p-1", "rules": [
            {"kind": "capacity_payment", "committed_kw": "5", "price_per_kw_month": "3"}]}]},
    })
    try:
        run_scenario(short, out=tmp_path / "run", inputs=inputs)
    except Exception:  # noqa: BLE001 — meta.json is written before the first interval; the engine is not at issue
        pass
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["operator_public_key"] == keystore.public_key_hex(keystore.operator_key())
    assert not list((tmp_path / "run").rglob("*.pem"))


def test_verify_trusts_only_a_key_the_user_names(store: Path, tmp_path: Path) -> None:
    path = _ledger(tmp_path / "run")
    public_file = store / keystore.OPERATOR_PUBLIC_FILENAME
    published = tmp_path / "operator.pub"
    shutil.copy(public_file, published)
    # The verifier's own machine has no key store: without a named key, verification refuses (exit 2).
    shutil.rmtree(store)
    result = runner.invoke(ledger_app, ["verify", str(path)])
    assert result.exit_code == 2 and "no trusted operator key" in result.output and "--unsigned" in result.output
    with pytest.raises(LedgerError, match="no trusted operator key"):
        verify(path)
    ok = runner.invoke(ledger_app, ["verify", str(path), "--public-key", str(published)])
    assert ok.exit_code == 0, ok.output
    assert f"--public-key {published}" in ok.stdout
    unsigned = runner.invoke(ledger_app, ["verify", str(path), "--unsigned"])
    assert unsigned.exit_code == 0 and "signatures NOT checked" in unsigned.stdout
    hex_file = tmp_path / "operator.hex"  # the hex form from meta.json works as a key file too
    hex_file.write_text(keystore.load_public_key_file(published) + "\n")
    assert runner.invoke(ledger_app, ["verify", str(path), "--public-key", str(hex_file)]).exit_code == 0


def test_an_attacker_who_rewrites_and_re_signs_with_a_planted_key_fails(store: Path, tmp_path: Path) -> None:
    """The review's attack: rewrite an entry, re-chain, re-sign with a key of one's own left beside the ledger."""
    path = _ledger(tmp_path / "run")
    published = tmp_path / "operator.pub"
    shutil.copy(store / keystore.OPERATOR_PUBLIC_FILENAME, published)
    forger = Ed25519PrivateKey.generate()
    (path.parent / "operator_ed25519.pem").write_bytes(forger.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    forged = tmp_path / "forged.sqlite"
    with closing(sqlite3.connect(path)) as conn:
        bodies = [json.loads(b) for (b,) in conn.execute("SELECT body FROM entries ORDER BY seq")]
    with Ledger.open(forged, signer=forger) as ledger:
        for i, body in enumerate(bodies):
            ledger.append(_draft(i, amount=9_000_000 if i == 1 else -body["postings"][0][1]))
        ledger.checkpoint(closing=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copy(forged, path)
    result = runner.invoke(ledger_app, ["verify", str(path), "--public-key", str(published)])
    assert result.exit_code == 1
    assert "not by the trusted operator key" in result.stderr
    # Left to trust whatever key the file names, the forgery would pass: that is what --unsigned says.
    assert runner.invoke(ledger_app, ["verify", str(path), "--unsigned"]).exit_code == 0


def test_device_keys_are_random_at_provisioning_and_the_simulator_uses_them(rural_day, tmp_path: Path) -> None:
    from twin.live.simulator import FieldSimulator, LiveCredentials, start_broker

    scenario, inputs = rural_day
    assert not hasattr(twin.live.signing, "derive_private_key")  # no way left to derive a key from a seed
    first = start_broker(scenario, out=tmp_path / "a", inputs=inputs)
    first.broker.stop()
    second = start_broker(scenario, out=tmp_path / "b", inputs=inputs)  # same scenario, same seed
    second.broker.stop()
    keys_a = json.loads(first.keys_path.read_text())["devices"]
    keys_b = json.loads(second.keys_path.read_text())["devices"]
    assert keys_a.keys() == keys_b.keys() and len(keys_a) > 10
    assert all(keys_a[d] != keys_b[d] for d in keys_a)  # nothing in the scenario determines them
    assert _mode(first.credentials_path) == 0o600
    creds = LiveCredentials.from_file(first.credentials_path)
    # The registry the twin gets holds exactly the public halves of the keys the devices were given.
    assert creds.public_keys().to_json()["devices"] == keys_a
    assert b"PRIVATE" not in first.keys_path.read_bytes() and set(creds.device_signing_keys) == set(keys_a)
    # The simulator signs with the provisioned keys; without them it refuses to start.
    stripped = LiveCredentials(host=creds.host, port=creds.port, twin=creds.twin,
                               device_passwords=creds.device_passwords, operator_public_key=creds.operator_public_key)
    with pytest.raises(ValueError, match="has no provisioned signing key"):
        FieldSimulator(scenario=scenario, inputs=inputs, credentials=stripped)
    # The setpoint key the twin signs commands with lives in the key store, not in the provisioning folder.
    assert first.operator_key_path.parent == keystore.key_dir()
    assert not list((tmp_path / "a").glob("*.pem"))
