"""Incremental ESL frame parser: bytes in, frames out.

An ESL frame is a block of `Name: value` header lines ended by an empty line, followed by exactly
`Content-Length` bytes of body when that header is present. The parser keeps one bytearray and slices
bodies by Content-Length instead of reading line by line (greenswitch's readline loop is what makes it
slow), and it never decodes a body: bodies stay bytes until events.py parses them.

Bad input is counted per kind through `on_error(kind, detail)` and the parser resynchronises:

* ``garbage_line``: a header line without a colon (dropped);
* ``stray_prefix``: bytes glued before a header name, e.g. a typed ``uuid_transfer `` (cut off);
* ``bad_content_length``: non-numeric or negative Content-Length: where its body ends is unknowable, so
  the stream is lost (``desync`` is set, nothing more is parsed: the caller reconnects);
* ``oversized_content_length``: above MAX_BODY (4 MiB; MAX_REPLY, 128 MiB, for an ``api/response``
  while a command of ours waits for its reply: ``show channels`` at 100,000 channels is ~30 MB, an
  event is never that big); the declared body is discarded as it streams in, unless a frame header
  shows up inside it (the body is not really sent): then ``desync`` is set;
* ``no_content_type``: a header block without Content-Type (dropped);
* ``header_too_long``: no end of header block within MAX_HEADER bytes (discarded);
* ``invalid_utf8``: header bytes that are not UTF-8 (decoded with replacement characters);
* ``truncated``: bytes left over when the stream ends (see `close`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from urllib.parse import unquote

MAX_BODY = 4 * 1024 * 1024
# A reply to a command the daemon sent; ~300 bytes per `show channels` row: room for ~400,000 channels.
MAX_REPLY = 128 * 1024 * 1024
MAX_HEADER = 64 * 1024
MIN_FREE = 256 * 1024  # what `writable` guarantees by default: the most one recv_into may bring

ErrorSink = Callable[[str, str], None]

# The header block FreeSWITCH puts before every event, matched in one C call instead of a find, a
# decode and a split per frame (the block costs as much Python as a whole small event otherwise).
# No leading zero, at most 6 digits: the Content-Length string is then exactly str(len(body)).
_EVENT_HEAD = re.compile(rb"Content-Length: ([1-9][0-9]{0,5})\nContent-Type: (text/event-json|text/event-plain)\n\n")
_EVENT_TYPES = {b"text/event-json": "text/event-json", b"text/event-plain": "text/event-plain"}
# A header line at a line start inside a body being discarded: JSON escapes newlines and plain events
# URL-encode their values, so no real body holds one; the declared length was a lie.
_FRAME_HEADER_LINE = re.compile(rb"(?m)^Content-(?:Length|Type): ")


class Frame:
    """One ESL message. `headers` are decoded (URL-decoded values); `body` is raw bytes."""

    __slots__ = ("_headers", "body", "content_type")

    def __init__(self, headers: dict[str, str] | None, body: bytes, content_type: str = "") -> None:
        # headers None: an event frame whose block was exactly Content-Length + Content-Type (built on use).
        self._headers = headers
        self.body = body
        self.content_type = headers.get("Content-Type", "") if headers is not None else content_type

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = {"Content-Length": str(len(self.body)), "Content-Type": self.content_type}
        return self._headers

    @property
    def data(self) -> str:
        """The body as text (greenswitch's attribute name, so its `authenticate` works on our frames)."""
        return self.body.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"Frame({self.content_type!r}, {len(self.body)} bytes)"


def _counter_sink(counter: Counter) -> ErrorSink:
    def sink(kind: str, detail: str = "") -> None:
        counter[kind] += 1

    return sink


_WS = b" \t\r\n"
_FRAMING = ("Content-Length", "Content-Type")


class FrameParser:
    """Bytes in, complete frames out, in order.

    Either `feed(data)`, or, without the copy, `with parser.writable() as view: n = sock.recv_into(view)`
    then `parser.commit(n)`. One buffer is reused for the whole connection: bodies are copied out of it
    once (`bytes`), and only the tail of an incomplete frame is ever moved.
    """

    def __init__(self, on_error: ErrorSink | None = None, size: int = 4 * MIN_FREE,
                 awaiting_reply: Callable[[], bool] = lambda: False) -> None:
        self.errors: Counter = Counter()
        self._awaiting_reply = awaiting_reply  # true while a command we sent waits for its reply
        self._size = size
        self._on_error = on_error or _counter_sink(self.errors)
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._start = 0  # first unparsed byte
        self._end = 0  # end of the bytes received
        self._pending: Frame | None = None  # a frame whose body (self._need bytes) is still arriving
        self._need = 0
        self._discard = 0  # bytes of an oversized body still to throw away
        self.desync: str | None = None  # the kind of error that lost the stream; nothing is parsed after it

    @property
    def receiving_reply(self) -> bool:
        """A body beyond MAX_BODY (a big command reply) is arriving."""
        return self._pending is not None and self._need > MAX_BODY

    def _error(self, kind: str, detail: str = "") -> None:
        if self._on_error is not None:
            self._on_error(kind, detail)

    def _lose_stream(self, kind: str) -> None:
        self.desync = kind
        self._pending, self._need, self._discard = None, 0, 0

    def writable(self, min_free: int = MIN_FREE) -> memoryview:
        """The free end of the buffer, at least `min_free` bytes (and, growing by at most its size per
        call, room for a pending body); release it (``with``) before calling `commit`."""
        live = self._end - self._start
        body = self._need - live if self._pending is not None else 0
        want = max(min_free, body)
        if len(self._buf) - self._end < want:
            if self._start:
                self._buf[:live] = self._buf[self._start : self._end]
                self._start, self._end = 0, live
            # A body's room grows by at most the buffer's size per call: zero-filling a 30 MB reply's
            # room in one go holds the loop for ~50 ms; the rest is added as the body arrives.
            grow = live + max(min_free, min(body, len(self._buf))) - len(self._buf)
            if grow > 0:
                self._view.release()
                self._buf += bytes(grow)
                self._view = memoryview(self._buf)
        return self._view[self._end :]

    def feed(self, data: bytes) -> list[Frame]:
        n = len(data)
        with self.writable(n) as view:
            view[:n] = data
        return self.commit(n)

    def commit(self, n: int) -> list[Frame]:
        """`n` more bytes were written to the `writable` view: parse what is complete."""
        self._end += n
        buf, view, end = self._buf, self._view, self._end
        pos = self._start
        frames: list[Frame] = []
        match = _EVENT_HEAD.match
        while self.desync is None:
            if self._discard:
                take = min(self._discard, end - pos)
                if _FRAME_HEADER_LINE.search(buf, pos, pos + take):
                    self._lose_stream("oversized_content_length")  # (counted when its header came)
                    break
                pos += take
                self._discard -= take
                if self._discard:
                    break
            if self._pending is not None:  # (a body of 0 bytes is complete even at the end of the data)
                if end - pos < self._need:
                    break
                self._pending.body = view[pos : pos + self._need].tobytes()
                frames.append(self._pending)
                pos += self._need
                self._pending = None
                continue
            head = match(buf, pos, end)  # bytes past `end` are stale
            if head is not None:  # the common case: an event frame
                size = int(head[1])
                frame = Frame(None, b"", _EVENT_TYPES[head[2]])
                pos = head.end()
                if end - pos >= size:
                    frame.body = view[pos : pos + size].tobytes()
                    frames.append(frame)
                    pos += size
                else:
                    self._pending, self._need = frame, size
                continue
            # Skip blank lines and stray whitespace between frames (a leading space exists in the wild).
            while pos < end and buf[pos] in _WS:
                pos += 1
            if pos >= end:
                break
            stop = buf.find(b"\n\n", pos, end)
            if stop < 0:
                if end - pos > MAX_HEADER:
                    self._error("header_too_long", "")
                    pos = end
                break
            block = view[pos:stop].tobytes()
            pos = stop + 2
            headers = self._parse_headers(block)
            if headers is None:
                continue
            length = headers.get("Content-Length")
            if length is None:
                frames.append(Frame(headers, b""))
                continue
            if not length.isdigit():
                self._error("bad_content_length", length)
                self._lose_stream("bad_content_length")
                break
            size = int(length)
            if size > MAX_BODY and not (size <= MAX_REPLY and headers["Content-Type"] == "api/response"
                                        and self._awaiting_reply()):
                self._error("oversized_content_length", length)
                self._discard = size
                continue
            self._pending, self._need = Frame(headers, b""), size
        if pos >= end or self.desync is not None:
            self._start = self._end = 0
            if len(self._buf) > 4 * self._size and self._pending is None:  # a big reply's room, given back
                self._view.release()
                self._buf = bytearray(self._size)
                self._view = memoryview(self._buf)
        else:
            self._start = pos
        return frames

    def _parse_headers(self, block: bytes) -> dict[str, str] | None:
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            self._error("invalid_utf8", "frame headers")
            text = block.decode("utf-8", "replace")
        headers: dict[str, str] = {}
        for line in text.split("\n"):
            name, sep, value = line.partition(":")
            if not sep:
                if line.strip():
                    self._error("garbage_line", line)
                continue
            name = name.strip()
            if " " in name or (name.endswith(_FRAMING) and name not in _FRAMING):
                # "uuid_transfer Content-Length: 720" (text typed into a captured session), or the
                # leftover of a body whose length was wrong glued to the next frame's first header.
                self._error("stray_prefix", name)
                name = name.rsplit(" ", 1)[-1]
                for known in _FRAMING:
                    if name.endswith(known):
                        name = known
            value = value.strip()
            if "%" in value:
                value = unquote(value)
            headers.setdefault(name, value)
        if "Content-Type" not in headers:
            if headers:
                self._error("no_content_type", ",".join(headers)[:80])
            return None
        return headers

    def close(self) -> int:
        """The stream ended: count what is left over as truncated; return the number of bytes dropped."""
        rest = self._view[self._start : self._end].tobytes()
        leftover = len(rest.strip()) if self._pending is None else len(rest) + 1
        if leftover or self._discard:
            self._error("truncated", f"{len(rest)} bytes")
        self._start = self._end = 0
        self._pending = None
        self._discard = 0
        return leftover


def parse_stream(data: bytes, on_error: ErrorSink | None = None) -> list[Frame]:
    """Parse a complete byte stream (a capture file) into frames; leftovers count as truncated."""
    parser = FrameParser(on_error)
    frames = parser.feed(data)
    parser.close()
    return frames
