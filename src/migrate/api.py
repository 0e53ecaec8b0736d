"""The library facade: plan(), run(), status(), rollback(), ledger_check().

Each function reads its settings from the ``environ`` mapping it is given
(``os.environ`` by default), wires the adapters and the control schema into
the engine, and returns a result object. Nothing here prints or exits.

Settings (all environment variables; names are per playbook where noted):

==============================  =================================================
``target.dsn_env``              the shared target database (demo: MIGRATE_TARGET_DSN)
``source.dsn_template_env``     source DSN with ``{tenant}`` (demo: MIGRATE_SOURCE_DSN_TEMPLATE)
``flags.file_env``              the flag state file (default: MIGRATE_FLAG_FILE)
``flags.url_env`` …             Unleash: URL, admin and client tokens, environment
                                (defaults: UNLEASH_URL, UNLEASH_ADMIN_TOKEN,
                                UNLEASH_CLIENT_TOKEN, UNLEASH_ENVIRONMENT)
``MIGRATE_ACTOR``               who is acting, for the ledger (default: the OS user)
==============================  =================================================
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import psycopg

from migrate.checks.checksum import Mode, Side, TableFigures, choose_mode, table_shapes
from migrate.checks.diff import DiffResult, diff_table
from migrate.checks.isolation import IsolationReport, check_isolation
from migrate.control import schema as control_schema
from migrate.control.ledger import (
    Ledger,
    LedgerFilter,
    Recorded,
    Verification,
    Verifier,
    export_line,
    parse_anchor,
    parse_run,
    parse_since,
)
from migrate.control.store import StepRecord
from migrate.engine.rollback import RollbackResult
from migrate.engine.rollback import rollback as engine_rollback
from migrate.engine.run import Environment, RunResult
from migrate.engine.run import run as engine_run
from migrate.errors import ArgumentError, CheckFailed, LedgerBroken, SettingsError, StepFailed
from migrate.log import redact
from migrate.plan import Plan, StepStatus, build_plan, select_tenants
from migrate.playbook import LoadedPlaybook, Tenant, load_playbook
from migrate.playbook.model import FlagStep, UnleashFlags
from migrate.ports import FlagChange, FlagProvider, FlagSnapshot
from migrate.schemagen.consolidate import UniqueAcrossTenants
from migrate.schemagen.ddl import TENANT_COLUMN
from migrate.schemagen.ddl import Options as SchemaOptions
from migrate.schemagen.generate import GenerateResult, generate
from migrate.schemagen.reflect import SourceTable, reflect, select_tables
from migrate.steps.context import ProgressSink, no_progress
from migrate.steps.validate import compare_tenant

if TYPE_CHECKING:
    from migrate.adapters.flagfile import FileFlagProvider
    from migrate.adapters.unleash import UnleashFlagProvider

Environ = Mapping[str, str]


def _env(loaded: LoadedPlaybook, environ: Environ, var: str, *loc: str | int, what: str) -> str:
    value = environ.get(var, "").strip()
    if not value:
        raise SettingsError(
            f"environment variable {var} is not set; it names {what}",
            where=loaded.where(*loc),
            hint=f"export {var}=…  (see README.md, 'Settings')",
        )
    return value


def connect(dsn: str, *, what: str, var: str) -> psycopg.Connection[Any]:
    """An autocommit connection, or a SettingsError that never shows the password."""
    try:
        return psycopg.connect(
            dsn,
            autocommit=True,
            connect_timeout=10,
            application_name=f"migrate {socket.gethostname()}:{os.getpid()}",
        )
    except psycopg.OperationalError as exc:
        raise SettingsError(
            f"cannot connect to {what}: {redact(str(exc).strip().splitlines()[0])}",
            where=var,
            hint=f"check {var} and that the server answers",
        ) from exc
    except psycopg.ProgrammingError as exc:
        # libpq quotes the piece of the DSN it could not parse, and that piece may be the password:
        # mask quoted pieces, and drop the original (from None) so no traceback carries it.
        reason = re.sub(r'"[^"]{2,}"', '"***"', redact(str(exc).strip().splitlines()[0]))
        raise SettingsError(
            f"{var} is not a valid connection string: {reason}",
            where=var,
            hint="write postgresql://USER@HOST:PORT/DBNAME (percent-encode special characters) "
            "or key=value pairs",
        ) from None


def target_dsn(loaded: LoadedPlaybook, environ: Environ) -> str:
    var = loaded.playbook.target.dsn_env
    return _env(loaded, environ, var, "target", "dsn_env", what="the shared target database")


def source_dsn(loaded: LoadedPlaybook, tenant: Tenant, environ: Environ) -> tuple[str, str]:
    """(dsn, variable) of one tenant's source database."""
    if tenant.source_dsn_env:
        var = tenant.source_dsn_env
        return _env(loaded, environ, var, what=f"tenant {tenant.id}'s source database"), var
    var = loaded.playbook.source.dsn_template_env or ""
    template = _env(loaded, environ, var, "source", "dsn_template_env", what="the source DSN template")
    if "{tenant}" not in template:
        raise SettingsError(
            f"{var} has no '{{tenant}}' placeholder, so every tenant would read the same database",
            where=loaded.where("source", "dsn_template_env"),
            hint=f"export {var}='postgresql://USER@HOST:5432/{{tenant}}'",
        )
    return template.replace("{tenant}", tenant.id), var


