"""Test helpers for the correlator: a tiny local ESL fixture parser and scenario derivations.

The parser is deliberately independent of eslbridge/esl (written in parallel): it splits frames
by Content-Length, decodes json bodies with json.loads and plain bodies by splitting lines first
and URL-decoding each value after. It tolerates the oddities of the public captures (a stray
typed command, a leading space, truncated final frames, bare header blocks).

Derived scenarios change only what FreeSWITCH would change; each derivation says why.
"""

from __future__ import annotations

import copy
import json
import urllib.parse
import uuid as uuidlib
from datetime import UTC, datetime, timedelta

from tests.paths import CAPTURED, PUBLIC

NODE = "fs1"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_plain(text: str) -> dict[str, str]:
    """A text/event-plain body: split lines, then URL-decode each value (never the whole block)."""
    headers, _, _body = text.partition("\n\n")
    event: dict[str, str] = {}
    for line in headers.split("\n"):
        name, sep, value = line.partition(": ")
        if sep:
            event[name.strip()] = urllib.parse.unquote(value.rstrip("\r"))
    return event


def parse_json(body: bytes) -> dict[str, str]:
    return {key: value if isinstance(value, str) else str(value) for key, value in json.loads(body).items()}


def stream_events(data: bytes) -> list[dict[str, str]]:
    """Every event in a raw ESL byte stream, in order."""
    events: list[dict[str, str]] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n\n", pos)
        if end < 0:
            break
        block = data[pos:end].decode("utf-8", "replace")
        pos = end + 2
        outer = {}
        for line in block.split("\n"):
            name, sep, value = line.strip().partition(": ")
            if sep:
                outer[name] = value
        length = outer.get("Content-Length")
        if length is None:
            if "Event-Name" in outer:  # a bare header block (outbound socket connect reply)
                events.append(parse_plain(block))
            continue
        body = data[pos:pos + int(length)]
        if len(body) < int(length):
            break  # truncated final frame
        pos += int(length)
        kind = outer.get("Content-Type")
        if kind == "text/event-json":
            events.append(parse_json(body))
        elif kind == "text/event-plain":
            events.append(parse_plain(body.decode("utf-8")))
    return events


def captured(scenario: str, fmt: str) -> list[dict[str, str]]:
    return stream_events((CAPTURED / f"{scenario}.{fmt}.esl").read_bytes())


def truth(scenario: str) -> dict:
    return json.loads((CAPTURED / f"{scenario}.truth.json").read_text())


def public_stream(name: str) -> list[dict[str, str]]:
    return stream_events((PUBLIC / name).read_bytes())


def decoded_txt(name: str) -> dict[str, str]:
    """A decoded "Name: value" dump (values not URL-encoded; SDP lines continue a value)."""
    event: dict[str, str] = {}
    last = None
    for line in (PUBLIC / name).read_text().split("\n"):
        name_, sep, value = line.partition(": ")
        if sep and " " not in name_ and name_:
            last = name_
            event[last] = value.rstrip()
        elif last and line.strip():
            event[last] += "\n" + line.rstrip()
    return event


def plain_file(name: str) -> dict[str, str]:
    return parse_plain((PUBLIC / name).read_text())


def at(us: str | int) -> datetime:
    return EPOCH + timedelta(microseconds=int(us))


def ms(later: str | int, earlier: str | int) -> int:
    return (int(later) - int(earlier)) // 1000


def only(events: list[dict[str, str]], name: str, uuid: str | None = None) -> dict[str, str]:
    found = [e for e in events if e["Event-Name"] == name and (uuid is None or e.get("Unique-ID") == uuid)]
    assert len(found) == 1, (name, uuid, len(found))
    return found[0]


def lookup_factory(users: dict[tuple[str, str], str]):
    """A lookup callable that also counts its calls (to check per-call caching)."""
    calls: list[tuple[str, str]] = []

    def lookup(username: str, realm: str) -> str | None:
        calls.append((username, realm))
        return users.get((username, realm))

    lookup.calls = calls  # type: ignore[attr-defined]
    return lookup


LOCAL_USERS = {("1000", "127.0.0.1"): "user-1000", ("1001", "127.0.0.1"): "user-1001"}


# ---------------------------------------------------------------- derivations


