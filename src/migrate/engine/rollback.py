"""Rollback to a named point: revert every step after it, flags first, for one tenant or many.

The incident path, in this order:

1. **Every lock first, all or nothing.** The selected tenants' advisory locks are
   taken on ONE target connection (a wave of hundreds costs one connection, not
   two per tenant). If another runner holds any of them, nothing is touched and
   the error names every holder: an operator wants all the flags back, or a
   clear reason why not — never half a wave.
2. **What to revert**, read under the locks: each tenant's steps after the point
   that are ``done``, ``failed`` or ``running`` (a runner killed mid-step leaves
   it ``running``, with part of its effect), newest first.
3. **The cut-over.** Once a tenant's flag step has turned the shared schema on,
   the tenant's new writes live only there. With a reverse path (taken at an online
   cut-over, ``steps/reverse.py``) the cut-over's revert applies them back; without one
   (offline, or finalised) there is no reverse sync, so a
   rollback across it would lose them. It is refused, saying when the cut-over
   was, unless the caller accepts the loss (``--discard-writes-since-cutover``),
   which the ledger records per tenant. Accepted, it does what it says: the
   tenant's copy is reverted too (its rows, the application's writes since the
   cut-over among them, leave the shared tables, and its change capture is
   dropped), so the next ``run`` copies and validates afresh from the old
   database, never on the shared tables' mixed state.
4. **Flags**, for every tenant, before any data: traffic goes back to the old
   databases in seconds. Flag steps need neither the source nor its tables, so a
   slow or unreachable source cannot delay them. The time from the command's
   start (``started``) to here is reported.
5. **Data**, tenant by tenant, newest step first (the backfill deletes the
   tenant's rows children first, in committed batches).

Each revert commits the step's ``reverted`` state with its ledger entry; a
revert that fails is ledgered as ``revert_failed`` and stops the rollback.
Reverts are idempotent and the steps not yet reverted stay ``done``, so after a
crash or a failure the same command finishes the job; run again once more, it
says there is nothing left to revert. The next ``run`` applies the reverted
steps again.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import psycopg
from psycopg import sql

from migrate.control.reverse import ReverseStore
from migrate.control.rollbacks import UnfinishedRollback
from migrate.control.store import StepRecord
from migrate.engine.session import Environment, Regions, step_context, tenant_tables
from migrate.engine.sinks import RollbackRecord, revert_failed, reverted
from migrate.errors import ArgumentError, Interrupted, MigrateError, StepFailed, TenantLocked, from_driver
from migrate.log import get_logger, redact
from migrate.plan.model import PlannedStep, StepStatus, TenantPlan
from migrate.playbook.model import Tenant
from migrate.steps import StepContext, step_for

DISCARD_OPTION = "--discard-writes-since-cutover"
"""The option that accepts losing a cut-over tenant's writes since its cut-over."""

_REVERTIBLE = (StepStatus.DONE, StepStatus.FAILED, StepStatus.RUNNING)


@dataclass(frozen=True)
class Cutover:
    """A flag step that turned the shared schema on for a tenant, which a rollback would undo."""

    tenant: str
    step: str  # phase/step
    flag: str
    status: StepStatus  # done; failed or running: it may have flipped before it stopped
    at: datetime | None  # when it finished (None: a killed runner left it running)
    finalised_at: datetime | None = None  # its finalise step dropped the reverse path then

    def describe(self) -> str:
        if self.finalised_at is not None:
            return (
                f"tenant '{self.tenant}' was cut over ({self.step} turned flag '{self.flag}' on) and "
                f"finalised at {self.finalised_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC, which dropped "
                "its reverse path"
            )
        return self._describe()

    def _describe(self) -> str:
        if self.status is StepStatus.DONE and self.at is not None:
            return (
                f"tenant '{self.tenant}' was cut over at {self.at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC "
                f"({self.step} turned flag '{self.flag}' on)"
            )
        when = f" at {self.at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if self.at else ""
        return (
            f"tenant '{self.tenant}' may be cut over: {self.step}, which turns flag '{self.flag}' on, "
            f"is {self.status.value}{when} and may have flipped it"
        )


