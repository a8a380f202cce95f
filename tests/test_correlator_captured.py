"""Captured FreeSWITCH 1.10.12 scenarios: every format yields the record the truth file describes.

Expected values come from the truth files (the sipp traces) and from the raw events of the
capture, read here directly, never from the correlator's output.
"""

from __future__ import annotations

import zlib
from datetime import timedelta

import pytest

from eslbridge.calls.correlator import Correlator
from eslbridge.calls.records import Stage
from tests.correlator_fixtures import LOCAL_USERS, NODE, at, captured, lookup_factory, ms, only, truth

FORMATS = ("json", "plain", "minimal.json")
CALLS = ("tone", "bridge-answer", "bridge-busy", "reject", "auth-call")
TOLERANCE = timedelta(seconds=1)


def run(events):
    correlator = Correlator(NODE, lookup_factory(LOCAL_USERS))
    updates = [update for event in events for update in correlator.feed(event)]
    return correlator, updates


def parse_iso(text):
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("scenario", CALLS)
def test_scenario_yields_the_truth(scenario, fmt):
    events = captured(scenario, fmt)
    facts = truth(scenario)["calls"][0]
    cdr = facts["expected_cdr"]
    a_leg = facts["a_leg_uuid"]
    b_legs = [leg for leg in facts["legs"] if leg["role"] != "A"]
    a_end = only(events, "CHANNEL_HANGUP_COMPLETE", a_leg)
    hangups = [only(events, "CHANNEL_HANGUP_COMPLETE", leg["uuid"]) for leg in facts["legs"]]

    correlator, updates = run(events)

    assert correlator.active_calls == 0
    finished = [u for u in updates if u.stage == Stage.FINISHED]
    assert len(finished) == 1 and {u.record.call_uuid for u in updates} == {a_leg}
    assert updates[0].stage == Stage.STARTED and updates[0].record.status == "Active"
    assert updates[0].record.call_status == "initiated"
    record = finished[0].record

    # Outcome as the caller experienced it (truth from the sipp traces).
    assert record.status == cdr["status"]
    assert record.sip_response_code == facts["caller_final_response"]
    assert record.call_status == {"Completed": "completed", "Busy": "busy", "Rejected": "rejected"}[cdr["status"]]
    answered_stages = [u for u in updates if u.stage == Stage.ANSWERED]
    assert len(answered_stages) == (1 if cdr["answered"] else 0)

    # Identity and numbers.
    assert record.call_id == facts["a_leg_sip_call_id"]
    assert record.node == NODE
    assert record.caller_number == cdr["caller_id_number"]
    assert record.caller_id_name == cdr["caller_id_name"]
    assert record.callee_number == cdr["destination_number"]
    assert record.caller == "sip:" + a_end["variable_sip_from_uri"]
    answering_b = [leg for leg in b_legs if leg["answered"]]
    if answering_b:
        b_end = only(events, "CHANNEL_HANGUP_COMPLETE", answering_b[0]["uuid"])
        assert record.callee == "sip:" + b_end["variable_sip_to_uri"]
        assert record.callee_ip == b_end["variable_sip_network_ip"]
        assert record.callee_sdp == b_end["variable_switch_r_sdp"]
    else:
        host = a_end["variable_sip_to_uri"].split("@")[1].split(":")[0]
        assert record.callee == f"sip:{cdr['destination_number']}@{host}"
        assert record.callee_ip is None and record.callee_sdp is None
    assert record.caller_ip == a_end["variable_sip_network_ip"]
    assert record.caller_sdp == a_end["variable_switch_r_sdp"]
    assert record.caller_user_agent == a_end.get("variable_sip_user_agent")  # sipp sends none

    # Times: from the events exactly, and within a second of the caller's SIP trace.
    created = a_end["Caller-Channel-Created-Time"]
    end_us = max(int(h["Caller-Channel-Hangup-Time"]) for h in hangups)
    assert record.start_time == at(created)
    assert abs(record.start_time - parse_iso(cdr["start_at"])) < TOLERANCE
    assert record.end_time == at(end_us)
    assert abs(record.end_time - parse_iso(cdr["end_at"])) < TOLERANCE
    assert record.total_duration_ms == ms(end_us, created)
    assert abs(record.total_duration_ms - cdr["duration_s"] * 1000) < 1000
    assert record.duration_seconds == int(a_end["variable_billsec"])
    assert abs(record.duration_seconds - cdr["billsec_s"]) <= 1
    if cdr["answered"]:
        answered = a_end["Caller-Channel-Answered-Time"]
        assert record.answer_time == at(answered)
        assert abs(record.answer_time - parse_iso(cdr["answer_at"])) < TOLERANCE
        assert record.setup_duration_ms == ms(answered, created)
        assert record.call_duration_ms == ms(end_us, answered)
        assert record.codec == a_end["variable_read_codec"]
        assert record.quality_score == float(a_end["variable_rtp_audio_in_mos"])
        assert record.media_info["caller"]["mos"] == float(a_end["variable_rtp_audio_in_mos"])
        assert record.media_info["caller"]["packets_skipped"] == int(a_end["variable_rtp_audio_in_skip_packet_count"])
    else:
        assert record.answer_time is None and record.setup_duration_ms is None
        assert record.call_duration_ms == 0

    # The deciding leg's cause: whoever's far end ended the call, else the A-leg.
    ended_by = [h for h in hangups if h.get("variable_sip_hangup_disposition", "").startswith("recv_")]
    assert record.disconnect_reason == (ended_by or [a_end])[0]["Hangup-Cause"]
    assert cdr["a_leg_hangup_cause_in_events"] == a_end["Hangup-Cause"]

    # Lifecycle: one created and one hangup row per leg, seqs unique and order-independent.
    rows = [row for u in updates for row in u.events]
    leg_ids = sorted(leg["uuid"] for leg in facts["legs"])
    assert sorted(r.data["leg"] for r in rows if r.event_type == "hangup") == leg_ids
    assert sorted(r.data["leg"] for r in rows if r.event_type == "created") == leg_ids
    assert len({r.seq for r in rows}) == len(rows)
    a_hangup_row = next(r for r in rows if r.event_type == "hangup" and r.data["leg"] == a_leg)
    assert a_hangup_row.seq == ((1 << 40) + zlib.crc32(a_leg.encode())) * 8 + 6
    assert a_hangup_row.data["cause"] == a_end["Hangup-Cause"]


