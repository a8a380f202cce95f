"""Intake counters for one FreeSWITCH node (plain attributes: the metrics module exports them)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class IntakeStats:
    """What the ESL intake of one node has seen; every dict is kind/name -> count."""

    node: str = ""
    events_in: Counter = field(default_factory=Counter)  # by Event-Name ("CUSTOM sofia::register" for CUSTOM)
    parse_errors: Counter = field(default_factory=Counter)  # by kind, see framing.py / events.py
    frames_ignored: Counter = field(default_factory=Counter)  # by Content-Type (log/data, disconnect-notice, ...)
    overflows: int = 0  # items that did not fit the in-memory queue and went to the spill file
    spilled_bytes: int = 0
    reconnects: int = 0
    dead_links: int = 0  # connections closed because HEARTBEAT (any data) went silent
    consumer_errors: int = 0
    snapshots: int = 0
    bytes_in: int = 0
    queue_depth: int = 0
    connected: bool = False
    _last_logged: dict = field(default_factory=dict, repr=False)

    def error(self, kind: str, detail: str = "", every: float = 60.0) -> None:
        """Count a parse error and log it once per kind, then at most once per `every` seconds."""
        self.parse_errors[kind] += 1
        self._log_limited(kind, "%s: ESL input problem %s (%d so far) %s", every, detail)

    def ignored(self, content_type: str, every: float = 60.0) -> None:
        self.frames_ignored[content_type] += 1
        self._log_limited("ct:" + content_type, "%s: ignored frame %s (%d so far) %s", every, "")

    def _log_limited(self, key: str, fmt: str, every: float, detail: str) -> None:
        now = time.monotonic()
        last = self._last_logged.get(key)
        if last is None or now - last >= every:
            self._last_logged[key] = now
            count = self.parse_errors[key] if not key.startswith("ct:") else self.frames_ignored[key[3:]]
            log.warning(fmt, self.node, key.removeprefix("ct:"), count, detail[:200])
