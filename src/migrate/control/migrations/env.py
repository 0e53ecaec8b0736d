"""Alembic environment of the control schema, run from migrate.control.schema.

The connection and the schema name are handed in through ``config.attributes``
so the same migrations serve any ``target.control_schema``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

config = context.config
schema = config.attributes["schema"]
connection = config.attributes["connection"]

quoted = connection.dialect.identifier_preparer.quote_schema(schema)
connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
context.configure(
    connection=connection,
    version_table_schema=schema,
    version_table="alembic_version",
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
