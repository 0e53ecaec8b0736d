"""The engine: the only place that sequences side effects.

For each tenant (``jobs`` at a time): hold the tenant's lock, then walk its
planned steps in order. A step already ``done`` is skipped; any other is marked
``running``, applied, verified, and marked ``done`` together with its ledger
entry in one transaction. A failure marks the step ``failed``, writes a
``failed`` ledger entry and stops that tenant only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID, uuid4

import psycopg

from migrate.control.ledger import Entry, Ledger
from migrate.control.store import ControlStore
from migrate.errors import MigrateError, StepFailed, TenantLocked
from migrate.log import get_logger, redact
from migrate.plan.model import Plan, PlannedStep, StepStatus, TenantPlan
from migrate.playbook.loader import LoadedPlaybook
from migrate.playbook.model import Tenant
from migrate.ports import FlagProvider
from migrate.schemagen.reflect import SourceTable, reflect, select_tables
from migrate.steps import StepContext, step_for

Connect = Callable[[], psycopg.Connection[Any]]


@dataclass
class Environment:
    """What the api wires in: connections, flags, who is acting."""

    loaded: LoadedPlaybook
    connect_target: Connect
    connect_source: Callable[[Tenant], psycopg.Connection[Any]]
    flags: FlagProvider
    actor: str
    host: str
    pid: int

    @property
    def control(self) -> ControlStore:
        pb = self.loaded.playbook
        return ControlStore(pb.target.control_schema, pb.name)

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.loaded.playbook.target.control_schema)

    def entry(self, run_id: UUID | None, action: str, outcome: str, **kw: Any) -> Entry:
        pb = self.loaded.playbook
        return Entry(
            actor=self.actor,
            host=self.host,
            playbook=pb.name,
            playbook_digest=self.loaded.digest,
            action=action,
            outcome=outcome,
            run_id=run_id,
            **kw,
        )


@dataclass
class StepResult:
    key: str
    kind: str
    outcome: str  # applied | skipped | failed | passed (rollback point) | reverted
    seconds: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class TenantResult:
    tenant: str
    outcome: str  # done | failed | locked
    steps: list[StepResult] = field(default_factory=list)
    error: MigrateError | None = None

    @property
    def rows_copied_now(self) -> int:
        return sum(int(s.details.get("copied_now", 0)) for s in self.steps if s.outcome == "applied")


@dataclass
class RunResult:
    run_id: UUID
    tenants: list[TenantResult]

    @property
    def ok(self) -> bool:
        return all(t.outcome == "done" for t in self.tenants)


@contextmanager
def tenant_session(env: Environment, tenant: Tenant, run_id: UUID) -> Iterator[StepContext]:
    """Connections, the tenant's lock and its tables, as one context for its steps."""
    pb = env.loaded.playbook
    with ExitStack() as stack:
        target = stack.enter_context(env.connect_target())
        stack.enter_context(env.control.tenant_lock(target, tenant.id))
        source = stack.enter_context(env.connect_source(tenant))
        specs = pb.table_specs()
        tables: tuple[SourceTable, ...] = tuple(
            select_tables(
                reflect(source, pb.source.schema_),
                None if specs is None else [t.name for t in specs],
                schema=pb.source.schema_,
            )
        )
        yield StepContext(
            run_id=run_id,
            tenant=tenant,
            source=source,
            target=target,
            source_schema=pb.source.schema_,
            target_schema=pb.target.schema_,
            tables=tables,
            control=env.control,
            flags=env.flags,
            log=get_logger(run_id=str(run_id), tenant=tenant.id, wave=tenant.wave),
        )


def _translate(exc: Exception, where: str) -> MigrateError:
    if isinstance(exc, MigrateError):
        if exc.where is None:
            exc.where = where
        return exc
    # psycopg messages name tables and columns, never the DSN; redact anyway.
    return StepFailed(redact(str(exc).strip()), where=where)


