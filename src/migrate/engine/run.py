"""The engine: the only place that sequences side effects.

Waves go in order (plan/waves.py says when one may start: every earlier wave
done, its gate approved). Within a wave, tenants go ``jobs`` at a time on
threads (the work is in the databases). For each tenant: hold its lock, then
walk its planned steps in order. A step already ``done`` is skipped; any other
is marked ``running``, applied, verified, and marked ``done`` together with its
ledger entry in one transaction. A step found ``running`` under our lock was
left by a runner that died (its lock died with it): it is ledgered as
``resumed`` and applied again, which is safe because apply is idempotent.
**No cut-over on a stale validation**: before a step that cuts over, every
validation step before it that an earlier run did is done again, unless the
source was frozen when it ran (its details say ``frozen``) — whatever stopped the
run in between (a failure, Ctrl-C, ``kill -9``), the source may have changed. A
passing fault (engine/retry.py) reconnects and runs apply and verify again;
any other failure marks the step ``failed``, writes a ``failed`` ledger entry
and stops that tenant only. ``--max-failures K`` stops starting tenants after K
failures; a stop request (Ctrl-C) ends every tenant at its next safe point.

**Targets by region.** A playbook with ``targets:`` has one shared database per
region, and each tenant goes to its region's (``Regions.of``). One run spans them
all: one run id; in each target a tenant goes to, the run's row, its
``run_started`` / ``run_finished`` entries (naming that target's tenants only: each
region's audit stays in that region), the accepted playbook version and the state and
ledger of its own tenants — no target ever holds another region's rows or records.
Waves span regions: the tenants of a wave run together whatever their region, and a
wave starts only when every tenant of the waves before it finished, read from the
target of each of them; a gate is open when it was approved in every target that
holds tenants of the wave. Before anything is written, the api checks every target
the run writes to (engine/residency.py, ``preflight``); each tenant's session checks
again on the connection that writes (``step_context``), and a tenant refused there
ends ``refused`` (exit 2), with nothing of it written.

**Rehearsal** is the same walk with another ``Record`` (engine/sinks.py),
chosen once by the api together with a recording flag provider: each tenant's
steps run inside one target transaction that is rolled back at the end (the
steps' own transactions become savepoints), and the only trace left is one
``rehearsed`` ledger entry per step, written on a separate connection. Run
state, checkpoints and holders are untouched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC
from typing import Any
from uuid import UUID, uuid4

import psycopg

from migrate.catalog.built import SharedSchemas
from migrate.control.rollbacks import UnfinishedRollback
from migrate.control.store import StepRecord
from migrate.engine.ahead import ReadAhead
from migrate.engine.retry import Outage, gave_up, retrying
from migrate.engine.rollback import rollback_command
from migrate.engine.session import (
    Environment,
    Regions,
    SourceRead,
    TargetConnections,
    TenantSession,
    read_source,
)
from migrate.engine.sinks import RunRecord, Sink
from migrate.errors import (
    ArgumentError,
    FlagStateUnknown,
    InputError,
    Interrupted,
    MigrateError,
    ResidencyRefused,
    TenantLocked,
    from_driver,
)
from migrate.log import get_logger
from migrate.plan.model import Plan, PlannedStep, StepStatus, TenantPlan, WavePlan
from migrate.plan.waves import WaveStage, approved_waves, gate_targets, wave_states
from migrate.steps import step_for
from migrate.steps.context import Details, ProgressEvent, ProgressSink, no_progress


@dataclass(frozen=True)
class RunOptions:
    command: str = "run"
    jobs: int = 1
    record: RunRecord = field(default_factory=RunRecord)  # a real run's traces, or a rehearsal's
    max_failures: int | None = None  # stop starting tenants after this many failed
    replan: bool = False  # accept a playbook that changed in substance (ledgered)
    stop: threading.Event = field(default_factory=threading.Event)  # set: stop at the next safe point
    streams: int = 1  # a tenant's backfill streams: set per wave from ``jobs`` (``tenant_streams``)


@dataclass
class StepResult:
    key: str
    kind: str
    outcome: str  # applied | rehearsed | skipped | failed | passed (rollback point) | reverted | stopped
    seconds: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    summary: str | None = None  # what the step did, in one line (the kind says it: StepKind.summary)
    moves: str = "nothing"  # what the step moves: traffic, data or nothing (its spec says)


@dataclass
class TenantResult:
    tenant: str
    # done | failed | unknown (a flag's state) | refused (residency, an unfinished rollback) | locked |
    # stopped | waiting | not started
    outcome: str
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
    def refused(self) -> tuple[TenantResult, ...]:
        """Tenants the residency guard refused: their target does not carry their region (exit 2)."""
        return tuple(t for t in self.tenants if t.outcome == "refused")

    @property
    def exit_code(self) -> int:
        """The CLI's exit code (README, 'Exit codes'): 130 stopped on request; 0 every tenant done;
        2 a tenant refused for its input, settings or state (a person must act first); else 1."""
        if self.stopped:
            return 130
        if self.ok:
            return 0
        if self.refused or any(isinstance(t.error, InputError) for t in self.tenants):
            return 2
        return 1

    @property
    def outcome(self) -> str:
        if self.ok:
            return "ok"
        if self.refused:
            return "refused"
        if any(t.outcome in ("failed", "locked") for t in self.tenants):
            return "failed"
        return "stopped" if self.stopped else "waiting"


def _run_step(
    session: TenantSession,
    env: Environment,
    step: PlannedStep,
    sink: Sink,
    record: RunRecord,
    was: StepRecord | None,
    results: list[StepResult],
) -> None:
    """Run one step and append its result to ``results`` — a failed or stopped one too, with the
    figures apply gathered (a failed validation's are the evidence), before raising."""
    ctx = session.ctx
    log = ctx.log.bind(phase=step.phase, step=step.step_id)
    if step.spec is None:
        sink.passed(step)
        results.append(StepResult(step.key, step.kind, "passed"))
        return
    impl = step_for(step.spec)
    moves = step.spec.moves
    sink.started(step, was if was is not None and was.status is StepStatus.RUNNING else None)
    log.info("step_started", rehearsal=record.rehearsal)
    started = time.monotonic()
    details: Details = {}
    where = f"{ctx.tenant.id}/{step.key}"
    outage = Outage()
    carry: Details = {}  # the same for every attempt of this step (StepContext.carry)

    def progressed(event: ProgressEvent) -> None:
        if event.kind == "chunk_copied":
            outage.progressed()  # the server answers: a later fault starts a new outage
        session.progress(event)

    def tell(line: str) -> None:
        session.progress(ProgressEvent("retrying", ctx.tenant.id, note=line))

    try:
        # apply and verify are idempotent: after a passing fault they run again on new
        # connections, and the backfill resumes after its last committed checkpoint.
        for attempt in retrying(env.retry, log, outage, what=where, tell=tell):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    session.reconnect()
                step_ctx = replace(session.ctx, log=log, progress=progressed, carry=carry)
                with record.step_transaction(step_ctx.target):
                    details = impl.apply(step_ctx)
                    impl.verify(step_ctx, details)
    except Interrupted as exc:
        stop = from_driver(exc, where)
        sink.stopped(step, {**details, "why": exc.message})
        log.warning("step_stopped", why=exc.message)
        results.append(
            StepResult(step.key, step.kind, "stopped", time.monotonic() - started, details, moves=moves)
        )
        if stop is exc:
            raise
        raise stop from exc
    except Exception as exc:
        error = gave_up(exc, outage, env.retry, where=where) or from_driver(exc, where)
        details = {**details, **error.details}
        seconds = time.monotonic() - started
        results.append(
            StepResult(step.key, step.kind, "failed", seconds, details, error=str(error), moves=moves)
        )
        sink.failed(step, error, details)
        log.error("step_failed", error=str(error), seconds=round(seconds, 3))
        if not isinstance(exc, MigrateError | psycopg.Error):
            raise  # a bug: let it surface as an internal error, the state says "failed"
        if error is exc:
            raise
        raise error from exc
    seconds = time.monotonic() - started
    sink.applied(step, details, seconds)
    log.info(f"step_{record.applied}", seconds=round(seconds, 3))
    results.append(
        StepResult(
            step.key,
            step.kind,
            record.applied,
            seconds,
            details,
            summary=impl.summary(details, reverted=False),
            moves=moves,
        )
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


def unfinished_rollback(env: Environment, left: UnfinishedRollback) -> ArgumentError:
    """Why a run refuses a tenant whose rollback did not finish, with the command that finishes it."""
    how = {"stopped": "was stopped", "failed": "failed"}.get(left.outcome or "", "was interrupted")
    return ArgumentError(
        f"the rollback of tenant '{left.tenant}' to '{left.point}' {how} before its end "
        f"(started {left.since.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC): its shared rows and flags may be "
        "half reverted while its steps still read done, so a run now would build on them",
        where=f"tenant {left.tenant}",
        hint="finish the rollback first: "
        + rollback_command(str(env.loaded.path), [left.tenant], left.point, discard=left.discard_writes)
        + "; then run again",
    )


def reads_catalog(plan: TenantPlan) -> bool:
    """The session reads the source's whole schema: a schema step is to run, which reuses it."""
    return any(s.kind == "schema" for s in plan.remaining)


def run_tenant(
    env: Environment,
    plan: TenantPlan,
    run_id: UUID,
    progress: ProgressSink = no_progress,
    targets: TargetConnections | None = None,
    options: RunOptions | None = None,
    shared_schemas: SharedSchemas | None = None,
    read_ahead: Callable[[], SourceRead | None] | None = None,
) -> TenantResult:
    """One tenant's remaining steps under its lock; ``read_ahead``: its source as the run read it
    ahead (engine/ahead.py), else the session reads it."""
    options = options or RunOptions()
    record = options.record
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
    session = TenantSession(
        env,
        tenant,
        record.state_run(run_id, tenant.id),
        progress,
        targets,
        command=options.command,
        record_holder=not record.rehearsal,
        stopping=options.stop.is_set,
        rehearsal=record.rehearsal,
        catalog=reads_catalog(plan),
        shared_schemas=shared_schemas,
        streams=options.streams,
        read_ahead=read_ahead,
    )
    sink = record.sink(session, env, run_id)
    first = next((s for s in plan.remaining if not s.is_point), None)  # the step that could not start

    def open_failed(conn: psycopg.Connection[Any], exc: BaseException) -> None:
        # A residency refusal writes nothing to a target outside the tenant's region, not even this.
        if first is not None and not isinstance(exc, ResidencyRefused):
            error = from_driver(exc, f"{tenant.id}/{first.key}")
            record.open_failed(env, conn, session.run_id, tenant, first, error)

    try:
        ctx = session.open(open_failed)
        # Read again under the lock: a rollback may have been stopped or killed since the run began.
        unfinished = env.rollbacks.unfinished(ctx.target, [tenant.id]).get(tenant.id)
        if unfinished is not None:
            raise unfinished_rollback(env, unfinished)
        # Progress is read again under the lock: another runner may have moved on.
        records = {r.step_key: r for r in env.control.steps(ctx.target, [tenant.id])}
        validated_now: set[str] = set()
        with record.tenant_transaction(ctx.target):
            for index, step in enumerate(plan.steps):
                was = records.get(step.key)
                if step.spec is not None and step.spec.cuts_over and not _done(was):
                    for stale in _stale_validations(plan.steps[:index], records, validated_now):
                        ctx.log.warning("validation_stale", step=stale.key, before=step.key)
                        _run_step(session, env, stale, sink, record, None, result.steps)
                        validated_now.add(stale.key)
                if was is not None and was.status is StepStatus.DONE:
                    result.steps.append(StepResult(step.key, step.kind, "skipped"))
                    continue
                if options.stop.is_set():
                    raise Interrupted(
                        "stopped on request before " + step.key, where=f"{tenant.id}/{step.key}"
                    )
                _run_step(session, env, step, sink, record, was, result.steps)
                validated_now.add(step.key)
    except Interrupted as exc:
        result.outcome, result.error = "stopped", exc
    except ResidencyRefused as exc:
        result.outcome, result.error = "refused", exc
    except MigrateError as exc:
        result.outcome = (
            "locked"
            if isinstance(exc, TenantLocked)
            else "unknown"
            if isinstance(exc, FlagStateUnknown)
            else "refused"
            if isinstance(exc, ArgumentError)
            else "failed"
        )
        result.error = exc
    except psycopg.Error as exc:
        result.outcome, result.error = "failed", from_driver(exc, tenant.id)
    finally:
        session.close()
        if own:
            targets.close()
        result.seconds = time.monotonic() - started
        progress(ProgressEvent("tenant_finished", tenant.id, outcome=result.outcome))
    return result


@contextmanager
def _taken(pool: TargetConnections) -> Iterator[psycopg.Connection[Any]]:
    conn = pool.take()
    try:
        yield conn
    finally:
        pool.give(conn)


def _refuse_changed(env: Environment, conn: psycopg.Connection[Any], options: RunOptions) -> None:
    """A playbook changed in substance since this target's runs began: refused without --replan."""
    accepted = env.control.accepted_digest(conn)
    if accepted is not None and accepted[0] != env.loaded.digest and not options.replan:
        _check_version(env, conn, uuid4(), options)  # raises in a real run, warns in a rehearsal


def _done(record: StepRecord | None) -> bool:
    return record is not None and record.status is StepStatus.DONE


def _stale_validations(
    earlier: Sequence[PlannedStep], records: Mapping[str, StepRecord], fresh: set[str]
) -> list[PlannedStep]:
    """Validation steps (they check, they move nothing) done by an earlier run while the source could
    still be written: a cut-over after them must not trust them."""
    return [
        s
        for s in earlier
        if s.spec is not None
        and s.spec.reports == "validation"
        and s.spec.moves == "nothing"
        and s.key not in fresh
        and _done(records.get(s.key))
        and not records[s.key].details.get("frozen")
    ]


def _check_version(
    env: Environment, conn: psycopg.Connection[Any], run_id: UUID, options: RunOptions
) -> tuple[list[str], tuple[str, str] | None]:
    """The playbook cannot change under a run: (warnings, replanned) or an ArgumentError."""
    digest = env.loaded.digest
    accepted = env.control.accepted_digest(conn)
    if accepted is None:
        options.record.accept(env, conn, run_id, None)
        return [], None
    old, since, by = accepted
    if old == digest:
        return [], None
    changed = (
        f"playbook {env.loaded.playbook.name} changed in substance since its runs began "
        f"(version {old[:12]}, accepted {since:%Y-%m-%d %H:%M} by {by}; now {digest[:12]})"
    )
    warnings = options.record.changed_playbook(env, changed, options.replan)
    return warnings, options.record.accept(env, conn, run_id, old)


def progress_of_targets(
    regions: Regions,
    pools: Mapping[str, TargetConnections],
    plan: Plan,
    rehearsed: set[str],
    names: Sequence[str],
) -> dict[tuple[str, str], StepStatus]:
    """Every tenant's step states now, each read from its own target (``names``: the targets to read);
    in a rehearsal, the tenants rehearsed count as done."""
    progress: dict[tuple[str, str], StepStatus] = {}
    for name in names:
        env = regions.envs[name]
        with _taken(pools[name]) as conn:
            if control_ready(conn, env.target.control_schema):
                # Only its own tenants' state counts: what another target says of them is no progress.
                mine = {t.id for t in env.loaded.tenants if regions.of(t).name == name}
                found = env.control.progress(conn)
                progress.update({key: status for key, status in found.items() if key[0] in mine})
    for tenant in rehearsed:
        progress.update({(tenant, key): StepStatus.DONE for key in plan.step_keys})
    return progress


def control_ready(conn: psycopg.Connection[Any], schema: str) -> bool:
    """Whether a target has a control schema (a target no run wrote to yet has none: no progress)."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}".step_state',)).fetchone()
    return bool(row and row[0])


def _gate_note(wave: WavePlan, stage: WaveStage, blocked_by: str | None, playbook: str) -> str:
    if stage is WaveStage.WAITING_FOR_APPROVAL:
        return f"wave {wave.name} waits for approval: migrate approve {playbook} --wave {wave.name}"
    return f"wave {wave.name} waits for wave {blocked_by} to finish every phase"


def run(
    env: Environment | Regions,
    plan: Plan,
    options: RunOptions | None = None,
    *,
    progress: ProgressSink = no_progress,
) -> RunResult:
    """Run the plan's tenants wave by wave (``jobs`` at a time), each in its region's target; each
    tenant's failure is its own."""
    options = options or RunOptions()
    regions = env if isinstance(env, Regions) else Regions.single(env)
    regions = regions.replace_all(retry=options.record.retry_policy(regions.first.retry))
    run_id = uuid4()
    pools = {name: TargetConnections(e.connect_target) for name, e in regions.envs.items()}
    try:
        return _run(regions, plan, run_id, pools, options, progress)
    finally:
        for pool in pools.values():
            pool.close()


def _run(
    regions: Regions,
    plan: Plan,
    run_id: UUID,
    pools: Mapping[str, TargetConnections],
    options: RunOptions,
    progress: ProgressSink,
) -> RunResult:
    started = time.monotonic()
    record = options.record
    loaded = regions.loaded
    result = RunResult(run_id, [], dry_run=record.rehearsal, digest=loaded.digest)
    writes = regions.holding(tp.tenant for tp in plan.tenants)  # the targets this run writes to
    gates = gate_targets(plan)
    approvals: dict[str, Collection[str]] = {}
    unfinished: dict[str, UnfinishedRollback] = {}  # tenants whose rollback did not finish: refused
    # Every target refuses a changed playbook before any of them records anything.
    for name in writes:
        with _taken(pools[name]) as conn:
            _refuse_changed(regions.envs[name], conn, options)
    for name in dict.fromkeys([*writes, *gates]):
        env = regions.envs[name]
        with _taken(pools[name]) as conn:
            if name in writes:
                warnings, replanned = _check_version(env, conn, run_id, options)
                result.warnings += [w for w in warnings if w not in result.warnings]
                result.replanned = result.replanned or replanned
                record.started(env, conn, run_id, options.command)
                ids = [t.id for t in writes[name]]
                unfinished |= env.rollbacks.unfinished(conn, ids)
            ready = control_ready(conn, env.target.control_schema)
            approvals[name] = set(env.control.approvals(conn)) if ready else set()
    approved = approved_waves(plan, approvals)
    log = get_logger(run_id=str(run_id))
    log.info(
        "run_started",
        tenants=len(plan.tenants),
        jobs=options.jobs,
        rehearsal=record.rehearsal,
        targets=list(writes),
    )
    progress(ProgressEvent("run_started", tenants=sum(1 for tp in plan.tenants if tp.remaining)))
    budget = _Budget(options.max_failures)
    rehearsed: set[str] = set()
    shared_schemas = SharedSchemas()  # built once per distinct source schema of this run

    def read_ahead(tp: TenantPlan) -> SourceRead:
        env = regions.of(tp.tenant)
        return read_source(env, tp.tenant, catalog=reads_catalog(tp), schemas=shared_schemas)

    def one(tp: TenantPlan) -> TenantResult:
        if tp.tenant.id in unfinished:  # refused even with nothing left to run: status says why
            error = unfinished_rollback(regions.of(tp.tenant), unfinished[tp.tenant.id])
            return TenantResult(tp.tenant.id, "refused", error=error, wave=tp.tenant.wave)
        if budget.spent:
            return TenantResult(
                tp.tenant.id,
                "not started",
                wave=tp.tenant.wave,
                note=f"--max-failures {options.max_failures} reached",
            )
        env = regions.of(tp.tenant)
        streams = tenant_streams(options.jobs, working)
        claim = ahead.begin(tp)
        try:
            outcome = run_tenant(
                env,
                tp,
                run_id,
                progress,
                pools[env.name],
                replace(options, streams=streams),
                shared_schemas,
                read_ahead=claim,
            )
        finally:
            claim.release()
        if outcome.outcome in ("failed", "refused"):
            budget.add_failure()
        return outcome

    for wave in plan.waves:
        tenants = plan.in_wave(wave.name)
        if not tenants:
            continue
        note = _wave_note(regions, pools, plan, wave, rehearsed, approved, result, gates)
        if note is not None and any(tp.remaining for tp in tenants):
            if record.gate(note):
                log.warning("wave_waiting", wave=wave.name, why=note)
                result.tenants.extend(_waiting(tp, note) for tp in tenants)
                continue
            result.warnings.append(f"a real run would stop here: {note}")
        working = sum(1 for tp in tenants if tp.remaining)
        # The next tenants' sources are read while the workers copy (engine/ahead.py).
        ahead = ReadAhead(tenants, read_ahead, ahead=options.jobs, stop=options.stop)
        try:
            with ThreadPoolExecutor(max_workers=max(1, options.jobs), thread_name_prefix="tenant") as pool:
                done = list(pool.map(one, tenants))
        finally:
            ahead.close()
        log.debug("read_ahead", wave=wave.name, taken=ahead.taken)
        result.tenants.extend(done)
        if record.rehearsal:
            rehearsed.update(t.tenant for t in done if t.outcome == "done")
    result.seconds = time.monotonic() - started
    for name, theirs in writes.items():  # each target's entry: its own tenants' outcome only
        mine = {t.id for t in theirs}
        here = RunResult(run_id, [r for r in result.tenants if r.tenant in mine])
        try:
            with _taken(pools[name]) as conn:
                outcomes = {r.tenant: r.outcome for r in here.tenants}
                record.finished(regions.envs[name], conn, run_id, here.outcome, outcomes)
        except (MigrateError, psycopg.Error) as exc:
            # Every tenant's state is recorded already; only the run's own end is missing (its row
            # stays open). Said, not raised: the tenants' outcomes are the result.
            why = from_driver(exc, "run")
            result.warnings.append(f"the run's end could not be recorded on target {name}: {why.message}")
            log.warning("run_end_not_recorded", target=name, error=why.message)
    log.info("run_finished", outcome=result.outcome, rehearsal=record.rehearsal)
    return result


def tenant_streams(jobs: int, tenants: int) -> int:
    """A tenant's backfill streams: the ``jobs`` connections the wave's other tenants leave free,
    ``max(1, jobs // min(jobs, tenants))`` — one tenant with ``--jobs 2`` copies in two streams,
    ten tenants with ``--jobs 4`` in one each."""
    return max(1, jobs // max(1, min(jobs, tenants)))


def _wave_note(
    regions: Regions,
    pools: Mapping[str, TargetConnections],
    plan: Plan,
    wave: WavePlan,
    rehearsed: set[str],
    approved: set[str],
    result: RunResult,
    gates: Sequence[str],
) -> str | None:
    """Why the wave may not start now (plan/waves.py decides), or None; the wave's stage is recorded."""
    progress = progress_of_targets(regions, pools, plan, rehearsed, gates)
    state = next(s for s in wave_states(plan, progress, approved) if s.wave.name == wave.name)
    path = str(regions.loaded.path)
    note = None if state.may_start else _gate_note(wave, state.stage, state.blocked_by, path)
    result.waves.append(WaveResult(wave.name, state.stage.value, note))
    return note


def _waiting(tp: TenantPlan, note: str) -> TenantResult:
    if not tp.remaining:
        skipped = [StepResult(s.key, s.kind, "skipped") for s in tp.steps]
        return TenantResult(tp.tenant.id, "done", skipped, wave=tp.tenant.wave)
    return TenantResult(tp.tenant.id, "waiting", wave=tp.tenant.wave, note=note)
