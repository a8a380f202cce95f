"""The C-speed paths of intake give exactly what the plain, line-by-line definitions give, and decoding each
channel event with only its own headers gives the records and rows of reading every header of every event."""

from __future__ import annotations

import contextlib
import os
import random
from collections import Counter
from urllib.parse import unquote_to_bytes

import pytest

from eslbridge.calls import legs
from eslbridge.calls.correlator import Correlator
from eslbridge.calls.errors import EventError
from eslbridge.esl import events
from eslbridge.esl.events import EventDecoder, EventParseError, parse_json_event, parse_plain_event
from eslbridge.esl.framing import MIN_FREE, FrameParser, parse_stream
from eslbridge.esl.headers import EVENT_HEADERS, READ_HEADERS
from eslbridge.esl.spill import SpillQueue
from eslbridge.esl.stats import IntakeStats
from eslbridge.sim import calls as sim_calls
from tests.paths import CAPTURED, PUBLIC, RECORDED


def reference_plain(body: bytes) -> dict[str, str]:
    """DESIGN 5 spelled out: split lines, first header wins, then URL-decode each value on its own."""
    head = body.partition(b"\n\n")[0].decode("utf-8", "replace")
    event: dict[str, str] = {}
    for line in head.split("\n"):
        name, sep, value = line.partition(": ")
        if sep and name not in event:
            event[name] = unquote_to_bytes(value).decode("utf-8", "replace")
    return event


@pytest.mark.parametrize("scenario", ["tone", "bridge-answer", "bridge-busy", "reject", "register", "auth-call"])
def test_plain_fast_path_matches_reference_on_captures(scenario):
    frames = parse_stream((CAPTURED / f"{scenario}.plain.esl").read_bytes())
    bodies = [f.body for f in frames if f.content_type == "text/event-plain"]
    assert bodies
    for body in bodies:
        event = parse_plain_event(body)
        event.pop("_body", None)
        assert event == reference_plain(body)


@pytest.mark.parametrize("value", [
    "a%0Ab%0D%0Ac",  # encoded newlines stay inside the value
    "x%01y", "x\x01y",  # the joining separator, encoded and raw
    "100%", "%zz%2", "%%41",  # malformed escapes stay as they are
    "a=3Db=c", "=41", "_under_",  # quoted-printable look-alikes are not decoded
    "%E2%82%AC%e2%82%ac",  # UTF-8, both hex cases
    "%\r", "a%\rb", "=\r",  # a CR after the escape character (a line break to a2b_qp)
    "%", "%4", "x%", "=",  # escapes cut short at the end of the value
])
def test_plain_values_decode_like_urllib(value):
    body = f"Event-Name: CUSTOM\nA: pre%20fix\nValue: {value}\nB: %3Apost\nValue: second\n\n".encode()
    assert parse_plain_event(body) == reference_plain(body)


def test_plain_invalid_utf8_counted_per_bad_value():
    errors = Counter()
    body = b"Event-Name: X\nA: %FF\nB: ok%20\nC: %C3%28\n\n"
    event = parse_plain_event(body, _counting(errors))
    assert event == reference_plain(body)
    assert errors["invalid_utf8"] == 2


def test_plain_random_values_match_reference():
    rng = random.Random(7)
    alphabet = ["%", "%0A", "%01", "%41", "%e2%82%ac", "%FF", "=", "_", "a", " ", ":", "%3A%20", "\x01", "\t"]
    for _ in range(300):
        values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(5)]
        body = ("Event-Name: X\n" + "".join(f"H{i % 3}: {v}\n" for i, v in enumerate(values)) + "\n").encode()
        assert parse_plain_event(body) == reference_plain(body), values


def test_kept_values_decode_like_urllib_each_alone():
    # Kept values are URL-decoded in C through binascii.a2b_qp when no escape is malformed; whatever a value
    # holds (a CR after the escape character, a raw or encoded \x01, escapes cut short), it must come out
    # as urllib decodes it, with invalid UTF-8 counted per value.
    rng = random.Random(1)
    alphabet = ["%", "%4", "%41", "%0A", "%01", "\x01", "%FF", "%e2%82%ac", "=", "==", "%=", "=\r", "%\r", "\r", "é"]
    for _ in range(5000):
        values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4))) for _ in range(rng.randint(1, 4))]
        errors = Counter()
        decoded = events._unquote_values({f"H{i}": v for i, v in enumerate(values)}, _counting(errors))
        raw = [unquote_to_bytes(v) for v in values]
        assert list(decoded.values()) == [r.decode("utf-8", "replace") for r in raw], values
        assert errors["invalid_utf8"] == sum(not _is_utf8(r) for r in raw), values


