"""Resync against the real database: one row per call per table, none left Active.

The correlator, the writer and the reconcile queries against a real PostgreSQL, with the real
auth-call capture (user 1000@127.0.0.1 authenticated, answered, hung up: a `calls` row too).
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from eslbridge.calls.correlator import Correlator
from eslbridge.calls.records import Stage
from eslbridge.keys.keyring import Keyring
from eslbridge.sim.localpg import free_port
from eslbridge.store.reconcile import close_rows, load_active, load_stored
from eslbridge.store.resync import Resync
from tests.correlator_fixtures import at, captured, only
from tests.test_correlator_resync import slices
from tests.writer_fixtures import call_updates, create_user, keyring, open_journal, write_all  # noqa: F401

NODE = "fs1"


@pytest.fixture
def users(db: psycopg.Connection) -> dict[tuple[str, str], str]:
    uid = db.execute("INSERT INTO users (username, realm, password_hash, sip_ha1) VALUES"
                     " ('1000', '127.0.0.1', 'x', repeat('0', 32)) RETURNING id::text").fetchone()[0]
    return {("1000", "127.0.0.1"): uid}


def correlator_for(users: dict[tuple[str, str], str]) -> Correlator:
    return Correlator(NODE, lambda user, realm: users.get((user, realm)))


def auth_call():
    events = captured("auth-call", "minimal.json")
    a = only(events, "CHANNEL_CREATE")
    row = {"uuid": a["Unique-ID"], "direction": "inbound", "callstate": "ACTIVE", "call_uuid": a["Unique-ID"],
           "created_epoch": str(int(a["Caller-Channel-Created-Time"]) // 1_000_000),
           "name": a["Channel-Name"], "cid_num": "1000", "dest": "tone"}
    return events, a["Unique-ID"], row


def rows_of(db: psycopg.Connection, uuid: str) -> tuple[list[tuple], list[tuple]]:
    records = db.execute("SELECT start_time, status, end_time, total_duration_ms, reconciled FROM call_records"
                         " WHERE call_uuid = %s", (uuid,)).fetchall()
    calls = db.execute("SELECT initiated_at, status, ended_at, reconciled FROM calls WHERE call_uuid = %s",
                       (uuid,)).fetchall()
    return records, calls


def write(db_dsn: str, keyring: Keyring, tmp_path: Path, updates) -> None:  # noqa: F811
    write_all(db_dsn, keyring, open_journal(tmp_path / f"j{len(list(tmp_path.iterdir()))}", keyring), updates)


def test_a_snapshot_seen_call_then_its_real_events_make_one_exact_row(db, db_dsn, keyring, tmp_path, users):  # noqa: F811
    events, uuid, row = auth_call()
    correlator = correlator_for(users)
    opened = correlator.resync([row], at=at(int(events[0]["Event-Date-Timestamp"]) + 300_000))
    assert opened == []  # held until the call's own event brings its exact start
    later = [u for e in events for u in correlator.feed(e)]
    assert later[-1].stage == Stage.FINISHED and later[-1].record.user_id == users[("1000", "127.0.0.1")]
    write(db_dsn, keyring, tmp_path, later)
    records, calls = rows_of(db, uuid)
    assert len(records) == 1 and len(calls) == 1
    exact_start = at(events[0]["Caller-Channel-Created-Time"])
    assert records[0][:2] == (exact_start, "Completed") and calls[0][:2] == (exact_start, "completed")
    assert not records[0][4] and not calls[0][3]
    hangup = only(events, "CHANNEL_HANGUP_COMPLETE")
    exact = (int(hangup["Caller-Channel-Hangup-Time"]) - int(hangup["Caller-Channel-Created-Time"])) // 1000
    assert records[0][2] == at(hangup["Caller-Channel-Hangup-Time"]) and records[0][3] == exact


def test_restart_readopts_a_live_call_and_its_own_events_finish_it(db, db_dsn, keyring, tmp_path, users):  # noqa: F811
    events, uuid, row = auth_call()
    first_run = correlator_for(users)
    before = [u for e in events if e["Event-Name"] != "CHANNEL_HANGUP_COMPLETE" for u in first_run.feed(e)]
    write(db_dsn, keyring, tmp_path, before)
    active, last_event = load_active(db, NODE)
    created = int(events[0]["Caller-Channel-Created-Time"])
    assert [(r.call_uuid, r.start_us) for r in active] == [(uuid, created)]
    assert active[0].answered_us and active[0].last_us == active[0].answered_us and last_event == at(active[0].last_us)
    second_run = correlator_for(users)  # a restarted daemon: knows nothing
    steps = list(second_run.resync_slices([row], at(created + 5_000_000), active, last_event))
    assert all(not updates and not closures for updates, closures in steps)
    write(db_dsn, keyring, tmp_path, second_run.feed(only(events, "CHANNEL_HANGUP_COMPLETE")))
    records, calls = rows_of(db, uuid)
    assert records == [(at(created), "Completed", records[0][2], records[0][3], False)]
    assert calls == [(at(created), "completed", records[0][2], False)]
    assert load_active(db, NODE)[0] == []


def test_rows_whose_calls_ended_during_a_restart_are_closed_once(db, db_dsn, keyring, tmp_path):  # noqa: F811
    uid = create_user(db)
    started = [call_updates(i, uid)[0] for i in (1, 2)] + [call_updates(3, uid)[1]]  # 3 answered
    write(db_dsn, keyring, tmp_path, started)
    live = started[1].record.call_uuid
    active, last_event = load_active(db, NODE)
    assert {r.call_uuid for r in active} == {u.record.call_uuid for u in started}
    correlator = correlator_for({})
    detected = started[2].record.answer_time.replace(year=2026)
    closures = [c for _, step in correlator.resync_slices([{"uuid": live, "call_uuid": live}], detected, active,
                                                         last_event) for c in step]
    assert sorted(c.call_uuid for c in closures) == sorted({started[0].record.call_uuid, started[2].record.call_uuid})
    assert close_rows(db, NODE, closures) == 2
    assert close_rows(db, NODE, closures) == 0  # idempotent: closed rows are left as they are
    got = dict((r[0], r[1:]) for r in db.execute(
        "SELECT r.call_uuid, r.status, c.status, r.reconciled, c.reconciled, r.end_time, c.ended_at,"
        " r.total_duration_ms FROM call_records r JOIN calls c USING (call_uuid)").fetchall())
    unanswered, answered = got[started[0].record.call_uuid], got[started[2].record.call_uuid]
    assert unanswered[:4] == ("Failed", "failed", True, True)
    assert answered[:4] == ("Completed", "completed", True, True)
    # The newest stored event is call 3's answer: both ended no earlier, neither before its own start.
    newest = started[2].record.answer_time
    assert answered[4] == answered[5] == newest and unanswered[4] == newest and unanswered[6] >= 0
    assert got[live][:2] == ("Active", "initiated")
    events = db.execute("SELECT call_uuid, event_data, timestamp, call_id IS NOT NULL FROM call_events"
                        " WHERE event_type = 'reconciled' ORDER BY call_uuid").fetchall()
    assert len(events) == 2 and all(e[1]["end_from"] == "last_event" and e[3] for e in events)
    assert {e[0] for e in events} == {started[0].record.call_uuid, started[2].record.call_uuid}


def test_resync_without_the_database_still_reconciles_what_memory_knows():
    """PostgreSQL unreachable: the correlator's own calls are still closed, and the result says
    the resync is incomplete (the daemon asks for another snapshot once the database is back).
    An unknown live channel is not opened: it may have a row that could not be read, and its own
    next event opens it under that row's exact key."""
    events = auth_call()[0]
    correlator = correlator_for({})
    for e in events[:2]:
        correlator.feed(e)
    submitted = []
    pool = ConnectionPool(f"host=127.0.0.1 port={free_port()} user=nobody connect_timeout=1", min_size=1,
                          open=False)
    pool.open(wait=False)
    try:
        unknown = {"uuid": "unknown-leg", "call_uuid": "unknown-leg", "created_epoch": "1795299200"}
        result = Resync(pool, submitted.append, lambda: False, 0.5).run(correlator, [unknown])
    finally:
        pool.close(timeout=1)
    assert not result.complete and result.active == 0
    assert [u.stage for u in submitted] == [Stage.FINISHED] and submitted[0].record.reconciled
    assert correlator.active_calls == 0  # the unknown channel waits for its own events


