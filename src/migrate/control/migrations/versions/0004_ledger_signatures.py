"""Ledger signatures: each entry may carry an Ed25519 signature; the public keys are recorded.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

- ``ledger.key_id`` and ``ledger.signature``: the key that signed the entry (the first
  16 hex digits of SHA-256 over the raw public key) and the signature of its hash,
  base64. NULL for entries written without a key (before this revision, or by a
  playbook that names none); both or neither.
- ``ledger_keys``: the public keys entries were signed with (PEM), recorded by the first
  entry each signs, for export (``migrate ledger keys``). Append-only like the ledger,
  with the same trigger function, and no UPDATE, DELETE or TRUNCATE for its owner.
  It is not where trust comes from: ``verify`` trusts only the keys the playbook names.
"""

from __future__ import annotations

from alembic import context, op
from sqlalchemy import text

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TRIGGERS = ("ledger_keys_no_update_delete", "ledger_keys_no_truncate")


def _schema() -> str:
    name: str = context.config.attributes["schema"]
    return str(op.get_bind().dialect.identifier_preparer.quote_schema(name))


def _owner(schema: str, table: str) -> str:
    bind = op.get_bind()
    owner = bind.execute(
        text("SELECT tableowner FROM pg_tables WHERE schemaname = :s AND tablename = :t"),
        {"s": schema, "t": table},
    ).scalar_one()
    return str(bind.dialect.identifier_preparer.quote(owner))


def upgrade() -> None:
    s = _schema()
    name: str = context.config.attributes["schema"]
    op.execute(f"ALTER TABLE {s}.ledger ADD COLUMN key_id text, ADD COLUMN signature text")
    op.execute(
        f"ALTER TABLE {s}.ledger ADD CONSTRAINT ledger_signed_whole"
        " CHECK ((key_id IS NULL) = (signature IS NULL))"
    )
    op.execute(f"""
        CREATE TABLE {s}.ledger_keys (
            key_id      text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{{16}}$'),
            algorithm   text NOT NULL DEFAULT 'ed25519',
            public_key  text NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
        )""")
    op.execute(f"""
        CREATE TRIGGER ledger_keys_no_update_delete BEFORE UPDATE OR DELETE ON {s}.ledger_keys
        FOR EACH ROW EXECUTE FUNCTION {s}.ledger_refuse_change()""")
    op.execute(f"""
        CREATE TRIGGER ledger_keys_no_truncate BEFORE TRUNCATE ON {s}.ledger_keys
        FOR EACH STATEMENT EXECUTE FUNCTION {s}.ledger_refuse_change()""")
    for trigger in _TRIGGERS:
        op.execute(f"ALTER TABLE {s}.ledger_keys ENABLE ALWAYS TRIGGER {trigger}")
    op.execute(f"REVOKE ALL ON {s}.ledger_keys FROM PUBLIC")
    op.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON {s}.ledger_keys FROM {_owner(name, 'ledger_keys')}")
    # Whoever may append to the ledger (a hardened runner role) may record the key it signs with.
    # {s} is the dialect-quoted schema name, not input pasted into SQL.
    op.execute(f"""
        DO $$
        DECLARE grantee text;
        BEGIN
            FOR grantee IN
                SELECT DISTINCT a.grantee::regrole::text
                FROM pg_class c, aclexplode(c.relacl) AS a
                WHERE c.oid = '{s}.ledger'::regclass AND a.privilege_type = 'INSERT'
                  AND a.grantee <> 0 AND a.grantee <> c.relowner
            LOOP
                EXECUTE format('GRANT SELECT, INSERT ON {s}.ledger_keys TO %s', grantee);
            END LOOP;
        END $$""")  # noqa: S608


def downgrade() -> None:
    s = _schema()
    op.execute(f"DROP TABLE {s}.ledger_keys")
    op.execute(f"ALTER TABLE {s}.ledger DROP CONSTRAINT ledger_signed_whole")
    op.execute(f"ALTER TABLE {s}.ledger DROP COLUMN signature, DROP COLUMN key_id")
