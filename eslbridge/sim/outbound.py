"""FreeSWITCH's side of the outbound socket: the `socket host:port async full` dialplan app."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gevent import socket

from eslbridge.sim import calls
from eslbridge.sim.fsformat import fs_url_encode, read_commands, reply
from eslbridge.sim.templates import Ctx


@dataclass
class OutboundResult:
    """What FreeSWITCH would do with the call once the socket closed."""

    channel_data: dict[str, str]
    commands: list[str] = field(default_factory=list)
    hangup_cause: str | None = None
    resumed: bool = False

    @property
    def outcome(self) -> str:
        """"hangup" (sendmsg hangup, or socket closed without resume) or "continue" (dialplan goes on)."""
        return "continue" if self.resumed and self.hangup_cause is None else "hangup"


def channel_data(scenario: str = "auth_call", **overrides: str) -> dict[str, str]:
    """Channel headers like FreeSWITCH's connect reply, from a captured CHANNEL_CREATE."""
    import json

    tpl = next(t for t in calls.scenario(scenario).events["json"] if t.name == "CHANNEL_CREATE")
    data = json.loads(tpl.render(Ctx(base_us=int(time.time() * 1e6), core="sim"), "json"))
    data.pop("Event-Name", None)
    data.update({"Event-Name": "CHANNEL_DATA", "Content-Type": "command/reply", "Reply-Text": "+OK"})
    data.update(overrides)
    return data


def place_call(host: str, port: int, data: dict[str, str], timeout: float = 5.0) -> OutboundResult:
    """Connect like the `socket` app, answer the server's commands, return what became of the call."""
    result = OutboundResult(data)
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        for text in read_commands(sock):
            verb = text.split()[0] if text else ""
            result.commands.append(verb)
            if verb == "connect":
                head = "".join(f"{k}: {fs_url_encode(v)}\n" for k, v in data.items() if k != "Content-Type")
                sock.sendall(f"Content-Type: command/reply\n{head}\n".encode())
            elif verb == "sendmsg":
                headers = dict(line.split(": ", 1) for line in text.split("\n")[1:] if ": " in line)
                if headers.get("call-command") == "hangup":
                    result.hangup_cause = headers.get("hangup-cause", "NORMAL_CLEARING")
                sock.sendall(reply("+OK"))
            elif verb == "resume":
                result.resumed = True
                sock.sendall(reply("+OK"))
            elif verb == "exit":
                sock.sendall(reply("+OK bye"))
                return result
            else:
                sock.sendall(reply("+OK" if verb in ("myevents", "linger", "event") else "-ERR command not found"))
    finally:
        sock.close()
    return result
