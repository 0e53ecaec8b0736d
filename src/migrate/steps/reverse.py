"""The reverse path of a cut-over tenant: captured from the cut-over on, applied back by a rollback.

``prepare`` (at the catch-up, and again at the cut-over before the forward freeze: idempotent,
and then it takes no table lock) records the intent, installs the shared-side guard, makes the
publication (row filter on the tenant) and the slot on the shared database, and moves the slot to
now — the DDL's locks and the slot's wait for open transactions fall outside the freeze;
``arm`` (under the freeze, after the tool's own writes) advances the slot to a fence, so it
holds the application's writes only. ``roll_back`` is the rollback across the cut-over that
loses no write:

1. **freeze the tenant on the shared side** (a row in ``shared_freezes``: the guard trigger
   refuses its writes with 25006; other tenants are untouched), then a barrier waits out the
   transactions that were open at the freeze;
2. **fence** on the shared database, **drain** the reverse slot up to it into the tenant's own
   database (``tenant_id`` checked and dropped; upsert / delete by key: idempotent);
3. **counts** per table, both sides, under the freeze (a difference gives up: the shared-side
   freeze is lifted, the flag stays on, nothing is lost);
4. the source's **sequences** past every value now in use; the forward slot past the rows just
   applied (they came from the shared side: no echo at the next cut-over);
5. the source **unfrozen** for the application (the grants recorded at the cut-over), the
   **flag back**. The shared side stays frozen for the tenant (an application instance with a
   stale flag gets an error, never a write nobody reads), until the next cut-over's flip or a
   rollback to before the copy lifts it: at no moment are both sides writable, and after the
   command exactly one is.

Every stage is idempotent: after a kill -9 the same command runs them again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from psycopg import sql

from migrate.catalog import TENANT_COLUMN
from migrate.checks.readiness import next_value, sequence_uses
from migrate.control.reverse import ReversePath, ReverseStore
from migrate.errors import MigrateError, StepFailed
from migrate.replication import reverse as rev
from migrate.replication import slots
from migrate.replication.apply import SETTINGS, Applier
from migrate.replication.changes import GONE, Fold, Image, Key, State, TableEffect, TableMap
from migrate.replication.pgoutput import lsn_int, lsn_text
from migrate.replication.stream import PollResult, Stream
from migrate.steps import online
from migrate.steps.context import Details, StepContext

PREFIX = "tmr_"


def store(ctx: StepContext) -> ReverseStore:
    return ReverseStore(ctx.control.schema, ctx.control.playbook)


def name(ctx: StepContext) -> str:
    """The tenant's reverse slot and publication on the shared database: ``tmr_<playbook>_<tenant>``."""
    return slots.slot_name(ctx.playbook or ctx.control.playbook, ctx.tenant.id, prefix=PREFIX)


def path(ctx: StepContext) -> ReversePath | None:
    return store(ctx).path(ctx.target, ctx.tenant.id)


# ----------------------------------------------------------------------------- at the cut-over
def prepare(ctx: StepContext) -> str:
    """Before the forward freeze: the intent, the guard, the publication (row filter), the slot."""
    slot = name(ctx)
    tables = online.source_tables(ctx)
    store(ctx).intend(ctx.target, ctx.tenant.id, slot, slot, tables)
    wait = ctx.cutover.slot_wait
    rev.install_guard(ctx.target, ctx.control.schema, ctx.target_schema, tables, TENANT_COLUMN, wait=wait)
    rev.ensure_publication(ctx.target, slot, ctx.target_schema, tables, TENANT_COLUMN, ctx.tenant.id)
    rev.ensure_slot(ctx.target, slot, wait_seconds=wait)
    # Not flipped yet, so none of the tenant's shared rows is the application's: move the slot to now,
    # so that under the freeze ``arm`` decodes only what the freeze itself writes.
    info = slots.slot(ctx.target, slot)
    now = slots.flush_lsn(ctx.target)
    if info is not None and info.confirmed_flush_lsn and lsn_int(info.confirmed_flush_lsn) < now:
        slots.advance(ctx.target, slot, now)
    return slot


def arm(ctx: StepContext) -> str:
    """Under the forward freeze, after the tool's own writes: the slot moves past them."""
    slot = name(ctx)
    fence = slots.fence(ctx.target, f"reverse path {ctx.tenant.id}")
    slots.advance(ctx.target, slot, fence)
    store(ctx).capturing(ctx.target, ctx.tenant.id, lsn_text(fence))
    return lsn_text(fence)


def drop(ctx: StepContext) -> bool:
    """The reverse slot and publication go (finalise, a finished rollback); True if a slot went."""
    found = path(ctx)
    slot = found.slot if found else name(ctx)
    dropped = slots.drop_slot(ctx.target, slot)
    slots.drop_publication(ctx.target, found.publication if found else slot)
    store(ctx).forget(ctx.target, ctx.tenant.id)
    return dropped


