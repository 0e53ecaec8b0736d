"""What the online steps share: the tenant's capture, its change stream, catch-up, the freeze.

The replication package does the work; this module ties it to one tenant: its
slot's name, its tables as maps into the shared tables (``tenant_id`` added),
its progress and lag in the control schema, its freeze recorded before the
REVOKE and given back from that record.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import psycopg

from migrate.catalog import TENANT_COLUMN
from migrate.catalog.reflect import SourceTable
from migrate.control.capture import Capture, CaptureStore, Freeze
from migrate.errors import Interrupted, StepFailed
from migrate.replication import freeze as freezing
from migrate.replication import slots
from migrate.replication.changes import TableMap, describe_columns, schema_changed
from migrate.replication.pgoutput import lsn_int, lsn_text
from migrate.replication.stream import PollResult, Stream
from migrate.steps.context import ProgressEvent, StepContext


def store(ctx: StepContext) -> CaptureStore:
    return CaptureStore(ctx.control.schema, ctx.control.playbook)


def names(ctx: StepContext) -> str:
    """The tenant's slot and publication name."""
    return slots.slot_name(ctx.playbook or ctx.control.playbook, ctx.tenant.id)


def capture_of(ctx: StepContext) -> Capture:
    """The tenant's open capture, or StepFailed saying how to get one."""
    capture = store(ctx).capture(ctx.target, ctx.tenant.id)
    if capture is None or capture.status != "capturing":
        raise StepFailed(
            f"tenant '{ctx.tenant.id}' has no change capture: its copy was not made by an online backfill",
            hint="roll the tenant back to before its copy ('migrate rollback … --to pre-copy') and run again "
            "with 'cutover: {mode: online}'",
        )
    return capture


# ----------------------------------------------------------------------------- maps
_IDENTITY = (files("migrate.steps") / "capture_columns.sql").read_text()


def table_maps(
    ctx: StepContext, capture: Capture | None = None, tables: Sequence[SourceTable] | None = None
) -> list[TableMap]:
    """The tenant's source tables as maps into the shared tables, with the source's column types now,
    and where each table's changes count from (a table a resumed copy read later: from its snapshot)."""
    tables = list(tables if tables is not None else ctx.tables)
    types: dict[str, list[tuple[str, int, int, bool]]] = {}
    with ctx.source.transaction():
        for table, column, oid, mod, ident in ctx.source.execute(
            _IDENTITY, (ctx.source_schema, [t.name for t in tables])
        ):
            types.setdefault(table, []).append((column, oid, mod, bool(ident)))
    maps = []
    for order, table in enumerate(tables):
        columns = types.get(table.name, [])
        expected = [c.name for c in table.columns if c.generated is None]
        if [c for c, _o, _m, _i in columns] != expected:
            raise schema_changed(
                ctx.source_schema, table.name, describe_columns(expected, [c for c, _o, _m, _i in columns])
            )
        key = table.primary_key or tuple(c for c, _o, _m, ident in columns if ident)
        if not key:
            raise StepFailed(
                f"table {table.name} has neither a primary key nor a replica identity index, so its changes "
                "cannot be matched to rows",
                hint=f"add a primary key to {table.name}, or migrate this playbook offline",
            )
        maps.append(
            TableMap(
                source_schema=ctx.source_schema,
                source_table=table.name,
                target_schema=ctx.target_schema,
                target_table=table.name,
                columns=tuple(c for c, _o, _m, _i in columns),
                key=tuple(key),
                fixed=((TENANT_COLUMN, ctx.tenant.id),),
                types=tuple((o, m) for _c, o, m, _i in columns),
                order=order,
                since_lsn=lsn_int(capture.table_lsns[table.name])
                if capture is not None and table.name in capture.table_lsns
                else 0,
            )
        )
    return maps


# ----------------------------------------------------------------------------- the stream
class TenantProgress:
    """The tenant's applied position and lag, in the control schema's ``captures`` row."""

    def __init__(self, ctx: StepContext, capture: Capture) -> None:
        self.ctx = ctx
        self.store = store(ctx)
        self._applied = lsn_int(capture.applied_lsn) if capture.applied_lsn else 0

    def applied(self) -> int:
        return self._applied

    def save(self, conn: psycopg.Connection[Any], lsn: int, poll: PollResult) -> None:
        self.store.save_progress(
            conn,
            self.ctx.tenant.id,
            lsn_text(lsn),
            poll.changes,
            (poll.changes, poll.lag_bytes, poll.lag_seconds),
        )
        self._applied = lsn


def open_stream(ctx: StepContext, capture: Capture) -> Stream:
    return Stream(
        source=ctx.source,
        target=ctx.target,
        slot=capture.slot,
        publication=capture.publication,
        maps=table_maps(ctx, capture),
        progress=TenantProgress(ctx, capture),
    )


@dataclass
class Caught:
    """What a catch-up did."""

    polls: int = 0
    transactions: int = 0
    changes: int = 0
    seconds: float = 0.0
    last: PollResult | None = None
    replayed: int = 0  # batches a unique violation made delete-then-insert

    def details(self) -> dict[str, Any]:
        last = self.last
        return {
            "polls": self.polls,
            "transactions": self.transactions,
            "changes": self.changes,
            "seconds": round(self.seconds, 3),
            "changes_per_s": round(self.changes / self.seconds) if self.seconds > 0 else None,
            "replayed_batches": self.replayed,
            "lag": None
            if last is None
            else {
                "changes": last.changes,
                "bytes": last.lag_bytes,
                "seconds": round(last.lag_seconds, 3),
            },
        }


