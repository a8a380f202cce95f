"""The record writer: correlator output -> PostgreSQL, exactly once (DESIGN sections 1, 8, 9).

``submit`` never blocks and never drops. What happens to an update depends on its stage:

* FINISHED updates are the durable ones. They are appended to the on-disk journal (group
  commit: one fsync for everything submitted meanwhile, in gevent's threadpool) and only then
  acknowledged (``on_durable``). While the in-memory queue has room they are also kept there,
  from the moment they are written (the fsync runs meanwhile: it is not on the commit path),
  so the writer does not read them back; once it is full (or the DB is down long enough for it
  to fill), later ones live in the journal only and the writer replays the journal, in seq
  order, until it has caught up. After ``kill -9`` a restart replays what was not yet durable
  in PostgreSQL plus at most the batches made durable since the last journal checkpoint,
  which the idempotent upserts absorb.
* Batches commit with ``synchronous_commit = off``: the journal already holds every FINISHED
  record durably, so waiting for PostgreSQL's WAL fsync on every batch would pay for
  durability twice (measured: it made up most of the hangup-to-commit p99). A greenlet of
  its own (the durability barrier) then, at most every ``durability_interval``, commits one
  tiny transaction synchronously on a dedicated connection: that flushes PostgreSQL's WAL up
  to that moment, so every batch committed before it is durable, and only then may the
  journal forget them (``journal.commit``). A server crash forgets unflushed commits, and it
  also ends every session: when the barrier's connection is lost, whatever was written since
  the last barrier is written again from the journal (``_lost``). A crash can also forget an
  in-memory STARTED/ANSWERED row of the last fraction of a second; like after ``kill -9`` of
  the daemon, the call's next update (at the latest its journaled FINISHED) writes it again.
* STARTED and ANSWERED updates are in memory only, coalesced per call (the highest stage, the
  latest on a tie, wins): each carries the call's full state, so a later update supersedes
  an earlier one, and a FINISHED update supersedes them all. Their number is bounded by the
  calls in flight. A batch takes FINISHED first, then calls' first rows (STARTED), then
  updates of rows already written (ANSWERED): under overload the ANSWERED ones wait and are
  mostly superseded by their FINISHED, so the writer sheds work instead of falling behind
  (an ANSWERED update is then late, or skipped in favour of the final row, never lost).
  On ``stop`` they go to the journal too (replays are monotonic, any order converges), so a
  restart during an outage still shows the live calls.
* If the journal cannot take a FINISHED update (full, disk error, unserialisable), it is kept
  in memory like a STARTED one: still written when PostgreSQL is up, logged as not durable.

One writer greenlet takes batches (queue first, then the journal when it spilled), encrypts
them (``eslbridge.store.rows``), upserts call_records, calls and call_events in one
transaction per lane (``lanes`` connections; a call's rows all in one lane; see
``_write_batch``) (``eslbridge.store.upsert``), then commits the journal. Encoding and PostgreSQL
overlap: while a batch is being written (the writer waits on the socket, and gevent runs
others), a prefetch greenlet takes and encrypts the next batch, so the two processes' work
runs on two cores instead of in turn. FINISHED updates (the journaled queue) go into a batch
before any STARTED/ANSWERED one: hangup-to-commit latency is what DESIGN section 11 bounds.
Connection errors and PoolTimeout mean "DB down": the batch is retried with jittered
exponential backoff while submits keep going to the journal. Any other database error (or a
record the mapping refuses) is isolated by retrying the batch's records one by one; the ones
PostgreSQL still refuses are logged (call UUID and SQLSTATE, never values), counted as rejected
and moved to the quarantine (``eslbridge.store.quarantine``: durable, listed and retried by a
command), so one bad record cannot wedge the journal and none is dropped.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event
import gevent.pool
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from eslbridge.calls.records import RecordUpdate, Stage
from eslbridge.keyring import Keyring
from eslbridge.store.journal import Journal, JournalError
from eslbridge.store.pool import own_connection
from eslbridge.store.quarantine import Quarantine
from eslbridge.store.rows import BatchRows, FieldEncoder, batch_rows
from eslbridge.store.serialize import decode_update, encode_update
from eslbridge.store.startkey import Settled
from eslbridge.store.upsert import DEFAULT_METHOD, METHODS

log = logging.getLogger(__name__)

LATENCY_WINDOW = 20_000  # recent submit-to-commit latencies of FINISHED updates kept for stats()
PROBE_INTERVAL = 5.0  # idle seconds between `SELECT 1` probes, so db_up stays true to life
JOURNAL_PROBE_INTERVAL = 1.0  # seconds between checks of a failed journal

# (seq or None, update, monotonic submit time or None); seq None: not in the journal.
Item = tuple[int | None, RecordUpdate, float | None]


@dataclass(frozen=True)
class WriterStats:
    queue_depth: int  # journaled updates waiting in memory
    pending: int  # in-memory-only updates (STARTED/ANSWERED, coalesced; not yet journaled FINISHED)
    journal_bytes: int
    journal_backlog: int  # journaled seqs not yet in PostgreSQL
    records_written: int  # updates committed (each replayed one counts again)
    rejected: int
    batches: int
    db_up: bool
    journal_failure: str | None  # why the journal cannot make records durable now (errno kind), else None
    latency_p50: float | None  # seconds from submit to commit, over the recent window
    latency_p99: float | None


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _supersede(old: RecordUpdate, new: RecordUpdate) -> RecordUpdate:
    """One update standing for both: the later state (an older stage never wins) with both
    updates' lifecycle events, which are increments, not state."""
    newer = new if new.stage >= old.stage else old
    return RecordUpdate(newer.stage, newer.record, [*old.events, *new.events])


