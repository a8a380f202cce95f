"""Turns a call's legs into the CallRecord of DESIGN section 6 (pure; lookups cached per call)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any

from eslbridge.calls.legs import Leg, to_datetime
from eslbridge.calls.outcome import CALL_STATUS, decide
from eslbridge.calls.records import CallRecord

_REQUIRED = ("call_uuid", "node", "call_id", "start_time", "direction", "status", "call_status", "caller", "callee")
if tuple(f.name for f in fields(CallRecord) if f.default is MISSING and f.default_factory is MISSING) != _REQUIRED:
    raise ImportError("CallRecord's required fields changed: update build_record's positional arguments")


def answering_leg(root: Leg, others: list[Leg]) -> Leg | None:
    """The first non-root leg that answered, preferring real endpoints over loopback legs."""
    best, best_key = None, None
    for leg in others:  # a loop, not min(key=...): this runs on every update of every call
        if leg.answered_us:
            key = (leg.is_loopback, leg.answered_us, leg.created_us)
            if best_key is None or key < best_key:
                best, best_key = leg, key
    return best


def caller_identity(root: Leg) -> tuple[str, str] | None:
    """(username, realm) of the caller when FreeSWITCH vouches for it.

    An inbound leg counts only when it was authenticated (digest or ACL): an unauthenticated
    From header is caller-controlled and must not attribute a call to a local user. An outbound
    root (the `originate` API) carries the caller ID FreeSWITCH's operator set.
    """
    if root.direction == "inbound":
        if root.authorized != "true" and not root.acl_authed:
            return None
        user, realm = root.user_name or root.from_user, root.domain_name or root.from_host
    else:
        user, realm = root.from_user, root.from_host
    return (user, realm) if user and realm else None


def callee_identity(root: Leg, others: list[Leg]) -> tuple[str, str] | None:
    """(username, realm) of the called party: a user/ bridge's dialed user, else the destination."""
    for leg in others:
        if leg.dialed_user and leg.dialed_domain:
            return leg.dialed_user, leg.dialed_domain
    if root.dialed_user and root.dialed_domain:
        return root.dialed_user, root.dialed_domain
    realm = root.domain_name or _host(root.to_uri)
    return (root.dest, realm) if root.dest and realm else None


# int4 columns (the *_duration_ms ones): a duration beyond ~24.8 days is clamped, never refused.
INT4_MAX = 2**31 - 1


def start_of(root: Leg, others: list[Leg]) -> int:
    """A call's start in microseconds: the root's created time, else the earliest other leg's,
    else the earliest event seen (events without Caller-Channel-*-Time headers); 0 if none."""
    return (root.created_us or min((leg.created_us for leg in others if leg.created_us), default=0)
            or min((leg.first_us for leg in (root, *others) if leg.first_us), default=0))


def duration_ms(us: int) -> int:
    """Microseconds as an int4 duration in milliseconds, never negative."""
    return min(INT4_MAX, max(0, us // 1000))


def build_record(
    call_uuid: str,
    node: str,
    root: Leg,
    others: list[Leg],
    finished: bool,
    lookup: Callable[[tuple[str, str] | None], str | None],
    key_us: int = 0,
) -> CallRecord:
    """The full current record of a call; ``lookup`` resolves an identity through the call's cache.

    ``key_us``: the start time the call's rows were opened with (part of their unique key), when
    it is fixed already; durations are still measured from the best start known."""
    answerer = answering_leg(root, others)
    start_us = start_of(root, others)
    caller_id = lookup(caller_identity(root))
    callee_id = lookup(callee_identity(root, others))
    # The required fields positionally (in _REQUIRED's order, checked at import), the rest by
    # attribute: keyword arguments to a 38-field dataclass cost about three times as much.
    record = CallRecord(
        call_uuid,
        node,
        root.call_id or call_uuid,
        to_datetime(key_us or start_us),
        _direction(caller_id, callee_id),
        "Active",
        "answered" if root.answered_us else "initiated",
        _caller_uri(root),
        _callee_uri(root, answerer),
    )
    record.caller_number = root.cid_num
    record.callee_number = root.dest
    record.caller_id_name = root.cid_name
    record.caller_ip = root.ip
    record.caller_sdp = root.sdp
    record.caller_user_agent = root.user_agent
    if answerer is not None:
        record.callee_ip = answerer.ip
        record.callee_sdp = answerer.sdp
        record.callee_user_agent = answerer.user_agent
    record.codec = root.codec or next((leg.codec for leg in others if leg.codec), None)
    record.user_id = caller_id or callee_id
    record.caller_user_id = caller_id
    record.callee_user_id = callee_id
    if root.answered_us:
        record.answer_time = to_datetime(root.answered_us)
        record.setup_duration_ms = duration_ms(root.answered_us - start_us)
    if root.media is not None or (answerer is not None and answerer.media is not None):
        media = _media_info(root, answerer)
        record.media_info = media
        scores = [side["mos"] for side in media.values() if "mos" in side]
        record.quality_score = min(scores) if scores else None
    if finished:
        _finish(record, root, others, start_us)
    return record


def _finish(record: CallRecord, root: Leg, others: list[Leg], start_us: int) -> None:
    end_us = max(start_us, root.answered_us, *(leg.hangup_us for leg in (root, *others)))
    outcome = decide(root, others)
    record.status = outcome.status
    record.call_status = CALL_STATUS[outcome.status]
    record.sip_response_code = outcome.sip_code
    record.disconnect_reason = outcome.reason
    record.end_time = to_datetime(end_us)
    record.total_duration_ms = duration_ms(end_us - start_us)
    record.call_duration_ms = duration_ms(end_us - root.answered_us) if root.answered_us else 0
    billsec = root.billsec
    record.duration_seconds = min(INT4_MAX, int(billsec)) if billsec and billsec.isdigit() else 0


def _direction(caller_id: str | None, callee_id: str | None) -> str:
    if caller_id and callee_id:
        return "Internal"
    return "Outbound" if caller_id else "Inbound"


def _caller_uri(root: Leg) -> str:
    if root.from_uri:
        return "sip:" + root.from_uri
    if root.cid_num:
        return "sip:" + root.cid_num + ("@" + root.from_host if root.from_host else "")
    return "sip:unknown"


def _callee_uri(root: Leg, answerer: Leg | None) -> str:
    if answerer and answerer.to_uri:
        return "sip:" + answerer.to_uri
    if root.direction == "outbound" and root.to_uri:
        return "sip:" + root.to_uri
    host = _host(root.to_uri)
    dest = root.dest or root.to_user or "unknown"
    return "sip:" + dest + ("@" + host if host else "")


def _host(uri: str | None) -> str | None:
    """Host part of user@host[:port] (no port: realms and lookups are by host name)."""
    if not uri or "@" not in uri:
        return None
    return uri.split("@", 1)[1].split(":", 1)[0] or None


def _media_info(root: Leg, answerer: Leg | None) -> dict[str, Any]:
    """Each side's RTP statistics (copies: every record owns its dicts)."""
    sides = {}
    if root.media is not None:
        sides["caller"] = dict(root.media)
    if answerer is not None and answerer.media is not None:
        sides["callee"] = dict(answerer.media)
    return sides
