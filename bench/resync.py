"""Longest event-loop stall during a resync of 100,000 channels (DESIGN section 9: <= 100 ms).

    python -m bench.resync [--channels 100000] [--known 40000] [--active 20000] [--dsn DSN]

The daemon's resync path, end to end: the simulator (``python -m eslbridge.sim --channels-file``,
a process of its own) answers the ESL client's `show channels as json` with every channel (~30 MB
at 100,000: one api/response frame over a real socket, read by ``eslbridge.esl.inbound``'s
reader and framing), the client's consumer parses it row by row and hands the rows to
``eslbridge.store.resync.Resync`` (Active rows read from PostgreSQL, the correlator's resync in slices,
stale rows closed), as the daemon does. Meanwhile another greenlet wakes up every millisecond and
records the gaps between its wake-ups: the longest gap is the longest time the directory or the
ESL reader could have waited.
On a shared host the wall-clock gaps include time the process was not scheduled at all, so the
CPU time the process used within each gap is reported too (``max_stall_cpu_ms``: the longest
stretch of work done without yielding).

Set up like a busy node after a long ESL gap: the correlator holds ``known`` calls (three
quarters still up, the rest vanished), the database ``active`` Active rows it does not hold (half
still up: re-adopted, half gone: closed), and the remaining channels are new (opened from the
snapshot). Record updates are collected, not written (the writer's batches are bounded by its
own batch size). Without ``--dsn`` a throwaway PostgreSQL is started. Prints its figures on a ``bench-result:`` line
(the format ``bench.run`` collects).
"""

from __future__ import annotations

import gevent.monkey

gevent.monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import orjson  # noqa: E402
import psycopg  # noqa: E402
from psycopg_pool import ConnectionPool  # noqa: E402

from bench.host import cpu_ticks, steal_percent  # noqa: E402
from eslbridge.calls.correlator import Correlator  # noqa: E402
from eslbridge.esl.inbound import InboundClient  # noqa: E402
from eslbridge.sim.localpg import PgCluster  # noqa: E402
from eslbridge.store.resync import Resync  # noqa: E402

NODE = "bench"
START_S = 1795299200  # the calls' created time (epoch seconds)


def _channel(uuid: str) -> dict[str, str]:
    return {"uuid": uuid, "call_uuid": uuid, "direction": "inbound", "created_epoch": str(START_S),
            "name": "sofia/internal/1000@127.0.0.1", "state": "CS_EXECUTE", "cid_name": "Ext 1000",
            "cid_num": "1000", "ip_addr": "127.0.0.1", "dest": "1001", "application": "bridge",
            "read_codec": "PCMU", "callstate": "ACTIVE"}


def _create(uuid: str, n: int) -> dict[str, str]:
    us = str(START_S * 1_000_000 + n)
    return {"Event-Name": "CHANNEL_CREATE", "Unique-ID": uuid, "Event-Sequence": str(n + 1),
            "Event-Date-Timestamp": us, "Caller-Channel-Created-Time": us, "Call-Direction": "inbound",
            "Channel-Name": "sofia/internal/1000@127.0.0.1", "Caller-Caller-ID-Number": "1000",
            "Caller-Destination-Number": "1001", "variable_sip_call_id": f"{n}@bench"}


def _insert_active(dsn: str, active: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO call_records (call_uuid, node, call_id, direction, start_time, status, enc_key_id)"
            " SELECT 'active-' || n, %s, n || '@bench', 'Inbound', to_timestamp(%s), 'Active', 1"
            " FROM generate_series(0, %s - 1) n", (NODE, START_S, active))
        conn.execute(
            "INSERT INTO call_events (call_uuid, node, seq, event_type, event_data, timestamp)"
            " SELECT 'active-' || n, %s, 1, 'created', '{}', to_timestamp(%s) FROM generate_series(0, %s - 1) n",
            (NODE, START_S, active))


