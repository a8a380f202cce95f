"""Event bodies (text/event-json and text/event-plain) to flat dicts of headers.

Both parsers return `dict[str, str]`: header name -> decoded value, with the event's own body (API
output, BACKGROUND_JOB result, ...) under ``_body`` as FreeSWITCH's JSON does. JSON arrays (FreeSWITCH
array headers such as variable_DP_MATCH) become FreeSWITCH's plain spelling ``ARRAY::a|:b`` so that the
same event parses to the same dict in both formats.

Plain bodies are split into lines first and each value is URL-decoded after, so a ``%0A`` inside a
caller-controlled value stays inside that value (greenswitch decodes the whole block first and lets it
forge headers). When a header appears twice (seen in FreeSWITCH's own docs for Event-Subclass), the
first one wins.

`EventDecoder(wanted)` returns only the wanted headers (the daemon's: eslbridge.esl.headers) and skips
the rest without decoding them; parse_json_event and parse_plain_event return every header.

Recoverable problems are counted through `on_error(kind, detail)` (``invalid_utf8``, ``garbage_line``);
unrecoverable ones raise `EventParseError(kind)` (``bad_json``, ``no_event_name``).
"""

from __future__ import annotations

import json
import re
from binascii import a2b_qp
from collections.abc import Callable, Iterable, Mapping
from itertools import repeat
from operator import contains
from typing import Any, TypedDict
from urllib.parse import unquote_to_bytes

import msgspec
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
    """A text/event-json body to a flat dict of every header; raises EventParseError on bad JSON."""
    try:
        # orjson: measured ~2x json.loads on captured events (bench/intake.py --profile).
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        event = _decode_damaged(body, on_error)
    if not isinstance(event, dict):
        raise EventParseError("bad_json", "not an object")
    return _checked(_flat(event))


