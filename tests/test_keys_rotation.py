"""keys generate|rotate|status|retire on the real PostgreSQL, including a rotation killed half-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from eslbridge.errors import EslBridgeError
from eslbridge.keys.keyring import Keyring
from eslbridge.keys.openpgp import DecryptionError
from eslbridge.privacy import rotation
from tests.gdpr_fixtures import REALM, Admin, add_user, admin_fixture, call, write  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def populate(conn: psycopg.Connection, keyring: Keyring, n: int, first: int = 0) -> None:
    user = add_user(conn, f"u{first}")
    write(conn, keyring, *(call(first + i, f"sip:+49301{first + i:05d}@{REALM}", f"sip:+49402{first + i:05d}@x.example",
                                user_id=user) for i in range(n)))


def plaintexts(conn: psycopg.Connection, keyring: Keyring) -> dict:
    """Every encrypted value, decrypted with the key its row names (and only that key)."""
    out = {}
    for spec in rotation.ENCRYPTED_TABLES:
        cols = [c.name for c in spec.columns if c.personal]
        for row in conn.execute(f"SELECT call_uuid, enc_key_id, {', '.join(cols)} FROM {spec.name}"):
            for name, blob in zip(cols, row[2:], strict=True):
                out[(spec.name, row[0], name)] = None if blob is None else keyring.decrypt(blob, row[1])
    return out


def test_generate_refuses_to_overwrite_and_is_audited(admin: Admin, db: psycopg.Connection, tmp_path, capsys) -> None:
    path = tmp_path / "new" / "keyring.yaml"
    assert admin.run("keys", "generate", "--keyring", str(path)) == 0
    assert Keyring.load(path).key_ids == (1,) and path.stat().st_mode & 0o777 == 0o600
    assert admin.run("keys", "generate", "--keyring", str(path)) == 78
    assert "refusing to overwrite" in capsys.readouterr().err
    assert db.execute("SELECT count(*) FROM audit_logs WHERE action = 'keys.generate'").fetchone() == (1,)


def test_status_counts_rows_per_key(admin: Admin, db: psycopg.Connection, capsys) -> None:
    populate(db, admin.keyring, 3)
    assert admin.run("keys", "status") == 0
    out = capsys.readouterr().out
    assert "keys 1; active 1" in out and "call_records  key 1: 3" in out and "calls         key 1: 3" in out
    (details,) = db.execute("SELECT details FROM audit_logs WHERE action = 'keys.status'").fetchone()
    assert details == {"rows_per_key": {"call_records": {"1": 3}, "calls": {"1": 3}, "call_events": {}}}


def test_rotation_killed_half_way_resumes(admin: Admin, db: psycopg.Connection) -> None:
    populate(db, admin.keyring, 150)
    before = plaintexts(db, admin.keyring)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "eslbridge", "--config", str(admin.config), "keys", "rotate",
                             "--batch-size", "3"], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        for line in proc.stdout:
            if "re-encrypted" in line:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    usage = rotation.key_usage(db)
    assert usage["call_records"].get(2) and usage["call_records"].get(1), usage  # really half-way
    assert plaintexts(db, admin.keyring) == before  # every row readable mid-way

    assert admin.run("keys", "rotate", "--resume", "--batch-size", "7") == 0
    keyring = admin.keyring
    assert keyring.active_id == 2
    assert rotation.key_usage(db) == {"call_records": {2: 150}, "calls": {2: 150}, "call_events": {}}
    assert plaintexts(db, keyring) == before
    # Readable with the new key by PostgreSQL too, and by none with the old one.
    for (blob,) in db.execute("SELECT caller FROM call_records"):
        with pytest.raises(DecryptionError):
            keyring.decrypt(blob, 1)
    assert db.execute("SELECT count(*) FROM call_records WHERE pgp_sym_decrypt(caller, %s) LIKE 'sip:+49301%%'",
                      (keyring.passphrase(2),)).fetchone() == (150,)
    actions = [r[0] for r in db.execute("SELECT action FROM audit_logs WHERE action LIKE 'keys.%' ORDER BY id")]
    assert actions == ["keys.rotate", "keys.reencrypt"]


def test_rotation_while_the_daemon_writes_with_the_old_key(admin: Admin, db: psycopg.Connection) -> None:
    old = admin.keyring
    populate(db, old, 20)
    rotation.new_active_key(admin.keyring_path)
    new = admin.keyring
    extra = iter(range(1000, 1010))

    def daemon_writes(table: str, batch: int, done: int) -> None:
        # Between batches a not-yet-reloaded daemon writes new calls and updates old ones, with key 1.
        n = next(extra, None)
        if n is not None:
            write(db, old, call(n, f"sip:+4930999{n}@{REALM}", "sip:+4940@x.example"))
            write(db, old, call(n - 1000, f"sip:+49301{n - 1000:05d}@{REALM}", f"sip:+49402{n - 1000:05d}@x.example",
                                user_id=None))

    done = rotation.reencrypt(db, new, batch_size=4, progress=daemon_writes)
    assert done["call_records"] > 20
    assert rotation.key_usage(db)["call_records"] == {2: 30}
    assert all(v is not None for k, v in plaintexts(db, new).items() if k[2] == "caller")


def test_locked_rows_are_skipped_not_waited_for(admin: Admin, db: psycopg.Connection, db_dsn: str) -> None:
    populate(db, admin.keyring, 5)
    rotation.new_active_key(admin.keyring_path)
    with psycopg.connect(db_dsn) as writer:  # a daemon transaction holding one row
        writer.execute("SELECT 1 FROM call_records ORDER BY call_uuid LIMIT 1 FOR UPDATE")
        rotation.reencrypt(db, admin.keyring, batch_size=2)
        assert rotation.key_usage(db)["call_records"] == {1: 1, 2: 4}
    rotation.reencrypt(db, admin.keyring, batch_size=2)
    assert rotation.key_usage(db)["call_records"] == {2: 5}


def test_retire_only_unused_old_keys(admin: Admin, db: psycopg.Connection, capsys) -> None:
    populate(db, admin.keyring, 2)
    rotation.new_active_key(admin.keyring_path)
    assert admin.run("keys", "retire", "1") == 1
    assert "still encrypts 2 in call_records, 2 in calls" in capsys.readouterr().err
    assert admin.run("keys", "retire", "2") == 1
    assert "active key" in capsys.readouterr().err
    assert admin.run("keys", "rotate", "--resume") == 0
    assert admin.run("keys", "retire", "1") == 0
    assert admin.keyring.key_ids == (2,)
    assert admin.run("keys", "retire", "7") == 78
    assert db.execute("SELECT details FROM audit_logs WHERE action = 'keys.retire'").fetchall() == [({"key_id": 1},)]


def test_missing_key_stops_reencryption_before_any_change(admin: Admin, db: psycopg.Connection, tmp_path) -> None:
    populate(db, admin.keyring, 2)
    stranger = tmp_path / "other" / "keyring.yaml"
    from eslbridge.keys.keyring import generate_keyring

    generate_keyring(stranger)
    rotation.new_active_key(stranger)
    with pytest.raises(EslBridgeError, match="does not decrypt with key 1"):
        rotation.reencrypt(db, Keyring.load(stranger))
    assert rotation.key_usage(db)["call_records"] == {1: 2}
