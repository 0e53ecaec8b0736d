"""The validate step: per table, row counts and checksums equal on both sides."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from migrate.checks.checksum import table_sum
from migrate.errors import CheckFailed
from migrate.playbook.model import Step
from migrate.schemagen.ddl import TENANT_COLUMN
from migrate.steps.context import Details, StepContext


def compare(ctx: StepContext) -> dict[str, dict[str, Any]]:
    """Figures per table: rows and checksum on each side, and whether they match."""
    out: dict[str, dict[str, Any]] = {}
    for table in ctx.tables:
        columns = table.signature()
        src = table_sum(ctx.source, ctx.source_schema, table.name, columns)
        dst = table_sum(
            ctx.target,
            ctx.target_schema,
            table.name,
            columns,
            tenant_column=TENANT_COLUMN,
            tenant=ctx.tenant.id,
        )
        out[table.name] = {
            "source_rows": src.rows,
            "target_rows": dst.rows,
            "source_checksum": src.checksum,
            "target_checksum": dst.checksum,
            "match": src == dst,
        }
    return out


class ValidateStep:
    kind: ClassVar[str] = "validate"
    irreversible: ClassVar[bool] = False

    def __init__(self, spec: Step) -> None:
        self.spec = spec

    def apply(self, ctx: StepContext) -> Details:
        tables = compare(ctx)
        rows = sum(t["target_rows"] for t in tables.values())
        ctx.log.info(
            "tenant_validated",
            tables=len(tables),
            rows=rows,
            mismatched=[n for n, t in tables.items() if not t["match"]],
        )
        return {"tables": tables, "rows": rows, "match": all(t["match"] for t in tables.values())}

    def verify(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        bad = {n: t for n, t in details.get("tables", {}).items() if not t["match"]}
        if bad:
            lines = ", ".join(
                f"{n} (rows {t['source_rows']} vs {t['target_rows']}"
                f"{'' if t['source_rows'] != t['target_rows'] else ', checksums differ'})"
                for n, t in bad.items()
            )
            raise CheckFailed(
                f"tenant '{ctx.tenant.id}': source and target differ in {lines}",
                hint=f"see which rows with 'migrate diff PLAYBOOK --tenant {ctx.tenant.id} --table …'",
            )

    def revert(self, ctx: StepContext, details: Mapping[str, Any]) -> Details:
        return {}  # validation changes nothing
