"""One table's copy in chunks of consecutive keys: the key, the ranges, the statements, the pipe.

A table with no key (no primary key and none declared in the playbook — its columns may
all allow NULL, its rows may repeat) is one chunk: copied whole in one transaction with its
checkpoint, so it is there entirely or not at all; its validation is the same count and
sum of row hashes, which compares rows as multisets (duplicates count).

A chunk is every source row with ``last < key <= upper``. The source names
``upper`` itself (``ORDER BY key OFFSET n-1 LIMIT 1``: an index-only scan of the
chunk's keys, about 2 % of the copy), so key ranges are compared on the source
only and the target's collation can never move a boundary; ties of a declared,
non-unique key stay in one chunk. Keys travel as text and come back as literals
cast to their column types: COPY takes no parameters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from migrate.catalog import TENANT_COLUMN
from migrate.catalog.order import deferred_tables
from migrate.catalog.reflect import SourceTable
from migrate.control.store import Checkpoint
from migrate.errors import StepFailed
from migrate.steps.context import StepContext

BATCH_BYTES = 128 * 1024  # psycopg splits larger writes; a write per row costs ~10 % (performance.md)


@dataclass(frozen=True)
class TablePlan:
    """How one table is copied."""

    table: SourceTable
    key: tuple[str, ...]  # the columns chunks are ranges of
    key_types: tuple[str, ...]
    deferred: bool  # foreign-key triggers off while loading, checked by the step's verify
    parent: bool  # a later table references it: fresh statistics before its children load

    @property
    def name(self) -> str:
        return self.table.name


def key_of(table: SourceTable, declared: Sequence[str] | None) -> tuple[str, ...]:
    """The declared key, else the primary key, else () — the table is copied whole, in one chunk."""
    if declared:
        columns = {c.name: c for c in table.columns}
        for name in declared:
            if name not in columns:
                raise StepFailed(
                    f"the key declared for table {table.name} names column {name}, which it does not have",
                    hint=f"its columns are: {', '.join(columns)}",
                )
            if not columns[name].not_null:
                raise StepFailed(
                    f"the key declared for table {table.name} has column {table.name}.{name}, which "
                    "allows NULL: rows with a NULL key fall outside every key range",
                    hint=f"declare NOT NULL columns as its key, or make {name} NOT NULL in the source",
                )
        return tuple(declared)
    # No key at all (no primary key, none declared; its columns may all allow NULL): the whole
    # table is one chunk, copied in one transaction with its checkpoint — all or nothing, so a
    # kill -9 leaves none of its rows and the next run copies it again from the start.
    return table.primary_key or ()


def table_plans(tables: Sequence[SourceTable], declared: Mapping[str, tuple[str, ...]]) -> list[TablePlan]:
    deferred = deferred_tables(tables)
    referenced = {
        fk.ref_table
        for t in tables
        for fk in t.foreign_keys
        if fk.ref_table != t.name and fk.ref_schema is None
    }
    plans = []
    for table in tables:
        key = key_of(table, declared.get(table.name))
        types = {c.name: c.type for c in table.columns}
        plans.append(
            TablePlan(
                table,
                key,
                tuple(types[k] for k in key),
                deferred=table.name in deferred,
                parent=table.name in referenced,
            )
        )
    return plans


def _key_list(columns: Sequence[str]) -> sql.Composable:
    # Qualified (s.col): in ORDER BY a bare name would sort by a ::text output column of that name.
    return sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in columns)


def _key_values(plan: TablePlan, values: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(t))
        for v, t in zip(values, plan.key_types, strict=True)
    )


def key_range(plan: TablePlan, last: Sequence[str] | None, upper: Sequence[str] | None) -> sql.Composable:
    """`` WHERE (key) > (last) AND (key) <= (upper)``, either bound left out when None."""
    key = _key_list(plan.key)
    parts: list[sql.Composable] = []
    if last is not None:
        parts.append(sql.SQL("({}) > ({})").format(key, _key_values(plan, last)))
    if upper is not None:
        parts.append(sql.SQL("({}) <= ({})").format(key, _key_values(plan, upper)))
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(parts) if parts else sql.SQL("")


def rows_left(
    ctx: StepContext, plans: Sequence[TablePlan], checkpoints: Mapping[str, Checkpoint | None]
) -> dict[str, int]:
    """Per table, the source rows after its checkpoint's last key: exact, in one round trip.

    Run in the copy's own snapshot, so each figure is what the chunks will then read. A
    table not started is counted whole (a sequential scan); a resumed one from its last key on.
    """
    ranges = []
    for plan in plans:
        cp = checkpoints.get(plan.name)
        last = list(cp.last_key) if cp is not None and isinstance(cp.last_key, list) else None
        ranges.append((plan, last, None))
    return {plan.name: n for plan, n in zip(plans, count_ranges(ctx, ranges), strict=True)}


def count_ranges(
    ctx: StepContext, ranges: Sequence[tuple[TablePlan, Sequence[str] | None, Sequence[str] | None]]
) -> list[int]:
    """The source rows of each key range ``(plan, last, upper)`` (``last < key <= upper``, either
    bound left out when None), in one round trip, in the caller's snapshot."""
    if not ranges:
        return []
    parts = [
        sql.SQL("SELECT {}, count(*) FROM {} AS s{}").format(
            sql.Literal(i),
            sql.Identifier(ctx.source_schema, plan.name),
            key_range(plan, last, upper) if plan.key else sql.SQL(""),
        )
        for i, (plan, last, upper) in enumerate(ranges)
    ]
    found = dict(ctx.source.execute(sql.SQL(" UNION ALL ").join(parts)).fetchall())
    return [int(found[i]) for i in range(len(ranges))]


