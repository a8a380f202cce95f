"""ESL intake benchmark: eslbridge's InboundClient vs stock greenswitch and Genesis on the same stream.

The simulator runs in a subprocess (its own core) and sends generated real-call events at full speed
to every client that subscribes (`--blast`: a pool of rendered calls, sent round and round). Rows:

* eslbridge json / plain: InboundClient with a no-op consumer (framing, queue, event decoding);
* greenswitch plain: stock greenswitch 0.0.19 on the plain stream (its reader dies on JSON), with
  fewer events (it is slow) but reported as events/s all the same;
* genesis plain: Genesis (PyPI `genesis`, the asyncio ESL client; `pip install .[bench]`), stock, one
  async handler counting events, on the plain stream (it has no JSON support either);
* eslbridge json + correlator: the DESIGN section 11 figure "intake + correlation": every event goes
  to `Correlator.feed`; its stream comes from a pool as big as the run, so every call is new (a pool
  sent round and round would give the correlator cheap repeats);
* raw read: a bare socket counting frames of the same stream, what the simulator can send at all on
  this machine: the limit of any reader.

Every simulator sends the same bytes (same seed, same pool). Besides wall-clock events/s each row
prints events per CPU-second of the reading process (the simulator runs in its own): on a shared,
loaded host the wall rate of each row depends on the moment, the CPU cost much less, so the ratios
against greenswitch and Genesis are of CPU rates; the ratio against the raw read is of wall rates.
MB/s: bytes on the wire per wall second (for greenswitch and Genesis, their events times the stream's
mean frame size).

Rates run from the subscription to the last event handled (stock greenswitch hands events on after
a delay, so its first delivery is no start mark), except for the correlated run: it runs from its first
event, since the simulator first renders a pool as big as the run. The last line is machine-readable
(`bench-result: {...}`).

    python bench/intake.py [--events 200000] [--stock-events 30000] [--correlated-events 30000]
                           [--all] [--paused] [--repeat 1]

--all subscribes to ALL (every event of the captured calls) instead of the daemon's subscription.
--decode-sample N (3000) decodes the stream's first N events alone, every header vs the daemon's decoder
(each channel event's own headers, EVENT_HEADERS; READ_HEADERS for the rest), and prints the json
intake's CPU per event in parts (raw read, framing, decode) beside msgspec skipping every key.
--every-header adds eslbridge rows decoding every header (the daemon decodes only those it reads).
--paused keeps eslbridge's consumer blocked, so every event beyond the memory queue is spilled to disk:
the rate printed is what the reader sustains while spilling (backpressure vs spill, spill.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TypedDict, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gevent
import greenswitch
import msgspec
from gevent.event import Event

from eslbridge.calls.correlator import Correlator
from eslbridge.esl.events import EventDecoder
from eslbridge.esl.framing import FrameParser
from eslbridge.esl.headers import EVENT_HEADERS, READ_HEADERS
from eslbridge.esl.inbound import SUBSCRIBED_EVENTS, InboundClient

MIX = "bridged=5,busy=1,no_answer=1,cancel=1,reject=1,blind_transfer=1,originate=1"
T = TypeVar("T")
TARGET_EVENTS_PER_S = 50_000  # DESIGN section 11: intake + correlation on one core
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
    """Counts deliveries; `rate` is events/s from `start()` (else the first delivery) to the n-th,
    `cpu_rate` the same per CPU-second of this process."""

    def __init__(self, n: int) -> None:
        self.n, self.count, self.first, self.last = n, 0, 0.0, 0.0
        self.cpu_first = self.cpu_last = 0.0
        self.done = Event()

    def start(self) -> None:
        self.first, self.cpu_first = time.perf_counter(), time.process_time()

    def tick(self) -> None:
        self.count += 1
        if self.count == 1 and not self.first:
            self.start()
        if self.count == self.n:
            self.last, self.cpu_last = time.perf_counter(), time.process_time()
            self.done.set()

    @property
    def seconds(self) -> float:
        return self.last - self.first

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    @property
    def cpu_rate(self) -> float:
        return self.n / max(self.cpu_last - self.cpu_first, 1e-9)


class Row(NamedTuple):
    reader: str
    fmt: str
    events: int
    eps: float  # wall clock
    cpu_eps: float  # per CPU-second of this process
    mbps: float


def run_ours(port: int, fmt: str, n: int, events: tuple[str, ...], paused: bool = False,
             correlate: bool = False, every_header: bool = False) -> Row:
    """InboundClient with the daemon's decoder (`every_header`: a full decode, the old way); `correlate`
    feeds every event to a real Correlator."""
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
                               events=events, headers=None if every_header else READ_HEADERS,
                               spill_dir=spill, queue_size=10_000, heartbeat_interval=600)
        client.start()
        if paused:
            while len(client.queue) < n:  # the blocked consumer's batch still counts in the queue
                gevent.sleep(0.001)
            clock.last, clock.cpu_last = time.perf_counter(), time.process_time()
            clock.count = n
        else:
            clock.done.wait(900)
        size = client.stats.bytes_in
        overflows = client.stats.overflows
        gate.set()
        client.stop(drain_timeout=0)
    if paused:
        print(f"  (paused consumer: {overflows} events spilled to disk)")
    name = ("eslbridge+correlator" if correlate else "eslbridge") + (" (all headers)" if every_header else "")
    return Row(name, fmt, n, clock.rate, clock.cpu_rate, size / clock.seconds / 1e6)


def run_stock(port: int, n: int, events: tuple[str, ...]) -> Row:
    """Stock greenswitch on the plain stream."""
    esl = greenswitch.InboundESL("127.0.0.1", port, "ClueCon")
    esl.connect()
    clock = Clock(n)
    esl.register_handle("*", lambda event: clock.tick())
    clock.start()  # the simulator starts sending when the subscription is acknowledged
    esl.send(f"event plain {' '.join(events)}")
    clock.done.wait(900)
    esl._run = False
    esl.sock.close()
    return Row("greenswitch", "plain", n, clock.rate, clock.cpu_rate, 0.0)


def run_genesis(port: int, n: int, events: tuple[str, ...]) -> Row:
    """Stock Genesis (asyncio) on the plain stream: one async handler for every event."""
    import genesis  # bench-only dependency: pip install .[bench]

    async def read() -> Clock:
        clock = Clock(n)
        clock.done = asyncio.Event()

        async def count(event: object) -> None:
            clock.tick()

        async with genesis.Inbound("127.0.0.1", port, "ClueCon") as client:
            client.on("*", count)
            clock.start()
            await client.send(f"event plain {' '.join(events)}")
            await asyncio.wait_for(clock.done.wait(), 900)
        return clock

    clock = asyncio.run(read())
    return Row("genesis", "plain", n, clock.rate, clock.cpu_rate, 0.0)


def run_raw(port: int, fmt: str, n: int, events: tuple[str, ...]) -> Row:
    """A bare blocking socket counting frame headers: what the simulator can send (the limit)."""
    marker = b"\nContent-Type: text/event-"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.recv(4096)
        sock.sendall(b"auth ClueCon\n\n")
        sock.recv(4096)
        sock.sendall(f"event {fmt} {' '.join(events)}\n\n".encode())
        buf, tail, count, size, first, cpu = bytearray(1 << 20), b"", 0, 0, 0.0, 0.0
        while count < n:
            got = sock.recv_into(buf)
            if not got:
                break
            if not first:
                first, cpu = time.perf_counter(), time.process_time()
            size += got
            chunk = tail + bytes(buf[:got])
            count += chunk.count(marker)
            tail = chunk[-len(marker) + 1 :]
        seconds = time.perf_counter() - first
        return Row("raw read", fmt, count, count / seconds, count / max(time.process_time() - cpu, 1e-9),
                   size / seconds / 1e6)


class _NoHeader(TypedDict, total=False):
    """An event of no wanted header: msgspec reads the JSON and skips every key."""


def decode_costs(port: int, fmt: str, n: int, events: tuple[str, ...]) -> dict[str, float]:
    """CPU microseconds per event of the stream's first `n` events, best of 5, interleaved: "framing"
    (the bytes cut into frames), "every" (decoding every header), "read" (only those the daemon reads,
    its decoder) and, for JSON, "skip_all" (msgspec skipping every key: what any decode of these bodies
    with it costs at least)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.recv(4096)
        sock.sendall(b"auth ClueCon\n\n")
        sock.recv(4096)
        sock.sendall(f"event {fmt} {' '.join(events)}\n\n".encode())
        parser, chunks, bodies = FrameParser(), [], []
        while len(bodies) < n:
            data = sock.recv(1 << 20)
            if not data:
                break
            chunks.append(data)
            bodies += [f.body for f in parser.feed(data) if f.content_type.startswith("text/event-")]
    wanted = EventDecoder(READ_HEADERS, EVENT_HEADERS)
    full, selective = (EventDecoder().json, wanted.json) if fmt == "json" else (EventDecoder().plain, wanted.plain)

    def framing(chunks: list[bytes]) -> int:
        parser = FrameParser()
        return sum(len(parser.feed(chunk)) for chunk in chunks)

    timed = {"framing": (framing, [chunks], framing(chunks)),
             "every": (full, bodies, len(bodies)), "read": (selective, bodies, len(bodies))}
    if fmt == "json":
        timed["skip_all"] = (msgspec.json.Decoder(_NoHeader).decode, bodies, len(bodies))
    best = dict.fromkeys(timed, float("inf"))
    for _ in range(5):
        for name, (step, inputs, count) in timed.items():
            start = time.process_time()
            for data in inputs:
                step(data)
            best[name] = min(best[name], (time.process_time() - start) / count * 1e6)
    return best


