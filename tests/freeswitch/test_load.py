"""30 s of calls at 50 calls/s: every call sipp completed has exactly one row, with the status it implies."""

from __future__ import annotations

import time
from collections import Counter

from tests.freeswitch.conftest import FIGURES, Bridge
from tests.freeswitch.landed import describe, expected_status, settled

RATE = 50
SECONDS = 30


def test_thirty_seconds_at_fifty_calls_per_second(bridge: Bridge) -> None:
    total = RATE * SECONDS
    started = time.monotonic()
    run = bridge.sipp("uac_wait_bye", "-key", "caller", "alice", "-s", "tone", "-r", str(RATE), "-m", str(total),
                      "-l", str(RATE * 10), "-timeout", f"{SECONDS + 90}s", target=bridge.fs.external
                      ).wait(SECONDS + 120)
    sent = time.monotonic() - started
    completed = [c for c in run.calls if c.final is not None]
    expected = Counter(expected_status(c) for c in completed)
    found = settled(bridge.dsn, len(completed), timeout=120)
    landed = Counter((r.status, r.sip_response_code) for r in found)
    FIGURES.append(f"load: {len(run.calls)} calls placed in {sent:.1f} s, {len(completed)} completed by sipp "
                   f"({dict(expected)}), {len(found)} rows ({dict(landed)})")
    told = f"sipp saw: {run.describe()}; landed: {dict(landed)} in {len(found)} rows"
    assert len(run.calls) == total and len(completed) == total, told
    assert len({r.call_uuid for r in found}) == len(found), f"duplicate rows: {told}"
    assert not [r for r in found if r.status == "Active" or r.stage != 3], \
        f"rows left open: {describe([r for r in found if r.stage != 3])[:2000]}"
    assert landed == expected, told
