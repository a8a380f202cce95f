"""The accept gate every network listener goes through (DESIGN section 9).

A connection is judged when it is accepted, before a byte is read: a peer outside the allow list is
closed at once (no greenlet, no buffer). Admitted connections are bounded per address and overall;
when a bound is reached, the connection that has waited longest for its peer (idle keep-alive, a
first byte or a request head that never comes) is closed to make room, so a valid request is never
queued behind hostile sockets. A connection whose peer is being served is never evicted.

Deadlines: the first request must arrive within ``head_timeout`` of the accept, a request whose
first byte came must be complete within ``head_timeout`` of it (a peer trickling bytes gains
nothing), a keep-alive connection may idle ``idle_timeout`` between requests, and serving one
request may take ``busy_timeout`` (a peer that stops reading its answer). One sweeper greenlet per
gate enforces them: a timer per request costs more than the request.

Listeners use ``GateMixin`` with gevent's StreamServer or one of its subclasses (pywsgi) and tell
the gate where each connection is: ``conn.idle()``, ``conn.reading()``, ``conn.busy()``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import gevent
from gevent.server import StreamServer

from eslbridge.ops.logs import LogOnce

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class ConnectionLimits:
    """A listener's accept gate (eslbridge/ops/netgate.py); the defaults fit LimitNOFILE in the unit."""

    max_connections: int = 512
    max_per_address: int = 256
    head_timeout: float = 2.0  # seconds from accept (or a request's first byte) to a whole request
    idle_timeout: float = 30.0  # seconds a keep-alive connection may wait for its next request
    busy_timeout: float = 10.0  # seconds to serve one request (a peer that does not read its answer)




class AllowList:
    """Membership of a client address (text, as ``accept`` gives it) in a set of networks, cached."""

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self.networks = tuple(networks)
        self._cache: dict[str, bool] = {}

    def __contains__(self, client_ip: str) -> bool:
        allowed = self._cache.get(client_ip)
        if allowed is None:
            try:
                ip = ipaddress.ip_address(client_ip.split("%", 1)[0])
            except ValueError:
                return False
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            allowed = any(ip in net for net in self.networks)
            if len(self._cache) < 10_000:  # bounded: the answer is cheap to recompute
                self._cache[client_ip] = allowed
        return allowed


class Expired(gevent.GreenletExit):
    """The gate closed this connection: a deadline passed, or it made room for a newer one.
    A GreenletExit, so servers that catch Exception (pywsgi) do not log it as their own failure."""

    def __init__(self, started: bool) -> None:
        super().__init__("connection closed by the accept gate")
        self.started = started  # a request had begun (the peer may deserve a last answer)


_IDLE, _READING, _BUSY = 0, 1, 2


class Conn:
    """One admitted connection as the gate sees it."""

    __slots__ = ("_gate", "deadline", "gone", "greenlet", "ip", "requests", "state")

    def __init__(self, gate: AcceptGate, ip: str) -> None:
        self._gate = gate
        self.ip = ip
        self.greenlet: gevent.Greenlet | None = None
        self.state = _IDLE
        self.requests = 0
        self.gone = False
        self.deadline = time.monotonic() + gate.limits.head_timeout

    @property
    def serving(self) -> bool:
        return self.state == _BUSY

    def idle(self) -> None:
        """Waiting for the next request (or the first one): evictable. Once the listener stops,
        this ends the connection (Expired) instead: the request being served was finished."""
        if self._gate.closing:
            raise Expired(False)
        limits = self._gate.limits
        self.deadline = time.monotonic() + (limits.idle_timeout if self.requests else limits.head_timeout)
        if self.state == _BUSY:
            self._gate.waiting[self] = None
        self.state = _IDLE

    def reading(self) -> None:
        """A request has begun to arrive: the rest must follow within ``head_timeout``."""
        if self.state == _READING:
            return
        if self.state == _BUSY:
            self._gate.waiting[self] = None
        self.state = _READING
        self.deadline = time.monotonic() + self._gate.limits.head_timeout

    def busy(self) -> None:
        """A whole request is in: serving it (never evicted, bounded by ``busy_timeout``)."""
        if self.state != _BUSY:
            self._gate.waiting.pop(self, None)
            self.state = _BUSY
        self.requests += 1
        self.deadline = time.monotonic() + self._gate.limits.busy_timeout


