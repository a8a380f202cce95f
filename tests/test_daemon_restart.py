"""The daemon killed (SIGKILL) with calls up and restarted while some ended: none left Active.

Every call starts within the first second; at half speed auth_call calls last 4 s and bridged
calls 8 s. The daemon is killed once every call has its row and restarted three seconds later,
so the restart meets calls that ended during the gap (closed, reconciled) and calls still up
(re-adopted, finished by their own events). Every call ends with exactly one row per table and
a final status. (Calls first seen in a snapshot: tests/test_resync_store.py.)
"""

from __future__ import annotations

import time

import psycopg

from eslbridge.accounts.users import add_user
from eslbridge.calls.records import Stage
from eslbridge.keys.keyring import Keyring
from eslbridge.sim.localpg import free_port
from eslbridge.store.journal import Journal
from eslbridge.store.serialize import decode_update
from tests.daemon_fixtures import Env, get, metrics_url, wait_for
from tests.test_daemon import Sim

CALLS = 20


def counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(zip(("records", "distinct", "active", "calls", "calls_distinct", "calls_active", "reconciled"),
                        conn.execute(
            "SELECT (SELECT count(*) FROM call_records), (SELECT count(DISTINCT call_uuid) FROM call_records),"
            " (SELECT count(*) FROM call_records WHERE status = 'Active'),"
            " (SELECT count(*) FROM calls), (SELECT count(DISTINCT call_uuid) FROM calls),"
            " (SELECT count(*) FROM calls WHERE status IN ('initiated', 'ringing', 'answered')),"
            " (SELECT count(*) FROM call_records WHERE reconciled)").fetchone(), strict=True))


def test_sigkill_restart_leaves_one_final_row_per_call(env: Env, db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        add_user(conn, "1000", "127.0.0.1", "pw-1000-secret", rounds=4)
    sim = Sim(env.tmp, "--wait-subscribers", "1", "--calls", str(CALLS), "--rate", "20", "--speed", "0.5",
              "--mix", "bridged=1,auth_call=1", "--seed", "5")
    config = env.config(sim.port)
    try:
        first = env.start(config)
        wait_for(lambda: counts(db_dsn)["records"] >= CALLS, 60, "a row for every call")
        first.kill()
        first.wait()
        at_kill = counts(db_dsn)
        assert at_kill["active"] > 0  # the kill left rows Active
        time.sleep(3.0)
        second = env.start(config)
        sim.wait_line("played", timeout=120)
        wait_for(lambda: (c := counts(db_dsn))["active"] == 0 and c["calls_active"] == 0 and c, 60,
                 "no Active rows")
        time.sleep(1.0)  # the last writes in flight
        final = counts(db_dsn)
        metrics = get(metrics_url(config, "/metrics"))[1]
        second.terminate()
        assert second.wait(15) == 0
    finally:
        sim.stop()
    assert final["records"] == final["distinct"] == CALLS, (at_kill, final)
    assert final["calls"] == final["calls_distinct"] > 0 and final["calls_active"] == 0 and final["active"] == 0
    assert final["reconciled"] > 0  # calls that ended while the daemon was down
    with psycopg.connect(db_dsn) as conn:
        bad = conn.execute("SELECT count(*) FROM call_records WHERE end_time < start_time OR total_duration_ms < 0"
                           " OR end_time < answer_time").fetchone()[0]
        how = conn.execute("SELECT DISTINCT event_data->>'end_from' FROM call_events"
                           " WHERE event_type = 'reconciled'").fetchall()
        exact = conn.execute("SELECT count(*) FROM call_records WHERE NOT reconciled AND status = 'Completed'"
                             ).fetchone()[0]
    assert bad == 0 and how and {h[0] for h in how} <= {"last_event", "gap_detected"}
    assert exact >= at_kill["records"] - final["reconciled"] > 0  # re-adopted calls finished by their own events
    assert "stale row(s) closed" in env.log()
    closed = [line for line in metrics.splitlines() if line.startswith("eslbridge_resync_closed_rows_total")]
    assert closed and float(closed[0].split()[-1]) > 0


def test_calls_placed_before_the_user_index_loads_are_attributed(env: Env, db_dsn: str) -> None:
    """The users table is locked while the daemon starts, so its user index cannot load while every
    call is placed and ends: intake waits for the index, and each call still gets its `calls` row."""
    n = 5
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        user_id = add_user(conn, "1000", "127.0.0.1", "pw-1000-secret", rounds=4).id
    sim = Sim(env.tmp, "--wait-subscribers", "1", "--calls", str(n), "--rate", "50", "--speed", "8",
              "--mix", "auth_call=1", "--seed", "3")
    try:
        with psycopg.connect(db_dsn) as locker:
            locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            proc = env.start(env.config(sim.port))
            sim.wait_line("played")
            time.sleep(0.5)
            assert "ESL intake waits for the user index" in env.log()
            locker.rollback()  # the index loads now, after every call ended
        wait_for(lambda: counts(db_dsn)["calls"] >= n, 30, "a calls row for every call")
        time.sleep(0.5)
        proc.terminate()
        assert proc.wait(15) == 0
    finally:
        sim.stop()
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute("SELECT user_id, status FROM calls").fetchall()
    assert len(rows) == n and all(r == (user_id, "completed") for r in rows)


def test_a_stop_before_the_user_index_ever_loads_journals_the_waiting_calls(env: Env) -> None:
    """PostgreSQL unreachable from the start: intake waits for the user index; SIGTERM releases
    the waiting events, and their finished records reach the journal rather than being lost."""
    n = 5
    sim = Sim(env.tmp, "--wait-subscribers", "1", "--calls", str(n), "--rate", "50", "--speed", "8",
              "--mix", "auth_call=1", "--seed", "4")
    nowhere = {"url": f"postgresql://nobody@127.0.0.1:{free_port()}/none", "min_connections": 1,
               "max_connections": 4, "connect_timeout": 1}
    try:
        proc = env.start(env.config(sim.port, database=nowhere))
        sim.wait_line("played")
        wait_for(lambda: "ESL intake waits for the user index" in env.log(), 30, "intake waiting")
        proc.terminate()
        proc.wait(30)
    finally:
        sim.stop()
    assert "queued calls are recorded without local users" in env.log()
    keyring = Keyring.load(env.keyring_file)
    with Journal(env.tmp / "journal-a", 1 << 30, sealer=keyring.journal_sealer()) as journal:
        updates = [decode_update(payload) for _, payload in journal.replay()]
    finished = {u.record.call_uuid for u in updates if u.stage == Stage.FINISHED}
    assert len(finished) == n
