"""Fixture streams to replay byte for byte."""

from __future__ import annotations

from pathlib import Path

_EVENT_TYPES = (b"text/event-json", b"text/event-plain")


def frame_spans(data: bytes) -> list[tuple[int, int, bytes]]:
    """(start, end, content type) of every complete frame of a well-formed capture."""
    spans, pos = [], 0
    while True:
        while pos < len(data) and data[pos] in b" \r\n":
            pos += 1
        head_end = data.find(b"\n\n", pos)
        if head_end < 0:
            return spans
        headers = dict(
            line.split(b": ", 1) for line in data[pos:head_end].split(b"\n") if b": " in line
        )
        length = int(headers.get(b"Content-Length", b"0").strip() or 0)
        end = head_end + 2 + length
        if end > len(data):
            return spans
        spans.append((pos, end, headers.get(b"Content-Type", b"")))
        pos = end


def replay_bytes(path: str | Path, mode: str = "auto") -> bytes:
    """What to send after the handshake.

    mode "events": only the event frames of a capture (captured/*.esl hold the whole conversation,
    banner and replies included), as one unmodified byte range; "raw": the whole file (public
    streams, odd ones included); "auto": events for *.esl, raw otherwise.
    """
    data = Path(path).read_bytes()
    if mode == "auto":
        mode = "events" if str(path).endswith(".esl") else "raw"
    if mode == "raw":
        return data
    if mode != "events":
        raise ValueError(f"replay mode must be auto, events or raw, not {mode!r}")
    events = [(s, e) for s, e, ct in frame_spans(data) if ct in _EVENT_TYPES]
    if not events:
        return b""
    return data[events[0][0] : events[-1][1]]
