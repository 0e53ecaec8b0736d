"""The freeze: the application's roles lose write access to a database's tables, and a barrier
waits out the writes already under way.

**Privileges, not a flag.** ``REVOKE INSERT, UPDATE, DELETE, TRUNCATE`` from the
roles the playbook names: an application instance that has not yet seen the
flag flip gets a permission error instead of writing into a database nobody
reads any more. A read-only *setting* would be advisory (``BEGIN READ WRITE``
passes it), and the privileges stay revoked after the cut-over at no cost. The
exact grants are recorded before the REVOKE (by the caller, in the control
schema) so ``restore`` gives back exactly those, grant options included.
Afterwards every role is checked: a role that can still write (through
``PUBLIC``, another role or a column grant) makes the freeze fail rather than
pretend.

**The barrier.** A REVOKE does not stop a statement that passed its permission
check, nor a transaction that wrote before it and has not committed. ``LOCK
TABLE … IN SHARE MODE`` conflicts with the ``ROW EXCLUSIVE`` lock every writer
holds until it ends, so taking it (and letting go at once) means no write is
under way. Each attempt waits ``lock_timeout``; past ``bound`` the backends
still holding a conflicting lock are terminated (their uncommitted writes roll
back: the application sees an error, no acknowledged write is lost) and named.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import psycopg
from psycopg import sql

from migrate.errors import StepFailed

WRITES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")


def _sql(name: str) -> str:
    return (files("migrate.replication") / f"{name}.sql").read_text()


# Lock modes that conflict with SHARE: what a writer (or DDL, or VACUUM) holds.
_CONFLICTING = (
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)


@dataclass(frozen=True)
class Grant:
    """A write privilege a freeze took from a role on a table."""

    table: str
    role: str
    privilege: str
    grantable: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "role": self.role,
            "privilege": self.privilege,
            "grantable": self.grantable,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Grant:
        return cls(str(data["table"]), str(data["role"]), str(data["privilege"]), bool(data["grantable"]))


def write_grants(
    conn: psycopg.Connection[Any], schema: str, tables: Sequence[str], roles: Sequence[str]
) -> list[Grant]:
    """The write privileges ``roles`` hold directly on ``tables`` (the owner's implicit ones too)."""
    rows = conn.execute(
        _sql("grants"),
        (schema, list(tables), list(roles), list(WRITES)),
    ).fetchall()
    return [Grant(t, r, p, bool(g)) for t, r, p, g in rows]


def _tables(schema: str, tables: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(schema, t) for t in tables)


def _roles(roles: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(r) for r in roles)


def revoke(conn: psycopg.Connection[Any], schema: str, tables: Sequence[str], roles: Sequence[str]) -> None:
    """Take every write privilege on ``tables`` from ``roles`` (idempotent)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION READ WRITE")
        conn.execute(
            sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON TABLE {} FROM {}").format(
                _tables(schema, tables), _roles(roles)
            )
        )


def restore(conn: psycopg.Connection[Any], schema: str, grants: Sequence[Grant]) -> None:
    """Give back exactly ``grants`` (idempotent: granting a privilege held is a no-op)."""
    if not grants:
        return
    with conn.transaction():
        conn.execute("SET TRANSACTION READ WRITE")
        for g in grants:
            conn.execute(
                sql.SQL("GRANT {} ON TABLE {} TO {}{}").format(
                    sql.SQL(g.privilege if g.privilege in WRITES else "SELECT"),
                    sql.Identifier(schema, g.table),
                    sql.Identifier(g.role),
                    sql.SQL(" WITH GRANT OPTION") if g.grantable else sql.SQL(""),
                )
            )


def still_writable(
    conn: psycopg.Connection[Any], schema: str, tables: Sequence[str], roles: Sequence[str]
) -> list[tuple[str, str]]:
    """(role, table) pairs where a role can still write, by any path: a direct, inherited,
    ``PUBLIC`` or column grant."""
    rows = conn.execute(
        _sql("still_writable"),
        (schema, list(tables), list(roles)),
    ).fetchall()
    return [(r, t) for r, t in rows]


@dataclass
class Barrier:
    """How the barrier went: its time, its attempts and the backends it had to terminate."""

    seconds: float = 0.0
    attempts: int = 0
    terminated: list[str] = field(default_factory=list)


def _holders(conn: psycopg.Connection[Any], schema: str, tables: Sequence[str]) -> list[tuple[int, str]]:
    rows = conn.execute(
        _sql("lock_holders"),
        (list(_CONFLICTING), schema, list(tables)),
    ).fetchall()
    return [(int(pid), str(text)) for pid, text in rows]


def barrier(
    conn: psycopg.Connection[Any],
    schema: str,
    tables: Sequence[str],
    *,
    lock_timeout: float,
    bound: float,
    give_up: float,
) -> Barrier:
    """Wait until no write is under way on ``tables``; terminate what still writes after ``bound`` s.

    Raises StepFailed after ``give_up`` seconds (the caller unfreezes).
    """
    result = Barrier()
    started = time.monotonic()
    lock = sql.SQL("LOCK TABLE {} IN SHARE MODE").format(_tables(schema, tables))
    while True:
        result.attempts += 1
        try:
            with conn.transaction():
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout * 1000)}ms",)
                )
                conn.execute(lock)
        except psycopg.errors.LockNotAvailable:
            elapsed = time.monotonic() - started
            if elapsed >= give_up:
                result.seconds = elapsed
                still = "; ".join(text for _, text in _holders(conn, schema, tables))
                raise StepFailed(
                    f"writes under way on the source did not end within {give_up:.1f} s of the freeze"
                    + (f": {still}" if still else ""),
                    hint="the backends above kept their locks even when terminated; "
                    "look at them on the source",
                ) from None
            if elapsed >= bound:
                for pid, text in _holders(conn, schema, tables):
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    result.terminated.append(text)
                time.sleep(0.02)  # let them go
            continue
        result.seconds = time.monotonic() - started
        return result