def _counting(errors: Counter):
    return lambda kind, detail="": errors.update([kind])


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize(("body", "payload", "bad_utf8"), [
    (b"Event-Name: X\nA: a%0A%0Ab\n\n", None, 0),  # no payload: the whole body is the header text
    (b"Event-Name: X\nContent-Length: 9\n\nB: forged\n\n", "B: forged", 0),  # a payload is not headers
    (b"Event-Name: X\nContent-Length: 3\n\nok\n", "ok\n", 0),
    (b"Event-Name: X\nA: a\n\n\n", "\n", 0),  # a blank line after the headers is payload, not a header
    (b"Event-Name: X\nContent-Length: 2\n\n\xff\xfe\n\n", "\ufffd\ufffd", 0),  # bad bytes only in the payload
    (b"Event-Name: X\nA: \xffz\n\n", None, 1),  # bad bytes in a header line: counted once
])
def test_plain_header_text_ends_at_the_first_blank_line(body, payload, bad_utf8):
    errors = Counter()
    event = parse_plain_event(body, _counting(errors))
    assert event.pop("_body", None) == payload
    assert event == reference_plain(body)
    assert EventDecoder({"A", "B"}).plain(body) == {k: v for k, v in event.items() if k in ("Event-Name", "A", "B")}
    assert errors["invalid_utf8"] == bad_utf8


def test_plain_odd_lines_take_the_careful_path():
    errors = Counter()
    body = b"Event-Name: X\nNoSpace:v%41\ngarbage\nTwo: a: b\n\n"
    event = parse_plain_event(body, _counting(errors))
    assert event == {"Event-Name": "X", "NoSpace": "vA", "Two": "a: b"}
    assert errors["garbage_line"] == 1


def test_plain_wanted_lines_match_reference_on_random_names():
    # The wanted lines are found by a trie regex: names that are prefixes of one another, of unwanted
    # names, repeated, first or last, with more ": " in the value, with escapes; and the same body
    # through the careful path (a line without ": ").
    rng = random.Random(11)
    pool = ["A", "AB", "ABC", "AC", "B", "Event-Name", "Event-Name-X", "variable_a", "variable_ab", "x-y.z", "A B"]
    for _ in range(300):
        wanted = set(rng.sample(pool, rng.randint(1, len(pool))))
        lines = [f"{rng.choice(pool)}: {rng.choice(['v', 'v%20w', 'a: b', '', '%0AA: forged'])}"
                 for _ in range(rng.randint(1, 12))]
        for extra in ([], ["garbage"]):
            body = ("\n".join(["Event-Name: X", *lines, *extra]) + "\n\n").encode()
            expected = {k: v for k, v in reference_plain(body).items() if k in wanted | {"Event-Name"}}
            assert EventDecoder(wanted).plain(body) == expected, (wanted, lines, extra)


def reference_wanted(body: bytes, wanted: set[str]) -> tuple[dict[str, str], int]:
    """The careful definition, line by line: a line's name ends at its first ": ", else at its first ":"
    ("Name:value"), else the line is garbage (counted unless blank); the first of a repeated name wins;
    values URL-decoded. Returns the wanted headers and the number of garbage lines."""
    head = body.partition(b"\n\n")[0].decode("utf-8", "replace")
    event: dict[str, str] = {}
    garbage = 0
    for line in head.split("\n"):
        name, sep, value = line.partition(": ")
        if not sep:
            name, sep, value = line.partition(":")
        if not sep:
            garbage += bool(line.strip())
        elif name in wanted and name not in event:
            event[name] = unquote_to_bytes(value).decode("utf-8", "replace")
    return event, garbage


# Line shapes: FreeSWITCH's own ("Name: value", its value URL-encoded) and every way a hostile line can
# break or mimic that layout, alone or compensating one another (two ": " on one line, none on another).
LINE_SHAPES = ["{n}: v", "{n}: v%20w%3A", "{n}: ", "{n}:v", "{n}:x y", "{n}: a: b", "{n}:a: b", "{n} :v", "{n}: a b",
               "{n}::v", "{n}: :", "garbage", "", " ", "{n}: a%0A{n}: forged", "{n}: \r", "{n}: \udcff", "{n}: %FF"]


