"""Shared fixtures: a real PostgreSQL for every test that needs one.

Without ESLBRIDGE_TEST_DSN the session starts its own throwaway cluster
(eslbridge/sim/localpg.py). With it, tests create their databases on that server
(the role needs CREATEDB). Each test gets a fresh database cloned from a
migrated template, which is much faster than migrating every time.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from eslbridge.sim.localpg import PgCluster
from eslbridge.store.migrate import migrate

# Fixtures other test modules share (e.g. the writer tests' `keyring`).
pytest_plugins = ["tests.writer_fixtures", "tests.daemon_fixtures", "tests.roles_fixtures", "tests.cli_fixtures"]

TEMPLATE_DB = "eslbridge_template"
_counter = itertools.count()


class PgServer:
    """Where test databases are made: a DSN to the maintenance db and a factory."""

    def __init__(self, admin_dsn: str, cluster: PgCluster | None) -> None:
        self.admin_dsn = admin_dsn
        self.cluster = cluster  # None when ESLBRIDGE_TEST_DSN points at an outside server

    def dsn(self, dbname: str) -> str:
        return make_conninfo(self.admin_dsn, dbname=dbname)

    def create_database(self, template: str | None = None) -> str:
        name = f"eslbridge_test_{os.getpid()}_{next(_counter)}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            if template:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            else:
                conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    outside = os.environ.get("ESLBRIDGE_TEST_DSN")
    if outside:
        server = PgServer(outside, None)
        yield server
        return
    cluster = PgCluster()
    cluster.start()
    try:
        yield PgServer(cluster.dsn("postgres"), cluster)
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def migrated_template(pg_server: PgServer) -> Iterator[str]:
    name = f"{TEMPLATE_DB}_{os.getpid()}"
    pg_server.drop_database(name)
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate(pg_server.dsn(name))
    yield name
    pg_server.drop_database(name)


@pytest.fixture
def empty_db_dsn(pg_server: PgServer) -> Iterator[str]:
    """A fresh database with no schema at all."""
    name = pg_server.create_database()
    yield pg_server.dsn(name)
    pg_server.drop_database(name)


@pytest.fixture
def db_dsn(pg_server: PgServer, migrated_template: str) -> Iterator[str]:
    """A fresh, fully migrated database of its own for this test."""
    name = pg_server.create_database(template=migrated_template)
    yield pg_server.dsn(name)
    pg_server.drop_database(name)


@pytest.fixture
def db(db_dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection (as the superuser) to this test's migrated database."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        yield conn
