"""`migrate rollback`: every flag first, then data in committed batches; refuses to cross a cut-over
unless told; all or nothing on locks; survives kill -9 on either side; idempotent; the next run
re-applies what was reverted."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from databases import DatabaseFactory
from kill import sessions_gone
from migrate import api
from migrate.cli.app import main
from migrate.errors import ArgumentError, SettingsError, TenantLocked
from rollbacks import (
    DISCARD,
    chunked,
    demo_variant,
    flag_file,
    flag_on,
    ledger,
    shared_rows,
    step_states,
)
from world import CYCLE, DEMO, ROOT, TABLES, World, custom_world

pytestmark = pytest.mark.tenants("acme", "globex", "initech")

POINTS = [s.step_id.removeprefix("@") for s in api.plan(DEMO).tenants[0].steps if s.is_point]


def run_all(world: World, book: Path = DEMO) -> Any:
    """Every tenant through every phase, with the flag file created (all off) first: its 'before'."""
    api.flags_sync(book, environ=world.environ)
    before = flag_file(world)
    assert api.run(book, environ=world.environ).ok
    assert flag_on(world) == ["acme", "globex", "initech"]
    return before


def validated(
    world: World, book: Path = DEMO, tenants: list[str] | None = None
) -> dict[str, tuple[str, bool | None]]:
    found = api.status(book, tenants, environ=world.environ).tenants
    return {t.tenant: (t.state, t.validated) for t in found}


# ----------------------------------------------------------------------------- every rollback point
@pytest.mark.parametrize("point", POINTS)
def test_every_rollback_point_of_the_demo_playbook_reverts_then_runs_again_and_validates(
    world: World, point: str
) -> None:
    """Roll acme back to each point: flags first; across the copy no row of acme is left in any shared
    table; others untouched; rolling back the rest gives the flag file back exactly; a run validates.
    Across the cut-over with its writes discarded, even to pre-cutover the copy goes too (the shared
    rows may hold the discarded writes): the next run copies and validates afresh."""
    assert POINTS == ["pre-copy", "pre-cutover"]
    before = run_all(world)
    others = {t: shared_rows(world, t) for t in ("globex", "initech")}
    result = api.rollback(DEMO, "acme", point, environ=world.environ, discard_writes_since_cutover=True)
    expected = {
        "pre-copy": ["cutover/flag", "copy/validate", "copy/backfill"],
        "pre-cutover": ["cutover/flag", "copy/validate", "copy/backfill"],
    }[point]
    assert [r.key for r in result.steps_of("acme")] == expected
    if "copy/backfill" in expected:
        assert set(shared_rows(world, "acme").values()) == {0}, "a row of acme outlived the rollback"
        with world.target() as conn:
            left = conn.execute("SELECT count(*) FROM migrate_control.checkpoints WHERE tenant = 'acme'")
            assert left.fetchone() == (1,), "only the flag step's consumed snapshot may stay"
    else:
        assert world.target_counts("acme") == world.source_counts("acme"), "data kept before the cut-over"
    assert flag_on(world) == ["globex", "initech"]
    assert {t: shared_rows(world, t) for t in ("globex", "initech")} == others
    assert step_states(world, "acme")["copy/@pre-copy"] == "done"
    assert all(step_states(world, "acme")[key] == "reverted" for key in expected)
    if point == "pre-cutover":
        assert step_states(world, "acme")["copy/@pre-cutover"] == "reverted"  # the copy is to be made again
    main_wave = api.rollback(
        DEMO, None, point, wave="main", environ=world.environ, discard_writes_since_cutover=True
    )
    assert main_wave.tenants == ("globex", "initech")
    assert flag_file(world) == before, "the flag file is not what it was before the first run"
    assert api.run(DEMO, environ=world.environ).ok
    assert validated(world) == {t: ("done", True) for t in ("acme", "globex", "initech")}
    assert world.target_counts("acme") == world.source_counts("acme")
    assert flag_on(world) == ["acme", "globex", "initech"]


def test_rollback_ledgers_every_action_and_the_accepted_loss(world: World) -> None:
    """rollback_started, the accepted loss of writes (who, which cut-over), one 'reverted' per step in
    the order done, rollback_finished; and the chain still verifies."""
    run_all(world)
    api.rollback(
        DEMO,
        ["acme"],
        "pre-copy",
        environ={**world.environ, "MIGRATE_ACTOR": "oncall"},
        discard_writes_since_cutover=True,
    )
    entries = [e for e in ledger(world) if e[3] == "oncall"]
    assert [(a, o, s) for a, o, s, _ in entries] == [
        ("rollback_started", "ok", None),
        ("cutover_writes_discarded", "accepted", "cutover/flag"),
        ("reverted", "ok", "cutover/flag"),
        ("reverted", "ok", "copy/validate"),
        ("reverted", "ok", "copy/backfill"),
        ("rollback_finished", "ok", None),
    ]
    with world.target() as conn:
        row = conn.execute(
            "SELECT details FROM migrate_control.ledger WHERE action = 'cutover_writes_discarded'"
        ).fetchone()
        run = conn.execute(
            "SELECT command, outcome FROM migrate_control.runs WHERE actor = 'oncall'"
        ).fetchone()
    assert row is not None and row[0]["accepted_with"] == DISCARD and row[0]["cutover_at"]
    assert run == ("rollback --to pre-copy --tenant acme --discard-writes-since-cutover", "ok")
    assert api.ledger(DEMO, environ=world.environ).failure is None


# ----------------------------------------------------------------------------- the cut-over
def test_a_rollback_across_the_cutover_refuses_without_the_option_and_changes_nothing(world: World) -> None:
    """Writes since the cut-over live only in the shared schema: without the option nothing moves, and
    the error says when the cut-over was, why, and which option accepts the loss."""
    run_all(world)
    states, rows, entries = step_states(world, "acme"), shared_rows(world, "acme"), len(ledger(world))
    for point in POINTS:
        with pytest.raises(ArgumentError) as info:
            api.rollback(DEMO, "acme", point, environ=world.environ)
        assert "tenant 'acme' was cut over at " in info.value.message and " UTC" in info.value.message
        assert "no reverse sync" in info.value.message and "lose" in info.value.message
        assert info.value.hint is not None and DISCARD in info.value.hint
    assert flag_on(world) == ["acme", "globex", "initech"]
    assert shared_rows(world, "acme") == rows and step_states(world, "acme") == states
    assert len(ledger(world)) == entries


def test_a_rollback_to_a_point_after_the_cutover_never_crosses_it(world: World, tmp_path: Path) -> None:
    """Only the steps after the point go back: a point after the flag step needs no option."""
    book = demo_variant(
        tmp_path,
        "post-cutover",
        (
            "        action: enable\n",
            "        action: enable\n"
            "      - rollback_point: post-cutover\n"
            "      - {kind: validate, id: recheck}\n",
        ),
    )
    api.flags_sync(book, environ=world.environ)
    assert api.run(book, environ=world.environ, tenants=["acme"]).ok
    result = api.rollback(book, "acme", "post-cutover", environ=world.environ)
    assert [r.key for r in result.steps] == ["cutover/recheck"] and result.discarded == ()
    assert flag_on(world) == ["acme"]
    assert result.seconds_to_flags is None


def test_a_cutover_that_a_kill_left_running_counts_as_crossed(world: World) -> None:
    """A flag step left 'running' may have flipped: the rollback refuses as for a finished cut-over."""
    run_all(world)
    with world.target() as conn:
        conn.execute(
            "UPDATE migrate_control.step_state SET status = 'running', finished_at = NULL"
            " WHERE tenant = 'acme' AND step_key = 'cutover/flag'"
        )
    with pytest.raises(ArgumentError, match="may be cut over: cutover/flag, which turns flag"):
        api.rollback(DEMO, "acme", "pre-cutover", environ=world.environ)
    api.rollback(DEMO, "acme", "pre-cutover", environ=world.environ, discard_writes_since_cutover=True)
    assert flag_on(world) == ["globex", "initech"]


# ----------------------------------------------------------------------------- order and targets
def test_a_wave_goes_back_flags_of_every_tenant_first_then_data_tenant_by_tenant(world: World) -> None:
    """Traffic first for the whole wave, then each tenant's data; --all-tenants takes the rest."""
    before = run_all(world)
    result = api.rollback(
        DEMO, None, "pre-copy", wave="main", environ=world.environ, discard_writes_since_cutover=True
    )
    assert [(r.tenant, r.key) for r in result.steps] == [
        ("globex", "cutover/flag"),
        ("initech", "cutover/flag"),
        ("globex", "copy/validate"),
        ("globex", "copy/backfill"),
        ("initech", "copy/validate"),
        ("initech", "copy/backfill"),
    ]
    assert flag_on(world) == ["acme"]
    assert set(shared_rows(world, "globex").values()) == set(shared_rows(world, "initech").values()) == {0}
    assert world.target_counts("acme") == world.source_counts("acme")
    rest = api.rollback(
        DEMO, None, "pre-copy", all_tenants=True, environ=world.environ, discard_writes_since_cutover=True
    )
    assert [(r.tenant, r.key) for r in rest.steps] == [
        ("acme", "cutover/flag"),
        ("acme", "copy/validate"),
        ("acme", "copy/backfill"),
    ]
    assert flag_file(world) == before
    for tenant in ("acme", "globex", "initech"):
        assert set(shared_rows(world, tenant).values()) == {0}