def test_plain_layout_proof_matches_the_careful_definition():
    # The wanted lines of a body laid out as FreeSWITCH writes it are found without cutting the body into
    # lines; every other layout must give what the line-by-line definition gives, garbage counted.
    rng = random.Random(18)
    pool = ["A", "AB", "B", "x-y.z", "A B", "A:B", "variable_a"]
    endings = ["\n\n", "\n", "", "\n\n\n", "\n\nB: after", "\n\n: \n", "\n\npayload"]
    for _ in range(3000):
        wanted = set(rng.sample([*pool, "_body"], rng.randint(1, len(pool)))) | {"Event-Name"}
        lines = [rng.choice(LINE_SHAPES).format(n=rng.choice(pool)) for _ in range(rng.randint(0, 6))]
        body = ("\n".join(["Event-Name: X", *lines]) + rng.choice(endings)).encode("utf-8", "surrogateescape")
        errors = Counter()
        got = EventDecoder(wanted).plain(body, _counting(errors))
        expected, garbage = reference_wanted(body, wanted | ({"Content-Length"} if "_body" in wanted else set()))
        if "_body" in wanted and "_body" in (full := parse_plain_event(body)):
            expected["_body"] = full["_body"]
        assert (got, errors["garbage_line"]) == (expected, garbage), (wanted, body)


def test_freeswitch_events_never_take_the_careful_path(monkeypatch):
    # Every captured FreeSWITCH event proves its layout; the line-by-line path is for anything else.
    def careful(*args):
        raise AssertionError("careful path taken")

    captured = (str(CAPTURED), str(SHARED_CAPTURED), str(RECORDED))  # not the public files: trimmed by hand
    bodies = [body for path, stream in _file_streams().items() if path.startswith(captured)
              for content_type, body in stream if content_type == "text/event-plain"]
    expected = [FAST.plain(body) for body in bodies]
    monkeypatch.setattr(events, "_head_lines", careful)
    assert len(bodies) > 150
    assert [FAST.plain(body) for body in bodies] == expected


def test_json_non_string_values_are_flattened():
    event = parse_json_event(b'{"Event-Name":"X","n":5,"z":null,"t":true,"a":["x",1],"s":"ok"}')
    assert event == {"Event-Name": "X", "n": "5", "z": "", "t": "true", "a": "ARRAY::x|:1", "s": "ok"}


def _event_frame(i: int, size: int) -> bytes:
    body = (f"Event-Name: HEARTBEAT\nEvent-Sequence: {i}\nPad: " + "p" * size + "\n\n").encode()
    return b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body


def test_recv_into_path_across_buffer_growth():
    # Frames bigger than the buffer, split at every odd place, through writable()/commit().
    stream = b"".join(_event_frame(i, size) for i, size in enumerate([10, 3 * MIN_FREE, 5, 9 * MIN_FREE, 0]))
    parser = FrameParser(size=1024)
    frames, pos, rng = [], 0, random.Random(3)
    while pos < len(stream):
        with parser.writable(1) as view:
            take = min(len(view), rng.randint(1, 2 * MIN_FREE), len(stream) - pos)
            view[:take] = stream[pos : pos + take]
        frames += parser.commit(take)
        pos += take
    assert [parse_plain_event(f.body)["Event-Sequence"] for f in frames] == ["0", "1", "2", "3", "4"]
    assert [(f.headers, f.body) for f in frames] == [(f.headers, f.body) for f in parse_stream(stream)]
    assert parser.close() == 0


def test_stale_bytes_beyond_the_data_are_never_parsed():
    parser = FrameParser()
    first = _event_frame(1, 50)
    assert len(parser.feed(first)) == 1
    # The buffer still holds `first` past the new end: "Content-Length: 1" must wait for its digits.
    assert parser.feed(first[:17]) == []
    assert parse_plain_event(parser.feed(first[17:])[0].body)["Event-Sequence"] == "1"


def test_spill_queue_batches_keep_order_and_count_held_batch(tmp_path):
    stats = IntakeStats()
    queue = SpillQueue(5, stats, str(tmp_path))
    queue.put_many([(1, b"a"), (1, b"b"), (1, b"c")])
    batch = queue.get_batch(0)
    assert batch == [(1, b"a"), (1, b"b"), (1, b"c")]
    assert len(queue) == 3  # held by the consumer until it asks again
    queue.put_many([(1, b"d"), (1, b"e"), (1, b"f")])  # room for 2: f is spilled
    queue.put(2, b"g")  # spilling: g follows f into the file
    assert stats.overflows == 2 and len(queue) == 7
    got = []
    while (batch := queue.get_batch(0)) is not None:
        got += batch
    assert [p for _, p in got] == [b"d", b"e", b"f", b"g"]
    assert got[-1][0] == 2
    assert len(queue) == 0 and stats.queue_depth == 0
    queue.close()