class _NoFlags:
    """Stands in when a playbook has no flag step: any use is a bug, said plainly."""

    def is_enabled(self, flag: str, tenant: str) -> bool:
        raise SettingsError("this playbook configures no flags")

    def set_enabled(self, flag: str, tenant: str, enabled: bool) -> FlagChange:
        raise SettingsError("this playbook configures no flags")

    def snapshot(self, flag: str, tenant: str) -> FlagSnapshot:
        raise SettingsError("this playbook configures no flags")

    def restore(self, snapshot: FlagSnapshot) -> FlagChange:
        raise SettingsError("this playbook configures no flags")


def _step_flags(loaded: LoadedPlaybook) -> list[str]:
    """The flags the playbook's steps flip, in order, each once."""
    names = [s.flag for p in loaded.playbook.phases for s in p.steps if isinstance(s, FlagStep)]
    return list(dict.fromkeys(names))


def unleash_provider(loaded: LoadedPlaybook, environ: Environ) -> UnleashFlagProvider:
    """The provider of a ``provider: unleash`` playbook, its writers locked on the target."""
    from pydantic import SecretStr

    from migrate.adapters.unleash import UnleashFlagProvider, UnleashSettings, advisory_lock

    cfg = loaded.playbook.flags
    assert isinstance(cfg, UnleashFlags)
    url = _env(loaded, environ, cfg.url_env, "flags", "url_env", what="the Unleash server's URL")
    if not url.startswith(("http://", "https://")):
        raise SettingsError(
            f"{cfg.url_env} must be an http(s) URL, e.g. https://unleash.example.com",
            where=loaded.where("flags", "url_env"),
            hint=f"export {cfg.url_env}=https://…",
        )
    admin = _env(
        loaded, environ, cfg.admin_token_env, "flags", "admin_token_env", what="an Unleash admin token"
    )
    client = _env(
        loaded, environ, cfg.client_token_env, "flags", "client_token_env", what="an Unleash client token"
    )
    environment = cfg.environment or _env(
        loaded, environ, cfg.environment_env, "flags", "environment_env", what="the Unleash environment"
    )
    # Writers of one flag hold an advisory lock on the target database: the one place every
    # runner of this playbook reaches (a lock in this process would not stop another runner).
    dsn, var = target_dsn(loaded, environ), loaded.playbook.target.dsn_env
    settings = UnleashSettings(
        url=url,
        admin_token=SecretStr(admin),
        client_token=SecretStr(client),
        environment=environment,
        project=cfg.project,
        confirm_seconds=cfg.confirm_seconds,
        values_per_strategy=cfg.values_per_strategy,
        url_var=cfg.url_env,
        admin_token_var=cfg.admin_token_env,
        client_token_var=cfg.client_token_env,
        sync_command=f"migrate flags sync {loaded.path}",
    )
    lock = advisory_lock(lambda: connect(dsn, what="the target database (flag locks)", var=var))
    return UnleashFlagProvider(settings, lock=lock)


