"""The reverse path: one tenant's writes on the shared tables, captured and applied back to its
own database (shared/notes/online-cutover.md, steps 6–8).

**Capture.** A publication on the shared tables with a row filter on the tenant
(``WHERE (tenant_id = '<t>')``, PostgreSQL 15) and a pgoutput slot on the shared
database. The slot is made before the forward freeze and advanced, under it, to a fence
taken after the tool's own writes (drain, sequences): it then holds exactly the
application's writes to the tenant's rows since the flip.

**Freeze of one tenant on the shared side.** A ``BEFORE`` row trigger on each shared
table (``guard.sql``, installed once, bounded by ``lock_timeout``) refuses the writes of
a tenant listed in ``shared_freezes``; a barrier then waits until every transaction that
held an xid when the freeze committed has ended (it may have written before the freeze).
Nothing blocks the other tenants.

**Apply back.** The same stream and applier as the forward direction, with maps whose
stream columns carry ``tenant_id`` (checked to be the tenant, then dropped) and whose
target is the tenant's own table: upsert and delete by the old keys, idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import psycopg
from psycopg import sql

from migrate.errors import StepFailed
from migrate.replication.changes import TableMap

GUARD = "tm_shared_guard"
_GUARD_SQL = (files("migrate.replication") / "guard.sql").read_text()
_COLUMNS = (files("migrate.replication") / "reverse_columns.sql").read_text()


def ensure_publication(
    conn: psycopg.Connection[Any], name: str, schema: str, tables: Sequence[str], column: str, tenant: str
) -> None:
    """The publication of the tenant's rows of ``tables``: ``WHERE (<column> = '<tenant>')`` on each."""
    listed = sql.SQL(", ").join(
        sql.SQL("{} WHERE ({} = {})").format(
            sql.Identifier(schema, t), sql.Identifier(column), sql.Literal(tenant)
        )
        for t in tables
    )
    with conn.transaction():
        exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
        if exists:
            have = conn.execute(
                # The catalogs, not pg_publication_tables (which locks every table it lists).
                "SELECT n.nspname, c.relname, r.prqual IS NOT NULL FROM pg_publication_rel r"
                " JOIN pg_publication p ON p.oid = r.prpubid JOIN pg_class c ON c.oid = r.prrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.pubname = %s",
                (name,),
            ).fetchall()
            if sorted(have) == sorted((schema, t, True) for t in tables):
                return  # as wanted: no ALTER, which would lock the tables
        verb = "ALTER PUBLICATION {} SET TABLE {}" if exists else "CREATE PUBLICATION {} FOR TABLE {}"
        conn.execute(sql.SQL(verb).format(sql.Identifier(name), listed))


def ensure_slot(conn: psycopg.Connection[Any], name: str, *, wait_seconds: float) -> bool:
    """A pgoutput slot on ``conn``'s database (no snapshot: it starts now); True when made now."""
    if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone():
        return False
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = {int(wait_seconds * 1000)}")
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))
    except psycopg.errors.LockNotAvailable as exc:
        raise StepFailed(
            f"creating the reverse slot {name} on the shared database waited {wait_seconds:g} s for "
            "transactions open before it, and gave up",
            hint="end or wait out the long transactions on the shared database, then run again",
        ) from exc
    return True


def install_guard(
    conn: psycopg.Connection[Any],
    control: str,
    schema: str,
    tables: Sequence[str],
    column: str,
    *,
    wait: float,
) -> list[str]:
    """The guard function and its trigger on each shared table that lacks it; the tables given one."""
    function = sql.Identifier(control, GUARD)
    missing = [
        t
        for t in tables
        if not conn.execute(
            "SELECT 1 FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname = %s",
            (sql.Identifier(schema, t).as_string(conn), GUARD),
        ).fetchone()
    ]
    with conn.transaction():
        conn.execute(
            sql.SQL(_GUARD_SQL).format(
                function=function,
                freezes=sql.Identifier(control, "shared_freezes"),
                column=sql.Identifier(column),
            )
        )
    for table in missing:
        # CREATE TRIGGER takes SHARE ROW EXCLUSIVE for a moment: bounded, once per shared table ever.
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = {int(wait * 1000)}")
            conn.execute(
                sql.SQL(
                    "CREATE OR REPLACE TRIGGER {} BEFORE INSERT OR UPDATE OR DELETE ON {}"
                    " FOR EACH ROW EXECUTE FUNCTION {}()"
                ).format(sql.Identifier(GUARD), sql.Identifier(schema, table), function)
            )
    return missing


