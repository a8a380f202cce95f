"""ESL commands as bytes (sans-IO), the one place every command sent to FreeSWITCH is encoded.

An ESL command ends at the first empty line, so a CR or LF inside an argument would end it early
and start another command of the sender's choosing (a username ``x\\n\\nbgapi system id`` read from
the database, say). Every encoder here refuses such an argument, whatever its origin, with
``UnsafeCommand`` before a byte is written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from eslbridge.errors import EslBridgeError

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
