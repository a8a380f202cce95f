"""Directory users read from PostgreSQL, with concurrent misses coalesced into one query.

One query is in flight at a time. Misses that arrive meanwhile queue; the next query fetches
every queued (username, realm) at once, and requests for the same key share its row. Under
load a query carries tens of keys, so the database does one round trip where it did tens
(measured here: about 1,650 uncached requests/s with a SELECT per request).

Guarantees kept from the one-query-per-request design:
- a request only gets a row read by a query that started after it arrived (it joins the queue,
  never the query in flight), so an invalidation handled before the request always wins;
- ``generation`` is the cache generation read just before the query: the caller stores its
  answer only if no invalidation came in between (``DirectoryCache.put``);
- every waiter is answered by its own deadline: a batch's time limit is its earliest waiter's
  deadline, and the batch before it ended by an earlier one;
- a database error fails every waiter of the batch closed, and for ``retry_after`` seconds
  after it misses fail at once instead of queueing behind a dead database (the query's
  connection is closed on any failure and opened again by the next query).
"""

from __future__ import annotations

import logging
import time

import gevent
from gevent.event import Event

from eslbridge.directory.cache import DirectoryCache
from eslbridge.directory.userquery import Key, QueryTimeout, Row, UserQuery
from eslbridge.ops.logs import LogOnce

log = logging.getLogger(__name__)
_outage = LogOnce(log)  # one line a minute while the database is down


class LookupFailed(Exception):
    """No answer from the database; ``outcome`` says why (a metrics label)."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class _Batch:
    __slots__ = ("deadline", "done", "failure", "generation", "keys", "rows")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.keys: dict[Key, None] = {}  # an ordered set: a key asked twice is fetched once
        self.done = Event()
        self.rows: dict[Key, Row] | None = None  # set when the query succeeded
        self.failure = "db_error"  # the outcome for every waiter when rows stays None
        self.generation = -1


class UserLookups:
    def __init__(self, query: UserQuery, cache: DirectoryCache, retry_after: float) -> None:
        self._query = query
        self._cache = cache
        self._retry_after = retry_after
        self._queued: _Batch | None = None
        self._wake = Event()
        self._worker: gevent.Greenlet | None = None
        self._down_until = 0.0
        self.queries = 0  # database round trips; with ``keys``, the batching ratio (tests read them)
        self.keys = 0

    def start(self) -> None:
        self._worker = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.kill()  # _run_batch's finally releases the waiters of the batch in flight
            self._worker = None
        self._query.close()
        batch, self._queued = self._queued, None
        if batch is not None:
            batch.done.set()

    def fetch(self, key: Key, deadline: float) -> tuple[Row | None, int]:
        """``key``'s enabled user (None: there is none) and the cache generation read before the
        query. ``deadline`` is a ``time.monotonic()`` value. Raises LookupFailed."""
        if time.monotonic() < self._down_until:
            raise LookupFailed("db_unavailable")
        batch = self._queued
        if batch is None:
            batch = self._queued = _Batch(deadline)
            self._wake.set()
        elif deadline < batch.deadline:
            batch.deadline = deadline
        batch.keys[key] = None
        # No timeout of our own: the worker ends every batch by its deadline (a gevent.Timeout per
        # request would cost more than the rest of a cached answer).
        batch.done.wait()
        if batch.rows is None:
            raise LookupFailed(batch.failure)
        return batch.rows.get(key), batch.generation

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while (batch := self._queued) is not None:
                self._queued = None
                self._run_batch(batch)

    def _run_batch(self, batch: _Batch) -> None:
        try:
            if time.monotonic() < self._down_until:
                batch.failure = "db_unavailable"
                return
            batch.generation = self._cache.generation
            self.queries += 1
            self.keys += len(batch.keys)
            rows = self._query.run(batch.keys, batch.deadline)
            batch.rows = {(row[0], row[6]): row for row in rows}
        except QueryTimeout:
            batch.failure = "timeout"
        except Exception as exc:  # any database failure: fail closed, never a 500
            self._down_until = time.monotonic() + self._retry_after
            _outage.warning("lookup-failed", "directory lookup failed (answering not found): %s", type(exc).__name__)
            batch.failure = "db_error"
        finally:
            batch.done.set()
