"""The keyring file: loading, permission checks, generation, rotation primitives."""

from __future__ import annotations

import stat
from pathlib import Path

import psycopg
import pytest
import yaml

from eslbridge.errors import ConfigError
from eslbridge.keys.keyring import Keyring, add_key, generate_keyring, set_active
from eslbridge.keys.openpgp import DecryptionError


@pytest.fixture
def keyring_path(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "keyring.yaml"
    generate_keyring(path)
    return path


def _secrets(path: Path) -> list[str]:
    return [p.read_text().strip() for p in (path.parent / "keys").iterdir()]


def test_generate_layout_and_modes(keyring_path):
    doc = yaml.safe_load(keyring_path.read_text())
    assert doc == {"active": 1, "keys": {1: {"passphrase_file": "keys/1.key"}},
                   "blind_index_key_file": "keys/blind.key"}
    for p in [keyring_path, keyring_path.parent / "keys/1.key", keyring_path.parent / "keys/blind.key"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert stat.S_IMODE((keyring_path.parent / "keys").stat().st_mode) == 0o700
    secrets = _secrets(keyring_path)
    assert len(set(secrets)) == 2 and all(len(s) == 44 for s in secrets)  # base64 of 32 bytes


def test_generate_refuses_to_overwrite(keyring_path):
    before = keyring_path.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        generate_keyring(keyring_path)
    assert keyring_path.read_bytes() == before


def test_encrypt_decrypt_and_key_ids(keyring_path):
    ring = Keyring.load(keyring_path)
    assert ring.active_id == 1 and ring.key_ids == (1,)
    blob = ring.encrypt("sip:1000@example.com")
    assert ring.decrypt(blob) == ring.decrypt(blob, 1) == "sip:1000@example.com"
    with pytest.raises(ConfigError, match="no key with id 7"):
        ring.decrypt(blob, 7)


def test_passphrase_works_in_pgcrypto(db: psycopg.Connection, keyring_path):
    ring = Keyring.load(keyring_path)
    blob = ring.encrypt("+4930123456")
    got = db.execute("SELECT pgp_sym_decrypt(%s, %s)", (blob, ring.passphrase(ring.active_id))).fetchone()[0]
    assert got == "+4930123456"


def test_rotation_primitives(keyring_path):
    old = Keyring.load(keyring_path)
    blob1 = old.encrypt("+4930123456")
    assert add_key(keyring_path) == 2
    assert Keyring.load(keyring_path).active_id == 1  # a new key is not active until told
    set_active(keyring_path, 2)
    ring = Keyring.load(keyring_path)
    assert ring.active_id == 2 and ring.key_ids == (1, 2)
    blob2 = ring.encrypt("+4930123456")
    assert ring.decrypt(blob1) == ring.decrypt(blob2) == "+4930123456"  # key found without its id
    with pytest.raises(DecryptionError):
        ring.decrypt(blob2, 1)
    with pytest.raises(DecryptionError, match="no key in the keyring"):
        old.decrypt(blob2)
    assert stat.S_IMODE(keyring_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((keyring_path.parent / "keys/2.key").stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="no key with id 9"):
        set_active(keyring_path, 9)
    assert ring.blind_index("number", "+49 30 123456") == old.blind_index("number", "0049-30-123456")


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660])
@pytest.mark.parametrize("which", ["keyring.yaml", "keys/1.key", "keys/blind.key"])
def test_group_or_other_access_is_refused(keyring_path, mode, which):
    path = keyring_path.parent / which
    path.chmod(mode)
    with pytest.raises(ConfigError) as e:
        Keyring.load(keyring_path)
    message = str(e.value)
    assert str(path) in message and f"{mode:04o}" in message and "chmod 600" in message
    for secret in _secrets(keyring_path):
        assert secret not in message


def test_missing_key_file(keyring_path):
    (keyring_path.parent / "keys/1.key").unlink()
    with pytest.raises(ConfigError, match=r"keys/1\.key: No such file or directory"):
        Keyring.load(keyring_path)


def test_missing_keyring(tmp_path):
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: No such file or directory"):
        Keyring.load(tmp_path / "nowhere.yaml")


def _rewrite(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


@pytest.mark.parametrize("text, message", [
    ("- a list\n", "expected a mapping"),
    ("active: 1\nkeys: {1: {passphrase_file: keys/1.key}}\n", "blind_index_key_file: missing required key"),
    ("active: 1\nkeys: {1: {passphrase_file: keys/1.key}}\nblind_index_key_file: keys/blind.key\nextra: 1\n",
     "extra: unknown key"),
    ("active: 2\nkeys: {1: {passphrase_file: keys/1.key}}\nblind_index_key_file: keys/blind.key\n",
     "active key 2 is not in 'keys'"),
    ("active: 1\nkeys: {one: {passphrase_file: keys/1.key}}\nblind_index_key_file: keys/blind.key\n",
     "key id 'one'"),
    ("active: 1\nkeys: {1: keys/1.key}\nblind_index_key_file: keys/blind.key\n", "passphrase_file"),
    ("active: [1\n", "invalid YAML"),
    ("active: 1\nkeys: {1: {passphrase_file: keys/1.key}, 1: {passphrase_file: keys/1.key}}\n"
     "blind_index_key_file: keys/blind.key\n", "duplicate key 1"),
])
def test_malformed_keyring(keyring_path, text, message):
    _rewrite(keyring_path, text)
    with pytest.raises(ConfigError, match=message):
        Keyring.load(keyring_path)


def test_empty_key_file_refused(keyring_path):
    _rewrite(keyring_path.parent / "keys/1.key", "\n")
    with pytest.raises(ConfigError, match="is empty"):
        Keyring.load(keyring_path)


def test_absolute_paths_and_relative_to_keyring(tmp_path, keyring_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths must not depend on the working directory
    blind = keyring_path.parent / "keys/blind.key"
    _rewrite(keyring_path, f"active: 1\nkeys: {{1: {{passphrase_file: keys/1.key}}}}\nblind_index_key_file: {blind}\n")
    assert Keyring.load(keyring_path).active_id == 1


def test_repr_shows_no_secret(keyring_path):
    ring = Keyring.load(keyring_path)
    text = repr(ring) + repr(ring.journal_sealer()) + repr(vars(ring).get("_keys"))
    for secret in _secrets(keyring_path):
        assert secret not in text


def test_journal_sealer_roundtrip_and_binding(keyring_path):
    ring = Keyring.load(keyring_path)
    sealer = ring.journal_sealer()
    sealed = sealer.seal(5, b"personal data")
    assert b"personal data" not in sealed
    assert ring.journal_sealer().open(5, sealed) == b"personal data"  # another process, same keyring
    with pytest.raises(DecryptionError, match="authentication"):
        sealer.open(6, sealed)  # a record moved to another seq
    add_key(keyring_path)
    set_active(keyring_path, 2)
    newer = Keyring.load(keyring_path).journal_sealer()
    assert newer.open(5, sealed) == b"personal data"
    assert newer.seal(1, b"x")[:2] == b"\x00\x02"
