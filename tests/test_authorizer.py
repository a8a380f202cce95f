"""The outbound-socket call authorizer and registration logins, on the real PostgreSQL."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from eslbridge.accounts.authorizer import CallAuthorizer, caller_identity
from eslbridge.accounts.ratelimits import clear_limit, set_limit
from eslbridge.accounts.registrations import login_from_event, record_logins
from eslbridge.keys.keyring import Keyring
from tests.correlator_fixtures import captured


@pytest.fixture
def pool(db_dsn: str):
    with ConnectionPool(db_dsn, min_size=1, max_size=2, open=True) as p:
        yield p


NODE = "fs-east-1"  # the configured name; FreeSWITCH calls itself "fs1" in the channel data


def authorizer(pool: ConnectionPool, keyring: Keyring) -> CallAuthorizer:
    return CallAuthorizer(pool, lambda: keyring, lambda channel: NODE)


def add_user(db: psycopg.Connection, username: str, realm: str = "127.0.0.1", *, role: str | None = "user",
             enabled: bool = True, can_call: bool = True) -> str:
    return str(db.execute(
        """INSERT INTO users (username, password_hash, realm, enabled, role_id, permissions)
           VALUES (%s, 'x', %s, %s, (SELECT id FROM roles WHERE name = %s), %s) RETURNING id""",
        (username, realm, enabled, role, json.dumps({"can_call": can_call})),
    ).fetchone()[0])


def channel(user: str = "1000", realm: str = "127.0.0.1", authorized: bool = True) -> dict[str, str]:
    """Channel data as the outbound socket's `connect` reply carries it (variable_* of the A-leg)."""
    data = {"Unique-ID": str(uuid.uuid4()), "Channel-Name": f"sofia/internal/{user}@{realm}",
            "FreeSWITCH-Hostname": "fs1", "Caller-Caller-ID-Number": user}
    if authorized:
        data.update({"variable_sip_authorized": "true", "variable_user_name": user, "variable_domain_name": realm})
    return data


def events_for(db: psycopg.Connection, call_uuid: str) -> list[tuple]:
    return db.execute("SELECT event_type, event_data->>'reason' FROM call_events WHERE call_uuid = %s",
                      (call_uuid,)).fetchall()


def test_caller_identity_comes_from_the_authenticated_channel() -> None:
    data = next(e for e in captured("auth-call", "json")
                if e.get("Event-Name") == "CHANNEL_CREATE")
    assert caller_identity(data) == ("1000", "127.0.0.1")
    unauth = next(e for e in captured("tone", "json")
                  if e.get("Event-Name") == "CHANNEL_CREATE")
    assert caller_identity(unauth) is None  # From header alone proves nothing


def test_enabled_user_with_call_create_is_allowed(db: psycopg.Connection, pool: ConnectionPool, keyring) -> None:
    user_id = add_user(db, "1000")
    ch = channel()
    assert authorizer(pool, keyring)(ch) == (True, "ok")
    assert events_for(db, ch["Unique-ID"]) == [("authorized", "ok")]
    assert db.execute("SELECT request_count FROM rate_limits WHERE user_id = %s", (user_id,)).fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM audit_logs").fetchone() == (0,)


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ({"enabled": False}, "user disabled"),
        ({"role": None}, "role lacks call:create"),
        ({"can_call": False}, "permissions.can_call is false"),
    ],
)
def test_refusals_are_recorded_and_audited(db: psycopg.Connection, pool: ConnectionPool, keyring, setup,
                                           reason) -> None:
    user_id = add_user(db, "1000", **setup)
    ch = channel()
    assert authorizer(pool, keyring)(ch) == (False, reason)
    assert events_for(db, ch["Unique-ID"]) == [("refused", reason)]
    audit = db.execute("SELECT action, resource_id, user_id, details FROM audit_logs").fetchall()
    assert audit == [("call.refused", ch["Unique-ID"], uuid.UUID(user_id), {"reason": reason, "node": NODE})]


