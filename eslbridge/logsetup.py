"""Logging to stdout for journald: one line per event, text or JSON (DESIGN section 10).

Newlines inside a message (tracebacks, or caller-controlled values such as a forged ``%0A``)
are escaped, so one event is always exactly one line and nobody can forge a log line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"  # journald adds the timestamp


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

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


class LogOnce:
    """Log each *kind* of message at most once per ``interval`` seconds (DESIGN section 5:
    bad input is "logged once per kind with rate limiting"). The next message of a kind after
    its quiet period says how many were suppressed. Keys must come from a small fixed set
    (e.g. ``"bad-json"``), never from input such as UUIDs, or the table grows without bound.
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, key: str, level: int, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` unless ``key`` was logged less than ``interval`` ago; True if logged."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg, args = msg + " (%d similar suppressed)", (*args, suppressed)
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: Any) -> bool:
        return self.log(key, logging.WARNING, msg, *args)

    def error(self, key: str, msg: str, *args: Any) -> bool:
        return self.log(key, logging.ERROR, msg, *args)