def freeze_shared(ctx: StepContext, step: str) -> None:
    """The tenant's writes to the shared tables are refused again (a cut-over that gave up after
    lifting a rollback's freeze: the old database is the tenant's again)."""
    store(ctx).freeze_shared(ctx.target, ctx.tenant.id, step)


def lift_shared_freeze(ctx: StepContext) -> bool:
    """The tenant may write the shared tables again (after the next flip, or before a new copy)."""
    lifted = store(ctx).thaw_shared(ctx.target, ctx.tenant.id)
    if lifted:
        ctx.log.info("shared_side_thawed")
    return lifted


# ----------------------------------------------------------------------------- the rollback
class _Counted:
    """The reverse stream's progress: applying is idempotent, so only the figures are kept."""

    def __init__(self) -> None:
        self.changes = 0

    def applied(self) -> int:
        return 0

    def save(self, conn: psycopg.Connection[Any], lsn: int, poll: PollResult) -> None:
        self.changes += poll.changes


@contextmanager
def _writable_source(ctx: StepContext) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the tenant's source on which the tool may write (it applies the changes back)."""
    if ctx.connect_source is None:
        raise StepFailed("no source connection is wired for this step", hint="this is a bug: report it")
    conn = ctx.connect_source()
    try:
        conn.execute("SET default_transaction_read_only = off")
        yield conn
    finally:
        with suppress(psycopg.Error):
            conn.close()


def _counts(ctx: StepContext, src: psycopg.Connection[Any], tables: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for table in tables:
        s = src.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(ctx.source_schema, table)))
        t = ctx.target.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
                sql.Identifier(ctx.target_schema, table), sql.Identifier(TENANT_COLUMN)
            ),
            (ctx.tenant.id,),
        )
        out[table] = (int(s.fetchone()[0]), int(t.fetchone()[0]))  # type: ignore[index]
    return out


def source_sequences(ctx: StepContext, src: psycopg.Connection[Any], tables: list[str]) -> dict[str, int]:
    """Each sequence of the tenant's own tables past the largest value they now hold (the rows applied
    back carry numbers the shared sequences handed out); only forward."""
    moved: dict[str, int] = {}
    with src.transaction():
        for use in sequence_uses(src, ctx.source_schema, tables):
            if not use.integer:
                continue
            row = src.execute(
                sql.SQL("SELECT max({})::bigint FROM {}").format(
                    sql.Identifier(use.column), sql.Identifier(ctx.source_schema, use.table)
                )
            ).fetchone()
            highest = int(row[0]) if row and row[0] is not None else 0
            following, increment = next_value(src, use.schema, use.sequence)
            if highest > 0 and increment > 0 and following <= highest:
                src.execute(
                    "SELECT setval(%s::regclass, %s)",
                    (sql.Identifier(use.schema, use.sequence).as_string(None), highest),
                )
                moved[f"{use.table}.{use.column}"] = highest
    return moved


