"""The backfill step: each source table streams into its shared table with COPY, chunk by chunk.

**Chunks by key range.** A table is copied in chunks of consecutive keys (its
primary key, or the ``key`` the playbook declares for a table without one).
For each chunk the source names its upper key (``… ORDER BY key OFFSET n-1
LIMIT 1``, an index-only scan), then ``COPY (SELECT 'tenant', cols… WHERE key >
last AND key <= upper) TO STDOUT (FORMAT binary)`` feeds ``COPY … FROM STDIN
(FORMAT binary)`` on the target in 128 KB writes: no table is ever held in
Python memory and no value is re-encoded. All tables of a tenant are read in one
REPEATABLE READ snapshot of the source, so rows that reference each other arrive
together. The chunk's rows and its checkpoint
(``last_key``, ``rows_copied``) commit in ONE target transaction, so a
``kill -9`` at any moment leaves whole chunks, each accounted for: the next
run resumes after ``last_key``, and rows no checkpoint accounts for are
refused, never duplicated or silently deleted. Key ranges are compared on the
source only, so the target's collation cannot move a boundary; a chunk is at
most ``chunk_rows`` rows and about ``chunk_mb`` of stream (the row width is
re-measured after every chunk).

**The write path.** The writer must be exempt from RLS (superuser or
BYPASSRLS): PostgreSQL refuses ``COPY FROM`` into a table whose policies apply
to the writing role. Measured (``bench/backfill.py --rows 300000 --reps 5
--methods limit,bypassrls,staging``, ratio to a superuser's COPY): a BYPASSRLS
role's COPY 0.96, the alternative — COPY into a temporary staging table, then
``INSERT … SELECT`` under ``set_config('app.tenant_id', …, true)`` as a role
subject to RLS — 0.85. So the exempt writer, and the database still refuses
any row of another tenant: the target COPY carries ``WHERE tenant_id =
'<tenant>'``, and a chunk whose rows read and rows written differ is rolled
back and fails the tenant.

**Foreign keys checked once, not per row.** Every table loads with its
foreign-key triggers off for the chunk's own transaction (``SET LOCAL
session_replication_role = replica``: that transaction only, never ``ALTER
TABLE … DISABLE TRIGGER``, which would reach every tenant of the live shared
target), and ``verify`` — in the step, before it is done — proves each foreign
key the target declares with one anti-join over the tenant's rows
(``foreign_keys.sql``); a violation fails the step naming the table, the
foreign key, the row's key and the row. Measured (shared/notes/performance.md):
1.35 × the load with per-row trigger checks. Only the tenant's own rows are
written (the COPY's ``WHERE tenant_id``), so nothing of another tenant goes
unchecked. A copy fires no trigger of the table's own either (a carried
``last_updated`` or ``tsvector`` trigger would rewrite the rows on the way, and
validation would rightly fail): such tables, cycles and self-references always
load in replica mode (see ``steps/order.py``), so they need a writer that may
set ``session_replication_role``; the others load with per-row checks when the
writer may not. ``verify`` checks every foreign key of every table
holding rows of the tenant, however its chunks were loaded, so a resume under
other privileges leaves nothing unchecked either.

**On Citus** (``target.distributed: citus``) the chunk's settings go out as ``SET LOCAL``
with ``citus.propagate_set_commands = 'local'``, so the workers, where the shards' triggers
fire, honour ``session_replication_role`` too (``set_config`` never reaches them); and Citus
refuses ``COPY … WHERE``, so there the tenant column is the step's own literal alone
(``chunks.write_statement``), with rows read still equal to rows written.

**Online** (``cutover: {mode: online}``): before the first chunk a publication
and a replication slot are made on the source, and the copy reads the slot's
exported snapshot, so the changes the slot keeps begin exactly where the copy
ends (``steps/online.py``, ``replication/slots.py``). A resume after the runner
died cannot have that snapshot back (it lived in the dead runner's
transaction). It never mixes two points in time within a table: a temporary slot
exports a new exact snapshot and its position; the tables not finished — the one
under way starts again — are copied in it, and their changes count only from
that position (``captures.table_lsns``), as PostgreSQL's own table
synchronisation does. The slot still holds every change since the first
snapshot, so finished tables go on from there. What remains loads with
foreign-key triggers off: its rows may point at rows the finished tables only
get from catch-up.

**Statistics.** A parent table is ANALYZEd when its load is done and the rows
it got are a large share of what the planner believes it holds: its children's
foreign-key checks are planned on those statistics (shared/notes/performance.md).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib.resources import files
from typing import Any, ClassVar

from psycopg import sql

from migrate.catalog import TENANT_COLUMN
from migrate.catalog.fit import check_fit, column_types
from migrate.catalog.order import deferred_tables
from migrate.catalog.reflect import SourceTable
from migrate.control.store import Checkpoint
from migrate.errors import CheckFailed, Interrupted, StepFailed
from migrate.playbook.model import BackfillStep as BackfillSpec
from migrate.playbook.model import Step
from migrate.replication import slots
from migrate.replication.pgoutput import lsn_text
from migrate.steps import online, reverse
from migrate.steps.chunks import (
    TablePlan,
    copy_chunk,
    read_statement,
    rows_left,
    table_plans,
    upper_key,
    write_statement,
)
from migrate.steps.context import Details, ProgressEvent, StepContext, local_transaction
from migrate.steps.sequences import advance_sequences

# The writer in one round trip: exempt from RLS; may set session_replication_role (superuser, or
# PG 15+ a granted SET privilege).
_WRITER = (
    "SELECT r.rolsuper OR r.rolbypassrls,"
    " r.rolsuper OR (current_setting('server_version_num')::int >= 150000"
    "  AND has_parameter_privilege('session_replication_role', 'SET'))"
    " FROM pg_roles r WHERE r.rolname = current_user"
)
_SOURCE_SIZES = (
    "SELECT c.relname, c.reltuples::bigint, pg_table_size(c.oid) FROM pg_class c"
    " WHERE c.relnamespace = to_regnamespace(%s) AND c.relkind IN ('r', 'p')"
)
# A chunk's commit need not wait for the disk: its rows and its checkpoint are lost or kept together
# (a server crash can only take the last chunks back, and their checkpoints with them), and the
# step's own synchronous commit at the end flushes every chunk before it. Client crashes lose nothing.
_CHUNK = {"synchronous_commit": "off"}
_CHUNK_DEFERRED = {**_CHUNK, "session_replication_role": "replica"}
_ORIGIN = "SELECT set_config('session_replication_role', 'origin', true)"
_BELIEVED = (
    "SELECT c.relname, c.reltuples FROM pg_class c"
    " WHERE c.relnamespace = to_regnamespace(%s) AND c.relkind IN ('r', 'p')"
)
_ANALYZE_SHARE = 0.2
_FOREIGN_KEYS = (files("migrate.steps") / "foreign_keys.sql").read_text()
CHECK_AFTER_LOAD = True
"""Foreign keys checked once after the load (True) or per row while loading (False: only
``bench/backfill.py --methods perrow`` sets it, to measure the difference)."""
# Shared tables with user triggers (carried from the source: a last_updated, a tsvector trigger),
# by root table. The copy moves rows as they are: those triggers must not rewrite them on the way.
_TRIGGERED = (
    "SELECT DISTINCT r.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
    " JOIN pg_class r ON r.oid = coalesce(pg_partition_root(c.oid), c.oid)"
    " WHERE c.relnamespace = to_regnamespace(%s) AND NOT t.tgisinternal"
)


def _citus(ctx: StepContext) -> bool:
    """Settings of a chunk's transaction must reach the Citus workers (``local_transaction``)."""
    return ctx.distributed == "citus"


