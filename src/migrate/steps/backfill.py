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
key the target declares (``foreign_keys.sql``) in one pass over the tenant's rows
of each table, its tenant parents left-joined and hash-joined, a global parent
probed per row (``_tenant_rows``), which also counts them against the checkpoints;
a violation fails the step naming the table, the foreign key, the row's key and
the row. Measured (shared/notes/performance.md):
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

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from importlib.resources import files
from typing import Any, ClassVar

import psycopg
from psycopg import sql

from migrate.catalog import TENANT_COLUMN
from migrate.catalog.fit import check_fit, column_types
from migrate.catalog.order import deferred_tables
from migrate.catalog.reflect import SourceTable
from migrate.control.store import Checkpoint, range_checkpoint
from migrate.errors import CheckFailed, Interrupted, StepFailed
from migrate.playbook.model import BackfillStep as BackfillSpec
from migrate.playbook.model import Step
from migrate.replication import slots
from migrate.replication.pgoutput import lsn_text
from migrate.steps import online, reverse
from migrate.steps.chunks import (
    TablePlan,
    boundaries,
    copy_chunk,
    count_ranges,
    read_statement,
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
# The verify's pass over the tenant's rows and its parents': hash joins whatever the statistics say
# (a global parent, not read by tenant, is probed per row instead: _ForeignKey.global_parent).
# The shared tables grow by whole tenants between ANALYZEs, so the planner believes a new tenant
# holds a row or two and nests loops over a materialised parent — 850,000 comparisons for a tenant
# of 1,850 comments and 925 tasks (65 ms; the hash join 1.3 ms), quadratic in the tenant's size.
# And joins over large shared tables must not buy a JIT compilation.
_FIGURES = {"jit": "off", "enable_nestloop": "off"}
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


SPLIT_ROWS = 100_000
"""A table not yet started with at least this many rows — or four chunks, when chunks are smaller
— is split into key ranges when the tenant has more than one stream (``StepContext.streams``)."""
_RANGE_ROWS = 50_000  # no key range is cut smaller than this (or two chunks, when chunks are smaller)
_SNAPSHOT = "SELECT pg_export_snapshot()"
_ALIVE = "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s)"


@dataclass
class _Unit:
    """What one stream copies at a time: a whole table (``part`` None, the table's own checkpoint)
    or one key range of a split table, ``low < key <= high`` (checkpoint ``table#part``)."""

    plan: TablePlan
    part: int | None
    low: list[str] | None
    high: list[str] | None
    cp: Checkpoint | None
    rows: int = 0  # rows left, counted in the copy's snapshot

    @property
    def checkpoint(self) -> str:
        return self.plan.name if self.part is None else range_checkpoint(self.plan.name, self.part)

    @property
    def last(self) -> list[str] | None:
        """Where the unit resumes: after its own checkpoint's last key, else after its lower bound."""
        if self.cp is not None and isinstance(self.cp.last_key, list):
            return list(self.cp.last_key)
        return self.low


def _split_of(cp: Checkpoint | None) -> list[list[str]] | None:
    """The boundaries a split table's checkpoint recorded, or None for a table copied whole."""
    if cp is not None and isinstance(cp.last_key, dict) and "ranges" in cp.last_key:
        return [list(b) for b in cp.last_key["ranges"]]
    return None


def _units_of(plan: TablePlan, cp: Checkpoint | None, checkpoints: Mapping[str, Checkpoint]) -> list[_Unit]:
    split = _split_of(cp)
    if split is None:
        return [_Unit(plan, None, None, None, cp)]
    bounds: list[list[str] | None] = [None, *split, None]
    return [
        _Unit(plan, i, bounds[i], bounds[i + 1], checkpoints.get(range_checkpoint(plan.name, i)))
        for i in range(len(split) + 1)
    ]


def _rows_of(checkpoints: Mapping[str, Checkpoint], table: str) -> int:
    """The tenant's rows of ``table`` its checkpoints account for: the table's, plus its key
    ranges' while a split table is under way (a finished one has its ranges' sum, and none left)."""
    cp = checkpoints.get(table)
    if cp is None:
        return 0
    split = _split_of(cp)
    parts = range(len(split) + 1) if split is not None else range(0)
    return cp.rows_copied + sum(
        c.rows_copied for i in parts if (c := checkpoints.get(range_checkpoint(table, i))) is not None
    )


def _levels(plans: Sequence[TablePlan]) -> list[list[str]]:
    """Tables by foreign-key level: a table loads after the earlier tables it references (parents
    first). With every table's keys checked after the load the whole tenant is one level."""
    if all(p.deferred for p in plans):
        return [[p.name for p in plans]]
    level: dict[str, int] = {}
    for plan in plans:  # load order: a table's parents come before it (cycles are deferred)
        parents = [
            level[fk.ref_table]
            for fk in plan.table.all_foreign_keys
            if fk.ref_schema is None and fk.ref_table in level and fk.ref_table != plan.name
        ]
        level[plan.name] = 1 + max(parents, default=-1)
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for name, n in level.items():
        out[n].append(name)
    return out


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


def _either(a: Callable[[], bool], b: Callable[[], bool]) -> Callable[[], bool]:
    return lambda: a() or b()


def _streams(ctx: StepContext) -> int:
    """The tenant's streams: the engine's budget (``--jobs`` the other tenants leave free); one in
    a rehearsal (its writes are one transaction the engine rolls back) or without connections."""
    if ctx.rehearsal or ctx.connect_source is None or ctx.connect_target is None:
        return 1
    return max(1, ctx.streams)


def _open_stream(ctx: StepContext, number: int) -> StepContext:
    """A second (third, …) stream: its own source connection in the copy's snapshot, exported
    by the main stream's transaction (also when that one imported a slot's snapshot), and its
    own target connection. The tenant's lock stays with the main stream's target connection:
    every chunk of this stream checks, before it commits, that its backend is still there."""
    assert ctx.connect_source is not None
    assert ctx.connect_target is not None
    row = ctx.source.execute(_SNAPSHOT).fetchone()
    assert row is not None
    exported = str(row[0])
    source = ctx.connect_source()
    try:
        target = ctx.connect_target()
    except BaseException:
        source.close()
        raise
    try:
        source.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        source.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(exported)))
        source.execute("SELECT set_config('jit', 'off', true), set_config('enable_seqscan', 'off', true)")
    except BaseException:
        source.close()
        target.close()
        raise
    ctx.log.debug("stream_opened", stream=number, snapshot=exported)
    return replace(ctx, source=source, target=target, carry={})


