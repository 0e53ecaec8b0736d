"""Read a source schema from the catalog: tables, columns, keys, foreign keys.

The catalog's own renderings (``format_type``, ``pg_get_expr``) are kept as
text: they are PostgreSQL's canonical spelling of a type or a default, not
user input, and they are what the shared table must say to hold the same values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import psycopg

from migrate.errors import StepFailed


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(), e.g. "numeric(12,2)"
    not_null: bool
    default: str | None  # pg_get_expr(); None for identity columns and sequences
    identity: bool


@dataclass(frozen=True)
class ForeignKey:
    name: str
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]


@dataclass(frozen=True)
class SourceTable:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    uniques: tuple[tuple[str, ...], ...]
    foreign_keys: tuple[ForeignKey, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def signature(self) -> tuple[tuple[str, str], ...]:
        """(name, type) of every column: what must match between tenants."""
        return tuple((c.name, c.type) for c in self.columns)


def _sql(name: str) -> str:
    return (files("migrate.schemagen") / name).read_text()


def reflect(conn: psycopg.Connection[Any], schema: str) -> dict[str, SourceTable]:
    """Every ordinary or partitioned table of ``schema``, by name."""
    cols: dict[str, list[Column]] = {}
    for table, name, type_, not_null, default, identity in conn.execute(
        _sql("reflect_columns.sql"), {"schema": schema}
    ):
        cols.setdefault(table, []).append(Column(name, type_, not_null, default, identity))
    pks: dict[str, tuple[str, ...]] = {}
    uniques: dict[str, list[tuple[str, ...]]] = {}
    fks: dict[str, list[ForeignKey]] = {}
    for table, cname, ctype, columns, ref_table, ref_columns in conn.execute(
        _sql("reflect_constraints.sql"), {"schema": schema}
    ):
        if ctype == "p":
            pks[table] = tuple(columns)
        elif ctype == "u":
            uniques.setdefault(table, []).append(tuple(columns))
        elif ctype == "f":
            fks.setdefault(table, []).append(ForeignKey(cname, tuple(columns), ref_table, tuple(ref_columns)))
    return {
        name: SourceTable(
            name=name,
            columns=tuple(columns),
            primary_key=pks.get(name, ()),
            uniques=tuple(uniques.get(name, ())),
            foreign_keys=tuple(fks.get(name, ())),
        )
        for name, columns in cols.items()
    }


def fk_order(tables: Iterable[SourceTable]) -> list[SourceTable]:
    """Parents before children (alphabetical among equals); self-references allowed.

    A cycle between tables cannot be loaded parent-first: it is named, with the fix.
    """
    by_name = {t.name: t for t in tables}
    deps = {
        t.name: {fk.ref_table for fk in t.foreign_keys if fk.ref_table != t.name and fk.ref_table in by_name}
        for t in by_name.values()
    }
    ordered: list[SourceTable] = []
    done: set[str] = set()
    while len(done) < len(by_name):
        ready = sorted(n for n, d in deps.items() if n not in done and d <= done)
        if not ready:
            cycle = sorted(n for n in deps if n not in done)
            raise StepFailed(
                f"tables {', '.join(cycle)} reference each other in a cycle",
                hint="list the tables in the playbook in a loadable order; cyclic foreign keys "
                "are not supported yet",
            )
        for name in ready:
            ordered.append(by_name[name])
            done.add(name)
    return ordered


def select_tables(
    reflected: dict[str, SourceTable], wanted: Sequence[str] | None, *, schema: str
) -> list[SourceTable]:
    """The playbook's tables (all when ``auto``) in foreign-key order."""
    if wanted is None:
        return fk_order(reflected.values())
    missing = [t for t in wanted if t not in reflected]
    if missing:
        raise StepFailed(
            f"table(s) {', '.join(missing)} not found in source schema '{schema}'",
            hint=f"the source has: {', '.join(sorted(reflected)) or 'no tables'}",
        )
    return fk_order(reflected[t] for t in wanted)
