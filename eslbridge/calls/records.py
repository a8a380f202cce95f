"""What the correlator emits and the writer stores (DESIGN sections 6, 7, 9).

A ``RecordUpdate`` carries the whole current state of one call, never a diff,
so the writer can upsert it on (call_uuid, start_time) and any replay, in any
order, converges on the same row: a later ``stage`` never loses to an earlier
one (the writer keeps the row with the highest stage).

Fields hold plaintext; encryption and blind indexes happen in the writer, so
the correlator stays pure and testable on fixtures alone.
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class Stage(enum.IntEnum):
    """How far a call has got. Ordered: the writer never moves a row backwards."""

    STARTED = 1
    ANSWERED = 2
    FINISHED = 3


# call_records.status values (YakYak) and calls.status values (SIPCall).
CDR_STATUSES = ("Active", "Completed", "Failed", "Busy", "NoAnswer", "Cancelled", "Rejected")
CALL_STATUSES = (
    "initiated", "ringing", "answered", "completed", "busy", "no_answer", "cancelled", "rejected", "failed",
)
DIRECTIONS = ("Inbound", "Outbound", "Internal")

# Lifecycle row kinds: the low 3 bits of a row's seq (see the correlator's "Idempotency").
KIND = {
    "created": 0, "answered": 1, "bridged": 2, "unbridged": 3, "transferred": 4, "uuid_changed": 5,
    "hangup": 6, "reconciled": 7,
}
NO_SEQ_BASE = 1 << 40


def once_seq(uuid: str, kind: str) -> int:
    """The seq of a once-per-leg (or per-call) lifecycle row: the same whichever event revealed it."""
    return (NO_SEQ_BASE + zlib.crc32(uuid.encode())) * 8 + KIND[kind]


@dataclass(slots=True)
class LifecycleEvent:
    """One call_events row. ``(call_uuid, seq)`` is its idempotency key."""

    seq: int  # position in this call's lifecycle, stable across replays of the same events
    event_type: str  # e.g. created, answered, bridged, transferred, hangup, reconciled, authorized
    timestamp: datetime  # from the event's microsecond epoch header, UTC
    data: dict[str, Any] = field(default_factory=dict)  # no personal data in clear: leg UUIDs, causes, codes


@dataclass(slots=True)
class CallRecord:
    """One call: a root leg and every leg originated from it (DESIGN section 6)."""

    call_uuid: str  # root leg UUID
    node: str  # FreeSWITCH node name from config
    call_id: str  # A-leg SIP Call-ID, else its UUID
    start_time: datetime  # A-leg Caller-Channel-Created-Time, UTC; part of the unique key
    direction: str  # one of DIRECTIONS
    status: str  # one of CDR_STATUSES
    call_status: str  # one of CALL_STATUSES (the `calls` table)

    # Personal data: encrypted by the writer. Plain numbers also feed the blind index.
    caller: str  # SIP URI, e.g. sip:1000@example.com
    callee: str  # SIP URI
    caller_number: str | None = None  # user part / Caller-Caller-ID-Number
    callee_number: str | None = None  # dialed destination number
    caller_id_name: str | None = None
    caller_ip: str | None = None
    callee_ip: str | None = None
    caller_sdp: str | None = None
    callee_sdp: str | None = None

    answer_time: datetime | None = None
    end_time: datetime | None = None
    setup_duration_ms: int | None = None
    call_duration_ms: int | None = None
    total_duration_ms: int | None = None
    duration_seconds: int | None = None  # billsec
    disconnect_reason: str | None = None
    sip_response_code: int | None = None
    codec: str | None = None
    caller_user_agent: str | None = None
    callee_user_agent: str | None = None
    media_info: dict[str, Any] | None = None
    quality_score: float | None = None  # MOS 1.00..5.00

    user_id: str | None = None  # local user the `calls` row belongs to (caller if local, else callee)
    caller_user_id: str | None = None
    callee_user_id: str | None = None
    reconciled: bool = False  # closed by a resync snapshot, not by its own hangup events
    reconcile_reason: str | None = None


@dataclass(slots=True)
class RecordUpdate:
    """The correlator's output: the full state of a call at ``stage``, plus new lifecycle rows."""

    stage: Stage
    record: CallRecord
    events: list[LifecycleEvent] = field(default_factory=list)