def test_flags_go_back_before_data_whatever_their_order_in_the_playbook(world: World, tmp_path: Path) -> None:
    """A flag step that ran before the copy is still reverted before the data."""
    book = demo_variant(
        tmp_path,
        "flag-early",
        (
            "      - kind: backfill",
            "      - {kind: flag, flag: tenant-shared-db, action: disable, id: early-flag}\n"
            "      - kind: backfill",
        ),
    )
    assert api.run(book, environ=world.environ, tenants=["acme"]).ok
    result = api.rollback(book, "acme", "pre-copy", environ=world.environ, discard_writes_since_cutover=True)
    assert [r.key for r in result.steps] == [
        "cutover/flag",
        "copy/early-flag",
        "copy/validate",
        "copy/backfill",
    ]


def test_several_tenants_by_name_and_one_kind_of_target_only(world: World) -> None:
    """--tenant repeats; naming none, or two kinds at once, is an input error before any connection."""
    run_all(world)
    result = api.rollback(
        DEMO, ["initech", "acme"], "pre-cutover", environ=world.environ, discard_writes_since_cutover=True
    )
    assert [(r.tenant, r.key) for r in result.steps] == [
        ("acme", "cutover/flag"),
        ("initech", "cutover/flag"),
        ("acme", "copy/validate"),
        ("acme", "copy/backfill"),
        ("initech", "copy/validate"),
        ("initech", "copy/backfill"),
    ]
    assert flag_on(world) == ["globex"]
    nowhere = {"MIGRATE_TARGET_DSN": "postgresql://nobody@127.0.0.1:1/none"}
    with pytest.raises(ArgumentError, match="name the tenants to roll back once"):
        api.rollback(DEMO, None, "pre-copy", environ=nowhere)
    with pytest.raises(ArgumentError, match="--tenant and --wave exclude each other"):
        api.rollback(DEMO, "acme", "pre-copy", wave="main", environ=nowhere)
    with pytest.raises(ArgumentError, match="--wave and --all-tenants exclude each other"):
        api.rollback(DEMO, None, "pre-copy", wave="main", all_tenants=True, environ=nowhere)
    with pytest.raises(ArgumentError, match="no wave 'mian'"):
        api.rollback(DEMO, None, "pre-copy", wave="mian", environ=nowhere)


