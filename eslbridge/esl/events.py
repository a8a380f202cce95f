"""Event bodies (text/event-json and text/event-plain) to flat dicts of headers.

Both parsers return `dict[str, str]`: header name -> decoded value, with the event's own body (API
output, BACKGROUND_JOB result, ...) under ``_body`` as FreeSWITCH's JSON does. JSON arrays (FreeSWITCH
array headers such as variable_DP_MATCH) become FreeSWITCH's plain spelling ``ARRAY::a|:b`` so that the
same event parses to the same dict in both formats.

Plain bodies are split into lines first and each value is URL-decoded after, so a ``%0A`` inside a
caller-controlled value stays inside that value (greenswitch decodes the whole block first and lets it
forge headers). When a header appears twice (seen in FreeSWITCH's own docs for Event-Subclass), the
first one wins.

Recoverable problems are counted through `on_error(kind, detail)` (``invalid_utf8``, ``garbage_line``);
unrecoverable ones raise `EventParseError(kind)` (``bad_json``, ``no_event_name``).
"""

from __future__ import annotations

import json
import re
from binascii import a2b_qp
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

import orjson

ErrorSink = Callable[[str, str], None]
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class EventParseError(ValueError):
    """The body is not an event; `kind` is the metrics label."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}"[:200])
        self.kind = kind


def _noop(kind: str, detail: str = "") -> None:
    return None


def _flatten(value: object) -> str:
    if isinstance(value, list):
        return "ARRAY::" + "|:".join(_flatten(v) for v in value)
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def parse_json_event(body: bytes, on_error: ErrorSink = _noop) -> dict[str, str]:
    """A text/event-json body to a flat dict; raises EventParseError on bad JSON."""
    try:
        # orjson: measured ~2x json.loads on captured events (bench/intake.py --profile).
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            on_error("invalid_utf8", "json event")
            text = body.decode("utf-8", "replace")
        else:
            raise EventParseError("bad_json", body[:80].decode("utf-8", "replace")) from None
        try:
            event = json.loads(text)
        except ValueError:
            raise EventParseError("bad_json", text[:80]) from None
    if not isinstance(event, dict):
        raise EventParseError("bad_json", "not an object")
    for key, value in event.items():
        if type(value) is not str:
            event[key] = _flatten(value)
    if "Event-Name" not in event:
        raise EventParseError("no_event_name", ",".join(list(event)[:5]))
    return event


def parse_plain_event(body: bytes, on_error: ErrorSink = _noop) -> dict[str, str]:
    """A text/event-plain body to a flat dict: split lines, then URL-decode each value."""
    head, _, rest = body.partition(b"\n\n")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        on_error("invalid_utf8", "plain event")
        text = head.decode("utf-8", "replace")
    event: dict[str, str] = {}
    for line in text.split("\n"):
        name, colon, value = line.partition(": ")
        if not colon:
            name, colon, value = line.partition(":")
            if not colon:
                if line.strip():
                    on_error("garbage_line", line)
                continue
        if "%" in value:
            value = _unquote(value, on_error)
        if name not in event:
            event[name] = value
    if "Event-Name" not in event:
        raise EventParseError("no_event_name", text[:80])
    if rest:
        length = event.get("Content-Length", "")
        payload = rest[: int(length)] if length.isdigit() else rest
        event["_body"] = payload.decode("utf-8", "replace")
    return event


def _unquote(value: str, on_error: ErrorSink) -> str:
    """urllib.parse.unquote, but at C speed: binascii.a2b_qp decodes =XX escapes in C, so '=' is
    escaped and '%' becomes '='. Profiling showed urllib's pure-Python unquote taking 60 % of plain
    intake (SDP values hold hundreds of escapes). Values with a malformed escape take urllib's path."""
    if _BAD_ESCAPE.search(value):
        raw = unquote_to_bytes(value)
    else:
        raw = a2b_qp(value.encode("utf-8", "surrogateescape").replace(b"=", b"=3D").replace(b"%", b"="))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        on_error("invalid_utf8", "percent-encoded value")
        return raw.decode("utf-8", "replace")


def parse_event(content_type: str, body: bytes, on_error: ErrorSink = _noop) -> dict[str, str]:
    """Dispatch on the frame's Content-Type (text/event-json or text/event-plain)."""
    if content_type == "text/event-json":
        return parse_json_event(body, on_error)
    return parse_plain_event(body, on_error)


def event_key(event: dict[str, str]) -> str:
    """The metrics label of an event: its Event-Name, or "CUSTOM <subclass>"."""
    name = event.get("Event-Name", "")
    if name == "CUSTOM":
        return "CUSTOM " + event.get("Event-Subclass", "")
    return name
