"""Batch order near saturation: finished records, then calls' first rows, then updates of written rows."""

from __future__ import annotations

import socket

from eslbridge.calls.records import Stage
from eslbridge.store.writer import Writer
from tests.writer_fixtures import call_updates, call_uuid, open_journal, write_all


def _unreachable_dsn() -> str:
    with socket.socket() as s:  # a port nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"host=127.0.0.1 port={port} dbname=none user=none connect_timeout=1"


def _taken(writer: Writer) -> list[tuple[str, Stage]]:
    # The writer is never started here: the batches it would take are inspected, not written.
    return [(item.update.record.call_uuid, item.update.stage) for item in writer.queue.take(writer._batch_size, 0)]


def _answers_waiting_beside_new_calls(writer: Writer, new_calls: int) -> None:
    """Calls 0-3 started and taken ("written"), then answered; calls 4.. started."""
    for i in range(4):
        writer.submit(call_updates(i)[0])
    assert _taken(writer) == [(call_uuid(i), Stage.STARTED) for i in range(4)]
    for i in range(4):
        writer.submit(call_updates(i)[1])  # ANSWERED of rows already on their way
    for i in range(4, 4 + new_calls):
        writer.submit(call_updates(i)[0])


def test_new_calls_go_before_updates_of_rows_already_written(keyring, tmp_path):
    with open_journal(tmp_path / "j", keyring) as journal:
        writer = Writer(_unreachable_dsn(), keyring, journal, batch_size=4)
        _answers_waiting_beside_new_calls(writer, 4)
        assert _taken(writer) == [(call_uuid(i), Stage.STARTED) for i in range(4, 8)]
        assert _taken(writer) == [(call_uuid(i), Stage.ANSWERED) for i in range(4)]
        assert _taken(writer) == []


def test_updates_of_written_rows_get_a_quarter_of_a_batch_beside_other_work(keyring, tmp_path):
    with open_journal(tmp_path / "j", keyring) as journal:
        writer = Writer(_unreachable_dsn(), keyring, journal, batch_size=8)
        _answers_waiting_beside_new_calls(writer, 6)
        assert _taken(writer) == [(call_uuid(i), Stage.STARTED) for i in range(4, 10)] + [
            (call_uuid(i), Stage.ANSWERED) for i in range(2)]  # 6 new rows, then 8 // 4 answers
        assert _taken(writer) == [(call_uuid(i), Stage.ANSWERED) for i in range(2, 4)]  # alone: all the room


def test_an_answer_before_the_first_row_went_out_keeps_the_first_rows_priority(keyring, tmp_path):
    with open_journal(tmp_path / "j", keyring) as journal:
        writer = Writer(_unreachable_dsn(), keyring, journal, batch_size=1)
        writer.submit(call_updates(1)[0])
        writer.submit(call_updates(2)[0])
        writer.submit(call_updates(2)[1])  # coalesced with call 2's STARTED: still its first row
        writer.submit(call_updates(3)[0])
        # Had it queued behind the new rows, call 3 would come before it.
        assert [_taken(writer) for _ in range(3)] == [
            [(call_uuid(1), Stage.STARTED)], [(call_uuid(2), Stage.ANSWERED)], [(call_uuid(3), Stage.STARTED)]]


def test_a_finished_record_supersedes_a_waiting_answer(keyring, tmp_path):
    started, answered, finished = call_updates(5)
    with open_journal(tmp_path / "j", keyring) as journal:
        writer = Writer(_unreachable_dsn(), keyring, journal)
        writer.submit(started)
        _taken(writer)
        writer.submit(answered)
        assert writer.stats().pending == 1
        writer.submit(finished)
        assert writer.stats().pending == 1 and not writer.idle()
        assert _taken(writer) == []  # the answer is gone; the FINISHED goes through the journal
        (update, _), = writer.queue.incoming
        assert update.stage == Stage.FINISHED
        assert [e.event_type for e in update.events] == ["answered", "bridged", "hangup"]


def test_a_waiting_answer_is_journaled_at_shutdown_and_written_after_restart(db, db_dsn, keyring, tmp_path):
    started, answered, _ = call_updates(6)
    with open_journal(tmp_path / "j", keyring) as journal:
        write_all(db_dsn, keyring, journal, [started])
        down = Writer(_unreachable_dsn(), keyring, journal, max_backoff=0.2)
        down.start()
        down.submit(answered)
        assert down.stop(timeout=1.0) is False
        assert journal.bytes_used > 0
        write_all(db_dsn, keyring, journal, [])  # replays the journal
    row = db.execute("SELECT status, stage, answer_time IS NOT NULL FROM call_records").fetchone()
    assert row == ("Active", Stage.ANSWERED, True)
    assert db.execute("SELECT count(*) FROM call_events").fetchone()[0] == 3
