"""Scenarios without captures, derived from captured calls by changing only what FreeSWITCH would.

Each derivation is documented where it is built (here or in tests/correlator_fixtures.py).
"""

from __future__ import annotations

import copy

from eslbridge.calls.correlator import Correlator
from eslbridge.calls.records import Stage
from tests.correlator_fixtures import (
    LOCAL_USERS,
    NODE,
    at,
    call_events,
    cancel_from_busy,
    captured,
    fresh_uuids,
    lookup_factory,
    ms,
    no_answer_from_busy,
    only,
    renamed,
    truth,
)


def legs_of(scenario):
    facts = truth(scenario)["calls"][0]
    return [leg["uuid"] for leg in facts["legs"]]


def run(events, users=LOCAL_USERS):
    correlator = Correlator(NODE, lookup_factory(users))
    updates = [u for e in events for u in correlator.feed(e)]
    return correlator, updates


def finished(updates):
    done = [u for u in updates if u.stage == Stage.FINISHED]
    assert len(done) == 1
    return done[0].record


def shift(event, delta_us):
    for key, value in event.items():
        if (key.endswith("-Time") or key == "Event-Date-Timestamp") and value.isdigit() and value != "0":
            event[key] = str(int(value) + delta_us)
    return event


def test_no_answer_is_no_answer():
    a, b = legs_of("bridge-busy")
    events = no_answer_from_busy(captured("bridge-busy", "json"), a, b)
    correlator, updates = run(events)
    record = finished(updates)
    a_end = only(events, "CHANNEL_HANGUP_COMPLETE", a)
    assert (record.status, record.call_status) == ("NoAnswer", "no_answer")
    assert record.sip_response_code == 480  # what sofia sends for NO_ANSWER
    assert record.disconnect_reason == "NO_ANSWER"
    assert record.total_duration_ms == ms(a_end["Caller-Channel-Hangup-Time"], a_end["Caller-Channel-Created-Time"])
    assert correlator.active_calls == 0


def test_no_answer_even_when_the_a_leg_cause_says_otherwise():
    """continue_on_fail + a later dialplan `hangup`: A ends NORMAL_CLEARING, the bridge said NO_ANSWER."""
    a, b = legs_of("bridge-busy")
    events = no_answer_from_busy(captured("bridge-busy", "json"), a, b)
    only(events, "CHANNEL_HANGUP_COMPLETE", a)["Hangup-Cause"] = "NORMAL_CLEARING"
    record = finished(run(events)[1])
    assert record.status == "NoAnswer"
    assert record.disconnect_reason == "NORMAL_CLEARING"


def test_caller_cancel():
    a, b = legs_of("bridge-busy")
    record = finished(run(cancel_from_busy(captured("bridge-busy", "json"), a, b))[1])
    assert (record.status, record.call_status) == ("Cancelled", "cancelled")
    assert record.sip_response_code == 487
    assert record.disconnect_reason == "ORIGINATOR_CANCEL"


