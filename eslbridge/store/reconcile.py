"""The database side of a resync: this node's Active rows read back, stale ones closed.

Queries need only SELECT on call_records and call_events (reading), UPDATE on call_records and
calls and INSERT on call_events (closing): what ``eslbridge_daemon`` holds (migration 0004).

``pause`` is called between chunks of rows so the caller's event loop runs meanwhile: a node can
have 100,000 Active rows, and turning them into Python objects in one go would stall it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from eslbridge.calls.legs import to_us
from eslbridge.calls.reconcile import ActiveRow, Closure
from eslbridge.store.startkey import in_second

CHUNK = 1_000

# The newest event stored for each Active call bounds its end from below (a reconciled row
# never ends before its last known event). erased_at: a GDPR-erased row is never touched.
_ACTIVE = (
    "SELECT r.call_uuid, r.start_time, r.answer_time,"
    " (SELECT max(e.timestamp) FROM call_events e WHERE e.call_uuid = r.call_uuid)"
    " FROM call_records r WHERE r.node = %s AND r.status = 'Active' AND r.erased_at IS NULL"
)
# The newest event any run stored for the node: the calls that vanished were still up then.
# Only events since the oldest Active row's start can matter (none when nothing is Active), which
# bounds the scan of the timestamp index.
_LAST_EVENT = ("SELECT max(timestamp) FROM call_events WHERE node = %(node)s AND timestamp >= (SELECT min(start_time)"
               " FROM call_records WHERE node = %(node)s AND status = 'Active' AND erased_at IS NULL)")

_SOURCE = ("unnest(%(uuid)s::varchar[], %(start)s::timestamptz[], %(answer)s::timestamptz[], %(end)s::timestamptz[],"
           " %(status)s::varchar[], %(call_status)s::varchar[], %(setup)s::int4[], %(talk)s::int4[],"
           " %(total)s::int4[], %(billsec)s::int4[], %(seq)s::int8[], %(data)s::jsonb[])"
           " AS s(call_uuid, start_time, answer_time, end_time, status, call_status, setup, talk, total, billsec,"
           " seq, data)")
# One statement: both tables closed only where still open, and the lifecycle row written only
# for rows this statement closed (a row its own FINISHED record closed meanwhile stays as it is).
# A row is found in the second of the start the correlator holds: a whole-second start it took
# from a snapshot may have been replaced by the exact one since (eslbridge.store.startkey).
_CLOSE = (
    f"WITH s AS (SELECT * FROM {_SOURCE}),"
    " closed AS (UPDATE call_records t SET status = s.status, answer_time = COALESCE(t.answer_time, s.answer_time),"
    " end_time = s.end_time, setup_duration_ms = s.setup, call_duration_ms = s.talk, total_duration_ms = s.total,"
    " reconciled = true, stage = 3 FROM s WHERE t.call_uuid = s.call_uuid"
    f" AND {in_second('t.start_time', 's.start_time')}"
    " AND t.node = %(node)s AND t.status = 'Active' AND t.erased_at IS NULL RETURNING t.call_uuid),"
    " calls_closed AS (UPDATE calls t SET status = s.call_status,"
    " answered_at = COALESCE(t.answered_at, s.answer_time), ended_at = s.end_time, duration_seconds = s.billsec,"
    " reconciled = true, stage = 3 FROM s WHERE t.call_uuid = s.call_uuid"
    f" AND {in_second('t.initiated_at', 's.start_time')}"
    " AND t.status IN ('initiated', 'ringing', 'answered') AND t.erased_at IS NULL RETURNING t.call_uuid)"
    " INSERT INTO call_events AS t (call_uuid, node, seq, event_type, event_data, timestamp, call_id,"
    " call_initiated_at) SELECT s.call_uuid, %(node)s, s.seq, 'reconciled', s.data, s.end_time, c.id,"
    " c.initiated_at FROM s JOIN closed USING (call_uuid)"
    " LEFT JOIN LATERAL (SELECT id, initiated_at FROM calls WHERE call_uuid = s.call_uuid LIMIT 1) c ON true"
    " ON CONFLICT (call_uuid, event_type, seq) DO NOTHING"
)


def _us(at: datetime | None) -> int:
    return to_us(at) if at is not None else 0


_STORED = "SELECT call_uuid, start_time FROM call_records WHERE node = %s AND call_uuid = ANY(%s)"


def load_stored(conn: psycopg.Connection, node: str, uuids: Sequence[str]) -> dict[str, int]:
    """call_uuid -> start_us (the key) of the rows stored for these calls of the node."""
    rows: dict[str, int] = {}
    for i in range(0, len(uuids), CHUNK):
        for uuid, start in conn.execute(_STORED, (node, list(uuids[i:i + CHUNK]))):
            rows.setdefault(uuid, _us(start))
    return rows


def load_active(conn: psycopg.Connection, node: str,
                pause: Callable[[], None] = lambda: None) -> tuple[list[ActiveRow], datetime | None]:
    """This node's Active call_records rows, and the newest event stored for the node."""
    rows: list[ActiveRow] = []
    with conn.cursor() as cur:
        last_event = cur.execute(_LAST_EVENT, {"node": node}).fetchone()[0]
        cur.execute(_ACTIVE, (node,))
        while chunk := cur.fetchmany(CHUNK):
            rows += [ActiveRow(uuid, _us(start), _us(answer), _us(last)) for uuid, start, answer, last in chunk]
            pause()
    return rows, last_event


def close_rows(conn: psycopg.Connection, node: str, closures: Sequence[Closure],
               pause: Callable[[], None] = lambda: None) -> int:
    """Close ``closures``' rows (both call tables) where still Active; returns how many closed
    (counted by the lifecycle rows written: a row closed by an earlier try is not counted again)."""
    closed = 0
    for i in range(0, len(closures), CHUNK):
        chunk = closures[i:i + CHUNK]
        params = {
            "node": node,
            "uuid": [c.call_uuid for c in chunk], "start": [c.start_time for c in chunk],
            "answer": [c.answer_time for c in chunk], "end": [c.end_time for c in chunk],
            "status": [c.status for c in chunk], "call_status": [c.call_status for c in chunk],
            "setup": [c.setup_duration_ms for c in chunk], "talk": [c.call_duration_ms for c in chunk],
            "total": [c.total_duration_ms for c in chunk], "billsec": [c.duration_seconds for c in chunk],
            "seq": [c.event.seq for c in chunk], "data": [Jsonb(c.event.data) for c in chunk],
        }
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_CLOSE, params)
            closed += cur.rowcount
        pause()
    return closed
