"""kill -9 of a real `migrate run` of an online playbook, while the application writes: during the copy,
during catch-up, inside the freeze and right after the flip. The next run finishes with nothing lost or
duplicated (our own comparison, table by table).

Each position is reached without a hook in the product: the test holds a lock the runner needs exactly
there, waits until the runner's session waits on it (``pg_blocking_pids``), kills the process and lets go
(the runner's sessions end within a second: ``client_connection_check_interval``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from live import APP_ROLE, FLAG, ROOT, LiveWorld, Writer, live_world
from migrate import api

WAIT = 60.0


@pytest.fixture
def live(logical_admin_dsn: str, tmp_path: Path) -> Iterator[LiveWorld]:
    with live_world(logical_admin_dsn, tmp_path, {"acme": 4}) as world:
        world.write_playbook(backfill="chunk_rows: 25")
        yield world


@dataclass
class Killed:
    """A runner killed at a position, and what the test saw there."""

    returncode: int
    stderr: str


def step_status(live: LiveWorld, key: str) -> str | None:
    try:
        with live.target() as conn:
            row = conn.execute(
                "SELECT status FROM migrate_control.step_state WHERE tenant = 'acme' AND step_key = %s",
                (key,),
            ).fetchone()
    except psycopg.Error:  # no control schema yet
        return None
    return None if row is None else str(row[0])


def wait_until(what: Callable[[], bool], runner: subprocess.Popen[bytes], why: str) -> None:
    deadline = time.monotonic() + WAIT
    while not what():
        assert runner.poll() is None, f"the runner ended before {why}"
        assert time.monotonic() < deadline, f"timed out waiting for {why}"
        time.sleep(0.005)


def blocked_on(live: LiveWorld, holder: psycopg.Connection[Any]) -> bool:
    """Some session waits on a lock this connection holds (the runner, at the position)."""
    pid = holder.info.backend_pid
    with live.target() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (pid,)
        ).fetchone()
    return bool(row and row[0])


def kill_at(
    live: LiveWorld,
    tmp_path: Path,
    ready: Callable[[], bool],
    hold: Callable[[psycopg.Connection[Any]], object] | None,
) -> Killed:
    """Start a runner; once ``ready()``, hold a lock (``hold`` on an open target transaction) and, when
    the runner waits on it, kill -9 the runner and let go (no ``hold``: kill at once)."""
    logs = tmp_path / f"run-{time.monotonic_ns()}.err"
    with open(logs, "wb") as err:
        runner = subprocess.Popen(
            [sys.executable, "-m", "migrate", "run", str(live.playbook)],
            cwd=ROOT,
            env={**os.environ, **live.environ, "MIGRATE_LOG_LEVEL": "warning"},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    holder = live.target()
    try:
        wait_until(ready, runner, "the position")
        if hold is not None:
            holder.execute("BEGIN")
            hold(holder)
            wait_until(lambda: blocked_on(live, holder), runner, "the runner to wait on the test's lock")
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait(timeout=30)
    finally:
        holder.close()  # rolls back: the lock goes
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    return Killed(runner.returncode, logs.read_text())


def finish(live: LiveWorld, writer: Writer) -> None:
    """The next run finishes; then, with the writer stopped, source and target are equal."""
    try:
        result = api.run(live.playbook, environ=live.environ)
    finally:
        writer.stop()
    assert result.ok, [t.error for t in result.tenants]
    live.assert_equal("acme")
    with live.source("acme") as conn:
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (1,)
        slots = conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"
        ).fetchall()
        assert slots == [("tm_live_acme",)]  # the resumed copy's temporary slot went with its connection
    assert writer.committed > 20, writer.errors[-3:]


def test_kill_9_during_the_online_copy_then_the_resumed_copy_and_catch_up_are_exact(
    live: LiveWorld, tmp_path: Path
) -> None:
    """Killed mid-table (users, which has a unique e-mail): the next run reads a new snapshot, copies users
    again, absorbs the overlap in one batch and ends equal."""
    live.write_playbook(backfill="chunk_rows: 4")
    writer = Writer(live.source_dsn("acme", APP_ROLE), rate=120).start()
    writer.wait_for(10)
    watch = live.target()

    def users_under_way() -> bool:
        try:
            row = watch.execute(
                "SELECT rows_copied, done FROM migrate_control.checkpoints"
                " WHERE tenant = 'acme' AND table_name = 'users'"
            ).fetchone()
        except psycopg.errors.UndefinedTable:  # no control schema yet
            return False
        return row is not None and row[0] > 0 and not row[1]

    try:
        killed = kill_at(
            live,
            tmp_path,
            users_under_way,
            # Its next chunk commits with its checkpoint: a lock on that row stops it mid-table. (Held only
            # now: a slot is made once every transaction holding an xid on its server has ended.)
            lambda c: c.execute(
                "SELECT 1 FROM migrate_control.checkpoints WHERE tenant = 'acme' AND table_name = 'users'"
                " FOR UPDATE"
            ),
        )
    finally:
        watch.close()
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with live.target() as conn:
        done = conn.execute(
            "SELECT rows_copied, done FROM migrate_control.checkpoints"
            " WHERE tenant = 'acme' AND table_name = 'users'"
        ).fetchone()
        capture = conn.execute("SELECT status FROM migrate_control.captures WHERE tenant = 'acme'").fetchone()
    assert done is not None and done[0] > 0 and not done[1]  # users half copied
    assert capture == ("capturing",)
    finish(live, writer)


def test_kill_9_during_catch_up_then_the_next_run_goes_on_from_the_last_batch(
    live: LiveWorld, tmp_path: Path
) -> None:
    """Killed inside a catch-up batch (its transaction open on the target): nothing of it stays, the next
    run applies it again from the slot."""
    writer = Writer(live.source_dsn("acme", APP_ROLE), rate=120).start()
    writer.wait_for(10)
    killed = kill_at(
        live,
        tmp_path,
        lambda: step_status(live, "copy/backfill") == "done",
        lambda c: c.execute("LOCK TABLE app.tasks IN ACCESS EXCLUSIVE MODE"),
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert step_status(live, "copy/catchup") == "running"
    finish(live, writer)


def test_kill_9_inside_the_freeze_leaves_the_source_frozen_and_status_says_what_to_run(
    live: LiveWorld, tmp_path: Path
) -> None:
    """Killed after the REVOKE, before the flip (counting rows under the freeze): the application still
    cannot write, status names the freeze and the command that finishes it, and that run ends equal."""
    writer = Writer(live.source_dsn("acme", APP_ROLE), rate=120).start()
    writer.wait_for(10)
    killed = kill_at(
        live,
        tmp_path,
        # After the catch-up, which also made the reverse path (its DDL locks the shared tables).
        lambda: step_status(live, "copy/catchup") == "done",
        # The application never writes organizations: only the counts under the freeze read it.
        lambda c: c.execute("LOCK TABLE app.organizations IN ACCESS EXCLUSIVE MODE"),
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    refused = writer.refused
    time.sleep(0.3)
    assert writer.refused > refused  # still frozen: every write is refused
    status = api.status(live.playbook, environ=live.environ)
    acme = status.tenants[0]
    assert acme.frozen is not None and acme.flags == {FLAG: False}
    assert status.next is not None and status.next.command == f"migrate run {live.playbook}"
    assert "source is frozen since" in status.next.why and "finishes it" in status.next.why
    finish(live, writer)


def test_kill_9_right_after_the_flip_then_the_next_run_completes_the_cut_over(
    live: LiveWorld, tmp_path: Path
) -> None:
    """Killed after the flag flipped, before the step was recorded: the next run finds the flag on, keeps
    the source frozen, checks and records the cut-over; nothing lost or doubled."""
    writer = Writer(live.source_dsn("acme", APP_ROLE), rate=120).start()
    writer.wait_for(10)
    killed = kill_at(
        live,
        tmp_path,
        lambda: step_status(live, "cutover/cutover") == "running",
        # The ledger's append lock: the cut-over's next entry is its 'applied', after the flip.
        lambda c: c.execute(
            "SELECT pg_advisory_xact_lock(hashtext('migrate.ledger.append:migrate_control'))"
        ),
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    acme = api.status(live.playbook, environ=live.environ).tenants[0]
    assert acme.flags == {FLAG: True} and acme.frozen is not None
    assert step_status(live, "cutover/cutover") == "running"
    finish(live, writer)
    after = api.status(live.playbook, environ=live.environ).tenants[0]
    assert after.state == "done" and after.validated is True
