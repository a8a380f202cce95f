"""The directory's query on its own connection (eslbridge/directory/userquery.py), against a real
PostgreSQL: what it returns, hostile keys, failures, deadlines and reconnects."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import gevent
import psycopg
import pytest

from eslbridge.accounts import users
from eslbridge.directory.userquery import QueryTimeout, UserQuery
from eslbridge.store.pool import own_connection

REALM = "query.example"
PASSWORD = "query password"


@pytest.fixture
def dsn(db_dsn: str) -> Iterator[str]:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        users.add_user(conn, "alice", REALM, PASSWORD, display_name="Alice A", rounds=4)
        users.add_user(conn, "bob", REALM, PASSWORD, role="operator", rounds=4)
        users.add_user(conn, "off", REALM, PASSWORD, rounds=4)
        users.set_enabled(conn, "off", REALM, False)
        users.add_user(conn, "alice", "other.example", PASSWORD, rounds=4)
    yield db_dsn


@pytest.fixture
def query(dsn: str) -> Iterator[UserQuery]:
    query = UserQuery(lambda: own_connection(dsn, 2.0))
    yield query
    query.close()


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def backend_pids(dsn: str) -> set[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {pid for (pid,) in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE '%json_to_recordset%' AND pid <> pg_backend_pid()")}


def test_enabled_users_come_back_with_their_role_and_permissions(dsn, query):
    keys = [("alice", REALM), ("bob", REALM), ("off", REALM), ("nobody", REALM), ("alice", "other.example")]
    rows = {(row[0], row[6]): row for row in query.run(keys, soon())}
    assert set(rows) == {("alice", REALM), ("bob", REALM), ("alice", "other.example")}
    with psycopg.connect(dsn) as conn:
        expected = {name: conn.execute(
            "SELECT u.sip_ha1, u.permissions, r.id, r.permissions FROM users u JOIN roles r ON r.id = u.role_id"
            " WHERE u.username = %s AND u.realm = %s", (name, REALM)).fetchone() for name in ("alice", "bob")}
    alice, bob = rows["alice", REALM], rows["bob", REALM]
    assert alice[1:] == (expected["alice"][0], "Alice A", expected["alice"][1], expected["alice"][2],
                         expected["alice"][3], REALM)
    assert isinstance(alice[4], uuid.UUID) and bob[4] == expected["bob"][2] != alice[4]
    assert bob[2] is None and bob[5] == expected["bob"][3] and "call:transfer" in bob[5]
    assert query.run([], soon()) == []


@pytest.mark.parametrize("username", ['alice", "realm": "x', "alice'); DROP TABLE users; --", "al\\ice",
                                      "alice\u00e9\u2028", "{alice}", "alice\x01"])
def test_hostile_keys_are_data_not_syntax(dsn, query, username):
    assert query.run([(username, REALM), ("alice", REALM)], soon())[0][0] == "alice"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 4


def test_a_terminated_session_fails_once_then_a_new_connection_serves(dsn, query):
    assert len(query.run([("alice", REALM)], soon())) == 1
    (pid,) = backend_pids(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError):  # AdminShutdown (57P01) is one
        query.run([("alice", REALM)], soon())
    assert len(query.run([("alice", REALM)], soon())) == 1
    assert backend_pids(dsn) - {pid}


def test_the_deadline_ends_a_blocked_query_and_its_connection(dsn, query):
    assert len(query.run([("alice", REALM)], soon())) == 1
    (pid,) = backend_pids(dsn)
    with psycopg.connect(dsn) as locker:
        locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        # The lock is still held: only the deadline can end the query (the guard turns a hang into a failure).
        with gevent.Timeout(10, AssertionError("the deadline did not end the blocked query")), \
                pytest.raises(QueryTimeout):
            query.run([("alice", REALM)], soon(0.3))
    with pytest.raises(QueryTimeout):  # already late: nothing is sent
        query.run([("alice", REALM)], time.monotonic())
    assert len(query.run([("alice", REALM)], soon())) == 1
    assert pid not in backend_pids(dsn)  # the blocked session was closed, not reused


def test_a_missing_table_raises_its_sqlstate_class(dsn, query):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE users RENAME TO users_elsewhere")
    try:
        with pytest.raises(psycopg.errors.UndefinedTable):  # the prepare fails on the new connection
            query.run([("alice", REALM)], soon())
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE users_elsewhere RENAME TO users")
    assert len(query.run([("alice", REALM)], soon())) == 1


def test_an_unreachable_server_is_an_operational_error(query):
    dead = UserQuery(lambda: own_connection("host=127.0.0.1 port=1 dbname=x user=x", 1.0))
    with pytest.raises(psycopg.OperationalError):
        dead.run([("alice", REALM)], soon())
