"""The on-disk journal: finished records survive a DB outage and kill -9 (DESIGN section 9).

Layout of the journal directory (0700)::

    lock                  flock'd by the one process using the directory
    checkpoint            highest committed sequence number, two CRC'd slots written in turn
    seg-<first seq>.log   append-only segments of records

A record is a 20-byte header, ``MAGIC (4) | payload length (u32) | seq (u64) | CRC32 (u32)``,
little-endian, then the payload. The CRC covers length, seq and payload. The magic lets the
reader find the next record after damage: a torn last record (crash mid-write) or flipped
bits are detected by the CRC, logged once, counted in ``stats.corrupt_records`` and skipped;
the reader carries on at the next position where a whole valid record starts.

Durability: ``append`` returns a record's seq only after an fsync covering it (group
commit: while one fsync runs, other greenlets keep writing; the next fsync covers all of
them, and greenlets whose record it covered return without one of their own). fsync runs
in gevent's threadpool so the event loop keeps serving ESL while the disk works. A new
segment file's directory entry is fsync'd with the data before anything in it counts.

``commit(seq)`` records that every record up to ``seq`` is in PostgreSQL: the checkpoint is
written (one slot, fsync'd; a torn slot leaves the other valid), closed segments holding only
committed records are deleted, and the active one is truncated once all of it is committed.
``replay()`` yields the uncommitted records in seq order.

Personal data in payloads is encrypted at rest by an optional ``sealer`` (the keyring's
``journal_sealer()``: AES-256-GCM, bound to the seq); the CRC covers the sealed bytes. A record
that fails to open (key removed from the keyring, tampering) is logged, counted in
``stats.unreadable_records`` and skipped: keep retired keys in the keyring until the journal
holds nothing written under them.

Disk bound: ``max_bytes`` over all segments. An append that would pass it raises
``JournalFull`` (the caller decides); crossing 80% logs a warning, 95% an error, once each
until usage falls back below 80%. ``bytes_used`` is the value for the metric.

One journal object per directory per process, used from one thread (any number of greenlets).
"""

from __future__ import annotations

import errno as _errno
import fcntl
import logging
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import gevent
import gevent.event
import gevent.lock

from eslbridge.errors import EslBridgeError
from eslbridge.keys.openpgp import DecryptionError

log = logging.getLogger(__name__)

MAGIC = b"ESJ1"
HEADER = struct.Struct("<4sIQI")
MAX_PAYLOAD = 64 * 1024 * 1024
CHECKPOINT = struct.Struct("<4sQQI")  # magic, generation, committed seq, CRC32 of the first three
CHECKPOINT_MAGIC = b"ESJC"
CHECKPOINT_SLOT = 512  # one slot per disk sector: a torn write spoils at most one
SEGMENT_NAME = re.compile(r"seg-(\d{20})\.log")
WARN_LEVELS = (0.80, 0.95)