def test_spilled_events_are_sealed_on_disk_and_come_back_in_order(tmp_path):
    stats = IntakeStats()
    queue = SpillQueue(1, stats, str(tmp_path))
    events = [(1, b'{"Caller-Caller-ID-Number":"+15551239999","n":%d}' % i) for i in range(2000)]
    queue.put_many(events)
    queue._flush()
    on_disk = os.pread(queue._fd, 1 << 24, 0)
    assert stats.overflows == len(events) - 1 and len(on_disk) > 2000 * 40
    assert b"5551239999" not in on_disk and b"Caller" not in on_disk
    for _ in range(2):  # drained, the file starts over; the next backlog is sealed too
        got = []
        while (batch := queue.get_batch(0)) is not None:
            got += batch
        assert got == events
        queue.put_many(events)
    queue.close()


# ---------------------------------------------------------------- per event name: decode and correlate

FAST = EventDecoder(READ_HEADERS, EVENT_HEADERS)  # what InboundClient decodes with
FULL = {"text/event-json": parse_json_event, "text/event-plain": parse_plain_event}
NARROW = {"text/event-json": FAST.json, "text/event-plain": FAST.plain}
SHARED_CAPTURED = CAPTURED.parents[3] / "shared" / "fixtures" / "captured"


def _file_streams() -> dict[str, list[tuple[str, bytes]]]:
    """Every captured and recorded call (the repository's and ../shared's) and public event file."""
    streams, seen = {}, set()
    paths = [*sorted(CAPTURED.glob("*.esl")), *sorted(SHARED_CAPTURED.glob("*.esl")), *sorted(RECORDED.glob("*.esl")),
             *sorted(PUBLIC.glob("*.stream")), *sorted(PUBLIC.glob("*.frame")), *sorted(PUBLIC.glob("*.json-frame"))]
    for path in paths:
        data = path.read_bytes()
        if data not in seen:
            seen.add(data)
            frames = parse_stream(data, lambda kind, detail="": None)
            streams[str(path)] = [(f.content_type, f.body) for f in frames if f.content_type in FULL]
    for path in sorted(PUBLIC.glob("*.plain")):
        streams[str(path)] = [("text/event-plain", path.read_bytes())]
    return streams


def _sim_streams() -> dict[str, list[tuple[str, bytes]]]:
    """The simulator's calls of every scenario (transfers, originate, ...), each format, in event order."""
    streams = {}
    for name in sim_calls.SCENARIOS:
        planned = sorted(sim_calls.plan_call(name, 1_790_000_000_000_000, "core-1", [1]), key=lambda ev: ev.at_us)
        for fmt in ("json", "plain"):
            streams[f"sim {name} {fmt}"] = [(f"text/event-{fmt}", ev.render(fmt)) for ev in planned]
    return streams


STREAMS = {**_file_streams(), **_sim_streams()}


def test_each_event_decodes_at_least_its_own_headers_as_the_full_parse_does():
    narrowed = 0
    for content_type, body in (item for stream in STREAMS.values() for item in stream):
        try:
            full = FULL[content_type](body)
        except EventParseError as exc:
            with pytest.raises(EventParseError) as raised:
                NARROW[content_type](body)
            assert raised.value.kind == exc.kind
            continue
        fast = NARROW[content_type](body)
        own = EVENT_HEADERS.get(full["Event-Name"], READ_HEADERS)
        assert {k: v for k, v in full.items() if k in own}.items() <= fast.items()
        assert fast.items() <= {k: v for k, v in full.items() if k in READ_HEADERS}.items()
        narrowed += set(fast) <= own < READ_HEADERS
    assert narrowed > 200  # FreeSWITCH's own events take the narrow path


@pytest.fixture
def every_header_on_every_event(monkeypatch):
    """The correlator as it was before it read per event name: every leg field from every channel event."""
    def patch() -> None:
        monkeypatch.setattr(legs, "_FOLD", tuple((s, h, i, legs.CHANNEL_EVENTS) for s, h, i, _ in legs._FOLD))
        monkeypatch.setattr(legs, "_HANGUP", legs.CHANNEL_EVENTS)
        monkeypatch.setattr(legs, "_TAKE_NEWEST", {n: legs._compile_take_newest(n) for n in legs.CHANNEL_EVENTS})
    return patch


def _correlate(stream: list[tuple[str, bytes]], decode: dict) -> list:
    correlator, out = Correlator("fs1", lambda user, realm: f"{user}@{realm}"), []
    for content_type, body in stream:
        try:
            event = decode[content_type](body)
        except EventParseError:
            continue
        with contextlib.suppress(EventError):  # a public fixture's odd event fails the same way in both
            out += correlator.feed(event)
    out += correlator.close_unheard()
    return out


