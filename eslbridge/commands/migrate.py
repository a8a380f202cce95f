"""`eslbridge migrate` and `eslbridge db status` (the schema's own logic: eslbridge/store/migrate.py)."""

from __future__ import annotations

import argparse
import sys

import psycopg

from eslbridge.commands.common import admin_connection, db_error
from eslbridge.commands.db_grant import add_grant_parser
from eslbridge.config import resolve_database_url
from eslbridge.store.migrate import migrate, status


def _cmd_migrate(args: argparse.Namespace) -> int:
    try:
        applied = migrate(resolve_database_url(args.config), progress=True,
                          on_warning=lambda text: print(f"warning: {text}", file=sys.stderr, flush=True))
    except psycopg.Error as exc:
        raise db_error(exc) from None
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print("schema is up to date")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    with admin_connection(args) as conn:
        current = status(conn)
    for name in current.applied:
        flag = "CHANGED" if name in current.changed else ("MISSING FILE" if name in current.missing else "applied")
        print(f"{flag:12} {name}")
    for name in current.pending:
        print(f"{'pending':12} {name}")
    return 1 if current.changed or current.missing else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("migrate", help="apply pending sql/migrations in order (idempotent)",
                       description="Apply the pending sql/migrations files in order, each in its own transaction, "
                       "recorded with a checksum in schema_migrations. Run it as the database's owner. Warnings "
                       "(e.g. roles the user may not create) are printed; `eslbridge db grant` repairs those.")
    p.set_defaults(func=_cmd_migrate)
    db = sub.add_parser("db", help="database status and roles",
                        description="Inspect the schema's migrations; create or repair the PostgreSQL roles.")
    db_sub = db.add_subparsers(dest="db_command", metavar="SUBCOMMAND", required=True)
    st = db_sub.add_parser("status", help="applied, pending and changed migrations",
                           description="List applied, pending, changed and missing migrations; exit 1 when an "
                           "applied file changed or is missing.")
    st.set_defaults(func=_cmd_status)
    add_grant_parser(db_sub)
