"""Whether a tenant's source columns fit the shared tables: one rule for the schema step and the backfill.

Binary COPY moves values between identical types only, and some mismatches
(``timestamptz`` into ``timestamp``) would even load silently with another
meaning. Both sides are rendered the same way (``catalog_rendering``: every
name outside ``pg_catalog`` qualified), and a source type fits a shared column
when it is the same type, or the same type moved from the source schema to the
target schema (an enum or domain the shared schema re-creates).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from functools import lru_cache
from typing import Any

import psycopg

from migrate.catalog import sqltext
from migrate.catalog.reflect import SourceTable, catalog_rendering
from migrate.errors import StepFailed

_COLUMNS = (
    "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
    " WHERE n.nspname = %s AND c.relkind IN ('r', 'p')"
)

ColumnTypes = Mapping[str, Mapping[str, str]]  # table -> column -> type, as the catalog renders it


def column_types(conn: psycopg.Connection[Any], schema: str) -> dict[str, dict[str, str]]:
    """Every table's column types in ``schema``, in one round trip, qualified as reflection renders them."""
    with catalog_rendering(conn):
        rows = conn.execute(_COLUMNS, (schema,)).fetchall()
    out: dict[str, dict[str, str]] = {}
    for table, column, type_ in rows:
        out.setdefault(table, {})[column] = type_
    return out


@lru_cache(maxsize=4096)
def same_type(source_type: str, shared_type: str, source_schema: str, target_schema: str) -> bool:
    """The same type on both sides, or the source's own type re-created in the target schema.

    Pure, and asked for the same few column types by every tenant twice (schema step, backfill):
    remembered (tokenising them anew cost a 0-row tenant ~1,000 calls per run of this check)."""
    names = {t.name for t in sqltext.tokens(source_type) if t.name is not None}
    moved = sqltext.requalify(source_type, source_schema, target_schema, names)
    return sqltext.canonical(shared_type) in (sqltext.canonical(source_type), sqltext.canonical(moved))


def check_fit(
    tables: Iterable[SourceTable],
    shared: ColumnTypes,
    *,
    source_schema: str,
    target_schema: str,
    columns: Mapping[str, Collection[str]] | None = None,
) -> None:
    """Raise StepFailed naming the first source column the shared tables cannot take.

    ``columns`` limits the check to the columns each table really copies (all by default).
    """
    for table in tables:
        qualified = f"{target_schema}.{table.name}"
        have = shared.get(table.name)
        if have is None:
            raise StepFailed(
                f"the shared table {qualified} does not exist",
                hint="run the schema step first (a 'kind: schema' step before the backfill), "
                "or apply the revision of 'migrate schema generate'",
            )
        wanted = None if columns is None else set(columns.get(table.name, ()))
        for col in table.columns:
            if wanted is not None and col.name not in wanted:
                continue
            if col.name not in have:
                raise StepFailed(
                    f"source column {table.name}.{col.name} has no column in the shared table {qualified}",
                    hint="this tenant's source schema differs from the one the shared tables were made "
                    "from: migrate its schema first, or add the column to the shared table",
                )
            if not same_type(col.type, have[col.name], source_schema, target_schema):
                raise StepFailed(
                    f"column {table.name}.{col.name} is {col.type} in the source but "
                    f"{have[col.name]} in the shared table {qualified}",
                    hint="make the types equal on both sides before the backfill",
                )