def test_records_and_stored_rows_are_those_of_reading_every_header(every_header_on_every_event):
    fast = {name: _correlate(stream, NARROW) for name, stream in STREAMS.items()}
    every_header_on_every_event()
    reference = {name: _correlate(stream, FULL) for name, stream in STREAMS.items()}
    assert sum(len(updates) for updates in reference.values()) > 100
    assert sum(1 for u in reference.values() for update in u if update.events) > 50
    for name in STREAMS:
        # CallRecord, Stage and each LifecycleEvent's data (call_events.event_data).
        assert fast[name] == reference[name], name


def _json_event(*pairs: tuple[str, str]) -> bytes:
    return ("{" + ",".join(f'"{k}":"{v}"' for k, v in pairs) + "}").encode()


CREATE_HEADERS = (("Unique-ID", "u1"), ("Event-Sequence", "5"), ("variable_sip_from_uri", "sip:a@b"),
                  ("variable_billsec", "9"), ("x-unread", "x"))


@pytest.mark.parametrize(("body", "expected_name", "narrow"), [
    (_json_event(("Event-Name", "CHANNEL_BRIDGE"), *CREATE_HEADERS), "CHANNEL_BRIDGE", True),
    (_json_event(("Event-Name", "CHANNEL_CREATE"), *CREATE_HEADERS), "CHANNEL_CREATE", True),
    (_json_event(("Event-Name", "NOT_A_CHANNEL_EVENT"), *CREATE_HEADERS), "NOT_A_CHANNEL_EVENT", False),
    (_json_event(*CREATE_HEADERS[:2], ("Event-Name", "CHANNEL_BRIDGE"), *CREATE_HEADERS[2:]), "CHANNEL_BRIDGE",
     False),  # not first: not peeked
    (_json_event(("Event-Name", "CHANNEL\\u005fBRIDGE"), *CREATE_HEADERS), "CHANNEL_BRIDGE", False),  # escaped
    # A second Event-Name overrides the first in JSON: the one peeked is not the one decoded.
    (_json_event(("Event-Name", "CHANNEL_BRIDGE"), *CREATE_HEADERS, ("Event-Name", "CHANNEL_CREATE")),
     "CHANNEL_CREATE", False),
    (_json_event(("Event-Name", "CHANNEL_BRIDGE")).replace(b'"}', b'"'), None, False),  # cut short: bad JSON
    (b'{"Event-Name":"CHANNEL_BRIDGE', None, False),
])
def test_json_event_names_peeked_or_not(body, expected_name, narrow):
    if expected_name is None:
        with pytest.raises(EventParseError) as raised:
            FAST.json(body)
        assert raised.value.kind == "bad_json"
        return
    full = parse_json_event(body)
    own = EVENT_HEADERS[expected_name] if narrow else READ_HEADERS
    assert FAST.json(body) == {k: v for k, v in full.items() if k in own}
    assert full["Event-Name"] == expected_name


@pytest.mark.parametrize(("first", "narrow"), [
    ("Event-Name: CHANNEL_BRIDGE\n", "CHANNEL_BRIDGE"),
    ("Event-Name: CHANNEL_CREATE\n", "CHANNEL_CREATE"),
    ("Event-Name: NOT_A_CHANNEL_EVENT\n", None),
    ("Event-Name: CHANNEL%5FBRIDGE\n", None),  # encoded: told only once decoded, so every wanted header
    ("Core-UUID: c\nEvent-Name: CHANNEL_BRIDGE\n", None),  # not first: not peeked
    ("Event-Name: CHANNEL_BRIDGE\nEvent-Name: CHANNEL_CREATE\n", "CHANNEL_BRIDGE"),  # the first wins, as peeked
])
def test_plain_event_names_peeked_or_not(first, narrow):
    body = (first + "".join(f"{k}: {v}\n" for k, v in CREATE_HEADERS) + "\n").encode()
    full = parse_plain_event(body)
    own = EVENT_HEADERS[narrow] if narrow else READ_HEADERS
    assert FAST.plain(body) == {k: v for k, v in full.items() if k in own}


@pytest.mark.parametrize(("body", "decoders"), [
    (b"Unique-ID: u1\nEvent-Sequence: 5\n\n", (parse_plain_event, FAST.plain)),
    (b'{"Unique-ID":"u1","Event-Sequence":"5"}', (parse_json_event, FAST.json)),
])
def test_event_without_a_name_is_refused_as_before(body, decoders):
    for decode in decoders:
        with pytest.raises(EventParseError) as raised:
            decode(body)
        assert raised.value.kind == "no_event_name"
