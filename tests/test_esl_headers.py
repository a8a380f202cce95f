"""Intake decodes only READ_HEADERS: the same values as a full decode, and nothing the daemon reads is lost.

Every captured and public event is decoded both ways (EventDecoder(READ_HEADERS) and the full parsers)
and compared on the wanted headers; the captured calls are correlated from both decodes and must give
the same records and lifecycle rows (what call_records, calls and call_events.event_data store); and the
correlator, the login recorder, the node map and the metrics label are run over every event through a
dict that notes each header they look at, which must all be in READ_HEADERS.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest

from eslbridge.accounts.registrations import login_from_event
from eslbridge.calls.correlator import Correlator
from eslbridge.calls.errors import EventError
from eslbridge.esl.events import EventDecoder, EventParseError, event_key, parse_json_event, parse_plain_event
from eslbridge.esl.framing import parse_stream
from eslbridge.esl.headers import EVENT_HEADERS, READ_HEADERS
from eslbridge.esl.nodemap import NodeMap
from tests.paths import CAPTURED, PUBLIC

DECODER = EventDecoder(READ_HEADERS)
FULL = {"text/event-json": parse_json_event, "text/event-plain": parse_plain_event}
WANTED = {"text/event-json": DECODER.json, "text/event-plain": DECODER.plain}


def _bodies(pattern: str, root=CAPTURED) -> list[tuple[str, bytes]]:
    out = []
    for path in sorted(root.glob(pattern)):
        for frame in parse_stream(path.read_bytes(), lambda kind, detail="": None):
            if frame.content_type in FULL:
                out.append((frame.content_type, frame.body))
    return out


CAPTURED_BODIES = _bodies("*.esl")
PUBLIC_BODIES = _bodies("*.stream", PUBLIC) + _bodies("*.frame", PUBLIC) + _bodies("*.json-frame", PUBLIC)
PUBLIC_PLAIN = [("text/event-plain", p.read_bytes()) for p in sorted(PUBLIC.glob("*.plain"))]


def _counting(counter: Counter):
    return lambda kind, detail="": counter.update([kind])


def _restricted(event: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in event.items() if name in READ_HEADERS}


@pytest.mark.parametrize("corpus", ["captured", "public"])
def test_wanted_headers_decode_as_the_full_parse_does(corpus):
    bodies = CAPTURED_BODIES if corpus == "captured" else PUBLIC_BODIES + PUBLIC_PLAIN
    assert len(bodies) > 30
    for content_type, body in bodies:
        full_errors, errors = Counter(), Counter()
        try:
            full = FULL[content_type](body, _counting(full_errors))
        except EventParseError as exc:
            with pytest.raises(EventParseError) as raised:
                WANTED[content_type](body)
            assert raised.value.kind == exc.kind
            continue
        got = WANTED[content_type](body, _counting(errors))
        assert got == _restricted(full)
        assert errors == full_errors


class _Noting(dict):
    """An event that notes every header looked up in it."""

    def __init__(self, event: dict[str, str], seen: set[str]) -> None:
        super().__init__(event)
        self.seen = seen

    def get(self, key, default=None):
        self.seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.seen.add(key)
        return super().__contains__(key)


def _full_events(fmt: str) -> list[dict[str, str]]:
    return [FULL[ct](body) for ct, body in _bodies(f"*.{fmt}.esl")]


def test_every_header_the_daemon_reads_is_decoded():
    seen: set[str] = set()
    correlator, nodes = Correlator("fs1", lambda user, realm: None), NodeMap(["fs1"])
    events = _full_events("json") + _full_events("minimal.json") + _full_events("plain")
    narrow = 0
    for event in events:
        read: set[str] = set()
        noting = _Noting(event, read)
        nodes.learn("fs1", noting)
        login_from_event(noting)
        event_key(noting)
        with contextlib.suppress(EventError):  # a fixture's odd event: its reads still count
            correlator.feed(noting)
        # A channel event is decoded with only its own headers (EVENT_HEADERS), any other with all.
        assert read - EVENT_HEADERS.get(event["Event-Name"], READ_HEADERS) == set(), event["Event-Name"]
        narrow += event["Event-Name"] in EVENT_HEADERS
        seen |= read
    assert "variable_sip_call_id" in seen and "username" in seen and "Core-UUID" in seen  # the probe works
    assert narrow > 30
    assert seen - READ_HEADERS == set()


@pytest.mark.parametrize("fmt", ["json", "minimal.json", "plain"])
def test_stored_records_and_lifecycle_rows_are_the_same(fmt):
    bodies = _bodies(f"*.{fmt}.esl")

    def correlate(decode) -> list:
        correlator, out = Correlator("fs1", lambda user, realm: f"{user}@{realm}"), []
        for content_type, body in bodies:
            out += correlator.feed(decode[content_type](body))
        return out

    full, wanted = correlate(FULL), correlate(WANTED)
    assert len(full) > 10 and any(update.events for update in full)
    assert wanted == full  # CallRecord, Stage and every LifecycleEvent's data (call_events.event_data)


def test_percent_0a_in_a_wanted_value_cannot_forge_a_header():
    body = b"Event-Name: CHANNEL_CREATE\nCaller-Caller-ID-Name: x%0AUnique-ID: forged\nUnique-ID: real\n\n"
    event = DECODER.plain(body)
    assert event["Unique-ID"] == "real" and event["Caller-Caller-ID-Name"] == "x\nUnique-ID: forged"


def test_skipped_headers_are_not_decoded_but_still_checked():
    errors = Counter()
    event = DECODER.json(b'{"Event-Name":"CHANNEL_CREATE","x-unread":"\xff","Unique-ID":"u"}',
                         lambda kind, detail="": errors.update([kind]))
    assert event == {"Event-Name": "CHANNEL_CREATE", "Unique-ID": "u"} and errors == {"invalid_utf8": 1}
    plain = DECODER.plain(b"Event-Name: CHANNEL_CREATE\nx-unread: %FF%\nUnique-ID: a%20b\n\nbody")
    assert plain == {"Event-Name": "CHANNEL_CREATE", "Unique-ID": "a b"}


def test_json_values_that_are_not_strings():
    event = DECODER.json(b'{"Event-Name":"X","variable_originated_legs":["a;b","c;d"],"Event-Sequence":7,'
                         b'"Unique-ID":null,"skipped":{"deep":[1,2]}}')
    assert event == {"Event-Name": "X", "variable_originated_legs": "ARRAY::a;b|:c;d", "Event-Sequence": "7",
                     "Unique-ID": ""}


@pytest.mark.parametrize("body,kind", [
    (b'{"Event-Name": "CHANNEL_CREATE", oops', "bad_json"),
    (b'["Event-Name"]', "bad_json"),
    (b'{"Unique-ID":"u"}', "no_event_name"),
    (b'{"Event-Name":"X"} trailing', "bad_json"),
])
def test_bad_json_raises_the_same_kinds(body, kind):
    for decode in (parse_json_event, DECODER.json):
        with pytest.raises(EventParseError) as raised:
            decode(body)
        assert raised.value.kind == kind


def test_a_decoder_for_every_header_is_the_full_parse():
    body = b"Event-Name: API\nAPI-Command: show\nContent-Length: 2\n\nok"
    assert EventDecoder().plain(body) == parse_plain_event(body)
    assert EventDecoder({"_body"}).plain(body) == {"Event-Name": "API", "Content-Length": "2", "_body": "ok"}
