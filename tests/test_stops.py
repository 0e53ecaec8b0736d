"""Every stop leaves a true state: a real `migrate rollback` stopped by Ctrl-C or SIGTERM, or killed with
kill -9, mid-way; `status` names it with the command that finishes it, `run` refuses the tenant, and
that command does finish it. Plus SIGTERM on a real `migrate run`."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from psycopg import sql

from kill import checkpoints, chunked_playbook
from migrate import api
from migrate.errors import ArgumentError
from rollbacks import DISCARD, chunked, flag_on, shared_rows, step_states
from world import ROOT, TABLES, World


def held_rows(world: World, tenant: str) -> int:
    total = sql.SQL(" + ").join(
        sql.SQL("(SELECT count(*) FROM {} WHERE tenant_id = %s)").format(sql.Identifier("app", t))
        for t in TABLES
    )
    with world.target() as conn:
        row = conn.execute(sql.SQL("SELECT ") + total, [tenant] * len(TABLES)).fetchone()
    assert row is not None
    return int(row[0])


def spawn(world: World, logs: Path, *args: str) -> subprocess.Popen[bytes]:
    """A real `migrate …` process, its output in logs.out / logs.err (a full pipe would stall it)."""
    with open(logs.with_suffix(".out"), "wb") as out, open(logs.with_suffix(".err"), "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "migrate", *args],
            cwd=ROOT,
            env={**os.environ, **world.environ},
            stdout=out,
            stderr=err,
        )


def signal_when(proc: subprocess.Popen[bytes], ready: object, signum: int, what: str) -> int:
    """Send ``signum`` once ``ready()`` holds; the process's exit code."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():  # type: ignore[operator]
            proc.send_signal(signum)
            break
        time.sleep(0.005)
    else:
        pytest.fail(f"the process ended (or hung) before {what}")
    return proc.wait(timeout=60)


@pytest.mark.tenants(acme=60)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_rollback_stopped_mid_way_is_recorded_refused_by_run_and_finished_by_the_command_status_gives(
    signum: signal.Signals, world: World, tmp_path: Path
) -> None:
    """Ctrl-C / SIGTERM stop a real rollback at a safe point (exit 130, 'finish it with'), kill -9 anywhere:
    status says 'rollback interrupted' with the rollback command; run refuses (exit 2, that command)
    and cuts nothing over; the command from status finishes the rollback; then run validates."""
    book = chunked(tmp_path)
    assert api.run(book, ["acme"], environ=world.environ).ok
    total = held_rows(world, "acme")
    logs = tmp_path / "rollback"
    proc = spawn(world, logs, "rollback", str(book), "--tenant", "acme", "--to", "pre-copy", "--yes", DISCARD)
    code = signal_when(proc, lambda: 0 < held_rows(world, "acme") < total, signum, "rows were deleted")
    out, err = logs.with_suffix(".out").read_text(), logs.with_suffix(".err").read_text()
    finish = f"migrate rollback {book} --tenant acme --to pre-copy --yes {DISCARD}"
    if signum == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 130, err
        assert "rollback STOPPED at a safe point" in out and "unfinished: acme" in out
        assert f"finish it with: {finish}" in out
        assert "stopping the rollback at the next safe point" in err
    left = held_rows(world, "acme")
    assert 0 < left < total, "whole batches: some rows deleted, some not"
    assert flag_on(world) == [], "the flag went back first"
    assert step_states(world, "acme")["copy/backfill"] == "done"  # the lie status must not repeat

    shown = api.status(book, environ=world.environ)
    acme = shown.tenants[0]
    assert acme.state == "rollback interrupted" and acme.rows is None
    assert acme.rollback is not None and acme.rollback.point == "pre-copy"
    assert shown.next is not None and shown.next.command == finish
    assert "refuses these tenants" in shown.next.why

    refused = spawn(world, tmp_path / "run", "run", str(book), "--tenant", "acme")
    assert refused.wait(timeout=60) == 2
    said = (tmp_path / "run.out").read_text() + (tmp_path / "run.err").read_text()
    assert "acme: REFUSED" in said and f"finish the rollback first: {finish}" in said
    assert flag_on(world) == [] and held_rows(world, "acme") == left, "the refused run changed nothing"

    args = shlex.split(shown.next.command)
    assert args[:2] == ["migrate", "rollback"]
    finished = spawn(world, tmp_path / "finish", *args[1:])
    assert finished.wait(timeout=120) == 0, (tmp_path / "finish.err").read_text()[-2000:]
    assert set(shared_rows(world, "acme").values()) == {0}
    after = api.status(book, environ=world.environ)
    assert after.tenants[0].state == "rolled back" and after.tenants[0].rollback is None
    assert after.next is not None and after.next.command.startswith("migrate run")
    assert api.run(book, ["acme"], environ=world.environ).ok
    assert api.status(book, environ=world.environ).tenants[0].validated is True


