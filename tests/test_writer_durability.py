"""Exactly once through PostgreSQL outages, kill -9 and torn journal tails; gevent stays responsive."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import gevent
import psycopg
import pytest

import eslbridge.store.writer as writer_module
from eslbridge.sim.localpg import PgCluster
from eslbridge.store.serialize import encode_update
from eslbridge.store.writer import Writer
from tests.writer_fixtures import call_updates, call_uuid, count_by_uuid, open_journal, write_all

ROOT = Path(__file__).resolve().parents[1]



@pytest.fixture
def own_cluster():
    """A cluster of this test's own, so it may be stopped (the shared one never is)."""
    cluster = PgCluster()
    cluster.start()
    try:
        cluster.migrated_database("eslbridge")
        yield cluster
    finally:
        cluster.destroy()


def _feeder(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.writer_feeder", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_postgres_stopped_mid_stream_every_record_lands_exactly_once(own_cluster, keyring, tmp_path):
    dsn = own_cluster.dsn("eslbridge")
    with open_journal(tmp_path / "journal", keyring) as journal:
        writer = Writer(dsn, keyring, journal, batch_size=20, queue_max=30, max_backoff=0.5)
        writer.start()

        def feed(calls) -> None:
            for i in calls:
                for update in call_updates(i):
                    writer.submit(update)
                gevent.sleep(0.002)

        feed(range(0, 100))
        gevent.sleep(0.3)
        own_cluster.stop("fast")
        feed(range(100, 300))  # never blocks, never raises while PostgreSQL is down
        gevent.sleep(1.0)
        down = writer.stats()
        assert not down.db_up
        assert down.journal_backlog > 0  # the finished records wait in the journal
        own_cluster.start()
        feed(range(300, 400))
        assert writer.flush(60), writer.stats()
        writer.stop()
        assert journal.bytes_used == 0
    with psycopg.connect(dsn) as conn:
        counts = count_by_uuid(conn)
        finished = conn.execute("SELECT count(*) FROM call_records WHERE stage = 3").fetchone()[0]
        events = conn.execute("SELECT count(*) FROM call_events").fetchone()[0]
    assert counts == {call_uuid(i): 1 for i in range(400)}
    assert finished == 400
    assert events == 400 * 4


def test_commits_a_postgresql_crash_forgot_are_written_again(own_cluster, keyring, tmp_path):
    """Batches commit with synchronous_commit off; the journal keeps them until the durability
    barrier has flushed PostgreSQL's WAL. A crash (immediate stop) forgets commits still in the
    WAL buffers; which ones depends on timing, so the test then deletes them all (the worst case)."""
    dsn = own_cluster.dsn("eslbridge")
    with open_journal(tmp_path / "journal", keyring) as journal:
        writer = Writer(dsn, keyring, journal, batch_size=20, max_backoff=0.5, durability_interval=3600)
        writer.start()
        for i in range(60):
            for update in call_updates(i):
                writer.submit(update)
            gevent.sleep(0.002)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(300):
                if conn.execute("SELECT count(*) FROM call_records WHERE stage = 3").fetchone()[0] == 60:
                    break
                gevent.sleep(0.05)
            else:
                pytest.fail("the batches were not committed")
        assert journal.committed_seq == 0  # committed, not yet known durable: the journal keeps them
        own_cluster.stop("immediate")
        own_cluster.start()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE call_events, calls, call_records")
        assert writer.flush(60), writer.stats()
        writer.stop()
        assert journal.bytes_used == 0
    with psycopg.connect(dsn) as conn:
        assert count_by_uuid(conn) == {call_uuid(i): 1 for i in range(60)}
        assert conn.execute("SELECT count(*) FROM call_records WHERE stage = 3").fetchone()[0] == 60
        assert conn.execute("SELECT count(*) FROM call_events").fetchone()[0] == 60 * 4


def test_kill_9_mid_stream_loses_no_acknowledged_record(db, db_dsn, keyring, tmp_path):
    journal_dir = tmp_path / "journal"
    proc = _feeder("feed", db_dsn, str(keyring.path), str(journal_dir), "0", "5000", "0.002")
    acked = []
    try:
        for line in proc.stdout:
            if line.startswith("ack "):
                acked.append(line.split()[1])
            if len(acked) >= 150:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # Whatever it printed before dying was acknowledged too.
        acked += [line.split()[1] for line in proc.stdout.read().splitlines() if line.startswith("ack ")]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 150
    before = count_by_uuid(db)
    with open_journal(journal_dir, keyring) as journal:
        write_all(db_dsn, keyring, journal, [])  # a restart: replays the journal, nothing new
        assert journal.bytes_used == 0
    counts = count_by_uuid(db)
    assert set(acked) <= set(counts)
    assert set(counts.values()) == {1}  # no duplicates, acknowledged or not
    finished = {r[0] for r in db.execute("SELECT call_uuid FROM call_records WHERE stage = 3").fetchall()}
    assert set(acked) <= finished
    assert len(counts) >= len(before)


def test_a_torn_journal_tail_is_tolerated(db, db_dsn, keyring, tmp_path):
    journal_dir = tmp_path / "journal"
    with open_journal(journal_dir, keyring) as journal:
        journal.append_many([encode_update(call_updates(i)[2]) for i in range(10)])
    (segment,) = journal_dir.glob("seg-*.log")
    size = segment.stat().st_size
    with open(segment, "r+b") as f:
        f.truncate(size - 7)  # the last record was torn by a crash mid-write
    with open_journal(journal_dir, keyring) as journal:
        writer = write_all(db_dsn, keyring, journal, [])
        assert journal.stats.corrupt_records == 1
        assert journal.bytes_used == 0
    assert writer.stats().rejected == 0
    assert count_by_uuid(db) == {call_uuid(i): 1 for i in range(9)}


def test_the_writer_does_not_block_other_greenlets_while_it_waits_on_postgresql(db_dsn, keyring, tmp_path):
    proc = _feeder("ticker", db_dsn, str(keyring.path), str(tmp_path / "journal"))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    during, after = out.splitlines()
    _, ticks, _, written = during.split()
    assert int(written) == 0  # the writer was inside its stalled batch the whole second
    assert int(ticks) >= 50  # ~100 expected; a blocked event loop gives 0
    assert after == "after 1"


def test_finished_calls_are_counted_past_the_latency_window(db, db_dsn, keyring, tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "LATENCY_WINDOW", 3)
    with open_journal(tmp_path / "journal", keyring) as journal:
        writer = Writer(db_dsn, keyring, journal, batch_size=4)
        writer.start()
        for i in range(5):
            started, answered, _ = call_updates(i)
            writer.submit(started)
            writer.submit(answered)
        assert writer.flush(30)
        assert writer.calls_finished == 0  # answered is not finished
        for i in range(5):
            writer.submit(call_updates(i)[2])
        assert writer.flush(30)
        writer.stop()
    assert writer.calls_finished == 5
    assert len(writer.latencies()) == 3


def test_bad_writer_arguments_are_refused(db_dsn, keyring, tmp_path):
    with open_journal(tmp_path / "journal", keyring) as journal:
        with pytest.raises(ValueError, match="unknown write method"):
            Writer(db_dsn, keyring, journal, method="carrier-pigeon")
        with pytest.raises(ValueError, match="batch_size"):
            Writer(db_dsn, keyring, journal, batch_size=0)



def test_registrations_survive_a_postgresql_outage_and_a_restart(own_cluster, keyring, tmp_path):
    """sofia::register logins go through a journal of their own: while PostgreSQL is stopped they
    wait there (sealed), a restart of the recorder (the daemon) replays them, and they land."""
    from datetime import UTC, datetime, timedelta

    from eslbridge.accounts.registrations import Login, LoginRecorder
    from tests.writer_fixtures import create_user

    dsn = own_cluster.dsn("eslbridge")
    with psycopg.connect(dsn) as conn:
        for name in ("alice", "bob", "carol"):
            create_user(conn, name)

    def connect():
        return psycopg.connect(dsn, connect_timeout=2)

    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    jdir = tmp_path / "logins"
    recorder = LoginRecorder(open_journal(jdir, keyring), connect)
    recorder.add(Login("alice", "example.org", t0))
    assert recorder.flush()
    own_cluster.stop("fast")
    recorder.add(Login("bob", "example.org", t0 + timedelta(seconds=1)))
    recorder.add(Login("alice", "example.org", t0 + timedelta(seconds=2)))
    assert not recorder.flush()  # down: kept in the journal
    recorder.add(Login("carol", "example.org", t0 + timedelta(seconds=3)))
    assert not recorder.flush()
    recorder.close()
    raw = b"".join(p.read_bytes() for p in jdir.glob("seg-*.log"))
    assert b"carol" not in raw and b"bob" not in raw  # sealed

    own_cluster.start()
    restarted = LoginRecorder(open_journal(jdir, keyring), connect)  # a new process: only the journal knows
    assert restarted.backlog == 3
    assert restarted.flush()
    assert restarted.backlog == 0
    restarted.close()
    with psycopg.connect(dsn) as conn:
        rows = dict(conn.execute("SELECT username, last_login FROM users").fetchall())
    assert rows == {"alice": t0 + timedelta(seconds=2), "bob": t0 + timedelta(seconds=1),
                    "carol": t0 + timedelta(seconds=3)}
    again = LoginRecorder(open_journal(jdir, keyring), connect)
    assert again.backlog == 0  # the journal forgot them once PostgreSQL had them
    again.close()