def boundaries(ctx: StepContext, plan: TablePlan, rows: int, parts: int) -> list[list[str]]:
    """Keys that cut the table into ``parts`` key ranges of about ``rows / parts`` rows each: the
    ``k·rows/parts``-th key for k = 1 … parts-1, in one index-only scan of the caller's snapshot.

    Range k is ``boundary[k-1] < key <= boundary[k]`` (the first open below, the last above),
    so ties of a declared non-unique key stay in one range; equal boundaries are dropped.
    """
    if not plan.key or parts < 2 or rows < parts:
        return []
    key = _key_list(plan.key)
    as_text = sql.SQL(", ").join(sql.SQL("s.{}::text").format(sql.Identifier(c)) for c in plan.key)
    cuts = [rows * k // parts for k in range(1, parts)]
    found = ctx.source.execute(
        sql.SQL(
            "SELECT * FROM (SELECT row_number() OVER (ORDER BY {key}) AS n, {as_text} FROM {table} AS s)"
            " AS r WHERE n = ANY(%s) ORDER BY n"
        ).format(key=key, as_text=as_text, table=sql.Identifier(ctx.source_schema, plan.name)),
        (cuts,),
    ).fetchall()
    out: list[list[str]] = []
    for row in found:
        if not out or out[-1] != list(row[1:]):
            out.append(list(row[1:]))
    return out


def upper_key(
    ctx: StepContext,
    plan: TablePlan,
    last: Sequence[str] | None,
    rows: int,
    high: Sequence[str] | None = None,
) -> tuple[list[str] | None, bool]:
    """The next chunk's last key and whether it ends the range; ``(None, True)`` when nothing is left.

    One round trip: the ``rows``-th key after ``last`` and the range's last key (at most
    ``high``; the table's last key when None), both read through the key's index (a
    backward scan for the second). A table without a key is one chunk: ``([], True)``.
    """
    if not plan.key:
        return [], True
    key = _key_list(plan.key)
    desc = sql.SQL(", ").join(sql.SQL("s.{} DESC").format(sql.Identifier(c)) for c in plan.key)
    as_text = sql.SQL(", ").join(sql.SQL("s.{}::text").format(sql.Identifier(c)) for c in plan.key)
    table = sql.Identifier(ctx.source_schema, plan.name)
    where = key_range(plan, last, high)
    found = ctx.source.execute(
        sql.SQL(
            "(SELECT 0, {as_text} FROM {table} AS s{where} ORDER BY {key} OFFSET %s LIMIT 1)"
            " UNION ALL (SELECT 1, {as_text} FROM {table} AS s{where} ORDER BY {desc} LIMIT 1)"
        ).format(as_text=as_text, table=table, where=where, key=key, desc=desc),
        (rows - 1,),
    ).fetchall()
    keys = {int(r[0]): list(r[1:]) for r in found}
    if 1 not in keys:
        return None, True
    upper = keys.get(0, keys[1])
    return upper, upper == keys[1]


def read_statement(
    ctx: StepContext, plan: TablePlan, last: Sequence[str] | None, upper: Sequence[str] | None, tenant: str
) -> sql.Composed:
    """The source side: the chunk's rows, ``tenant`` first (written by the step, never read)."""
    return sql.SQL("COPY (SELECT {}::text, {} FROM {} AS s{}) TO STDOUT (FORMAT binary)").format(
        sql.Literal(tenant),
        _key_list(plan.table.column_names),
        sql.Identifier(ctx.source_schema, plan.name),
        key_range(plan, last, upper),
    )


def write_statement(ctx: StepContext, plan: TablePlan) -> sql.Composed:
    """The target side; its WHERE makes the database drop any row that is not this tenant's.

    Citus refuses ``COPY … FROM … WHERE`` ("Citus does not support COPY FROM with WHERE"):
    there the tenant column is the step's own literal alone (``read_statement``), rows read
    must still equal rows written, and validation counts the tenant's rows on its shard.
    """
    copy = sql.SQL("COPY {} ({}, {}) FROM STDIN (FORMAT binary)").format(
        sql.Identifier(ctx.target_schema, plan.name),
        sql.Identifier(TENANT_COLUMN),
        sql.SQL(", ").join(sql.Identifier(c) for c in plan.table.column_names),
    )
    if ctx.distributed == "citus":
        return copy
    return sql.SQL("{} WHERE {} = {}").format(copy, sql.Identifier(TENANT_COLUMN), sql.Literal(ctx.tenant.id))


def _pipe(ctx: StepContext, read: sql.Composed, write: sql.Composed) -> tuple[int, int, int]:
    """Stream source to target, batched; (rows read, rows written, bytes)."""
    sent = 0
    with ctx.source.cursor() as src, ctx.target.cursor() as dst:
        with src.copy(read) as reader, dst.copy(write) as writer:
            batch = bytearray()
            for block in reader:
                batch += block
                if len(batch) >= BATCH_BYTES:
                    writer.write(batch)
                    sent += len(batch)
                    batch = bytearray()
            if batch:
                writer.write(batch)
                sent += len(batch)
        return src.rowcount, dst.rowcount, sent


def _permanent(exc: psycopg.Error, ctx: StepContext, table: str) -> StepFailed | None:
    """A data or schema error of one table, named with its column; None for anything else."""
    if not isinstance(
        exc,
        psycopg.errors.DataError
        | psycopg.errors.IntegrityError
        | psycopg.errors.SyntaxErrorOrAccessRuleViolation,
    ):
        return None
    diag = exc.diag
    column = diag.column_name
    if column is None and diag.context:
        found = re.search(r"column (\S+)", diag.context)
        column = found.group(1).strip(":,") if found else None
    place = f"{table}.{column}" if column else table
    detail = f" ({diag.message_detail})" if diag.message_detail else ""
    return StepFailed(
        f"copying {place} of tenant '{ctx.tenant.id}' failed: {diag.message_primary or exc}{detail}",
        hint="a difference between the source and the shared table, not a passing fault, so it is not "
        "retried: fix the schema or the data, then run again (the copy resumes)",
    )


def copy_chunk(ctx: StepContext, plan: TablePlan, read: sql.Composed, write: sql.Composed) -> tuple[int, int]:
    """Copy one chunk inside the caller's target transaction; (rows, bytes).

    Raises StepFailed for a permanent error (named with table and column) and when
    the target dropped rows of another tenant — the caller's transaction then rolls
    the whole chunk back. Passing faults (lost connection, deadlock, …) propagate
    unchanged for the engine to retry.
    """
    try:
        rows_read, rows, nbytes = _pipe(ctx, read, write)
    except psycopg.Error as exc:
        permanent = _permanent(exc, ctx, plan.name)
        if permanent is None:
            raise
        raise permanent from exc
    if rows != rows_read:
        raise StepFailed(
            f"{rows_read - rows} of {rows_read} rows streamed into {ctx.target_schema}.{plan.name} for "
            f"tenant '{ctx.tenant.id}' carried another tenant_id: the target dropped them and the chunk "
            "was rolled back",
            hint="this is a bug in tenant-migrate: report it with the log",
        )
    return rows, nbytes
