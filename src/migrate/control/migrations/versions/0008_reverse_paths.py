"""Reverse paths and shared-side freezes: what a rollback after the cut-over must find again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

- ``reverse_paths``: per playbook and tenant cut over online, the logical slot and
  the publication (row filter ``tenant_id = <tenant>``) on the shared database that
  capture the application's writes to the tenant's rows from the cut-over on, the
  tables they cover (load order), where the slot was advanced to past the tool's own
  writes (``fence_lsn``) and how many changes a rollback applied back. Written as an
  intent before the slot exists; removed by finalise and by the rollback that used it.
- ``shared_freezes``: a tenant whose writes to the shared tables are refused (a
  ``BEFORE`` row trigger on each shared table raises 25006 for it), since when and by
  which step. Other tenants are never affected.
"""

from __future__ import annotations

from alembic import context, op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _schema() -> str:
    name: str = context.config.attributes["schema"]
    return str(op.get_bind().dialect.identifier_preparer.quote_schema(name))


def upgrade() -> None:
    s = _schema()
    op.execute(f"""
        CREATE TABLE {s}.reverse_paths (
            playbook        text NOT NULL,
            tenant          text NOT NULL,
            slot            text NOT NULL,
            publication     text NOT NULL,
            tables          jsonb NOT NULL,
            status          text NOT NULL CHECK (status IN ('creating', 'capturing')),
            fence_lsn       pg_lsn,
            changes_applied bigint NOT NULL DEFAULT 0,
            created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (playbook, tenant)
        )""")
    op.execute(f"""
        CREATE TABLE {s}.shared_freezes (
            tenant     text PRIMARY KEY,
            playbook   text NOT NULL,
            step       text NOT NULL,
            frozen_at  timestamptz NOT NULL DEFAULT clock_timestamp()
        )""")


def downgrade() -> None:
    s = _schema()
    # The shared-side guard (made at a cut-over) reads shared_freezes: it goes with its triggers.
    op.execute(f"DROP FUNCTION IF EXISTS {s}.tm_shared_guard() CASCADE")
    op.execute(f"DROP TABLE {s}.shared_freezes")
    op.execute(f"DROP TABLE {s}.reverse_paths")