def _run_step(ctx: StepContext, env: Environment, step: PlannedStep) -> StepResult:
    control, ledger, conn = env.control, env.ledger, ctx.target
    tenant = ctx.tenant
    log = ctx.log.bind(phase=step.phase, step=step.step_id)
    ids = {"tenant": tenant.id, "wave": tenant.wave, "phase": step.phase, "step": step.key}
    if step.is_point:
        with conn.transaction():
            control.set_status(conn, tenant.id, step, StepStatus.DONE, run_id=ctx.run_id)
            ledger.append(conn, env.entry(ctx.run_id, "point_passed", "ok", **ids))
        return StepResult(step.key, step.kind, "passed")
    assert step.spec is not None
    impl = step_for(step.spec)
    control.set_status(conn, tenant.id, step, StepStatus.RUNNING, run_id=ctx.run_id)
    log.info("step_started")
    started = time.monotonic()
    try:
        details = impl.apply(replace(ctx, log=log))
        impl.verify(ctx, details)
    except Exception as exc:
        error = _translate(exc, f"{tenant.id}/{step.key}")
        seconds = time.monotonic() - started
        with conn.transaction():
            control.set_status(conn, tenant.id, step, StepStatus.FAILED, run_id=ctx.run_id, error=str(error))
            ledger.append(
                conn, env.entry(ctx.run_id, "failed", "error", details={"error": str(error)}, **ids)
            )
        log.error("step_failed", error=str(error), seconds=round(seconds, 3))
        if not isinstance(exc, MigrateError | psycopg.Error):
            raise  # a bug: let it surface as an internal error, the state says "failed"
        raise error from exc
    seconds = time.monotonic() - started
    with conn.transaction():
        control.set_status(conn, tenant.id, step, StepStatus.DONE, run_id=ctx.run_id, details=details)
        ledger.append(
            conn,
            env.entry(ctx.run_id, "applied", "ok", details={**details, "seconds": round(seconds, 3)}, **ids),
        )
    log.info("step_applied", seconds=round(seconds, 3))
    return StepResult(step.key, step.kind, "applied", seconds, details)


def run_tenant(env: Environment, plan: TenantPlan, run_id: UUID) -> TenantResult:
    result = TenantResult(plan.tenant.id, "done")
    if not plan.remaining:
        result.steps = [StepResult(s.key, s.kind, "skipped") for s in plan.steps]
        return result
    try:
        with tenant_session(env, plan.tenant, run_id) as ctx:
            # Progress is read again under the lock: another runner may have moved on.
            progress = env.control.progress(ctx.target, [plan.tenant.id])
            for step in plan.steps:
                if progress.get((plan.tenant.id, step.key)) is StepStatus.DONE:
                    result.steps.append(StepResult(step.key, step.kind, "skipped"))
                    continue
                result.steps.append(_run_step(ctx, env, step))
    except MigrateError as exc:
        result.outcome = "locked" if isinstance(exc, TenantLocked) else "failed"
        result.error = exc
    except psycopg.Error as exc:
        result.outcome, result.error = "failed", _translate(exc, plan.tenant.id)
    return result


def run(env: Environment, plan: Plan, *, command: str, jobs: int = 1) -> RunResult:
    """Run every tenant of the plan; each tenant's failure is its own."""
    run_id = uuid4()
    with env.connect_target() as conn:
        env.control.start_run(
            conn,
            run_id=run_id,
            digest=env.loaded.digest,
            command=command,
            actor=env.actor,
            host=env.host,
            pid=env.pid,
            dry_run=False,
        )
        env.ledger.append(conn, env.entry(run_id, "run_started", "ok", details={"command": command}))
    log = get_logger(run_id=str(run_id))
    log.info("run_started", tenants=len(plan.tenants), jobs=jobs)
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="tenant") as pool:
        results = list(pool.map(lambda tp: run_tenant(env, tp, run_id), plan.tenants))
    outcome = "ok" if all(r.outcome == "done" for r in results) else "failed"
    with env.connect_target() as conn:
        env.control.finish_run(conn, run_id, outcome)
        env.ledger.append(
            conn,
            env.entry(run_id, "run_finished", outcome, details={r.tenant: r.outcome for r in results}),
        )
    log.info("run_finished", outcome=outcome)
    return RunResult(run_id, results)
