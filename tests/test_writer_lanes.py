"""A batch written as concurrent per-lane transactions: same rows, whatever the number of lanes."""

from __future__ import annotations

import pytest
from psycopg.types.json import Jsonb

from eslbridge.store.rows import FieldEncoder, batch_rows
from eslbridge.store.writer import Writer
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


def test_split_keeps_every_row_once_and_each_calls_rows_in_one_part(keyring):
    updates = list(stream(range(30), {i: "6f1c1b1e-0000-4000-8000-000000000001" for i in range(0, 30, 3)}))
    rows = batch_rows(updates, FieldEncoder(keyring))
    parts = rows.split(4)
    assert 1 < len(parts) <= 4
    for name in ("call_records", "calls", "events"):
        split_rows = [r for p in parts for r in getattr(p, name)]
        assert sorted(split_rows, key=repr) == sorted(getattr(rows, name), key=repr)
        position = {id(r): n for n, r in enumerate(getattr(rows, name))}
        for p in parts:  # each part keeps the batch's key order (the lock order)
            order = [position[id(r)] for r in getattr(p, name)]
            assert order == sorted(order)
    owner = {}
    for n, p in enumerate(parts):
        for name in ("call_records", "calls", "events"):
            for r in getattr(p, name):
                assert owner.setdefault(r[0], n) == n  # a call's rows never span two lanes
    assert len(owner) == 30
    assert rows.split(1) == [rows]


def test_merging_a_later_batch_gives_the_rows_of_both_encoded_together(keyring):
    """A prefetched batch joined by records that arrived later: the same rows (by key, stage and
    order) as encoding all of their updates as one batch."""
    user = "6f1c1b1e-0000-4000-8000-000000000001"
    calls = {i: call_updates(i, user if i % 2 else None) for i in range(6)}
    first = [calls[i][0] for i in range(6)] + [calls[i][1] for i in range(3)]  # started, some answered
    later = [calls[i][2] for i in range(0, 6, 2)]  # finished, some of them answered in `first`
    enc = FieldEncoder(keyring)
    merged = batch_rows(first, enc).merged(batch_rows(later, enc))
    whole = batch_rows(first + later, enc)
    def plain(rows: list[tuple]) -> list[tuple]:  # Jsonb wrappers compare by identity
        return [tuple(v.obj if isinstance(v, Jsonb) else v for v in row) for row in rows]

    for name in ("call_records", "calls", "events"):
        assert plain(getattr(merged, name)) == plain(getattr(whole, name)), name
    stages = {row[0]: row[-1] for row in merged.call_records}
    assert stages == {call_uuid(i): 3 if i % 2 == 0 else 2 if i < 3 else 1 for i in range(6)}
    alone = batch_rows(first, enc)
    assert alone.merged(batch_rows([], enc)).call_records is alone.call_records


@pytest.mark.parametrize("lanes", [1, 4])
def test_any_number_of_lanes_writes_the_same_rows_and_replays_leave_them_identical(db, db_dsn, keyring, tmp_path,
                                                                                   lanes):
    alice = create_user(db)
    updates = list(stream(range(60), {i: alice for i in range(0, 60, 2)}))
    with open_journal(tmp_path / "j", keyring) as journal:
        writer = write_all(db_dsn, keyring, journal, updates, lanes=lanes, batch_size=23)
        first = snapshot(db)
        write_all(db_dsn, keyring, journal, reversed(updates), lanes=5 - lanes, batch_size=7)
    assert writer.stats().rejected == 0
    assert (len(first["call_records"]), len(first["calls"]), len(first["call_events"])) == (60, 30, 240)
    assert snapshot(db) == first
    unlinked = db.execute(
        "SELECT count(*) FROM call_events e JOIN calls c USING (call_uuid) WHERE e.call_id IS DISTINCT FROM c.id"
    ).fetchone()[0]
    assert unlinked == 0


def test_a_refused_record_in_one_lane_does_not_cost_the_other_lanes_records(db, db_dsn, keyring, tmp_path,
                                                                            capfd):
    bad = call_updates(5)[2]
    bad.record.status = "Exploded"  # violates the CHECK constraint
    updates = [u for i in range(20) for u in (call_updates(i) if i != 5 else [bad])]
    with open_journal(tmp_path / "j", keyring) as journal:
        writer = write_all(db_dsn, keyring, journal, updates, lanes=3, batch_size=100)
        assert journal.bytes_used == 0
    assert writer.stats().rejected == 1
    assert sorted(count_by_uuid(db)) == sorted(call_uuid(i) for i in range(20) if i != 5)
    # The server's DETAIL quotes the failing row; no lane greenlet may print it (gevent does for a
    # greenlet that dies with an exception).
    out, err = capfd.readouterr()
    assert "Failing row" not in out + err and bad.record.call_id not in out + err


def test_a_pool_too_small_for_the_lanes_still_writes(db, db_dsn, keyring, tmp_path):
    from eslbridge.config import DatabaseConfig, Secret
    from eslbridge.store.pool import make_pool

    cfg = DatabaseConfig(url=Secret(db_dsn, "test"), min_connections=1, max_connections=1, connect_timeout=2,
                         idle_timeout=600, max_lifetime=1800, replica_url=None)
    with make_pool(cfg, open_now=True) as pool, open_journal(tmp_path / "j", keyring) as journal:
        # With one lane per pooled connection, a second lane would wait for a connection that never frees.
        write_all(pool, keyring, journal, [u for i in range(10) for u in call_updates(i)], lanes=4)
    assert len(count_by_uuid(db)) == 10


def test_zero_lanes_are_refused(db_dsn, keyring, tmp_path):
    with open_journal(tmp_path / "journal", keyring) as journal, pytest.raises(ValueError, match="lanes"):
        Writer(db_dsn, keyring, journal, lanes=0)
