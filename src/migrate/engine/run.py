"""The engine: the only place that sequences side effects.

For each tenant (``jobs`` at a time, on threads: the work is in the databases):
hold the tenant's lock, then walk its planned steps in order. A step already
``done`` is skipped; any other is marked ``running``, applied, verified, and
marked ``done`` together with its ledger entry in one transaction. A passing
fault (engine/retry.py) reconnects and runs apply and verify again; any other
failure marks the step ``failed``, writes a ``failed`` ledger entry and stops
that tenant only. Progress goes to the ``progress`` sink the caller passes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID, uuid4

import psycopg
from psycopg import pq

from migrate.control.ledger import Entry, Ledger
from migrate.control.store import ControlStore
from migrate.engine.retry import RetryPolicy, retrying
from migrate.errors import MigrateError, StepFailed, TenantLocked
from migrate.log import get_logger, redact
from migrate.plan.model import Plan, PlannedStep, StepStatus, TenantPlan
from migrate.playbook.loader import LoadedPlaybook
from migrate.playbook.model import Tenant
from migrate.ports import FlagProvider
from migrate.schemagen.reflect import reflect
from migrate.steps import StepContext, step_for
from migrate.steps.context import Details, ProgressEvent, ProgressSink, no_progress
from migrate.steps.order import select_in_load_order

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
    retry: RetryPolicy = field(default_factory=RetryPolicy)

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


class TargetConnections:
    """Target connections handed from one tenant to the next: a connect per worker, not per tenant.

    A connection comes back only idle, healthy and with the tenant's lock released;
    anything else is closed. Steps change no session state (``SET LOCAL`` only).
    """

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._idle: list[psycopg.Connection[Any]] = []
        self._mutex = threading.Lock()

    def take(self) -> psycopg.Connection[Any]:
        with self._mutex:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and not conn.broken:
                    return conn
        return self._connect()

    def give(self, conn: psycopg.Connection[Any]) -> None:
        if conn.closed or conn.broken or conn.info.transaction_status != pq.TransactionStatus.IDLE:
            with suppress(psycopg.Error):
                conn.close()
            return
        with self._mutex:
            self._idle.append(conn)

    def close(self) -> None:
        with self._mutex:
            idle, self._idle = self._idle, []
        for conn in idle:
            with suppress(psycopg.Error):
                conn.close()


class TenantSession:
    """One tenant's connections, its lock and its tables, as the context its steps get.

    The target connection holds the tenant's advisory lock and does the work, so
    whatever is written is written under the lock. After a lost connection,
    ``reconnect`` opens new connections and takes the lock again — or raises
    TenantLocked if another runner took the tenant in between; the steps then
    resume from what the control schema says.
    """

    def __init__(
        self,
        env: Environment,
        tenant: Tenant,
        run_id: UUID,
        progress: ProgressSink,
        targets: TargetConnections,
    ) -> None:
        self.env = env
        self.tenant = tenant
        self.run_id = run_id
        self.progress = progress
        self.targets = targets
        self._ctx: StepContext | None = None

    @property
    def ctx(self) -> StepContext:
        assert self._ctx is not None, "the session is not open"
        return self._ctx

    def _connect(self) -> tuple[psycopg.Connection[Any], psycopg.Connection[Any]]:
        target = self.targets.take()
        try:
            self.env.control.lock_tenant(target, self.tenant.id)
            source = self.env.connect_source(self.tenant)
        except BaseException:
            target.close()
            raise
        return target, source

    def open(self) -> StepContext:
        pb = self.env.loaded.playbook
        target, source = self._connect()
        try:
            specs = pb.table_specs()
            tables = select_in_load_order(
                reflect(source, pb.source.schema_),
                None if specs is None else [t.name for t in specs],
                schema=pb.source.schema_,
                exclude=pb.global_tables,
            )
        except BaseException:
            self._close(target, source)
            raise
        self._ctx = StepContext(
            run_id=self.run_id,
            tenant=self.tenant,
            source=source,
            target=target,
            source_schema=pb.source.schema_,
            target_schema=pb.target.schema_,
            tables=tuple(tables),
            control=self.env.control,
            flags=self.env.flags,
            log=get_logger(run_id=str(self.run_id), tenant=self.tenant.id, wave=self.tenant.wave),
            keys={t.name: t.key for t in specs or () if t.key},
            progress=self.progress,
        )
        return self._ctx

    def reconnect(self) -> StepContext:
        old = self.ctx
        self._close(old.target, old.source)
        target, source = self._connect()
        self._ctx = replace(old, target=target, source=source)
        old.log.info("tenant_reconnected")
        return self._ctx

    def _close(self, target: psycopg.Connection[Any], source: psycopg.Connection[Any]) -> None:
        for conn in (source, target):  # closing the target lets the lock go
            with suppress(psycopg.Error):  # already gone
                conn.close()

    def close(self) -> None:
        if self._ctx is None:
            return
        target, source = self._ctx.target, self._ctx.source
        self._ctx = None
        with suppress(psycopg.Error):
            source.close()
        try:
            self.env.control.unlock_tenant(target, self.tenant.id)
        except psycopg.Error:
            with suppress(psycopg.Error):
                target.close()  # the lock goes with the session
            return
        self.targets.give(target)


@contextmanager
def tenant_session(
    env: Environment, tenant: Tenant, run_id: UUID, progress: ProgressSink = no_progress
) -> Iterator[StepContext]:
    """Connections, the tenant's lock and its tables, as one context for its steps."""
    targets = TargetConnections(env.connect_target)
    session = TenantSession(env, tenant, run_id, progress, targets)
    try:
        yield session.open()
    finally:
        session.close()
        targets.close()


