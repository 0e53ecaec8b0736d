"""Row count and content checksum of one table, computed inside the database.

The checksum is ``sum(hash_record_extended(ROW(cols…), 0))``: 64-bit hashes of
the values (not of their text), so the session's time zone, jsonb key order
and numeric scale do not change it, and it costs about a sixth of the copy
(shared/notes/performance.md). The sum is taken as numeric so it never
overflows, and is order-independent. It needs PostgreSQL 14+ and identical
column types on both sides — which the schema step guarantees. Types without
a hash function (json, geometric types) are cast in the canonical row.
No row leaves the database; each side reads one snapshot (REPEATABLE READ).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

# Types without a hash opclass: hash_record_extended refuses them.
_CAST = {
    "json": "jsonb",
    "point": "text",
    "line": "text",
    "lseg": "text",
    "box": "text",
    "path": "text",
    "polygon": "text",
    "circle": "text",
    "xml": "text",
}


@dataclass(frozen=True)
class TableSum:
    rows: int
    checksum: str  # a numeric, as text: exact


def canonical_row(columns: Sequence[tuple[str, str]]) -> sql.Composable:
    """ROW(col, …) with the casts that make every column hashable."""
    parts = []
    for name, type_ in columns:
        cast = _CAST.get(type_)
        col = sql.Identifier(name)
        parts.append(sql.SQL("{}::{}").format(col, sql.SQL(cast)) if cast else col)
    return sql.SQL("ROW({})").format(sql.SQL(", ").join(parts))


def table_sum(
    conn: psycopg.Connection[Any],
    schema: str,
    table: str,
    columns: Sequence[tuple[str, str]],
    *,
    tenant_column: str | None = None,
    tenant: str | None = None,
) -> TableSum:
    """Count and checksum of a table (or one tenant's rows of a shared table)."""
    where: sql.Composable = sql.SQL("")
    params: tuple[str, ...] = ()
    if tenant_column is not None and tenant is not None:
        where = sql.SQL(" WHERE {} = %s").format(sql.Identifier(tenant_column))
        params = (tenant,)
    query = sql.SQL(
        "SELECT count(*), coalesce(sum(hash_record_extended({}, 0)::numeric), 0)::text FROM {}{}"
    ).format(canonical_row(columns), sql.Identifier(schema, table), where)
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return TableSum(rows=int(row[0]), checksum=str(row[1]))
