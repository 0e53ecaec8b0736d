"""Settings and wiring: environment variables to DSNs, connections, flag providers, the Environment.

Every command reads its settings from the ``environ`` mapping it is given
(``os.environ`` by default). Nothing here prints or exits; nothing here runs
before the command's arguments are checked (see ``migrate.api.runs``).

==============================  =================================================
``target.dsn_env``              the shared target database (demo: MIGRATE_TARGET_DSN);
                                with ``targets:``, one per region (``targets.eu.dsn_env`` …)
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psycopg

from migrate.engine import residency
from migrate.engine.retry import RetryPolicy
from migrate.engine.session import Environment, Regions
from migrate.errors import (
    ArgumentError,
    PlaybookError,
    SettingsError,
    Unreachable,
)
from migrate.log import redact
from migrate.plan import StepStatus
from migrate.playbook import LoadedPlaybook, Tenant
from migrate.playbook.model import StepBase, Target, UnleashFlags
from migrate.ports import FlagChange, FlagProvider, FlagSnapshot, FlagTarget

if TYPE_CHECKING:
    from migrate.adapters.flagfile import FileFlagProvider
    from migrate.adapters.unleash import UnleashFlagProvider
    from migrate.catalog.ddl import TenantContext

Environ = Mapping[str, str]


def require_env(loaded: LoadedPlaybook, environ: Environ, var: str, *loc: str | int, what: str) -> str:
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


# Server-sent SQLSTATEs of a server that is going away or coming back (not a wrong setting).
_PASSING_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})
# libpq's own words when no server answered at all (these carry no SQLSTATE).
_NO_ANSWER = re.compile(
    r"(?i)connection refused|timeout expired|timed out|no route to host|network is unreachable"
    r"|server closed the connection|connection reset|no such file or directory"
    r"|the database system is (?:starting up|shutting down|in recovery mode|not yet accepting)"
)


# A server that answered but has no connection slot for us (SQLSTATE 53300; libpq reports no
# SQLSTATE for a failed connection, so its words): the settings are right.
_NO_SLOT = re.compile(r"(?i)too many clients|too many connections|remaining connection slots are reserved")


def does_not_answer(exc: psycopg.OperationalError) -> bool:
    """Whether a failed connection means the server did not answer (not that a setting is wrong)."""
    if exc.sqlstate is not None:
        return exc.sqlstate in _PASSING_STATES
    return bool(_NO_ANSWER.search(str(exc)))


def server_of(dsn: str) -> str:
    """host:port/dbname of a DSN — never its user's password — to say which server refused."""
    try:
        given = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(an unreadable connection string)"
    host = str(given.get("host") or given.get("hostaddr") or "localhost")
    port = str(given.get("port") or "5432")
    dbname = str(given.get("dbname") or given.get("user") or "")
    return f"{host}:{port}/{dbname}"


