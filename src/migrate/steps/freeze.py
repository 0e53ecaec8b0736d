"""The freeze step (offline playbooks): the application roles lose write access on the source.

Put before the backfill, it makes the copy and its validation read a source no
one writes: validation cannot go stale between the validate step and the flag
step, whatever stops the run in between. The grants are recorded before the
REVOKE and given back exactly by revert; a barrier waits out writes that were
under way (``replication/freeze.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from migrate.errors import CheckFailed
from migrate.playbook.model import Step
from migrate.replication import freeze as freezing
from migrate.steps import online
from migrate.steps.context import Details, StepContext


def barrier(ctx: StepContext) -> freezing.Barrier:
    """The lock barrier after a REVOKE, bounded by the playbook's freeze budget."""
    budget = ctx.cutover.max_freeze
    return freezing.barrier(
        ctx.source,
        ctx.source_schema,
        online.source_tables(ctx),
        lock_timeout=max(0.05, min(0.2, budget / 8)),
        bound=budget / 4,
        give_up=max(budget, 1.0),
    )


class FreezeStep:
    kind: ClassVar[str] = "freeze"

    def __init__(self, spec: Step) -> None:
        self.spec = spec

    def apply(self, ctx: StepContext) -> Details:
        roles = list(ctx.app_roles)
        if ctx.rehearsal:
            return {"roles": roles, "rehearsal": "the source is not frozen in a rehearsal"}
        frozen = online.freeze_source(ctx, "freeze")
        try:
            waited = barrier(ctx)
        except Exception:
            online.thaw_source(ctx)
            raise
        ctx.log.info("source_frozen", roles=roles, barrier_seconds=round(waited.seconds, 3))
        return {
            "roles": roles,
            "grants": len(frozen.record.grants),
            "frozen_at": frozen.record.frozen_at.isoformat(),
            "barrier_seconds": round(waited.seconds, 3),
            "terminated": waited.terminated,
        }

    def verify(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        if ctx.rehearsal:
            return
        still = freezing.still_writable(
            ctx.source, ctx.source_schema, online.source_tables(ctx), ctx.app_roles
        )
        if still or online.frozen(ctx) is None:
            raise CheckFailed(
                f"tenant '{ctx.tenant.id}''s source is not frozen"
                + (": " + "; ".join(f"role {r} can write {t}" for r, t in still) if still else ""),
                hint="run again: the freeze is applied again",
            )

    def revert(self, ctx: StepContext, details: Mapping[str, Any]) -> Details:
        record = online.frozen(ctx)
        thawed = online.thaw_source(ctx)
        return {"thawed": thawed, "grants": [dict(g) for g in record.grants] if record else []}

    def verify_reverted(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        wanted = {freezing.Grant.from_json(g) for g in details.get("grants", [])}
        tables = sorted({g.table for g in wanted})
        with online.source_connection(ctx) as source:
            have = set(freezing.write_grants(source, ctx.source_schema, tables, ctx.app_roles))
        if online.frozen(ctx) is not None or not wanted <= have:
            raise CheckFailed(
                f"tenant '{ctx.tenant.id}''s source is still frozen after the revert",
                hint="run the same rollback again: it gives the recorded grants back",
            )

    def summary(self, details: Mapping[str, Any], *, reverted: bool) -> str | None:
        if reverted:
            return "source writable again" if details.get("thawed") else None
        if "barrier_seconds" not in details:
            return None
        roles = ", ".join(details.get("roles", []))
        return f"source frozen for {roles} (barrier {details['barrier_seconds']} s)"
