"""The shared schema on a Citus cluster: what changes when the target is distributed.

One seam for everything Citus asks of the shared schema (shared/notes/citus.md has
the measured facts, Citus 13.2.2 on PostgreSQL 15):

- **Order.** Creating every table with its foreign keys and then distributing them
  fails: ``create_reference_table`` silently turns the tables that reference it into
  Citus-local tables, after which ``create_distributed_table`` refuses them. So
  ``distribute()`` re-orders the statements ``ddl.build`` made: each table (with its
  comments, checks, partitions and indexes) is created and at once made a reference
  table (global tables, first) or distributed on ``tenant_id``, co-located with the
  first tenant table, in foreign-key order; the foreign keys, the policies, the views
  and the grants come after every table is distributed. The statements run in one
  transaction with ``citus.multi_shard_modify_mode = 'sequential'``: DDL over many
  shards after a distribution in the same transaction is refused otherwise.
- **The tenant setting.** A policy reads ``app.tenant_id`` on the worker that holds the
  shard, and a worker sees only what the coordinator propagates: ``SET LOCAL`` inside a
  transaction, and only with ``citus.propagate_set_commands = 'local'``. ``set_config()``
  and session-level ``SET`` never reach it, and the policy then *silently* matches no
  row. The set-up gives the application role that setting (``ALTER ROLE … SET``), and
  the application sets its tenant with ``SET_TENANT_SQL`` below.
- **What Citus refuses** is said by ``refusals()`` before anything is created or copied.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql

from migrate.catalog import TENANT_COLUMN, TENANT_SETTING
from migrate.catalog.ddl import SET_TENANT_SQL, Note, Options, SharedSchema, Statement, tenant_value
from migrate.catalog.order import load_order
from migrate.catalog.reflect import SourceSchema

PROPAGATE = "citus.propagate_set_commands"
SEQUENTIAL = "SET LOCAL citus.multi_shard_modify_mode TO 'sequential'"

IS_CITUS = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"

_WITH_TABLE = ("table", "comment", "check", "partition", "index")


def set_tenant(tenant: str, *, local: bool = True) -> sql.Composed:
    """What the application runs first in every transaction on Citus: ``SET LOCAL app.tenant_id =
    '<tenant>'`` — the tenant as a literal, since SET takes no parameter. With the role's
    ``citus.propagate_set_commands = 'local'`` the coordinator sends it to every worker the
    transaction touches. ``local=False`` is the session-level SET the isolation check reproduces
    (never propagated)."""
    scope = sql.SQL("LOCAL ") if local else sql.SQL("")
    return sql.SQL("SET {}{} = {}").format(scope, sql.SQL(TENANT_SETTING), sql.Literal(tenant))


# The role's setting as its logins in this database get it: role-and-database first, then role-wide.
_ROLE_SETTING = (
    "SELECT split_part(cfg, '=', 2) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole,"
    " unnest(s.setconfig) AS cfg"
    " WHERE r.rolname = %s AND s.setdatabase IN (0, (SELECT oid FROM pg_database"
    " WHERE datname = current_database())) AND split_part(cfg, '=', 1) = %s"
    " ORDER BY s.setdatabase DESC LIMIT 1"
)


def role_propagation(conn: psycopg.Connection[Any], role: str) -> str:
    """The role's ``citus.propagate_set_commands`` as its logins get it ('none' when not set)."""
    row = conn.execute(_ROLE_SETTING, (role, PROPAGATE)).fetchone()
    return str(row[0]) if row and row[0] else "none"


