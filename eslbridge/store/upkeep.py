"""Scheduled database upkeep inside the daemon (DESIGN sections 7 and 9): a greenlet that, on a
timer, creates the call tables' monthly partitions ahead (``maintain_partitions``), runs the
retention hook (the daemon passes privacy.retention's) and refreshes ``daily_call_summary``.

Safe with two daemons on one database: each run takes ``pg_try_advisory_xact_lock``; the
daemon that does not get it skips that run (the other is doing the same work), and the lock
ends with the transaction, so a crashed daemon never leaves it held. Runs are jittered so two
daemons started together do not keep colliding.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import gevent
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from eslbridge.ops.logs import LogOnce, first_line

log = logging.getLogger(__name__)
_outage = LogOnce(log)  # one line a minute while the database is down

# pg_try_advisory_xact_lock key ("eslupkep" in ASCII); migrations use another.
UPKEEP_LOCK_KEY = 0x65736C75706B6570
RETRY_AFTER_ERROR = 60.0  # seconds before a failed run is retried (at most ``interval``)

RetentionHook = Callable[[psycopg.Connection, Any], list[str]]


@dataclass
class UpkeepResult:
    ran: bool  # False: another daemon held the lock, nothing done
    actions: list[str] = field(default_factory=list)  # e.g. "created call_records_y2025m07", "refreshed ..."


class Upkeep:
    """``Upkeep(pool_or_dsn, retention_cfg).start()``; ``run_once()`` for one run now.

    ``retention_hook(conn, retention_cfg) -> [action, ...]`` runs inside the run's transaction,
    after partitions are created and before the summary refresh: retention (dropping expired
    partitions, deleting old rows) belongs there. Without it nothing is deleted.
    """

    def __init__(self, pool_or_dsn: ConnectionPool | str, retention_cfg: Any = None, *, months_ahead: int = 3,
                 interval: float = 3600.0, retention_hook: RetentionHook | None = None,
                 lock_timeout: float = 10.0, metrics: Any = None) -> None:
        if months_ahead < 0 or interval <= 0:
            raise ValueError("months_ahead must be >= 0 and interval > 0")
        self._source = pool_or_dsn
        self.retention_cfg = retention_cfg
        self.retention_hook = retention_hook
        self._months_ahead = months_ahead
        self._interval = interval
        self._lock_timeout_ms = int(lock_timeout * 1000)
        self._greenlet: gevent.Greenlet | None = None
        self.last_result: UpkeepResult | None = None
        self.failures = 0
        self._metrics = metrics

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None

    def run_once(self) -> UpkeepResult:
        """One run now, in one transaction; raises psycopg errors (the timer logs and retries)."""
        with self._connection() as conn, conn.transaction():
            got = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (UPKEEP_LOCK_KEY,)).fetchone()[0]
            if not got:
                return UpkeepResult(ran=False)
            # Creating a partition locks its parent; never queue behind (and stall) writers for long.
            conn.execute(f"SET LOCAL lock_timeout = {self._lock_timeout_ms}")
            actions = [r[0] for r in conn.execute("SELECT maintain_partitions(%s)", (self._months_ahead,))]
            if self.retention_hook is not None:
                actions += self.retention_hook(conn, self.retention_cfg)
            conn.execute("SELECT refresh_daily_summary()")
            actions.append("refreshed daily_call_summary")
        return UpkeepResult(ran=True, actions=actions)

    def _loop(self) -> None:
        while True:
            delay = self._interval
            try:
                self.last_result = self.run_once()
                if self.last_result.ran:
                    log.info("upkeep: %s", "; ".join(self.last_result.actions))
                    self._count("ok")
                else:
                    log.info("upkeep: another daemon is running it; skipped")
                    self._count("skipped")
            except (psycopg.Error, PoolTimeout) as e:
                self.failures += 1
                self._count("failed")
                delay = min(self._interval, RETRY_AFTER_ERROR)
                _outage.warning("upkeep-failed", "upkeep failed, retrying in %.0f s: %s", delay, first_line(e))
            gevent.sleep(random.uniform(0.9, 1.1) * delay)

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.upkeep_runs.labels(result).inc()
            if result == "ok":
                self._metrics.upkeep_last_success.set_to_current_time()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        if isinstance(self._source, ConnectionPool):
            with self._source.connection() as conn:
                yield conn
        else:
            with psycopg.connect(self._source, autocommit=True) as conn:
                yield conn
