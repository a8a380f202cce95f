"""One row per call when two writers know different starts of it (eslbridge.store.startkey).

A call written under a `show channels` snapshot's whole-second start (a daemon settling a held
call) and under its exact start (another daemon, a replay) is one row in call_records and one in
calls, under the exact start, whichever writer commits first, including while both write at once.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import datetime

import psycopg
import pytest

from eslbridge.calls.legs import to_us
from eslbridge.calls.reconcile import close_row
from eslbridge.calls.records import RecordUpdate
from eslbridge.keys.keyring import Keyring
from eslbridge.store.reconcile import close_rows, load_active
from eslbridge.store.rows import FieldEncoder, batch_rows
from eslbridge.store.startkey import LOCK_CLASS, Settled
from eslbridge.store.upsert import METHODS
from tests.writer_fixtures import call_updates, create_user, keyring  # noqa: F401


def whole_second(update: RecordUpdate, reconciled: bool = False) -> RecordUpdate:
    """The update as a daemon that saw the call only in a snapshot writes it."""
    record = dataclasses.replace(update.record, start_time=update.record.start_time.replace(microsecond=0))
    if reconciled:
        record.status, record.call_status, record.reconciled = "Failed", "failed", True
    return RecordUpdate(update.stage, record, update.events)


def rows(db: psycopg.Connection, uuid: str) -> tuple[list[tuple], list[tuple], list[tuple]]:
    records = db.execute("SELECT start_time, status, reconciled FROM call_records WHERE call_uuid = %s",
                         (uuid,)).fetchall()
    calls = db.execute("SELECT initiated_at, status FROM calls WHERE call_uuid = %s", (uuid,)).fetchall()
    events = db.execute("SELECT DISTINCT call_initiated_at FROM call_events WHERE call_uuid = %s",
                        (uuid,)).fetchall()
    return records, calls, events



def waits_on_advisory_lock(dsn: str, thread: threading.Thread, timeout: float = 20.0) -> bool:
    """True once a session is seen blocked on an advisory lock while ``thread`` still runs; False
    if the thread finished first (it took no lock that another transaction held)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as watcher:
        while thread.is_alive() and time.monotonic() < deadline:
            if watcher.execute("SELECT count(*) FROM pg_stat_activity"
                               " WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'").fetchone()[0]:
                return True
            time.sleep(0.02)
    return False


def write_concurrently(dsn: str, keyring: Keyring, first: RecordUpdate, second: RecordUpdate,  # noqa: F811
                       method: str) -> None:
    """``first`` written in a transaction left open while ``second`` is written from another
    connection; the second must wait for the first (else both would insert), then both commit."""
    write = METHODS[method]
    enc = FieldEncoder(keyring)
    errors: list[Exception] = []

    def second_writer() -> None:
        try:
            with psycopg.connect(dsn) as conn:
                write.prepare(conn)
                write.write(conn, batch_rows([second], enc))
        except Exception as e:  # reported by the assertion below
            errors.append(e)

    with psycopg.connect(dsn) as conn:
        write.prepare(conn)
        with conn.transaction():
            write.write(conn, batch_rows([first], enc))  # a savepoint: the locks stay held
            other = threading.Thread(target=second_writer)
            other.start()
            assert waits_on_advisory_lock(dsn, other), "the second writer did not wait for the first"
    other.join(20)
    assert not other.is_alive() and not errors, errors


@pytest.mark.parametrize("method", ["arrays", "executemany", "copy"])
@pytest.mark.parametrize("order", ["approximate first", "exact first"])
def test_concurrent_approximate_and_exact_writes_make_one_exact_row(db, db_dsn, keyring, order, method):  # noqa: F811
    user = create_user(db)
    exact = call_updates(1, user)[-1]  # finished by its own events
    approximate = whole_second(exact, reconciled=True)  # closed by a resync that saw it vanish
    assert approximate.record.start_time != exact.record.start_time
    pair = (approximate, exact) if order == "approximate first" else (exact, approximate)
    write_concurrently(db_dsn, keyring, *pair, method)
    records, calls, events = rows(db, exact.record.call_uuid)
    start = exact.record.start_time
    # The exact start is the key, and the call's own events' outcome beats the resync's guess.
    assert records == [(start, "Completed", False)]
    assert calls == [(start, "completed")]
    assert events == [(start,)]  # every lifecycle row linked to the one calls row


@pytest.mark.parametrize("order", ["approximate first", "exact first"])
def test_a_call_opened_at_the_whole_second_and_finished_exactly_is_one_row(db, db_dsn, keyring, order):  # noqa: F811
    user = create_user(db)
    started, _, finished = call_updates(2, user)
    approximate = whole_second(started)
    pair = (approximate, finished) if order == "approximate first" else (finished, approximate)
    write_concurrently(db_dsn, keyring, *pair, "arrays")
    records, calls, _ = rows(db, finished.record.call_uuid)
    assert records == [(finished.record.start_time, "Completed", False)]
    assert calls == [(finished.record.start_time, "completed")]