class AcceptGate:
    """Admission, bounds and deadlines for one listener's connections. ``stats`` counts refusals
    (``refused_address``, ``refused_full``), ``evicted`` and ``expired`` connections."""

    def __init__(self, name: str, allow: Iterable[IPNetwork], limits: ConnectionLimits,
                 on_refuse: Callable[[str], None] | None = None) -> None:
        self.name = name
        self._on_refuse = on_refuse
        self.allow = AllowList(allow)
        self.limits = limits
        self.stats: Counter = Counter()
        self.conns: dict[gevent.Greenlet, Conn] = {}
        self.waiting: dict[Conn, None] = {}  # evictable connections, the longest waiting first
        self._by_ip: dict[str, dict[Conn, None]] = {}
        self.open = 0
        self.closing = False
        self._sweeper: gevent.Greenlet | None = None
        self._log = LogOnce(log)

    def admit(self, client_ip: str) -> Conn | None:
        """A new connection from ``client_ip``: its Conn, or None (counted) when it must be closed."""
        if client_ip not in self.allow:
            self._refuse("refused_address", "not in its allow list", client_ip)
            return None
        same = self._by_ip.get(client_ip)
        if (same is not None and len(same) >= self.limits.max_per_address
                and not self._evict(conn for conn in same if conn.state != _BUSY)):
            self._refuse("refused_full", "over the per-address limit", client_ip)
            return None
        if self.open >= self.limits.max_connections and not self._evict(iter(self.waiting)):
            self._refuse("refused_full", "over the connection limit", client_ip)
            return None
        conn = Conn(self, client_ip)
        self._by_ip.setdefault(client_ip, {})[conn] = None
        self.waiting[conn] = None
        self.open += 1
        if self._sweeper is None:
            self._sweeper = gevent.spawn(self._sweep)
        return conn

    def bind(self, conn: Conn, greenlet: gevent.Greenlet) -> None:
        conn.greenlet = greenlet
        self.conns[greenlet] = conn

    def current(self) -> Conn:
        """The Conn of the connection the calling greenlet serves."""
        return self.conns[gevent.getcurrent()]

    def release(self, conn: Conn) -> None:
        if conn.gone:
            return
        conn.gone = True
        self.open -= 1
        self.waiting.pop(conn, None)
        same = self._by_ip.get(conn.ip)
        if same is not None:
            same.pop(conn, None)
            if not same:
                del self._by_ip[conn.ip]
        if conn.greenlet is not None:
            self.conns.pop(conn.greenlet, None)

    def close(self) -> None:
        """The listener is stopping: end every connection waiting for its peer; one being served
        finishes its request first (an outbound call gets its decision), then ends in ``idle``."""
        self.closing = True  # the sweeper keeps the deadlines of those, then ends
        for conn in list(self.conns.values()):
            if not conn.serving:
                self._end(conn)

    def _evict(self, candidates: Iterable[Conn]) -> bool:
        victim = next(iter(candidates), None)
        if victim is None:
            return False
        self.stats["evicted"] += 1
        self._end(victim)
        return True

    def _end(self, conn: Conn) -> None:
        started = conn.state != _IDLE
        self.release(conn)
        greenlet = conn.greenlet
        if greenlet is not None:
            # block=False: no switch here, so the tables cannot change under the caller's loop.
            greenlet.kill(Expired(started), block=False)

    def _refuse(self, kind: str, why: str, client_ip: str) -> None:
        self.stats[kind] += 1
        if self._on_refuse is not None:
            self._on_refuse(kind)
        # Rate-limited per kind; the address names who (an operator's first question), never what it sent.
        self._log.warning(kind, "%s: closed a connection from %s: %s (%d so far)", self.name, client_ip, why,
                          self.stats[kind])

    def _sweep(self) -> None:
        every = min(0.25, self.limits.head_timeout / 4)
        while not (self.closing and not self.conns):
            gevent.sleep(every)
            now = time.monotonic()
            for conn in [c for c in self.conns.values() if c.deadline <= now]:
                self.stats["expired"] += 1
                self._end(conn)
        self._sweeper = None


class GateMixin:
    """Put before a gevent StreamServer class: each accepted socket passes ``self.gate`` first and
    is then served by ``self._handle(sock, addr)`` in its own greenlet (no pool: the gate bounds)."""

    gate: AcceptGate
    refusal = b""  # written (never waited for) to a refused connection: an HTTP 403, say

    def do_handle(self, sock: Any, addr: tuple) -> None:
        conn = self.gate.admit(addr[0])
        if conn is None:
            if self.refusal:
                with contextlib.suppress(OSError):
                    sock._sock.send(self.refusal, socket.MSG_DONTWAIT)  # a fresh socket's buffer is empty
            sock.close()
            return
        greenlet = gevent.spawn(self._gated, conn, sock, addr)
        # A link also runs for a greenlet killed before it started (evicted at once).
        greenlet.rawlink(lambda _: sock.close())
        self.gate.bind(conn, greenlet)

    def _gated(self, conn: Conn, sock: Any, addr: tuple) -> None:
        try:
            self._handle(sock, addr)
        except OSError:
            pass  # the peer went away (Expired, a GreenletExit, ends the greenlet quietly)
        finally:
            self.gate.release(conn)

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout=timeout)
        self.gate.close()


class GatedServer(GateMixin, StreamServer):
    """gevent's StreamServer behind an AcceptGate."""

    def __init__(self, listen: tuple[str, int], handle: Any, gate: AcceptGate, refusal: bytes = b"") -> None:
        super().__init__(tuple(listen), handle)
        self.gate = gate
        self.refusal = refusal