def measure(args: argparse.Namespace, events: tuple[str, ...]) -> list[Row]:
    """One round: every reader on its own simulator, each sending the same stream."""
    n, n_stock, n_corr = args.events, args.stock_events, args.correlated_events
    rows = [with_sim(n, POOL, run_raw, fmt, n, events) for fmt in ("json", "plain")]
    for fmt in ("json", "plain"):
        rows.append(with_sim(n, POOL, run_ours, fmt, n, events, args.paused))
        if args.every_header:
            rows.append(with_sim(n, POOL, run_ours, fmt, n, events, args.paused, every_header=True))
    # Their own simulators: the stream must end with the last event counted (greenswitch's reader
    # starves its handler greenlet while data keeps coming).
    rows.append(with_sim(n_stock, POOL, run_stock, n_stock, events))
    if args.genesis_events:
        rows.append(with_sim(args.genesis_events, POOL, run_genesis, args.genesis_events, events))
    if not args.paused and n_corr:
        pool = n_corr // EVENTS_PER_CALL + 1
        rows.append(with_sim(n_corr, pool, run_ours, "json", n_corr, events, correlate=True))
        if args.every_header:
            rows.append(with_sim(n_corr, pool, run_ours, "json", n_corr, events, correlate=True, every_header=True))
    frame = {row.fmt: row.mbps * 1e6 / row.eps for row in rows if row.reader == "raw read"}
    return [row._replace(mbps=row.eps * frame[row.fmt] / 1e6) if not row.mbps else row for row in rows]