def test_reconcile_queries_need_only_the_daemon_role(db, db_dsn, keyring, tmp_path):  # noqa: F811
    """Read and close as eslbridge_daemon (SELECT/UPDATE on the call tables, INSERT on call_events)."""
    uid = create_user(db)
    write(db_dsn, keyring, tmp_path, [call_updates(7, uid)[1]])
    db.execute("SET ROLE eslbridge_daemon")
    active, last_event = load_active(db, NODE)
    _, closures = slices(correlator_for({}), [], at(1895299200_000000), active, last_event)
    assert close_rows(db, NODE, closures) == 1
    db.execute("RESET ROLE")
    assert db.execute("SELECT status FROM calls").fetchone()[0] == "completed"


def test_a_held_call_takes_the_key_of_the_row_another_daemon_stored(db, db_dsn, keyring, tmp_path, users):  # noqa: F811
    """Settling a call held since a snapshot: the row another daemon wrote under the exact start is
    found by call_uuid (this node only), and the held call's updates land on that one row."""
    events, uuid, row = auth_call()
    other_daemon = correlator_for(users)
    write(db_dsn, keyring, tmp_path, [u for e in events[:2] for u in other_daemon.feed(e)])
    assert load_stored(db, "another-node", [uuid]) == {}
    stored = load_stored(db, NODE, [uuid, "no-such-call"])
    assert stored == {uuid: int(events[0]["Caller-Channel-Created-Time"])}
    held = correlator_for(users)
    assert held.resync([row], at=at(int(events[0]["Event-Date-Timestamp"]) + 300_000)) == []
    write(db_dsn, keyring, tmp_path, held.settle(stored))
    records, _calls = rows_of(db, uuid)
    assert len(records) == 1 and records[0][0] == at(events[0]["Caller-Channel-Created-Time"])
