"""What every admin command shares: its database connection and the keyring path."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from eslbridge.config import load_section, resolve_database_url
from eslbridge.errors import EslBridgeError


def unreachable(exc: psycopg.Error) -> EslBridgeError:
    # psycopg's message names host and port, never the password.
    return EslBridgeError(f"cannot reach the database: {str(exc).strip()}")


@contextmanager
def admin_connection(args: argparse.Namespace) -> Iterator[psycopg.Connection]:
    """An autocommit connection for an admin command; a clear error when the database is unreachable."""
    try:
        conn = psycopg.connect(resolve_database_url(args.config), autocommit=True, application_name="eslbridge-admin")
    except psycopg.OperationalError as exc:
        raise unreachable(exc) from None
    with conn:
        yield conn


def keyring_path(args: argparse.Namespace) -> Path:
    if getattr(args, "keyring", None):
        return Path(args.keyring)
    return load_section("encryption", args.config).keyring_file


def add_keyring_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keyring", metavar="PATH", help="keyring file (default: encryption.keyring_file)")