@dataclass(frozen=True)
class TenantRevert:
    """One tenant's steps to revert: flag steps, then data steps, each newest first."""

    tenant: Tenant
    flags: tuple[PlannedStep, ...]
    data: tuple[PlannedStep, ...]
    cutover: Cutover | None  # the earliest cut-over among the flag steps, if any
    records: Mapping[str, StepRecord] = field(default_factory=dict, repr=False)
    afresh: tuple[PlannedStep, ...] = ()  # steps before the point reverted too: writes discarded

    def first_reverted(self, plan: TenantPlan, point: str) -> int:
        """The index in ``plan.steps`` after which every step is reverted (the point's, or earlier
        when the copy is reverted too)."""
        keys = [s.step_id for s in plan.steps]
        marker = keys.index(f"@{point}")
        if self.afresh:
            marker = min(marker, min(plan.steps.index(s) for s in self.afresh) - 1)
        return marker

    @property
    def steps(self) -> tuple[PlannedStep, ...]:
        return self.flags + self.data


@dataclass(frozen=True)
class RollbackPreview:
    """What a rollback to ``point`` reverts, per tenant, read from the control schema."""

    point: str
    tenants: tuple[TenantRevert, ...]

    @property
    def nothing(self) -> bool:
        return not any(t.steps for t in self.tenants)

    @property
    def cutovers(self) -> tuple[Cutover, ...]:
        return tuple(t.cutover for t in self.tenants if t.cutover is not None)


@dataclass(frozen=True)
class Reverted:
    """One step reverted for one tenant."""

    tenant: str
    key: str
    kind: str
    seconds: float
    details: Mapping[str, Any]
    summary: str | None = None  # what the revert did, in one line (StepKind.summary)


@dataclass
class RollbackResult:
    run_id: UUID
    point: str
    tenants: tuple[str, ...]
    steps: list[Reverted] = field(default_factory=list)  # the steps reverted, in that order
    discarded: tuple[Cutover, ...] = ()  # cut-overs crossed, their writes since accepted as lost
    seconds_to_flags: float | None = None  # command start → last flag restored; None: no flag step
    seconds_total: float = 0.0  # command start → done
    stopped: str | None = None  # why it stopped at a safe point before the end (Ctrl-C, SIGTERM)
    unfinished: tuple[str, ...] = ()  # the tenants whose rollback did not finish
    resume: str | None = None  # the command that finishes it

    def steps_of(self, tenant: str) -> list[Reverted]:
        return [r for r in self.steps if r.tenant == tenant]

    @property
    def nothing(self) -> bool:
        return not self.steps and self.stopped is None


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


