"""A tenant's session: its connections, its lock and its tables, as the context its steps get.

``Environment`` is what the api wires in for one target (connections, flags, who
acts); ``Regions`` holds the Environment of every target of a playbook, by name (its
region), and says which one a tenant goes to;
``TargetConnections`` hands target connections from one tenant to the next;
``TenantSession`` holds one tenant for one runner — its advisory lock lives on
the target connection that does the work, so whatever is written is written
under the lock, and a runner that dies takes its lock with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

import psycopg
from psycopg import pq

from migrate.catalog.built import SharedSchemas
from migrate.catalog.order import select_in_load_order
from migrate.catalog.reflect import SourceSchema, SourceTable, reflect, reflect_schema
from migrate.control.batch import state_transaction
from migrate.control.ledger import Entry, Ledger
from migrate.control.rollbacks import Rollbacks
from migrate.control.signing import Signer
from migrate.control.store import ControlStore
from migrate.engine import residency
from migrate.engine.retry import RetryPolicy
from migrate.errors import MigrateError
from migrate.log import get_logger
from migrate.playbook.loader import LoadedPlaybook
from migrate.playbook.model import Target, Tenant
from migrate.ports import FlagProvider
from migrate.steps import StepContext
from migrate.steps.context import ProgressSink, never, no_progress

Connect = Callable[[], psycopg.Connection[Any]]
OpenFailed = Callable[[psycopg.Connection[Any], BaseException], None]
"""Told, on the locked target connection, why a tenant's session could not open."""


