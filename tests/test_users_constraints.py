"""Migration 0011: users.username and users.realm hold only what `eslbridge users` accepts, so a row
written by any database client cannot carry an ESL command into the cache-flush path."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from eslbridge.accounts.users import REALM_RE, USERNAME_RE, valid_identity
from eslbridge.store.migrate import MigrationError, load_migrations, migrate

INJECTION = "x\n\nbgapi system id"


def insert_user(conn: psycopg.Connection, username: str, realm: str) -> str:
    return str(conn.execute("INSERT INTO users (username, realm, password_hash) VALUES (%s, %s, 'x') RETURNING id",
                            (username, realm)).fetchone()[0])


@pytest.mark.parametrize(("username", "realm"), [
    (INJECTION, "example.com"), ("alice", "example.com\nbgapi system id"), ("al ice", "example.com"),
    ("-alice", "example.com"), ("alice", "Example.COM"), ("alice", "-bad.example"), ("a" * 65, "example.com"),
    ("alice", ("a" * 62 + ".") * 4 + "com"),
])
def test_rows_the_cli_would_refuse_are_refused_by_the_database(db, username, realm):
    assert not valid_identity(username, realm)
    with pytest.raises(errors.CheckViolation):
        insert_user(db, username, realm)


@pytest.mark.parametrize(("username", "realm"), [
    ("alice", "example.com"), ("1000", "10.0.0.1"), ("a.b_c+d*e~f-g", "sip-1.example.org"), ("x" * 64, "a" * 63),
])
def test_rows_the_cli_accepts_are_accepted(db, username, realm):
    assert valid_identity(username, realm)
    assert USERNAME_RE.fullmatch(username) and REALM_RE.fullmatch(realm)
    insert_user(db, username, realm)


def test_an_existing_bad_row_stops_the_migration_naming_it(empty_db_dsn):
    migrations = load_migrations()
    before = [m for m in migrations if int(m.version) < 11]
    migrate(empty_db_dsn, before)
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        insert_user(conn, "alice", "example.com")
        bad = insert_user(conn, INJECTION, "example.com")
    with pytest.raises(MigrationError) as failed:
        migrate(empty_db_dsn, migrations)
    message = str(failed.value)
    assert "0011" in message and f"users row id={bad} has a username" in message
    assert "bgapi" not in message  # named by id: the value itself is not echoed
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM users WHERE id = %s", (bad,))
    migrate(empty_db_dsn, migrations)  # fixed: the migration now applies
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn, pytest.raises(errors.CheckViolation):
        insert_user(conn, INJECTION, "example.com")
