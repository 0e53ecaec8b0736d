"""Where state and ledger entries go: every state-plus-ledger commit of run and rollback lives here.

A step's effect, its state and its ledger entry commit together where they share a
database (CONVENTIONS 5), so each write below is one transaction on the connection
that holds the tenant's lock.

A run and a rehearsal differ only by the ``Record`` the api chooses, once:

* ``RunRecord`` (a real run) writes the run's row and its ``run_started`` /
  ``run_finished`` entries, the holder of each tenant's lock, the accepted playbook
  version, and per step its state with its entry (``Sink``). Gates are enforced.
* ``RehearsalRecord`` leaves the run state as it found it: each tenant's steps run in
  one target transaction that is rolled back (the steps' own transactions become
  savepoints, one per step so a failing step leaves the rest usable), and one
  ``rehearsed`` entry per step is appended on a connection of its own
  (``RehearsalSink``). Gates are reported, not enforced; a changed playbook warns.

A rollback's records (``RollbackRecord``) write its start and finish and, through the
same ``Sink``, each step's ``reverted`` state with its entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC
from typing import Any
from uuid import UUID, uuid5

import psycopg

from migrate.control.batch import state_transaction
from migrate.control.ledger import Entry
from migrate.control.store import StepRecord
from migrate.engine.retry import RetryPolicy
from migrate.engine.session import Environment, TenantSession
from migrate.errors import ArgumentError, MigrateError
from migrate.log import get_logger, redact
from migrate.plan.model import PlannedStep, StepStatus
from migrate.playbook.model import Tenant
from migrate.steps.context import Details, StepContext


def _ids(tenant: Tenant, step: PlannedStep) -> dict[str, str]:
    return {"tenant": tenant.id, "wave": tenant.wave, "phase": step.phase, "step": step.key}


class Sink:
    """Where a step's state and ledger entries go in a real run: the target, with the effect."""

    def __init__(self, session: TenantSession, env: Environment) -> None:
        self.session = session
        self.env = env

    def _entry(self, step: PlannedStep, action: str, outcome: str, details: Details) -> Entry:
        return self.env.entry(
            self.session.run_id, action, outcome, details=details, **_ids(self.session.tenant, step)
        )

    def started(self, step: PlannedStep, left_by: StepRecord | None) -> None:
        conn, tenant = self.session.ctx.target, self.session.tenant.id
        # Not waited for on disk (state_transaction says why that is safe): one round trip.
        with state_transaction(conn, durable=False) as piped:
            if left_by is not None:
                # Under our lock, "running" means its runner died: its lock died with its connection.
                self.env.ledger.append(
                    conn,
                    self._entry(
                        step,
                        "resumed",
                        "ok",
                        {
                            "left_by_run": str(left_by.run_id) if left_by.run_id else None,
                            "why": "runner gone",
                        },
                    ),
                    in_transaction=True if piped else None,
                )
            self.env.control.set_status(conn, tenant, step, StepStatus.RUNNING, run_id=self.session.run_id)
        if left_by is not None:
            self.session.ctx.log.warning(
                "step_resumed", step=step.key, left_by_run=str(left_by.run_id), why="runner gone"
            )

    def passed(self, step: PlannedStep) -> None:
        conn = self.session.ctx.target
        with state_transaction(conn) as piped:
            self.env.control.set_status(
                conn, self.session.tenant.id, step, StepStatus.DONE, run_id=self.session.run_id
            )
            self.env.ledger.append(
                conn, self._entry(step, "point_passed", "ok", {}), in_transaction=True if piped else None
            )

    def applied(self, step: PlannedStep, details: Details, seconds: float) -> None:
        conn = self.session.ctx.target
        with state_transaction(conn) as piped:
            self.env.control.set_status(
                conn,
                self.session.tenant.id,
                step,
                StepStatus.DONE,
                run_id=self.session.run_id,
                details=details,
            )
            self.env.ledger.append(
                conn,
                self._entry(step, "applied", "ok", {**details, "seconds": round(seconds, 3)}),
                in_transaction=True if piped else None,
            )

    def stopped(self, step: PlannedStep, details: Details) -> None:
        """Asked to stop mid-step: back to pending (it is no failure), the stop ledgered."""
        conn = self.session.ctx.target
        with conn.transaction():
            self.env.control.set_status(
                conn, self.session.tenant.id, step, StepStatus.PENDING, run_id=self.session.run_id
            )
            self.env.ledger.append(conn, self._entry(step, "stopped", "ok", details))

    def failed(self, step: PlannedStep, error: MigrateError, details: Details) -> None:
        """Mark the step failed and ledger it with apply's figures (a failed validation's are the
        evidence), on a new connection if the old one is gone."""
        session = self.session
        try:
            conn = session.ctx.target
            if conn.closed or conn.broken:
                conn = session.reconnect().target
            with conn.transaction():
                self.env.control.set_status(
                    conn,
                    session.tenant.id,
                    step,
                    StepStatus.FAILED,
                    run_id=session.run_id,
                    error=redact(str(error)),
                    details=details or None,
                )
                self.env.ledger.append(
                    conn, self._entry(step, "failed", "error", {**details, "error": str(error)})
                )
        except (MigrateError, psycopg.Error) as exc:
            # The step stays 'running' in the control schema: the next run redoes it, as after a kill.
            session.ctx.log.error("failure_not_recorded", step=step.key, error=redact(str(exc)))


