"""A FIFO between the ESL socket reader and the consumer that never blocks the reader.

Items (tag, payload bytes) go to a bounded in-memory deque; when it is full they are appended to an
unlinked spill file, and once spilling has started every new item goes to the file until the
consumer has drained it, so order is kept. Why spill and not backpressure: FreeSWITCH queues at most
100,000 events per listener and then drops the listener (mod_event_socket MAX_QUEUE_LEN); stopping
the reader hands our backlog to FreeSWITCH, whose limit we do not control, while appending to a file
costs a few microseconds per event (bench/intake.py --paused measures it). Every spilled item is
counted in `stats.overflows`.

Spilled events hold numbers, addresses and SDPs, so each is sealed (AES-256-GCM) under a key made
for this queue and kept only in memory: the file is unlinked and useless after the process ends
anyway, and nothing readable reaches the disk. The nonce is the record's write count.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections import deque

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from gevent.event import Event

from eslbridge.esl.stats import IntakeStats

_REC = struct.Struct("!BI")  # tag, payload length
_CHUNK = 1 << 20
_SPILL_BATCH = 64  # items per batch read back from the file


class SpillQueue:
    """Unbounded FIFO: `maxlen` items in memory, the rest in a file under `spill_dir`.

    Items travel in batches (the reader puts everything one recv brought, the consumer takes a batch at
    a time): one queue operation and one wake-up per batch, not per event. The batch the consumer holds
    still counts in `len` and against `maxlen` until it asks for the next one."""

    def __init__(self, maxlen: int, stats: IntakeStats, spill_dir: str | None = None) -> None:
        if maxlen < 1:
            raise ValueError("queue size must be at least 1")
        self._mem: deque[list[tuple[int, bytes]]] = deque()
        self._in_mem = 0  # items in self._mem
        self._held = 0  # items of the batch the consumer is working on
        self._maxlen = maxlen
        self._stats = stats
        self._dir = spill_dir
        self._fd: int | None = None
        self._aead: AESGCM | None = None  # made with the file
        self._sealed = 0  # records sealed so far: the next nonce
        self._opened = 0  # records opened so far (FIFO: the nonce each was sealed with)
        self._wbuf = bytearray()
        self._wpos = 0  # bytes flushed to the file
        self._rpos = 0  # bytes consumed from the file
        self._rbuf = b""
        self._roff = 0
        self._spilled = 0  # items in the file (flushed or buffered) not yet consumed
        self._ready = Event()

    def __len__(self) -> int:
        return self._in_mem + self._spilled + self._held

    def put(self, tag: int, payload: bytes) -> None:
        self.put_many([(tag, payload)])

    def put_many(self, items: list[tuple[int, bytes]]) -> None:
        """Append items in order; those beyond `maxlen` (and all, once spilling) go to the file."""
        room = 0 if self._spilled else self._maxlen - len(self)
        if room < len(items):
            for tag, payload in items[max(room, 0) :]:
                self._spill(tag, payload)
            items = items[:room] if room > 0 else []
        if items:
            self._mem.append(items)
            self._in_mem += len(items)
        self._stats.queue_depth = len(self)
        self._ready.set()

    def get_batch(self, timeout: float | None = None) -> list[tuple[int, bytes]] | None:
        """The oldest items (the previous batch is then done), waiting up to `timeout` seconds; None
        when nothing arrived."""
        self._held = 0
        self._stats.queue_depth = len(self)
        while True:
            if self._mem:
                batch = self._mem.popleft()
                self._in_mem -= len(batch)
            elif self._spilled:
                batch = [self._unspill() for _ in range(min(self._spilled, _SPILL_BATCH))]
            else:
                self._ready.clear()
                if not self._ready.wait(timeout):
                    return None
                continue
            self._held = len(batch)
            return batch

    def _spill(self, tag: int, payload: bytes) -> None:
        if self._fd is None:
            fd, path = tempfile.mkstemp(prefix="eslbridge-spill-", dir=self._dir)
            os.unlink(path)  # nothing to clean up after a crash; the journal is what survives restarts
            self._fd = fd
            self._aead = AESGCM(AESGCM.generate_key(256))
        sealed = self._aead.encrypt(self._sealed.to_bytes(12, "big"), payload, None)
        self._sealed += 1
        self._wbuf += _REC.pack(tag, len(sealed))
        self._wbuf += sealed
        self._spilled += 1
        self._stats.overflows += 1
        self._stats.spilled_bytes += len(payload)
        if len(self._wbuf) >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._wbuf:
            os.pwrite(self._fd, self._wbuf, self._wpos)
            self._wpos += len(self._wbuf)
            self._wbuf.clear()

    def _unspill(self) -> tuple[int, bytes]:
        avail = len(self._rbuf) - self._roff
        if avail < _REC.size or avail < _REC.size + _REC.unpack_from(self._rbuf, self._roff)[1]:
            self._flush()
            need = _CHUNK
            if avail >= _REC.size:
                need = max(need, _REC.size + _REC.unpack_from(self._rbuf, self._roff)[1] - avail)
            chunk = os.pread(self._fd, need, self._rpos)
            self._rpos += len(chunk)
            self._rbuf = self._rbuf[self._roff :] + chunk
            self._roff = 0
        tag, length = _REC.unpack_from(self._rbuf, self._roff)
        start = self._roff + _REC.size
        payload = self._aead.decrypt(self._opened.to_bytes(12, "big"), self._rbuf[start : start + length], None)
        self._opened += 1
        self._roff = start + length
        self._spilled -= 1
        if not self._spilled:
            # Drained: start the file over so it never grows past one backlog.
            os.ftruncate(self._fd, 0)
            self._wpos = self._rpos = self._roff = 0
            self._rbuf = b""
        return tag, payload

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
