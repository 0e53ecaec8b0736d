"""The consolidation report: what changes meaning when N single-tenant databases share tables.

Before any copy, for every source of the shared schema:

- ``schema-drift`` (error): a source's tables or columns differ from the first one's;
  its rows would not fit the shared tables.
- ``unique-across-tenants-collision`` (error): values declared unique across
  tenants (playbook ``unique_across_tenants``, or ``--unique-across-tenants``) that
  already exist in two tenants, with the values and tenants named: merging them
  would give one value two owners.
- ``global-table-conflict`` (error): a global (reference) table holds, under one
  primary key, different rows in different tenants: one tenant's row would be lost.
- ``unique-per-tenant`` (info): a unique constraint or index that from now on holds
  per tenant, e.g. ``(tenant_id, email)``.
- ``sequence-shared`` (info): an identity or serial column whose numbers now come
  from one shared sequence: ``migrate run`` moves it past every tenant's values
  (the statement is given for loads by other means).
- ``foreign-key-composite`` (info): a foreign key that now includes ``tenant_id``.

Values are compared inside each database in one sorted stream per source, spooled to a
temporary file while a bounded number of sources are open (``sources.py``), and merged
(``heapq.merge``): memory stays constant however many rows and sources there are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from migrate.catalog import sqltext
from migrate.catalog.ddl import Note, Options
from migrate.catalog.reflect import SourceSchema, SourceTable
from migrate.schemagen.sources import Sources

SHOWN = 5  # values named per finding; the count says how many more there are

# Row text must not depend on a session's settings when rows of two databases are compared.
_PINNED = (
    "SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, YMD', true),"
    " set_config('IntervalStyle', 'postgres', true), set_config('extra_float_digits', '3', true),"
    " set_config('bytea_output', 'hex', true)"
)


@dataclass(frozen=True)
class UniqueAcrossTenants:
    table: str
    columns: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.table}({', '.join(self.columns)})"


def _key_text(columns: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL('{}::text COLLATE "C"').format(sql.Identifier(c)) for c in columns)


def _show(key: tuple[str, ...]) -> str:
    return repr(key[0]) if len(key) == 1 else "(" + ", ".join(repr(k) for k in key) + ")"


class Consolidation:
    def __init__(
        self,
        sources: Sources,
        schemas: Mapping[str, SourceSchema],
        options: Options,
        unique_across: Sequence[UniqueAcrossTenants],
    ) -> None:
        self.sources = sources
        self.schemas = schemas
        self.labels = sources.labels
        self.reference = schemas[self.labels[0]]
        self.o = options
        self.unique_across = unique_across
        self.notes: list[Note] = []

    def note(self, severity: Any, rule: str, subject: str, detail: str, fix: str = "") -> None:
        self.notes.append(Note(severity, rule, subject, detail, fix))

    def tenant_tables(self) -> list[SourceTable]:
        return [t for n, t in sorted(self.reference.tables.items()) if n not in self.o.global_tables]

    # ------------------------------------------------------------------ rules
    def drift(self) -> None:
        ref = self.reference
        local = {t.name for t in ref.types}

        def shape(schema: SourceSchema, table: SourceTable) -> dict[str, str]:
            return {
                c.name: sqltext.canonical(sqltext.requalify(c.type, schema.name, "_", local))
                for c in table.columns
            }

        for label in self.labels[1:]:
            other = self.schemas[label]
            for name in sorted(set(ref.tables) - set(other.tables)):
                self.note(
                    "error",
                    "schema-drift",
                    name,
                    f"tenant {label} has no table {name} (tenant {self.labels[0]} has)",
                    "bring every source to the same schema version before the copy",
                )
            for name in sorted(set(other.tables) - set(ref.tables)):
                self.note(
                    "error",
                    "schema-drift",
                    name,
                    f"tenant {label} has a table {name} that tenant {self.labels[0]} has not",
                    "bring every source to the same schema version before the copy",
                )
            for name in sorted(set(ref.tables) & set(other.tables)):
                want, have = shape(ref, ref.tables[name]), shape(other, other.tables[name])
                for col in sorted(set(want) ^ set(have)):
                    where = label if col in have else self.labels[0]
                    self.note(
                        "error",
                        "schema-drift",
                        f"{name}.{col}",
                        f"only tenant {where} has column {name}.{col}",
                        "bring every source to the same schema version before the copy",
                    )
                for col in sorted(c for c in set(want) & set(have) if want[c] != have[c]):
                    self.note(
                        "error",
                        "schema-drift",
                        f"{name}.{col}",
                        f"column {name}.{col} has another type in tenant {label} than in {self.labels[0]}",
                        "make the types equal before the copy (binary COPY needs identical types)",
                    )

    def per_tenant_uniques(self) -> None:
        declared = {(u.table, u.columns) for u in self.unique_across}
        for t in self.tenant_tables():
            for cols in t.uniques:
                if (t.name, cols) in declared:
                    continue
                self.note(
                    "info",
                    "unique-per-tenant",
                    f"{t.name}({', '.join(cols)})",
                    f"unique per tenant from now on: ({', '.join((self.o.tenant_column, *cols))}); "
                    "two tenants may hold the same value",
                    "declare it in unique_across_tenants if it must stay unique across tenants",
                )
            for index in t.indexes:
                if index.unique:
                    self.note(
                        "info",
                        "unique-per-tenant",
                        f"{t.name}.{index.name}",
                        f"unique index, per tenant from now on (led by {self.o.tenant_column})",
                    )

    def collisions(self) -> None:
        for u in self.unique_across:
            table = self.reference.tables.get(u.table)
            missing = [c for c in u.columns if table is None or c not in table.column_names]
            if table is None or missing:
                self.note(
                    "error",
                    "unique-across-tenants-unknown",
                    str(u),
                    "declared unique across tenants, but the source has no "
                    + (f"table {u.table}" if table is None else f"column {', '.join(missing)}"),
                    "fix the declaration in the playbook (unique_across_tenants) or --unique-across-tenants",
                )
                continue
            where = sql.SQL(" AND ").join(
                sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in u.columns
            )
            order = sql.SQL(", ").join(sql.SQL(str(i + 1)) for i in range(len(u.columns)))
            query = sql.SQL("SELECT DISTINCT {} FROM {} WHERE {} ORDER BY {}").format(
                _key_text(u.columns), sql.Identifier(self.reference.name, u.table), where, order
            )
            found: list[str] = []
            count = 0
            with self.sources.merged(query, len(u.columns), _PINNED) as groups:
                for key, group in groups:
                    owners = sorted({label for label, _ in group})
                    if len(owners) > 1:
                        count += 1
                        if len(found) < SHOWN:
                            found.append(f"{_show(key)} in {', '.join(owners)}")
            if count:
                more = f" and {count - len(found)} more" if count > len(found) else ""
                self.note(
                    "error",
                    "unique-across-tenants-collision",
                    str(u),
                    f"{count} value(s) declared unique across tenants exist in several tenants: "
                    + "; ".join(found)
                    + more,
                    "make the values unique (rename them in one tenant) before the copy",
                )

    def global_tables(self) -> None:
        for name in sorted(self.o.global_tables & set(self.reference.tables)):
            table = self.reference.tables[name]
            if not table.primary_key:
                self.note(
                    "warning",
                    "global-table-without-key",
                    name,
                    "a global table without a primary key cannot be compared across tenants",
                    "give it a primary key",
                )
                continue
            rest = [c for c in table.column_names if c not in table.primary_key]
            row = sql.SQL("md5(ROW({})::text)").format(sql.SQL(", ").join(sql.Identifier(c) for c in rest))
            order = sql.SQL(", ").join(sql.SQL(str(i + 1)) for i in range(len(table.primary_key)))
            query = sql.SQL("SELECT {}, {} FROM {} ORDER BY {}").format(
                _key_text(table.primary_key),
                row if rest else sql.SQL("''"),
                sql.Identifier(self.reference.name, name),
                order,
            )
            conflicts: list[str] = []
            count = partial = 0
            with self.sources.merged(query, len(table.primary_key), _PINNED) as groups:
                for key, group in groups:
                    if len({rest for _label, rest in group}) > 1:
                        count += 1
                        if len(conflicts) < SHOWN:
                            conflicts.append(
                                f"{_show(key)} differs in {', '.join(sorted({g[0] for g in group}))}"
                            )
                    elif len(group) < len(self.labels):
                        partial += 1
            if count:
                more = f" and {count - len(conflicts)} more" if count > len(conflicts) else ""
                self.note(
                    "error",
                    "global-table-conflict",
                    name,
                    f"{count} key(s) hold different rows in different tenants: "
                    + "; ".join(conflicts)
                    + more,
                    "make the reference data equal in every source, or make the table a tenant table",
                )
            if partial:
                self.note(
                    "info",
                    "global-table-union",
                    name,
                    f"{partial} key(s) exist in some tenants only: the shared table holds their union",
                )

    def sequences(self) -> None:
        columns = [(t, col) for t in self.tenant_tables() for col in t.columns if col.sequenced]
        if not columns:
            return
        # One visit per source for every column's largest value.
        query = sql.SQL("SELECT {}").format(
            sql.SQL(", ").join(
                sql.SQL("(SELECT max({}) FROM {})::bigint").format(
                    sql.Identifier(col.name), sql.Identifier(self.reference.name, t.name)
                )
                for t, col in columns
            )
        )

        def maxima(_label: str, conn: psycopg.Connection[Any]) -> list[int]:
            row = conn.execute(query).fetchone()
            return [int(v) if v is not None else 0 for v in (row or ())]

        found = self.sources.each(maxima)
        for i, (t, col) in enumerate(columns):
            top = max((values[i] for values in found.values() if i < len(values)), default=0)
            what = "serial column (an identity column from now on)" if col.serial else "identity column"
            restart = sql.SQL("ALTER TABLE {} ALTER COLUMN {} RESTART WITH {}").format(
                sql.Identifier(self.o.schema, t.name), sql.Identifier(col.name), sql.Literal(top + 1)
            )
            self.note(
                "info",
                "sequence-shared",
                f"{t.name}.{col.name}",
                f"{what}: every tenant's numbers come from one sequence now, and the largest "
                f"value in any source is {top}",
                "nothing by hand with 'migrate run': its backfill and the flip move the sequence "
                f"past each tenant's values; loaded some other way: {restart.as_string(None)}",
            )

    def composite_foreign_keys(self) -> None:
        for t in self.tenant_tables():
            for fk in t.foreign_keys:
                if fk.ref_schema is None and fk.ref_table not in self.o.global_tables:
                    cols, refs = (self.o.tenant_column, *fk.columns), (self.o.tenant_column, *fk.ref_columns)
                    self.note(
                        "info",
                        "foreign-key-composite",
                        f"{t.name}.{fk.name}",
                        f"({', '.join(cols)}) → {fk.ref_table}({', '.join(refs)}): a row can only "
                        "reference rows of its own tenant",
                    )

    def run(self) -> list[Note]:
        self.drift()
        if not any(n.rule == "schema-drift" for n in self.notes):
            self.collisions()
            self.global_tables()
        self.sequences()
        self.per_tenant_uniques()
        self.composite_foreign_keys()
        return self.notes


def consolidate(
    sources: Sources,
    schemas: Mapping[str, SourceSchema],
    options: Options,
    unique_across: Sequence[UniqueAcrossTenants] = (),
) -> list[Note]:
    """The consolidation findings of these sources (visited a bounded number at a time) and their
    reflected schemas (by label)."""
    return Consolidation(sources, schemas, options, unique_across).run()
