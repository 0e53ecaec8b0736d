"""A real `kill -9` in the middle of a backfill loses nothing and duplicates nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import DatabaseFactory
from migrate import api
from world import DEMO, ROOT, make_world


def test_kill_9_mid_backfill_then_run_again_gives_exact_counts_and_checksums(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """Killed after some tables were checkpointed, the next run resumes: same counts, checksums match."""
    world = make_world(database_factory, tmp_path, tenants=(("acme", 150),))
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
    assert killed_with >= 2 and proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
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
