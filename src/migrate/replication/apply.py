"""Apply a folded batch to its target tables, inside the caller's transaction.

The caller opens ONE target transaction per batch and records the batch's end
position in it (the progress and the rows commit together, or neither does), so
a crash anywhere leaves whole batches. Settings for the transaction
(``SETTINGS``): foreign-key and user triggers off (``session_replication_role =
replica``: the source already checked its keys and ran its cascades, whose
deletes are in the stream), a synchronous commit (the slot is advanced past a
batch only after its commit: a commit the server could still lose would lose
changes for good), and the text renderings the stream's values use.

**Normal apply**, per batch: rows that an update moved to a new key while a
TOASTed value stayed unchanged take that value from their old row first (so a
key change never loses it); then truncated tables lose the tenant's rows;
deletes go children first; full images are upserted parents first
(``INSERT … ON CONFLICT (key) DO UPDATE``); updates that left TOASTed values
unchanged update only the columns they carry, and a row they do not find fails
the tenant (its unchanged value would be lost). Values travel as ``text[]``
parameters, cast on the server with each target column's type: one statement
per table and kind of change, no temporary tables.

**On a unique violation** the batch rolls back to a savepoint and is applied
again as *delete every row the batch touches, then insert every final image*.
The net effect of a batch is a source state, in which the source's unique
constraints held; after the deletes every remaining row is one the batch did not
touch (the same in both states), so no insert can collide — where the upserts
could, in between, when rows swap unique values (a→tmp, b→a, tmp→b). This
replaces the row-by-row replay of shared/notes/online-cutover.md (Q3), which
fails on the overlap of a resumed copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from migrate.errors import StepFailed
from migrate.replication.changes import GONE, Image, Key, TableEffect, TableMap
from migrate.replication.pgoutput import UNCHANGED, Row

SETTINGS: Mapping[str, str] = {
    "session_replication_role": "replica",
    "synchronous_commit": "on",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "bytea_output": "hex",
}


@dataclass
class ApplyStats:
    deleted: int = 0
    upserted: int = 0
    updated: int = 0
    truncated: int = 0
    statements: int = 0
    replayed: bool = False  # a unique violation made it delete-then-insert
    tables: dict[str, int] = field(default_factory=dict)  # rows touched per target table


def _target_types(conn: psycopg.Connection[Any], schema: str) -> dict[str, dict[str, str]]:
    rows = conn.execute(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)"
        " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p')",
        (schema,),
    ).fetchall()
    out: dict[str, dict[str, str]] = {}
    for table, column, type_ in rows:
        out.setdefault(table, {})[column] = type_
    return out


class Applier:
    """Applies folded batches to the target tables of ``maps``, on ``conn``."""

    def __init__(self, conn: psycopg.Connection[Any], maps: Sequence[TableMap]) -> None:
        self.conn = conn
        self.maps = list(maps)
        self._types: dict[tuple[str, str], dict[str, str]] = {}
        for schema in {m.target_schema for m in maps}:
            # format_type() renders names qualified only when they are not visible: pin the path.
            with conn.transaction():
                conn.execute("SELECT set_config('search_path', 'pg_catalog', true)")
                for table, columns in _target_types(conn, schema).items():
                    self._types[(schema, table)] = columns
        for m in maps:
            have = self._types.get((m.target_schema, m.target_table))
            if have is None:
                raise StepFailed(f"the shared table {m.target_schema}.{m.target_table} does not exist")
            missing = [c for c in (*m.columns, *(f for f, _ in m.fixed)) if c not in have]
            if missing:
                raise StepFailed(
                    f"the shared table {m.target_schema}.{m.target_table} has no column "
                    f"{', '.join(missing)}, which the change stream carries",
                    hint="the source's schema and the shared table's differ: migrate the schema first",
                )

    # ------------------------------------------------------------------ pieces
    def _type(self, m: TableMap, column: str) -> sql.Composable:
        return sql.SQL(self._types[(m.target_schema, m.target_table)][column])

    def _unnest(self, m: TableMap, names: Sequence[str], aliases: Sequence[str]) -> sql.Composable:
        """``unnest(%s::text[], …) AS u(a1, …)``: one text array per column."""
        return sql.SQL("unnest({}) AS u({})").format(
            sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in names),
            sql.SQL(", ").join(sql.Identifier(a) for a in aliases),
        )

    def _cast(self, m: TableMap, column: str, alias: str) -> sql.Composable:
        return sql.SQL("u.{}::{}").format(sql.Identifier(alias), self._type(m, column))

    def _fixed_match(self, m: TableMap, table_alias: str) -> tuple[sql.Composable, list[Any]]:
        parts = [
            sql.SQL("{}.{} = %s").format(sql.Identifier(table_alias), sql.Identifier(f)) for f, _ in m.fixed
        ]
        return sql.SQL(" AND ").join(parts) if parts else sql.SQL("true"), [v for _, v in m.fixed]

    def _key_match(self, m: TableMap, table_alias: str, key_alias: str = "k") -> sql.Composable:
        return sql.SQL(" AND ").join(
            sql.SQL("{}.{} = {}").format(
                sql.Identifier(table_alias), sql.Identifier(k), self._cast(m, k, f"{key_alias}{i}")
            )
            for i, k in enumerate(m.key)
        )

    def _execute(self, stats: ApplyStats, query: sql.Composed, params: Sequence[Any]) -> int:
        stats.statements += 1
        cur = self.conn.execute(query, params)
        return max(int(cur.rowcount), 0)

    def _columns_of(self, keys: Sequence[Key]) -> list[list[str]]:
        return [list(col) for col in zip(*keys, strict=True)]

    # ------------------------------------------------------------------ statements
    def _delete_all(self, m: TableMap, stats: ApplyStats) -> int:
        where, params = self._fixed_match(m, "t")
        return self._execute(
            stats,
            sql.SQL("DELETE FROM {} AS t WHERE {}").format(
                sql.Identifier(m.target_schema, m.target_table), where
            ),
            params,
        )

    def _delete(self, m: TableMap, keys: Sequence[Key], stats: ApplyStats) -> int:
        if not keys:
            return 0
        where, params = self._fixed_match(m, "t")
        aliases = [f"k{i}" for i in range(len(m.key))]
        query = sql.SQL("DELETE FROM {table} AS t USING {unnest} WHERE {fixed} AND {match}").format(
            table=sql.Identifier(m.target_schema, m.target_table),
            unnest=self._unnest(m, m.key, aliases),
            fixed=where,
            match=self._key_match(m, "t"),
        )
        return self._execute(stats, query, [*self._columns_of(keys), *params])

    def _insert(self, m: TableMap, rows: Sequence[Row], stats: ApplyStats, *, upsert: bool) -> int:
        if not rows:
            return 0
        aliases = [f"c{i}" for i in range(len(m.columns))]
        target_cols = [*(f for f, _ in m.fixed), *m.columns]
        select = [sql.SQL("%s") for _ in m.fixed] + [
            self._cast(m, c, a) for c, a in zip(m.columns, aliases, strict=True)
        ]
        query = sql.SQL("INSERT INTO {table} ({cols}) SELECT {select} FROM {unnest}").format(
            table=sql.Identifier(m.target_schema, m.target_table),
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in target_cols),
            select=sql.SQL(", ").join(select),
            unnest=self._unnest(m, m.columns, aliases),
        )
        if upsert:
            others = [c for c in m.columns if c not in m.key]
            conflict = sql.SQL(", ").join(sql.Identifier(c) for c in (*(f for f, _ in m.fixed), *m.key))
            action = (
                sql.SQL("DO UPDATE SET {}").format(
                    sql.SQL(", ").join(
                        sql.SQL("{} = excluded.{}").format(sql.Identifier(c), sql.Identifier(c))
                        for c in others
                    )
                )
                if others
                else sql.SQL("DO NOTHING")
            )
            query = sql.SQL("{} ON CONFLICT ({}) {}").format(query, conflict, action)
        columns = [[_text(r[i]) for r in rows] for i in range(len(m.columns))]
        return self._execute(stats, query, [*(v for _, v in m.fixed), *columns])

    def _update_present(self, m: TableMap, group: Sequence[tuple[Key, Row]], stats: ApplyStats) -> None:
        """Rows whose images lack the same UNCHANGED columns: update the columns they carry."""
        present = [i for i, v in enumerate(group[0][1]) if v is not UNCHANGED]
        names = [m.columns[i] for i in present]
        aliases = [f"k{i}" for i in range(len(m.key))] + [f"c{i}" for i in present]
        where, params = self._fixed_match(m, "t")
        query = sql.SQL("UPDATE {table} AS t SET {sets} FROM {unnest} WHERE {fixed} AND {match}").format(
            table=sql.Identifier(m.target_schema, m.target_table),
            sets=sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(n), self._cast(m, n, f"c{i}"))
                for n, i in zip(names, present, strict=True)
            ),
            unnest=self._unnest(m, [*m.key, *names], aliases),
            fixed=where,
            match=self._key_match(m, "t"),
        )
        keys = [k for k, _ in group]
        values = [[_text(row[i]) for _, row in group] for i in present]
        found = self._execute(stats, query, [*self._columns_of(keys), *values, *params])
        if found != len(group):
            raise _missing_rows(m, len(group) - found, "update")
        stats.updated += found

    def _fill(self, m: TableMap, images: dict[Key, Image], stats: ApplyStats) -> dict[Key, Image]:
        """Partial images made whole with the values of their origin rows, read from the target."""
        partial = {k: im for k, im in images.items() if im.partial}
        if not partial:
            return images
        origins = sorted({im.origin for im in partial.values() if im.origin is not None})
        aliases = [f"k{i}" for i in range(len(m.key))]
        where, params = self._fixed_match(m, "t")
        key_text = sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(k)) for k in m.key)
        all_text = sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in m.columns)
        query = sql.SQL("SELECT {keys}, {cols} FROM {table} AS t, {unnest} WHERE {fixed} AND {match}").format(
            keys=key_text,
            cols=all_text,
            table=sql.Identifier(m.target_schema, m.target_table),
            unnest=self._unnest(m, m.key, aliases),
            fixed=where,
            match=self._key_match(m, "t"),
        )
        stats.statements += 1
        found = {
            tuple(r[: len(m.key)]): tuple(r[len(m.key) :])
            for r in self.conn.execute(query, [*self._columns_of(origins), *params])
        }
        out = dict(images)
        for key, image in partial.items():
            assert image.origin is not None
            old = found.get(image.origin)
            if old is None:
                raise _missing_rows(m, 1, "update")
            out[key] = Image(
                tuple(o if n is UNCHANGED else n for n, o in zip(image.values, old, strict=True))
            )
        return out

    # ------------------------------------------------------------------ batches
    def apply(self, effects: Sequence[TableEffect]) -> ApplyStats:
        """Apply a batch (effects in load order) inside the caller's transaction."""
        stats = ApplyStats()
        try:
            with self.conn.transaction():  # a savepoint: a unique violation takes the other way
                self._apply_net(effects, stats)
        except psycopg.errors.UniqueViolation:
            stats = ApplyStats(replayed=True)
            self._apply_replace(effects, stats)
        return stats

    def _apply_net(self, effects: Sequence[TableEffect], stats: ApplyStats) -> None:
        images: dict[str, dict[Key, Image]] = {}
        for e in effects:  # moved rows first, while their old rows are still there
            moved = {k: im for k, im in e.images.items() if im.partial and im.origin != k}
            images[e.table.target_table] = {**e.images, **self._fill(e.table, moved, stats)}
        for e in reversed(effects):  # children first
            if e.truncated:
                stats.truncated += self._delete_all(e.table, stats)
            stats.deleted += self._delete(e.table, e.gone, stats)
        for e in effects:  # parents first
            rows = images[e.table.target_table]
            full = [im.values for im in rows.values() if not im.partial]
            stats.upserted += self._insert(e.table, full, stats, upsert=True)
            groups: dict[tuple[bool, ...], list[tuple[Key, Row]]] = {}
            for key, im in rows.items():
                if im.partial:
                    shape = tuple(v is UNCHANGED for v in im.values)
                    groups.setdefault(shape, []).append((key, im.values))
            for group in groups.values():
                self._update_present(e.table, group, stats)
            stats.tables[e.table.target_table] = len(e.rows)

    def _apply_replace(self, effects: Sequence[TableEffect], stats: ApplyStats) -> None:
        filled = {e.table.target_table: self._fill(e.table, e.images, stats) for e in effects}
        for e in reversed(effects):
            if e.truncated:
                stats.truncated += self._delete_all(e.table, stats)
            touched = [k for k, s in e.rows.items() if s is GONE or isinstance(s, Image)]
            stats.deleted += self._delete(e.table, touched, stats)
        for e in effects:
            rows = [im.values for im in filled[e.table.target_table].values()]
            stats.upserted += self._insert(e.table, rows, stats, upsert=False)
            stats.tables[e.table.target_table] = len(e.rows)


def _text(value: object) -> str | None:
    if value is UNCHANGED:
        raise AssertionError("an unchanged value reached a statement")
    return value if isinstance(value, str) else None


def _missing_rows(m: TableMap, count: int, what: str) -> StepFailed:
    return StepFailed(
        f"{count} row(s) of {m.target_schema}.{m.target_table} that the change stream {what}s with an "
        "unchanged TOASTed value are not in the target: that value would be lost",
        hint="the target no longer matches the copy the changes continue from (rows changed or deleted "
        "by hand?): roll the tenant back to before its copy ('migrate rollback … --to pre-copy') "
        "and run again",
    )
