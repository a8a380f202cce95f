"""(username, realm) -> user id, in memory, for the correlator's local-user decisions.

The correlator asks for every new call on the ESL consumer's hot path, so the
answer must not cost a database round trip. The whole mapping is small (one
entry per SIP user); it is loaded on every (re)connect of a LISTEN connection
and kept current by the users trigger's notifications (migration 0005), using
the directory's NotifyListener. ``loaded`` is set once the first full load
succeeded: the daemon's ESL intake waits for it (DESIGN section 9: nothing the
correlator decides depends on start-up timing), so a call placed in the first
moments after start is attributed exactly as it would be an hour later.
"""

from __future__ import annotations

import logging
from typing import Any

import gevent.event
import psycopg

from eslbridge.ops.logs import LogOnce
from eslbridge.store.notify import NotifyListener

log = logging.getLogger(__name__)
_outage = LogOnce(log)  # one line a minute while the database is down


class UserIndex:
    def __init__(self, dsn: str, *, connect_timeout: float = 5.0) -> None:
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._ids: dict[tuple[str, str], str] = {}
        self.loaded = gevent.event.Event()  # set by the first successful full load
        self._listener = NotifyListener(dsn, self._on_message, self._reload, connect_timeout=connect_timeout)

    def __len__(self) -> int:
        return len(self._ids)

    def lookup(self, username: str, realm: str) -> str | None:
        return self._ids.get((username, realm.lower()))

    @property
    def connected(self) -> bool:
        return self._listener.connected

    def start(self) -> None:
        self._listener.start()

    def stop(self) -> None:
        self._listener.stop()

    def _reload(self) -> None:
        """Full load: notifications may have been missed while the listener was away."""
        try:
            with psycopg.connect(self._dsn, connect_timeout=max(1, round(self._connect_timeout))) as conn:
                rows = conn.execute("SELECT username, lower(realm), id::text FROM users").fetchall()
        except psycopg.Error as exc:
            _outage.warning("reload-failed", "user index reload failed: %s", type(exc).__name__)
            return
        self._ids = {(u, r): i for u, r, i in rows}
        self.loaded.set()
        log.info("user index loaded: %d users", len(self._ids))

    def _on_message(self, payload: dict[str, Any]) -> None:
        # Users come and go rarely; a reload keeps this obviously right (ids, renames, truncates, role changes).
        if payload.get("table") == "users":
            self._reload()