def _reason(exc: psycopg.OperationalError) -> str:
    """The server's (or libpq's) own words, the password masked; the last line that says something."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    # libpq prefixes "connection to server at … failed:" and puts the server's FATAL after it.
    fatal = [ln for ln in lines if ln.startswith(("FATAL:", "ERROR:"))]
    return redact(fatal[0] if fatal else lines[0])


def connect(dsn: str, *, what: str, var: str, replication: bool = False) -> psycopg.Connection[Any]:
    """An autocommit connection, or a SettingsError that never shows the password.

    ``replication``: a ``replication=database`` (walsender) connection, which may create a
    replication slot and export its snapshot.
    """
    try:
        given = psycopg.conninfo.conninfo_to_dict(dsn)
        extra: dict[str, str] = {k: v for k, v in _KEEPALIVES.items() if k not in given}
        if replication:
            extra["replication"] = "database"
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
        reason = _reason(exc)
        server = server_of(dsn)
        if exc.sqlstate == "53300" or _NO_SLOT.search(reason):
            raise Unreachable(
                f"{what} at {server} refused the connection: its connection slots are all taken ({reason})",
                where=var,
                hint="the settings are right; the server's max_connections is used up (by this command "
                "too): lower --max-connections or source.max_connections (schema generate), --jobs "
                "(run), or raise max_connections on that server, then run the same command again",
            ) from exc
        if does_not_answer(exc):
            raise Unreachable(
                f"{what} at {server} does not answer: {reason}",
                where=var,
                hint="the server is down, restarting or out of reach (the settings may well be right); "
                "nothing was changed by this attempt: run the same command again once it answers",
            ) from exc
        raise SettingsError(
            f"cannot connect to {what} at {server}: {reason}",
            where=var,
            hint=f"check {var}: its host, port, database, user and password",
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


def the_target(loaded: LoadedPlaybook, name: str | None = None) -> Target:
    """The target named ``name`` (its region), or the playbook's only one; an ArgumentError otherwise."""
    targets = loaded.playbook.targets_by_name()
    if name is None and len(targets) == 1:
        return next(iter(targets.values()))
    if name in targets:
        return targets[name]
    raise ArgumentError(
        f"playbook {loaded.path} has a target per region: {', '.join(targets)}"
        if name is None
        else f"playbook {loaded.path} has no target for region '{name}'",
        where="--region",
        hint=f"name one with --region: {', '.join(targets)}",
    )


def target_dsn(loaded: LoadedPlaybook, environ: Environ, target: Target | None = None) -> str:
    target = target or the_target(loaded)
    var = target.dsn_env
    regional = loaded.playbook.targets is not None
    loc = ("targets", target.name, "dsn_env") if regional else ("target", "dsn_env")
    what = "the shared target database" + (f" of region {target.region}" if target.region else "")
    return require_env(loaded, environ, var, *loc, what=what)


def connect_target(
    loaded: LoadedPlaybook, environ: Environ, target: Target | None = None
) -> psycopg.Connection[Any]:
    """An autocommit connection to a target (the playbook's only one by default)."""
    target = target or the_target(loaded)
    what = "the target database" + (f" of region {target.region}" if target.region else "")
    return connect(target_dsn(loaded, environ, target), what=what, var=target.dsn_env)


def source_dsn(loaded: LoadedPlaybook, tenant: Tenant, environ: Environ) -> tuple[str, str]:
    """(dsn, variable) of one tenant's source database."""
    if tenant.source_dsn_env:
        var = tenant.source_dsn_env
        return require_env(loaded, environ, var, what=f"tenant {tenant.id}'s source database"), var
    var = loaded.playbook.source.dsn_template_env or ""
    template = require_env(loaded, environ, var, "source", "dsn_template_env", what="the source DSN template")
    if "{tenant}" not in template:
        raise SettingsError(
            f"{var} has no '{{tenant}}' placeholder, so every tenant would read the same database",
            where=loaded.where("source", "dsn_template_env"),
            hint=f"export {var}='postgresql://USER@HOST:5432/{{tenant}}'",
        )
    return template.replace("{tenant}", tenant.id), var


class _NoFlags:
    """Stands in when a playbook has no flag step: any use is a bug, said plainly."""

    def target(self) -> FlagTarget:
        raise SettingsError("this playbook configures no flags")

    def is_enabled(self, flag: str, tenant: str) -> bool:
        raise SettingsError("this playbook configures no flags")

    def set_enabled(self, flag: str, tenant: str, enabled: bool) -> FlagChange:
        raise SettingsError("this playbook configures no flags")

    def snapshot(self, flag: str, tenant: str) -> FlagSnapshot:
        raise SettingsError("this playbook configures no flags")

    def restore(self, snapshot: FlagSnapshot) -> FlagChange:
        raise SettingsError("this playbook configures no flags")


def step_flags(loaded: LoadedPlaybook) -> list[str]:
    """The flags the playbook's steps flip, in order, each once."""
    names = [s.flips for p in loaded.playbook.phases for s in p.steps if isinstance(s, StepBase) and s.flips]
    return list(dict.fromkeys(n for n in names if n))


