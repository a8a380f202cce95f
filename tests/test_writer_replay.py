"""Idempotent, monotonic writes: replays leave identical tables, whatever the write method."""

from __future__ import annotations

import dataclasses

import psycopg
import pytest

from eslbridge.calls.records import Stage
from eslbridge.store import upsert
from eslbridge.store.rows import BatchRows, FieldEncoder, batch_rows
from eslbridge.store.upsert import METHODS
from tests.writer_fixtures import (
    call_updates,
    call_uuid,
    count_by_uuid,
    create_user,
    open_journal,
    snapshot,
    stream,
    write_all,
)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_replaying_a_stream_twice_leaves_identical_tables(db, db_dsn, keyring, tmp_path, method):
    alice = create_user(db)
    updates = list(stream(range(40), {i: alice for i in range(0, 40, 2)}))
    with open_journal(tmp_path / "j", keyring) as journal:
        writer = write_all(db_dsn, keyring, journal, updates, method=method, batch_size=17)
        first = snapshot(db)
        write_all(db_dsn, keyring, journal, updates, method=method, batch_size=17)
        write_all(db_dsn, keyring, journal, reversed(updates), method=method, batch_size=5)
    assert writer.stats().rejected == 0
    assert len(first["call_records"]) == 40
    assert len(first["calls"]) == 20
    assert len(first["call_events"]) == 40 * 4
    assert snapshot(db) == first  # byte for byte, updated_at and ciphertext included
    assert set(count_by_uuid(db).values()) == {1}
    status = db.execute("SELECT DISTINCT status, stage FROM call_records").fetchall()
    assert status == [("Completed", Stage.FINISHED)]
    # events of calls with a calls row point at it
    unlinked = db.execute(
        "SELECT count(*) FROM call_events e JOIN calls c USING (call_uuid) WHERE e.call_id IS DISTINCT FROM c.id"
    ).fetchone()[0]
    assert unlinked == 0


def test_an_older_stage_never_overwrites_a_newer_one(db, db_dsn, keyring, tmp_path):
    started, answered, finished = call_updates(7)
    with open_journal(tmp_path / "j", keyring) as journal:
        write_all(db_dsn, keyring, journal, [finished])
        before = snapshot(db)
        write_all(db_dsn, keyring, journal, [started, answered])
    assert snapshot(db)["call_records"] == before["call_records"]
    row = db.execute("SELECT status, stage, end_time IS NOT NULL FROM call_records").fetchone()
    assert row == ("Completed", 3, True)


def test_a_same_stage_update_with_new_content_is_applied(db, db_dsn, keyring, tmp_path):
    started = call_updates(8)[0]
    later = call_updates(8)[0]
    later.record.call_status = "ringing"
    later.record.caller_ip = "2001:db8::8"  # an encrypted value of another length
    with open_journal(tmp_path / "j", keyring) as journal:
        write_all(db_dsn, keyring, journal, [started])
        write_all(db_dsn, keyring, journal, [later])
    (blob,) = db.execute("SELECT caller_ip FROM call_records").fetchone()
    assert keyring.decrypt(blob) == "2001:db8::8"


def test_a_replay_never_rewrites_an_erased_row(db, db_dsn, keyring, tmp_path):
    alice = create_user(db)
    updates = call_updates(9, alice)
    finished = updates[-1]
    with open_journal(tmp_path / "j", keyring) as journal:
        write_all(db_dsn, keyring, journal, updates)
        # A GDPR erase of the other party: their fields go, the row stays for its owner and for billing.
        db.execute("UPDATE calls SET destination_number_enc = NULL, destination_number_hash = NULL,"
                   " erased_at = now()")
        db.execute("UPDATE call_records SET callee = NULL, callee_hash = NULL, erased_at = now()")
        erased = snapshot(db)
        finished.record.call_status = "failed"  # even a changed record of the same stage
        write_all(db_dsn, keyring, journal, [finished])
    after = snapshot(db)
    assert after["calls"] == erased["calls"] and after["call_records"] == erased["call_records"]
    assert db.execute("SELECT destination_number_enc FROM calls").fetchone() == (None,)


def test_calls_row_only_for_existing_local_users(db, db_dsn, keyring, tmp_path):
    alice = create_user(db)
    gone = "0b0e0000-0000-4000-8000-000000000000"  # no such user (deleted meanwhile)
    updates = [*call_updates(1, alice), *call_updates(2, gone), *call_updates(3)]
    with open_journal(tmp_path / "j", keyring) as journal:
        writer = write_all(db_dsn, keyring, journal, updates)
    assert writer.stats().rejected == 0
    rows = db.execute("SELECT call_uuid, user_id::text FROM call_records ORDER BY call_uuid").fetchall()
    assert [r[1] for r in rows] == [alice, None, None]
    calls = db.execute("SELECT user_id::text, direction, status, quality_score::text FROM calls").fetchall()
    assert calls == [(alice, "outbound", "completed", "4.38")]


def test_a_record_postgresql_refuses_is_skipped_and_the_rest_written(db, db_dsn, keyring, tmp_path):
    bad = call_updates(5)[2]
    bad.record.status = "Exploded"  # violates the CHECK constraint
    updates = [*call_updates(4), bad, *call_updates(6)]
    with open_journal(tmp_path / "j", keyring) as journal:
        writer = write_all(db_dsn, keyring, journal, updates)
        assert journal.bytes_used == 0  # committed past the bad record
    assert writer.stats().rejected == 1
    assert sorted(count_by_uuid(db)) == [call_uuid(4), call_uuid(6)]
    assert db.execute("SELECT count(*) FROM call_records WHERE status = 'Completed'").fetchone()[0] == 2


