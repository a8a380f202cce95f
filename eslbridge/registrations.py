"""users.last_login from FreeSWITCH's `CUSTOM sofia::register` events (SIPCall's last_login).

The event names the authenticated identity in `username`/`realm` (what the
digest was checked against), and its `Event-Date-Timestamp` (microseconds
since the epoch) is when FreeSWITCH accepted the REGISTER. Unregistrations
(`sofia::unregister`, or `expires: 0`) are not logins.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import NamedTuple

import psycopg


class Login(NamedTuple):
    username: str
    realm: str
    at: datetime


def login_from_event(event: dict[str, str]) -> Login | None:
    if event.get("Event-Name") != "CUSTOM" or event.get("Event-Subclass") != "sofia::register":
        return None
    if event.get("expires") == "0":
        return None
    user = event.get("username") or event.get("user_name")
    realm = event.get("realm") or event.get("domain_name")
    stamp = event.get("Event-Date-Timestamp", "")
    if not (user and realm and stamp.isdigit()):
        return None
    return Login(user, realm, datetime.fromtimestamp(int(stamp) / 1_000_000, tz=UTC))


def record_logins(conn: psycopg.Connection, logins: Iterable[Login]) -> int:
    """Move last_login forward (never back: events may be replayed or arrive late). Returns rows changed."""
    changed = 0
    with conn.cursor() as cur:
        for login in logins:
            cur.execute(
                """UPDATE users SET last_login = %s
                    WHERE username = %s AND realm = %s AND (last_login IS NULL OR last_login < %s)""",
                (login.at, login.username, login.realm, login.at),
            )
            changed += cur.rowcount
    return changed