def test_a_locked_tenant_refuses_the_whole_rollback_before_any_flag_moves(world: World) -> None:
    """All or nothing: another runner holds globex, so acme's flag stays on too; the error names it."""
    run_all(world)
    with world.target() as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext('migrate.tenant'), hashtext('globex'))")
        with pytest.raises(TenantLocked) as info:
            api.rollback(
                DEMO,
                None,
                "pre-cutover",
                all_tenants=True,
                environ=world.environ,
                discard_writes_since_cutover=True,
            )
        assert "tenant 'globex' is being worked on by" in info.value.message
        assert "Nothing was rolled back" in info.value.message and "acme" not in info.value.message
        assert flag_on(world) == ["acme", "globex", "initech"]
        assert "rollback_started" not in [e[0] for e in ledger(world)]
    api.rollback(
        DEMO, None, "pre-cutover", all_tenants=True, environ=world.environ, discard_writes_since_cutover=True
    )
    assert flag_on(world) == []


# ----------------------------------------------------------------------------- idempotent, timing, failures
def test_a_second_rollback_to_the_same_point_is_a_no_op_that_says_so(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing left to revert: no step changes state, exit 0, and the output says so."""
    run_all(world)
    for key, value in world.environ.items():
        monkeypatch.setenv(key, value)
    args = ["rollback", str(DEMO), "--tenant", "acme", "--to", "pre-copy", "--yes", DISCARD]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "reverted acme cutover/flag" in out and "flag 'tenant-shared-db' off again" in out
    assert "reverted acme copy/backfill" in out and "rows deleted in" in out
    assert "traffic back on the old databases after " in out and "(flags restored); done after " in out
    states = step_states(world, "acme")
    assert main(args) == 0
    assert "nothing after 'pre-copy' to revert for acme" in capsys.readouterr().out
    assert step_states(world, "acme") == states
    again = api.rollback(DEMO, "acme", "pre-copy", environ=world.environ)  # no cut-over left to cross
    assert again.nothing and again.seconds_to_flags is None


def test_times_count_from_the_command_start_flags_before_done(world: World) -> None:
    """The figures start at the caller's clock: flags restored no later than done."""
    run_all(world)
    result = api.rollback(
        DEMO,
        "acme",
        "pre-copy",
        environ=world.environ,
        discard_writes_since_cutover=True,
        started=time.monotonic() - 5,
    )
    assert result.seconds_to_flags is not None
    assert 5 <= result.seconds_to_flags <= result.seconds_total < 60


def test_a_source_that_does_not_answer_delays_no_flag_and_the_next_rollback_finishes(world: World) -> None:
    """Flags go back without the source; the data revert then fails saying traffic is back already;
    the same rollback later finishes only what is left."""
    run_all(world)
    broken = {**world.environ, "MIGRATE_SOURCE_DSN_TEMPLATE": world.source_dsn("{tenant}") + "_gone"}
    with pytest.raises(SettingsError) as info:
        api.rollback(DEMO, "acme", "pre-copy", environ=broken, discard_writes_since_cutover=True)
    assert info.value.hint is not None and info.value.hint.startswith("the flags are restored")
    assert flag_on(world) == ["globex", "initech"]
    assert step_states(world, "acme")["copy/backfill"] == "done"
    assert ("rollback_finished", "error", None, "pytest") in ledger(world)
    rest = api.rollback(DEMO, "acme", "pre-copy", environ=world.environ)
    assert [r.key for r in rest.steps] == ["copy/validate", "copy/backfill"]
    assert set(shared_rows(world, "acme").values()) == {0}


def test_rollback_to_an_unknown_point_lists_the_points(world: World) -> None:
    """A misspelt rollback point is an input error naming the points there are."""
    with pytest.raises(ArgumentError, match="no rollback point 'pre-cutovr'") as info:
        api.rollback(DEMO, "acme", "pre-cutovr", environ=world.environ)
    assert info.value.hint and "pre-cutover" in info.value.hint


# ----------------------------------------------------------------------------- kill -9, both sides
def spawn(world: World, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "migrate", *args],
        cwd=ROOT,
        env={**os.environ, **world.environ, "MIGRATE_LOG_LEVEL": "warning"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill_when(world: World, proc: subprocess.Popen[bytes], ready: Any, what: str) -> None:
    """SIGKILL once ``ready()``; then wait until the server has ended the dead process's sessions."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            hit = ready()
        except psycopg.Error:  # the control schema may not exist yet
            hit = False
        if hit:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the process ended before {what}"
    # Until then, a session of the dead process may still commit the batch it was sent.
    assert sessions_gone(world, proc.pid), "the dead process's sessions outlived it"


@pytest.mark.tenants(acme=80)
def test_kill_9_mid_backfill_then_rollback_to_pre_copy_leaves_no_row_then_run_validates(
    world: World, tmp_path: Path
) -> None:
    """A real `migrate run` killed mid-copy leaves the backfill 'running' with whole chunks: rollback
    reverts it too, no row of the tenant stays in any shared table, and a run then validates."""
    book = chunked(tmp_path)

    def two_tables_done() -> bool:
        with world.target() as conn:
            row = conn.execute(
                "SELECT count(*) FROM migrate_control.checkpoints WHERE tenant = 'acme' AND done"
            ).fetchone()
        return bool(row and row[0] >= 2)

    kill_when(
        world, spawn(world, "run", str(book), "--tenant", "acme"), two_tables_done, "two tables were copied"
    )
    assert step_states(world, "acme")["copy/backfill"] == "running"
    assert sum(shared_rows(world, "acme").values()) > 0
    result = api.rollback(book, "acme", "pre-copy", environ=world.environ)
    assert [r.key for r in result.steps] == ["copy/backfill"] and result.discarded == ()
    assert set(shared_rows(world, "acme").values()) == {0}
    assert api.run(book, ["acme"], environ=world.environ).ok
    assert validated(world, book, ["acme"]) == {"acme": ("done", True)}
    assert world.target_counts("acme") == world.source_counts("acme")


@pytest.mark.tenants(acme=80)
def test_kill_9_mid_revert_leaves_whole_batches_that_the_next_rollback_finishes(
    world: World, tmp_path: Path
) -> None:
    """Batches commit one by one (a kill mid-revert finds some rows gone, the flag already off, the
    backfill still 'done'); the same rollback again deletes the rest; a run then validates."""
    book = chunked(tmp_path)
    assert api.run(book, ["acme"], environ=world.environ).ok
    total = sum(shared_rows(world, "acme").values())

    def some_rows_gone() -> bool:
        held = sql.SQL(" + ").join(
            sql.SQL("(SELECT count(*) FROM {} WHERE tenant_id = 'acme')").format(sql.Identifier("app", t))
            for t in TABLES
        )
        with world.target() as conn:
            row = conn.execute(sql.SQL("SELECT ") + held).fetchone()
        return bool(row and 0 < row[0] < total)

    proc = spawn(world, "rollback", str(book), "--tenant", "acme", "--to", "pre-copy", "--yes", DISCARD)
    kill_when(world, proc, some_rows_gone, "it had deleted some rows")
    left = shared_rows(world, "acme")
    assert 0 < sum(left.values()) < total, "a kill mid-revert leaves whole batches, some deleted, some not"
    assert flag_on(world) == [], "the flag went back before any data"
    assert step_states(world, "acme")["copy/backfill"] == "done"
    result = api.rollback(book, "acme", "pre-copy", environ=world.environ)
    assert [r.key for r in result.steps] == ["copy/backfill"]
    details = result.steps[0].details
    assert details["deleted"] == left, "the second rollback deletes exactly the rows the first left"
    # Batches of at most 100 rows (the playbook's chunk_rows) in each table, as the first rollback.
    assert details["batches"] == {table: -(-rows // 100) for table, rows in left.items()}
    assert set(shared_rows(world, "acme").values()) == {0}
    assert api.run(book, ["acme"], environ=world.environ).ok
    assert validated(world, book, ["acme"]) == {"acme": ("done", True)}


def test_batches_are_at_most_chunk_rows_and_cover_every_table(world: World, tmp_path: Path) -> None:
    """The revert deletes children first, each table in batches no larger than the playbook's chunk."""
    book = chunked(tmp_path)
    assert api.run(book, environ=world.environ, tenants=["acme"]).ok
    counts = world.target_counts("acme")
    result = api.rollback(book, "acme", "pre-copy", environ=world.environ, discard_writes_since_cutover=True)
    details = result.steps_of("acme")[-1].details
    assert details["deleted"] == counts
    order = list(details["deleted"])
    for child, parent in [
        ("comments", "tasks"),
        ("attachments", "tasks"),
        ("tasks", "projects"),
        ("projects", "users"),
        ("users", "organizations"),
    ]:
        assert order.index(child) < order.index(parent), f"{parent} went before its child {child}"
    for table, rows in counts.items():
        assert details["batches"][table] == -(-rows // 100), table  # 100-row key ranges, then the rest


def test_a_cycle_and_a_self_reference_are_deleted_in_batches_then_copied_again(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """teams ⇄ members and members.mentor_id: batches of 50 leave references to deleted rows only
    until the last one, with the foreign-key checks off for those tables alone; other tenants stay."""
    world = custom_world(database_factory, tmp_path, CYCLE, ("acme", "globex"))
    book = tmp_path / "cycle.yaml"
    book.write_text(
        "version: 1\nname: cycle\n"
        "target: {dsn_env: MIGRATE_TARGET_DSN, schema: app}\n"
        "source: {dsn_template_env: MIGRATE_SOURCE_DSN_TEMPLATE, schema: public}\n"
        "tenants: [{id: acme}, {id: globex}]\ntables: auto\n"
        "phases:\n  - name: copy\n    steps:\n      - kind: schema\n      - rollback_point: pre-copy\n"
        "      - {kind: backfill, chunk_rows: 50}\n      - kind: validate\n"
    )
    assert api.run(book, environ=world.environ).ok
    result = api.rollback(book, "acme", "pre-copy", environ=world.environ)
    details = result.steps_of("acme")[-1].details
    assert details["deleted"] == {"teams": 20, "members": 400} and details["batches"]["members"] == 8
    assert shared_rows(world, "acme") == {"members": 0, "teams": 0}
    assert shared_rows(world, "globex") == {"members": 400, "teams": 20}
    assert api.run(book, environ=world.environ).ok
    assert validated(world, book) == {"acme": ("done", True), "globex": ("done", True)}


# ----------------------------------------------------------------------------- the command line
def test_cli_rollback_without_a_terminal_requires_yes(capsys: pytest.CaptureFixture[str]) -> None:
    """Scripts must say --yes: without a terminal rollback refuses before touching anything."""
    code = main(["rollback", str(DEMO), "--tenant", "acme", "--to", "pre-cutover"])
    assert code == 2 and "--yes" in capsys.readouterr().err


def test_cli_refusal_across_the_cutover_exits_2_naming_the_option(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The refusal is an input error (exit 2) whose hint names the option; nothing changed."""
    run_all(world)
    for key, value in world.environ.items():
        monkeypatch.setenv(key, value)
    assert main(["rollback", str(DEMO), "--wave", "canary", "--to", "pre-cutover", "--yes"]) == 2
    err = capsys.readouterr().err
    assert "tenant 'acme' was cut over at" in err and "no reverse sync" in err and DISCARD in err
    assert flag_on(world) == ["acme", "globex", "initech"]


def on_a_terminal(world: World, args: list[str], answer: str) -> tuple[int, str, str]:
    """`migrate ARGS` with a real terminal as stdin, answering ``answer`` to its question."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "migrate", *args],
            cwd=ROOT,
            env={**os.environ, **world.environ, "MIGRATE_LOG_LEVEL": "warning"},
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        os.write(master, answer.encode() + b"\n")  # waits in the terminal until the question reads it
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(slave)
        os.close(master)
    return proc.returncode, out.decode(), err.decode()


def test_cli_on_a_terminal_shows_what_goes_back_flags_first_and_asks(world: World) -> None:
    """On a terminal: the steps, every flag first, and the loss to accept, then a question; 'n' changes
    nothing, 'y' rolls back; a refusal comes before any question."""
    run_all(world)
    args = ["rollback", str(DEMO), "--all-tenants", "--to", "pre-copy"]
    code, out, _ = on_a_terminal(world, args, "y")
    assert code == 2 and "Roll back" not in out
    code, out, _ = on_a_terminal(world, [*args, DISCARD], "n")
    assert code == 1, out
    lines = out.splitlines()
    assert lines[0] == "rollback to 'pre-copy' will revert, every flag first:"
    assert [line.split()[:2] for line in lines[1:10]] == [
        ["acme", "cutover/flag"],
        ["globex", "cutover/flag"],
        ["initech", "cutover/flag"],
        ["acme", "copy/validate"],
        ["acme", "copy/backfill"],
        ["globex", "copy/validate"],
        ["globex", "copy/backfill"],
        ["initech", "copy/validate"],
        ["initech", "copy/backfill"],
    ]
    assert "its writes since then will be LOST" in out
    assert "Roll back 3 tenants (acme, globex, initech) to 'pre-copy'?" in out
    assert flag_on(world) == ["acme", "globex", "initech"]
    code, out, err = on_a_terminal(world, [*args, DISCARD], "y")
    assert code == 0, err
    assert "acme, globex, initech rolled back to 'pre-copy': traffic back on the old databases after" in out
    assert flag_on(world) == []
