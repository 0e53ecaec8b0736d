"""A run reads a source's whole catalog once per distinct schema fingerprint (issue 18).

The fingerprint (catalog/reflect_fingerprint.sql) stands for ``reflect_schema``: two sources
with the same fingerprint get the same SourceSchema without reading it again. The spec is
"equal fingerprints, equal reflections": each change below is one ``reflect_schema`` sees
(asserted first, so no change here is one nobody reads) and must change the fingerprint,
while the same schema in another database — other OIDs — keeps it.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from databases import DatabaseFactory
from migrate.catalog.built import SharedSchemas, fingerprint
from migrate.catalog.reflect import reflect_schema

SCHEMA = (Path(__file__).parent / "data" / "objects" / "schema.sql").read_text()

# One of each kind of thing the reflection reads, changed in a way it renders differently.
CHANGES = {
    "column added": "ALTER TABLE customers ADD COLUMN nickname text",
    "column type": "ALTER TABLE audit_log ALTER COLUMN what TYPE varchar(200)",
    "column default": "ALTER TABLE customers ALTER COLUMN name SET DEFAULT 'x'",
    "not null": "ALTER TABLE customers ALTER COLUMN name DROP NOT NULL",
    "column comment": "COMMENT ON COLUMN customers.name IS 'changed'",
    "table comment": "COMMENT ON TABLE customers IS 'changed'",
    "check added": "ALTER TABLE customers ADD CONSTRAINT name_short CHECK (length(name) < 500)",
    "unique added": "ALTER TABLE customers ADD CONSTRAINT name_once UNIQUE (name)",
    "index added": "CREATE INDEX customers_name_idx ON customers (name)",
    "index comment": "COMMENT ON INDEX visits_2025_customer IS 'changed'",
    "constraint comment": "COMMENT ON CONSTRAINT visits_2025_recent ON visits_2025 IS 'changed'",
    "enum label": "ALTER TYPE plan ADD VALUE 'platinum'",
    "domain check": "ALTER DOMAIN percent ADD CONSTRAINT under_99 CHECK (VALUE < 99)",
    "type comment": "COMMENT ON TYPE plan IS 'changed'",
    "function body": "CREATE OR REPLACE FUNCTION shout(t text) RETURNS text LANGUAGE plpgsql IMMUTABLE"
    " AS $$ BEGIN RETURN upper(t) || '!!'; END $$",
    "function comment": "COMMENT ON FUNCTION shout(text) IS 'changed'",
    "view": "CREATE OR REPLACE VIEW plain_view AS SELECT 2 AS one",
    "view comment": "COMMENT ON VIEW customer_orders IS 'changed'",
    "trigger disabled": "ALTER TABLE customers DISABLE TRIGGER customers_touch",
    "trigger comment": "COMMENT ON TRIGGER customers_touch ON customers IS 'changed'",
    "table added": "CREATE TABLE extra (id int PRIMARY KEY)",
    "sequence": "CREATE SEQUENCE loose_seq",
    "policy": "CREATE POLICY p ON customers USING (true)",
    "rule": "CREATE RULE no_update AS ON UPDATE TO customers DO INSTEAD NOTHING",
}


def _source(database_factory: DatabaseFactory) -> str:
    dsn = database_factory.create("fp")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute("CREATE VIEW plain_view AS SELECT 1 AS one")
    return dsn


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_the_reflection_sees_changes_the_fingerprint(
    database_factory: DatabaseFactory, change: str
) -> None:
    """Whatever reflect_schema reads differently gives another fingerprint (else a tenant would get
    another source's schema)."""
    dsn = _source(database_factory)
    with psycopg.connect(dsn, autocommit=True) as conn:
        before, read = fingerprint(conn, "public"), reflect_schema(conn, "public")
        conn.execute(CHANGES[change])
        assert reflect_schema(conn, "public") != read, f"{change}: not a change the reflection sees"
        assert fingerprint(conn, "public") != before, f"{change}: the fingerprint missed it"


def test_the_same_schema_elsewhere_has_the_same_fingerprint(database_factory: DatabaseFactory) -> None:
    """Two databases made by the same script (other OIDs, other statistics and rows) share one
    fingerprint and one reflection: the second is not read."""
    first, second = _source(database_factory), _source(database_factory)
    with psycopg.connect(first, autocommit=True) as a, psycopg.connect(second, autocommit=True) as b:
        b.execute("CREATE TABLE pad (x int); DROP TABLE pad")  # the OIDs of what follows move on
        b.execute("INSERT INTO customers (id, name) SELECT g, 'n' || g FROM generate_series(1, 50) g")
        b.execute("ANALYZE")
        assert fingerprint(a, "public") == fingerprint(b, "public")
        assert reflect_schema(a, "public") == reflect_schema(b, "public")
        schemas = SharedSchemas()
        assert schemas.source(a, "public") == schemas.source(b, "public")
        assert schemas.reads == 1
        b.execute(CHANGES["column added"])
        assert schemas.source(b, "public") == reflect_schema(b, "public")
        assert schemas.reads == 2
