"""User and role management: the library (eslbridge/accounts/users.py) and the CLI (`eslbridge user|role`)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import bcrypt
import psycopg
import pytest

from eslbridge.accounts import roles, users
from eslbridge.accounts.audit import os_user
from eslbridge.errors import EXIT_FAILURE, EXIT_USAGE, EslBridgeError, UsageError
from tests.user_rows import user_id

ROOT = Path(__file__).resolve().parents[1]
FAST = 4


def audit_rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "SELECT action, resource_type, actor, db_user, details::text FROM audit_logs ORDER BY id"
    ).fetchall()


def test_add_user_stores_bcrypt_12_and_ha1_and_audits(db):
    user = users.add_user(db, "alice", "SIP.Example.COM", "s3cret-pass", display_name="Alice", email="a@x.org")
    assert (user.username, user.realm, user.role, user.enabled) == ("alice", "sip.example.com", "user", True)
    pw_hash, ha1 = db.execute("SELECT password_hash, sip_ha1 FROM users WHERE id = %s", (user.id,)).fetchone()
    assert pw_hash.startswith("$2b$12$") and bcrypt.checkpw(b"s3cret-pass", pw_hash.encode())
    assert ha1 == hashlib.md5(b"alice:sip.example.com:s3cret-pass").hexdigest()
    ((action, rtype, actor, db_user, details),) = audit_rows(db)
    assert (action, rtype, db_user) == ("user.create", "user", "postgres") and actor
    assert "s3cret" not in details and "$2b$" not in details


def test_duplicates_unknown_roles_and_permissions_are_clear_errors(db):
    users.add_user(db, "bob", "example.com", "password1", rounds=FAST)
    with pytest.raises(EslBridgeError, match=r"bob@example\.com already exists"):
        users.add_user(db, "bob", "EXAMPLE.com", "password2", rounds=FAST)
    with pytest.raises(EslBridgeError, match=r"unknown role 'boss' \(known: administrator, operator, user\)"):
        users.add_user(db, "carl", "example.com", "password1", role="boss", rounds=FAST)
    with pytest.raises(EslBridgeError, match="unknown permission 'call:fly'"):
        roles.grant(db, "user", ["call:fly"])
    with pytest.raises(EslBridgeError, match="role 'user' already exists"):
        roles.add_role(db, "user")
    with pytest.raises(users.NotFoundError, match=r"no user nobody@example\.com"):
        users.set_password(db, "nobody", "example.com", "password1", rounds=FAST)
    assert [r[0] for r in audit_rows(db)] == ["user.create"]  # failed changes leave no audit row


@pytest.mark.parametrize(
    ("username", "realm", "password"),
    [("a b", "x.org", "password1"), ("a@b", "x.org", "password1"), ('a"b', "x.org", "password1"),
     ("a\nb", "x.org", "password1"), ("", "x.org", "password1"), ("-a", "x.org", "password1"),
     ("ok", "bad realm", "password1"), ("ok", "x..org", "password1"), ("ok", "-x.org", "password1"),
     ("ok", "x.org", "short"), ("ok", "x.org", "p" * 73), ("ok", "x.org", "pass\x00word")],
)
def test_bad_names_and_passwords_are_usage_errors(db, username, realm, password):
    with pytest.raises(UsageError):
        users.add_user(db, username, realm, password, rounds=FAST)
    assert db.execute("SELECT count(*) FROM users").fetchone()[0] == 0


def test_enable_disable_delete_and_roles(db):
    users.add_user(db, "dora", "x.org", "password1", role="operator", rounds=FAST)
    users.set_enabled(db, "dora", "x.org", False)
    assert users.get_user(db, "dora", "x.org").enabled is False
    role = roles.add_role(db, "night-shift", ["call:read"], description="nights")
    assert role.permissions == ("call:read",) and not role.is_system
    assert roles.grant(db, "night-shift", ["call:create", "call:read"]).permissions == ("call:create", "call:read")
    assert roles.revoke(db, "night-shift", ["call:read"]).permissions == ("call:create",)
    users.delete_user(db, "dora", "x.org")
    assert user_id(db, "dora", "x.org") is None
    assert [r[0] for r in audit_rows(db)] == [
        "user.create", "user.disable", "role.create", "role.grant", "role.revoke", "user.delete"]


# --- CLI --------------------------------------------------------------------------------------


def test_cli_user_lifecycle(cli, db):
    assert cli("user", "add", "erin", "--realm", "pbx.example", "--password-stdin", "--role", "operator",
               "--display-name", "Erin E", stdin="first-password\n")[0] == 0
    code, out, _ = cli("user", "show", "erin", "--realm", "pbx.example")
    assert code == 0 and "erin@pbx.example" in out and "operator" in out and "Erin E" in out
    assert "$2b$" not in out and "first-password" not in out
    code, _, _ = cli("user", "passwd", "erin", "--realm", "pbx.example", "--password-stdin",
                     stdin="second-password\r\n")
    assert code == 0
    ha1 = db.execute("SELECT sip_ha1 FROM users WHERE username = 'erin'").fetchone()[0]
    assert ha1 == hashlib.md5(b"erin:pbx.example:second-password").hexdigest()
    assert cli("user", "disable", "erin", "--realm", "pbx.example")[0] == 0
    code, out, _ = cli("user", "list")
    assert "erin@pbx.example" in out and "disabled" in out
    assert cli("user", "enable", "erin", "--realm", "pbx.example")[0] == 0
    assert cli("user", "delete", "erin", "--realm", "pbx.example", "--yes")[0] == 0
    assert [r[0] for r in audit_rows(db)] == [
        "user.create", "user.password_change", "user.disable", "user.enable", "user.delete"]


def test_cli_errors_and_exit_codes(cli):
    assert cli("user", "add", "f", "--realm", "x.org", "--password-stdin", stdin="\n")[:1] == (EXIT_USAGE,)
    code, _, err = cli("user", "add", "f", "--realm", "x.org", "--password-stdin", stdin="password1\n")
    assert code == 0
    code, _, err = cli("user", "add", "f", "--realm", "x.org", "--password-stdin", stdin="password1\n")
    assert code == EXIT_FAILURE and "f@x.org already exists" in err
    code, _, err = cli("user", "add", "g", "--realm", "x.org", "--role", "nope", "--password-stdin",
                       stdin="password1\n")
    assert code == EXIT_FAILURE and "unknown role 'nope'" in err
    code, _, err = cli("role", "grant", "user", "bogus:perm")
    assert code == EXIT_FAILURE and "unknown permission 'bogus:perm'" in err
    code, _, err = cli("user", "add", "h", "--realm", "x.org")  # stdin is no terminal: no prompt possible
    assert code == EXIT_USAGE and "--password-stdin" in err
    code, _, err = cli("user", "show", "nobody", "--realm", "x.org")
    assert code == EXIT_FAILURE and "no user nobody@x.org" in err
    assert cli("user", "add", "f", "--realm", "x.org", "--password", "x")[0] == EXIT_USAGE  # no such option


def test_cli_roles(cli):
    assert cli("role", "add", "auditor-ish", "--permission", "cdr:read", "--permission", "system:audit")[0] == 0
    assert cli("role", "grant", "auditor-ish", "cdr:export")[0] == 0
    assert cli("role", "revoke", "auditor-ish", "cdr:read")[0] == 0
    code, out, _ = cli("role", "list")
    assert code == 0 and "auditor-ish: cdr:export, system:audit" in out and "administrator (system)" in out


def test_cli_as_a_process_reads_the_password_from_stdin(db_dsn, db):
    env = {**os.environ, "ESLBRIDGE_DATABASE_URL": db_dsn, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "eslbridge", "user", "add", "proc", "--realm", "x.org",
                           "--password-stdin"], input="piped-password\n", text=True, capture_output=True, env=env,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert users.get_user(db, "proc", "x.org").enabled
    actor = db.execute("SELECT actor FROM audit_logs WHERE action = 'user.create'").fetchone()[0]
    assert actor == os_user()
