"""The region a target database holds, as recorded in its control schema (revision 0005).

A person records it once with ``migrate residency set`` (ledgered); every write path
reads it before the first row moves (``migrate.engine.residency``). The table is
append-only: the newest row is what the database holds now. Each row also names the
database it was recorded on — its name and the server's system identifier — so a copy
of the control schema in another database (a restore, ``CREATE DATABASE … TEMPLATE``)
is told apart from the database that was vouched for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from migrate.control import locks


@dataclass(frozen=True)
class DatabaseIdentity:
    """Which database a connection reached: its name and its server's system identifier."""

    database: str
    system_identifier: str | None  # pg_control_system(); None where it cannot be read

    def same_as(self, other: DatabaseIdentity) -> bool:
        """The same database: the names match, and the servers' identifiers where both are known."""
        if self.database != other.database:
            return False
        known = self.system_identifier is not None and other.system_identifier is not None
        return not known or self.system_identifier == other.system_identifier

    def describe(self) -> str:
        server = f" on server {self.system_identifier}" if self.system_identifier else ""
        return f"database '{self.database}'{server}"


@dataclass(frozen=True)
class Residency:
    """One recording of a target's region: the newest is what the database holds."""

    seq: int
    region: str
    recorded_on: DatabaseIdentity
    actor: str
    host: str
    playbook: str
    at: datetime


_IDENTITY = (
    "SELECT current_database(), (SELECT system_identifier::text FROM pg_control_system()),"
    " to_regclass(%s) IS NOT NULL"
)


class ResidencyStore:
    """The ``residency`` table of one control schema."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.table = sql.Identifier(schema, "residency")

    def read(self, conn: psycopg.Connection[Any]) -> tuple[DatabaseIdentity, Residency | None]:
        """The database the connection reached, and its newest recording (None: none, or no table)."""
        row = conn.execute(_IDENTITY, (self.table.as_string(conn),)).fetchone()
        assert row is not None
        here = DatabaseIdentity(row[0], row[1])
        if not row[2]:
            return here, None
        found = conn.execute(
            sql.SQL(
                "SELECT seq, region, database, system_identifier, actor, host, playbook, recorded_at"
                " FROM {} ORDER BY seq DESC LIMIT 1"
            ).format(self.table)
        ).fetchone()
        if found is None:
            return here, None
        return here, Residency(
            found[0], found[1], DatabaseIdentity(found[2], found[3]), found[4], found[5], found[6], found[7]
        )

    def lock(self, conn: psycopg.Connection[Any]) -> None:
        """Recordings of one control schema in turn, until the caller's transaction ends."""
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{locks.RESIDENCY}:{self.schema}",))

    def record(
        self,
        conn: psycopg.Connection[Any],
        region: str,
        here: DatabaseIdentity,
        *,
        actor: str,
        host: str,
        playbook: str,
    ) -> Residency:
        """Append a recording (in the caller's transaction, with its ledger entry)."""
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {} (region, database, system_identifier, actor, host, playbook)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING seq, recorded_at"
            ).format(self.table),
            (region, here.database, here.system_identifier, actor, host, playbook),
        ).fetchone()
        assert row is not None
        return Residency(row[0], region, here, actor, host, playbook, row[1])