def test_a_resync_closes_the_row_whose_whole_second_start_was_made_exact(db, db_dsn, keyring):  # noqa: F811
    """A daemon holds a call under the whole second it settled it with; another daemon's exact row
    replaced that key since. Closing the call at a resync still finds the one row."""
    user = create_user(db)
    started = call_updates(3, user)[0]
    approximate = whole_second(started)
    write_concurrently(db_dsn, keyring, approximate, started, "arrays")
    active, _ = load_active(db, "fs1")
    assert [row.start_us for row in active] == [to_us(started.record.start_time)]
    stale = dataclasses.replace(active[0], start_us=to_us(approximate.record.start_time))
    end_us = to_us(started.record.start_time) + 5_000_000
    assert close_rows(db, "fs1", [close_row(stale, "fs1", end_us, "gap_detected")]) == 1
    records, calls, _ = rows(db, started.record.call_uuid)
    assert records == [(started.record.start_time, "Failed", True)]
    assert calls == [(started.record.start_time, "failed")]
    assert isinstance(records[0][0], datetime)


def _write_in_thread(dsn: str, rows, settled: Settled) -> threading.Thread:
    def write() -> None:
        with psycopg.connect(dsn) as conn:
            METHODS["arrays"].write(conn, rows, settled)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_a_writer_claims_an_exact_start_until_it_committed_it_then_never_again(db, db_dsn, keyring):  # noqa: F811
    user = create_user(db)
    started, answered, finished = call_updates(5, user)
    uuid = started.record.call_uuid
    enc = FieldEncoder(keyring)
    settled = Settled()
    first = batch_rows([started], enc)
    assert settled.unclaimed(first) == first.call_records
    with psycopg.connect(db_dsn) as conn:
        METHODS["arrays"].write(conn, first, settled)
    settled.add(first)
    # Another daemon settles the call from a snapshot: its whole second resolves to the exact row.
    with psycopg.connect(db_dsn) as conn:
        METHODS["arrays"].write(conn, batch_rows([whole_second(answered)], enc), Settled())
    with psycopg.connect(db_dsn) as holder, holder.transaction():  # a writer of the call still busy
        holder.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, uuid))
        unsettled = _write_in_thread(db_dsn, batch_rows([answered], enc), Settled())
        settled_write = _write_in_thread(db_dsn, batch_rows([finished], enc), settled)
        settled_write.join(10)
        assert not settled_write.is_alive(), "a settled exact start still took the call's lock"
        assert waits_on_advisory_lock(db_dsn, unsettled), "an unsettled exact start did not take the call's lock"
    unsettled.join(10)
    records, calls, events = rows(db, uuid)
    assert records == [(started.record.start_time, "Completed", False)]
    assert calls == [(started.record.start_time, "completed")]
    assert events == [(started.record.start_time,)]


def test_a_calls_row_that_comes_later_is_claimed_though_its_record_was_settled(db, db_dsn, keyring):  # noqa: F811
    """An inbound call's local user is known at answer: its calls row comes with the second write,
    and another daemon may have inserted it under the whole second meanwhile."""
    bob = create_user(db, "bob")
    started, answered, finished = call_updates(8)
    answered.record.user_id = finished.record.user_id = bob
    enc = FieldEncoder(keyring)
    settled = Settled()
    first = batch_rows([started], enc)
    assert first.calls == []
    with psycopg.connect(db_dsn) as conn:
        METHODS["arrays"].write(conn, first, settled)
        settled.add(first)
        METHODS["arrays"].write(conn, batch_rows([whole_second(answered)], enc), Settled())  # the other daemon
        METHODS["arrays"].write(conn, batch_rows([finished], enc), settled)
    records, calls, events = rows(db, started.record.call_uuid)
    assert records == [(started.record.start_time, "Completed", False)]
    assert calls == [(started.record.start_time, "completed")]
    assert events == [(started.record.start_time,)]


def test_settled_keys_are_only_exact_starts_and_are_forgotten_on_clear(db, keyring):  # noqa: F811
    enc = FieldEncoder(keyring)
    user = create_user(db)
    exact = batch_rows([call_updates(6, user)[0]], enc)
    approximate = batch_rows([whole_second(call_updates(7, user)[0])], enc)
    both = exact.merged(approximate)
    settled = Settled()
    settled.add(both)
    assert settled.unclaimed(both) == approximate.call_records  # a whole second is always claimed
    settled.clear()
    assert settled.unclaimed(exact) == exact.call_records