def unleash_provider(loaded: LoadedPlaybook, environ: Environ) -> UnleashFlagProvider:
    """The provider of a ``provider: unleash`` playbook, its writers locked on the target."""
    from pydantic import SecretStr

    from migrate.adapters.unleash import UnleashFlagProvider, UnleashSettings, advisory_lock

    cfg = loaded.playbook.flags
    assert isinstance(cfg, UnleashFlags)
    url = require_env(loaded, environ, cfg.url_env, "flags", "url_env", what="the Unleash server's URL")
    if not url.startswith(("http://", "https://")):
        raise SettingsError(
            f"{cfg.url_env} must be an http(s) URL, e.g. https://unleash.example.com",
            where=loaded.where("flags", "url_env"),
            hint=f"export {cfg.url_env}=https://…",
        )
    admin = require_env(
        loaded, environ, cfg.admin_token_env, "flags", "admin_token_env", what="an Unleash admin token"
    )
    client = require_env(
        loaded, environ, cfg.client_token_env, "flags", "client_token_env", what="an Unleash client token"
    )
    environment = cfg.environment or require_env(
        loaded, environ, cfg.environment_env, "flags", "environment_env", what="the Unleash environment"
    )
    # Writers of one flag hold an advisory lock on the target database: the one place every
    # runner of this playbook reaches (a lock in this process would not stop another runner).
    # With a target per region, the first one written: the flags are one for all regions.
    lock_target = next(iter(loaded.playbook.targets_by_name().values()))
    dsn, var = target_dsn(loaded, environ, lock_target), lock_target.dsn_env
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


def flag_file_provider(loaded: LoadedPlaybook, environ: Environ, *, create: bool) -> FileFlagProvider | None:
    """The flag file's provider; without ``create``, None while the file does not exist."""
    from migrate.adapters.flagfile import FileFlagProvider  # the SDK import costs 0.25 s

    cfg = loaded.playbook.flags
    assert not isinstance(cfg, UnleashFlags)
    path = Path(require_env(loaded, environ, cfg.file_env, "flags", "file_env", what="the flag state file"))
    if not create:
        return FileFlagProvider(path) if path.exists() else None
    definitions = loaded.resolve(cfg.definitions) if cfg.definitions else None
    return FileFlagProvider(path, definitions=definitions)


FlagFileUse = Literal["create", "extend", "read"]
"""What a command may do to the flag file: create it (``flags sync``, a first run), add missing
flags to it (a later run), or only read and flip it (a rehearsal, a rollback) — never create it."""


def flag_provider(loaded: LoadedPlaybook, environ: Environ, file_use: FlagFileUse = "read") -> FlagProvider:
    flags = step_flags(loaded)
    if not flags:
        return _NoFlags()
    if isinstance(loaded.playbook.flags, UnleashFlags):
        provider = unleash_provider(loaded, environ)
        provider.check(flags)  # a wrong token or environment, or a flag not synced: before any step
        return provider
    if file_use == "create":
        created = flag_file_provider(loaded, environ, create=True)
        assert created is not None
        return created
    existing = flag_file_provider(loaded, environ, create=False)
    if existing is None:
        from migrate.adapters.flagfile import MissingFlagFile

        return MissingFlagFile(flag_file_path(loaded, environ), flags)
    if file_use == "extend":
        extended = flag_file_provider(loaded, environ, create=True)  # the file exists: adds flags only
        assert extended is not None
        return extended
    return existing


def flag_file_path(loaded: LoadedPlaybook, environ: Environ) -> Path:
    cfg = loaded.playbook.flags
    assert not isinstance(cfg, UnleashFlags)
    return Path(require_env(loaded, environ, cfg.file_env, "flags", "file_env", what="the flag state file"))