class JournalError(EslBridgeError):
    """The journal cannot do what was asked (I/O error, directory in use, bad argument).
    ``errno`` is the OS error behind it, if any."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno

    @property
    def kind(self) -> str:
        """A short name for metrics: ``enospc``, ``edquot``, ``emfile``, ``erofs``, ``full``, ..."""
        return _errno.errorcode.get(self.errno, "error").lower() if self.errno else "error"

    @property
    def advice(self) -> str:
        """What the operator does about it, for the one log line."""
        return _ADVICE.get(self.errno, "check the disk and the directory's permissions")


class JournalFull(JournalError):
    """Appending would pass ``max_bytes``; nothing was written."""

    kind = "full"  # type: ignore[assignment]
    advice = "PostgreSQL is not taking records: bring it back, or raise journal.max_bytes"  # type: ignore[assignment]


_ADVICE = {
    _errno.ENOSPC: "free space on the journal's filesystem",
    _errno.EDQUOT: "raise the disk quota of the user eslbridge runs as",
    _errno.EMFILE: "raise LimitNOFILE= of the service (too many open files)",
    _errno.ENFILE: "the system is out of file handles: raise fs.file-max",
    _errno.EROFS: "the journal's filesystem is read-only: remount it read-write",
    _errno.EACCES: "make the journal directory writable by the user eslbridge runs as (StateDirectory=)",
    _errno.EPERM: "make the journal directory writable by the user eslbridge runs as (StateDirectory=)",
    _errno.EFBIG: "the file size limit (LimitFSIZE=/ulimit -f) is too low for the journal",
    _errno.EIO: "the disk reports I/O errors: check the device",
}


class PayloadSealer(Protocol):
    def seal(self, seq: int, data: bytes) -> bytes: ...

    def open(self, seq: int, blob: bytes) -> bytes: ...


@dataclass
class JournalStats:
    appended: int = 0
    fsyncs: int = 0
    corrupt_records: int = 0  # damaged regions skipped (torn tail, flipped bits)
    unreadable_records: int = 0  # intact records the sealer could not open


def _record_crc(length: int, seq: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<IQ", length, seq)))


def encode_record(seq: int, payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, len(payload), seq, _record_crc(len(payload), seq, payload)) + payload


def _valid_at(buf: bytes, pos: int) -> tuple[int, bytes] | None:
    """(seq, payload) of an intact record starting at ``pos``, else None."""
    if len(buf) - pos < HEADER.size:
        return None
    magic, length, seq, crc = HEADER.unpack_from(buf, pos)
    end = pos + HEADER.size + length
    if magic != MAGIC or length > MAX_PAYLOAD or end > len(buf):
        return None
    payload = buf[pos + HEADER.size:end]
    return (seq, payload) if _record_crc(length, seq, payload) == crc else None


def scan(buf: bytes) -> Iterator[tuple[int, int, int, bytes | None]]:
    """(offset, end, seq, payload) of each record; payload None (seq -1) for a damaged region."""
    pos = 0
    while pos < len(buf):
        found = _valid_at(buf, pos)
        if found is not None:
            seq, payload = found
            end = pos + HEADER.size + len(payload)
            yield pos, end, seq, payload
            pos = end
            continue
        nxt = buf.find(MAGIC, pos + 1)
        while nxt >= 0 and _valid_at(buf, nxt) is None:
            nxt = buf.find(MAGIC, nxt + 1)
        end = len(buf) if nxt < 0 else nxt
        yield pos, end, -1, None
        pos = end


def _blocking(fn, *args):
    """Run a blocking syscall in gevent's threadpool; the event loop keeps running."""
    return gevent.get_hub().threadpool.apply(fn, args)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    def __init__(self, directory: str | os.PathLike, max_bytes: int, fsync: bool = True,
                 sealer: PayloadSealer | None = None, segment_bytes: int | None = None,
                 on_damage: Callable[[], None] | None = None):
        if max_bytes <= HEADER.size:
            raise JournalError(f"journal max_bytes must be more than {HEADER.size}")
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(1 << 20, min(64 << 20, max_bytes // 16))
        self.stats = JournalStats()
        self._fsync = fsync
        self._sealer = sealer
        self._inflight: gevent.event.AsyncResult | None = None  # the fsync under way
        self._checkpoint_lock = gevent.lock.Semaphore()
        self._reported: set[tuple[str, int]] = set()  # damage already logged and counted
        self._on_damage = on_damage  # the daemon's metric: damaged records are records lost
        self._warned = 0.0
        self._closed = False
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise JournalError(f"journal directory {self.dir}: {e.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise JournalError(f"journal directory {self.dir} is in use by another process") from None
        self._generation, self._committed = self._read_checkpoint()
        self._segments = self._list_segments()  # first seq -> path, closed and active
        self._sizes = {first: p.stat().st_size for first, p in self._segments.items()}
        self._written = max(self._committed, self._last_seq())  # highest seq written
        self._durable = self._written
        self._fd: int | None = None  # active segment, opened at the first append
        self._active: int | None = None
        self._retired: list[int] = []  # fds of rotated segments not yet fsync'd and closed
        self._dir_dirty = False

    # --- state -----------------------------------------------------------------------------

    @property
    def bytes_used(self) -> int:
        return sum(self._sizes.values())

    @property
    def sealer(self) -> PayloadSealer | None:
        return self._sealer

    @sealer.setter
    def sealer(self, sealer: PayloadSealer) -> None:
        """A reloaded keyring's sealer (SIGHUP): later records are sealed with its active key, and it
        opens the earlier ones as long as their key is still in the keyring."""
        self._sealer = sealer

    @property
    def committed_seq(self) -> int:
        return self._committed

    @property
    def last_seq(self) -> int:
        return self._written

    def _list_segments(self) -> dict[int, Path]:
        found = {}
        for p in self.dir.iterdir():
            m = SEGMENT_NAME.fullmatch(p.name)
            if m:
                found[int(m.group(1))] = p
        return dict(sorted(found.items()))

    def _last_seq(self) -> int:
        for first in reversed(self._segments):
            seqs = [seq for _, _, seq, _ in self._scan_segment(first)]
            if seqs and max(seqs) >= 0:
                return max(seqs)
        return 0

    def _scan_segment(self, first: int) -> Iterator[tuple[int, int, int, bytes | None]]:
        path = self._segments[first]
        try:
            buf = _blocking(path.read_bytes)
        except FileNotFoundError:  # deleted by a commit meanwhile
            return
        for offset, end, seq, payload in scan(buf):
            if payload is None:
                self._report_damage(path, offset, end, len(buf))
            yield offset, end, seq, payload

    def _report_damage(self, path: Path, offset: int, end: int, size: int) -> None:
        if (path.name, offset) in self._reported:
            return
        self._reported.add((path.name, offset))
        self.stats.corrupt_records += 1
        if self._on_damage is not None:
            self._on_damage()
        what = "torn record at the end" if end == size else "damaged bytes"
        log.error("journal: %s of %s (offset %d, %d bytes) skipped", what, path, offset, end - offset)

    # --- checkpoint ------------------------------------------------------------------------

    def _read_checkpoint(self) -> tuple[int, int]:
        try:
            data = (self.dir / "checkpoint").read_bytes()
        except FileNotFoundError:
            return 0, 0
        best = (0, 0)
        for slot in (0, 1):
            raw = data[slot * CHECKPOINT_SLOT:slot * CHECKPOINT_SLOT + CHECKPOINT.size]
            if len(raw) < CHECKPOINT.size:
                continue
            magic, generation, committed, crc = CHECKPOINT.unpack(raw)
            if magic == CHECKPOINT_MAGIC and crc == zlib.crc32(raw[:-4]) and generation > best[0]:
                best = (generation, committed)
        if data and best == (0, 0):
            log.error("journal: checkpoint %s unreadable; replaying everything (writes are idempotent)",
                      self.dir / "checkpoint")
        return best

    def _write_checkpoint(self, committed: int) -> None:
        generation = self._generation + 1
        raw = CHECKPOINT.pack(CHECKPOINT_MAGIC, generation, committed, 0)[:-4]
        raw += struct.pack("<I", zlib.crc32(raw))
        path = self.dir / "checkpoint"
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, raw, (generation % 2) * CHECKPOINT_SLOT)
            if self._fsync:
                _blocking(os.fsync, fd)
        finally:
            os.close(fd)
        if created and self._fsync:
            _blocking(_fsync_path, self.dir)
        self._generation = generation

    # --- appending -------------------------------------------------------------------------

    def append(self, payload: bytes) -> int:
        """Write one record and return its seq once it is on disk."""
        seq = self._write(payload)
        self._sync(seq)
        return seq

    def append_many(self, payloads: list[bytes]) -> list[int]:
        """Write records and return their seqs once all are on disk (one fsync)."""
        seqs = self.write_many(payloads)
        if seqs:
            self.sync(seqs[-1])
        return seqs

    def write_many(self, payloads: list[bytes]) -> list[int]:
        """Write records and return their seqs at once: not durable until ``sync`` of the last."""
        return [self._write(p) for p in payloads]

    def sync(self, seq: int) -> None:
        """Return once records up to ``seq`` are on disk (group commit, see the module docstring)."""
        self._sync(seq)

    def _write(self, payload: bytes) -> int:
        if self._closed:
            raise JournalError("journal is closed")
        seq = self._written + 1
        record = encode_record(seq, self._sealer.seal(seq, payload) if self._sealer else payload)
        if len(record) - HEADER.size > MAX_PAYLOAD:
            raise JournalError(f"journal record of {len(record)} bytes is larger than {MAX_PAYLOAD}")
        if self.bytes_used + len(record) > self.max_bytes:
            raise JournalFull(f"journal {self.dir} is full ({self.bytes_used} of {self.max_bytes} bytes)")
        if self._fd is None or (self._sizes[self._active] and self._sizes[self._active] + len(record)
                                > self.segment_bytes):
            self._rotate(seq)
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            # Whatever part was written fails its CRC and is skipped on replay; seq stays used.
            self._written = seq
            raise JournalError(f"journal write to {self._segments[self._active]} failed: {e.strerror}",
                               e.errno) from None
        finally:
            self._sizes[self._active] = os.fstat(self._fd).st_size
        self._written = seq
        self.stats.appended += 1
        self._check_bound()
        return seq

    def _rotate(self, first_seq: int) -> None:
        path = self.dir / f"seg-{first_seq:020d}.log"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as e:
            raise JournalError(f"cannot create journal segment {path}: {e.strerror}", e.errno) from None
        if self._fd is not None:
            self._retired.append(self._fd)
        self._fd, self._active = fd, first_seq
        self._segments[first_seq] = path
        self._sizes[first_seq] = os.fstat(fd).st_size
        self._dir_dirty = True

    def _sync(self, seq: int) -> None:
        """Return once records up to ``seq`` are durable; one fsync serves every waiting greenlet."""
        while self._durable < seq:
            if self._inflight is not None:
                # Everyone waiting wakes together when it ends (a lock would let them through one
                # per fsync); whoever runs first then syncs all that was written meanwhile.
                self._inflight.get()
                continue
            self._inflight = round_ = gevent.event.AsyncResult()
            try:
                self._fsync_written()
            except JournalError as e:
                round_.set_exception(e)
                raise
            else:
                round_.set(None)
            finally:
                self._inflight = None

    def _fsync_written(self) -> None:
        target = self._written
        retired, self._retired = self._retired, []
        dir_dirty, self._dir_dirty = self._dir_dirty, False
        try:
            if self._fsync:
                for fd in [*retired, self._fd]:
                    _blocking(os.fsync, fd)
                if dir_dirty:
                    _blocking(_fsync_path, self.dir)
                self.stats.fsyncs += 1
        except OSError as e:
            self._retired = retired + self._retired
            self._dir_dirty = self._dir_dirty or dir_dirty
            raise JournalError(f"journal fsync in {self.dir} failed: {e.strerror}", e.errno) from None
        for fd in retired:
            os.close(fd)
        self._durable = max(self._durable, target)

    def _check_bound(self) -> None:
        used = self.bytes_used / self.max_bytes
        if used < WARN_LEVELS[0]:
            if self._warned:
                log.info("journal: usage back to %.0f%% of %d bytes", used * 100, self.max_bytes)
            self._warned = 0.0
            return
        level = max(lvl for lvl in WARN_LEVELS if used >= lvl)
        if level > self._warned:
            self._warned = level
            log.log(logging.ERROR if level >= WARN_LEVELS[-1] else logging.WARNING,
                    "journal %s is %.0f%% full (%d of %d bytes): PostgreSQL is not keeping up or is down; "
                    "appends fail when it is full", self.dir, used * 100, self.bytes_used, self.max_bytes)

    def probe(self, size: int = 4096) -> None:
        """Raise JournalError unless a file of ``size`` bytes can be created, written and fsync'd in
        the journal's directory now (how a failed journal notices it can write again)."""
        path = self.dir / "probe"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, bytes(size))
                if self._fsync:
                    _blocking(os.fsync, fd)
            finally:
                os.close(fd)
                path.unlink(missing_ok=True)
        except OSError as e:
            raise JournalError(f"journal directory {self.dir} is not writable: {e.strerror}", e.errno) from None

    # --- committing and replaying ----------------------------------------------------------

    def commit(self, up_to_seq: int) -> None:
        """Every record with seq <= ``up_to_seq`` is stored in PostgreSQL: forget them."""
        if up_to_seq > self._written:
            raise JournalError(f"cannot commit seq {up_to_seq}: the journal has written only up to {self._written}")
        with self._checkpoint_lock:
            if up_to_seq <= self._committed:
                return
            self._write_checkpoint(up_to_seq)
            self._committed = up_to_seq
            firsts = list(self._segments)
            for first, nxt in zip(firsts, [*firsts[1:], self._written + 1], strict=True):
                if nxt - 1 <= up_to_seq and first != self._active:  # every seq in it is below nxt
                    self._segments.pop(first).unlink(missing_ok=True)
                    del self._sizes[first]
            if self._active is not None and self._written <= up_to_seq and self._sizes[self._active]:
                # No yield since the check above, so no append can slip in before the truncate.
                os.ftruncate(self._fd, 0)
                self._sizes[self._active] = 0
            self._check_bound()

    def replay(self) -> Iterator[tuple[int, bytes]]:
        """(seq, payload) of every uncommitted record written so far, in seq order."""
        upto, last = self._written, self._committed
        for first in list(self._segments):
            if first not in self._segments:
                continue
            for _, _, seq, payload in self._scan_segment(first):
                if payload is None or seq <= max(last, self._committed) or seq > upto:
                    continue
                if self._sealer is not None:
                    try:
                        payload = self._sealer.open(seq, payload)
                    except DecryptionError as e:
                        if ("sealed", seq) not in self._reported:
                            self._reported.add(("sealed", seq))
                            self.stats.unreadable_records += 1
                            log.error("journal: record %d in %s skipped: %s", seq, self._segments.get(first), e)
                        continue
                last = seq
                yield seq, payload

    def close(self) -> None:
        """Close files (appends already fsync'd what they acknowledged)."""
        if self._closed:
            return
        self._closed = True
        if self._inflight is not None:
            self._inflight.wait()
        for fd in [*self._retired, *([self._fd] if self._fd is not None else [])]:
            os.close(fd)
        self._retired, self._fd = [], None
        os.close(self._lock_fd)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
