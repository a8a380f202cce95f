"""The daemon's connection pool (psycopg_pool) from ``DatabaseConfig`` (DESIGN section 4).

The defaults in the config are YakYak's pool settings. Connections are autocommit: every
writer batch and upkeep job opens its own explicit transaction, so an idle pooled
connection never sits "idle in transaction".
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from psycopg_pool import ConnectionPool

from eslbridge.config import DatabaseConfig

APPLICATION_NAME = "eslbridge"


def connect_kwargs(db: DatabaseConfig) -> dict:
    """What every eslbridge connection sets besides the URL."""
    # libpq takes connect_timeout as whole seconds; 0 would mean "wait forever".
    return {"autocommit": True, "connect_timeout": max(1, round(db.connect_timeout)),
            "application_name": APPLICATION_NAME}


def own_connection(source: ConnectionPool | str, connect_timeout: float) -> psycopg.Connection:
    """An autocommit connection outside the pool, with the pool's settings when ``source`` is one
    (for work that holds its connection: the writer's durability barrier, directory lookups)."""
    settings = {"connect_timeout": max(1, round(connect_timeout)), "client_encoding": "utf8"}
    if isinstance(source, ConnectionPool):
        return psycopg.connect(source.conninfo, **{**settings, **source.kwargs, "autocommit": True})
    return psycopg.connect(source, **settings, autocommit=True)


def make_pool(db: DatabaseConfig, *, name: str = "eslbridge",
              configure: Callable[[psycopg.Connection], None] | None = None, open_now: bool = False) -> ConnectionPool:
    """A pool per ``db``; ``open_now`` waits until ``min_connections`` are up (else opens lazily,
    so a daemon starts, and journals, while PostgreSQL is still down)."""
    pool = ConnectionPool(
        db.url.reveal(),
        min_size=db.min_connections,
        max_size=db.max_connections,
        timeout=db.connect_timeout,
        max_idle=db.idle_timeout,
        max_lifetime=db.max_lifetime,
        kwargs=connect_kwargs(db),
        configure=configure,
        name=name,
        open=False,
    )
    pool.open(wait=open_now, timeout=db.connect_timeout)
    return pool
