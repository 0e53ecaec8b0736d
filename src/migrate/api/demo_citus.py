"""``migrate demo --citus DSN``: the demo's three tenants into a real Citus cluster.

The sources are the demo's (three customer databases on an embedded PostgreSQL); the
target is a new database made on every node of the Citus cluster the admin DSN reaches
(a superuser on the coordinator; the workers must take the same credentials). It runs
``playbooks/citus.yaml`` (offline: the online path is refused on Citus), then shows what
the issue asks a user to see: the tables in ``citus_tables``, verify, a rollback to each
point and the run that puts the tenant back, and ``isolation-check`` as an application
role whose tenant setting reaches the workers. Everything it made — the database on
every node, the role, the embedded server — is removed at the end, whatever happens.

A cluster for it: ``python tests/citus_server.py start --state DIR`` (builds Citus 13.2.2
from the vendored source once, as root) prints the DSN.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from migrate import api
from migrate.adapters import citus as cluster
from migrate.adapters.embedded import start_server, stop_server
from migrate.api.demo import TENANTS, create_source
from migrate.api.settings import connect
from migrate.catalog.citus import PROPAGATE
from migrate.checks.isolation import IsolationReport
from migrate.engine.rollback import RollbackResult
from migrate.engine.run import RunResult
from migrate.errors import SettingsError

_CITUS_TABLES = (
    "SELECT table_name::text, citus_table_type, distribution_column, colocation_id, shard_count"
    " FROM citus_tables ORDER BY 1"
)


@dataclass(frozen=True)
class CitusDemoResult:
    playbook: Path
    workers: int
    run: RunResult
    tables: list[tuple[str, str, str, int, int]]  # citus_tables: name, type, column, colocation, shards
    control_local: bool  # no table of the control schema is distributed
    verify: api.VerifyResult
    rollbacks: list[RollbackResult]  # acme to each point, newest first
    rerun: RunResult
    verify_after: api.VerifyResult
    isolation: IsolationReport
    status: api.Status
    ledger: api.LedgerReport
    seconds: float

    @property
    def ok(self) -> bool:
        return (
            self.run.ok
            and self.rerun.ok
            and self.control_local
            and self.verify.match
            and self.verify_after.match
            and not any(r.unfinished for r in self.rollbacks)
            and self.isolation.ok
        )


def citus_playbook() -> Path:
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = base / "playbooks" / "citus.yaml"
        if candidate.is_file():
            return candidate
    raise SettingsError(
        "playbooks/citus.yaml not found",
        hint="run 'migrate demo --citus' from a clone of tenant-migrate (pip install -e .)",
    )


def run_citus_demo(admin_dsn: str, *, on_stage: Callable[[str], None] | None = None) -> CitusDemoResult:
    """Run the Citus demo end to end against the cluster ``admin_dsn`` reaches; remove what it made."""
    say = on_stage or (lambda _msg: None)
    started = time.monotonic()
    playbook = citus_playbook()
    with connect(admin_dsn, what="the Citus coordinator", var="--citus") as conn:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'citus'").fetchone()
    if row is None:
        raise SettingsError(
            "the database --citus names has no citus extension: it is not a Citus coordinator's",
            where="--citus",
            hint="give a superuser DSN to the coordinator's database where CREATE EXTENSION citus ran "
            "(python tests/citus_server.py start --state DIR prints one)",
        )
    suffix = uuid.uuid4().hex[:8]
    dbname, role = f"tm_demo_citus_{suffix}", f"tm_demo_app_{suffix}"
    root = Path(tempfile.mkdtemp(prefix="tenant-migrate-demo-citus-"))
    root.chmod(0o755)  # the embedded server runs as an unprivileged account when we are root
    made_db = made_role = False
    try:
        say("starting PostgreSQL (embedded) for the 3 customer databases")
        server = start_server(root / "pg")
        admin = server.dsn("postgres")
        for tenant, scale in TENANTS.items():
            create_source(admin, f"src_{tenant}", tenant, scale)
        nodes = cluster.workers(admin_dsn)
        say(f"creating database {dbname} on the Citus coordinator and its {len(nodes)} workers")
        made_db = True
        target = cluster.create_database(admin_dsn, dbname)
        environ = {
            "MIGRATE_TARGET_DSN": target,
            "MIGRATE_SOURCE_DSN_TEMPLATE": f"postgresql://postgres@127.0.0.1:{server.port}/src_{{tenant}}",
            "MIGRATE_FLAG_FILE": str(root / "flags.json"),
        }
        say(f"running {playbook.name}: tables distributed on tenant_id, copied through the coordinator")
        result = api.run(playbook, environ=environ, actor="demo")
        with psycopg.connect(target, autocommit=True) as conn:
            tables = [tuple(r) for r in conn.execute(_CITUS_TABLES)]
            control = conn.execute(
                "SELECT count(*) FROM citus_tables WHERE table_name::text LIKE 'migrate\\_control.%'"
            ).fetchone()
        verified = api.verify(playbook, environ=environ)
        say("rolling acme back to each point, then running again")
        rollbacks = []
        for point in ("pre-cutover", "pre-copy"):  # a discarded cut-over reverts the copy too: run between
            rollbacks.append(
                api.rollback(playbook, ["acme"], point, discard_writes_since_cutover=True, environ=environ)
            )
            rerun = api.run(playbook, environ=environ, actor="demo")
        verified_after = api.verify(playbook, environ=environ)
        say(
            f"isolation-check as application role {role} (SET LOCAL app.tenant_id, propagated to the workers)"
        )
        made_role = True
        with psycopg.connect(target, autocommit=True) as conn:
            who = sql.Identifier(role)
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(who))
            # What the generated set-up does (schema generate --citus): grants, and the tenant setting
            # that reaches the workers.
            conn.execute(sql.SQL("ALTER ROLE {} SET {} = 'local'").format(who, sql.SQL(PROPAGATE)))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA app TO {}").format(who))
            conn.execute(
                sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA app TO {}").format(who)
            )
        isolation = api.isolation_check(playbook, app_role=role, environ=environ)
        status = api.status(playbook, environ=environ)
        ledger = api.ledger(playbook, environ=environ)
        return CitusDemoResult(
            playbook,
            len(nodes),
            result,
            tables,
            control == (0,),
            verified,
            rollbacks,
            rerun,
            verified_after,
            isolation,
            status,
            ledger,
            time.monotonic() - started,
        )
    finally:
        if made_db:
            cluster.drop_database(admin_dsn, dbname)
        if made_role:
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        stop_server(root / "pg")
        shutil.rmtree(root, ignore_errors=True)
