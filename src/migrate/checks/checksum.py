"""Row counts and content checksums of tables, computed inside each database.

Per table and side: ``count(*)`` and the sum of a 64-bit hash of each row's
canonical form, taken as numeric (exact, order-independent, never overflows).
No row leaves the database. Each side reads one snapshot for all its tables
(REPEATABLE READ READ ONLY), under pinned session settings (``session.sql``:
TimeZone UTC, DateStyle ISO, extra_float_digits 3, …), and the two sides run
at the same time: each is its own server backend, and validation time is
write-freeze time before a cut-over.

Two ways to hash a row, chosen by comparing the servers' major versions:

``hash``  ``hash_record_extended(ROW(cols…), 0)``: hashes the *values*, so the
          session time zone and numeric scale cannot change it; about 0.16 ×
          the copy's time (shared/notes/performance.md). It
          needs PostgreSQL 14+ and identical column types (the schema step
          guarantees those), and its values are not promised stable across
          major versions — so it is used only when both majors are equal.
``text``  the first 64 bits of ``md5(ROW(cols…)::text)``: md5 is the same on
          every version and platform, and the pinned settings make the text of
          equal values equal (numeric through ``trim_scale``). 2–4 × the cost
          of ``hash``; the fallback when majors differ.

Both keep NULL and '' apart (a NULL field hashes to 0, or is empty in the row
text, where '' is written ``""``). Both see what a person would call a change
even where the type's own equality does not: ``-0.0`` vs ``0`` in a float
(hashed as its bytes), json text (key order, whitespace and duplicate keys are
its content: hashed as text, never through jsonb), arrays' dimensions, bounds
and NULL elements, and interval spelling ('1 day' vs '24 hours') — these are
hashed as their text. Equal instants of timestamptz are equal in both modes
(values, or text under TimeZone UTC); timetz keeps its offset. Columns whose
type has no 64-bit hash function, or whose hash is an OID that differs between
databases (enums), are hashed as their text too (``columns.sql`` decides, from
the source's catalog, and both sides use the source's decision). Their cost, summed
over 1,000,000 rows of ``(id, column)`` (psql ``\timing``, PostgreSQL 15, 2 runs each):
a float8 as bytes 1.05 × its value hash, an ``int[4]`` as text 1.8 ×, json as text
0.33 × the jsonb cast it replaces; the sample schema's checksum pass did not move
(``bench/validate.py --rows 200000 --checksum hash``: 0.128 s vs 0.151 s before, noise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import pq, sql

from migrate.errors import CheckFailed

Mode = Literal["hash", "text"]
MODES: tuple[Mode, ...] = ("hash", "text")
HASH_MIN_VERSION = 140000  # hash_record_extended appeared in PostgreSQL 14

T = TypeVar("T")
U = TypeVar("U")


def _sql(name: str) -> str:
    return (files("migrate.checks") / name).read_text()


# ----------------------------------------------------------------------------- which hash
def mode_for(source_version: int, target_version: int) -> Mode:
    """``hash`` when both servers run the same major version (14 or later), else ``text``."""
    same_major = source_version // 10000 == target_version // 10000
    return "hash" if same_major and min(source_version, target_version) >= HASH_MIN_VERSION else "text"


def choose_mode(source: psycopg.Connection[Any], target: psycopg.Connection[Any]) -> Mode:
    """The checksum mode for these two servers (``server_version_num`` of each)."""
    return mode_for(source.info.server_version, target.info.server_version)


# ----------------------------------------------------------------------------- table shapes
@dataclass(frozen=True)
class ColumnShape:
    name: str
    type: str  # format_type(): the catalog's own spelling, used to cast key values back
    kind: str  # plain | float | numeric | text (see columns.sql)
    collatable: bool


@dataclass(frozen=True)
class TableShape:
    """A table's columns as they enter the canonical row, and its primary key."""

    name: str
    columns: tuple[ColumnShape, ...]
    key: tuple[str, ...] = ()

    @property
    def key_columns(self) -> tuple[ColumnShape, ...]:
        by_name = {c.name: c for c in self.columns}
        return tuple(by_name[k] for k in self.key)


def table_shapes(
    conn: psycopg.Connection[Any], schema: str, tables: Mapping[str, Sequence[str]]
) -> list[TableShape]:
    """Shapes of ``tables`` (name → primary key columns) of ``schema``, read from its catalog."""
    columns: dict[str, list[ColumnShape]] = {}
    for table, name, type_, collatable, kind in conn.execute(_sql("columns.sql"), {"schema": schema}):
        if table in tables:
            columns.setdefault(table, []).append(ColumnShape(name, type_, kind, collatable))
    missing = [t for t in tables if t not in columns]
    if missing:
        raise CheckFailed(f"table(s) {', '.join(missing)} not found in schema '{schema}'")
    return [TableShape(t, tuple(columns[t]), tuple(key)) for t, key in tables.items()]


# ----------------------------------------------------------------------------- SQL pieces
def value(col: ColumnShape, mode: Mode, ref: sql.Composable | None = None) -> sql.Composable:
    """A column's value as it enters the canonical row in ``mode``."""
    expr = ref if ref is not None else sql.Identifier(col.name)
    if col.kind == "float" and mode == "hash":
        return sql.SQL("float8send({}::float8)").format(expr)  # its bytes: -0 is not 0
    if col.kind == "numeric" and mode == "text":
        return sql.SQL("trim_scale({})").format(expr)
    if col.kind == "text" and mode == "hash":
        return sql.SQL("{}::text").format(expr)
    return expr


