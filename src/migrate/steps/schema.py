"""The schema step: the shared tables exist and fit this tenant's source.

The first tenant creates the shared tables (under a lock, in one transaction,
so two runners never half-create them); every later tenant checks that its
source columns have the same names and types, because COPY in binary format
moves values only between identical types.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from psycopg import sql

from migrate.errors import StepFailed
from migrate.playbook.model import Step
from migrate.schemagen import ddl
from migrate.schemagen.reflect import SourceTable
from migrate.steps.context import Details, StepContext

_EXISTING = (
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = %s AND c.relkind IN ('r', 'p')"
)
_COLUMNS = (
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
    " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
    " ORDER BY a.attnum"
)


def _check_fits(ctx: StepContext, table: SourceTable) -> None:
    qualified = sql.Identifier(ctx.target_schema, table.name).as_string(ctx.target)
    have = {name: type_ for name, type_ in ctx.target.execute(_COLUMNS, (qualified,))}
    for col in table.columns:
        if col.name not in have:
            raise StepFailed(
                f"source column {table.name}.{col.name} has no column in the shared table {qualified}",
                hint="this tenant's source schema differs from the one the shared tables were made "
                "from: migrate its schema first, or add the column to the shared table",
            )
        if have[col.name] != col.type:
            raise StepFailed(
                f"column {table.name}.{col.name} is {col.type} in the source but "
                f"{have[col.name]} in the shared table {qualified}",
                hint="make the types equal on both sides before the backfill",
            )


class SchemaStep:
    kind: ClassVar[str] = "schema"
    irreversible: ClassVar[bool] = False

    def __init__(self, spec: Step) -> None:
        self.spec = spec

    def apply(self, ctx: StepContext) -> Details:
        created: list[str] = []
        with ctx.target.transaction():
            ctx.target.execute(
                "SELECT pg_advisory_xact_lock(hashtext('migrate.schema'), hashtext(%s))",
                (ctx.target_schema,),
            )
            ctx.target.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(ctx.target_schema))
            )
            existing = {r[0] for r in ctx.target.execute(_EXISTING, (ctx.target_schema,))}
            missing = [t for t in ctx.tables if t.name not in existing]
            for table in missing:
                ctx.target.execute(ddl.create_table(ctx.target_schema, table))
            for table in missing:
                for statement in ddl.foreign_keys(ctx.target_schema, table):
                    ctx.target.execute(statement)
                for statement in ddl.row_level_security(ctx.target_schema, table.name):
                    ctx.target.execute(statement)
                created.append(table.name)
        for table in ctx.tables:
            _check_fits(ctx, table)
        ctx.log.info("shared_tables_ready", created=created, tables=len(ctx.tables))
        return {"created": created, "tables": [t.name for t in ctx.tables]}

    def verify(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        for table in ctx.tables:
            _check_fits(ctx, table)

    def revert(self, ctx: StepContext, details: Mapping[str, Any]) -> Details:
        # The shared tables hold every tenant's rows: one tenant's rollback never drops them.
        return {"kept": list(details.get("tables", []))}
