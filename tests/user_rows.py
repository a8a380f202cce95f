"""What the users table holds, read directly: tests check the commands against the rows themselves."""

from __future__ import annotations

import uuid

import psycopg


def user_id(conn: psycopg.Connection, username: str, realm: str) -> uuid.UUID | None:
    row = conn.execute(
        "SELECT id FROM users WHERE username = %s AND realm = %s", (username, realm.lower())
    ).fetchone()
    return row[0] if row else None
