"""What a step is given (StepContext) and what it must offer (StepKind)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol
from uuid import UUID

import psycopg
from psycopg import pq, sql

from migrate.catalog.built import SharedSchemas
from migrate.catalog.reflect import SourceSchema, SourceTable
from migrate.control.store import ControlStore
from migrate.playbook.model import Cutover, Step, Tenant
from migrate.ports import FlagProvider

Details = dict[str, Any]

ProgressKind = Literal[
    "run_started",
    "tenant_started",
    "tenant_sized",
    "chunk_copied",
    "table_copied",
    "changes_applied",
    "tenant_finished",
    "retrying",
]


@dataclass(frozen=True)
class ProgressEvent:
    """One fact about a tenant's copy, for whoever shows progress (the CLI on a terminal).

    ``run_started`` says how many ``tenants`` have work to do; ``tenant_sized``
    carries the rows still to copy (``rows``), counted exactly in the snapshot the copy
    reads (again after a retry: what is left then); ``chunk_copied`` the rows and bytes
    one committed chunk added; ``table_copied`` the table's rows in all;
    ``changes_applied`` one catch-up poll: the changes it applied (``rows``) and the lag
    it found — ``bytes`` of WAL and ``seconds`` — ; ``tenant_finished`` the tenant's
    outcome in ``outcome``; ``retrying`` a passing fault that will be tried again, said
    in ``note``.
    """

    kind: ProgressKind
    tenant: str = ""
    table: str | None = None
    rows: int = 0
    bytes: int = 0
    outcome: str | None = None
    tenants: int = 0
    seconds: float = 0.0
    note: str | None = None


ProgressSink = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """The default sink: nobody is watching."""


def never() -> bool:
    """The default stop signal: nobody asked to stop."""
    return False


@dataclass
class StepContext:
    """Everything one step of one tenant may touch; nothing is global.

    ``source`` and ``target`` are autocommit connections: a step opens its own
    transactions with ``conn.transaction()`` so ``SET LOCAL`` and checkpoints
    end where the block ends (shared/notes/postgres.md, pitfall 2). The target
    connection also holds the tenant's lock: a step never closes it.

    In a rehearsal the engine has opened a transaction on the target that it
    rolls back at the end: the step's own transactions become savepoints and the
    same code runs (``local_transaction`` keeps their settings local all the
    same). ``stopping()`` turns true when the user asked the run to stop: a long
    step checks it at its safe points (between committed chunks) and raises
    Interrupted.

    Online migrations: ``playbook`` names the slots, ``cutover`` and ``app_roles``
    are the playbook's settings, ``connect_target`` opens another target connection
    (a snapshot kept across the flip), ``connect_replication`` a ``replication=database``
    connection to the tenant's source (its slot's exported snapshot), ``connect_source`` a
    source connection for a step reverted without one (a rollback's traffic steps), and
    ``rehearsal`` tells steps with effects outside the target's transaction (a
    slot, a freeze) to report them instead.
    """

    run_id: UUID
    tenant: Tenant
    source: psycopg.Connection[Any]
    target: psycopg.Connection[Any]
    source_schema: str
    target_schema: str
    tables: tuple[SourceTable, ...]  # the tenant's source tables, in load order (parents first)
    control: ControlStore
    flags: FlagProvider
    log: Any
    keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # keys declared in the playbook
    progress: ProgressSink = no_progress
    stopping: Callable[[], bool] = never
    # How the shared schema's policies take the tenant (playbook target.tenant_context).
    tenant_context: Literal["session", "transaction"] = "session"
    # 'citus': the target is a Citus coordinator (playbook target.distributed; catalog/citus.py).
    distributed: Literal["citus"] | None = None
    global_tables: tuple[str, ...] = ()  # the playbook's global tables (reference tables on Citus)
    playbook: str = ""
    cutover: Cutover = field(default_factory=Cutover)
    app_roles: tuple[str, ...] = ()
    app_role: str | None = None  # the role the application uses on the shared schema (target.app_role)
    # Source objects a person acknowledged leaving behind (playbook schema.leave_behind): the
    # schema step stops on anything else it cannot carry.
    leave_behind: frozenset[str] = frozenset()
    rehearsal: bool = False
    connect_target: Callable[[], psycopg.Connection[Any]] | None = None
    connect_replication: Callable[[], psycopg.Connection[Any]] | None = None
    connect_source: Callable[[], psycopg.Connection[Any]] | None = None
    streams: int = 1
    """Streams the backfill may copy this tenant in (``run --jobs`` the other tenants leave free):
    each a source connection in the copy's one snapshot and a target connection."""
    discard_writes: bool = False
    """A rollback given ``--discard-writes-since-cutover``: the cut-over's revert puts the shared rows
    back as they were at the cut-over instead of applying the writes since to the old database."""
    carry: Details = field(default_factory=dict)
    """What one run of a step keeps across its attempts: the engine gives every attempt after a
    passing fault the same dict (the backfill keeps its rows before the first attempt there)."""
    source_catalog: SourceSchema | None = None
    """The source schema the session read when it opened (``tables`` come from it), so the
    schema step does not read the source's catalog a second time; None: the step reads it."""
    shared_schemas: SharedSchemas = field(default_factory=SharedSchemas)
    """The run's shared schemas built so far (catalog/built.py), by the source schema they came from."""


