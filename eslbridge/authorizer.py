"""Who may place a call handed over by FreeSWITCH's `socket` application (DESIGN section 5).

The caller must be a SIP-authenticated, enabled user whose role grants
`call:create`, whose `permissions.can_call` is not false, and who is under the
`rate_limits` window for the `call` endpoint. Every decision is written to
call_events; refusals also to audit_logs. Anything that goes wrong while
deciding refuses the call: a broken database must not become free calls.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from eslbridge.audit import audit

log = logging.getLogger(__name__)

ENDPOINT = "call"
ACTOR = "eslbridge-daemon"

# One statement: count this attempt in the user's window (a new window once the old one has passed)
# and return the count with the limit that applies.
_COUNT_ATTEMPT = """
INSERT INTO rate_limits AS r (user_id, endpoint, request_count, window_start, window_duration_minutes)
VALUES (%(user_id)s, %(endpoint)s, 1, now(), %(window)s)
ON CONFLICT (user_id, endpoint) DO UPDATE SET
    request_count = CASE WHEN r.window_start + make_interval(mins => r.window_duration_minutes) <= now()
                         THEN 1 ELSE r.request_count + 1 END,
    window_start  = CASE WHEN r.window_start + make_interval(mins => r.window_duration_minutes) <= now()
                         THEN now() ELSE r.window_start END
RETURNING r.request_count, COALESCE(r.max_requests, %(default_max)s)
"""

_USER = """
SELECT u.id, u.enabled, COALESCE(ro.permissions @> ARRAY['call:create'], false),
       COALESCE(u.permissions ->> 'can_call', 'true') <> 'false'
  FROM users u LEFT JOIN roles ro ON ro.id = u.role_id
 WHERE u.username = %s AND u.realm = %s
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    user_id: str | None = None


def caller_identity(channel: dict[str, str]) -> tuple[str, str] | None:
    """(username, realm) of a caller FreeSWITCH authenticated, else None.

    Only `variable_sip_authorized=true` counts: From headers are the caller's to choose.
    """
    if channel.get("variable_sip_authorized") != "true":
        return None
    user = channel.get("variable_user_name") or channel.get("variable_sip_auth_username")
    realm = channel.get("variable_domain_name") or channel.get("variable_sip_auth_realm")
    return (user, realm) if user and realm else None


class CallAuthorizer:
    """Callable for the outbound ESL server: channel data in, (allowed, reason) out."""

    def __init__(self, pool: Any, *, default_max_calls: int = 60, window_minutes: int = 60) -> None:
        self._pool = pool  # psycopg_pool.ConnectionPool (or anything with .connection())
        self._default_max = default_max_calls
        self._window = window_minutes

    def __call__(self, channel: dict[str, str]) -> tuple[bool, str]:
        decision = self.decide(channel)
        return decision.allowed, decision.reason

    def decide(self, channel: dict[str, str]) -> Decision:
        call_uuid = channel.get("Unique-ID") or channel.get("Channel-Unique-ID") or ""
        try:
            with self._pool.connection() as conn:
                decision = self._decide(conn, channel)
                self._record(conn, call_uuid, channel, decision)
            return decision
        except psycopg.Error as exc:
            log.error("call authorization failed closed for %s: %s", call_uuid, type(exc).__name__)
            return Decision(False, "authorization unavailable")

    def _decide(self, conn: psycopg.Connection, channel: dict[str, str]) -> Decision:
        identity = caller_identity(channel)
        if identity is None:
            return Decision(False, "caller not authenticated")
        row = conn.execute(_USER, identity).fetchone()
        if row is None:
            return Decision(False, "unknown user")
        user_id, enabled, may_call, can_call = str(row[0]), row[1], row[2], row[3]
        if not enabled:
            return Decision(False, "user disabled", user_id)
        if not may_call:
            return Decision(False, "role lacks call:create", user_id)
        if not can_call:
            return Decision(False, "permissions.can_call is false", user_id)
        count, limit = conn.execute(
            _COUNT_ATTEMPT,
            {"user_id": user_id, "endpoint": ENDPOINT, "window": self._window, "default_max": self._default_max},
        ).fetchone()
        if count > limit:
            return Decision(False, f"rate limit: {count} calls in window, limit {limit}", user_id)
        return Decision(True, "ok", user_id)

    @staticmethod
    def _record(conn: psycopg.Connection, call_uuid: str, channel: dict[str, str], decision: Decision) -> None:
        details = {"reason": decision.reason, "user_id": decision.user_id,
                   "channel": channel.get("Channel-Name")}
        conn.execute(
            """INSERT INTO call_events (call_uuid, node, seq, event_type, event_data)
               VALUES (%s, %s, 0, %s, %s) ON CONFLICT ON CONSTRAINT call_events_idempotency_key DO NOTHING""",
            (call_uuid, channel.get("FreeSWITCH-Hostname"), "authorized" if decision.allowed else "refused",
             Jsonb(details)),
        )
        if not decision.allowed:
            audit(conn, "call.refused", resource_type="call", resource_id=call_uuid,
                  details={"reason": decision.reason}, user_id=decision.user_id, actor=ACTOR)
