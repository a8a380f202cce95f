"""Run a real DirectoryService in a child process for the directory tests and the bench.

gevent must monkey-patch before psycopg and the socket module are imported, as the daemon
does; pytest's own process must stay unpatched (other tests use real threads). So the service
runs in ``python -c "<patch>; serve_main()"`` and the tests talk to it over loopback HTTP with
the standard library's http.client, like FreeSWITCH would.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "xml-curl-secret"
USERNAME = "freeswitch"
_BOOT = "from gevent import monkey; monkey.patch_all(); from tests.directory_fixtures import serve_main; serve_main()"


def serve_main() -> None:
    """Child process: start the service from a JSON spec on stdin, print READY, serve until killed."""
    import gevent

    from eslbridge.config import DirectoryConfig, ListenAddress, Secret
    from eslbridge.directory import DirectoryService

    spec = json.loads(sys.stdin.readline())
    flush_file = spec.get("flush_file")

    def flush(user: str, realm: str) -> None:
        with open(flush_file, "a") as fh:
            fh.write(f"{user}@{realm}\n")

    config = DirectoryConfig(
        listen=ListenAddress("127.0.0.1", 0),
        path="/directory",
        allow=tuple(ipaddress.ip_network(n) for n in spec["allow"]),
        username=USERNAME,
        password=Secret(PASSWORD, "test"),
        cache_seconds=spec["cache_seconds"],
    )
    metrics = None
    if spec.get("metrics"):
        from eslbridge.ops.metrics import Metrics, MetricsServer

        metrics = Metrics()
        metrics_server = MetricsServer(("127.0.0.1", 0), metrics, lambda: (True, {}))
        metrics_server.start()
    service = DirectoryService(config, spec["dsn"], flush_hook=flush if flush_file else None,
                               deadline=spec.get("deadline", 2.0), metrics=metrics,
                               replica_dsn=spec.get("replica_dsn"), replica_max_lag=spec.get("replica_max_lag", 5.0))
    service.start()
    with gevent.Timeout(10, False):
        while not service.listener.connected:
            gevent.sleep(0.01)
    metrics_port = metrics_server.address[1] if metrics else 0
    print(f"READY {service.address[1]} {metrics_port}" if service.listener.connected else "NO-LISTEN", flush=True)
    gevent.wait()


def auth_header(user: str = USERNAME, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class DirectoryProcess:
    dsn: str
    cache_seconds: int = 300
    allow: tuple[str, ...] = ("127.0.0.1/32",)
    flush_file: str | None = None
    deadline: float = 2.0
    replica_dsn: str | None = None
    replica_max_lag: float = 5.0
    metrics: bool = False
    port: int = 0
    metrics_port: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> DirectoryProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
        )
        spec = {"dsn": self.dsn, "cache_seconds": self.cache_seconds, "allow": list(self.allow),
                "flush_file": self.flush_file, "deadline": self.deadline, "replica_dsn": self.replica_dsn,
                "replica_max_lag": self.replica_max_lag, "metrics": self.metrics}
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"directory service did not start: {line!r}")
        self.port, self.metrics_port = map(int, line.split()[1:3])
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def post(self, body: bytes | str, *, auth: str | None = None, headers: dict[str, str] | None = None,
             path: str = "/directory", method: str = "POST") -> tuple[int, bytes]:
        body = body.encode() if isinstance(body, str) else body
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            all_headers = {"Content-Type": "application/x-www-form-urlencoded",
                           "Authorization": auth if auth is not None else auth_header()}
            all_headers.update(headers or {})
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()
