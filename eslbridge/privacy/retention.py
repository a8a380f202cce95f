"""Retention: remove what is past its window (DESIGN section 4 ``retention``), report it, audit it.

Call tables (``call_records`` by ``start_time``, ``calls`` by ``initiated_at``): monthly partitions
whose whole month is past the window are dropped (``drop_expired_partitions``: cheap, no dead
rows), then rows past the window left in the boundary month and the default partition are
deleted. Deleting ``calls`` rows cascades to their ``call_events``. ``call_events`` and
``audit_logs`` use the seed's functions with the configured days. The ``retention.run`` audit
entry is written after the audit-log cleanup, so it always survives its own run.

``--dry-run`` counts the same rows (through the parent table: partitions carry no grants) and
changes nothing but the audit entry. Each table is one transaction, serialised across processes
by an advisory lock, so the daemon's daily run and an operator's run never drop the same partition.

The cutoff is ``now() - window`` on the database's clock, taken once per table transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from eslbridge.accounts.audit import audit
from eslbridge.config import RetentionConfig
from eslbridge.store.rows import CALL_RECORDS, CALLS, TableSpec

# The advisory lock every retention run takes (hashed by PostgreSQL): keep the text as it is, or a
# daemon and an operator running different versions would no longer exclude each other.
LOCK_KEY = "eslbridge.retention"


@dataclass
class TableReport:
    table: str
    window_days: int
    cutoff: datetime
    partitions_dropped: list[str] = field(default_factory=list)
    rows_in_dropped_partitions: int = 0
    rows_deleted: int = 0  # rows removed row by row (boundary/default partitions, or the whole table)
    call_events_cascaded: int = 0  # calls only: their linked call_events, removed with them

    @property
    def rows_removed(self) -> int:
        return self.rows_in_dropped_partitions + self.rows_deleted


@dataclass
class RetentionReport:
    dry_run: bool
    tables: list[TableReport]

    def table(self, name: str) -> TableReport:
        return next(t for t in self.tables if t.table == name)

    def as_dict(self) -> dict:
        """JSON-ready (the audit entry's details)."""
        return {"dry_run": self.dry_run, "tables": [
            {**asdict(t), "cutoff": t.cutoff.isoformat(), "rows_removed": t.rows_removed} for t in self.tables]}

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        out = []
        for t in self.tables:
            parts = f" ({len(t.partitions_dropped)} partitions: {', '.join(t.partitions_dropped)})" \
                if t.partitions_dropped else ""
            if t.call_events_cascaded:
                parts += f" and their {t.call_events_cascaded} call_events"
            out.append(f"{t.table:<13} older than {t.window_days} days (before {t.cutoff:%Y-%m-%d %H:%M:%S %Z}): "
                       f"{verb} {t.rows_removed} rows{parts}")
        return out


def _locked_cutoff(conn: psycopg.Connection, days: int) -> datetime:
    return conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s)), now() - make_interval(days => %s)",
                        (LOCK_KEY, days)).fetchone()[1]


def _partitioned(conn: psycopg.Connection, spec: TableSpec, days: int, dry_run: bool) -> TableReport:
    column = spec.key[-1]  # the partition key: start_time / initiated_at
    keep = "make_interval(days => %s)"
    with conn.transaction():
        report = TableReport(spec.name, days, _locked_cutoff(conn, days))
        expired = conn.execute("SELECT partition::text, lower_bound, upper_bound"
                               f" FROM expired_partitions(%s::regclass, {keep})", (spec.name, days)).fetchall()
        if spec is CALLS:  # ON DELETE CASCADE takes the events linked to these calls
            report.call_events_cascaded = conn.execute(
                "SELECT count(*) FROM call_events WHERE call_initiated_at < %s", (report.cutoff,)).fetchone()[0]
        for name, lower, upper in expired:
            report.partitions_dropped.append(name)
            report.rows_in_dropped_partitions += conn.execute(
                f"SELECT count(*) FROM {spec.name} WHERE {column} >= %s AND {column} < %s",
                (lower, upper)).fetchone()[0]
        if dry_run:
            past = conn.execute(f"SELECT count(*) FROM {spec.name} WHERE {column} < %s", (report.cutoff,)).fetchone()[0]
            report.rows_deleted = past - report.rows_in_dropped_partitions
        else:
            # The same list as above: both come from expired_partitions.
            report.partitions_dropped = [r[0] for r in conn.execute(
                f"SELECT drop_expired_partitions(%s::regclass, {keep})", (spec.name, days))]
            report.rows_deleted = conn.execute(f"DELETE FROM {spec.name} WHERE {column} < %s",
                                               (report.cutoff,)).rowcount
    return report


def _by_function(conn: psycopg.Connection, table: str, function: str, days: int, dry_run: bool,
                 calls: TableReport | None = None) -> TableReport:
    with conn.transaction():
        report = TableReport(table, days, _locked_cutoff(conn, days))
        if dry_run:
            # The same predicate as the seed's cleanup functions (migration 0003), as a count; events
            # that go with their calls are counted there (a real run removes them first).
            linked = " AND (call_initiated_at IS NULL OR call_initiated_at >= %s)" if calls else ""
            params = (report.cutoff, calls.cutoff) if calls else (report.cutoff,)
            report.rows_deleted = conn.execute(f"SELECT count(*) FROM {table} WHERE timestamp < %s{linked}",
                                               params).fetchone()[0]
        else:
            report.rows_deleted = conn.execute(f"SELECT {function}(%s)", (days,)).fetchone()[0]
    return report


@contextmanager
def _connection(target: psycopg.Connection | ConnectionPool) -> Iterator[psycopg.Connection]:
    if isinstance(target, ConnectionPool):
        with target.connection() as conn:
            yield conn
    else:
        yield target


RETENTION_TABLES = 4  # the steps below, one per table: what progress counts


def run_retention(target: psycopg.Connection | ConnectionPool, cfg: RetentionConfig, dry_run: bool = False,
                  actor: str | None = None, progress: Callable[[str], None] | None = None) -> RetentionReport:
    """Apply (or with ``dry_run`` only count) every retention window; audited as ``retention.run``.

    ``target`` is an autocommit connection or the daemon's pool (the daily timer calls this);
    ``progress(table)`` is called as each table is done.
    """
    def step(table: TableReport) -> TableReport:
        if progress:
            progress(table.table)
        return table

    with _connection(target) as conn:
        calls = step(_partitioned(conn, CALLS, cfg.calls_days, dry_run))
        report = RetentionReport(dry_run, [
            step(_partitioned(conn, CALL_RECORDS, cfg.call_records_days, dry_run)),
            calls,
            step(_by_function(conn, "call_events", "cleanup_old_call_events", cfg.call_events_days, dry_run,
                              calls)),
            step(_by_function(conn, "audit_logs", "cleanup_old_audit_logs", cfg.audit_logs_days, dry_run)),
        ])
        with conn.transaction():
            audit(conn, "retention.run", "retention", None, report.as_dict(), actor=actor)
    return report


class DailyRetention:
    """The daemon's retention: upkeep calls this hook hourly (under its advisory lock); it runs
    retention once a day per daemon (DESIGN section 3) and returns the report's lines."""

    def __init__(self, actor: str, every: float = 24 * 3600.0) -> None:
        self._actor = actor
        self._every = every
        self._due = 0.0  # monotonic time of the next run

    def __call__(self, conn: psycopg.Connection, cfg: Any) -> list[str]:
        if time.monotonic() < self._due:
            return []
        report = run_retention(conn, cfg, actor=self._actor)
        self._due = time.monotonic() + self._every
        return report.lines()
