"""Faults the simulator can inject into live ESL sessions (Simulator.inject)."""

from __future__ import annotations

from dataclasses import dataclass

from eslbridge.sim.fsformat import DISCONNECT_NOTICE, frame


@dataclass(frozen=True)
class Fault:
    """kind: cut | stall | raw | log | disconnect; `data` for raw, `seconds` for stall (0: until restart)."""

    kind: str
    data: bytes = b""
    seconds: float = 0.0


def cut_mid_frame() -> Fault:
    """Send the first half of an event frame, then drop the TCP connection."""
    return Fault("cut")


def stall(seconds: float = 0.0) -> Fault:
    """Keep the socket open but send nothing (not even HEARTBEAT) for `seconds` (0: until restart)."""
    return Fault("stall", seconds=seconds)


def raw(data: bytes) -> Fault:
    """Send these bytes as they are (garbage, hostile frames, ...)."""
    return Fault("raw", data=data)


def garbage(size: int = 256) -> Fault:
    """Bytes that are no ESL at all: binary noise with newlines, invalid UTF-8 included."""
    noise = bytes((i * 131 + 7) % 256 for i in range(size))
    return raw(noise + b"\n\n")


def log_data(text: str = "sofia_reg.c:1 gateway registration failed\n") -> Fault:
    body = text.encode()
    return raw(frame("log/data", body, Log_Level="4", Text_Channel="3", Log_File="sofia_reg.c"))


def disconnect_notice() -> Fault:
    return raw(DISCONNECT_NOTICE)


def event_frame_raw(content_type: str, body: bytes, declared_length: int | str | None = None) -> Fault:
    """An event frame whose Content-Length may lie (`declared_length`)."""
    length = len(body) if declared_length is None else declared_length
    return raw(f"Content-Length: {length}\nContent-Type: {content_type}\n\n".encode() + body)
