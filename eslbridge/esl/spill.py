"""A FIFO between the ESL socket reader and the consumer that never blocks the reader.

Items (tag, payload bytes) go to a bounded in-memory deque; when it is full they are appended to an
unlinked spill file, and once spilling has started every new item goes to the file until the
consumer has drained it, so order is kept. Why spill and not backpressure: FreeSWITCH queues at most
100,000 events per listener and then drops the listener (mod_event_socket MAX_QUEUE_LEN); stopping
the reader hands our backlog to FreeSWITCH, whose limit we do not control, while appending to a file
costs a few microseconds per event (bench/intake.py --paused measures it). Every spilled item is
counted in `stats.overflows`.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections import deque

from gevent.event import Event

from eslbridge.esl.stats import IntakeStats

_REC = struct.Struct("!BI")  # tag, payload length
_CHUNK = 1 << 20


class SpillQueue:
    """Unbounded FIFO: `maxlen` items in memory, the rest in a file under `spill_dir`."""

    def __init__(self, maxlen: int, stats: IntakeStats, spill_dir: str | None = None) -> None:
        if maxlen < 1:
            raise ValueError("queue size must be at least 1")
        self._mem: deque[tuple[int, bytes]] = deque()
        self._maxlen = maxlen
        self._stats = stats
        self._dir = spill_dir
        self._fd: int | None = None
        self._wbuf = bytearray()
        self._wpos = 0  # bytes flushed to the file
        self._rpos = 0  # bytes consumed from the file
        self._rbuf = b""
        self._roff = 0
        self._spilled = 0  # items in the file (flushed or buffered) not yet consumed
        self._ready = Event()

    def __len__(self) -> int:
        return len(self._mem) + self._spilled

    def put(self, tag: int, payload: bytes) -> None:
        if self._spilled or len(self._mem) >= self._maxlen:
            self._spill(tag, payload)
        else:
            self._mem.append((tag, payload))
        self._stats.queue_depth = len(self)
        self._ready.set()

    def get(self, timeout: float | None = None) -> tuple[int, bytes] | None:
        """The oldest item, waiting up to `timeout` seconds; None when nothing arrived."""
        while True:
            if self._mem:
                item = self._mem.popleft()
            elif self._spilled:
                item = self._unspill()
            else:
                self._ready.clear()
                if not self._ready.wait(timeout):
                    return None
                continue
            self._stats.queue_depth = len(self)
            return item

    def _spill(self, tag: int, payload: bytes) -> None:
        if self._fd is None:
            fd, path = tempfile.mkstemp(prefix="eslbridge-spill-", dir=self._dir)
            os.unlink(path)  # nothing to clean up after a crash; the journal is what survives restarts
            self._fd = fd
        self._wbuf += _REC.pack(tag, len(payload))
        self._wbuf += payload
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
        payload = self._rbuf[start : start + length]
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
