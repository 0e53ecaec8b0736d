"""Ledger guard: the append-only trigger fires for everyone; the table's privileges are minimal.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

What this revision does, and why:

- ``ENABLE ALWAYS`` on both triggers. A trigger in the default (origin) mode is
  skipped under ``SET session_replication_role = replica``, which any superuser
  (and, from PostgreSQL 15, any role granted that parameter) may set for its own
  session without a trace. Now only DDL on the table itself (``ALTER TABLE …
  DISABLE TRIGGER``, by its owner or a superuser) switches them off, and DDL
  shows in the server log and to event triggers.
- No privileges for ``PUBLIC`` on the ledger (none by default; this guards
  against ``ALTER DEFAULT PRIVILEGES … TO PUBLIC``), and the table's owner drops
  its own UPDATE, DELETE and TRUNCATE: whoever migrated the control schema may
  read and append, no more. An owner could grant them back; that is a deliberate,
  catalogued act, not an accident. The real boundary is a runner that is neither
  owner nor superuser: README.md, "The audit ledger", gives the statements.
- CHECK constraints: ``seq`` positive, both hashes 64 lower-case hex digits.
  ``NOT VALID``: an old row never blocks the upgrade (``ledger verify`` judges it).
"""

from __future__ import annotations

from alembic import context, op
from sqlalchemy import text

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TRIGGERS = ("ledger_no_update_delete", "ledger_no_truncate")
_HEX64 = "'^[0-9a-f]{64}$'"


def _schema() -> tuple[str, str]:
    """(name, quoted name) of the control schema."""
    name: str = context.config.attributes["schema"]
    return name, str(op.get_bind().dialect.identifier_preparer.quote_schema(name))


def _owner(name: str) -> str:
    """The ledger table's owner, quoted (not necessarily the role running this migration)."""
    bind = op.get_bind()
    owner = bind.execute(
        text("SELECT tableowner FROM pg_tables WHERE schemaname = :s AND tablename = 'ledger'"),
        {"s": name},
    ).scalar_one()
    return str(bind.dialect.identifier_preparer.quote(owner))


def upgrade() -> None:
    name, s = _schema()
    for trigger in _TRIGGERS:
        op.execute(f"ALTER TABLE {s}.ledger ENABLE ALWAYS TRIGGER {trigger}")
    op.execute(f"REVOKE ALL ON {s}.ledger FROM PUBLIC")
    op.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON {s}.ledger FROM {_owner(name)}")
    op.execute(f"ALTER TABLE {s}.ledger ADD CONSTRAINT ledger_seq_positive CHECK (seq > 0) NOT VALID")
    op.execute(
        f"ALTER TABLE {s}.ledger ADD CONSTRAINT ledger_hashes_hex"
        f" CHECK (hash ~ {_HEX64} AND prev_hash ~ {_HEX64}) NOT VALID"
    )


def downgrade() -> None:
    name, s = _schema()
    op.execute(f"ALTER TABLE {s}.ledger DROP CONSTRAINT ledger_hashes_hex")
    op.execute(f"ALTER TABLE {s}.ledger DROP CONSTRAINT ledger_seq_positive")
    op.execute(f"GRANT UPDATE, DELETE, TRUNCATE ON {s}.ledger TO {_owner(name)}")
    for trigger in _TRIGGERS:
        op.execute(f"ALTER TABLE {s}.ledger ENABLE TRIGGER {trigger}")