def _file_provider(loaded: LoadedPlaybook, environ: Environ, *, create: bool) -> FileFlagProvider | None:
    """The flag file's provider; without ``create``, None while the file does not exist."""
    from migrate.adapters.flagfile import FileFlagProvider  # the SDK import costs 0.25 s

    cfg = loaded.playbook.flags
    assert not isinstance(cfg, UnleashFlags)
    path = Path(_env(loaded, environ, cfg.file_env, "flags", "file_env", what="the flag state file"))
    if not create:
        return FileFlagProvider(path) if path.exists() else None
    definitions = loaded.resolve(cfg.definitions) if cfg.definitions else None
    return FileFlagProvider(path, definitions=definitions)


def flag_provider(loaded: LoadedPlaybook, environ: Environ) -> FlagProvider:
    flags = _step_flags(loaded)
    if not flags:
        return _NoFlags()
    if isinstance(loaded.playbook.flags, UnleashFlags):
        provider = unleash_provider(loaded, environ)
        provider.check(flags)  # a wrong token or environment, or a flag not synced: before any step
        return provider
    file_provider = _file_provider(loaded, environ, create=True)
    assert file_provider is not None
    return file_provider


def environment(
    loaded: LoadedPlaybook, environ: Environ, actor: str | None = None, *, with_flags: bool = True
) -> Environment:
    dsn = target_dsn(loaded, environ)
    var = loaded.playbook.target.dsn_env

    def connect_source(tenant: Tenant) -> psycopg.Connection[Any]:
        src, src_var = source_dsn(loaded, tenant, environ)
        return connect(src, what=f"tenant {tenant.id}'s source database", var=src_var)

    for tenant in loaded.tenants:  # fail on a missing variable before any work starts
        source_dsn(loaded, tenant, environ)
    return Environment(
        loaded=loaded,
        connect_target=lambda: connect(dsn, what="the target database", var=var),
        connect_source=connect_source,
        flags=flag_provider(loaded, environ) if with_flags else _NoFlags(),
        actor=actor or environ.get("MIGRATE_ACTOR") or getpass.getuser(),
        host=socket.gethostname(),
        pid=os.getpid(),
    )


def _prepare(loaded: LoadedPlaybook, environ: Environ) -> None:
    """Create or upgrade the control schema (alembic), translating connection failures."""
    dsn = target_dsn(loaded, environ)
    connect(dsn, what="the target database", var=loaded.playbook.target.dsn_env).close()
    control_schema.upgrade(dsn, loaded.playbook.target.control_schema)


def _progress(env: Environment, tenants: Sequence[str] | None) -> dict[tuple[str, str], StepStatus]:
    with env.connect_target() as conn:
        if not _control_exists(conn, env.loaded.playbook.target.control_schema):
            return {}
        return env.control.progress(conn, tenants)


def _control_exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}".step_state',)).fetchone()
    return bool(row and row[0])


# ----------------------------------------------------------------------------- commands
def plan(playbook: Path | str, tenants: Sequence[str] | None = None) -> Plan:
    """Validate the playbook and return what would run (no database needed)."""
    return build_plan(load_playbook(playbook), tenants=tenants)


def run(
    playbook: Path | str,
    tenants: Sequence[str] | None = None,
    *,
    jobs: int = 1,
    actor: str | None = None,
    environ: Environ | None = None,
    progress: ProgressSink | None = None,
) -> RunResult:
    """Run the playbook's phases for its tenants; done steps are skipped.

    ``progress`` receives the copy's ProgressEvents (from worker threads: it must be thread-safe).
    """
    if jobs < 1:
        raise ArgumentError(f"--jobs must be at least 1, not {jobs}", where="--jobs")
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    env = environment(loaded, environ, actor)
    _prepare(loaded, environ)
    the_plan = build_plan(loaded, _progress(env, tenants), tenants)
    command = "run " + " ".join(f"--tenant {t}" for t in tenants or ())
    return engine_run(env, the_plan, command=command.strip(), jobs=jobs, progress=progress or no_progress)


@dataclass(frozen=True)
class TenantStatus:
    tenant: str
    wave: str
    phase: str | None  # phase of the last finished step
    last_step: str | None
    state: str  # not started | in progress | done | failed | rolled back
    rows: int | None
    validated: bool | None
    error: str | None
    figures: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per table, from validate


@dataclass(frozen=True)
class Status:
    playbook: str
    digest: str
    tenants: tuple[TenantStatus, ...]


