"""Change capture and freeze state of a playbook's tenants, in the control schema (revision 0004).

Every write goes to the database at once, most inside the caller's transaction
(``save_progress`` commits with the rows it accounts for), so a ``kill -9``
loses nothing: the next run finds the slot it made, how far its changes are
applied, and which grants a freeze took away.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from migrate.control import locks


@dataclass(frozen=True)
class Capture:
    tenant: str
    slot: str
    publication: str
    status: str  # creating (the slot may not exist yet) | capturing
    online: bool  # capture open and the tenant not cut over
    consistent_lsn: str | None
    table_lsns: Mapping[str, str]  # tables copied at a later snapshot: their changes count from there
    applied_lsn: str | None
    applied_at: datetime | None
    changes_applied: int
    lag_changes: int | None
    lag_bytes: int | None
    lag_seconds: float | None
    lag_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class Freeze:
    tenant: str
    roles: tuple[str, ...]
    grants: tuple[Mapping[str, Any], ...]  # what to give back: replication.freeze.Grant as JSON
    step: str  # phase/step that froze it
    frozen_at: datetime


_CAPTURE_COLUMNS = (
    "tenant, slot, publication, status, online, consistent_lsn::text, table_lsns, applied_lsn::text,"
    " applied_at, changes_applied, lag_changes, lag_bytes, lag_seconds, lag_at, created_at"
)


class CaptureStore:
    """The ``captures`` and ``freezes`` tables of one control schema, seen by one playbook."""

    def __init__(self, schema: str, playbook: str) -> None:
        self.schema = schema
        self.playbook = playbook

    def _t(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    # captures -----------------------------------------------------------------
    def captures(
        self, conn: psycopg.Connection[Any], tenants: Sequence[str] | None = None
    ) -> dict[str, Capture]:
        rows = conn.execute(
            sql.SQL(
                "SELECT {} FROM {} WHERE playbook = %s AND (%s::text[] IS NULL OR tenant = ANY(%s))"
            ).format(sql.SQL(_CAPTURE_COLUMNS), self._t("captures")),
            (self.playbook, list(tenants) if tenants else None, list(tenants) if tenants else None),
        ).fetchall()
        return {r[0]: Capture(*r) for r in rows}

    def capture(self, conn: psycopg.Connection[Any], tenant: str) -> Capture | None:
        return self.captures(conn, [tenant]).get(tenant)

    def intend(self, conn: psycopg.Connection[Any], tenant: str, slot: str, publication: str) -> None:
        """Before the slot exists: its name, so a runner killed in between leaves nothing unknown."""
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (playbook, tenant, slot, publication, status)"
                " VALUES (%s, %s, %s, %s, 'creating')"
                " ON CONFLICT (playbook, tenant) DO UPDATE SET slot = excluded.slot,"
                "  publication = excluded.publication, status = 'creating', online = true"
            ).format(self._t("captures")),
            (self.playbook, tenant, slot, publication),
        )

    def started(self, conn: psycopg.Connection[Any], tenant: str, consistent_lsn: str) -> None:
        """The slot exists and the copy reads its snapshot: changes count from ``consistent_lsn``."""
        conn.execute(
            sql.SQL(
                "UPDATE {} SET status = 'capturing', consistent_lsn = %s::pg_lsn, table_lsns = '{{}}',"
                " applied_lsn = %s::pg_lsn, applied_at = clock_timestamp(), changes_applied = 0"
                " WHERE playbook = %s AND tenant = %s"
            ).format(self._t("captures")),
            (consistent_lsn, consistent_lsn, self.playbook, tenant),
        )

    def copied_at(self, conn: psycopg.Connection[Any], tenant: str, tables: Sequence[str], lsn: str) -> None:
        """``tables`` are (re)copied at the exact snapshot of ``lsn``: their changes count from there."""
        conn.execute(
            sql.SQL(
                "UPDATE {} SET table_lsns = table_lsns || (SELECT jsonb_object_agg(t, %s::text)"
                " FROM unnest(%s::text[]) AS t) WHERE playbook = %s AND tenant = %s"
            ).format(self._t("captures")),
            (lsn, list(tables), self.playbook, tenant),
        )

    def save_progress(
        self, conn: psycopg.Connection[Any], tenant: str, lsn: str, changes: int, lag: tuple[int, int, float]
    ) -> None:
        """How far changes are applied: in the transaction that applied them."""
        conn.execute(
            sql.SQL(
                "UPDATE {} SET applied_lsn = %s::pg_lsn, applied_at = clock_timestamp(),"
                " changes_applied = changes_applied + %s, lag_changes = %s, lag_bytes = %s, lag_seconds = %s,"
                " lag_at = clock_timestamp() WHERE playbook = %s AND tenant = %s"
            ).format(self._t("captures")),
            (lsn, changes, *lag, self.playbook, tenant),
        )

    def save_lag(self, conn: psycopg.Connection[Any], tenant: str, lag: tuple[int, int, float]) -> None:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET lag_changes = %s, lag_bytes = %s, lag_seconds = %s, lag_at = clock_timestamp()"
                " WHERE playbook = %s AND tenant = %s"
            ).format(self._t("captures")),
            (*lag, self.playbook, tenant),
        )

    def set_online(self, conn: psycopg.Connection[Any], tenant: str, online: bool) -> None:
        conn.execute(
            sql.SQL("UPDATE {} SET online = %s WHERE playbook = %s AND tenant = %s").format(
                self._t("captures")
            ),
            (online, self.playbook, tenant),
        )

    def forget(self, conn: psycopg.Connection[Any], tenant: str) -> None:
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE playbook = %s AND tenant = %s").format(self._t("captures")),
            (self.playbook, tenant),
        )

    def lock_online(self, conn: psycopg.Connection[Any]) -> None:
        """In the caller's transaction: one runner at a time counts and joins the online phase."""
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))", (locks.ONLINE, self.playbook)
        )

    def online(self, conn: psycopg.Connection[Any]) -> list[str]:
        """The playbook's tenants in the online phase now."""
        rows = conn.execute(
            sql.SQL("SELECT tenant FROM {} WHERE playbook = %s AND online ORDER BY created_at").format(
                self._t("captures")
            ),
            (self.playbook,),
        ).fetchall()
        return [r[0] for r in rows]

    # freezes ------------------------------------------------------------------
    def freezes(
        self, conn: psycopg.Connection[Any], tenants: Sequence[str] | None = None
    ) -> dict[str, Freeze]:
        rows = conn.execute(
            sql.SQL(
                "SELECT tenant, roles, grants, step, frozen_at FROM {} WHERE playbook = %s"
                " AND (%s::text[] IS NULL OR tenant = ANY(%s))"
            ).format(self._t("freezes")),
            (self.playbook, list(tenants) if tenants else None, list(tenants) if tenants else None),
        ).fetchall()
        return {r[0]: Freeze(r[0], tuple(r[1]), tuple(r[2]), r[3], r[4]) for r in rows}

    def freeze(self, conn: psycopg.Connection[Any], tenant: str) -> Freeze | None:
        return self.freezes(conn, [tenant]).get(tenant)

    def record_freeze(
        self,
        conn: psycopg.Connection[Any],
        tenant: str,
        roles: Sequence[str],
        grants: Sequence[Mapping[str, Any]],
        step: str,
    ) -> None:
        """Before the REVOKE: what to give back. A freeze already recorded keeps its first record."""
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (playbook, tenant, roles, grants, step) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (playbook, tenant) DO NOTHING"
            ).format(self._t("freezes")),
            (self.playbook, tenant, list(roles), Jsonb([dict(g) for g in grants]), step),
        )

    def thawed(self, conn: psycopg.Connection[Any], tenant: str) -> None:
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE playbook = %s AND tenant = %s").format(self._t("freezes")),
            (self.playbook, tenant),
        )