def _budget_line(us: dict[str, float]) -> str:
    """The json intake's CPU per event in parts, against what 50,000 events/s leaves (20 us, correlation
    included): the daemon's, and the floor where its decode is msgspec skipping every key."""
    ours = us["raw_read"] + us["framing"] + us["read"]
    floor = us["raw_read"] + us["framing"] + us["skip_all"]
    return (f"json intake, CPU us/event: raw read {us['raw_read']:.1f} + framing {us['framing']:.1f}"
            f" + decode {us['read']:.1f} = {ours:.1f} ({1e6 / ours:,.0f} events/s) before correlation;"
            f" floor with msgspec skipping every key {floor:.1f} ({1e6 / floor:,.0f} events/s);"
            f" 50,000 events/s leaves {1e6 / TARGET_EVENTS_PER_S:.0f}")


def _ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000, help="events per eslbridge run")
    p.add_argument("--stock-events", type=int, default=30_000, help="events for stock greenswitch (slow)")
    p.add_argument("--genesis-events", type=int, default=30_000, help="events for Genesis (0: skip it)")
    p.add_argument("--correlated-events", type=int, default=30_000,
                   help="events through intake + correlator (all from distinct calls)")
    p.add_argument("--all", action="store_true", help="subscribe to ALL instead of the daemon's events")
    p.add_argument("--paused", action="store_true", help="measure eslbridge with its consumer blocked (spill)")
    p.add_argument("--every-header", action="store_true",
                   help="also eslbridge decoding every header (as before intake read only READ_HEADERS)")
    p.add_argument("--decode-sample", type=int, default=3000,
                   help="events of the stream decoded alone, every header vs those read (0: skip)")
    p.add_argument("--repeat", type=int, default=1, help="rounds; the result line holds each round's median")
    args = p.parse_args()
    events = ("ALL",) if args.all else SUBSCRIBED_EVENTS
    print(f"subscription: {'ALL' if args.all else 'daemon (DESIGN 5)'}; mix {MIX}"
          + ("; eslbridge consumer paused (spilling)" if args.paused else "")
          + f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rounds, result_decode, costs, budget = [], {}, {}, {}
    for _ in range(args.repeat):
        rows = measure(args, events)
        rounds.append(rows)
        cpu = {(row.reader, row.fmt): row.cpu_eps for row in rows}
        raw = {row.fmt: row.eps for row in rows if row.reader == "raw read"}
        stock, gen = cpu[("greenswitch", "plain")], cpu.get(("genesis", "plain"))
        print(f"{'reader':35} {'format':6} {'events':>8} {'events/s':>9} {'MB/s':>6} {'events/CPU-s':>12}"
              f" {'x greenswitch':>13} {'x genesis':>9} {'x raw read':>10}")
        for row in rows:
            print(f"{row.reader:35} {row.fmt:6} {row.events:8d} {row.eps:9.0f} {row.mbps:6.1f} {row.cpu_eps:12.0f}"
                  f" {_ratio(row.cpu_eps, stock):>13} {_ratio(row.cpu_eps, gen):>9}"
                  f" {_ratio(row.eps, raw[row.fmt]):>10}")
        print(f"load average now {os.getloadavg()[0]:.1f}")
    if args.decode_sample:
        print("decode alone, same stream, CPU us/event (best of 5): every header -> only those read")
        for fmt in ("json", "plain"):
            costs[fmt] = with_sim(args.decode_sample, POOL, decode_costs, fmt, args.decode_sample, events)
            every, read = costs[fmt]["every"], costs[fmt]["read"]
            result_decode[fmt] = round(every / read, 2)
            print(f"  {fmt:5} {every:7.1f} -> {read:7.1f}   {every / read:.2f}x")
        raw_us = 1e6 / statistics.median(row.cpu_eps for rows in rounds for row in rows
                                         if (row.reader, row.fmt) == ("raw read", "json"))
        budget = {"raw_read": raw_us, **costs["json"]}
        print(_budget_line(budget))
    print("greenswitch and Genesis json: n/a (neither reads text/event-json); their ratios are on the plain "
          "stream, per CPU-second; x raw read per wall second")

    def median(reader: str, fmt: str, field: str) -> float:
        values = [getattr(row, field) for rows in rounds for row in rows if (row.reader, row.fmt) == (reader, fmt)]
        return statistics.median(values) if values else 0.0

    result = {"bench": "intake", "load": round(os.getloadavg()[0], 1)}
    for fmt in ("json", "plain"):
        result[fmt] = {"ours_eps": round(median("eslbridge", fmt, "eps")),
                       "ours_cpu_eps": round(median("eslbridge", fmt, "cpu_eps")),
                       "ours_mbps": round(median("eslbridge", fmt, "mbps"), 1),
                       "raw_eps": round(median("raw read", fmt, "eps")),
                       "stock_eps": round(median("greenswitch", "plain", "eps")),
                       "stock_cpu_eps": round(median("greenswitch", "plain", "cpu_eps")),
                       "genesis_cpu_eps": round(median("genesis", "plain", "cpu_eps"))}
    result["decode_speedup"] = result_decode
    result["budget_json_us"] = {name: round(us, 2) for name, us in budget.items()}
    result["correlated_eps"] = round(median("eslbridge+correlator", "json", "eps"))
    result["correlated_cpu_eps"] = round(median("eslbridge+correlator", "json", "cpu_eps"))
    print("bench-result: " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
