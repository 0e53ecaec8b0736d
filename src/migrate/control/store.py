"""Run state, per-tenant step state, checkpoints and tenant locks in the control schema.

Every write goes to the database at once: a ``kill -9`` loses nothing, and the
next ``run`` reads where things stand. A tenant is held by a session-level
advisory lock on the runner's own connection, so a dead runner's lock dies
with its connection: no lock is ever left for a person to clear.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from migrate.errors import TenantLocked
from migrate.plan.model import PlannedStep, StepStatus

_TENANT_LOCK_CLASS = "migrate.tenant"


@dataclass(frozen=True)
class Checkpoint:
    table: str
    rows_copied: int
    done: bool
    last_key: Any


@dataclass(frozen=True)
class StepRecord:
    tenant: str
    step_key: str
    status: StepStatus
    finished_at: datetime | None
    details: Mapping[str, Any]
    error: str | None


class ControlStore:
    """The control schema of one target, seen by one playbook."""

    def __init__(self, schema: str, playbook: str) -> None:
        self.schema = schema
        self.playbook = playbook

    def _t(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    # runs -------------------------------------------------------------------
    def start_run(
        self,
        conn: psycopg.Connection[Any],
        *,
        run_id: UUID,
        digest: str,
        command: str,
        actor: str,
        host: str,
        pid: int,
        dry_run: bool,
    ) -> None:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (run_id, playbook, playbook_digest, command, actor, host, pid, dry_run)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            ).format(self._t("runs")),
            (run_id, self.playbook, digest, command, actor, host, pid, dry_run),
        )

    def finish_run(self, conn: psycopg.Connection[Any], run_id: UUID, outcome: str) -> None:
        conn.execute(
            sql.SQL("UPDATE {} SET finished_at = clock_timestamp(), outcome = %s WHERE run_id = %s").format(
                self._t("runs")
            ),
            (outcome, run_id),
        )

    # step state ---------------------------------------------------------------
    def steps(self, conn: psycopg.Connection[Any], tenants: Sequence[str] | None = None) -> list[StepRecord]:
        rows = conn.execute(
            sql.SQL(
                "SELECT tenant, step_key, status, finished_at, details, error FROM {}"
                " WHERE playbook = %s AND (%s::text[] IS NULL OR tenant = ANY(%s))"
            ).format(self._t("step_state")),
            (self.playbook, list(tenants) if tenants else None, list(tenants) if tenants else None),
        ).fetchall()
        return [StepRecord(r[0], r[1], StepStatus(r[2]), r[3], r[4], r[5]) for r in rows]

    def progress(
        self, conn: psycopg.Connection[Any], tenants: Sequence[str] | None = None
    ) -> dict[tuple[str, str], StepStatus]:
        return {(r.tenant, r.step_key): r.status for r in self.steps(conn, tenants)}

    def set_status(
        self,
        conn: psycopg.Connection[Any],
        tenant: str,
        step: PlannedStep,
        status: StepStatus,
        *,
        run_id: UUID,
        details: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Record a step's new state (its own statement: commits with the caller's transaction)."""
        running = status is StepStatus.RUNNING
        conn.execute(
            sql.SQL(
                "INSERT INTO {t} AS s (playbook, tenant, step_key, phase, kind, status, run_id,"
                " attempts, started_at, finished_at, details, error)"
                " VALUES (%(pb)s, %(tenant)s, %(key)s, %(phase)s, %(kind)s, %(status)s, %(run)s,"
                "  %(att)s, clock_timestamp(), CASE WHEN %(running)s THEN NULL ELSE clock_timestamp() END,"
                "  %(details)s, %(error)s)"
                " ON CONFLICT (playbook, tenant, step_key) DO UPDATE SET"
                "  status = excluded.status, run_id = excluded.run_id,"
                "  attempts = s.attempts + excluded.attempts,"
                "  started_at = CASE WHEN %(running)s THEN clock_timestamp() ELSE s.started_at END,"
                "  finished_at = excluded.finished_at,"
                "  details = CASE WHEN %(has_details)s THEN excluded.details ELSE s.details END,"
                "  error = excluded.error"
            ).format(t=self._t("step_state")),
            {
                "pb": self.playbook,
                "tenant": tenant,
                "key": step.key,
                "phase": step.phase,
                "kind": step.kind,
                "status": status.value,
                "run": run_id,
                "att": 1 if running else 0,
                "running": running,
                "details": Jsonb(json.loads(json.dumps(dict(details or {}), default=str))),
                "has_details": details is not None,
                "error": error,
            },
        )

    # checkpoints --------------------------------------------------------------
    def checkpoint(self, conn: psycopg.Connection[Any], tenant: str, table: str) -> Checkpoint | None:
        row = conn.execute(
            sql.SQL(
                "SELECT rows_copied, done, last_key FROM {} WHERE playbook = %s AND tenant = %s"
                " AND table_name = %s"
            ).format(self._t("checkpoints")),
            (self.playbook, tenant, table),
        ).fetchone()
        return None if row is None else Checkpoint(table, row[0], row[1], row[2])

    def save_checkpoint(
        self,
        conn: psycopg.Connection[Any],
        tenant: str,
        table: str,
        *,
        rows_copied: int,
        done: bool,
        last_key: Any = None,
    ) -> None:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (playbook, tenant, table_name, rows_copied, done, last_key)"
                " VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (playbook, tenant, table_name) DO UPDATE SET"
                "  rows_copied = excluded.rows_copied, done = excluded.done,"
                "  last_key = excluded.last_key, updated_at = clock_timestamp()"
            ).format(self._t("checkpoints")),
            (self.playbook, tenant, table, rows_copied, done, Jsonb(last_key)),
        )

    def checkpoints(self, conn: psycopg.Connection[Any], tenant: str) -> dict[str, Checkpoint]:
        """Every checkpoint of one tenant, by table (one query instead of one per table)."""
        rows = conn.execute(
            sql.SQL(
                "SELECT table_name, rows_copied, done, last_key FROM {} WHERE playbook = %s AND tenant = %s"
            ).format(self._t("checkpoints")),
            (self.playbook, tenant),
        ).fetchall()
        return {r[0]: Checkpoint(r[0], r[1], r[2], r[3]) for r in rows}

    def clear_checkpoints(
        self, conn: psycopg.Connection[Any], tenant: str, tables: Sequence[str] | None = None
    ) -> None:
        """Forget a tenant's checkpoints: all of them, or those of ``tables`` (other steps keep theirs)."""
        conn.execute(
            sql.SQL(
                "DELETE FROM {} WHERE playbook = %s AND tenant = %s"
                " AND (%s::text[] IS NULL OR table_name = ANY(%s))"
            ).format(self._t("checkpoints")),
            (
                self.playbook,
                tenant,
                None if tables is None else list(tables),
                None if tables is None else list(tables),
            ),
        )

    # tenant locks ---------------------------------------------------------------
    def lock_tenant(self, conn: psycopg.Connection[Any], tenant: str) -> None:
        """Take the tenant for this session, or raise TenantLocked naming the holder.

        Session-level, on the connection that does the tenant's work: when that
        connection dies the lock dies with it, so a runner that reconnects must
        take it again (and may find another runner has it by then).
        """
        got = conn.execute(
            "SELECT pg_try_advisory_lock(hashtext(%s), hashtext(%s))", (_TENANT_LOCK_CLASS, tenant)
        ).fetchone()
        if got and got[0]:
            return
        holder = conn.execute(
            "SELECT a.application_name, a.client_addr::text, a.pid, a.backend_start"
            " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted"
            "  AND l.classid = hashtext(%s)::oid AND l.objid = hashtext(%s)::oid LIMIT 1",
            (_TENANT_LOCK_CLASS, tenant),
        ).fetchone()
        who = (
            f"{holder[0] or 'a session'} (backend pid {holder[2]}, since {holder[3]:%Y-%m-%d %H:%M:%S})"
            if holder
            else "another runner"
        )
        raise TenantLocked(
            f"tenant '{tenant}' is being worked on by {who}",
            where=f"tenant {tenant}",
            hint="wait for that runner to finish, or run other tenants with --tenant; "
            "the lock goes away by itself when that runner stops",
        )

    def unlock_tenant(self, conn: psycopg.Connection[Any], tenant: str) -> None:
        if conn.closed or conn.broken:
            return  # the lock went with the session
        conn.execute("SELECT pg_advisory_unlock(hashtext(%s), hashtext(%s))", (_TENANT_LOCK_CLASS, tenant))

    @contextmanager
    def tenant_lock(self, conn: psycopg.Connection[Any], tenant: str) -> Iterator[None]:
        """Hold the tenant for this runner, or raise TenantLocked naming the holder."""
        self.lock_tenant(conn, tenant)
        try:
            yield
        finally:
            self.unlock_tenant(conn, tenant)
