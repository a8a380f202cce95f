"""One row per call whichever start its writers know (DESIGN section 9): the key's start resolved.

A call first seen in a `show channels` snapshot may be written before its own events come (the
correlator's ``settle``: its daemon could die meanwhile), under the snapshot's whole-second created
time; another daemon on the node, a journal replay or a re-adopting run writes the same call
under its exact start. Both are the same row: the rows' key is (call_uuid, start_time) in
``call_records`` and (call_uuid, initiated_at) in ``calls``, so the writer resolves the start,
in the batch's transaction:

1. ``LOCK``: an advisory transaction lock per call_uuid, taken in sorted order (no deadlock between
   two daemons or two lanes), so two transactions writing one call never both insert it unseen
   by the other, whichever writes first.
2. ``move_sql``: an exact start replaces a stored whole-second start of the same call in the same
   second (both tables; the call's events follow their ``calls`` row, in the same statement so
   the foreign key holds).
3. ``resolved_start``: a whole-second start takes the key of a row stored in that second (the
   exact one if any).

Steps 1 and 2 are skipped for an exact start whose row the same writer has already committed
(``Settled``): from then on another writer's whole-second start resolves to that row (step 3) and
the exact start finds its own row, so neither the lock nor the move can change anything. Most
writes of a call are its later stages, so most rows skip them.

"Approximate" is read as "a whole second": a snapshot's created time is the exact start
truncated to the second, and an exact start that falls on a whole second equals its
approximation, so the two share one key anyway.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from eslbridge.store.rows import CALL_RECORDS, CALLS, BatchRows, trim_oldest

# pg_advisory_xact_lock(int4, int4)'s first half: the writers' own namespace ("eslk" in ASCII).
LOCK_CLASS = 0x65736C6B

LOCK = (f"SELECT pg_advisory_xact_lock({LOCK_CLASS}, k) FROM (SELECT DISTINCT hashtext(u) AS k"
        " FROM unnest(%(uuid)s::varchar[]) AS u ORDER BY k OFFSET 0) AS x")


def in_second(column: str, value: str) -> str:
    """``column`` within the whole second of ``value`` (an index range on the key)."""
    return (f"{column} >= date_trunc('second', {value})"
            f" AND {column} < date_trunc('second', {value}) + interval '1 second'")


# {lo} and {hi}: literal bounds of the batch's starts (their whole seconds, hi exclusive), which let
# the planner prune every partition outside them; planned afresh for each batch anyway, this
# halves its planning, the largest of the batch's (measured: 0.84 -> 0.42 ms, empty tables, idle host).
_MOVE = (
    "WITH s AS (SELECT DISTINCT u.call_uuid, u.start_time"
    " FROM unnest(%(uuid)s::varchar[], %(start)s::timestamptz[]) AS u(call_uuid, start_time)"
    " WHERE u.start_time <> date_trunc('second', u.start_time)),"
    " r AS (UPDATE call_records t SET start_time = s.start_time FROM s"
    " WHERE t.start_time >= {lo} AND t.start_time < {hi}"
    " AND t.call_uuid = s.call_uuid AND t.start_time = date_trunc('second', s.start_time)"
    " AND NOT EXISTS (SELECT 1 FROM call_records x WHERE x.start_time >= {lo} AND x.start_time < {hi}"
    " AND x.call_uuid = s.call_uuid AND x.start_time = s.start_time) RETURNING t.call_uuid),"
    " c AS (UPDATE calls t SET initiated_at = s.start_time FROM s"
    " WHERE t.initiated_at >= {lo} AND t.initiated_at < {hi}"
    " AND t.call_uuid = s.call_uuid AND t.initiated_at = date_trunc('second', s.start_time)"
    " AND NOT EXISTS (SELECT 1 FROM calls x WHERE x.initiated_at >= {lo} AND x.initiated_at < {hi}"
    " AND x.call_uuid = s.call_uuid AND x.initiated_at = s.start_time) RETURNING t.id, t.call_uuid, t.initiated_at)"
    " UPDATE call_events e SET call_initiated_at = c.initiated_at FROM c"
    " WHERE e.call_uuid = c.call_uuid AND e.call_id = c.id"
)


def move_sql(starts: list[datetime]) -> sql.Composed:
    """Step 2 for a batch whose claimed starts are ``starts``."""
    lo = min(starts).replace(microsecond=0)
    hi = max(starts).replace(microsecond=0) + timedelta(seconds=1)
    return sql.SQL(_MOVE).format(lo=sql.Literal(lo), hi=sql.Literal(hi))


def resolved_start(table: str, column: str) -> str:
    """The start a source row ``s`` is written under in ``table`` (its key column ``column``)."""
    stored = (f"SELECT e.{column} FROM {table} e WHERE e.call_uuid = s.call_uuid"
              f" AND {in_second('e.' + column, 's.' + column)} ORDER BY e.{column} DESC LIMIT 1")
    return (f"CASE WHEN s.{column} = date_trunc('second', s.{column})"
            f" THEN COALESCE(({stored}), s.{column}) ELSE s.{column} END")


# Where a call_records row holds its key (a calls row: call_uuid first too).
RECORD_UUID = CALL_RECORDS.names.index("call_uuid")
RECORD_START = CALL_RECORDS.names.index("start_time")
_CALL_START = CALLS.names.index("initiated_at")


def whole_second(start: datetime) -> bool:
    """A start known only to the second (a snapshot's), whose key is resolved against stored rows."""
    return start.microsecond == 0


def _exact_key(row: tuple[Any, ...], start_at: int = RECORD_START) -> tuple[str, Any] | None:
    """(call_uuid, start) of a row (call_uuid first, its start at ``start_at``); None for a whole second."""
    start = row[start_at]
    return None if whole_second(start) else (row[0], start)


class Settled:
    """The exact keys of the rows one writer has committed, per table (not yet claimed: the rest).

    A call's ``calls`` row can come later than its ``call_records`` row (its local user known at
    answer), and another writer may meanwhile have inserted it under the whole second: a call is
    settled only once every row the batch writes for it was committed under its exact key.
    Forgotten all at once after any failed write (``clear``): a PostgreSQL that crashed may have lost
    commits its WAL had not flushed (the writer commits with synchronous_commit off), and a key it
    forgets is only claimed again. Bounded: the oldest keys go first.
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        self._max = max_entries
        self._keys: dict[tuple[str, str, Any], None] = {}

    def add(self, rows: BatchRows) -> None:
        """Call after the transaction that wrote ``rows`` committed."""
        for table, table_rows, start_at in (("call_records", rows.call_records, RECORD_START),
                                            ("calls", rows.calls, _CALL_START)):
            for row in table_rows:
                if (key := _exact_key(row, start_at)) is not None:
                    self._keys[(table, *key)] = None
        trim_oldest(self._keys, self._max)

    def clear(self) -> None:
        self._keys.clear()

    def unclaimed(self, rows: BatchRows) -> list[tuple[Any, ...]]:
        """The call_records rows of ``rows`` still to claim."""
        calls = {_exact_key(row, _CALL_START) for row in rows.calls}
        return [row for row in rows.call_records if not self._holds(_exact_key(row), calls)]

    def _holds(self, key: tuple[str, Any] | None, calls: set) -> bool:
        return (key is not None and ("call_records", *key) in self._keys
                and (key not in calls or ("calls", *key) in self._keys))


def claim(cur: psycopg.Cursor, rows: BatchRows, settled: Settled | None = None) -> None:
    """Steps 1 and 2 for a batch's calls (every ``calls`` row has its ``call_records`` row), but for
    those ``settled`` holds; run in the batch's transaction before its upserts."""
    call_records = rows.call_records if settled is None else settled.unclaimed(rows)
    if not call_records:
        return
    params = {"uuid": [row[RECORD_UUID] for row in call_records], "start": [row[RECORD_START] for row in call_records]}
    cur.execute(LOCK, params, prepare=False)
    cur.execute(move_sql(params["start"]), params, prepare=False)