def _translate(exc: Exception, where: str) -> MigrateError:
    if isinstance(exc, MigrateError):
        if exc.where is None:
            exc.where = where
        return exc
    # psycopg messages name tables and columns, never the DSN; redact anyway.
    return StepFailed(redact(str(exc).strip()), where=where)


def _record_failure(
    session: TenantSession,
    env: Environment,
    step: PlannedStep,
    error: MigrateError,
    ids: dict[str, str],
    details: Details,
) -> None:
    """Mark the step failed and ledger it with apply's figures (a failed validation's are the
    evidence), on a new connection if the old one is gone."""
    try:
        conn = session.ctx.target
        if conn.closed or conn.broken:
            conn = session.reconnect().target
        with conn.transaction():
            env.control.set_status(
                conn,
                session.tenant.id,
                step,
                StepStatus.FAILED,
                run_id=session.run_id,
                error=str(error),
                details=details or None,
            )
            env.ledger.append(
                conn,
                env.entry(session.run_id, "failed", "error", details={**details, "error": str(error)}, **ids),
            )
    except (MigrateError, psycopg.Error) as exc:
        # The step stays 'running' in the control schema: the next run redoes it, as after a kill.
        session.ctx.log.error("failure_not_recorded", step=step.key, error=redact(str(exc)))


def _run_step(session: TenantSession, env: Environment, step: PlannedStep) -> StepResult:
    control, ledger = env.control, env.ledger
    ctx = session.ctx
    tenant = ctx.tenant
    log = ctx.log.bind(phase=step.phase, step=step.step_id)
    ids = {"tenant": tenant.id, "wave": tenant.wave, "phase": step.phase, "step": step.key}
    if step.is_point:
        with ctx.target.transaction():
            control.set_status(ctx.target, tenant.id, step, StepStatus.DONE, run_id=ctx.run_id)
            ledger.append(ctx.target, env.entry(ctx.run_id, "point_passed", "ok", **ids))
        return StepResult(step.key, step.kind, "passed")
    assert step.spec is not None
    impl = step_for(step.spec)
    control.set_status(ctx.target, tenant.id, step, StepStatus.RUNNING, run_id=ctx.run_id)
    log.info("step_started")
    started = time.monotonic()
    details: Details = {}
    try:
        # apply and verify are idempotent: after a passing fault they run again on new
        # connections, and the backfill resumes after its last committed checkpoint.
        for attempt in retrying(env.retry, log):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    session.reconnect()
                step_ctx = replace(session.ctx, log=log)
                details = impl.apply(step_ctx)
                impl.verify(step_ctx, details)
    except Exception as exc:
        error = _translate(exc, f"{tenant.id}/{step.key}")
        seconds = time.monotonic() - started
        _record_failure(session, env, step, error, ids, details)
        log.error("step_failed", error=str(error), seconds=round(seconds, 3))
        if not isinstance(exc, MigrateError | psycopg.Error):
            raise  # a bug: let it surface as an internal error, the state says "failed"
        raise error from exc
    seconds = time.monotonic() - started
    conn = session.ctx.target
    with conn.transaction():
        control.set_status(conn, tenant.id, step, StepStatus.DONE, run_id=ctx.run_id, details=details)
        ledger.append(
            conn,
            env.entry(ctx.run_id, "applied", "ok", details={**details, "seconds": round(seconds, 3)}, **ids),
        )
    log.info("step_applied", seconds=round(seconds, 3))
    return StepResult(step.key, step.kind, "applied", seconds, details)


