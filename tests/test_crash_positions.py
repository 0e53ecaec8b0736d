"""kill -9 of a real `migrate run` at exact positions of the demo playbook; the next run finishes.

Each position is reached with no hook in the product: the test holds a real lock on the
target that the runner needs right there (an uncommitted row in the control schema, a
table lock, the ledger's append lock, an uncommitted ``CREATE SCHEMA``), waits until the
runner's session waits on that very lock (``pg_blocking_pids``), then kills the process
with SIGKILL and lets go. The runner's own sessions set ``client_connection_check_interval``
(api.connect), so the server ends them within a second of the process's death. Without it
a backend waiting on a lock outlives its process — keeping the tenant's advisory lock —
and, once the wait ends, finishes the statement it was given (an autocommit one commits):
a different position, and a tenant locked by a dead runner meanwhile.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from kill import Runner, application_name, assert_no_gap_no_duplicate, checkpoints, sessions_gone
from migrate import api
from migrate.control import schema as control_schema
from world import DEMO, ROOT, TABLES, World

TENANT = "acme"
FLAG = "tenant-shared-db"
CONTROL = "migrate_control"
STEPS = ("prepare/schema", "copy/backfill", "copy/validate", "cutover/flag")
POINTS = ("copy/@pre-copy", "copy/@pre-cutover")
LEDGER_LOCK = f"migrate.ledger.append:{CONTROL}"  # control/ledger.py: one chain per control schema
TENANT_LOCK = ("migrate.tenant", TENANT)  # control/store.py: the runner's session-level lock
WAIT = 60.0

pytestmark = pytest.mark.tenants(acme=2)  # TENANT, at scale 2

Statement = tuple[str, tuple[Any, ...]]


# ----------------------------------------------------------------------------- the stage
class Stage:
    """A world, the real runners started on it, and the test's open transactions on its target,
    each holding a lock a runner will need."""

    def __init__(self, world: World, tmp_path: Path) -> None:
        self.world = world
        self.tmp_path = tmp_path
        self.open: list[psycopg.Connection[Any]] = []
        self.runners: list[Runner] = []

    def start_runner(self) -> Runner:
        """A real `migrate run playbooks/demo.yaml --tenant acme`; its output goes to files."""
        logs = self.tmp_path / f"run-{time.monotonic_ns()}"
        env = {**os.environ, **self.world.environ, "MIGRATE_LOG_LEVEL": "info"}
        with open(logs.with_suffix(".out"), "wb") as out, open(logs.with_suffix(".err"), "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "migrate", "run", str(DEMO), "--tenant", TENANT],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=err,
            )
        self.runners.append(Runner(proc, logs))
        return self.runners[-1]

    def hold(self, statement: Statement) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.world.target_dsn)  # not autocommit: the transaction stays open
        self.open.append(conn)
        conn.execute("SET LOCAL lock_timeout = '20s'")  # never wait forever on a runner
        took = conn.execute(*statement)
        assert took.rowcount != 0, f"nothing to hold: {statement}"
        return conn

    def release(self, conn: psycopg.Connection[Any]) -> None:
        conn.rollback()
        conn.close()
        self.open.remove(conn)

    def release_all(self) -> None:
        for conn in list(self.open):
            self.release(conn)

    def close(self) -> None:
        """After a failed test too: no runner outlives it, no lock stays held."""
        for runner in self.runners:
            if runner.proc.poll() is None:
                runner.proc.kill()
                runner.proc.wait(timeout=30)
        self.release_all()


def wait_blocked(world: World, runner: Runner, hold: psycopg.Connection[Any], where: str) -> int:
    """Until the runner's session waits on a lock that ``hold`` has; that session's backend pid."""
    deadline = time.monotonic() + WAIT
    with world.target() as mon:
        while time.monotonic() < deadline:
            row = mon.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
                " AND wait_event_type = 'Lock' AND %s = ANY(pg_blocking_pids(pid))",
                (application_name(runner.pid), hold.info.backend_pid),
            ).fetchone()
            if row:
                return int(row[0])
            if runner.proc.poll() is not None:
                _out, err = runner.output()
                pytest.fail(f"the runner ended ({runner.proc.returncode}) before {where}:\n{err[-3000:]}")
            time.sleep(0.01)
    pytest.fail(f"the runner never waited on the test's lock {where}")


def kill(world: World, runner: Runner) -> None:
    """SIGKILL, then wait until the server has ended every session of the dead process."""
    os.kill(runner.pid, signal.SIGKILL)
    runner.proc.wait(timeout=30)
    assert runner.proc.returncode == -signal.SIGKILL
    if not sessions_gone(world, runner.pid):
        pytest.fail("the dead runner's sessions outlived it (client_connection_check_interval ignored?)")


# ----------------------------------------------------------------------------- where to stop
def step_row(key: str) -> Statement:
    """An uncommitted step_state row: the runner's 'running' upsert of ``key`` waits for it."""
    phase, _, kind = key.partition("/")
    return (
        f"INSERT INTO {CONTROL}.step_state (playbook, tenant, step_key, phase, kind, status)"
        " VALUES ('demo', %s, %s, %s, %s, 'pending')",
        (TENANT, key, phase, kind),
    )