def status(
    playbook: Path | str, tenants: Sequence[str] | None = None, *, environ: Environ | None = None
) -> Status:
    """Where each tenant stands, read from the control schema."""
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    env = environment(loaded, environ, with_flags=False)
    the_plan = build_plan(loaded, tenants=tenants)
    with env.connect_target() as conn:
        records = (
            env.control.steps(conn, tenants)
            if _control_exists(conn, loaded.playbook.target.control_schema)
            else []
        )
    by_tenant: dict[str, dict[str, StepRecord]] = {}
    for rec in records:
        by_tenant.setdefault(rec.tenant, {})[rec.step_key] = rec
    out = []
    for tp in the_plan.tenants:
        recs = by_tenant.get(tp.tenant.id, {})
        real = [s for s in tp.steps if not s.is_point]
        done = [s for s in real if (r := recs.get(s.key)) and r.status is StepStatus.DONE]
        failed = [recs[s.key] for s in real if s.key in recs and recs[s.key].status is StepStatus.FAILED]
        reverted = [s for s in real if s.key in recs and recs[s.key].status is StepStatus.REVERTED]
        last = done[-1] if done else None
        rows = validated = None
        figures: Mapping[str, Mapping[str, Any]] = {}
        for s in real:
            record = recs.get(s.key)
            if record is None or record.status is not StepStatus.DONE:
                continue
            if s.kind == "backfill":
                rows = int(record.details.get("rows", 0))
            if s.kind == "validate":
                validated = bool(record.details.get("match"))
                figures = record.details.get("tables", {})
        if failed:
            state = "failed"
        elif len(done) == len(real):
            state = "done"
        elif reverted:
            state = "rolled back"
        elif done or recs:
            state = "in progress"
        else:
            state = "not started"
        out.append(
            TenantStatus(
                tenant=tp.tenant.id,
                wave=tp.tenant.wave,
                phase=last.phase if last else None,
                last_step=last.step_id if last else None,
                state=state,
                rows=rows,
                validated=validated,
                error=failed[0].error if failed else None,
                figures=figures,
            )
        )
    return Status(loaded.playbook.name, loaded.digest, tuple(out))


def rollback(
    playbook: Path | str,
    tenant: str,
    to: str,
    *,
    actor: str | None = None,
    environ: Environ | None = None,
) -> RollbackResult:
    """Revert every step after rollback point ``to`` for one tenant, flags first."""
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    env = environment(loaded, environ, actor)
    _prepare(loaded, environ)
    the_plan = build_plan(loaded, tenants=[tenant])
    return engine_rollback(env, the_plan.tenants[0], to)


@dataclass(frozen=True)
class LedgerReport:
    entries: tuple[Recorded, ...]  # those the filter selects, oldest first
    checked: int  # entries that verified before the first break (all of them when intact)
    broken_at: int | None
    why: str | None
    head_seq: int | None = None  # the last entry that verified: publish its hash as an anchor
    head_hash: str | None = None
    anchor: str | None = None
    anchor_seq: int | None = None  # where the anchor was found; None when it was not
    warnings: tuple[str, ...] = ()  # what the connected role could do to the ledger unrefused
    control_schema: str = "migrate_control"

    @property
    def failure(self) -> LedgerBroken | None:
        """The chain's first break, else a missing anchor, as the error to report (exit 1)."""
        table = f"{self.control_schema}.ledger"
        if self.why is not None:
            held = f" (the anchor at entry {self.anchor_seq} holds)" if self.anchor_seq else ""
            return LedgerBroken(
                f"ledger broken at entry {self.broken_at}: {self.why}{held}",
                where=table,
                hint="someone with owner or superuser rights changed the table behind its trigger; "
                "compare it with your last 'migrate ledger export' to see what changed",
            )
        if self.anchor is not None and self.anchor_seq is None:
            return LedgerBroken(
                f"anchor {self.anchor} is not in the ledger ({self.checked} entries, chain intact): "
                "the entry it named was changed or removed and the hashes after it recomputed",
                where=table,
                hint="check that the anchor comes from this target and control schema; if it does, "
                "compare the ledger with the export that published the anchor",
            )
        return None