def what_to_revert(
    plans: Sequence[TenantPlan],
    point: str,
    records: Sequence[StepRecord],
    *,
    discard: bool = False,
    reversible: Collection[str] = (),
    pending: Mapping[str, UnfinishedRollback] | None = None,
) -> RollbackPreview:
    """Per tenant, the steps after ``point`` that did (or may have done) something, newest first.

    ``discard`` (``--discard-writes-since-cutover``): for a tenant whose cut-over is crossed, the
    steps from its copy (the first step that moves data) up to the point are reverted as well, so the
    writes since the cut-over leave the shared tables and the next run copies and validates afresh —
    unless the tenant's reverse path (``reversible``, not finalised) puts back exactly the rows
    written since the cut-over, from its frozen old database.
    ``pending``: the unfinished rollbacks; one that discarded writes to the same point still reverts
    the copy when the command finishes it, though its cut-over is reverted already (a crash, a stop).
    """
    by_tenant: dict[str, dict[str, StepRecord]] = {}
    for rec in records:
        by_tenant.setdefault(rec.tenant, {})[rec.step_key] = rec
    out = []
    for plan in plans:
        recs = by_tenant.get(plan.tenant.id, {})
        todo = [
            s
            for s in reversed(steps_after(plan, point))
            if (found := recs.get(s.key)) is not None and found.status in _REVERTIBLE
        ]
        # Traffic first: a step that moves traffic goes back before any data, wherever it sits.
        flags = tuple(s for s in todo if s.spec is not None and s.spec.moves == "traffic")
        finalised = next(
            (
                recs[s.key].finished_at
                for s in todo
                if s.spec is not None and s.spec.kind == "finalise" and recs[s.key].status is StepStatus.DONE
            ),
            None,
        )
        cutover = None
        for step in flags:  # newest first: the last one seen is the earliest cut-over
            if (
                step.spec is not None
                and step.spec.cuts_over
                and recs[step.key].details.get("flipped") is not False
            ):
                flipped = recs[step.key]
                cutover = Cutover(
                    plan.tenant.id,
                    step.key,
                    step.spec.flips or step.step_id,
                    flipped.status,
                    flipped.finished_at,
                    finalised,
                )
        left = (pending or {}).get(plan.tenant.id)
        resumed = left is not None and left.discard_writes and left.point == point
        resumed = resumed and plan.tenant.id not in reversible
        lost = cutover is not None and (plan.tenant.id not in reversible or cutover.finalised_at)
        afresh = _copy_before(plan, point, recs) if discard and (lost or resumed) else []
        out.append(
            TenantRevert(
                plan.tenant,
                flags,
                tuple(s for s in todo if s not in flags) + tuple(afresh),
                cutover,
                {s.key: recs[s.key] for s in (*todo, *afresh)},
                tuple(afresh),
            )
        )
    return RollbackPreview(point, tuple(out))


def _copy_before(plan: TenantPlan, point: str, recs: Mapping[str, StepRecord]) -> list[PlannedStep]:
    """The steps before ``point`` from the tenant's copy on (newest first) that a discarded cut-over
    reverts: the copy whose rows the application has written over, and what checked or fed it."""
    before = [s for s in plan.steps[: [p.step_id for p in plan.steps].index(f"@{point}")] if not s.is_point]
    first = next((i for i, s in enumerate(before) if s.spec is not None and s.spec.moves == "data"), None)
    if first is None:
        return []
    return [
        s
        for s in reversed(before[first:])
        if s.spec is not None
        and s.spec.moves != "traffic"
        and (found := recs.get(s.key)) is not None
        and found.status in _REVERTIBLE
    ]


def reversible(env: Environment, conn: psycopg.Connection[Any], tenants: Sequence[str]) -> set[str]:
    """The tenants whose writes since their cut-over a reverse path captures (to apply back)."""
    found = conn.execute(
        "SELECT to_regclass(%s)", (sql.Identifier(env.control.schema, "reverse_paths").as_string(conn),)
    ).fetchone()
    if not found or found[0] is None:
        return set()
    paths = ReverseStore(env.control.schema, env.control.playbook).paths(conn, tenants)
    return {t for t, p in paths.items() if p.status == "capturing"}


def refuse_across_cutover(preview: RollbackPreview, reversible: Collection[str] = ()) -> None:
    """An input error when the rollback would undo a cut-over whose writes since would be lost:
    one without a reverse path (``reversible`` names the tenants that have one)."""
    cutovers = tuple(c for c in preview.cutovers if c.tenant not in reversible or c.finalised_at)
    if not cutovers:
        return
    raise ArgumentError(
        "; ".join(c.describe() for c in cutovers)
        + ". Writes since then live only in the shared schema, and there is no reverse sync to apply "
        f"them back: rolling back to '{preview.point}' would lose them",
        where=f"--to {preview.point}",
        hint=f"if losing those writes is accepted, add {DISCARD_OPTION} (the ledger records who "
        "accepted it); otherwise keep the tenant on the shared schema and fix forward",
    )


def rollback_command(book: str, tenants: Sequence[str], point: str, *, discard: bool) -> str:
    """The command that rolls ``tenants`` back to ``point`` (and finishes an unfinished rollback)."""
    named = " ".join(f"--tenant {shlex.quote(t)}" for t in tenants)
    return f"migrate rollback {shlex.quote(book)} {named} --to {shlex.quote(point)} --yes" + (
        f" {DISCARD_OPTION}" if discard else ""
    )


