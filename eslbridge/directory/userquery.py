"""The directory's one query, on a connection of its own, over libpq's asynchronous API.

Why not psycopg's ``Connection.execute``: under gevent it measured about 350 µs of CPU per
query here (its generators, gevent's emulation of ``select.poll``, the adapters, and the pool's
checkout) against about 100 µs for the same round trip driven through ``conn.pgconn``
(psycopg's own libpq wrapper) waiting with ``gevent.socket.wait_read``. At 1,500 uncached
lookups/s the difference was a third of the server's core, and every microsecond of it
delayed the other requests on the same event loop.

The keys go in as one JSON parameter and the rows come back as one JSON value: nothing to
quote or parse by hand, one orjson call each way. Beside them comes a WAL position when asked
for (``PRIMARY_POSITION`` or ``STANDBY_POSITION``, as a byte offset): replica.py compares them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import orjson
import psycopg
from gevent.socket import wait_read, wait_write
from psycopg import errors, pq

Key = tuple[str, str]  # (username, realm)
# (username, sip_ha1, display_name, user permissions, role id, role permissions, realm)
Row = tuple[Any, ...]

_STATEMENT = b"eslbridge_directory_users"
# WAL positions, as bytes since 0/0. The insert position, not pg_current_wal_lsn(): with
# synchronous_commit off a commit may still sit in the WAL buffers, past the written position.
PRIMARY_POSITION = b"pg_current_wal_insert_lsn() - '0/0'::pg_lsn"
STANDBY_POSITION = b"pg_last_wal_replay_lsn() - '0/0'::pg_lsn"  # NULL when the server is no standby
_SQL = b"""
SELECT (%s)::int8, coalesce(json_agg(json_build_array(u.username, u.sip_ha1, u.display_name, u.permissions,
                                          r.id, r.permissions, u.realm)), '[]')
  FROM json_to_recordset($1::json) AS k(username text, realm text)
  -- LATERAL ... LIMIT 1 keeps one probe of the unique index per key: the planner guesses 100 rows
  -- for json_to_recordset and would otherwise hash-join against a scan of the whole table. (A table
  -- never analyzed, in the minute before autovacuum gets to a bulk load, is probed by realm instead.)
  CROSS JOIN LATERAL (SELECT username, realm, sip_ha1, display_name, permissions, role_id FROM users
                      WHERE username = k.username AND realm = k.realm AND enabled LIMIT 1) u
  LEFT JOIN roles r ON r.id = u.role_id
"""


class QueryTimeout(Exception):
    """The deadline passed before the answer came."""


class UserQuery:
    """One connection (opened on first use, closed on any failure) and its prepared statement.

    ``connect`` opens an autocommit connection (psycopg waits cooperatively under gevent);
    ``position`` is the SQL of the WAL position ``run_at`` returns (NULL: none)."""

    def __init__(self, connect: Callable[[], psycopg.Connection], position: bytes = b"NULL") -> None:
        self._connect = connect
        self._sql = _SQL % position
        self._conn: psycopg.Connection | None = None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def run(self, keys: Iterable[Key], deadline: float) -> list[Row]:
        """The enabled users among ``keys``, read by ``deadline`` (``time.monotonic()``).
        Raises as ``run_at`` does."""
        return self.run_at(keys, deadline)[0]

    def run_at(self, keys: Iterable[Key], deadline: float) -> tuple[list[Row], int | None]:
        """The enabled users among ``keys`` and the server's WAL position, evaluated after the
        statement's snapshot was taken (None when there is none).

        Raises QueryTimeout or a psycopg.Error (the SQLSTATE's class when the server sent one).
        After a failure the connection is closed (a query may still be in flight on it); the
        next call opens a new one."""
        _remaining(deadline)  # nothing is sent for a batch that is already late
        payload = orjson.dumps([{"username": username, "realm": realm} for username, realm in keys])
        try:
            if self._conn is None:
                self._conn = self._open(deadline)
            pgconn = self._conn.pgconn
            pgconn.send_query_prepared(_STATEMENT, [payload])
            result = _result(pgconn, deadline, pq.ExecStatus.TUPLES_OK)
        except BaseException:  # also a kill: the connection's state is unknown
            self.close()
            raise
        position = result.get_value(0, 0)
        return ([_row(row) for row in orjson.loads(result.get_value(0, 1))],
                None if position is None else int(position))

    def _open(self, deadline: float) -> psycopg.Connection:
        with gevent.Timeout(_remaining(deadline), QueryTimeout):
            conn = self._connect()
        try:
            conn.pgconn.send_prepare(_STATEMENT, self._sql)
            _result(conn.pgconn, deadline, pq.ExecStatus.COMMAND_OK)
        except BaseException:
            conn.close()
            raise
        return conn


def _row(row: list[Any]) -> Row:
    username, ha1, display_name, permissions, role_id, role_permissions, realm = row
    return (username, ha1, display_name, permissions, role_id and uuid.UUID(role_id), role_permissions, realm)


def _result(pgconn: pq.abc.PGconn, deadline: float, expected: pq.ExecStatus) -> pq.abc.PGresult:
    """Send what libpq buffered, then wait for the one statement's result."""
    fd = pgconn.socket
    while pgconn.flush():  # the connection is non-blocking (psycopg sets it): 1 while data remain
        wait_write(fd, timeout=_remaining(deadline), timeout_exc=QueryTimeout())
    result = None
    while True:
        while pgconn.is_busy():
            wait_read(fd, timeout=_remaining(deadline), timeout_exc=QueryTimeout())
            pgconn.consume_input()
        got = pgconn.get_result()
        if got is None:
            break
        result = got
    if result is None or result.status != expected:
        status = pq.ExecStatus(result.status).name if result is not None else "no result"
        raise _error_class(result)(f"directory query: {status}")
    return result


def _error_class(result: pq.abc.PGresult | None) -> type[psycopg.Error]:
    """psycopg's class for the server's SQLSTATE (its name is what the log says), else a generic one."""
    sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE) if result is not None else None
    if not sqlstate:
        return psycopg.OperationalError  # no answer at all: the connection is gone
    try:
        return errors.lookup(sqlstate.decode())
    except KeyError:
        return psycopg.DatabaseError


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise QueryTimeout()
    return remaining
