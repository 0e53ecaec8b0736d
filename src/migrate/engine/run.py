"""The engine: the only place that sequences side effects.

Waves go in order (plan/waves.py says when one may start: every earlier wave
done, its gate approved). Within a wave, tenants go ``jobs`` at a time on
threads (the work is in the databases). For each tenant: hold its lock, then
walk its planned steps in order. A step already ``done`` is skipped; any other
is marked ``running``, applied, verified, and marked ``done`` together with its
ledger entry in one transaction. A step found ``running`` under our lock was
left by a runner that died (its lock died with it): it is ledgered as
``resumed`` and applied again, which is safe because apply is idempotent. A
passing fault (engine/retry.py) reconnects and runs apply and verify again;
any other failure marks the step ``failed``, writes a ``failed`` ledger entry
and stops that tenant only. ``--max-failures K`` stops starting tenants after K
failures; a stop request (Ctrl-C) ends every tenant at its next safe point.

**Rehearsal** (``dry_run``) is the same walk with other sinks: each tenant's
steps run inside one target transaction that is rolled back at the end (the
steps' own transactions become savepoints), flag flips go to a recording
provider (api wires it in), and the only trace left is one ``rehearsed``
ledger entry per step, written on a separate connection. Run state,
checkpoints and holders are untouched.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID, uuid4

import psycopg

from migrate.control.store import StepRecord
from migrate.engine.retry import RetryPolicy, retrying
from migrate.engine.session import (
    Connect,
    Environment,
    TargetConnections,
    TenantSession,
    tenant_session,
)
from migrate.engine.sinks import RehearsalSink, Sink
from migrate.errors import ArgumentError, Interrupted, MigrateError, StepFailed, TenantLocked
from migrate.log import get_logger, redact
from migrate.plan.model import Plan, PlannedStep, StepStatus, TenantPlan, WavePlan
from migrate.plan.waves import WaveStage, wave_states
from migrate.steps import step_for
from migrate.steps.context import Details, ProgressEvent, ProgressSink, no_progress

__all__ = [
    "Connect",
    "Environment",
    "RunOptions",
    "RunResult",
    "StepResult",
    "TargetConnections",
    "TenantResult",
    "WaveResult",
    "run",
    "tenant_session",
]


@dataclass(frozen=True)
class RunOptions:
    command: str = "run"
    jobs: int = 1
    dry_run: bool = False
    max_failures: int | None = None  # stop starting tenants after this many failed
    replan: bool = False  # accept a playbook that changed in substance (ledgered)
    stop: threading.Event = field(default_factory=threading.Event)  # set: stop at the next safe point


@dataclass
class StepResult:
    key: str
    kind: str
    outcome: str  # applied | rehearsed | skipped | failed | passed (rollback point) | reverted | stopped
    seconds: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class TenantResult:
    tenant: str
    outcome: str  # done | failed | locked | stopped | waiting | not started
    steps: list[StepResult] = field(default_factory=list)
    error: MigrateError | None = None
    wave: str = ""
    note: str | None = None  # why a tenant waits or did not start
    seconds: float = 0.0

    @property
    def rows_copied_now(self) -> int:
        return sum(
            int(s.details.get("copied_now", 0)) for s in self.steps if s.outcome in ("applied", "rehearsed")
        )


@dataclass
class WaveResult:
    name: str
    stage: str  # what plan/waves.py said when the wave's turn came (done, open, waiting …)
    note: str | None = None


@dataclass
class RunResult:
    run_id: UUID
    tenants: list[TenantResult]
    dry_run: bool = False
    waves: list[WaveResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    replanned: tuple[str, str] | None = None  # (old digest, new digest)
    seconds: float = 0.0
    digest: str = ""  # the playbook version run

    @property
    def ok(self) -> bool:
        return all(t.outcome == "done" for t in self.tenants)

    @property
    def stopped(self) -> bool:
        return any(t.outcome == "stopped" for t in self.tenants)

    @property
    def outcome(self) -> str:
        if self.ok:
            return "ok"
        if any(t.outcome in ("failed", "locked") for t in self.tenants):
            return "failed"
        return "stopped" if self.stopped else "waiting"


def _translate(exc: Exception, where: str) -> MigrateError:
    if isinstance(exc, MigrateError):
        if exc.where is None:
            exc.where = where
        return exc
    # psycopg messages name tables and columns, never the DSN; redact anyway.
    return StepFailed(redact(str(exc).strip()), where=where)


def _run_step(
    session: TenantSession,
    env: Environment,
    step: PlannedStep,
    sink: Sink,
    was: StepRecord | None,
    results: list[StepResult],
) -> None:
    """Run one step and append its result to ``results`` — a failed or stopped one too, with the
    figures apply gathered (a failed validation's are the evidence), before raising."""
    ctx = session.ctx
    log = ctx.log.bind(phase=step.phase, step=step.step_id)
    if step.is_point:
        sink.passed(step)
        results.append(StepResult(step.key, step.kind, "passed"))
        return
    assert step.spec is not None
    impl = step_for(step.spec)
    sink.started(step, was if was is not None and was.status is StepStatus.RUNNING else None)
    log.info("step_started", dry_run=ctx.dry_run)
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
                # In a rehearsal, a savepoint: a failing step leaves the tenant's transaction usable.
                with step_ctx.target.transaction() if ctx.dry_run else nullcontext():
                    details = impl.apply(step_ctx)
                    impl.verify(step_ctx, details)
    except Interrupted as exc:
        exc.where = exc.where or f"{ctx.tenant.id}/{step.key}"
        sink.stopped(step, {**details, "why": exc.message})
        log.warning("step_stopped", why=exc.message)
        results.append(StepResult(step.key, step.kind, "stopped", time.monotonic() - started, details))
        raise
    except Exception as exc:
        error = _translate(exc, f"{ctx.tenant.id}/{step.key}")
        seconds = time.monotonic() - started
        results.append(StepResult(step.key, step.kind, "failed", seconds, details, error=str(error)))
        sink.failed(step, error, details)
        log.error("step_failed", error=str(error), seconds=round(seconds, 3))
        if not isinstance(exc, MigrateError | psycopg.Error):
            raise  # a bug: let it surface as an internal error, the state says "failed"
        raise error from exc
    seconds = time.monotonic() - started
    sink.applied(step, details, seconds)
    log.info("step_rehearsed" if ctx.dry_run else "step_applied", seconds=round(seconds, 3))
    results.append(
        StepResult(step.key, step.kind, "rehearsed" if ctx.dry_run else "applied", seconds, details)
    )


class _Budget:
    """Failures so far against ``--max-failures``, shared by the tenants' threads."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.failures = 0
        self._mutex = threading.Lock()

    def add_failure(self) -> None:
        with self._mutex:
            self.failures += 1

    @property
    def spent(self) -> bool:
        with self._mutex:
            return self.limit is not None and self.failures >= self.limit


def run_tenant(
    env: Environment,
    plan: TenantPlan,
    run_id: UUID,
    progress: ProgressSink = no_progress,
    targets: TargetConnections | None = None,
    options: RunOptions | None = None,
) -> TenantResult:
    options = options or RunOptions()
    tenant = plan.tenant
    result = TenantResult(tenant.id, "done", wave=tenant.wave)
    if not plan.remaining:
        result.steps = [StepResult(s.key, s.kind, "skipped") for s in plan.steps]
        return result
    if options.stop.is_set():
        result.outcome, result.note = "not started", "the run was asked to stop"
        return result
    started = time.monotonic()
    progress(ProgressEvent("tenant_started", tenant.id))
    own = targets is None
    targets = targets or TargetConnections(env.connect_target)
    # A rehearsal's own rows in the control schema vanish with its transaction; a run id per
    # tenant keeps concurrent rehearsals from waiting on each other's uncommitted rows.
    state_run = uuid.uuid5(run_id, tenant.id) if options.dry_run else run_id
    session = TenantSession(
        env,
        tenant,
        state_run,
        progress,
        targets,
        command=options.command,
        dry_run=options.dry_run,
        stopping=options.stop.is_set,
    )
    sink = RehearsalSink(session, env, run_id) if options.dry_run else Sink(session, env)
    try:
        ctx = session.open()
        # Progress is read again under the lock: another runner may have moved on.
        records = {r.step_key: r for r in env.control.steps(ctx.target, [tenant.id])}
        rehearsal = ctx.target.transaction(force_rollback=True) if options.dry_run else nullcontext()
        with rehearsal:
            for step in plan.steps:
                record = records.get(step.key)
                if record is not None and record.status is StepStatus.DONE:
                    result.steps.append(StepResult(step.key, step.kind, "skipped"))
                    continue
                if options.stop.is_set():
                    raise Interrupted(
                        "stopped on request before " + step.key, where=f"{tenant.id}/{step.key}"
                    )
                _run_step(session, env, step, sink, record, result.steps)
    except Interrupted as exc:
        result.outcome, result.error = "stopped", exc
    except MigrateError as exc:
        result.outcome = "locked" if isinstance(exc, TenantLocked) else "failed"
        result.error = exc
    except psycopg.Error as exc:
        result.outcome, result.error = "failed", _translate(exc, tenant.id)
    finally:
        session.close()
        if own:
            targets.close()
        result.seconds = time.monotonic() - started
        progress(ProgressEvent("tenant_finished", tenant.id, outcome=result.outcome))
    return result


def _check_version(
    env: Environment, conn: psycopg.Connection[Any], run_id: UUID, options: RunOptions
) -> tuple[list[str], tuple[str, str] | None]:
    """The playbook cannot change under a run: (warnings, replanned) or an ArgumentError."""
    digest = env.loaded.digest
    accepted = env.control.accepted_digest(conn)
    if accepted is None:
        if not options.dry_run:
            env.control.accept_digest(conn, digest, env.actor)
        return [], None
    old, since, by = accepted
    if old == digest:
        return [], None
    changed = (
        f"playbook {env.loaded.playbook.name} changed in substance since its runs began "
        f"(version {old[:12]}, accepted {since:%Y-%m-%d %H:%M} by {by}; now {digest[:12]})"
    )
    if options.dry_run:
        return [f"{changed}: the real run needs --replan"], None
    if not options.replan:
        raise ArgumentError(
            changed,
            where=str(env.loaded.path),
            hint=f"review 'migrate plan {env.loaded.path}', then run again with --replan "
            "(the replan is ledgered); done steps stay done",
        )
    with conn.transaction():
        env.control.accept_digest(conn, digest, env.actor)
        env.ledger.append(conn, env.entry(run_id, "replanned", "ok", details={"from": old, "to": digest}))
    return [], (old, digest)


def _progress_of(
    env: Environment, targets: TargetConnections, plan: Plan, rehearsed: set[str]
) -> dict[tuple[str, str], StepStatus]:
    """Every tenant's step states now; in a rehearsal, the tenants rehearsed count as done."""
    conn = targets.take()
    try:
        progress = env.control.progress(conn)
    finally:
        targets.give(conn)
    for tenant in rehearsed:
        progress.update({(tenant, key): StepStatus.DONE for key in plan.step_keys})
    return progress


def _gate_note(wave: WavePlan, stage: WaveStage, blocked_by: str | None, playbook: str) -> str:
    if stage is WaveStage.WAITING_FOR_APPROVAL:
        return f"wave {wave.name} waits for approval: migrate approve {playbook} --wave {wave.name}"
    return f"wave {wave.name} waits for wave {blocked_by} to finish every phase"


def run(
    env: Environment,
    plan: Plan,
    options: RunOptions | None = None,
    *,
    progress: ProgressSink = no_progress,
) -> RunResult:
    """Run the plan's tenants wave by wave (``jobs`` at a time); each tenant's failure is its own."""
    options = options or RunOptions()
    if options.dry_run:
        # A reconnect would lose the rehearsal's transaction: one attempt, the fault reported.
        env = replace(env, retry=RetryPolicy(attempts=1))
    run_id = uuid4()
    targets = TargetConnections(env.connect_target)
    try:
        return _run(env, plan, run_id, targets, options, progress)
    finally:
        targets.close()


def _run(
    env: Environment,
    plan: Plan,
    run_id: UUID,
    targets: TargetConnections,
    options: RunOptions,
    progress: ProgressSink,
) -> RunResult:
    started = time.monotonic()
    result = RunResult(run_id, [], dry_run=options.dry_run, digest=env.loaded.digest)
    conn = targets.take()
    try:
        result.warnings, result.replanned = _check_version(env, conn, run_id, options)
        approved = set(env.control.approvals(conn))
        if not options.dry_run:
            with conn.transaction():
                env.control.start_run(
                    conn,
                    run_id=run_id,
                    digest=env.loaded.digest,
                    command=options.command,
                    actor=env.actor,
                    host=env.host,
                    pid=env.pid,
                    dry_run=False,
                )
                env.ledger.append(
                    conn, env.entry(run_id, "run_started", "ok", details={"command": options.command})
                )
    finally:
        targets.give(conn)
    log = get_logger(run_id=str(run_id))
    log.info("run_started", tenants=len(plan.tenants), jobs=options.jobs, dry_run=options.dry_run)
    progress(ProgressEvent("run_started", tenants=sum(1 for tp in plan.tenants if tp.remaining)))
    budget = _Budget(options.max_failures)
    rehearsed: set[str] = set()
    playbook = str(env.loaded.path)

    def one(tp: TenantPlan) -> TenantResult:
        if budget.spent:
            return TenantResult(
                tp.tenant.id,
                "not started",
                wave=tp.tenant.wave,
                note=f"--max-failures {options.max_failures} reached",
            )
        outcome = run_tenant(env, tp, run_id, progress, targets, options)
        if outcome.outcome == "failed":
            budget.add_failure()
        return outcome

    for wave in plan.waves:
        tenants = plan.in_wave(wave.name)
        if not tenants:
            continue
        states = {
            s.wave.name: s for s in wave_states(plan, _progress_of(env, targets, plan, rehearsed), approved)
        }
        state = states[wave.name]
        note = None if state.may_start else _gate_note(wave, state.stage, state.blocked_by, playbook)
        result.waves.append(WaveResult(wave.name, state.stage.value, note))
        if note is not None and any(tp.remaining for tp in tenants):
            if not options.dry_run:
                log.warning("wave_waiting", wave=wave.name, why=note)
                result.tenants.extend(
                    TenantResult(tp.tenant.id, "waiting", wave=wave.name, note=note)
                    if tp.remaining
                    else TenantResult(
                        tp.tenant.id,
                        "done",
                        [StepResult(s.key, s.kind, "skipped") for s in tp.steps],
                        wave=wave.name,
                    )
                    for tp in tenants
                )
                continue
            result.warnings.append(f"a real run would stop here: {note}")
        with ThreadPoolExecutor(max_workers=max(1, options.jobs), thread_name_prefix="tenant") as pool:
            done = list(pool.map(one, tenants))
        result.tenants.extend(done)
        rehearsed.update(t.tenant for t in done if t.outcome == "done")
    result.seconds = time.monotonic() - started
    if not options.dry_run:
        conn = targets.take()
        try:
            with conn.transaction():
                env.control.finish_run(conn, run_id, result.outcome)
                env.ledger.append(
                    conn,
                    env.entry(
                        run_id,
                        "run_finished",
                        result.outcome,
                        details={r.tenant: r.outcome for r in result.tenants},
                    ),
                )
        finally:
            targets.give(conn)
    log.info("run_finished", outcome=result.outcome, dry_run=options.dry_run)
    return result
