"""SIP users as a library (roles: roles.py): the CLI, the daemon and the demo all go through here.

Every change runs in one transaction together with its ``audit_logs`` row. Names are checked
before they reach the database, so what the directory later puts into FreeSWITCH's XML and
dial strings is always plain:

- username: 1-64 of ``A-Z a-z 0-9 . _ + * ~ -``, not starting with ``.`` or ``-``
  (no whitespace, ``@``, ``:``, quotes, ``$``, ``{}``, control characters);
- realm: a DNS host name (lower-cased) or a dotted IPv4 address;
- display name: up to 255 printable characters without ``" < > \\ $ { }``;
- password: 8-72 bytes of UTF-8 (72 is bcrypt's limit; longer input would be truncated).

Password storage (YakYak): ``password_hash`` = bcrypt cost 12, ``sip_ha1`` =
MD5(username:realm:password), what FreeSWITCH's ``a1-hash`` expects (RFC 2617 HA1).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import bcrypt
import psycopg
from psycopg import errors as pgerrors

from eslbridge.accounts.audit import audit
from eslbridge.accounts.roles import NotFoundError, check_role_name, find_role_id
from eslbridge.errors import EslBridgeError, UsageError

BCRYPT_ROUNDS = 12
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_BYTES = 72

USERNAME_RE = re.compile(r"[A-Za-z0-9_+*~][A-Za-z0-9._+*~-]{0,63}")
_HOST_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
REALM_RE = re.compile(rf"{_HOST_LABEL}(\.{_HOST_LABEL})*")
DISPLAY_NAME_RE = re.compile(r"[^\x00-\x1f\x7f\"<>\\${}]{1,255}")
EMAIL_RE = re.compile(r"[^@\s\"<>]{1,64}@[^@\s\"<>]{1,255}")


@dataclass(frozen=True, slots=True)
class User:
    id: uuid.UUID
    username: str
    realm: str
    display_name: str | None
    email: str | None
    enabled: bool
    role: str | None
    created_at: datetime
    updated_at: datetime
    last_login: datetime | None

    @property
    def address(self) -> str:
        return f"{self.username}@{self.realm}"


# --- validation -------------------------------------------------------------------------------


def check_username(username: str) -> str:
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise UsageError(
            f"invalid user name {username!r}: use 1-64 of A-Z a-z 0-9 . _ + * ~ - (not starting with . or -)"
        )
    return username


def valid_identity(username: object, realm: object) -> bool:
    """True for a (username, realm) as stored: what check_username and check_realm accept (the realm
    already lower-case). The database's CHECK constraints (migration 0011) say the same."""
    return (isinstance(username, str) and isinstance(realm, str) and len(realm) <= 253
            and USERNAME_RE.fullmatch(username) is not None and REALM_RE.fullmatch(realm) is not None)


def check_realm(realm: str) -> str:
    """A host name (returned lower-cased) or an IPv4 address."""
    if isinstance(realm, str) and len(realm) <= 253:
        lowered = realm.lower()
        if REALM_RE.fullmatch(lowered):
            return lowered
        try:
            return str(ipaddress.IPv4Address(realm))
        except ValueError:
            pass
    raise UsageError(f"invalid realm {realm!r}: expected a DNS host name or an IPv4 address")


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise UsageError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise UsageError(f"the password must be at most {MAX_PASSWORD_BYTES} bytes (bcrypt's limit)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in password):
        raise UsageError("the password must not contain control characters")
    return password


def _check_optional(value: str | None, pattern: re.Pattern[str], what: str) -> str | None:
    if value is None:
        return None
    if not pattern.fullmatch(value):
        raise UsageError(f"invalid {what} {value!r}")
    return value


# --- hashing ----------------------------------------------------------------------------------


def hash_password(password: str, rounds: int = BCRYPT_ROUNDS) -> str:
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds)).decode("ascii")