def _ledger_settings(
    playbook: Path | str, environ: Environ | None
) -> tuple[LoadedPlaybook, Ledger, psycopg.Connection[Any]]:
    """The playbook, its ledger and a target connection: an audit needs no source settings."""
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    dsn = target_dsn(loaded, environ)
    conn = connect(dsn, what="the target database", var=loaded.playbook.target.dsn_env)
    return loaded, Ledger(loaded.playbook.target.control_schema), conn


def _ledger_filter(tenant: str | None, run: str | None, since: str | datetime | None) -> LedgerFilter:
    return LedgerFilter(
        tenant=tenant,
        run=parse_run(run) if run is not None else None,
        since=parse_since(since) if isinstance(since, str) else since,
    )


def _report(
    schema: str, found: Verification, warnings: tuple[str, ...], entries: tuple[Recorded, ...] = ()
) -> LedgerReport:
    return LedgerReport(
        entries,
        found.checked,
        found.broken_at,
        found.why,
        head_seq=found.head_seq,
        head_hash=found.head_hash,
        anchor=found.anchor,
        anchor_seq=found.anchor_seq,
        warnings=warnings,
        control_schema=schema,
    )


def ledger(
    playbook: Path | str,
    *,
    tenant: str | None = None,
    run: str | None = None,
    since: str | datetime | None = None,
    anchor: str | None = None,
    list_entries: bool = True,
    environ: Environ | None = None,
) -> LedgerReport:
    """The entries the filters select, and whether the whole chain (and the anchor) verifies.

    ``run`` is a run id or its first characters; ``since`` a datetime, a time ago
    (``2h``) or an ISO date or time; ``anchor`` a hash published earlier, which
    proves nothing up to that entry changed.
    """
    flt = _ledger_filter(tenant, run, since)
    wanted = parse_anchor(anchor) if anchor is not None else None
    loaded, book, conn = _ledger_settings(playbook, environ)
    schema = loaded.playbook.target.control_schema
    with conn:
        if not _control_exists(conn, schema):
            return LedgerReport((), 0, None, None, anchor=wanted, control_schema=schema)
        entries = tuple(book.entries(conn, flt)) if list_entries else ()
        found = book.verify(conn, wanted)
        return _report(schema, found, book.privilege_warnings(conn), entries)


@dataclass(frozen=True)
class LedgerExport:
    written: int  # lines written
    report: LedgerReport  # the whole chain's verification, done in the same pass


def ledger_export(
    playbook: Path | str,
    out: TextIO,
    *,
    fmt: str = "jsonl",
    tenant: str | None = None,
    run: str | None = None,
    since: str | datetime | None = None,
    environ: Environ | None = None,
) -> LedgerExport:
    """Write the selected entries to ``out``, one canonical JSON object per line, for a SIEM.

    Each line holds every hashed field plus ``prev_hash`` and ``hash``: drop those
    two, serialise the rest with sorted keys and no spaces, and SHA-256 over
    ``prev_hash + "\\n" + that`` gives ``hash`` (migrate.control.ledger).
    Everything selected is written even when the chain is broken; the report says so.
    """
    if fmt != "jsonl":
        raise ArgumentError(f"unknown export format {fmt!r}", where="--format", hint="write --format jsonl")
    flt = _ledger_filter(tenant, run, since)
    loaded, book, conn = _ledger_settings(playbook, environ)
    schema = loaded.playbook.target.control_schema
    written = 0
    with conn:
        if not _control_exists(conn, schema):
            return LedgerExport(0, LedgerReport((), 0, None, None, control_schema=schema))
        verifier = Verifier(book, conn)
        for rec in book.entries(conn):
            verifier.feed(rec)
            if flt.matches(rec):
                out.write(export_line(rec) + "\n")
                written += 1
        return LedgerExport(written, _report(schema, verifier.result(), book.privilege_warnings(conn)))


