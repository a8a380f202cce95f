"""Robustness: duplicates, replays, out-of-order legs, lone HANGUP_COMPLETEs, resync, several nodes, bad input."""

from __future__ import annotations

import pytest

from eslbridge.calls.correlator import ORPHAN_GRACE_US, RECONCILE_REASON, TOMBSTONE_US, Correlator
from eslbridge.calls.errors import EventError
from eslbridge.calls.records import Stage
from tests.correlator_fixtures import (
    LOCAL_USERS,
    NODE,
    at,
    call_events,
    captured,
    lookup_factory,
    only,
    truth,
)


def run(events, node=NODE):
    correlator = Correlator(node, lookup_factory(LOCAL_USERS))
    return correlator, [u for e in events for u in correlator.feed(e)]


def final(updates):
    done = [u for u in updates if u.stage == Stage.FINISHED]
    assert len(done) == 1
    return done[0].record


def rows(updates):
    return sorted((r.seq, r.event_type, r.timestamp, tuple(sorted(r.data.items()))) for u in updates for r in u.events)


def bridge_answer():
    facts = truth("bridge-answer")["calls"][0]
    return call_events(captured("bridge-answer", "minimal.json")), facts["a_leg_uuid"], facts["legs"][1]["uuid"]


def test_duplicates_are_ignored():
    events, _, _ = bridge_answer()
    _, once = run(events)
    correlator, twice = run([e for event in events for e in (event, dict(event))])
    assert [(u.stage, u.record) for u in twice] == [(u.stage, u.record) for u in once]
    assert rows(twice) == rows(once)
    assert correlator.active_calls == 0


def test_late_duplicate_after_finish_does_not_reopen():
    events, a, b = bridge_answer()
    correlator, _ = run(events)
    assert correlator.feed(only(events, "CHANNEL_HANGUP_COMPLETE", b)) == []
    assert correlator.feed(only(events, "CHANNEL_CREATE", a)) == []
    assert correlator.active_calls == 0


def test_replay_gives_the_same_lifecycle_seqs():
    events, _, _ = bridge_answer()
    assert rows(run(events)[1]) == rows(run(events)[1])


def test_out_of_order_across_legs():
    """B's events first, the A-leg's HANGUP_COMPLETE before B's: the same record as in order."""
    events, a, b = bridge_answer()
    _, in_order = run(events)
    a_events = [e for e in events if e["Unique-ID"] == a]
    b_events = [e for e in events if e["Unique-ID"] == b]
    shuffled = [*b_events[:-1], a_events[-1], *a_events[:-1], b_events[-1]]
    correlator, updates = run(shuffled)
    assert final(updates) == final(in_order)
    assert rows(updates) == rows(in_order)
    assert correlator.active_calls == 0


def test_hangup_complete_alone_makes_the_complete_record():
    events, a, b = bridge_answer()
    _, full = run(events)
    ends = [only(events, "CHANNEL_HANGUP_COMPLETE", b), only(events, "CHANNEL_HANGUP_COMPLETE", a)]
    _correlator, updates = run(ends)
    assert final(updates) == final(full)
    kinds = sorted(r.event_type for u in updates for r in u.events)
    assert kinds == ["answered", "answered", "created", "created", "hangup", "hangup"]


def test_root_waits_for_named_legs_then_closes_without_them():
    """The A-leg's originated_legs names B; B's events never come: closed after the grace period."""
    events, a, _b = bridge_answer()
    a_only = [e for e in events if e["Unique-ID"] == a and e["Event-Name"] != "CHANNEL_BRIDGE"
              and e["Event-Name"] != "CHANNEL_UNBRIDGE"]
    correlator, updates = run(a_only)
    assert [u.stage for u in updates] == [Stage.STARTED, Stage.ANSWERED] and correlator.active_calls == 1
    end = only(events, "CHANNEL_HANGUP_COMPLETE", a)
    later_us = int(end["Event-Date-Timestamp"]) + ORPHAN_GRACE_US
    heartbeat = {"Event-Name": "HEARTBEAT", "Event-Date-Timestamp": str(later_us)}
    later = correlator.feed(heartbeat)
    assert [u.stage for u in later] == [Stage.FINISHED]
    assert later[0].record.status == "Completed" and correlator.active_calls == 0


def test_partial_stream_stays_active_then_resync_closes_it():
    events, a, b = bridge_answer()
    live = [e for e in events if e["Event-Name"] not in ("CHANNEL_HANGUP_COMPLETE", "CHANNEL_UNBRIDGE")]
    correlator, updates = run(live)
    assert correlator.active_calls == 1
    assert updates[-1].stage == Stage.ANSWERED and updates[-1].record.status == "Active"
    assert updates[-1].record.call_status == "answered"
    # A snapshot that still has both channels changes nothing.
    assert correlator.resync([{"uuid": a, "call_uuid": a}, {"uuid": b, "call_uuid": a}]) == []
    newest = max(int(e["Event-Date-Timestamp"]) for e in live)
    closed = correlator.resync([])
    assert [u.stage for u in closed] == [Stage.FINISHED] and correlator.active_calls == 0
    record = closed[0].record
    assert record.reconciled and record.reconcile_reason == RECONCILE_REASON
    assert record.end_time == at(newest)  # newest event time on this node, never the wall clock
    assert record.status == "Completed"
    kinds = [r.event_type for r in closed[0].events]
    assert kinds[-1] == "reconciled" and kinds.count("reconciled") == 1  # with the rows still pending
    assert closed[0].events[-1].data == {"reason": RECONCILE_REASON, "end_from": "last_event"}