def guarded(conn: psycopg.Connection[Any], schema: str, tables: Sequence[str]) -> list[str]:
    """The tables among ``tables`` that carry the guard trigger."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = ANY(%s) AND g.tgname = %s AND g.tgenabled <> 'D'",
        (schema, list(tables), GUARD),
    ).fetchall()
    return [r[0] for r in rows]


@dataclass(frozen=True)
class Barrier:
    seconds: float
    waited_for: int  # transactions that were open at the freeze and ended since


_WRITERS = (
    "SELECT pid, backend_xid::text, usename, round(extract(epoch FROM clock_timestamp() - xact_start))::int"
    " FROM pg_stat_activity WHERE datname = current_database() AND backend_xid IS NOT NULL"
    " AND pid <> pg_backend_pid()"
)


def barrier(conn: psycopg.Connection[Any], *, bound: float) -> Barrier:
    """Wait until every transaction of this database that held an xid when this is called has ended.

    Called after the freeze committed: a transaction that wrote a row of the tenant before the
    freeze holds an xid by now; one that writes after it sees the freeze (the guard's look-up runs
    with a new snapshot per statement in READ COMMITTED) and fails. Transactions of other
    databases (the tenants' own ones) are not waited for. At most ``bound`` seconds.
    """
    started = time.monotonic()
    open_ = {(p, x): (u, a) for p, x, u, a in conn.execute(_WRITERS)}
    waiting = set(open_)
    while waiting:
        waiting &= {(p, x) for p, x, _u, _a in conn.execute(_WRITERS)}
        if not waiting:
            break
        if time.monotonic() - started > bound:
            held = sorted(waiting)[:5]
            raise StepFailed(
                f"transactions open since before the shared-side freeze did not end within {bound:g} s: "
                + "; ".join(f"pid {p} ({open_[(p, x)][0]}, {open_[(p, x)][1]} s in it)" for p, x in held),
                hint="end those transactions (pg_terminate_backend), then run the same rollback again",
            )
        time.sleep(0.005)
    return Barrier(time.monotonic() - started, len(open_))


def reverse_maps(
    target: psycopg.Connection[Any],
    source: psycopg.Connection[Any],
    *,
    target_schema: str,
    source_schema: str,
    tables: Sequence[str],
    column: str,
    tenant: str,
) -> list[TableMap]:
    """The shared tables as maps into the tenant's own tables: ``column`` checked and dropped."""
    query = _COLUMNS
    shared: dict[str, list[tuple[str, int, int, bool]]] = {}
    for rel, att, oid, mod, key in target.execute(query, (target_schema, list(tables))):
        shared.setdefault(rel, []).append((att, oid, mod, bool(key)))
    own: dict[str, list[str]] = {}
    for rel, att, *_ in source.execute(query, (source_schema, list(tables))):
        own.setdefault(rel, []).append(att)
    maps = []
    for order, table in enumerate(tables):
        cols = shared.get(table)
        if not cols or column not in [c for c, *_ in cols]:
            raise StepFailed(f"the shared table {target_schema}.{table} is missing or has no {column} column")
        written = tuple(c for c, *_ in cols if c != column)
        missing = [c for c in written if c not in own.get(table, [])]
        if missing:
            raise StepFailed(
                f"the tenant's own table {source_schema}.{table} lacks column(s) {', '.join(missing)} "
                "that the "
                "shared table has: the changes since the cut-over cannot be applied back",
                hint="add the columns to the tenant's database, or keep the tenant on the shared schema",
            )
        key = tuple(c for c, _o, _m, k in cols if k and c != column)
        if not key:
            raise StepFailed(f"the shared table {target_schema}.{table} has no primary key besides {column}")
        maps.append(
            TableMap(
                source_schema=target_schema,
                source_table=table,
                target_schema=source_schema,
                target_table=table,
                columns=written,
                key=key,
                types=tuple((o, m) for _c, o, m, _k in cols),
                order=order,
                stream_columns=tuple(c for c, *_ in cols),
                dropped=((column, tenant),),
            )
        )
    return maps
