"""The schema step: the shared tables exist and fit this tenant's source.

The first tenant creates the shared tables — with the very statements
``migrate schema generate`` writes into its alembic revision (catalog/ddl.py is
the one source of truth) — under a lock and in one transaction, so two runners
never half-create them. With ``target.app_role`` the grants the application needs
are made too (under the same lock, only when something is missing), and verify
checks them. Objects that
already exist (from an applied revision, or from an earlier tenant) are left as
they are. Every tenant then checks that its source columns have the same names and
types as the shared tables, because COPY in binary format moves values only
between identical types.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from psycopg import sql

from migrate.catalog import citus, ddl
from migrate.catalog.fit import check_fit, column_types
from migrate.catalog.reflect import SourceSchema, reflect_schema
from migrate.checks import readiness
from migrate.control import locks
from migrate.errors import CheckFailed, StepFailed
from migrate.playbook.model import Step
from migrate.steps.context import Details, StepContext

_EXISTING = (
    "SELECT c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'S')"
    " UNION ALL SELECT t.typname, 'T' FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
    " WHERE n.nspname = %s AND t.typtype IN ('e', 'd', 'c')"
    " UNION ALL SELECT p.proname, 'F' FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
    " WHERE n.nspname = %s"
    " UNION ALL SELECT x.extname, 'X' FROM pg_extension x"
)
_TABLE_KINDS = (
    "table", "comment", "partition", "check", "foreign_key", "index", "trigger", "rls", "distribute"
)


def _missing(ctx: StepContext, shared: ddl.SharedSchema) -> tuple[list[ddl.Statement], list[str]]:
    """The statements still to run for what the target schema lacks, and the tables it lacks."""
    rows = ctx.target.execute(_EXISTING, (ctx.target_schema,) * 3).fetchall()
    relations = {name for name, kind in rows if kind not in ("T", "F", "X")}
    types = {name for name, kind in rows if kind == "T"}
    functions = {name for name, kind in rows if kind == "F"}
    extensions = {name for name, kind in rows if kind == "X"}
    missing = {t.name for t in ctx.tables} - relations
    statements = [
        statement
        for statement in shared.upgrade
        if (statement.kind == "type" and statement.object not in types)
        or (statement.kind == "extension" and statement.object not in extensions)
        or (statement.kind == "function" and statement.object not in functions)
        or (statement.kind in _TABLE_KINDS and statement.object in missing)
        or (statement.kind in ("view", "sequence") and statement.object not in relations)
    ]
    if statements:
        # Session settings the statements need (Citus: sequential DDL in one transaction) go first.
        statements = [s for s in shared.upgrade if s.kind == "setting"] + statements
    return statements, sorted(missing)


def _ungranted(ctx: StepContext) -> list[readiness.Missing]:
    """What the application role lacks on the tenant's shared tables (or holds and must not)."""
    return readiness.privileges(
        ctx.target, ctx.target_schema, ctx.app_role or "", [t.name for t in ctx.tables]
    )


def _refuse_uncarried(ctx: StepContext, shared: ddl.SharedSchema) -> None:
    """Nothing of the source is dropped silently: stop, naming what cannot be carried."""
    errors = [n for n in shared.notes if n.severity == "error"]
    if not errors:
        return
    shown = "; ".join(f"{n.subject} ({n.detail})" for n in errors[:5])
    more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
    raise StepFailed(
        f"the shared schema cannot carry {len(errors)} object(s) of source schema "
        f"{ctx.source_schema}: {shown}{more}",
        hint=errors[0].fix or "see 'migrate schema generate' for the whole report",
    )


def _unpropagated(ctx: StepContext) -> bool:
    """On Citus: the application role's SET LOCAL of the tenant would not reach the workers yet."""
    return (
        ctx.distributed == "citus"
        and ctx.app_role is not None
        and citus.role_propagation(ctx.target, ctx.app_role) != "local"
    )


def _citus(
    ctx: StepContext, source: SourceSchema, options: ddl.Options, shared: ddl.SharedSchema
) -> ddl.SharedSchema:
    """The statements for a Citus coordinator, or StepFailed for what Citus would refuse."""
    row = ctx.target.execute(citus.IS_CITUS).fetchone()
    if not row or not row[0]:
        raise StepFailed(
            "the playbook says target.distributed: citus, but the target database has no citus extension",
            hint="connect MIGRATE_TARGET_DSN to the Citus coordinator's database (CREATE EXTENSION citus "
            "there and on every worker), or remove 'distributed: citus'",
        )
    refused = [n for n in citus.refusals(source, options) if n.severity == "error"]
    if refused:
        raise StepFailed(
            "Citus would refuse the shared schema: "
            + "; ".join(f"{n.subject}: {n.detail} (fix: {n.fix})" for n in refused),
            hint="'migrate schema generate --citus' reports the same before anything is created",
        )
    return citus.distribute(shared, source, options)


