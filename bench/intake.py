"""ESL intake benchmark: eslbridge's InboundClient vs stock greenswitch.InboundESL on the same stream.

The simulator runs in a subprocess (its own core) and sends generated real-call events at full speed
to every client that subscribes (`--blast`: a pool of rendered calls, sent round and round). Rows:

* eslbridge json / plain: InboundClient with a no-op consumer (framing, queue, event decoding);
* greenswitch plain: stock greenswitch 0.0.19 on the plain stream (its reader dies on JSON), with
  fewer events (it is slow) but reported as events/s all the same;
* eslbridge json + correlator: the DESIGN section 11 figure "intake + correlation": every event goes
  to `Correlator.feed`; its stream comes from a pool as big as the run, so every call is new (a pool
  sent round and round would give the correlator cheap repeats);
* sim ceiling: a bare socket counting frames, what the simulator can send at all on this machine.

Rates run from the subscription to the last event handled (stock greenswitch hands events on after
a delay, so its first delivery is no start mark), except for the correlated run: it runs from its first
event, since the simulator first renders a pool as big as the run. The last line is machine-readable
(`bench-result: {...}`).

    python bench/intake.py [--events 200000] [--stock-events 30000] [--correlated-events 30000]
                           [--all] [--paused]

--all subscribes to ALL (every event of the captured calls) instead of the daemon's subscription.
--paused keeps eslbridge's consumer blocked, so every event beyond the memory queue is spilled to disk:
the rate printed is what the reader sustains while spilling (backpressure vs spill, spill.py).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gevent
import greenswitch
from gevent.event import Event

from eslbridge.calls.correlator import Correlator
from eslbridge.esl.inbound import SUBSCRIBED_EVENTS, InboundClient

MIX = "bridged=5,busy=1,no_answer=1,cancel=1,reject=1,blind_transfer=1,originate=1"
T = TypeVar("T")
POOL = 400  # calls rendered by the simulator and sent round and round
EVENTS_PER_CALL = 7  # a little below what MIX gives with the daemon's subscription (~7.7)


def start_sim(n: int, pool: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "eslbridge.sim", "--listen", "127.0.0.1:0", "--blast", str(n), "--mix", MIX,
         "--heartbeat", "3600", "--blast-pool", str(pool), "--seed", "1"],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline().split(":")[-1])


def with_sim(n: int, pool: int, run: Callable[..., T], *args: object, **kwargs: object) -> T:
    """`run(port, *args, **kwargs)` against a fresh simulator blasting `n` events from `pool` calls."""
    proc, port = start_sim(n, pool)
    try:
        return run(port, *args, **kwargs)
    finally:
        proc.terminate()
        proc.wait()


class Clock:
    """Counts deliveries; `rate` is events/s from `start()` (else the first delivery) to the n-th."""

    def __init__(self, n: int) -> None:
        self.n, self.count, self.first, self.last = n, 0, 0.0, 0.0
        self.done = Event()

    def start(self) -> None:
        self.first = time.perf_counter()

    def tick(self) -> None:
        self.count += 1
        if self.count == 1 and not self.first:
            self.first = time.perf_counter()
        if self.count == self.n:
            self.last = time.perf_counter()
            self.done.set()

    @property
    def seconds(self) -> float:
        return self.last - self.first

    @property
    def rate(self) -> float:
        return self.n / self.seconds


def run_ours(port: int, fmt: str, n: int, events: tuple[str, ...], paused: bool = False,
             correlate: bool = False) -> tuple[float, float]:
    """(events/s, MB/s) of InboundClient; `correlate` feeds every event to a real Correlator."""
    clock, gate = Clock(n), Event()
    feed = Correlator("bench", lambda user, realm: None).feed

    def consume(node: str, event: dict) -> None:
        clock.tick()

    def correlated(node: str, event: dict) -> None:
        feed(event)
        clock.tick()

    def blocked(node: str, event: dict) -> None:
        if clock.count == 0:
            clock.tick()
        gate.wait()

    consumer = blocked if paused else correlated if correlate else consume
    with tempfile.TemporaryDirectory() as spill:
        if not correlate:  # the clock runs from connect, as for greenswitch (see main)
            clock.start()
        client = InboundClient("127.0.0.1", port, "ClueCon", "bench", fmt, consumer, lambda node, rows: None,
                               events=events, spill_dir=spill, queue_size=10_000, heartbeat_interval=600)
        client.start()
        if paused:
            while len(client.queue) < n:  # the blocked consumer's batch still counts in the queue
                gevent.sleep(0.001)
            clock.last = time.perf_counter()
            clock.count = n
        else:
            clock.done.wait(900)
        size = client.stats.bytes_in
        overflows = client.stats.overflows
        gate.set()
        client.stop(drain_timeout=0)
    if paused:
        print(f"  (paused consumer: {overflows} events spilled to disk)")
    return clock.rate, size / clock.seconds / 1e6


def run_stock(port: int, n: int, events: tuple[str, ...]) -> float:
    """events/s of stock greenswitch on the plain stream."""
    esl = greenswitch.InboundESL("127.0.0.1", port, "ClueCon")
    esl.connect()
    clock = Clock(n)
    esl.register_handle("*", lambda event: clock.tick())
    clock.start()  # the simulator starts sending when the subscription is acknowledged
    esl.send(f"event plain {' '.join(events)}")
    clock.done.wait(900)
    esl._run = False
    esl.sock.close()
    return clock.rate


def run_ceiling(port: int, fmt: str, n: int, events: tuple[str, ...]) -> float:
    """events/s a bare blocking socket receives (counting frame headers): what the simulator can send."""
    marker = b"\nContent-Type: text/event-"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.recv(4096)
        sock.sendall(b"auth ClueCon\n\n")
        sock.recv(4096)
        sock.sendall(f"event {fmt} {' '.join(events)}\n\n".encode())
        buf, tail, count, first = bytearray(1 << 20), b"", 0, 0.0
        while count < n:
            size = sock.recv_into(buf)
            if not size:
                break
            if not first:
                first = time.perf_counter()
            chunk = tail + bytes(buf[:size])
            count += chunk.count(marker)
            tail = chunk[-len(marker) + 1 :]
        return count / (time.perf_counter() - first)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000, help="events per eslbridge run")
    p.add_argument("--stock-events", type=int, default=30_000, help="events for stock greenswitch (slow)")
    p.add_argument("--correlated-events", type=int, default=30_000,
                   help="events through intake + correlator (all from distinct calls)")
    p.add_argument("--all", action="store_true", help="subscribe to ALL instead of the daemon's events")
    p.add_argument("--paused", action="store_true", help="measure eslbridge with its consumer blocked (spill)")
    args = p.parse_args()
    n, n_stock, n_corr = args.events, args.stock_events, args.correlated_events
    events = ("ALL",) if args.all else SUBSCRIBED_EVENTS
    rows: list[tuple[str, str, int, float, float]] = []  # reader, format, events, events/s, MB/s
    rows.append(("sim ceiling", "json", n, with_sim(n, POOL, run_ceiling, "json", n, events), 0.0))
    for fmt in ("json", "plain"):
        rows.append(("eslbridge", fmt, n, *with_sim(n, POOL, run_ours, fmt, n, events, args.paused)))
    # Its own simulator: the stream must end with the last event counted (greenswitch's reader starves
    # its handler greenlet while data keeps coming).
    rows.append(("greenswitch", "plain", n_stock, with_sim(n_stock, POOL, run_stock, n_stock, events), 0.0))
    correlated = 0.0
    if not args.paused and n_corr:
        pool = n_corr // EVENTS_PER_CALL + 1
        correlated = with_sim(n_corr, pool, run_ours, "json", n_corr, events, correlate=True)[0]
        rows.append(("eslbridge+correlator", "json", n_corr, correlated, 0.0))
    rate = {(name, fmt): (eps, mbps) for name, fmt, _, eps, mbps in rows}
    stock = rate[("greenswitch", "plain")][0]
    ours_json, ours_mbps = rate[("eslbridge", "json")]
    print(f"subscription: {'ALL' if args.all else 'daemon (DESIGN 5)'}; mix {MIX}"
          + ("; eslbridge consumer paused (spilling)" if args.paused else ""))
    print(f"{'reader':21} {'format':6} {'events':>8} {'events/s':>10} {'MB/s':>8} {'x stock plain':>14}")
    for name, fmt, count, eps, mbps in rows:
        mb = f"{mbps:8.1f}" if mbps else f"{'':8}"
        print(f"{name:21} {fmt:6} {count:8d} {eps:10.0f} {mb} {eps / stock:14.2f}")
    print("greenswitch json: n/a (its reader dies on the first text/event-json frame); ratios are against "
          "greenswitch on the plain stream")
    result = {"bench": "intake",
              "json": {"ours_eps": round(ours_json), "stock_eps": round(stock), "ours_mbps": round(ours_mbps, 1)},
              "plain": {"ours_eps": round(rate[("eslbridge", "plain")][0]), "stock_eps": round(stock)},
              "correlated_eps": round(correlated)}
    print("bench-result: " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
