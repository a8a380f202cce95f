"""`eslbridge run`: the wiring of DESIGN section 1 for any number of FreeSWITCH nodes.

    per node (eslbridge.flow.node): InboundClient --(bounded queue, spill)--> Correlator
                                    --> Writer (queue -> journal -> PostgreSQL); snapshots --> Resync
    DirectoryService (mod_xml_curl) <-- cache <-- LISTEN/NOTIFY
    OutboundServer (socket app) --> CallAuthorizer
    sofia::register events --> users.last_login (batched: LoginRecorder)
    Upkeep timer: partitions ahead, retention, daily_call_summary
    MetricsServer: /metrics, /healthz; sd_notify READY / WATCHDOG / STOPPING

Everything runs as greenlets in one process (gevent.monkey.patch_all() happens in
`eslbridge run` before anything else is imported). Nothing on the ESL path waits
for PostgreSQL: the correlator is pure, the writer's submit never blocks.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

import gevent
import gevent.event

from eslbridge.accounts.authorizer import CallAuthorizer
from eslbridge.accounts.registrations import LoginRecorder
from eslbridge.accounts.userindex import UserIndex
from eslbridge.config import Config, load_config
from eslbridge.directory.service import DirectoryService
from eslbridge.esl.cacheflush import DirectoryCacheFlush
from eslbridge.esl.nodemap import NodeMap
from eslbridge.esl.outbound import OutboundServer
from eslbridge.flow.node import NodeFlow, Shared
from eslbridge.keys.keyring import Keyring
from eslbridge.ops import systemd
from eslbridge.ops.heap import freeze_startup
from eslbridge.ops.logs import setup_logging
from eslbridge.ops.metrics import IntakeSource, Metrics, MetricsServer
from eslbridge.privacy.retention import DailyRetention
from eslbridge.store.journal import Journal
from eslbridge.store.pool import make_pool
from eslbridge.store.quarantine import Quarantine
from eslbridge.store.resync import Resync
from eslbridge.store.upkeep import Upkeep
from eslbridge.store.writer import Writer

log = logging.getLogger(__name__)

DRAIN_SECONDS = 10.0  # DESIGN section 9: SIGTERM drains within 10 s
ACTOR = "eslbridge-daemon"


class Daemon:
    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = Metrics()
        self.metrics.journal_max_bytes.set(config.journal.max_bytes)
        self.keyring = Keyring.load(config.encryption.keyring_file)
        self.pool = make_pool(config.database)
        self.journal = Journal(str(config.journal.dir), config.journal.max_bytes,
                               sealer=self.keyring.journal_sealer(), on_damage=self.metrics.journal_corrupt.inc)
        self.quarantine = Quarantine(config.journal.dir / "quarantine", self.keyring.journal_sealer(), gevent.sleep)
        self.writer = Writer(self.pool, self.keyring, self.journal, metrics=self.metrics, quarantine=self.quarantine)
        self.users = UserIndex(config.database.url.reveal(), connect_timeout=config.database.connect_timeout)
        self.resync = Resync(self.pool, self.writer.submit, lambda: self.writer.replaying,
                             config.database.connect_timeout, lambda: self._stop.is_set())
        self.node_map = NodeMap(node_cfg.name for node_cfg in config.freeswitch)
        self.logins = LoginRecorder(
            Journal(str(config.journal.dir / "logins"), config.journal.max_bytes, sealer=self.keyring.journal_sealer(),
                    on_damage=self.metrics.journal_corrupt.inc),
            lambda: self.pool.connection(timeout=5))
        self._stop = gevent.event.Event()
        shared = Shared(self.writer, self.resync, self.users, self.logins, self.node_map, self.metrics, self._stop)
        self.nodes = {node_cfg.name: NodeFlow(node_cfg, shared, str(config.journal.dir / f"spill-{node_cfg.name}"),
                                              self._on_fatal)
                      for node_cfg in config.freeswitch}
        # The directory LISTENs on the primary (NOTIFY only happens there); lookups may read the
        # standby where it has replayed every change they were told of (directory/replica.py).
        replica = config.database.replica_url
        flush = DirectoryCacheFlush({name: node.client for name, node in self.nodes.items()})
        self.directory = DirectoryService(config.directory, self.pool, flush_hook=flush,
                                          metrics=self.metrics, replica_dsn=replica.reveal() if replica else None,
                                          replica_max_lag=config.database.replica_max_lag)
        authorizer = CallAuthorizer(self.pool, lambda: self.keyring, self.node_map.resolve)
        self.outbound = (OutboundServer(tuple(config.outbound.listen), authorizer, on_result=self._on_outbound_result,
                                        allow=config.outbound.allow, limits=config.outbound.connections)
                         if config.outbound.listen else None)
        self.upkeep = Upkeep(self.pool, config.retention, retention_hook=DailyRetention(ACTOR), metrics=self.metrics)
        self.metrics_server = (MetricsServer(config.metrics.listen, self.metrics, self.health,
                                             allow=config.metrics.allow, limits=config.metrics.connections)
                               if config.metrics.listen else None)
        self.metrics.add_intake(self._intake_sources)
        self.metrics.add_gates(lambda: [self.directory.accept_gate, *(server.gate for server in
                                        (self.outbound, self.metrics_server) if server is not None)])
        self._fatal: BaseException | None = None
        self._greenlets: list[gevent.Greenlet] = []

    # --- lifecycle ----------------------------------------------------------------------------

    def run(self) -> int:
        """Start everything, serve until SIGTERM/SIGINT (or a fatal error), drain, return."""
        gevent.signal_handler(signal.SIGTERM, self._stop.set)
        gevent.signal_handler(signal.SIGINT, self._stop.set)
        gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(self.reload))
        self.start()
        self._greenlets.append(gevent.spawn(self._announce_ready))
        watchdog = systemd.watchdog_interval()
        while not self._stop.wait(timeout=(watchdog / 2) if watchdog else 5.0):
            systemd.watchdog()  # from the main loop: a wedged hub stops the pings
        systemd.stopping()
        self.stop()
        if self._fatal is not None:
            raise self._fatal
        return 0

    def start(self) -> None:
        if self.metrics_server:
            self.metrics_server.start()
        self.users.start()
        self.writer.start()
        self.directory.start()
        if self.outbound:
            self.outbound.start()
        for node in self.nodes.values():
            node.start()
        self.upkeep.start()
        self._greenlets.append(gevent.spawn(self.logins.run))
        # Last: what start-up built lives as long as the process; full collections need not walk it.
        log.debug("froze %d objects built at start-up", freeze_startup())
        log.info("eslbridge running: %d FreeSWITCH node(s)", len(self.nodes))

    def stop(self) -> None:
        """Drain within DRAIN_SECONDS: stop intake (its queue drains into the correlators), then
        let the writer commit what it holds; whatever is left stays in the journal for next start."""
        deadline = time.monotonic() + DRAIN_SECONDS
        log.info("stopping: draining ESL queues and the writer")
        for node in self.nodes.values():
            node.stop()
        if self.outbound:
            self.outbound.stop()
        self.upkeep.stop()
        gevent.killall(self._greenlets, timeout=0.5)
        for node in self.nodes.values():
            node.settle()
        self.logins.flush()
        done = self.writer.stop(timeout=max(0.5, deadline - time.monotonic() - 0.5))
        self.directory.stop()
        self.users.stop()
        self.journal.close()
        self.logins.close()
        if self.metrics_server:
            self.metrics_server.stop()
        self.pool.close(timeout=0.5)
        log.info("stopped: %s", "all records committed" if done else "remaining records kept in the journal")

    def reload(self) -> None:
        """SIGHUP: new log level/format and keyring; ESL links and listeners stay up."""
        systemd.reloading()
        try:
            config = load_config(self.config_path)
            keyring = Keyring.load(config.encryption.keyring_file)
        except Exception as exc:  # a bad edit must not take the running daemon down
            log.error("reload refused, keeping the running configuration: %s", exc)
        else:
            setup_logging(config.logging.level, config.logging.format)
            self.keyring = keyring
            self.writer.keyring = keyring
            self.journal.sealer = keyring.journal_sealer()
            self.quarantine.sealer = keyring.journal_sealer()
            self.logins.sealer = keyring.journal_sealer()
            self.config = config
            log.info("reloaded configuration and keyring (active key %d)", keyring.active_id)
        systemd.ready()

    def health(self) -> tuple[bool, dict[str, Any]]:
        esl = {name: node.client.connected for name, node in self.nodes.items()}
        writer = self.writer.stats()
        journal = writer.journal_failure or "ok"
        return (all(esl.values()) and writer.db_up and journal == "ok",
                {"esl": esl, "database": writer.db_up, "journal": journal})

    def _intake_sources(self) -> list[IntakeSource]:
        return [IntakeSource(name, node.client.stats, len(node.client.queue), node.client.connected,
                             node.correlator.active_calls) for name, node in self.nodes.items()]

    # --- callbacks ---------------------------------------------------------------------------------

    def _on_fatal(self, node_name: str, exc: Exception) -> None:
        log.error("%s: %s", node_name, exc)
        self._fatal = exc
        self._stop.set()

    def _on_outbound_result(self, channel: dict[str, str], allowed: bool, reason: str) -> None:
        self.metrics.outbound_decisions.labels(decision="allowed" if allowed else "refused").inc()

    # --- background work ----------------------------------------------------------------------

    def _announce_ready(self) -> None:
        """READY once PostgreSQL and every ESL link are up (DESIGN section 10)."""
        while not self._stop.is_set():
            ok, details = self.health()
            if ok:
                systemd.ready(f"connected to PostgreSQL and {len(self.nodes)} FreeSWITCH node(s)")
                log.info("ready: %s", details)
                return
            gevent.sleep(0.2)