def roll_back(ctx: StepContext, found: ReversePath, flag: str, flag_back: Callable[[], Details]) -> Details:
    """The rollback across the cut-over with the reverse path ``found`` (see the module docstring)."""
    reverse = store(ctx)
    tables = list(found.tables)
    budget = ctx.cutover.max_freeze
    timings: dict[str, float] = {}
    started = time.monotonic()
    mark = started

    def lap(what: str) -> None:
        nonlocal mark
        now = time.monotonic()
        timings[what] = round(now - mark, 3)
        mark = now

    if slots.slot(ctx.target, found.slot) is None:
        if not ctx.flags.is_enabled(flag, ctx.tenant.id):
            drop(ctx)  # a rollback killed after its last stage: only the clean-up was left
            return {"reverse": {"resumed": "only the clean-up was left"}}
        raise StepFailed(
            f"the reverse path of tenant '{ctx.tenant.id}' (slot {found.slot} on the shared database) is "
            "gone, so its writes since the cut-over cannot be applied back",
            hint="keep the tenant on the shared schema and fix forward, or accept losing those writes "
            "with --discard-writes-since-cutover",
        )
    missing = sorted(set(tables) - set(rev.guarded(ctx.target, ctx.target_schema, tables)))
    if missing:
        raise StepFailed(
            f"the shared tables {', '.join(missing)} lack the guard trigger {rev.GUARD}: a freeze of tenant "
            f"'{ctx.tenant.id}' on the shared side would not hold, so nothing was done",
            hint="the trigger was dropped or disabled by hand: run the cut-over again (it installs it)",
        )
    with _writable_source(ctx) as src:
        frozen_at = reverse.freeze_shared(ctx.target, ctx.tenant.id, "rollback")
        lap("freeze")
        try:
            waited = rev.barrier(ctx.target, bound=budget)
            lap("barrier")
            fence = slots.fence(ctx.target, f"rollback {ctx.tenant.id}")
            lap("fence")
            maps = rev.reverse_maps(
                ctx.target,
                src,
                target_schema=ctx.target_schema,
                source_schema=ctx.source_schema,
                tables=tables,
                column=TENANT_COLUMN,
                tenant=ctx.tenant.id,
            )
            progress = _Counted()
            stream = Stream(
                source=ctx.target,
                target=src,
                slot=found.slot,
                publication=found.publication,
                maps=maps,
                progress=progress,
            )
            polls = 0
            while True:
                poll = stream.poll(upto=fence, max_changes=ctx.cutover.batch_changes)
                polls += 1
                if not poll.capped:
                    break
            reverse.applied(ctx.target, ctx.tenant.id, progress.changes)
            lap("drain")
            rows = _counts(ctx, src, tables)
            lap("counts")
            differ = {t: c for t, c in rows.items() if c[0] != c[1]}
            if differ:
                raise StepFailed(
                    "row counts differ under the shared-side freeze after the reverse drain: "
                    + ", ".join(f"{t} (own database {s}, shared {d})" for t, (s, d) in differ.items())
                    + "; the tenant stays on the shared schema",
                    hint="see which rows with 'migrate diff PLAYBOOK --tenant …'; the same rollback can "
                    "be run again",
                )
            moved = source_sequences(ctx, src, tables)
            lap("sequences")
            capture = online.store(ctx).capture(ctx.target, ctx.tenant.id)
            if capture is not None and slots.slot(src, capture.slot) is not None:
                # The rows just applied came from the shared side: the forward slot skips them.
                slots.advance(src, capture.slot, slots.fence(src, f"reverse applied {ctx.tenant.id}"))
            lap("forward_slot")
        except BaseException:
            # Nothing handed back yet: the flag is on, the tenant keeps writing on the shared side.
            with suppress(MigrateError, psycopg.Error):
                reverse.thaw_shared(ctx.target, ctx.tenant.id)
            raise
    record = online.frozen(ctx)
    thawed = online.thaw_source(ctx)
    lap("thaw_source")
    flipped = flag_back()
    lap("flag")
    freeze_seconds = round(time.monotonic() - started, 3)
    drop(ctx)
    lap("drop_reverse_path")
    ctx.log.info("reverse_applied", changes=progress.changes, freeze_seconds=freeze_seconds, **timings)
    return {
        **flipped,
        "thawed": thawed,
        "grants": [dict(g) for g in record.grants] if record else [],
        "reverse": {
            "changes_applied": progress.changes,
            "polls": polls,
            "freeze_seconds": freeze_seconds,
            "max_freeze": budget,
            "frozen_at": frozen_at.isoformat(),
            "barrier_waited_for": waited.waited_for,
            "fence_lsn": lsn_text(fence),
            "counts": {t: s for t, (s, _d) in rows.items()},
            "sequences": moved,
            "timings": timings,
            "shared_side": "frozen for the tenant until its next cut-over",
        },
    }


# ----------------------------------------------------------------------------- discarding
def _source_rows(
    src: psycopg.Connection[Any], schema: str, m: TableMap, keys: list[Key] | None
) -> dict[Key, tuple[str | None, ...]]:
    """The tenant's own rows of ``m`` (all, or those with ``keys``) as text, keyed like the stream."""
    cols = sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in m.columns)
    table = sql.Identifier(schema, m.target_table)
    params: list[Any] = []
    if keys is None:
        query = sql.SQL("SELECT {} FROM {} AS t").format(cols, table)
    else:
        aliases = [f"k{i}" for i in range(len(m.key))]
        query = sql.SQL("SELECT {} FROM {} AS t, unnest({}) AS u({}) WHERE {}").format(
            cols,
            table,
            sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in m.key),
            sql.SQL(", ").join(sql.Identifier(a) for a in aliases),
            sql.SQL(" AND ").join(
                sql.SQL("t.{}::text = u.{}").format(sql.Identifier(k), sql.Identifier(a))
                for k, a in zip(m.key, aliases, strict=True)
            ),
        )
        params = [list(col) for col in zip(*keys, strict=True)] if keys else [[] for _ in m.key]
    positions = [m.columns.index(k) for k in m.key]
    out: dict[Key, tuple[str | None, ...]] = {}
    with src.transaction():
        for name_, value in slots.READ_SETTINGS.items():
            src.execute("SELECT set_config(%s, %s, true)", (name_, value))
        for row in src.execute(query, params):
            values = tuple(row)
            out[tuple(str(values[i]) for i in positions)] = values
    return out


