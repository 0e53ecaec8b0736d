"""Write-readiness: can the application write a tenant's rows in the shared schema right now?

A tenant is *write-ready* when the application's first INSERT after the flip will work:

- **sequences**: every sequence a shared column draws from (identity, serial, or a default's
  ``nextval()`` of a sequence no column owns) will hand out a number above every value the
  tenant holds in that column — else the first insert hits ``duplicate key``;
- **defaults**: every source column an insert may leave out (identity, serial, a default) may
  be left out on the target too — else ``null value in column …``;
- **privileges** of the application role (``target.app_role``): USAGE on the schema,
  SELECT, INSERT, UPDATE and DELETE on every tenant table, USAGE on every sequence a default
  calls — and never TRUNCATE, which ignores row-level security;
- **the proof**: as the application role, with the tenant set LOCAL, in a transaction that is
  always rolled back, an INSERT that leaves every defaulted column out succeeds in every tenant
  table whose key has a default (``insert_proof.py``).

``check()`` reads only (the proof is rolled back): the flag and cut-over steps refuse to flip
unless it finds nothing missing, and ``migrate readiness`` shows it any time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Literal

import psycopg
from psycopg import sql

from migrate.catalog import TENANT_COLUMN
from migrate.catalog.reflect import SourceTable
from migrate.checks.insert_proof import default_key, insert_with_defaults

MissingKind = Literal["table", "sequence", "default", "privilege", "role", "insert"]


@dataclass(frozen=True)
class Missing:
    """One thing that keeps the application from writing, and what to do about it."""

    kind: MissingKind
    subject: str  # app.orders.id, app.order_no, role app_user, …
    detail: str
    fix: str

    def text(self) -> str:
        return f"{self.kind} {self.subject}: {self.detail}"


@dataclass(frozen=True)
class SequenceUse:
    """A shared column that draws its numbers from a sequence."""

    table: str
    column: str
    schema: str  # the sequence's
    sequence: str
    integer: bool
    owned: bool  # identity or serial: the column owns it (needs no privilege to draw from)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.sequence}"


@dataclass(frozen=True)
class Readiness:
    """What ``check`` found for one tenant: empty ``missing`` means write-ready."""

    tenant: str
    schema: str
    app_role: str | None
    missing: tuple[Missing, ...] = ()
    proved: tuple[str, ...] = ()  # tables an insert with defaults succeeded in (rolled back)
    sequences: dict[str, int] = field(default_factory=dict)  # sequence -> the next value it hands out

    @property
    def ok(self) -> bool:
        return not self.missing

    def summary(self, limit: int = 6) -> str:
        shown = "; ".join(m.text() for m in self.missing[:limit])
        more = len(self.missing) - limit
        return shown + (f"; and {more} more" if more > 0 else "")


def _sql(name: str) -> str:
    return (files("migrate.checks") / name).read_text()


def sequence_uses(conn: psycopg.Connection[Any], schema: str, tables: Sequence[str]) -> list[SequenceUse]:
    """Every column of ``tables`` that draws from a sequence, with the sequence."""
    rows = conn.execute(_sql("sequences_in_use.sql"), {"schema": schema, "tables": list(tables)})
    return [SequenceUse(t, c, s, q, bool(i), bool(o)) for t, c, s, q, i, o in rows]


def tenant_highest(conn: psycopg.Connection[Any], schema: str, use: SequenceUse, tenant: str) -> int | None:
    """The tenant's largest value in an integer sequence column of the shared table (the key's index)."""
    if not use.integer:
        return None
    row = conn.execute(
        sql.SQL("SELECT max({})::bigint FROM {} WHERE {} = %s").format(
            sql.Identifier(use.column), sql.Identifier(schema, use.table), sql.Identifier(TENANT_COLUMN)
        ),
        (tenant,),
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def next_value(conn: psycopg.Connection[Any], schema: str, sequence: str) -> tuple[int, int]:
    """(the value nextval() hands out next, the increment), without drawing one."""
    row = conn.execute(
        sql.SQL(
            "SELECT s.last_value, s.is_called, q.seqincrement FROM {} AS s, pg_sequence AS q"
            " WHERE q.seqrelid = %s::regclass"
        ).format(sql.Identifier(schema, sequence)),
        (f"{sql.Identifier(schema).as_string(None)}.{sql.Identifier(sequence).as_string(None)}",),
    ).fetchone()
    assert row is not None
    last, called, increment = int(row[0]), bool(row[1]), int(row[2])
    return (last + increment if called else last), increment


def check(
    conn: psycopg.Connection[Any],
    *,
    schema: str,
    tenant: str,
    tables: Sequence[SourceTable],
    app_role: str | None,
    prove: bool = True,
) -> Readiness:
    """Whether the application (``app_role``) can write tenant ``tenant``'s rows in ``schema`` now.

    ``conn`` is an autocommit target connection (or one inside a rehearsal's transaction) whose
    role may ``SET ROLE app_role``; ``tables`` are the tenant's source tables. Reads only: the
    insert proof runs in a transaction (a savepoint) that is always rolled back.
    """
    missing: list[Missing] = []
    present = {
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = to_regnamespace(%s)"
            " AND c.relkind IN ('r', 'p') AND c.relname = ANY(%s)",
            (sql.Identifier(schema).as_string(None), [t.name for t in tables]),
        )
    }
    for table in tables:
        if table.name not in present:
            missing.append(
                Missing(
                    "table",
                    f"{schema}.{table.name}",
                    "the shared table does not exist",
                    "create the shared tables first: the playbook's schema step ('migrate run'), or "
                    "apply the revision 'migrate schema generate' wrote",
                )
            )
    tables = [t for t in tables if t.name in present]
    names = [t.name for t in tables]
    positions: dict[str, int] = {}
    uses = sequence_uses(conn, schema, names)
    missing += _sequences(conn, schema, tenant, uses, positions)
    missing += _defaults(conn, schema, tables)
    proved: list[str] = []
    if app_role is not None:
        role_missing = _role(conn, app_role)
        missing += role_missing
        if not role_missing and names:  # no shared table yet: nothing to hold privileges on
            missing += _privileges(conn, schema, app_role, names, uses)
            if prove:
                found, made = _prove(conn, schema, tenant, tables, app_role)
                missing += found
                proved += made
    return Readiness(tenant, schema, app_role, tuple(missing), tuple(proved), positions)


def _sequences(
    conn: psycopg.Connection[Any],
    schema: str,
    tenant: str,
    uses: Sequence[SequenceUse],
    positions: dict[str, int],
) -> list[Missing]:
    out: list[Missing] = []
    for use in uses:
        if use.qualified not in positions:
            positions[use.qualified] = next_value(conn, use.schema, use.sequence)[0]
        highest = tenant_highest(conn, schema, use, tenant)
        following = positions[use.qualified]
        if highest is not None and following <= highest:
            out.append(
                Missing(
                    "sequence",
                    use.qualified,
                    f"hands out {following} next, but tenant '{tenant}' already holds "
                    f"{use.table}.{use.column} = {highest}: the first insert would hit a duplicate key",
                    "the backfill and the flip move it past the tenant's values themselves; by hand: "
                    f"SELECT setval('{use.qualified}', {highest})",
                )
            )
    return out


def _defaults(conn: psycopg.Connection[Any], schema: str, tables: Sequence[SourceTable]) -> list[Missing]:
    target = {
        (t, c): bool(d)
        for t, c, d in conn.execute(
            _sql("readiness_columns.sql"), {"schema": schema, "tables": [t.name for t in tables]}
        )
    }
    out: list[Missing] = []
    for table in tables:
        for col in table.columns:
            if not col.defaulted or target.get((table.name, col.name), True):
                continue  # a column the target lacks is the schema step's finding, not this one
            what = "an identity" if col.identity_kind or col.serial else f"the default {col.default}"
            out.append(
                Missing(
                    "default",
                    f"{schema}.{table.name}.{col.name}",
                    f"the source column has {what}; the shared column has none, so an insert that "
                    "leaves it out fails",
                    "add the default to the shared column (a new 'migrate schema generate' revision "
                    "carries it), then run again",
                )
            )
    return out


def _role(conn: psycopg.Connection[Any], role: str) -> list[Missing]:
    row = conn.execute(
        "SELECT rolsuper OR rolbypassrls, pg_has_role(current_user, oid, 'USAGE')"
        " FROM pg_roles WHERE rolname = %s",
        (role,),
    ).fetchone()
    if row is None:
        return [
            Missing(
                "role",
                role,
                "the application role target.app_role names does not exist",
                f"CREATE ROLE {sql.Identifier(role).as_string(None)} LOGIN NOSUPERUSER NOBYPASSRLS",
            )
        ]
    out: list[Missing] = []
    if row[0]:
        out.append(
            Missing(
                "role",
                role,
                "is superuser or BYPASSRLS: row-level security would not apply to the application",
                f"ALTER ROLE {sql.Identifier(role).as_string(None)} NOSUPERUSER NOBYPASSRLS",
            )
        )
    if not row[1]:
        out.append(
            Missing(
                "role",
                role,
                "the migrator cannot act as it, so the insert proof cannot run",
                f"GRANT {sql.Identifier(role).as_string(None)} TO the migrator's role",
            )
        )
    return out


_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


def privileges(conn: psycopg.Connection[Any], schema: str, role: str, tables: Sequence[str]) -> list[Missing]:
    """What ``role`` lacks (or holds and must not: TRUNCATE) on ``tables`` and their sequences;
    the role's own problems (missing, superuser, BYPASSRLS) first."""
    found = _role(conn, role)
    if any("does not exist" in m.detail for m in found):
        return found
    return [
        *(m for m in found if "cannot act" not in m.detail),
        *_privileges(conn, schema, role, tables, sequence_uses(conn, schema, tables)),
    ]


def _privileges(
    conn: psycopg.Connection[Any], schema: str, role: str, tables: Sequence[str], uses: Sequence[SequenceUse]
) -> list[Missing]:
    who = sql.Identifier(role).as_string(None)
    out: list[Missing] = []
    row = conn.execute("SELECT has_schema_privilege(%s, %s, 'USAGE')", (role, schema)).fetchone()
    if row is not None and not row[0]:
        out.append(
            Missing(
                "privilege",
                f"schema {schema}",
                f"{role} lacks USAGE on the schema",
                f"GRANT USAGE ON SCHEMA {sql.Identifier(schema).as_string(None)} TO {who}",
            )
        )
    for table in tables:
        qualified = sql.Identifier(schema, table).as_string(None)
        held = conn.execute(
            "SELECT p, has_table_privilege(%s, %s::regclass, p) FROM unnest(%s::text[]) AS p",
            (role, qualified, [*_TABLE_PRIVILEGES, "TRUNCATE"]),
        ).fetchall()
        lacking = [p for p, has in held if p in _TABLE_PRIVILEGES and not has]
        if lacking:
            out.append(
                Missing(
                    "privilege",
                    f"{schema}.{table}",
                    f"{role} lacks {', '.join(lacking)}",
                    f"GRANT {', '.join(lacking)} ON {qualified} TO {who}",
                )
            )
        if any(p == "TRUNCATE" and has for p, has in held):
            out.append(
                Missing(
                    "privilege",
                    f"{schema}.{table}",
                    f"{role} holds TRUNCATE, which ignores row-level security and empties every tenant",
                    f"REVOKE TRUNCATE ON {qualified} FROM {who}",
                )
            )
    for qualified in sorted({u.qualified for u in uses if not u.owned}):
        use = next(u for u in uses if u.qualified == qualified)
        name = sql.Identifier(use.schema, use.sequence).as_string(None)
        row = conn.execute("SELECT has_sequence_privilege(%s, %s, 'USAGE')", (role, name)).fetchone()
        if row is not None and not row[0]:
            out.append(
                Missing(
                    "privilege",
                    qualified,
                    f"{role} lacks USAGE on the sequence {use.table}.{use.column}'s default draws from",
                    f"GRANT USAGE, SELECT ON SEQUENCE {name} TO {who}",
                )
            )
    return out


def _prove(
    conn: psycopg.Connection[Any],
    schema: str,
    tenant: str,
    tables: Sequence[SourceTable],
    role: str,
) -> tuple[list[Missing], list[str]]:
    out: list[Missing] = []
    proved: list[str] = []
    for table in tables:
        key = default_key(table)
        if not key:
            continue
        error = insert_with_defaults(conn, schema, tenant, table, tables, role)
        if error is None:
            proved.append(table.name)
        else:
            out.append(
                Missing(
                    "insert",
                    f"{schema}.{table.name}",
                    f"as {role}, an insert that leaves {', '.join(key)} to its default failed: {error}",
                    "fix what the other findings name; the message is PostgreSQL's own",
                )
            )
    return out, proved
