"""A small HTTP/1.1 server on gevent's StreamServer, for the directory endpoint only.

Hand-written on purpose: measured here with 50 keep-alive clients, gevent.pywsgi answered
about 1,100 requests/s (it writes headers and body separately, so Nagle and delayed ACKs
add ~40 ms) against about 15,000/s for this loop; DESIGN section 11 asks for 5,000/s.
It implements only what mod_xml_curl (libcurl) sends: one request at a time per
connection, ``Content-Length`` bodies (no chunked uploads), ``Expect: 100-continue``,
keep-alive. Everything else is refused with 400 and the connection closed.

Limits: request head 16 KiB / 100 lines, body ``max_body``. Connections pass an AcceptGate
(eslbridge/ops/netgate.py): allow list at accept, connection bounds, and the deadlines: a started
request that does not arrive in time gets 400 and the connection closes; an idle keep-alive
connection is closed silently.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

import gevent
from gevent import get_hub

from eslbridge.ops.netgate import AcceptGate, Conn, Expired, GatedServer

MAX_HEAD = 16 * 1024
MAX_HEADER_LINES = 100
_REASONS = {200: b"OK", 400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
            411: b"Length Required", 413: b"Content Too Large", 431: b"Request Header Fields Too Large"}



class App(Protocol):
    def gate(self, client_ip: str, method: bytes, path: bytes,
             headers: Mapping[bytes, bytes]) -> tuple[int, bytes] | None:
        """Before the body is read: a final (status, body) to refuse the request, or None to go on."""

    def answer(self, body: bytes) -> bytes:
        """The 200 response body for an accepted request."""

    def oversized(self) -> tuple[int, bytes]:
        """The response to an accepted request whose body exceeds the limit (the connection closes)."""


class _Close(Exception):
    """Stop serving this connection (after sending ``response`` if there is one)."""

    def __init__(self, status: int | None = None, body: bytes = b"") -> None:
        self.status, self.body = status, body


def _response(status: int, body: bytes, close: bool) -> bytes:
    head = b"HTTP/1.1 %d %s\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n" % (
        status, _REASONS.get(status, b"Error"), len(body))
    return head + (b"Connection: close\r\n\r\n" if close else b"\r\n") + body


class HttpServer:
    def __init__(self, listen: tuple[str, int], app: App, gate: AcceptGate, *, max_body: int) -> None:
        self._app = app
        self._max_body = max_body
        self.gate = gate
        self._server = GatedServer(listen, self._serve, gate, refusal=_response(403, b"", True))

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address[:2]

    def start(self) -> None:
        self._server.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._server.stop(timeout=timeout)

    def _serve(self, sock: socket.socket, addr: tuple) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = self.gate.current()
        hub = get_hub()
        # Our own readiness watcher: after an answer the next request is never there yet, so
        # waiting first saves a recv() that fails with EAGAIN (and its exception) per request.
        readable = hub.loop.io(sock.fileno(), 1)
        buf = bytearray()
        try:
            while True:
                if not buf:
                    conn.idle()
                    hub.wait(readable)
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                conn.reading()
                if not self._one_request(sock, addr[0], buf, conn):
                    return
        except Expired as expired:
            if expired.started:  # a request began but did not arrive (or leave) in time
                self._last_words(sock, 400, b"")
        except _Close as stop:
            if stop.status is not None:
                self._last_words(sock, stop.status, stop.body)
        except OSError:
            pass  # the peer went away
        finally:
            readable.close()
            sock.close()

    @staticmethod
    def _last_words(sock: socket.socket, status: int, body: bytes) -> None:
        with contextlib.suppress(OSError), gevent.Timeout(1.0, False):  # a peer that does not read
            sock.sendall(_response(status, body, True))

    def _recv_into(self, sock: socket.socket, buf: bytearray) -> None:
        chunk = sock.recv(65536)
        if not chunk:
            raise _Close()
        buf += chunk

    def _one_request(self, sock: socket.socket, client_ip: str, buf: bytearray, conn: Conn) -> bool:
        """Serve one request from ``buf`` (+ the socket); False when the connection must close."""
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > MAX_HEAD:
                raise _Close(431)
            self._recv_into(sock, buf)
        if end > MAX_HEAD:
            raise _Close(431)
        method, path, headers, keep_alive = _parse_head(bytes(buf[:end]))
        del buf[: end + 4]
        refusal = self._app.gate(client_ip, method, path, headers)
        if refusal is not None:
            raise _Close(*refusal)
        length = _content_length(headers)
        if length > self._max_body:
            raise _Close(*self._app.oversized())
        if len(buf) < length and headers.get(b"expect", b"").lower() == b"100-continue":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        while len(buf) < length:
            self._recv_into(sock, buf)
        body = bytes(buf[:length])
        del buf[:length]
        conn.busy()
        response = _response(200, self._app.answer(body), not keep_alive)
        # An answer (~1 KiB) fits the socket buffer: one send() without sendall()'s getsockopt.
        sent = sock.send(response)
        if sent < len(response):
            sock.sendall(response[sent:])
        return keep_alive


@functools.lru_cache(maxsize=1024)
def _parse_head(head: bytes) -> tuple[bytes, bytes, Mapping[bytes, bytes], bool]:
    """(method, path, headers with lower-case names, keep-alive) of a request head; raises _Close.

    Remembered per distinct head: a FreeSWITCH node sends the same few heads over and over (only
    Content-Length varies), and parsing them took a fifth of a cached answer. The headers are
    shared by every request with that head, hence read-only."""
    lines = head.split(b"\r\n")
    if len(lines) > MAX_HEADER_LINES:
        raise _Close(431)
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[1].startswith(b"/"):
        raise _Close(400)
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or name[:1] in b" \t":
            raise _Close(400)  # also refuses obsolete line folding
        name, value = name.lower(), value.strip()
        if name in headers and name in (b"content-length", b"authorization", b"host"):
            raise _Close(400)  # a repeated framing or credential header is an attack, not a client
        headers[name] = value
    if b"transfer-encoding" in headers:
        raise _Close(400)  # libcurl posts with Content-Length; chunked bodies are not accepted
    return parts[0], parts[1].split(b"?", 1)[0], MappingProxyType(headers), _keep_alive(parts[2], headers)


def _content_length(headers: Mapping[bytes, bytes]) -> int:
    value = headers.get(b"content-length")
    if value is None:
        raise _Close(411)
    if not value.isdigit() or len(value) > 12:
        raise _Close(400)
    return int(value)


def _keep_alive(version: bytes, headers: Mapping[bytes, bytes]) -> bool:
    tokens = {t.strip() for t in headers.get(b"connection", b"").lower().split(b",")}
    if version == b"HTTP/1.1":
        return b"close" not in tokens
    return b"keep-alive" in tokens