def _close_stream(ctx: StepContext) -> None:
    for conn in (ctx.source, ctx.target):
        with suppress(psycopg.Error):  # already gone: nothing of it is kept
            conn.close()


def _main_alive(ctx: StepContext, pid: int) -> None:
    """A second stream's chunk commits only while the main stream's session — the tenant's lock —
    lives: after it died another runner may hold the tenant."""
    row = ctx.target.execute(_ALIVE, (pid,)).fetchone()
    if not (row and row[0]):
        raise Interrupted(
            "the tenant's lock went with the main stream's connection: this stream's chunk is rolled back",
            hint="'migrate run' again resumes after the last chunk",
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
        before = ctx.carry.setdefault("rows_before", {p.name: _rows_of(checkpoints, p.name) for p in plans})
        sizes = {
            r[0]: (int(r[1]), int(r[2])) for r in ctx.source.execute(_SOURCE_SIZES, (ctx.source_schema,))
        }
        believed = {r[0]: float(r[1]) for r in ctx.target.execute(_BELIEVED, (ctx.target_schema,))}
        # Everything of this tenant in a table must be what its checkpoints say was copied.
        todo = {p.name: checkpoints.get(p.name) for p in plans}
        todo = {name: cp for name, cp in todo.items() if cp is None or not cp.done}
        accounted = {name: _rows_of(checkpoints, name) for name in todo}
        found = held(ctx, {name: bool(accounted[name]) for name in todo})
        for name in todo:
            _accounted(ctx, name, found[name], accounted[name])
        tables: dict[str, dict[str, int]] = {}
        opening = (
            _open_capture(ctx, checkpoints, todo)
            if ctx.cutover.mode == "online" and not ctx.rehearsal
            else None
        )
        snapshot: dict[str, Any] = {}
        streams = _streams(ctx)
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
            units = {p.name: _units_of(p, todo[p.name], checkpoints) for p in plans if p.name in todo}
            open_units = [u for us in units.values() for u in us if not (u.cp is not None and u.cp.done)]
            for unit, n in zip(
                open_units, count_ranges(ctx, [(u.plan, u.last, u.high) for u in open_units]), strict=True
            ):
                unit.rows = n
            left = {name: sum(u.rows for u in us) for name, us in units.items()}
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
                elif plan.name in empty:
                    tables[plan.name] = {"rows": 0, "copied_now": 0}
                    del units[plan.name]
            if streams > 1:
                self._split(ctx, units, streams)
            for name in units:
                size = sizes.get(name)
                if (size is None or size[0] <= 0) and todo[name] is None:
                    # Never analysed: the exact count gives the first chunk's row width.
                    sizes[name] = (left[name], size[1] if size else 0)
            copied = self._copy_units(ctx, plans, units, streams, sizes, believed)
            for name, result in copied.items():
                tables[name] = {
                    "rows": result.rows,
                    "copied_now": result.rows - int(before.get(name, 0)),
                    **({"ranges": len(units[name])} if units[name][0].part is not None else {}),
                }
            tables = {p.name: tables[p.name] for p in plans}
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
            "streams": streams,
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

    def _split(self, ctx: StepContext, units: dict[str, list[_Unit]], streams: int) -> None:
        """Cut each large table not yet started into key ranges, the boundaries read in the copy's
        snapshot, and record them in the table's checkpoint before any range's first chunk: a
        resume after ``kill -9`` finds the same ranges, each with its own checkpoint."""
        total = sum(u.rows for us in units.values() for u in us)
        least = min(SPLIT_ROWS, 4 * self.chunk_rows)
        # A few ranges a stream, so the last one to finish leaves the others idle briefly.
        size = max(min(_RANGE_ROWS, 2 * self.chunk_rows), total // (streams * 4))
        splits: dict[str, list[list[str]]] = {}
        for name, us in units.items():
            unit = us[0]
            if len(us) > 1 or unit.cp is not None or not unit.plan.key or unit.rows < least:
                continue
            parts = min(streams * 4, -(-unit.rows // size))
            found = boundaries(ctx, unit.plan, unit.rows, parts) if parts > 1 else []
            if found:
                splits[name] = found
        if not splits:
            return
        with local_transaction(ctx.target, _CHUNK), ctx.target.pipeline():
            for name, found in splits.items():
                ctx.control.save_checkpoint(
                    ctx.target, ctx.tenant.id, name, rows_copied=0, done=False, last_key={"ranges": found}
                )
        for name, found in splits.items():
            rows = units[name][0].rows
            cp = Checkpoint(name, 0, False, {"ranges": found})
            units[name] = _units_of(units[name][0].plan, cp, {})
            for unit in units[name]:
                unit.rows = rows // len(units[name])  # for the order of work only
            ctx.log.info("table_split", table=name, ranges=len(found) + 1, rows=rows, boundaries=found)

    def _copy_units(
        self,
        ctx: StepContext,
        plans: Sequence[TablePlan],
        units: dict[str, list[_Unit]],
        streams: int,
        sizes: Mapping[str, tuple[int, int]],
        believed: Mapping[str, float],
    ) -> dict[str, _Copied]:
        """Copy every unit, level by level (parents before children unless every table's keys are
        checked after the load), each level's units spread over ``streams`` streams: this one
        and ``streams - 1`` more, each a source connection in the copy's exported snapshot and a
        target connection. A split table is finished once all its ranges are."""
        order = [p.name for p in plans if p.name in units]
        results: dict[tuple[str, int | None], _Copied] = {}
        out: dict[str, _Copied] = {}
        if streams <= 1 or not units:
            for name in order:
                started = time.monotonic()
                for unit in units[name]:
                    results[(name, unit.part)] = self._copy_unit(ctx, unit, sizes.get(name))
                out[name] = self._table_done(ctx, units[name], results, believed.get(name, -1.0), started)
            return out
        helpers = [_open_stream(ctx, n) for n in range(1, streams)]
        try:
            contexts = [ctx, *helpers]
            for level in _levels([p for p in plans if p.name in units]):
                work = sorted(
                    (u for name in level for u in units[name]), key=lambda u: (-u.rows, u.checkpoint)
                )
                started = time.monotonic()
                self._run_streams(ctx, contexts, work, sizes, results)
                for name in level:
                    out[name] = self._table_done(ctx, units[name], results, believed.get(name, -1.0), started)
        finally:
            for helper in helpers:
                _close_stream(helper)
        return out

    def _run_streams(
        self,
        ctx: StepContext,
        contexts: Sequence[StepContext],
        work: Sequence[_Unit],
        sizes: Mapping[str, tuple[int, int]],
        results: dict[tuple[str, int | None], _Copied],
    ) -> None:
        """Each stream takes the next unit (largest first) until none is left. A failure in one
        stream, or a stop, stops the others at their next safe point (a committed chunk)."""
        queue = deque(work)
        mutex = threading.Lock()
        abort = threading.Event()
        errors: list[BaseException] = []

        main = ctx.target.info.backend_pid  # holds the tenant's lock

        def stream(sctx: StepContext, number: int) -> None:
            try:
                while not abort.is_set():
                    with mutex:
                        if not queue:
                            return
                        unit = queue.popleft()
                    copied = self._copy_unit(
                        sctx, unit, sizes.get(unit.plan.name), stream=number, main=main if number else None
                    )
                    with mutex:
                        results[(unit.plan.name, unit.part)] = copied
            except BaseException as exc:
                with mutex:
                    errors.append(exc)
                abort.set()

        guarded = [replace(c, stopping=_either(ctx.stopping, abort.is_set)) for c in contexts]
        threads = [
            threading.Thread(target=stream, args=(c, n), name=f"{ctx.tenant.id}-stream{n}", daemon=True)
            for n, c in enumerate(guarded[1:], start=1)
        ]
        for thread in threads:
            thread.start()
        stream(guarded[0], 0)  # the main stream: this thread, its connections, the tenant's lock
        for thread in threads:
            thread.join()
        if errors:
            # The cause, not another stream's stop it brought about.
            raise next((e for e in errors if not isinstance(e, Interrupted)), errors[0])

    def _copy_unit(
        self,
        ctx: StepContext,
        unit: _Unit,
        size: tuple[int, int] | None,
        *,
        stream: int | None = None,
        main: int | None = None,
    ) -> _Copied:
        """One table whole, or one key range of it, chunk by chunk from its checkpoint on.

        ``stream``: which stream copies it (logged); ``main``: for a second stream, the backend
        of the main stream's target connection, which holds the tenant's lock."""
        plan, name = unit.plan, unit.plan.name
        cp = unit.cp
        done_before = cp.rows_copied if cp is not None else 0
        result = _Copied(rows=done_before)
        if cp is not None and cp.done:
            return result
        rows_per_chunk = self._first_chunk_rows(size)
        last = unit.last
        write = write_statement(ctx, plan)
        final = False
        while not final:
            upper, final = upper_key(ctx, plan, last, rows_per_chunk, unit.high)
            chunk_started = time.monotonic()
            rows = nbytes = 0
            # The chunk's rows and its checkpoint: one transaction, so a kill keeps both or neither.
            with local_transaction(
                ctx.target, _CHUNK_DEFERRED if plan.deferred else _CHUNK, propagate=_citus(ctx)
            ):
                if upper is not None:
                    # In this snapshot no key of the range is past the last one: the final chunk is
                    # bounded by the range alone, and a table in one chunk is read whole.
                    read = read_statement(ctx, plan, last, unit.high if final else upper, ctx.tenant.id)
                    rows, nbytes = copy_chunk(ctx, plan, read, write)
                if plan.deferred:
                    # Triggers off for the tenant's rows only: the checkpoint's write is checked as ever.
                    ctx.target.execute(_ORIGIN)
                ctx.control.save_checkpoint(
                    ctx.target,
                    ctx.tenant.id,
                    unit.checkpoint,
                    rows_copied=result.rows + rows,
                    done=final,
                    last_key=upper if upper is not None else last,
                )
                if main is not None:
                    _main_alive(ctx, main)
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
                **({"range": unit.part} if unit.part is not None else {}),
                **({"stream": stream} if stream is not None else {}),
                started=round(chunk_started, 3),
            )
            if rows and nbytes:
                rows_per_chunk = max(1, min(self.chunk_rows, self.chunk_bytes * rows // nbytes))
            if not final and ctx.stopping():
                # A safe point: every chunk so far is committed with its checkpoint.
                raise Interrupted(
                    f"stopped on request after {result.rows} rows of {unit.checkpoint}",
                    hint="'migrate run' again resumes after the last chunk",
                )
        return result

    def _table_done(
        self,
        ctx: StepContext,
        units: Sequence[_Unit],
        results: Mapping[tuple[str, int | None], _Copied],
        believed: float,
        started: float,
    ) -> _Copied:
        """A table whose units are all copied: a split one gets its finished checkpoint (the sum of
        its ranges) and loses its ranges' in one transaction; then statistics, progress, log."""
        plan, name = units[0].plan, units[0].plan.name
        copied = [results[(name, u.part)] for u in units]
        total = _Copied(
            rows=sum(c.rows for c in copied),
            copied_now=sum(c.copied_now for c in copied),
            bytes_now=sum(c.bytes_now for c in copied),
            chunks_now=sum(c.chunks_now for c in copied),
        )
        if units[0].part is not None:
            split = [u.high for u in units[:-1]]
            with local_transaction(ctx.target, _CHUNK):
                ctx.control.save_checkpoint(
                    ctx.target,
                    ctx.tenant.id,
                    name,
                    rows_copied=total.rows,
                    done=True,
                    last_key={"ranges": split},
                )
                ctx.control.clear_checkpoints(ctx.target, ctx.tenant.id, [u.checkpoint for u in units])
        if plan.parent and total.copied_now:
            self._analyze(ctx, name, total.rows, believed)
        ctx.progress(ProgressEvent("table_copied", ctx.tenant.id, name, total.rows, total.bytes_now))
        ctx.log.info(
            "table_copied",
            table=name,
            rows=total.rows,
            copied_now=total.copied_now,
            chunks=total.chunks_now,
            bytes=total.bytes_now,
            seconds=round(time.monotonic() - started, 3),
            **({"ranges": len(units)} if units[0].part is not None else {}),
        )
        return total

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
        capture = (
            online.store(ctx).capture(ctx.target, ctx.tenant.id) if ctx.cutover.mode == "online" else None
        )
        # Every foreign key of every table holding the tenant's rows, however they were loaded —
        # unless tables were copied at two snapshots: their keys may break until catch-up mends them,
        # and the cut-over's comparison under the freeze proves the end state instead.
        checked = capture is None or not capture.table_lsns
        # A table the checkpoint says holds none of the tenant's rows is counted only: a row there
        # fails the count before any key could matter (a small tenant's empty tables cost no join).
        holding = {name for name, cp in checkpoints.items() if cp.rows_copied}
        keys = [k for k in _foreign_keys(ctx) if k.table in holding] if checked and holding else []
        with local_transaction(ctx.target, _FIGURES, propagate=_citus(ctx)):
            figures = _tenant_rows(ctx, ctx.tables, keys)
            for table in ctx.tables:
                checkpoint = checkpoints.get(table.name)
                if checkpoint is None or not checkpoint.done:
                    raise StepFailed(f"table {table.name} has no finished checkpoint")
                have = figures[table.name][0]
                if have != checkpoint.rows_copied:
                    raise StepFailed(
                        f"the shared table {table.name} holds {have} rows of tenant '{ctx.tenant.id}', "
                        f"the checkpoint says {checkpoint.rows_copied}",
                        hint="something else wrote to the shared table; run 'migrate verify'",
                    )
            for table in ctx.tables:
                for key in figures[table.name][1]:
                    raise _foreign_key_failed(ctx, table, key)

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


@dataclass(frozen=True)
class _ForeignKey:
    """A foreign key of a shared table, as the target enforces it."""

    table: str
    name: str
    columns: tuple[str, ...]
    ref_schema: str
    ref_table: str
    ref_columns: tuple[str, ...]
    full: bool  # MATCH FULL

    @property
    def global_parent(self) -> bool:
        """The key references a global table (no tenant column in it): its parent is not read by
        tenant, so it is probed per row (by its unique key), never hashed whole for every tenant."""
        return TENANT_COLUMN not in self.columns

    def violates(self, parent: str) -> sql.Composable:
        """A row of the child (``c``) that breaks the key, the parent left-joined as ``parent``
        (a global parent: probed in a sub-query, see ``global_parent``).

        MATCH SIMPLE (the default): a row with any NULL in the key references nothing. MATCH FULL:
        all NULL references nothing, some NULL is a violation."""
        column = [sql.SQL("c.{}").format(sql.Identifier(c)) for c in self.columns]
        present = sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(c) for c in column)
        if self.global_parent:
            missing: sql.Composable = sql.SQL("NOT EXISTS (SELECT 1 FROM {} AS {} WHERE {})").format(
                sql.Identifier(self.ref_schema, self.ref_table), sql.Identifier(parent), self._match(parent)
            )
        else:  # the key references a unique key: a joined row's columns equal the child's, so not NULL
            first = sql.Identifier(self.ref_columns[0])
            missing = sql.SQL("{}.{} IS NULL").format(sql.Identifier(parent), first)
        if not self.full:
            return sql.SQL("({} AND {})").format(present, missing)
        absent = sql.SQL(" AND ").join(sql.SQL("{} IS NULL").format(c) for c in column)
        return sql.SQL("(NOT ({}) AND (NOT ({}) OR {}))").format(absent, present, missing)

    def joined(self, parent: str) -> sql.Composable:
        """The parent left-joined as ``parent`` (nothing for a global parent: ``violates`` probes it)."""
        if self.global_parent:
            return sql.SQL("")
        return sql.SQL(" LEFT JOIN {} AS {} ON {}").format(
            sql.Identifier(self.ref_schema, self.ref_table), sql.Identifier(parent), self._match(parent)
        )

    def _match(self, parent: str) -> sql.Composable:
        return sql.SQL(" AND ").join(
            sql.SQL("{}.{} = c.{}").format(sql.Identifier(parent), sql.Identifier(p), sql.Identifier(c))
            for p, c in zip(self.ref_columns, self.columns, strict=True)
        )


def _foreign_keys(ctx: StepContext) -> list[_ForeignKey]:
    return [
        _ForeignKey(child, name, tuple(columns), ref_schema, ref_table, tuple(ref_columns), bool(full))
        for child, name, columns, ref_schema, ref_table, ref_columns, full in ctx.target.execute(
            _FOREIGN_KEYS, (ctx.target_schema,)
        )
    ]


def _tenant_rows(
    ctx: StepContext, tables: Sequence[SourceTable], keys: Sequence[_ForeignKey]
) -> dict[str, tuple[int, list[_ForeignKey]]]:
    """Each table's rows of the tenant and the foreign keys of ``keys`` some of them break: one
    pass over the tenant's rows of each table, its parents left-joined (a key references a unique
    key: a child row meets one parent at most), all tables in one pipeline — not a count and an
    anti-join per key, each reading the tenant's rows of the table again."""
    if not tables:
        return {}
    queries: list[tuple[str, list[_ForeignKey], sql.Composed]] = []
    for table in tables:
        mine = [k for k in keys if k.table == table.name]
        parents = [f"p{i}" for i in range(len(mine))]
        pairs = list(zip(mine, parents, strict=True))
        broken = [sql.SQL(", count(*) FILTER (WHERE {})").format(k.violates(p)) for k, p in pairs]
        query = sql.SQL("SELECT count(*){} FROM {} AS c{} WHERE c.{} = %s").format(
            sql.SQL("").join(broken),
            sql.Identifier(ctx.target_schema, table.name),
            sql.SQL("").join(k.joined(p) for k, p in pairs),
            sql.Identifier(TENANT_COLUMN),
        )
        queries.append((table.name, mine, query))
    with ctx.target.pipeline():
        cursors = [ctx.target.execute(query, (ctx.tenant.id,)) for *_, query in queries]
    out: dict[str, tuple[int, list[_ForeignKey]]] = {}
    for (name, mine, _), cursor in zip(queries, cursors, strict=True):
        row = cursor.fetchone()
        assert row is not None
        out[name] = (int(row[0]), [k for k, n in zip(mine, row[1:], strict=True) if n])
    return out


def _foreign_key_failed(ctx: StepContext, table: SourceTable, key: _ForeignKey) -> StepFailed:
    """The error for a key the tenant's rows break, naming the table, the key and a sample row."""
    shown_key = _batch_key(table, ctx.keys.get(table.name))
    shown = sql.SQL(", ").join(
        sql.SQL("c.{}::text").format(sql.Identifier(c)) for c in [*key.columns, *shown_key]
    )
    row = ctx.target.execute(
        sql.SQL(
            "SELECT {}, left(row_to_json(c)::text, 400) FROM {} AS c{} WHERE c.{} = %s AND {} LIMIT 1"
        ).format(
            shown,
            sql.Identifier(ctx.target_schema, table.name),
            key.joined("p"),
            sql.Identifier(TENANT_COLUMN),
            key.violates("p"),
        ),
        (ctx.tenant.id,),
    ).fetchone()
    broken = f"foreign key {key.name} of {table.name} does not hold for tenant '{ctx.tenant.id}'"
    if row is None:  # the rows changed between the two reads (nothing else writes the tenant's rows)
        return StepFailed(f"{broken} (no sample: the rows changed since)", hint="run the same command again")
    n = len(key.columns)
    values, keys, sample = row[:n], row[n:-1], row[-1]
    where = f" (key ({', '.join(shown_key)}) = ({', '.join(str(v) for v in keys)}))" if shown_key else ""
    return StepFailed(
        f"{broken}: ({', '.join(key.columns)}) = ({', '.join(str(v) for v in values)}) has no row in "
        f"{key.ref_table}; a row of {table.name}{where}: {sample}",
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
        # A split table starts again whole too (its ranges' checkpoints go with the table's).
        restarted = [
            name for name, cp in todo.items() if cp is not None and (cp.rows_copied or _split_of(cp))
        ]
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
