"""Idempotent, monotonic upserts of a batch of rows (DESIGN sections 7 and 9), three ways.

Every method runs the same ``INSERT ... SELECT ... ON CONFLICT (key) DO UPDATE ... WHERE`` per
table; they differ only in how rows reach the server:

``executemany``  one parameterised statement per row (psycopg sends them pipelined);
``pipeline``     explicit pipeline mode, ``execute`` per row;
``copy``         binary COPY into ON COMMIT DELETE ROWS temp tables, then one INSERT ... SELECT per table;
``arrays``       one array parameter per column, ``unnest``ed by one INSERT ... SELECT per table, the
                 whole transaction sent as one pipeline: a single network wait per batch, during
                 which the writer encodes the next batch (``eslbridge.store.writer``).

Every method runs its transaction with ``synchronous_commit = off`` (the writer's journal holds
the records until its durability barrier has flushed PostgreSQL's WAL: see the writer) and
``plan_cache_mode = force_generic_plan``, both local to the transaction (a pooled connection is
left as it was): the call_events foreign key is checked by a cached query
on the partitioned ``calls``, and with custom plans PostgreSQL re-plans it for every event row
(~100 us each, over half of the batch); the generic plan prunes partitions at run time. Measured
on a steady-state batch: call_events upsert 385 -> 114 us per call. The batch statements
themselves are never prepared (``prepare=False``): a plan cached while the tables were small
(or generic: the array sizes are unknown) turned linking events into a hash of every unlinked
event, a cost that grew with the table (120 -> 360 ms per batch within seconds); planned
afresh for every batch they probe indexes, for ~0.5 ms of planning per statement.

Measured by ``python -m bench.writes --compare`` (as fast as possible, fsync on, the whole writer
path with encryption and journal, on this shared 2-core machine): see bench/writes.py's docstring;
``arrays`` won, so it is ``DEFAULT_METHOD``.

The update rule makes replays no-ops and keeps rows from moving backwards:
a row changes only when the incoming stage is higher, or equal with different content.
Content means every plain column and blind index, and the *length* of every encrypted column
(ciphertext is randomised, so comparing bytes would make every replay rewrite the row; a
length or NULL change still catches an IP or SDP appearing). A same-stage change that only
alters an encrypted value without changing its length waits for the next stage: the final
record always carries the full state. A GDPR-erased call_records or calls row (erased_at set)
is never written again, so a journal replay cannot bring an erased party back.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from eslbridge.calls.records import Stage
from eslbridge.store import dumping
from eslbridge.store.rows import CALL_EVENTS, CALL_RECORDS, CALLS, BatchRows, Column, TableSpec
from eslbridge.store.startkey import RECORD_START, RECORD_UUID, Settled, claim, resolved_start, whole_second

# Each event row reaches the server with its call's start (from the batch's call_records row, not
# stored) so that its probe of the partitioned `calls` prunes to the partition of that second
# instead of probing every partition's call_uuid index (measured: ~43 of the events' ~129
# blocks per call). One second holds every key the call's `calls` row can have: startkey only
# moves a start between its whole second and its exact value. Without a start (a batch with
# events but not their call's record) the probe is unbounded, as it was.
CALL_START = Column("call_start", "timestamptz")
_SECOND = "date_trunc('second', s.call_start)"
_PROBE_RANGE = (f"initiated_at >= coalesce({_SECOND}, '-infinity')"  # coalesce, not OR: OR would not prune
                f" AND initiated_at < coalesce({_SECOND} + interval '1 second', 'infinity')")

# user_id must name an existing user: call_records keeps the row without the link (the FK
# would refuse it and block the batch), calls (user_id NOT NULL) skips the row. call_events
# rows point at their call's `calls` row when there is one.
_JOIN = {
    "call_records": ("LEFT JOIN users u ON u.id = s.user_id", {"user_id": "u.id"}),
    "calls": ("JOIN users u ON u.id = s.user_id", {"user_id": "u.id"}),
    # LATERAL ... LIMIT 1: an index probe per event; a join would scan every calls partition.
    "call_events": ("LEFT JOIN LATERAL (SELECT id, initiated_at FROM calls WHERE call_uuid = s.call_uuid"
                    f" AND {_PROBE_RANGE} LIMIT 1) c ON true", {}),
}
_EVENT_LINK = ("call_id, call_initiated_at", "c.id, c.initiated_at")
# Events written before their call got a `calls` row (its local user became known later)
# are linked when that row is inserted (created_at = now(): inserted by this transaction; an
# updated row keeps its first created_at. Partitioned tables cannot return xmax), and once more
# when the call finishes: an event another session committed while the row was being inserted
# (the outbound authorizer's decision, made as the call starts) was invisible to the first pass,
# and the call can only finish after that decision was committed.
# An index probe per new calls row, then one primary-key probe per event to link. The shape
# matters: OFFSET 0 fences the LATERAL probe (so `call_id IS NULL` is filtered on its output and
# never ANDed with, or driven by, the ever-growing index range of unlinked events), and the
# UPDATE's own table has no condition but its primary key. Measured: with `e.call_id IS NULL`
# on the outer table, a plan made before autoanalyze looped over every unlinked event per batch.
_LINK_EARLIER_EVENTS = (
    "UPDATE call_events e SET call_id = x.id, call_initiated_at = x.initiated_at FROM ("
    "SELECT up.id, up.initiated_at, ev.id AS event_id FROM up CROSS JOIN LATERAL ("
    "SELECT id, call_id FROM call_events WHERE call_uuid = up.call_uuid OFFSET 0) ev"
    " WHERE up.relink AND ev.call_id IS NULL) x WHERE e.id = x.event_id"
)


def _changed(spec: TableSpec) -> str:
    def cmp(alias: str) -> str:
        parts = []
        for c in spec.columns:
            if c.name in ("stage", "enc_key_id"):
                continue
            parts.append(f"octet_length({alias}.{c.name})" if c.personal else f"{alias}.{c.name}")
        return ", ".join(parts)

    same = f"({cmp('t')}) IS NOT DISTINCT FROM ({cmp('EXCLUDED')})"
    # At one stage a reconciled guess never replaces what the call's own events said (two writers
    # of one call: one closed it by a resync, the other saw its hangup).
    rule = (f"t.stage < EXCLUDED.stage OR (t.stage = EXCLUDED.stage AND NOT {same}"
            " AND (t.reconciled OR NOT EXCLUDED.reconciled))")
    if spec.name in ("call_records", "calls"):  # both carry erased_at (migrations 0002, 0007)
        rule = f"t.erased_at IS NULL AND ({rule})"
    return rule


def upsert_sql(spec: TableSpec, source: str, whole_seconds: bool = True) -> str:
    """The upsert of ``spec``'s rows read from ``source`` (a VALUES list or a staging table, aliased s).
    ``whole_seconds``: some rows may start on a whole second, whose key is resolved against stored rows."""
    join, exprs = _JOIN[spec.name]
    cols = ", ".join(spec.names)
    select = ", ".join(exprs.get(n, f"s.{n}") for n in spec.names)
    key = ", ".join(spec.key)
    if spec is CALL_EVENTS:
        return (f"INSERT INTO {spec.name} AS t ({cols}, {_EVENT_LINK[0]}) SELECT {select}, {_EVENT_LINK[1]}"
                f" FROM {source} {join} ON CONFLICT ({key}) DO NOTHING")
    updates = ", ".join(f"{n} = EXCLUDED.{n}" for n in spec.names if n not in spec.key)
    if whole_seconds:  # such a start takes the stored row's key (eslbridge.store.startkey)
        start = spec.key[1]
        resolved = ", ".join(f"{resolved_start(spec.name, n)} AS {n}" if n == start else f"s.{n}" for n in spec.names)
        source = f"(SELECT {resolved} FROM {source}) AS s"
    sql = (f"INSERT INTO {spec.name} AS t ({cols}) SELECT {select} FROM {source} {join}"
           f" ON CONFLICT ({key}) DO UPDATE SET {updates} WHERE {_changed(spec)}")
    if spec is CALLS:
        sql = (f"WITH up AS ({sql} RETURNING t.id, t.initiated_at, t.call_uuid,"
               f" t.created_at = now() OR t.stage = {int(Stage.FINISHED)} AS relink)"
               f" {_LINK_EARLIER_EVENTS}")
    return sql


def _source_columns(spec: TableSpec) -> tuple[Column, ...]:
    """The columns a batch sends for ``spec``: its own, and the call's start beside each event."""
    return (*spec.columns, CALL_START) if spec is CALL_EVENTS else spec.columns