# ----------------------------------------------------------------------------- validation
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
    """The playbook's tables of this source (foreign-key order), or those named with ``--table``."""
    pb = loaded.playbook
    specs = pb.table_specs()
    tables = select_tables(
        reflect(source, pb.source.schema_),
        None if specs is None else [t.name for t in specs],
        schema=pb.source.schema_,
    )
    known = [t.name for t in tables]
    for name in wanted:
        if name not in known:
            raise ArgumentError(
                f"table '{name}' is not among the tables playbook {loaded.path.name} migrates",
                where="--table",
                hint=f"its tables are: {', '.join(known)}",
            )
    return [t for t in tables if t.name in wanted] if wanted else tables


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
    env = environment(loaded, environ, with_flags=False)
    pb = loaded.playbook
    out = []
    with env.connect_target() as target:
        for tenant in select_tenants(loaded, tenants):
            started = time.monotonic()
            with env.connect_source(tenant) as source:
                mode, figures = compare_tenant(
                    source,
                    target,
                    source_schema=pb.source.schema_,
                    target_schema=pb.target.schema_,
                    tenant=tenant.id,
                    tables=_tables(loaded, source, tables or ()),
                )
            out.append(TenantFigures(tenant.id, mode, tuple(figures), time.monotonic() - started))
    return VerifyResult(pb.name, loaded.digest, tuple(out))


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
    env = environment(loaded, environ, with_flags=False)
    pb = loaded.playbook
    (the_tenant,) = select_tenants(loaded, [tenant])
    with env.connect_target() as target, env.connect_source(the_tenant) as source:
        (source_table,) = _tables(loaded, source, [table])
        if not source_table.primary_key:
            raise ArgumentError(
                f"table '{table}' has no primary key, and diff narrows differences down by key ranges",
                where="--table",
                hint="compare its counts and checksums with 'migrate verify'",
            )
        (shape,) = table_shapes(source, pb.source.schema_, {table: source_table.primary_key})
        return diff_table(
            Side(source, pb.source.schema_),
            Side(target, pb.target.schema_, TENANT_COLUMN, the_tenant.id, label="target"),
            shape,
            mode or choose_mode(source, target),
            sample=sample,
        )


# ----------------------------------------------------------------------------- flags
@dataclass(frozen=True)
class FlagSummary:
    """One flag as its provider holds it, whoever the playbook's tenants are."""

    flag: str
    where: str  # the flag file, or "<url> environment <env>"
    environment_on: bool | None  # Unleash only
    tenants: tuple[str, ...]  # the tenant ids listed as on
    other_strategies: int | None  # Unleash only: strategies tenant-migrate does not own


@dataclass(frozen=True)
class TenantFlags:
    tenant: str
    wave: str
    phase: str | None
    state: str  # the tenant's migration state, as in status()
    flags: Mapping[str, bool]  # what the application sees, per flag (evaluated by the SDK)


@dataclass(frozen=True)
class FlagsStatus:
    playbook: str
    digest: str
    provider: str
    flags: tuple[FlagSummary, ...]
    tenants: tuple[TenantFlags, ...]


def flags_status(
    playbook: Path | str, tenants: Sequence[str] | None = None, *, environ: Environ | None = None
) -> FlagsStatus:
    """Per tenant, each flag as the application sees it, next to the tenant's phase."""
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    where = status(loaded.path, tenants, environ=environ)
    names = _step_flags(loaded)
    ids = [t.tenant for t in where.tenants]
    seen: dict[str, dict[str, bool]] = {}
    summaries: list[FlagSummary] = []
    if isinstance(loaded.playbook.flags, UnleashFlags):
        provider = unleash_provider(loaded, environ)
        try:
            for name in names:
                info = provider.describe(name)
                seen[name] = provider.evaluate(name, ids)
                summaries.append(
                    FlagSummary(
                        name,
                        f"{provider.settings.base_url} environment {info.environment}",
                        info.environment_on,
                        info.tenants,
                        info.other_strategies,
                    )
                )
        finally:
            provider.close()
    else:
        # Read-only: a missing flag file means no tenant was flipped yet, so all are off.
        file_provider = _file_provider(loaded, environ, create=False)
        for name in names:
            if file_provider is None:
                seen[name] = dict.fromkeys(ids, False)
                summaries.append(FlagSummary(name, "no flag file yet", None, (), None))
                continue
            seen[name] = file_provider.evaluate(name, ids)
            listed = tuple(file_provider.tenants(name))
            summaries.append(FlagSummary(name, str(file_provider.path), None, listed, None))
    rows = tuple(
        TenantFlags(t.tenant, t.wave, t.phase, t.state, {name: seen[name][t.tenant] for name in names})
        for t in where.tenants
    )
    return FlagsStatus(where.playbook, where.digest, loaded.playbook.flags.provider, tuple(summaries), rows)


@dataclass(frozen=True)
class FlagSynced:
    flag: str
    actions: tuple[str, ...]  # what was done; empty when the flag was already there


