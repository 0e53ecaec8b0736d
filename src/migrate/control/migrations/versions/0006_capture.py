"""Change capture and freezes: what an online migration must find again after a kill -9.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

- ``captures``: per playbook and tenant, the replication slot and publication on
  the tenant's source (named ``tm_<playbook>_<tenant>``), where its changes
  begin (``consistent_lsn``: the exported snapshot the copy read), the tables a
  resumed copy read at a later exact snapshot and from where their changes count
  (``table_lsns``, as PostgreSQL's own table synchronisation does), how far they are applied
  (``applied_lsn``, committed in the same transaction as the rows), the lag the
  last poll measured, and whether the tenant is in the online phase (capture
  open and not cut over: ``online``, what the playbook's limit counts). The row
  is written as an intent (``status = 'creating'``) before the slot exists, so a
  runner killed in between leaves a slot the next run knows to be its own.
- ``freezes``: a tenant whose application roles lost write access on its source,
  since when, by which step, and the exact grants to give back (per role and
  table, with the grant option), written before the REVOKE.
"""

from __future__ import annotations

from alembic import context, op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _schema() -> str:
    name: str = context.config.attributes["schema"]
    return str(op.get_bind().dialect.identifier_preparer.quote_schema(name))


def upgrade() -> None:
    s = _schema()
    op.execute(f"""
        CREATE TABLE {s}.captures (
            playbook        text NOT NULL,
            tenant          text NOT NULL,
            slot            text NOT NULL,
            publication     text NOT NULL,
            status          text NOT NULL CHECK (status IN ('creating', 'capturing')),
            online          boolean NOT NULL DEFAULT true,
            consistent_lsn  pg_lsn,
            table_lsns      jsonb NOT NULL DEFAULT '{{}}',
            applied_lsn     pg_lsn,
            applied_at      timestamptz,
            changes_applied bigint NOT NULL DEFAULT 0,
            lag_changes     bigint,
            lag_bytes       bigint,
            lag_seconds     double precision,
            lag_at          timestamptz,
            created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (playbook, tenant)
        )""")
    op.execute(f"""
        CREATE TABLE {s}.freezes (
            playbook   text NOT NULL,
            tenant     text NOT NULL,
            roles      text[] NOT NULL,
            grants     jsonb NOT NULL,
            step       text NOT NULL,
            frozen_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (playbook, tenant)
        )""")


def downgrade() -> None:
    s = _schema()
    op.execute(f"DROP TABLE {s}.freezes")
    op.execute(f"DROP TABLE {s}.captures")
