"""verify, diff and isolation-check: proofs about the data, read-only."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from migrate.api.settings import (
    Environ,
    connect,
    environment,
    environments,
    identifier_option,
    target_dsn,
    tenant_context_option,
    the_target,
)
from migrate.catalog import TENANT_COLUMN
from migrate.catalog.order import select_in_load_order
from migrate.catalog.reflect import SourceTable, reflect
from migrate.checks import readiness as write_readiness
from migrate.checks.checksum import Mode, Side, TableFigures, choose_mode, table_shapes
from migrate.checks.diff import DiffResult, diff_table
from migrate.checks.isolation import IsolationReport, check_isolation
from migrate.checks.multiset import diff_rows
from migrate.checks.readiness import Readiness
from migrate.engine.session import tenant_tables
from migrate.errors import (
    ArgumentError,
    CheckFailed,
)
from migrate.log import redact
from migrate.plan import select_tenants
from migrate.playbook import LoadedPlaybook, load_playbook
from migrate.steps.validate import compare_tenant


@dataclass(frozen=True)
class TenantFigures:
    tenant: str
    mode: Mode  # hash (same major versions) or text (see checks/checksum.py)
    tables: tuple[TableFigures, ...]
    seconds: float

    @property
    def match(self) -> bool:
        return all(t.match for t in self.tables)


@dataclass(frozen=True)
class VerifyResult:
    playbook: str
    digest: str
    tenants: tuple[TenantFigures, ...]

    @property
    def match(self) -> bool:
        return all(t.match for t in self.tenants)


def _tables(
    loaded: LoadedPlaybook, source: psycopg.Connection[Any], wanted: Sequence[str]
) -> list[SourceTable]:
    """The playbook's tables of this source (load order: a foreign-key cycle is no obstacle to reading
    them, as it is none to ``run``), or those named with ``--table``."""
    pb = loaded.playbook
    specs = pb.table_specs()
    tables = select_in_load_order(
        reflect(source, pb.source.schema_),
        None if specs is None else [t.name for t in specs],
        schema=pb.source.schema_,
    )
    _check_known(loaded, wanted, [t.name for t in tables])
    return [t for t in tables if t.name in wanted] if wanted else tables


def _check_declared(loaded: LoadedPlaybook, wanted: Sequence[str]) -> None:
    """``--table`` names a table the playbook lists (when it lists them; ``auto`` needs a source)."""
    specs = loaded.playbook.table_specs()
    if specs is not None:
        _check_known(loaded, wanted, [t.name for t in specs])


def _check_known(loaded: LoadedPlaybook, wanted: Sequence[str], known: Sequence[str]) -> None:
    for name in wanted:
        if name not in known:
            raise ArgumentError(
                f"table '{name}' is not among the tables playbook {loaded.path.name} migrates",
                where="--table",
                hint=f"its tables are: {', '.join(known)}",
            )


def verify(
    playbook: Path | str,
    tenants: Sequence[str] | None = None,
    tables: Sequence[str] | None = None,
    *,
    environ: Environ | None = None,
) -> VerifyResult:
    """Row counts and checksums of each tenant's tables, source vs target, now. Reads only."""
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    chosen = select_tenants(loaded, tenants)  # --tenant and --table, before any connection
    _check_declared(loaded, tables or ())
    pb = loaded.playbook
    need = {pb.target_name_of(t) for t in chosen}
    regions = environments(loaded, environ, need=need, tenants=chosen, with_flags=False)
    found: dict[str, TenantFigures] = {}
    for name, theirs in regions.holding(chosen).items():  # each tenant against its own region's target
        env = regions.envs[name]
        with env.connect_target() as target:
            for tenant in theirs:
                started = time.monotonic()
                with env.connect_source(tenant) as source:
                    mode, figures = compare_tenant(
                        source,
                        target,
                        source_schema=pb.source.schema_,
                        target_schema=env.target.schema_,
                        tenant=tenant.id,
                        tables=_tables(loaded, source, tables or ()),
                    )
                found[tenant.id] = TenantFigures(tenant.id, mode, tuple(figures), time.monotonic() - started)
    return VerifyResult(pb.name, loaded.digest, tuple(found[t.id] for t in chosen))


