"""Realistic call records and helpers for the writer and upkeep tests (no correlator needed)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import gevent
import psycopg
import pytest

from eslbridge.calls.records import CallRecord, LifecycleEvent, RecordUpdate, Stage
from eslbridge.keys.keyring import Keyring, generate_keyring
from eslbridge.store.journal import Journal
from eslbridge.store.writer import Writer

BASE_TIME = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
SDP = (
    "v=0\r\no=FreeSWITCH 1710408000 1710408001 IN IP4 {ip}\r\ns=FreeSWITCH\r\nc=IN IP4 {ip}\r\n"
    "t=0 0\r\nm=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
)


def make_keyring(directory: Path) -> Keyring:
    path = directory / "keyring" / "keyring.yaml"
    generate_keyring(path)
    return Keyring.load(path)


def open_journal(directory: Path, keyring: Keyring, max_bytes: int = 64 << 20) -> Journal:
    return Journal(directory, max_bytes, sealer=keyring.journal_sealer())


def call_uuid(i: int) -> str:
    return str(uuid.UUID(int=0xE51B_0000_0000_4000_8000_0000_0000_0000 + i))


def personal_values(i: int) -> dict[str, str]:
    """The plaintext personal values of call ``i`` (what must never appear in the database)."""
    return {
        "caller": f"sip:+4930555{i:06d}@alice-{i}.example.org",
        "callee": f"sip:+4940777{i:06d}@bob-{i}.example.net",
        "caller_number": f"+4930555{i:06d}",
        "callee_number": f"+4940777{i:06d}",
        "caller_id_name": f"Alice Caller {i}",
        "caller_ip": f"198.51.{i // 250 % 250}.{i % 250 + 1}",
        "callee_ip": f"203.0.{i // 250 % 250}.{i % 250 + 1}",
        "caller_sdp": SDP.format(ip=f"198.51.{i // 250 % 250}.{i % 250 + 1}", port=16384 + i % 1000 * 2),
        "callee_sdp": SDP.format(ip=f"203.0.{i // 250 % 250}.{i % 250 + 1}", port=20000 + i % 1000 * 2),
    }


def call_updates(i: int, user_id: str | None = None, node: str = "fs1") -> list[RecordUpdate]:
    """STARTED, ANSWERED and FINISHED updates of one answered two-leg call, as the correlator emits them."""
    p = personal_values(i)
    start = BASE_TIME + timedelta(seconds=i)
    answer = start + timedelta(milliseconds=2345)
    end = answer + timedelta(seconds=61, milliseconds=500)
    b_leg = str(uuid.UUID(int=0xB1E6_0000_0000_4000_8000_0000_0000_0000 + i))

    def record(stage: Stage) -> CallRecord:
        rec = CallRecord(
            call_uuid=call_uuid(i), node=node, call_id=f"{i:08x}-3c2a@alice-{i}.example.org", start_time=start,
            direction="Outbound" if user_id else "Inbound", status="Active", call_status="initiated",
            caller=p["caller"], callee=p["callee"], caller_number=p["caller_number"],
            callee_number=p["callee_number"], caller_id_name=p["caller_id_name"], caller_ip=p["caller_ip"],
            caller_sdp=p["caller_sdp"], caller_user_agent="Linphone/5.2.5 (belle-sip/5.2.0)",
            user_id=user_id, caller_user_id=user_id,
        )
        if stage >= Stage.ANSWERED:
            rec.status, rec.call_status = "Active", "answered"
            rec.answer_time, rec.setup_duration_ms = answer, 2345
            rec.callee_ip, rec.callee_sdp = p["callee_ip"], p["callee_sdp"]
            rec.callee_user_agent, rec.codec = "Grandstream GXP2170 1.0.11.23", "PCMU"
        if stage >= Stage.FINISHED:
            rec.status, rec.call_status = "Completed", "completed"
            rec.end_time, rec.call_duration_ms, rec.total_duration_ms = end, 61500, 63845
            rec.duration_seconds, rec.disconnect_reason, rec.sip_response_code = 61, "NORMAL_CLEARING", 200
            rec.media_info = {"mos": 4.38, "jitter_ms": 1.7, "packet_loss": 0.002}
            rec.quality_score = 4.38
        return rec

    return [
        RecordUpdate(Stage.STARTED, record(Stage.STARTED),
                     [LifecycleEvent(1, "created", start, {"leg": call_uuid(i)})]),
        RecordUpdate(Stage.ANSWERED, record(Stage.ANSWERED),
                     [LifecycleEvent(2, "answered", answer, {"leg": b_leg}),
                      LifecycleEvent(3, "bridged", answer, {"a": call_uuid(i), "b": b_leg})]),
        RecordUpdate(Stage.FINISHED, record(Stage.FINISHED),
                     [LifecycleEvent(4, "hangup", end, {"cause": "NORMAL_CLEARING", "sip_code": 200})]),
    ]


def stream(calls: Iterable[int], user_for: dict[int, str] | None = None) -> Iterator[RecordUpdate]:
    """Every update of the given calls, call by call."""
    user_for = user_for or {}
    for i in calls:
        yield from call_updates(i, user_for.get(i))


def create_user(conn: psycopg.Connection, name: str = "alice") -> str:
    row = conn.execute(
        "INSERT INTO users (username, realm, password_hash, sip_ha1) VALUES (%s, 'example.org', 'x', repeat('0', 32)) "
        "RETURNING id::text", (name,)).fetchone()
    return row[0]


def write_all(dsn: str, keyring: Keyring, journal: Journal, updates: Iterable[RecordUpdate], **kwargs) -> Writer:
    """Run a writer over ``updates`` until everything is committed; returns the stopped writer."""
    writer = Writer(dsn, keyring, journal, **kwargs)
    writer.start()
    for n, update in enumerate(updates):
        writer.submit(update)
        if n % 200 == 0:
            gevent.sleep(0)
    assert writer.flush(60), writer.stats()
    writer.stop()
    return writer


def snapshot(conn: psycopg.Connection) -> dict[str, list[tuple]]:
    """Every row of the call tables, every column, in a stable order."""
    return {t: conn.execute(f"SELECT * FROM {t} ORDER BY {order}").fetchall() for t, order in (
        ("call_records", "call_uuid, start_time"), ("calls", "call_uuid, initiated_at"),
        ("call_events", "call_uuid, event_type, seq"))}


def count_by_uuid(conn: psycopg.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT call_uuid, count(*) FROM call_records GROUP BY call_uuid").fetchall())


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    """A fresh keyring of the test's own (the writer tests share this fixture)."""
    return make_keyring(tmp_path)