def call_events(events: list[dict[str, str]]) -> list[dict[str, str]]:
    """The call's channel events only (what the minimal subscription also gets)."""
    return [e for e in events if e.get("Event-Name", "").startswith("CHANNEL_")]


def renamed(events: list[dict[str, str]], mapping: dict[str, str]) -> list[dict[str, str]]:
    """Deep copy with UUIDs replaced in every value (a fresh call from a template)."""
    out = []
    for event in events:
        new = {}
        for key, value in event.items():
            for old, fresh in mapping.items():
                if old in value:
                    value = value.replace(old, fresh)
            new[key] = value
        out.append(new)
    return out


def fresh_uuids(events: list[dict[str, str]]) -> tuple[list[dict[str, str]], dict[str, str]]:
    legs = []
    for event in events:
        if event.get("Unique-ID") and event["Unique-ID"] not in legs:
            legs.append(event["Unique-ID"])
    mapping = {leg: str(uuidlib.uuid4()) for leg in legs}
    return renamed(events, mapping), mapping


def no_answer_from_busy(busy: list[dict[str, str]], a_leg: str, b_leg: str) -> list[dict[str, str]]:
    """bridge-busy turned into a ring timeout (call_timeout expired, nobody answered).

    switch_ivr_originate hangs up the unanswered peer with NO_ANSWER (idx == IDX_TIMEOUT), FreeSWITCH
    sends it a CANCEL (B: sip_hangup_disposition=send_cancel, no final response received, so no
    sip_term_status), and the bridge fails with originate_disposition NO_ANSWER, which
    mod_dptools gives the A-leg as its hangup cause; the caller gets 480 (hangup_cause_to_sip).
    The B-leg hangs up 8 s (call_timeout) after creation.
    """
    events = copy.deepcopy(call_events(busy))
    b_hangup = only(events, "CHANNEL_HANGUP_COMPLETE", b_leg)
    a_hangup = only(events, "CHANNEL_HANGUP_COMPLETE", a_leg)
    end = int(b_hangup["Caller-Channel-Created-Time"]) + 8_000_000
    for event, delta in ((b_hangup, 0), (a_hangup, 20_000)):
        for key in ("Caller-Channel-Hangup-Time", "Event-Date-Timestamp", "variable_end_uepoch"):
            event[key] = str(end + delta)
    b_hangup.update({"Hangup-Cause": "NO_ANSWER", "variable_sip_hangup_disposition": "send_cancel",
                     "variable_hangup_cause": "NO_ANSWER"})
    for key in ("variable_sip_term_status", "variable_proto_specific_hangup_cause"):
        b_hangup.pop(key, None)
    a_hangup.update({"Hangup-Cause": "NO_ANSWER", "variable_originate_disposition": "NO_ANSWER",
                     "variable_DIALSTATUS": "NOANSWER", "variable_hangup_cause": "NO_ANSWER",
                     "variable_last_bridge_hangup_cause": "NO_ANSWER",
                     "variable_originate_causes": f"{b_leg};NO_ANSWER"})
    return events


def cancel_from_busy(busy: list[dict[str, str]], a_leg: str, b_leg: str) -> list[dict[str, str]]:
    """bridge-busy turned into a caller cancel while B rings.

    The caller's CANCEL hangs up A with ORIGINATOR_CANCEL (sip_hangup_disposition=recv_cancel);
    switch_ivr_originate then tears the ringing peer down with ORIGINATOR_CANCEL (idx == IDX_CANCEL),
    so B gets send_cancel and no final response.
    """
    events = copy.deepcopy(call_events(busy))
    b_hangup = only(events, "CHANNEL_HANGUP_COMPLETE", b_leg)
    a_hangup = only(events, "CHANNEL_HANGUP_COMPLETE", a_leg)
    b_hangup.update({"Hangup-Cause": "ORIGINATOR_CANCEL", "variable_sip_hangup_disposition": "send_cancel"})
    for key in ("variable_sip_term_status", "variable_proto_specific_hangup_cause"):
        b_hangup.pop(key, None)
    a_hangup.update({"Hangup-Cause": "ORIGINATOR_CANCEL", "variable_sip_hangup_disposition": "recv_cancel",
                     "variable_originate_disposition": "ORIGINATOR_CANCEL", "variable_DIALSTATUS": "CANCEL"})
    return events
