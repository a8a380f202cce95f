"""Outbound ESL server: FreeSWITCH's `socket` dialplan app hands a call here to be authorized.

Protocol (mod_event_socket, outbound mode): FreeSWITCH connects; we send `connect`; its command/reply
carries the channel data as URL-encoded headers. The authorizer decides:

* allow: `resume` (the dialplan continues after the `socket` app once the socket closes; without it
  FreeSWITCH hangs the call up), then `exit`;
* refuse: `sendmsg` with `call-command: hangup` and `hangup-cause: CALL_REJECTED`, then `exit`.

An authorizer that raises or a peer that times out is a refusal (fail closed). gevent's StreamServer
is used instead of greenswitch's OutboundESLServer, whose accept loop sleeps 100 ms whenever no
connection is waiting (so every call setup could wait up to 100 ms) and whose session `connect()` has
no timeout.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import gevent
from gevent.server import StreamServer

from eslbridge.esl.framing import Frame, FrameParser

log = logging.getLogger(__name__)

Authorizer = Callable[[dict[str, str]], tuple[bool, str]]
ResultHook = Callable[[dict[str, str], bool, str], None]


class OutboundServer:
    """Accepts FreeSWITCH `socket` connections and continues or rejects each call."""

    def __init__(self, listen: tuple[str, int], authorizer: Authorizer, *, timeout: float = 5.0,
                 on_result: ResultHook | None = None) -> None:
        self.listen = listen
        self.authorizer = authorizer
        self.timeout = timeout
        self.on_result = on_result
        self.stats: Counter = Counter()  # allowed, rejected, errors
        self._server: StreamServer | None = None

    def start(self) -> tuple[str, int]:
        self._server = StreamServer(self.listen, self._handle)
        self._server.start()
        return self._server.server_host, self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=self.timeout)

    def _handle(self, sock, addr) -> None:
        session = _Session(sock, self.timeout)
        try:
            data = session.command("connect").headers
        except (OSError, TimeoutError, ConnectionError) as exc:
            self.stats["errors"] += 1
            log.warning("outbound socket from %s failed before channel data: %s", addr[0], exc)
            sock.close()
            return
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
                session.command("sendmsg\ncall-command: hangup\nhangup-cause: CALL_REJECTED")
            session.command("exit")
        except (OSError, TimeoutError, ConnectionError) as exc:
            self.stats["errors"] += 1
            log.warning("outbound socket for %s: %s", data.get("Unique-ID", "?"), exc)
        finally:
            sock.close()


class _Session:
    """Command/reply over one outbound socket (FreeSWITCH may interleave events; they are skipped)."""

    def __init__(self, sock, timeout: float) -> None:
        self.sock, self.timeout = sock, timeout
        self.parser = FrameParser()
        self.frames: list[Frame] = []

    def command(self, cmd: str) -> Frame:
        self.sock.sendall(cmd.encode("utf-8") + b"\n\n")
        with gevent.Timeout(self.timeout, TimeoutError(f"no reply to {cmd.split()[0]!r}")):
            while True:
                while self.frames:
                    frame = self.frames.pop(0)
                    if frame.content_type == "command/reply":
                        return frame
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("FreeSWITCH closed the socket")
                self.frames.extend(self.parser.feed(data))
