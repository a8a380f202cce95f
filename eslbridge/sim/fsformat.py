"""FreeSWITCH's wire spellings: event bodies (json, plain) and ESL frames.

Checked byte for byte against the captures in tests/fixtures/captured (tests/test_sim_calls.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

# switch_utils.h SWITCH_URL_UNSAFE; switch_url_encode also escapes control and non-ASCII bytes.
_UNSAFE = "\r\n #%&+:;<=>?@[\\]^`{|}\""
_SAFE = "".join(chr(c) for c in range(33, 127) if chr(c) not in _UNSAFE)


def fs_url_encode(value: str) -> str:
    return quote(value, safe=_SAFE)


def json_body(event: dict[str, str | list] | list[tuple[str, str | list]]) -> bytes:
    """cJSON_PrintUnformatted's spelling: no spaces, UTF-8 as is. Takes pairs too, because FreeSWITCH
    repeats a few headers (Channel-Write-Codec-Name) and a dict would lose the repeat."""
    items = event.items() if isinstance(event, dict) else event
    dump = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    return ("{" + ",".join(dump(k) + ":" + dump(v) for k, v in items) + "}").encode("utf-8")


def _plain_value(value: str | list) -> str:
    if isinstance(value, list):
        value = "ARRAY::" + "|:".join(value)
    return fs_url_encode(value)


def plain_body(event: dict[str, str | list]) -> bytes:
    """`Name: url-encoded value` lines, a blank line, then `_body` if the event has one."""
    body = event.get("_body")
    lines = "".join(f"{k}: {_plain_value(v)}\n" for k, v in event.items() if k != "_body")
    return (lines + "\n" + (body or "")).encode("utf-8")


def frame(content_type: str, body: bytes = b"", **headers: str) -> bytes:
    """One ESL frame; Content-Length first as FreeSWITCH writes event frames."""
    head = f"Content-Length: {len(body)}\n" if body else ""
    head += f"Content-Type: {content_type}\n"
    head += "".join(f"{k.replace('_', '-')}: {v}\n" for k, v in headers.items())
    return head.encode("utf-8") + b"\n" + body


def reply(text: str, **headers: str) -> bytes:
    """A command/reply frame (no body)."""
    head = f"Content-Type: command/reply\nReply-Text: {text}\n"
    head += "".join(f"{k.replace('_', '-')}: {v}\n" for k, v in headers.items())
    return head.encode("utf-8") + b"\n"


def event_frame(fmt: str, body: bytes) -> bytes:
    return b"Content-Length: %d\nContent-Type: text/event-%s\n\n" % (len(body), fmt.encode()) + body


AUTH_REQUEST = b"Content-Type: auth/request\n\n"
DISCONNECT_MESSAGE = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
DISCONNECT_NOTICE = frame("text/disconnect-notice", DISCONNECT_MESSAGE)
RUDE_REJECTION = frame("text/rude-rejection", b"Access Denied, go away.\n")


def read_commands(sock) -> Iterator[str]:
    """Commands a client sends FreeSWITCH (each ends with a blank line), until the socket closes."""
    buf = b""
    while chunk := sock.recv(65536):
        buf += chunk
        while b"\n\n" in buf:
            raw, buf = buf.split(b"\n\n", 1)
            yield raw.decode("utf-8", "replace").strip()
