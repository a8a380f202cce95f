"""The record writer: correlator output -> PostgreSQL, exactly once (DESIGN sections 1, 8, 9).

``submit`` never blocks and never drops: updates go to the record queue (``store/queue.py``:
coalescing and priorities), FINISHED ones through the journal first (group commit: one fsync
for everything submitted meanwhile, in gevent's threadpool; only then acknowledged,
``on_durable``). Queued for PostgreSQL before the fsync ends, so the fsync is not on the commit
path: the journal forgets nothing before the durability barrier (``store/barrier.py``) says
PostgreSQL holds it durably. After ``kill -9`` a restart replays what was not yet durable in
PostgreSQL plus at most the batches made durable since the last journal checkpoint, which the
idempotent upserts absorb. On ``stop`` in-memory updates go to the journal too (replays are
monotonic, any order converges), so a restart during an outage still shows the live calls. If
the journal cannot take a FINISHED update (full, disk error, unserialisable), it is kept in
memory like a STARTED one: still written when PostgreSQL is up, logged as not durable.

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
from eslbridge.keys.keyring import Keyring
from eslbridge.store.barrier import DurabilityBarrier
from eslbridge.store.journal import Journal, JournalError
from eslbridge.store.journaling import JournalStage
from eslbridge.store.pool import own_connection
from eslbridge.store.quarantine import Quarantine
from eslbridge.store.queue import Queued, RecordQueue
from eslbridge.store.rows import BatchRows, FieldEncoder, batch_rows
from eslbridge.store.serialize import decode_update, encode_update
from eslbridge.store.startkey import Settled
from eslbridge.store.upsert import DEFAULT_METHOD, METHODS

log = logging.getLogger(__name__)

# Records per batch at most. A hangup that arrives while a batch is written waits for it and then for
# its own, so the batch's duration bounds hangup-to-commit: measured at 1,000 calls/s for 60 s on a
# loaded host (bench.writes), p99 634 / 848 ms with 250 against 1,111 / 1,121 ms with 500, in
# alternating runs; on a quiet one, 319 / 216 against 313 / 266 ms. Flat out, 250 takes 5-15 %
# fewer calls/s (more statements planned per call).
BATCH_SIZE = 250
LATENCY_WINDOW = 20_000  # recent submit-to-commit latencies of FINISHED updates kept for stats()
PROBE_INTERVAL = 5.0  # idle seconds between `SELECT 1` probes, so db_up stays true to life

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


class Writer:
    """Batches ``RecordUpdate``s into idempotent upserts; see the module docstring.

    ``pool_or_dsn``: a ``psycopg_pool.ConnectionPool`` (a connection per batch) or a conninfo
    string (one dedicated connection, reconnected when lost). ``keyring`` may be replaced at
    any time (SIGHUP): the next batch encrypts with the new one.
    """

    def __init__(self, pool_or_dsn: ConnectionPool | str, keyring: Keyring, journal: Journal, *,
                 batch_size: int = BATCH_SIZE, flush_interval: float = 0.05, queue_max: int = 20_000,
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
        self._method = METHODS[method]
        self._metrics = metrics
        self._connect_timeout = connect_timeout
        self._max_backoff = max_backoff
        self._quarantine = quarantine

        self.queue = RecordQueue(queue_max)
        self._written_seq = journal.committed_seq  # every seq up to here is committed in PostgreSQL
        self._wake = gevent.event.Event()
        self._barrier = DurabilityBarrier(journal, self._connect, lambda: self._written_seq, self._wake.set,
                                          interval=durability_interval, max_backoff=max_backoff)
        self._settled = Settled()  # calls whose exact-start rows need no start-key claim any more
        self._in_flight: list[Queued] = []
        self._in_flight_rows: BatchRows | None = None  # _in_flight's rows when prefetched
        self._next: list[Queued] = []  # taken (and encoded) by the prefetcher while _in_flight was written
        self._next_rows: BatchRows | None = None
        self._prefetcher: gevent.Greenlet | None = None
        self._busy = False
        self._db_up = False
        self._records_written = 0
        self._rejected = 0
        self._batches = 0
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._calls_finished = 0
        self._greenlets: list[gevent.Greenlet] = []
        self._journaling = JournalStage(journal, self.queue, self._wake.set, metrics=metrics, on_durable=on_durable)
        if metrics is not None:
            metrics.queue_depth.set_function(lambda: len(self.queue))
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
            # The barrier first: its session should begin before the first batch commits (store/barrier.py).
            self._greenlets = [gevent.spawn(self._barrier.run), gevent.spawn(self._journaling.run),
                               gevent.spawn(self._write_loop)]

    def submit(self, update: RecordUpdate) -> None:
        """Queue one update. Never blocks, never raises on load or outages."""
        if self.queue.submit(update, time.monotonic()):
            self._journaling.wake.set()
        else:
            self._wake.set()

    @property
    def replaying(self) -> bool:
        """The journal holds records not yet written (at start, after an outage or an overflow)."""
        return self.queue.spilled

    def idle(self) -> bool:
        """Nothing submitted is waiting: every update is committed (or rejected)."""
        return not (len(self.queue) or self._in_flight or self._next or self.queue.spilled or self._journaling.busy
                    or self._journaling.syncs or self._busy or self._barrier.lost
                    or self._journal.committed_seq < self._written_seq)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted is in PostgreSQL; True if it got there in time.

        Either way, every FINISHED update is in the journal when this returns (unless the
        journal refused it); if time ran out, in-memory updates are journaled too (``stop``).
        """
        deadline = time.monotonic() + timeout
        self._wake.set()
        self._barrier.poke()
        while not self.idle() and time.monotonic() < deadline:
            self._barrier.hurry()  # each time: the barrier may run (and clear it) before the last batch
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
        # Fsyncs are not killed: others may wait on them.
        self._journaling.syncs.join(timeout=max(0.1, deadline - time.monotonic()))
        if not done:
            self._spill_memory()
        self._close_connection()
        return done

    def stats(self) -> WriterStats:
        lat = sorted(self._latencies)
        return WriterStats(
            queue_depth=len(self.queue.ready), pending=self.queue.in_memory_only,
            journal_bytes=self._journal.bytes_used, journal_backlog=self._journaling.last_seq - self._written_seq,
            records_written=self._records_written, rejected=self._rejected, batches=self._batches,
            db_up=self._db_up, journal_failure=self._journaling.failure,
            latency_p50=_percentile(lat, 0.50), latency_p99=_percentile(lat, 0.99),
        )

    @property
    def calls_finished(self) -> int:
        """Calls whose final update, submitted to this writer, is committed (what a load generator paces
        on: the latency window above keeps only the recent ones)."""
        return self._calls_finished

    def latencies(self) -> list[float]:
        """The recent submit-to-commit latencies in seconds (for benchmarks)."""
        return list(self._latencies)

    # --- shutdown -------------------------------------------------------------------------

    def _spill_memory(self) -> None:
        """Journal the in-memory-only updates (shutdown with PostgreSQL unreachable)."""
        items = [*(i for i in (*self._in_flight, *self._next) if i.seq is None), *self.queue.drain_memory()]
        self._in_flight, self._next = [], []
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
                if self._barrier.lost:
                    log.warning("writer: PostgreSQL lost its session; writing again what was not yet durable "
                                "(journal seqs %d to %d)", self._barrier.durable_seq + 1, self._written_seq)
                    self._written_seq = self._barrier.rewind()
                    self._settled.clear()  # rows committed since the last barrier may be gone
                    self.queue.spilled = True  # read from the journal, in seq order
                if self._in_flight or self._take_batch():
                    self._busy = True
                    self._write_in_flight(prefetch=True)
                    backoff = 0.0
                    idle_since = time.monotonic()
                elif self.queue.spilled:
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
            late = self.queue.take_ready(self._batch_size - len(self._in_flight), self._written_seq)
            if late:
                self._in_flight += late
                self._in_flight_rows = self._with_rows_of(self._in_flight_rows, late)
        else:
            self._in_flight = self.queue.take(self._batch_size, self._written_seq)
        return bool(self._in_flight)

    def _with_rows_of(self, rows: BatchRows | None, items: list[Queued]) -> BatchRows | None:
        """``rows`` (prefetched) with the rows of ``items`` merged in; None: the write encodes the
        whole batch again (and isolates a record the mapping refuses)."""
        if rows is None:
            return None
        try:
            return rows.merged(batch_rows([u for _, u, _ in items], self._encoder))
        except (ValueError, TypeError):
            return None

    def _start_prefetch(self) -> None:
        """Take and encode the next batch in another greenlet while this one waits on PostgreSQL.
        Not during a journal replay, which reads its batches in seq order from disk."""
        if self._prefetcher is None and not self._next and not self.queue.spilled:
            self._prefetcher = gevent.spawn(self._prefetch)

    def _prefetch(self) -> None:
        items = self.queue.take(self._batch_size, self._written_seq)
        self._next = items  # no switch since taking them: idle() and _spill_memory see them
        if items:
            try:
                rows = batch_rows([u for _, u, _ in items], self._encoder)
                # A full batch is written as it is: dump its parameters now. One with room left is
                # usually joined by later hangups (_take_batch), which makes new rows to dump anyway.
                if len(items) >= self._batch_size:
                    for part in rows.split(len(self._conns)):  # as the write splits it (the parts are kept)
                        self._method.encode(part)
            except (ValueError, TypeError, psycopg.Error):
                rows = None  # the write encodes again and isolates the bad record
            self._next_rows = rows

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
            self._in_flight.append(Queued(seq, update, None))
            if len(self._in_flight) >= self._batch_size:
                self._write_in_flight()
        if self._in_flight:
            self._write_in_flight()
        # Records the journal skipped as damaged or unreadable (it logged them) are gone for good:
        # count them as done, or this pass would repeat forever.
        self._written_seq = max(self._written_seq, upto)
        self._barrier.poke()
        # Cooperative scheduling: no switch between this check and the flag change, so an
        # append that finished during the replay either was replayed or lands in the queue.
        if self._written_seq >= self._journaling.last_seq:
            self.queue.spilled = False

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
        finished = [done - t for _, u, t in items if t is not None and u.stage >= Stage.FINISHED]
        self._latencies.extend(finished)
        self._calls_finished += len(finished)
        if self._metrics is not None:
            self._metrics.db_write_seconds.observe(done - started)
            self._metrics.records_written.labels(table="call_records").inc(len(items))
        seqs = [seq for seq, _, _ in items if seq is not None]
        if seqs:
            self._written_seq = max(self._written_seq, max(seqs))
            self._barrier.poke()

    def _write_one_by_one(self, items: list[Queued]) -> None:
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
        self._barrier.close()