def _values_source(spec: TableSpec) -> str:
    columns = _source_columns(spec)
    params = ", ".join(f"%b::{c.pg_type}" for c in columns)
    return f"(VALUES ({params})) AS s({', '.join(c.name for c in columns)})"


def _staging_table(spec: TableSpec) -> str:
    return f"_w_{spec.name}"


TABLES = (CALL_RECORDS, CALLS, CALL_EVENTS)


def _arrays_source(spec: TableSpec) -> str:
    columns = _source_columns(spec)
    params = ", ".join(f"%b::{c.pg_type}[]" for c in columns)
    return f"unnest({params}) AS s({', '.join(c.name for c in columns)})"


# Each statement twice, keyed (table, whole_seconds): a batch whose starts are all exact (the usual
# case: whole seconds come from snapshots) skips resolving them, whose subquery over every
# partition was most of the statement's planning (measured: call_records 0.58 -> 0.13 ms, calls
# 0.64 -> 0.19 ms per batch and lane, empty tables, idle host); the batch statements are planned
# afresh every time (see above).
def _both(source: Callable[[TableSpec], str]) -> dict[tuple[str, bool], str]:
    return {(spec.name, whole): upsert_sql(spec, source(spec), whole) for spec in TABLES for whole in (True, False)}


_ROW_SQL = _both(_values_source)
_STAGED_SQL = _both(lambda spec: f"{_staging_table(spec)} AS s")
_ARRAYS_SQL = _both(_arrays_source)
_SETTINGS = ("SELECT set_config('plan_cache_mode', 'force_generic_plan', true),"
             " set_config('synchronous_commit', 'off', true)")


