"""Incremental ESL frame parser: bytes in, frames out.

An ESL frame is a block of `Name: value` header lines ended by an empty line, followed by exactly
`Content-Length` bytes of body when that header is present. The parser keeps one bytearray and slices
bodies by Content-Length instead of reading line by line (greenswitch's readline loop is what makes it
slow), and it never decodes a body: bodies stay bytes until events.py parses them.

Bad input is counted per kind through `on_error(kind, detail)` and the parser resynchronises:

* ``garbage_line``: a header line without a colon (dropped);
* ``stray_prefix``: bytes glued before a header name, e.g. a typed ``uuid_transfer `` (cut off);
* ``bad_content_length``: non-numeric or negative Content-Length (frame dropped, body left to resync);
* ``oversized_content_length``: above MAX_BODY (4 MiB); the declared body is discarded as it streams in;
* ``no_content_type``: a header block without Content-Type (dropped);
* ``header_too_long``: no end of header block within MAX_HEADER bytes (discarded);
* ``invalid_utf8``: header bytes that are not UTF-8 (decoded with replacement characters);
* ``truncated``: bytes left over when the stream ends (see `close`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from urllib.parse import unquote

MAX_BODY = 4 * 1024 * 1024
MAX_HEADER = 64 * 1024

ErrorSink = Callable[[str, str], None]


class Frame:
    """One ESL message. `headers` are decoded (URL-decoded values); `body` is raw bytes."""

    __slots__ = ("body", "content_type", "headers")

    def __init__(self, headers: dict[str, str], body: bytes) -> None:
        self.headers = headers
        self.body = body
        self.content_type = headers.get("Content-Type", "")

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
    """Feed it socket bytes; it returns complete frames in order."""

    def __init__(self, on_error: ErrorSink | None = None) -> None:
        self.errors: Counter = Counter()
        self._on_error = on_error or _counter_sink(self.errors)
        self._buf = bytearray()
        self._pending: dict[str, str] | None = None  # headers of a frame whose body is still arriving
        self._need = 0
        self._discard = 0  # bytes of an oversized body still to throw away

    def _error(self, kind: str, detail: str = "") -> None:
        if self._on_error is not None:
            self._on_error(kind, detail)

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        end_all = len(buf)
        while True:
            if self._discard:
                take = min(self._discard, end_all - pos)
                pos += take
                self._discard -= take
                if self._discard:
                    break
            if self._pending is not None:
                if end_all - pos < self._need:
                    break
                frames.append(Frame(self._pending, bytes(buf[pos : pos + self._need])))
                pos += self._need
                self._pending = None
                continue
            # Skip blank lines and stray whitespace between frames (a leading space exists in the wild).
            while pos < end_all and buf[pos] in _WS:
                pos += 1
            if pos >= end_all:
                break
            end = buf.find(b"\n\n", pos)
            if end < 0:
                if end_all - pos > MAX_HEADER:
                    self._error("header_too_long", "")
                    pos = end_all
                break
            block = bytes(buf[pos:end])
            pos = end + 2
            headers = self._parse_headers(block)
            if headers is None:
                continue
            length = headers.get("Content-Length")
            if length is None:
                frames.append(Frame(headers, b""))
                continue
            if not length.isdigit():
                self._error("bad_content_length", length)
                continue
            n = int(length)
            if n > MAX_BODY:
                self._error("oversized_content_length", length)
                self._discard = n
                continue
            self._pending, self._need = headers, n
        del buf[:pos]
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
        leftover = len(self._buf.strip()) if self._pending is None else len(self._buf) + 1
        if leftover or self._discard:
            self._error("truncated", f"{len(self._buf)} bytes")
        self._buf.clear()
        self._pending = None
        self._discard = 0
        return leftover


def parse_stream(data: bytes, on_error: ErrorSink | None = None) -> list[Frame]:
    """Parse a complete byte stream (a capture file) into frames; leftovers count as truncated."""
    parser = FrameParser(on_error)
    frames = parser.feed(data)
    parser.close()
    return frames
