"""The outcome of a finished call as a person would name it (DESIGN section 6, captured README).

A call's outcome is what the caller experienced, so it is read from every leg, not from the
A-leg's Hangup-Cause alone:

1. the root leg answered (the caller got a 2xx)           -> Completed, SIP 200;
2. the caller gave up first (root ``recv_cancel`` or cause ORIGINATOR_CANCEL) -> Cancelled;
3. otherwise the first specific verdict among, in order: the root's ``originate_disposition``
   (what FreeSWITCH records as the bridge/originate result), the deciding leg's SIP code and
   cause, the root's SIP code and cause, then every other leg's; SIP codes 486/600 Busy,
   480/408 NoAnswer, 403/603 Rejected; causes USER_BUSY Busy, NO_ANSWER / NO_USER_RESPONSE /
   ALLOTTED_TIMEOUT NoAnswer, CALL_REJECTED Rejected; nothing specific -> Failed.

The deciding leg is the one whose far end ended the call (``sip_hangup_disposition`` recv_bye,
recv_cancel or recv_refuse), else the root: FreeSWITCH itself ended it.
"""

from __future__ import annotations

from dataclasses import dataclass

from eslbridge.calls.legs import Leg

CAUSE_STATUS = {
    "USER_BUSY": "Busy",
    "NO_ANSWER": "NoAnswer",
    "NO_USER_RESPONSE": "NoAnswer",
    "ALLOTTED_TIMEOUT": "NoAnswer",
    "CALL_REJECTED": "Rejected",
}
CODE_STATUS = {486: "Busy", 600: "Busy", 480: "NoAnswer", 408: "NoAnswer", 403: "Rejected", 603: "Rejected"}

# The SIP response FreeSWITCH (mod_sofia, on hanging up an unanswered inbound leg) sends for a
# Q.850 cause when nothing more specific was recorded on the leg (no sip_term_status, no `respond`):
# FreeSWITCH's own table, which follows RFC 4497 section 8.4.1. Any cause not listed gets 480.
_SIP_CODE_CAUSES = {
    403: ("OUTGOING_CALL_BARRED", "INCOMING_CALL_BARRED", "BEARERCAPABILITY_NOTAUTH"),
    404: ("UNALLOCATED_NUMBER", "NO_ROUTE_TRANSIT_NET", "NO_ROUTE_DESTINATION"),
    408: ("NO_USER_RESPONSE",),
    410: ("NUMBER_CHANGED", "REDIRECTION_TO_NEW_DESTINATION"),
    480: ("NO_ANSWER", "SUBSCRIBER_ABSENT", "NORMAL_UNSPECIFIED"),
    483: ("EXCHANGE_ROUTING_ERROR",),
    484: ("INVALID_NUMBER_FORMAT", "INVALID_URL", "INVALID_GATEWAY"),
    486: ("USER_BUSY",),
    487: ("ORIGINATOR_CANCEL",),
    488: ("BEARERCAPABILITY_NOTIMPL", "INCOMPATIBLE_DESTINATION"),
    501: ("FACILITY_REJECTED", "FACILITY_NOT_IMPLEMENTED", "SERVICE_NOT_IMPLEMENTED"),
    502: ("DESTINATION_OUT_OF_ORDER", "INVALID_PROFILE"),
    503: ("REQUESTED_CHAN_UNAVAIL", "NORMAL_CIRCUIT_CONGESTION", "NETWORK_OUT_OF_ORDER",
          "NORMAL_TEMPORARY_FAILURE", "SWITCH_CONGESTION", "GATEWAY_DOWN", "BEARERCAPABILITY_NOTAVAIL"),
    504: ("RECOVERY_ON_TIMER_EXPIRE",),
    603: ("CALL_REJECTED",),
}
CAUSE_SIP = {cause: code for code, causes in _SIP_CODE_CAUSES.items() for cause in causes}
DEFAULT_CAUSE_SIP = 480


def cause_sip_code(cause: str) -> int:
    """The SIP response FreeSWITCH sends when refusing an inbound INVITE for ``cause``."""
    return CAUSE_SIP.get(cause, DEFAULT_CAUSE_SIP)


CALL_STATUS = {
    "Completed": "completed",
    "Busy": "busy",
    "NoAnswer": "no_answer",
    "Cancelled": "cancelled",
    "Rejected": "rejected",
    "Failed": "failed",
}

# Causes FreeSWITCH gives the legs *it* tears down on behalf of another leg; they say nothing
# about what the called party did.
_CONSEQUENTIAL = frozenset({"ORIGINATOR_CANCEL", "LOSE_RACE", "PICKED_OFF"})


@dataclass(slots=True, frozen=True)
class Outcome:
    status: str  # call_records.status
    sip_code: int | None
    reason: str | None  # Hangup-Cause of the deciding leg


def deciding_leg(root: Leg, others: list[Leg]) -> Leg:
    """The leg whose far end ended the call; the root when FreeSWITCH ended it."""
    for leg in (root, *others):
        if leg.disposition and leg.disposition.startswith("recv_"):
            return leg
    return root


def leg_sip_code(leg: Leg) -> int | None:
    """The final SIP code FreeSWITCH recorded on a leg (received or sent by `respond`)."""
    for raw in (leg.term_status, _after(leg.proto_cause, "sip:")):
        if raw and raw[:3].isdigit():
            return int(raw[:3])
    if leg.last_app == "respond" and leg.last_arg and leg.last_arg[:3].isdigit():
        return int(leg.last_arg[:3])
    return None


def decide(root: Leg, others: list[Leg]) -> Outcome:
    """Outcome of a call whose legs have all hung up (or been closed by a resync)."""
    decider = deciding_leg(root, others)
    if root.answered_us:
        return Outcome("Completed", 200, decider.cause)
    code = leg_sip_code(decider)
    if code is None and decider is root and root.direction == "inbound":
        code = _unrecorded_code(root)
    if root.disposition == "recv_cancel" or root.cause == "ORIGINATOR_CANCEL":
        return Outcome("Cancelled", code, decider.cause)
    return Outcome(_verdict(root, decider, others), code, decider.cause)


def _unrecorded_code(root: Leg) -> int | None:
    """The code FreeSWITCH sent on an inbound leg that recorded none."""
    if root.cause == "CALL_REJECTED" and not root.created_us:
        # Refused before a caller profile existed (no Caller-Channel-Created-Time): mod_sofia answers an
        # INVITE whose digest authentication or ACL check fails with 403 Forbidden, then hangs the
        # channel up as CALL_REJECTED; its cause table would say 603 (tests/fixtures/recorded/auth-refused.plain.esl).
        return 403
    return cause_sip_code(root.cause) if root.cause else None


def _verdict(root: Leg, decider: Leg, others: list[Leg]) -> str:
    if root.originate_disposition in CAUSE_STATUS:
        return CAUSE_STATUS[root.originate_disposition]
    ordered = [decider] + ([root] if decider is not root else []) + [leg for leg in others if leg is not decider]
    for leg in ordered:
        code = leg_sip_code(leg)
        if code in CODE_STATUS:
            return CODE_STATUS[code]
        cause = leg.cause or ""
        if cause in CAUSE_STATUS and not (leg is not root and cause in _CONSEQUENTIAL):
            return CAUSE_STATUS[cause]
    return "Failed"


def _after(value: str | None, prefix: str) -> str | None:
    if value and value.startswith(prefix):
        return value[len(prefix):]
    return None
