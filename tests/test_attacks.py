"""Attacks that once worked, kept closed (DESIGN sections 5 and 9), each bounded in count and time,
over real loopback sockets. 127.0.0.1 is inside every allow list, 127.0.0.2 outside."""

from __future__ import annotations

import logging
import resource
import socket as pysocket
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
from gevent import socket as gsocket

from eslbridge.accounts import users
from eslbridge.config import LOOPBACK, ConnectionLimits, DirectoryConfig, ListenAddress, Secret
from eslbridge.directory import DirectoryService
from eslbridge.esl import protocol
from eslbridge.esl.outbound import OutboundServer
from eslbridge.esl.stats import IntakeStats
from eslbridge.ops.metrics import OTHER, IntakeSource, Metrics, MetricsServer
from eslbridge.sim.outbound import channel_data, place_call
from tests.directory_fixtures import PASSWORD, DirectoryProcess, auth_header
from tests.esl_fixtures import Collector, make_client, sim  # noqa: F401

HOSTILE = 1000
INJECTION = "x\n\nbgapi system id"


@pytest.fixture(autouse=True, scope="module")
def enough_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * HOSTILE:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * HOSTILE), hard))


def open_sockets(port: int, n: int, source: str, payload: bytes = b"", sock_mod=pysocket) -> list:
    socks = []
    for _ in range(n):
        s = sock_mod.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        if payload:
            s.send(payload)
        socks.append(s)
    return socks


def close_all(socks: list) -> None:
    for s in socks:
        s.close()


def fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def sip_auth(user: str, realm: str) -> bytes:
    return (f"section=directory&tag_name=domain&key_name=name&key_value={realm}&key=id&action=sip_auth"
            f"&user={user}&domain={realm}").encode()


# --- directory: exhaustion must not make FreeSWITCH fall back to its static users ---------------


@pytest.fixture
def directory(db_dsn: str) -> Iterator[DirectoryProcess]:
    import psycopg

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        users.add_user(conn, "1000", "attack.example", PASSWORD, rounds=4)
    server = DirectoryProcess(db_dsn).start()
    yield server
    server.stop()


