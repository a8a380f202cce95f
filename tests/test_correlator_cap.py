"""The live-call cap: past it the oldest calls are finished as reconciled (no row left Active), and
their late events never re-open them."""

from __future__ import annotations

from bench.correlate import CallFactory
from eslbridge.calls.correlator import Correlator
from eslbridge.calls.records import Stage

REASON = "closed by the live-call cap"


def live_streams(n: int) -> tuple[list[list[dict]], list[list[dict]]]:
    """(events up to the bridge, the hangup events) of ``n`` two-leg calls."""
    factory = CallFactory("minimal.json")
    factory.templates = factory.templates[:1]
    calls = [factory.call(i) for i in range(n)]
    ends = ("CHANNEL_HANGUP_COMPLETE", "CHANNEL_UNBRIDGE")
    return ([[e for e in c if e["Event-Name"] not in ends] for c in calls],
            [[e for e in c if e["Event-Name"] in ends] for c in calls])


def test_the_oldest_calls_are_closed_as_reconciled_and_stay_closed():
    up, down = live_streams(8)
    correlator = Correlator("fs1", lambda user, realm: None)
    for events in up:
        for event in events:
            correlator.feed(event)
    assert correlator.active_calls == 8
    updates = correlator.evict_oldest(5, REASON)
    assert correlator.active_calls == 5
    roots = [events[0]["Unique-ID"] for events in up]
    assert [u.record.call_uuid for u in updates] == roots[:3]  # the oldest first
    for update in updates:
        assert update.stage == Stage.FINISHED
        assert update.record.reconciled and update.record.reconcile_reason == REASON
        assert update.record.end_time >= update.record.start_time
        assert any(e.event_type == "reconciled" and e.data["reason"] == REASON for e in update.events)
    late = [u for events in down[:3] for event in events for u in correlator.feed(event)]
    assert late == [] and correlator.active_calls == 5  # tombstones: no second row, nothing re-opened
    rest = [u for events in down[3:] for event in events for u in correlator.feed(event)]
    assert sorted(u.record.call_uuid for u in rest if u.stage == Stage.FINISHED) == sorted(roots[3:])
    assert correlator.active_calls == 0
    assert correlator.evict_oldest(5, REASON) == []
