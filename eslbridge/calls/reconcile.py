"""Closing the database's Active rows whose channels are gone (DESIGN section 9); pure, no I/O.

After a restart the correlator knows nothing of the calls an earlier run left ``Active``, and
after a long gap it may have forgotten some; the daemon reads them back (``ActiveRow``) at every
resync and the correlator sorts them: a row whose call still has a live channel is re-adopted
(its later events finish it under the same key), any other one becomes a ``Closure``.

A closure is not a ``RecordUpdate``: the correlator no longer holds the call's parties (they are
encrypted in the row), and a full record would overwrite them with blanks. It carries only what
closing changes: status, times, durations, the reconciled flag and its lifecycle row.

The end time is the best known (``end_from`` in the lifecycle row says which):
``last_event``: the newest event seen from the node (in this run, or stored by an earlier one):
the call was not reported hung up by then, so it ended at or after it; ``gap_detected``: nothing
newer than the row is known, so the time the snapshot came. Never before the row's own start,
answer or last event: a reconciled row never has a negative duration.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from eslbridge.calls.build import duration_ms
from eslbridge.calls.legs import to_datetime
from eslbridge.calls.records import LifecycleEvent, once_seq

RECONCILE_REASON = "channel vanished from FreeSWITCH during an ESL gap (resync snapshot)"
STALE_REASON = "channel gone from FreeSWITCH at resync; row left Active by an earlier run or ESL link"
END_FROM_LAST_EVENT = "last_event"
END_FROM_GAP = "gap_detected"

@dataclass(slots=True, frozen=True)
class ActiveRow:
    """A call_records row of this node still ``Active`` in the database."""

    call_uuid: str
    start_us: int  # start_time: the row's key, kept by a re-adopted call
    answered_us: int  # answer_time, 0 if none
    last_us: int  # newest call_events timestamp of the call, 0 if none


@dataclass(slots=True)
class Closure:
    """What closing one stale Active row writes (both call tables, keyed by call_uuid and start)."""

    call_uuid: str
    node: str
    start_time: datetime
    answer_time: datetime | None
    end_time: datetime
    status: str  # call_records.status
    call_status: str  # calls.status
    setup_duration_ms: int | None
    call_duration_ms: int
    total_duration_ms: int
    duration_seconds: int
    event: LifecycleEvent


def close_row(row: ActiveRow, node: str, end_us: int, end_from: str, answered_us: int = 0) -> Closure:
    """The closure of ``row``, ended at ``end_us`` (floored at what the row itself knows).
    ``answered_us``: an answer only a snapshot showed (the row has none)."""
    answered = row.answered_us or answered_us
    end = max(end_us, row.start_us, answered, row.last_us)
    setup = duration_ms(answered - row.start_us) if answered else None
    talk = duration_ms(end - answered) if answered else 0
    data = {"reason": STALE_REASON, "end_from": end_from}
    return Closure(
        row.call_uuid, node, to_datetime(row.start_us), to_datetime(answered) if answered else None,
        to_datetime(end), "Completed" if answered else "Failed", "completed" if answered else "failed",
        setup, talk, duration_ms(end - row.start_us), talk // 1000,
        LifecycleEvent(once_seq(row.call_uuid, "reconciled"), "reconciled", to_datetime(end), data),
    )
