"""Listeners under hostile connections (DESIGN section 9): what 1,000 sockets cost and do.

    python -m bench.attacks [--sockets 1000] [--wait 15]

Starts the three listeners with their default limits (directory HTTP server with a constant
answer, /metrics, outbound socket server with an allowing authorizer) in a child process, then
from this process:

- directory: ``--sockets`` idle connections, half from 127.0.0.1 (allowed) and half from 127.0.0.2
  (outside the allow list), then the time a valid POST takes to be answered (at most ``--wait``);
- metrics: ``--sockets`` half-sent GET heads, then the time a valid scrape takes, and how many of the
  half-sent connections the server still holds;
- outbound: ``--sockets`` idle connections; the child's RSS and open descriptors before and after,
  and the warnings it logged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VALID_POST = (b"POST /directory HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Zjpw\r\n"
              b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\nsection")

def _child_serve() -> None:
    import gevent.monkey
    gevent.monkey.patch_all()
    import logging

    import gevent

    from eslbridge.config import LOOPBACK, ConnectionLimits
    from eslbridge.directory.http import HttpServer
    from eslbridge.esl.outbound import OutboundServer
    from eslbridge.ops.metrics import Metrics, MetricsServer
    from eslbridge.ops.netgate import AcceptGate

    warnings = [0]

    class CountWarnings(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                warnings[0] += 1

    logging.getLogger().addHandler(CountWarnings())

    class App:
        def gate(self, client_ip, method, path, headers):
            return None if client_ip == "127.0.0.1" else (403, b"")

        def answer(self, body):
            return b"<document/>"

        def oversized(self):
            return 200, b""

    gate = AcceptGate("directory", LOOPBACK, ConnectionLimits())
    directory = HttpServer(("127.0.0.1", 0), App(), gate, max_body=65536)
    directory.start()
    metrics = MetricsServer(("127.0.0.1", 0), Metrics(), lambda: (True, {}))
    metrics.start()
    outbound = OutboundServer(("127.0.0.1", 0), lambda data: (True, "ok"))
    out_addr = outbound.start()
    print(json.dumps({"directory": directory.address[1], "metrics": metrics.address[1],
                      "outbound": out_addr[1]}), flush=True)

    def report() -> None:
        while True:
            line = sys.stdin.readline()
            if not line:
                return
            print(json.dumps({"warnings": warnings[0]}), flush=True)

    gevent.get_hub().threadpool.spawn(report).get()


def _open(port: int, n: int, source: str, payload: bytes = b"") -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((source, 0))
        try:
            s.connect(("127.0.0.1", port))
            if payload:
                s.send(payload)
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


def _timed(port: int, request: bytes, wait: float) -> float | None:
    """Seconds until the first response byte arrives; None after ``wait``."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
            s.settimeout(max(0.01, wait - (time.monotonic() - started)))
            s.sendall(request)
            if not s.recv(1):
                return None
    except OSError:
        return None
    return time.monotonic() - started


def _proc(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open descriptors) of ``pid``."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def _close(socks: list[socket.socket]) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--wait", type=float, default=15.0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.sockets + 256)), hard))
    child = subprocess.Popen([sys.executable, "-m", "bench.attacks", "--serve"], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ports = json.loads(child.stdout.readline())
        time.sleep(0.5)
        n, half = args.sockets, args.sockets // 2
        base_rss, base_fds = _proc(child.pid)
        print(f"child at rest: RSS {base_rss / 1024:.1f} MiB, {base_fds} fds")

        socks = _open(ports["directory"], half, "127.0.0.1") + _open(ports["directory"], n - half, "127.0.0.2")
        time.sleep(0.5)
        took = _timed(ports["directory"], VALID_POST, args.wait)
        rss, fds = _proc(child.pid)
        print(f"directory: {len(socks)} idle sockets opened; valid POST answered in "
              + (f"{took * 1000:.1f} ms" if took is not None else f"> {args.wait:.0f} s (no answer)")
              + f"; child {fds} fds, RSS {rss / 1024:.1f} MiB")
        _close(socks)
        time.sleep(1.0)

        half_sent = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
        socks = _open(ports["metrics"], n, "127.0.0.1", half_sent)
        time.sleep(0.5)
        took = _timed(ports["metrics"], b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", args.wait)
        print(f"metrics: {len(socks)} half-sent requests; valid scrape answered in "
              + (f"{took * 1000:.1f} ms" if took is not None else f"> {args.wait:.0f} s (no answer)"))
        time.sleep(args.wait)
        print(f"metrics: child holds {_proc(child.pid)[1]} fds {args.wait + 0.5:.0f} s after the half-sent requests")
        _close(socks)
        time.sleep(1.0)

        before_rss, before_fds = _proc(child.pid)
        started = time.monotonic()
        socks = _open(ports["outbound"], n, "127.0.0.1")
        time.sleep(2.0)
        rss, fds = _proc(child.pid)
        print(f"outbound: {len(socks)} idle sockets: child RSS {before_rss / 1024:.1f} -> {rss / 1024:.1f} MiB, "
              f"fds {before_fds} -> {fds}")
        _close(socks)
        time.sleep(args.wait)
        child.stdin.write("\n")
        child.stdin.flush()
        warnings = json.loads(child.stdout.readline())["warnings"]
        rss, fds = _proc(child.pid)
        print(f"outbound: after closing them: child RSS {rss / 1024:.1f} MiB, fds {fds}; "
              f"{warnings} warnings logged in {time.monotonic() - started:.0f} s")
    finally:
        child.kill()
        child.wait()


if __name__ == "__main__":
    if "--serve" in sys.argv:
        _child_serve()
    else:
        main()
