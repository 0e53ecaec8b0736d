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
import shlex
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import psycopg

from migrate.adapters.recording import RecordingFlags
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
from migrate.control.store import Approval, ControlStore, Holder, StepRecord
from migrate.engine.gates import Approved
from migrate.engine.gates import approve as engine_approve
from migrate.engine.rollback import RollbackPreview, RollbackResult, refuse_across_cutover, what_to_revert
from migrate.engine.rollback import rollback as engine_rollback
from migrate.engine.run import Environment, RunOptions, RunResult
from migrate.engine.run import run as engine_run
from migrate.errors import (
    ArgumentError,
    CheckFailed,
    LedgerBroken,
    MigrateError,
    SettingsError,
    StepFailed,
)
from migrate.log import redact
from migrate.plan import (
    Plan,
    PlannedStep,
    StepStatus,
    TenantPlan,
    build_plan,
    select_tenants,
    select_wave,
    wave_states,
)
from migrate.playbook import LoadedPlaybook, Tenant, load_playbook
from migrate.playbook.model import FlagStep, UnleashFlags
from migrate.ports import FlagChange, FlagProvider, FlagSnapshot
from migrate.schemagen.consolidate import UniqueAcrossTenants
from migrate.schemagen.ddl import TENANT_COLUMN
from migrate.schemagen.ddl import Options as SchemaOptions
from migrate.schemagen.generate import GenerateResult, generate
from migrate.schemagen.reflect import SourceTable, reflect, select_tables
from migrate.steps.context import ProgressSink, no_progress
from migrate.steps.validate import compare_tenant, mismatch_summary

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


# A runner that dies must not leave its session behind holding a tenant's lock. The server
# notices a vanished client only when it next talks to it — never while the session waits on a
# lock — unless it checks (PostgreSQL 14+), and keepalives find a machine that went away.
_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}
_CHECK_CLIENT = "SELECT set_config('client_connection_check_interval', '1s', false)"


def connect(dsn: str, *, what: str, var: str) -> psycopg.Connection[Any]:
    """An autocommit connection, or a SettingsError that never shows the password."""
    try:
        given = psycopg.conninfo.conninfo_to_dict(dsn)
        extra = {k: v for k, v in _KEEPALIVES.items() if k not in given}
        conn = psycopg.connect(
            psycopg.conninfo.make_conninfo(dsn, **extra),
            autocommit=True,
            connect_timeout=10,
            application_name=f"migrate {socket.gethostname()}:{os.getpid()}",
        )
        if conn.info.server_version >= 140000:
            conn.execute(_CHECK_CLIENT)
        return conn
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


def connect_source(loaded: LoadedPlaybook, tenant: Tenant, environ: Environ) -> psycopg.Connection[Any]:
    """A connection to the tenant's source on which every transaction is read-only.

    The migrator only ever reads a source: the session default makes the server
    refuse any write, whatever a step or a check might try.
    """
    src, src_var = source_dsn(loaded, tenant, environ)
    conn = connect(src, what=f"tenant {tenant.id}'s source database", var=src_var)
    try:
        conn.execute("SET default_transaction_read_only = on")
    except psycopg.Error:
        conn.close()
        raise
    return conn


