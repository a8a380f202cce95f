"""Shared setup for the GDPR, retention, keys and AUDITORS.md tests: an admin config, call data."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from eslbridge import cli
from eslbridge.calls.records import CallRecord, LifecycleEvent, RecordUpdate, Stage
from eslbridge.keys.keyring import Keyring, generate_keyring
from eslbridge.store.rows import FieldEncoder, batch_rows
from eslbridge.store.upsert import write_executemany

REALM = "pbx.example.org"
T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)


@dataclass
class Admin:
    """What an admin command needs: a config whose secrets come from the environment."""

    config: Path
    keyring_path: Path
    dsn: str

    @property
    def keyring(self) -> Keyring:
        return Keyring.load(self.keyring_path)

    def run(self, *argv: str) -> int:
        return cli.main(["--config", str(self.config), *argv])


def write_config(directory: Path, retention: dict[str, int] | None = None) -> tuple[Path, Path]:
    keyring_path = directory / "keyring" / "keyring.yaml"
    config = directory / "eslbridge.yaml"
    windows = retention or {"call_events_days": 90, "audit_logs_days": 365, "call_records_days": 365,
                            "calls_days": 365}
    lines = ["freeswitch:", "  - {name: fs1, host: 127.0.0.1, port: 8021}",
             "encryption:", f"  keyring_file: {keyring_path}", "retention:"]
    lines += [f"  {k}: {v}" for k, v in windows.items()]
    config.write_text("\n".join(lines) + "\n")
    return config, keyring_path


@pytest.fixture(name="admin")
def admin_fixture(tmp_path: Path, db_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Admin:
    config, keyring_path = write_config(tmp_path)
    generate_keyring(keyring_path)
    monkeypatch.setenv("ESLBRIDGE_DATABASE_URL", db_dsn)
    monkeypatch.setenv("ESLBRIDGE_ESL_PASSWORD_FS1", "ClueCon")
    monkeypatch.setenv("ESLBRIDGE_DIRECTORY_PASSWORD", "directory-secret")
    return Admin(config, keyring_path, db_dsn)


def add_user(conn: psycopg.Connection, username: str, realm: str = REALM, email: str | None = None,
             display_name: str | None = None) -> uuid.UUID:
    from eslbridge.accounts.users import add_user as add

    return add(conn, username, realm, "s3cret-Passw0rd!", email=email, display_name=display_name, rounds=4).id


def call_uuid(n: int) -> str:
    return str(uuid.UUID(int=0xCA11_0000_0000_4000_8000_0000_0000_0000 + n))


def call(n: int, caller: str, callee: str, *, user_id: uuid.UUID | None = None, start: datetime | None = None,
         caller_ip: str = "192.0.2.10", callee_ip: str = "192.0.2.20", caller_name: str | None = None,
         stage: Stage = Stage.FINISHED) -> RecordUpdate:
    """One finished call between two SIP URIs (numbers are the user parts), with two lifecycle events."""
    start = start or T0 + timedelta(minutes=n)
    end = start + timedelta(seconds=42)
    rec = CallRecord(
        call_uuid=call_uuid(n), node="fs1", call_id=f"cid-{n}@{caller.split('@')[1]}", start_time=start,
        direction="Internal", status="Completed", call_status="completed",
        caller=caller, callee=callee, caller_number=caller.split(":")[1].split("@")[0],
        callee_number=callee.split(":")[1].split("@")[0], caller_id_name=caller_name, caller_ip=caller_ip,
        callee_ip=callee_ip, caller_sdp=f"v=0\r\nc=IN IP4 {caller_ip}\r\n",
        callee_sdp=f"v=0\r\nc=IN IP4 {callee_ip}\r\n",
        answer_time=start + timedelta(seconds=2), end_time=end, total_duration_ms=42000, duration_seconds=40,
        caller_user_agent="Linphone/5.2", callee_user_agent="Yealink T46", codec="PCMA",
        user_id=None if user_id is None else str(user_id),
    )
    events = [LifecycleEvent(1, "created", start, {"leg": call_uuid(n)}),
              LifecycleEvent(2, "hangup", end, {"cause": "NORMAL_CLEARING"})]
    return RecordUpdate(stage, rec, events)


def write(conn: psycopg.Connection, keyring: Keyring, *updates: RecordUpdate) -> None:
    """Store updates as the daemon's writer does (same rows, same upsert)."""
    with conn.transaction():
        write_executemany(conn, batch_rows(updates, FieldEncoder(keyring)))
