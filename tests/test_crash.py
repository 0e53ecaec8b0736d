"""Real faults on real `migrate run` processes: kill -9 between and inside tables, a second runner on
the same tenant, a terminated database session mid-COPY. Nothing is lost, nothing is doubled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from kill import application_name, assert_no_gap_no_duplicate, checkpoints, chunked_playbook, start_run
from migrate import api
from world import DEMO, ROOT, TABLES, World


@pytest.mark.tenants(acme=150)
def test_kill_9_mid_backfill_then_run_again_gives_exact_counts_and_checksums(world: World) -> None:
    """Killed after some tables were checkpointed, the next run resumes: same counts, checksums match."""
    env = {**os.environ, **world.environ, "MIGRATE_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "migrate", "run", str(DEMO), "--tenant", "acme"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    killed_with = -1
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with world.target() as conn:
                row = conn.execute(
                    "SELECT count(*) FROM migrate_control.checkpoints WHERE tenant = 'acme' AND done"
                ).fetchone()
        except Exception:  # the control schema may not exist yet
            row = None
        if row and row[0] >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            killed_with = row[0]
            break
        time.sleep(0.01)
    proc.wait(timeout=30)
    said = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    assert killed_with >= 2 and proc.returncode == -signal.SIGKILL, f"ended before it was killed: {said}"
    with world.target() as conn:
        state = conn.execute(
            "SELECT status FROM migrate_control.step_state WHERE step_key = 'copy/backfill'"
        ).fetchone()
    assert state == ("running",)  # the dead runner's step, left for the next run to redo
    result = api.run(DEMO, environ=world.environ, tenants=["acme"])
    assert result.ok, result.tenants[0].error
    assert world.target_counts("acme") == world.source_counts("acme")
    status = api.status(DEMO, environ=world.environ, tenants=["acme"]).tenants[0]
    assert status.validated is True and status.state == "done"


AUDIT = (
    "CREATE TABLE audit_log (at timestamptz NOT NULL, seq int NOT NULL, message text);"
    " CREATE INDEX ON audit_log (at, seq);"
    " INSERT INTO audit_log SELECT timestamptz '2024-01-01' + (g / 5) * interval '1 s', g % 3, 'event ' || g"
    " FROM generate_series(1, 6000) AS g;"
)


@pytest.mark.tenants(acme=40)
def test_kill_9_inside_tables_at_several_moments_then_run_again_loses_and_doubles_nothing(
    world: World, tmp_path: Path
) -> None:
    """Killed mid-table four times (a keyless table too): only whole chunks stay; the last run matches."""
    with world.source("acme") as conn:
        conn.execute(AUDIT)
    tables = (*TABLES, "audit_log")
    book = chunked_playbook(tmp_path, ("acme",), chunk_rows=100, keyless=True)
    total = world.source_counts("acme")
    moments = [
        ("audit_log", 1),  # the keyless table loads first (no foreign keys): after its first chunk
        ("tasks", total["tasks"] // 2),
        ("comments", total["comments"] // 3),
        ("comments", 2 * total["comments"] // 3),
    ]
    for table, past in moments:
        proc = start_run(world, book, "acme").proc
        deadline = time.monotonic() + 90
        killed = False
        while time.monotonic() < deadline and proc.poll() is None:
            rows, done, _last = checkpoints(world, "acme").get(table, (0, False, None))
            if rows >= past and not done:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.005)
        proc.wait(timeout=30)
        assert killed and proc.returncode == -signal.SIGKILL, f"the run ended before {table} reached {past}"
        assert_no_gap_no_duplicate(world, "acme", tables)
    result = api.run(book, environ=world.environ, tenants=["acme"])
    assert result.ok, result.tenants[0].error
    assert_no_gap_no_duplicate(world, "acme", tables)
    assert world.target_counts("acme") == world.source_counts("acme")
    status = api.status(book, environ=world.environ, tenants=["acme"]).tenants[0]
    assert status.validated is True and status.state == "done"


@pytest.mark.tenants(acme=150, globex=1)
def test_a_second_runner_on_the_same_tenant_is_refused_naming_the_first_while_others_proceed(
    world: World, tmp_path: Path
) -> None:
    """Two real `migrate run` processes: the second reports acme locked by the first's pid, copies globex."""
    # Big enough, in small enough chunks, that the first runner is still copying acme (tens of
    # seconds) when the second has started its interpreter (about a second): no race.
    book = chunked_playbook(tmp_path, ("acme", "globex"), chunk_rows=25)
    first = start_run(world, book, "acme")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and first.proc.poll() is None and not checkpoints(world, "acme"):
        time.sleep(0.01)
    assert first.proc.poll() is None, "the first runner ended before the second could start"
    second = subprocess.run(
        [sys.executable, "-m", "migrate", "run", str(book), "--tenant", "acme", "--tenant", "globex"],
        cwd=ROOT,
        env={**os.environ, **world.environ, "MIGRATE_LOG_LEVEL": "warning"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    _out, err = first.output()
    assert first.proc.returncode == 0, err[-2000:]
    assert second.returncode == 1
    assert "acme: LOCKED" in second.stdout
    assert f"pid {first.pid}, since" in second.stdout  # the holder: host and pid of the first runner
    assert "globex: done" in second.stdout
    assert world.target_counts("globex") == world.source_counts("globex")
    assert world.target_counts("acme") == world.source_counts("acme")


@pytest.mark.tenants(acme=30)
def test_a_terminated_target_connection_mid_copy_is_retried_from_the_last_checkpoint(
    world: World, tmp_path: Path
) -> None:
    """pg_terminate_backend on the runner's session mid-COPY: one retry, the lock retaken, an exact copy."""
    book = chunked_playbook(tmp_path, ("acme",), chunk_rows=100)
    target_db = str(conninfo_to_dict(world.target_dsn)["dbname"])
    runner = start_run(world, book, "acme")
    proc = runner.proc
    terminated = None
    deadline = time.monotonic() + 90
    with world.target() as conn:
        while terminated is None and time.monotonic() < deadline and proc.poll() is None:
            rows, done, _ = checkpoints(world, "acme").get("comments", (0, False, None))
            if rows and not done:
                row = conn.execute(
                    "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND application_name = %s AND query LIKE 'COPY%%FROM STDIN%%'",
                    (target_db, application_name(proc.pid)),
                ).fetchone()
                terminated = row[0] if row and row[1] else None
            time.sleep(0.005)
        relocked = False  # the runner's new session holds the tenant's lock again
        while not relocked and proc.poll() is None and time.monotonic() < deadline:
            found = conn.execute(
                "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.objid = hashtext('acme')::oid"
                " AND a.application_name = %s",
                (application_name(proc.pid),),
            ).fetchone()
            relocked = found is not None and found[0] != terminated
            time.sleep(0.005)
    _out, err = runner.output()
    assert terminated is not None, "no COPY of the runner was caught in flight"
    assert relocked, "the runner went on without taking the tenant's lock again"
    assert proc.returncode == 0, err[-2000:]
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    retried = [e for e in events if e["event"] == "step_retried"]
    assert len(retried) == 1 and retried[0]["condition"] == "lost connection", retried
    assert any(e["event"] == "tenant_reconnected" for e in events)
    assert world.target_counts("acme") == world.source_counts("acme")
    assert api.status(book, environ=world.environ, tenants=["acme"]).tenants[0].validated is True
