"""Memory through the correlator: bytes per active call, and RSS across many calls (DESIGN section 11).

Calls are the captured FreeSWITCH calls with fresh UUIDs (bench.correlate's CallFactory), minimal
subscription (what the daemon receives). Bytes per active call: tracemalloc's growth while
`--active` calls are open (created, answered, not hung up), divided by their number. RSS: the
process's resident size sampled every tenth of `--calls` finished calls, `--concurrent` in flight;
"flat" means the last samples stop growing once the correlator's bounded memory of finished legs
(duplicate detection, DESIGN section 9) is full.

    python -m bench.memory [--calls 1000000] [--active 10000]   # DESIGN: flat RSS across 1,000,000 calls
"""

from __future__ import annotations

import argparse
import json
import os
import tracemalloc

from bench.correlate import CallFactory
from eslbridge.calls.correlator import Correlator

TARGET_BYTES_PER_CALL = 5 * 1024


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bytes_per_active_call(factory: CallFactory, active: int) -> float:
    calls = [factory.call(i) for i in range(active)]
    opening = [[e for e in events if e["Event-Name"] != "CHANNEL_HANGUP_COMPLETE"] for events in calls]
    correlator = Correlator("bench", lambda user, realm: None)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for events in opening:
        for event in events:
            correlator.feed(event)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert correlator.active_calls == active
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return grown / active


def rss_over_calls(factory: CallFactory, calls: int, concurrent: int) -> list[tuple[int, int]]:
    correlator = Correlator("bench", lambda user, realm: None)
    samples, every, done = [], max(1, calls // 10), 0
    for start in range(0, calls, concurrent):
        batch = [factory.call(i) for i in range(start, min(start + concurrent, calls))]
        longest = max(len(events) for events in batch)
        for position in range(longest):
            for events in batch:
                if position < len(events):
                    correlator.feed(events[position])
        before, done = done, done + len(batch)
        if done // every > before // every:
            samples.append((done, rss_bytes()))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--concurrent", type=int, default=500)
    parser.add_argument("--active", type=int, default=10_000)
    args = parser.parse_args()
    factory = CallFactory("minimal.json")
    per_call = bytes_per_active_call(factory, args.active)
    print(f"bytes per active call ({args.active:,} open calls, tracemalloc): {per_call:,.0f} B "
          f"(target <= {TARGET_BYTES_PER_CALL:,} B, ratio {per_call / TARGET_BYTES_PER_CALL:.2f})")
    samples = rss_over_calls(factory, args.calls, args.concurrent)
    for done, rss in samples:
        print(f"  after {done:>9,} calls: RSS {rss / 2**20:7.1f} MiB")
    half = samples[len(samples) // 2][1]
    growth = (samples[-1][1] - half) / 2**20
    print(f"RSS growth over the second half of {args.calls:,} calls: {growth:+.1f} MiB")
    print("bench-result: " + json.dumps({"bench": "memory", "bytes_per_active_call": round(per_call),
                                         "rss_growth_second_half_mib": round(growth, 1),
                                         "calls": args.calls}))


if __name__ == "__main__":
    main()