@pytest.mark.tenants("acme")
def test_a_rollback_to_a_later_point_refuses_while_one_to_an_earlier_point_is_unfinished(
    world: World, tmp_path: Path
) -> None:
    """A stopped rollback to pre-copy cannot be 'finished' by one to pre-cutover (which would leave the rows
    half deleted and call the tenant rolled back): exit 2 naming the command that finishes it."""
    book = chunked(tmp_path)
    assert api.run(book, ["acme"], environ=world.environ).ok
    stop = threading.Event()
    stop.set()  # asked to stop before the first step: everything is left unfinished
    result = api.rollback(
        book, "acme", "pre-copy", environ=world.environ, discard_writes_since_cutover=True, stop=stop
    )
    assert result.stopped is not None and result.unfinished == ("acme",) and result.steps == []
    with pytest.raises(ArgumentError) as refused:
        api.rollback(book, "acme", "pre-cutover", environ=world.environ, discard_writes_since_cutover=True)
    assert refused.value.hint is not None and "--to pre-copy" in refused.value.hint


@pytest.mark.tenants(acme=60)
def test_sigterm_stops_a_run_at_a_safe_point_like_ctrl_c(
    world: World, tmp_path: Path
) -> None:
    """SIGTERM (a CI cancel, an orchestrator) mid-copy: exit 130 after the current chunk, 'resume with',
    the step back to pending; the next run finishes with exact counts."""
    book = chunked_playbook(tmp_path, ("acme",), chunk_rows=50)
    logs = tmp_path / "run"
    proc = spawn(world, logs, "run", str(book))
    code = signal_when(
        proc,
        lambda: checkpoints(world, "acme").get("tasks", (0, False, None))[0] > 0,
        signal.SIGTERM,
        "tasks were being copied",
    )
    assert code == 130, logs.with_suffix(".err").read_text()[-2000:]
    assert f"resume with: migrate run {book}" in logs.with_suffix(".out").read_text()
    assert "SIGTERM: stopping the run at the next safe point" in logs.with_suffix(".err").read_text()
    assert step_states(world, "acme")["copy/backfill"] == "pending"
    assert api.run(book, environ=world.environ).ok
    assert world.target_counts("acme") == world.source_counts("acme")


def test_sigterm_ends_any_other_command_with_130_and_says_so(tmp_path: Path) -> None:
    """A read-only command stopped by SIGTERM says 'interrupted (SIGTERM)' and exits 130, not 143."""
    fifo = tmp_path / "playbook.yaml"  # `plan` waits reading it: the signal comes while it runs
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "migrate", "plan", str(fifo)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    writer = None
    while writer is None and time.monotonic() < deadline and proc.poll() is None:
        try:  # succeeds once `plan` has the FIFO open for reading: it is in the command by then
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            time.sleep(0.01)
    assert writer is not None, "plan never opened its playbook"
    try:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(writer)
    assert proc.returncode == 130, (out, err)
    assert "interrupted (SIGTERM)" in err


@pytest.mark.tenants(acme=60)
def test_kill_9_inside_a_discarding_rollback_to_pre_cutover_is_finished_by_the_same_command(
    world: World, tmp_path: Path
) -> None:
    """Across the cut-over with its writes discarded, a rollback even to pre-cutover deletes the copy;
    killed mid-way (the cut-over already reverted), the same command still deletes the rest — it is not
    fooled into 'nothing crossed' — and the next run copies and validates afresh."""
    book = chunked(tmp_path)
    assert api.run(book, ["acme"], environ=world.environ).ok
    total = held_rows(world, "acme")
    logs = tmp_path / "rollback"
    args = ("rollback", str(book), "--tenant", "acme", "--to", "pre-cutover", "--yes", DISCARD)
    proc = spawn(world, logs, *args)
    deleting = lambda: 0 < held_rows(world, "acme") < total  # noqa: E731
    code = signal_when(proc, deleting, signal.SIGKILL, "rows were deleted")
    assert code == -signal.SIGKILL
    assert 0 < held_rows(world, "acme") < total
    assert flag_on(world) == [] and step_states(world, "acme")["cutover/flag"] == "reverted"
    shown = api.status(book, environ=world.environ)
    assert shown.next is not None and shown.next.command == f"migrate {shlex.join(args)}"
    finished = spawn(world, tmp_path / "finish", *args)
    assert finished.wait(timeout=120) == 0, (tmp_path / "finish.err").read_text()[-2000:]
    assert "copy/backfill" in (tmp_path / "finish.out").read_text()
    assert set(shared_rows(world, "acme").values()) == {0}
    assert step_states(world, "acme")["copy/backfill"] == "reverted"
    again = api.run(book, ["acme"], environ=world.environ)
    assert again.ok
    assert "copy/backfill" in [s.key for s in again.tenants[0].steps if s.outcome == "applied"]
    assert world.target_counts("acme") == world.source_counts("acme")
    assert api.status(book, environ=world.environ).tenants[0].validated is True
