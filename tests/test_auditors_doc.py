"""Every SQL block of docs/AUDITORS.md runs, as the auditor role where it can, and answers correctly."""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg_pool import ConnectionPool

from eslbridge.accounts.authorizer import CallAuthorizer
from eslbridge.privacy.gdpr import erase_subject, find_subject
from eslbridge.privacy.retention import run_retention
from tests.gdpr_fixtures import REALM, Admin, add_user, admin_fixture, call, call_uuid, write  # noqa: F401
from tests.test_retention_run import WINDOWS

DOC = Path(__file__).resolve().parents[1] / "docs" / "AUDITORS.md"
BLOCK = re.compile(r"```sql\n(.*?)```", re.S)
PLACEHOLDER = re.compile(r"(?<!:):'?([a-z_]+)'?")  # :'name' or :name, not a ::cast
OWNER_ONLY = {"export_by_sql"}  # reads users (password hashes live there): not for eslbridge_auditor


def blocks() -> dict[str, str]:
    found = {}
    for text in BLOCK.findall(DOC.read_text()):
        first, _, _ = text.partition("\n")
        assert first.startswith("-- query: "), f"every sql block starts with '-- query: NAME': {first!r}"
        found[first.removeprefix("-- query: ")] = text
    return found


def as_params(sql: str) -> str:
    """psql placeholders -> psycopg named parameters (a literal % doubled)."""
    return PLACEHOLDER.sub(lambda m: f"%({m.group(1)})s", sql.replace("%", "%%"))


def test_every_documented_query_answers(admin: Admin, db: psycopg.Connection, capsys) -> None:
    kr = admin.keyring
    alice = add_user(db, "1000", display_name="Alice")
    t0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=10)
    write(db, kr, call(1, f"sip:1000@{REALM}", "sip:+4930123456@carrier.example", user_id=alice, start=t0),
          call(2, "sip:+4930123456@carrier.example", f"sip:1000@{REALM}", user_id=alice,
               start=t0 + timedelta(days=1)),
          call(3, "sip:2000@pbx.example.org", "sip:+4940999@carrier.example", start=t0 + timedelta(hours=1)))
    db.execute("SELECT refresh_daily_summary()")
    # The doc's blind-index command prints the hash the auditor pastes in.
    hashes = {}
    first_call_id = call(1, f"sip:1000@{REALM}", "sip:x@carrier.example").record.call_id
    for kind, value in (("number", "+49 (30) 123456"), ("uri", f"<sip:1000@{REALM.upper()}:5060>"),
                        ("call_id", f" {first_call_id} ")):
        sys.stdin = io.StringIO(value + "\n")
        try:
            assert admin.run("keys", "blind-index", kind) == 0
        finally:
            sys.stdin = sys.__stdin__
        hashes[kind] = capsys.readouterr().out.strip()
    refused = {"Unique-ID": call_uuid(9), "variable_sip_authorized": "false", "variable_sip_network_ip": "198.51.100.7",
               "Channel-Name": "sofia/external/+4930123456@198.51.100.7:5060"}
    with ConnectionPool(admin.dsn, min_size=1, max_size=1) as pool:
        assert CallAuthorizer(pool, lambda: kr, lambda channel: "fs1")(refused)[0] is False
    run_retention(db, WINDOWS, actor="eslbridge-daemon")
    gone = add_user(db, "3000")
    erase_subject(db, find_subject(db, kr, "3000", REALM), actor="auditor-test")

    params = {"passphrase": kr.passphrase(1), "key_id": 1, "hash": hashes["number"], "uri_hash": hashes["uri"],
              "call_id_hash": hashes["call_id"],
              "actor": "auditor-test", "user_id": str(alice), "days": 365}
    expect: dict[str, Callable[[list[tuple]], bool]] = {
        "calls_per_day": lambda rows: [r[1] for r in rows] == [1, 1],
        "activity_per_user": lambda rows: ("Alice", 2) in [(r[1], r[2]) for r in rows],
        "daily_summary": lambda rows: sum(r[1] for r in rows) == 2,
        "decrypt_cdrs": lambda rows: {(r[0], r[3], r[4]) for r in rows} >= {
            (call_uuid(1), f"sip:1000@{REALM}", "sip:+4930123456@carrier.example")} and len(rows) == 3,
        "calls_of_number": lambda rows: [r[0] for r in rows] == [call_uuid(1), call_uuid(2)],
        "calls_of_uri": lambda rows: [r[0] for r in rows] == [call_uuid(1), call_uuid(2)],
        "call_of_call_id": lambda rows: [r[0] for r in rows] == [call_uuid(1)],
        "recent_admin_actions": lambda rows: rows[0][3] == "gdpr.erase" and all(r[1] for r in rows),
        "erasures": lambda rows: len(rows) == 1 and rows[0][1] == "auditor-test" and rows[0][3] == str(gone),
        "actions_by_actor": lambda rows: [r[0] for r in rows] == ["gdpr.erase"],
        "export_by_sql": lambda rows: len(rows[0][0]["call_records"]) == 2
        and rows[0][0]["call_records"][0]["caller"] == f"sip:1000@{REALM}",
        "erased_cdrs": lambda rows: rows[0][0] == 0,
        "last_retention_run": lambda rows: len(rows) == 4 and rows[0][1] == "eslbridge-daemon",
        "oldest_rows": lambda rows: dict((r[0], r[1]) for r in rows)["call_records"] == t0,
        "partitions_past_window": lambda rows: rows == [],
        "rows_per_key": lambda rows: rows == [("call_events", 1, 1), ("call_records", 1, 3), ("calls", 1, 2)],
        "refused_calls": lambda rows: [(r[1], r[2], r[3], r[5]["network_ip"]) for r in rows] == [
            ("fs1", call_uuid(9), "caller not authenticated", "198.51.100.7")],
    }
    found = blocks()
    assert set(found) == set(expect), "every documented query has an expectation here, and only those"
    for name, sql in found.items():
        if name not in OWNER_ONLY:
            db.execute("SET ROLE eslbridge_auditor")
        try:
            rows = db.execute(as_params(sql), params).fetchall()
        finally:
            db.execute("RESET ROLE")
        assert expect[name](rows), (name, rows)