def environment(
    loaded: LoadedPlaybook,
    environ: Environ,
    actor: str | None = None,
    *,
    with_flags: bool = True,
    with_sources: bool = True,
) -> Environment:
    dsn = target_dsn(loaded, environ)
    var = loaded.playbook.target.dsn_env
    if with_sources:
        for tenant in loaded.tenants:  # fail on a missing variable before any work starts
            source_dsn(loaded, tenant, environ)
    return Environment(
        loaded=loaded,
        connect_target=lambda: connect(dsn, what="the target database", var=var),
        connect_source=lambda tenant: connect_source(loaded, tenant, environ),
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
    wave: str | None = None,
    jobs: int = 1,
    dry_run: bool = False,
    max_failures: int | None = None,
    replan: bool = False,
    stop: threading.Event | None = None,
    actor: str | None = None,
    environ: Environ | None = None,
    progress: ProgressSink | None = None,
) -> RunResult:
    """Run the playbook's phases for its tenants, wave by wave; done steps are skipped.

    ``dry_run`` rehearses: every step runs against the real sources and target inside
    transactions that are rolled back, flag flips are only recorded, and the ledger
    gains one ``rehearsed`` entry per step. ``stop``, once set (the CLI sets it on
    Ctrl-C), ends every tenant at its next safe point. ``progress`` receives the
    copy's ProgressEvents (from worker threads: it must be thread-safe).
    """
    if jobs < 1:
        raise ArgumentError(f"--jobs must be at least 1, not {jobs}", where="--jobs")
    if max_failures is not None and max_failures < 1:
        raise ArgumentError(
            f"--max-failures must be at least 1, not {max_failures}",
            where="--max-failures",
            hint="leave it out to let every tenant run whatever the others do",
        )
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    env = environment(loaded, environ, actor)
    if dry_run:
        env.flags = RecordingFlags(env.flags)
    _prepare(loaded, environ)
    the_plan = build_plan(loaded, _progress(env, tenants), tenants, wave)
    words = ["run", *(f"--tenant {t}" for t in tenants or ()), *([f"--wave {wave}"] if wave else [])]
    options = RunOptions(
        command=" ".join(words + (["--dry-run"] if dry_run else [])),
        jobs=jobs,
        dry_run=dry_run,
        max_failures=max_failures,
        replan=replan,
        stop=stop or threading.Event(),
    )
    return engine_run(env, the_plan, options, progress=progress or no_progress)


def approve(
    playbook: Path | str, wave: str, *, actor: str | None = None, environ: Environ | None = None
) -> Approved:
    """Open a wave's approval gate, as ``actor``; ledgered. Only once every earlier wave is done."""
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    select_wave(loaded, wave)
    env = environment(loaded, environ, actor, with_flags=False, with_sources=False)
    _prepare(loaded, environ)
    return engine_approve(env, build_plan(loaded), wave)


@dataclass(frozen=True)
class StepNow:
    """The step a tenant is working on or stopped at: running, interrupted or failed."""

    key: str  # phase/step
    phase: str
    step: str
    kind: str
    status: str  # running | interrupted (its runner is gone; the next run redoes it) | failed
    error: str | None = None


@dataclass(frozen=True)
class TenantStatus:
    tenant: str
    wave: str
    phase: str | None  # phase of the last finished step
    last_step: str | None
    state: str  # not started | in progress | running | interrupted | failed | rolled back | done
    rows: int | None  # rows copied: the backfill's figure, or its checkpoints' while it is under way
    validated: bool | None
    error: str | None
    figures: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per table, from validate
    current: StepNow | None = None
    points: tuple[str, ...] = ()  # rollback points passed, in order
    steps_done: int = 0
    steps_total: int = 0
    flags: Mapping[str, bool] = field(default_factory=dict)  # as the application sees them, per flag
    holder: Holder | None = None  # the runner that holds the tenant's lock now


@dataclass(frozen=True)
class WaveStatus:
    name: str
    stage: str  # done | open | waiting for approval | waiting for an earlier wave
    tenants: tuple[str, ...]
    finished: tuple[str, ...]
    approval_needed: bool
    approval: Approval | None  # who opened the gate, where, when, for which playbook version
    blocked_by: str | None  # the earlier wave it waits for


@dataclass(frozen=True)
class AcceptedVersion:
    """The playbook version runs work to (moved only by ``run --replan``)."""

    digest: str
    since: datetime
    actor: str


@dataclass(frozen=True)
class NextCommand:
    command: str
    why: str


