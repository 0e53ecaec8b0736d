"""A real database restart in the middle of a real `migrate run`, on a server of our own: retried for a
bounded time with a line per attempt, exact counts after it; a longer outage gives up saying the
server was unreachable (exit 1), never that the settings are wrong."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from kill import chunked_playbook
from migrate.adapters.embedded import EmbeddedServer, start_server, stop_server
from migrate.api.demo import create_source
from world import ROOT, TABLES

RESTART_SECONDS = 20


def source_rows(server: EmbeddedServer) -> int:
    with psycopg.connect(server.dsn("src_acme")) as conn:
        return sum(
            int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0])  # type: ignore[index]
            for t in TABLES
        )


def copied_rows(server: EmbeddedServer) -> int:
    """Rows the checkpoints account for (0 while the control schema does not exist yet)."""
    try:
        with psycopg.connect(server.dsn("shared"), connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(rows_copied), 0) FROM migrate_control.checkpoints"
            ).fetchone()
    except psycopg.Error:
        return 0
    return int(row[0]) if row else 0


@pytest.fixture
def server(server_root: Path) -> EmbeddedServer:
    """Our own PostgreSQL (free to stop and start), holding a target and acme's source."""
    own = start_server(server_root)
    with psycopg.connect(own.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE shared")
    create_source(own.dsn(), "src_acme", "acme", 40)
    return own


def start_run(server: EmbeddedServer, book: Path, logs: Path, **env: str) -> subprocess.Popen[bytes]:
    environ = {
        **os.environ,
        "MIGRATE_TARGET_DSN": server.dsn("shared"),
        "MIGRATE_SOURCE_DSN_TEMPLATE": f"postgresql://postgres@127.0.0.1:{server.port}/src_{{tenant}}",
        "MIGRATE_FLAG_FILE": str(logs.parent / "flags.json"),
        "MIGRATE_ACTOR": "pytest",
        **env,
    }
    with open(logs.with_suffix(".out"), "wb") as out, open(logs.with_suffix(".err"), "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "migrate", "run", str(book)], cwd=ROOT, env=environ, stdout=out, stderr=err
        )


def stop_mid_copy(server: EmbeddedServer, proc: subprocess.Popen[bytes], total: int) -> int:
    """Stop the server (fast shutdown: sessions terminated) once some, not all, rows are copied."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        done = copied_rows(server)
        if 0 < done < total // 2:
            stop_server(server.root)
            return done
        time.sleep(0.01)
    pytest.fail("the run ended before the server could be stopped mid-copy")


def test_a_20_second_database_restart_mid_copy_is_outlasted_and_the_counts_stay_exact(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    """The server goes down for 20 s mid-copy: the run retries (a line per attempt on stderr), resumes
    after the last checkpoint and finishes (exit 0); the rows copied in the summary and in the
    ledger's entry are every source row, not only those after the last retry."""
    total = source_rows(server)
    book = chunked_playbook(tmp_path, ("acme",), chunk_rows=100)
    logs = tmp_path / "run"
    proc = start_run(server, book, logs)
    before = stop_mid_copy(server, proc, total)
    down_since = time.monotonic()
    time.sleep(RESTART_SECONDS)
    assert proc.poll() is None, "the run gave up during a 20 s restart"
    start_server(server.root, port=server.port)
    code = proc.wait(timeout=120)
    out, err = logs.with_suffix(".out").read_text(), logs.with_suffix(".err").read_text()
    assert code == 0, err[-3000:]
    retried = [line for line in err.splitlines() if "trying again in" in line]
    assert len(retried) >= 3, err[-3000:]
    assert all("acme/copy/backfill" in line for line in retried)
    assert time.monotonic() - down_since >= RESTART_SECONDS
    assert f"acme: done, 3 step(s) applied, {total} rows copied" in out, out
    assert 0 < before < total
    with psycopg.connect(server.dsn("shared")) as conn:
        details = conn.execute(
            "SELECT details FROM migrate_control.ledger WHERE action = 'applied' AND step = 'copy/backfill'"
        ).fetchone()
        held = {
            t: conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = 'acme'").format(sql.Identifier("app", t))
            ).fetchone()
            for t in TABLES
        }
    assert details is not None and details[0]["copied_now"] == total and details[0]["rows"] == total
    assert sum(int(n[0]) for n in held.values() if n) == total


def test_an_outage_longer_than_the_budget_gives_up_saying_the_server_was_unreachable(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    """MIGRATE_RETRY_SECONDS=3 and a server that stays down: exit 1 'unreachable for N s', not a settings
    error; once it is back, the next run resumes and counts every row exactly."""
    total = source_rows(server)
    book = chunked_playbook(tmp_path, ("acme",), chunk_rows=100)
    logs = tmp_path / "run"
    proc = start_run(server, book, logs, MIGRATE_RETRY_SECONDS="3")
    stop_mid_copy(server, proc, total)
    code = proc.wait(timeout=60)
    out, err = logs.with_suffix(".out").read_text(), logs.with_suffix(".err").read_text()
    assert code == 1, err[-3000:]
    said = out + err
    assert re.search(r"was unreachable for [0-9]+ s", said), said[-3000:]
    assert "check MIGRATE_TARGET_DSN" not in said and "Traceback" not in said
    start_server(server.root, port=server.port)
    logs2 = tmp_path / "again"
    again = start_run(server, book, logs2)
    assert again.wait(timeout=120) == 0, logs2.with_suffix(".err").read_text()[-3000:]
    report = logs2.with_suffix(".out").read_text()
    copied_now = int(re.search(r"acme: done, \d step\(s\) applied, (\d+) rows copied", report).group(1))  # type: ignore[union-attr]
    assert 0 < copied_now < total  # the rest only: what the first run committed stayed
    with psycopg.connect(server.dsn("shared")) as conn:
        rows = conn.execute(
            "SELECT details->>'rows' FROM migrate_control.step_state WHERE step_key = 'copy/backfill'"
        ).fetchone()
    assert rows is not None and json.loads(rows[0]) == total
