"""`migrate status` on real PostgreSQL: waves, tenants, rollback points, figures, flags, lock holders
and the next command — and that it reads, needs no source settings and shows no stale lock."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import psycopg
import pytest

from migrate import api
from migrate.cli.app import main
from migrate.control import schema as control_schema
from migrate.control.store import ControlStore
from migrate.playbook import load_playbook
from status_keys import HOLDER_KEYS, TARGET_KEYS, TENANT_KEYS, TOP_KEYS, WAVE_KEYS
from world import DEMO, ROOT, TABLES, World, corrupt_globex_as_it_is_copied

pytestmark = pytest.mark.tenants("acme", "globex", "initech")

FLAG = "tenant-shared-db"
CONTROL = "migrate_control"
SETTINGS = (
    "MIGRATE_TARGET_DSN",
    "MIGRATE_SOURCE_DSN_TEMPLATE",
    "MIGRATE_FLAG_FILE",
    "UNLEASH_URL",
    "UNLEASH_ADMIN_TOKEN",
    "UNLEASH_CLIENT_TOKEN",
    "UNLEASH_ENVIRONMENT",
)
T = TypeVar("T")


@pytest.fixture
def canary_done(world: World) -> World:
    """acme (wave canary) really migrated; globex and initech (wave main) untouched."""
    result = api.run(DEMO, ["acme"], environ=world.environ)
    assert result.ok, [(t.tenant, t.error) for t in result.tenants]
    return world


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Any]:
    """``cli(environ, *args)`` runs `migrate status …` in-process with exactly those settings."""

    def run(environ: dict[str, str], *args: str) -> tuple[int, str, str]:
        for key in SETTINGS:
            monkeypatch.delenv(key, raising=False)
        for key, value in environ.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("COLUMNS", "200")  # one table row per line
        code = main(["status", *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def eventually(read: Callable[[], T], ok: Callable[[T], bool], seconds: float = 30) -> T:
    """``read()`` until ``ok`` holds (a backend ends a moment after its client went away)."""
    deadline = time.monotonic() + seconds
    value = read()
    while not ok(value) and time.monotonic() < deadline:
        time.sleep(0.02)
        value = read()
    assert ok(value), value
    return value


def line_of(out: str, start: str) -> str:
    found = [line for line in out.splitlines() if line.strip("│┃ ").startswith(start)]
    assert found, f"no line starts with {start!r} in:\n{out}"
    return found[0]


def gated_playbook(tmp_path: Path) -> Path:
    """The demo playbook with an approval gate on wave main."""
    text = DEMO.read_text()
    assert "  - name: main\n" in text
    text = text.replace("  - name: main\n", "  - name: main\n    approval: true\n")
    text = text.replace("../flags/demo.json", str(ROOT / "flags" / "demo.json"))
    path = tmp_path / "gated.yaml"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- before, mid-way
def test_before_any_run_status_shows_the_waves_says_run_and_creates_nothing(
    world: World, cli: Callable[..., Any]
) -> None:
    """Nothing ran: canary open, main after it, all 'not started', next 'migrate run'; no schema made."""
    shown = api.status(DEMO, environ=world.environ)

    assert not shown.started and shown.accepted is None
    assert [(w.name, w.stage, w.tenants, w.blocked_by) for w in shown.waves] == [
        ("canary", "open", ("acme",), None),
        ("main", "waiting for an earlier wave", ("globex", "initech"), "canary"),
    ]
    assert [(t.tenant, t.state, t.points, t.rows, t.holder) for t in shown.tenants] == [
        ("acme", "not started", (), None, None),
        ("globex", "not started", (), None, None),
        ("initech", "not started", (), None, None),
    ]
    assert shown.flags_error is None and shown.tenants[0].flags == {FLAG: False}  # no flag file yet
    assert shown.next is not None and shown.next.command == f"migrate run {DEMO}"
    assert "nothing has run yet; wave canary is open: acme has steps to run" in shown.next.why

    code, out, _err = cli(world.environ, str(DEMO))
    assert code == 0
    assert "nothing has run yet (no control schema on the target)" in out
    assert "wave main: waiting for an earlier wave (globex, initech), after wave canary" in out
    assert f"next: migrate run {DEMO}" in out
    with world.target() as conn:
        made = conn.execute("SELECT to_regnamespace(%s)", (CONTROL,)).fetchone()
    assert made == (None,), "status created the control schema"
    assert not world.flag_file.exists(), "status created the flag file"


def test_after_the_canary_status_shows_points_rows_figures_flags_and_the_open_main_wave(
    canary_done: World, cli: Callable[..., Any]
) -> None:
    """acme done (points passed, rows, per-table figures, flag on); main open; next runs globex, initech."""
    world = canary_done
    shown = api.status(DEMO, environ=world.environ)

    assert [(w.name, w.stage, w.finished) for w in shown.waves] == [
        ("canary", "done", ("acme",)),
        ("main", "open", ()),
    ]
    acme, globex, initech = shown.tenants
    assert (acme.state, acme.phase, acme.last_step, acme.current) == ("done", "cutover", "flag", None)
    assert acme.points == ("pre-copy", "pre-cutover")
    assert (acme.steps_done, acme.steps_total) == (4, 4)
    counts = world.source_counts("acme")
    assert acme.rows == sum(counts.values())
    assert acme.validated is True
    assert sorted(acme.figures) == sorted(TABLES)
    for table, figures in acme.figures.items():
        assert figures["match"] is True
        assert figures["source_rows"] == figures["target_rows"] == counts[table]
        assert figures["source_checksum"] == figures["target_checksum"]
    assert (acme.flags, globex.flags, initech.flags) == ({FLAG: True}, {FLAG: False}, {FLAG: False})
    assert (globex.state, globex.points, globex.validated) == ("not started", (), None)
    assert shown.accepted is not None and shown.accepted.digest == shown.digest
    assert not shown.playbook_changed
    assert shown.next is not None and shown.next.command == f"migrate run {DEMO}"
    assert "wave main is open: globex, initech have steps to run" in shown.next.why

    code, out, _err = cli(world.environ, str(DEMO))
    assert code == 0
    assert "wave canary: done (acme)" in out and "wave main: open (globex, initech)" in out
    row = line_of(out, "acme")
    for shown_cell in ("canary", "cutover", "flag", "done", "pre-copy, pre-cutover", f"{acme.rows:,}", "yes"):
        assert shown_cell in row, row
    assert row.rstrip(" │").endswith("on"), row  # the flag column, as the application sees it
    assert line_of(out, "globex").rstrip(" │").endswith("off")
    assert "validation: source vs target, per tenant and table" in out
    assert f"next: migrate run {DEMO}" in out

    # One tenant asked for: only its row, but 'next' is still the playbook's.
    code, out, _err = cli(world.environ, str(DEMO), "--tenant", "globex", "--json")
    assert code == 0
    data = json.loads(out)
    assert [t["tenant"] for t in data["tenants"]] == ["globex"]
    assert data["next"]["command"] == f"migrate run {DEMO}"


def test_status_json_has_the_documented_shape(canary_done: World, cli: Callable[..., Any]) -> None:
    """--json: playbook, version, waves, tenants, holders, flags and next, with the keys README.md lists."""
    code, out, _err = cli(canary_done.environ, str(DEMO), "--json")
    assert code == 0
    data = json.loads(out)

    assert set(data) == TOP_KEYS
    assert (data["playbook"], data["path"], data["playbook_changed"]) == ("demo", str(DEMO), False)
    assert data["accepted"]["digest"] == data["digest"] and data["accepted"]["actor"] == "pytest"
    assert data["waves"][0] == {
        "name": "canary",
        "stage": "done",
        "tenants": ["acme"],
        "finished": ["acme"],
        "blocked_by": None,
        "approval": {"needed": False, "by": None, "host": None, "at": None, "digest": None},
    }
    acme = data["tenants"][0]
    assert set(acme) == TENANT_KEYS and set(data["waves"][1]) == WAVE_KEYS
    assert acme["points_passed"] == ["pre-copy", "pre-cutover"]
    assert acme["flags"] == {FLAG: True} and acme["held_by"] is None and acme["step"] is None
    assert acme["figures"]["tasks"]["match"] is True
    assert (acme["region"], acme["target"]) == ("eu", "default")
    assert [set(t) for t in data["targets"]] == [TARGET_KEYS]
    assert data["targets"][0]["name"] == "default" and data["targets"][0]["region"] is None
    assert data["holders"] == []
    assert data["flags"]["provider"] == "file" and data["flags"]["available"] is True
    assert data["flags"]["flags"][0]["flag"] == FLAG and data["flags"]["flags"][0]["tenants"] == ["acme"]
    assert data["next"] == {
        "command": f"migrate run {DEMO}",
        "why": "wave main is open: globex, initech have steps to run",
    }
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**Status**") : readme.index("**The ledger**")]
    documented = set(re.findall(r"`([a-z_]+)(?:\[\])?`", section))
    undocumented = sorted((TOP_KEYS | WAVE_KEYS | TENANT_KEYS | HOLDER_KEYS | TARGET_KEYS) - documented)
    assert not undocumented, f"README.md's status section does not document: {undocumented}"


# ----------------------------------------------------------------------------- approval gate
def test_a_gated_wave_waits_for_approval_and_next_is_approve_until_someone_approves(
    world: World, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    """Wave main with 'approval: true': waiting for approval, next is approve; once approved, who and when."""
    book = gated_playbook(tmp_path)
    assert api.run(book, ["acme"], environ=world.environ).ok

    shown = api.status(book, environ=world.environ)
    main_wave = shown.waves[1]
    assert (main_wave.stage, main_wave.approval_needed, main_wave.approval) == (
        "waiting for approval",
        True,
        None,
    )
    assert shown.next is not None
    assert shown.next.command == f"migrate approve {book} --wave main"
    assert "wave main waits for approval" in shown.next.why
    code, out, _err = cli(world.environ, str(book), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["waves"][1]["approval"] == {
        "needed": True,
        "by": None,
        "host": None,
        "at": None,
        "digest": None,
    }
    assert data["next"]["command"] == f"migrate approve {book} --wave main"

    digest = load_playbook(book).digest
    with world.target() as conn:
        ControlStore(CONTROL, "demo").approve(conn, "main", digest=digest, actor="alice", host="host-1")

    shown = api.status(book, environ=world.environ)
    main_wave = shown.waves[1]
    assert main_wave.stage == "open" and main_wave.approval is not None
    assert (main_wave.approval.actor, main_wave.approval.host) == ("alice", "host-1")
    assert abs(main_wave.approval.at - datetime.now(UTC)) < timedelta(minutes=5)
    assert shown.next is not None and shown.next.command == f"migrate run {book}"
    code, out, _err = cli(world.environ, str(book))
    assert code == 0
    assert "wave main: open (globex, initech); approved by alice on host-1 at " in out


# ----------------------------------------------------------------------------- lock holders
def test_a_held_tenant_shows_its_holder_and_nobody_once_that_connection_is_gone(
    world: World, cli: Callable[..., Any]
) -> None:
    """The lock taken on a connection shows host, pid and since; closing that connection clears it."""
    control_schema.upgrade(world.target_dsn, CONTROL)
    store = ControlStore(CONTROL, "demo")
    run_id = uuid4()
    runner = psycopg.connect(world.target_dsn, autocommit=True)
    store.lock_tenant(runner, "acme")
    store.record_holder(runner, "acme", run_id=run_id, command="run --tenant acme", host="runner-7", pid=4242)
    backend = runner.info.backend_pid

    shown = api.status(DEMO, environ=world.environ)
    acme = shown.tenants[0]
    assert acme.holder is not None and acme.state == "running"
    assert (acme.holder.host, acme.holder.pid, acme.holder.run_id) == ("runner-7", 4242, run_id)
    assert acme.holder.backend_pid == backend
    assert abs(acme.holder.since - datetime.now(UTC)) < timedelta(minutes=5)
    assert [h.tenant for h in shown.holders] == ["acme"]
    assert shown.next is not None and shown.next.command == f"migrate status {DEMO}"
    assert "wave canary is under way (acme by run" in shown.next.why
    code, out, _err = cli(world.environ, str(DEMO))
    assert code == 0
    assert (
        f"acme: held by run {str(run_id)[:8]} ('migrate run --tenant acme') on runner-7, pid 4242, since"
        in out
    )
    code, out, _err = cli(world.environ, str(DEMO), "--json")
    (holder,) = json.loads(out)["holders"]
    assert set(holder) == HOLDER_KEYS
    assert (holder["tenant"], holder["host"], holder["pid"], holder["run_id"]) == (
        "acme",
        "runner-7",
        4242,
        str(run_id),
    )
    assert abs(datetime.fromisoformat(holder["since"]) - datetime.now(UTC)) < timedelta(minutes=5)

    runner.close()  # the runner's session ends: its lock with it; its holders row stays behind

    shown = eventually(lambda: api.status(DEMO, environ=world.environ), lambda s: not s.holders)
    assert shown.tenants[0].holder is None and shown.tenants[0].state == "not started"
    assert shown.next is not None and shown.next.command == f"migrate run {DEMO}"
    with world.target() as conn:
        left = conn.execute("SELECT host FROM migrate_control.holders WHERE tenant = 'acme'").fetchall()
    assert left == [("runner-7",)], "the stale row is there, and status rightly ignored it"


@pytest.fixture
def checkpoints_locked(world: World) -> Iterator[psycopg.Connection[Any]]:
    """A transaction holding EXCLUSIVE on the checkpoints table: a step that writes one waits."""
    conn = psycopg.connect(world.target_dsn)
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


def test_a_killed_runner_shows_as_holder_then_leaves_an_interrupted_step_and_no_lock(
    canary_done: World,
    checkpoints_locked: psycopg.Connection[Any],
    cli: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """A real `migrate run` held mid-step, then kill -9: holder (host, pid) while alive; after, no holder,
    the step 'interrupted', the canary not done, next run redoes it — and it does."""
    world = canary_done
    api.rollback(DEMO, "acme", "pre-cutover", discard_writes_since_cutover=True, environ=world.environ)
    shown = api.status(DEMO, environ=world.environ)
    # Across the cut-over with its writes discarded, the copy is reverted too: only pre-copy stays passed.
    assert shown.tenants[0].state == "rolled back" and shown.tenants[0].points == ("pre-copy",)
    assert shown.next is not None and "acme was rolled back" in shown.next.why
    # The re-run copies afresh (the copy was reverted with the discarded writes); its backfill saves a
    # checkpoint per chunk: it waits on this lock.
    checkpoints_locked.execute("LOCK TABLE migrate_control.checkpoints IN EXCLUSIVE MODE")
    err_log = tmp_path / "run.err"
    with open(err_log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "migrate", "run", str(DEMO), "--tenant", "acme"],
            cwd=ROOT,
            env={**os.environ, **world.environ, "MIGRATE_LOG_LEVEL": "warning"},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        shown = eventually(
            lambda: api.status(DEMO, ["acme"], environ=world.environ),
            lambda s: (
                (s.tenants[0].current is not None and s.tenants[0].current.key == "copy/backfill")
                or proc.poll() is not None
            ),
        )
        assert proc.poll() is None, err_log.read_text()[-2000:]
        acme = shown.tenants[0]
        assert acme.current is not None
        assert (acme.current.key, acme.current.status, acme.state) == ("copy/backfill", "running", "running")
        assert acme.holder is not None
        assert (acme.holder.host, acme.holder.pid) == (socket.gethostname(), proc.pid)
        code, out, _err = cli(world.environ, str(DEMO))
        assert code == 0
        assert "acme: copy/backfill running; held by run " in out
        assert f"on {socket.gethostname()}, pid {proc.pid}, since " in out
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        checkpoints_locked.rollback()

    shown = eventually(lambda: api.status(DEMO, environ=world.environ), lambda s: not s.holders)
    acme = shown.tenants[0]
    assert acme.holder is None and acme.state == "interrupted"
    assert acme.current is not None and (acme.current.key, acme.current.status) == (
        "copy/backfill",
        "interrupted",
    )
    assert [(w.name, w.stage) for w in shown.waves] == [
        ("canary", "open"),
        ("main", "waiting for an earlier wave"),
    ], "a step left 'running' by a dead runner is not done"
    assert shown.next is not None and shown.next.command == f"migrate run {DEMO}"
    assert "acme was interrupted at copy/backfill (its runner is gone; the run redoes it)" in shown.next.why
    code, out, _err = cli(world.environ, str(DEMO))
    assert "acme: copy/backfill interrupted (its runner is gone; the next run redoes it)" in out
    assert "held by" not in out

    assert api.run(DEMO, ["acme"], environ=world.environ).ok  # the next command, followed
    shown = api.status(DEMO, environ=world.environ)
    assert shown.tenants[0].state == "done" and shown.waves[0].stage == "done"


# ----------------------------------------------------------------------------- failures, versions
def test_a_failed_validation_shows_its_figures_and_next_is_diff_on_the_table(
    canary_done: World, cli: Callable[..., Any]
) -> None:
    """globex fails validate: state failed, the figures that differ, next 'migrate diff … --table tasks'."""
    world = canary_done
    corrupt_globex_as_it_is_copied(world)
    assert not api.run(DEMO, ["globex"], environ=world.environ).ok

    shown = api.status(DEMO, environ=world.environ)
    globex = shown.tenants[1]
    assert globex.state == "failed" and globex.validated is False
    assert globex.current is not None and (globex.current.key, globex.current.status) == (
        "copy/validate",
        "failed",
    )
    assert globex.error is not None and "tasks (rows" in globex.error
    assert globex.figures["tasks"]["match"] is False and globex.figures["users"]["match"] is True
    assert globex.points == ("pre-copy",)
    assert shown.next is not None
    assert shown.next.command == f"migrate diff {DEMO} --tenant globex --table tasks"
    assert "tenant globex failed validation: tasks (rows" in shown.next.why
    assert f"then 'migrate run {DEMO} --tenant globex'" in shown.next.why
    _code, out, _err = cli(world.environ, str(DEMO), "--json")
    data = json.loads(out)
    assert data["tenants"][1]["step"]["status"] == "failed" and data["tenants"][1]["error"]
    assert data["next"]["command"] == f"migrate diff {DEMO} --tenant globex --table tasks"


def test_a_changed_playbook_is_flagged_and_next_is_run_with_replan(
    canary_done: World, cli: Callable[..., Any]
) -> None:
    """When runs work to another playbook version, status warns and the next command has --replan."""
    world = canary_done
    with world.target() as conn:
        ControlStore(CONTROL, "demo").accept_digest(conn, "f" * 64, "alice")

    shown = api.status(DEMO, environ=world.environ)
    assert shown.playbook_changed and shown.accepted is not None and shown.accepted.actor == "alice"
    assert shown.next is not None and shown.next.command == f"migrate run {DEMO} --replan"
    assert "the playbook changed since version ffffffffffff" in shown.next.why
    code, out, _err = cli(world.environ, str(DEMO))
    assert code == 0
    assert "warning: the playbook changed since version ffffffffffff (accepted " in out
    assert "by alice): the next 'migrate run' needs --replan" in out


# ----------------------------------------------------------------------------- settings, flags
def test_status_needs_no_source_settings_and_missing_flag_settings_only_hide_flags(
    canary_done: World, cli: Callable[..., Any]
) -> None:
    """Without the source template status works; without the flag file variable flags are 'unavailable'."""
    world = canary_done
    no_source = {k: v for k, v in world.environ.items() if k != "MIGRATE_SOURCE_DSN_TEMPLATE"}
    shown = api.status(DEMO, environ=no_source)
    assert shown.flags_error is None and shown.tenants[0].flags == {FLAG: True}

    target_only = {"MIGRATE_TARGET_DSN": world.target_dsn}
    shown = api.status(DEMO, environ=target_only)
    assert shown.tenants[0].state == "done" and shown.tenants[0].flags == {}
    assert shown.flags_error is not None and "MIGRATE_FLAG_FILE is not set" in shown.flags_error
    code, out, err = cli(target_only, str(DEMO))
    assert code == 0, err
    assert "flags unavailable: environment variable MIGRATE_FLAG_FILE is not set" in out
    code, out, err = cli(target_only, str(DEMO), "--json")
    assert json.loads(out)["flags"] == {
        "provider": "file",
        "available": False,
        "error": "environment variable MIGRATE_FLAG_FILE is not set; it names the flag state file",
        "flags": [],
    }

    code, out, err = cli({}, str(DEMO))  # the target it does need: an input error, exit 2
    assert code == 2 and "MIGRATE_TARGET_DSN is not set" in err


def test_status_works_while_unleash_is_down_and_says_why_flags_are_unavailable(
    canary_done: World, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    """An Unleash playbook whose server does not answer: status still shows everything, flags unavailable."""
    text = DEMO.read_text()
    start, end = text.index("flags:\n"), text.index("phases:\n")
    book = tmp_path / "unleash.yaml"
    book.write_text(
        text[:start]
        + "flags:\n  provider: unleash\n  url_env: UNLEASH_URL\n  environment: development\n\n"
        + text[end:]
    )
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environ = {
        "MIGRATE_TARGET_DSN": canary_done.target_dsn,
        "UNLEASH_URL": f"http://127.0.0.1:{port}",
        "UNLEASH_ADMIN_TOKEN": "*:*.unused",
        "UNLEASH_CLIENT_TOKEN": "default:development.unused",
    }
    started = time.monotonic()
    code, out, err = cli(environ, str(book), "--json")
    assert code == 0, err
    assert time.monotonic() - started < 30
    data = json.loads(out)
    assert data["flags"]["provider"] == "unleash" and data["flags"]["available"] is False
    assert f"Unleash at http://127.0.0.1:{port} did not answer" in data["flags"]["error"]
    assert [t["state"] for t in data["tenants"]] == ["done", "not started", "not started"]
    assert data["tenants"][0]["flags"] == {}
