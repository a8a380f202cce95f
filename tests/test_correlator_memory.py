"""State size: bytes per active call over 10,000 concurrent calls (DESIGN section 11: <= 5 KB).

A correctness bound on what the correlator keeps per call (not a timing test). Each call is a
captured bridge-answer with fresh UUIDs, Call-ID, From and SDP, fed up to its bridge: both legs
created, originated, answered and bridged; nothing hung up.
"""

from __future__ import annotations

import gc
import tracemalloc

from bench.correlate import CallFactory
from eslbridge.calls.correlator import Correlator

CALLS = 10_000
LIMIT = 5 * 1024


def test_bytes_per_active_call():
    factory = CallFactory("minimal.json")
    factory.templates = factory.templates[:1]  # bridge-answer: two legs
    streams = [[e for e in factory.call(i) if e["Event-Name"] not in ("CHANNEL_HANGUP_COMPLETE", "CHANNEL_UNBRIDGE")]
               for i in range(CALLS)]
    correlator = Correlator("fs1", lambda user, realm: None)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for events in streams:
        for event in events:
            correlator.feed(event)
    gc.collect()
    per_call = (tracemalloc.get_traced_memory()[0] - before) / CALLS
    tracemalloc.stop()
    print(f"\ncorrelator state: {per_call:,.0f} bytes per active call over {CALLS:,} calls")
    assert correlator.active_calls == CALLS
    assert per_call <= LIMIT