def hash_of(values: Sequence[sql.Composable], mode: Mode) -> sql.Composable:
    """A 64-bit hash (bigint) of ROW(values…) in ``mode``."""
    row = sql.SQL("ROW({})").format(sql.SQL(", ").join(values))
    if mode == "hash":
        return sql.SQL("hash_record_extended({}, 0)").format(row)
    return sql.SQL("('x' || left(md5({}::text), 16))::bit(64)::bigint").format(row)


def row_hash(shape: TableShape, mode: Mode) -> sql.Composable:
    """The hash of one row's canonical form."""
    return hash_of([value(c, mode) for c in shape.columns], mode)


# ----------------------------------------------------------------------------- sides
@dataclass(frozen=True)
class Side:
    """Where one side's rows are: a connection, a schema, and on the target the tenant's filter."""

    conn: psycopg.Connection[Any]
    schema: str
    tenant_column: str | None = None
    tenant: str | None = None
    label: str = "source"

    def relation(self, table: str) -> sql.Identifier:
        return sql.Identifier(self.schema, table)

    def tenant_filter(self) -> tuple[sql.Composable, list[Any]]:
        """``tenant_id = %s`` on the target (every query of the target), ``true`` on the source."""
        if self.tenant_column is None:
            return sql.SQL("true"), []
        return sql.SQL("{} = %s").format(sql.Identifier(self.tenant_column)), [self.tenant]


@contextmanager
def snapshot(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """One consistent, read-only snapshot with pinned session settings, rolled back at the end.

    On an idle (autocommit) connection this is a REPEATABLE READ READ ONLY
    transaction. Inside a caller's transaction (a rehearsal) it is a savepoint
    that sees the caller's snapshot, and rolling it back takes the pinned
    settings away again.
    """
    idle = conn.info.transaction_status == pq.TransactionStatus.IDLE
    with conn.transaction(force_rollback=True):
        if idle:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn.execute(_sql("session.sql"))
        yield


def on_both(source_work: Callable[[], T], target_work: Callable[[], U]) -> tuple[T, U]:
    """Run the source's and the target's work at the same time (two backends, often two servers)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="checks-source") as pool:
        pending = pool.submit(source_work)
        target_result = target_work()
        return pending.result(), target_result


def query_failed(side: Side, table: str, exc: psycopg.Error) -> CheckFailed:
    """A CheckFailed for a query that failed on one side, saying what to do."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = (
        "create the shared tables first: run the playbook's schema step ('migrate run')"
        if side.tenant_column is not None and isinstance(exc, psycopg.errors.UndefinedTable)
        else None
    )
    return CheckFailed(f"{side.label} {side.schema}.{table}: {first}", hint=hint)


# ----------------------------------------------------------------------------- checksums
@dataclass(frozen=True)
class TableSum:
    rows: int
    checksum: str  # a numeric, as text: exact


@dataclass(frozen=True)
class TableFigures:
    """One table's figures on both sides."""

    table: str
    source: TableSum
    target: TableSum

    @property
    def match(self) -> bool:
        return self.source == self.target

    def as_details(self) -> dict[str, Any]:
        """The figures as the ledger, the step state and the report keep them."""
        return {
            "source_rows": self.source.rows,
            "target_rows": self.target.rows,
            "source_checksum": self.source.checksum,
            "target_checksum": self.target.checksum,
            "match": self.match,
        }


def _sum_query(side: Side, shape: TableShape, mode: Mode) -> tuple[sql.Composed, list[Any]]:
    where, params = side.tenant_filter()
    query = sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM {} WHERE {}").format(
        row_hash(shape, mode), side.relation(shape.name), where
    )
    return query, params


def table_sum(side: Side, shape: TableShape, mode: Mode) -> TableSum:
    """Count and checksum of one table on one side, in the caller's snapshot."""
    query, params = _sum_query(side, shape, mode)
    try:
        row = side.conn.execute(query, params).fetchone()
    except psycopg.Error as exc:
        raise query_failed(side, shape.name, exc) from exc
    assert row is not None
    return TableSum(rows=int(row[0]), checksum=str(row[1]))


def table_sums(side: Side, shapes: Sequence[TableShape], mode: Mode) -> list[TableSum]:
    """Counts and checksums of several tables of one side, all from one snapshot.

    The queries go to the server as one pipeline (one round trip for a tenant's tables, not one
    per table: most of a small tenant's validation). A query that fails there cannot say which
    table it was, so the tables are then summed again one by one, which names it.
    """
    if len(shapes) > 1 and side.conn.info.transaction_status == pq.TransactionStatus.IDLE:
        try:
            with snapshot(side.conn):
                with side.conn.pipeline():
                    cursors = [side.conn.execute(*_sum_query(side, shape, mode)) for shape in shapes]
                rows = [cur.fetchone() for cur in cursors]
            return [TableSum(rows=int(r[0]), checksum=str(r[1])) for r in rows if r is not None]
        except psycopg.Error:
            if side.conn.closed or side.conn.broken:
                raise
    with snapshot(side.conn):
        return [table_sum(side, shape, mode) for shape in shapes]


def compare(source: Side, target: Side, shapes: Sequence[TableShape], mode: Mode) -> list[TableFigures]:
    """Figures of every table on both sides, the sides computed at the same time."""
    src, dst = on_both(lambda: table_sums(source, shapes, mode), lambda: table_sums(target, shapes, mode))
    return [TableFigures(shape.name, s, t) for shape, s, t in zip(shapes, src, dst, strict=True)]