def _events_with_start(rows: BatchRows) -> list[tuple]:
    # A call with two records in the batch (whole-second and exact start) has both in one second.
    start = {record[RECORD_UUID]: record[RECORD_START] for record in rows.call_records}
    return [(*event, start.get(event[0])) for event in rows.events]


def _tables(rows: BatchRows) -> list[tuple[TableSpec, list, tuple[str, bool]]]:
    """Each table's rows and the key of its statement. Order matters: calls before call_events,
    which point at them."""
    whole = any(whole_second(row[RECORD_START]) for row in rows.call_records)
    return [(spec, table_rows, (spec.name, whole)) for spec, table_rows in
            ((CALL_RECORDS, rows.call_records), (CALLS, rows.calls), (CALL_EVENTS, _events_with_start(rows)))]


def write_executemany(conn: psycopg.Connection, rows: BatchRows, settled: Settled | None = None) -> None:
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_SETTINGS)
        claim(cur, rows, settled)
        for _, table_rows, statement in _tables(rows):
            if table_rows:
                cur.executemany(_ROW_SQL[statement], table_rows)


def write_pipeline(conn: psycopg.Connection, rows: BatchRows, settled: Settled | None = None) -> None:
    with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
        cur.execute(_SETTINGS)
        claim(cur, rows, settled)
        for _, table_rows, statement in _tables(rows):
            for row in table_rows:
                cur.execute(_ROW_SQL[statement], row)


