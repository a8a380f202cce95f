"""eslbridge.ops.metrics: the registry and the /metrics + /healthz endpoint over real HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import gevent
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eslbridge.esl.stats import IntakeStats
from eslbridge.ops.metrics import IntakeSource, Metrics, MetricsServer


def http(server: MetricsServer, path: str, method: str = "GET") -> tuple[int, str, str]:
    """A blocking urllib request run in gevent's thread pool, so the gevent server keeps serving."""

    def fetch() -> tuple[int, str, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{server.address[1]}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers["Content-Type"], response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()

    return gevent.get_hub().threadpool.spawn(fetch).get()


@pytest.fixture
def health_state() -> dict:
    return {"ok": True, "details": {}}


@pytest.fixture
def served(health_state: dict) -> Iterator[tuple[Metrics, MetricsServer]]:
    metrics = Metrics()
    server = MetricsServer(("127.0.0.1", 0), metrics, lambda: (health_state["ok"], health_state["details"]))
    server.start()
    yield metrics, server
    server.stop()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_endpoint_exposes_every_metric(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, server = served
    stats = IntakeStats(node="fs1")
    stats.events_in["CHANNEL_CREATE"] += 3
    stats.parse_errors["bad_json"] += 1
    stats.reconnects += 1
    metrics.add_intake(lambda: [IntakeSource("fs1", stats, queue_depth=2, connected=True, active_calls=7)])
    queue: list[int] = [1, 2, 3, 4]
    metrics.queue_depth.set_function(lambda: len(queue))  # pulled at scrape time
    metrics.journal_bytes.set(4096)
    metrics.queue_overflows.inc()
    metrics.records_written.labels(table="call_records").inc(5)
    metrics.db_write_seconds.observe(0.003)
    metrics.directory_requests.labels(outcome="found").inc()
    metrics.directory_seconds.observe(0.001)
    metrics.cache_lookups.labels(result="hit").inc(2)  # as the directory service counts them
    metrics.cache_lookups.labels(result="miss").inc()
    status, content_type, body = http(server, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    got = samples(body)
    assert got[("eslbridge_esl_events_total", (("event", "CHANNEL_CREATE"), ("node", "fs1")))] == 3
    assert got[("eslbridge_esl_parse_errors_total", (("kind", "bad_json"), ("node", "fs1")))] == 1
    assert got[("eslbridge_esl_reconnects_total", (("node", "fs1"),))] == 1
    assert got[("eslbridge_active_calls", (("node", "fs1"),))] == 7
    assert got[("eslbridge_esl_queue_depth", (("node", "fs1"),))] == 2
    assert got[("eslbridge_esl_connected", (("node", "fs1"),))] == 1
    assert got[("eslbridge_record_queue_depth", ())] == 4
    assert got[("eslbridge_journal_bytes", ())] == 4096
    assert got[("eslbridge_record_queue_overflows_total", ())] == 1
    assert got[("eslbridge_records_written_total", (("table", "call_records"),))] == 5
    assert got[("eslbridge_db_write_seconds_count", ())] == 1
    assert got[("eslbridge_db_write_seconds_bucket", (("le", "0.005"),))] == 1
    assert got[("eslbridge_directory_requests_total", (("outcome", "found"),))] == 1
    assert got[("eslbridge_directory_cache_lookups_total", (("result", "hit"),))] == 2
    assert got[("eslbridge_directory_cache_lookups_total", (("result", "miss"),))] == 1
    assert not any(name.endswith("_created") for name, _ in got)
    queue.clear()
    stats.events_in["CHANNEL_CREATE"] += 1
    later = samples(http(server, "/metrics")[2])
    assert later[("eslbridge_record_queue_depth", ())] == 0
    assert later[("eslbridge_esl_events_total", (("event", "CHANNEL_CREATE"), ("node", "fs1")))] == 4


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()  # would raise "Duplicated timeseries" with the global registry
    a.db_errors.labels(operation="write").inc()
    assert a.registry.get_sample_value("eslbridge_db_errors_total", {"operation": "write"}) == 1
    assert b.registry.get_sample_value("eslbridge_db_errors_total", {"operation": "write"}) is None


def test_healthz(served: tuple[Metrics, MetricsServer], health_state: dict) -> None:
    _, server = served
    assert http(server, "/healthz") == (200, "text/plain", "ok\n")
    health_state.update(ok=False, details={"esl": {"fs1": "down"}, "db": "up"})
    status, content_type, body = http(server, "/healthz")
    assert (status, content_type) == (503, "application/json")
    assert body == '{"esl": {"fs1": "down"}, "db": "up"}\n'


def test_healthz_when_the_check_raises() -> None:
    def broken() -> tuple[bool, dict]:
        raise RuntimeError("db handle gone")

    server = MetricsServer(("127.0.0.1", 0), Metrics(), broken)
    server.start()
    try:
        status, _, body = http(server, "/healthz")
    finally:
        server.stop()
    assert status == 503 and body == '{"error": "health check failed"}\n'


def test_unknown_path_and_method(served: tuple[Metrics, MetricsServer]) -> None:
    _, server = served
    assert http(server, "/nope")[0] == 404
    assert http(server, "/metrics", method="POST")[0] == 405