@dataclass(frozen=True)
class FlagsSync:
    provider: str
    where: str
    flags: tuple[FlagSynced, ...]


def flags_sync(playbook: Path | str, *, environ: Environ | None = None) -> FlagsSync:
    """Create the flags the playbook uses (and its definitions list) where missing, off for everyone."""
    from migrate.adapters.flagfile import FlagDefinition, read_definitions

    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    cfg = loaded.playbook.flags
    declared = read_definitions(loaded.resolve(cfg.definitions)) if cfg.definitions else []
    known = {d.name for d in declared}
    wanted = declared + [
        FlagDefinition(name, "", "release") for name in _step_flags(loaded) if name not in known
    ]
    if isinstance(cfg, UnleashFlags):
        provider = unleash_provider(loaded, environ)
        try:
            done = provider.sync(wanted)
        finally:
            provider.close()
        where = f"{provider.settings.base_url} environment {provider.settings.environment}"
        return FlagsSync("unleash", where, tuple(FlagSynced(d.flag, d.actions) for d in done))
    if not cfg.definitions:
        raise SettingsError(
            "a flag file is created from flag definitions, and this playbook names none",
            where=loaded.where("flags"),
            hint="add 'definitions: ../flags/NAME.json' to the playbook's 'flags:' block",
        )
    path = Path(_env(loaded, environ, cfg.file_env, "flags", "file_env", what="the flag state file"))
    before = _file_provider(loaded, environ, create=False)
    had = set() if before is None else set(before.snapshot_all())
    file_provider = _file_provider(loaded, environ, create=True)
    assert file_provider is not None
    present = set(file_provider.snapshot_all())
    missing = [d.name for d in wanted if d.name not in present]
    if missing:
        raise SettingsError(
            f"flag(s) {', '.join(missing)} used by the playbook's steps are not in its definitions",
            where=str(loaded.resolve(cfg.definitions)),
            hint="add them to the definitions file (see flags/README.md)",
        )
    synced = tuple(FlagSynced(d.name, () if d.name in had else ("created",)) for d in wanted)
    return FlagsSync("file", str(path), synced)


# ----------------------------------------------------------------------------- shared schema
_NAMED_SOURCE = re.compile(r"^([a-z0-9][a-z0-9_-]{0,62})=(.+)$", re.DOTALL)


def _labelled_source(value: str, index: int) -> tuple[str, str]:
    """``NAME=DSN`` names a source; a bare DSN (URL or key=value) is named after its database."""
    named = _NAMED_SOURCE.match(value)
    keywords = {o.keyword.decode() for o in psycopg.pq.Conninfo.get_defaults()}
    if named and named.group(1) not in keywords:  # "host=…" is a key=value DSN, not a name
        label, value = named.group(1), named.group(2)
    else:
        label = ""
    try:
        dbname = psycopg.conninfo.conninfo_to_dict(value).get("dbname")
    except psycopg.ProgrammingError:
        raise ArgumentError(
            f"--source number {index + 1} is not a connection string",
            where="--source",
            hint="write [NAME=]postgresql://USER@HOST:PORT/DBNAME",
        ) from None
    return label or str(dbname or f"source{index + 1}"), value


def _identifier(value: str, option: str) -> str:
    from migrate.names import check_identifier

    try:
        return check_identifier(value)
    except ValueError as exc:
        raise ArgumentError(str(exc), where=option) from None


def _unique_declaration(value: str) -> UniqueAcrossTenants:
    table, _, columns = value.partition(".")
    names = [c.strip() for c in columns.split(",") if c.strip()]
    if not table or not names:
        raise ArgumentError(
            f"--unique-across-tenants {value!r} names no columns",
            where="--unique-across-tenants",
            hint="write TABLE.COLUMN or TABLE.COL1,COL2, e.g. users.email",
        )
    return UniqueAcrossTenants(
        _identifier(table, "--unique-across-tenants"),
        tuple(_identifier(c, "--unique-across-tenants") for c in names),
    )


