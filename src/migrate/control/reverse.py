"""Reverse paths and shared-side freezes of a playbook's tenants, in the control schema (revision 0008).

A reverse path is the slot and publication on the shared database that capture a cut-over
tenant's writes for a rollback; a shared-side freeze refuses one tenant's writes to the
shared tables (the guard trigger reads ``shared_freezes``). Every write commits at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb


@dataclass(frozen=True)
class ReversePath:
    tenant: str
    slot: str
    publication: str
    tables: tuple[str, ...]  # load order, parents first
    status: str  # creating (the slot may not exist yet) | capturing
    fence_lsn: str | None
    changes_applied: int
    created_at: datetime


class ReverseStore:
    """The ``reverse_paths`` and ``shared_freezes`` tables of one control schema, seen by one playbook."""

    def __init__(self, schema: str, playbook: str) -> None:
        self.schema = schema
        self.playbook = playbook

    def _t(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    def paths(self, conn: psycopg.Connection[Any], tenants: Sequence[str]) -> dict[str, ReversePath]:
        rows = conn.execute(
            sql.SQL(
                "SELECT tenant, slot, publication, tables, status, fence_lsn::text, changes_applied,"
                " created_at"
                " FROM {} WHERE playbook = %s AND tenant = ANY(%s)"
            ).format(self._t("reverse_paths")),
            (self.playbook, list(tenants)),
        ).fetchall()
        return {r[0]: ReversePath(r[0], r[1], r[2], tuple(r[3]), r[4], r[5], int(r[6]), r[7]) for r in rows}

    def path(self, conn: psycopg.Connection[Any], tenant: str) -> ReversePath | None:
        return self.paths(conn, [tenant]).get(tenant)

    def intend(
        self, conn: psycopg.Connection[Any], tenant: str, slot: str, publication: str, tables: Sequence[str]
    ) -> None:
        """Before the slot exists: its name, so a runner killed in between leaves nothing unknown."""
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (playbook, tenant, slot, publication, tables, status)"
                " VALUES (%s, %s, %s, %s, %s, 'creating') ON CONFLICT (playbook, tenant) DO UPDATE SET"
                " slot = excluded.slot, publication = excluded.publication, tables = excluded.tables,"
                " status = 'creating', fence_lsn = NULL, changes_applied = 0, created_at = clock_timestamp()"
            ).format(self._t("reverse_paths")),
            (self.playbook, tenant, slot, publication, Jsonb(list(tables))),
        )

    def capturing(self, conn: psycopg.Connection[Any], tenant: str, fence_lsn: str) -> None:
        """The slot exists and stands past the tool's own writes: it captures the application's."""
        conn.execute(
            sql.SQL(
                "UPDATE {} SET status = 'capturing', fence_lsn = %s::pg_lsn"
                " WHERE playbook = %s AND tenant = %s"
            ).format(self._t("reverse_paths")),
            (fence_lsn, self.playbook, tenant),
        )

    def applied(self, conn: psycopg.Connection[Any], tenant: str, changes: int) -> None:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET changes_applied = changes_applied + %s WHERE playbook = %s AND tenant = %s"
            ).format(self._t("reverse_paths")),
            (changes, self.playbook, tenant),
        )

    def forget(self, conn: psycopg.Connection[Any], tenant: str) -> None:
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE playbook = %s AND tenant = %s").format(self._t("reverse_paths")),
            (self.playbook, tenant),
        )

    # shared-side freezes ---------------------------------------------------------
    def freeze_shared(self, conn: psycopg.Connection[Any], tenant: str, step: str) -> datetime:
        """The tenant's writes to the shared tables are refused from the commit on; when it began."""
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (tenant, playbook, step) VALUES (%s, %s, %s) ON CONFLICT (tenant) DO NOTHING"
            ).format(self._t("shared_freezes")),
            (tenant, self.playbook, step),
        )
        row = conn.execute(
            sql.SQL("SELECT frozen_at FROM {} WHERE tenant = %s").format(self._t("shared_freezes")), (tenant,)
        ).fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    def shared_frozen(self, conn: psycopg.Connection[Any], tenant: str) -> datetime | None:
        row = conn.execute(
            sql.SQL("SELECT frozen_at FROM {} WHERE tenant = %s").format(self._t("shared_freezes")), (tenant,)
        ).fetchone()
        return None if row is None else row[0]

    def thaw_shared(self, conn: psycopg.Connection[Any], tenant: str) -> bool:
        cur = conn.execute(
            sql.SQL("DELETE FROM {} WHERE tenant = %s").format(self._t("shared_freezes")), (tenant,)
        )
        return cur.rowcount > 0
