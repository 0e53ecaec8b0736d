"""Shared-table DDL from a source table: tenant_id first, in every key, RLS forced.

Every key (primary, unique, foreign) gains ``tenant_id`` as its leading column,
so two tenants' ``id = 1`` never collide, no foreign key can point across
tenants, and the tables stay valid for Citus ``create_distributed_table(…,
'tenant_id')``. Identifiers go through ``sql.Identifier``; type and default
texts come from the source catalog's own rendering (see reflect.py).
"""

from __future__ import annotations

from psycopg import sql

from migrate.schemagen.reflect import SourceTable

TENANT_COLUMN = "tenant_id"
TENANT_SETTING = "app.tenant_id"
POLICY = "tenant_isolation"


def _cols(names: tuple[str, ...]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in (TENANT_COLUMN, *names))


def create_table(schema: str, table: SourceTable) -> sql.Composed:
    """CREATE TABLE for the shared table (no foreign keys: see foreign_keys())."""
    parts: list[sql.Composable] = [sql.SQL("{} text NOT NULL").format(sql.Identifier(TENANT_COLUMN))]
    for col in table.columns:
        parts.append(
            sql.SQL("{} {}{}{}").format(
                sql.Identifier(col.name),
                sql.SQL(col.type),
                sql.SQL(" NOT NULL") if col.not_null else sql.SQL(""),
                sql.SQL(" DEFAULT ") + sql.SQL(col.default) if col.default else sql.SQL(""),
            )
        )
    if table.primary_key:
        parts.append(sql.SQL("PRIMARY KEY ({})").format(_cols(table.primary_key)))
    for unique in table.uniques:
        parts.append(sql.SQL("UNIQUE ({})").format(_cols(unique)))
    return sql.SQL("CREATE TABLE {} (\n    {}\n)").format(
        sql.Identifier(schema, table.name), sql.SQL(",\n    ").join(parts)
    )


def foreign_keys(schema: str, table: SourceTable) -> list[sql.Composed]:
    """Composite foreign keys (tenant_id, cols) → (tenant_id, ref cols), each with an index."""
    out = []
    for fk in table.foreign_keys:
        out.append(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({})").format(
                sql.Identifier(schema, table.name),
                sql.Identifier(fk.name),
                _cols(fk.columns),
                sql.Identifier(schema, fk.ref_table),
                _cols(fk.ref_columns),
            )
        )
        # FK checks and tenant deletes look up the referencing side: index it, tenant first.
        out.append(
            sql.SQL("CREATE INDEX {} ON {} ({})").format(
                sql.Identifier(f"{fk.name}_idx"[:63]),
                sql.Identifier(schema, table.name),
                _cols(fk.columns),
            )
        )
    return out


def row_level_security(schema: str, table: str) -> list[sql.Composed]:
    """RLS enabled and FORCED (so the owner is subject too), one policy for read and write.

    ``current_setting(…, true)`` is NULL in a session that never set the tenant:
    no rows, rather than an error or every tenant (shared/notes/postgres.md, pitfall 3).
    """
    qualified = sql.Identifier(schema, table)
    predicate = sql.SQL("{} = current_setting({}, true)").format(
        sql.Identifier(TENANT_COLUMN), sql.Literal(TENANT_SETTING)
    )
    return [
        sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(qualified),
        sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(qualified),
        sql.SQL("CREATE POLICY {} ON {} USING ({}) WITH CHECK ({})").format(
            sql.Identifier(POLICY), qualified, predicate, predicate
        ),
    ]