def checkpoint_row(name: str) -> Statement:
    """An uncommitted checkpoint row: the runner's first save of that checkpoint waits for it."""
    return (
        f"INSERT INTO {CONTROL}.checkpoints (playbook, tenant, table_name) VALUES ('demo', %s, %s)",
        (TENANT, name),
    )


def ledger_lock(_runner: Runner) -> Statement:
    """The ledger's append lock: a step's 'done' record and its ledger entry commit together."""
    return ("SELECT pg_advisory_xact_lock(hashtext(%s))", (LEDGER_LOCK,))


def comments_locked(_runner: Runner) -> Statement:
    """validate reads every shared table; backfill is done with them by then."""
    return ("LOCK TABLE app.comments IN ACCESS EXCLUSIVE MODE", ())


def run_row_locked(runner: Runner) -> Statement:
    """The runner's own runs row: its finish record (an UPDATE) waits. NO KEY: step_state's
    foreign key to the row (FOR KEY SHARE) does not wait."""
    return (
        f"SELECT run_id FROM {CONTROL}.runs WHERE host = %s AND pid = %s FOR NO KEY UPDATE",
        (socket.gethostname(), runner.pid),
    )


@dataclass(frozen=True)
class Position:
    """Where the runner dies, and what the control schema says right after."""

    id: str
    first: Statement  # held before the runner starts
    then: Callable[[Runner], Statement] | None  # held once it waits on the first, which then goes
    done: tuple[str, ...]  # steps and points done when it died
    running: str | None  # the step it left 'running'
    flipped: bool  # the flag file already has the tenant
    control_first: bool = True  # create the control schema before the runner does


SCHEMA_DONE = ("prepare/schema", "copy/@pre-copy")
BACKFILL_DONE = (*SCHEMA_DONE, "copy/backfill")
VALIDATE_DONE = (*BACKFILL_DONE, "copy/validate", "copy/@pre-cutover")

POSITIONS = [
    # 1. The schema step's CREATE SCHEMA IF NOT EXISTS waits for the test's uncommitted CREATE SCHEMA.
    Position(
        "inside-schema",
        ("CREATE SCHEMA app", ()),
        then=None,
        done=(),
        running="prepare/schema",
        flipped=False,
        control_first=False,
    ),
    # 2. Schema done and the pre-copy point passed; the backfill's 'running' record waits.
    Position("before-backfill", step_row("copy/backfill"), None, SCHEMA_DONE, running=None, flipped=False),
    # 3. organizations, users and projects committed; tasks' rows written (uncommitted) when its
    #    checkpoint save waits: mid-table, since a chunk and its checkpoint commit together.
    Position("inside-backfill", checkpoint_row("tasks"), None, SCHEMA_DONE, "copy/backfill", flipped=False),
    # 4. The backfill done; validate's 'running' record waits.
    Position("before-validate", step_row("copy/validate"), None, BACKFILL_DONE, running=None, flipped=False),
    # 5. Validate under way, its read of the shared comments table waiting.
    Position(
        "inside-validate", step_row("copy/validate"), comments_locked, BACKFILL_DONE, "copy/validate", False
    ),
    # 6a. In the flag step before the flip: steps/flag.py saves its snapshot (a checkpoint) first.
    Position(
        "flag-before-flip", checkpoint_row(f"flag:{FLAG}:enable"), None, VALIDATE_DONE, "cutover/flag", False
    ),
    # 6. In the flag step after the flip (the file has the tenant), before its 'done' record.
    Position("flag-after-flip", step_row("cutover/flag"), ledger_lock, VALIDATE_DONE, "cutover/flag", True),
    # 7. Every step done; the run's finish record waits.
    Position(
        "before-run-finished",
        step_row("cutover/flag"),
        run_row_locked,
        (*VALIDATE_DONE, "cutover/flag"),
        running=None,
        flipped=True,
    ),
]


