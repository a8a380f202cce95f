"""Inbound ESL client for one FreeSWITCH node, built on greenswitch.

`_Connection` is one TCP session. It still subclasses greenswitch's `InboundESL` (host, port,
password, `connected`), but every part that breaks under real traffic is replaced, and the
handshake and the matching of replies to commands are the sans-IO exchange of protocol.py, shared
with the outbound server and `check-config`. The greenswitch 0.0.19 defects fixed here (each has a test in
tests/test_esl_greenswitch_defects.py that runs stock greenswitch against the simulator):

1. `ESLEvent.parse_data` URL-decodes the whole block before splitting lines, so a `%0A` in a
   caller-controlled value forges headers -> events.EventDecoder.plain splits first, decodes after.
2. No `text/event-json` support (JSON bodies are split as if they were plain) -> EventDecoder.json.
3. No reconnect: the reader greenlet just ends -> `InboundClient` supervises, reconnects with jittered
   backoff (0.5 s doubling to 30 s), re-subscribes and resyncs (`api show channels as json`).
4. Invalid UTF-8 raises inside the reader greenlet and kills it -> bytes framing; bodies decoded with
   replacement characters and counted.
5. `send()` and the auth wait block forever -> every command has a timeout.
6. A reply nobody waits for pops an empty list (IndexError) and kills the reader -> counted, ignored.
7. The reader reads line by line through a gevent file object and hands events to an unbounded queue
   polled once a second -> recv_into framing.FrameParser's buffer, one batch per recv into a bounded
   queue that spills to disk (spill.py) so the reader never waits for the consumer.

Heartbeat: any whole frame proves the link alive (bytes do not: a frame whose Content-Length lies
swallows them); FreeSWITCH sends HEARTBEAT every `heartbeat_interval` seconds (20 by default), so no
frame for two intervals closes the socket and reconnects. A frame whose length cannot be trusted
(framing.py `desync`) also closes it: reconnect, re-subscribe, resync.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket as pysocket
from collections.abc import Callable
from time import monotonic

import gevent
import greenswitch.esl
from gevent import socket
from gevent.event import AsyncResult, Event
from gevent.lock import Semaphore

from eslbridge.errors import ConfigError, EslBridgeError
from eslbridge.esl import protocol
from eslbridge.esl.events import EventDecoder, EventParseError, event_key
from eslbridge.esl.framing import FrameParser
from eslbridge.esl.headers import EVENT_HEADERS, READ_HEADERS
from eslbridge.esl.snapshot import no_full_collections, parse_snapshot
from eslbridge.esl.spill import SpillQueue
from eslbridge.esl.stats import IntakeStats

log = logging.getLogger(__name__)

# DESIGN section 5: what the correlator needs. Names after CUSTOM are subclasses.
SUBSCRIBED_EVENTS: tuple[str, ...] = (
    "CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE", "CHANNEL_UNBRIDGE", "CHANNEL_HANGUP_COMPLETE",
    "CHANNEL_UUID", "CHANNEL_ORIGINATE", "HEARTBEAT",
    "CUSTOM", "sofia::register", "sofia::unregister",
)

Consumer = Callable[[str, dict], None]
SnapshotHandler = Callable[[str, list], None]

TAG_JSON, TAG_PLAIN, TAG_SNAPSHOT = 1, 2, 3
_EVENT_TAGS = {"text/event-json": TAG_JSON, "text/event-plain": TAG_PLAIN}


class EslError(EslBridgeError):
    """An ESL command failed or the node is not connected."""


class _Pending(AsyncResult):
    """A command waiting for its reply; `inband` replies also go through the event queue."""

    inband = False


def command_summary(data: str) -> str:
    """What a debug line may show of an ESL command: the verb and, for api/bgapi/event commands,
    the subcommand; never arguments (user names, UUIDs) and never the ``auth`` password."""
    words = data.split(None, 2)
    if not words:
        return ""
    if words[0] in ("api", "bgapi", "event", "filter") and len(words) > 1:
        return f"{words[0]} {words[1]}"
    return words[0]


class _Connection(greenswitch.esl.InboundESL):
    """One TCP session to FreeSWITCH: the protocol exchange over our reader."""

    def __init__(self, client: InboundClient) -> None:
        super().__init__(client.host, client.port, client.password, timeout=client.connect_timeout)
        self._client = client
        self._stats = client.stats
        # A reply may exceed the event size limit (`show channels` of a busy node), an event never.
        self._parser = FrameParser(self._stats.error, awaiting_reply=lambda: len(self._exchange) > 0)
        self._send_lock = Semaphore()
        self._exchange: protocol.Exchange[_Pending] = protocol.Exchange()
        self._banner = Event()  # auth/request came (or the session ended before it)
        self._reader: gevent.Greenlet | None = None
        self._rejected = False
        self.last_rx = 0.0
        self.sock = None

    # -- greenswitch overrides -------------------------------------------------------------------
    def connect(self) -> None:
        client = self._client
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.settimeout(None)
        self.sock.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_KEEPALIVE, 1)
        self.connected = True
        self.last_rx = gevent.get_hub().loop.now()
        self.start_event_handlers()
        if not self._banner.wait(client.command_timeout) or self._rejected or not self.connected:
            raise EslError("FreeSWITCH sent no auth/request (rude-rejection: check event_socket.conf.xml ACL)")
        if not protocol.authenticated(self.send(f"auth {self.password}")):
            raise ConfigError(f"ESL node {client.node}: FreeSWITCH refused the password")

    def start_event_handlers(self) -> None:
        # Only the reader: events are consumed by the client's own greenlet, which outlives connections.
        self._reader = gevent.spawn(self.receive_events)

    def send(self, data: str, timeout: float | None = None, inband: bool = False, wait: bool = True):
        if not self.connected:
            raise EslError("not connected")
        pending = _Pending()
        pending.inband = inband
        with self._send_lock:  # keeps the replies owed in wire order
            # (protocol refuses CR/LF before anything is owed or sent)
            self.sock.sendall(self._exchange.command(data, pending))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: ESL command sent: %s", self._client.node, command_summary(data))
        if not wait:
            return pending
        try:
            return pending.get(timeout=timeout or self._client.command_timeout)
        except gevent.Timeout:
            # Leave it in the FIFO: the late reply must still be matched to it, not to the next command.
            raise TimeoutError(f"no reply to {data.split(' ', 1)[0]!r} in time") from None

    def receive_events(self) -> None:
        sock, parser, stats = self.sock, self._parser, self._stats
        queue = self._client.queue
        loop = gevent.get_hub().loop
        tags = _EVENT_TAGS
        try:
            while self.connected:
                with parser.writable() as view:  # recv straight into the parser's buffer: no copy
                    size = sock.recv_into(view)
                if not size:
                    break
                stats.bytes_in += size
                items: list[tuple[int, bytes]] = []
                # A reply of many MB arrives in hundreds of reads; sleep(0) lets greenlets run but not
                # always timers and other sockets (measured: ~200 ms without them for 30 MB).
                pause = 0.0005 if parser.receiving_reply else 0
                frames = parser.commit(size)
                if frames:  # liveness is whole frames, not bytes: a lying length swallows bytes forever
                    self.last_rx = loop.now()
                for frame in frames:
                    tag = tags.get(frame.content_type)
                    if tag is not None:
                        items.append((tag, frame.body))
                    else:
                        self._control(frame, items)
                if items:
                    queue.put_many(items)  # one batch per recv: one queue operation, one wake-up
                if parser.desync is not None:
                    stats.lost_stream(parser.desync)
                    break  # the supervisor reconnects and resyncs
                gevent.sleep(pause)  # let the consumer run between socket reads
        except OSError as exc:
            log.info("%s: ESL socket error: %s", self._client.node, exc)
        finally:
            parser.close()
            self.connected = False
            self._banner.set()
            for pending in self._exchange.abandon():
                pending.set_exception(EslError("connection lost"))

    def _control(self, frame, items: list[tuple[int, bytes]]) -> None:
        """A frame that is not an event; an in-band reply joins `items` where it sits in the stream."""
        kind, pending = self._exchange.receive(frame)
        if kind is protocol.Kind.REPLY:
            if pending.inband:
                items.append((TAG_SNAPSHOT, frame.body))
            pending.set(frame)
        elif kind is protocol.Kind.UNEXPECTED:
            self._stats.error("unexpected_reply", frame.headers.get("Reply-Text", frame.content_type))
        elif kind is protocol.Kind.BANNER:
            self._banner.set()
        elif kind is protocol.Kind.REJECTED:
            self._stats.ignored(frame.content_type)
            self._rejected = True
            self._banner.set()
        elif kind is protocol.Kind.NOISE:
            self._stats.ignored(frame.content_type)
        else:  # unknown, or an event in a format this session did not subscribe to
            self._stats.error("unknown_content_type", frame.content_type)

    def stop(self) -> None:
        if self.connected:
            with contextlib.suppress(EslError, TimeoutError, OSError):
                self.send("exit", timeout=1.0)
        self.close()

    # -- ours ------------------------------------------------------------------------------------
    def close(self) -> None:
        self.connected = False
        if self.sock is not None:
            self.sock.close()
        if self._reader is not None:
            self._reader.join(timeout=2)
            self._reader.kill(block=False)


class InboundClient:
    """Keeps one FreeSWITCH node's events flowing into `consumer`, through restarts and bad input."""

    def __init__(
        self,
        host: str,
        port: int,
        password: str,
        node: str,
        event_format: str,
        consumer: Consumer,
        on_snapshot: SnapshotHandler,
        stats: IntakeStats | None = None,
        *,
        events: tuple[str, ...] = SUBSCRIBED_EVENTS,
        headers: frozenset[str] | None = READ_HEADERS,
        queue_size: int = 50_000,
        spill_dir: str | None = None,
        heartbeat_interval: float = 20.0,
        connect_timeout: float = 5.0,
        command_timeout: float = 10.0,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        on_fatal: Callable[[str, Exception], None] | None = None,
    ) -> None:
        if event_format not in ("json", "plain"):
            raise ConfigError(f"ESL node {node}: event_format must be json or plain, not {event_format!r}")
        self.host, self.port, self.password, self.node = host, port, password, node
        self.event_format = event_format
        self.consumer, self.on_snapshot = consumer, on_snapshot
        self.stats = stats if stats is not None else IntakeStats()
        self.stats.node = node
        self.events = events
        # None: every header; else each channel event's own (see EventDecoder).
        self.decoder = EventDecoder(headers, EVENT_HEADERS)
        self.queue = SpillQueue(queue_size, self.stats, spill_dir)
        self.heartbeat_interval = heartbeat_interval
        self.connect_timeout, self.command_timeout = connect_timeout, command_timeout
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self.on_fatal = on_fatal
        self.error: Exception | None = None  # the fatal error that stopped the client (wrong password)
        self._conn: _Connection | None = None
        self._running = False
        self._greenlets: list[gevent.Greenlet] = []

    def __repr__(self) -> str:  # never shows the password
        return f"InboundClient({self.node!r}, {self.host}:{self.port}, {self.event_format})"

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.connected

    def start(self) -> None:
        self._running = True
        self._greenlets = [gevent.spawn(self._supervise), gevent.spawn(self._consume)]

    def stop(self, drain_timeout: float = 5.0) -> None:
        """Close the link, then give the consumer up to `drain_timeout` s to finish the queue."""
        self._running = False
        supervisor, consumer = self._greenlets or (None, None)
        if self._conn is not None:
            self._conn.stop()
        if supervisor is not None:
            supervisor.kill()
        if consumer is not None:
            with gevent.Timeout(drain_timeout, False):
                while len(self.queue):
                    gevent.sleep(0.01)
            consumer.kill()
        self.queue.close()
        self.stats.connected = False

    def wait(self, timeout: float | None = None) -> None:
        """Block until the client stops by itself; raise its fatal error (ConfigError: exit 78)."""
        if self._greenlets:
            self._greenlets[0].join(timeout)
        if self.error is not None:
            raise self.error

    def api(self, cmd: str, timeout: float = 10.0) -> str:
        """Run `api cmd` and return FreeSWITCH's output; TimeoutError / EslError otherwise."""
        return self._require().send("api " + cmd, timeout).data

    def bgapi(self, cmd: str, timeout: float = 10.0) -> str:
        """Start `bgapi cmd` and return its Job-UUID (the result comes as a BACKGROUND_JOB event)."""
        reply = self._require().send("bgapi " + cmd, timeout)
        text = reply.headers.get("Reply-Text", "")
        if not protocol.accepted(reply):
            raise EslError(f"bgapi refused: {text}")
        return reply.headers.get("Job-UUID") or text.rsplit(" ", 1)[-1]

    def request_resync(self) -> bool:
        """Ask for a fresh `show channels` snapshot (delivered in band, like the one after connect);
        False when not connected (the next connect resyncs anyway)."""
        conn = self._conn
        if conn is None or not conn.connected:
            return False
        conn.send("api show channels as json", inband=True, wait=False)
        return True

    def _require(self) -> _Connection:
        conn = self._conn
        if conn is None or not conn.connected:
            raise EslError(f"ESL node {self.node} is not connected")
        return conn

    # -- supervision -----------------------------------------------------------------------------
    def _supervise(self) -> None:
        backoff = self.backoff_min
        first = True
        while self._running:
            if not first:
                self.stats.reconnects += 1
            first = False
            conn = _Connection(self)
            try:
                self._open(conn)
                backoff = self.backoff_min
                self._watch(conn)
            except ConfigError as exc:
                log.error("%s", exc)
                self.error = exc
                self._running = False
                if self.on_fatal is not None:
                    self.on_fatal(self.node, exc)
                return
            except (OSError, EslError, TimeoutError) as exc:
                log.warning("%s: ESL %s:%s unavailable: %s", self.node, self.host, self.port, exc)
            finally:
                self._conn = None
                self.stats.connected = False
                conn.close()
            if self._running:
                gevent.sleep(random.uniform(backoff / 2, backoff))
                backoff = min(backoff * 2, self.backoff_max)

    def _open(self, conn: _Connection) -> None:
        conn.connect()
        reply = conn.send(f"event {self.event_format} {' '.join(self.events)}")
        if not protocol.accepted(reply):
            raise EslError(f"subscription refused: {reply.headers.get('Reply-Text')}")
        self._conn = conn
        self.stats.connected = True
        log.info("%s: ESL connected to %s:%s (%s)", self.node, self.host, self.port, self.event_format)
        # In band: the reader queues the reply where it sits in the stream, between the events around it.
        # Not waited for: under a backlog the reply may take longer than any command timeout.
        conn.send("api show channels as json", inband=True, wait=False)

    def _watch(self, conn: _Connection) -> None:
        limit = 2 * self.heartbeat_interval
        loop = gevent.get_hub().loop
        while self._running and conn.connected:
            gevent.sleep(min(1.0, self.heartbeat_interval / 4))
            if loop.now() - conn.last_rx > limit:
                self.stats.dead_links += 1
                log.warning("%s: no whole frame from FreeSWITCH for %.0f s, reconnecting", self.node, limit)
                return

    # -- delivery --------------------------------------------------------------------------------
    def _consume(self) -> None:
        stats, node, queue = self.stats, self.node, self.queue
        on_error = stats.error
        decode = {TAG_JSON: self.decoder.json, TAG_PLAIN: self.decoder.plain}
        slice_start = monotonic()
        while True:
            batch = queue.get_batch(timeout=1.0)
            if batch is None:
                continue
            consumer = self.consumer
            names = []
            for tag, payload in batch:
                try:
                    if tag == TAG_SNAPSHOT:
                        self._deliver_snapshot(payload)
                        continue
                    event = decode[tag](payload, on_error)
                except EventParseError as exc:
                    on_error(exc.kind, str(exc))
                    continue
                names.append(event_key(event))
                try:
                    consumer(node, event)
                except Exception:
                    stats.consumer_errors += 1
                    log.exception("%s: event consumer failed on %s", node, event.get("Event-Name"))
            stats.events_in.update(names)  # counted per batch (Counter.update counts in C)
            if monotonic() - slice_start > 0.005:
                gevent.sleep(0)  # never starve the socket reader: yield every 5 ms of work
                slice_start = monotonic()

    def _deliver_snapshot(self, payload: bytes) -> None:
        try:
            with no_full_collections():  # row by row: a big snapshot must not stall the loop
                doc = parse_snapshot(payload, gevent.idle)
        except ValueError as exc:
            self.stats.error("bad_snapshot", str(exc))
            return
        self.stats.snapshots += 1
        try:
            self.on_snapshot(self.node, doc)
        except Exception:
            self.stats.consumer_errors += 1
            log.exception("%s: snapshot handler failed", self.node)