def reverted(env: Environment, ctx: StepContext, step: PlannedStep, details: Details, seconds: float) -> None:
    """A step reverted for a tenant: its ``reverted`` state and its entry, in one transaction."""
    conn = ctx.target
    with conn.transaction():
        env.control.set_status(
            conn, ctx.tenant.id, step, StepStatus.REVERTED, run_id=ctx.run_id, details=details
        )
        env.ledger.append(
            conn,
            env.entry(
                ctx.run_id,
                "reverted",
                "ok",
                details={**details, "seconds": round(seconds, 3)},
                **_ids(ctx.tenant, step),
            ),
        )


def revert_failed(env: Environment, ctx: StepContext, step: PlannedStep, error: MigrateError) -> None:
    """A revert that failed, ledgered if the connection still lets us (it may be what failed)."""
    try:
        env.ledger.append(
            ctx.target,
            env.entry(
                ctx.run_id, "revert_failed", "error", details={"error": str(error)}, **_ids(ctx.tenant, step)
            ),
        )
    except (MigrateError, psycopg.Error) as exc:
        ctx.log.error("failure_not_recorded", step=step.key, error=redact(str(exc)))


def _start_run(env: Environment, conn: psycopg.Connection[Any], run_id: UUID, command: str) -> None:
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


class RehearsalSink(Sink):
    """Where a rehearsal's traces go: nothing in the run state, one ``rehearsed`` entry per step,
    appended on a connection of its own (the tenant's transaction is rolled back)."""

    def __init__(self, session: TenantSession, env: Environment, run_id: UUID) -> None:
        super().__init__(session, env)
        self.run_id = run_id

    def _rehearsed(self, step: PlannedStep, outcome: str, details: Details) -> None:
        entry = self.env.entry(
            self.run_id, "rehearsed", outcome, details=details, **_ids(self.session.tenant, step)
        )
        conn = self.session.targets.take()
        try:
            self.env.ledger.append(conn, entry)
        finally:
            self.session.targets.give(conn)

    def started(self, step: PlannedStep, left_by: StepRecord | None) -> None:
        pass

    def passed(self, step: PlannedStep) -> None:
        pass

    def applied(self, step: PlannedStep, details: Details, seconds: float) -> None:
        self._rehearsed(step, "ok", {**details, "seconds": round(seconds, 3)})

    def stopped(self, step: PlannedStep, details: Details) -> None:
        self._rehearsed(step, "stopped", details)

    def failed(self, step: PlannedStep, error: MigrateError, details: Details) -> None:
        try:
            self._rehearsed(step, "error", {**details, "error": str(error)})
        except (MigrateError, psycopg.Error) as exc:
            self.session.ctx.log.error("rehearsal_not_recorded", step=step.key, error=redact(str(exc)))


