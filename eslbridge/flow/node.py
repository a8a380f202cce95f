"""One FreeSWITCH node's flow (DESIGN section 1): what each ESL event and snapshot becomes.

    InboundClient --> on_event --> sofia::register --> LoginRecorder
                               --> Correlator --> Writer.submit (closures: Resync.close)
                  --> on_snapshot --> Resync.run (retried once PostgreSQL is back)

Runs in the node's consumer greenlet, so nothing here may wait on PostgreSQL, with one exception
made on purpose: before the first event is correlated, intake waits for the user index's first
load (see ``_await_users``). The live-call cap applies here too: it is per node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event

from eslbridge.accounts.registrations import LoginRecorder, login_from_event
from eslbridge.accounts.userindex import UserIndex
from eslbridge.calls.correlator import Correlator
from eslbridge.calls.errors import EventError
from eslbridge.calls.records import RecordUpdate
from eslbridge.config import NodeConfig
from eslbridge.esl.inbound import InboundClient
from eslbridge.esl.nodemap import NodeMap
from eslbridge.esl.stats import IntakeStats
from eslbridge.ops.metrics import Metrics
from eslbridge.store.resync import Resync
from eslbridge.store.writer import Writer

log = logging.getLogger(__name__)

CAP_REASON = "closed by the live-call cap (freeswitch[].max_live_calls) while still up"
RESYNC_RETRY_SECONDS = 5.0  # a resync that could not read or close Active rows asks again after this,
# or once PostgreSQL is back


@dataclass(frozen=True)
class Shared:
    """What every node's flow hands its results to."""

    writer: Writer
    resync: Resync
    users: UserIndex
    logins: LoginRecorder
    node_map: NodeMap
    metrics: Metrics
    stopping: gevent.event.Event


class NodeFlow:
    """A node's ESL client, its correlator, and the consumers that join them to the writer."""

    def __init__(self, config: NodeConfig, shared: Shared, spill_dir: str,
                 on_fatal: Callable[[str, Exception], None]) -> None:
        self.config = config
        self.shared = shared
        self.correlator = Correlator(config.name, shared.users.lookup)
        self.client = InboundClient(config.host, config.port, config.password.reveal(), config.name,
                                    config.event_format, self.on_event, self.on_snapshot, IntakeStats(),
                                    spill_dir=spill_dir, on_fatal=on_fatal)
        self._resync_retry: gevent.Greenlet | None = None

    def start(self) -> None:
        self.client.start()

    def stop(self) -> None:
        """Stop intake (its queue drains into the correlator), then write the calls held since a
        snapshot: they are not to be lost with the process."""
        self.client.stop(drain_timeout=2.0)
        if self._resync_retry is not None:
            self._resync_retry.kill(timeout=0.5)

    def settle(self) -> None:
        self.shared.resync.settle(self.correlator, timeout=1.0)

    # --- ESL consumers ----------------------------------------------------------------------------

    def on_event(self, node_name: str, event: dict[str, str]) -> None:
        shared = self.shared
        shared.node_map.learn(node_name, event)
        if event.get("Event-Name") == "CUSTOM":
            login = login_from_event(event)
            if login is not None:
                shared.logins.add(login)
            return
        self._correlate(self.correlator.feed, event)
        if self.correlator.active_calls > self.config.max_live_calls:
            self._cap()

    def on_snapshot(self, node_name: str, channels: list[dict]) -> None:
        """A resync (eslbridge.store.resync): the snapshot against the correlator and the node's Active rows."""
        self._await_users()
        try:
            result = self.shared.resync.run(self.correlator, channels)
        except EventError as exc:
            self.client.stats.error("uncorrelated_event", str(exc))
            return
        self.shared.metrics.resync_closed.labels(node=node_name).inc(result.closed)
        log.info("%s: resync with %d live channel(s), %d Active row(s) in the database: %d record update(s),"
                 " %d stale row(s) closed", node_name, result.channels, result.active, result.updates, result.closed)
        if not result.complete and self._resync_retry is None:
            log.warning("%s: resync incomplete (database unreachable); asking again once it is back", node_name)
            self._resync_retry = gevent.spawn(self._resync_when_db_up)

    # --- steps ------------------------------------------------------------------------------------

    def _resync_when_db_up(self) -> None:
        """Ask for a new snapshot once the writer reaches PostgreSQL again (not before: every
        resync that cannot read the Active rows holds the node's events for its timeouts)."""
        try:
            gevent.sleep(RESYNC_RETRY_SECONDS)
            while not self.shared.writer.stats().db_up:
                gevent.sleep(RESYNC_RETRY_SECONDS)
            self.client.request_resync()
        finally:
            self._resync_retry = None

    def _await_users(self) -> None:
        """Intake waits for the user index's first load, so attribution never depends on start-up
        timing (deferring the decision instead would mean re-attributing records already written).
        Waiting loses nothing: the ESL reader keeps reading into the spilling queue meanwhile. Only
        a stop before the index ever loaded (PostgreSQL unreachable since start) releases the
        queued events unattributed, so their records reach the journal instead of being lost."""
        loaded, stopping = self.shared.users.loaded, self.shared.stopping
        if loaded.is_set() or stopping.is_set():
            return
        log.info("ESL intake waits for the user index to load")
        gevent.wait([loaded, stopping], count=1)
        if not loaded.is_set():
            log.warning("stopping before the user index loaded: queued calls are recorded without local users")

    def _correlate(self, step: Callable[[Any], list[RecordUpdate]], item: Any) -> int:
        """One correlator step; its updates go to the writer (never blocks). Bad input is counted."""
        self._await_users()
        try:
            updates = step(item)
        except EventError as exc:
            self.client.stats.error("uncorrelated_event", str(exc))
            return 0
        submit = self.shared.writer.submit
        for update in updates:
            submit(update)
        closures = self.correlator.take_closures()
        if closures:  # re-adopted calls closed by their last leg's hangup: off the ESL path
            gevent.spawn(self.shared.resync.close, self.config.name, closures)
        return len(updates)

    def _cap(self) -> None:
        """Memory bound (DESIGN section 9): the oldest live calls are closed, counted and logged."""
        cap = self.config.max_live_calls
        n = self._correlate(lambda reason: self.correlator.evict_oldest(cap, reason), CAP_REASON)
        self.client.stats.evicted(n, cap)
