"""The validate step: per table, row counts and checksums equal on both sides.

The figures (rows and checksum per side and table, and the checksum mode) are
what ``apply`` returns, so they reach the step state, the ledger and the run
report; a mismatch makes ``verify`` fail the tenant, which stops its later
phases (the cut-over among them), and the error names every table that differs
with its row counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import psycopg

from migrate.catalog import TENANT_COLUMN
from migrate.catalog.reflect import SourceTable
from migrate.checks.checksum import Mode, Side, TableFigures, choose_mode, compare, table_shapes
from migrate.errors import CheckFailed
from migrate.playbook.model import Step
from migrate.steps import online
from migrate.steps.context import Details, StepContext


def compare_tenant(
    source: psycopg.Connection[Any],
    target: psycopg.Connection[Any],
    *,
    source_schema: str,
    target_schema: str,
    tenant: str,
    tables: Sequence[SourceTable],
    mode: Mode | None = None,
) -> tuple[Mode, list[TableFigures]]:
    """The checksum mode and every table's figures for one tenant, source vs its rows in the target."""
    mode = mode or choose_mode(source, target)
    shapes = table_shapes(source, source_schema, {t.name: t.primary_key for t in tables})
    figures = compare(
        Side(source, source_schema),
        Side(target, target_schema, TENANT_COLUMN, tenant, label="target"),
        shapes,
        mode,
    )
    return mode, figures


def mismatch_summary(figures: Mapping[str, Mapping[str, Any]]) -> str:
    """'tasks (rows 200 vs 199), comments (rows 400 vs 400, checksums differ)' for the tables that differ."""
    return ", ".join(
        f"{name} (rows {f['source_rows']} vs {f['target_rows']}"
        f"{', checksums differ' if f['source_rows'] == f['target_rows'] else ''})"
        for name, f in figures.items()
        if not f["match"]
    )


class ValidateStep:
    kind: ClassVar[str] = "validate"

    def __init__(self, spec: Step) -> None:
        self.spec = spec

    def apply(self, ctx: StepContext) -> Details:
        mode, figures = compare_tenant(
            ctx.source,
            ctx.target,
            source_schema=ctx.source_schema,
            target_schema=ctx.target_schema,
            tenant=ctx.tenant.id,
            tables=ctx.tables,
        )
        tables = {f.table: f.as_details() for f in figures}
        rows = sum(f.target.rows for f in figures)
        ctx.log.info(
            "tenant_validated",
            tables=len(tables),
            rows=rows,
            checksum=mode,
            mismatched=[f.table for f in figures if not f.match],
        )
        return {
            "tables": tables,
            "rows": rows,
            "checksum": mode,
            "match": all(f.match for f in figures),
            # Frozen: nobody could write the source since, so a later cut-over may trust this validation.
            "frozen": not ctx.rehearsal and online.frozen(ctx) is not None,
        }

    def verify(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        tables = details.get("tables", {})
        if not all(t["match"] for t in tables.values()):
            raise CheckFailed(
                f"tenant '{ctx.tenant.id}': source and target differ in {mismatch_summary(tables)}",
                hint=f"see which rows with 'migrate diff PLAYBOOK --tenant {ctx.tenant.id} --table …'",
            )

    def revert(self, ctx: StepContext, details: Mapping[str, Any]) -> Details:
        return {}  # validation changes nothing

    def verify_reverted(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        """Nothing to check: validation changes nothing."""

    def summary(self, details: Mapping[str, Any], *, reverted: bool) -> str | None:
        return None