def refuse_a_later_point(
    plans: Sequence[TenantPlan], point: str, pending: Mapping[str, UnfinishedRollback], book: str
) -> None:
    """An unfinished rollback to an earlier point must finish first: a rollback to a later point
    would call the tenant done with its data still half deleted."""
    for plan in plans:
        left = pending.get(plan.tenant.id)
        if left is None:
            continue
        order = [s.step_id for s in plan.steps]
        if f"@{left.point}" in order and order.index(f"@{left.point}") < order.index(f"@{point}"):
            raise ArgumentError(
                f"tenant '{plan.tenant.id}' has an unfinished rollback to '{left.point}' (since "
                f"{left.since.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC); rolling back only to '{point}' "
                "would leave it half done",
                where="--to",
                hint="finish it first: "
                + rollback_command(book, [plan.tenant.id], left.point, discard=left.discard_writes),
            )


def rollback(
    env: Environment | Regions,
    plans: Sequence[TenantPlan],
    point: str,
    *,
    discard_writes_since_cutover: bool = False,
    started: float | None = None,
    command: str | None = None,
    stop: threading.Event | None = None,
) -> RollbackResult:
    """Revert every step after ``point`` for every tenant of ``plans``: flags first, then data.

    Each tenant is rolled back in its own region's target (its state, its ledger entries);
    ``started`` is the command's start (``time.monotonic()``); the result's times count from it.
    ``stop``, once set (Ctrl-C, SIGTERM), ends the rollback at its next safe point — between
    steps, between batches of deleted rows — and the result says what is unfinished and the
    command that finishes it (the same command).
    """
    started = time.monotonic() if started is None else started
    regions = env if isinstance(env, Regions) else Regions.single(env)
    for plan in plans:  # a misspelt point is an input error before any lock or connection
        steps_after(plan, point)
    command = command or f"rollback --to {point}"
    stop = stop or threading.Event()
    book_path = str(regions.loaded.path)
    run_id = uuid4()
    tenants = [p.tenant for p in plans]
    result = RollbackResult(run_id, point, tuple(t.id for t in tenants))
    log = get_logger(run_id=str(run_id))
    by_target = regions.holding(tenants)
    with _locked(regions, by_target, run_id, command) as conns:
        records: list[StepRecord] = []
        pending: dict[str, UnfinishedRollback] = {}
        try:
            for name, theirs in by_target.items():
                ids = [t.id for t in theirs]
                records += regions.envs[name].control.steps(conns[name], ids)
                pending |= regions.envs[name].rollbacks.unfinished(conns[name], ids)
        except psycopg.Error as exc:
            raise from_driver(exc, "rollback") from exc
        refuse_a_later_point(plans, point, pending, book_path)
        reverse: set[str] = set()  # tenants whose reverse path applies their writes back
        try:
            for name, theirs in by_target.items():
                reverse |= reversible(regions.envs[name], conns[name], [t.id for t in theirs])
        except psycopg.Error as exc:
            raise from_driver(exc, "rollback") from exc
        preview = what_to_revert(
            plans,
            point,
            records,
            discard=discard_writes_since_cutover,
            reversible=reverse,
            pending=pending,
        )
        back: set[str] = set(pending) | reverse  # an unfinished rollback was allowed when it began
        if not discard_writes_since_cutover:
            refuse_across_cutover(preview, back)
        result.discarded = tuple(c for c in preview.cutovers if c.tenant not in back or c.finalised_at)
        # Every tenant's context before anything changes: the residency guard refuses one, and with
        # it the whole rollback, while nothing is written yet.
        contexts = {
            todo.tenant.id: step_context(
                regions.of(todo.tenant),
                todo.tenant,
                run_id,
                conns[regions.of(todo.tenant).name],
                None,
                stopping=stop.is_set,
                discard_writes=discard_writes_since_cutover,
            )
            for todo in preview.tenants
        }
        books = {name: RollbackRecord(regions.envs[name], conns[name], run_id) for name in by_target}
        left = [t.id for t in tenants]  # begun and not finished

        def resume() -> str:
            return rollback_command(book_path, left, point, discard=discard_writes_since_cutover)

        def safe_point(before: str) -> None:
            if stop.is_set():
                raise Interrupted(f"stopped on request before {before}")

        def unfinished(outcome: str, why: str) -> None:
            for name, book in books.items():
                book.unfinished([t.id for t in by_target[name] if t.id in left], outcome, why)

        flags_restored = False
        try:
            for name, book in books.items():
                mine = [t for t in preview.tenants if regions.of(t.tenant).name == name]
                book.started(command, point, mine, discard_writes_since_cutover)
            for todo in preview.tenants:
                if todo.flags:
                    ctx = contexts[todo.tenant.id]
                    the_env = regions.of(todo.tenant)
                    for step in todo.flags:
                        safe_point(f"{todo.tenant.id}/{step.key}")
                        result.steps.append(_revert(the_env, ctx, step, todo.records[step.key]))
            if any(t.flags for t in preview.tenants):
                result.seconds_to_flags = time.monotonic() - started
                log.info("flags_restored", seconds=round(result.seconds_to_flags, 3))
            flags_restored = True
            for todo, plan in zip(preview.tenants, plans, strict=True):
                the_env = regions.of(todo.tenant)
                if todo.data:
                    safe_point(f"{todo.tenant.id}/{todo.data[0].key}")
                    with _data_context(the_env, todo.tenant, conns[the_env.name], run_id, stop) as ctx:
                        for step in todo.data:
                            safe_point(f"{todo.tenant.id}/{step.key}")
                            result.steps.append(_revert(the_env, ctx, step, todo.records[step.key]))
                marker = todo.first_reverted(plan, point)
                books[the_env.name].tenant_done(
                    plan.tenant.id, [s for s in plan.steps[marker + 1 :] if s.is_point]
                )
                left.remove(plan.tenant.id)
        except Interrupted as stopped:
            result.stopped = stopped.message
            result.unfinished = tuple(left)
            result.resume = resume()
            unfinished("stopped", stopped.message)
            _finish(books, by_target, result, started, "stopped")
            log.info("rollback_stopped", unfinished=left, why=stopped.message)
            return result
        except (MigrateError, psycopg.Error) as caught:
            error = from_driver(caught, "rollback")
            unfinished("failed", error.message)
            finish = f"then run {resume()} to finish (it goes on where this one stopped)"
            restored = flags_restored and result.seconds_to_flags is not None
            lead = "the flags are restored: traffic is on the old databases. " if restored else ""
            said = f"{error.hint}; {finish}" if error.hint else finish[0].upper() + finish[1:]
            error = type(error)(error.message, where=error.where, hint=lead + said)
            _finish(books, by_target, result, started, "failed")
            raise error from caught
        result.seconds_total = time.monotonic() - started
        _finish(books, by_target, result, started, "ok")
    log.info("rollback_finished", reverted=len(result.steps), seconds=round(result.seconds_total, 3))
    return result