class RunRecord:
    """How a real run leaves its traces (see the module docstring); the api picks it or a rehearsal's."""

    rehearsal = False
    applied = "applied"  # the outcome word of a step that did its work

    def retry_policy(self, configured: RetryPolicy) -> RetryPolicy:
        """How passing faults are retried: as configured (MIGRATE_RETRY_SECONDS)."""
        return configured

    def state_run(self, run_id: UUID, tenant: str) -> UUID:
        """The run id the tenant's state rows carry."""
        return run_id

    def sink(self, session: TenantSession, env: Environment, run_id: UUID) -> Sink:
        return Sink(session, env)

    def tenant_transaction(self, conn: psycopg.Connection[Any]) -> AbstractContextManager[Any]:
        """Around all of a tenant's steps: nothing in a real run (each step commits its own work)."""
        return nullcontext()

    def step_transaction(self, conn: psycopg.Connection[Any]) -> AbstractContextManager[Any]:
        """Around one step's apply and verify: nothing in a real run."""
        return nullcontext()

    def open_failed(
        self,
        env: Environment,
        conn: psycopg.Connection[Any],
        run_id: UUID,
        tenant: Tenant,
        step: PlannedStep,
        error: MigrateError,
    ) -> None:
        """The tenant failed before ``step`` (its first to run) could start — its source does not
        answer, a table is missing: that step is ``failed`` with the error, and ledgered, so
        status shows the failure instead of "not started"."""
        try:
            with conn.transaction():
                env.control.set_status(
                    conn, tenant.id, step, StepStatus.FAILED, run_id=run_id, error=redact(str(error))
                )
                env.ledger.append(
                    conn,
                    env.entry(
                        run_id,
                        "failed",
                        "error",
                        details={"error": redact(str(error)), "before_start": True},
                        **_ids(tenant, step),
                    ),
                )
        except (MigrateError, psycopg.Error) as exc:
            log = get_logger(run_id=str(run_id))
            log.error("failure_not_recorded", step=step.key, error=redact(str(exc)))

    def changed_playbook(self, env: Environment, changed: str, replan: bool) -> list[str]:
        """The playbook changed in substance: refused without ``--replan``, else accepted (by the caller)."""
        if not replan:
            raise ArgumentError(
                changed,
                where=str(env.loaded.path),
                hint=f"review 'migrate plan {env.loaded.path}', then run again with --replan "
                "(the replan is ledgered); done steps stay done",
            )
        return []

    def accept(
        self, env: Environment, conn: psycopg.Connection[Any], run_id: UUID, old: str | None
    ) -> tuple[str, str] | None:
        """Record the playbook version runs work to from now on (ledgered when it replaces one)."""
        digest = env.loaded.digest
        with conn.transaction():
            env.control.accept_digest(conn, digest, env.actor)
            if old is not None:
                env.ledger.append(
                    conn, env.entry(run_id, "replanned", "ok", details={"from": old, "to": digest})
                )
        return None if old is None else (old, digest)

    def gate(self, note: str) -> bool:
        """A wave may not start (``note`` says why): True when the run stops there."""
        return True

    def started(self, env: Environment, conn: psycopg.Connection[Any], run_id: UUID, command: str) -> None:
        with conn.transaction():
            _start_run(env, conn, run_id, command)
            env.ledger.append(conn, env.entry(run_id, "run_started", "ok", details={"command": command}))

    def finished(
        self,
        env: Environment,
        conn: psycopg.Connection[Any],
        run_id: UUID,
        outcome: str,
        tenants: dict[str, str],
    ) -> None:
        with conn.transaction():
            env.control.finish_run(conn, run_id, outcome)
            env.ledger.append(conn, env.entry(run_id, "run_finished", outcome, details=tenants))


class RehearsalRecord(RunRecord):
    """A rehearsal's traces: ``rehearsed`` entries only; everything else rolled back or left alone."""

    rehearsal = True
    applied = "rehearsed"

    def retry_policy(self, configured: RetryPolicy) -> RetryPolicy:
        return RetryPolicy(seconds=0)  # a reconnect would lose the rehearsal's transaction

    def state_run(self, run_id: UUID, tenant: str) -> UUID:
        # A rehearsal's own rows in the control schema vanish with its transaction; a run id per
        # tenant keeps concurrent rehearsals from waiting on each other's uncommitted rows.
        return uuid5(run_id, tenant)

    def sink(self, session: TenantSession, env: Environment, run_id: UUID) -> Sink:
        return RehearsalSink(session, env, run_id)

    def tenant_transaction(self, conn: psycopg.Connection[Any]) -> AbstractContextManager[Any]:
        return conn.transaction(force_rollback=True)

    def step_transaction(self, conn: psycopg.Connection[Any]) -> AbstractContextManager[Any]:
        # A savepoint: a failing step leaves the tenant's transaction usable.
        return conn.transaction()

    def open_failed(
        self,
        env: Environment,
        conn: psycopg.Connection[Any],
        run_id: UUID,
        tenant: Tenant,
        step: PlannedStep,
        error: MigrateError,
    ) -> None:
        pass  # the rehearsal's report says it; the run state stays as it was

    def changed_playbook(self, env: Environment, changed: str, replan: bool) -> list[str]:
        return [f"{changed}: the real run needs --replan"]

    def accept(
        self, env: Environment, conn: psycopg.Connection[Any], run_id: UUID, old: str | None
    ) -> tuple[str, str] | None:
        return None

    def gate(self, note: str) -> bool:
        return False  # reported as "a real run would stop here", the rehearsal goes on

    def started(self, env: Environment, conn: psycopg.Connection[Any], run_id: UUID, command: str) -> None:
        pass

    def finished(
        self,
        env: Environment,
        conn: psycopg.Connection[Any],
        run_id: UUID,
        outcome: str,
        tenants: dict[str, str],
    ) -> None:
        pass


