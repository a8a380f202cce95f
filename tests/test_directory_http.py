"""The directory's HTTP server deadlines (eslbridge/directory/http.py): a request that does not
arrive in time gets 400 and the connection closes; an idle keep-alive connection is closed
silently. Both come from the sweeper greenlet, so they are checked over real sockets here,
with short timeouts, in a gevent child process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.directory_fixtures import ROOT

_BOOT = "from gevent import monkey; monkey.patch_all(); from tests.test_directory_http import child_main; child_main()"
REQUEST = b"POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"


def child_main() -> None:
    import gevent

    from eslbridge.config import LOOPBACK, ConnectionLimits
    from eslbridge.directory.http import HttpServer
    from eslbridge.ops.netgate import AcceptGate

    class Echo:
        def gate(self, client_ip, method, path, headers):
            return None

        def answer(self, body: bytes) -> bytes:
            return b"<echo>" + body + b"</echo>"

        def oversized(self):
            return 200, b""

    limits = ConnectionLimits(head_timeout=0.3, idle_timeout=0.3, busy_timeout=0.3)
    server = HttpServer(("127.0.0.1", 0), Echo(), AcceptGate("directory", LOOPBACK, limits), max_body=100)
    server.start()
    print(f"READY {server.address[1]}", flush=True)
    gevent.wait()


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", _BOOT], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        yield int(proc.stdout.readline().split()[1])
    finally:
        proc.kill()
        proc.wait()


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_a_request_that_never_completes_gets_400_and_close(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(REQUEST[:30])  # part of the head, then silence
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in answer


def test_a_body_that_never_arrives_gets_400_and_close(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(REQUEST[:-2])
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400 ")


def test_idle_keep_alive_connections_are_closed_silently(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(REQUEST + REQUEST)  # two requests, answered in order, then nothing more
        answer = read_until_closed(sock)
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2 and answer.endswith(b"<echo>hello</echo>")
    assert b"400" not in answer and b"Connection: close" not in answer
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert read_until_closed(sock) == b""  # never sent anything
