"""A journal that cannot make records durable shows at once (metrics, writer stats), says what to do
once, loses nothing, and recovers by itself; tested on a real full filesystem (a small tmpfs)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gevent
import psycopg
import pytest
from prometheus_client import generate_latest

from eslbridge.ops.metrics import Metrics
from eslbridge.store.journal import Journal, JournalError
from eslbridge.store.writer import Writer
from tests.writer_fixtures import call_updates, call_uuid, count_by_uuid, open_journal

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of the test's own (mounting needs root; the test host runs as root)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    """Take every free byte of the filesystem."""
    path = directory / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, bytes(chunk))
    finally:
        os.close(fd)
    return path


def scrape(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def wait(predicate, timeout: float = 20.0) -> bool:
    with gevent.Timeout(timeout, False):
        while not predicate():
            gevent.sleep(0.05)
        return True
    return False


def feed(writer: Writer, calls: range) -> None:
    for i in calls:
        for update in call_updates(i):
            writer.submit(update)
        gevent.sleep(0)


def test_disk_full_shows_at_once_loses_nothing_and_recovers(small_fs, db_dsn, keyring, caplog):
    caplog.set_level(logging.INFO, logger="eslbridge.store.writer")
    metrics = Metrics()
    with open_journal(small_fs / "journal", keyring) as journal:
        writer = Writer(db_dsn, keyring, journal, metrics=metrics)
        writer.start()
        feed(writer, range(0, 10))
        assert writer.flush(30)
        assert writer.stats().journal_failure is None and "eslbridge_journal_writable 1.0" in scrape(metrics)

        filler = fill(small_fs)
        feed(writer, range(10, 40))
        assert wait(lambda: writer.stats().journal_failure == "enospc"), writer.stats()
        text = scrape(metrics)
        assert "eslbridge_journal_writable 0.0" in text
        assert 'eslbridge_journal_failures_total{kind="enospc"}' in text
        feed(writer, range(40, 60))  # still failing: still one log line
        assert writer.flush(30), writer.stats()  # PostgreSQL is up: written from memory meanwhile
        said = [r.getMessage() for r in caplog.records if "cannot make records durable" in r.getMessage()]
        assert len(said) == 1 and "free space on the journal's filesystem" in said[0]

        filler.unlink()
        assert wait(lambda: writer.stats().journal_failure is None), "the failure never cleared"
        assert "eslbridge_journal_writable 1.0" in scrape(metrics)
        assert any("writable again" in r.getMessage() for r in caplog.records)
        appended = journal.stats.appended
        feed(writer, range(60, 70))
        assert writer.flush(30)
        assert journal.stats.appended >= appended + 10  # durable again
        writer.stop()
    with psycopg.connect(db_dsn) as conn:
        assert count_by_uuid(conn) == {call_uuid(i): 1 for i in range(70)}


FSIZE_WRITER = """
import resource, sys
from eslbridge.store.journal import Journal, JournalError
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
j = Journal(sys.argv[1], 1 << 20, segment_bytes=1 << 20)
try:
    for i in range(100):
        j.append(b"x" * 1000)
except JournalError as e:
    print(e.kind, e.errno, e.advice)
"""


def test_file_size_limit_names_its_kind_and_remedy(tmp_path):
    """An rlimit in a subprocess: a real EFBIG from write(2) (Python ignores SIGXFSZ)."""
    out = subprocess.run([sys.executable, "-c", FSIZE_WRITER, str(tmp_path / "j")], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    kind, number, advice = out.stdout.split(" ", 2)
    assert (kind, int(number)) == ("efbig", errno.EFBIG), out.stderr
    assert "LimitFSIZE" in advice


def test_probe_reports_an_unusable_directory(tmp_path):
    with Journal(tmp_path / "j", 1 << 20) as journal:
        journal.probe()  # writable: no error
        os.rename(tmp_path / "j", tmp_path / "moved")
        (tmp_path / "j").write_text("not a directory")
        with pytest.raises(JournalError) as caught:
            journal.probe()
        assert caught.value.errno == errno.ENOTDIR


def test_daemon_health_turns_503_on_a_full_disk_and_back(small_fs, tmp_path, db_dsn):
    """The daemon (a subprocess) with its journal on the small filesystem, calls flowing."""
    import signal as _signal

    from tests.test_daemon import Env, Sim, get, metrics_url, wait_for

    env = Env(tmp_path, db_dsn)
    sim = Sim(env.tmp, "--wait-subscribers", "1", "--rate", "20", "--calls", "100000", "--mix", "reject=1")
    config = env.config(sim.port, journal={"dir": str(small_fs / "journal")})
    health, metrics = metrics_url(config, "/healthz"), metrics_url(config, "/metrics")
    try:
        proc = env.start(config)
        wait_for(lambda: get(health)[0] == 200, 60, "a healthy daemon")
        filler = fill(small_fs)
        wait_for(lambda: get(health)[0] == 503, 30, "/healthz 503 on a full disk")
        assert '"journal": "enospc"' in get(health)[1]
        text = get(metrics)[1]
        assert "eslbridge_journal_writable 0.0" in text and 'eslbridge_journal_failures_total{kind="enospc"}' in text
        filler.unlink()
        wait_for(lambda: get(health)[0] == 200, 30, "/healthz 200 once space is back")
        assert "eslbridge_journal_writable 1.0" in get(metrics)[1]
        proc.send_signal(_signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        sim.stop()
        env.stop_all()
    said = [line for line in env.log().splitlines() if "cannot make records durable" in line]
    assert len(said) == 1 and "free space on the journal's filesystem" in said[0]
    with psycopg.connect(db_dsn) as conn:  # nothing lost meanwhile: every call played has its row
        stuck = conn.execute("SELECT count(*) FROM call_records WHERE status = 'Active'").fetchone()[0]
    assert stuck == 0
