"""Rollback to a named point: revert every step after it, flags first.

Traffic goes back first (flag steps, in reverse order), then data (other
steps, in reverse order); each revert is ledgered and leaves the step
``reverted``, so the next ``run`` applies it again. Reverts are idempotent: a
rollback interrupted by a crash is simply run again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from uuid import uuid4

from migrate.control.store import StepRecord
from migrate.engine.run import Environment, StepResult, tenant_session
from migrate.errors import ArgumentError, MigrateError
from migrate.log import get_logger
from migrate.plan.model import PlannedStep, StepStatus, TenantPlan
from migrate.steps import step_for


@dataclass
class RollbackResult:
    tenant: str
    point: str
    steps: list[StepResult] = field(default_factory=list)
    seconds_to_flags: float | None = None
    seconds_total: float = 0.0


def steps_after(plan: TenantPlan, point: str) -> list[PlannedStep]:
    """The steps that follow rollback point ``point`` in the tenant's plan."""
    keys = [s.step_id for s in plan.steps]
    marker = f"@{point}"
    if marker not in keys:
        points = [s.step_id.removeprefix("@") for s in plan.steps if s.is_point]
        raise ArgumentError(
            f"playbook has no rollback point '{point}'",
            where="--to",
            hint=f"its rollback points are: {', '.join(points) or 'none (add rollback_point: NAME)'}",
        )
    return [s for s in plan.steps[keys.index(marker) + 1 :] if not s.is_point]


def rollback(env: Environment, plan: TenantPlan, point: str) -> RollbackResult:
    started = time.monotonic()
    run_id = uuid4()
    tenant = plan.tenant
    after = steps_after(plan, point)
    result = RollbackResult(tenant.id, point)
    log = get_logger(run_id=str(run_id), tenant=tenant.id)
    with tenant_session(env, tenant, run_id) as ctx:
        conn = ctx.target
        records: dict[str, StepRecord] = {r.step_key: r for r in env.control.steps(conn, [tenant.id])}
        env.control.start_run(
            conn,
            run_id=run_id,
            digest=env.loaded.digest,
            command=f"rollback --to {point}",
            actor=env.actor,
            host=env.host,
            pid=env.pid,
            dry_run=False,
        )
        env.ledger.append(
            conn, env.entry(run_id, "rollback_started", "ok", tenant=tenant.id, details={"to": point})
        )
        todo = [
            s
            for s in reversed(after)
            if (rec := records.get(s.key)) is not None
            and rec.status in (StepStatus.DONE, StepStatus.FAILED, StepStatus.RUNNING)
        ]
        # Traffic first: flags back in seconds, data cleaned up after.
        todo.sort(key=lambda s: 0 if s.kind == "flag" else 1)
        flags_done = False
        for step in todo:
            if step.kind != "flag" and not flags_done:
                result.seconds_to_flags = time.monotonic() - started
                flags_done = True
            assert step.spec is not None
            ids = {"tenant": tenant.id, "wave": tenant.wave, "phase": step.phase, "step": step.key}
            t0 = time.monotonic()
            try:
                details = step_for(step.spec).revert(ctx, records[step.key].details)
            except MigrateError as exc:
                env.ledger.append(
                    conn, env.entry(run_id, "revert_failed", "error", details={"error": str(exc)}, **ids)
                )
                raise
            with conn.transaction():
                env.control.set_status(
                    conn, tenant.id, step, StepStatus.REVERTED, run_id=run_id, details=details
                )
                env.ledger.append(conn, env.entry(run_id, "reverted", "ok", details=details, **ids))
            log.info("step_reverted", step=step.key, phase=step.phase)
            result.steps.append(StepResult(step.key, step.kind, "reverted", time.monotonic() - t0, details))
        if result.seconds_to_flags is None:
            result.seconds_to_flags = time.monotonic() - started
        # Rollback points after the target point are no longer passed.
        marker = [s.step_id for s in plan.steps].index(f"@{point}")
        for step in plan.steps[marker + 1 :]:
            if step.is_point and step.key in records:
                env.control.set_status(conn, tenant.id, step, StepStatus.REVERTED, run_id=run_id)
        env.control.finish_run(conn, run_id, "ok")
    result.seconds_total = time.monotonic() - started
    return result
