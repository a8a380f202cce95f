"""The on-disk journal: order, durability, damage tolerance, bounds."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import gevent
import pytest

from eslbridge.keys.keyring import Keyring, add_key, generate_keyring, remove_key, set_active
from eslbridge.store.journal import HEADER, Journal, JournalError, JournalFull, scan

MB = 1 << 20


def payloads(n: int, start: int = 1) -> list[bytes]:
    return [f"record {i} ".encode() * 3 for i in range(start, start + n)]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.log"))


def test_append_and_replay_in_order(tmp_path):
    with Journal(tmp_path, MB) as j:
        assert [j.append(p) for p in payloads(3)] == [1, 2, 3]
        assert j.append_many(payloads(3, 4)) == [4, 5, 6]
        assert list(j.replay()) == list(enumerate(payloads(6), 1))


def test_reopen_continues_sequence(tmp_path):
    with Journal(tmp_path, MB) as j:
        j.append_many(payloads(3))
    with Journal(tmp_path, MB) as j:
        assert list(j.replay()) == list(enumerate(payloads(3), 1))
        assert j.append(b"four") == 4
        j.commit(4)
        assert j.bytes_used == 0
    with Journal(tmp_path, MB) as j:  # nothing left on disk but the checkpoint
        assert list(j.replay()) == []
        assert j.append(b"five") == 5
        assert list(j.replay()) == [(5, b"five")]


def test_commit_truncates_and_deletes_segments(tmp_path):
    with Journal(tmp_path, MB, segment_bytes=200) as j:
        j.append_many(payloads(20))
        assert len(segments(tmp_path)) > 3
        j.commit(10)
        assert [seq for seq, _ in j.replay()] == list(range(11, 21))
        assert all(int(p.name[4:-4]) > 1 for p in segments(tmp_path))  # the first segments are gone
        j.commit(20)
        assert list(j.replay()) == []
        assert j.bytes_used == 0
        assert sum(p.stat().st_size for p in segments(tmp_path)) == 0
        assert j.append(b"next") == 21
    with Journal(tmp_path, MB) as j:
        assert list(j.replay()) == [(21, b"next")]


def test_commit_beyond_written_is_refused(tmp_path):
    with Journal(tmp_path, MB) as j:
        j.append(b"x")
        with pytest.raises(JournalError, match="written only up to 1"):
            j.commit(2)


def test_torn_tail_is_tolerated(tmp_path, caplog):
    with Journal(tmp_path, MB) as j:
        j.append_many(payloads(5))
    seg = segments(tmp_path)[-1]
    os.truncate(seg, seg.stat().st_size - 7)  # a crash in the middle of the last write
    with caplog.at_level(logging.ERROR), Journal(tmp_path, MB) as j:
        assert list(j.replay()) == list(enumerate(payloads(4), 1))
        assert list(j.replay()) == list(enumerate(payloads(4), 1))
        assert j.stats.corrupt_records == 1
        assert j.append(b"after") == 5
        assert [seq for seq, _ in j.replay()] == [1, 2, 3, 4, 5]
    assert sum("torn record at the end" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("where", ["payload", "length", "seq", "magic"])
def test_flipped_bit_is_skipped(tmp_path, caplog, where):
    data = payloads(5)
    with Journal(tmp_path, MB) as j:
        j.append_many(data)
    seg = segments(tmp_path)[0]
    raw = bytearray(seg.read_bytes())
    third = 2 * HEADER.size + len(data[0]) + len(data[1])
    raw[third + {"payload": HEADER.size + 3, "length": 5, "seq": 9, "magic": 1}[where]] ^= 0x10
    seg.write_bytes(bytes(raw))
    damaged = []
    with caplog.at_level(logging.ERROR), Journal(tmp_path, MB, on_damage=lambda: damaged.append(1)) as j:
        assert [seq for seq, _ in j.replay()] == [1, 2, 4, 5]
        assert list(j.replay()) and j.stats.corrupt_records == 1
    assert damaged == [1]  # the daemon's metric: once per damaged record, however often it is read
    assert any("damaged bytes" in r.getMessage() for r in caplog.records)


def test_garbage_only_segment_does_not_crash(tmp_path):
    (tmp_path / f"seg-{1:020d}.log").write_bytes(os.urandom(5000))
    with Journal(tmp_path, MB) as j:
        assert list(j.replay()) == []
        assert j.stats.corrupt_records == 1
        assert j.append(b"x") == 1
        assert list(j.replay()) == [(1, b"x")]


def test_torn_checkpoint_slot_falls_back(tmp_path):
    with Journal(tmp_path, MB) as j:
        j.append_many(payloads(4))
        j.commit(2)
        j.commit(3)  # generation 2 goes to slot 0, generation 1 (seq 2) stays in slot 1
    cp = tmp_path / "checkpoint"
    raw = bytearray(cp.read_bytes())
    raw[10] ^= 0xFF
    cp.write_bytes(bytes(raw))
    with Journal(tmp_path, MB) as j:
        assert [seq for seq, _ in j.replay()] == [3, 4]  # replaying 3 again is harmless: writes are idempotent


def test_disk_bound(tmp_path, caplog):
    record = b"x" * 80  # 100 bytes with the header
    with caplog.at_level(logging.WARNING), Journal(tmp_path, 1000) as j:
        for _ in range(10):
            j.append(record)
        assert j.bytes_used == 1000
        with pytest.raises(JournalFull, match="full"):
            j.append(record)
        assert j.last_seq == 10 and j.bytes_used == 1000
        j.commit(10)
        assert j.append(record) == 11
    levels = [(r.levelno, r.getMessage()) for r in caplog.records if "full (" in r.getMessage()]
    assert [lvl for lvl, _ in levels] == [logging.WARNING, logging.ERROR]
    assert "80% full" in levels[0][1] and "100% full" in levels[1][1]


def test_one_process_per_directory(tmp_path):
    with Journal(tmp_path, MB):
        script = f"from eslbridge.store.journal import Journal; Journal({str(tmp_path)!r}, 1 << 20)"
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and "in use by another process" in out.stderr


def test_group_commit_shares_fsyncs(tmp_path):
    with Journal(tmp_path, MB) as j:
        greenlets = [gevent.spawn(j.append, p) for p in payloads(200)]
        gevent.joinall(greenlets, raise_error=True)
        assert sorted(g.value for g in greenlets) == list(range(1, 201))
        assert j.stats.appended == 200
        assert j.stats.fsyncs < 100  # appends that arrive during an fsync share the next one


def test_sealed_payloads(tmp_path):
    generate_keyring(tmp_path / "k" / "keyring.yaml")
    ring = Keyring.load(tmp_path / "k" / "keyring.yaml")
    jdir = tmp_path / "j"
    with Journal(jdir, MB, sealer=ring.journal_sealer()) as j:
        j.append(b"sip:1000@example.com +4930123456")
    assert b"4930123456" not in b"".join(p.read_bytes() for p in segments(jdir))
    with Journal(jdir, MB, sealer=ring.journal_sealer()) as j:
        assert list(j.replay()) == [(1, b"sip:1000@example.com +4930123456")]
    generate_keyring(tmp_path / "other" / "keyring.yaml")
    other = Keyring.load(tmp_path / "other" / "keyring.yaml")
    with Journal(jdir, MB, sealer=other.journal_sealer()) as j:
        j.append(b"readable")  # other's key 1 is not ring's key 1: the old record cannot be opened
        assert list(j.replay()) == [(2, b"readable")]
        assert j.stats.unreadable_records == 1


def test_reloaded_sealer_seals_with_the_new_active_key(tmp_path):
    """SIGHUP swaps the journal's sealer: records after it use the new active key, earlier ones
    still open while their key stays in the keyring."""
    path = tmp_path / "k" / "keyring.yaml"
    generate_keyring(path)
    jdir = tmp_path / "j"
    with Journal(jdir, MB, sealer=Keyring.load(path).journal_sealer()) as j:
        j.append(b"before")
        set_active(path, add_key(path))
        j.sealer = Keyring.load(path).journal_sealer()
        j.append(b"after")
        assert list(j.replay()) == [(1, b"before"), (2, b"after")]
    key_ids = [int.from_bytes(payload[:2], "big") for _, _, _, payload in scan(segments(jdir)[0].read_bytes())]
    assert key_ids == [1, 2]
    remove_key(path, 1)
    with Journal(jdir, MB, sealer=Keyring.load(path).journal_sealer()) as j:
        assert list(j.replay()) == [(2, b"after")]  # key 1 is gone: only the record sealed after the reload opens


WRITER = """
import sys
from eslbridge.store.journal import Journal
j = Journal(sys.argv[1], 1 << 30, segment_bytes=4096)
i = 0
while True:
    i += 1
    seq = j.append(b"payload %d" % i)
    sys.stdout.write(f"{seq} {i}\\n")
    sys.stdout.flush()
"""


def test_kill_9_loses_nothing_acknowledged(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    acked = {}
    try:
        for line in proc.stdout:
            seq, i = map(int, line.split())
            acked[seq] = b"payload %d" % i
            if len(acked) == 300:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert len(acked) == 300
    with Journal(tmp_path, 1 << 30) as j:
        replayed = dict(j.replay())
        assert j.stats.corrupt_records <= 1  # at most the record being written when killed
        next_seq = j.append(b"after")
    assert {seq: replayed.get(seq) for seq in acked} == acked
    assert sorted(replayed) == list(range(1, len(replayed) + 1))
    assert next_seq == len(replayed) + 1
