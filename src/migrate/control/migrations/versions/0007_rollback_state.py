"""Rollback state: a rollback that has not finished, per tenant.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24

- ``rollbacks``: one row per tenant whose rollback started and has not finished: to
  which point, with which options, since when, and — once it stopped without
  finishing — ``stopped`` (asked to stop at a safe point) or ``failed`` (a revert
  failed, with its error). A row that is still open without a live holder of the
  tenant's lock was left by a killed rollback. The row is written, with the rollback's
  ``rollback_started`` ledger entries, before anything is reverted, and removed with
  the tenant's last revert, so ``status`` can say "rollback interrupted" with the
  command that finishes it, and ``run`` refuses the tenant until it has.
"""

from __future__ import annotations

from alembic import context, op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _schema() -> str:
    name: str = context.config.attributes["schema"]
    return str(op.get_bind().dialect.identifier_preparer.quote_schema(name))


def upgrade() -> None:
    s = _schema()
    op.execute(f"""
        CREATE TABLE {s}.rollbacks (
            playbook       text NOT NULL,
            tenant         text NOT NULL,
            point          text NOT NULL,
            discard_writes boolean NOT NULL DEFAULT false,
            run_id         uuid NOT NULL REFERENCES {s}.runs (run_id),
            started_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
            outcome        text CHECK (outcome IN ('stopped', 'failed')),
            ended_at       timestamptz,
            error          text,
            PRIMARY KEY (playbook, tenant)
        )""")


def downgrade() -> None:
    op.execute(f"DROP TABLE {_schema()}.rollbacks")
