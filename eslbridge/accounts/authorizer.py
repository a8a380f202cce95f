"""Who may place a call handed over by FreeSWITCH's `socket` application (DESIGN section 5).

The caller must be a SIP-authenticated, enabled user whose role grants `call:create`, whose
`permissions.can_call` is not false, and who is under their `rate_limits` window for the `call`
endpoint (NULL `max_requests`: no limit; see ``eslbridge.accounts.ratelimits``). Every decision is written to
call_events; refusals also to audit_logs. Anything that goes wrong while deciding refuses the call: a
broken database must not become free calls, nor an unaudited one.

The call_events row is the call's own: keyed by the channel's UUID (the call's root leg: the socket
app runs in the caller's dialplan), carrying the configured node name, and linked to the call's
`calls` row when it exists already (else the writer links it when it writes that row). What an
auditor needs to follow a refusal up (the channel name, the claimed identity, the caller ID and
dialled number, the caller's address) is personal data, so it is kept only sealed
(``eslbridge.keys.sealed``); what stays readable is the verdict, the user's id and the SIP profile.

Every statement needs only what the `eslbridge_daemon` role grants: audit_logs and call_events are
appended without RETURNING (that would need SELECT on audit_logs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from eslbridge.accounts.audit import audit
from eslbridge.accounts.ratelimits import count_attempt
from eslbridge.keys.keyring import Keyring
from eslbridge.keys.sealed import seal

log = logging.getLogger(__name__)

ACTOR = "eslbridge-daemon"

_USER = """
SELECT u.id, u.enabled, COALESCE(ro.permissions @> ARRAY['call:create'], false),
       COALESCE(u.permissions ->> 'can_call', 'true') <> 'false'
  FROM users u LEFT JOIN roles ro ON ro.id = u.role_id
 WHERE u.username = %s AND u.realm = %s
"""

# seq 0: one decision per call; a replayed decision (the same UUID handed over twice) keeps the first.
_EVENT = """
INSERT INTO call_events (call_uuid, node, seq, event_type, event_data, call_id, call_initiated_at)
SELECT %(call_uuid)s, %(node)s, 0, %(event_type)s, %(event_data)s, c.id, c.initiated_at
  FROM (SELECT) AS one
  LEFT JOIN LATERAL (SELECT id, initiated_at FROM calls WHERE call_uuid = %(call_uuid)s LIMIT 1) c ON true
ON CONFLICT ON CONSTRAINT call_events_idempotency_key DO NOTHING
"""

# Channel data an auditor may need to follow a decision up; all of it personal (numbers, URIs, IPs).
_PERSONAL_FIELDS = {
    "channel": "Channel-Name",
    "caller_id_number": "Caller-Caller-ID-Number",
    "destination_number": "Caller-Destination-Number",
    "network_ip": "variable_sip_network_ip",
}


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

    def __init__(self, pool: Any, keyring: Callable[[], Keyring],
                 node_of: Callable[[dict[str, str]], str | None]) -> None:
        self._pool = pool  # psycopg_pool.ConnectionPool (or anything with .connection())
        self._keyring = keyring  # the current keyring (a SIGHUP may replace it)
        self._node_of = node_of  # channel -> configured node name

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
        count, limit = count_attempt(conn, user_id)
        if limit is not None and count > limit:
            return Decision(False, f"rate limit: {count} calls in window, limit {limit}", user_id)
        return Decision(True, "ok", user_id)

    def _record(self, conn: psycopg.Connection, call_uuid: str, channel: dict[str, str], decision: Decision) -> None:
        node = self._node_of(channel)
        personal = {name: channel[header] for name, header in _PERSONAL_FIELDS.items() if channel.get(header)}
        claimed = _claimed_identity(channel)
        if claimed:
            personal["identity"] = claimed
        details = {"reason": decision.reason, "user_id": decision.user_id,
                   "profile": channel.get("variable_sofia_profile_name"), **seal(self._keyring(), personal)}
        conn.execute(_EVENT, {"call_uuid": call_uuid, "node": node,
                              "event_type": "authorized" if decision.allowed else "refused",
                              "event_data": Jsonb(details)})
        if not decision.allowed:
            audit(conn, "call.refused", resource_type="call", resource_id=call_uuid,
                  details={"reason": decision.reason, "node": node}, user_id=decision.user_id, actor=ACTOR)


def _claimed_identity(channel: dict[str, str]) -> str | None:
    """Who was decided about, for the auditor: the authenticated user@realm, else the From header's."""
    identity = caller_identity(channel)
    if identity is not None:
        return "@".join(identity)
    user, host = channel.get("variable_sip_from_user"), channel.get("variable_sip_from_host")
    return f"{user}@{host}" if user else None