def test_role_without_call_create(db: psycopg.Connection, pool: ConnectionPool, keyring) -> None:
    db.execute("INSERT INTO roles (name, permissions) VALUES ('listener', '{call:read}')")
    add_user(db, "1000", role="listener")
    assert authorizer(pool, keyring)(channel()) == (False, "role lacks call:create")


def test_unknown_and_unauthenticated_callers_are_refused(db: psycopg.Connection, pool: ConnectionPool,
                                                         keyring) -> None:
    add_user(db, "1000")
    auth = authorizer(pool, keyring)
    assert auth(channel("1001")) == (False, "unknown user")
    assert auth(channel("1000", realm="other.example")) == (False, "unknown user")
    assert auth(channel("1000", authorized=False)) == (False, "caller not authenticated")
    # SQL in the identity is data, never SQL.
    assert auth(channel("1000' OR '1'='1")) == (False, "unknown user")


def test_rate_limit_window(db: psycopg.Connection, pool: ConnectionPool, keyring) -> None:
    user_id = add_user(db, "1000")
    auth = authorizer(pool, keyring)
    set_limit(db, "1000", "127.0.0.1", 2, actor="test")
    assert [auth(channel())[0] for _ in range(3)] == [True, True, False]
    assert auth(channel())[1] == "rate limit: 4 calls in window, limit 2"
    db.execute("UPDATE rate_limits SET max_requests = 10 WHERE user_id = %s", (user_id,))
    assert auth(channel())[0] is True
    # An expired window starts over.
    db.execute("UPDATE rate_limits SET max_requests = 1, window_start = now() - interval '2 hours'"
               " WHERE user_id = %s", (user_id,))
    assert auth(channel()) == (True, "ok")
    assert auth(channel())[0] is False


def test_no_limit_when_max_requests_is_null(db: psycopg.Connection, pool: ConnectionPool, keyring) -> None:
    """The schema's NULL max_requests is no limit: well past the old 60-an-hour default, every call passes,
    and each attempt is still counted in the window."""
    user_id = add_user(db, "1000")
    auth = authorizer(pool, keyring)
    assert all(auth(channel()) == (True, "ok") for _ in range(75))
    assert db.execute("SELECT request_count, max_requests FROM rate_limits WHERE user_id = %s",
                      (user_id,)).fetchone() == (75, None)
    set_limit(db, "1000", "127.0.0.1", 80, actor="test")
    assert [auth(channel())[0] for _ in range(6)] == [True] * 5 + [False]
    clear_limit(db, "1000", "127.0.0.1", actor="test")
    assert auth(channel()) == (True, "ok")


def test_dead_database_fails_closed(tmp_path: Path) -> None:
    from eslbridge.sim.localpg import free_port

    dead = f"postgresql://x@127.0.0.1:{free_port()}/x?connect_timeout=1"
    with ConnectionPool(dead, min_size=0, max_size=1, timeout=1, open=True) as p:
        assert CallAuthorizer(p, lambda: None, lambda ch: NODE)(channel()) == (False, "authorization unavailable")


def test_registration_updates_last_login_forward_only(db: psycopg.Connection) -> None:
    events = captured("register", "json")
    logins = [login for e in events if (login := login_from_event(e))]
    register = next(e for e in events if e.get("Event-Subclass") == "sofia::register")
    assert len(logins) == 1  # the unregister is not a login
    assert logins[0].username == register["username"] and logins[0].realm == register["realm"]
    assert int(logins[0].at.timestamp() * 1_000_000) == int(register["Event-Date-Timestamp"])

    user_id = add_user(db, register["username"], register["realm"])
    add_user(db, register["username"], "elsewhere.example")
    assert record_logins(db, logins) == 1
    assert db.execute("SELECT last_login FROM users WHERE id = %s", (user_id,)).fetchone() == (logins[0].at,)
    assert record_logins(db, logins) == 0  # replay: no change
    older = logins[0]._replace(at=logins[0].at.replace(year=2020))
    assert record_logins(db, [older]) == 0
    assert db.execute("SELECT count(*) FROM users WHERE last_login IS NULL").fetchone() == (1,)
