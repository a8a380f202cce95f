"""A writer in its own process, for the kill -9 and gevent tests (test helper, not product code).

    python -m tests.writer_feeder feed DSN KEYRING JOURNAL FIRST COUNT [PAUSE]
        submits calls FIRST..FIRST+COUNT-1 (STARTED, ANSWERED, FINISHED each), printing
        "ack <call_uuid>" once a call's FINISHED update is in the journal (fsync'd), then "done".
    python -m tests.writer_feeder ticker DSN KEYRING JOURNAL
        holds a lock that stalls the writer's batch for 1 s while a greenlet ticks every 10 ms;
        prints "ticks <n> written <records written meanwhile>", then "after <records written>".
"""

from __future__ import annotations

import gevent.monkey

gevent.monkey.patch_all()

import sys  # noqa: E402

import gevent  # noqa: E402
import psycopg  # noqa: E402

from eslbridge.keys.keyring import Keyring  # noqa: E402
from eslbridge.store.journal import Journal  # noqa: E402
from eslbridge.store.writer import Writer  # noqa: E402
from tests.writer_fixtures import call_updates  # noqa: E402


def _ack(updates) -> None:
    for u in updates:
        print("ack", u.record.call_uuid, flush=True)


def feed(dsn: str, keyring: Keyring, journal: Journal, first: int, count: int, pause: float) -> None:
    writer = Writer(dsn, keyring, journal, on_durable=_ack, batch_size=50)
    writer.start()
    for i in range(first, first + count):
        for update in call_updates(i):
            writer.submit(update)
        gevent.sleep(pause)
    writer.stop(10)
    print("done", flush=True)


def ticker(dsn: str, keyring: Keyring, journal: Journal) -> None:
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        while True:
            gevent.sleep(0.01)
            ticks += 1

    writer = Writer(dsn, keyring, journal)
    writer.start()
    gevent.sleep(0.2)  # let the writer finish its start-up replay
    with psycopg.connect(dsn) as locker:
        # The writer's next batch waits on this lock: a slow write, for as long as we hold it.
        locker.execute("LOCK TABLE call_records IN ACCESS EXCLUSIVE MODE")
        writer.submit(call_updates(1)[2])
        t = gevent.spawn(tick)
        gevent.sleep(1.0)  # never returns if the writer's wait blocked the event loop
        print("ticks", ticks, "written", writer.stats().records_written, flush=True)
    writer.flush(10)
    print("after", writer.stats().records_written, flush=True)
    t.kill()
    writer.stop()


def main(argv: list[str]) -> None:
    mode, dsn, keyring_path, journal_dir = argv[:4]
    keyring = Keyring.load(keyring_path)
    with Journal(journal_dir, 64 << 20, sealer=keyring.journal_sealer()) as journal:
        if mode == "ticker":
            ticker(dsn, keyring, journal)
        else:
            feed(dsn, keyring, journal, int(argv[4]), int(argv[5]), float(argv[6]) if len(argv) > 6 else 0.0)


if __name__ == "__main__":
    main(sys.argv[1:])