@contextmanager
def _locked(
    regions: Regions, by_target: Mapping[str, Sequence[Tenant]], run_id: UUID, command: str
) -> Iterator[dict[str, psycopg.Connection[Any]]]:
    """One connection per target holding the locks of every tenant there, or TenantLocked naming each
    holder (nothing is touched then, in any target).

    Closing the connections lets every lock go, whatever happened.
    """
    conns: dict[str, psycopg.Connection[Any]] = {}
    try:
        refused: list[TenantLocked] = []
        for name, tenants in by_target.items():
            env = regions.envs[name]
            conn = conns[name] = env.connect_target()
            for tenant in tenants:
                try:
                    env.control.lock_tenant(conn, tenant.id)
                except TenantLocked as exc:
                    refused.append(exc)
                except psycopg.Error as exc:
                    raise from_driver(exc, "rollback") from exc
        if refused:
            names = ", ".join(e.where.removeprefix("tenant ") for e in refused if e.where)
            raise TenantLocked(
                "; ".join(e.message for e in refused)
                + ". Nothing was rolled back: every tenant's lock is taken before any flag goes back",
                where=f"tenant {names}" if len(refused) == 1 else f"tenants {names}",
                hint="wait for that runner to stop (its lock goes with it), or leave "
                + ("that tenant" if len(refused) == 1 else "those tenants")
                + " out with --tenant",
            )
        try:
            for name, tenants in by_target.items():
                env = regions.envs[name]
                for tenant in tenants:
                    env.control.record_holder(
                        conns[name], tenant.id, run_id=run_id, command=command, host=env.host, pid=env.pid
                    )
        except psycopg.Error as exc:
            raise from_driver(exc, "rollback") from exc
        yield conns
    finally:
        for conn in conns.values():
            with suppress(psycopg.Error):
                conn.close()