# ----------------------------------------------------------------------------- what the state says
def step_states(world: World) -> dict[str, tuple[str, dict[str, Any]]]:
    with world.target() as conn:
        rows = conn.execute(
            f"SELECT step_key, status, details FROM {CONTROL}.step_state WHERE playbook = 'demo'"
            " AND tenant = %s",
            (TENANT,),
        ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def flag_tenants(world: World) -> list[str]:
    """The tenant ids the flag file lists for the flag, as written (duplicates kept)."""
    if not world.flag_file.exists():
        return []
    document = json.loads(world.flag_file.read_text())
    feature = next(f for f in document["features"] if f["name"] == FLAG)
    return [
        value
        for strategy in feature["strategies"]
        for constraint in strategy.get("constraints", ())
        if constraint["contextName"] == "tenantId"
        for value in constraint["values"]
    ]


def tenant_lock_holders(world: World) -> int:
    with world.target() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid = hashtext(%s)::oid AND objid = hashtext(%s)::oid",
            TENANT_LOCK,
        ).fetchone()
    assert row is not None
    return int(row[0])


def holder_pids(world: World) -> list[int]:
    """The pids the holders table names for the tenant (a record, not the lock)."""
    with world.target() as conn:
        rows = conn.execute(f"SELECT pid FROM {CONTROL}.holders WHERE tenant = %s", (TENANT,)).fetchall()
    return [r[0] for r in rows]


def run_finished(world: World, pid: int) -> list[Any]:
    """finished_at of each run the process with ``pid`` started on this host."""
    with world.target() as conn:
        rows = conn.execute(
            f"SELECT finished_at FROM {CONTROL}.runs WHERE host = %s AND pid = %s",
            (socket.gethostname(), pid),
        ).fetchall()
    return [r[0] for r in rows]


def last_run_outcome(world: World) -> str | None:
    with world.target() as conn:
        row = conn.execute(f"SELECT outcome FROM {CONTROL}.runs ORDER BY started_at DESC LIMIT 1").fetchone()
    assert row is not None
    return str(row[0]) if row[0] is not None else None


def writing(world: World, backend: int) -> set[str]:
    """The relations a backend holds a ROW EXCLUSIVE lock on (it has written to them)."""
    with world.target() as conn:
        rows = conn.execute(
            "SELECT relation::regclass::text FROM pg_locks WHERE pid = %s AND locktype = 'relation'"
            " AND mode = 'RowExclusiveLock' AND granted",
            (backend,),
        ).fetchall()
    return {r[0] for r in rows}


def duplicate_keys(world: World) -> dict[str, int]:
    with world.target() as conn:
        return {
            t: conn.execute(
                sql.SQL("SELECT count(*) - count(DISTINCT id) FROM {} WHERE tenant_id = %s").format(
                    sql.Identifier("app", t)
                ),
                (TENANT,),
            ).fetchone()[0]  # type: ignore[index]
            for t in TABLES
        }


