"""Where each tenant's rows are: per target, a count of every tenant's rows in every table.

The residency report (``migrate residency report``) counts, on every target of a
playbook, the rows of each tenant in every table of the shared schema that has the
tenant column — not only the tables the playbook moves, since a row anywhere is a row
in that region. A count proves absence only if it can see every row: the connecting
role must not be subject to row-level security (superuser or BYPASSRLS, as the
migrator is), which :func:`sees_every_row` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from typing import Any

import psycopg
from psycopg import sql


@cache
def _tables_sql() -> str:
    return (files("migrate.checks") / "residency_tables.sql").read_text()


def sees_every_row(conn: psycopg.Connection[Any]) -> tuple[str, bool]:
    """(role, whether row-level security hides nothing from it: superuser or BYPASSRLS)."""
    row = conn.execute(
        "SELECT current_user::text, rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    return (str(row[0]), bool(row[1])) if row else ("?", False)


def tenant_rows(
    conn: psycopg.Connection[Any], schema: str, column: str, tenants: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Per tenant, per table of ``schema`` with ``column``: its rows (tables without any are left out).

    One snapshot (REPEATABLE READ, read only) for all the tables, one grouped count per table.
    """
    counts: dict[str, dict[str, int]] = {t: {} for t in tenants}
    if not tenants:
        return counts
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        tables = conn.execute(_tables_sql(), {"schema": schema, "column": column}).fetchall()
        for table, textual in tables:
            key = sql.Identifier(column) if textual else sql.SQL("{}::text").format(sql.Identifier(column))
            query = sql.SQL("SELECT {key}, count(*) FROM {table} WHERE {key} = ANY(%s) GROUP BY 1").format(
                key=key, table=sql.Identifier(schema, table)
            )
            for tenant, rows in conn.execute(query, (list(tenants),)):
                counts[tenant][table] = int(rows)
    return counts
