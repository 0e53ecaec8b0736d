"""The runner: waves and their gates, --max-failures, dry-run rehearsals that leave no trace but the
ledger's, reports for CI, the playbook version a run works to, read-only sources, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kill import checkpoints, chunked_playbook
from migrate import api
from migrate.cli.app import main
from migrate.control.schema import upgrade
from migrate.errors import ArgumentError
from migrate.playbook import load_playbook
from world import DEMO, ROOT, TABLES, World, corrupt_globex_as_it_is_copied

pytestmark = pytest.mark.tenants(acme=2, globex=1, initech=1)


def playbook(tmp_path: Path, *, approval: bool = False, extra: str = "") -> Path:
    """The demo playbook, with a gate on the main wave if asked, and anything ``extra`` replaces."""
    text = DEMO.read_text().replace("../flags/demo.json", str(DEMO.parent.parent / "flags" / "demo.json"))
    if approval:
        text = text.replace("  - name: main\n", "  - name: main\n    approval: true\n")
    if extra:
        old, new = extra.split(" => ")
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "book.yaml"
    path.write_text(text)
    return path


def control_state(world: World) -> dict[str, Any]:
    """Everything a rehearsal must leave as it found it: shared rows, run state, checkpoints, flags."""
    with world.target() as conn:
        state: dict[str, Any] = {
            name: conn.execute(f"SELECT * FROM migrate_control.{name} ORDER BY 1, 2").fetchall()
            for name in ("runs", "step_state", "checkpoints", "approvals", "playbook_versions", "holders")
        }
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'app'")}
        for table in sorted(tables):
            state[f"app.{table}"] = conn.execute(
                f"SELECT md5(string_agg(t::text, ',' ORDER BY t::text)), count(*) FROM app.{table} t"
            ).fetchone()
    state["flags"] = world.flag_file.read_bytes() if world.flag_file.exists() else None
    return state


def ledger_actions(world: World, since: int = 0) -> list[tuple[str, str | None, str | None, str]]:
    with world.target() as conn:
        return [
            (r[0], r[1], r[2], r[3])
            for r in conn.execute(
                "SELECT action, tenant, step, outcome FROM migrate_control.ledger"
                " WHERE seq > %s ORDER BY seq",
                (since,),
            )
        ]


def ledger_head(world: World) -> int:
    with world.target() as conn:
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM migrate_control.ledger").fetchone()
    assert row is not None
    return int(row[0])


def holds_nothing_of(world: World, tenant: str) -> bool:
    """No shared table holds a row of ``tenant`` (or the shared tables do not exist yet)."""
    with world.target() as conn:
        if conn.execute("SELECT to_regclass('app.tasks')").fetchone() == (None,):
            return True
    return world.target_counts(tenant) == dict.fromkeys(TABLES, 0)


def validation(result: api.RunResult, tenant: str) -> dict[str, Any]:
    (t,) = [t for t in result.tenants if t.tenant == tenant]
    (step,) = [s for s in t.steps if s.kind == "validate"]
    return dict(step.details["tables"])


# ----------------------------------------------------------------------------- dry-run
def test_a_rehearsal_leaves_target_flags_state_and_checkpoints_as_they_were_and_ledgers_each_step(
    world: World,
) -> None:
    """After a real canary, a dry-run of the main wave changes nothing but the ledger: one entry per step."""
    assert api.run(DEMO, environ=world.environ, tenants=["acme"]).ok
    before, head = control_state(world), ledger_head(world)
    rehearsal = api.run(DEMO, environ=world.environ, dry_run=True)
    assert rehearsal.ok and rehearsal.dry_run, [(t.tenant, t.outcome, t.error) for t in rehearsal.tenants]
    assert control_state(world) == before
    added = ledger_actions(world, head)
    steps = ("prepare/schema", "copy/backfill", "copy/validate", "cutover/flag")
    assert sorted(added) == sorted(("rehearsed", t, s, "ok") for t in ("globex", "initech") for s in steps)
    assert api.ledger(DEMO, environ=world.environ).failure is None
    # It copied for real (and rolled back): the figures are those of the real run that follows.
    real = api.run(DEMO, environ=world.environ)
    assert real.ok
    for tenant in ("globex", "initech"):
        assert validation(rehearsal, tenant) == validation(real, tenant)
        assert world.target_counts(tenant) == world.source_counts(tenant)


def test_a_rehearsal_from_nothing_rehearses_every_wave_and_says_where_a_real_run_would_wait(
    world: World, tmp_path: Path
) -> None:
    """Before any run, a dry-run rehearses canary and main (shared tables created and rolled back)."""
    book = playbook(tmp_path, approval=True)
    api.run(book, environ=world.environ, dry_run=True, tenants=["acme"])  # makes the control schema
    before = control_state(world)
    result = api.run(book, environ=world.environ, dry_run=True)
    assert result.ok and [t.outcome for t in result.tenants] == ["done"] * 3
    assert any("waits for approval" in w for w in result.warnings)
    assert control_state(world) == before
    with world.target() as conn:
        assert conn.execute("SELECT to_regclass('app.tasks')").fetchone() == (None,)


def test_a_rehearsed_cutover_reports_the_flip_and_does_not_make_it(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flag step in a dry-run says off -> on; the flag file is untouched; exit 0."""
    for key, value in world.environ.items():
        monkeypatch.setenv(key, value)
    assert main(["run", str(DEMO), "--tenant", "acme", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "acme: done, 4 step(s) rehearsed" in out and "tenant-shared-db: off -> on" in out
    assert "nothing was written" in out
    assert not world.flag_file.exists() or b"acme" not in world.flag_file.read_bytes()


def test_dry_run_reports_in_json_and_junit_with_figures_and_the_failure(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--report and --junit give per-tenant, per-step outcomes, timings and validation figures; a
    rehearsal whose validation fails exits 1 and both reports name the step."""
    for key, value in world.environ.items():
        monkeypatch.setenv(key, value)
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    started = time.monotonic()
    assert (
        main(
            [
                "run",
                str(DEMO),
                "--tenant",
                "acme",
                "--dry-run",
                "--report",
                str(report),
                "--junit",
                str(junit),
            ]
        )
        == 0
    )
    elapsed = time.monotonic() - started
    doc = json.loads(report.read_text())
    assert doc["dry_run"] is True and doc["outcome"] == "ok" and doc["report_version"] == 1
    (acme,) = doc["tenants"]
    steps = {s["step"]: s for s in acme["steps"]}
    assert steps["copy/validate"]["validation"]["match"] is True
    assert steps["copy/validate"]["validation"]["tables"]["tasks"]["source_rows"] == 400
    assert steps["copy/backfill"]["outcome"] == "rehearsed"
    # Timings nest: a step within its tenant, the tenant within the run, the run within the command;
    # and copying 400 tasks (and the rest of acme's rows) takes a measurable time.
    assert 0 < steps["copy/backfill"]["seconds"] <= acme["seconds"] <= doc["seconds"] <= elapsed
    suites = ET.parse(junit).getroot()
    assert suites.find("testsuite[@name='acme']") is not None
    assert suites.find(".//failure") is None
    # A target that corrupts globex's tasks as they arrive: its rehearsal fails validation, exit 1.
    assert api.run(DEMO, environ=world.environ, tenants=["acme"]).ok  # the shared tables exist now
    corrupt_globex_as_it_is_copied(world)
    args = [
        "run",
        str(DEMO),
        "--tenant",
        "globex",
        "--dry-run",
        "--report",
        str(report),
        "--junit",
        str(junit),
    ]
    assert main(args) == 1
    doc = json.loads(report.read_text())
    assert doc["outcome"] == "failed"
    (globex,) = doc["tenants"]
    failed = [s for s in globex["steps"] if s["outcome"] == "failed"]
    assert [s["step"] for s in failed] == ["copy/validate"]
    assert failed[0]["validation"]["tables"]["tasks"]["match"] is False
    assert globex["error"]["where"] == "globex/copy/validate"
    failure = ET.parse(junit).getroot().find(".//testcase[@name='copy/validate']/failure")
    assert failure is not None and "checksums differ" in failure.get("message", "")
    assert holds_nothing_of(world, "globex")


# ----------------------------------------------------------------------------- waves and gates
def test_the_main_wave_waits_for_the_canary(world: World) -> None:
    """A main-wave tenant does not start before every canary tenant finished; then it does."""
    result = api.run(DEMO, environ=world.environ, tenants=["globex"])
    (globex,) = result.tenants
    assert globex.outcome == "waiting" and globex.note and "wave canary" in globex.note
    assert not result.ok and holds_nothing_of(world, "globex")
    assert api.run(DEMO, environ=world.environ, tenants=["acme"]).ok
    assert api.run(DEMO, environ=world.environ, tenants=["globex"]).ok


def test_a_gated_wave_waits_for_approval_which_is_ledgered_with_who_gave_it(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With approval on main: the canary runs, main waits (exit 1, the approve command shown); an approval
    before the canary is done is refused; `migrate approve` opens it and names the approver."""
    book = playbook(tmp_path, approval=True)
    for key, value in world.environ.items():
        monkeypatch.setenv(key, value)
    upgrade(world.target_dsn, "migrate_control")
    with psycopg.connect(world.target_dsn, autocommit=True) as other:  # the canary is busy elsewhere
        other.execute("SELECT pg_advisory_lock(hashtext('migrate.tenant'), hashtext('acme'))")
        assert main(["run", str(book)]) == 1
        with pytest.raises(ArgumentError, match="wave canary is not finished"):
            api.approve(book, "main", environ=world.environ)
    capsys.readouterr()
    assert main(["run", str(book)]) == 1
    out = capsys.readouterr().out
    assert "acme: done" in out and "globex: WAITING" in out
    assert f"migrate approve {book} --wave main" in out
    assert holds_nothing_of(world, "globex")
    assert main(["approve", str(book), "--wave", "main", "--actor", "alice"]) == 0
    assert "wave main approved by alice" in capsys.readouterr().out
    assert ("approved", None, None, "ok") in ledger_actions(world)
    with world.target() as conn:
        row = conn.execute(
            "SELECT actor, wave FROM migrate_control.ledger WHERE action = 'approved'"
        ).fetchone()
    assert row == ("alice", "main")
    assert main(["run", str(book)]) == 0
    assert world.target_counts("initech") == world.source_counts("initech")
    with pytest.raises(ArgumentError, match="no approval gate"):
        api.approve(book, "canary", environ=world.environ)


def test_max_failures_stops_starting_tenants(world: World, tmp_path: Path) -> None:
    """--max-failures 1: after globex fails, initech is not started (and says why)."""
    assert api.run(DEMO, environ=world.environ, tenants=["acme"]).ok
    with world.source("globex") as conn:
        conn.execute("ALTER TABLE tasks ADD COLUMN extra int")
    result = api.run(DEMO, environ=world.environ, max_failures=1)
    outcomes = {t.tenant: (t.outcome, t.note) for t in result.tenants}
    assert outcomes["globex"][0] == "failed"
    assert outcomes["initech"] == ("not started", "--max-failures 1 reached")
    assert holds_nothing_of(world, "initech")
    # Without the limit, one tenant's failure is its own.
    assert api.run(DEMO, environ=world.environ).tenants[-1].outcome == "done"


def test_an_unknown_wave_is_an_input_error_naming_the_waves(world: World) -> None:
    """--wave with a name the playbook does not have is an input error that suggests the nearest wave."""
    with pytest.raises(ArgumentError, match="no wave 'mian'") as err:
        api.run(DEMO, environ=world.environ, wave="mian")
    assert err.value.hint is not None and "did you mean 'main'" in err.value.hint


# ----------------------------------------------------------------------------- playbook version
def test_a_playbook_changed_in_substance_refuses_until_replan_which_is_ledgered(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Comments and layout do not count; a changed setting refuses (exit 2) until --replan."""
    book = playbook(tmp_path)
    for key, value in world.environ.items():
        monkeypatch.setenv(key, value)
    assert main(["run", str(book), "--tenant", "acme"]) == 0
    book.write_text("# a comment\n" + book.read_text().replace("schema: app", "schema:   app  # here"))
    assert main(["run", str(book), "--tenant", "acme"]) == 0
    book.write_text(book.read_text().replace("- kind: backfill", "- {kind: backfill, chunk_rows: 500}"))
    capsys.readouterr()
    assert main(["run", str(book)]) == 2
    err = capsys.readouterr().err
    assert "changed in substance" in err and "--replan" in err
    assert holds_nothing_of(world, "globex")
    assert api.run(book, environ=world.environ, dry_run=True).ok  # a rehearsal of the change is allowed
    result = api.run(book, environ=world.environ, replan=True)
    assert result.ok and result.replanned is not None
    assert result.replanned[1] == load_playbook(book).digest
    assert ("replanned", None, None, "ok") in ledger_actions(world)
    assert api.run(book, environ=world.environ).ok  # the new version is the accepted one now


# ----------------------------------------------------------------------------- sources read-only
def test_sources_are_read_in_read_only_transactions(world: World) -> None:
    """The source connections the steps get refuse any write."""
    loaded = load_playbook(DEMO)
    env = api.environment(loaded, world.environ, with_flags=False)
    with env.connect_source(loaded.tenants[0]) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE written (x int)")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), conn.transaction():
            conn.execute("DELETE FROM tasks")


# ----------------------------------------------------------------------------- Ctrl-C, parallel runners
@pytest.mark.tenants(acme=60)
def test_ctrl_c_stops_at_a_safe_point_says_how_to_resume_and_the_next_run_finishes(
    world: World, tmp_path: Path
) -> None:
    """SIGINT mid-copy: exit 130 after the current chunk, 'resume with', step back to pending; run again
    → exact counts and validation."""
    book = chunked_playbook(tmp_path, ("acme",), chunk_rows=50)
    logs = tmp_path / "run"
    with open(logs.with_suffix(".out"), "wb") as out, open(logs.with_suffix(".err"), "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "migrate", "run", str(book)],
            cwd=ROOT,
            env={**os.environ, **world.environ, "MIGRATE_LOG_LEVEL": "info"},
            stdout=out,
            stderr=err,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoints(world, "acme").get("tasks", (0, False, None))[0] > 0:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.01)
    assert proc.wait(timeout=60) == 130, logs.with_suffix(".err").read_text()[-2000:]
    stdout = logs.with_suffix(".out").read_text()
    assert "STOPPED" in stdout and f"resume with: migrate run {book}" in stdout
    with world.target() as conn:
        state = conn.execute(
            "SELECT status FROM migrate_control.step_state WHERE step_key = 'copy/backfill'"
        ).fetchone()
        stopped = conn.execute(
            "SELECT count(*) FROM migrate_control.ledger WHERE action = 'stopped'"
        ).fetchone()
    assert state == ("pending",) and stopped == (1,)
    finished = {table for table, (_rows, done, _last) in checkpoints(world, "acme").items() if done}
    assert finished < set(TABLES), "the copy was not stopped: every table is done"
    result = api.run(book, environ=world.environ)
    assert result.ok
    assert world.target_counts("acme") == world.source_counts("acme")
    assert api.status(book, environ=world.environ).tenants[0].validated is True


@pytest.mark.tenants(acme=40, globex=40)
def test_two_runners_on_different_tenants_hold_them_at_the_same_time(world: World, tmp_path: Path) -> None:
    """Two real `migrate run` processes, one tenant each, are seen holding their tenants at once."""
    book = chunked_playbook(tmp_path, ("acme", "globex"), chunk_rows=50)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "migrate", "run", str(book), "--tenant", tenant],
            cwd=ROOT,
            env={**os.environ, **world.environ, "MIGRATE_LOG_LEVEL": "warning"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for tenant in ("acme", "globex")
    ]
    loaded = load_playbook(book)
    store = api.environment(loaded, world.environ, with_flags=False).control
    both = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(p.poll() is None for p in procs) and not both:
        try:
            with world.target() as conn:
                holders = store.holders(conn, ["acme", "globex"])
        except psycopg.Error:
            holders = {}
        both = len(holders) == 2 and holders["acme"].pid != holders["globex"].pid
        time.sleep(0.01)
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert both, "the two runners never held their tenants at the same time"
    for tenant in ("acme", "globex"):
        assert world.target_counts(tenant) == world.source_counts(tenant)