def test_resync_uses_the_given_time_and_holds_unknown_channels():
    correlator = Correlator(NODE, lookup_factory(LOCAL_USERS))
    row = {"uuid": "8b0c6d1e-0000-4000-8000-00000000abcd", "direction": "inbound", "created_epoch": "1795299165",
           "name": "sofia/internal/1000@127.0.0.1", "state": "CS_EXECUTE", "cid_name": "Ext 1000", "cid_num": "1000",
           "ip_addr": "127.0.0.1", "dest": "1001", "application": "bridge", "read_codec": "PCMA",
           "callstate": "ACTIVE", "call_uuid": "8b0c6d1e-0000-4000-8000-00000000abcd"}
    # Held without a row: its own next event brings the exact created time the row is keyed by.
    assert correlator.resync([row], at=at(1795299200_000000)) == [] and correlator.active_calls == 1
    closed = correlator.resync([], at=at(1795299300_000000))
    # Gone by the second snapshot, no event ever: closed under the whole second, the only start known,
    # ended after the newest event seen (the first snapshot).
    assert [u.stage for u in closed] == [Stage.FINISHED]
    record = closed[0].record
    assert record.call_uuid == row["uuid"] and record.start_time == at(1795299165_000000)
    assert (record.caller_number, record.callee_number, record.codec) == ("1000", "1001", "PCMA")
    assert record.answer_time == at(1795299200_000000)  # callstate ACTIVE: answered by the snapshot
    assert record.end_time == at(1795299200_000000) and record.reconciled
    assert record.status == "Completed" and record.total_duration_ms == 35_000


def test_resync_closes_only_vanished_legs():
    events, a, _b = bridge_answer()
    live = [e for e in events if e["Event-Name"] not in ("CHANNEL_HANGUP_COMPLETE", "CHANNEL_UNBRIDGE")]
    correlator, _ = run(live)
    assert correlator.resync([{"uuid": a, "call_uuid": a}]) == []  # B vanished, A still up
    assert correlator.active_calls == 1
    done = correlator.feed(only(events, "CHANNEL_HANGUP_COMPLETE", a))
    assert [u.stage for u in done] == [Stage.FINISHED] and done[0].record.reconciled


def test_several_nodes_interleaved():
    """One correlator per node (the daemon's design); events routed by Core-UUID never cross."""
    tone = captured("tone", "minimal.json")
    busy = captured("bridge-busy", "minimal.json")
    nodes = {tone[0]["Core-UUID"]: Correlator("fs1", lookup_factory(LOCAL_USERS))}
    busy = [dict(e, **{"Core-UUID": "0d9e3c1a-0000-4000-8000-0000000000f2", "FreeSWITCH-Hostname": "fs2"})
            for e in busy]
    nodes[busy[0]["Core-UUID"]] = Correlator("fs2", lookup_factory(LOCAL_USERS))
    interleaved = [e for pair in zip(tone, busy, strict=False) for e in pair] + tone[len(busy):] + busy[len(tone):]
    updates = [u for e in interleaved for u in nodes[e["Core-UUID"]].feed(e)]
    finals = {u.record.node: u.record for u in updates if u.stage == Stage.FINISHED}
    assert {node: r.status for node, r in finals.items()} == {"fs1": "Completed", "fs2": "Busy"}
    assert all(c.active_calls == 0 for c in nodes.values())


def test_the_same_uuid_on_two_nodes_makes_two_records():
    events = captured("tone", "minimal.json")
    first, second = run(events, "fs1")[1], run(events, "fs2")[1]
    assert (final(first).node, final(second).node) == ("fs1", "fs2")
    assert final(first).call_uuid == final(second).call_uuid


def test_tombstones_expire_with_event_time():
    """Finished legs are remembered TOMBSTONE_US of event time (duplicates dropped), then forgotten."""
    events, a, b = bridge_answer()
    correlator, _ = run(events)
    assert set(correlator._done) == {a, b}
    newest = max(int(e["Event-Date-Timestamp"]) for e in events)
    assert correlator.feed({"Event-Name": "HEARTBEAT", "Event-Date-Timestamp": str(newest + TOMBSTONE_US)}) == []
    assert set(correlator._done) == {a, b}  # not older than the window yet
    correlator.feed({"Event-Name": "HEARTBEAT", "Event-Date-Timestamp": str(newest + TOMBSTONE_US + 1)})
    assert not correlator._done


def test_finished_state_is_released():
    events, _, _ = bridge_answer()
    correlator, _ = run(events)
    assert correlator.active_calls == 0
    assert correlator._legs == {} and correlator._calls == {} and correlator._waiting == {}


@pytest.mark.parametrize(("event", "message"), [
    ({"Event-Name": "CHANNEL_CREATE"}, "without Unique-ID"),
    ({"Event-Name": "CHANNEL_ANSWER", "Unique-ID": "u1", "Event-Sequence": "x1"}, "Event-Sequence"),
    ({"Event-Name": "CHANNEL_CREATE", "Unique-ID": "u1", "Event-Sequence": "1",
      "Caller-Channel-Created-Time": "yesterday"}, "Caller-Channel-Created-Time"),
])
def test_bad_events_raise_clear_errors(event, message):
    with pytest.raises(EventError, match=message):
        Correlator(NODE, lookup_factory({})).feed(event)


def test_bad_resync_input_raises():
    correlator = Correlator(NODE, lookup_factory({}))
    with pytest.raises(EventError, match="without uuid"):
        correlator.resync([{"name": "sofia/x"}])
    with pytest.raises(EventError, match="timezone-aware"):
        correlator.resync([], at=at(0).replace(tzinfo=None))
    with pytest.raises(EventError, match="created_epoch"):
        correlator.resync([{"uuid": "u2", "created_epoch": "soon"}])


def test_unrelated_events_are_ignored():
    correlator, updates = run(captured("register", "json"))
    assert updates == [] and correlator.active_calls == 0