def test_events_written_before_the_calls_row_exist_are_linked_to_it(db, db_dsn, keyring, tmp_path):
    bob = create_user(db, "bob")
    started, answered, finished = call_updates(9)  # inbound: the local callee is known at answer
    answered.record.user_id = finished.record.user_id = bob
    with open_journal(tmp_path / "j", keyring) as journal:
        write_all(db_dsn, keyring, journal, [started])
        assert db.execute("SELECT count(*) FROM call_events WHERE call_id IS NULL").fetchone()[0] == 1
        write_all(db_dsn, keyring, journal, [answered])
        write_all(db_dsn, keyring, journal, [finished])
    (call_id,) = db.execute("SELECT id FROM calls").fetchone()
    linked = db.execute("SELECT event_type, call_id = %s FROM call_events ORDER BY seq", (call_id,)).fetchall()
    assert linked == [("created", True), ("answered", True), ("bridged", True), ("hangup", True)]


def test_linking_earlier_events_touches_only_that_calls_events(db, db_dsn, keyring, tmp_path):
    bob = create_user(db, "bob")
    others = [u for i in range(20, 60) for u in call_updates(i)]  # no local user: events stay unlinked
    started, answered, finished = call_updates(9)
    answered.record.user_id = finished.record.user_id = bob
    with open_journal(tmp_path / "j", keyring) as journal:
        write_all(db_dsn, keyring, journal, [*others, started])
        db.execute("ANALYZE call_events")  # statistics saying most events are unlinked
        write_all(db_dsn, keyring, journal, [answered, finished])
    (call_id,) = db.execute("SELECT id FROM calls").fetchone()
    rows = db.execute("SELECT call_uuid = %s, call_id IS NOT DISTINCT FROM %s, count(*) FROM call_events"
                      " GROUP BY 1, 2 ORDER BY 1", (call_uuid(9), call_id)).fetchall()
    assert rows == [(False, False, 40 * 4), (True, True, 4)]
    assert db.execute("SELECT count(*) FROM call_events WHERE call_id IS NULL").fetchone()[0] == 40 * 4


def test_the_writer_works_through_the_daemons_pool(db, db_dsn, keyring, tmp_path):
    from eslbridge.config import DatabaseConfig, Secret
    from eslbridge.store.pool import make_pool

    cfg = DatabaseConfig(url=Secret(db_dsn, "test"), min_connections=1, max_connections=2, connect_timeout=5,
                         idle_timeout=600, max_lifetime=1800, replica_url=None)
    with make_pool(cfg, open_now=True) as pool, open_journal(tmp_path / "j", keyring) as journal:
        assert pool.min_size == 1 and pool.max_size == 2
        write_all(pool, keyring, journal, call_updates(11))
        with pool.connection() as conn:
            assert conn.autocommit and conn.info.parameter_status("application_name") == "eslbridge"
    assert count_by_uuid(db) == {call_uuid(11): 1}


def _linked(db, uuid: str) -> list[tuple]:
    return db.execute("SELECT e.call_id = c.id, e.call_initiated_at = c.initiated_at FROM call_events e"
                      " JOIN calls c ON c.call_uuid = e.call_uuid WHERE e.call_uuid = %s", (uuid,)).fetchall()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_events_without_their_record_in_the_batch_are_still_linked(db, db_dsn, keyring, method):
    bob = create_user(db, "bob")
    started, answered, _ = call_updates(9, bob)
    enc = FieldEncoder(keyring)
    write = METHODS[method]
    with psycopg.connect(db_dsn) as conn:
        write.prepare(conn)
        write.write(conn, dataclasses.replace(batch_rows([started], enc), events=[]))
        write.write(conn, BatchRows([], [], batch_rows([answered], enc).events))  # no start to bound the probe
    assert _linked(db, call_uuid(9)) == [(True, True)] * len(answered.events)


def test_the_events_probe_of_calls_reads_only_their_calls_partition(db, db_dsn, keyring):
    bob = create_user(db, "bob")
    started, answered, _ = call_updates(9, bob)
    enc = FieldEncoder(keyring)
    with psycopg.connect(db_dsn) as conn:
        METHODS["arrays"].write(conn, batch_rows([started], enc))
    rows = upsert._events_with_start(batch_rows([answered], enc))
    columns = [list(column) for column in zip(*rows, strict=True)]
    with psycopg.connect(db_dsn) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        (plan,) = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {upsert._ARRAYS_SQL[('call_events', False)]}", columns,
                               prepare=False).fetchone()
        conn.rollback()
    scanned = set()

    def walk(node: dict) -> None:
        if node.get("Relation Name", "").startswith("calls") and node.get("Actual Loops"):
            scanned.add(node["Relation Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    partitions = db.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'calls'::regclass").fetchone()[0]
    assert partitions > 2
    # The fixtures' calls started in 2025: before every monthly partition, so in the default one, last
    # in the plan's order (an unpruned probe would read each partition before it).
    assert scanned == {"calls_default"}, plan
    assert _linked(db, call_uuid(9)) == [(True, True)] * len(started.events)  # the probe's rows rolled back