def poll_once(ctx: StepContext, stream: Stream, capture: Capture, caught: Caught, **kw: Any) -> PollResult:
    """One poll, its figures added to ``caught``, its lag recorded and reported."""
    poll = stream.poll(**kw)
    caught.polls += 1
    caught.transactions += poll.transactions
    caught.changes += poll.changes
    caught.seconds += poll.seconds
    caught.last = poll
    if poll.applied is not None and poll.applied.replayed:
        caught.replayed += 1
    if poll.empty:
        store(ctx).save_lag(ctx.target, ctx.tenant.id, (0, poll.lag_bytes, 0.0))
    ctx.progress(
        ProgressEvent(
            "changes_applied",
            ctx.tenant.id,
            rows=poll.changes,
            bytes=poll.lag_bytes,
            seconds=poll.lag_seconds,
        )
    )
    ctx.log.info(
        "changes_applied",
        transactions=poll.transactions,
        changes=poll.changes,
        lag_bytes=poll.lag_bytes,
        lag_seconds=round(poll.lag_seconds, 3),
        seconds=round(poll.seconds, 3),
        replayed=bool(poll.applied and poll.applied.replayed),
    )
    return poll


def catch_up(ctx: StepContext, stream: Stream, capture: Capture, *, ready_seconds: float) -> Caught:
    """Poll until one poll finds what fits in ``ready_seconds`` and no more is waiting.

    Stops at a safe point (between polls) when asked to; fails after ``cutover.max_catchup``.
    """
    caught = Caught()
    started = time.monotonic()
    while True:
        poll = poll_once(ctx, stream, capture, caught, max_changes=ctx.cutover.batch_changes)
        if not poll.capped and poll.seconds <= ready_seconds:
            return caught
        if ctx.stopping():
            raise Interrupted(
                f"stopped on request during catch-up ({caught.changes} changes applied)",
                hint="'migrate run' again goes on from the last applied batch",
            )
        if time.monotonic() - started > ctx.cutover.max_catchup:
            raise StepFailed(
                f"catch-up did not bring the lag down within {ctx.cutover.max_catchup:g} s: the last batch "
                f"took {poll.seconds:.2f} s for {poll.changes} changes "
                f"({poll.lag_bytes} bytes of WAL behind)",
                hint="the source writes faster than its changes apply: run again when it is calmer, "
                "or raise cutover.max_catchup",
            )


# ----------------------------------------------------------------------------- the freeze
@dataclass
class Frozen:
    record: Freeze
    seconds: float


def freeze_source(ctx: StepContext, step_key: str) -> Frozen:
    """The tenant's application roles lose write access to its tables; recorded first, checked after."""
    started = time.monotonic()
    if not ctx.app_roles:
        raise StepFailed(
            "the playbook names no application roles to freeze",
            hint="write 'source: {…, app_roles: [ROLE, …]}' with the roles the application writes as",
        )
    tables = [t.name for t in ctx.tables]
    captures = store(ctx)
    record = captures.freeze(ctx.target, ctx.tenant.id)
    if record is None:
        grants = freezing.write_grants(ctx.source, ctx.source_schema, tables, ctx.app_roles)
        # The intent, with what to give back, before the REVOKE (CONVENTIONS 5).
        captures.record_freeze(
            ctx.target, ctx.tenant.id, ctx.app_roles, [g.to_json() for g in grants], step_key
        )
        record = captures.freeze(ctx.target, ctx.tenant.id)
        assert record is not None
    freezing.revoke(ctx.source, ctx.source_schema, tables, ctx.app_roles)
    still = freezing.still_writable(ctx.source, ctx.source_schema, tables, ctx.app_roles)
    if still:
        thaw_source(ctx)
        raise StepFailed(
            "after the REVOKE, "
            + "; ".join(f"role {r} can still write {t}" for r, t in still)
            + " (through another role, PUBLIC or a column grant): the freeze would not hold, "
            "so it was undone",
            hint="grant the application's write privileges directly to the roles in source.app_roles",
        )
    return Frozen(record, seconds=time.monotonic() - started)


@contextmanager
def source_connection(ctx: StepContext) -> Iterator[psycopg.Connection[Any]]:
    """The tenant's source: the context's own, or — for a step reverted without one (a rollback's
    traffic steps go first, on the target alone) — a connection of its own, closed afterwards."""
    if ctx.source is not ctx.target:
        yield ctx.source
        return
    if ctx.connect_source is None:
        raise StepFailed("no source connection is wired for this step", hint="this is a bug: report it")
    conn = ctx.connect_source()
    try:
        yield conn
    finally:
        conn.close()


def thaw_source(ctx: StepContext) -> bool:
    """Give back exactly what the freeze took (from its record); True when there was a freeze to undo."""
    captures = store(ctx)
    record = captures.freeze(ctx.target, ctx.tenant.id)
    if record is None:
        return False
    grants = [freezing.Grant.from_json(g) for g in record.grants]
    with source_connection(ctx) as source:
        freezing.restore(source, ctx.source_schema, grants)
    captures.thawed(ctx.target, ctx.tenant.id)
    ctx.log.info("source_thawed", grants=len(grants))
    return True


def frozen(ctx: StepContext) -> Freeze | None:
    return store(ctx).freeze(ctx.target, ctx.tenant.id)


def source_tables(ctx: StepContext) -> list[str]:
    return [t.name for t in ctx.tables]


def since(started: float) -> float:
    return round(time.monotonic() - started, 3)