def is_citus(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``conn`` is to a Citus coordinator's database (the extension is there)."""
    row = conn.execute(IS_CITUS).fetchone()
    return bool(row and row[0])


def set_tenant_here(conn: psycopg.Connection[Any], tenant: str) -> None:
    """Set the tenant for the rest of the caller's transaction where the policies will read it: on a
    Citus coordinator ``SET LOCAL`` propagated to the workers; elsewhere the application's statement
    (``ddl.SET_TENANT_SQL``). For the tool's own probes as the application role."""
    if is_citus(conn):
        conn.execute(sql.SQL("SET LOCAL {} = 'local'").format(sql.SQL(PROPAGATE)))
        conn.execute(set_tenant(tenant))
    else:
        conn.execute(SET_TENANT_SQL, (tenant,))


def _call(function: str, *args: sql.Composable) -> str:
    return sql.SQL("SELECT {}({})").format(sql.SQL(function), sql.SQL(", ").join(args)).as_string(None)


def distribute(shared: SharedSchema, source: SourceSchema, options: Options) -> SharedSchema:
    """The same schema, ordered and distributed for Citus (see the module docstring)."""
    qualified = {name: sql.Identifier(options.schema, name).as_string(None) for name in source.tables}
    ordered = [t.name for t in load_order(source.tables.values())]
    globals_ = [n for n in ordered if n in shared.global_tables]
    tenants = [n for n in ordered if n in shared.tenant_tables]
    # What ddl.build puts before the first table (roles, the schema, types, sequences, functions…)
    # stays first, in its order: tables may use it.
    first_table = next((i for i, s in enumerate(shared.upgrade) if s.kind == "table"), len(shared.upgrade))
    before = shared.upgrade[:first_table]
    up: list[Statement] = [Statement(SEQUENTIAL, "setting"), *before]
    placed = {id(s) for s in before}
    first: str | None = None
    for name in [*globals_, *tenants]:
        own = [
            s for s in shared.upgrade if s.kind in _WITH_TABLE and s.object == name and id(s) not in placed
        ]
        placed |= {id(s) for s in own}
        up += own
        if name in shared.global_tables:
            up.append(
                Statement(_call("create_reference_table", sql.Literal(qualified[name])), "distribute", name)
            )
            continue
        colocate = sql.Literal("default" if first is None else qualified[first])
        up.append(
            Statement(
                _call(
                    "create_distributed_table",
                    sql.Literal(qualified[name]),
                    sql.Literal(options.tenant_column),
                    sql.SQL("colocate_with => {}").format(colocate),
                ),
                "distribute",
                name,
            )
        )
        first = first or name
    # Citus refuses sub-queries in the policies of distributed tables: the tenant is compared as a
    # plain expression, evaluated per row on the shard (its cost on plain PostgreSQL: README,
    # "Tenant context", the guard per row).
    once = sql.SQL("(SELECT {})").format(tenant_value(options)).as_string(None)
    plain = tenant_value(options).as_string(None)
    up += [
        replace(s, sql=s.sql.replace(once, plain)) if s.kind == "rls" else s
        for s in shared.upgrade
        if id(s) not in placed  # every statement once: those of no table (views, grants…) after
    ]
    if options.app_role is not None:
        up.append(
            Statement(
                sql.SQL("ALTER ROLE {} SET {} = 'local'")
                .format(sql.Identifier(options.app_role), sql.SQL(PROPAGATE))
                .as_string(None),
                "grant",
            )
        )
    return replace(shared, upgrade=tuple(up), notes=(*shared.notes, *refusals(source, options)))


def refusals(source: SourceSchema, options: Options) -> list[Note]:
    """What Citus refuses in this schema, said before anything is created or copied."""
    tenant = {n for n in source.tables if n not in options.global_tables}
    notes: list[Note] = []
    if options.tenant_context == "transaction":
        notes.append(
            Note(
                "error",
                "citus-tenant-context",
                "target.tenant_context",
                "'transaction' compares app.tenant_xact_start with the transaction's start, which a "
                "worker's own transaction does not share: every policy would match no row",
                "tenant_context: session (the default); on Citus only SET LOCAL reaches the workers anyway",
            )
        )
    for name in sorted(source.tables):
        t = source.tables[name]
        for fk in t.foreign_keys:
            if fk.ref_schema is not None or fk.ref_table not in source.tables:
                continue
            subject = f"{name}.{fk.name}"
            both = name in tenant and fk.ref_table in tenant
            if both and fk.on_delete in ("n", "d"):
                notes.append(
                    Note(
                        "error",
                        "citus-refuses-foreign-key",
                        subject,
                        f"ON DELETE SET {'NULL' if fk.on_delete == 'n' else 'DEFAULT'} on a key that "
                        f"includes {options.tenant_column}, the distribution column: Citus refuses it",
                        "ON DELETE CASCADE, RESTRICT or NO ACTION (clear the column in the application)",
                    )
                )
            if both and fk.on_update in ("c", "n", "d"):
                notes.append(
                    Note(
                        "error",
                        "citus-refuses-foreign-key",
                        subject,
                        "ON UPDATE CASCADE, SET NULL or SET DEFAULT on a key that includes the "
                        "distribution column: Citus refuses it",
                        "ON UPDATE NO ACTION (update the referencing rows in the application)",
                    )
                )
    for u in source.uncarried:
        if u.kind == "trigger":
            notes.append(
                Note(
                    "warning",
                    "citus-refuses-trigger",
                    f"trigger {u.name}",
                    "Citus refuses triggers on distributed and reference tables unless "
                    "citus.enable_unsafe_triggers is on (the trigger then fires on each shard)",
                    "move its work into the application, or re-create it by hand with "
                    "citus.enable_unsafe_triggers = on after checking it touches only its own shard",
                )
            )
    for trigger in source.triggers:
        notes.append(
            Note(
                "error",
                "citus-refuses-trigger",
                f"trigger {trigger.table}.{trigger.name}",
                "carried to the shared schema, but Citus refuses triggers on distributed and reference "
                "tables unless citus.enable_unsafe_triggers is on (the trigger then fires on each shard)",
                "drop it from the source schema and do its work in the application, or migrate to a "
                "plain PostgreSQL target; carried triggers on Citus are not supported yet",
            )
        )
    if tenant:
        notes.append(
            Note(
                "info",
                "citus-tenant-immutable",
                ", ".join(sorted(tenant)),
                f"{options.tenant_column} is the distribution column: Citus refuses any UPDATE of it",
                "move a row to another tenant by DELETE and INSERT",
            )
        )
    return notes


# Tables of the schema among ``names`` that are no Citus table yet (plain tables on the coordinator).
_NOT_CITUS = (
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " LEFT JOIN pg_dist_partition p ON p.logicalrelid = c.oid"
    " WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
    " AND p.logicalrelid IS NULL ORDER BY 1"
)


def plain_tables(conn: psycopg.Connection[Any], schema: str, names: Iterable[str]) -> list[str]:
    """Which of ``names`` exist in ``schema`` as plain (not yet Citus) tables."""
    return [str(r[0]) for r in conn.execute(_NOT_CITUS, (schema, list(names)))]


def make_reference_tables(conn: psycopg.Connection[Any], schema: str, names: Iterable[str]) -> list[str]:
    """Make the existing global tables among ``names`` reference tables (copied to every node); the
    ones it made."""
    made = plain_tables(conn, schema, names)
    for name in made:
        conn.execute(
            _call("create_reference_table", sql.Literal(sql.Identifier(schema, name).as_string(None)))
        )
    return made


def tenant_tables_distributed() -> str:
    """The query verify uses: each table's Citus kind and distribution column and colocation."""
    return (
        "SELECT c.relname, p.partmethod::text, "
        " CASE WHEN p.partmethod = 'h' THEN column_to_column_name(p.logicalrelid, p.partkey) END,"
        " p.colocationid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " LEFT JOIN pg_dist_partition p ON p.logicalrelid = c.oid"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
    )


def distribution_problems(
    rows: Iterable[Sequence[object]], tenant_tables: Iterable[str], global_tables: Iterable[str]
) -> list[str]:
    """What is not distributed as it must be: tenant tables hash-distributed on tenant_id in one
    colocation group, global tables reference tables."""
    found = {str(r[0]): (r[1], r[2], r[3]) for r in rows}
    problems: list[str] = []
    groups: set[object] = set()
    for name in sorted(tenant_tables):
        method, column, group = found.get(name, (None, None, None))
        if method != "h" or column != TENANT_COLUMN:
            problems.append(f"{name} is not distributed by {TENANT_COLUMN}")
        else:
            groups.add(group)
    if len(groups) > 1:
        problems.append("the tenant tables are not co-located (several colocation groups)")
    for name in sorted(global_tables):
        if found.get(name, (None,))[0] != "n":
            problems.append(f"{name} is not a reference table")
    return problems