def _prepare_staging(conn: psycopg.Connection) -> None:
    """Create the session's staging tables; call outside a transaction (autocommit) so a rolled
    back batch cannot take them with it."""
    with conn.cursor() as cur:
        for spec in TABLES:
            cols = ", ".join(f"{c.name} {c.pg_type}" for c in _source_columns(spec))
            cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_staging_table(spec)} ({cols}) ON COMMIT DELETE ROWS")


def write_copy(conn: psycopg.Connection, rows: BatchRows, settled: Settled | None = None) -> None:
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_SETTINGS)
        claim(cur, rows, settled)
        for spec, table_rows, statement in _tables(rows):
            if not table_rows:
                continue
            columns = _source_columns(spec)
            with cur.copy(f"COPY {_staging_table(spec)} ({', '.join(c.name for c in columns)})"
                          " FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types([c.pg_type for c in columns])
                for row in table_rows:
                    cp.write_row(row)
            cur.execute(_STAGED_SQL[statement], prepare=False)


def _array_statements(rows: BatchRows) -> list[tuple[str, list[Any]]]:
    """Each non-empty table's statement and its parameters: one list per column."""
    return [(_ARRAYS_SQL[statement], [list(column) for column in zip(*table_rows, strict=True)])
            for _, table_rows, statement in _tables(rows) if table_rows]


def encode_arrays(rows: BatchRows) -> None:
    """Dump the batch's arrays ahead of its write (the writer's prefetcher, while PostgreSQL works on
    the batch before): over a sixth of the writer's CPU, which would otherwise run between two
    batches with PostgreSQL idle."""
    rows.encoded = [(statement, [dumping.dump_column(column) for column in columns])
                    for statement, columns in _array_statements(rows)]


def write_arrays(conn: psycopg.Connection, rows: BatchRows, settled: Settled | None = None) -> None:
    statements = rows.encoded if rows.encoded is not None else _array_statements(rows)
    # The pipeline's only sync is at the end: BEGIN to COMMIT go out before the first wait.
    with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
        cur.execute(_SETTINGS)
        claim(cur, rows, settled)
        for statement, params in statements:
            cur.execute(statement, params, prepare=False)


def _nothing(conn: psycopg.Connection) -> None:
    return None


def once_per_connection(prepare: Callable[[psycopg.Connection], None]) -> Callable[[psycopg.Connection], None]:
    """``prepare`` run once per connection (its session state, e.g. temp tables, lasts as long): the
    writer calls a method's prepare before every batch, on a connection that may be new or reused."""
    prepared: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()

    def prepare_once(conn: psycopg.Connection) -> None:
        if conn not in prepared:
            prepare(conn)
            prepared.add(conn)
    return prepare_once


def _no_encoding(rows: BatchRows) -> None:
    return None


class BatchWrite(Protocol):
    def __call__(self, conn: psycopg.Connection, rows: BatchRows, settled: Settled | None = None) -> None:
        """The batch, in one transaction of its own; ``settled``: the writer's keys that need no
        start-key claim (eslbridge.store.startkey)."""


@dataclass(frozen=True)
class WriteMethod:
    name: str
    write: BatchWrite
    prepare: Callable[[psycopg.Connection], None] = _nothing  # before a write, outside any transaction
    encode: Callable[[BatchRows], None] = _no_encoding  # ahead of the write, off the commit path: rows.encoded


METHODS = {
    m.name: m for m in (
        WriteMethod("executemany", write_executemany),
        WriteMethod("pipeline", write_pipeline),
        WriteMethod("copy", write_copy, once_per_connection(_prepare_staging)),
        WriteMethod("arrays", write_arrays, once_per_connection(dumping.register), encode_arrays),
    )
}
DEFAULT_METHOD = "arrays"
