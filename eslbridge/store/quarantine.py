"""Records PostgreSQL refuses, kept instead of dropped (DESIGN section 9: nothing is skipped).

A record the database still refuses when written on its own (a constraint, a value out of range)
cannot wedge the journal, so the writer moves it here: a journal of its own in
``<journal dir>/quarantine``, sealed with the same keyring (it holds the same personal data), each
record with the reason (the SQLSTATE, never a value). The operator lists and retries them with
``eslbridge journal quarantine list|retry`` once the cause is fixed (a migration, a mapping fix).

The directory is opened for each operation and closed after it: additions are rare, and the daemon
and the command may then take turns (the journal's lock allows one process at a time; a busy lock is
waited for briefly).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from eslbridge.calls.records import RecordUpdate
from eslbridge.store.journal import SEGMENT_NAME, Journal, JournalError, PayloadSealer
from eslbridge.store.serialize import decode_update, encode_update

MAX_BYTES = 1 << 30  # a quarantine that large means a systematic fault: appends then fail loudly
_REASON = struct.Struct("<H")
LOCK_WAIT = 5.0


@dataclass(frozen=True)
class Quarantined:
    seq: int
    reason: str
    update: RecordUpdate


def _encode(update: RecordUpdate, reason: str) -> bytes:
    why = reason.encode()[:200]
    return _REASON.pack(len(why)) + why + encode_update(update)


def _decode(seq: int, payload: bytes) -> Quarantined:
    (n,) = _REASON.unpack_from(payload)
    start = _REASON.size
    return Quarantined(seq, payload[start:start + n].decode(), decode_update(payload[start + n:]))


class Quarantine:
    def __init__(self, directory: str | Path, sealer: PayloadSealer | None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.dir = Path(directory)
        self.sealer = sealer  # replaced on SIGHUP like the journal's
        self._sleep = sleep

    @contextmanager
    def _open(self) -> Iterator[Journal]:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                journal = Journal(self.dir, MAX_BYTES, sealer=self.sealer)
                break
            except JournalError as e:
                if "in use" not in str(e) or time.monotonic() > deadline:
                    raise
                self._sleep(0.05)
        with journal:
            yield journal

    @property
    def bytes_used(self) -> int:
        """Size of the quarantine on disk (no lock needed: for the metric)."""
        try:
            return sum(p.stat().st_size for p in self.dir.iterdir() if SEGMENT_NAME.fullmatch(p.name))
        except OSError:
            return 0

    def add(self, updates: list[tuple[RecordUpdate, str]]) -> None:
        """Keep these (update, reason) pairs durably (fsync'd when this returns); JournalError if not."""
        with self._open() as journal:
            journal.append_many([_encode(u, reason) for u, reason in updates])

    def items(self) -> list[Quarantined]:
        with self._open() as journal:
            return [_decode(seq, payload) for seq, payload in journal.replay()]

    def retry(self, write: Callable[[RecordUpdate], str | None]) -> tuple[int, int]:
        """Write each record again with ``write`` (None: stored; else the reason it was refused).
        Those still refused are kept (appended again, then the old entries are forgotten): none is
        ever lost. Returns (stored, still refused)."""
        with self._open() as journal:
            items = [_decode(seq, payload) for seq, payload in journal.replay()]
            if not items:
                return 0, 0
            last = journal.last_seq
            refused = []
            for item in items:
                reason = write(item.update)
                if reason is not None:
                    refused.append((item.update, reason))
            if refused:
                journal.append_many([_encode(u, reason) for u, reason in refused])
            journal.commit(last)
            return len(items) - len(refused), len(refused)
