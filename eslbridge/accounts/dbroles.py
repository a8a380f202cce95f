"""The PostgreSQL group roles of DESIGN section 7 and `eslbridge db grant`, which creates or repairs
them: the roles themselves here, their privileges in ``eslbridge_grant_roles()`` (migration 0012), so
the migration and a later repair by a privileged user grant exactly the same.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from eslbridge.accounts.audit import audit
from eslbridge.errors import EslBridgeError

DAEMON, ADMIN, AUDITOR = "eslbridge_daemon", "eslbridge_admin", "eslbridge_auditor"
GROUP_ROLES = (DAEMON, ADMIN, AUDITOR)


def missing_roles(conn: psycopg.Connection) -> list[str]:
    found = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(GROUP_ROLES),))}
    return [r for r in GROUP_ROLES if r not in found]


def grant_roles(conn: psycopg.Connection, logins: dict[str, list[str]] | None = None) -> list[str]:
    """Create missing group roles, (re)grant their privileges, grant each to the named logins
    (``{DAEMON: ["eslbridge"]}``); one transaction. Returns what was done, one line per action."""
    actions: list[str] = []
    with conn.transaction():
        for role in missing_roles(conn):
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
            actions.append(f"created role {role}")
        schema = conn.execute("SELECT to_regprocedure('eslbridge_grant_roles()') IS NOT NULL").fetchone()[0]
        if schema:
            actions += [r[0] for r in conn.execute("SELECT eslbridge_grant_roles()")]
        else:
            actions.append("no schema yet: `eslbridge migrate` grants the privileges when it creates the tables")
        for role, names in (logins or {}).items():
            for login in names:
                can_login = conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (login,)).fetchone()
                if can_login is None:
                    raise EslBridgeError(f"no role {login!r}: create the login first (CREATE ROLE \"{login}\" LOGIN)")
                if login in GROUP_ROLES:
                    raise EslBridgeError(f"{login} is a group role, not a login")
                conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(login)))
                actions.append(f"granted {role} to {login}")
        if schema:
            audit(conn, "db.grant", "database", None, {"actions": actions})
    return actions
