"""The record queue of DESIGN section 1: bounded, coalescing, prioritised, spilling to the journal.

What happens to an update depends on its stage:

* FINISHED updates are the durable ones: they wait in ``incoming`` for the journal (the writer's
  journal greenlet appends and fsyncs them), then, while there is room, in ``ready`` in journal
  seq order. Once ``ready`` is full, later ones live in the journal only: the queue is
  ``spilled`` and the writer replays the journal, in seq order, until it has caught up. A queue
  starts spilled: the journal may hold records of an earlier run.
* STARTED and ANSWERED updates are in memory only, coalesced per call (the highest stage, the
  latest on a tie, wins): each carries the call's full state, so a later update supersedes an
  earlier one, and a FINISHED update supersedes them all. Their number is bounded by the calls
  in flight. A call's first row waits in ``new_rows``; an update of a row already written or on
  its way waits in ``row_updates``.

A batch takes FINISHED first, then calls' first rows, then updates of written rows: under
overload the ANSWERED ones wait and are mostly superseded by their FINISHED, so the writer sheds
work instead of falling behind (an ANSWERED update is then late, or skipped in favour of the
final row, never lost). The queue is plain data: no I/O, no greenlets.
"""

from __future__ import annotations

import itertools
from collections import deque
from datetime import datetime
from typing import NamedTuple

from eslbridge.calls.records import RecordUpdate, Stage

Key = tuple[str, datetime | None]  # (call UUID, start time): one row


class Queued(NamedTuple):
    """An update on its way to PostgreSQL."""

    seq: int | None  # its journal seq; None: in memory only
    update: RecordUpdate
    submitted: float | None  # monotonic time of submit (None: read back from the journal)


class Arrival(NamedTuple):
    """A FINISHED update waiting for the journal."""

    update: RecordUpdate
    submitted: float


def supersede(old: RecordUpdate, new: RecordUpdate) -> RecordUpdate:
    """One update standing for both: the later state (an older stage never wins) with both
    updates' lifecycle events, which are increments, not state."""
    newer = new if new.stage >= old.stage else old
    return RecordUpdate(newer.stage, newer.record, [*old.events, *new.events])


def _key(update: RecordUpdate) -> Key:
    rec = update.record
    return (rec.call_uuid, rec.start_time)


class RecordQueue:
    """See the module docstring. ``max_ready``: journaled updates kept in memory at most."""

    def __init__(self, max_ready: int) -> None:
        self.max_ready = max_ready
        self.incoming: list[Arrival] = []
        self.new_rows: dict[Key, Queued] = {}
        self.row_updates: dict[Key, Queued] = {}
        self.ready: deque[Queued] = deque()
        self.spilled = True

    def __len__(self) -> int:
        return len(self.ready) + len(self.new_rows) + len(self.row_updates) + len(self.incoming)

    @property
    def in_memory_only(self) -> int:
        """Updates not in the journal yet (in-memory rows, FINISHED waiting for the journal)."""
        return len(self.new_rows) + len(self.row_updates) + len(self.incoming)

    def submit(self, update: RecordUpdate, now: float) -> bool:
        """Queue one update; True when it is FINISHED (it waits for the journal)."""
        key = _key(update)
        first = self.new_rows.pop(key, None)
        kept = first if first is not None else self.row_updates.pop(key, None)
        if kept is not None:
            update = supersede(kept.update, update)
        if update.stage >= Stage.FINISHED:
            self.incoming.append(Arrival(update, now))
            return True
        # A call's first row keeps its priority (DESIGN: the row within a second); a later
        # update of a row already written or being written can wait for room.
        waiting = self.row_updates if first is None and update.stage > Stage.STARTED else self.new_rows
        waiting[key] = Queued(None, update, now if kept is None else kept.submitted)
        return False

    def take_incoming(self) -> list[Arrival]:
        taken, self.incoming = self.incoming, []
        return taken

    def keep_in_memory(self, update: RecordUpdate, submitted: float) -> None:
        """A FINISHED update the journal could not take: written from memory, like a first row."""
        self.new_rows[_key(update)] = Queued(None, update, submitted)

    def journaled(self, seq: int, update: RecordUpdate, submitted: float) -> bool:
        """``update`` is in the journal as ``seq``; True when this one made the queue spill."""
        if self.spilled or len(self.ready) >= self.max_ready:
            spilled_now = not self.spilled
            self.spilled = True  # from here on the writer reads the journal
            return spilled_now
        self.ready.append(Queued(seq, update, submitted))
        return False

    def unjournal_finished(self, now: float) -> None:
        """The journal works again: FINISHED updates kept in memory meanwhile go to it (a kill
        while PostgreSQL is down must not lose them)."""
        for key in [k for k, item in self.new_rows.items() if item.update.stage >= Stage.FINISHED]:
            item = self.new_rows.pop(key)
            self.incoming.append(Arrival(item.update, item.submitted if item.submitted is not None else now))

    def take_ready(self, room: int, written_seq: int) -> list[Queued]:
        """Up to ``room`` journaled updates, seqs above ``written_seq`` (what is committed)."""
        batch: list[Queued] = []
        while self.ready and len(batch) < room:
            item = self.ready.popleft()
            if item.seq > written_seq:
                batch.append(item)
        return batch

    def take(self, batch_size: int, written_seq: int) -> list[Queued]:
        """A batch: journaled updates first, then the first rows, then updates of written rows
        (ANSWERED): near saturation these wait for room, and most are superseded by their call's
        FINISHED before they get it, which sheds a third of the work exactly when the writer has
        too much."""
        batch = self.take_ready(batch_size, written_seq)
        for key in list(itertools.islice(self.new_rows, batch_size - len(batch))):
            batch.append(self.new_rows.pop(key))
        # Beside other work, updates of written rows get a quarter of a batch at most: a backlog of
        # them must not lengthen the batches that carry hangups (it sheds them, as above).
        room = batch_size - len(batch)
        if batch:
            room = min(room, max(1, batch_size // 4))
        for key in list(itertools.islice(self.row_updates, room)):
            batch.append(self.row_updates.pop(key))
        return batch

    def drain_memory(self) -> list[Queued]:
        """Everything held in memory only, removed (shutdown: it goes to the journal)."""
        items = [*self.new_rows.values(), *self.row_updates.values(),
                 *(Queued(None, a.update, a.submitted) for a in self.incoming)]
        self.new_rows, self.row_updates, self.incoming = {}, {}, []
        return items
