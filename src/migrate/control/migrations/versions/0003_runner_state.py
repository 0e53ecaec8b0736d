"""Runner state: wave approvals, the accepted playbook version, who holds which tenant.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

- ``approvals``: a person opened a wave's gate (``migrate approve``); one row per
  playbook and wave, with who, where, when and the playbook version approved.
  The ledger has the same fact, hash-chained; this table is what the runner reads.
- ``playbook_versions``: the normalised digest a playbook's runs work to. A run
  whose playbook changed in substance refuses unless ``--replan``, which moves it.
- ``holders``: who took a tenant's advisory lock (run, host, pid, since). The lock
  itself is the truth — a row whose backend no longer holds the lock is stale and
  shows as "nobody" — so a killed runner never leaves anything to clear by hand.
"""

from __future__ import annotations

from alembic import context, op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _schema() -> str:
    name: str = context.config.attributes["schema"]
    return str(op.get_bind().dialect.identifier_preparer.quote_schema(name))


def upgrade() -> None:
    s = _schema()
    op.execute(f"""
        CREATE TABLE {s}.approvals (
            playbook        text NOT NULL,
            wave            text NOT NULL,
            playbook_digest text NOT NULL,
            actor           text NOT NULL,
            host            text NOT NULL,
            approved_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (playbook, wave)
        )""")
    op.execute(f"""
        CREATE TABLE {s}.playbook_versions (
            playbook        text PRIMARY KEY,
            playbook_digest text NOT NULL,
            actor           text NOT NULL,
            accepted_at     timestamptz NOT NULL DEFAULT clock_timestamp()
        )""")
    op.execute(f"""
        CREATE TABLE {s}.holders (
            tenant      text PRIMARY KEY,
            playbook    text NOT NULL,
            run_id      uuid,
            command     text NOT NULL,
            host        text NOT NULL,
            pid         integer NOT NULL,
            backend_pid integer NOT NULL,
            since       timestamptz NOT NULL DEFAULT clock_timestamp()
        )""")
    # A playbook that ran before this revision works to the version of its last run.
    # {s} is the dialect-quoted schema name, not input pasted into SQL.
    op.execute(
        f"INSERT INTO {s}.playbook_versions (playbook, playbook_digest, actor, accepted_at)"  # noqa: S608
        " SELECT DISTINCT ON (playbook) playbook, playbook_digest, actor, started_at"
        f" FROM {s}.runs WHERE NOT dry_run ORDER BY playbook, started_at DESC"
    )


def downgrade() -> None:
    s = _schema()
    op.execute(f"DROP TABLE {s}.holders")
    op.execute(f"DROP TABLE {s}.playbook_versions")
    op.execute(f"DROP TABLE {s}.approvals")
