"""Directory lookups benchmark (DESIGN section 11): requests/s and p50/p99 latency.

    python bench/directory.py [--seconds 10] [--clients 50] [--users 1000]

Starts a private PostgreSQL, creates users, then measures in one run, each server in its own
process and the load generator in another (2 cores: the numbers include the client's cost):

- eslbridge, cached     DirectoryService, cache_seconds=300 (warm);
- eslbridge, uncached   DirectoryService, cache_seconds=0 (one prepared SELECT per request);
- eslbridge, pywsgi     the same service's wsgi_app under gevent.pywsgi, cached;
- baseline              one SELECT per request, no cache, pywsgi (the FusionPBX-without-memcache
                        pattern the targets are anchored on).

Clients: gevent greenlets with keep-alive connections, each posting a real mod_xml_curl
sip_auth body (the tropo-proxy capture, user/domain replaced) for a random user.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT.parent / "shared" / "fixtures" / "public" / "tropo-proxy__xmlcurl-directory-request__1.txt"
REALM = "bench.example"
PASSWORD = "bench-directory-secret"
AUTH = "Basic " + base64.b64encode(f"freeswitch:{PASSWORD}".encode()).decode()


def _child(role: str, spec: dict) -> subprocess.Popen:
    code = f"from gevent import monkey; monkey.patch_all(); import bench.directory as b; b.{role}()"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    proc.stdin.write(json.dumps(spec) + "\n")
    proc.stdin.flush()
    return proc


# --- servers (child processes, gevent-patched) -------------------------------------------------


def serve_eslbridge() -> None:
    import ipaddress

    import gevent
    from gevent.pywsgi import WSGIServer

    from eslbridge.config import DirectoryConfig, ListenAddress, Secret
    from eslbridge.directory import DirectoryService

    spec = json.loads(sys.stdin.readline())
    config = DirectoryConfig(ListenAddress("127.0.0.1", 0), "/directory", (ipaddress.ip_network("127.0.0.0/8"),),
                             "freeswitch", Secret(PASSWORD, "bench"), spec["cache_seconds"])
    service = DirectoryService(config, spec["dsn"])
    service.start()
    port = service.address[1]
    if spec.get("pywsgi"):
        server = WSGIServer(("127.0.0.1", 0), service.wsgi_app, log=None)
        server.start()
        port = server.address[1]
    print(f"READY {port}", flush=True)
    gevent.wait()


def serve_baseline() -> None:
    """One SELECT per request, no cache, XML by string formatting: the anchor of DESIGN section 11."""
    from urllib.parse import parse_qs

    import gevent
    from gevent.pywsgi import WSGIServer
    from psycopg_pool import ConnectionPool

    spec = json.loads(sys.stdin.readline())
    pool = ConnectionPool(spec["dsn"], min_size=10, max_size=10, kwargs={"autocommit": True})

    def app(environ, start_response):
        fields = parse_qs(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])).decode())
        user, domain = fields["user"][0], fields["domain"][0]
        with pool.connection() as conn:
            row = conn.execute("SELECT sip_ha1 FROM users WHERE username = %s AND realm = %s AND enabled",
                               (user, domain)).fetchone()
        body = (f'<document type="freeswitch/xml"><section name="directory"><domain name="{domain}">'
                f'<user id="{user}"><params><param name="a1-hash" value="{row[0]}"/></params></user>'
                "</domain></section></document>").encode()
        start_response("200 OK", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
        return [body]

    server = WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    print(f"READY {server.address[1]}", flush=True)
    gevent.wait()


# --- load generator (child process, gevent-patched) -------------------------------------------


def load() -> None:
    import random
    import socket
    import time

    import gevent

    spec = json.loads(sys.stdin.readline())
    template = TEMPLATE.read_text()
    requests = []
    for i in range(spec["users"]):
        body = (template.replace("%2B14158510070", f"u{i}").replace("connect.tropo.com", REALM)).encode()
        requests.append(b"POST /directory HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\n"
                        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s"
                        % (AUTH.encode(), len(body), body))
    latencies: list[float] = []
    errors = [0]

    def client(until: float, record: bool) -> None:
        sock = socket.create_connection(("127.0.0.1", spec["port"]))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while time.perf_counter() < until:
            started = time.perf_counter()
            sock.sendall(random.choice(requests))
            data = b""
            while not data.endswith(b"</document>\n") and not data.endswith(b"</document>"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                data += chunk
            if b"a1-hash" not in data:
                errors[0] += 1
            if record:
                latencies.append(time.perf_counter() - started)
        sock.close()

    warm = time.perf_counter() + spec["warmup"]
    gevent.joinall([gevent.spawn(client, warm, False) for _ in range(spec["clients"])], raise_error=True)
    end = time.perf_counter() + spec["seconds"]
    gevent.joinall([gevent.spawn(client, end, True) for _ in range(spec["clients"])], raise_error=True)
    latencies.sort()
    n = len(latencies)
    print(json.dumps({"rps": n / spec["seconds"], "p50": latencies[n // 2] * 1000,
                      "p99": latencies[int(n * 0.99)] * 1000, "n": n, "errors": errors[0]}), flush=True)


# --- orchestration ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--users", type=int, default=1000)
    args = parser.parse_args()

    import psycopg

    from eslbridge import users
    from eslbridge.localpg import PgCluster
    from eslbridge.store.migrate import migrate

    cluster = PgCluster()
    cluster.start()
    try:
        dsn = cluster.dsn("postgres")
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(args.users):
                users.add_user(conn, f"u{i}", REALM, f"password-{i}", rounds=4, actor="bench")
        runs = [("eslbridge, cached", "serve_eslbridge", {"cache_seconds": 300}),
                ("eslbridge, uncached", "serve_eslbridge", {"cache_seconds": 0}),
                ("eslbridge via pywsgi, cached", "serve_eslbridge", {"cache_seconds": 300, "pywsgi": True}),
                ("baseline: SELECT per request", "serve_baseline", {})]
        print(f"{args.clients} concurrent keep-alive clients, {args.seconds:g} s each, {args.users} users, "
              f"{os.cpu_count()} CPUs (server, client and PostgreSQL share them)")
        print(f"{'server':32} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        results = {}
        for label, role, extra in runs:
            server = _child(role, {"dsn": dsn, **extra})
            try:
                port = int(server.stdout.readline().split()[1])
                client = _child("load", {"port": port, "users": args.users, "clients": args.clients,
                                         "seconds": args.seconds, "warmup": args.warmup})
                result = json.loads(client.stdout.readline())
                client.wait()
            finally:
                server.kill()
                server.wait()
            print(f"{label:32} {result['rps']:9.0f} {result['p50']:8.2f} {result['p99']:8.2f} {result['errors']:7d}")
            results[label] = result
        print("bench-result: " + json.dumps({"bench": "directory", "clients": args.clients, **{
            key: {k: round(results[label][k], 2) for k in ("rps", "p50", "p99")}
            for key, label in (("cached", runs[0][0]), ("uncached", runs[1][0]), ("baseline", runs[3][0]))}}))
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
