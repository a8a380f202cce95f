"""A node's resync after an ESL (re)connect: snapshot, correlator and database (DESIGN sections 5, 9).

Runs in the node's ESL consumer greenlet, which holds the node's later events meanwhile (they
queue in order, the reader keeps reading), so the correlator sees nothing in between. Steps:

1. wait (bounded) until the writer has replayed its journal: finished records of calls that
   ended before a restart close their rows with exact times, not with a resync's guess; and at
   least ``SETTLE`` after the snapshot: another daemon on the same node writes the first row of
   a call created just before our subscription within that time, and a row read is re-adopted
   under its key, where a row not yet written would be opened a second time from the snapshot;
2. read this node's Active rows and the newest event stored for it (``eslbridge.store.reconcile``);
3. run the correlator's resync slice by slice, submitting updates and closing stale rows (and
   opening unknown live channels only when the Active rows were read), and yield to the event
   loop after every slice: a snapshot of 100,000 channels must never stall
   the directory or the ESL reader for more than 100 ms at a time;
4. ``HOLD`` later, write the live channels still held because the snapshot was all that was known
   of them (``Correlator.settle``), under the key of a row stored for them meanwhile, if any, and
   the calls that wait for channels which hung up before the subscription (``Correlator.close_unheard``).

Automatic garbage collection is off while it runs (and while the snapshot is parsed), and what
it built is frozen afterwards (``gc.freeze``; ``eslbridge.esl.snapshot.no_full_collections``): a
full collection walks every object of every live call (seconds with 100,000 calls on a loaded
2-core host, measured by tests/test_resync_stall.py), and the resync creates objects fast enough
to trigger several. Live calls hold no reference cycles, so freezing them
costs nothing: they are still freed by reference counting when they end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import gevent
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from eslbridge.calls.correlator import Correlator
from eslbridge.calls.reconcile import ActiveRow, Closure
from eslbridge.calls.records import RecordUpdate
from eslbridge.esl.snapshot import no_full_collections
from eslbridge.store.reconcile import close_rows, load_active, load_stored

log = logging.getLogger(__name__)

REPLAY_WAIT = 30.0  # seconds a resync waits for the journal's replay before reading Active rows
SETTLE = 1.0  # seconds between the snapshot and reading the Active rows, at least
# Seconds a call known only from the snapshot may wait for its root's own event (its exact start)
# before it is written anyway, under a stored row's key if one appeared meanwhile. Short: a daemon
# killed meanwhile loses the call, and a whole-second row is made exact by the writer later
# (eslbridge.store.startkey); the wait only spares that key move.
HOLD = 0.5
RELEASE_SLICE = 10_000  # snapshot rows freed between two yields once a resync is done


@dataclass(frozen=True)
class ResyncResult:
    channels: int  # live channels in the snapshot
    active: int  # Active rows of the node read from the database
    updates: int  # record updates submitted
    closed: int  # stale Active rows closed
    complete: bool  # False: the database could not be read or written; ask for a snapshot again


def _pause() -> None:
    gevent.idle()


def _release(rows: list) -> None:
    """Free a snapshot's rows a slice at a time: 100,000 row dicts freed at once when the last
    reference goes hold the loop for ~80 ms."""
    while rows:
        del rows[-RELEASE_SLICE:]
        gevent.idle()


class Resync:
    def __init__(self, pool: ConnectionPool, submit: Callable[[RecordUpdate], None],
                 replaying: Callable[[], bool], connect_timeout: float,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self._pool = pool
        self._submit = submit
        self._replaying = replaying
        self._timeout = connect_timeout
        self._stopping = stopping  # a stop drains the node's queue: no waiting for the database then

    def run(self, correlator: Correlator, channels: list[dict[str, str]]) -> ResyncResult:
        """One resync of ``correlator``'s node against ``channels``; EventError on bad rows.
        ``channels`` is emptied once used (see ``_release``)."""
        detected = datetime.now(UTC)
        active, last_event, complete = self._active_rows(correlator.node, time.monotonic() + SETTLE)
        updates = closed = 0
        with no_full_collections():
            for step, closures in correlator.resync_slices(channels, detected, active, last_event,
                                                           open_new=complete):
                for update in step:
                    self._submit(update)
                updates += len(step)
                if closures:
                    done = self.close(correlator.node, closures)
                    complete = complete and done is not None
                    closed += done or 0
                gevent.idle()
        gevent.spawn_later(HOLD, self.settle, correlator)
        result = ResyncResult(len(channels), len(active), updates, closed, complete)
        _release(channels)
        return result

    def settle(self, correlator: Correlator, timeout: float | None = None) -> None:
        """Write the calls still held since the snapshot (Correlator.settle); when PostgreSQL cannot
        be read, under the snapshot's whole second: a row that may be doubled beats a lost call.
        So are the calls that wait for channels which hung up before the subscription
        (Correlator.close_unheard)."""
        for update in correlator.close_unheard():
            self._submit(update)
        uuids = correlator.provisional_calls()
        if not uuids:
            return
        stored: dict[str, int] = {}
        try:
            with self._pool.connection(timeout=timeout or self._timeout) as conn:
                stored = load_stored(conn, correlator.node, uuids)
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("%s: writing %d held call(s) without the stored rows (%s)", correlator.node, len(uuids),
                        type(exc).__name__)
        for update in correlator.settle(stored):
            self._submit(update)

    def _active_rows(self, node: str, settled: float) -> tuple[list[ActiveRow], datetime | None, bool]:
        """The node's Active rows and newest stored event; ([], None, False) when PostgreSQL is away."""
        deadline = time.monotonic() + REPLAY_WAIT
        while self._replaying() and time.monotonic() < deadline and not self._stopping():
            gevent.sleep(0.05)
        if self._stopping():
            return [], None, False
        gevent.sleep(max(0.0, settled - time.monotonic()))
        try:
            with self._pool.connection(timeout=self._timeout) as conn:
                rows, last_event = load_active(conn, node, _pause)
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("%s: resync without the database's Active rows (%s)", node, type(exc).__name__)
            return [], None, False
        return rows, last_event, True

    def close(self, node: str, closures: list[Closure]) -> int | None:
        """Close stale Active rows; how many, or None when PostgreSQL could not be reached (the
        rows stay Active: the next resync finds them again)."""
        try:
            with self._pool.connection(timeout=self._timeout) as conn:
                return close_rows(conn, node, closures, _pause)
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("%s: could not close %d stale Active row(s) (%s)", node, len(closures), type(exc).__name__)
            return None