# ----------------------------------------------------------------------------- the test
@pytest.fixture
def stage(world: World, tmp_path: Path) -> Iterator[Stage]:
    made = Stage(world, tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.mark.slow
@pytest.mark.parametrize("pos", POSITIONS, ids=[p.id for p in POSITIONS])
def test_kill_9_at_a_position_then_run_again_finishes_validated_with_the_flag_on_once(
    stage: Stage, pos: Position
) -> None:
    """Killed at the position, the control schema says where; the next run resumes, validates, flips once."""
    world = stage.world
    if pos.control_first:  # the test's rows go into the control schema, so it must exist first
        control_schema.upgrade(world.target_dsn, CONTROL)
    hold = stage.hold(pos.first)
    runner = stage.start_runner()
    backend = wait_blocked(world, runner, hold, pos.id)
    if pos.then is not None:
        second = stage.hold(pos.then(runner))
        stage.release(hold)
        backend = wait_blocked(world, runner, second, pos.id)
    written = writing(world, backend)
    flipped_at_kill = TENANT in flag_tenants(world)
    kill(world, runner)
    stage.release_all()

    # Where the dead runner stopped, as the next runner finds it.
    states = step_states(world)
    assert flipped_at_kill == pos.flipped
    assert {k for k, (s, _) in states.items() if s == "done"} == set(pos.done)
    assert {k: s for k, (s, _) in states.items() if s != "done"} == (
        {pos.running: "running"} if pos.running else {}
    )
    # A 'running' step and no lock: its runner is dead. The holders row names it, but the lock rules.
    assert tenant_lock_holders(world) == 0
    assert holder_pids(world) == [runner.pid]
    now = api.status(DEMO, environ=world.environ, tenants=[TENANT]).tenants[0]
    assert now.holder is None
    if pos.running:
        assert now.state == "interrupted" and now.current is not None, now
        assert now.current.key == pos.running
    assert run_finished(world, runner.pid) == [None]  # no finish record
    if "prepare/schema" in pos.done:  # the shared tables exist
        assert_no_gap_no_duplicate(world, TENANT, TABLES)  # only whole chunks, each accounted for
    if pos.id == "inside-backfill":  # it died with tasks' rows written, uncommitted
        assert "app.tasks" in written, f"the runner was not writing tasks: {written}"
        assert {t for t, (_, done, _) in checkpoints(world, TENANT).items() if done} == {
            "organizations",
            "users",
            "projects",
        }

    # The next `migrate run` finishes and everything checks out.
    again = subprocess.run(
        [sys.executable, "-m", "migrate", "run", str(DEMO), "--tenant", TENANT],
        cwd=ROOT,
        env={**os.environ, **world.environ, "MIGRATE_LOG_LEVEL": "warning"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert last_run_outcome(world) == "ok"
    assert world.target_counts(TENANT) == world.source_counts(TENANT)
    assert duplicate_keys(world) == dict.fromkeys(TABLES, 0)
    status = api.status(DEMO, environ=world.environ, tenants=[TENANT]).tenants[0]
    assert status.validated is True and status.state == "done", status
    states = step_states(world)
    assert {k: s for k, (s, _) in states.items()} == dict.fromkeys((*STEPS, *POINTS), "done")
    assert flag_tenants(world).count(TENANT) == 1
    flag = states["cutover/flag"][1]
    assert (flag["before"], flag["after"]) == (False, True)  # the state before the first flip
    assert tenant_lock_holders(world) == 0
    report = api.ledger(DEMO, environ=world.environ, tenant=TENANT)
    assert report.failure is None
    actions = Counter((r.entry.action, r.entry.step) for r in report.entries)
    # A run that died before its flag step was done validates again before it flips (issue 13): the
    # source may have changed since (nothing froze it).
    revalidated = pos.running == "cutover/flag" or (
        "cutover/flag" not in pos.done and "copy/validate" in pos.done
    )
    assert {s: actions["applied", s] for s in STEPS} == {
        s: 2 if s == "copy/validate" and revalidated else 1 for s in STEPS
    }
    assert {p: actions["point_passed", p] for p in POINTS} == dict.fromkeys(POINTS, 1)
    # The step the dead runner left running, and only that one, was ledgered as resumed.
    resumed = {s: n for (action, s), n in actions.items() if action == "resumed"}
    assert resumed == ({pos.running: 1} if pos.running else {})