def test_forked_b_legs_one_answers():
    """bridge to two endpoints at once (',' in the dial string): one answers, the other gets LOSE_RACE.

    The loser is a copy of the B-leg with its own UUID that never answers; switch_ivr_originate
    hangs it up with LOSE_RACE (and_argc > 1) and sofia CANCELs it.
    """
    a, b = legs_of("bridge-answer")
    events = call_events(captured("bridge-answer", "json"))
    loser_events = [copy.deepcopy(e) for e in events if e.get("Unique-ID") == b and e["Event-Name"] in (
        "CHANNEL_CREATE", "CHANNEL_ORIGINATE", "CHANNEL_HANGUP_COMPLETE")]
    loser_events, mapping = fresh_uuids(loser_events)
    loser = mapping[b]
    loser_end = only(loser_events, "CHANNEL_HANGUP_COMPLETE")
    loser_end.update({"Hangup-Cause": "LOSE_RACE", "variable_sip_hangup_disposition": "send_cancel",
                      "Caller-Channel-Answered-Time": "0", "variable_sip_to_uri": "other@127.0.0.1:5072"})
    for event in loser_events:
        event["Event-Sequence"] = str(int(event["Event-Sequence"]) + 100_000)
    a_end = only(events, "CHANNEL_HANGUP_COMPLETE", a)
    stream = events[:2] + loser_events[:2] + events[2:] + loser_events[2:]

    _correlator, updates = run(stream)

    # The call stays open until the losing leg has hung up too.
    assert [u.stage for u in updates].count(Stage.FINISHED) == 1 and updates[-1].stage == Stage.FINISHED
    record = updates[-1].record
    assert record.status == "Completed" and record.sip_response_code == 200
    b_end = only(events, "CHANNEL_HANGUP_COMPLETE", b)
    assert record.callee == "sip:" + b_end["variable_sip_to_uri"]
    assert record.answer_time == at(a_end["Caller-Channel-Answered-Time"])
    rows = [r for u in updates for r in u.events if r.event_type == "hangup"]
    assert {r.data["leg"]: r.data["cause"] for r in rows} == {a: "NORMAL_CLEARING", b: "NORMAL_CLEARING",
                                                              loser: "LOSE_RACE"}


def test_forked_b_legs_nobody_answers():
    """Both forks time out: the call is NoAnswer whatever each leg's cause."""
    a, b = legs_of("bridge-busy")
    events = no_answer_from_busy(captured("bridge-busy", "json"), a, b)
    second = [copy.deepcopy(e) for e in events if e.get("Unique-ID") == b]
    second, _ = fresh_uuids(second)
    only(second, "CHANNEL_HANGUP_COMPLETE")["Hangup-Cause"] = "LOSE_RACE"
    for event in second:
        event["Event-Sequence"] = str(int(event["Event-Sequence"]) + 100_000)
    record = finished(run(events[:-1] + second + events[-1:])[1])
    assert record.status == "NoAnswer"


def test_blind_transfer_keeps_one_call_until_the_new_leg_hangs_up():
    """B blind-transfers A to C: A is transferred (Caller-Channel-Transfer-Time set), B hangs up,
    A originates C (originator = A), C answers; the call ends when A and C have hung up."""
    a, b = legs_of("bridge-answer")
    events = call_events(captured("bridge-answer", "minimal.json"))
    a_end = only(events, "CHANNEL_HANGUP_COMPLETE", a)
    b_end = only(events, "CHANNEL_HANGUP_COMPLETE", b)
    c_events = [copy.deepcopy(e) for e in events if e.get("Unique-ID") == b]
    c_events, mapping = fresh_uuids(c_events)
    c = mapping[b]
    for event in c_events:
        shift(event, 3_000_000)
        event["Event-Sequence"] = str(int(event["Event-Sequence"]) + 1000)
        event["variable_sip_to_uri"] = "carol@127.0.0.1:5072"
    shift(only(c_events, "CHANNEL_HANGUP_COMPLETE"), 4_000_000)  # C hangs up last, after A
    shift(a_end, 6_000_000)
    a_end["Event-Sequence"] = str(int(a_end["Event-Sequence"]) + 2000)
    a_end["Caller-Channel-Transfer-Time"] = str(int(b_end["Caller-Channel-Hangup-Time"]))
    before = [e for e in events if e is not a_end]
    stream = before + [e for e in c_events if e["Event-Name"] != "CHANNEL_HANGUP_COMPLETE"]
    stream += [a_end, only(c_events, "CHANNEL_HANGUP_COMPLETE")]

    _correlator, updates = run(stream)

    assert [u.stage for u in updates].count(Stage.FINISHED) == 1
    assert updates[-1].stage == Stage.FINISHED
    record = updates[-1].record
    assert record.call_uuid == a and record.status == "Completed"
    assert record.callee == "sip:" + b_end["variable_sip_to_uri"]  # the first answering B-leg
    assert record.end_time == at(only(c_events, "CHANNEL_HANGUP_COMPLETE")["Caller-Channel-Hangup-Time"])
    rows = [r for u in updates for r in u.events]
    assert any(r.event_type == "transferred" and r.data["leg"] == a for r in rows)
    assert {r.data["leg"] for r in rows if r.event_type == "hangup"} == {a, b, c}


