"""Least privilege (DESIGN section 7): each part runs under a login granted one group role only,
and each role is refused what it must not do. Real PostgreSQL; the daemon as a subprocess."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psycopg
import yaml
from psycopg import errors as pgerrors
from psycopg_pool import ConnectionPool

from eslbridge.accounts.authorizer import CallAuthorizer
from eslbridge.accounts.users import add_user
from eslbridge.cli import main
from eslbridge.config import RetentionConfig
from eslbridge.privacy.retention import run_retention
from eslbridge.sim.localpg import PgCluster
from eslbridge.store.upkeep import Upkeep
from tests.daemon_fixtures import ESL_PASSWORD, Env, wait_for
from tests.roles_fixtures import Logins, dsn_as
from tests.test_authorizer import channel
from tests.test_config_check import FakeEventSocket, write_config
from tests.test_daemon import Sim, finished_records
from tests.test_directory_service import form

ROOT = Path(__file__).resolve().parents[1]


def refused(dsn: str, statement: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute(statement)
        except pgerrors.InsufficientPrivilege:
            return True
    return False


def _cli(dsn: str, *argv: str, stdin: str = "", capsys=None, monkeypatch=None) -> tuple[int, str, str]:
    monkeypatch.setenv("ESLBRIDGE_DATABASE_URL", dsn)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- daemon -------------------------------------------------------------------------------------


def test_daemon_runs_upkeep_directory_and_writes_under_the_daemon_role(tmp_path, db_dsn, db, logins: Logins):
    user_id = add_user(db, "1000", "127.0.0.1", "pw-1000-secret", rounds=4).id
    daemon_dsn = dsn_as(db_dsn, logins.daemon)
    env = Env(tmp_path, daemon_dsn)
    sim = Sim(tmp_path, "--wait-subscribers", "1", "--calls", "20", "--rate", "40", "--speed", "8",
              "--mix", "bridged=1,busy=1,auth_call=1,register=1", "--seed", "5")
    config = env.config(sim.port, logging={"level": "debug"})
    cfg = yaml.safe_load(config.read_text())
    try:
        proc = env.start(config)
        sim.wait_line("played")
        wait_for(lambda: len(finished_records(db_dsn)) >= 5, 60, "finished records")
        wait_for(lambda: "refreshed daily_call_summary" in env.log(), 60, "an upkeep run")
        request = urllib.request.Request(
            f"http://{cfg['directory']['listen']}/directory",
            data=form(action="sip_auth", user="1000", domain="127.0.0.1").encode(),
            headers={"Authorization": "Basic " + base64.b64encode(b"freeswitch:dir-secret").decode()})
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read().decode()
        wait_for(lambda: db.execute("SELECT last_login FROM users WHERE id = %s", (user_id,)).fetchone()[0],
                 30, "last_login from the register scenario")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        sim.stop()
        env.stop_all()
    log = env.log()
    assert 'name="a1-hash" value="' in body  # the directory read sip_ha1 under the daemon role
    assert "upkeep failed" not in log and "permission denied" not in log.lower(), log
    assert "InsufficientPrivilege" not in log and "older than 365 days" in log  # retention ran
    # debug says what the daemon does, never a secret
    assert "ESL command sent: auth" in log and "ESL command sent: event" in log and ESL_PASSWORD not in log
    assert "writer: batch of " in log and "dir-secret" not in log
    # upkeep created partitions ahead (as the tables' owner, through its SECURITY DEFINER functions)
    assert db.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'call_records'::regclass").fetchone()[0] > 1


def test_check_config_passes_under_the_daemon_role(tmp_path, db_dsn, logins: Logins, capsys, monkeypatch):
    for name in ("ESLBRIDGE_DATABASE_URL", "CREDENTIALS_DIRECTORY", "ESLBRIDGE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    server = FakeEventSocket("ClueCon")
    try:
        path = write_config(tmp_path, dsn_as(db_dsn, logins.daemon), server.port)
        code = main(["check-config", "--config", str(path)])
    finally:
        server.close()
    out = capsys.readouterr().out
    assert code == 0, out
    assert "database: ok (" in out


def test_upkeep_retention_and_refused_calls_are_audited_under_the_daemon_role(db_dsn, db, logins: Logins, keyring):
    db.execute("INSERT INTO audit_logs (action, timestamp) VALUES ('old.entry', now() - interval '400 days')")
    add_user(db, "2000", "127.0.0.1", "pw-2000-secret", role="user", rounds=4)
    db.execute("UPDATE users SET enabled = false WHERE username = '2000'")
    daemon_dsn = dsn_as(db_dsn, logins.daemon)
    with ConnectionPool(daemon_dsn, min_size=1, max_size=2, open=True) as pool:
        retention = RetentionConfig(call_events_days=90, audit_logs_days=365, call_records_days=365, calls_days=365)
        result = Upkeep(pool, retention, retention_hook=lambda c, cfg: run_retention(c, cfg).lines()
                        ).run_once()
        ch = channel("2000")
        allowed, reason = CallAuthorizer(pool, lambda: keyring, lambda channel: "fs1")(ch)
    assert result.ran and "refreshed daily_call_summary" in result.actions
    assert any(line.startswith("audit_logs") and "removed 1 rows" in line for line in result.actions)
    assert not allowed and reason != "error"
    refusals = db.execute("SELECT count(*) FROM audit_logs WHERE action = 'call.refused' AND resource_id = %s",
                          (ch["Unique-ID"],)).fetchone()[0]
    assert refusals == 1


def test_the_daemon_role_is_refused_hashes_ddl_and_user_changes(db_dsn, logins: Logins):
    dsn = dsn_as(db_dsn, logins.daemon)
    with psycopg.connect(dsn) as conn:  # what it needs: sip_ha1 for the directory, schema_migrations
        conn.execute("SELECT username, realm, sip_ha1, enabled FROM users").fetchall()
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] > 0
    assert refused(dsn, "SELECT password_hash FROM users")
    assert refused(dsn, "SELECT * FROM users")
    assert refused(dsn, "DROP TABLE call_records")
    assert refused(dsn, "TRUNCATE calls")
    assert refused(dsn, "DELETE FROM users")
    assert refused(dsn, "UPDATE users SET enabled = true")
    assert refused(dsn, "UPDATE roles SET permissions = '{}'")
    assert refused(dsn, "SELECT details FROM audit_logs")
    assert refused(dsn, "SELECT eslbridge_grant_roles()")


# --- admin --------------------------------------------------------------------------------------


def test_every_admin_command_works_under_the_admin_role(tmp_path, db_dsn, db, logins: Logins, capsys, monkeypatch):
    dsn = dsn_as(db_dsn, logins.admin)
    keyring = tmp_path / "keys" / "keyring.yaml"

    def cli(*argv: str, stdin: str = "") -> int:
        code, out, err = _cli(dsn, *argv, stdin=stdin, capsys=capsys, monkeypatch=monkeypatch)
        assert code == 0, (argv, out, err)
        return code

    cli("keys", "generate", "--keyring", str(keyring))
    cli("user", "add", "ann", "--realm", "pbx.example", "--password-stdin", stdin="first-password\n")
    cli("user", "set", "ann", "--realm", "pbx.example", "--role", "operator", "--email", "ann@pbx.example",
        "--display-name", "Ann A")
    cli("user", "passwd", "ann", "--realm", "pbx.example", "--password-stdin", stdin="second-password\n")
    cli("user", "disable", "ann", "--realm", "pbx.example")
    cli("user", "enable", "ann", "--realm", "pbx.example")
    cli("user", "show", "ann", "--realm", "pbx.example")
    cli("user", "list")
    cli("role", "add", "night", "--permission", "call:create")
    cli("role", "grant", "night", "call:read")
    cli("role", "revoke", "night", "call:read")
    cli("role", "list")
    cli("role", "delete", "night", "--yes")
    cli("gdpr", "export", "ann", "--realm", "pbx.example", "--keyring", str(keyring))
    cli("gdpr", "erase", "ann", "--realm", "pbx.example", "--keyring", str(keyring), "--dry-run")
    cli("user", "add", "bob", "--realm", "pbx.example", "--password-stdin", stdin="bob-password\n")
    cli("user", "delete", "bob", "--realm", "pbx.example", "--yes")
    cli("gdpr", "erase", "ann", "--realm", "pbx.example", "--keyring", str(keyring), "--yes")
    cli("keys", "status", "--keyring", str(keyring))
    cli("keys", "rotate", "--keyring", str(keyring))
    cli("keys", "retire", "1", "--keyring", str(keyring))
    cli("keys", "blind-index", "number", "--keyring", str(keyring), stdin="+15551230000\n")
    config = tmp_path / "eslbridge.yaml"
    config.write_text("retention:\n  audit_logs_days: 30\n")
    cli("retention", "run", "--dry-run", "--config", str(config))
    cli("retention", "run", "--config", str(config))
    cli("db", "status")
    actors = {r[0] for r in db.execute("SELECT db_user FROM audit_logs")}
    assert actors == {logins.admin}


def test_the_admin_role_cannot_drop_tables_or_grant_roles(db_dsn, logins: Logins):
    dsn = dsn_as(db_dsn, logins.admin)
    assert refused(dsn, "DROP TABLE users")
    assert refused(dsn, "ALTER TABLE calls ADD COLUMN x int")
    assert refused(dsn, "SELECT eslbridge_grant_roles()")
    assert refused(dsn, "DELETE FROM schema_migrations")


# --- auditor ------------------------------------------------------------------------------------


def test_the_auditor_reads_views_audit_log_and_ciphertext_never_hashes(db_dsn, db, logins: Logins):
    add_user(db, "3000", "127.0.0.1", "pw-3000-secret", rounds=4)
    db.execute("INSERT INTO call_records (call_uuid, call_id, node, direction, status, start_time, caller,"
               " enc_key_id) VALUES (gen_random_uuid()::text, 'c1', 'fs1', 'Inbound', 'Completed', now(),"
               " '\\x00ff'::bytea, 1)")
    dsn = dsn_as(db_dsn, logins.auditor)
    with psycopg.connect(dsn) as conn:
        for view in ("call_statistics", "user_activity", "daily_call_summary", "audit_logs", "roles"):
            conn.execute(f"SELECT * FROM {view}").fetchall()
        assert conn.execute("SELECT caller FROM call_records").fetchone()[0] == b"\x00\xff"
        assert conn.execute("SELECT count(*) FROM audit_logs WHERE action = 'user.create'").fetchone()[0] == 1
    for statement in ("SELECT password_hash FROM users", "SELECT sip_ha1 FROM users", "SELECT username FROM users",
                      "SELECT export_user_data((SELECT id FROM call_records LIMIT 1)::text::uuid, NULL)",
                      "INSERT INTO audit_logs (action) VALUES ('forged')", "UPDATE call_records SET status = 'x'",
                      "DELETE FROM audit_logs", "DROP VIEW call_statistics", "SELECT * FROM rate_limits"):
        assert refused(dsn, statement), statement


# --- migrate and db grant -----------------------------------------------------------------------


def run_cli(dsn: str, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ESLBRIDGE_DATABASE_URL": dsn, "PYTHONPATH": str(ROOT)}
    env.pop("ESLBRIDGE_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "eslbridge", *argv], text=True, capture_output=True, env=env,
                          cwd=ROOT, timeout=120)


def test_db_grant_repairs_drifted_privileges_and_grants_logins(db_dsn, db, logins: Logins):
    db.execute("REVOKE SELECT ON schema_migrations FROM eslbridge_daemon")
    db.execute("GRANT SELECT ON users TO eslbridge_auditor")  # drift the wrong way too
    db.execute("CREATE ROLE eslbridge_t_grantee LOGIN")
    try:
        proc = run_cli(db_dsn, "db", "grant", "--auditor-login", "eslbridge_t_grantee")
        assert proc.returncode == 0, proc.stderr
        assert "granted eslbridge_auditor to eslbridge_t_grantee" in proc.stdout
        assert not refused(dsn_as(db_dsn, logins.daemon), "SELECT * FROM schema_migrations")
        assert refused(dsn_as(db_dsn, logins.auditor), "SELECT password_hash FROM users")
        assert not refused(dsn_as(db_dsn, "eslbridge_t_grantee"), "SELECT * FROM audit_logs")
        assert db.execute("SELECT count(*) FROM audit_logs WHERE action = 'db.grant'").fetchone()[0] == 1
        again = run_cli(db_dsn, "db", "grant")  # re-runnable
        assert again.returncode == 0 and "could not" not in again.stdout
        nobody = run_cli(db_dsn, "db", "grant", "--daemon-login", "no_such_login")
        assert nobody.returncode == 1 and "no role 'no_such_login'" in nobody.stderr
        assert "Traceback" not in nobody.stderr
    finally:
        db.execute("REVOKE ALL ON audit_logs FROM eslbridge_t_grantee")
        db.execute("DROP OWNED BY eslbridge_t_grantee")
        db.execute("DROP ROLE eslbridge_t_grantee")


def test_migrate_by_an_owner_who_may_not_create_roles_says_so_and_db_grant_repairs_it():
    """A cluster of its own: the group roles must not exist yet (roles are cluster-wide)."""
    cluster = PgCluster()
    cluster.start()
    try:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            conn.execute("CREATE ROLE owner LOGIN CREATEDB")
            conn.execute("CREATE ROLE app LOGIN")
            conn.execute("CREATE DATABASE esl OWNER owner")
        owner_dsn = dsn_as(cluster.dsn("esl"), "owner")
        proc = run_cli(owner_dsn, "migrate")
        assert proc.returncode == 0, proc.stderr
        warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
        assert warnings and "may not create roles" in warnings[-1] and "eslbridge db grant" in warnings[-1]
        assert "eslbridge_daemon" in warnings[-1] and "eslbridge_auditor" in warnings[-1]
        refused_grant = run_cli(owner_dsn, "db", "grant", "--daemon-login", "app")
        assert refused_grant.returncode == 1 and "Traceback" not in refused_grant.stderr
        assert "superuser" in refused_grant.stderr or "CREATEROLE" in refused_grant.stderr
        proc = run_cli(cluster.dsn("esl"), "db", "grant", "--daemon-login", "app")  # as the superuser
        assert proc.returncode == 0, proc.stderr
        assert "created role eslbridge_daemon" in proc.stdout and "granted eslbridge_daemon to app" in proc.stdout
        app_dsn = dsn_as(cluster.dsn("esl"), "app")
        assert not refused(app_dsn, "SELECT count(*) FROM schema_migrations")
        assert refused(app_dsn, "SELECT password_hash FROM users")
        again = run_cli(owner_dsn, "migrate")
        assert again.returncode == 0 and "warning" not in again.stderr and "up to date" in again.stdout
        assert json.loads(json.dumps(proc.stdout.splitlines()))  # one action per line
    finally:
        cluster.destroy()


def test_a_later_migration_adding_a_users_column_is_granted_to_the_daemon(db_dsn, logins: Logins):
    from eslbridge.store.migrate import Migration, load_migrations, migrate

    later = Migration("9999", "9999_nickname.sql", "ALTER TABLE users ADD COLUMN nickname text;")
    assert migrate(db_dsn, [*load_migrations(), later]) == ["9999_nickname.sql"]
    daemon = dsn_as(db_dsn, logins.daemon)
    assert not refused(daemon, "SELECT nickname FROM users")
    assert refused(daemon, "SELECT password_hash FROM users")
