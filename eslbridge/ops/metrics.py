"""Prometheus metrics and the /metrics + /healthz HTTP endpoint (DESIGN section 10).

Every metric lives in ``Metrics``, each instance with its own ``CollectorRegistry`` so tests and
several daemons in one process never clash. Values owned by other objects (queue depth, journal
size) can be pulled at scrape time: ``metrics.queue_depth.set_function(lambda: len(queue))``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gevent.pywsgi import WSGIHandler, WSGIServer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from eslbridge.config import LOOPBACK, ConnectionLimits, IPNetwork, MetricsConfig
from eslbridge.esl.inbound import SUBSCRIBED_EVENTS
from eslbridge.esl.stats import KNOWN_CONTENT_TYPES, IntakeStats
from eslbridge.ops.netgate import AcceptGate, GateMixin

log = logging.getLogger(__name__)

# The per-series *_created samples would double every scrape for a value nobody graphs.
disable_created_metrics()

# Seconds; DB batches and directory lookups are both expected in the low milliseconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Health = Callable[[], tuple[bool, dict[str, Any]]]

# Label values come from FreeSWITCH's input: anything outside these folds into OTHER, so a peer
# sending 25,000 event names cannot grow a scrape (or Prometheus) without bound.
OTHER = "other"
KNOWN_EVENTS = frozenset(
    [n for n in SUBSCRIBED_EVENTS if n.isupper()]
    + [f"CUSTOM {n}" for n in SUBSCRIBED_EVENTS if "::" in n]
    + ["BACKGROUND_JOB", "API", "RE_SCHEDULE", "CHANNEL_STATE", "CHANNEL_CALLSTATE", "CHANNEL_HANGUP",
       "CHANNEL_DESTROY", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "CHANNEL_EXECUTE",
       "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_PARK", "CHANNEL_HOLD", "CHANNEL_UNHOLD"]
)


def _folded(counts: Mapping[str, int], known: frozenset[str]) -> dict[str, int]:
    """``counts`` with every key outside ``known`` summed under OTHER."""
    out: dict[str, int] = {}
    for key, n in counts.items():
        label = key if key in known else OTHER
        out[label] = out.get(label, 0) + n
    return out


class Metrics:
    """All of eslbridge's metrics. Counter names get ``_total`` appended on exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # ESL intake and correlation: IntakeCollector (registered with add_intake), read at scrape time.
        # record queue, journal, writer
        self.queue_depth = Gauge("eslbridge_record_queue_depth", "Records waiting for the writer", registry=r)
        self.queue_overflows = Counter(
            "eslbridge_record_queue_overflows", "Records spilled to the journal because the queue was full", registry=r
        )
        self.journal_bytes = Gauge("eslbridge_journal_bytes", "Bytes in the on-disk journal", registry=r)
        self.journal_writable = Gauge(
            "eslbridge_journal_writable", "1 while the journal can make finished records durable", registry=r
        )
        self.journal_failures = Counter(
            "eslbridge_journal_failures", "Failed journal writes and fsyncs by kind (enospc, edquot, emfile, erofs, "
            "full, ...)", ["kind"], registry=r
        )
        self.journal_corrupt = Counter(
            "eslbridge_journal_corrupt_records", "Damaged journal records skipped at replay (their records are lost)",
            registry=r
        )
        self.records_quarantined = Counter(
            "eslbridge_records_quarantined", "Records PostgreSQL refused, kept in the quarantine "
            "(eslbridge journal quarantine list|retry)", registry=r
        )
        self.quarantine_bytes = Gauge("eslbridge_quarantine_bytes", "Bytes in the quarantine", registry=r)
        self.records_written = Counter(
            "eslbridge_records_written", "Rows written to PostgreSQL", ["table"], registry=r
        )
        self.db_write_seconds = Histogram(
            "eslbridge_db_write_seconds", "Latency of one database write batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.db_errors = Counter("eslbridge_db_errors", "Failed database operations", ["operation"], registry=r)
        self.db_up = Gauge("eslbridge_db_up", "1 while PostgreSQL is reachable", registry=r)
        # directory (mod_xml_curl)
        self.directory_requests = Counter(
            "eslbridge_directory_requests",
            "Directory requests by outcome (found, not_found, forbidden, error, ...)",
            ["outcome"],
            registry=r,
        )
        self.directory_seconds = Histogram(
            "eslbridge_directory_request_seconds", "Directory request latency", buckets=LATENCY_BUCKETS, registry=r
        )
        # hit ratio = rate(result="hit") / rate(all)
        self.cache_lookups = Counter(
            "eslbridge_directory_cache_lookups", "Directory cache lookups", ["result"], registry=r
        )
        # directory reads on the standby (database.replica_url): keys read there, keys read on the
        # primary instead (by reason: changed, down, lag, catching_up, not_standby, no_listen, no_primary)
        self.directory_replica_reads = Counter(
            "eslbridge_directory_replica_reads", "Directory users read on the standby", registry=r
        )
        self.directory_replica_fallbacks = Counter(
            "eslbridge_directory_replica_fallbacks", "Directory users read on the primary although a standby is set",
            ["reason"], registry=r,
        )
        self.directory_replica_lag = Gauge(
            "eslbridge_directory_replica_lag_seconds",
            "Seconds since the primary reached a WAL position the standby has not replayed", registry=r,
        )
        # outbound socket (call authorization)
        self.outbound_decisions = Counter(
            "eslbridge_outbound_decisions", "Outbound-socket call authorizations", ["decision"], registry=r
        )
        # resync after an ESL (re)connect: stale Active rows of earlier runs or links closed
        self.resync_closed = Counter(
            "eslbridge_resync_closed_rows", "Active rows closed at resync (their channels were gone)", ["node"],
            registry=r,
        )
        # scheduled database upkeep: partitions ahead, retention, daily_call_summary
        self.upkeep_runs = Counter(
            "eslbridge_upkeep_runs", "Database upkeep runs by result (ok, skipped, failed)", ["result"], registry=r
        )
        for result in ("ok", "skipped", "failed"):  # alerts need the series before the first failure
            self.upkeep_runs.labels(result)
        self.upkeep_last_success = Gauge(
            "eslbridge_upkeep_last_success_timestamp_seconds", "Unix time the last upkeep run completed", registry=r
        )
        self.journal_max_bytes = Gauge(
            "eslbridge_journal_max_bytes", "The journal's size limit (journal.max_bytes)", registry=r
        )

    def add_intake(self, sources: Callable[[], Iterable[IntakeSource]]) -> None:
        self.registry.register(IntakeCollector(sources))

    def add_gates(self, gates: Callable[[], Iterable[AcceptGate]]) -> None:
        self.registry.register(GateCollector(gates))



@dataclass(frozen=True, slots=True)
class IntakeSource:
    """One FreeSWITCH node as the metrics see it."""

    node: str
    stats: IntakeStats
    queue_depth: int
    connected: bool
    active_calls: int


class IntakeCollector:
    """Exports each node's IntakeStats at scrape time: counting into Prometheus objects per event
    would cost the ESL hot path a lock and a label lookup for every event."""

    def __init__(self, sources: Callable[[], Iterable[IntakeSource]]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily("eslbridge_esl_events", "ESL events received", labels=["node", "event"])
        errors = CounterMetricFamily("eslbridge_esl_parse_errors", "ESL input that could not be used",
                                     labels=["node", "kind"])
        ignored = CounterMetricFamily("eslbridge_esl_frames_ignored", "ESL frames of other content types",
                                      labels=["node", "content_type"])
        reconnects = CounterMetricFamily("eslbridge_esl_reconnects", "ESL reconnections", labels=["node"])
        lost = CounterMetricFamily("eslbridge_esl_streams_lost",
                                   "ESL connections dropped because a frame's length could not be trusted",
                                   labels=["node", "kind"])
        dead = CounterMetricFamily("eslbridge_esl_dead_links",
                                   "ESL connections dropped because no whole frame came for 2 heartbeats",
                                   labels=["node"])
        overflows = CounterMetricFamily("eslbridge_esl_queue_overflows",
                                        "Events spilled to disk because the intake queue was full", labels=["node"])
        depth = GaugeMetricFamily("eslbridge_esl_queue_depth", "Events waiting for the correlator", labels=["node"])
        connected = GaugeMetricFamily("eslbridge_esl_connected", "1 while the ESL link is up", labels=["node"])
        active = GaugeMetricFamily("eslbridge_active_calls", "Calls in flight", labels=["node"])
        evicted = CounterMetricFamily("eslbridge_calls_evicted",
                                      "Live calls closed by the memory cap (freeswitch[].max_live_calls)",
                                      labels=["node"])
        for src in self._sources():
            s = src.stats
            for event, n in _folded(s.events_in, KNOWN_EVENTS).items():
                events.add_metric([src.node, event], n)
            for kind, n in s.parse_errors.items():
                errors.add_metric([src.node, kind], n)
            for ctype, n in _folded(s.frames_ignored, KNOWN_CONTENT_TYPES).items():
                ignored.add_metric([src.node, ctype], n)
            reconnects.add_metric([src.node], s.reconnects)
            for kind, n in s.streams_lost.items():
                lost.add_metric([src.node, kind], n)
            dead.add_metric([src.node], s.dead_links)
            overflows.add_metric([src.node], s.overflows)
            depth.add_metric([src.node], src.queue_depth)
            connected.add_metric([src.node], 1 if src.connected else 0)
            active.add_metric([src.node], src.active_calls)
            evicted.add_metric([src.node], s.calls_evicted)
        yield from (events, errors, ignored, reconnects, lost, dead, overflows, depth, connected, active, evicted)


class GateCollector:
    """Each listener's accept gate (eslbridge/ops/netgate.py), read at scrape time."""

    REASONS = ("refused_address", "refused_full", "evicted", "expired")

    def __init__(self, gates: Callable[[], Iterable[AcceptGate]]) -> None:
        self._gates = gates

    def collect(self) -> Iterator[Metric]:
        open_now = GaugeMetricFamily("eslbridge_listener_connections", "Connections open", labels=["listener"])
        closed = CounterMetricFamily(
            "eslbridge_listener_closed",
            "Connections the accept gate closed: outside the allow list, over a bound, evicted to make room, timed out",
            labels=["listener", "reason"])
        for gate in self._gates():
            open_now.add_metric([gate.name], gate.open)
            for reason in self.REASONS:
                closed.add_metric([gate.name, reason], gate.stats[reason])
        yield from (open_now, closed)


def _respond(start_response: Callable, status: str, body: bytes, content_type: str) -> Iterable[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


class _GatedHandler(WSGIHandler):
    """pywsgi's handler telling the accept gate where its connection is (netgate.Conn)."""

    def read_requestline(self) -> str:
        conn = self.server.gate.current()
        conn.idle()
        line = super().read_requestline()
        conn.reading()  # the rest of the head must follow in time
        return line

    def handle_one_response(self) -> None:
        self.server.gate.current().busy()
        super().handle_one_response()


class _GatedWSGIServer(GateMixin, WSGIServer):
    handler_class = _GatedHandler


class MetricsServer:
    """gevent HTTP server: ``GET /metrics`` (Prometheus text format) and ``GET /healthz``
    (200 ``ok`` when ``health()`` returns True, else 503 with its details as JSON)."""

    def __init__(self, listen: tuple[str, int], metrics: Metrics, health: Health, *,
                 allow: Iterable[IPNetwork] = LOOPBACK,
                 limits: ConnectionLimits = MetricsConfig.connections) -> None:
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._health = health
        # log=None: no access log line per scrape; errors still go to logging.
        self._server = _GatedWSGIServer(tuple(listen), self._app, log=None, error_log=log)
        self._server.gate = self.gate = AcceptGate("metrics", allow, limits)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port), useful when listening on port 0."""
        return self._server.address[:2]

    def start(self) -> None:
        self._server.start()
        log.info("metrics and health on http://%s:%d/", *self.address)

    def stop(self, timeout: float = 1.0) -> None:
        self._server.stop(timeout=timeout)

    def _app(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _respond(start_response, "405 Method Not Allowed", b"method not allowed\n", "text/plain")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            return self._healthz(start_response)
        return _respond(start_response, "404 Not Found", b"not found\n", "text/plain")

    def _healthz(self, start_response: Callable) -> Iterable[bytes]:
        try:
            ok, details = self._health()
        except Exception:  # a broken health check means unhealthy, not a 500 with a traceback
            log.exception("health check raised")
            ok, details = False, {"error": "health check failed"}
        if ok:
            return _respond(start_response, "200 OK", b"ok\n", "text/plain")
        body = json.dumps(details, default=str).encode() + b"\n"
        return _respond(start_response, "503 Service Unavailable", body, "application/json")
