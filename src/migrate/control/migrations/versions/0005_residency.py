"""Residency: the region this target database holds, recorded by a person, append-only.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24

- ``residency``: one row per recording (``migrate residency set``), the newest is what
  the database holds now: its region, and which database it was recorded on (its name
  and the server's system identifier), so a control schema copied into another
  database (a restore, ``CREATE DATABASE … TEMPLATE``) does not carry the claim with
  it. Every write path checks it before the first row moves (migrate.engine.residency).
  The ledger has the same fact, hash-chained, written in the same transaction.
- Append-only like the ledger: a trigger refuses UPDATE, DELETE and TRUNCATE for
  everyone (``ENABLE ALWAYS``), so a change of region is a new row, never an edit.
"""

from __future__ import annotations

from alembic import context, op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _schema() -> str:
    name: str = context.config.attributes["schema"]
    return str(op.get_bind().dialect.identifier_preparer.quote_schema(name))


def upgrade() -> None:
    s = _schema()
    op.execute(f"""
        CREATE TABLE {s}.residency (
            seq               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            region            text NOT NULL CHECK (region ~ '^[a-z0-9][a-z0-9_.-]{{0,62}}$'),
            database          text NOT NULL,
            system_identifier text,
            actor             text NOT NULL,
            host              text NOT NULL,
            playbook          text NOT NULL,
            recorded_at       timestamptz NOT NULL DEFAULT clock_timestamp()
        )""")
    op.execute(f"""
        CREATE FUNCTION {s}.residency_refuse_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the residency record is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'record another region with: migrate residency set PLAYBOOK --region R --change';
        END
        $$""")
    op.execute(f"""
        CREATE TRIGGER residency_no_update_delete BEFORE UPDATE OR DELETE ON {s}.residency
        FOR EACH ROW EXECUTE FUNCTION {s}.residency_refuse_change()""")
    op.execute(f"""
        CREATE TRIGGER residency_no_truncate BEFORE TRUNCATE ON {s}.residency
        FOR EACH STATEMENT EXECUTE FUNCTION {s}.residency_refuse_change()""")
    for trigger in ("residency_no_update_delete", "residency_no_truncate"):
        op.execute(f"ALTER TABLE {s}.residency ENABLE ALWAYS TRIGGER {trigger}")


def downgrade() -> None:
    s = _schema()
    op.execute(f"DROP TABLE {s}.residency")
    op.execute(f"DROP FUNCTION {s}.residency_refuse_change()")