class RollbackRecord:
    """A rollback's start and finish, and the rollback points it un-passes."""

    def __init__(self, env: Environment, conn: psycopg.Connection[Any], run_id: UUID) -> None:
        self.env = env
        self.conn = conn
        self.run_id = run_id

    def started(self, command: str, point: str, tenants: Sequence[Any], discard: bool) -> None:
        """The run's row, one ``rollback_started`` per tenant and, before anything is undone, the
        user's decision to give up writes since a cut-over (``cutover_writes_discarded``)."""
        env, conn, run_id = self.env, self.conn, self.run_id
        with conn.transaction():
            _start_run(env, conn, run_id, command)
            for todo in tenants:
                tenant = todo.tenant
                # Unfinished until the tenant's last revert says otherwise (control/rollbacks.py).
                env.rollbacks.begin(conn, tenant.id, point=point, discard_writes=discard, run_id=run_id)
                env.ledger.append(
                    conn,
                    env.entry(
                        run_id,
                        "rollback_started",
                        "ok",
                        tenant=tenant.id,
                        wave=tenant.wave,
                        details={
                            "to": point,
                            "steps": [s.key for s in todo.steps],
                            "discard_writes_since_cutover": discard,
                        },
                    ),
                )
                if todo.cutover is not None:
                    cut = todo.cutover
                    env.ledger.append(
                        conn,
                        env.entry(
                            run_id,
                            "cutover_writes_discarded",
                            "accepted",
                            tenant=tenant.id,
                            wave=tenant.wave,
                            step=cut.step,
                            details={
                                "flag": cut.flag,
                                "cutover_status": cut.status.value,
                                "cutover_at": cut.at.astimezone(UTC).isoformat() if cut.at else None,
                                "accepted_with": "--discard-writes-since-cutover",
                            },
                        ),
                    )

    def tenant_done(self, tenant: str, points: Sequence[PlannedStep]) -> None:
        """Every step after the point is reverted for ``tenant``: the rollback points after it are
        no longer passed, and its rollback is no longer unfinished — one transaction."""
        with self.conn.transaction():
            records = self.env.control.steps(self.conn, [tenant])
            passed = {r.step_key for r in records if r.status is StepStatus.DONE}
            for step in points:
                if step.key in passed:
                    self.env.control.set_status(
                        self.conn, tenant, step, StepStatus.REVERTED, run_id=self.run_id
                    )
            self.env.rollbacks.finish(self.conn, tenant)

    def unfinished(self, tenants: Sequence[str], outcome: str, error: str | None) -> None:
        """The rollback of ``tenants`` stops before their end (``stopped`` or ``failed``), when the
        connection still lets us say so; a row left open says "interrupted" all the same."""
        if not tenants:
            return
        try:
            self.env.rollbacks.end(self.conn, tenants, outcome, None if error is None else redact(error))
        except psycopg.Error as exc:
            get_logger(run_id=str(self.run_id)).error("rollback_end_not_recorded", error=redact(str(exc)))

    def finished(self, outcome: str, details: dict[str, Any]) -> None:
        """``outcome``: ok, stopped or failed."""
        with self.conn.transaction():
            self.env.control.finish_run(self.conn, self.run_id, outcome)
            self.env.ledger.append(
                self.conn,
                self.env.entry(
                    self.run_id,
                    "rollback_finished",
                    {"ok": "ok", "stopped": "stopped"}.get(outcome, "error"),
                    details=details,
                ),
            )
