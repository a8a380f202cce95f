"""Shared helpers for the ESL and simulator tests (real TCP sockets, the simulator in-process)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import gevent
import pytest

from eslbridge.esl.inbound import InboundClient
from eslbridge.sim.server import Simulator

PASSWORD = "ClueCon"


def summary_counts(path: Path) -> tuple[Counter, Counter]:
    """(events by Event-Name, CUSTOM subclasses) from a .summary file."""
    names, subclasses, target = Counter(), Counter(), None
    for line in path.read_text().splitlines():
        if line.startswith("wrote"):
            target = names
        elif line.startswith("CUSTOM subclasses:"):
            target = subclasses
        elif (m := re.match(r"^  (\S+)\s+(\d+)$", line)) and target is not None:
            target[m.group(1)] = int(m.group(2))
    return names, subclasses


class Collector:
    """The consumer and snapshot callables, recording what they get."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.snapshots: list[list] = []

    def __call__(self, node: str, event: dict) -> None:
        self.events.append(event)

    def snapshot(self, node: str, rows: list) -> None:
        self.snapshots.append(rows)

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        with gevent.Timeout(timeout, False):
            while not predicate():
                gevent.sleep(0.01)
            return True
        return False


@pytest.fixture
def sim():
    s = Simulator(PASSWORD, heartbeat_interval=0.5)
    s.start()
    yield s
    s.stop()


def make_client(sim: Simulator, collector: Collector, fmt: str = "json", **kw) -> InboundClient:
    kw.setdefault("heartbeat_interval", 0.5)
    kw.setdefault("backoff_min", 0.05)
    kw.setdefault("backoff_max", 0.2)
    kw.setdefault("command_timeout", 2.0)
    client = InboundClient(sim.host, sim.port, kw.pop("password", PASSWORD), "fs1", fmt, collector,
                           collector.snapshot, **kw)
    client.start()
    assert sim.wait_subscribed(5), "client never subscribed"
    assert collector.wait_for(lambda: collector.snapshots), "no resync snapshot"
    return client
