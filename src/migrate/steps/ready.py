"""The gate before a flip: the tenant's shared tables take the application's first write.

The flag step (offline) and the cutover step (online) call ``ensure_write_ready`` right before
they turn the flag on: shared sequences are moved past the tenant's values once more (idempotent,
only forward), then ``checks/readiness.py`` looks at sequences, defaults, the application role's
privileges, and proves an insert with defaults as that role (rolled back). Anything missing
stops the flip with a message that names each thing and how to fix it.
"""

from __future__ import annotations

from typing import Any

import psycopg

from migrate.checks import readiness
from migrate.errors import StepFailed
from migrate.steps.context import Details, StepContext
from migrate.steps.sequences import advance_sequences


def ensure_write_ready(ctx: StepContext, target: psycopg.Connection[Any] | None = None) -> Details:
    """Advance the sequences, check readiness; raise StepFailed naming everything missing."""
    conn = target or ctx.target
    moved = advance_sequences(ctx, target=conn)
    found = readiness.check(
        conn, schema=ctx.target_schema, tenant=ctx.tenant.id, tables=ctx.tables, app_role=ctx.app_role
    )
    if not found.ok:
        raise StepFailed(
            f"tenant '{ctx.tenant.id}' is not write-ready on the shared schema '{ctx.target_schema}', so "
            f"its flag was not flipped: {found.summary()}",
            hint=found.missing[0].fix,
            details={"write_ready": False, "missing": [m.text() for m in found.missing]},
        )
    ctx.log.info("write_ready", proved=list(found.proved), app_role=ctx.app_role)
    return {
        "write_ready": True,
        "insert_proved": list(found.proved),
        **({"sequences_advanced": moved} if moved else {}),
    }