@contextmanager
def _data_context(
    env: Environment, tenant: Tenant, conn: psycopg.Connection[Any], run_id: UUID, stop: threading.Event
) -> Iterator[StepContext]:
    """A context with the tenant's source and its tables in load order (what data reverts need)."""
    source = env.connect_source(tenant)
    try:
        try:
            tables = tenant_tables(env, source)
        except psycopg.Error as exc:
            raise StepFailed(
                f"cannot read the tables of tenant '{tenant.id}''s source: {redact(str(exc).strip())}",
                where=f"tenant {tenant.id}",
            ) from exc
        yield step_context(env, tenant, run_id, conn, source, tables, stopping=stop.is_set)
    finally:
        with suppress(psycopg.Error):
            source.close()


def _revert(env: Environment, ctx: StepContext, step: PlannedStep, record: StepRecord) -> Reverted:
    """Revert one step and check its inverse holds, then mark it ``reverted`` with its ledger entry."""
    assert step.spec is not None
    impl = step_for(step.spec)
    t0 = time.monotonic()
    try:
        details = impl.revert(ctx, record.details)
        impl.verify_reverted(ctx, details)
    except Interrupted:
        raise  # asked to stop between batches: no failure; the rollback records itself unfinished
    except (MigrateError, psycopg.Error) as exc:
        error = from_driver(exc, f"{ctx.tenant.id}/{step.key}")
        revert_failed(env, ctx, step, error)
        ctx.log.error("step_revert_failed", step=step.key, phase=step.phase, error=str(error))
        if error is exc:
            raise
        raise error from exc
    seconds = time.monotonic() - t0
    reverted(env, ctx, step, details, seconds)
    ctx.log.info("step_reverted", step=step.key, phase=step.phase, seconds=round(seconds, 3))
    return Reverted(
        ctx.tenant.id, step.key, step.kind, seconds, details, summary=impl.summary(details, reverted=True)
    )


def _finish(
    books: Mapping[str, RollbackRecord],
    by_target: Mapping[str, Sequence[Tenant]],
    result: RollbackResult,
    started: float,
    outcome: str,
) -> None:
    """Each target's ``rollback_finished``, naming what was reverted of its own tenants only."""
    for name, book in books.items():
        mine = {t.id for t in by_target[name]}
        details = {
            "to": result.point,
            "reverted": [f"{r.tenant}:{r.key}" for r in result.steps if r.tenant in mine],
            "unfinished": [t for t in result.unfinished if t in mine],
            "seconds_to_flags": None
            if result.seconds_to_flags is None
            else round(result.seconds_to_flags, 3),
            "seconds": round(time.monotonic() - started, 3),
        }
        try:
            book.finished(outcome, details)
        except psycopg.Error as exc:
            if outcome == "ok":
                raise StepFailed(
                    "every step is reverted, but the rollback's end was not recorded: "
                    + redact(str(exc).strip()),
                    where="rollback",
                    hint="the next rollback to the same point finds nothing to revert and records its end",
                ) from exc
            # Failing already (perhaps on this connection): the run stays open, revert_failed says why.
