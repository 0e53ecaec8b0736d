"""Rollbacks that have not finished, per tenant (the ``rollbacks`` table, revision 0004).

A rollback writes its row for each tenant before it reverts anything, and deletes it in
the transaction of the tenant's last step; whatever stops it in between — Ctrl-C,
SIGTERM, a failed revert, ``kill -9``, a lost server — leaves the row behind. That row
is the truth ``status`` shows ("rollback interrupted", with the command that finishes
it) and the reason ``run`` refuses the tenant: its shared rows may be half deleted
while its backfill still reads ``done``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql


@dataclass(frozen=True)
class UnfinishedRollback:
    """A tenant's rollback that started and has not finished."""

    tenant: str
    point: str
    discard_writes: bool  # it was given --discard-writes-since-cutover
    run_id: UUID
    since: datetime
    outcome: str | None  # stopped | failed; None: still going, or its process died
    error: str | None


class Rollbacks:
    """The unfinished rollbacks of one playbook, in one control schema."""

    def __init__(self, schema: str, playbook: str) -> None:
        self.schema = schema
        self.playbook = playbook

    def _t(self) -> sql.Identifier:
        return sql.Identifier(self.schema, "rollbacks")

    def exists(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether the control schema has the table yet (a status before the first upgrade)."""
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{self.schema}".rollbacks',)).fetchone()
        return bool(row and row[0])

    def begin(
        self, conn: psycopg.Connection[Any], tenant: str, *, point: str, discard_writes: bool, run_id: UUID
    ) -> None:
        """The tenant's rollback to ``point`` starts (its own statement: commits with the caller's)."""
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (playbook, tenant, point, discard_writes, run_id) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (playbook, tenant) DO UPDATE SET point = excluded.point,"
                "  discard_writes = excluded.discard_writes, run_id = excluded.run_id,"
                "  started_at = clock_timestamp(), outcome = NULL, ended_at = NULL, error = NULL"
            ).format(self._t()),
            (self.playbook, tenant, point, discard_writes, run_id),
        )

    def finish(self, conn: psycopg.Connection[Any], tenant: str) -> None:
        """The tenant's rollback is done: nothing is left unfinished."""
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE playbook = %s AND tenant = %s").format(self._t()),
            (self.playbook, tenant),
        )

    def end(
        self, conn: psycopg.Connection[Any], tenants: Sequence[str], outcome: str, error: str | None
    ) -> None:
        """The rollback of ``tenants`` stopped without finishing: ``stopped`` or ``failed``."""
        conn.execute(
            sql.SQL(
                "UPDATE {} SET outcome = %s, error = %s, ended_at = clock_timestamp()"
                " WHERE playbook = %s AND tenant = ANY(%s)"
            ).format(self._t()),
            (outcome, error, self.playbook, list(tenants)),
        )

    def unfinished(
        self, conn: psycopg.Connection[Any], tenants: Sequence[str] | None = None
    ) -> dict[str, UnfinishedRollback]:
        rows = conn.execute(
            sql.SQL(
                "SELECT tenant, point, discard_writes, run_id, started_at, outcome, error FROM {}"
                " WHERE playbook = %s AND (%s::text[] IS NULL OR tenant = ANY(%s))"
            ).format(self._t()),
            (self.playbook, list(tenants) if tenants else None, list(tenants) if tenants else None),
        ).fetchall()
        return {r[0]: UnfinishedRollback(*r) for r in rows}