def readiness(
    playbook: Path | str,
    tenants: Sequence[str] | None = None,
    *,
    app_role: str | None = None,
    prove: bool = True,
    environ: Environ | None = None,
) -> tuple[Readiness, ...]:
    """Whether the application can write each tenant's rows in the shared schema now (what the
    cut-over demands before it flips): sequences past the tenant's values, every source default on
    the target, the application role's privileges, and an insert with defaults as that role in
    every tenant table with a default key — rolled back. Changes nothing.

    ``app_role`` overrides the target's ``app_role`` (none: privileges and the insert are not checked).
    """
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    chosen = select_tenants(loaded, tenants)
    if app_role is not None:
        app_role = identifier_option(app_role, "--app-role")
    pb = loaded.playbook
    need = {pb.target_name_of(t) for t in chosen}
    regions = environments(loaded, environ, need=need, tenants=chosen, with_flags=False)
    found: dict[str, Readiness] = {}
    for name, theirs in regions.holding(chosen).items():
        env = regions.envs[name]
        with env.connect_target() as target:
            for tenant in theirs:
                with env.connect_source(tenant) as source:
                    tables = tenant_tables(env, source)
                found[tenant.id] = write_readiness.check(
                    target,
                    schema=env.target.schema_,
                    tenant=tenant.id,
                    tables=tables,
                    app_role=app_role or env.target.app_role,
                    prove=prove,
                )
    return tuple(found[t.id] for t in chosen)


def diff(
    playbook: Path | str,
    tenant: str,
    table: str,
    *,
    sample: int = 10,
    mode: Mode | None = None,
    environ: Environ | None = None,
) -> DiffResult:
    """The keys of one tenant's table that are missing, extra or changed in the target.

    ``mode`` forces the checksum mode (tests and benchmarks); by default it is
    chosen from the servers' versions, as the validate step does.
    """
    if sample < 0:
        raise ArgumentError(f"--sample must be 0 or more, not {sample}", where="--sample")
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    (the_tenant,) = select_tenants(loaded, [tenant])  # --tenant and --table, before any connection
    _check_declared(loaded, [table])
    pb = loaded.playbook
    env = environment(loaded, environ, region=pb.target_name_of(the_tenant), with_flags=False)
    with env.connect_target() as target, env.connect_source(the_tenant) as source:
        (source_table,) = _tables(loaded, source, [table])
        sides = (
            Side(source, pb.source.schema_),
            Side(target, env.target.schema_, TENANT_COLUMN, the_tenant.id, label="target"),
        )
        if not source_table.primary_key:
            # No key to bisect by: rows are compared as multisets and named by their content.
            (shape,) = table_shapes(source, pb.source.schema_, {table: ()})
            return diff_rows(*sides, shape, mode or choose_mode(source, target), sample=sample)
        (shape,) = table_shapes(source, pb.source.schema_, {table: source_table.primary_key})
        return diff_table(
            Side(source, pb.source.schema_),
            Side(target, env.target.schema_, TENANT_COLUMN, the_tenant.id, label="target"),
            shape,
            mode or choose_mode(source, target),
            sample=sample,
        )


@dataclass(frozen=True)
class TargetIsolation:
    """isolation-check of one target of a playbook."""

    target: str  # its name: its region, or 'default'
    region: str | None
    dsn_env: str
    report: IsolationReport


@dataclass(frozen=True)
class PlaybookIsolation:
    """isolation-check of every target of a playbook (of one, with ``region``)."""

    targets: tuple[TargetIsolation, ...]

    @property
    def ok(self) -> bool:
        return all(t.report.ok for t in self.targets)


