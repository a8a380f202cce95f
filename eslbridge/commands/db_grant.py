"""``eslbridge db grant``: create or repair the PostgreSQL roles and their privileges (DESIGN section 7)."""

from __future__ import annotations

import argparse

from psycopg import errors as pgerrors

from eslbridge.accounts.dbroles import ADMIN, AUDITOR, DAEMON, grant_roles
from eslbridge.commands.common import admin_connection
from eslbridge.errors import EslBridgeError
from eslbridge.ops.logs import first_line


def _cmd_grant(args: argparse.Namespace) -> int:
    logins = {DAEMON: args.daemon_login or [], ADMIN: args.admin_login or [], AUDITOR: args.auditor_login or []}
    with admin_connection(args) as conn:
        try:
            actions = grant_roles(conn, logins)
        except pgerrors.InsufficientPrivilege as exc:
            raise EslBridgeError(f"the database refused: {first_line(exc)} (run `eslbridge db grant` as a superuser "
                                 "or a user with CREATEROLE that owns the tables)") from None
    for line in actions:
        print(line)
    return 0


def add_grant_parser(db_sub: argparse._SubParsersAction) -> None:
    p = db_sub.add_parser(
        "grant", help="create or repair the eslbridge_daemon/admin/auditor roles and their privileges",
        description="Create the NOLOGIN group roles eslbridge_daemon, eslbridge_admin and eslbridge_auditor "
        "if missing, grant each exactly the privileges its job needs (revoking any others), and grant them to "
        "login roles. Re-runnable. Run it as a superuser or a user with CREATEROLE, e.g. "
        "`sudo -u postgres env ESLBRIDGE_DATABASE_URL=postgresql:///eslbridge eslbridge db grant "
        "--daemon-login eslbridge`.")
    for option, role in (("--daemon-login", DAEMON), ("--admin-login", ADMIN), ("--auditor-login", AUDITOR)):
        p.add_argument(option, action="append", metavar="LOGIN",
                       help=f"an existing login role to grant {role} to (repeatable)")
    p.set_defaults(func=_cmd_grant)
