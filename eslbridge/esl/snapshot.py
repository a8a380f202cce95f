"""The body of `show channels as json` -> its rows, parsed a row at a time (sans-IO).

FreeSWITCH answers ``{"row_count": N, "rows": [{...}, ...]}`` (just ``{"row_count": 0}`` when no
channel is up). With 100,000 channels the body is tens of megabytes, and one ``json.loads`` of it
holds the process for over a second on a loaded host; parsed row by row (the standard library's
C scanner, ``raw_decode``), ``pause`` runs every ``every`` rows so the caller's event loop can
serve the directory and the ESL reader in between (DESIGN section 9).
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, pos: int) -> int:
    return _SPACE.match(text, pos).end()


def _expect(text: str, pos: int, char: str) -> int:
    """Past ``char`` (and the blanks around it) at ``pos``; ValueError if something else is there."""
    pos = _skip(text, pos)
    if not text.startswith(char, pos):
        raise ValueError(f"expected {char!r} at offset {pos}")
    return _skip(text, pos + 1)


@contextmanager
def no_full_collections() -> Iterator[None]:
    """Automatic garbage collection off meanwhile, what was built frozen afterwards: 100,000 rows
    (then live calls) make collections that each walk them all (over 100 ms), and they hold no
    reference cycles, so frozen they are still freed by reference counting."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def parse_snapshot(body: bytes, pause: Callable[[], None] = lambda: None, every: int = 1_000) -> list[dict]:
    """The rows (objects) of a `show channels as json` body; ValueError if it is not one.
    Invalid UTF-8 (a caller's name, say) is replaced, not fatal: one bad byte must not lose a resync."""
    text = body.decode("utf-8", "replace")
    pos = _expect(text, 0, "{")
    rows: list[dict] = []
    while not text.startswith("}", pos):
        key, pos = _DECODER.raw_decode(text, pos)
        if not isinstance(key, str):
            raise ValueError(f"object key is not a string at offset {pos}")
        pos = _expect(text, pos, ":")
        if key == "rows":
            pos = _rows(text, pos, rows, pause, every)
        else:
            _, pos = _DECODER.raw_decode(text, pos)
        pos = _skip(text, pos)
        if text.startswith(",", pos):
            pos = _skip(text, pos + 1)
        elif not text.startswith("}", pos):
            raise ValueError(f"expected ',' or '}}' at offset {pos}")
    if _skip(text, pos + 1) != len(text):
        raise ValueError("trailing data after the object")
    return rows


def _rows(text: str, pos: int, rows: list[dict], pause: Callable[[], None], every: int) -> int:
    if not text.startswith("[", pos):
        raise ValueError("rows is not a list")
    pos = _skip(text, pos + 1)
    if text.startswith("]", pos):
        return pos + 1
    n = 0
    while True:
        row, pos = _DECODER.raw_decode(text, pos)
        if isinstance(row, dict):
            rows.append(row)
        n += 1
        if n % every == 0:
            pause()
        pos = _skip(text, pos)
        if text.startswith("]", pos):
            return pos + 1
        pos = _expect(text, pos, ",")