def flag_target(loaded: LoadedPlaybook, environ: Environ) -> FlagTarget | None:
    """Where the flags of the current settings are read by the application; None without flag steps.

    Computed from the settings alone: nothing is created, no server is asked.
    """
    if not step_flags(loaded):
        return None
    cfg = loaded.playbook.flags
    if isinstance(cfg, UnleashFlags):
        from migrate.adapters.unleash import unleash_target

        url = require_env(loaded, environ, cfg.url_env, "flags", "url_env", what="the Unleash server's URL")
        environment = cfg.environment or require_env(
            loaded, environ, cfg.environment_env, "flags", "environment_env", what="the Unleash environment"
        )
        return unleash_target(url, cfg.project, environment)
    from migrate.adapters.flagfile import file_target

    return file_target(flag_file_path(loaded, environ))


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


def connect_replication(loaded: LoadedPlaybook, tenant: Tenant, environ: Environ) -> psycopg.Connection[Any]:
    """A ``replication=database`` connection to the tenant's source: its slot and exported snapshot."""
    src, src_var = source_dsn(loaded, tenant, environ)
    return connect(
        src, what=f"tenant {tenant.id}'s source database (replication)", var=src_var, replication=True
    )


RETRY_VAR = "MIGRATE_RETRY_SECONDS"


def retry_policy(environ: Environ) -> RetryPolicy:
    """How long a passing outage is retried: ``MIGRATE_RETRY_SECONDS`` (default 60)."""
    raw = environ.get(RETRY_VAR, "").strip()
    if not raw:
        return RetryPolicy()
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 86_400:
        raise SettingsError(
            f"{RETRY_VAR}={raw!r} is not a number of seconds",
            where=RETRY_VAR,
            hint=f"export {RETRY_VAR}=60 (0 tries once; the default, 60, outlasts a database restart)",
        )
    return RetryPolicy(seconds=seconds)


def environment(
    loaded: LoadedPlaybook,
    environ: Environ,
    actor: str | None = None,
    *,
    region: str | None = None,
    with_flags: bool = True,
    with_sources: bool = True,
    flag_file: FlagFileUse = "read",
) -> Environment:
    """The Environment of one target: the playbook's only one, or the target of ``region``."""
    target = the_target(loaded, region)
    return environments(
        loaded,
        environ,
        actor,
        need=[target.name],
        with_flags=with_flags,
        with_sources=with_sources,
        flag_file=flag_file,
    ).envs[target.name]


def environments(
    loaded: LoadedPlaybook,
    environ: Environ,
    actor: str | None = None,
    *,
    need: Iterable[str] | None = None,
    tenants: Iterable[Tenant] | None = None,
    with_flags: bool = True,
    with_sources: bool = True,
    flag_file: FlagFileUse = "read",
) -> Regions:
    """The Environment of every target, by name (its region). The DSN variables of the targets in
    ``need`` (all by default) must be set now; another target's is read when it is first connected.
    ``tenants`` (all by default) are those whose source variables must be set."""
    targets = loaded.playbook.targets_by_name()
    for name in targets if need is None else need:
        target_dsn(loaded, environ, targets[name])  # fail on a missing variable before any work starts
    if with_sources:
        for tenant in loaded.tenants if tenants is None else tenants:
            source_dsn(loaded, tenant, environ)
    flags = flag_provider(loaded, environ, flag_file) if with_flags else _NoFlags()
    who = actor or environ.get("MIGRATE_ACTOR") or getpass.getuser()
    retry = retry_policy(environ)

    def opener(target: Target) -> Callable[[], psycopg.Connection[Any]]:
        return lambda: connect_target(loaded, environ, target)

    return Regions(
        {
            name: Environment(
                loaded=loaded,
                target=target,
                connect_target=opener(target),
                connect_source=lambda tenant: connect_source(loaded, tenant, environ),
                connect_replication=lambda tenant: connect_replication(loaded, tenant, environ),
                flags=flags,
                actor=who,
                host=socket.gethostname(),
                pid=os.getpid(),
                retry=retry,
            )
            for name, target in targets.items()
        }
    )


