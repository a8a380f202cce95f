"""Intake counters for one FreeSWITCH node (plain attributes: the metrics module exports them)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from eslbridge.logsetup import LogOnce

log = logging.getLogger(__name__)

# Content types FreeSWITCH sends; any other one is logged (and exported) under one key.
KNOWN_CONTENT_TYPES = frozenset(["log/data", "text/disconnect-notice", "text/rude-rejection",
                                 "command/reply", "api/response", "auth/request"])


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
    _log: LogOnce = field(default_factory=lambda: LogOnce(log), repr=False)

    def error(self, kind: str, detail: str = "") -> None:
        """Count a parse error; logged once per kind, then at most once a minute."""
        self.parse_errors[kind] += 1
        self._log.warning(kind, "%s: ESL input problem %s (%d so far) %s", self.node, kind,
                          self.parse_errors[kind], detail[:200])

    def ignored(self, content_type: str) -> None:
        """Count a frame of a content type we do not use (log/data, disconnect-notice, ...): normal, not an error."""
        self.frames_ignored[content_type] += 1
        key = content_type if content_type in KNOWN_CONTENT_TYPES else "other"
        self._log.log("ct:" + key, logging.INFO, "%s: ignored frame %s (%d so far)", self.node,
                      content_type, self.frames_ignored[content_type])
