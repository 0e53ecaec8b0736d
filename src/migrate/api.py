"""The library facade: plan(), run(), status(), rollback(), ledger_check().

Each function reads its settings from the ``environ`` mapping it is given
(``os.environ`` by default), wires the adapters and the control schema into
the engine, and returns a result object. Nothing here prints or exits.

Settings (all environment variables; names are per playbook where noted):

==============================  =================================================
``target.dsn_env``              the shared target database (demo: MIGRATE_TARGET_DSN)
``source.dsn_template_env``     source DSN with ``{tenant}`` (demo: MIGRATE_SOURCE_DSN_TEMPLATE)
``flags.file_env``              the flag state file (default: MIGRATE_FLAG_FILE)
``MIGRATE_ACTOR``               who is acting, for the ledger (default: the OS user)
==============================  =================================================
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from migrate.control import schema as control_schema
from migrate.control.ledger import Ledger, Recorded
from migrate.control.store import StepRecord
from migrate.engine.rollback import RollbackResult
from migrate.engine.rollback import rollback as engine_rollback
from migrate.engine.run import Environment, RunResult
from migrate.engine.run import run as engine_run
from migrate.errors import ArgumentError, SettingsError
from migrate.log import redact
from migrate.plan import Plan, StepStatus, build_plan
from migrate.playbook import LoadedPlaybook, Tenant, load_playbook
from migrate.playbook.model import FlagStep
from migrate.ports import FlagChange, FlagProvider

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


def flag_provider(loaded: LoadedPlaybook, environ: Environ) -> FlagProvider:
    pb = loaded.playbook
    uses_flags = any(isinstance(s, FlagStep) for p in pb.phases for s in p.steps)
    if not uses_flags:
        return _NoFlags()
    from migrate.adapters.flagfile import FileFlagProvider  # the SDK import costs 0.25 s

    path = _env(loaded, environ, pb.flags.file_env, "flags", "file_env", what="the flag state file")
    definitions = loaded.resolve(pb.flags.definitions) if pb.flags.definitions else None
    return FileFlagProvider(Path(path), definitions=definitions)


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
) -> RunResult:
    """Run the playbook's phases for its tenants; done steps are skipped."""
    if jobs < 1:
        raise ArgumentError(f"--jobs must be at least 1, not {jobs}", where="--jobs")
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    env = environment(loaded, environ, actor)
    _prepare(loaded, environ)
    the_plan = build_plan(loaded, _progress(env, tenants), tenants)
    command = "run " + " ".join(f"--tenant {t}" for t in tenants or ())
    return engine_run(env, the_plan, command=command.strip(), jobs=jobs)


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
    entries: tuple[Recorded, ...]
    checked: int
    broken_at: int | None
    why: str | None


def ledger(
    playbook: Path | str, *, tenant: str | None = None, environ: Environ | None = None
) -> LedgerReport:
    """The ledger's entries (optionally one tenant's) and whether the whole chain verifies."""
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    env = environment(loaded, environ, with_flags=False)
    book = Ledger(loaded.playbook.target.control_schema)
    with env.connect_target() as conn:
        if not _control_exists(conn, loaded.playbook.target.control_schema):
            return LedgerReport((), 0, None, None)
        entries = tuple(book.entries(conn, tenant=tenant))
        checked, why = book.verify(conn)
    if why is None:
        return LedgerReport(entries, checked, None, None)
    return LedgerReport(entries, 0, checked, why)
