"""retention run [--dry-run] on the real PostgreSQL: exactly what is past its window goes."""

from __future__ import annotations

from datetime import timedelta

import psycopg
from psycopg_pool import ConnectionPool

from eslbridge.config import RetentionConfig
from eslbridge.privacy.retention import run_retention
from tests.gdpr_fixtures import REALM, Admin, add_user, admin_fixture, call, call_uuid, write  # noqa: F401

WINDOWS = RetentionConfig(call_events_days=90, audit_logs_days=365, call_records_days=365, calls_days=365)
HOUR = timedelta(hours=1)


def populate(conn: psycopg.Connection, admin: Admin) -> dict[str, set[str]]:
    """Calls around the 365-day cutoff, in dropped, boundary, default and current partitions."""
    now = conn.execute("SELECT now()").fetchone()[0]
    cutoff = now - timedelta(days=365)
    for months_back in (14, 13, 12):  # the cutoff's month, and whole months before it
        conn.execute("SELECT create_month_partition(p, (now() - make_interval(months => %s))::date)"
                     " FROM unnest(ARRAY['call_records', 'calls']::regclass[]) p", (months_back,))
    user = add_user(conn, "4711")
    starts = {
        1: cutoff - timedelta(days=60),   # a month that ended before the cutoff: dropped with its partition
        2: cutoff - HOUR,                 # boundary: past the window
        3: cutoff + HOUR,                 # boundary: inside the window
        4: now - timedelta(days=3000),    # no partition of its own: sits in the default partition
        5: now - timedelta(days=10),
    }
    write(conn, admin.keyring, *(call(n, f"sip:4711@{REALM}", "sip:+4940@x.example", user_id=user, start=t)
                                 for n, t in starts.items()))
    conn.execute("INSERT INTO call_events (call_uuid, seq, event_type, timestamp) VALUES"
                 " ('loose-old', 1, 'x', now() - interval '90 days' - interval '1 hour'),"
                 " ('loose-new', 1, 'x', now() - interval '90 days' + interval '1 hour')")
    conn.execute("INSERT INTO audit_logs (action, timestamp) VALUES ('old', now() - interval '365 days 1 hour'),"
                 " ('new', now() - interval '364 days 23 hours')")
    return {"expired": {call_uuid(n) for n in (1, 2, 4)}, "kept": {call_uuid(n) for n in (3, 5)}}


def counts(conn: psycopg.Connection) -> tuple:
    return tuple(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                 for t in ("call_records", "calls", "call_events", "audit_logs"))


def partitions(conn: psycopg.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT inhrelid::regclass::text FROM pg_inherits"
                                       " WHERE inhparent IN ('call_records'::regclass, 'calls'::regclass)")}


def test_dry_run_counts_and_run_removes_exactly_what_is_past(admin: Admin, db: psycopg.Connection, capsys) -> None:
    data = populate(db, admin)
    before, parts = counts(db), partitions(db)
    expired_parts = {r[0] for r in db.execute(
        "SELECT partition::text FROM expired_partitions('call_records', interval '365 days')")}
    assert len(expired_parts) >= 1  # the month of call 1, at least

    assert admin.run("retention", "run", "--dry-run") == 0
    dry = capsys.readouterr().out
    assert counts(db)[:3] == before[:3] and partitions(db) == parts
    assert "dry run: nothing was removed" in dry and "call_records  older than 365 days" in dry
    assert "would remove 3 rows" in dry

    assert admin.run("retention", "run") == 0
    out = capsys.readouterr().out
    assert {r[0] for r in db.execute("SELECT call_uuid FROM call_records")} == data["kept"]
    assert {r[0] for r in db.execute("SELECT call_uuid FROM calls")} == data["kept"]
    assert not partitions(db) & expired_parts
    # Call 3's events are past 90 days; those of calls 1, 2, 4 went with their calls.
    assert {r[0] for r in db.execute("SELECT DISTINCT call_uuid FROM call_events")} == {call_uuid(5), "loose-new"}
    assert {r[0] for r in db.execute("SELECT action FROM audit_logs WHERE action IN ('old', 'new')")} == {"new"}

    dry_report, report = [r[0] for r in db.execute(
        "SELECT details FROM audit_logs WHERE action = 'retention.run' ORDER BY id")]
    assert dry_report["dry_run"] and not report["dry_run"]
    for table in ("call_records", "calls"):
        t = next(t for t in report["tables"] if t["table"] == table)
        assert t["rows_removed"] == 3 and set(t["partitions_dropped"]) == {
            p.replace("call_records", table) for p in expired_parts}
        assert t["call_events_cascaded"] == (6 if table == "calls" else 0)
        assert without_cutoff(next(d for d in dry_report["tables"] if d["table"] == table)) == without_cutoff(t)
    assert "removed 3 rows" in out
    for table, n in (("call_events", 3), ("audit_logs", 1)):
        assert next(t for t in report["tables"] if t["table"] == table)["rows_removed"] == n
        assert next(t for t in dry_report["tables"] if t["table"] == table)["rows_removed"] == n


def without_cutoff(table_report: dict) -> dict:
    return {k: v for k, v in table_report.items() if k != "cutoff"}


def test_second_run_finds_nothing_and_pool_works(admin: Admin, db: psycopg.Connection, db_dsn: str) -> None:
    populate(db, admin)
    run_retention(db, WINDOWS)
    with ConnectionPool(db_dsn, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool:
        again = run_retention(pool, WINDOWS, actor="eslbridge-daemon")
    assert all(t.rows_removed == 0 and not t.partitions_dropped for t in again.tables)
    assert db.execute("SELECT actor FROM audit_logs WHERE action = 'retention.run' ORDER BY id DESC LIMIT 1"
                      ).fetchone() == ("eslbridge-daemon",)