@dataclass
class _Copied:
    rows: int = 0
    copied_now: int = 0
    bytes_now: int = 0
    chunks_now: int = 0


def held(ctx: StepContext, tables: Mapping[str, bool]) -> dict[str, int]:
    """The tenant's rows in each shared table, in one round trip: counted, or 0/1 (any?) when False."""
    if not tables:
        return {}
    parts = []
    for i, (table, exact) in enumerate(tables.items()):
        rows = sql.SQL("SELECT 1 FROM {} WHERE {} = %(tenant)s").format(
            sql.Identifier(ctx.target_schema, table), sql.Identifier(TENANT_COLUMN)
        )
        parts.append(
            sql.SQL("SELECT {}, count(*) FROM ({}{}) AS r").format(
                sql.Literal(i), rows, sql.SQL("") if exact else sql.SQL(" LIMIT 1")
            )
        )
    names = list(tables)
    found = ctx.target.execute(sql.SQL(" UNION ALL ").join(parts), {"tenant": ctx.tenant.id}).fetchall()
    return {names[int(i)]: int(n) for i, n in found}


def _check_target(ctx: StepContext, plans: Sequence[TablePlan]) -> None:
    """Every copied column exists in the shared table with the same type, or the tenant fails now."""
    check_fit(
        [p.table for p in plans],
        column_types(ctx.target, ctx.target_schema),
        source_schema=ctx.source_schema,
        target_schema=ctx.target_schema,
        columns={p.name: p.table.column_names for p in plans},
    )


def _check_writer(ctx: StepContext, plans: Sequence[TablePlan]) -> list[TablePlan]:
    """The writer may COPY under RLS; the plans, every table whose foreign keys may be checked
    after the load ``deferred`` (see the module's docstring)."""
    row = ctx.target.execute(_WRITER).fetchone()
    exempt, may = row if row is not None else (False, False)
    if not exempt:
        raise StepFailed(
            "the target role is subject to row-level security, and PostgreSQL refuses COPY into such tables",
            hint="connect MIGRATE_TARGET_DSN as a migrator role with BYPASSRLS "
            "(ALTER ROLE migrator BYPASSRLS)",
        )
    deferred = [p.name for p in plans if p.deferred]
    if deferred and not may:
        raise StepFailed(
            f"table(s) {', '.join(deferred)} reference themselves or each other in a cycle, or have "
            "triggers the copy must not fire, so they load with triggers and foreign-key checks "
            "off (checked afterwards), which needs session_replication_role",
            hint="GRANT SET ON PARAMETER session_replication_role TO the migrator role (PostgreSQL 15+)",
        )
    if not may or not CHECK_AFTER_LOAD:
        return list(plans)
    return [p if p.deferred else replace(p, deferred=True) for p in plans]


