"""The durability barrier: when a written batch is durable in PostgreSQL, the journal may forget it.

Batches commit with ``synchronous_commit = off``: the journal already holds every FINISHED record
durably, so waiting for PostgreSQL's WAL fsync on every batch would pay for durability twice
(measured: it made up most of the hangup-to-commit p99). This greenlet then, at most every
``interval``, commits one tiny transaction synchronously on a connection of its own: that
flushes PostgreSQL's WAL up to that moment, so every batch committed before it is durable, and
only then does it tell the journal (``journal.commit``; nothing else calls it).

A server crash forgets unflushed commits, and it also ends every session: when the barrier's
connection is lost, whatever was written since the last barrier may be gone. The barrier then
says so (``lost``) and the writer writes it again from the journal (``rewind``). A crash can
also forget an in-memory STARTED/ANSWERED row of the last fraction of a second; like after
``kill -9`` of the daemon, the call's next update (at the latest its journaled FINISHED) writes
it again.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable

import gevent
import gevent.event
import psycopg
from psycopg_pool import PoolTimeout

from eslbridge.store.journal import Journal, JournalError

log = logging.getLogger("eslbridge.store.writer")  # a stage of the writer: operators filter on one name


class DurabilityBarrier:
    """``run`` is the greenlet; ``written()`` is the highest journal seq committed in PostgreSQL
    (the writer's), ``on_lost`` wakes the writer when it must write again from ``durable_seq``."""

    def __init__(self, journal: Journal, connect: Callable[[], psycopg.Connection], written: Callable[[], int],
                 on_lost: Callable[[], None], *, interval: float, max_backoff: float) -> None:
        self._journal = journal
        self._connect = connect
        self._written = written
        self._on_lost = on_lost
        self._interval = interval
        self._max_backoff = max_backoff
        self._conn: psycopg.Connection | None = None
        self.durable_seq = journal.committed_seq  # every seq up to here is flushed to PostgreSQL's WAL
        self.lost = False  # the barrier's session died: commits after durable_seq may be gone
        self._wake = gevent.event.Event()
        self._now = gevent.event.Event()

    def poke(self) -> None:
        """Something new was committed (or a retry is due): run when the interval allows."""
        self._wake.set()

    def hurry(self) -> None:
        """Run without waiting for the interval (a flush is waiting)."""
        self._now.set()

    def rewind(self) -> int:
        """The writer takes the loss in hand: returns the seq to write again after."""
        self.lost = False
        self._wake.set()
        return self.durable_seq

    def run(self) -> None:
        backoff = 0.0
        with contextlib.suppress(psycopg.OperationalError):
            self._conn = self._connect()
        while True:
            self._wake.wait()
            self._wake.clear()
            if not backoff:  # (a retry goes on at once)
                # One WAL flush per interval at most: it covers every batch committed meanwhile.
                self._now.wait(self._interval)
                self._now.clear()
            written = self._written()  # committed before the barrier's transaction begins
            try:
                if written > self.durable_seq and not self.lost:
                    if not self._flush_wal():
                        backoff = 0.2  # after the write loop took the loss in hand
                        gevent.sleep(backoff)
                        self._wake.set()
                        continue
                    self.durable_seq = written
                if self.durable_seq > self._journal.committed_seq:
                    self._journal.commit(self.durable_seq)
                backoff = 0.0
            except (psycopg.OperationalError, PoolTimeout):
                backoff = min(self._max_backoff, max(0.2, backoff * 2))  # the write loop logs the outage
                gevent.sleep(random.uniform(backoff / 2, backoff))
                self._wake.set()
                continue
            except (JournalError, OSError) as e:
                # Only bookkeeping: the records are in PostgreSQL; a restart would replay them again.
                log.error("writer: journal checkpoint failed (%s); retrying", e)
                gevent.sleep(1.0)
                self._wake.set()

    def _flush_wal(self) -> bool:
        """Flush PostgreSQL's WAL up to now; True when every commit of this barrier session's
        lifetime is durable. A transaction with a transaction id commits synchronously (flushing
        the WAL before it, async commits included) even though it writes nothing else."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._conn = self._connect()
            if self._written() > self.durable_seq:
                # Written before this session began: a crash in between may have forgotten them.
                self.lost = True
                self._on_lost()
                return False
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('synchronous_commit', 'on', true), pg_current_xact_id()")
        except psycopg.OperationalError:
            conn.close()
            self._conn = None
            raise
        return True

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
