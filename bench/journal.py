"""Journal group commit: appends/s and fsyncs by concurrency, and event-loop stalls.

Each greenlet appends 300-byte records (about a sealed RecordUpdate) and waits for its
fsync, as the writer does. A ticker greenlet measures the worst event-loop stall, with fsync
in gevent's threadpool (what the journal does) and, for comparison, os.fsync called inline.

    python -m bench.journal [--records 4000] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import gevent

from eslbridge.store import journal as journal_mod
from eslbridge.store.journal import Journal


def run(base: str, greenlets: int, records: int) -> tuple[float, int, float]:
    """(appends/s, fsyncs, worst event-loop stall in ms)."""
    directory = tempfile.mkdtemp(dir=base)
    worst = 0.0
    done = False

    def ticker() -> None:
        nonlocal worst
        while not done:
            t = time.perf_counter()
            gevent.sleep(0.001)
            worst = max(worst, time.perf_counter() - t - 0.001)

    try:
        with Journal(directory, 1 << 30) as j:
            tick = gevent.spawn(ticker)

            def worker() -> None:
                for _ in range(records // greenlets):
                    j.append(b"x" * 300)

            start = time.perf_counter()
            gevent.joinall([gevent.spawn(worker) for _ in range(greenlets)], raise_error=True)
            elapsed = time.perf_counter() - start
            done = True
            tick.join()
            return j.stats.appended / elapsed, j.stats.fsyncs, worst * 1e3
    finally:
        shutil.rmtree(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="a directory on the disk to measure")
    args = parser.parse_args()
    for mode in ("threadpool", "inline"):
        if mode == "inline":
            journal_mod._blocking = lambda fn, *a: fn(*a)  # the comparison: fsync blocks the loop
        for greenlets in (1, 10, 50, 200):
            rate, fsyncs, stall = run(args.dir, greenlets, args.records)
            print(f"fsync {mode:>10}, {greenlets:3d} greenlets: {rate:8.0f} appends/s, {fsyncs:5d} fsyncs "
                  f"for {args.records} records, worst loop stall {stall:6.2f} ms")
    print(f"(pid {os.getpid()}, dir {args.dir})")


if __name__ == "__main__":
    main()
