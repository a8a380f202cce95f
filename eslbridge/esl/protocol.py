"""The ESL command/reply exchange, sans-IO: commands as bytes out, frames in, each reply matched to
the command it answers. The inbound client, the outbound server and ``check-config`` all talk to
FreeSWITCH through it; sockets, timeouts and waiting stay with them.

FreeSWITCH answers commands strictly in the order they were sent (``command/reply``, or
``api/response`` for ``api``), so a FIFO of what is owed matches every reply, however many
commands are in flight and however many events are interleaved. The session opens with an
``auth/request`` banner, and ``auth <password>`` must be answered ``+OK accepted``.

An ESL command ends at the first empty line, so a CR or LF inside an argument would end it early
and start another command of the sender's choosing (a username ``x\\n\\nbgapi system id`` read from
the database, say). Every encoder here refuses such an argument, whatever its origin, with
``UnsafeCommand`` before a byte is written.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from enum import Enum
from typing import Generic, NamedTuple, TypeVar

from eslbridge.errors import EslBridgeError
from eslbridge.esl.framing import Frame

_BREAK = re.compile(r"[\r\n]")
_HEADER_NAME = re.compile(r"[A-Za-z0-9_-]+")


class UnsafeCommand(EslBridgeError, ValueError):
    """An ESL command argument that could forge another command (CR/LF, or a stray separator)."""


def _safe(value: str, what: str) -> str:
    if not isinstance(value, str) or _BREAK.search(value):
        raise UnsafeCommand(f"refused an ESL {what} holding a line break")
    return value


def encode(line: str) -> bytes:
    """One command line (``api show channels as json``, ``auth <password>``...) as sent on the wire."""
    return _safe(line, "command").encode("utf-8") + b"\n\n"


def verb_line(verb: str, *args: str) -> str:
    """``verb arg1 arg2``: each argument must be one non-empty word (no whitespace, no line break),
    so a value cannot shift the arguments after it either."""
    for arg in args:
        _safe(arg, "argument")
        if not arg or arg.split() != [arg]:
            raise UnsafeCommand(f"refused an ESL argument for {verb.split()[0]!r} that is not one word")
    return " ".join((verb, *args))


def sendmsg(headers: Iterable[tuple[str, str]]) -> bytes:
    """A ``sendmsg`` command with its header lines (``call-command: hangup``...)."""
    lines = ["sendmsg"]
    for name, value in headers:
        if not _HEADER_NAME.fullmatch(name):
            raise UnsafeCommand("refused an ESL sendmsg header name")
        lines.append(f"{name}: {_safe(value, 'header value')}")
    return "\n".join(lines).encode("utf-8") + b"\n\n"


def authenticated(reply: Frame) -> bool:
    """Whether the reply to ``auth`` accepted the password."""
    return reply.headers.get("Reply-Text") == "+OK accepted"


def accepted(reply: Frame) -> bool:
    """Whether a command's reply says it was accepted (``+OK ...``)."""
    return reply.headers.get("Reply-Text", "").startswith("+OK")


class Kind(Enum):
    """What a frame that is not a subscribed event means to the exchange."""

    BANNER = "auth/request"  # the session's first frame: authenticate now
    REPLY = "reply"  # a command's reply (``command/reply`` or ``api/response``)
    UNEXPECTED = "unexpected"  # a reply no command is waiting for
    REJECTED = "rejected"  # ``text/rude-rejection``: FreeSWITCH's ACL refused us
    NOISE = "noise"  # log lines, disconnect notices: nothing to do
    EVENT = "event"  # an event frame (the outbound socket skips them)
    UNKNOWN = "unknown"  # a content type this side of ESL does not know


_REPLY_TYPES = frozenset({"command/reply", "api/response"})
_EVENT_TYPES = frozenset({"text/event-json", "text/event-plain", "text/event-xml"})
_NOISE = frozenset({"log/data", "text/disconnect-notice"})

W = TypeVar("W")


class Received(NamedTuple, Generic[W]):
    kind: Kind
    waiter: W | None  # with REPLY: what the command's sender left to be told


class Exchange(Generic[W]):
    """The commands sent on one connection and the replies they are owed. ``W`` is whatever the
    caller wants back with the reply (an AsyncResult, a flag): this class never waits."""

    def __init__(self) -> None:
        self._owed: deque[W] = deque()

    def __len__(self) -> int:
        return len(self._owed)

    def command(self, line: str, waiter: W) -> bytes:
        """``line`` encoded (refused with UnsafeCommand before anything is owed), its reply owed to ``waiter``."""
        wire = encode(line)
        self._owed.append(waiter)
        return wire

    def message(self, wire: bytes, waiter: W) -> bytes:
        """An already encoded command (``sendmsg``), its reply owed to ``waiter``."""
        self._owed.append(waiter)
        return wire

    def receive(self, frame: Frame) -> Received[W]:
        ct = frame.content_type
        if ct in _REPLY_TYPES:
            if not self._owed:
                return Received(Kind.UNEXPECTED, None)
            return Received(Kind.REPLY, self._owed.popleft())
        if ct in _EVENT_TYPES:
            return Received(Kind.EVENT, None)
        if ct == "auth/request":
            return Received(Kind.BANNER, None)
        if ct == "text/rude-rejection":
            return Received(Kind.REJECTED, None)
        return Received(Kind.NOISE if ct in _NOISE else Kind.UNKNOWN, None)

    def abandon(self) -> list[W]:
        """The connection is gone: every waiter still owed a reply, removed."""
        owed, self._owed = list(self._owed), deque()
        return owed
