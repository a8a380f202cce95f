"""LISTEN eslbridge_directory on its own connection, with reconnect (DESIGN section 5).

Notifications (sql/migrations/0005_directory_notify.sql) are read at the libpq level
(``PQconsumeInput`` + ``PQnotifies``), which never blocks, so ``drain()`` can also run
from a request greenlet: a cache hit first drains what already reached the socket, so a
change committed before the request is never answered from the old entry. After every
(re)connect the cache is dropped: notifications sent while we were away are lost.
"""

from __future__ import annotations

import json
import logging
import random
import select
from collections.abc import Callable
from typing import Any

import gevent
import psycopg
from gevent import monkey
from gevent.socket import wait_read

from eslbridge.ops.logs import LogOnce, first_line

CHANNEL = "eslbridge_directory"
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
# TCP keepalives notice a silently dead primary (the socket then errors and we reconnect).
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
# The real poll(2): a zero-timeout readiness check, without going through the gevent hub.
_poll = monkey.get_original("select", "poll") if monkey.is_module_patched("select") else select.poll

log = logging.getLogger(__name__)
_outage = LogOnce(log)  # one line a minute while the database is down

Handler = Callable[[dict[str, Any]], None]


class NotifyListener:
    def __init__(self, dsn: str, on_message: Handler, on_connect: Callable[[], None],
                 connect_timeout: float = 5.0) -> None:
        self._dsn = dsn
        self._on_message = on_message
        self._on_connect = on_connect
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection | None = None
        self._lost = False  # the socket failed; _run closes it and reconnects
        self._poller: Any = None
        self._greenlet: gevent.Greenlet | None = None
        self.connects = 0  # how many times LISTEN was (re)established: tests and metrics read it
        self.messages = 0

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._lost

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None
        self._close()

    def _run(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            try:
                self._connect()
                delay = BACKOFF_FIRST
                while self.drain():
                    wait_read(self._conn.fileno())
            except psycopg.Error as exc:
                _outage.warning("listen-failed", "directory LISTEN connection failed: %s", first_line(exc))
            self._close()
            gevent.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, BACKOFF_MAX)

    def _connect(self) -> None:
        conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=self._connect_timeout, **_KEEPALIVES)
        conn.execute(f"LISTEN {CHANNEL}")
        self._conn = conn
        self._poller = _poll()
        self._poller.register(conn.fileno(), select.POLLIN)
        self.connects += 1
        self._on_connect()

    def _close(self) -> None:
        conn, self._conn, self._poller, self._lost = self._conn, None, None, False
        if conn is not None:
            conn.close()

    def pending(self) -> bool:
        """True when bytes from the server wait on the socket (cheap: one poll syscall)."""
        return self._poller is not None and not self._lost and bool(self._poller.poll(0))

    def drain(self) -> bool:
        """Handle every notification that reached the socket; never blocks. False when the
        connection is gone (only ``_run`` closes it: it may be waiting on the descriptor)."""
        conn = self._conn
        if conn is None or self._lost:
            return False
        pgconn = conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.OperationalError as exc:
            self._lost = True
            _outage.warning("listen-lost", "directory LISTEN connection lost: %s", first_line(exc))
            return False
        while (notify := pgconn.notifies()) is not None:
            self.messages += 1
            try:
                payload = json.loads(notify.extra)
            except ValueError:
                log.warning("ignoring a malformed %s notification", CHANNEL)
                continue
            if isinstance(payload, dict):
                self._on_message(payload)
        return True
