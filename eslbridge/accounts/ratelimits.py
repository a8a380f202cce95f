"""Per-user call limits in ``rate_limits`` (SIPCall schema; DESIGN section 5).

One row per (user, endpoint). The outbound authorizer counts every call attempt in the user's
current window and refuses once ``request_count`` exceeds ``max_requests``. A NULL
``max_requests`` means no limit, as the schema documents, and so does a user without a row: a
ceiling is set per user by an operator (``eslbridge user limit``), where ``user limit`` shows it,
rather than by a default hidden in the daemon's configuration that the table would not reveal.
Attempts are counted either way, so the current window's count is there to look at before
setting a limit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import psycopg

from eslbridge.accounts.audit import audit
from eslbridge.accounts.users import check_realm, check_username, get_user
from eslbridge.errors import UsageError

ENDPOINT = "call"
DEFAULT_WINDOW_MINUTES = 60  # the column's default
MAX_WINDOW_MINUTES = 366 * 24 * 60
MAX_REQUESTS = 2**31 - 1  # the column is an int4

# One statement: count this attempt in the user's window (a new window once the old one has
# passed) and return the count with the user's limit (NULL: none).
_COUNT_ATTEMPT = """
INSERT INTO rate_limits AS r (user_id, endpoint, request_count, window_start)
VALUES (%(user_id)s, %(endpoint)s, 1, now())
ON CONFLICT (user_id, endpoint) DO UPDATE SET
    request_count = CASE WHEN r.window_start + make_interval(mins => r.window_duration_minutes) <= now()
                         THEN 1 ELSE r.request_count + 1 END,
    window_start  = CASE WHEN r.window_start + make_interval(mins => r.window_duration_minutes) <= now()
                         THEN now() ELSE r.window_start END
RETURNING r.request_count, r.max_requests
"""


@dataclass(frozen=True, slots=True)
class Limit:
    """A user's call limit and where the current window stands."""

    max_requests: int | None  # None: no limit
    window_minutes: int
    request_count: int
    window_start: datetime | None  # None: no call attempt counted yet

    def describe(self) -> str:
        if self.max_requests is None:
            return "no limit"
        return f"at most {self.max_requests} call(s) per {self.window_minutes} minute(s)"


def count_attempt(conn: psycopg.Connection, user_id: str) -> tuple[int, int | None]:
    """Count one call attempt; (attempts in the current window, the limit or None)."""
    count, limit = conn.execute(_COUNT_ATTEMPT, {"user_id": user_id, "endpoint": ENDPOINT}).fetchone()
    return count, limit


def _read(conn: psycopg.Connection, user_id: uuid.UUID) -> Limit:
    row = conn.execute(
        "SELECT max_requests, window_duration_minutes, request_count, window_start FROM rate_limits"
        " WHERE user_id = %s AND endpoint = %s", (user_id, ENDPOINT)).fetchone()
    return Limit(*row) if row else Limit(None, DEFAULT_WINDOW_MINUTES, 0, None)


def get_limit(conn: psycopg.Connection, username: str, realm: str, actor: str | None = None) -> Limit:
    with conn.transaction():
        user_id = get_user(conn, check_username(username), check_realm(realm)).id
        audit(conn, "user.limit_show", "user", user_id, {"endpoint": ENDPOINT}, user_id=user_id, actor=actor)
    return _read(conn, user_id)


def set_limit(conn: psycopg.Connection, username: str, realm: str, max_requests: int,
              window_minutes: int | None = None, actor: str | None = None) -> Limit:
    """At most ``max_requests`` calls per window (0 refuses every call); the window is kept when not given."""
    if not 0 <= max_requests <= MAX_REQUESTS:
        raise UsageError(f"the limit must be between 0 and {MAX_REQUESTS} calls, got {max_requests}")
    if window_minutes is not None and not 1 <= window_minutes <= MAX_WINDOW_MINUTES:
        raise UsageError(f"the window must be between 1 and {MAX_WINDOW_MINUTES} minutes, got {window_minutes}")
    with conn.transaction():
        user_id = get_user(conn, check_username(username), check_realm(realm)).id
        conn.execute(
            """INSERT INTO rate_limits AS r (user_id, endpoint, max_requests, window_duration_minutes)
               VALUES (%(user_id)s, %(endpoint)s, %(max)s, coalesce(%(window)s, %(default)s))
               ON CONFLICT (user_id, endpoint) DO UPDATE SET max_requests = EXCLUDED.max_requests,
                   window_duration_minutes = coalesce(%(window)s, r.window_duration_minutes)""",
            {"user_id": user_id, "endpoint": ENDPOINT, "max": max_requests, "window": window_minutes,
             "default": DEFAULT_WINDOW_MINUTES})
        limit = _read(conn, user_id)
        audit(conn, "user.limit_set", "user", user_id,
              {"endpoint": ENDPOINT, "max_requests": limit.max_requests, "window_minutes": limit.window_minutes},
              user_id=user_id, actor=actor)
    return limit


def clear_limit(conn: psycopg.Connection, username: str, realm: str, actor: str | None = None) -> Limit:
    """No limit any more (the row and its count stay: they are history, not a setting)."""
    with conn.transaction():
        user_id = get_user(conn, check_username(username), check_realm(realm)).id
        conn.execute("UPDATE rate_limits SET max_requests = NULL WHERE user_id = %s AND endpoint = %s",
                     (user_id, ENDPOINT))
        audit(conn, "user.limit_clear", "user", user_id, {"endpoint": ENDPOINT}, user_id=user_id, actor=actor)
    return _read(conn, user_id)
