"""What every admin command shares: its database connection, one-line database errors, the keyring
path, confirmation of destructive work, and the journal directory check."""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import errors as pgerrors

from eslbridge.config import load_section, resolve_database_url
from eslbridge.errors import ConfigError, EslBridgeError, UsageError
from eslbridge.ops.logs import first_line

# Refusals from a PostgreSQL server that did answer: the settings are wrong, retrying won't help.
_PG_CREDENTIALS = re.compile(
    r"password authentication failed|authentication failed|no pg_hba\.conf entry|"
    r"role \".*\" does not exist|database \".*\" does not exist|password is required|no password supplied|"
    r"invalid (integer )?value .* for connection option|invalid port"
)


def credentials_refused(exc: psycopg.Error) -> bool:
    return bool(_PG_CREDENTIALS.search(first_line(exc)))


def db_error(exc: psycopg.Error) -> EslBridgeError:
    """One line naming what failed and what to do; exit 78 when the settings are wrong."""
    message = first_line(exc)
    if isinstance(exc, psycopg.OperationalError) and credentials_refused(exc):
        return ConfigError(f"the database refused the connection settings: {message} "
                           "(check database.url, its password file or $ESLBRIDGE_DATABASE_URL)")
    if isinstance(exc, psycopg.OperationalError):
        return EslBridgeError(f"cannot reach the database: {message} (is PostgreSQL running, is database.url right?)")
    if isinstance(exc, pgerrors.InsufficientPrivilege):
        return EslBridgeError(f"the database refused: {message} (this login lacks a privilege: a superuser grants "
                              "it with `eslbridge db grant --admin-login LOGIN`, see docs/ROLES.md)")
    if isinstance(exc, pgerrors.UndefinedTable | pgerrors.UndefinedFunction):
        return EslBridgeError(f"database schema missing or old: {message} (run `eslbridge migrate`)")
    return EslBridgeError(f"database error: {message}")


@contextmanager
def admin_connection(args: argparse.Namespace) -> Iterator[psycopg.Connection]:
    """An autocommit connection for an admin command; a clear error when the database is unreachable."""
    try:
        conn = psycopg.connect(resolve_database_url(args.config), autocommit=True, application_name="eslbridge-admin")
    except psycopg.Error as exc:
        raise db_error(exc) from None
    with conn:
        yield conn


def keyring_path(args: argparse.Namespace) -> Path:
    if getattr(args, "keyring", None):
        return Path(args.keyring)
    return load_section("encryption", args.config).keyring_file


def add_keyring_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keyring", metavar="PATH", help="keyring file (default: encryption.keyring_file)")


def add_yes_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--yes", "-y", action="store_true",
                        help="do not ask for confirmation (required when stdin is not a terminal)")


def confirm(args: argparse.Namespace, action: str, removes: list[str]) -> None:
    """Show what ``action`` removes and ask, unless ``--yes``; without a terminal, refuse (exit 2)."""
    print(f"{action} will remove:", file=sys.stderr)
    for line in removes:
        print(f"  {line}", file=sys.stderr)
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{action}: not confirmed (stdin is not a terminal): pass --yes to proceed")
    answer = input("Proceed? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise EslBridgeError("cancelled: nothing was changed")


def journal_dir_problem(path: Path) -> str | None:
    """Why the daemon could not write its journal in ``path`` (None: it can). Creates nothing lasting:
    an existing directory gets a temporary file, a missing one its nearest existing parent a check."""
    if path.is_dir():
        try:
            with tempfile.TemporaryFile(dir=path):
                return None
        except OSError as exc:
            return f"{path} is not writable ({exc.strerror})"
    if path.exists():
        return f"{path} exists and is not a directory"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} does not exist and {parent} does not let this user create it"
    return None