def discard(ctx: StepContext, found: ReversePath, flag: str, flag_back: Callable[[], Details]) -> Details:
    """``--discard-writes-since-cutover`` with a reverse path: the shared rows the application wrote,
    changed or deleted since the cut-over are put back exactly as the cut-over left them (from the
    tenant's own database, frozen since), under the shared-side freeze; then traffic goes back.

    The reverse slot names every key written since the cut-over; nothing else is touched.
    """
    reverse = store(ctx)
    tables = list(found.tables)
    started = time.monotonic()
    if slots.slot(ctx.target, found.slot) is None:
        if not ctx.flags.is_enabled(flag, ctx.tenant.id):
            drop(ctx)
            return {"reverse": {"resumed": "only the clean-up was left"}}
        raise StepFailed(
            f"the reverse path of tenant '{ctx.tenant.id}' (slot {found.slot}) is gone: which shared rows "
            "were written since the cut-over is not known any more",
            hint="roll the tenant back to before its copy ('--to pre-copy') and run again",
        )
    with _writable_source(ctx) as src:
        frozen_at = reverse.freeze_shared(ctx.target, ctx.tenant.id, "rollback (discard)")
        try:
            rev.barrier(ctx.target, bound=ctx.cutover.max_freeze)
            fence = slots.fence(ctx.target, f"discard {ctx.tenant.id}")
            maps = rev.reverse_maps(
                ctx.target,
                src,
                target_schema=ctx.target_schema,
                source_schema=ctx.source_schema,
                tables=tables,
                column=TENANT_COLUMN,
                tenant=ctx.tenant.id,
            )
            fold = Fold({m.source_name: m for m in maps})
            with ctx.target.transaction():
                ctx.target.execute("SET TRANSACTION READ ONLY")
                for peeked in slots.peek(
                    ctx.target, found.slot, found.publication, upto_lsn=fence, max_changes=None
                ):
                    fold.add(peeked.data)
            effects: list[TableEffect] = []
            forward: list[TableMap] = []
            touched: dict[str, int] = {}
            for m, effect in ((m, fold.effects.get(m.source_name)) for m in maps):
                if effect is None:
                    continue
                back = TableMap(
                    source_schema=ctx.source_schema,
                    source_table=m.source_table,
                    target_schema=ctx.target_schema,
                    target_table=m.source_table,
                    columns=m.columns,
                    key=m.key,
                    fixed=((TENANT_COLUMN, ctx.tenant.id),),
                    order=m.order,
                )
                keys = None if effect.truncated else list(effect.rows)
                own = _source_rows(src, ctx.source_schema, m, keys)
                rows: dict[Key, State] = {k: Image(v) for k, v in own.items()}
                for k in effect.rows:
                    rows.setdefault(k, GONE)
                effects.append(TableEffect(back, effect.truncated, rows))
                forward.append(back)
                touched[m.source_table] = len(rows)
            stats = None
            if effects:
                with ctx.target.transaction():
                    for name_, value in SETTINGS.items():
                        ctx.target.execute("SELECT set_config(%s, %s, true)", (name_, value))
                    stats = Applier(ctx.target, forward).apply(sorted(effects, key=lambda e: e.table.order))
            rows_now = _counts(ctx, src, tables)
            differ = {t: c for t, c in rows_now.items() if c[0] != c[1]}
            if differ:
                raise StepFailed(
                    "after putting back the rows written since the cut-over, row counts differ: "
                    + ", ".join(f"{t} (own database {s}, shared {d})" for t, (s, d) in differ.items()),
                    hint="nothing was handed back: the tenant stays on the shared schema; report this",
                )
        except BaseException:
            with suppress(MigrateError, psycopg.Error):
                reverse.thaw_shared(ctx.target, ctx.tenant.id)
            raise
    record = online.frozen(ctx)
    thawed = online.thaw_source(ctx)
    flipped = flag_back()
    freeze_seconds = round(time.monotonic() - started, 3)
    drop(ctx)
    ctx.log.info("writes_discarded", changes=fold.changes, rows=touched, freeze_seconds=freeze_seconds)
    return {
        **flipped,
        "thawed": thawed,
        "grants": [dict(g) for g in record.grants] if record else [],
        "discarded": {
            "changes": fold.changes,
            "rows_put_back": touched,
            "deleted": stats.deleted if stats else 0,
            "restored": stats.upserted if stats else 0,
            "freeze_seconds": freeze_seconds,
            "frozen_at": frozen_at.isoformat(),
            "fence_lsn": lsn_text(fence),
        },
    }
