"""The proof that the application can insert a tenant's row with its defaults, rolled back.

As the application role, with the tenant set LOCAL, in a transaction that is always rolled
back, an INSERT that leaves every defaulted column out. The row is one of the tenant's own
(so its foreign keys and checks hold). When it collides on a unique key no default feeds (an
e-mail), that key's columns get fresh values where their type allows (text, date/time,
uuid) and it is tried again; as a last resort a row nothing references is deleted and
written again with its defaults, in one statement; when every row is referenced, the unique
index's refusal comes after the defaults, privileges and policy were all checked, so it
counts as proven (the defaulted key's freedom is the sequence check's). A tenant with no row in the table gets
``INSERT … DEFAULT VALUES``: stopping at a NOT NULL column only the application fills, it
has still proven the defaults (nextval as the role), the privileges and the policy.

Each proof draws one number from each sequence it uses: sequences never roll back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import errors as pgerr
from psycopg import sql

from migrate.catalog import TENANT_COLUMN
from migrate.catalog.citus import is_citus, set_tenant_here
from migrate.catalog.reflect import SourceTable


def default_key(table: SourceTable) -> tuple[str, ...]:
    """The table's key columns that take a default (its primary key's, else a unique key's)."""
    defaulted = {c.name for c in table.columns if c.defaulted}
    for key in (table.primary_key, *table.uniques):
        if key and defaulted & set(key):
            return tuple(c for c in key if c in defaulted)
    return ()


class _Undo(Exception):
    """Always raised at the end of a proof: its transaction is rolled back."""


def _unreferenced(schema: str, table: SourceTable, tables: Sequence[SourceTable]) -> sql.Composable:
    """The condition on row ``r`` of ``table``: no row of ``tables`` points at it."""
    conditions: list[sql.Composable] = [sql.SQL("true")]
    for child in tables:
        for fk in child.foreign_keys:
            if fk.ref_table != table.name or fk.ref_schema is not None:
                continue
            match = sql.SQL(" AND ").join(
                sql.SQL("c.{} = r.{}").format(sql.Identifier(a), sql.Identifier(b))
                for a, b in zip(fk.columns, fk.ref_columns, strict=True)
            )
            conditions.append(
                sql.SQL("NOT EXISTS (SELECT 1 FROM {} AS c WHERE {})").format(
                    sql.Identifier(schema, child.name), match
                )
            )
    return sql.SQL(" AND ").join(conditions)


def insert_with_defaults(
    conn: psycopg.Connection[Any],
    schema: str,
    tenant: str,
    table: SourceTable,
    tables: Sequence[SourceTable],
    role: str,
) -> str | None:
    """None when the insert worked (and was rolled back), else PostgreSQL's message.

    The row is one of the tenant's own with every defaulted column left out. When it collides on
    a unique key no default feeds (an e-mail), that key's columns get fresh values where their
    type allows (text, date/time, uuid) and it is tried again; as a last resort a row nothing
    references is deleted and written again with its defaults, in one statement.
    """
    defaulted = {c.name for c in table.columns if c.defaulted}
    given = [c.name for c in table.columns if not c.defaulted and c.generated is None]
    target = sql.Identifier(schema, table.name)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in given)
    fresh: dict[str, sql.Composable] = {}
    first: str | None = None
    taken = False  # the model row's own value of a key no default feeds is taken, and nothing fresh fits
    on_citus = is_citus(conn)
    for _ in range(4):
        values = sql.SQL(", ").join(fresh.get(c, sql.Identifier(c)) for c in given)
        attempt: Statement = (
            sql.SQL("INSERT INTO {t} ({c}) SELECT {v} FROM {t} LIMIT 1").format(t=target, c=cols, v=values)
            if given
            else sql.SQL("INSERT INTO {t} DEFAULT VALUES").format(t=target)
        )
        if given and on_citus:
            attempt = _citus_insert(target, given, dict(fresh))
        try:
            _try(conn, tenant, role, attempt, target, frozenset(defaulted))
        except _Undo:
            return None
        except pgerr.UniqueViolation as exc:
            first = first or _message(exc)
            constraint = exc.diag.constraint_name
            if on_citus:  # a worker's error: its message names the shard's copy (the shard id appended)
                named = re.search(r'unique constraint "(.+)"', exc.diag.message_primary or "")
                constraint = re.sub(r"_\d+$", "", constraint or (named.group(1) if named else ""))
            unique = _unique_columns(conn, schema, constraint)
            if defaulted & set(unique):
                return first  # the default itself collides: a sequence is behind
            more = {
                c: f for c, kind in unique.items() if c not in fresh and (f := _fresh(c, kind)) is not None
            }
            if not more:
                taken = True
                break
            fresh.update(more)
        except psycopg.Error as exc:
            return first or _message(exc)
    if not given:
        return first
    again = sql.SQL(
        "WITH gone AS (DELETE FROM {t} WHERE ctid = (SELECT r.ctid FROM {t} AS r WHERE {free} LIMIT 1)"
        " RETURNING {c}) INSERT INTO {t} ({c}) SELECT {c} FROM gone"
    ).format(t=target, c=cols, free=_unreferenced(schema, table, tables))
    try:
        _try(conn, tenant, role, again, None)
    except _Undo:
        return None
    except psycopg.Error:
        pass
    if taken:
        # The executor had evaluated every default (nextval as the role) and checked the INSERT
        # privilege, NOT NULL, CHECK and the policy's WITH CHECK before a unique index refused the
        # model row's own value of a key no default feeds (pagila's store.manager_staff_id: an
        # integer that references staff, so no fresh value fits). Whether the defaulted key is
        # free is the sequence check's to say (readiness.py), not this row's.
        return None
    return first


