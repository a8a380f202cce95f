"""users.last_login from FreeSWITCH's `CUSTOM sofia::register` events (SIPCall's last_login).

The event names the authenticated identity in `username`/`realm` (what the
digest was checked against), and its `Event-Date-Timestamp` (microseconds
since the epoch) is when FreeSWITCH accepted the REGISTER. Unregistrations
(`sofia::unregister`, or `expires: 0`) are not logins.

`LoginRecorder` gives them the writer's guarantees through a database outage: each flush first
appends what came in to a journal of its own (sealed: usernames are personal data) and fsyncs it,
then updates PostgreSQL, and only then lets the journal forget them. While PostgreSQL is down the
logins wait in the journal (coalesced per user in memory), survive SIGTERM and `kill -9`, and are
written when it is back, after a restart too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import NamedTuple

import gevent
import orjson
import psycopg

from eslbridge.store.journal import Journal, JournalError, PayloadSealer

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0  # logins are batched: one UPDATE a second at most, whatever the REGISTER rate


class Login(NamedTuple):
    username: str
    realm: str
    at: datetime


def login_from_event(event: dict[str, str]) -> Login | None:
    if event.get("Event-Name") != "CUSTOM" or event.get("Event-Subclass") != "sofia::register":
        return None
    if event.get("expires") == "0":
        return None
    user = event.get("username") or event.get("user_name")
    realm = event.get("realm") or event.get("domain_name")
    stamp = event.get("Event-Date-Timestamp", "")
    if not (user and realm and stamp.isdigit()):
        return None
    return Login(user, realm, datetime.fromtimestamp(int(stamp) / 1_000_000, tz=UTC))


def record_logins(conn: psycopg.Connection, logins: Iterable[Login]) -> int:
    """Move last_login forward (never back: events may be replayed or arrive late). Returns rows changed."""
    changed = 0
    with conn.cursor() as cur:
        for login in logins:
            cur.execute(
                """UPDATE users SET last_login = %s
                    WHERE username = %s AND realm = %s AND (last_login IS NULL OR last_login < %s)""",
                (login.at, login.username, login.realm, login.at),
            )
            changed += cur.rowcount
    return changed


def _encode(login: Login) -> bytes:
    return orjson.dumps([login.username, login.realm, login.at.isoformat()])


def _decode(payload: bytes) -> Login:
    user, realm, at = orjson.loads(payload)
    return Login(user, realm, datetime.fromisoformat(at))


Connect = Callable[[], AbstractContextManager[psycopg.Connection]]


class LoginRecorder:
    """Logins from events -> journal -> users.last_login; see the module docstring."""

    def __init__(self, journal: Journal, connect: Connect) -> None:
        self._journal = journal
        self._connect = connect
        self._incoming: list[Login] = []
        # Journaled, not yet in PostgreSQL: the latest login per user (replays are monotonic anyway).
        self._waiting: dict[tuple[str, str], Login] = {}
        for _, payload in journal.replay():
            self._keep(_decode(payload))
        self._down = False

    @property
    def sealer(self) -> PayloadSealer | None:
        return self._journal.sealer

    @sealer.setter
    def sealer(self, sealer: PayloadSealer) -> None:
        """A reloaded keyring's (SIGHUP), like the record journal's."""
        self._journal.sealer = sealer

    def close(self) -> None:
        self._journal.close()

    def add(self, login: Login) -> None:
        """From the ESL consumer: never blocks."""
        self._incoming.append(login)

    @property
    def backlog(self) -> int:
        return len(self._incoming) + len(self._waiting)

    def _keep(self, login: Login) -> None:
        key = (login.username, login.realm)
        old = self._waiting.get(key)
        if old is None or old.at < login.at:
            self._waiting[key] = login

    def run(self) -> None:
        """The flushing greenlet's body: a flush every FLUSH_SECONDS, until killed."""
        while True:
            gevent.sleep(FLUSH_SECONDS)
            self.flush()

    def flush(self) -> bool:
        """Journal what came in, then write everything waiting; True when PostgreSQL has it all."""
        if self._incoming:
            batch, self._incoming = self._incoming, []
            try:
                self._journal.append_many([_encode(login) for login in batch])
            except JournalError as e:  # still written below when PostgreSQL is up; only not durable
                log.error("registrations: %d login(s) not journaled: %s", len(batch), e)
            for login in batch:
                self._keep(login)
        if not self._waiting:
            return True
        upto = self._journal.last_seq
        logins = list(self._waiting.values())
        try:
            with self._connect() as conn:
                record_logins(conn, logins)
        except (psycopg.Error, OSError) as e:  # (psycopg_pool's PoolTimeout is a psycopg.Error)
            if not self._down:
                self._down = True
                log.warning("registrations: PostgreSQL unavailable (%s); %d login(s) kept in the journal",
                            type(e).__name__, len(logins))
            return False
        if self._down:
            self._down = False
            log.info("registrations: PostgreSQL back; %d waiting login(s) recorded", len(logins))
        self._waiting.clear()  # (one caller at a time: nothing was added meanwhile)
        try:
            self._journal.commit(upto)
        except JournalError as e:  # only bookkeeping: a restart writes them again (monotonic, harmless)
            log.error("registrations: journal checkpoint failed: %s", e)
        return True
