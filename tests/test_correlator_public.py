"""Public multi-event calls (fixtures/public, PROVENANCE.md "Complete or multi-event calls").

Expected values are read from each stream's own raw events here.
"""

from __future__ import annotations

import pytest

from eslbridge.calls.correlator import Correlator
from eslbridge.calls.records import Stage
from tests.correlator_fixtures import (
    LOCAL_USERS,
    NODE,
    at,
    decoded_txt,
    lookup_factory,
    ms,
    only,
    plain_file,
    public_stream,
    stream_events,
)
from tests.paths import shared_public


def run(events):
    correlator = Correlator(NODE, lookup_factory(LOCAL_USERS))
    return correlator, [u for e in events for u in correlator.feed(e)]


@pytest.mark.parametrize("name", ["cgrates-fsock__stream__1.stream", "scala-esl__stream__4.stream"])
def test_complete_single_leg_calls(name):
    events = public_stream(name)
    end = only(events, "CHANNEL_HANGUP_COMPLETE")
    correlator, updates = run(events)
    done = [u.record for u in updates if u.stage == Stage.FINISHED]
    assert len(done) == 1 and correlator.active_calls == 0
    record = done[0]
    answered = int(end["Caller-Channel-Answered-Time"])
    assert record.call_uuid == end["Unique-ID"]
    assert record.start_time == at(end["Caller-Channel-Created-Time"])
    assert record.end_time == at(end["Caller-Channel-Hangup-Time"])
    assert record.total_duration_ms == ms(end["Caller-Channel-Hangup-Time"], end["Caller-Channel-Created-Time"])
    assert record.duration_seconds == int(end["variable_billsec"])
    assert record.disconnect_reason == end["Hangup-Cause"]
    if answered:
        assert (record.status, record.sip_response_code) == ("Completed", 200)
        assert record.call_duration_ms == ms(end["Caller-Channel-Hangup-Time"], answered)
    else:  # cgrates: the caller cancelled (ORIGINATOR_CANCEL, 487 recorded in sip_term_status)
        assert end["Hangup-Cause"] == "ORIGINATOR_CANCEL"
        assert (record.status, record.sip_response_code) == ("Cancelled", int(end["variable_sip_term_status"]))


@pytest.mark.parametrize("number", range(1, 7))
def test_outbound_socket_streams_stay_active_until_resync(number):
    """NEventSocket streams end at CHANNEL_HANGUP (no HANGUP_COMPLETE): the call stays Active."""
    events = stream_events(shared_public(f"neventsocket__stream__{number}.stream").read_bytes())
    a_leg = events[0]["Unique-ID"]
    family = {a_leg}  # legs originated from the A-leg, transitively (att_xfer originates from a B-leg)
    for event in events:
        if event.get("variable_originator") in family:
            family.add(event["Unique-ID"])
    correlator, updates = run(events)
    assert {u.record.call_uuid for u in updates} == {a_leg} and correlator.active_calls == 1
    assert Stage.FINISHED not in [u.stage for u in updates]
    a_answer = only(events, "CHANNEL_ANSWER", a_leg)
    assert updates[-1].record.status == "Active" and updates[-1].record.call_status == "answered"
    assert updates[-1].record.answer_time == at(a_answer["Caller-Channel-Answered-Time"])
    # The node's clock: newest time among the events the correlator folds (channel events it uses).
    folded = ("CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "CHANNEL_BRIDGE",
              "CHANNEL_UNBRIDGE", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_ORIGINATE", "CHANNEL_UUID")
    newest = max(int(e["Event-Date-Timestamp"]) for e in events if e["Event-Name"] in folded)
    closed = correlator.resync([])
    assert [u.stage for u in closed] == [Stage.FINISHED] and correlator.active_calls == 0
    record = closed[0].record
    assert record.reconciled and record.status == "Completed" and record.end_time == at(newest)
    rows = [r for u in updates + closed for r in u.events if r.event_type == "created"]
    assert {r.data["leg"] for r in rows} == family


@pytest.mark.parametrize("name", ["scala-esl__stream__1.stream", "scala-esl__stream__2.stream",
                                  "scala-esl__stream__3.stream"])
def test_partial_scala_streams(name):
    """Fragments without CREATE or HANGUP_COMPLETE: never a finished record; resync closes any open one."""
    events = public_stream(name)
    correlator, updates = run(events)
    assert Stage.FINISHED not in [u.stage for u in updates]
    open_calls = correlator.active_calls
    closed = correlator.resync([])
    assert len(closed) <= open_calls and correlator.active_calls == 0


def test_libresbc_two_hangup_completes_make_one_call():
    a_end = decoded_txt("libresbc__CHANNEL_HANGUP_COMPLETE__1.decoded.txt")
    b_end = decoded_txt("libresbc__CHANNEL_HANGUP_COMPLETE__2.decoded.txt")
    root, other = (a_end, b_end) if not a_end.get("variable_originator") else (b_end, a_end)
    assert other.get("variable_originator") == root["Unique-ID"]
    correlator, updates = run([b_end, a_end])
    done = [u.record for u in updates if u.stage == Stage.FINISHED]
    assert len(done) == 1 and correlator.active_calls == 0
    record = done[0]
    assert record.call_uuid == root["Unique-ID"]
    assert record.start_time == at(root["Caller-Channel-Created-Time"])
    end_us = max(int(root["Caller-Channel-Hangup-Time"]), int(other["Caller-Channel-Hangup-Time"]))
    assert record.end_time == at(end_us)
    answered = int(root["Caller-Channel-Answered-Time"])
    assert record.status == ("Completed" if answered else record.status)
    assert record.duration_seconds == int(root["variable_billsec"])


def test_fsdocs_answer_pair_opens_one_answered_call():
    # Documentation samples pad values after the colon; strip them.
    b_answer = {k: v.strip() for k, v in plain_file("fsdocs__CHANNEL_ANSWER__1.txt").items()}
    a_answer = {k: v.strip() for k, v in plain_file("fsdocs__CHANNEL_ANSWER__2.txt").items()}
    assert b_answer["variable_originator"] == a_answer["Unique-ID"]
    correlator, updates = run([a_answer, b_answer])
    assert correlator.active_calls == 1
    assert {u.record.call_uuid for u in updates} == {a_answer["Unique-ID"]}
    assert updates[-1].stage == Stage.ANSWERED