def _reference_tables(ctx: StepContext) -> list[str]:
    """On Citus: the playbook's global tables that exist in the target schema become reference tables
    (the step creates tenant tables only; global ones are the user's, or the revision's)."""
    if not ctx.global_tables or not citus.plain_tables(ctx.target, ctx.target_schema, ctx.global_tables):
        return []
    with ctx.target.transaction():
        ctx.target.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))", (locks.SCHEMA, ctx.target_schema)
        )
        return citus.make_reference_tables(ctx.target, ctx.target_schema, ctx.global_tables)


class SchemaStep:
    kind: ClassVar[str] = "schema"

    def __init__(self, spec: Step) -> None:
        self.spec = spec

    def apply(self, ctx: StepContext) -> Details:
        read = ctx.source_catalog or reflect_schema(ctx.source, ctx.source_schema)
        source = read.restricted((t.name for t in ctx.tables), globals_=ctx.global_tables)
        options = ddl.Options(
            schema=ctx.target_schema,
            tenant_context=ctx.tenant_context,
            app_role=ctx.app_role,
            leave_behind=ctx.leave_behind,
        )
        shared = ctx.shared_schemas.build(source, options)
        _refuse_uncarried(ctx, shared)
        if ctx.distributed == "citus":
            shared = _citus(ctx, source, options, shared)
        created: list[str] = []
        granted = False
        # Only a tenant that finds something missing takes the lock: once the shared tables
        # exist, tenants (and rehearsals, which hold their locks until they roll back) never
        # wait for each other here.
        if _missing(ctx, shared)[0]:
            with ctx.target.transaction():
                ctx.target.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))",
                    (locks.SCHEMA, ctx.target_schema),
                )
                ctx.target.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(ctx.target_schema))
                )
                # Looked at again under the lock: another runner may have created them meanwhile.
                statements, created = _missing(ctx, shared)
                for statement in statements:
                    ctx.target.execute(statement.sql)
        if ctx.app_role is not None and (_ungranted(ctx) or _unpropagated(ctx)):
            # Only when something is missing, and under the lock: concurrent GRANTs on one table
            # fail with "tuple concurrently updated". The role check refuses a role that would
            # bypass the policies before anything is granted.
            with ctx.target.transaction():
                ctx.target.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))",
                    (locks.SCHEMA, ctx.target_schema),
                )
                for statement in shared.upgrade:
                    if statement.kind in ("role", "grant"):
                        ctx.target.execute(statement.sql)
                granted = True
        referenced = _reference_tables(ctx) if ctx.distributed == "citus" else []
        ctx.log.info("shared_tables_ready", created=created, tables=len(ctx.tables), granted=granted)
        # The fit check is verify's: the engine runs it right after apply. It reads only the
        # target's columns: the source's are in ctx.tables already.
        return {
            "created": created,
            "tables": [t.name for t in ctx.tables],
            **({"granted_to": ctx.app_role} if granted else {}),
            # What a person acknowledged leaving behind (schema.leave_behind): in the ledger entry.
            **({"left_behind": list(shared.left_behind)} if shared.left_behind else {}),
            **({"reference_tables": referenced} if referenced else {}),
        }

    def verify(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        if ctx.app_role is not None:
            lacking = _ungranted(ctx)
            if lacking:
                raise CheckFailed(
                    f"the application role {ctx.app_role} cannot work on the shared tables: "
                    + "; ".join(m.text() for m in lacking),
                    hint=lacking[0].fix,
                )
        check_fit(
            ctx.tables,
            column_types(ctx.target, ctx.target_schema),
            source_schema=ctx.source_schema,
            target_schema=ctx.target_schema,
        )
        if ctx.distributed == "citus":
            rows = ctx.target.execute(citus.tenant_tables_distributed(), (ctx.target_schema,)).fetchall()
            present = {str(r[0]) for r in rows}
            globals_ = [g for g in ctx.global_tables if g in present]
            problems = citus.distribution_problems(rows, [t.name for t in ctx.tables], globals_)
            if _unpropagated(ctx):
                problems.append(
                    f"role {ctx.app_role}'s {citus.PROPAGATE} is not 'local': its SET LOCAL of the "
                    "tenant would never reach the workers"
                )
            if problems:
                raise CheckFailed(
                    f"the shared tables are not distributed as Citus needs them: {'; '.join(problems)}",
                    hint="tables created before 'distributed: citus' was set: SELECT "
                    "create_distributed_table("
                    "'schema.table', 'tenant_id', colocate_with => 'schema.first_table') on each, in "
                    "foreign-key order (drop their foreign keys first, add them back after)",
                )

    def revert(self, ctx: StepContext, details: Mapping[str, Any]) -> Details:
        # The shared tables hold every tenant's rows: one tenant's rollback never drops them.
        return {"kept": list(details.get("tables", []))}

    def verify_reverted(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        """Nothing to check: the shared tables stay for the other tenants."""

    def summary(self, details: Mapping[str, Any], *, reverted: bool) -> str | None:
        return None
