"""Directory lookups benchmark (DESIGN section 11): requests/s and p50/p99 latency.

    python -m bench.directory [--seconds 10] [--clients 50] [--users 1000] [--hostile 1000] [--standby]

Starts a private PostgreSQL, creates users, then measures in one run, each server in its own
process and the load generator in another (on 2 cores, servers on the first and wrk on the
second; PostgreSQL runs on either):

- eslbridge, cached     DirectoryService, cache_seconds=300 (warm);
- eslbridge, uncached   DirectoryService, cache_seconds=0 (every request read from PostgreSQL; the
                        misses of concurrent requests share one query, lookup.py);
- eslbridge, pywsgi     the same service's wsgi_app under gevent.pywsgi, cached;
- ... hostile open      the paced eslbridge rows again while ``--hostile`` idle connections (opened
                        before the load, never sending a byte) stay open: DESIGN's "also while 1,000
                        idle hostile connections are open";
- floor                 a constant answer without parsing or lookups, paced like the rows above: the
                        p99 this machine's loopback, gevent and wrk allow at best (with wrk only);
- baseline              one SELECT per request, no cache, pywsgi (the FusionPBX-without-memcache
                        pattern the targets are anchored on);
- with --standby        also eslbridge uncached reading a streaming standby (database.replica_url,
                        directory/replica.py), a second `postgres` made with pg_basebackup.

"steal %" is the share of all CPU time the hypervisor took from this VM during the row (/proc/stat);
"wait ms" the time the server process was runnable but not running during the measured part (another
process held its core, or the host stole it: /proc/PID/schedstat), with wrk only; "load" the host's
one-minute load average at the row's end. A p99 of a few ms moves with both: they say whether a slow
row was the server's doing or the host's.

Clients: keep-alive connections, each posting a real mod_xml_curl sip_auth body (the url_escape
capture, user/domain replaced) for a random user; every answer must carry an a1-hash. With `wrk`
on PATH (Debian: wrk) it generates the load: a C client takes far less of the two cores than a
Python one, so the numbers describe the server. Without it, gevent greenlets in a child process.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.host import cpu_ticks, run_queue_wait, steal_percent

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "tests" / "fixtures" / "public" / "url-escape__xmlcurl-directory-request__1.txt"
REALM = "bench.example"
PASSWORD = "bench-directory-secret"
AUTH = "Basic " + base64.b64encode(f"freeswitch:{PASSWORD}".encode()).decode()


# Two cores: servers on the first, wrk on the second (PostgreSQL floats), as if the load came from
# another machine; sharing cores made every p99 depend on the kernel's scheduling more than on the server.
PINNED = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def _child(role: str, spec: dict) -> subprocess.Popen:
    code = f"from gevent import monkey; monkey.patch_all(); import bench.directory as b; b.{role}()"
    if PINNED:
        code = "import os; os.sched_setaffinity(0, {0}); " + code
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
    from eslbridge.ops.heap import freeze_startup

    spec = json.loads(sys.stdin.readline())
    config = DirectoryConfig(ListenAddress("127.0.0.1", 0), "/directory", (ipaddress.ip_network("127.0.0.0/8"),),
                             "freeswitch", Secret(PASSWORD, "bench"), spec["cache_seconds"])
    service = DirectoryService(config, spec["dsn"], replica_dsn=spec.get("replica_dsn"))
    service.start()
    freeze_startup()  # as the daemon does after its start-up
    port = service.address[1]
    if spec.get("pywsgi"):
        server = WSGIServer(("127.0.0.1", 0), wsgi_app(service), log=None)
        server.start()
        port = server.address[1]
    print(f"READY {port}", flush=True)
    gevent.wait()


def wsgi_app(service: Any) -> Callable:
    """The directory endpoint as a WSGI application, to compare gevent.pywsgi with the built-in server."""
    from eslbridge.directory.service import MAX_BODY

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        headers = {k[5:].replace("_", "-").lower().encode(): v.encode("latin-1")
                   for k, v in environ.items() if k.startswith("HTTP_")}
        refusal = service.gate(environ.get("REMOTE_ADDR", ""), environ["REQUEST_METHOD"].encode(),
                               environ.get("PATH_INFO", "").encode("latin-1"), headers)
        if refusal is None:
            try:
                length = int(environ.get("CONTENT_LENGTH") or "")
            except ValueError:
                refusal = 411, b""
            else:
                if length > MAX_BODY:
                    refusal = service.oversized()
                else:
                    refusal = 200, service.answer(environ["wsgi.input"].read(length))
        status, body = refusal
        start_response(f"{status} {'OK' if status == 200 else 'Refused'}",
                       [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
        return [body]

    return app


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


def serve_floor() -> None:
    """A constant answer, no parsing, no lookup: what loopback, gevent and wrk give on this machine at
    best, so the p99 rows can be read against it."""
    import contextlib
    import socket

    import gevent
    from gevent.server import StreamServer

    body = b'<document type="freeswitch/xml"><param name="a1-hash" value="0"/></document>'
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    def handle(sock: socket.socket, addr: tuple) -> None:
        with contextlib.suppress(OSError):  # wrk resets its connections at the end
            serve(sock)

    def serve(sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        while data := sock.recv(65536):
            buf += data
            while (end := buf.find(b"\r\n\r\n")) >= 0:
                start = buf.index(b"Content-Length: ", 0, end) + 16
                size = end + 4 + int(buf[start:buf.index(b"\r\n", start)])
                if len(buf) < size:
                    break
                buf = buf[size:]
                sock.sendall(answer)

    server = StreamServer(("127.0.0.1", 0), handle)
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
    requests = []
    for body in (b.encode() for b in _bodies(spec["users"])):
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


def _bodies(users: int) -> list[str]:
    template = TEMPLATE.read_text()
    return [template.replace("=2600&", f"=u{i}&").replace("foo.example.com", REALM) for i in range(users)]


_WRK_SCRIPT = """
local bodies = {%s}
n, errors = 0, 0  -- globals: done() reads them with thread:get
local headers = {["Authorization"] = "%s", ["Content-Type"] = "application/x-www-form-urlencoded"}
request = function()
  n = n %% #bodies + 1
  return wrk.format("POST", "/directory", headers, bodies[n])
