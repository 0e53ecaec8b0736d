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

from migrate.control import locks
from migrate.errors import TenantLocked
from migrate.plan.model import PlannedStep, StepStatus


@dataclass(frozen=True)
class Checkpoint:
    table: str
    rows_copied: int
    done: bool
    last_key: Any


def range_checkpoint(table: str, part: int) -> str:
    """The checkpoint of one key range of a table the backfill split (``steps/backfill.py``):
    ``table#part``. Clearing a table's checkpoints clears its ranges' too."""
    return f"{table}#{part}"


@dataclass(frozen=True)
class Holder:
    """Who holds a tenant's lock right now: the runner's host and pid, since when, in which run.

    Read from the lock itself (pg_locks), completed from the ``holders`` row the runner
    wrote when it took the lock; a rehearsal writes no row, so only ``application``
    (``migrate HOST:PID``) and ``since`` (its session's start) are known then.
    """

    tenant: str
    backend_pid: int
    since: datetime
    host: str | None = None
    pid: int | None = None
    run_id: UUID | None = None
    command: str | None = None
    application: str | None = None

    def describe(self) -> str:
        if self.host is not None:
            run = f"run {str(self.run_id)[:8]} " if self.run_id else ""
            since = f"{self.since:%Y-%m-%d %H:%M:%S %Z}".strip()
            return f"{run}('migrate {self.command}') on {self.host}, pid {self.pid}, since {since}"
        who = self.application or "a session"
        return f"{who} (backend pid {self.backend_pid}, since {self.since:%Y-%m-%d %H:%M:%S %Z})"


@dataclass(frozen=True)
class Approval:
    wave: str
    actor: str
    host: str
    digest: str
    at: datetime


