"""The backfill step: each source table streams into its shared table with COPY.

Source ``COPY (SELECT 'tenant', cols…) TO STDOUT (FORMAT binary)`` feeds target
``COPY … FROM STDIN (FORMAT binary)`` block by block: no table is ever held in
Python memory, and no value is re-encoded. A table's rows and its checkpoint
commit in one transaction, so a crash leaves each table either wholly copied
and checkpointed or not copied at all; a re-run skips checkpointed tables and
never duplicates a row.

The writer must be exempt from RLS (superuser, BYPASSRLS, or the owner without
FORCE): PostgreSQL refuses ``COPY FROM`` into a table whose policies apply to
the writing role. The tenant id is written by this step itself, as a literal
quoted by the driver (COPY takes no parameters).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

from psycopg import sql

from migrate.errors import StepFailed
from migrate.playbook.model import Step
from migrate.schemagen.ddl import TENANT_COLUMN
from migrate.schemagen.reflect import SourceTable
from migrate.steps.context import Details, StepContext

_EXEMPT = "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"


def tenant_rows(ctx: StepContext, table: str) -> int:
    row = ctx.target.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
            sql.Identifier(ctx.target_schema, table), sql.Identifier(TENANT_COLUMN)
        ),
        (ctx.tenant.id,),
    ).fetchone()
    return int(row[0]) if row else 0


def _copy_table(ctx: StepContext, table: SourceTable) -> int:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names)
    read = sql.SQL("COPY (SELECT {}::text, {} FROM {}) TO STDOUT (FORMAT binary)").format(
        sql.Literal(ctx.tenant.id), cols, sql.Identifier(ctx.source_schema, table.name)
    )
    write = sql.SQL("COPY {} ({}, {}) FROM STDIN (FORMAT binary)").format(
        sql.Identifier(ctx.target_schema, table.name), sql.Identifier(TENANT_COLUMN), cols
    )
    with ctx.source.cursor() as src, ctx.target.cursor() as dst:
        with src.copy(read) as reader, dst.copy(write) as writer:
            for block in reader:
                writer.write(block)
        return dst.rowcount


class BackfillStep:
    kind: ClassVar[str] = "backfill"
    irreversible: ClassVar[bool] = False

    def __init__(self, spec: Step) -> None:
        self.spec = spec

    def apply(self, ctx: StepContext) -> Details:
        exempt = ctx.target.execute(_EXEMPT).fetchone()
        if not exempt or not exempt[0]:
            raise StepFailed(
                "the target role is subject to row-level security, and PostgreSQL refuses COPY "
                "into such tables",
                hint="connect MIGRATE_TARGET_DSN as a migrator role with BYPASSRLS "
                "(ALTER ROLE migrator BYPASSRLS)",
            )
        tables: dict[str, Any] = {}
        copied_now = 0
        for table in ctx.tables:
            checkpoint = ctx.control.checkpoint(ctx.target, ctx.tenant.id, table.name)
            if checkpoint is not None and checkpoint.done:
                tables[table.name] = {"rows": checkpoint.rows_copied, "copied_now": 0}
                continue
            started = time.monotonic()
            with ctx.target.transaction():
                already = tenant_rows(ctx, table.name)
                if already:
                    raise StepFailed(
                        f"the shared table {ctx.target_schema}.{table.name} already holds {already} "
                        f"rows of tenant '{ctx.tenant.id}' that no checkpoint accounts for",
                        hint=f"remove them with 'migrate rollback … --tenant {ctx.tenant.id}' "
                        "before copying again; they are never deleted silently",
                    )
                rows = _copy_table(ctx, table)
                ctx.control.save_checkpoint(
                    ctx.target, ctx.tenant.id, table.name, rows_copied=rows, done=True
                )
            # Fresh statistics before children are loaded: their FK checks are planned on them.
            ctx.target.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(ctx.target_schema, table.name)))
            seconds = time.monotonic() - started
            copied_now += rows
            tables[table.name] = {"rows": rows, "copied_now": rows}
            ctx.log.info("table_copied", table=table.name, rows=rows, seconds=round(seconds, 3))
        return {"tables": tables, "rows": sum(t["rows"] for t in tables.values()), "copied_now": copied_now}

    def verify(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        for table in ctx.tables:
            checkpoint = ctx.control.checkpoint(ctx.target, ctx.tenant.id, table.name)
            if checkpoint is None or not checkpoint.done:
                raise StepFailed(f"table {table.name} has no finished checkpoint")
            have = tenant_rows(ctx, table.name)
            if have != checkpoint.rows_copied:
                raise StepFailed(
                    f"the shared table {table.name} holds {have} rows of tenant '{ctx.tenant.id}', "
                    f"the checkpoint says {checkpoint.rows_copied}",
                    hint="something else wrote to the shared table; run 'migrate verify'",
                )

    def revert(self, ctx: StepContext, details: Mapping[str, Any]) -> Details:
        """Delete the tenant's rows, children first, and forget the checkpoints."""
        deleted: dict[str, int] = {}
        with ctx.target.transaction():
            for table in reversed(ctx.tables):
                cur = ctx.target.execute(
                    sql.SQL("DELETE FROM {} WHERE {} = %s").format(
                        sql.Identifier(ctx.target_schema, table.name), sql.Identifier(TENANT_COLUMN)
                    ),
                    (ctx.tenant.id,),
                )
                deleted[table.name] = cur.rowcount
            ctx.control.clear_checkpoints(ctx.target, ctx.tenant.id)
        ctx.log.info("tenant_rows_deleted", rows=sum(deleted.values()))
        return {"deleted": deleted}