@dataclass(frozen=True)
class Status:
    playbook: str
    digest: str
    tenants: tuple[TenantStatus, ...]  # those asked for (all by default), in wave order
    path: str = ""  # the playbook's path as given, for the commands status suggests
    waves: tuple[WaveStatus, ...] = ()
    accepted: AcceptedVersion | None = None
    started: bool = False  # the target has a control schema: something ran
    flags_provider: str = "file"
    flags: tuple[FlagSummary, ...] = ()
    flags_error: str | None = None  # why the flags could not be read; None when they were
    next: NextCommand | None = None  # for the whole playbook; None when everything is done

    @property
    def playbook_changed(self) -> bool:
        """The playbook changed in substance since the version runs work to: the next run needs --replan."""
        return self.accepted is not None and self.accepted.digest != self.digest

    @property
    def holders(self) -> tuple[Holder, ...]:
        return tuple(t.holder for t in self.tenants if t.holder is not None)


def status(
    playbook: Path | str, tenants: Sequence[str] | None = None, *, environ: Environ | None = None
) -> Status:
    """Waves, tenants, lock holders and flags, read from the control schema; and what to run next.

    Read-only: it needs the target's settings (and the flags' for flag states, which are
    otherwise "unavailable"), never a source's, and changes nothing, not even the control
    schema's revision. ``next`` is for the whole playbook, whichever tenants are shown.
    """
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    return _status(loaded, str(playbook), tenants, environ, read_flags=True)


_CONTROL_TABLES = ("step_state", "checkpoints", "approvals", "playbook_versions", "holders")


def _status(
    loaded: LoadedPlaybook,
    path: str,
    tenants: Sequence[str] | None,
    environ: Environ,
    *,
    read_flags: bool,
) -> Status:
    pb = loaded.playbook
    shown = [t.id for t in select_tenants(loaded, tenants)]
    skeleton = build_plan(loaded)
    backfills = {s.key for tp in skeleton.tenants[:1] for s in tp.steps if s.kind == "backfill"}
    store = ControlStore(pb.target.control_schema, pb.name)
    with connect(target_dsn(loaded, environ), what="the target database", var=pb.target.dsn_env) as conn:
        # A control schema older than this version lacks some tables: what is missing is empty.
        found = {
            name
            for (name,) in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = ANY(%s)",
                (pb.target.control_schema, list(_CONTROL_TABLES)),
            )
        }
        records = store.steps(conn) if "step_state" in found else []
        holders = store.holders(conn, [t.id for t in loaded.tenants]) if "holders" in found else {}
        if any(r.status is StepStatus.RUNNING and r.tenant not in holders for r in records):
            # Read again after the locks: a runner may have finished that step and let go in between.
            records = store.steps(conn)
        approvals = store.approvals(conn) if "approvals" in found else {}
        accepted = store.accepted_digest(conn) if "playbook_versions" in found else None
        by_tenant: dict[str, dict[str, StepRecord]] = {}
        for rec in records:
            by_tenant.setdefault(rec.tenant, {})[rec.step_key] = rec
        copying = {  # rows so far of a backfill under way, interrupted or failed: its checkpoints
            rec.tenant for rec in records if rec.step_key in backfills and rec.status is not StepStatus.DONE
        }
        copied = {
            t: sum(c.rows_copied for c in store.checkpoints(conn, t).values())
            for t in copying
            if "checkpoints" in found
        }
    progress = {(r.tenant, r.step_key): r.status for r in records}
    the_plan = build_plan(loaded, progress)
    states = {
        tp.tenant.id: _tenant_status(
            tp, by_tenant.get(tp.tenant.id, {}), holders.get(tp.tenant.id), copied.get(tp.tenant.id)
        )
        for tp in the_plan.tenants
    }
    waves = tuple(
        WaveStatus(
            w.wave.name,
            w.stage.value,
            w.wave.tenants,
            w.finished,
            w.wave.approval,
            approvals.get(w.wave.name),
            w.blocked_by,
        )
        for w in wave_states(the_plan, progress, approved=set(approvals))
    )
    version = AcceptedVersion(*accepted) if accepted else None
    flags_error: str | None = None
    seen = _FlagsRead(pb.flags.provider, (), {})
    if read_flags:
        try:
            seen = _read_flags(loaded, environ, shown)
        except MigrateError as exc:  # Unleash down, settings missing, a broken file: status still works
            flags_error = exc.message
    ordered = [tp.tenant.id for tp in the_plan.tenants]
    return Status(
        pb.name,
        loaded.digest,
        tuple(
            replace(states[t], flags={name: on[t] for name, on in seen.seen.items()})
            for t in ordered
            if t in shown
        ),
        path=path,
        waves=waves,
        accepted=version,
        started="step_state" in found,
        flags_provider=seen.provider,
        flags=seen.summaries,
        flags_error=flags_error,
        next=_next_command(path, loaded.digest, [states[t] for t in ordered], waves, version),
    )


