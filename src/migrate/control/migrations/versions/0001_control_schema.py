"""Control schema: runs, step state, checkpoints and the append-only ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import context, op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _schema() -> str:
    # Validated as a plain identifier by the playbook model, and quoted by the dialect.
    name: str = context.config.attributes["schema"]
    return str(op.get_bind().dialect.identifier_preparer.quote_schema(name))


def upgrade() -> None:
    s = _schema()
    op.execute(f"""
        CREATE TABLE {s}.runs (
            run_id          uuid PRIMARY KEY,
            playbook        text NOT NULL,
            playbook_digest text NOT NULL,
            command         text NOT NULL,
            actor           text NOT NULL,
            host            text NOT NULL,
            pid             integer NOT NULL,
            dry_run         boolean NOT NULL DEFAULT false,
            started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            finished_at     timestamptz,
            outcome         text
        )""")
    op.execute(f"""
        CREATE TABLE {s}.step_state (
            playbook    text NOT NULL,
            tenant      text NOT NULL,
            step_key    text NOT NULL,
            phase       text NOT NULL,
            kind        text NOT NULL,
            status      text NOT NULL
                CHECK (status IN ('pending', 'running', 'done', 'failed', 'reverted')),
            run_id      uuid REFERENCES {s}.runs (run_id),
            attempts    integer NOT NULL DEFAULT 0,
            started_at  timestamptz,
            finished_at timestamptz,
            details     jsonb NOT NULL DEFAULT '{{}}',
            error       text,
            PRIMARY KEY (playbook, tenant, step_key)
        )""")
    op.execute(f"""
        CREATE TABLE {s}.checkpoints (
            playbook    text NOT NULL,
            tenant      text NOT NULL,
            table_name  text NOT NULL,
            rows_copied bigint NOT NULL DEFAULT 0,
            last_key    jsonb,
            done        boolean NOT NULL DEFAULT false,
            updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (playbook, tenant, table_name)
        )""")
    op.execute(f"""
        CREATE TABLE {s}.ledger (
            seq             bigint PRIMARY KEY,
            at              timestamptz NOT NULL,
            run_id          uuid,
            actor           text NOT NULL,
            host            text NOT NULL,
            playbook        text NOT NULL,
            playbook_digest text NOT NULL,
            tenant          text,
            wave            text,
            phase           text,
            step            text,
            action          text NOT NULL,
            outcome         text NOT NULL,
            details         jsonb NOT NULL DEFAULT '{{}}',
            prev_hash       text NOT NULL,
            hash            text NOT NULL UNIQUE
        )""")
    # Append-only in the database, not by convention: no UPDATE, DELETE or TRUNCATE.
    op.execute(f"""
        CREATE FUNCTION {s}.ledger_refuse_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the ledger is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$""")
    op.execute(f"""
        CREATE TRIGGER ledger_no_update_delete BEFORE UPDATE OR DELETE ON {s}.ledger
        FOR EACH ROW EXECUTE FUNCTION {s}.ledger_refuse_change()""")
    op.execute(f"""
        CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON {s}.ledger
        FOR EACH STATEMENT EXECUTE FUNCTION {s}.ledger_refuse_change()""")


def downgrade() -> None:
    s = _schema()
    op.execute(f"DROP TABLE {s}.ledger")
    op.execute(f"DROP FUNCTION {s}.ledger_refuse_change()")
    op.execute(f"DROP TABLE {s}.checkpoints")
    op.execute(f"DROP TABLE {s}.step_state")
    op.execute(f"DROP TABLE {s}.runs")
