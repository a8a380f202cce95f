"""The mod_xml_curl directory service (DESIGN section 5): users table -> FreeSWITCH XML.

Fail closed everywhere: an accepted request always gets HTTP 200, and "not found" unless an
enabled user with an ``a1-hash`` was found in time. (Any other status makes FreeSWITCH fall
back to its static directory, whose stock users have password 1234.) Requests from outside
``allow`` or without the right basic-auth credentials get 403 and nothing else.

Runs inside a gevent process that called ``gevent.monkey.patch_all()`` first (psycopg then
connects cooperatively); concurrent misses share one query (lookup.py), run on a connection of
the lookups' own (userquery.py), or split between it and a streaming standby (replica.py).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

from psycopg_pool import ConnectionPool

from eslbridge.config import DirectoryConfig
from eslbridge.directory.cache import DirectoryCache
from eslbridge.directory.gate import RequestGate
from eslbridge.directory.http import HttpServer
from eslbridge.directory.invalidation import FlushHook, Invalidation
from eslbridge.directory.lookup import LookupFailed, UserLookups
from eslbridge.directory.replica import Fences, ReplicaRouter
from eslbridge.directory.request import BadRequest, Lookup, lookup_of
from eslbridge.directory.userquery import PRIMARY_POSITION, STANDBY_POSITION, UserQuery
from eslbridge.directory.xml import DIAL_STRING, NOT_FOUND, user_document
from eslbridge.ops.netgate import AcceptGate
from eslbridge.store.notify import NotifyListener
from eslbridge.store.pool import own_connection

# mod_xml_curl's `timeout` in conf/freeswitch/xml_curl.conf.xml must stay above this (e.g. 5 s):
# we answer "not found" ourselves before FreeSWITCH gives up and falls back to static files.
DEADLINE = 2.0
MAX_BODY = 64 * 1024  # real requests are 1-3 KiB; user_call adds the originate variables
DB_RETRY_AFTER = 1.0  # after a database failure, misses answer "not found" at once for this long
REPLICA_MAX_LAG = 5.0  # database.replica_max_lag's default
USER_CONTEXT = "default"

log = logging.getLogger(__name__)


def toll_allow(role_permissions: Iterable[str] | None, user_permissions: Any) -> str:
    """The role's call permissions (``call:create,call:transfer``...), minus ``call:create`` when
    the user's own ``permissions.can_call`` is false; dialplans match on it like vanilla's toll_allow."""
    perms = sorted(p for p in (role_permissions or ()) if p.startswith("call:"))
    if isinstance(user_permissions, dict) and user_permissions.get("can_call") is False:
        perms = [p for p in perms if p != "call:create"]
    return ",".join(perms)


def render_user(lookup: Lookup, row: tuple, cacheable_ms: int | None) -> bytes:
    username, ha1, display_name, user_permissions, _role_id, role_permissions = row[:6]
    return user_document(
        lookup.realm,
        username,
        params=[("a1-hash", ha1), ("dial-string", DIAL_STRING)],
        variables=[
            ("user_context", USER_CONTEXT),
            ("effective_caller_id_name", display_name or username),
            ("effective_caller_id_number", username),
            ("accountcode", username),
            ("toll_allow", toll_allow(role_permissions, user_permissions)),
        ],
        cacheable_ms=cacheable_ms,
    )


class DirectoryService:
    def __init__(self, config: DirectoryConfig, pool_or_dsn: ConnectionPool | str, *,
                 flush_hook: FlushHook | None = None, metrics: Any = None,
                 deadline: float = DEADLINE, replica_dsn: str | None = None,
                 replica_max_lag: float = REPLICA_MAX_LAG) -> None:
        self.config = config
        self._metrics = metrics
        self._deadline = deadline
        self.cache = DirectoryCache(config.cache_seconds)
        # FreeSWITCH may cache our answer as long as we do only when we can flush it on changes.
        self._cacheable_ms = config.cache_seconds * 1000 if flush_hook and config.cache_seconds else None
        conninfo = pool_or_dsn if isinstance(pool_or_dsn, str) else pool_or_dsn.conninfo
        self.replica: ReplicaRouter | None = None
        self.invalidation = Invalidation(self.cache, None, flush_hook, self._count)
        self.listener = NotifyListener(conninfo, self.invalidation.on_notify, self.invalidation.on_listen)
        # One query is in flight at a time (lookup.py), so lookups hold a connection of their own
        # (with the pool's settings) instead of a checkout per query.
        primary = functools.partial(own_connection, pool_or_dsn, deadline)
        if replica_dsn:
            self.replica = ReplicaRouter(
                UserQuery(primary, PRIMARY_POSITION),
                UserQuery(functools.partial(own_connection, replica_dsn, deadline), STANDBY_POSITION),
                Fences(replica_max_lag), lambda: self.listener.connected, metrics)
            self.invalidation.replica = self.replica
        self.lookups = UserLookups(self.replica or UserQuery(primary), self.cache, DB_RETRY_AFTER)
        self._counters: dict[tuple[str, str], Any] = {}  # bound metric children: labels() per request is slow
        # The accept gate refuses outsiders at accept; the request gate checks again (defence in depth).
        self.accept_gate = AcceptGate("directory", config.allow, config.connections,
                                on_refuse=self._refused)
        self.gate = RequestGate(config, self.accept_gate.allow, self._count).check
        self._server = HttpServer(config.listen, self, self.accept_gate, max_body=MAX_BODY)

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address

    def start(self) -> None:
        self.listener.start()
        self.lookups.start()
        if self.replica is not None:
            self.replica.start()
        self._server.start()
        log.info("directory service on http://%s:%d%s", self.address[0], self.address[1], self.config.path)

    def stop(self) -> None:
        self._server.stop()
        self.lookups.stop()
        self.listener.stop()

    # --- HTTP (http.App: ``gate`` is the RequestGate's) ---------------------------------------

    def oversized(self) -> tuple[int, bytes]:
        self._count("oversized")
        return 200, NOT_FOUND

    def answer(self, body: bytes) -> bytes:
        started = time.perf_counter()
        outcome, xml = self._answer(body)
        self._count(outcome)
        if self._metrics is not None:
            self._metrics.directory_seconds.observe(time.perf_counter() - started)
        return xml

    # --- lookups -----------------------------------------------------------------------------

    def _answer(self, body: bytes) -> tuple[str, bytes]:
        try:
            lookup = lookup_of(body)
        except BadRequest:
            return "malformed", NOT_FOUND
        if lookup is None:
            return "not_served", NOT_FOUND
        key = (lookup.username, lookup.realm)
        if self.listener.pending():
            self.listener.drain()  # a change committed before this request must win over the cache
        entry = self.cache.get(key)
        if entry is not None:
            self._cache_result("hit")
            return ("found" if entry.role_id is not None else "not_found"), entry.body
        self._cache_result("miss")
        try:
            row, generation = self.lookups.fetch(key, time.monotonic() + self._deadline)
        except LookupFailed as failed:  # fail closed, never a 500
            return failed.outcome, NOT_FOUND
        if row is None or not row[1]:
            self.cache.put(key, NOT_FOUND, None, generation)
            return "not_found", NOT_FOUND
        xml = render_user(lookup, row, self._cacheable_ms)
        self.cache.put(key, xml, row[4] or _NO_ROLE, generation)
        return "found", xml

    # --- helpers -----------------------------------------------------------------------------

    def _refused(self, kind: str) -> None:
        self._count("forbidden" if kind == "refused_address" else "busy")

    def _count(self, outcome: str) -> None:
        self._inc("directory_requests", outcome)

    def _cache_result(self, result: str) -> None:
        self._inc("cache_lookups", result)

    def _inc(self, metric: str, label: str) -> None:
        if self._metrics is None:
            return
        child = self._counters.get((metric, label))
        if child is None:
            child = self._counters[metric, label] = getattr(self._metrics, metric).labels(label)
        child.inc()


# Marks a found user without a role in the cache (None there means "not found").
_NO_ROLE = uuid.UUID(int=0)
