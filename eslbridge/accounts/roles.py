"""Roles and their permissions as a library (YakYak's roles; DESIGN section 5: ``call:*``
permissions decide what the directory and the call authorizer allow). Every change runs in one
transaction together with its ``audit_logs`` row."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import errors as pgerrors

from eslbridge.accounts.audit import audit
from eslbridge.errors import EslBridgeError, UsageError

ROLE_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")


class NotFoundError(EslBridgeError):
    """The user or role does not exist."""


@dataclass(frozen=True, slots=True)
class Role:
    id: uuid.UUID
    name: str
    description: str | None
    permissions: tuple[str, ...]
    is_system: bool


def check_role_name(name: str) -> str:
    if not isinstance(name, str) or not ROLE_RE.fullmatch(name):
        raise UsageError(f"invalid role name {name!r}: use 1-63 of a-z 0-9 _ - starting with a letter")
    return name


def find_role_id(conn: psycopg.Connection, name: str) -> uuid.UUID:
    row = conn.execute("SELECT id FROM roles WHERE name = %s", (name,)).fetchone()
    if row is None:
        known = ", ".join(r.name for r in list_roles(conn))
        raise NotFoundError(f"unknown role {name!r} (known: {known})")
    return row[0]


def list_roles(conn: psycopg.Connection) -> list[Role]:
    rows = conn.execute(
        "SELECT id, name, description, permissions, is_system FROM roles ORDER BY name"
    ).fetchall()
    return [Role(r[0], r[1], r[2], tuple(r[3]), r[4]) for r in rows]


def get_role(conn: psycopg.Connection, name: str) -> Role:
    for role in list_roles(conn):
        if role.name == name:
            return role
    raise NotFoundError(f"unknown role {name!r}")


def _check_permissions(conn: psycopg.Connection, permissions: Iterable[str]) -> list[str]:
    wanted = list(dict.fromkeys(permissions))
    known = {r[0] for r in conn.execute("SELECT name FROM permissions").fetchall()}
    unknown = [p for p in wanted if p not in known]
    if unknown:
        raise EslBridgeError(
            f"unknown permission{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
            f" (known: {', '.join(sorted(known))})"
        )
    return wanted


def add_role(
    conn: psycopg.Connection, name: str, permissions: Iterable[str] = (),
    description: str | None = None, actor: str | None = None,
) -> Role:
    name = check_role_name(name)
    with conn.transaction():
        perms = _check_permissions(conn, permissions)
        try:
            with conn.transaction():
                role_id = conn.execute(
                    "INSERT INTO roles (name, description, permissions) VALUES (%s, %s, %s) RETURNING id",
                    (name, description, perms),
                ).fetchone()[0]
        except pgerrors.UniqueViolation:
            raise EslBridgeError(f"role {name!r} already exists") from None
        audit(conn, "role.create", "role", role_id, {"name": name, "permissions": perms}, actor=actor)
    return get_role(conn, name)


def _change_permissions(
    conn: psycopg.Connection, name: str, permissions: Iterable[str], grant: bool, actor: str | None
) -> Role:
    with conn.transaction():
        perms = _check_permissions(conn, permissions)
        if not perms:
            raise UsageError("name at least one permission")
        role_id = find_role_id(conn, check_role_name(name))
        if grant:
            sql = ("UPDATE roles SET permissions = ARRAY(SELECT DISTINCT p FROM unnest(permissions || %s::text[]) p"
                   " ORDER BY p) WHERE id = %s")
        else:
            sql = ("UPDATE roles SET permissions = ARRAY(SELECT p FROM unnest(permissions) p WHERE p <> ALL(%s))"
                   " WHERE id = %s")
        conn.execute(sql, (perms, role_id))
        audit(conn, "role.grant" if grant else "role.revoke", "role", role_id,
              {"name": name, "permissions": perms}, actor=actor)
    return get_role(conn, name)


def grant(conn: psycopg.Connection, role: str, permissions: Iterable[str], actor: str | None = None) -> Role:
    return _change_permissions(conn, role, permissions, True, actor)


def revoke(conn: psycopg.Connection, role: str, permissions: Iterable[str], actor: str | None = None) -> Role:
    return _change_permissions(conn, role, permissions, False, actor)


def role_users(conn: psycopg.Connection, name: str) -> int:
    """How many users hold role ``name`` (they keep no role once it is deleted)."""
    return conn.execute("SELECT count(*) FROM users u JOIN roles r ON r.id = u.role_id WHERE r.name = %s",
                        (name,)).fetchone()[0]


def deletable_role(conn: psycopg.Connection, name: str) -> Role:
    """The role ``name``, refused when it is a system role (the database refuses those too)."""
    role = get_role(conn, check_role_name(name))
    if role.is_system:
        raise EslBridgeError(f"role {name!r} is a system role and cannot be deleted")
    return role


def delete_role(conn: psycopg.Connection, name: str, actor: str | None = None) -> int:
    """Delete a non-system role; its users keep no role (ON DELETE SET NULL). Returns how many."""
    with conn.transaction():
        role = deletable_role(conn, name)
        members = role_users(conn, name)
        conn.execute("DELETE FROM roles WHERE id = %s", (role.id,))
        audit(conn, "role.delete", "role", role.id, {"name": name, "users": members}, actor=actor)
    return members