def schema_generate(
    playbook: Path | str | None = None,
    *,
    sources: Sequence[str] = (),
    out: Path | str,
    schema: str | None = None,
    source_schema: str | None = None,
    tenant_column: str = TENANT_COLUMN,
    tenant_type: str = "text",
    app_role: str | None = None,
    global_tables: Sequence[str] = (),
    unique_across: Sequence[str] = (),
    environ: Environ | None = None,
) -> GenerateResult:
    """The shared schema as an alembic revision in ``out``, and the consolidation report.

    The sources are the playbook's tenants, or ``sources`` (``[NAME=]DSN`` each); the
    first is the model of the schema, all of them are compared.
    """
    environ = os.environ if environ is None else environ
    if (playbook is None) == (not sources):
        raise ArgumentError(
            "name the sources: a playbook, or --source DSN (repeat it for more), not both",
            where="--source",
            hint="migrate schema generate --source postgresql://HOST/acme --out migrations/shared",
        )
    if tenant_type not in ("text", "uuid"):
        raise ArgumentError(f"unknown tenant type {tenant_type!r}", where="--tenant-type", hint="text, uuid")
    globals_ = [_identifier(t, "--global") for t in global_tables]
    uniques = [_unique_declaration(u) for u in unique_across]
    labelled: list[tuple[str, str, str]] = []
    if playbook is not None:
        loaded = load_playbook(playbook)
        pb = loaded.playbook
        schema = schema or pb.target.schema_
        source_schema = source_schema or pb.source.schema_
        globals_ += list(pb.global_tables)
        uniques += [UniqueAcrossTenants(u.table, tuple(u.columns)) for u in pb.unique_across_tenants]
        for tenant in loaded.tenants:
            dsn, var = source_dsn(loaded, tenant, environ)
            labelled.append((tenant.id, dsn, var))
    else:
        for index, value in enumerate(sources):
            label, dsn = _labelled_source(value, index)
            if label in [existing for existing, _d, _v in labelled]:
                raise ArgumentError(
                    f"two sources are both named {label!r}",
                    where="--source",
                    hint="name them: --source acme=postgresql://… --source globex=postgresql://…",
                )
            labelled.append((label, dsn, "--source"))
    options = SchemaOptions(
        schema=_identifier(schema or "app", "--schema"),
        tenant_column=_identifier(tenant_column, "--tenant-column"),
        tenant_type="uuid" if tenant_type == "uuid" else "text",
        app_role=_identifier(app_role, "--app-role") if app_role else None,
        global_tables=frozenset(globals_),
    )
    with ExitStack() as stack:
        conns = {
            label: stack.enter_context(connect(dsn, what=f"source {label}", var=var))
            for label, dsn, var in labelled
        }
        try:
            return generate(
                conns,
                source_schema=_identifier(source_schema or "public", "--source-schema"),
                options=options,
                out=Path(out),
                unique_across=uniques,
            )
        except psycopg.Error as exc:
            raise StepFailed(redact(str(exc).strip()), where="schema generate") from exc


def isolation_check(
    playbook: Path | str | None = None,
    *,
    dsn: str | None = None,
    schema: str | None = None,
    app_role: str | None = None,
    tenant_column: str = TENANT_COLUMN,
    global_tables: Sequence[str] = (),
    probe: bool = True,
    environ: Environ | None = None,
) -> IsolationReport:
    """Static RLS findings and live probes as the application role, on the playbook's target or ``dsn``."""
    environ = os.environ if environ is None else environ
    globals_ = [_identifier(t, "--global") for t in global_tables]
    var = "--target-dsn"
    if playbook is not None:
        if dsn is not None:
            raise ArgumentError("give a playbook or --target-dsn, not both", where="--target-dsn")
        loaded = load_playbook(playbook)
        dsn, var = target_dsn(loaded, environ), loaded.playbook.target.dsn_env
        schema = schema or loaded.playbook.target.schema_
        globals_ += list(loaded.playbook.global_tables)
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
    schema = _identifier(schema or "app", "--schema")
    with connect(dsn, what="the target database", var=var) as conn:
        row = conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", (schema,)).fetchone()
        if not row or not row[0]:
            raise ArgumentError(f"schema {schema!r} does not exist on the target", where="--schema")
        try:
            return check_isolation(
                conn,
                schema=schema,
                app_role=role,
                tenant_column=_identifier(tenant_column, "--tenant-column"),
                global_tables=globals_,
                probe=probe,
            )
        except psycopg.Error as exc:
            raise CheckFailed(redact(str(exc).strip()), where="isolation-check") from exc