def _tenant_status(
    tp: TenantPlan, recs: Mapping[str, StepRecord], holder: Holder | None, copied: int | None
) -> TenantStatus:
    def state_of(step: PlannedStep) -> StepStatus:
        record = recs.get(step.key)
        return StepStatus.PENDING if record is None else record.status

    real = [s for s in tp.steps if not s.is_point]
    done = [s for s in real if state_of(s) is StepStatus.DONE]
    last = done[-1] if done else None
    current: StepNow | None = None
    rows: int | None = None
    validated: bool | None = None
    figures: Mapping[str, Mapping[str, Any]] = {}
    for s in real:
        status_now = state_of(s)
        if current is None and status_now in (StepStatus.RUNNING, StepStatus.FAILED):
            word = "failed" if status_now is StepStatus.FAILED else "running" if holder else "interrupted"
            current = StepNow(s.key, s.phase, s.step_id, s.kind, word, recs[s.key].error)
        if s.kind == "backfill" and status_now is StepStatus.DONE:
            rows = int(recs[s.key].details.get("rows", 0))
        elif s.kind == "backfill" and status_now in (StepStatus.RUNNING, StepStatus.FAILED):
            rows = copied
        # A failed validation keeps its figures: they are the evidence of what differs.
        if s.kind == "validate" and status_now in (StepStatus.DONE, StepStatus.FAILED):
            details = recs[s.key].details
            if "tables" in details:
                validated = bool(details.get("match"))
                figures = details["tables"]
    reverted = any(r.status is StepStatus.REVERTED for r in recs.values())
    if holder is not None and len(done) < len(real):
        state = "running"
    elif current is not None and current.status != "running":
        state = current.status
    elif len(done) == len(real):
        state = "done"
    elif reverted:
        state = "rolled back"
    elif recs:
        state = "in progress"
    else:
        state = "not started"
    return TenantStatus(
        tenant=tp.tenant.id,
        wave=tp.tenant.wave,
        phase=last.phase if last else None,
        last_step=last.step_id if last else None,
        state=state,
        rows=rows,
        validated=validated,
        error=current.error if current and current.status == "failed" else None,
        figures=figures,
        current=current,
        points=tuple(
            s.step_id.removeprefix("@") for s in tp.steps if s.is_point and state_of(s) is StepStatus.DONE
        ),
        steps_done=len(done),
        steps_total=len(real),
        holder=holder,
    )


