"""Login roles granted exactly one eslbridge group role each, for least-privilege tests.

The group roles exist once the template database is migrated (as the cluster's superuser);
these logins are cluster-wide, made once per session, and reach any test database.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from eslbridge.accounts.dbroles import ADMIN, AUDITOR, DAEMON


@dataclass(frozen=True)
class Logins:
    daemon: str = "eslbridge_t_daemon"
    admin: str = "eslbridge_t_admin"
    auditor: str = "eslbridge_t_auditor"


def dsn_as(dsn: str, login: str) -> str:
    """The same database, connected as ``login`` (the test cluster trusts loopback)."""
    return make_conninfo(dsn, user=login)


@pytest.fixture(scope="session")
def logins(pg_server, migrated_template) -> Logins:
    names = Logins()
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        for login, group in ((names.daemon, DAEMON), (names.admin, ADMIN), (names.auditor, AUDITOR)):
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (login,)).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(login)))
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(login)))
    return names
