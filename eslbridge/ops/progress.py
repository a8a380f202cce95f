"""Progress of long admin work (migrations, key rotation, retention): done/total and an ETA.

On a terminal one line is rewritten in place (carriage return) at most a few times per second;
otherwise (a pipe, a log file, journald) each step is a plain line of its own, so logs stay
readable and nothing ever holds a control character.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO

REDRAW_SECONDS = 0.2  # terminal redraws at most this often


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class Progress:
    """``p = Progress("re-encrypting calls", total)``; ``p.advance(n)`` per step; ``p.finish()``.

    ``total`` may be ``None`` when unknown (then no ETA). The stream defaults to stderr, so stdout
    stays the command's result.
    """

    def __init__(self, label: str, total: int | None, stream: IO[str] | None = None, unit: str = "",
                 clock: Callable[[], float] = time.monotonic, tty: bool | None = None) -> None:
        self.label = label
        self.total = total
        self.unit = f" {unit}" if unit else ""
        self.stream = stream or sys.stderr
        self.clock = clock
        self.tty = self.stream.isatty() if tty is None else tty
        self.done = 0
        self._start = clock()
        self._drawn = float("-inf")
        self._dirty = False  # a rewritten line is on the terminal and needs its newline

    def line(self) -> str:
        """The current state, e.g. ``migrating: 3/12 (25%), ETA 4s``."""
        if not self.total:
            return f"{self.label}: {self.done}{self.unit}"
        text = f"{self.label}: {self.done}/{self.total}{self.unit} ({100 * self.done // self.total}%)"
        elapsed = self.clock() - self._start
        if 0 < self.done < self.total and elapsed > 0:
            text += f", ETA {_duration(elapsed * (self.total - self.done) / self.done)}"
        return text

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done += n
        suffix = f" {note}" if note else ""
        if not self.tty:
            print(self.line() + suffix, file=self.stream, flush=True)
            return
        now = self.clock()
        if now - self._drawn >= REDRAW_SECONDS or (self.total and self.done >= self.total):
            self._drawn = now
            self.stream.write("\r\x1b[K" + self.line() + suffix)
            self.stream.flush()
            self._dirty = True

    def finish(self) -> None:
        """Ends the rewritten line on a terminal; a no-op for plain lines."""
        if self._dirty:
            self.stream.write("\n")
            self.stream.flush()
            self._dirty = False