def prepare_control(loaded: LoadedPlaybook, environ: Environ, names: Iterable[str] | None = None) -> None:
    """Create or upgrade the control schema (alembic) of the targets ``names`` (every one by default),
    translating connection failures."""
    from migrate.control import schema as control_schema  # alembic + SQLAlchemy: 0.3 s to import

    targets = loaded.playbook.targets_by_name()
    for name in targets if names is None else names:
        target = targets[name]
        connect_target(loaded, environ, target).close()
        control_schema.upgrade(target_dsn(loaded, environ, target), target.control_schema)


def check_residency(regions: Regions, tenants: Iterable[Tenant]) -> None:
    """Every tenant a command will write to its target may go there (engine/residency.py): checked
    before anything is written, even the control schema. ResidencyRefused (exit 2) otherwise."""
    for name, theirs in regions.holding(tenants).items():
        env = regions.envs[name]
        with env.connect_target() as conn:
            residency.preflight(env.target, theirs, conn, env.loaded.path)


def progress_of(regions: Regions, tenants: Sequence[str] | None) -> dict[tuple[str, str], StepStatus]:
    """The step states of ``tenants`` (all by default), each read from its own target."""
    by_id = {t.id: t for t in regions.loaded.tenants}
    chosen = [by_id[t] for t in tenants] if tenants else list(by_id.values())
    progress: dict[tuple[str, str], StepStatus] = {}
    for name, theirs in regions.holding(chosen).items():
        env = regions.envs[name]
        with env.connect_target() as conn:
            if control_exists(conn, env.target.control_schema):
                progress.update(env.control.progress(conn, [t.id for t in theirs]))
    return progress


def control_exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}".step_state',)).fetchone()
    return bool(row and row[0])


def tenant_context_option(value: str | None) -> TenantContext:
    """``--tenant-context`` (or ``target.tenant_context``): session (the default) or transaction."""
    if value in (None, "session"):
        return "session"
    if value == "transaction":
        return "transaction"
    raise ArgumentError(
        f"unknown tenant context {value!r}", where="--tenant-context", hint="session or transaction"
    )


def identifier_option(value: str, option: str) -> str:
    from migrate.names import check_identifier

    try:
        return check_identifier(value)
    except ValueError as exc:
        raise ArgumentError(str(exc), where=option) from None


def check_output(path: Path, option: str) -> Path:
    """An output file's folder exists and takes files, and the path is no folder: checked before I/O."""
    folder = path.parent
    if path.is_dir():
        raise ArgumentError(
            f"{option} {path} is a folder", where=option, hint=f"name a file, e.g. {path / 'out.json'}"
        )
    if not folder.is_dir():
        raise ArgumentError(
            f"{option} {path}: the folder {folder} does not exist",
            where=option,
            hint=f"create it first (mkdir -p {shlex.quote(str(folder))}) or name another path",
        )
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ArgumentError(
            f"{option} {path}: {'the file' if path.exists() else f'the folder {folder}'} is not writable",
            where=option,
            hint="name a path you may write to",
        )
    return path


def check_flags_defined(loaded: LoadedPlaybook) -> None:
    """Every flag a flag step names is in the playbook's flag definitions, when it names some.

    Read from the definitions file only: no flag provider is asked, nothing is written.
    """
    from migrate.adapters.flagfile import read_definitions

    cfg = loaded.playbook.flags
    if not cfg.definitions:
        return
    path = loaded.resolve(cfg.definitions)
    if not path.is_file():
        raise PlaybookError(
            f"the flag definitions file {path} does not exist",
            where=loaded.where("flags", "definitions"),
            hint="write the path of a client-features JSON file, relative to the playbook "
            "(see flags/README.md)",
        )
    defined = {d.name for d in read_definitions(path)}
    for p, phase in enumerate(loaded.playbook.phases):
        for s, step in enumerate(phase.steps):
            if isinstance(step, StepBase) and step.flips and step.flips not in defined:
                raise PlaybookError(
                    f"flag '{step.flips}' is not in the flag definitions {cfg.definitions}",
                    where=loaded.where("phases", p, "steps", s, "flag"),
                    hint=f"its flags are: {', '.join(sorted(defined)) or 'none'}; "
                    "add the flag there, or name one of those",
                )