def _decode_damaged(body: bytes, on_error: ErrorSink) -> Any:
    """A body orjson refused: invalid UTF-8 is replaced (and counted), anything else is bad JSON."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        on_error("invalid_utf8", "json event")
        text = body.decode("utf-8", "replace")
    else:
        raise EventParseError("bad_json", body[:80].decode("utf-8", "replace")) from None
    try:
        return json.loads(text)
    except ValueError:
        raise EventParseError("bad_json", text[:80]) from None


def _flat(event: dict[str, Any]) -> dict[str, str]:
    try:
        # Almost every event is flat strings only, and then the decoded dict is already the result. join
        # checks every value's type in C; a Python loop over the ~200 headers cost more than orjson.
        "".join(event.values())
    except TypeError:
        for key, value in event.items():
            if type(value) is not str:
                event[key] = _flatten(value)
    return event


def _checked(event: dict[str, str], text: str = "") -> dict[str, str]:
    if "Event-Name" not in event:
        raise EventParseError("no_event_name", text[:80] or ",".join(list(event)[:5]))
    return event


def parse_plain_event(body: bytes, on_error: ErrorSink = _noop) -> dict[str, str]:
    """A text/event-plain body to a flat dict of every header: split lines, then URL-decode each value."""
    return _plain(body, on_error, None)


def _plain(body: bytes, on_error: ErrorSink, wanted: _Wanted | None) -> dict[str, str]:
    event = wanted.pick(body, on_error) if wanted is not None else None
    if event is not None:
        return event
    text, lines, rest = _head_lines(body, on_error)
    # Per-line Python cost more than the rest of intake, so when every line holds a ": " (always, from
    # FreeSWITCH: values are URL-encoded) the lines are cut in C by one split of the text. Anything else
    # goes line by line. Values are URL-decoded only after the split, and only those kept.
    if wanted is None and all(map(contains, lines, repeat(": "))):
        event = _split_all(text, lines)
    if event is None:
        event = _parse_lines(lines, on_error, wanted and wanted.names)
    elif "%" in text:
        event = _unquote_values(event, on_error)
    _checked(event, text)
    if rest and (wanted is None or "_body" in wanted.names):
        length = event.get("Content-Length", "")
        payload = rest[: int(length)] if length.isdigit() else rest
        event["_body"] = payload.decode("utf-8", "replace")
    return event


def _unquote_values(event: dict[str, str], on_error: ErrorSink) -> dict[str, str]:
    """`event` with its values URL-decoded in place: only the few holding a "%" are touched."""
    for name, value in event.items():
        if "%" in value:
            event[name] = _unquote(value, on_error)
    return event


def _head_lines(body: bytes, on_error: ErrorSink) -> tuple[str, list[str], bytes]:
    """A plain event's header text, its lines, and the payload after the blank line.

    An event without a payload ends at its first blank line, and then the whole body is decoded and
    split at once: finding the blank line first (bytes.find of two bytes) cost a tenth of plain intake.
    """
    try:
        whole = body.decode("utf-8")
    except UnicodeDecodeError:
        whole = ""  # counted below, on the header text alone
    lines = whole.split("\n")
    if len(lines) > 2 and lines[-2:] == ["", ""] and lines.index("") == len(lines) - 2:
        del lines[-2:]
        return whole[:-2], lines, b""
    head, _, rest = body.partition(b"\n\n")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        on_error("invalid_utf8", "plain event")
        text = head.decode("utf-8", "replace")
    return text, text.split("\n"), rest


def _split_all(text: str, lines: list[str]) -> dict[str, str] | None:
    """Every header of lines holding exactly one ": " each (None otherwise): the text split into names
    and values at once, reversed so that the first of a repeated header wins."""
    parts = text.replace("\n", ": ").split(": ")
    if len(parts) != 2 * len(lines):
        return None
    return dict(zip(reversed(parts[0::2]), reversed(parts[1::2]), strict=True))


# Every byte but the three that delimit a plain header line: what is left of a body shows its layout.
_NOT_DELIMITERS = bytes(c for c in range(256) if c not in b": \n")


class _Wanted:
    """The wanted header names, and a regex that finds their lines in a plain event.

    Profiled: building a string for each of a channel event's ~170 lines and keeping ~30 of them cost
    about half of plain intake. The regex finds the wanted lines in one C pass, at each line start
    trying the names as a trie (sre tries a flat alternation's ~70 names one by one, which cost more
    than the split).
    """

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self._findall = re.compile(f"\n({_alternation(sorted(names))}): ?([^\n]*)").findall

    def pick(self, body: bytes, on_error: ErrorSink) -> dict[str, str] | None:
        """The wanted headers of a body laid out as FreeSWITCH writes it (None otherwise): lines of one
        ":" and after it one " " each (values are URL-encoded), then one blank line, nothing after it.

        That layout is proved without cutting the body into lines: deleting every other byte (one C
        pass) must leave exactly ": \\n" per line and the final "\\n". A line's name is then what precedes
        its colon, its value what follows the colon and the space if it is next (as in _parse_lines,
        whose "Name: value" and "Name:value" are the only forms such a line can take), so a regex finds
        the wanted lines; no line can be garbage. Proving it cost ~4 us a channel event, the split and a
        check of every line ~16 us.
        """
        layout = body.translate(None, _NOT_DELIMITERS)
        if not (body.endswith(b"\n\n") and layout.count(b": \n") * 3 + 1 == len(layout)):
            return None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return None  # counted and replaced on the careful path
        event = dict(reversed(self._findall("\n" + text)))  # reversed: the first of a repeated header wins
        if "%" in text:
            event = _unquote_values(event, on_error)
        return _checked(event, text)


def _alternation(names: list[str]) -> str:
    """A regex matching exactly `names`, as a trie of their characters. sre tries a node's branches in
    order, so the one holding the most names comes first (FreeSWITCH's lines are mostly channel
    variables: measured ~10 % off the search)."""
    by_first: dict[str, list[str]] = {}
    for name in names:
        if name:
            by_first.setdefault(name[0], []).append(name[1:])
    ordered = sorted(by_first.items(), key=lambda item: (-len(item[1]), item[0]))
    branches = [re.escape(first) + _alternation(rest) for first, rest in ordered]
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if "" in names:
        return f"(?:{body})?" if branches else ""
    return body


# How FreeSWITCH begins every event: its name first (cJSON and the plain serializer both start there).
_JSON_NAME, _PLAIN_NAME = b'{"Event-Name":"', b"Event-Name: "


class EventDecoder:
    """Event bodies to dicts of only the `wanted` headers (None: every header), skipping the rest.

    JSON goes through msgspec into a TypedDict of the wanted headers: the other ~100 headers of
    a channel event are skipped in C without building a string. Plain events are split into lines
    first and only the values kept are URL-decoded. Values, errors and the first-of-repeated rule are
    those of parse_json_event / parse_plain_event, restricted to `wanted`.

    `by_event` (event name -> headers; only those also wanted count) narrows that per event: the name is
    peeked where FreeSWITCH puts it, first, and an event named there decodes only its own headers (each
    skipped key costs a comparison with every wanted name: ~12 us of a channel event's ~14 us against the
    64 wanted headers, ~5 us against 20). An event whose name is not peeked there, unknown, escaped, or
    contradicted by a repeated Event-Name gets every wanted header.
    """

    def __init__(self, wanted: Iterable[str] | None = None,
                 by_event: Mapping[str, Iterable[str]] | None = None) -> None:
        if wanted is None:
            self.json: Callable[[bytes, ErrorSink], dict[str, str]] = parse_json_event
            self._wanted = None
            return
        wanted = frozenset(wanted)
        self._wanted, self._decoder = _plain_and_json(wanted)
        self._by_name: dict[bytes, tuple[str, _Wanted, msgspec.json.Decoder]] = {
            name.encode(): (name, *_plain_and_json(wanted.intersection(headers)))
            for name, headers in (by_event or {}).items()}
        self.json = self._json

    def _json(self, body: bytes, on_error: ErrorSink = _noop) -> dict[str, str]:
        """A text/event-json body to a dict of the wanted headers; raises EventParseError on bad JSON."""
        if not body.isascii():
            try:  # msgspec does not check the values it skips: invalid UTF-8 anywhere is still counted
                body.decode("utf-8")
            except UnicodeDecodeError:
                on_error("invalid_utf8", "json event")
                body = body.decode("utf-8", "replace").encode("utf-8")
        if body.startswith(_JSON_NAME):
            start = len(_JSON_NAME)
            end = body.find(b'"', start)
            named = self._by_name.get(body[start:end]) if end > 0 else None
            if named is not None:
                event = _json_decode(named[2], body)
                if event.get("Event-Name") == named[0]:  # not overridden by a second Event-Name
                    return event
        return _json_decode(self._decoder, body)

    def plain(self, body: bytes, on_error: ErrorSink = _noop) -> dict[str, str]:
        """A text/event-plain body to a dict of the wanted headers: split lines, then URL-decode those."""
        if self._wanted is not None and body.startswith(_PLAIN_NAME):
            start = len(_PLAIN_NAME)
            end = body.find(b"\n", start)
            named = self._by_name.get(body[start:end]) if end > 0 else None
            if named is not None:  # its first line: the Event-Name that counts (the first of a repeated one)
                return _plain(body, on_error, named[1])
        return _plain(body, on_error, self._wanted)


def _plain_and_json(wanted: Iterable[str]) -> tuple[_Wanted, msgspec.json.Decoder]:
    """The plain line finder and the JSON decoder of exactly `wanted` (with Event-Name)."""
    names = {*wanted, "Event-Name"}
    if "_body" in names:  # a plain body is cut at its own Content-Length
        names.add("Content-Length")
    # msgspec looks a key up by scanning the fields from the one after the last match, so fields in
    # about FreeSWITCH's order (its own headers, then the channel variables) are found sooner:
    # ~10 % of the decode (every skipped key still scans them all: the cost of each wanted header).
    ordered = sorted(names, key=lambda name: (name.startswith("variable_"), name))
    # A TypedDict (total=False: any may be absent) decodes straight to the dict, ~1 us/event less than a
    # Struct and its to_builtins; Any keeps FreeSWITCH's arrays and nulls for _flat.
    event = TypedDict("Event", dict.fromkeys(ordered, Any), total=False)  # type: ignore[misc]
    return _Wanted(frozenset(names)), msgspec.json.Decoder(event)


def _json_decode(decoder: msgspec.json.Decoder, body: bytes) -> dict[str, str]:
    try:
        event = decoder.decode(body)
    except msgspec.ValidationError:
        raise EventParseError("bad_json", "not an object") from None
    except msgspec.DecodeError:
        raise EventParseError("bad_json", body[:80].decode("utf-8", "replace")) from None
    return _checked(_flat(event))


def _parse_lines(lines: list[str], on_error: ErrorSink, wanted: frozenset[str] | None) -> dict[str, str]:
    event: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(": ")
        if not colon:
            name, colon, value = line.partition(":")
            if not colon:
                if line.strip():
                    on_error("garbage_line", line)
                continue
        if wanted is not None and name not in wanted:
            continue
        if "%" in value:
            value = _unquote(value, on_error)
        if name not in event:
            event[name] = value
    return event


def _qp_unquote(value: str) -> bytes:
    """urllib.parse.unquote_to_bytes at C speed, for text without malformed escapes: binascii.a2b_qp
    decodes =XX in C, so '=' is escaped and '%' becomes '='. Profiling showed urllib's pure-Python
    unquote taking 60 % of plain intake (SDP values hold hundreds of escapes)."""
    return a2b_qp(value.encode("utf-8", "surrogateescape").replace(b"=", b"=3D").replace(b"%", b"="))


def _unquote(value: str, on_error: ErrorSink) -> str:
    """One value URL-decoded (urllib's semantics; malformed escapes stay as they are)."""
    raw = unquote_to_bytes(value) if _BAD_ESCAPE.search(value) else _qp_unquote(value)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        on_error("invalid_utf8", "percent-encoded value")
        return raw.decode("utf-8", "replace")


def event_key(event: dict[str, str]) -> str:
    """The metrics label of an event: its Event-Name, or "CUSTOM <subclass>"."""
    name = event.get("Event-Name", "")
    if name == "CUSTOM":
        return "CUSTOM " + event.get("Event-Subclass", "")
    return name
