"""Scheduled upkeep: partitions ahead, summary refresh, retention slot, safe with two daemons."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import gevent
import psycopg
import pytest

from eslbridge.sim.localpg import free_port
from eslbridge.store.upkeep import UPKEEP_LOCK_KEY, Upkeep
from tests.writer_fixtures import create_user


def _partitions(db, parent: str) -> list[str]:
    return [r[0] for r in db.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass ORDER BY 1", (parent,)).fetchall()]


def _month_name(parent: str, months_ahead: int) -> str:
    now = datetime.now(UTC)
    year, month = divmod(now.year * 12 + now.month - 1 + months_ahead, 12)
    return f"{parent}_y{year}m{month + 1:02d}"


def test_run_creates_partitions_ahead_and_refreshes_the_summary(db, db_dsn):
    alice = create_user(db)
    db.execute("INSERT INTO calls (user_id, destination_number_enc, call_uuid, status, enc_key_id) "
               "VALUES (%s, '\\x00', 'u1', 'completed', 1)", (alice,))
    assert db.execute("SELECT count(*) FROM daily_call_summary").fetchone()[0] == 0
    result = Upkeep(db_dsn, months_ahead=6).run_once()
    assert result.ran
    for parent in ("call_records", "calls"):
        assert f"created {_month_name(parent, 6)}" in result.actions
        assert _month_name(parent, 6) in _partitions(db, parent)
    assert result.actions[-1] == "refreshed daily_call_summary"
    assert db.execute("SELECT total_calls, completed_calls FROM daily_call_summary").fetchall() == [(1, 1)]
    again = Upkeep(db_dsn, months_ahead=6).run_once()
    assert again.actions == ["refreshed daily_call_summary"]  # nothing left to create


def test_a_run_is_skipped_while_another_daemon_holds_the_lock(db, db_dsn):
    before = _partitions(db, "calls")
    with psycopg.connect(db_dsn) as other:
        other.execute("SELECT pg_advisory_xact_lock(%s)", (UPKEEP_LOCK_KEY,))
        result = Upkeep(db_dsn, months_ahead=9).run_once()
    assert not result.ran
    assert _partitions(db, "calls") == before


def test_two_daemons_running_upkeep_at_once_both_finish_and_partitions_exist_once(db, db_dsn):
    results, errors = [], []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        try:
            results.append(Upkeep(db_dsn, months_ahead=12).run_once())
        except Exception as e:  # reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(results) == 2 and any(r.ran for r in results)
    for parent in ("call_records", "calls"):
        names = _partitions(db, parent)
        assert len(names) == len(set(names))
        assert _month_name(parent, 12) in names
        created = [a for r in results for a in r.actions if a == f"created {_month_name(parent, 12)}"]
        assert len(created) == 1


def test_the_retention_hook_runs_in_the_upkeep_transaction(db_dsn):
    seen = []

    def hook(conn, cfg):
        seen.append((cfg, conn.info.transaction_status))
        return ["retention: nothing to do"]

    result = Upkeep(db_dsn, {"calls_days": 365}, retention_hook=hook).run_once()
    assert seen == [({"calls_days": 365}, psycopg.pq.TransactionStatus.INTRANS)]
    assert "retention: nothing to do" in result.actions


def test_the_timer_survives_an_unreachable_database():
    upkeep = Upkeep(f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2", interval=0.05)
    upkeep.start()
    gevent.sleep(0.5)
    upkeep.stop()
    assert upkeep.failures >= 1
    assert upkeep.last_result is None


def test_bad_arguments_are_refused(db_dsn):
    with pytest.raises(ValueError, match="months_ahead"):
        Upkeep(db_dsn, months_ahead=-1)
