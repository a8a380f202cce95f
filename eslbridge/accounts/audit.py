"""One place that writes ``audit_logs`` rows (DESIGN section 3: every admin command is audited).

``actor`` is the OS user running the command (or a name the daemon passes); ``db_user`` is filled
by the column default ``session_user``. Callers pass ``details`` without secrets: it is stored as is.
The row is appended without RETURNING: that would need SELECT on audit_logs, which the daemon's
role does not have (it may add to the log, not read it).
"""

from __future__ import annotations

import getpass
import os
from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def os_user() -> str:
    """The OS user name; the numeric uid when the account has no name (containers)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def audit(
    conn: psycopg.Connection,
    action: str,
    resource_type: str | None = None,
    resource_id: str | None = None,
    details: dict[str, Any] | None = None,
    user_id: Any = None,
    actor: str | None = None,
) -> None:
    """Insert one audit row in the caller's transaction."""
    conn.execute(
        "INSERT INTO audit_logs (action, resource_type, resource_id, details, user_id, actor)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (
            action,
            resource_type,
            None if resource_id is None else str(resource_id),
            None if details is None else Jsonb(details),
            user_id,
            actor or os_user(),
        ),
    )
