"""Prometheus metrics and the /metrics + /healthz HTTP endpoint (DESIGN section 10).

Every metric lives in ``Metrics``, each instance with its own ``CollectorRegistry`` so tests and
several daemons in one process never clash. Values owned by other objects (queue depth, journal
size) can be pulled at scrape time: ``metrics.queue_depth.set_function(lambda: len(queue))``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from eslbridge.esl.stats import IntakeStats

log = logging.getLogger(__name__)

# The per-series *_created samples would double every scrape for a value nobody graphs.
disable_created_metrics()

# Seconds; DB batches and directory lookups are both expected in the low milliseconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Health = Callable[[], tuple[bool, dict[str, Any]]]


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
        self.journal_corrupt_records = Counter(
            "eslbridge_journal_corrupt_records", "Journal records skipped as corrupt during replay", registry=r
        )
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

    def add_intake(self, sources: Callable[[], Iterable[IntakeSource]]) -> None:
        self.registry.register(IntakeCollector(sources))

    def cache_hit(self) -> None:
        self.cache_lookups.labels(result="hit").inc()

    def cache_miss(self) -> None:
        self.cache_lookups.labels(result="miss").inc()


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
        overflows = CounterMetricFamily("eslbridge_esl_queue_overflows",
                                        "Events spilled to disk because the intake queue was full", labels=["node"])
        depth = GaugeMetricFamily("eslbridge_esl_queue_depth", "Events waiting for the correlator", labels=["node"])
        connected = GaugeMetricFamily("eslbridge_esl_connected", "1 while the ESL link is up", labels=["node"])
        active = GaugeMetricFamily("eslbridge_active_calls", "Calls in flight", labels=["node"])
        for src in self._sources():
            s = src.stats
            for event, n in s.events_in.items():
                events.add_metric([src.node, event], n)
            for kind, n in s.parse_errors.items():
                errors.add_metric([src.node, kind], n)
            for ctype, n in s.frames_ignored.items():
                ignored.add_metric([src.node, ctype], n)
            reconnects.add_metric([src.node], s.reconnects)
            overflows.add_metric([src.node], s.overflows)
            depth.add_metric([src.node], src.queue_depth)
            connected.add_metric([src.node], 1 if src.connected else 0)
            active.add_metric([src.node], src.active_calls)
        yield from (events, errors, ignored, reconnects, overflows, depth, connected, active)


def _respond(start_response: Callable, status: str, body: bytes, content_type: str) -> Iterable[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


class MetricsServer:
    """gevent HTTP server: ``GET /metrics`` (Prometheus text format) and ``GET /healthz``
    (200 ``ok`` when ``health()`` returns True, else 503 with its details as JSON)."""

    def __init__(self, listen: tuple[str, int], metrics: Metrics, health: Health) -> None:
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._health = health
        # log=None: no access log line per scrape; errors still go to logging.
        self._server = WSGIServer(tuple(listen), self._app, log=None, error_log=log)

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