def test_attended_transfer_links_two_calls_without_merging():
    """Call 1 (A1->B1) and call 2 (A2->B2, B's consultation call); the transfer bridges A1 with B2
    (CHANNEL_BRIDGE on A1, Other-Leg-Unique-ID = B2); B1 and A2 (the transferor's legs) hang up."""
    base = call_events(captured("bridge-answer", "minimal.json"))
    call1, m1 = fresh_uuids(base)
    call2, m2 = fresh_uuids(base)
    a, b = legs_of("bridge-answer")
    for event in call2:
        event["Event-Sequence"] = str(int(event["Event-Sequence"]) + 10_000)
    live1 = [e for e in call1 if e["Event-Name"] not in ("CHANNEL_HANGUP_COMPLETE", "CHANNEL_UNBRIDGE")]
    live2 = [e for e in call2 if e["Event-Name"] not in ("CHANNEL_HANGUP_COMPLETE", "CHANNEL_UNBRIDGE")]
    xfer = copy.deepcopy(only(call1, "CHANNEL_BRIDGE"))
    xfer.update({"Other-Leg-Unique-ID": m2[b], "Bridge-B-Unique-ID": m2[b], "Event-Sequence": "90000"})
    ends = [only(call1, "CHANNEL_HANGUP_COMPLETE", m1[b]), only(call2, "CHANNEL_HANGUP_COMPLETE", m2[a]),
            only(call1, "CHANNEL_HANGUP_COMPLETE", m1[a]), only(call2, "CHANNEL_HANGUP_COMPLETE", m2[b])]

    correlator, updates = run(live1 + live2 + [xfer] + ends)

    done = {u.record.call_uuid: u for u in updates if u.stage == Stage.FINISHED}
    assert set(done) == {m1[a], m2[a]} and correlator.active_calls == 0
    link = [r for u in updates for r in u.events if r.event_type == "bridged" and r.data.get("other_call")]
    assert [(r.data["leg"], r.data["other_leg"], r.data["other_call"]) for r in link] == [(m1[a], m2[b], m2[a])]
    hung = {u.record.call_uuid: {r.data["leg"] for up in updates if up.record.call_uuid == u.record.call_uuid
                                 for r in up.events if r.event_type == "hangup"} for u in done.values()}
    assert hung == {m1[a]: {m1[a], m1[b]}, m2[a]: {m2[a], m2[b]}}


def _originate_root(events, b):
    """The B-leg of bridge-answer as if made by the `originate` API: no originator, no inbound leg."""
    out = []
    for event in events:
        if event.get("Unique-ID") != b:
            continue
        event = {k: v for k, v in event.items() if not k.startswith("Other-") and k not in (
            "variable_originator", "variable_originating_leg_uuid", "variable_signal_bond", "variable_bridge_uuid",
            "variable_last_bridge_to")}
        out.append(event)
    return out


def test_originate_api_call_without_inbound_leg():
    _a, b = legs_of("bridge-answer")
    events = _originate_root(call_events(captured("bridge-answer", "json")), b)
    end = only(events, "CHANNEL_HANGUP_COMPLETE")
    end.update({"variable_dialed_user": "1001", "variable_dialed_domain": "127.0.0.1"})
    _correlator, updates = run(events)
    record = finished(updates)
    assert updates[0].stage == Stage.STARTED and updates[0].record.call_uuid == b
    assert record.call_uuid == b and record.call_id == end["variable_sip_call_id"]
    assert record.status == "Completed" and record.sip_response_code == 200
    assert record.caller == "sip:" + end["variable_sip_from_uri"]
    assert record.callee == "sip:" + end["variable_sip_to_uri"]
    assert record.start_time == at(end["Caller-Channel-Created-Time"])
    assert record.answer_time == at(end["Caller-Channel-Answered-Time"])
    assert record.callee_user_id == record.user_id == "user-1001"
    assert record.direction == "Inbound"


