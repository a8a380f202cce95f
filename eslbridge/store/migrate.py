"""Schema migrations (DESIGN section 7); the commands are in eslbridge/commands/migrate.py.

Files `sql/migrations/NNNN_name.sql` apply in order, each in its own
transaction, recorded with a SHA-256 checksum in schema_migrations. An applied
file that has changed since is refused: the database no longer matches the
code and a human must decide. A session-level advisory lock makes concurrent
migrators queue instead of racing.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from eslbridge.errors import EslBridgeError
from eslbridge.ops.progress import Progress

# pg_advisory_lock key: any fixed 64-bit number no other tool uses ("eslbridg" in ASCII).
ADVISORY_LOCK_KEY = 0x65736C6272696467
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    varchar(16) PRIMARY KEY,
    name       text NOT NULL,
    checksum   char(64) NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text NOT NULL DEFAULT session_user
)
"""


class MigrationError(EslBridgeError):
    """A migration cannot be applied, or the applied history does not match the files."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Status:
    applied: list[str]
    pending: list[str]
    changed: list[str]  # applied, but the file's checksum differs now
    missing: list[str]  # applied, but no file any more


def migrations_dir() -> Path:
    """sql/migrations of the source tree, else the copy `pip install .` put under share/."""
    candidates = (
        Path(__file__).resolve().parents[2] / "sql" / "migrations",
        Path(sys.prefix) / "share" / "eslbridge" / "migrations",
    )
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise MigrationError(f"no migrations directory found (looked in {', '.join(map(str, candidates))})")


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files are named NNNN_name.sql")
        found.append(Migration(match.group(1), path.name, path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{directory}: two migration files share a version number")
    return found


def _applied(conn: psycopg.Connection) -> dict[str, tuple[str, str]]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        return {}
    rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
    return {version: (name, checksum) for version, name, checksum in rows}


def status(conn: psycopg.Connection, migrations: list[Migration] | None = None) -> Status:
    migrations = migrations if migrations is not None else load_migrations()
    applied = _applied(conn)
    by_version = {m.version: m for m in migrations}
    return Status(
        applied=[name for _, (name, _) in sorted(applied.items())],
        pending=[m.name for m in migrations if m.version not in applied],
        changed=[m.name for m in migrations if m.version in applied and applied[m.version][1] != m.checksum],
        missing=[name for version, (name, _) in sorted(applied.items()) if version not in by_version],
    )


def _warnings_to(on_warning: Callable[[str], None]) -> Callable[[psycopg.errors.Diagnostic], None]:
    seen: set[str] = set()  # the same warning from a migration and the re-grant after it: once

    def handle(diag: psycopg.errors.Diagnostic) -> None:
        if diag.severity_nonlocalized == "WARNING" and diag.message_primary and diag.message_primary not in seen:
            seen.add(diag.message_primary)
            on_warning(diag.message_primary)

    return handle


def _regrant(conn: psycopg.Connection) -> None:
    """Re-apply the roles' privileges after new migrations (docs/ROLES.md): columns and functions a
    later migration adds are then covered without that migration repeating the grants."""
    if conn.execute("SELECT to_regprocedure('eslbridge_grant_roles()') IS NOT NULL").fetchone()[0]:
        try:
            with conn.transaction():
                conn.execute("SELECT eslbridge_grant_roles()")
        except psycopg.Error as exc:
            raise MigrationError(f"migrations applied, but granting the roles their privileges failed: {exc} "
                                 "(run `eslbridge db grant` as a superuser)") from exc


def migrate(conninfo: str, migrations: list[Migration] | None = None, *,
            on_warning: Callable[[str], None] | None = None, progress: bool = False) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date).

    ``on_warning`` gets each WARNING a migration raises (e.g. roles it could not create), so the
    operator sees it instead of psycopg dropping it; ``progress`` shows done/total on stderr.
    """
    migrations = migrations if migrations is not None else load_migrations()
    done: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if on_warning is not None:
            conn.add_notice_handler(_warnings_to(on_warning))
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        try:
            conn.execute(_CREATE_TABLE)
            current = status(conn, migrations)
            if current.changed:
                raise MigrationError(
                    "applied migration files have changed since they ran: "
                    + ", ".join(current.changed)
                    + " (restore the original files; schema changes go into a new NNNN_name.sql)"
                )
            bar = Progress("migrating", len(current.pending)) if progress and current.pending else None
            for migration in migrations:
                if migration.name not in current.pending:
                    continue
                try:
                    with conn.transaction():
                        conn.execute(migration.sql.encode())  # bytes: no client-side placeholders
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                            (migration.version, migration.name, migration.checksum),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"{migration.name} failed and was rolled back: {exc}") from exc
                done.append(migration.name)
                if bar:
                    bar.advance(note=migration.name)
            if bar:
                bar.finish()
            if done:
                _regrant(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    return done