@pytest.mark.parametrize("scenario", CALLS)
def test_formats_agree(scenario):
    records = []
    for fmt in FORMATS:
        _, updates = run(captured(scenario, fmt))
        records.append(updates[-1].record)
    assert records[0] == records[1] == records[2]


def test_direction_and_user_attribution():
    """auth-call: user 1000 authenticated (sip_authorized) calls 'tone' (no user) -> Outbound."""
    events = captured("auth-call", "minimal.json")
    create = only(events, "CHANNEL_CREATE")
    end = only(events, "CHANNEL_HANGUP_COMPLETE")
    assert end["variable_sip_authorized"] == "true"
    lookup = lookup_factory(LOCAL_USERS)
    correlator = Correlator(NODE, lookup)
    updates = [u for e in events for u in correlator.feed(e)]
    record = updates[-1].record
    assert (end["variable_user_name"], end["variable_domain_name"]) in LOCAL_USERS
    assert record.direction == "Outbound"
    assert record.caller_user_id == record.user_id == "user-1000"
    assert record.callee_user_id is None
    # Lookups are cached per call: each identity asked once, not once per event.
    assert sorted(set(lookup.calls)) == sorted(lookup.calls)
    assert create["Unique-ID"] == record.call_uuid


@pytest.mark.parametrize("scenario", ("tone", "bridge-answer", "bridge-busy", "reject"))
def test_unauthenticated_callers_are_inbound(scenario):
    """The external profile has no auth: a From header alone never makes a caller local."""
    events = captured(scenario, "minimal.json")
    users = {("sipp", "127.0.0.1"): "spoofed"}
    correlator = Correlator(NODE, lookup_factory(users))
    record = [u for e in events for u in correlator.feed(e)][-1].record
    assert record.direction == "Inbound" and record.user_id is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_register_produces_no_call(fmt):
    correlator, updates = run(captured("register", fmt))
    assert updates == [] and correlator.active_calls == 0
