"""Logging to stdout for journald: one line per event, text or JSON (DESIGN section 10).

Newlines inside a message (tracebacks, or caller-controlled values such as a forged ``%0A``)
are escaped, so one event is always exactly one line and nobody can forge a log line. Text
lines start with a UTC timestamp, so a log file or a pipe read without journald still has one.

Rate limiting (``RateLimiter``) is the one mechanism behind both ``LogOnce`` (our own repeated
messages: bad input, database outages, refused requests) and ``RateLimitFilter`` (libraries'
loggers, e.g. psycopg's pool retrying a lost database every few seconds).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers of libraries that repeat themselves while the database is down.
RATE_LIMITED_LOGGERS = ("psycopg", "psycopg.pool")


def first_line(exc: BaseException) -> str:
    """An exception's first line: psycopg's primary message names host and port, never the password,
    while a server DETAIL line after it may quote row values (personal data)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def format(self, record: logging.LogRecord) -> str:
        return _one_line(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC ISO 8601), level, logger, msg (+ exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)  # json escapes newlines itself


def setup_logging(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Replace the root logger's handlers with one writing to ``stream`` (stdout by default)."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in RATE_LIMITED_LOGGERS:
        library = logging.getLogger(name)
        if not any(isinstance(f, RateLimitFilter) for f in library.filters):
            library.addFilter(RateLimitFilter())


class RateLimiter:
    """Admit each key at most once per ``interval`` seconds, counting what it held back. Keys must
    come from a small fixed set (e.g. ``"bad-json"`` or a format string), never from input such as
    UUIDs or addresses, or the table grows without bound."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[Any, float] = {}
        self._suppressed: dict[Any, int] = {}

    def admit(self, key: Any) -> str | None:
        """None: hold this one back. Else the suffix to append: ``""``, or ``" (N more in the last S s)"``
        when N were held back since the last admitted one, S seconds ago."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        return f" ({suppressed} more in the last {now - last:.0f} s)" if suppressed and last is not None else ""


class RateLimitFilter(logging.Filter):
    """A ``logging.Filter`` for a library's logger: one record per message format per interval."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._limiter = RateLimiter(interval, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        suffix = self._limiter.admit((record.name, record.levelno, str(record.msg)))
        if suffix is None:
            return False
        if suffix:
            record.msg = f"{record.getMessage()}{suffix}"
            record.args = None
        return True


class LogOnce:
    """Log each *kind* of message at most once per ``interval`` seconds (DESIGN section 5:
    bad input is "logged once per kind with rate limiting"; outages and refused requests too).
    The next message of a kind after its quiet period says how many were held back.
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self._limiter = RateLimiter(interval, clock)

    def log(self, key: str, level: int, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` unless ``key`` was logged less than ``interval`` ago; True if logged."""
        suffix = self._limiter.admit(key)
        if suffix is None:
            return False
        if suffix:
            msg, args = msg + "%s", (*args, suffix)
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: Any) -> bool:
        return self.log(key, logging.WARNING, msg, *args)

    def error(self, key: str, msg: str, *args: Any) -> bool:
        return self.log(key, logging.ERROR, msg, *args)