def _simulator(rows_file: Path) -> tuple[subprocess.Popen, int]:
    """The simulator in a process of its own (its JSON encoding of the reply is not ours to measure)."""
    proc = subprocess.Popen([sys.executable, "-m", "eslbridge.sim", "--listen", "127.0.0.1:0", "--heartbeat", "5",
                             "--channels-file", str(rows_file)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("listening "):
        proc.kill()
        raise SystemExit(f"simulator did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def measure(dsn: str, channels: int, known: int, active: int) -> dict:
    """Set up, run one resync while a ticker records its gaps; the figures as a dict."""
    _insert_active(dsn, active)
    correlator = Correlator(NODE, lambda user, realm: None)
    for n in range(known):
        correlator.feed(_create(f"known-{n}", n))
    live_known = known * 3 // 4
    adopted = active // 2
    rows = [_channel(f"known-{n}") for n in range(live_known)]
    rows += [_channel(f"active-{n}") for n in range(adopted)]
    rows += [_channel(f"new-{n}") for n in range(max(0, channels - len(rows)))]
    reply_bytes = len(orjson.dumps({"row_count": len(rows), "rows": rows}))
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "channels.json"
        rows_file.write_bytes(orjson.dumps(rows))
        del rows
        sim, port = _simulator(rows_file)
    try:
        return {**_run(dsn, port, correlator), "known": known, "active": active,
                "snapshot_mb": round(reply_bytes / 1e6, 1)}
    finally:
        sim.kill()
        sim.wait()


def _run(dsn: str, port: int, correlator: Correlator) -> dict:
    gc.collect()
    gc.freeze()  # the set-up is the daemon's long-lived state
    updates: list = []
    gaps: list[float] = []
    cpu_gaps: list[float] = []
    running = True
    done = gevent.event.AsyncResult()

    def ticker() -> None:
        last, last_cpu = time.perf_counter(), time.process_time()
        while running:
            gevent.sleep(0.001)
            now, cpu = time.perf_counter(), time.process_time()
            gaps.append(now - last)
            cpu_gaps.append(cpu - last_cpu)
            last, last_cpu = now, cpu

    with ConnectionPool(dsn, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
        resync = Resync(pool, updates.append, lambda: False, 5.0)
        timings: dict[str, float] = {}

        def on_snapshot(node: str, channel_rows: list) -> None:
            timings["reply"] = time.perf_counter() - t0  # sent, framed and parsed
            done.set((len(channel_rows), resync.run(correlator, channel_rows)))

        tick = gevent.spawn(ticker)
        gevent.sleep(0.05)
        ticks, t0 = cpu_ticks(), time.perf_counter()
        client = InboundClient("127.0.0.1", port, "ClueCon", NODE, "json", lambda node, event: None, on_snapshot,
                               heartbeat_interval=5.0, command_timeout=60.0)
        client.start()
        channels, result = done.get(timeout=600)
        elapsed = time.perf_counter() - t0
        running = False
        tick.join()
        lost = dict(client.stats.streams_lost)
        client.stop()
        with psycopg.connect(dsn) as conn:
            left = conn.execute("SELECT count(*) FROM call_records WHERE node = %s AND status = 'Active'",
                                (NODE,)).fetchone()[0]
    gc.unfreeze()
    return {"channels": channels, "updates": result.updates, "closed": result.closed, "active_left": left,
            "live_calls": correlator.active_calls, "streams_lost": lost,
            "reply_seconds": round(timings["reply"], 2), "seconds": round(elapsed, 2),
            "max_stall_ms": round(max(gaps) * 1000, 1),
            "p99_stall_ms": round(sorted(gaps)[int(len(gaps) * 0.99)] * 1000, 1),
            "max_stall_cpu_ms": round(max(cpu_gaps) * 1000, 1),
            "steal_pct": round(steal_percent(ticks, cpu_ticks()), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", type=int, default=100_000)
    ap.add_argument("--known", type=int, default=40_000)
    ap.add_argument("--active", type=int, default=20_000)
    ap.add_argument("--dsn", help="a migrated database (default: a throwaway PostgreSQL)")
    args = ap.parse_args()
    cluster = None
    dsn = args.dsn
    if not dsn:
        cluster = PgCluster()
        cluster.start()
        dsn = cluster.migrated_database("bench")
    try:
        print("bench-result: " + json.dumps(measure(dsn, args.channels, args.known, args.active)))
    finally:
        if cluster is not None:
            cluster.destroy()


if __name__ == "__main__":
    main()
