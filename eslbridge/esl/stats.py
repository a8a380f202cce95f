"""Intake counters for one FreeSWITCH node (plain attributes: the metrics module exports them)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from eslbridge.ops.logs import LogOnce

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
    dead_links: int = 0  # connections closed because no whole frame (HEARTBEAT) came for 2 intervals
    streams_lost: Counter = field(default_factory=Counter)  # connections dropped on a framing error, by kind
    consumer_errors: int = 0
    calls_evicted: int = 0  # live calls the memory cap (max_live_calls) closed
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

    def lost_stream(self, kind: str) -> None:
        """The framing cannot be trusted any more (a lying Content-Length): the link is dropped and
        reconnected, which resyncs the calls whose events the lost bytes held."""
        self.streams_lost[kind] += 1
        self._log.warning("lost:" + kind, "%s: ESL stream unsynchronised by %s (%d so far): reconnecting",
                          self.node, kind, self.streams_lost[kind])

    def evicted(self, n: int, cap: int) -> None:
        """The live-call cap closed ``n`` calls (logged once, then at most once a minute)."""
        self.calls_evicted += n
        self._log.warning("evicted", "%s: more than %d live calls: closed the oldest as reconciled (%d so far); "
                          "raise max_live_calls if this node really carries that many", self.node, cap,
                          self.calls_evicted)

    def ignored(self, content_type: str) -> None:
        """Count a frame of a content type we do not use (log/data, disconnect-notice, ...): normal, not an error."""
        self.frames_ignored[content_type] += 1
        key = content_type if content_type in KNOWN_CONTENT_TYPES else "other"
        self._log.log("ct:" + key, logging.INFO, "%s: ignored frame %s (%d so far)", self.node,
                      content_type, self.frames_ignored[content_type])
