"""Where a step's state and ledger entries go: the sinks a run and a rehearsal differ by.

A real run (``Sink``) writes the step's state and its ledger entry on the
tenant's target connection, in one transaction with the step's effect where
they share a database. A rehearsal (``RehearsalSink``) leaves the run state
alone — its tenant's transaction is rolled back anyway — and appends one
``rehearsed`` entry per step on a connection of its own, so the ledger keeps
what the rehearsal did and found.
"""

from __future__ import annotations

from uuid import UUID

import psycopg

from migrate.control.ledger import Entry
from migrate.control.store import StepRecord
from migrate.engine.session import Environment, TenantSession
from migrate.errors import MigrateError
from migrate.log import redact
from migrate.plan.model import PlannedStep, StepStatus
from migrate.steps.context import Details


class Sink:
    """Where a step's state and ledger entries go in a real run: the target, with the effect."""

    def __init__(self, session: TenantSession, env: Environment) -> None:
        self.session = session
        self.env = env

    def ids(self, step: PlannedStep) -> dict[str, str]:
        tenant = self.session.tenant
        return {"tenant": tenant.id, "wave": tenant.wave, "phase": step.phase, "step": step.key}

    def _entry(self, step: PlannedStep, action: str, outcome: str, details: Details) -> Entry:
        return self.env.entry(self.session.run_id, action, outcome, details=details, **self.ids(step))

    def started(self, step: PlannedStep, left_by: StepRecord | None) -> None:
        conn, tenant = self.session.ctx.target, self.session.tenant.id
        if left_by is not None:
            # Under our lock, "running" means its runner died: its lock died with its connection.
            self.env.ledger.append(
                conn,
                self._entry(
                    step,
                    "resumed",
                    "ok",
                    {"left_by_run": str(left_by.run_id) if left_by.run_id else None, "why": "runner gone"},
                ),
            )
            self.session.ctx.log.warning(
                "step_resumed", step=step.key, left_by_run=str(left_by.run_id), why="runner gone"
            )
        self.env.control.set_status(conn, tenant, step, StepStatus.RUNNING, run_id=self.session.run_id)

    def passed(self, step: PlannedStep) -> None:
        conn = self.session.ctx.target
        with conn.transaction():
            self.env.control.set_status(
                conn, self.session.tenant.id, step, StepStatus.DONE, run_id=self.session.run_id
            )
            self.env.ledger.append(conn, self._entry(step, "point_passed", "ok", {}))

    def applied(self, step: PlannedStep, details: Details, seconds: float) -> None:
        conn = self.session.ctx.target
        with conn.transaction():
            self.env.control.set_status(
                conn,
                self.session.tenant.id,
                step,
                StepStatus.DONE,
                run_id=self.session.run_id,
                details=details,
            )
            self.env.ledger.append(
                conn, self._entry(step, "applied", "ok", {**details, "seconds": round(seconds, 3)})
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
                    error=str(error),
                    details=details or None,
                )
                self.env.ledger.append(
                    conn, self._entry(step, "failed", "error", {**details, "error": str(error)})
                )
        except (MigrateError, psycopg.Error) as exc:
            # The step stays 'running' in the control schema: the next run redoes it, as after a kill.
            session.ctx.log.error("failure_not_recorded", step=step.key, error=redact(str(exc)))


class RehearsalSink(Sink):
    """Where a rehearsal's traces go: nothing in the run state, one ``rehearsed`` entry per step,
    appended on a connection of its own (the tenant's transaction is rolled back)."""

    def __init__(self, session: TenantSession, env: Environment, run_id: UUID) -> None:
        super().__init__(session, env)
        self.run_id = run_id

    def _rehearsed(self, step: PlannedStep, outcome: str, details: Details) -> None:
        entry = self.env.entry(self.run_id, "rehearsed", outcome, details=details, **self.ids(step))
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
