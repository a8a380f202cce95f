"""The journal stage: FINISHED updates are made durable before anything is acknowledged.

One greenlet appends what was submitted meanwhile to the journal (group commit: one fsync for
all of it, in gevent's threadpool) and queues it for the writer before the fsync ends: the
upserts are idempotent and the journal forgets nothing before the durability barrier
(``store/barrier.py``), so the fsync is not on the commit path. Only after the fsync is an update
acknowledged (``on_durable``). When the journal fails (full, disk error), finished records stay
in memory and are still written when PostgreSQL is up; the failure is reported at once
(/metrics, /healthz), logged once, and probed every second until it clears.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent.event
import gevent.pool

from eslbridge.calls.records import RecordUpdate
from eslbridge.store.journal import Journal, JournalError
from eslbridge.store.queue import Arrival, RecordQueue
from eslbridge.store.serialize import encode_update

log = logging.getLogger("eslbridge.store.writer")  # a stage of the writer: operators filter on one name

PROBE_INTERVAL = 1.0  # seconds between checks of a failed journal


class JournalStage:
    """``run`` is the greenlet; ``wake`` is set when the queue has new FINISHED updates."""

    def __init__(self, journal: Journal, queue: RecordQueue, wake_writer: Callable[[], None], *,
                 metrics: Any = None, on_durable: Callable[[list[RecordUpdate]], None] | None = None) -> None:
        self._journal = journal
        self._queue = queue
        self._wake_writer = wake_writer
        self._metrics = metrics
        self._on_durable = on_durable
        self.wake = gevent.event.Event()
        self.busy = False  # appending a batch
        self.syncs = gevent.pool.Group()  # fsyncs under way
        self.failure: str | None = None  # why the journal cannot make records durable now (errno kind)
        self.last_seq = journal.last_seq  # highest seq the journal acknowledged

    def run(self) -> None:
        while True:
            # While the journal fails, probe it every second so the failure clears without waiting
            # for the next finished call.
            if not self.wake.wait(PROBE_INTERVAL if self.failure else None):
                self._probe()
                continue
            self.wake.clear()
            while self._queue.incoming:
                items = self._queue.take_incoming()
                self.busy = True
                try:
                    self._append(items)
                finally:
                    self.busy = False
                self._wake_writer()

    def _append(self, items: list[Arrival]) -> None:
        payloads, durable = [], []
        for update, t in items:
            try:
                payloads.append(encode_update(update))
                durable.append((update, t))
            except (TypeError, ValueError) as e:
                log.error("writer: a finished record of call %s cannot be serialised (%s); kept in memory, "
                          "not durable until written", update.record.call_uuid, type(e).__name__)
                self._queue.keep_in_memory(update, t)
        try:
            seqs = self._journal.write_many(payloads)
        except JournalError as e:
            self._failed(e)
            for update, t in durable:
                self._queue.keep_in_memory(update, t)
            return
        # Queued for PostgreSQL before the fsync ends (the upserts are idempotent and the journal
        # forgets nothing before the durability barrier): the fsync is not on the commit path.
        for seq, (update, t) in zip(seqs, durable, strict=True):
            if self._queue.journaled(seq, update, t) and self._metrics is not None:
                self._metrics.queue_overflows.inc()
        if not seqs:
            return
        self.last_seq = seqs[-1]
        self._wake_writer()
        # Its own greenlet: records submitted during a slow fsync are written and queued meanwhile
        # (the journal's group commit makes one fsync serve every waiting greenlet).
        self.syncs.spawn(self._sync, seqs[-1], [u for u, _ in durable])

    def _sync(self, seq: int, updates: list[RecordUpdate]) -> None:
        try:
            self._journal.sync(seq)
        except JournalError as e:
            # Still written to PostgreSQL from memory (or from the journal's file when it spilled);
            # only not acknowledged.
            self._failed(e)
            return
        self._recovered()
        if self._on_durable is not None:
            self._on_durable(updates)

    def _failed(self, e: JournalError) -> None:
        """Finished records cannot be made durable: say so at once (/metrics, /healthz) and once in
        the log, with what to do; they stay in memory and are still written when PostgreSQL is up."""
        if self._metrics is not None:
            self._metrics.journal_failures.labels(kind=e.kind).inc()
            self._metrics.journal_writable.set(0)
        if self.failure is None:
            log.error("writer: the journal cannot make records durable (%s): %s; finished records are kept "
                      "in memory only until then", e, e.advice)
        self.failure = e.kind
        self.wake.set()  # arms the probe when the failure came from an fsync

    def _recovered(self) -> None:
        if self.failure is not None:
            log.info("writer: the journal is writable again; finished records are durable again")
            self.failure = None
            self._queue.unjournal_finished(time.monotonic())
            self.wake.set()
        if self._metrics is not None:
            self._metrics.journal_writable.set(1)

    def _probe(self) -> None:
        try:
            self._journal.probe()
        except JournalError as e:
            self._failed(e)
        else:
            self._recovered()
