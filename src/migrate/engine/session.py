"""A tenant's session: its connections, its lock and its tables, as the context its steps get.

``Environment`` is what the api wires in (connections, flags, who acts);
``TargetConnections`` hands target connections from one tenant to the next;
``TenantSession`` holds one tenant for one runner — its advisory lock lives on
the target connection that does the work, so whatever is written is written
under the lock, and a runner that dies takes its lock with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

import psycopg
from psycopg import pq

from migrate.catalog.order import select_in_load_order
from migrate.catalog.reflect import SourceTable, reflect
from migrate.control.ledger import Entry, Ledger
from migrate.control.signing import Signer
from migrate.control.store import ControlStore
from migrate.engine.retry import RetryPolicy
from migrate.log import get_logger
from migrate.playbook.loader import LoadedPlaybook
from migrate.playbook.model import Tenant
from migrate.ports import FlagProvider
from migrate.steps import StepContext
from migrate.steps.context import ProgressSink, never, no_progress

Connect = Callable[[], psycopg.Connection[Any]]


@dataclass
class Environment:
    """What the api wires in: connections, flags, who is acting."""

    loaded: LoadedPlaybook
    connect_target: Connect
    connect_source: Callable[[Tenant], psycopg.Connection[Any]]
    flags: FlagProvider
    actor: str
    host: str
    pid: int
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    signer: Signer | None = None  # the ledger key the playbook names: every entry is signed with it

    @property
    def control(self) -> ControlStore:
        pb = self.loaded.playbook
        return ControlStore(pb.target.control_schema, pb.name)

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.loaded.playbook.target.control_schema, self.signer)

    def entry(self, run_id: UUID | None, action: str, outcome: str, **kw: Any) -> Entry:
        pb = self.loaded.playbook
        return Entry(
            actor=self.actor,
            host=self.host,
            playbook=pb.name,
            playbook_digest=self.loaded.digest,
            action=action,
            outcome=outcome,
            run_id=run_id,
            **kw,
        )


def tenant_tables(env: Environment, source: psycopg.Connection[Any]) -> list[SourceTable]:
    """The playbook's tables of this source (all when ``auto``, less global tables), in load order."""
    pb = env.loaded.playbook
    specs = pb.table_specs()
    return select_in_load_order(
        reflect(source, pb.source.schema_),
        None if specs is None else [t.name for t in specs],
        schema=pb.source.schema_,
        exclude=pb.global_tables,
    )


def step_context(
    env: Environment,
    tenant: Tenant,
    run_id: UUID,
    target: psycopg.Connection[Any],
    source: psycopg.Connection[Any] | None,
    tables: Sequence[SourceTable] = (),
    *,
    progress: ProgressSink = no_progress,
    stopping: Callable[[], bool] = never,
) -> StepContext:
    """The one place a StepContext is made, for run and rollback alike.

    Without a source (a rollback's flag steps) the target stands in: steps that move
    traffic touch the flag provider and the control schema only, so traffic goes back
    even while a source is slow or down.
    """
    pb = env.loaded.playbook
    return StepContext(
        run_id=run_id,
        tenant=tenant,
        source=source if source is not None else target,
        target=target,
        source_schema=pb.source.schema_,
        target_schema=pb.target.schema_,
        tenant_context=pb.target.tenant_context,
        tables=tuple(tables),
        control=env.control,
        flags=env.flags,
        log=get_logger(run_id=str(run_id), tenant=tenant.id, wave=tenant.wave),
        keys={t.name: t.key for t in pb.table_specs() or () if t.key},
        progress=progress,
        stopping=stopping,
    )


