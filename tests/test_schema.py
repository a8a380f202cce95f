"""The merged schema of both seeds: migrations, tables, functions, roles."""

from __future__ import annotations

import re
import shutil
import threading
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import errors

from eslbridge.cli import main
from eslbridge.store.migrate import MigrationError, load_migrations, migrate, migrations_dir, status
from tests import seeds

# YakYak indexes caller/callee; here they are ciphertext, so the index sits on the blind index.
ENCRYPTED_INDEXED = {"caller": "caller_hash", "callee": "callee_hash", "call_id": "call_id_hash"}


def columns(conn: psycopg.Connection, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = %s",
        (table,),
    ).fetchall()
    return {r[0] for r in rows}


def indexed_columns(conn: psycopg.Connection, table: str) -> set[str]:
    """Leading column of every index on the table (partitioned parents included)."""
    rows = conn.execute(
        """SELECT a.attname FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = %s::regclass""",
        (table,),
    ).fetchall()
    return {r[0] for r in rows}


def schema_snapshot(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        """SELECT c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod)
             FROM pg_class c LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
            WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1, 3"""
    ).fetchall()


def make_user(conn: psycopg.Connection, username: str = "alice", realm: str = "example.com") -> str:
    return str(
        conn.execute(
            "INSERT INTO users (username, password_hash, realm, display_name) VALUES (%s, 'x', %s, %s) RETURNING id",
            (username, realm, username.title()),
        ).fetchone()[0]
    )


def make_call(conn: psycopg.Connection, user_id: str, *, status: str = "completed", when: datetime | None = None,
              duration: int | None = 60, cost: int | None = 10, quality: float | None = 4.0,
              destination: bytes = b"enc") -> str:
    when = when or datetime.now(UTC)
    return str(
        conn.execute(
            """INSERT INTO calls (user_id, destination_number_enc, call_uuid, status, initiated_at,
                                  duration_seconds, cost_cents, quality_score, enc_key_id)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 1) RETURNING id""",
            (user_id, destination, str(uuid.uuid4()), status, when, duration, cost, quality),
        ).fetchone()[0]
    )


# --- migrations -------------------------------------------------------------------------------

def test_migrate_from_empty_then_noop(empty_db_dsn: str) -> None:
    names = [m.name for m in load_migrations()]
    assert migrate(empty_db_dsn) == names
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        before = schema_snapshot(conn)
        applied = conn.execute("SELECT name, checksum FROM schema_migrations ORDER BY version").fetchall()
    assert migrate(empty_db_dsn) == []
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        assert schema_snapshot(conn) == before
        assert conn.execute("SELECT name, checksum FROM schema_migrations ORDER BY version").fetchall() == applied
    assert [n for n, _ in applied] == names