class Writer:
    """Batches ``RecordUpdate``s into idempotent upserts; see the module docstring.

    ``pool_or_dsn``: a ``psycopg_pool.ConnectionPool`` (a connection per batch) or a conninfo
    string (one dedicated connection, reconnected when lost). ``keyring`` may be replaced at
    any time (SIGHUP): the next batch encrypts with the new one.
    """

    def __init__(self, pool_or_dsn: ConnectionPool | str, keyring: Keyring, journal: Journal, *,
                 batch_size: int = 500, flush_interval: float = 0.05, queue_max: int = 20_000,
                 method: str = DEFAULT_METHOD, metrics: Any = None,
                 on_durable: Callable[[list[RecordUpdate]], None] | None = None,
                 connect_timeout: float = 5.0, max_backoff: float = 10.0, lanes: int = 2,
                 durability_interval: float = 0.1, quarantine: Quarantine | None = None) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown write method {method!r}; expected one of {sorted(METHODS)}")
        if batch_size < 1 or queue_max < 1 or flush_interval <= 0 or lanes < 1:
            raise ValueError("batch_size, queue_max and lanes must be >= 1, flush_interval > 0")
        self._encoder = FieldEncoder(keyring)
        self._source = pool_or_dsn
        if isinstance(pool_or_dsn, ConnectionPool):
            lanes = max(1, min(lanes, pool_or_dsn.max_size - 1))  # leave the pool a connection for upkeep
        self._conns: list[psycopg.Connection | None] = [None] * lanes
        self._journal = journal
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._queue_max = queue_max
        self._method = METHODS[method]
        self._metrics = metrics
        self._on_durable = on_durable
        self._connect_timeout = connect_timeout
        self._max_backoff = max_backoff
        self._durability_interval = durability_interval
        self._quarantine = quarantine

        self._incoming: list[tuple[RecordUpdate, float]] = []  # FINISHED, waiting for the journal
        self._pending: dict[tuple[str, Any], Item] = {}  # in memory only, coalesced per call: new rows
        self._later: dict[tuple[str, Any], Item] = {}  # ... updates of rows already on their way
        self._ready: deque[Item] = deque()  # journaled, in seq order
        self._overflow = True  # some journaled seqs are only on disk: replay first (also at start)
        self._written_seq = journal.committed_seq  # every seq up to here is committed in PostgreSQL ...
        self._durable_seq = journal.committed_seq  # ... and up to here also flushed to its WAL
        self._barrier_conn: psycopg.Connection | None = None
        self._lost = False  # the barrier's session died: commits after _durable_seq may be gone
        self._settled = Settled()  # calls whose exact-start rows need no start-key claim any more
        self._last_seq = journal.last_seq  # highest seq the journal acknowledged to us
        self._in_flight: list[Item] = []
        self._in_flight_rows: BatchRows | None = None  # _in_flight's rows when prefetched
        self._next: list[Item] = []  # taken (and encoded) by the prefetcher while _in_flight was written
        self._next_rows: BatchRows | None = None
        self._prefetcher: gevent.Greenlet | None = None
        self._journaling = False
        self._syncs = gevent.pool.Group()  # journal fsyncs under way (_sync_journal)
        self._busy = False
        self._db_up = False
        self._records_written = 0
        self._rejected = 0
        self._batches = 0
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._wake = gevent.event.Event()
        self._journal_wake = gevent.event.Event()
        self._commit_wake = gevent.event.Event()
        self._barrier_now = gevent.event.Event()  # flush(): do not wait for durability_interval
        self._greenlets: list[gevent.Greenlet] = []
        self._journal_failure: str | None = None
        if metrics is not None:
            metrics.queue_depth.set_function(lambda: len(self._ready) + len(self._pending) + len(self._later)
                                           + len(self._incoming))
            metrics.journal_bytes.set_function(lambda: self._journal.bytes_used)
            metrics.journal_writable.set(1)
            if quarantine is not None:
                metrics.quarantine_bytes.set_function(lambda: quarantine.bytes_used)

    # --- public ---------------------------------------------------------------------------

    @property
    def keyring(self) -> Keyring:
        return self._encoder.keyring

    @keyring.setter
    def keyring(self, keyring: Keyring) -> None:
        """A reloaded keyring (SIGHUP, rotation): the next batch encrypts with its active key."""
        self._encoder = FieldEncoder(keyring)

    def start(self) -> None:
        """Spawn the journal and writer greenlets; the writer replays the journal first."""
        if not self._greenlets:
            # The barrier first: its session should begin before the first batch commits (see _wal_barrier).
            self._greenlets = [gevent.spawn(self._commit_loop), gevent.spawn(self._journal_loop),
                               gevent.spawn(self._write_loop)]

    def submit(self, update: RecordUpdate) -> None:
        """Queue one update. Never blocks, never raises on load or outages."""
        now = time.monotonic()
        rec = update.record
        key = (rec.call_uuid, rec.start_time)
        first = self._pending.pop(key, None)
        kept = first if first is not None else self._later.pop(key, None)
        if kept is not None:
            update = _supersede(kept[1], update)
        if update.stage >= Stage.FINISHED:
            self._incoming.append((update, now))
            self._journal_wake.set()
        else:
            # A call's first row keeps its priority (DESIGN: the row within a second); a later
            # update of a row already written or being written can wait for room.
            queue = self._later if first is None and update.stage > Stage.STARTED else self._pending
            queue[key] = (None, update, now if kept is None else kept[2])
            self._wake.set()

    @property
    def replaying(self) -> bool:
        """The journal holds records not yet written (at start, after an outage or an overflow)."""
        return self._overflow

    def idle(self) -> bool:
        """Nothing submitted is waiting: every update is committed (or rejected)."""
        return not (self._incoming or self._pending or self._later or self._ready or self._in_flight or self._next
                    or self._overflow or self._journaling or self._syncs or self._busy or self._lost
                    or self._journal.committed_seq < self._written_seq)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted is in PostgreSQL; True if it got there in time.

        Either way, every FINISHED update is in the journal when this returns (unless the
        journal refused it); if time ran out, in-memory updates are journaled too (``stop``).
        """
        deadline = time.monotonic() + timeout
        self._wake.set()
        self._commit_wake.set()
        while not self.idle() and time.monotonic() < deadline:
            self._barrier_now.set()  # each time: the barrier may run (and clear it) before the last batch
            gevent.sleep(min(0.01, self._flush_interval))
        return self.idle()

    def stop(self, timeout: float = 10.0) -> bool:
        """Drain (``flush``) within ``timeout``, journal whatever is still only in memory, stop.
        Returns True when everything reached PostgreSQL. The journal stays open (its owner closes it)."""
        deadline = time.monotonic() + timeout
        done = self.flush(timeout * 0.8)
        gevent.killall([*self._greenlets, *filter(None, [self._prefetcher])],
                       timeout=max(0.1, deadline - time.monotonic()))
        self._greenlets, self._prefetcher = [], None
        self._syncs.join(timeout=max(0.1, deadline - time.monotonic()))  # not killed: others may wait on its fsync
        if not done:
            self._spill_memory()
        self._close_connection()
        return done

    def stats(self) -> WriterStats:
        lat = sorted(self._latencies)
        return WriterStats(
            queue_depth=len(self._ready), pending=len(self._pending) + len(self._later) + len(self._incoming),
            journal_bytes=self._journal.bytes_used, journal_backlog=self._last_seq - self._written_seq,
            records_written=self._records_written, rejected=self._rejected, batches=self._batches,
            db_up=self._db_up, journal_failure=self._journal_failure,
            latency_p50=_percentile(lat, 0.50), latency_p99=_percentile(lat, 0.99),
        )

    def latencies(self) -> list[float]:
        """The recent submit-to-commit latencies in seconds (for benchmarks)."""
        return list(self._latencies)

    # --- journal side ---------------------------------------------------------------------

    def _journal_loop(self) -> None:
        while True:
            # While the journal fails, probe it every second so the failure clears without waiting
            # for the next finished call.
            if not self._journal_wake.wait(JOURNAL_PROBE_INTERVAL if self._journal_failure else None):
                self._probe_journal()
                continue
            self._journal_wake.clear()
            while self._incoming:
                items, self._incoming = self._incoming, []
                self._journaling = True
                try:
                    self._journal_items(items)
                finally:
                    self._journaling = False
                self._wake.set()

    def _journal_items(self, items: list[tuple[RecordUpdate, float]]) -> None:
        payloads, durable = [], []
        for update, t in items:
            try:
                payloads.append(encode_update(update))
                durable.append((update, t))
            except (TypeError, ValueError) as e:
                log.error("writer: a finished record of call %s cannot be serialised (%s); kept in memory, "
                          "not durable until written", update.record.call_uuid, type(e).__name__)
                self._keep_in_memory(update, t)
        try:
            seqs = self._journal.write_many(payloads)
        except JournalError as e:
            self._journal_failed(e)
            for update, t in durable:
                self._keep_in_memory(update, t)
            return
        # Queued for PostgreSQL before the fsync ends (the upserts are idempotent and the journal
        # forgets nothing before the durability barrier): the fsync is not on the commit path.
        for seq, (update, t) in zip(seqs, durable, strict=True):
            if self._overflow or len(self._ready) >= self._queue_max:
                if not self._overflow and self._metrics is not None:
                    self._metrics.queue_overflows.inc()
                self._overflow = True  # from here on the writer reads the journal
            else:
                self._ready.append((seq, update, t))
        if not seqs:
            return
        self._last_seq = seqs[-1]
        self._wake.set()
        # Its own greenlet: records submitted during a slow fsync are written and queued meanwhile
        # (the journal's group commit makes one fsync serve every waiting greenlet).
        self._syncs.spawn(self._sync_journal, seqs[-1], [u for u, _ in durable])

    def _sync_journal(self, seq: int, updates: list[RecordUpdate]) -> None:
        try:
            self._journal.sync(seq)
        except JournalError as e:
            # Still written to PostgreSQL from memory (or from the journal's file when it spilled);
            # only not acknowledged.
            self._journal_failed(e)
            return
        self._journal_recovered()
        if self._on_durable is not None:
            self._on_durable(updates)

    def _commit_loop(self) -> None:
        """The durability barrier (module docstring), then tell the journal what PostgreSQL holds
        durably (the only caller of ``journal.commit``)."""
        backoff = 0.0
        with contextlib.suppress(psycopg.OperationalError):
            self._barrier_conn = self._connect()
        while True:
            self._commit_wake.wait()
            self._commit_wake.clear()
            if not backoff:  # (a retry goes on at once)
                # One WAL flush per interval at most: it covers every batch committed meanwhile.
                self._barrier_now.wait(self._durability_interval)
                self._barrier_now.clear()
            written = self._written_seq  # committed before the barrier's transaction begins
            try:
                if written > self._durable_seq and not self._lost:
                    if not self._wal_barrier():
                        backoff = 0.2  # after the write loop took _lost in hand
                        gevent.sleep(backoff)
                        self._commit_wake.set()
                        continue
                    self._durable_seq = written
                if self._durable_seq > self._journal.committed_seq:
                    self._journal.commit(self._durable_seq)
                backoff = 0.0
            except (psycopg.OperationalError, PoolTimeout):
                backoff = min(self._max_backoff, max(0.2, backoff * 2))  # the write loop logs the outage
                gevent.sleep(random.uniform(backoff / 2, backoff))
                self._commit_wake.set()
                continue
            except (JournalError, OSError) as e:
                # Only bookkeeping: the records are in PostgreSQL; a restart would replay them again.
                log.error("writer: journal checkpoint failed (%s); retrying", e)
                gevent.sleep(1.0)
                self._commit_wake.set()

    def _wal_barrier(self) -> bool:
        """Flush PostgreSQL's WAL up to now; True when every commit of this barrier session's
        lifetime is durable. A transaction with a transaction id commits synchronously (flushing
        the WAL before it, async commits included) even though it writes nothing else."""
        conn = self._barrier_conn
        if conn is None or conn.closed:
            conn = self._barrier_conn = self._connect()
            if self._written_seq > self._durable_seq:
                # Written before this session began: a crash in between may have forgotten them.
                self._lost = True
                self._wake.set()
                return False
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('synchronous_commit', 'on', true), pg_current_xact_id()")
        except psycopg.OperationalError:
            conn.close()
            self._barrier_conn = None
            raise
        return True

    def _journal_failed(self, e: JournalError) -> None:
        """Finished records cannot be made durable: say so at once (/metrics, /healthz) and once in
        the log, with what to do; they stay in memory and are still written when PostgreSQL is up."""
        if self._metrics is not None:
            self._metrics.journal_failures.labels(kind=e.kind).inc()
            self._metrics.journal_writable.set(0)
        if self._journal_failure is None:
            log.error("writer: the journal cannot make records durable (%s): %s; finished records are kept "
                      "in memory only until then", e, e.advice)
        self._journal_failure = e.kind
        self._journal_wake.set()  # arms the probe when the failure came from an fsync

    def _journal_recovered(self) -> None:
        if self._journal_failure is not None:
            log.info("writer: the journal is writable again; finished records are durable again")
            self._journal_failure = None
            # Journal what waited in memory meanwhile: a kill while PostgreSQL is down must not lose it.
            for key in [k for k, item in self._pending.items() if item[1].stage >= Stage.FINISHED]:
                _, update, t = self._pending.pop(key)
                self._incoming.append((update, t if t is not None else time.monotonic()))
            self._journal_wake.set()
        if self._metrics is not None:
            self._metrics.journal_writable.set(1)

    def _probe_journal(self) -> None:
        try:
            self._journal.probe()
        except JournalError as e:
            self._journal_failed(e)
        else:
            self._journal_recovered()

    def _keep_in_memory(self, update: RecordUpdate, t: float) -> None:
        rec = update.record
        self._pending[(rec.call_uuid, rec.start_time)] = (None, update, t)

    def _spill_memory(self) -> None:
        """Journal the in-memory-only updates (shutdown with PostgreSQL unreachable)."""
        items = [*(i for i in (*self._in_flight, *self._next) if i[0] is None), *self._pending.values(),
                 *self._later.values()]
        self._in_flight, self._next, self._pending, self._later = [], [], {}, {}
        items += [(None, u, t) for u, t in self._incoming]
        self._incoming = []
        try:
            self._journal.append_many([encode_update(u) for _, u, _ in items])
        except (JournalError, TypeError, ValueError) as e:
            log.error("writer: %d in-memory records could not be journaled at shutdown and are lost: %s",
                      len(items), e)

    # --- writer side ----------------------------------------------------------------------

    def _write_loop(self) -> None:
        backoff = 0.0
        idle_since = time.monotonic()
        while True:
            try:
                if self._lost:
                    log.warning("writer: PostgreSQL lost its session; writing again what was not yet durable "
                                "(journal seqs %d to %d)", self._durable_seq + 1, self._written_seq)
                    self._written_seq = self._durable_seq
                    self._settled.clear()  # rows committed since the last barrier may be gone
                    self._overflow = True  # read from the journal, in seq order
                    self._lost = False
                    self._commit_wake.set()
                if self._in_flight or self._take_batch():
                    self._busy = True
                    self._write_in_flight(prefetch=True)
                    backoff = 0.0
                    idle_since = time.monotonic()
                elif self._overflow:
                    self._busy = True
                    self._replay_journal()
                    backoff = 0.0
                else:
                    self._busy = False
                    if self._wake.wait(self._flush_interval) is False and \
                            time.monotonic() - idle_since > PROBE_INTERVAL:
                        idle_since = time.monotonic()
                        self._probe()
                    self._wake.clear()
            except (psycopg.OperationalError, PoolTimeout) as e:
                backoff = min(self._max_backoff, max(0.2, backoff * 2))
                self._set_db_up(False, e)
                gevent.sleep(random.uniform(backoff / 2, backoff))
            except Exception:
                # A bug must not end the writer: log it and retry after a pause.
                log.exception("writer: unexpected error; retrying")
                self._close_connection()
                gevent.sleep(1.0)

    def _take_batch(self) -> bool:
        """Fill ``_in_flight``: the prefetched batch if there is one, else a fresh one."""
        if self._prefetcher is not None:
            self._prefetcher.join()  # still encoding: its batch is next either way
            self._prefetcher = None
        if self._next:
            self._in_flight, self._in_flight_rows = self._next, self._next_rows
            self._next, self._next_rows = [], None
            # FINISHED records journaled while the prefetched batch waited join it: otherwise they
            # would wait for one more whole batch (measured: a third of the hangup-to-commit p50).
            late = self._take_ready(self._batch_size - len(self._in_flight))
            if late:
                self._in_flight += late
                self._in_flight_rows = self._with_rows_of(self._in_flight_rows, late)
        else:
            self._in_flight = self._take_items()
        return bool(self._in_flight)

    def _with_rows_of(self, rows: BatchRows | None, items: list[Item]) -> BatchRows | None:
        """``rows`` (prefetched) with the rows of ``items`` merged in; None: the write encodes the
        whole batch again (and isolates a record the mapping refuses)."""
        if rows is None:
            return None
        try:
            return rows.merged(batch_rows([u for _, u, _ in items], self._encoder))
        except (ValueError, TypeError):
            return None

    def _take_ready(self, room: int) -> list[Item]:
        """Up to ``room`` journaled items from the queue, seqs above what is committed."""
        batch: list[Item] = []
        while self._ready and len(batch) < room:
            item = self._ready.popleft()
            if item[0] > self._written_seq:
                batch.append(item)
        return batch

    def _take_items(self) -> list[Item]:
        """A batch from the queue (seqs above what is committed) first, then the in-memory new
        rows, then the in-memory updates of existing rows (ANSWERED): near saturation these wait
        for room, and most are superseded by their call's FINISHED before they get it, which
        sheds a third of the work exactly when the writer has too much."""
        batch = self._take_ready(self._batch_size)
        for key in list(itertools.islice(self._pending, self._batch_size - len(batch))):
            batch.append(self._pending.pop(key))
        # Beside other work, updates of written rows get a quarter of a batch at most: a backlog of
        # them must not lengthen the batches that carry hangups (it sheds them, as above).
        room = self._batch_size - len(batch)
        if batch:
            room = min(room, max(1, self._batch_size // 4))
        for key in list(itertools.islice(self._later, room)):
            batch.append(self._later.pop(key))
        return batch

    def _start_prefetch(self) -> None:
        """Take and encode the next batch in another greenlet while this one waits on PostgreSQL.
        Not during a journal replay, which reads its batches in seq order from disk."""
        if self._prefetcher is None and not self._next and not self._overflow:
            self._prefetcher = gevent.spawn(self._prefetch)

    def _prefetch(self) -> None:
        items = self._take_items()
        self._next = items  # no switch since taking them: idle() and _spill_memory see them
        if items:
            try:
                self._next_rows = batch_rows([u for _, u, _ in items], self._encoder)
            except (ValueError, TypeError):
                self._next_rows = None  # the write encodes again and isolates the bad record

    def _replay_journal(self) -> None:
        """Write every journaled record not yet committed, in seq order; then leave overflow mode."""
        upto = self._journal.last_seq
        for seq, payload in self._journal.replay():
            if seq <= self._written_seq:
                continue
            try:
                update = decode_update(payload)
            except ValueError as e:
                log.error("writer: journal record %d is not a record update (%s); skipped", seq, e)
                self._rejected += 1
                self._written_seq = seq  # committed with the next batch
                continue
            self._in_flight.append((seq, update, None))
            if len(self._in_flight) >= self._batch_size:
                self._write_in_flight()
        if self._in_flight:
            self._write_in_flight()
        # Records the journal skipped as damaged or unreadable (it logged them) are gone for good:
        # count them as done, or this pass would repeat forever.
        self._written_seq = max(self._written_seq, upto)
        self._commit_wake.set()
        # Cooperative scheduling: no switch between this check and the flag change, so an
        # append that finished during the replay either was replayed or lands in the queue.
        if self._written_seq >= self._last_seq:
            self._overflow = False

    def _write_in_flight(self, prefetch: bool = False) -> None:
        """Write ``_in_flight`` in one transaction (isolating bad records), then commit the journal;
        with ``prefetch``, the next batch is encoded meanwhile."""
        items, rows = self._in_flight, self._in_flight_rows
        self._in_flight_rows = None
        started = time.monotonic()
        try:
            self._write_batch([u for _, u, _ in items], rows, prefetch)
        except (psycopg.OperationalError, PoolTimeout):
            raise
        except (psycopg.Error, ValueError, TypeError):
            self._write_one_by_one(items)
        done = time.monotonic()
        self._in_flight = []
        self._set_db_up(True)
        self._batches += 1
        log.debug("writer: batch of %d records written in %.1f ms", len(items), (done - started) * 1000)
        self._records_written += len(items)
        self._latencies.extend(done - t for _, u, t in items if t is not None and u.stage >= Stage.FINISHED)
        if self._metrics is not None:
            self._metrics.db_write_seconds.observe(done - started)
            self._metrics.records_written.labels(table="call_records").inc(len(items))
        seqs = [seq for seq, _, _ in items if seq is not None]
        if seqs:
            self._written_seq = max(self._written_seq, max(seqs))
            self._commit_wake.set()

    def _write_one_by_one(self, items: list[Item]) -> None:
        refused: list[tuple[RecordUpdate, str]] = []
        for seq, update, _ in items:
            try:
                self._write_batch([update])
            except (psycopg.OperationalError, PoolTimeout):
                raise
            except (psycopg.Error, ValueError, TypeError) as e:
                self._rejected += 1
                state = getattr(e, "sqlstate", None) or type(e).__name__
                refused.append((update, state))
                log.error("writer: record of call %s (journal seq %s) refused by PostgreSQL (%s); quarantined, "
                          "see `eslbridge journal quarantine list`", update.record.call_uuid, seq, state)
                if self._metrics is not None:
                    self._metrics.db_errors.labels(operation="rejected").inc()
        if refused:
            self._quarantine_records(refused)

    def _quarantine_records(self, refused: list[tuple[RecordUpdate, str]]) -> None:
        """Keep refused records durably before the journal may forget them (the caller commits)."""
        if self._quarantine is None:
            return
        try:
            self._quarantine.add(refused)
        except (JournalError, TypeError, ValueError) as e:
            log.error("writer: %d refused record(s) could not be quarantined and are lost: %s", len(refused), e)
            return
        if self._metrics is not None:
            self._metrics.records_quarantined.inc(len(refused))

    def _write_batch(self, updates: list[RecordUpdate], rows: BatchRows | None = None,
                     prefetch: bool = False) -> None:
        """One transaction per lane, concurrently (a call's rows all in one lane), so both cores
        work: PostgreSQL runs one lane's transaction while this process dumps the next lane's
        and encodes the next batch. Batches stay sequential, so a call is never in two
        transactions at once; a batch counts as written once every lane committed (a lane that
        committed before another failed is written again with the batch: idempotent)."""
        if rows is None:
            rows = batch_rows(updates, self._encoder)
        parts = rows.split(len(self._conns))
        # Spawned before the prefetcher: each lane dumps and sends before anything else runs.
        lanes = [gevent.spawn(self._write_lane, lane, part) for lane, part in enumerate(parts)]
        if prefetch:
            self._start_prefetch()
        try:
            gevent.joinall(lanes)
        finally:  # the writer killed (stop): its lanes go with it
            gevent.killall(lanes)
        errors = [g.value for g in lanes if g.value is not None]
        for e in errors:  # "DB down" first: it decides between retrying and isolating records
            if isinstance(e, psycopg.OperationalError | PoolTimeout):
                raise e
        if errors:
            raise errors[0]

    def _write_lane(self, lane: int, rows: BatchRows) -> Exception | None:
        # Returned, not raised: gevent would print a dying greenlet's error, whose server DETAIL
        # may quote row values; _write_batch raises it in the writer greenlet, which logs safely.
        try:
            with self._connection(lane) as conn:
                self._method.prepare(conn)
                self._method.write(conn, rows, self._settled)
        except Exception as e:
            # A failed write may come from a crashed server that lost unflushed commits: claim again.
            self._settled.clear()
            return e
        self._settled.add(rows)
        return None

    def _probe(self) -> None:
        with self._connection() as conn:
            conn.execute("SELECT 1")
        self._set_db_up(True)

    def _set_db_up(self, up: bool, error: Exception | None = None) -> None:
        if up != self._db_up:
            if up:
                log.info("writer: PostgreSQL reachable; writing")
            else:
                # psycopg's message names host and port, never the password.
                log.warning("writer: PostgreSQL unreachable, records go to the journal: %s",
                            str(error).strip().splitlines()[0] if error else "")
        self._db_up = up
        if self._metrics is not None:
            self._metrics.db_up.set(1 if up else 0)
            if not up:
                self._metrics.db_errors.labels(operation="write").inc()

    @contextmanager
    def _connection(self, lane: int = 0) -> Iterator[psycopg.Connection]:
        if isinstance(self._source, ConnectionPool):
            with self._source.connection(timeout=self._connect_timeout) as conn:
                conn.autocommit = True  # batches open their own transactions
                yield conn
            return
        conn = self._conns[lane]
        if conn is None or conn.closed:
            conn = self._conns[lane] = self._connect()
        try:
            yield conn
        except psycopg.OperationalError:
            conn.close()
            self._conns[lane] = None
            raise

    def _connect(self) -> psycopg.Connection:
        """A connection of the writer's own (lanes without a pool, the durability barrier)."""
        return own_connection(self._source, self._connect_timeout)

    def _close_connection(self) -> None:
        for lane, conn in enumerate(self._conns):
            if conn is not None:
                conn.close()
                self._conns[lane] = None
        if self._barrier_conn is not None:
            self._barrier_conn.close()
            self._barrier_conn = None