def _next_command(
    path: str,
    digest: str,
    tenants: Sequence[TenantStatus],
    waves: Sequence[WaveStatus],
    accepted: AcceptedVersion | None,
) -> NextCommand | None:
    """The one command that moves the playbook on from here, and why; None when all is done."""
    book = shlex.quote(path)
    if accepted is not None and accepted.digest != digest:
        return NextCommand(
            f"migrate run {book} --replan",
            f"the playbook changed since version {accepted.digest[:12]} "
            f"(accepted {accepted.since:%Y-%m-%d %H:%M} by {accepted.actor}); "
            f"review 'migrate plan {book}', then run with --replan to work to version {digest[:12]}",
        )
    for t in tenants:
        if t.state != "failed" or t.current is None:
            continue
        rerun = f"migrate run {book} --tenant {shlex.quote(t.tenant)}"
        differ = [name for name, f in sorted(t.figures.items()) if not f.get("match")]
        if t.current.kind == "validate" and differ:
            return NextCommand(
                f"migrate diff {book} --tenant {shlex.quote(t.tenant)} --table {shlex.quote(differ[0])}",
                f"tenant {t.tenant} failed validation: {mismatch_summary(t.figures)}; find the keys "
                f"that differ, fix the cause, then '{rerun}'",
            )
        return NextCommand(
            rerun,
            f"tenant {t.tenant} failed at {t.current.key}: {t.current.error or 'no error recorded'}; "
            "fix the cause, then re-run it (done steps are skipped)",
        )
    by_id = {t.tenant: t for t in tenants}
    for wave in waves:
        if wave.stage == "done":
            continue
        if wave.stage != "open":  # the first wave not done is either open or waits for approval
            return NextCommand(
                f"migrate approve {book} --wave {shlex.quote(wave.name)}",
                f"wave {wave.name} waits for approval before any of its tenants starts",
            )
        todo = [t for t in wave.tenants if t not in wave.finished]
        free = [t for t in todo if by_id[t].holder is None]
        if not free:
            held = "; ".join(f"{t} by {h.describe()}" for t in todo if (h := by_id[t].holder))
            return NextCommand(
                f"migrate status {book}",
                f"wave {wave.name} is under way ({held}); check again when it finishes",
            )
        notes = [
            f"{t} was interrupted at {c.key} (its runner is gone; the run redoes it)"
            for t in free
            if (c := by_id[t].current) and c.status == "interrupted"
        ] + [
            f"{t} was rolled back (the run re-applies what was reverted)"
            for t in free
            if by_id[t].state == "rolled back"
        ]
        only = "".join(f" --tenant {shlex.quote(t)}" for t in free) if len(free) < len(todo) else ""
        first = "nothing has run yet; " if all(by_id[t].state == "not started" for t in by_id) else ""
        return NextCommand(
            f"migrate run {book}{only}",
            f"{first}wave {wave.name} is open: {', '.join(free)} "
            f"{'has' if len(free) == 1 else 'have'} steps to run" + "".join(f"; {n}" for n in notes),
        )
    return None


def _rollback_plan(
    loaded: LoadedPlaybook, tenants: str | Sequence[str] | None, wave: str | None, all_tenants: bool
) -> tuple[Plan, str]:
    """The tenants a rollback names — ``--tenant`` (repeatable), ``--wave`` or ``--all-tenants``,
    exactly one kind — as a plan, and how the command line said it (for the run and the ledger)."""
    named = [tenants] if isinstance(tenants, str) else list(tenants or ())
    given = [
        option
        for option, said in (
            ("--tenant", bool(named)),
            ("--wave", wave is not None),
            ("--all-tenants", all_tenants),
        )
        if said
    ]
    if len(given) != 1:
        raise ArgumentError(
            "name the tenants to roll back once: --tenant T (repeat it for more), --wave W or --all-tenants"
            if not given
            else f"{' and '.join(given)} exclude each other: name the tenants to roll back one way",
            where="--tenant" if not given else given[1],
            hint="e.g. migrate rollback PLAYBOOK --tenant acme --to pre-cutover",
        )
    the_plan = build_plan(loaded, tenants=named or None, wave=wave)
    said = (
        " ".join(f"--tenant {shlex.quote(t)}" for t in named)
        if named
        else (f"--wave {shlex.quote(wave)}" if wave is not None else "--all-tenants")
    )
    return the_plan, said