def isolation_check_targets(
    playbook: Path | str,
    *,
    region: str | None = None,
    schema: str | None = None,
    app_role: str | None = None,
    tenant_column: str = TENANT_COLUMN,
    global_tables: Sequence[str] = (),
    probe: bool = True,
    tenant_context: str | None = None,
    environ: Environ | None = None,
) -> PlaybookIsolation:
    """isolation-check on every target of the playbook (each region's shared database), or on the
    target of ``region``."""
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    targets = loaded.playbook.targets_by_name()
    chosen = [the_target(loaded, region)] if region is not None else list(targets.values())
    for target in chosen:  # every variable before any connection
        target_dsn(loaded, environ, target)
    return PlaybookIsolation(
        tuple(
            TargetIsolation(
                target.name,
                target.region,
                target.dsn_env,
                isolation_check(
                    playbook,
                    region=target.name,
                    schema=schema,
                    app_role=app_role,
                    tenant_column=tenant_column,
                    global_tables=global_tables,
                    probe=probe,
                    tenant_context=tenant_context,
                    environ=environ,
                ),
            )
            for target in chosen
        )
    )


def isolation_check(
    playbook: Path | str | None = None,
    *,
    dsn: str | None = None,
    region: str | None = None,
    schema: str | None = None,
    app_role: str | None = None,
    tenant_column: str = TENANT_COLUMN,
    global_tables: Sequence[str] = (),
    probe: bool = True,
    tenant_context: str | None = None,
    environ: Environ | None = None,
) -> IsolationReport:
    """Static RLS findings and live probes as the application role, on the playbook's target (of
    ``region``, with a target per region: see ``isolation_check_targets`` for all) or ``dsn``."""
    environ = os.environ if environ is None else environ
    globals_ = [identifier_option(t, "--global") for t in global_tables]
    var = "--target-dsn"
    if playbook is not None:
        if dsn is not None:
            raise ArgumentError("give a playbook or --target-dsn, not both", where="--target-dsn")
        loaded = load_playbook(playbook)
        target = the_target(loaded, region)
        dsn, var = target_dsn(loaded, environ, target), target.dsn_env
        schema = schema or target.schema_
        globals_ += list(loaded.playbook.global_tables)
        tenant_context = tenant_context or target.tenant_context
    elif region is not None:
        raise ArgumentError("--region names a target of a playbook", where="--region")
    elif dsn is None:
        dsn, var = environ.get("MIGRATE_TARGET_DSN") or None, "MIGRATE_TARGET_DSN"
        if dsn is None:
            raise ArgumentError(
                "name the target: a playbook, or --target-dsn DSN (or MIGRATE_TARGET_DSN)",
                where="--target-dsn",
                hint="--target-dsn postgresql://HOST/shared --schema app --app-role app",
            )
    role = app_role or environ.get("MIGRATE_APP_ROLE")
    if not role:
        raise ArgumentError(
            "name the application role the probes act as",
            where="--app-role",
            hint="--app-role ROLE (or export MIGRATE_APP_ROLE=ROLE): the role your application connects as",
        )
    schema = identifier_option(schema or "app", "--schema")
    context = tenant_context_option(tenant_context)
    probe_dsn, probe_var = dsn, var
    with connect(dsn, what="the target database", var=var) as conn:
        row = conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", (schema,)).fetchone()
        if not row or not row[0]:
            raise ArgumentError(f"schema {schema!r} does not exist on the target", where="--schema")
        try:
            return check_isolation(
                conn,
                schema=schema,
                app_role=role,
                tenant_column=identifier_option(tenant_column, "--tenant-column"),
                global_tables=globals_,
                probe=probe,
                tenant_context=context,
                # Probes that need a connection with no history: a fresh one, then a pooled one.
                connect=lambda: connect(probe_dsn, what="the target database", var=probe_var),
            )
        except psycopg.Error as exc:
            raise CheckFailed(redact(str(exc).strip()), where="isolation-check") from exc
