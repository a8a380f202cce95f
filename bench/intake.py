"""ESL intake benchmark: eslbridge's InboundClient vs stock greenswitch.InboundESL on the same stream.

The simulator runs in a subprocess (its own core) and sends N generated real-call events at full speed
to every client that subscribes; each reader counts events with a no-op consumer.

    python bench/intake.py [--events 50000] [--all] [--paused]

--all subscribes to ALL (every event of the captured calls) instead of the daemon's subscription.
--paused keeps eslbridge's consumer blocked, so every event beyond the memory queue is spilled to disk:
the rate printed is what the reader sustains while spilling (backpressure vs spill, spill.py).
Stock greenswitch cannot parse text/event-json at all (its reader dies on the first JSON event), so it
is measured on the plain stream; the ratio is eslbridge(json or plain) / stock(plain).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gevent
import greenswitch
from gevent.event import Event

from eslbridge.esl.inbound import SUBSCRIBED_EVENTS, InboundClient

MIX = "bridged=5,busy=1,no_answer=1,cancel=1,reject=1,blind_transfer=1,originate=1"


def start_sim(n: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "eslbridge.sim", "--listen", "127.0.0.1:0", "--blast", str(n), "--mix", MIX,
         "--heartbeat", "3600", "--blast-pool", "400", "--seed", "1"],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline().split(":")[-1])


def run_ours(port: int, fmt: str, n: int, events: tuple[str, ...], paused: bool) -> tuple[float, int]:
    done, first, count = Event(), [0.0], [0]
    gate = Event()

    def consume(node: str, event: dict) -> None:
        count[0] += 1
        if count[0] == n:
            done.set()

    def blocked(node: str, event: dict) -> None:
        gate.wait()

    with tempfile.TemporaryDirectory() as spill:
        client = InboundClient("127.0.0.1", port, "ClueCon", "bench", fmt, blocked if paused else consume,
                               lambda node, rows: None, events=events, spill_dir=spill, queue_size=10_000,
                               heartbeat_interval=600)
        first[0] = time.perf_counter()  # the clock runs from connect to the last event handled
        client.start()
        if paused:
            while len(client.queue) < n - 1:  # the consumer holds one event, blocked
                gevent.sleep(0.001)
        else:
            done.wait(600)
        elapsed = time.perf_counter() - first[0]
        size = client.stats.bytes_in
        overflows = client.stats.overflows
        gate.set()
        client.stop(drain_timeout=0)
    if paused:
        print(f"  (paused consumer: {overflows} events spilled to disk)")
    return elapsed, size


def run_stock(port: int, fmt: str, n: int, events: tuple[str, ...]) -> tuple[float, int]:
    esl = greenswitch.InboundESL("127.0.0.1", port, "ClueCon")
    esl.connect()
    done, first, count = Event(), [0.0], [0]

    def handler(event) -> None:
        count[0] += 1
        if count[0] == n:
            done.set()

    esl.register_handle("*", handler)
    first[0] = time.perf_counter()  # the simulator starts sending when the subscription is acknowledged
    esl.send(f"event {fmt} {' '.join(events)}")
    done.wait(600)
    elapsed = time.perf_counter() - first[0]
    esl._run = False
    esl.sock.close()
    return elapsed, 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--all", action="store_true", help="subscribe to ALL instead of the daemon's events")
    p.add_argument("--paused", action="store_true", help="measure eslbridge with its consumer blocked (spill)")
    args = p.parse_args()
    n = args.events
    events = ("ALL",) if args.all else SUBSCRIBED_EVENTS
    proc, port = start_sim(n)
    rows = []
    try:
        for name, fmt in (("eslbridge", "json"), ("eslbridge", "plain"), ("greenswitch", "plain")):
            if name == "eslbridge":
                secs, size = run_ours(port, fmt, n, events, args.paused)
            else:
                secs, size = run_stock(port, fmt, n, events)
            rows.append((name, fmt, secs, size))
            gevent.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait()
    stock_rate = n / rows[-1][2]
    sizes = {fmt: size for name, fmt, _, size in rows if size}
    print(f"subscription: {'ALL' if args.all else 'daemon (DESIGN 5)'}; mix {MIX}")
    print(f"{'reader':12} {'format':6} {'events':>8} {'seconds':>8} {'events/s':>10} {'MB/s':>8} {'x stock':>8}")
    for name, fmt, secs, _ in rows:
        mb = sizes.get(fmt, 0) / secs / 1e6
        print(f"{name:12} {fmt:6} {n:8d} {secs:8.2f} {n / secs:10.0f} {mb:8.1f} {n / secs / stock_rate:8.2f}")
    print("greenswitch json: n/a (its reader dies on the first text/event-json frame)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