def _triggered(ctx: StepContext) -> frozenset[str]:
    """The shared tables (by root) that have user triggers."""
    return frozenset(r[0] for r in ctx.target.execute(_TRIGGERED, (ctx.target_schema,)))


def _accounted(ctx: StepContext, table: str, found: int, rows_copied: int) -> None:
    if found != rows_copied:
        extra = f"{found} rows" if rows_copied else "rows"
        raise StepFailed(
            f"the shared table {ctx.target_schema}.{table} already holds {extra} of tenant "
            f"'{ctx.tenant.id}' that no checkpoint accounts for (the checkpoint says {rows_copied})",
            hint=f"remove them with 'migrate rollback … --tenant {ctx.tenant.id}' before copying again; "
            "they are never deleted silently",
        )


class BackfillStep:
    kind: ClassVar[str] = "backfill"

    def __init__(self, spec: Step) -> None:
        self.spec = spec
        sizes = spec if isinstance(spec, BackfillSpec) else BackfillSpec(kind="backfill")
        self.chunk_rows = sizes.chunk_rows
        self.chunk_bytes = sizes.chunk_mb * 1024 * 1024

    def apply(self, ctx: StepContext) -> Details:
        # A copy fires no trigger: the rows arrive as the source holds them (a BEFORE INSERT trigger
        # would rewrite them, and validation would rightly fail). Replica mode turns the foreign-key
        # triggers off too: those tables' keys are checked after the load, as every other table's are.
        triggered = _triggered(ctx)
        plans = table_plans(ctx.tables, ctx.keys)
        plans = _check_writer(ctx, [replace(p, deferred=True) if p.name in triggered else p for p in plans])
        _check_target(ctx, plans)
        checkpoints = ctx.control.checkpoints(ctx.target, ctx.tenant.id)
        # Rows before this step's first attempt: what a retry copies adds to what the attempts
        # before it copied, so the step's figure of rows copied now stays exact after any retry.
        before = ctx.carry.setdefault(
            "rows_before", {name: cp.rows_copied for name, cp in checkpoints.items()}
        )
        sizes = {
            r[0]: (int(r[1]), int(r[2])) for r in ctx.source.execute(_SOURCE_SIZES, (ctx.source_schema,))
        }
        believed = {r[0]: float(r[1]) for r in ctx.target.execute(_BELIEVED, (ctx.target_schema,))}
        # Everything of this tenant in a table must be what its checkpoint says was copied.
        todo = {p.name: checkpoints.get(p.name) for p in plans}
        todo = {name: cp for name, cp in todo.items() if cp is None or not cp.done}
        found = held(ctx, {name: bool(cp and cp.rows_copied) for name, cp in todo.items()})
        for name, cp in todo.items():
            _accounted(ctx, name, found[name], cp.rows_copied if cp else 0)
        tables: dict[str, dict[str, int]] = {}
        opening = (
            _open_capture(ctx, checkpoints, todo)
            if ctx.cutover.mode == "online" and not ctx.rehearsal
            else None
        )
        snapshot: dict[str, Any] = {}
        # One snapshot of the source for all tables: rows that reference each other arrive together.
        with ctx.source.transaction():
            ctx.source.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if opening is not None:
                snapshot = _take_snapshot(ctx, opening, todo)
                if opening.resumed:
                    # Rows of the new snapshot may point at rows the finished tables get from catch-up.
                    plans = [replace(p, deferred=True) if p.name in todo else p for p in plans]
            # JIT off, or the cost penalty of a sequential scan (the count below, a table read
            # whole) would buy a ~100 ms compilation per statement.
            ctx.source.execute("SELECT set_config('jit', 'off', true)")
            sized = time.monotonic()
            left = rows_left(ctx, [p for p in plans if p.name in todo], todo)
            sizing_seconds = time.monotonic() - sized
            # Counted in the very snapshot the chunks read: the total is what this attempt copies,
            # to the row, whatever the planner's statistics say (never analysed, or stale).
            ctx.progress(ProgressEvent("tenant_sized", ctx.tenant.id, rows=sum(left.values())))
            ctx.log.info("tenant_sized", rows=sum(left.values()), seconds=round(sizing_seconds, 3))
            # Key ranges go through the key's index.
            ctx.source.execute("SELECT set_config('enable_seqscan', 'off', true)")
            empty = self._finish_empty(
                ctx, [p for p in plans if p.name in todo and todo[p.name] is None and not left[p.name]]
            )
            for plan in plans:
                if plan.name not in todo:
                    done = checkpoints[plan.name].rows_copied
                    tables[plan.name] = {"rows": done, "copied_now": done - int(before.get(plan.name, 0))}
                    continue
                if plan.name in empty:
                    tables[plan.name] = {"rows": 0, "copied_now": 0}
                    continue
                size = sizes.get(plan.name)
                if (size is None or size[0] <= 0) and todo[plan.name] is None:
                    # Never analysed: the exact count gives the first chunk's row width.
                    size = (left[plan.name], size[1] if size else 0)
                copied = self._copy_table(ctx, plan, todo[plan.name], size, believed.get(plan.name, -1.0))
                tables[plan.name] = {
                    "rows": copied.rows,
                    "copied_now": copied.rows - int(before.get(plan.name, 0)),
                }
        # Every shared sequence past the tenant's values: the application's first insert after the
        # flip must not draw a number the tenant already holds (steps/sequences.py).
        moved = advance_sequences(ctx)
        return {
            "tables": tables,
            "rows": sum(t["rows"] for t in tables.values()),
            "copied_now": sum(t["copied_now"] for t in tables.values()),
            **({"sequences": moved} if moved else {}),
            **({"capture": snapshot} if snapshot else {}),
            "sizing_seconds": round(sizing_seconds, 4),
        }

    def _finish_empty(self, ctx: StepContext, plans: Sequence[TablePlan]) -> set[str]:
        """Tables not yet started with no row in the copy's snapshot: their finished checkpoints in
        one transaction and one round trip, not a chunk each (a small tenant's fixed cost)."""
        if not plans:
            return set()
        with local_transaction(ctx.target, _CHUNK), ctx.target.pipeline():
            for plan in plans:
                ctx.control.save_checkpoint(ctx.target, ctx.tenant.id, plan.name, rows_copied=0, done=True)
        for plan in plans:
            ctx.progress(ProgressEvent("table_copied", ctx.tenant.id, plan.name, 0, 0))
            ctx.log.info(
                "table_copied", table=plan.name, rows=0, copied_now=0, chunks=0, bytes=0, seconds=0.0
            )
        return {p.name for p in plans}

    def _first_chunk_rows(self, size: tuple[int, int] | None) -> int:
        """From the source's statistics (rows, bytes); every later chunk from the row width it measured."""
        if size and size[0] > 0 and size[1] > 0:
            return max(1, min(self.chunk_rows, int(self.chunk_bytes * size[0] / size[1])))
        return self.chunk_rows

    def _copy_table(
        self,
        ctx: StepContext,
        plan: TablePlan,
        cp: Checkpoint | None,
        size: tuple[int, int] | None,
        believed: float,
    ) -> _Copied:
        name = plan.name
        started = time.monotonic()
        done_before = cp.rows_copied if cp is not None else 0
        rows_per_chunk = self._first_chunk_rows(size)
        result = _Copied(rows=done_before)
        last: list[str] | None = list(cp.last_key) if cp is not None and cp.last_key is not None else None
        write = write_statement(ctx, plan)
        final = False
        while not final:
            upper, final = upper_key(ctx, plan, last, rows_per_chunk)
            chunk_started = time.monotonic()
            rows = nbytes = 0
            # The chunk's rows and its checkpoint: one transaction, so a kill keeps both or neither.
            with local_transaction(
                ctx.target, _CHUNK_DEFERRED if plan.deferred else _CHUNK, propagate=_citus(ctx)
            ):
                if upper is not None:
                    # In this snapshot no key is past the last one: the final chunk needs no upper
                    # bound, and a table in one chunk is read whole (a sequential scan).
                    read = read_statement(ctx, plan, last, None if final else upper, ctx.tenant.id)
                    rows, nbytes = copy_chunk(ctx, plan, read, write)
                if plan.deferred:
                    # Triggers off for the tenant's rows only: the checkpoint's write is checked as ever.
                    ctx.target.execute(_ORIGIN)
                ctx.control.save_checkpoint(
                    ctx.target,
                    ctx.tenant.id,
                    name,
                    rows_copied=result.rows + rows,
                    done=final,
                    last_key=upper if upper is not None else last,
                )
            if upper is None:
                break
            last = upper
            result.rows += rows
            result.copied_now += rows
            result.bytes_now += nbytes
            result.chunks_now += 1
            ctx.progress(ProgressEvent("chunk_copied", ctx.tenant.id, name, rows, nbytes))
            ctx.log.info(
                "chunk_copied",
                table=name,
                rows=rows,
                bytes=nbytes,
                total=result.rows,
                last_key=upper,
                seconds=round(time.monotonic() - chunk_started, 3),
            )
            if rows and nbytes:
                rows_per_chunk = max(1, min(self.chunk_rows, self.chunk_bytes * rows // nbytes))
            if not final and ctx.stopping():
                # A safe point: every chunk so far is committed with its checkpoint.
                raise Interrupted(
                    f"stopped on request after {result.rows} rows of {name}",
                    hint="'migrate run' again resumes after the last chunk",
                )
        if plan.parent and result.copied_now:
            self._analyze(ctx, name, result.rows, believed)
        seconds = time.monotonic() - started
        ctx.progress(ProgressEvent("table_copied", ctx.tenant.id, name, result.rows, result.bytes_now))
        ctx.log.info(
            "table_copied",
            table=name,
            rows=result.rows,
            copied_now=result.copied_now,
            chunks=result.chunks_now,
            bytes=result.bytes_now,
            seconds=round(seconds, 3),
        )
        return result

    def _analyze(self, ctx: StepContext, table: str, rows: int, believed: float) -> None:
        """ANALYZE a parent when its rows are a large share of what the planner believes it holds
        (``believed``: its reltuples, -1 when never analysed)."""
        if believed < 0 or rows > _ANALYZE_SHARE * believed:
            # SKIP_LOCKED: a runner analysing it right now gives statistics as fresh as ours.
            qualified = sql.Identifier(ctx.target_schema, table)
            ctx.target.execute(sql.SQL("ANALYZE (SKIP_LOCKED) {}").format(qualified))
            ctx.log.debug("table_analyzed", table=table, rows=rows, believed=believed)

    def verify(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        checkpoints = ctx.control.checkpoints(ctx.target, ctx.tenant.id)
        counts = held(ctx, dict.fromkeys((t.name for t in ctx.tables), True))
        for table in ctx.tables:
            checkpoint = checkpoints.get(table.name)
            if checkpoint is None or not checkpoint.done:
                raise StepFailed(f"table {table.name} has no finished checkpoint")
            have = counts[table.name]
            if have != checkpoint.rows_copied:
                raise StepFailed(
                    f"the shared table {table.name} holds {have} rows of tenant '{ctx.tenant.id}', "
                    f"the checkpoint says {checkpoint.rows_copied}",
                    hint="something else wrote to the shared table; run 'migrate verify'",
                )
        capture = (
            online.store(ctx).capture(ctx.target, ctx.tenant.id) if ctx.cutover.mode == "online" else None
        )
        if capture is not None and capture.table_lsns:
            # Tables copied at two snapshots may break foreign keys until catch-up mends them: the
            # cut-over's comparison under the freeze proves the end state instead.
            return
        # Every foreign key of every table holding the tenant's rows, however they were loaded.
        _check_foreign_keys(ctx, [t for t in ctx.tables if counts[t.name]])

    def revert(self, ctx: StepContext, details: Mapping[str, Any]) -> Details:
        """Delete the tenant's rows, children first, in committed batches; then forget the checkpoints.

        A batch is at most ``min(chunk_rows, 10 000)`` rows in its own transaction, so a huge
        tenant never holds one giant transaction (its locks, its WAL, vacuum held back), and a
        kill between batches leaves fewer rows that the next rollback deletes: the step stays
        ``done`` and its checkpoints stay until the last table is empty, so a ``run`` in between
        refuses the leftovers instead of trusting them.
        """
        rows = min(self.chunk_rows, _REVERT_ROWS)
        if not ctx.rehearsal:
            # A rollback after a cut-over keeps the tenant frozen on the shared side: lifted before the
            # rows go (the guard would refuse the deletes), with its reverse path.
            reverse.lift_shared_freeze(ctx)
            reverse.drop(ctx)
        unchecked = _unchecked_on_delete(ctx.tables)
        deleted: dict[str, int] = {}
        batches: dict[str, int] = {}
        for table in reversed(ctx.tables):  # load order reversed: children before their parents
            started = time.monotonic()
            deleted[table.name], batches[table.name] = _delete_tenant_rows(
                ctx, table, rows, unchecked=table.name in unchecked
            )
            ctx.log.info(
                "table_rows_deleted",
                table=table.name,
                rows=deleted[table.name],
                batches=batches[table.name],
                seconds=round(time.monotonic() - started, 3),
            )
        ctx.control.clear_checkpoints(ctx.target, ctx.tenant.id, [t.name for t in ctx.tables])
        ctx.log.info("tenant_rows_deleted", rows=sum(deleted.values()))
        dropped = _drop_capture(ctx)
        return {"deleted": deleted, "batches": batches, **({"capture_dropped": dropped} if dropped else {})}

    def verify_reverted(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        """The tenant has no row left in any of its shared tables, no checkpoint, and no capture."""
        if ctx.cutover.mode == "online" and online.store(ctx).capture(ctx.target, ctx.tenant.id):
            raise CheckFailed(
                f"tenant '{ctx.tenant.id}' still has change capture recorded after its backfill was reverted",
                hint="run the same rollback again: it drops the slot and publication",
            )
        left = {t: n for t, n in held(ctx, {t.name: False for t in ctx.tables}).items() if n}
        if left:
            raise CheckFailed(
                f"tenant '{ctx.tenant.id}' still has rows in {', '.join(sorted(left))} after its backfill "
                "was reverted",
                hint="run the same rollback again: it deletes what is left",
            )
        kept = ctx.control.checkpoints(ctx.target, ctx.tenant.id)
        if any(name in kept for name in (t.name for t in ctx.tables)):
            raise CheckFailed(
                f"tenant '{ctx.tenant.id}' still has backfill checkpoints after its rows were deleted",
                hint="run the same rollback again",
            )

    def summary(self, details: Mapping[str, Any], *, reverted: bool) -> str | None:
        deleted = details.get("deleted")
        if not reverted or not isinstance(deleted, Mapping):
            return None
        batches = details.get("batches")
        count = sum(batches.values()) if isinstance(batches, Mapping) else None
        return f"{sum(deleted.values()):,} rows deleted" + (f" in {count} batches" if count else "")


def _check_foreign_keys(ctx: StepContext, tables: Sequence[SourceTable]) -> None:
    """Load-then-validate: one anti-join per foreign key the target declares, over the tenant's rows.

    MATCH SIMPLE (the default): a row with any NULL in the key references nothing. MATCH FULL:
    all NULL references nothing, some NULL is a violation.
    """
    if not tables:
        return
    by_name = {t.name: t for t in tables}
    for child, name, columns, ref_schema, ref_table, ref_columns, full in ctx.target.execute(
        _FOREIGN_KEYS, (ctx.target_schema,)
    ):
        table = by_name.get(child)
        if table is None:
            continue
        column = [sql.SQL("c.{}").format(sql.Identifier(c)) for c in columns]
        present = sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(c) for c in column)
        match = sql.SQL(" AND ").join(
            sql.SQL("p.{} = {}").format(sql.Identifier(p), c)
            for p, c in zip(ref_columns, column, strict=True)
        )
        missing = sql.SQL("NOT EXISTS (SELECT 1 FROM {} AS p WHERE {})").format(
            sql.Identifier(ref_schema, ref_table), match
        )
        if full:
            absent = sql.SQL(" AND ").join(sql.SQL("{} IS NULL").format(c) for c in column)
            violates = sql.SQL("NOT ({}) AND (NOT ({}) OR {})").format(absent, present, missing)
        else:
            violates = sql.SQL("{} AND {}").format(present, missing)
        key = _batch_key(table, ctx.keys.get(table.name))
        shown = sql.SQL(", ").join(
            sql.SQL("{}::text").format(c)
            for c in [*column, *(sql.SQL("c.{}").format(sql.Identifier(k)) for k in key)]
        )
        row = ctx.target.execute(
            sql.SQL(
                "SELECT {shown}, left(row_to_json(c)::text, 400) FROM {child} AS c"
                " WHERE c.{tenant} = %s AND {violates} LIMIT 1"
            ).format(
                shown=shown,
                child=sql.Identifier(ctx.target_schema, child),
                tenant=sql.Identifier(TENANT_COLUMN),
                violates=violates,
            ),
            (ctx.tenant.id,),
        ).fetchone()
        if row is not None:
            values, keys, sample = row[: len(columns)], row[len(columns) : -1], row[-1]
            where = f" (key ({', '.join(key)}) = ({', '.join(str(v) for v in keys)}))" if key else ""
            raise StepFailed(
                f"foreign key {name} of {table.name} does not hold for tenant '{ctx.tenant.id}': "
                f"({', '.join(columns)}) = ({', '.join(str(v) for v in values)}) has no row in "
                f"{ref_table}; a row of {table.name}{where}: {sample}",
                hint="the source breaks its own foreign key (or lost the row since): fix the source, "
                "roll the tenant back and run again",
            )


# ----------------------------------------------------------------------------- online
@dataclass
class _Opening:
    """The capture a copy reads from: a new slot's exported snapshot, or a capture to take up."""

    slot: str
    replication: Any = None  # the replication connection that keeps the exported snapshot alive
    snapshot: str | None = None  # the exported snapshot's name (new capture)
    consistent_lsn: int | None = None
    resumed: bool = False  # a capture a dead runner opened: a new exact snapshot for what remains


def _open_capture(
    ctx: StepContext, checkpoints: Mapping[str, Checkpoint], todo: Mapping[str, Checkpoint | None]
) -> _Opening:
    """Before the copy's transaction: make the publication and slot, or take up a capture a dead
    runner opened (a temporary slot then exports the exact snapshot the rest is copied in)."""
    store = online.store(ctx)
    capture = store.capture(ctx.target, ctx.tenant.id)
    if capture is not None and capture.status == "capturing":
        if not todo:
            return _Opening(capture.slot)
        replication = _replication(ctx)
        try:
            made = slots.create_slot(
                replication,
                ctx.source,
                f"{capture.slot[:61]}_r",
                wait_seconds=ctx.cutover.slot_wait,
                temporary=True,
            )
        except BaseException:
            replication.close()
            raise
        return _Opening(capture.slot, replication, made.snapshot, made.consistent_lsn, resumed=True)
    copied = sorted(
        name for name, cp in checkpoints.items() if cp.rows_copied and not name.startswith("flag:")
    )
    if copied:
        raise StepFailed(
            f"tenant '{ctx.tenant.id}' has rows copied without change capture ({', '.join(copied)}): "
            "changes made since that copy are nowhere to be read",
            hint="roll the tenant back to before its copy ('migrate rollback … --to pre-copy') and run again",
        )
    name = online.names(ctx)
    _join_online(ctx, name)
    # Our own 'creating' intent left a slot behind (a runner killed after making it): start afresh.
    slots.drop_slot(ctx.source, name)
    slots.ensure_publication(ctx.source, name, ctx.source_schema, [t.name for t in ctx.tables])
    replication = _replication(ctx)
    try:
        made = slots.create_slot(replication, ctx.source, name, wait_seconds=ctx.cutover.slot_wait)
    except BaseException:
        replication.close()
        raise
    return _Opening(name, replication, made.snapshot, made.consistent_lsn)


def _replication(ctx: StepContext) -> Any:
    if ctx.connect_replication is None:
        raise StepFailed("no replication connection is wired for this run", hint="this is a bug: report it")
    return ctx.connect_replication()


def _take_snapshot(ctx: StepContext, opening: _Opening, todo: dict[str, Checkpoint | None]) -> dict[str, Any]:
    """First in the copy's REPEATABLE READ transaction: its snapshot, recorded with the capture.

    On a resume, the tables still to copy — the one under way starts again, its rows and
    checkpoint gone — count their changes from the new snapshot's position, recorded in the
    same target transaction that empties that table.
    """
    store = online.store(ctx)
    if opening.snapshot is None:
        return {"slot": opening.slot, "resumed": False}
    assert opening.consistent_lsn is not None
    lsn = lsn_text(opening.consistent_lsn)
    try:
        ctx.source.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(opening.snapshot)))
        if not opening.resumed:
            with ctx.target.transaction():
                store.started(ctx.target, ctx.tenant.id, lsn)
            ctx.log.info("capture_opened", slot=opening.slot, consistent_lsn=lsn)
            return {"slot": opening.slot, "resumed": False, "consistent_lsn": lsn}
        restarted = [name for name, cp in todo.items() if cp is not None and cp.rows_copied]
        with local_transaction(ctx.target, _CHUNK_DEFERRED):
            for name in restarted:
                ctx.target.execute(
                    sql.SQL("DELETE FROM {} WHERE {} = %s").format(
                        sql.Identifier(ctx.target_schema, name), sql.Identifier(TENANT_COLUMN)
                    ),
                    (ctx.tenant.id,),
                )
            ctx.control.clear_checkpoints(ctx.target, ctx.tenant.id, restarted)
            store.copied_at(ctx.target, ctx.tenant.id, list(todo), lsn)
            ctx.target.execute("SELECT set_config('synchronous_commit', 'on', true)")
    finally:
        opening.replication.close()  # the copy's transaction holds the snapshot now; a temporary slot goes
    for name in restarted:
        todo[name] = None
    ctx.log.warning(
        "copy_resumed_at_new_snapshot", slot=opening.slot, lsn=lsn, tables=list(todo), restarted=restarted
    )
    return {
        "slot": opening.slot,
        "resumed": True,
        "tables_from": {name: lsn for name in todo},
        "restarted": restarted,
    }


def _join_online(ctx: StepContext, name: str) -> None:
    """Record the capture's intent once fewer than ``cutover.max_online_tenants`` others are online."""
    store = online.store(ctx)
    limit = ctx.cutover.max_online_tenants
    noted = False
    while True:
        with ctx.target.transaction():
            store.lock_online(ctx.target)
            others = [t for t in store.online(ctx.target) if t != ctx.tenant.id]
            if len(others) < limit:
                store.intend(ctx.target, ctx.tenant.id, name, name)
                return
        working = ctx.control.holders(ctx.target, others)
        if not working:
            raise StepFailed(
                f"{len(others)} tenant(s) are in the online phase already ({', '.join(others)}), the "
                f"playbook's limit (cutover.max_online_tenants: {limit}), and no runner works on them",
                hint="finish their cut-over ('migrate run … --tenant T') or roll them back, "
                "or raise cutover.max_online_tenants",
            )
        if not noted:
            ctx.log.info("online_phase_full", tenants=others, limit=limit)
            noted = True
        if ctx.stopping():
            raise Interrupted("stopped on request while waiting for the online phase")
        time.sleep(1.0)


def _drop_capture(ctx: StepContext) -> str | None:
    """Drop the tenant's slot and publication and forget its capture; the slot's name, if there was one."""
    store = online.store(ctx)
    capture = store.capture(ctx.target, ctx.tenant.id) if _has_captures(ctx) else None
    if capture is None:
        return None
    slots.drop_slot(ctx.source, capture.slot)
    slots.drop_publication(ctx.source, capture.publication)
    store.forget(ctx.target, ctx.tenant.id)
    ctx.log.info("capture_dropped", slot=capture.slot)
    return capture.slot


def _has_captures(ctx: StepContext) -> bool:
    row = ctx.target.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (f'"{ctx.control.schema}".captures',)
    ).fetchone()
    return bool(row and row[0])


