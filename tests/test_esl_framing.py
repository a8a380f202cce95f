"""The pure parsers: captured and public fixture streams, segmentation, and every bad input kind."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from eslbridge.esl.events import EventParseError, event_key, parse_json_event, parse_plain_event
from eslbridge.esl.framing import MAX_BODY, FrameParser, parse_stream
from tests.esl_fixtures import summary_counts
from tests.paths import CAPTURED, PUBLIC, shared_public

CAPTURES = sorted(p.name for p in CAPTURED.glob("*.esl"))


def events_of(data: bytes, errors: Counter | None = None) -> list[dict]:
    errors = Counter() if errors is None else errors
    sink = lambda kind, detail="": errors.update([kind])  # noqa: E731
    out = []
    for frame in parse_stream(data, sink):
        if frame.content_type.startswith("text/event-"):
            try:
                parse = parse_json_event if frame.content_type == "text/event-json" else parse_plain_event
                out.append(parse(frame.body, sink))
            except EventParseError as exc:
                errors[exc.kind] += 1
    return out


@pytest.mark.parametrize("name", CAPTURES)
def test_captured_stream_matches_summary(name):
    errors = Counter()
    events = events_of((CAPTURED / name).read_bytes(), errors)
    names, subclasses = summary_counts(CAPTURED / name.replace(".esl", ".summary"))
    assert Counter(e["Event-Name"] for e in events) == names
    assert Counter(e["Event-Subclass"] for e in events if e["Event-Name"] == "CUSTOM") == subclasses
    assert not errors


@pytest.mark.parametrize("scenario", ["tone", "bridge-answer", "bridge-busy", "reject", "register", "auth-call"])
def test_json_and_plain_capture_parse_to_same_headers(scenario):
    as_json = events_of((CAPTURED / f"{scenario}.json.esl").read_bytes())
    as_plain = events_of((CAPTURED / f"{scenario}.plain.esl").read_bytes())
    assert len(as_json) == len(as_plain) > 0
    for j, p in zip(as_json, as_plain, strict=True):
        assert j == p


def test_segmented_feed_gives_same_frames():
    data = (CAPTURED / "bridge-answer.plain.esl").read_bytes()
    whole = [(f.headers, f.body) for f in parse_stream(data)]
    parser = FrameParser()
    pieces = []
    for i in range(0, len(data), 7):  # worse than any real TCP segmentation
        pieces.extend(parser.feed(data[i : i + 7]))
    assert [(f.headers, f.body) for f in pieces] == whole
    tcp = PUBLIC / "outboundsocket-ex__stream__1.stream"  # published as 1460-byte TCP segments
    parser = FrameParser()
    raw = tcp.read_bytes()
    frames = [f for i in range(0, len(raw), 1460) for f in parser.feed(raw[i : i + 1460])]
    assert [f.content_type for f in frames] == ["command/reply", "text/event-plain"]
    assert parse_plain_event(frames[1].body)["Application"] == "answer"


def test_percent_0a_cannot_forge_a_header():
    body = b"Event-Name: CHANNEL_CREATE\nCaller-Caller-ID-Name: Eve%0AHangup-Cause%3A%20FORGED\nUnique-ID: u1\n\n"
    event = parse_plain_event(body)
    assert event["Caller-Caller-ID-Name"] == "Eve\nHangup-Cause: FORGED"
    assert "Hangup-Cause" not in event


def test_duplicate_header_keeps_first():
    event = parse_plain_event(b"Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister\nEvent-Subclass: other\n\n")
    assert event_key(event) == "CUSTOM sofia::register"


def test_json_arrays_spelled_like_plain():
    event = parse_json_event(b'{"Event-Name":"X","variable_DP_MATCH":["a","b"]}')
    assert event["variable_DP_MATCH"] == "ARRAY::a|:b"


@pytest.mark.parametrize("body,kind", [
    (b'{"Event-Name": "X", "broken', "bad_json"),
    (b"[1, 2]", "bad_json"),
    (b'{"Unique-ID": "x"}', "no_event_name"),
])
def test_bad_json_raises_typed_error(body, kind):
    with pytest.raises(EventParseError) as exc:
        parse_json_event(body)
    assert exc.value.kind == kind


def test_invalid_utf8_is_counted_not_fatal():
    errors = Counter()
    sink = lambda kind, detail="": errors.update([kind])  # noqa: E731
    event = parse_json_event(b'{"Event-Name":"CHANNEL_CREATE","Caller-Caller-ID-Name":"\xff\xfe"}', sink)
    assert event["Caller-Caller-ID-Name"] == "\ufffd\ufffd"
    plain = parse_plain_event(b"Event-Name: CHANNEL_CREATE\nCaller-Caller-ID-Name: \xc3(%FF\n\n", sink)
    assert plain["Event-Name"] == "CHANNEL_CREATE"
    assert errors["invalid_utf8"] == 3


def _ev(body: bytes, ct: bytes = b"text/event-plain", length: bytes | None = None) -> bytes:
    length = str(len(body)).encode() if length is None else length
    return b"Content-Length: " + length + b"\nContent-Type: " + ct + b"\n\n" + body


GOOD = _ev(b"Event-Name: HEARTBEAT\n\n")


@pytest.mark.parametrize("bad,kind", [
    (b"hello there\nno colon here\n\n", "garbage_line"),
    (b"Content-Length: 3\n\n", "no_content_type"),
    (b"Content-Type: command/reply\nReply-Text: \xff\n\n", "invalid_utf8"),
])
def test_bad_frames_are_counted_and_parser_resyncs(bad, kind):
    parser = FrameParser()
    frames = parser.feed(GOOD + bad + GOOD)
    assert parser.errors[kind] >= 1
    heartbeats = [f for f in frames if f.content_type == "text/event-plain" and f.body.startswith(b"Event-Name: HEART")]
    assert len(heartbeats) == 2


@pytest.mark.parametrize("length", [b"12abc", b"-5", b"-1", b"", b"0x10", b"1e3"])
def test_untrustworthy_content_length_loses_the_stream(length):
    parser = FrameParser()
    frames = parser.feed(GOOD + _ev(b'{"Event-Name":"CHANNEL_CREATE"}', ct=b"text/event-json", length=length) + GOOD)
    assert parser.errors["bad_content_length"] == 1
    assert parser.desync == "bad_content_length"
    assert len(frames) == 1  # the frame before it; nothing after a lost boundary is trusted
    assert parser.feed(GOOD) == []


@pytest.mark.parametrize("length", [b"99999999999", str(MAX_BODY + 1).encode()])
def test_oversized_length_whose_body_is_not_sent_loses_the_stream(length):
    parser = FrameParser()
    frames = parser.feed(GOOD + _ev(b"", ct=b"text/event-json", length=length))
    frames += parser.feed(b'{"Event-Name":"CHANNEL_CREATE"}' + GOOD + GOOD)  # a short body, then real frames
    assert parser.errors["oversized_content_length"] == 1
    assert parser.desync == "oversized_content_length"
    assert len(frames) == 1


def test_oversized_content_length_is_skipped():
    parser = FrameParser()
    huge = MAX_BODY + 10
    frames = parser.feed(GOOD + _ev(b"", length=str(huge).encode()))
    frames += parser.feed(b"x" * huge)
    frames += parser.feed(GOOD)
    assert parser.errors["oversized_content_length"] == 1
    assert parser.desync is None
    assert len(frames) == 2


def test_header_block_without_end_is_bounded():
    parser = FrameParser()
    parser.feed(b"Content-Type: x\n" + b"a" * 70_000)
    assert parser.errors["header_too_long"] == 1
    assert parser.feed(b"\n\n" + GOOD)[-1].body == b"Event-Name: HEARTBEAT\n\n"


def test_truncated_final_frame_is_counted():
    parser = FrameParser()
    parser.feed(GOOD + GOOD[:-5])
    assert parser.close() > 0
    assert parser.errors["truncated"] == 1


def test_public_odd_streams():
    errors = Counter()
    # stray "uuid_transfer " typed before a frame (telnet capture)
    events = events_of((PUBLIC / "cgrates-fsock__stream__1.stream").read_bytes(), errors)
    assert len(events) == 45 and errors["stray_prefix"] == 1
    assert Counter(e["Event-Name"] for e in events)["CHANNEL_HANGUP_COMPLETE"] == 1
    # leading space before the first Content-Length
    assert [e["Event-Name"] for e in events_of((PUBLIC / "scala-esl__stream__1.stream").read_bytes())] == [
        "CHANNEL_HANGUP", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_EXECUTE_COMPLETE"]
    # Content-Length mismatch: declared 2763, 2762 present, last frame -> truncated, first still parsed
    errors = Counter()
    events = events_of((PUBLIC / "karan-esl-rs__stream__1.stream").read_bytes(), errors)
    assert [e["Application"] for e in events] == ["export"] and errors["truncated"] == 1
    errors = Counter()
    assert events_of((PUBLIC / "dotnetfreeswitch__CHANNEL_CALLSTATE__1.frame").read_bytes(), errors) == []
    assert errors["truncated"] == 1
    # truncated frames at the end of captured fragments
    for name in ("scala-esl__stream__2.stream", "scala-esl__stream__3.stream"):
        errors = Counter()
        assert events_of((PUBLIC / name).read_bytes(), errors)
        assert errors["truncated"] == 1


def test_public_corrupted_stream():
    """A deliberately corrupted stream: the intact CHANNEL_PARK survives, the damage is counted."""
    errors = Counter()
    events = events_of(shared_public("switchio__stream__2.stream").read_bytes(), errors)
    park = [e for e in events if e["Event-Name"] == "CHANNEL_PARK"]
    assert park and park[0]["Unique-ID"] == "8de782e0-83c9-11e7-af1b-001500e3e25c"
    assert errors["garbage_line"] >= 1 and errors["no_event_name"] == 1


def test_unknown_content_types_are_framed():
    kinds = {f.content_type for f in parse_stream((PUBLIC / "greenswitch__log-data__2.frame").read_bytes())}
    assert kinds == {"log/data"}


def test_disconnect_notice_is_framed():
    frame = shared_public("neventsocket__disconnect-notice__1.frame").read_bytes()
    assert {f.content_type for f in parse_stream(frame)} == {"text/disconnect-notice"}


def test_json_event_body_kept_under_body():
    frame = parse_stream((PUBLIC / "karan-esl-rs__stream__2.stream").read_bytes())[-1]
    event = parse_json_event(frame.body)
    assert event["Event-Name"] == "BACKGROUND_JOB" and event["_body"].startswith("+OK")
    assert json.loads(frame.body)["_body"] == event["_body"]


@pytest.mark.parametrize("awaiting", [True, False])
def test_a_reply_beyond_the_event_limit_is_read_only_when_a_command_waits_for_it(awaiting):
    """`show channels` of a busy node: a 6 MiB api/response, fed in recv-sized pieces."""
    parser = FrameParser(awaiting_reply=lambda: awaiting)
    body = b"r" * (6 * 1024 * 1024)
    stream = b"Content-Type: api/response\nContent-Length: %d\n\n" % len(body) + body + GOOD
    frames = []
    for i in range(0, len(stream), 65536):
        with parser.writable() as view:
            piece = stream[i:i + min(65536, len(view))]
            view[:len(piece)] = piece
        frames += parser.commit(len(piece))
    if awaiting:
        assert [f.content_type for f in frames] == ["api/response", "text/event-plain"]
        assert frames[0].body == body and not parser.errors
        assert not parser.receiving_reply and len(parser._buf) <= 4 * 1024 * 1024  # its room given back
    else:
        assert [f.content_type for f in frames] == ["text/event-plain"]
        assert parser.errors == {"oversized_content_length": 1}
    assert parser.desync is None
