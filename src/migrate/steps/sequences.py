"""Shared sequences move past every value a tenant holds, only ever forward.

Every shared column numbered by a sequence — identity (a serial column of the source becomes
one), or a default's ``nextval()`` of a sequence no column owns — draws from ONE sequence for
every tenant. A tenant's copied rows keep their own numbers, so once its copy is in, the
sequence must hand out numbers above the tenant's largest (and above its source sequence's
position: numbers handed out and then deleted may live on outside the database), or the
application's first insert after the flip hits ``duplicate key``.

Two runners advancing the same sequence for two tenants would race (both read 10; one sets
200, the other 100 after it: backwards). Each sequence is moved under a transaction-level
advisory lock on its name, and ``setval`` runs only when the sequence is behind: idempotent,
never backwards between runners. The application drawing numbers for other tenants is held
back too, for the few milliseconds between the read and the ``setval``: were it to draw past
this tenant's largest value in that instant, ``setval`` would hand those numbers out again.
``ALTER SEQUENCE`` (a no-op: its own increment) takes SHARE ROW EXCLUSIVE, which every
``nextval()``'s ROW EXCLUSIVE waits for (``LOCK TABLE`` refuses sequences). It waits at most
``HOLD_WAIT`` for the application's open transactions that drew from the sequence — never
queueing every insert of every tenant behind one long transaction — and tries again a few
times; a sequence it cannot hold (still busy, not owned by the migrator, or distributed by
Citus, which refuses to alter it) moves as before, unheld, and the log says
``sequence_unheld``. A rehearsal (one transaction for the whole tenant) never holds it: it
would hold every insert back until the rehearsal ends.

A rehearsal advances too: a sequence's position is not data (PostgreSQL never rolls it back),
and the real run sets the very same values.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import pq, sql

from migrate.checks.readiness import SequenceUse, next_value, sequence_uses, tenant_highest
from migrate.control import locks
from migrate.steps.context import StepContext


def _source_positions(
    conn: psycopg.Connection[Any], schema: str, tables: list[str]
) -> dict[tuple[str, str], int]:
    """(table, column) -> the last value its source sequence handed out (left out: never drawn, or
    the migrator may not read it — the tenant's own values then set the mark, as they must)."""
    out: dict[tuple[str, str], int] = {}
    for use in sequence_uses(conn, schema, tables):
        last = conn.execute(
            "SELECT CASE WHEN has_sequence_privilege(s, 'SELECT') OR has_sequence_privilege(s, 'USAGE')"
            " THEN pg_sequence_last_value(s) END FROM (SELECT %s::regclass AS s) AS q",
            (sql.Identifier(use.schema, use.sequence).as_string(None),),
        ).fetchone()
        if last is not None and last[0] is not None:
            out[(use.table, use.column)] = int(last[0])
    return out


@contextmanager
def _locked(conn: psycopg.Connection[Any], qualified: str, *, nested: bool) -> Iterator[None]:
    """The sequence's advisory lock for the block: transaction-level; but inside an outer
    transaction (a rehearsal's, which lasts the whole tenant) a session-level one released at
    the block's end, so a real runner never waits for a rehearsal to finish."""
    key = (locks.SEQUENCE, qualified)
    if not nested:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))", key)
        yield
        return
    conn.execute("SELECT pg_advisory_lock(hashtext(%s), hashtext(%s))", key)
    try:
        yield
    finally:
        if conn.info.transaction_status != pq.TransactionStatus.INERROR:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s), hashtext(%s))", key)


HOLD_WAIT = "50ms"
HOLD_TRIES = 5


def _hold_draws(conn: psycopg.Connection[Any], use: SequenceUse) -> str | None:
    """Hold back every ``nextval()`` of the sequence until the caller's transaction ends; None when
    held, else why not (see the module's docstring). Three round trips when the lock comes at once:
    it runs inside the online cut-over's freeze."""
    qualified = sql.Identifier(use.schema, use.sequence)
    found = conn.execute(
        "SELECT seqincrement, current_setting('lock_timeout') FROM pg_sequence WHERE seqrelid = %s::regclass",
        (qualified.as_string(None),),
    ).fetchone()
    assert found is not None
    increment, wait = found
    hold = sql.SQL(
        "SET LOCAL lock_timeout = {hold}; ALTER SEQUENCE {seq} INCREMENT BY {increment};"
        " SELECT set_config('lock_timeout', {wait}, true)"
    ).format(
        hold=sql.Literal(HOLD_WAIT), seq=qualified, increment=sql.Literal(increment), wait=sql.Literal(wait)
    )
    why = ""
    for attempt in range(HOLD_TRIES):
        try:
            with conn.transaction():
                conn.execute(hold)
            return None
        except psycopg.errors.InsufficientPrivilege as exc:
            return exc.diag.message_primary or str(exc)
        except psycopg.errors.LockNotAvailable:
            why = "the application's open transactions kept drawing from it"
            time.sleep(0.02 * (attempt + 1))
    return why


def advance_sequences(ctx: StepContext, *, target: psycopg.Connection[Any] | None = None) -> dict[str, int]:
    """Move every shared sequence the tenant's tables use past its values; returns those moved."""
    conn = target or ctx.target
    names = [t.name for t in ctx.tables]
    uses = sequence_uses(conn, ctx.target_schema, names)
    if not uses:
        return {}
    source = _source_positions(ctx.source, ctx.source_schema, names)
    wanted: dict[str, tuple[SequenceUse, int]] = {}
    for use in uses:
        highest = max(
            tenant_highest(conn, ctx.target_schema, use, ctx.tenant.id) or 0,
            source.get((use.table, use.column), 0),
        )
        if highest > wanted.get(use.qualified, (use, 0))[1]:
            wanted[use.qualified] = (use, highest)
    moved: dict[str, int] = {}
    nested = conn.info.transaction_status != pq.TransactionStatus.IDLE
    for qualified, (use, highest) in sorted(wanted.items()):
        with conn.transaction(), _locked(conn, qualified, nested=nested):
            following, increment = next_value(conn, use.schema, use.sequence)
            if increment <= 0 or following > highest:
                continue  # ahead already (the usual case inside the cut-over's freeze): nothing to hold
            if nested:
                unheld: str | None = "a rehearsal never holds it"
            elif ctx.distributed == "citus":
                unheld = "Citus refuses to alter a distributed sequence"
            else:
                unheld = _hold_draws(conn, use)
                # Read again under the hold: the application may have drawn past it meanwhile.
                following, increment = next_value(conn, use.schema, use.sequence)
            if unheld is not None and not nested:
                ctx.log.warning("sequence_unheld", sequence=qualified, reason=unheld)
            if following <= highest:
                conn.execute(
                    "SELECT setval(%s::regclass, %s)",
                    (sql.Identifier(use.schema, use.sequence).as_string(None), highest),
                )
                moved[qualified] = highest
    if moved:
        ctx.log.info("sequences_advanced", sequences=moved)
    return moved