def rollback(
    playbook: Path | str,
    tenants: str | Sequence[str] | None,
    to: str,
    *,
    wave: str | None = None,
    all_tenants: bool = False,
    discard_writes_since_cutover: bool = False,
    started: float | None = None,
    actor: str | None = None,
    environ: Environ | None = None,
) -> RollbackResult:
    """Revert every step after rollback point ``to``: every selected tenant's flags first, then data.

    The tenants are ``tenants`` (one id or several), the wave ``wave``, or all of them
    (``all_tenants``): exactly one. A rollback that would undo a cut-over is refused
    (ArgumentError) unless ``discard_writes_since_cutover``; a tenant another runner holds
    refuses the whole rollback (TenantLocked) before anything changes. ``started``
    (``time.monotonic()`` at the command's start) is where the result's times count from.
    """
    started = time.monotonic() if started is None else started
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    the_plan, said = _rollback_plan(loaded, tenants, wave, all_tenants)
    env = environment(loaded, environ, actor)
    _prepare(loaded, environ)
    command = f"rollback --to {shlex.quote(to)} {said}" + (
        " --discard-writes-since-cutover" if discard_writes_since_cutover else ""
    )
    return engine_rollback(
        env,
        the_plan.tenants,
        to,
        discard_writes_since_cutover=discard_writes_since_cutover,
        started=started,
        command=command,
    )


def rollback_preview(
    playbook: Path | str,
    tenants: str | Sequence[str] | None,
    to: str,
    *,
    wave: str | None = None,
    all_tenants: bool = False,
    discard_writes_since_cutover: bool = False,
    environ: Environ | None = None,
) -> RollbackPreview:
    """What ``rollback`` with the same arguments would revert, read without taking any lock.

    Refuses as ``rollback`` would (ArgumentError) when it would undo a cut-over and
    ``discard_writes_since_cutover`` is not given, so nobody is asked to confirm a refusal.
    """
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    the_plan, _said = _rollback_plan(loaded, tenants, wave, all_tenants)
    env = environment(loaded, environ, with_flags=False)
    with env.connect_target() as conn:
        records = (
            env.control.steps(conn, [tp.tenant.id for tp in the_plan.tenants])
            if _control_exists(conn, loaded.playbook.target.control_schema)
            else []
        )
    preview = what_to_revert(the_plan.tenants, to, records)
    if not discard_writes_since_cutover:
        refuse_across_cutover(preview)
    return preview


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


@dataclass(frozen=True)
class _FlagsRead:
    provider: str
    summaries: tuple[FlagSummary, ...]
    seen: Mapping[str, Mapping[str, bool]]  # flag -> tenant -> on, as the application sees it


def _read_flags(loaded: LoadedPlaybook, environ: Environ, tenants: Sequence[str]) -> _FlagsRead:
    """The playbook's flags as their provider holds them, and per tenant as the application sees them.

    Read-only (``status`` and ``flags status``): a missing flag file means no tenant was
    flipped yet, so all are off. Raises the provider's MigrateError when it cannot be read.
    """
    names = _step_flags(loaded)
    seen: dict[str, dict[str, bool]] = {}
    summaries: list[FlagSummary] = []
    if names and isinstance(loaded.playbook.flags, UnleashFlags):
        provider = unleash_provider(loaded, environ)
        try:
            for name in names:
                info = provider.describe(name)
                seen[name] = provider.evaluate(name, tenants)
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
    elif names:
        file_provider = _file_provider(loaded, environ, create=False)
        for name in names:
            if file_provider is None:
                seen[name] = dict.fromkeys(tenants, False)
                summaries.append(FlagSummary(name, "no flag file yet", None, (), None))
                continue
            seen[name] = file_provider.evaluate(name, tenants)
            listed = tuple(file_provider.tenants(name))
            summaries.append(FlagSummary(name, str(file_provider.path), None, listed, None))
    return _FlagsRead(loaded.playbook.flags.provider, tuple(summaries), seen)


def flags_status(
    playbook: Path | str, tenants: Sequence[str] | None = None, *, environ: Environ | None = None
) -> FlagsStatus:
    """Per tenant, each flag as the application sees it, next to the tenant's phase."""
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    where = _status(loaded, str(playbook), tenants, environ, read_flags=False)
    read = _read_flags(loaded, environ, [t.tenant for t in where.tenants])
    rows = tuple(
        TenantFlags(
            t.tenant, t.wave, t.phase, t.state, {name: read.seen[name][t.tenant] for name in read.seen}
        )
        for t in where.tenants
    )
    return FlagsStatus(where.playbook, where.digest, read.provider, read.summaries, rows)


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