# ----------------------------------------------------------------------------- revert in batches
_REVERT_ROWS = 10_000


def _unchecked_on_delete(tables: Sequence[SourceTable]) -> frozenset[str]:
    """Tables whose batches run with foreign-key triggers off (``session_replication_role``).

    Deleting in reverse load order, a table's rows are still referenced only from a table of a
    cycle or a self-reference (a deferred table): those, and the tables they point to. Their
    batches leave references dangling between tables, or within one, until the last batch, and
    they are all the tenant's own rows, about to go.
    """
    deferred = deferred_tables(tables)
    pointed = {
        fk.ref_table for t in tables if t.name in deferred for fk in t.foreign_keys if fk.ref_schema is None
    }
    return frozenset(deferred | pointed)


def _batch_key(table: SourceTable, declared: Sequence[str] | None) -> tuple[str, ...]:
    """The key the copy's chunks were ranges of (declared, else primary), or () when there is none."""
    if declared and set(declared) <= set(table.column_names):
        return tuple(declared)
    return tuple(table.primary_key or ())


def _delete_batch(
    ctx: StepContext, statement: sql.Composed, params: Sequence[Any], *, unchecked: bool
) -> int:
    # A safe point: every batch so far is committed; the step stays 'done' and the rollback's
    # own record says it is unfinished, so the same rollback later deletes the rest.
    if ctx.stopping():
        raise Interrupted(
            f"stopped on request while deleting the rows of tenant '{ctx.tenant.id}' (whole batches only)",
            hint="run the same rollback again to delete the rest",
        )
    # Asynchronous commit, as for the copy's chunks: a server crash can only bring the last
    # batches back, for the next rollback to delete; the engine's synchronous commit of the
    # step's 'reverted' state comes after every batch.
    with local_transaction(ctx.target, _CHUNK_DEFERRED if unchecked else _CHUNK, propagate=_citus(ctx)):
        return int(ctx.target.execute(statement, params).rowcount)


