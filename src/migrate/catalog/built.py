"""What a run reads and builds once per distinct source schema, not once per tenant.

**The source catalog.** Reading a source's whole schema (``reflect_schema``: some fifteen
catalog queries) costs ~50 ms per tenant. ``SharedSchemas.source`` reads a fingerprint of it
first (reflect_fingerprint.sql: one query over the same catalogs, every rendered definition,
flag and comment, no OID) and hands back the schema read for an earlier tenant with the same
fingerprint; only a new fingerprint reads the catalog, and what it read is kept only when the
fingerprint is the same after the read as before (no DDL slipped in between).

**The shared schema.** ``ddl.build`` is pure: the same source schema and options give the
same statements. ``SharedSchemas.build`` keeps what it built, found again only by a source
schema and options *equal* to those it was built from (the whole reflected content compared,
field by field: no collision can hand back another schema's statements).
"""

from __future__ import annotations

import threading
from importlib.resources import files
from typing import Any

import psycopg
from psycopg import sql

from migrate.catalog import ddl
from migrate.catalog.reflect import SourceSchema, catalog_rendering, reflect_schema

KEPT = 8  # distinct source schemas remembered (a run's sources usually share one)
_FINGERPRINT = (files("migrate.catalog") / "reflect_fingerprint.sql").read_text()


def fingerprint(conn: psycopg.Connection[Any], schema: str) -> str:
    """The fingerprint of ``schema`` on this source: equal fingerprints, equal ``reflect_schema``.

    Prepared, with the schema's name as a literal: a statement without parameters is planned
    once per connection, so reading it again on a connection that read it before (the run's
    read-ahead, engine/ahead.py, then the tenant's session) skips the parsing and planning of
    this large query, about half its cost on a warm backend."""
    query = sql.SQL(_FINGERPRINT.replace("%(schema)s", "{schema}")).format(schema=sql.Literal(schema))
    with catalog_rendering(conn):
        row = conn.execute(query, prepare=True).fetchone()
    assert row is not None
    return f"{schema}:{row[0]}"


class SharedSchemas:
    """The source schemas read and the shared schemas built in one run, by content; thread-safe."""

    def __init__(self) -> None:
        self._built: list[tuple[SourceSchema, ddl.Options, ddl.SharedSchema]] = []
        self._read: dict[str, SourceSchema] = {}
        self._mutex = threading.Lock()
        self.hits = 0
        self.reads = 0  # whole catalog reads (misses of ``source``)

    def source(self, conn: psycopg.Connection[Any], schema: str) -> SourceSchema:
        """``reflect_schema(conn, schema)``, read once per distinct fingerprint in the run."""
        before = fingerprint(conn, schema)
        with self._mutex:
            seen = self._read.get(before)
        if seen is not None:
            return seen
        read = reflect_schema(conn, schema)
        with self._mutex:
            self.reads += 1
        if fingerprint(conn, schema) == before:  # no DDL between the two: the read is the fingerprint's
            with self._mutex:
                if len(self._read) >= KEPT:
                    self._read.pop(next(iter(self._read)))
                self._read[before] = read
        return read

    def build(self, source: SourceSchema, options: ddl.Options) -> ddl.SharedSchema:
        with self._mutex:
            for seen, opts, shared in self._built:
                if opts == options and seen == source:
                    self.hits += 1
                    return shared
        shared = ddl.build(source, options)
        with self._mutex:
            self._built = [*self._built, (source, options, shared)][-KEPT:]
        return shared
