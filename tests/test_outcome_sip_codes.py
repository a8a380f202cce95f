"""The SIP code stored for an unanswered inbound call that FreeSWITCH refused without recording one.

The expected pairs are FreeSWITCH's own (mod_sofia's cause-to-SIP table, RFC 4497 section 8.4.1),
written out here independently of eslbridge's table so that a drift in either shows.
"""

from __future__ import annotations

import pytest

from eslbridge.calls.outcome import cause_sip_code
from eslbridge.calls.records import Stage
from tests.correlator_fixtures import at, captured, no_answer_from_busy, only, parse_plain
from tests.paths import RECORDED
from tests.test_correlator_resync import new_correlator
from tests.test_correlator_scenarios import finished, legs_of, run

FREESWITCH_TABLE = [
    ("UNALLOCATED_NUMBER", 404), ("NO_ROUTE_TRANSIT_NET", 404), ("NO_ROUTE_DESTINATION", 404),
    ("USER_BUSY", 486),
    ("NO_USER_RESPONSE", 408),
    ("NO_ANSWER", 480), ("SUBSCRIBER_ABSENT", 480),
    ("CALL_REJECTED", 603),
    ("NUMBER_CHANGED", 410), ("REDIRECTION_TO_NEW_DESTINATION", 410),
    ("DESTINATION_OUT_OF_ORDER", 502), ("INVALID_PROFILE", 502),
    ("INVALID_NUMBER_FORMAT", 484), ("INVALID_URL", 484), ("INVALID_GATEWAY", 484),
    ("FACILITY_REJECTED", 501),
    ("NORMAL_UNSPECIFIED", 480),
    ("REQUESTED_CHAN_UNAVAIL", 503), ("NORMAL_CIRCUIT_CONGESTION", 503), ("NETWORK_OUT_OF_ORDER", 503),
    ("NORMAL_TEMPORARY_FAILURE", 503), ("SWITCH_CONGESTION", 503), ("GATEWAY_DOWN", 503),
    ("OUTGOING_CALL_BARRED", 403), ("INCOMING_CALL_BARRED", 403), ("BEARERCAPABILITY_NOTAUTH", 403),
    ("BEARERCAPABILITY_NOTAVAIL", 503),
    ("BEARERCAPABILITY_NOTIMPL", 488), ("INCOMPATIBLE_DESTINATION", 488),
    ("FACILITY_NOT_IMPLEMENTED", 501), ("SERVICE_NOT_IMPLEMENTED", 501),
    ("RECOVERY_ON_TIMER_EXPIRE", 504),
    ("ORIGINATOR_CANCEL", 487),
    ("EXCHANGE_ROUTING_ERROR", 483),
]


@pytest.mark.parametrize(("cause", "code"), FREESWITCH_TABLE)
def test_every_listed_cause(cause: str, code: int) -> None:
    assert cause_sip_code(cause) == code


@pytest.mark.parametrize("cause", ["NORMAL_CLEARING", "MEDIA_TIMEOUT", "LOSE_RACE", "SOMETHING_NEW", ""])
def test_any_other_cause_gets_480(cause: str) -> None:
    assert cause_sip_code(cause) == 480


@pytest.mark.parametrize(("cause", "code"), [("INCOMPATIBLE_DESTINATION", 488), ("NORMAL_TEMPORARY_FAILURE", 503),
                                             ("UNALLOCATED_NUMBER", 404), ("NORMAL_CLEARING", 480)])
def test_the_record_carries_the_code_freeswitch_sent(cause: str, code: int) -> None:
    """A ring timeout whose bridge result FreeSWITCH gave the caller as another cause: no leg recorded
    a SIP status, so the stored code is the one mod_sofia answered the caller's INVITE with."""
    a, b = legs_of("bridge-busy")
    events = no_answer_from_busy(captured("bridge-busy", "json"), a, b)
    only(events, "CHANNEL_HANGUP_COMPLETE", a).update({"Hangup-Cause": cause, "variable_hangup_cause": cause})
    assert finished(run(events)[1]).sip_response_code == code


def test_invite_refused_at_digest_auth_is_rejected_with_the_403_the_caller_saw() -> None:
    """FreeSWITCH's only event for it (recorded from the real build): no channel times, no SIP code."""
    event = parse_plain((RECORDED / "auth-refused.plain.esl").read_text().split("\n\n", 1)[1])
    assert "Caller-Channel-Created-Time" not in event and "variable_sip_term_status" not in event
    updates = new_correlator().feed(event)
    record = updates[-1].record
    assert updates[-1].stage == Stage.FINISHED
    assert (record.status, record.sip_response_code, record.disconnect_reason) == ("Rejected", 403, "CALL_REJECTED")
    assert record.start_time == record.end_time == at(event["Event-Date-Timestamp"])