@dataclass(frozen=True)
class StepRecord:
    tenant: str
    step_key: str
    status: StepStatus
    finished_at: datetime | None
    details: Mapping[str, Any]
    error: str | None
    run_id: UUID | None = None


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
                "SELECT tenant, step_key, status, finished_at, details, error, run_id FROM {}"
                " WHERE playbook = %s AND (%s::text[] IS NULL OR tenant = ANY(%s))"
            ).format(self._t("step_state")),
            (self.playbook, list(tenants) if tenants else None, list(tenants) if tenants else None),
        ).fetchall()
        return [StepRecord(r[0], r[1], StepStatus(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

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

    def merge_details(
        self, conn: psycopg.Connection[Any], tenant: str, step_key: str, patch: Mapping[str, Any]
    ) -> None:
        """Set some keys of a step's recorded details, keeping the others (its own statement)."""
        conn.execute(
            sql.SQL(
                "UPDATE {} SET details = details || %s WHERE playbook = %s AND tenant = %s AND step_key = %s"
            ).format(self._t("step_state")),
            (Jsonb(dict(patch)), self.playbook, tenant, step_key),
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
        """Forget a tenant's checkpoints: all of them, or those of ``tables`` (other steps keep theirs)
        with their key ranges' (``range_checkpoint``)."""
        conn.execute(
            sql.SQL(
                "DELETE FROM {} WHERE playbook = %(p)s AND tenant = %(tenant)s"
                " AND (%(t)s::text[] IS NULL OR table_name = ANY(%(t)s)"
                "  OR regexp_replace(table_name, '#[0-9]+$', '') = ANY(%(t)s))"
            ).format(self._t("checkpoints")),
            {"p": self.playbook, "tenant": tenant, "t": None if tables is None else list(tables)},
        )

    # playbook version, approvals -------------------------------------------------
    def accepted_digest(self, conn: psycopg.Connection[Any]) -> tuple[str, datetime, str] | None:
        """(digest, since, by whom) of the playbook version runs work to; None before the first run."""
        row = conn.execute(
            sql.SQL("SELECT playbook_digest, accepted_at, actor FROM {} WHERE playbook = %s").format(
                self._t("playbook_versions")
            ),
            (self.playbook,),
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def accept_digest(self, conn: psycopg.Connection[Any], digest: str, actor: str) -> None:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (playbook, playbook_digest, actor) VALUES (%s, %s, %s)"
                " ON CONFLICT (playbook) DO UPDATE SET playbook_digest = excluded.playbook_digest,"
                "  actor = excluded.actor, accepted_at = clock_timestamp()"
            ).format(self._t("playbook_versions")),
            (self.playbook, digest, actor),
        )

    def approve(
        self, conn: psycopg.Connection[Any], wave: str, *, digest: str, actor: str, host: str
    ) -> None:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (playbook, wave, playbook_digest, actor, host) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (playbook, wave) DO UPDATE SET playbook_digest = excluded.playbook_digest,"
                "  actor = excluded.actor, host = excluded.host, approved_at = clock_timestamp()"
            ).format(self._t("approvals")),
            (self.playbook, wave, digest, actor, host),
        )

    def approvals(self, conn: psycopg.Connection[Any]) -> dict[str, Approval]:
        rows = conn.execute(
            sql.SQL(
                "SELECT wave, actor, host, playbook_digest, approved_at FROM {} WHERE playbook = %s"
            ).format(self._t("approvals")),
            (self.playbook,),
        ).fetchall()
        return {r[0]: Approval(r[0], r[1], r[2], r[3], r[4]) for r in rows}

    # tenant locks ---------------------------------------------------------------
    def record_holder(
        self, conn: psycopg.Connection[Any], tenant: str, *, run_id: UUID, command: str, host: str, pid: int
    ) -> None:
        """Note who took the tenant's lock, on the connection that holds it (status shows it)."""
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (tenant, playbook, run_id, command, host, pid, backend_pid)"
                " VALUES (%s, %s, %s, %s, %s, %s, pg_backend_pid())"
                " ON CONFLICT (tenant) DO UPDATE SET playbook = excluded.playbook, run_id = excluded.run_id,"
                "  command = excluded.command, host = excluded.host, pid = excluded.pid,"
                "  backend_pid = excluded.backend_pid, since = clock_timestamp()"
            ).format(self._t("holders")),
            (tenant, self.playbook, run_id, command, host, pid),
        )

    def holders(self, conn: psycopg.Connection[Any], tenants: Sequence[str]) -> dict[str, Holder]:
        """Who holds each of ``tenants`` now, from the locks themselves (a dead runner holds nothing)."""
        rows = conn.execute(
            sql.SQL(
                "SELECT t.tenant, l.pid, coalesce(h.since, a.backend_start), h.host, h.pid, h.run_id,"
                "  h.command, a.application_name"
                " FROM unnest(%s::text[]) AS t(tenant)"
                " JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 2"
                "  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                "  AND l.classid = hashtext(%s)::oid AND l.objid = hashtext(t.tenant)::oid"
                " JOIN pg_stat_activity a ON a.pid = l.pid"
                " LEFT JOIN {} h ON h.tenant = t.tenant AND h.backend_pid = l.pid"
            ).format(self._t("holders")),
            (list(tenants), locks.TENANT),
        ).fetchall()
        return {r[0]: Holder(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows}

    def lock_tenant(self, conn: psycopg.Connection[Any], tenant: str) -> None:
        """Take the tenant for this session, or raise TenantLocked naming the holder.

        Session-level, on the connection that does the tenant's work: when that
        connection dies the lock dies with it, so a runner that reconnects must
        take it again (and may find another runner has it by then).
        """
        got = conn.execute(
            "SELECT pg_try_advisory_lock(hashtext(%s), hashtext(%s))", (locks.TENANT, tenant)
        ).fetchone()
        if got and got[0]:
            return
        holder = self.holders(conn, [tenant]).get(tenant)
        who = holder.describe() if holder else "another runner"
        raise TenantLocked(
            f"tenant '{tenant}' is being worked on by {who}",
            where=f"tenant {tenant}",
            hint="wait for that runner to finish, or run other tenants with --tenant; "
            "the lock goes away by itself when that runner stops",
        )

    def unlock_tenant(self, conn: psycopg.Connection[Any], tenant: str) -> None:
        if conn.closed or conn.broken:
            return  # the lock went with the session
        conn.execute("SELECT pg_advisory_unlock(hashtext(%s), hashtext(%s))", (locks.TENANT, tenant))

    @contextmanager
    def tenant_lock(self, conn: psycopg.Connection[Any], tenant: str) -> Iterator[None]:
        """Hold the tenant for this runner, or raise TenantLocked naming the holder."""
        self.lock_tenant(conn, tenant)
        try:
            yield
        finally:
            self.unlock_tenant(conn, tenant)