def _delete_tenant_rows(
    ctx: StepContext, table: SourceTable, rows: int, *, unchecked: bool
) -> tuple[int, int]:
    """Delete one table's rows of the tenant in batches of at most ``rows``; (rows, batches).

    Batches are key ranges, as the copy's chunks: the batch's last key is the ``rows``-th key
    after the previous batch's, read through the (tenant_id, key) index from that key on, so
    no batch walks over the index entries earlier batches left dead (which would make a huge
    tenant's revert quadratic). What is left after the last full range — fewer than ``rows``
    rows, or every row of a table without a key — goes by row position (ctid), until none is.
    """
    qualified = sql.Identifier(ctx.target_schema, table.name)
    tenant = sql.Identifier(TENANT_COLUMN)
    key = _batch_key(table, ctx.keys.get(table.name))
    deleted = batches = 0
    last: tuple[Any, ...] | None = None
    if key:
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in key)
        values = sql.SQL(", ").join(sql.Placeholder() for _ in key)
        while True:
            after = sql.SQL("") if last is None else sql.SQL(" AND ({}) > ({})").format(columns, values)
            bound = tuple(last or ())
            found = ctx.target.execute(
                sql.SQL(
                    "SELECT {columns} FROM {table} WHERE {tenant} = %s{after} ORDER BY {columns}"
                    " OFFSET %s LIMIT 1"
                ).format(columns=columns, table=qualified, tenant=tenant, after=after),
                (ctx.tenant.id, *bound, rows - 1),
            ).fetchone()
            if found is None:
                break
            deleted += _delete_batch(
                ctx,
                sql.SQL(
                    "DELETE FROM {table} WHERE {tenant} = %s{after} AND ({columns}) <= ({values})"
                ).format(table=qualified, tenant=tenant, after=after, columns=columns, values=values),
                (ctx.tenant.id, *bound, *found),
                unchecked=unchecked,
            )
            batches += 1
            last = tuple(found)
    # ctid = ANY(ARRAY(…)) is a TID scan; the tenant_id condition keeps it to the tenant's rows even
    # where ctids repeat (a partitioned table).
    sweep = sql.SQL(
        "DELETE FROM {table} WHERE {tenant} = %s"
        " AND ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {tenant} = %s LIMIT %s))"
    ).format(table=qualified, tenant=tenant)
    while True:
        gone = _delete_batch(ctx, sweep, (ctx.tenant.id, ctx.tenant.id, rows), unchecked=unchecked)
        if gone == 0:
            break
        deleted += gone
        batches += 1
    return deleted, batches