def test_directory_answers_a_valid_request_fast_under_1000_hostile_connections(directory: DirectoryProcess):
    port = directory.port
    body = sip_auth("1000", "attack.example")
    head = (f"POST /directory HTTP/1.1\r\nHost: x\r\nAuthorization: {auth_header()}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n")
    request = head.encode() + body
    idle = open_sockets(port, HOSTILE // 4, "127.0.0.1")
    slow = open_sockets(port, HOSTILE // 4, "127.0.0.1", request[:40])  # a head that never ends
    outsiders = open_sockets(port, HOSTILE // 2, "127.0.0.2")
    try:
        took = []
        for _ in range(5):
            started = time.monotonic()
            with pysocket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(request)
                answer = b""
                while b"</document>" not in answer:
                    chunk = s.recv(65536)
                    assert chunk, answer
                    answer += chunk
            took.append(time.monotonic() - started)
            assert answer.startswith(b"HTTP/1.1 200 ") and b'name="a1-hash"' in answer
        assert min(took) < 0.1, took  # FreeSWITCH's curl timeout is seconds away; before: 54.8 s
        # Outsiders were answered 403 and closed at accept, without sending a byte.
        outsiders[0].settimeout(5)
        assert outsiders[0].recv(100).startswith(b"HTTP/1.1 403 ")
        # The daemon holds at most its per-address bound of the allowed ones, not 1,000 descriptors.
        assert fds(directory.proc.pid) < 300
    finally:
        close_all(idle + slow + outsiders)


# --- /metrics: half-sent requests are timed out and bounded; labels are bounded -----------------


def get_metrics(port: int) -> bytes:
    with gsocket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def test_metrics_half_sent_requests_are_bounded_and_timed_out():
    metrics = Metrics()
    stats = IntakeStats(node="fs1")
    stats.events_in.update({f"EVIL_{i}": 1 for i in range(25_000)})
    stats.events_in["CHANNEL_CREATE"] += 3
    stats.frames_ignored.update({f"x/{i}": 1 for i in range(1000)})
    metrics.add_intake(lambda: [IntakeSource("fs1", stats, 0, True, 0)])
    gates = []
    metrics.add_gates(lambda: gates)
    limits = ConnectionLimits(max_connections=64, max_per_address=32, head_timeout=0.5, idle_timeout=0.5)
    server = MetricsServer(("127.0.0.1", 0), metrics, lambda: (True, {}), allow=LOOPBACK, limits=limits)
    gates.append(server.gate)
    server.start()
    port = server.address[1]
    try:
        half = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
        socks = open_sockets(port, HOSTILE // 2, "127.0.0.1", half, gsocket)
        socks += open_sockets(port, HOSTILE // 2, "127.0.0.2", half, gsocket)
        gevent.sleep(0.1)
        assert server.gate.open <= limits.max_connections
        scrape = get_metrics(port)
        assert scrape.startswith(b"HTTP/1.1 200 ")
        assert b'event="CHANNEL_CREATE"' in scrape and f'{{event="{OTHER}",node="fs1"}} 25000.0'.encode() in scrape
        assert b"EVIL_" not in scrape and b"x/1" not in scrape and len(scrape) < 50_000
        with gevent.Timeout(10):
            while server.gate.open:
                gevent.sleep(0.1)
        assert server.gate.stats["refused_address"] == HOSTILE // 2
        scrape = get_metrics(port)
        refused = f'eslbridge_listener_closed_total{{listener="metrics",reason="refused_address"}} {HOSTILE // 2}.0'
        assert refused.encode() in scrape
        assert b'eslbridge_listener_closed_total{listener="metrics",reason="expired"}' in scrape
        close_all(socks)
    finally:
        server.stop()


# --- outbound socket: bounded, cheap per connection, quiet logs, allow list ----------------------


def test_outbound_idle_sockets_are_bounded_cheap_and_quietly_logged(caplog):
    limits = ConnectionLimits(max_connections=256, max_per_address=256, head_timeout=1.0)
    server = OutboundServer(("127.0.0.1", 0), lambda data: (True, "ok"), limits=limits)
    host, port = server.start()
    caplog.set_level(logging.INFO)
    try:
        before = rss_kib()
        socks = open_sockets(port, HOSTILE, "127.0.0.1", sock_mod=gsocket)
        gevent.sleep(0.3)
        assert server.gate.open <= limits.max_connections
        assert rss_kib() - before < 100 * 1024  # before: 1 MiB of buffer per connection (1,100 sockets: 1.1 GB)
        outsider = gsocket.socket()
        outsider.bind(("127.0.0.2", 0))
        outsider.connect((host, port))
        outsider.settimeout(5)
        assert outsider.recv(100) == b""  # closed at accept: not even `connect` is sent
        outsider.close()
        with gevent.Timeout(10):
            while server.gate.open:
                gevent.sleep(0.1)
        close_all(socks)
        # A real call still goes through.
        result = gevent.get_hub().threadpool.spawn(place_call, host, port, channel_data()).get()
        assert result.outcome == "continue"
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) <= 5, [r.getMessage() for r in warnings]  # before: one per socket
    finally:
        server.stop()


# --- ESL command injection ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [INJECTION, "a\rb", "a\nb", "\n"])
def test_commands_holding_line_breaks_are_refused(value):
    with pytest.raises(protocol.UnsafeCommand):
        protocol.encode("api " + value)
    with pytest.raises(protocol.UnsafeCommand):
        protocol.verb_line("xml_flush_cache", "id", value, "example.com")
    with pytest.raises(protocol.UnsafeCommand):
        protocol.sendmsg([("call-command", "hangup"), ("hangup-cause", value)])


def test_the_inbound_link_refuses_them_and_stays_in_step(sim):  # noqa: F811
    client = make_client(sim, Collector())
    with pytest.raises(protocol.UnsafeCommand):
        client.api("status" + INJECTION, 2)
    with pytest.raises(protocol.UnsafeCommand):
        client.bgapi("xml_flush_cache id " + INJECTION, 2)
    assert "is ready" in client.api("status", 2)  # nothing was queued: replies still pair with commands
    client.stop()


def test_arguments_must_be_single_words():
    with pytest.raises(protocol.UnsafeCommand):
        protocol.verb_line("xml_flush_cache", "id", "1000 other.example", "example.com")
    assert protocol.verb_line("xml_flush_cache", "id", "1000", "example.com") == "xml_flush_cache id 1000 example.com"
    assert protocol.encode("exit") == b"exit\n\n"


def test_a_hostile_notify_payload_never_reaches_the_flush_hook():
    flushed: list[tuple[str, str]] = []
    config = DirectoryConfig(listen=ListenAddress("127.0.0.1", 0), path="/directory", allow=LOOPBACK,
                             username="freeswitch", password=Secret("pw", "test"), cache_seconds=300)
    service = DirectoryService(config, "postgresql:///nowhere", flush_hook=lambda u, r: flushed.append((u, r)))
    notify = service.invalidation.on_notify
    notify({"table": "users", "op": "UPDATE", "username": INJECTION, "realm": "example.com"})
    notify({"table": "users", "op": "UPDATE", "username": "1000", "realm": "example.com\nbgapi x"})
    notify({"table": "users", "op": "UPDATE", "username": ["1000"], "realm": "example.com"})
    assert flushed == []
    notify({"table": "users", "op": "UPDATE", "username": "1000", "realm": "example.com"})
    assert flushed == [("1000", "example.com")]