class StepKind(Protocol):
    """One kind of step: apply is idempotent, verify checks it, revert undoes it, verify_reverted
    checks that. Its spec (``migrate.playbook.model``) says what it moves and how to describe it."""

    kind: ClassVar[str]

    def __init__(self, spec: Step) -> None: ...

    def apply(self, ctx: StepContext) -> Details:
        """Do the work (again: a second apply changes nothing); return figures for the ledger."""
        ...

    def verify(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        """Raise CheckFailed unless the step's effect is in place."""
        ...

    def revert(self, ctx: StepContext, details: Mapping[str, Any]) -> Details:
        """Undo apply, using what apply recorded; idempotent too."""
        ...

    def verify_reverted(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        """Raise CheckFailed unless the revert's effect is in place (``details``: what revert returned)."""
        ...

    def summary(self, details: Mapping[str, Any], *, reverted: bool) -> str | None:
        """One line of what apply (or revert) did, for the run's and the rollback's output; None: nothing."""
        ...


@contextmanager
def local_transaction(
    conn: psycopg.Connection[Any], settings: Mapping[str, str], *, propagate: bool = False
) -> Iterator[None]:
    """A transaction with ``settings`` (SET LOCAL) that end with it, even when it is only a savepoint.

    Inside an outer transaction (a rehearsal's), ``transaction()`` is a savepoint and SET LOCAL
    would outlive it until the outer one ends: the settings are then put back explicitly.

    ``propagate`` (a Citus coordinator): the settings must hold on the workers too — for
    ``session_replication_role`` the shards' foreign-key triggers fire there. ``set_config()``
    never reaches a worker; ``SET LOCAL`` does, with ``citus.propagate_set_commands = 'local'``
    (shared/notes/citus.md), so that is what is sent.
    """
    nested = conn.info.transaction_status != pq.TransactionStatus.IDLE
    before: dict[str, str] = {}
    with conn.transaction():
        if nested:
            for name in settings:
                row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
                before[name] = str(row[0]) if row else ""
        _set_local(conn, settings, propagate=propagate)  # one round trip, as many settings as given
        yield
    if before:
        _set_local(conn, before, propagate=propagate)


def _set_local(
    conn: psycopg.Connection[Any], settings: Mapping[str, str], *, propagate: bool = False
) -> None:
    if propagate:
        statements = [sql.SQL("SET LOCAL citus.propagate_set_commands = 'local'")] + [
            sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(name), sql.Literal(value))
            for name, value in settings.items()
        ]
        conn.execute(sql.SQL("; ").join(statements))
        return
    calls = sql.SQL(", ").join(sql.SQL("set_config(%s, %s, true)") for _ in settings)
    conn.execute(sql.SQL("SELECT {}").format(calls), [v for kv in settings.items() for v in kv])