def sip_ha1(username: str, realm: str, password: str) -> str:
    """RFC 2617 HA1 = MD5(username:realm:password), FreeSWITCH's ``a1-hash``."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode(), usedforsecurity=False).hexdigest()


# --- users ------------------------------------------------------------------------------------

_USER_COLUMNS = """u.id, u.username, u.realm, u.display_name, u.email, u.enabled, r.name,
                   u.created_at, u.updated_at, u.last_login"""


def _user(row: tuple) -> User:
    return User(*row)


def get_user(conn: psycopg.Connection, username: str, realm: str) -> User:
    row = conn.execute(
        f"SELECT {_USER_COLUMNS} FROM users u LEFT JOIN roles r ON r.id = u.role_id"
        " WHERE u.username = %s AND u.realm = %s",
        (username, realm.lower()),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no user {username}@{realm.lower()}")
    return _user(row)


def list_users(conn: psycopg.Connection, realm: str | None = None) -> list[User]:
    rows = conn.execute(
        f"SELECT {_USER_COLUMNS} FROM users u LEFT JOIN roles r ON r.id = u.role_id"
        " WHERE %(realm)s::text IS NULL OR u.realm = %(realm)s ORDER BY u.realm, u.username",
        {"realm": realm.lower() if realm else None},
    ).fetchall()
    return [_user(row) for row in rows]


def add_user(
    conn: psycopg.Connection,
    username: str,
    realm: str,
    password: str,
    role: str = "user",
    email: str | None = None,
    display_name: str | None = None,
    actor: str | None = None,
    rounds: int = BCRYPT_ROUNDS,
) -> User:
    """Create an enabled user; ``rounds`` below 12 only for bulk test setup."""
    username = check_username(username)
    realm = check_realm(realm)
    check_password(password)
    email = _check_optional(email, EMAIL_RE, "e-mail address")
    display_name = _check_optional(display_name, DISPLAY_NAME_RE, "display name")
    with conn.transaction():
        role_id = find_role_id(conn, check_role_name(role))
        try:
            with conn.transaction():
                user_id = conn.execute(
                    "INSERT INTO users (username, realm, password_hash, sip_ha1, display_name, email, role_id)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                    (username, realm, hash_password(password, rounds), sip_ha1(username, realm, password),
                     display_name, email, role_id),
                ).fetchone()[0]
        except pgerrors.UniqueViolation:
            raise EslBridgeError(f"user {username}@{realm} already exists") from None
        # The user is named by its id (resource_id): a username is often a phone number.
        audit(conn, "user.create", "user", user_id, {"role": role}, user_id=user_id, actor=actor)
    return get_user(conn, username, realm)


def _change_user(conn: psycopg.Connection, username: str, realm: str, sql: str, params: tuple) -> uuid.UUID:
    row = conn.execute(sql + " WHERE username = %s AND realm = %s RETURNING id", (*params, username, realm)).fetchone()
    if row is None:
        raise NotFoundError(f"no user {username}@{realm}")
    return row[0]


def set_password(
    conn: psycopg.Connection, username: str, realm: str, password: str,
    actor: str | None = None, rounds: int = BCRYPT_ROUNDS,
) -> None:
    username, realm = check_username(username), check_realm(realm)
    check_password(password)
    with conn.transaction():
        user_id = _change_user(
            conn, username, realm, "UPDATE users SET password_hash = %s, sip_ha1 = %s",
            (hash_password(password, rounds), sip_ha1(username, realm, password)),
        )
        audit(conn, "user.password_change", "user", user_id, user_id=user_id, actor=actor)


def set_enabled(conn: psycopg.Connection, username: str, realm: str, enabled: bool, actor: str | None = None) -> None:
    username, realm = check_username(username), check_realm(realm)
    with conn.transaction():
        user_id = _change_user(conn, username, realm, "UPDATE users SET enabled = %s", (enabled,))
        audit(conn, "user.enable" if enabled else "user.disable", "user", user_id, user_id=user_id, actor=actor)


def delete_user(conn: psycopg.Connection, username: str, realm: str, actor: str | None = None) -> None:
    """Delete the users row (calls keep their rows; their user_id becomes NULL per the schema)."""
    username, realm = check_username(username), check_realm(realm)
    with conn.transaction():
        row = conn.execute(
            "DELETE FROM users WHERE username = %s AND realm = %s RETURNING id", (username, realm)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no user {username}@{realm}")
        audit(conn, "user.delete", "user", row[0], actor=actor)


def set_user(
    conn: psycopg.Connection, username: str, realm: str, *, role: str | None = None, email: str | None = None,
    display_name: str | None = None, actor: str | None = None,
) -> User:
    """Change what ``add_user`` set; ``None`` keeps a field, ``""`` clears email or display name."""
    username, realm = check_username(username), check_realm(realm)
    changes: dict[str, Any] = {}
    if email is not None:
        changes["email"] = _check_optional(email, EMAIL_RE, "e-mail address") if email else None
    if display_name is not None:
        changes["display_name"] = _check_optional(display_name, DISPLAY_NAME_RE, "display name") \
            if display_name else None
    with conn.transaction():
        if role is not None:
            changes["role_id"] = find_role_id(conn, check_role_name(role))
        if not changes:
            raise UsageError("nothing to change: give --role, --email or --display-name")
        # Column names from the fixed set above, never from input.
        assignments = ", ".join(f"{column} = %s" for column in changes)
        user_id = _change_user(conn, username, realm, f"UPDATE users SET {assignments}", tuple(changes.values()))
        changed = sorted("role" if c == "role_id" else c for c in changes)
        audit(conn, "user.update", "user", user_id, {"username": username, "realm": realm, "changed": changed,
                                                     **({"role": role} if role is not None else {})},
              user_id=user_id, actor=actor)
    return get_user(conn, username, realm)
