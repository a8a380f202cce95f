"""What eslbridge wrote, read back and held against what sipp saw.

Each assertion message carries both sides ("sipp saw ...; landed ..."), so a red run explains itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

from tests.freeswitch.sipp import Call, Run

# sipp and FreeSWITCH stamp the same event a little apart (sipp when the packet crossed its socket,
# FreeSWITCH when its state machine got there); the host is loaded. Generous, but a wrong time
# (seconds off, or the wrong event) still fails.
TOLERANCE = timedelta(milliseconds=1500)

_COLUMNS = ("call_uuid", "status", "sip_response_code", "disconnect_reason", "start_time", "answer_time",
            "end_time", "setup_duration_ms", "call_duration_ms", "total_duration_ms", "stage", "reconciled",
            "direction", "user_id")


@dataclass(frozen=True)
class Row:
    call_uuid: str
    status: str
    sip_response_code: int | None
    disconnect_reason: str | None
    start_time: datetime
    answer_time: datetime | None
    end_time: datetime | None
    setup_duration_ms: int | None
    call_duration_ms: int | None
    total_duration_ms: int | None
    stage: int
    reconciled: bool
    direction: str
    user_id: object

    def describe(self) -> str:
        return (f"{self.status} {self.sip_response_code} {self.disconnect_reason} stage {self.stage}"
                f"{' reconciled' if self.reconciled else ''} start {_t(self.start_time)} answer {_t(self.answer_time)}"
                f" end {_t(self.end_time)} call_ms {self.call_duration_ms}")


def _t(value: datetime | None) -> str:
    return f"{value:%H:%M:%S.%f}" if value else "-"


def rows(dsn: str) -> list[Row]:
    with psycopg.connect(dsn) as conn:
        found = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM call_records ORDER BY start_time").fetchall()
    return [Row(*r) for r in found]


def describe(found: list[Row]) -> str:
    return f"{len(found)} row(s): " + "; ".join(r.describe() for r in found) if found else "no row"


def settled(dsn: str, count: int, timeout: float = 30) -> list[Row]:
    """The rows once `count` of them are final and nothing is Active (or whatever there is at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        found = rows(dsn)
        if len(found) >= count and all(r.status != "Active" for r in found):
            time.sleep(0.5)  # anything late (a duplicate) would land now
            return rows(dsn)
        if time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def expected_status(call: Call) -> tuple[str, int]:
    """The status and response code sipp's own observations imply (DESIGN section 6)."""
    code = call.final_code
    if code == 200:
        return "Completed", 200
    if call.cancelled and code == 487:
        return "Cancelled", 487
    by_code = {486: "Busy", 480: "NoAnswer", 408: "NoAnswer", 403: "Rejected", 603: "Rejected"}
    return by_code.get(code, "Failed"), code


def near(a: datetime | None, b: datetime | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= TOLERANCE


def judge(run: Run, dsn: str, call: Call | None = None) -> Row:
    """Exactly one final row for sipp's one call, whose status, code and times match what sipp saw."""
    call = call or run.call
    found = settled(dsn, 1)
    told = f"sipp saw: {run.describe()}; landed: {describe(found)}"
    assert len(found) == 1, told
    return check(found[0], call, told)


def row_of(call: Call, found: list[Row]) -> Row | None:
    """The row whose start is nearest sipp's INVITE (for tests with several calls)."""
    near_ones = [r for r in found if near(r.start_time, call.invited_at)]
    return min(near_ones, key=lambda r: abs(r.start_time - call.invited_at)) if near_ones else None


def check(row: Row, call: Call, told: str) -> Row:
    """One final, exact (not reconciled) row agrees with sipp's facts about its call."""
    status, code = expected_status(call)
    assert (row.status, row.sip_response_code) == (status, code), told
    assert row.stage == 3 and not row.reconciled, told
    assert near(row.start_time, call.invited_at), f"start_time is not the INVITE's time: {told}"
    assert near(row.end_time, call.ended_at), f"end_time is not the end sipp saw: {told}"
    if code == 200:
        assert near(row.answer_time, call.answered_at), f"answer_time is not the 200's time: {told}"
        sipp_ms = (call.ended_at - call.answered_at) / timedelta(milliseconds=1)
        assert abs(row.call_duration_ms - sipp_ms) <= TOLERANCE / timedelta(milliseconds=1), told
    else:
        assert row.answer_time is None and not row.call_duration_ms, told
    return row