class TargetConnections:
    """Target connections handed from one tenant to the next: a connect per worker, not per tenant.

    A connection comes back only idle, healthy and with the tenant's lock released;
    anything else is closed. Steps change no session state (``SET LOCAL`` only).
    """

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._idle: list[psycopg.Connection[Any]] = []
        self._mutex = threading.Lock()

    def take(self) -> psycopg.Connection[Any]:
        with self._mutex:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and not conn.broken:
                    return conn
        return self._connect()

    def give(self, conn: psycopg.Connection[Any]) -> None:
        if conn.closed or conn.broken or conn.info.transaction_status != pq.TransactionStatus.IDLE:
            with suppress(psycopg.Error):
                conn.close()
            return
        with self._mutex:
            self._idle.append(conn)

    def close(self) -> None:
        with self._mutex:
            idle, self._idle = self._idle, []
        for conn in idle:
            with suppress(psycopg.Error):
                conn.close()


class TenantSession:
    """One tenant's connections, its lock and its tables, as the context its steps get.

    The target connection holds the tenant's advisory lock and does the work, so
    whatever is written is written under the lock. After a lost connection,
    ``reconnect`` opens new connections and takes the lock again — or raises
    TenantLocked if another runner took the tenant in between; the steps then
    resume from what the control schema says.
    """

    def __init__(
        self,
        env: Environment,
        tenant: Tenant,
        run_id: UUID,
        progress: ProgressSink,
        targets: TargetConnections,
        *,
        command: str = "run",
        record_holder: bool = True,
        stopping: Callable[[], bool] = never,
    ) -> None:
        self.env = env
        self.tenant = tenant
        self.run_id = run_id
        self.progress = progress
        self.targets = targets
        self.command = command
        self.record_holder = record_holder
        self.stopping = stopping
        self._ctx: StepContext | None = None

    @property
    def ctx(self) -> StepContext:
        assert self._ctx is not None, "the session is not open"
        return self._ctx

    def _connect(self) -> tuple[psycopg.Connection[Any], psycopg.Connection[Any]]:
        target = self.targets.take()
        try:
            self.env.control.lock_tenant(target, self.tenant.id)
            if self.record_holder:  # a rehearsal leaves the run state as it found it
                self.env.control.record_holder(
                    target,
                    self.tenant.id,
                    run_id=self.run_id,
                    command=self.command,
                    host=self.env.host,
                    pid=self.env.pid,
                )
            source = self.env.connect_source(self.tenant)
        except BaseException:
            target.close()
            raise
        return target, source

    def open(self) -> StepContext:
        target, source = self._connect()
        try:
            tables = tenant_tables(self.env, source)
        except BaseException:
            self._close(target, source)
            raise
        self._ctx = step_context(
            self.env,
            self.tenant,
            self.run_id,
            target,
            source,
            tables,
            progress=self.progress,
            stopping=self.stopping,
        )
        return self._ctx

    def reconnect(self) -> StepContext:
        old = self.ctx
        self._close(old.target, old.source)
        target, source = self._connect()
        self._ctx = replace(old, target=target, source=source)
        old.log.info("tenant_reconnected")
        return self._ctx

    def _close(self, target: psycopg.Connection[Any], source: psycopg.Connection[Any]) -> None:
        for conn in (source, target):  # closing the target lets the lock go
            with suppress(psycopg.Error):  # already gone
                conn.close()

    def close(self) -> None:
        if self._ctx is None:
            return
        target, source = self._ctx.target, self._ctx.source
        self._ctx = None
        with suppress(psycopg.Error):
            source.close()
        try:
            self.env.control.unlock_tenant(target, self.tenant.id)
        except psycopg.Error:
            with suppress(psycopg.Error):
                target.close()  # the lock goes with the session
            return
        self.targets.give(target)


@contextmanager
def tenant_session(
    env: Environment,
    tenant: Tenant,
    run_id: UUID,
    progress: ProgressSink = no_progress,
    *,
    command: str = "rollback",
) -> Iterator[StepContext]:
    """Connections, the tenant's lock and its tables, as one context for its steps."""
    targets = TargetConnections(env.connect_target)
    session = TenantSession(env, tenant, run_id, progress, targets, command=command)
    try:
        yield session.open()
    finally:
        session.close()
        targets.close()
