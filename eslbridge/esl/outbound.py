"""Outbound ESL server: FreeSWITCH's `socket` dialplan app hands a call here to be authorized.

Protocol (mod_event_socket, outbound mode): FreeSWITCH connects; we send `connect`; its command/reply
carries the channel data as URL-encoded headers. The authorizer decides:

* allow: `resume` (the dialplan continues after the `socket` app once the socket closes; without it
  FreeSWITCH hangs the call up), then `exit`;
* refuse: `sendmsg` with `call-command: hangup` and `hangup-cause: CALL_REJECTED`, then `exit`.

An authorizer that raises or a peer that times out is a refusal (fail closed). Peers pass an
AcceptGate (eslbridge/ops/netgate.py): only addresses in ``allow`` (default loopback), bounded in number,
each reply due within ``limits.head_timeout``. gevent's StreamServer is used instead of
greenswitch's OutboundESLServer, whose accept loop sleeps 100 ms whenever no connection is
waiting (so every call setup could wait up to 100 ms) and whose session `connect()` has no timeout.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable

from eslbridge.config import LOOPBACK, ConnectionLimits, IPNetwork, OutboundConfig
from eslbridge.esl import protocol
from eslbridge.esl.framing import Frame, FrameParser
from eslbridge.ops.logs import LogOnce
from eslbridge.ops.netgate import AcceptGate, Conn, GatedServer

log = logging.getLogger(__name__)

Authorizer = Callable[[dict[str, str]], tuple[bool, str]]
ResultHook = Callable[[dict[str, str], bool, str], None]

# A channel-data reply is 2-8 KiB: start small and let the parser grow the buffer with the frame,
# instead of its default 1 MiB per connection.
INITIAL_BUFFER = 4096
_HANGUP = protocol.sendmsg([("call-command", "hangup"), ("hangup-cause", "CALL_REJECTED")])


class OutboundServer:
    """Accepts FreeSWITCH `socket` connections and continues or rejects each call."""

    def __init__(self, listen: tuple[str, int], authorizer: Authorizer, *, on_result: ResultHook | None = None,
                 allow: Iterable[IPNetwork] = LOOPBACK, limits: ConnectionLimits = OutboundConfig.connections) -> None:
        self.listen = listen
        self.authorizer = authorizer
        self.on_result = on_result
        self.stats: Counter = Counter()  # allowed, rejected, errors
        self.gate = AcceptGate("outbound", allow, limits)
        self._server: GatedServer | None = None
        self._log = LogOnce(log)

    def start(self) -> tuple[str, int]:
        self._server = GatedServer(self.listen, self._handle, self.gate)
        self._server.start()
        return self._server.server_host, self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=self.gate.limits.busy_timeout)

    def _handle(self, sock, addr) -> None:
        conn = self.gate.current()
        session = _Session(sock, conn)
        try:
            data = session.command("connect").headers
        except (OSError, ConnectionError) as exc:  # (TimeoutError is an OSError)
            self.stats["errors"] += 1
            self._log.warning("early", "outbound socket failed before channel data: %s (%d so far)",
                              type(exc).__name__, self.stats["errors"])
            sock.close()
            return
        conn.busy()
        try:
            allowed, reason = self.authorizer(data)
        except Exception:
            log.exception("call authorizer failed; rejecting the call")
            allowed, reason = False, "authorizer error"
        self.stats["allowed" if allowed else "rejected"] += 1
        if self.on_result is not None:
            self.on_result(data, allowed, reason)
        try:
            if allowed:
                session.command("resume")
            else:
                session.message(_HANGUP)
            session.command("exit")
        except (OSError, ConnectionError) as exc:
            self.stats["errors"] += 1
            self._log.warning("late", "outbound socket closed before the decision was sent: %s (%d so far)",
                              type(exc).__name__, self.stats["errors"])
        finally:
            sock.close()


class _Session:
    """Command/reply over one outbound socket (FreeSWITCH may interleave events; they are skipped).
    Each reply is due within the gate's ``head_timeout`` (the gate ends the connection otherwise)."""

    def __init__(self, sock, conn: Conn) -> None:
        self.sock, self.conn = sock, conn
        self.parser = FrameParser(size=INITIAL_BUFFER)
        self.frames: list[Frame] = []
        self.exchange: protocol.Exchange[None] = protocol.Exchange()

    def command(self, line: str) -> Frame:
        return self._await_reply(self.exchange.command(line, None))

    def message(self, wire: bytes) -> Frame:
        return self._await_reply(self.exchange.message(wire, None))

    def _await_reply(self, wire: bytes) -> Frame:
        self.sock.sendall(wire)
        self.conn.reading()
        while True:
            while self.frames:
                frame = self.frames.pop(0)
                # Only a command/reply answers here (this side never sends ``api``); anything else is skipped.
                if frame.content_type == "command/reply" and self.exchange.receive(frame).kind is protocol.Kind.REPLY:
                    return frame
            with self.parser.writable(INITIAL_BUFFER) as view:
                n = self.sock.recv_into(view)
            if not n:
                raise ConnectionError("FreeSWITCH closed the socket")
            self.frames.extend(self.parser.commit(n))