def test_changed_migration_is_refused(empty_db_dsn: str, tmp_path) -> None:
    copy = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), copy)
    migrate(empty_db_dsn, load_migrations(copy))
    first = sorted(copy.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited after it ran\n")
    with pytest.raises(MigrationError, match=re.escape(first.name)):
        migrate(empty_db_dsn, load_migrations(copy))
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        assert status(conn, load_migrations(copy)).changed == [first.name]


def test_badly_named_migration_is_refused(tmp_path) -> None:
    (tmp_path / "create_stuff.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)


def test_failed_migration_rolls_back_and_is_not_recorded(empty_db_dsn: str, tmp_path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE t_ok (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE t_half (id int); SELECT no_such_function();")
    with pytest.raises(MigrationError, match=r"0002_bad\.sql"):
        migrate(empty_db_dsn, load_migrations(tmp_path))
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('t_ok') IS NOT NULL, to_regclass('t_half') IS NULL").fetchone() == (
            True, True)
        assert status(conn, load_migrations(tmp_path)).pending == ["0002_bad.sql"]


def test_concurrent_migrators_apply_each_file_once(empty_db_dsn: str) -> None:
    results: list[list[str]] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(empty_db_dsn))
        except BaseException as exc:  # collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    names = [m.name for m in load_migrations()]
    assert sorted(results, key=len) == [[], [], names]


def test_cli_migrate_and_status(empty_db_dsn: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ESLBRIDGE_DATABASE_URL", empty_db_dsn)
    assert main(["db", "status"]) == 0
    assert "pending" in capsys.readouterr().out
    assert main(["migrate"]) == 0
    out = capsys.readouterr().out
    assert all(f"applied {m.name}" in out for m in load_migrations())
    assert main(["migrate"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["db", "status"]) == 0
    assert "pending" not in capsys.readouterr().out


def test_cli_migrate_dead_database_is_a_clear_error(monkeypatch, capsys) -> None:
    from eslbridge.sim.localpg import free_port

    monkeypatch.setenv("ESLBRIDGE_DATABASE_URL", f"postgresql://nobody:s3cret-pw@127.0.0.1:{free_port()}/x")
    assert main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the database" in err
    assert "s3cret-pw" not in err


# --- the seeds' tables, columns, indexes, triggers -------------------------------------------

def test_every_seed_table_and_column_exists(db: psycopg.Connection) -> None:
    for seed in (seeds.yakyak_tables(), seeds.sipcall_tables()):
        for table, cols in seed.items():
            have = columns(db, table)
            assert have, f"table {table} missing"
            assert set(cols) <= have, f"{table} lacks {set(cols) - have}"
    extra = {"call_uuid", "node", "user_id", "enc_key_id", "reconciled"}
    assert extra <= columns(db, "call_records")
    assert {"node", "enc_key_id", "reconciled"} <= columns(db, "calls")


def test_every_seed_index_exists(db: psycopg.Connection) -> None:
    for table, cols in seeds.yakyak_indexed_columns().items():
        have = indexed_columns(db, table)
        for col in cols:
            assert ENCRYPTED_INDEXED.get(col, col) in have, f"no index on {table}.{col}"
    for index, table in seeds.sipcall_indexes().items():
        found = db.execute("SELECT tablename FROM pg_indexes WHERE indexname = %s", (index,)).fetchone()
        assert found == (table,), f"index {index} on {table} missing"
    # YakYak's UNIQUE(username) is per realm; UNIQUE(call_id) became UNIQUE(call_uuid, start_time).
    db.execute("INSERT INTO users (username, password_hash, realm) VALUES ('bob', 'x', 'a.example')")
    db.execute("INSERT INTO users (username, password_hash, realm) VALUES ('bob', 'x', 'b.example')")
    with pytest.raises(errors.UniqueViolation):
        db.execute("INSERT INTO users (username, password_hash, realm) VALUES ('bob', 'x', 'a.example')")


def test_seed_triggers_exist_and_updated_at_moves(db: psycopg.Connection) -> None:
    triggers = {r[0] for r in db.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}
    assert set(seeds.yakyak_triggers()) <= triggers
    user_id = make_user(db)
    call_id = make_call(db, user_id)
    db.execute("INSERT INTO system_config (config_key, config_value) VALUES ('k', '1')")
    cases = {
        "users": ("display_name = 'x'", f"id = '{user_id}'"),
        "roles": ("description = 'x'", "name = 'user'"),
        "calls": ("codec = 'PCMU'", f"id = '{call_id}'"),
        "system_config": ("config_value = '2'", "config_key = 'k'"),
    }
    db.execute(
        """INSERT INTO call_records (call_uuid, node, call_id, direction, start_time, status, enc_key_id)
           VALUES ('u1', 'fs1', 'c1', 'Inbound', now(), 'Active', 1)"""
    )
    cases["call_records"] = ("status = 'Completed'", "call_uuid = 'u1'")
    tables_with_updated_at = {
        r[0] for r in db.execute(
            """SELECT c.table_name FROM information_schema.columns c
                 JOIN pg_class p ON p.relname = c.table_name AND NOT p.relispartition
                WHERE c.table_schema = 'public' AND c.column_name = 'updated_at'
                  AND p.relkind IN ('r', 'p')"""
        )
    }
    assert tables_with_updated_at == set(cases)
    for table, (assignment, where) in cases.items():
        db.execute("SET session_replication_role = replica")  # backdate without firing the trigger
        db.execute(f"UPDATE {table} SET updated_at = now() - interval '1 day' WHERE {where}")
        db.execute("RESET session_replication_role")
        old = db.execute(f"SELECT updated_at FROM {table} WHERE {where}").fetchone()[0]
        db.execute(f"UPDATE {table} SET {assignment} WHERE {where}")
        new = db.execute(f"SELECT updated_at FROM {table} WHERE {where}").fetchone()[0]
        assert new > old + timedelta(hours=23), table


# --- roles ---------------------------------------------------------------------------------------

def test_default_roles_and_permissions(db: psycopg.Connection) -> None:
    documented = set(seeds.yakyak_permissions())
    assert len(documented) == 20
    roles = dict(db.execute("SELECT name, permissions FROM roles WHERE is_system"))
    assert set(roles) == {"administrator", "user", "operator"}
    assert set(roles["administrator"]) == documented
    assert "call:create" in roles["user"] and set(roles["user"]) < documented
    assert {"call:terminate", "call:transfer", "cdr:read"} <= set(roles["operator"]) < documented
    assert not {p for perms in roles.values() for p in perms} - documented


def test_system_role_cannot_be_deleted_or_demoted(db: psycopg.Connection) -> None:
    with pytest.raises(errors.CheckViolation, match="system role"):
        db.execute("DELETE FROM roles WHERE name = 'administrator'")
    with pytest.raises(errors.CheckViolation, match="system role"):
        db.execute("UPDATE roles SET is_system = false WHERE name = 'user'")
    db.execute("INSERT INTO roles (name, permissions) VALUES ('temp', '{call:read}')")
    db.execute("DELETE FROM roles WHERE name = 'temp'")
    with pytest.raises(errors.ForeignKeyViolation, match="unknown permission"):
        db.execute("INSERT INTO roles (name, permissions) VALUES ('bad', '{call:fly}')")


def test_role_delete_sets_user_role_null(db: psycopg.Connection) -> None:
    role = db.execute("INSERT INTO roles (name) VALUES ('short') RETURNING id").fetchone()[0]
    user_id = make_user(db)
    db.execute("UPDATE users SET role_id = %s WHERE id = %s", (role, user_id))
    db.execute("DELETE FROM roles WHERE id = %s", (role,))
    assert db.execute("SELECT role_id FROM users WHERE id = %s", (user_id,)).fetchone() == (None,)


# --- views ---------------------------------------------------------------------------------------

def test_call_statistics_and_user_activity(db: psycopg.Connection) -> None:
    alice, bob = make_user(db, "alice"), make_user(db, "bob")
    day1 = datetime(2026, 3, 5, 10, tzinfo=UTC)
    day2 = datetime(2026, 3, 6, 9, tzinfo=UTC)
    make_call(db, alice, when=day1, duration=60, cost=10, quality=4.0)
    make_call(db, alice, when=day1 + timedelta(hours=1), status="busy", duration=None, cost=None, quality=None)
    make_call(db, bob, when=day1 + timedelta(hours=2), duration=120, cost=30, quality=3.0)
    make_call(db, bob, when=day2, duration=30, cost=5, quality=5.0)

    stats = db.execute(
        "SELECT call_date, total_calls, completed_calls, avg_duration, total_cost_cents, avg_quality"
        " FROM call_statistics"
    ).fetchall()
    assert [r[0].date() for r in stats] == [day2.date(), day1.date()]  # newest first
    d2, d1 = stats
    assert d1[1:] == (3, 2, 90, 40, 3.5)
    assert d2[1:] == (1, 1, 30, 5, 5.0)

    activity = {r[1]: r[2:] for r in db.execute(
        "SELECT id, display_name, total_calls, last_call, total_cost_cents, avg_quality FROM user_activity")}
    assert activity["Alice"] == (2, day1 + timedelta(hours=1), 10, 4.0)
    assert activity["Bob"] == (2, day2, 35, 4.0)
    carol = make_user(db, "carol")
    assert db.execute("SELECT total_calls, last_call FROM user_activity WHERE id = %s", (carol,)).fetchone() == (
        0, None)


def test_daily_call_summary_refreshes_concurrently(db: psycopg.Connection) -> None:
    alice = make_user(db)
    day = datetime(2026, 4, 1, 12, tzinfo=UTC)
    make_call(db, alice, when=day, duration=61)
    make_call(db, alice, when=day, duration=62, status="failed")
    assert db.execute("SELECT count(*) FROM daily_call_summary").fetchone() == (0,)
    db.execute("SELECT refresh_daily_summary()")
    row = db.execute("SELECT total_calls, completed_calls, avg_duration, total_cost_cents FROM daily_call_summary"
                     " WHERE call_date = %s", (day.replace(hour=0),)).fetchone()
    assert row == (2, 1, 62, 20)
    # CONCURRENTLY needs the unique index and must not block readers: refresh inside an open read.
    with psycopg.connect(db.info.dsn) as reader:
        reader.execute("SELECT * FROM daily_call_summary").fetchall()
        db.execute("SELECT refresh_daily_summary()")


# --- retention and GDPR functions ------------------------------------------------------------

def test_cleanup_functions_delete_exactly_rows_past_their_age(db: psycopg.Connection) -> None:
    now = datetime.now(UTC)
    for age_days in (10, 89, 91, 200):
        db.execute(
            "INSERT INTO call_events (call_uuid, seq, event_type, timestamp) VALUES (%s, 1, 'created', %s)",
            (f"u{age_days}", now - timedelta(days=age_days)),
        )
    for age_days in (1, 364, 366, 800):
        db.execute("INSERT INTO audit_logs (action, timestamp) VALUES (%s, %s)",
                   (f"a{age_days}", now - timedelta(days=age_days)))
    assert db.execute("SELECT cleanup_old_call_events()").fetchone() == (2,)
    assert {r[0] for r in db.execute("SELECT call_uuid FROM call_events")} == {"u10", "u89"}
    assert db.execute("SELECT cleanup_old_audit_logs()").fetchone() == (2,)
    assert {r[0] for r in db.execute("SELECT action FROM audit_logs")} == {"a1", "a364"}
    assert db.execute("SELECT cleanup_old_call_events(5)").fetchone() == (2,)
    assert db.execute("SELECT cleanup_old_call_events()").fetchone() == (0,)


def test_delete_user_data(db: psycopg.Connection) -> None:
    alice, bob = make_user(db, "alice"), make_user(db, "bob")
    calls = {who: make_call(db, who) for who in (alice, bob)}
    for who, call in calls.items():
        init = db.execute("SELECT initiated_at, call_uuid FROM calls WHERE id = %s", (call,)).fetchone()
        db.execute(
            """INSERT INTO call_events (call_id, call_initiated_at, call_uuid, seq, event_type)
               VALUES (%s, %s, %s, 1, 'created')""", (call, init[0], init[1]))
        db.execute("INSERT INTO rate_limits (user_id, endpoint) VALUES (%s, 'call')", (who,))
        db.execute("INSERT INTO audit_logs (user_id, action, details, ip_address) VALUES (%s, 'login', %s, '10.0.0.1')",
                   (who, '{"username": "secret"}'))
    assert db.execute("SELECT delete_user_data(%s)", (alice,)).fetchone() == (True,)
    for table, col in (("calls", "user_id"), ("rate_limits", "user_id"), ("users", "id")):
        assert db.execute(f"SELECT count(*) FROM {table} WHERE {col} = %s", (alice,)).fetchone() == (0,)
        assert db.execute(f"SELECT count(*) FROM {table} WHERE {col} = %s", (bob,)).fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM call_events").fetchone() == (1,)
    audit = db.execute("SELECT user_id, details, ip_address FROM audit_logs ORDER BY id").fetchall()
    assert audit[0] == (None, {"anonymized": True}, None)
    assert str(audit[1][0]) == bob and audit[1][1] == {"username": "secret"}


def test_export_user_data(db: psycopg.Connection) -> None:
    alice = make_user(db, "alice")
    enc = db.execute("SELECT encrypt_data('+4930123456', 'k3y')").fetchone()[0]
    call = make_call(db, alice, destination=enc)
    make_call(db, make_user(db, "bob"))
    out = db.execute("SELECT export_user_data(%s, 'k3y')", (alice,)).fetchone()[0]
    assert out["user"]["username"] == "alice"
    assert "password_hash" not in out["user"] and "sip_ha1" not in out["user"]
    assert [c["id"] for c in out["calls"]] == [call]
    assert out["calls"][0]["destination_number"] == "+4930123456"
    wrong_key = db.execute("SELECT export_user_data(%s, 'nope')", (alice,)).fetchone()[0]
    assert wrong_key["calls"][0]["destination_number"] is None


# --- partitions ----------------------------------------------------------------------------------

def test_partitions_default_and_maintenance(db: psycopg.Connection) -> None:
    alice = make_user(db)
    far = datetime(2031, 7, 15, tzinfo=UTC)
    make_call(db, alice, when=far)
    db.execute(
        """INSERT INTO call_records (call_uuid, node, call_id, direction, start_time, status, enc_key_id)
           VALUES ('far', 'fs1', 'c', 'Inbound', %s, 'Completed', 1)""", (far,))
    assert db.execute("SELECT tableoid::regclass::text FROM calls").fetchone() == ("calls_default",)
    assert db.execute("SELECT tableoid::regclass::text FROM call_records").fetchone() == ("call_records_default",)

    made = [r[0] for r in db.execute("SELECT ensure_partitions(1, '2031-07-01')")]
    assert sorted(made) == ["call_records_y2031m07", "call_records_y2031m08", "calls_y2031m07", "calls_y2031m08"]
    assert db.execute("SELECT tableoid::regclass::text FROM calls").fetchone() == ("calls_y2031m07",)
    assert db.execute("SELECT tableoid::regclass::text FROM call_records").fetchone() == ("call_records_y2031m07",)
    assert db.execute("SELECT count(*) FROM ensure_partitions(1, '2031-07-01')").fetchone() == (0,)

    db.execute("SELECT ensure_partitions(0, '2020-01-01')")
    old_call = make_call(db, alice, when=datetime(2020, 1, 9, tzinfo=UTC))
    db.execute("""INSERT INTO call_events (call_id, call_initiated_at, call_uuid, seq, event_type)
                  SELECT id, initiated_at, call_uuid, 1, 'created' FROM calls WHERE id = %s""", (old_call,))
    dropped = [r[0] for r in db.execute("SELECT drop_expired_partitions('calls', interval '365 days')")]
    assert dropped == ["calls_y2020m01"]
    assert db.execute("SELECT to_regclass('calls_y2020m01')").fetchone() == (None,)
    assert db.execute("SELECT count(*) FROM call_events WHERE call_id = %s", (old_call,)).fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM calls").fetchone() == (1,)
    assert db.execute("SELECT to_regclass('call_records_y2020m01') IS NOT NULL").fetchone() == (True,)
    current = datetime.now(UTC).strftime("calls_y%Ym%m")
    assert db.execute("SELECT to_regclass(%s) IS NOT NULL", (current,)).fetchone() == (True,)


# --- PostgreSQL roles ----------------------------------------------------------------------------

WRITES = {
    "users": "UPDATE users SET display_name = 'x'",
    "roles": "DELETE FROM roles WHERE name = 'nothing'",
    "call_records": "DELETE FROM call_records",
    "calls": "UPDATE calls SET status = 'failed'",
    "call_events": "INSERT INTO call_events (call_uuid, seq, event_type) VALUES ('u', 1, 'x')",
    "audit_logs": "INSERT INTO audit_logs (action) VALUES ('x')",
    "rate_limits": "DELETE FROM rate_limits",
    "system_config": "INSERT INTO system_config (config_key, config_value) VALUES ('a', '1')",
    "schema_migrations": "DELETE FROM schema_migrations",
    "permissions": "DELETE FROM permissions",
}


def test_auditor_reads_but_cannot_write(db: psycopg.Connection) -> None:
    tables = {r[0] for r in db.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')"
        " AND NOT relispartition")}
    assert tables == set(WRITES)
    db.execute("SET ROLE eslbridge_auditor")
    for view in ("call_statistics", "user_activity", "daily_call_summary", "audit_logs", "call_records", "calls"):
        db.execute(f"SELECT * FROM {view}").fetchall()
    for table, statement in WRITES.items():
        with pytest.raises(errors.InsufficientPrivilege):
            db.execute(statement)
        assert table
    with pytest.raises(errors.InsufficientPrivilege):
        db.execute("SELECT password_hash FROM users")
    for call in ("refresh_daily_summary()", "cleanup_old_audit_logs()", "ensure_partitions(1)",
                 "delete_user_data(gen_random_uuid())"):
        with pytest.raises(errors.InsufficientPrivilege):
            db.execute(f"SELECT {call}")
    with pytest.raises(errors.InsufficientPrivilege):
        db.execute("REFRESH MATERIALIZED VIEW daily_call_summary")


def test_daemon_role_writes_calls_but_not_users(db: psycopg.Connection) -> None:
    user_id = make_user(db)
    db.execute("SET ROLE eslbridge_daemon")
    db.execute(
        """INSERT INTO call_records (call_uuid, node, call_id, direction, start_time, status, enc_key_id)
           VALUES ('u1', 'fs1', 'c1', 'Inbound', now(), 'Active', 1)""")
    make_call(db, user_id)
    db.execute("UPDATE users SET last_login = now() WHERE id = %s", (user_id,))
    db.execute("SELECT refresh_daily_summary()")
    db.execute("SELECT ensure_partitions(1)")
    with pytest.raises(errors.InsufficientPrivilege):
        db.execute("UPDATE users SET password_hash = 'y'")
    with pytest.raises(errors.InsufficientPrivilege):
        db.execute("DELETE FROM users")
    with pytest.raises(errors.InsufficientPrivilege):
        db.execute("UPDATE audit_logs SET action = 'forged'")
