"""Directory reads from a streaming standby (``database.replica_url``), only where a stale row
cannot authenticate anyone.

A standby replays the primary's WAL a little later, so it may still hold a password that was
just changed. Invalidations keep coming from the primary's NOTIFY (listener.py); each one
*fences* its key: the key is read from the primary until the standby has replayed past the WAL
position the primary had reached once the notification arrived (the change's commit is behind
it). The same holds for every key at once after LISTEN (re)connects (notifications sent while
we were away are lost) and after a role change (a role's permissions reach users the cache
never saw). Everything goes to the primary while LISTEN is down, while the standby is down
(for ``retry_after`` seconds after a failure: its share of the batch is read again on the
primary within the same deadline), when it is no standby, while it lags more than ``max_lag``
seconds behind what the primary had, and when the primary's position has not been read for
``PRIMARY_SILENCE`` seconds (a partition may hide notifications before LISTEN notices it).

Why the order of observations is enough: ``pg_last_wal_replay_lsn()`` only grows while a
standby runs, and a statement's snapshot holds every commit replayed before it started. So a
replay position seen by one statement holds for every later statement on the same connection;
after any failure the connection is new (perhaps to a restarted standby, replaying again from
its last restartpoint), so the position is forgotten and nothing is read there before the
standby is seen past every position it was trusted with before (``_floor``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from gevent.event import Event
from gevent.lock import Semaphore

from eslbridge.directory.userquery import Key, QueryTimeout, Row, UserQuery

log = logging.getLogger(__name__)

PROBE_SECONDS = 0.5  # both positions are read this often (and at once when a fence needs one)
RETRY_AFTER = 1.0
PRIMARY_SILENCE = 3.0  # seconds without the primary's position before the standby is not trusted
MAX_FENCES = 10_000
_MAX_MARKS = 10_000  # lag samples kept; when full the oldest stay, so the lag shown only grows
ALL = ("", "")  # the fence of every key


class Fences:
    """The bookkeeping of which keys the standby may answer (pure: no I/O, tests drive it).

    Positions are WAL byte offsets; times are ``clock()`` values. A fence is (seq, position):
    its number, and the primary's position once read after it (None until then)."""

    def __init__(self, max_lag: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_lag = max_lag
        self._clock = clock
        self._seq = 0
        self._fences: dict[Key, tuple[int, int | None]] = {ALL: (0, None)}
        self._unplaced: collections.deque[tuple[int, Key]] = collections.deque([(0, ALL)])  # by seq
        self._placed: collections.deque[tuple[int, int, Key]] = collections.deque()  # (position, seq, key)
        self._marks: collections.deque[tuple[float, int]] = collections.deque()  # (read at, primary position)
        self.replayed: int | None = None  # the standby's replay position on the current connection
        self._floor = 0  # the highest fence released: the standby must be past it to be trusted
        self.is_standby = True
        self.down_until = 0.0
        self.epoch = 0  # standby failures: a split made in an earlier epoch trusted another connection
        self._primary_seen = float("-inf")

    @property
    def seq(self) -> int:
        return self._seq

    def fence(self, key: Key) -> None:
        if len(self._fences) >= MAX_FENCES:  # a bulk change: one fence for all is as good and bounded
            self.fence_all()
            return
        self._seq += 1
        self._fences[key] = (self._seq, None)
        self._unplaced.append((self._seq, key))

    def fence_all(self) -> None:
        self._seq += 1
        self._fences = {ALL: (self._seq, None)}
        self._unplaced = collections.deque([(self._seq, ALL)])
        self._placed.clear()

    def primary_at(self, position: int, seq: int, read_at: float) -> None:
        """The primary's position, read by a statement sent at ``read_at``, after fence ``seq``."""
        self._primary_seen = read_at
        while self._unplaced and self._unplaced[0][0] <= seq:
            s, key = self._unplaced.popleft()
            if self._fences.get(key) == (s, None):  # not fenced again since
                self._fences[key] = (s, position)
                self._placed.append((position, s, key))
        if len(self._marks) < _MAX_MARKS and (not self._marks or position > self._marks[-1][1]):
            self._marks.append((read_at, position))
        self._release()

    def standby_at(self, position: int | None) -> None:
        """The standby's replay position; None: the server is no standby."""
        self.is_standby = position is not None
        self.replayed = position
        self._release()

    def standby_failed(self, retry_after: float) -> None:
        self.epoch += 1
        self.replayed = None
        self.down_until = self._clock() + retry_after

    def lag(self) -> float:
        """Seconds since the primary reached a position the standby has not replayed yet."""
        if not self._marks:
            return 0.0
        return max(0.0, self._clock() - self._marks[0][0])

    def blocker(self) -> str | None:
        """Why no key may be read on the standby now (a metrics label), else None."""
        now = self._clock()
        if now - self._primary_seen > PRIMARY_SILENCE:
            return "no_primary"  # invalidations may be lost with it, and its position is unknown
        if now < self.down_until:
            return "down"
        if not self.is_standby:
            return "not_standby"
        if self.replayed is None or self.replayed < self._floor or ALL in self._fences:
            return "catching_up"
        if self.lag() > self.max_lag:
            return "lag"
        return None

    def split(self, keys: Iterable[Key]) -> tuple[list[Key], list[Key], str]:
        """(keys the standby may answer, keys for the primary, why those go to the primary)."""
        keys = list(keys)
        reason = self.blocker()
        if reason is not None:
            return [], keys, reason
        fences = self._fences
        return [k for k in keys if k not in fences], [k for k in keys if k in fences], "changed"

    def _release(self) -> None:
        replayed = self.replayed
        if replayed is None:
            return
        while self._marks and self._marks[0][1] <= replayed:
            self._marks.popleft()
        if replayed < self._floor:
            return
        while self._placed and self._placed[0][0] <= replayed:
            position, s, key = self._placed.popleft()
            if self._fences.get(key) == (s, position):
                del self._fences[key]
                self._floor = max(self._floor, position)


class _Moved(Exception):
    """The standby failed (and its connection changed) since the keys were judged."""


class ReplicaRouter:
    """A UserQuery look-alike for UserLookups: each batch's keys split between the standby and the
    primary by ``Fences``, both positions kept up to date by a probe greenlet."""

    def __init__(self, primary: UserQuery, standby: UserQuery, fences: Fences,
                 listening: Callable[[], bool], metrics: Any = None, retry_after: float = RETRY_AFTER) -> None:
        self.fences = fences
        self._primary, self._standby = primary, standby
        self._primary_lock, self._standby_lock = Semaphore(), Semaphore()
        self._listening = listening
        self._metrics = metrics
        self._retry_after = retry_after
        self._wake = Event()
        self._probe: gevent.Greenlet | None = None
        self._warned: set[str] = set()
        self.standby_reads = 0  # keys answered by the standby; ``fallbacks`` by the primary instead
        self.fallbacks: collections.Counter[str] = collections.Counter()
        if metrics is not None:
            metrics.directory_replica_lag.set_function(fences.lag)

    # --- what the fences are told ------------------------------------------------------------

    def fence(self, key: Key) -> None:
        self.fences.fence(key)
        self._wake.set()

    def fence_all(self) -> None:
        self.fences.fence_all()
        self._wake.set()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._probe = gevent.spawn(self._probe_loop)

    def close(self) -> None:
        if self._probe is not None:
            self._probe.kill()
            self._probe = None
        self._primary.close()
        self._standby.close()

    # --- UserQuery's interface ---------------------------------------------------------------

    def run(self, keys: Iterable[Key], deadline: float) -> list[Row]:
        standby_keys, primary_keys, reason = self.fences.split(keys)
        epoch = self.fences.epoch
        if not self._listening():
            standby_keys, primary_keys, reason = [], standby_keys + primary_keys, "no_listen"
        rows: list[Row] = []
        fallbacks = [reason] * len(primary_keys)
        if standby_keys:
            try:
                # Half the time left at most: a standby that hangs leaves the primary time to answer.
                rows = self._on_standby(standby_keys, (time.monotonic() + deadline) / 2, epoch)
                self._count_standby(len(standby_keys))
            except Exception:  # any failure (already reported): read these keys on the primary
                primary_keys += standby_keys
                fallbacks += ["down"] * len(standby_keys)
        if primary_keys:
            self._count_fallbacks(fallbacks)
            rows += self._on_primary(primary_keys, deadline)
        return rows

    # --- the two connections -----------------------------------------------------------------

    def _on_standby(self, keys: list[Key], deadline: float, epoch: int | None = None) -> list[Row]:
        with self._standby_lock:
            if epoch is not None and epoch != self.fences.epoch:
                raise _Moved()
            try:
                rows, position = self._standby.run_at(keys, deadline)
            except BaseException as exc:  # also a kill: the connection was closed, its position is void
                self._standby_failed(exc)
                raise
            self.fences.standby_at(position)
        if position is None:
            self._warn_once("not_standby", "database.replica_url is not a standby: directory lookups read the primary")
        return rows

    def _on_primary(self, keys: list[Key], deadline: float) -> list[Row]:
        seq, sent = self.fences.seq, time.monotonic()
        with self._primary_lock:
            rows, position = self._primary.run_at(keys, deadline)
        if position is not None:
            self.fences.primary_at(position, seq, sent)
        return rows

    def _probe_loop(self) -> None:
        while True:
            self._wake.wait(PROBE_SECONDS)
            self._wake.clear()
            deadline = time.monotonic() + PROBE_SECONDS * 2
            try:
                self._on_primary([], deadline)
            except Exception as exc:  # the lookups report the primary's failures
                log.debug("directory probe of the primary failed: %s", type(exc).__name__)
            if time.monotonic() < self.fences.down_until:
                continue
            with contextlib.suppress(Exception):  # reported by _standby_failed; lookups go on
                self._on_standby([], deadline)

    def _standby_failed(self, exc: BaseException) -> None:
        self.fences.standby_failed(self._retry_after)
        if not isinstance(exc, Exception):
            return
        kind = "timeout" if isinstance(exc, QueryTimeout) else type(exc).__name__
        self._warn_once("down", f"directory standby unavailable ({kind}): lookups read the primary")

    # --- reporting ---------------------------------------------------------------------------

    def _warn_once(self, what: str, message: str) -> None:
        """One line per kind of trouble until the standby serves again (no log flood at 1,000/s)."""
        if what not in self._warned:
            self._warned.add(what)
            log.warning(message)

    def _count_standby(self, n: int) -> None:
        if self._warned:
            self._warned.clear()
            log.info("directory standby serves lookups again")
        self.standby_reads += n
        if self._metrics is not None:
            self._metrics.directory_replica_reads.inc(n)

    def _count_fallbacks(self, reasons: list[str]) -> None:
        for reason, n in collections.Counter(reasons).items():
            self.fallbacks[reason] += n
            if self._metrics is not None:
                self._metrics.directory_replica_fallbacks.labels(reason).inc(n)
