"""sd_notify(3) and the watchdog, for ``Type=notify`` units (DESIGN section 10).

Hand-written (a datagram to a unix socket): the ``systemd`` Python package needs the libsystemd
headers to build, and ``sdnotify`` is unmaintained. Every function is a no-op returning False
when not run under systemd (no ``$NOTIFY_SOCKET``).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr or addr[0] not in "/@":
        return None
    return "\0" + addr[1:] if addr[0] == "@" else addr  # '@' is the abstract namespace


def notify(msg: str) -> bool:
    """Send one notification (e.g. ``"READY=1"``); True if it was sent."""
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(msg.encode("utf-8"), addr)
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    return notify("READY=1" + (f"\nSTATUS={status_text}" if status_text else ""))


def reloading() -> bool:
    return notify("RELOADING=1")


def stopping() -> bool:
    return notify("STOPPING=1")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    return notify("STATUS=" + text.replace("\n", " "))


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds (``$WATCHDOG_USEC``) if it applies to this process, else None.
    Ping at least every half of it."""
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None
