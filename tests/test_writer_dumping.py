"""How a batch's values reach PostgreSQL: JSON columns, and array parameters dumped ahead of the
write (by the prefetcher) that write the same rows as those dumped at write time."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import pq

import eslbridge.store.upsert as upsert
from eslbridge.store import dumping
from eslbridge.store.rows import BatchRows, FieldEncoder, batch_rows
from eslbridge.store.writer import Writer
from tests.writer_fixtures import call_updates, count_by_uuid, create_user, open_journal

# Every column but what the server fills in (ids, creation and update times) and the events' link
# to their calls row (a server-made id).
_ROWS = {
    "call_records": "SELECT to_jsonb(t) - 'id' - 'created_at' - 'updated_at' FROM call_records t ORDER BY call_uuid",
    "calls": "SELECT to_jsonb(t) - 'id' - 'created_at' - 'updated_at' FROM calls t ORDER BY call_uuid",
    "call_events": "SELECT to_jsonb(t) - 'id' - 'created_at' - 'call_id' FROM call_events t"
                   " ORDER BY call_uuid, event_type, seq",
}


def _stored(conn: psycopg.Connection) -> dict[str, list]:
    return {table: [row[0] for row in conn.execute(query)] for table, query in _ROWS.items()}


def _write(dsn: str, rows: BatchRows, client_encoding: str = "UTF8") -> None:
    with psycopg.connect(dsn, autocommit=True, client_encoding=client_encoding) as conn:
        upsert.METHODS["arrays"].prepare(conn)
        upsert.write_arrays(conn, rows)


def test_parameters_dumped_ahead_write_the_rows_of_parameters_dumped_at_write_time(db, db_dsn, keyring):
    alice = create_user(db)
    # First rows only: a column that is NULL in every row of the batch (no answer time, no callee IP)
    # is dumped as text, the rest as binary.
    updates = [call_updates(i, alice if i % 2 else None)[0] for i in range(8)]
    rows = batch_rows(updates, FieldEncoder(keyring))
    ahead = BatchRows(rows.call_records, rows.calls, rows.events)
    upsert.encode_arrays(ahead)
    formats = {p.format for _, params in ahead.encoded for p in params}
    assert formats == {pq.Format.TEXT, pq.Format.BINARY}
    assert rows.encoded is None

    _write(db_dsn, ahead)
    written_ahead = _stored(db)
    db.execute("TRUNCATE call_events, calls, call_records")
    _write(db_dsn, rows)
    assert written_ahead == _stored(db)
    assert [len(written_ahead[t]) for t in _ROWS] == [8, 4, 8]


def test_parameters_dumped_ahead_keep_their_text_on_a_connection_of_another_encoding(db, db_dsn, keyring):
    """They are dumped without a connection, in UTF-8: a LATIN1 client must not garble them."""
    update = call_updates(3)[2]
    update.record.caller_user_agent = "Zoë's phone €"  # € is not in LATIN1: refused if sent as such
    update.record.disconnect_reason = "NORMAL_CLEARING ü"
    rows = batch_rows([update], FieldEncoder(keyring))
    upsert.encode_arrays(rows)
    _write(db_dsn, rows, client_encoding="LATIN1")
    stored = db.execute("SELECT caller_user_agent, disconnect_reason FROM call_records").fetchone()
    assert stored == ("Zoë's phone €", "NORMAL_CLEARING ü")


def test_the_writer_dumps_prefetched_batches_ahead_and_writes_them(db, db_dsn, keyring, tmp_path, monkeypatch):
    dumped = []

    def counting(column):
        dumped.append(len(column))
        return dump(column)

    dump = dumping.dump_column
    monkeypatch.setattr(dumping, "dump_column", counting)
    updates = [u for i in range(120) for u in call_updates(i)]
    with open_journal(tmp_path / "j", keyring) as journal:
        writer = Writer(db_dsn, keyring, journal, lanes=2, batch_size=20)
        writer.start()
        assert writer.flush(10)  # the start's journal replay (no prefetching) is over
        for update in updates:
            writer.submit(update)
        assert writer.flush(60)
        writer.stop()
    assert writer.stats().rejected == 0
    assert dumped  # some batches were prefetched, split and dumped ahead ...
    assert count_by_uuid(db) == {u.record.call_uuid: 1 for u in updates}  # ... and every call landed once
    finished = db.execute("SELECT count(*) FROM call_records WHERE end_time IS NOT NULL").fetchone()[0]
    assert finished == 120


@pytest.mark.parametrize(("waiting", "ahead"), [(10, True), (9, False)])
def test_only_a_full_prefetched_batch_is_dumped_ahead(db_dsn, keyring, tmp_path, waiting, ahead):
    """One with room left is usually joined by later hangups before its write, which dumps anew."""
    with open_journal(tmp_path / "j", keyring) as journal:
        writer = Writer(db_dsn, keyring, journal, lanes=2, batch_size=10)
        for i in range(waiting):
            writer.queue.submit(call_updates(i)[0], 0.0)
        writer._prefetch()
    parts = writer._next_rows.split(2)
    assert sum(len(p.call_records) for p in parts) == waiting
    assert [p.encoded is not None for p in parts] == [ahead] * len(parts)


def test_json_columns_store_nan_as_unknown_like_the_journal(db, db_dsn, keyring, tmp_path):
    started, answered, finished = call_updates(1)
    finished.record.media_info = {"caller": {"mos": float("nan"), "jitter_ms": 1.5}}
    finished.events[0].data["note"] = float("nan")
    with open_journal(tmp_path / "j", keyring) as journal:
        writer = Writer(db_dsn, keyring, journal)
        writer.start()
        for update in (started, answered, finished):
            writer.submit(update)
        assert writer.flush(30)
        writer.stop()
    assert writer.stats().rejected == 0
    media = db.execute("SELECT media_info FROM call_records").fetchone()[0]
    assert media == {"caller": {"mos": None, "jitter_ms": 1.5}}
    notes = db.execute("SELECT event_data->'note' FROM call_events WHERE event_data ? 'note'").fetchall()
    assert notes == [(None,)]