def run_tenant(
    env: Environment,
    plan: TenantPlan,
    run_id: UUID,
    progress: ProgressSink = no_progress,
    targets: TargetConnections | None = None,
) -> TenantResult:
    result = TenantResult(plan.tenant.id, "done")
    if not plan.remaining:
        result.steps = [StepResult(s.key, s.kind, "skipped") for s in plan.steps]
        return result
    progress(ProgressEvent("tenant_started", plan.tenant.id))
    own = targets is None
    targets = targets or TargetConnections(env.connect_target)
    session = TenantSession(env, plan.tenant, run_id, progress, targets)
    try:
        ctx = session.open()
        # Progress is read again under the lock: another runner may have moved on.
        done = env.control.progress(ctx.target, [plan.tenant.id])
        for step in plan.steps:
            if done.get((plan.tenant.id, step.key)) is StepStatus.DONE:
                result.steps.append(StepResult(step.key, step.kind, "skipped"))
                continue
            result.steps.append(_run_step(session, env, step))
    except MigrateError as exc:
        result.outcome = "locked" if isinstance(exc, TenantLocked) else "failed"
        result.error = exc
    except psycopg.Error as exc:
        result.outcome, result.error = "failed", _translate(exc, plan.tenant.id)
    finally:
        session.close()
        if own:
            targets.close()
        progress(ProgressEvent("tenant_finished", plan.tenant.id, outcome=result.outcome))
    return result


def run(
    env: Environment,
    plan: Plan,
    *,
    command: str,
    jobs: int = 1,
    progress: ProgressSink = no_progress,
) -> RunResult:
    """Run every tenant of the plan (``jobs`` at a time); each tenant's failure is its own."""
    run_id = uuid4()
    targets = TargetConnections(env.connect_target)
    try:
        return _run(env, plan, run_id, targets, command=command, jobs=jobs, progress=progress)
    finally:
        targets.close()


def _run(
    env: Environment,
    plan: Plan,
    run_id: UUID,
    targets: TargetConnections,
    *,
    command: str,
    jobs: int,
    progress: ProgressSink,
) -> RunResult:
    conn = targets.take()
    try:
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
    finally:
        targets.give(conn)
    log = get_logger(run_id=str(run_id))
    log.info("run_started", tenants=len(plan.tenants), jobs=jobs)
    progress(ProgressEvent("run_started", tenants=sum(1 for tp in plan.tenants if tp.remaining)))
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="tenant") as pool:
        results = list(pool.map(lambda tp: run_tenant(env, tp, run_id, progress, targets), plan.tenants))
    outcome = "ok" if all(r.outcome == "done" for r in results) else "failed"
    conn = targets.take()
    try:
        env.control.finish_run(conn, run_id, outcome)
        env.ledger.append(
            conn,
            env.entry(run_id, "run_finished", outcome, details={r.tenant: r.outcome for r in results}),
        )
    finally:
        targets.give(conn)
    log.info("run_finished", outcome=outcome)
    return RunResult(run_id, results)
