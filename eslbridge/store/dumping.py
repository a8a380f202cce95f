"""Array parameters dumped ahead of their statement (the writer's prefetcher), sent as they are.

psycopg dumps a parameter when its statement is executed; the writer dumps a batch's columns
earlier, while PostgreSQL still writes the batch before, and wraps each as a ``Dumped`` that the
connection sends unchanged (``register``). The bytes are psycopg's own, made without a connection:
text in UTF-8, so ``register`` makes the connection talk UTF-8 (the server converts).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import pq
from psycopg.abc import Buffer, DumperKey
from psycopg.adapt import Dumper, PyFormat, Transformer


class Dumped:
    """A parameter already dumped, with the type and format its dumper chose (an array of NULLs
    only goes as text)."""

    __slots__ = ("data", "format", "oid")

    def __init__(self, data: Buffer, oid: int, format: pq.Format) -> None:
        self.data, self.oid, self.format = data, oid, format


class _DumpedDumper(Dumper):
    """Sends a ``Dumped`` as it is, under its own type and format."""

    format = pq.Format.BINARY

    def get_key(self, obj: Dumped, format: PyFormat) -> DumperKey:
        return (Dumped, obj.oid, obj.format)

    def upgrade(self, obj: Dumped, format: PyFormat) -> Dumper:
        dumper = _DumpedDumper(Dumped)
        dumper.oid, dumper.format = obj.oid, obj.format
        return dumper

    def dump(self, obj: Dumped) -> Buffer:
        return obj.data


def register(conn: psycopg.Connection) -> None:
    """Let ``conn`` send ``Dumped`` parameters; call outside a transaction."""
    if conn.info.encoding != "utf-8":
        conn.execute("SET client_encoding TO 'UTF8'")  # the server converts to the database's
    conn.adapters.register_dumper(Dumped, _DumpedDumper)


# The default adapters, as a connection's start: a column dumps the same there as here.
_PSYCOPG = Transformer()


def dump_column(column: list[Any]) -> Dumped:
    """One column of a batch as an array parameter, as psycopg dumps it (binary)."""
    dumper = _PSYCOPG.get_dumper(column, PyFormat.BINARY)
    return Dumped(dumper.dump(column), dumper.oid, dumper.format)
