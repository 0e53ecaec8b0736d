"""Real `migrate run` processes to kill, and what to check after: no product hooks, only PostgreSQL.

A runner is started with its output in files; the test watches its checkpoints in the control
schema, kills it (or signals it) at the moment it wants, waits for the server to end the dead
process's sessions, and checks that only whole chunks stayed behind.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from world import ROOT, TABLES, World


@dataclass
class Runner:
    """A real `migrate run` process; its output goes to files, since a full pipe would stall it."""

    proc: subprocess.Popen[bytes]
    logs: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> tuple[str, str]:
        """(stdout, stderr), once it has finished."""
        self.proc.wait(timeout=120)
        return self.logs.with_suffix(".out").read_text(), self.logs.with_suffix(".err").read_text()


def start_run(world: World, book: Path, *tenants: str) -> Runner:
    """A real `migrate run BOOK --tenant …` on the world, its logs next to the playbook."""
    args = [arg for t in tenants for arg in ("--tenant", t)]
    logs = book.parent / f"run-{time.monotonic_ns()}"
    with open(logs.with_suffix(".out"), "wb") as out, open(logs.with_suffix(".err"), "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "migrate", "run", str(book), *args],
            cwd=ROOT,
            env={**os.environ, **world.environ, "MIGRATE_LOG_LEVEL": "info"},
            stdout=out,
            stderr=err,
        )
    return Runner(proc, logs)


def chunked_playbook(
    tmp_path: Path, tenants: tuple[str, ...], chunk_rows: int, *, keyless: bool = False
) -> Path:
    """The demo's tables (and a keyless table with a declared, non-unique key), small chunks, validation."""
    tables = ", ".join(TABLES) + (", {name: audit_log, key: [at, seq]}" if keyless else "")
    path = tmp_path / "chunked.yaml"
    path.write_text(
        "version: 1\nname: chunked\n"
        "target: {dsn_env: MIGRATE_TARGET_DSN, schema: app}\n"
        "source: {dsn_template_env: MIGRATE_SOURCE_DSN_TEMPLATE, schema: public}\n"
        f"tenants: [{', '.join('{id: ' + t + '}' for t in tenants)}]\n"
        f"tables: [{tables}]\n"
        "phases:\n  - name: copy\n    steps:\n      - kind: schema\n"
        f"      - {{kind: backfill, chunk_rows: {chunk_rows}}}\n      - kind: validate\n"
    )
    return path


def application_name(pid: int) -> str:
    """The application_name a runner's sessions carry (api.connect): host and pid."""
    return f"migrate {socket.gethostname()}:{pid}"


def sessions_gone(world: World, pid: int, within: float = 10.0) -> bool:
    """Wait until the server has ended every session of process ``pid``; False if one outlived it.

    A runner's sessions set client_connection_check_interval, so the server ends them within a
    second of the process's death; until then one may still commit what it was sent.
    """
    deadline = time.monotonic() + within
    with psycopg.connect(world.admin_dsn, autocommit=True) as mon:
        while time.monotonic() < deadline:
            row = mon.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application_name(pid),)
            ).fetchone()
            if row == (0,):
                return True
            time.sleep(0.01)
    return False


def checkpoints(world: World, tenant: str) -> dict[str, tuple[int, bool, list[str] | None]]:
    """Each table's (rows copied, done, last key) for the tenant; empty before the control schema."""
    try:
        with world.target() as conn:
            rows = conn.execute(
                "SELECT table_name, rows_copied, done, last_key FROM migrate_control.checkpoints"
                " WHERE tenant = %s",
                (tenant,),
            ).fetchall()
    except psycopg.Error:  # the control schema may not exist yet
        return {}
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def assert_no_gap_no_duplicate(world: World, tenant: str, tables: tuple[str, ...]) -> None:
    """Each table holds exactly the source rows up to its checkpoint's last key, and nothing else."""
    marks = checkpoints(world, tenant)
    with world.target() as dst, world.source(tenant) as src:
        for table in tables:
            held = dst.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(sql.Identifier("app", table)),
                (tenant,),
            ).fetchone()
            rows, _done, last = marks.get(table, (0, False, None))
            assert held == (rows,), f"{table}: {held} rows in the target, checkpoint says {rows}"
            if last is None:
                continue
            key = (
                sql.SQL("(at, seq) <= ({}::timestamptz, {}::int)")
                if table == "audit_log"
                else sql.SQL("id <= {}::bigint")
            )
            upto = src.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE ").format(sql.Identifier(table))
                + key.format(*[sql.Literal(v) for v in last])
            ).fetchone()
            assert upto == (rows,), f"{table}: {upto} source rows up to {last}, {rows} copied"