Statement = sql.Composed | Callable[[psycopg.Connection[Any]], sql.Composed]


def _citus_insert(
    target: sql.Identifier, given: Sequence[str], fresh: dict[str, sql.Composable]
) -> Statement:
    """On Citus an ``INSERT … SELECT … LIMIT 1`` goes through its COPY path, which refuses every table
    with row-level security: the model row is read first (as the role, the tenant set) and written
    back as ``INSERT … VALUES``, which Citus routes to the tenant's shard."""

    def build(conn: psycopg.Connection[Any]) -> sql.Composed:
        row = conn.execute(sql.SQL("SELECT to_jsonb(r)::text FROM {} AS r LIMIT 1").format(target)).fetchone()
        if row is None:
            return sql.SQL("SELECT 1 WHERE {}").format(sql.SQL("false"))  # no row: the caller's fallback
        values = sql.SQL(", ").join(
            fresh.get(
                c,
                sql.SQL("(jsonb_populate_record(NULL::{}, {}::jsonb)).{}").format(
                    target, sql.Literal(row[0]), sql.Identifier(c)
                ),
            )
            for c in given
        )
        names = sql.SQL(", ").join(sql.Identifier(c) for c in given)
        return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(target, names, values)

    return build


def _try(
    conn: psycopg.Connection[Any],
    tenant: str,
    role: str,
    statement: Statement,
    empty_fallback: sql.Composable | None,
    defaulted: frozenset[str] = frozenset(),
) -> None:
    """Run ``statement`` as ``role`` for ``tenant`` in a transaction that is always rolled back
    (raises _Undo when it worked). When it wrote nothing — the tenant has no row to model one on —
    ``INSERT … DEFAULT VALUES`` into ``empty_fallback`` instead, which proves the defaults even
    when it then stops at a NOT NULL column none of ``defaulted`` is."""
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        set_tenant_here(conn, tenant)  # on Citus: SET LOCAL, propagated to the workers
        if callable(statement):
            statement = statement(conn)
        if conn.execute(statement).rowcount == 0:
            if empty_fallback is None:
                raise psycopg.DataError("no row to write again")
            try:
                conn.execute(sql.SQL("INSERT INTO {} DEFAULT VALUES").format(empty_fallback))
            except pgerr.NotNullViolation as exc:
                if exc.diag.column_name in defaulted:
                    raise
                # The executor had evaluated every default (nextval as the role), checked the
                # privileges and the policy's WITH CHECK before it found a column only the
                # application can fill; and the tenant holds no row a default could collide with.
        raise _Undo


_UNIQUE_COLUMNS = """
SELECT a.attname, t.typcategory, a.atttypmod, t.typname
FROM pg_class ic
JOIN pg_index i ON i.indexrelid = ic.oid
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
JOIN pg_type t ON t.oid = a.atttypid
WHERE ic.relname = %s AND ic.relnamespace = to_regnamespace(%s)
"""


def _unique_columns(conn: psycopg.Connection[Any], schema: str, index: str | None) -> dict[str, str]:
    """The columns of the unique index (or constraint's index) ``index``, but the tenant column:
    name -> a kind _fresh understands ('text:N', 'datetime', 'uuid', or the type's category)."""
    if index is None:
        return {}
    out: dict[str, str] = {}
    quoted = sql.Identifier(schema).as_string(None)
    for name, category, typmod, typname in conn.execute(_UNIQUE_COLUMNS, (index, quoted)):
        if name == TENANT_COLUMN:
            continue
        if category == "S":
            out[name] = f"text:{typmod - 4 if typmod > 4 else 64}"
        elif category == "D":
            out[name] = "datetime"
        else:
            out[name] = "uuid" if typname == "uuid" else str(category)
    return out


def _fresh(column: str, kind: str) -> sql.Composable | None:
    """A value of the column's type that no row holds yet (in all likelihood), or None."""
    if kind.startswith("text:"):
        return sql.SQL("left(md5(random()::text) || md5(random()::text), {})").format(
            sql.Literal(min(64, int(kind[5:])))
        )
    if kind == "datetime":
        return sql.SQL("{} + make_interval(secs => 1 + random())").format(sql.Identifier(column))
    if kind == "uuid":
        return sql.SQL("gen_random_uuid()")
    return None


def _message(exc: psycopg.Error) -> str:
    text = (exc.diag.message_primary or str(exc)).strip()
    detail = exc.diag.message_detail
    return f"{text} ({detail})" if detail else text