end
local interval = %f  -- ms between two requests of the whole run; 0: as fast as possible
if interval > 0 then
  -- One schedule for all connections (wrk runs one thread here): request k is due at start + k * interval,
  -- whatever the latency of the others, so the offered rate is the rate asked for.
  local ffi = require("ffi")
  ffi.cdef[[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clock, bench_timespec *tp);
  ]]
  local ts, due = ffi.new("bench_timespec"), nil
  delay = function()
    ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
    local now = tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
    due = (due or now) + interval
    return math.max(0, due - now)
  end
end
response = function(status, hdrs, body)
  if status ~= 200 or not body:find("a1-hash", 1, true) then errors = errors + 1 end
end
local threads = {}
setup = function(thread) table.insert(threads, thread) end
done = function(summary, latency, requests)
  local e = 0
  for _, t in ipairs(threads) do e = e + t:get("errors") end
  io.write(string.format("RESULT %%d %%f %%f %%d\\n", summary.requests, latency:percentile(50),
                         latency:percentile(99), e))
end
"""


def wrk_load(port: int, users: int, clients: int, seconds: float, warmup: float, rate: float = 0,
             server_pid: int | None = None) -> dict:
    """Load with wrk (one thread: the other core is the server's); latencies in ms.

    rate 0: every connection sends its next request as soon as the answer arrives (throughput at
    saturation, where latency is only queueing: clients / throughput). rate > 0: requests are sent on
    one schedule, `rate` per second over all connections (a connection waits for its next slot): latency
    at that load. The achieved rate falls short of `rate` only when the server cannot keep up.
    With ``server_pid``, "wait_ms" is how long that process waited for a CPU during the measured part.
    """
    bodies = ", ".join(json.dumps(b) for b in _bodies(users))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT % (bodies, AUTH, 1000 / rate if rate else 0))
    try:
        base = [*(["taskset", "-c", "1"] if PINNED else []), "wrk", "-t1", f"-c{clients}", "-s", script.name, f"http://127.0.0.1:{port}/directory"]
        subprocess.run([*base, f"-d{max(1, round(warmup))}s"], check=True, capture_output=True)
        waited = run_queue_wait(server_pid) if server_pid else 0.0
        out = subprocess.run([*base, f"-d{max(1, round(seconds))}s"], check=True, capture_output=True,
                             text=True).stdout
        waited = run_queue_wait(server_pid) - waited if server_pid else None
    finally:
        os.unlink(script.name)
    requests, p50_us, p99_us, errors = re.search(r"RESULT (\d+) ([\d.]+) ([\d.]+) (\d+)", out).groups()
    return {"rps": int(requests) / max(1, round(seconds)), "p50": float(p50_us) / 1000,
            "p99": float(p99_us) / 1000, "n": int(requests), "errors": int(errors),
            "wait_ms": None if waited is None else waited * 1000}


# --- orchestration ----------------------------------------------------------------------------


@contextlib.contextmanager
def idle_connections(port: int, count: int):
    """`count` connections to the server that never send anything, open for the block."""
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", port)))
        yield
    finally:
        for sock in socks:
            sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--hostile", type=int, default=1000,
                        help="idle connections held open during the hostile rows (0: skip them)")
    parser.add_argument("--standby", action="store_true", help="also read users from a streaming standby")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the server child inherits it
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 2 * args.hostile + 1024)), hard))

    import psycopg

    from eslbridge.accounts import users
    from eslbridge.sim.localpg import PgCluster
    from eslbridge.store.migrate import migrate

    cluster = PgCluster()
    cluster.start()
    standby = None
    try:
        dsn = cluster.dsn("postgres")
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(args.users):
                users.add_user(conn, f"u{i}", REALM, f"password-{i}", rounds=4, actor="bench")
            # What autovacuum does within a minute of a bulk load: without statistics the planner
            # probes users by realm alone (a scan of the realm per key) instead of the unique key.
            conn.execute("ANALYZE users")
        if args.standby:
            standby = PgCluster(standby_of=cluster)
            standby.start()
        # (label, server role, server options, offered rate: 0 = saturation; DESIGN targets in the label;
        # idle connections held open meanwhile)
        hostile = f", {args.hostile:,} idle open"
        runs = [("eslbridge cached, saturation", "serve_eslbridge", {"cache_seconds": 300}, 0),
                ("eslbridge cached, 5,000/s offered", "serve_eslbridge", {"cache_seconds": 300}, 5000),
                ("eslbridge uncached, saturation", "serve_eslbridge", {"cache_seconds": 0}, 0),
                ("eslbridge uncached, 1,500/s offered", "serve_eslbridge", {"cache_seconds": 0}, 1500),
                ("eslbridge cached via pywsgi, saturation", "serve_eslbridge", {"cache_seconds": 300, "pywsgi": True},
                 0),
                ("baseline: SELECT per request, saturation", "serve_baseline", {}, 0),
                ("floor: constant answer, 5,000/s offered", "serve_floor", {}, 5000),
                ("floor: constant answer, 1,500/s offered", "serve_floor", {}, 1500)]
        runs = [(*run, 0) for run in runs]
        if args.hostile:
            runs += [("eslbridge cached, 5,000/s" + hostile, "serve_eslbridge", {"cache_seconds": 300}, 5000,
                      args.hostile),
                     ("eslbridge uncached, 1,500/s" + hostile, "serve_eslbridge", {"cache_seconds": 0}, 1500,
                      args.hostile)]
        if standby is not None:
            runs.append(("eslbridge uncached via standby, saturation", "serve_eslbridge",
                         {"cache_seconds": 0, "replica_dsn": standby.dsn("postgres")}, 0, 0))
        wrk = shutil.which("wrk")
        print(f"load: {'wrk' if wrk else 'python (install wrk for a lighter client and paced runs)'}; "
              f"{args.clients} concurrent keep-alive clients, {args.seconds:g} s each, {args.users} users, "
              f"{os.cpu_count()} CPUs ("
              + ("server on CPU 0, wrk on CPU 1, PostgreSQL on either" if PINNED and wrk else "shared by all")
              + ")")
        print(f"{'server':42} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'steal %':>7}"
              f" {'wait ms':>7} {'load':>5}")
        results = {}
        for label, role, extra, rate, idle in runs:
            if (rate or idle) and not wrk:
                continue
            server = _child(role, {"dsn": dsn, **extra})
            ticks = cpu_ticks()
            try:
                port = int(server.stdout.readline().split()[1])
                if wrk:
                    with idle_connections(port, idle):
                        result = wrk_load(port, args.users, args.clients, args.seconds, args.warmup, rate,
                                          server.pid)
                else:
                    client = _child("load", {"port": port, "users": args.users, "clients": args.clients,
                                             "seconds": args.seconds, "warmup": args.warmup})
                    result = json.loads(client.stdout.readline())
                    client.wait()
            finally:
                server.kill()
                server.wait()
            result["steal"] = steal_percent(ticks, cpu_ticks())
            result["load"] = os.getloadavg()[0]
            waited = "" if result.get("wait_ms") is None else f"{result['wait_ms']:.0f}"
            print(f"{label:42} {result['rps']:9.0f} {result['p50']:8.2f} {result['p99']:8.2f} {result['errors']:7d}"
                  f" {result['steal']:7.1f} {waited:>7} {result['load']:5.2f}")
            results[label] = result

        def pick(saturated: str, paced: str) -> dict:
            latency = results.get(paced, results[saturated])
            return {"rps": round(results[saturated]["rps"]), "p50": round(latency["p50"], 2),
                    "p99": round(latency["p99"], 2), "paced_rps": round(latency["rps"]),
                    "steal": round(latency["steal"], 1), "load": round(latency["load"], 2),
                    **({"wait_ms": round(latency["wait_ms"])} if latency.get("wait_ms") is not None else {})}

        print("bench-result: " + json.dumps({"bench": "directory", "clients": args.clients,
              "cached": pick(runs[0][0], runs[1][0]), "uncached": pick(runs[2][0], runs[3][0]),
              "baseline": pick(runs[5][0], runs[5][0]),
              **({"floor_p99": {rate: round(results[label]["p99"], 2) for label, _, _, rate, _ in runs[6:8]},
                  "hostile": {"idle": args.hostile, **{kind: pick(run[0], run[0]) for kind, run in
                                                       zip(("cached", "uncached"), [r for r in runs if r[4]],
                                                           strict=False)}}}
                 if wrk else {})}))
    finally:
        if standby is not None:
            standby.destroy()
        cluster.destroy()


if __name__ == "__main__":
    main()