@dataclass
class Environment:
    """What the api wires in for one target: its connections, the flags, who is acting."""

    loaded: LoadedPlaybook
    target: Target  # the playbook's target this environment connects to (knows its region)
    connect_target: Connect
    connect_source: Callable[[Tenant], psycopg.Connection[Any]]
    flags: FlagProvider
    actor: str
    host: str
    pid: int
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    signer: Signer | None = None  # the ledger key the playbook names: every entry is signed with it
    # A ``replication=database`` connection to a tenant's source (an online backfill's slot).
    connect_replication: Callable[[Tenant], psycopg.Connection[Any]] | None = None

    @property
    def name(self) -> str:
        """The target's name: its region, or 'default' for the one target of a playbook without regions."""
        return self.target.name

    @property
    def control(self) -> ControlStore:
        return ControlStore(self.target.control_schema, self.loaded.playbook.name)

    @property
    def rollbacks(self) -> Rollbacks:
        return Rollbacks(self.target.control_schema, self.loaded.playbook.name)

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.target.control_schema, self.signer)

    def entry(
        self,
        run_id: UUID | None,
        action: str,
        outcome: str,
        *,
        tenant: str | None = None,
        details: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> Entry:
        """A ledger entry of this target; a tenant's names the tenant's region and the target it went to."""
        pb = self.loaded.playbook
        said = dict(details or {})
        if tenant is not None:
            region = next((t.region for t in self.loaded.tenants if t.id == tenant), None)
            said = {**said, "region": region, "target": self.name, "target_env": self.target.dsn_env}
        return Entry(
            actor=self.actor,
            host=self.host,
            playbook=pb.name,
            playbook_digest=self.loaded.digest,
            action=action,
            outcome=outcome,
            run_id=run_id,
            tenant=tenant,
            details=said,
            **kw,
        )


@dataclass(frozen=True)
class Regions:
    """The Environment of every target of a playbook, by name (its region), in the order written.

    A playbook without regions has one; ``of(tenant)`` is the target a tenant goes to.
    """

    envs: Mapping[str, Environment]

    def __post_init__(self) -> None:
        assert self.envs, "a playbook has at least one target"

    @classmethod
    def single(cls, env: Environment) -> Regions:
        return cls({env.name: env})

    @property
    def first(self) -> Environment:
        """The first target written: who acts, the playbook and the flags are the same in every one."""
        return next(iter(self.envs.values()))

    @property
    def loaded(self) -> LoadedPlaybook:
        return self.first.loaded

    def of(self, tenant: Tenant) -> Environment:
        return self.envs[self.loaded.playbook.target_name_of(tenant)]

    def holding(self, tenants: Iterable[Tenant]) -> dict[str, list[Tenant]]:
        """The targets these tenants go to, each with its tenants, in the order the targets are written."""
        by_name: dict[str, list[Tenant]] = {name: [] for name in self.envs}
        for tenant in tenants:
            by_name[self.of(tenant).name].append(tenant)
        return {name: found for name, found in by_name.items() if found}

    def replace_all(self, **changes: Any) -> Regions:
        """Every environment with the same fields changed (flags, retry)."""
        return Regions({name: replace(env, **changes) for name, env in self.envs.items()})


def tenant_tables(env: Environment, source: psycopg.Connection[Any]) -> list[SourceTable]:
    """The playbook's tables of this source (all when ``auto``, less global tables), in load order."""
    return _in_load_order(env, reflect(source, env.loaded.playbook.source.schema_))


def tenant_catalog(
    env: Environment, source: psycopg.Connection[Any], schemas: SharedSchemas | None = None
) -> tuple[SourceSchema, list[SourceTable]]:
    """The source's whole schema, read once, and the playbook's tables of it, in load order: for a
    tenant whose schema step is to run, which would otherwise read the catalog a second time.
    With the run's ``schemas``, a source whose schema has the fingerprint of one read before in
    the run is not read again (catalog/built.py)."""
    schema = env.loaded.playbook.source.schema_
    read = reflect_schema(source, schema) if schemas is None else schemas.source(source, schema)
    return read, _in_load_order(env, read.tables)


@dataclass
class SourceRead:
    """What a session reads of a tenant's source before any step: the connection, the source's
    whole schema when the schema step is to run (else None), and the playbook's tables of it."""

    source: psycopg.Connection[Any]
    catalog: SourceSchema | None
    tables: list[SourceTable]

    def close(self) -> None:
        with suppress(psycopg.Error):
            self.source.close()


def read_source(
    env: Environment,
    tenant: Tenant,
    *,
    catalog: bool,
    schemas: SharedSchemas | None = None,
    source: psycopg.Connection[Any] | None = None,
) -> SourceRead:
    """Connect to the tenant's source (or take ``source``, already connected) and read its tables
    (its whole schema with ``catalog``); the connection is closed again when the read fails."""
    source = source if source is not None else env.connect_source(tenant)
    try:
        if catalog:
            read, tables = tenant_catalog(env, source, schemas)
            return SourceRead(source, read, tables)
        return SourceRead(source, None, tenant_tables(env, source))
    except BaseException:
        with suppress(psycopg.Error):
            source.close()
        raise


def _in_load_order(env: Environment, tables: Mapping[str, SourceTable]) -> list[SourceTable]:
    pb = env.loaded.playbook
    specs = pb.table_specs()
    return select_in_load_order(
        dict(tables),
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
    rehearsal: bool = False,
    catalog: SourceSchema | None = None,
    shared_schemas: SharedSchemas | None = None,
    discard_writes: bool = False,
    streams: int = 1,
) -> StepContext:
    """The one place a StepContext is made, for run and rollback alike — and so the one place the
    residency guard runs (engine/residency.py): on the connection that will write, before any step.

    Without a source (a rollback's flag steps) the target stands in: steps that move
    traffic touch the flag provider and the control schema only, so traffic goes back
    even while a source is slow or down.
    """
    pb = env.loaded.playbook
    residency.enforce(env.target, tenant, target, source, env.loaded.path)
    return StepContext(
        run_id=run_id,
        tenant=tenant,
        source=source if source is not None else target,
        target=target,
        source_schema=pb.source.schema_,
        target_schema=env.target.schema_,
        tenant_context=env.target.tenant_context,
        distributed=env.target.distributed,
        global_tables=tuple(pb.global_tables),
        tables=tuple(tables),
        control=env.control,
        flags=env.flags,
        log=get_logger(run_id=str(run_id), tenant=tenant.id, wave=tenant.wave),
        keys={t.name: t.key for t in pb.table_specs() or () if t.key},
        progress=progress,
        stopping=stopping,
        playbook=pb.name,
        cutover=pb.cutover,
        app_roles=pb.source.app_roles,
        app_role=env.target.app_role,
        leave_behind=pb.schema_.objects(),
        rehearsal=rehearsal,
        connect_target=_guarded(env, tenant),
        connect_replication=(
            None if env.connect_replication is None else _bind(env.connect_replication, tenant)
        ),
        connect_source=_bind(env.connect_source, tenant),
        source_catalog=catalog,
        shared_schemas=shared_schemas if shared_schemas is not None else SharedSchemas(),
        discard_writes=discard_writes,
        streams=streams,
    )


def _bind(
    connect: Callable[[Tenant], psycopg.Connection[Any]], tenant: Tenant
) -> Callable[[], psycopg.Connection[Any]]:
    return lambda: connect(tenant)


def _guarded(env: Environment, tenant: Tenant) -> Connect:
    """Another target connection for a step (a copy's second stream, the cut-over's snapshot), through
    the residency guard like the session's own: a DSN that now reaches another region's database
    (a failover, a changed DNS name) is refused before anything is written on it."""

    def connect() -> psycopg.Connection[Any]:
        conn = env.connect_target()
        try:
            residency.enforce(env.target, tenant, conn, None, env.loaded.path)
        except BaseException:
            conn.close()
            raise
        return conn

    return connect


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
        rehearsal: bool = False,
        catalog: bool = False,
        shared_schemas: SharedSchemas | None = None,
        streams: int = 1,
        read_ahead: Callable[[], SourceRead | None] | None = None,
    ) -> None:
        """``streams``: how many streams the tenant's backfill may use (``StepContext.streams``);
        ``catalog``: read the source's whole schema when opening (the schema step is to run and
        reuses it); ``shared_schemas``: the run's, so tenants with equal source schemas share one build;
        ``read_ahead``: the source as the run read it ahead (engine/ahead.py), asked once the tenant
        is locked: its connection is read again (warm); None from it, or no ``read_ahead``, and the
        session connects itself."""
        self.env = env
        self.tenant = tenant
        self.run_id = run_id
        self.progress = progress
        self.targets = targets
        self.command = command
        self.record_holder = record_holder
        self.stopping = stopping
        self.rehearsal = rehearsal
        self.catalog = catalog
        self.shared_schemas = shared_schemas if shared_schemas is not None else SharedSchemas()
        self.streams = streams
        self.read_ahead = read_ahead
        self._ctx: StepContext | None = None

    @property
    def ctx(self) -> StepContext:
        assert self._ctx is not None, "the session is not open"
        return self._ctx

    def _lock(self) -> psycopg.Connection[Any]:
        target = self.targets.take()
        try:
            self.env.control.lock_tenant(target, self.tenant.id)
            if self.record_holder:  # a rehearsal leaves the run state as it found it
                # Who holds the lock, for status: not waited for on disk (the lock itself is in
                # memory only; control/batch.py says why a later durable commit covers it).
                with state_transaction(target, durable=False):
                    self.env.control.record_holder(
                        target,
                        self.tenant.id,
                        run_id=self.run_id,
                        command=self.command,
                        host=self.env.host,
                        pid=self.env.pid,
                    )
        except BaseException:
            target.close()
            raise
        return target

    def _connect(self) -> tuple[psycopg.Connection[Any], psycopg.Connection[Any]]:
        target = self._lock()
        try:
            source = self.env.connect_source(self.tenant)
        except BaseException:
            target.close()
            raise
        return target, source

    def open(self, on_failure: OpenFailed | None = None) -> StepContext:
        """Lock the tenant, reach its source, read its tables. ``on_failure`` is told, on the
        connection that still holds the lock, when the source or its tables fail the tenant before
        any step starts (so that is recorded, not lost); then the error is raised."""
        target = self._lock()
        source: psycopg.Connection[Any] | None = None
        try:
            # A source read ahead is read again now: its backend's catalog caches are warm and the
            # run's shared schemas hold what it read, so this costs a fraction of a first read, and
            # it sees a change made to the source after the read ahead and before the tenant began.
            ahead = self.read_ahead() if self.read_ahead is not None else None
            source = None if ahead is None else ahead.source
            got = read_source(
                self.env, self.tenant, catalog=self.catalog, schemas=self.shared_schemas, source=source
            )
            source = got.source
            self._ctx = step_context(
                self.env,
                self.tenant,
                self.run_id,
                target,
                source,
                got.tables,
                progress=self.progress,
                stopping=self.stopping,
                rehearsal=self.rehearsal,
                catalog=got.catalog,
                shared_schemas=self.shared_schemas,
                streams=self.streams,
            )
        except BaseException as exc:  # the lock goes with the connection: a refused tenant is let go at once
            if on_failure is not None and isinstance(exc, MigrateError | psycopg.Error):
                on_failure(target, exc)
            self._close(target, source)
            raise
        return self._ctx

    def reconnect(self) -> StepContext:
        old = self.ctx
        self._close(old.target, old.source)
        target, source = self._connect()
        try:  # the new connection may reach another database: the guard runs again
            fresh = step_context(self.env, self.tenant, self.run_id, target, source, old.tables)
        except BaseException:
            self._close(target, source)
            raise
        self._ctx = replace(old, target=fresh.target, source=fresh.source)
        old.log.info("tenant_reconnected")
        return self._ctx

    def _close(self, target: psycopg.Connection[Any], source: psycopg.Connection[Any] | None) -> None:
        for conn in (source, target):  # closing the target lets the lock go
            if conn is not None:
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