def test_loopback_legs_belong_to_the_call_that_made_them():
    """bridge loopback/uas: A -> loopback-a (originator A) <-> loopback-b (runs the dialplan) -> C.

    loopback-b is an inbound channel without originator; mod_loopback names it loopback/uas-b and
    sets loopback_leg=B and other_loopback_leg_uuid (absent from its first event here, so the
    correlator has to wait for the link instead of opening a second call).
    """
    a, b = legs_of("bridge-answer")
    events = call_events(captured("bridge-answer", "minimal.json"))
    b_events = [e for e in events if e.get("Unique-ID") == b]
    la, ma = fresh_uuids(copy.deepcopy(b_events))
    lb, mb = fresh_uuids(copy.deepcopy(b_events))
    la_uuid, lb_uuid = ma[b], mb[b]
    for event in la:
        event["Channel-Name"] = "loopback/uas-a"
        event["Event-Sequence"] = str(int(event["Event-Sequence"]) + 1000)
    for index, event in enumerate(lb):
        event["Event-Sequence"] = str(int(event["Event-Sequence"]) + 2000)
        event["Channel-Name"] = "loopback/uas-b"
        event["Call-Direction"] = "inbound"
        for key in [k for k in event if k.startswith("Other-") or k in ("variable_originator",
                                                                       "variable_originating_leg_uuid")]:
            del event[key]
        if index:
            event.update({"variable_loopback_leg": "B", "variable_other_loopback_leg_uuid": la_uuid})
    c_events = renamed([e for e in events if e.get("Unique-ID") == b], {a: lb_uuid})  # C's originator: loopback-b
    for event in c_events:
        event["Event-Sequence"] = str(int(event["Event-Sequence"]) + 3000)
    a_events = [e for e in events if e.get("Unique-ID") == a]
    stream = a_events[:1] + la[:1] + lb[:1] + c_events[:-1] + lb[1:-1] + la[1:-1] + a_events[1:-1]
    stream += [c_events[-1], lb[-1], la[-1], a_events[-1]]

    correlator, updates = run(stream)

    assert {u.record.call_uuid for u in updates} == {a}
    record = finished(updates)
    assert record.status == "Completed"
    assert record.callee == "sip:" + only(c_events, "CHANNEL_HANGUP_COMPLETE")["variable_sip_to_uri"]
    legs = {r.data["leg"] for u in updates for r in u.events if r.event_type == "hangup"}
    assert legs == {a, b, la_uuid, lb_uuid} - {b} | {b}
    assert correlator.active_calls == 0


def test_channel_uuid_rekeys_a_leg():
    """CHANNEL_UUID (Old-Unique-ID -> Unique-ID): later events use the new UUID; the call keeps its key."""
    events = call_events(captured("tone", "minimal.json"))
    old = events[0]["Unique-ID"]
    new = "5d1a8f2e-0000-4000-8000-000000000001"
    change = dict(events[0], **{"Event-Name": "CHANNEL_UUID", "Old-Unique-ID": old, "Unique-ID": new,
                                "Event-Sequence": str(int(events[0]["Event-Sequence"]) + 1)})
    stream = [events[0], change, *renamed(events[1:], {old: new})]
    correlator, updates = run(stream)
    record = finished(updates)
    assert {u.record.call_uuid for u in updates} == {old}
    assert record.status == "Completed" and correlator.active_calls == 0
    rows = [r for u in updates for r in u.events if r.event_type == "uuid_changed"]
    assert [(r.data["old_leg"], r.data["leg"]) for r in rows] == [(old, new)]
