"""Output that survives a CI log and a large playbook: no value cut without a terminal, status on one
screen at 300 tenants with complete JSON, progress totals that are exact on fresh data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from io import StringIO
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from rich.console import Console

from kill import chunked_playbook
from migrate import api
from migrate.cli.app import main
from migrate.cli.progress import PlainProgress
from migrate.control import schema as control_schema
from migrate.control.store import ControlStore
from migrate.plan import StepStatus, build_plan
from migrate.playbook import load_playbook
from migrate.steps.context import ProgressEvent
from status_keys import TENANT_KEYS, TOP_KEYS
from world import DEMO, ROOT, World

SETTINGS = ("MIGRATE_TARGET_DSN", "MIGRATE_SOURCE_DSN_TEMPLATE", "MIGRATE_FLAG_FILE", "COLUMNS")
DISCARD = "--discard-writes-since-cutover"
LONG = "tenant-with-a-long-name-that-a-terminal-of-80-columns-would-cut"  # 63 characters


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Any]:
    """`migrate …` in-process, stdout not a terminal and no COLUMNS: what a pipe or a CI log gets."""

    def run(environ: dict[str, str], *args: str) -> tuple[int, str, str]:
        for key in SETTINGS:
            monkeypatch.delenv(key, raising=False)
        for key, value in environ.items():
            monkeypatch.setenv(key, value)
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def many_tenants(tmp_path: Path, ids: list[str]) -> Path:
    """The demo playbook with an inventory of ``ids``: the first five the canary, the rest main."""
    lines = [f"  - {{id: {t}, wave: {'canary' if i < 5 else 'main'}}}" for i, t in enumerate(ids)]
    (tmp_path / "tenants.yaml").write_text("tenants:\n" + "\n".join(lines) + "\n")
    text = DEMO.read_text().replace("../flags/demo.json", str(DEMO.parent.parent / "flags" / "demo.json"))
    start, end = text.index("tenants:\n"), text.index("tables: auto")
    path = tmp_path / "many.yaml"
    path.write_text(text[:start] + "inventory: tenants.yaml\n\n" + text[end:])
    return path


def record(target_dsn: str, book: Path, states: dict[str, tuple[int, str | None, dict[str, Any]]]) -> None:
    """Step states as runs leave them: per tenant, its first N steps done, then one failed (with the
    error) or none; ``details`` for the done backfill and validate steps."""
    loaded = load_playbook(book)
    control_schema.upgrade(target_dsn, "migrate_control")
    store = ControlStore("migrate_control", loaded.playbook.name)
    run_id = uuid.uuid4()
    with psycopg.connect(target_dsn, autocommit=True) as conn, conn.transaction():
        store.start_run(
            conn,
            run_id=run_id,
            digest=loaded.digest,
            command="run",
            actor="t",
            host="h",
            pid=1,
            dry_run=False,
        )
        for tp in build_plan(loaded).tenants:
            if tp.tenant.id not in states:
                continue
            done, error, details = states[tp.tenant.id]
            for i, step in enumerate(tp.steps[:done]):
                figures = details.get(step.kind, {})
                store.set_status(conn, tp.tenant.id, step, StepStatus.DONE, run_id=run_id, details=figures)
                if i == done - 1 and error is not None:
                    nxt = tp.steps[done]
                    store.set_status(conn, tp.tenant.id, nxt, StepStatus.FAILED, run_id=run_id, error=error)


def table_rows(out: str) -> list[str]:
    """The tenant rows of status's table (not the lines about a tenant below it)."""
    rows = out.splitlines()
    return [line for line in rows if line.startswith("t0") and (" main " in line or " canary " in line)]


def test_status_of_300_tenants_fits_on_one_screen_and_json_keeps_every_tenant_and_key(
    fresh_dsn: str, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    """300 tenants (280 done, 10 failed, 5 half-way, 5 not started): the default output is a summary of
    at most 30 lines naming the failures; --state failed, --tenant and --all give rows; --json has all
    300 with the documented keys."""
    ids = [f"t{i:04d}" for i in range(300)]
    book = many_tenants(tmp_path, ids)
    steps = len(build_plan(load_playbook(book)).tenants[0].steps)
    states: dict[str, tuple[int, str | None, dict[str, Any]]] = {t: (steps, None, {}) for t in ids[:280]}
    states |= {t: (3, f"copy/backfill of {t} failed: disk full", {}) for t in ids[280:290]}
    states |= {t: (2, None, {}) for t in ids[290:295]}
    environ = {"MIGRATE_TARGET_DSN": fresh_dsn, "MIGRATE_FLAG_FILE": str(tmp_path / "flags.json")}
    record(fresh_dsn, book, states)

    code, out, _err = cli(environ, "status", str(book))
    lines = out.splitlines()
    assert code == 0 and len(lines) <= 30 and max(len(line) for line in lines) <= 160, out
    assert "wave main: open (295 tenants, 275 done)" in out
    assert "tenants by wave and state (300 in all)" in out
    assert "needs attention (10):" in out and "t0280 (failed)" in out
    assert f"… and 2 more: migrate status {book} --state failed" in out
    named = [line for line in lines if line.startswith("  t0") and "disk full" in line]
    assert len(named) == 8  # the first eight failures by name, the rest counted
    assert "next: migrate run" in out

    code, out, _err = cli(environ, "status", str(book), "--state", "failed")
    rows = table_rows(out)
    assert code == 0 and len(rows) == 10 and all(" failed " in line for line in rows)
    code, out, _err = cli(environ, "status", str(book), "--tenant", "t0007")
    assert code == 0 and len(table_rows(out)) == 1
    code, out, _err = cli(environ, "status", str(book), "--all")
    assert code == 0 and len(table_rows(out)) == 300

    code, out, _err = cli(environ, "status", str(book), "--json")
    data = json.loads(out)
    assert code == 0 and set(data) == TOP_KEYS and len(data["tenants"]) == 300
    assert all(set(t) == TENANT_KEYS for t in data["tenants"])
    code, _out, err = cli(environ, "status", str(book), "--state", "faild")
    assert code == 2 and "did you mean 'failed'" in err


def test_without_a_terminal_no_value_is_cut_and_rows_are_plain_aligned_text(
    fresh_dsn: str, tmp_path: Path
) -> None:
    """Piped (a real process, no COLUMNS): a 63-character tenant id, 602,000 rows and a full checksum
    come out whole, one line per row, no box characters, no '…'; and no log line unless asked."""
    book = many_tenants(tmp_path, [LONG, "initech"])
    loaded = load_playbook(book)
    steps = len(build_plan(loaded).tenants[0].steps)
    figures = {
        "tasks": {
            "source_rows": 602000,
            "target_rows": 602000,
            "source_checksum": -4611686018427387904,
            "target_checksum": -4611686018427387904,
            "match": True,
        }
    }
    details = {"backfill": {"rows": 602000}, "validate": {"tables": figures, "match": True}}
    record(fresh_dsn, book, {LONG: (steps, None, details), "initech": (1, None, {})})
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    done = subprocess.run(
        [sys.executable, "-m", "migrate", "status", str(book)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "MIGRATE_TARGET_DSN": fresh_dsn, "MIGRATE_FLAG_FILE": str(tmp_path / "f.json")},
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "…" not in out and "┃" not in out and "│" not in out
    row = next(line for line in out.splitlines() if line.startswith(LONG))
    assert " done " in row and "602,000" in row and "pre-copy, pre-cutover" in row
    assert any(line.startswith(LONG) and "-4611686018427387904" in line for line in out.splitlines())
    header = next(line for line in out.splitlines() if line.startswith("tenant "))
    assert row.index(" canary") == header.index(" wave") > len(LONG)  # columns aligned, nothing cut
    assert done.stderr == "", "logs are quiet unless --log-level asks"


def planner_rows(dsn: str) -> float:
    """What the planner believes the source's tables hold (-1 per table never analysed)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT sum(CASE WHEN reltuples < 0 THEN 0 ELSE reltuples END), min(reltuples)"
            " FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
        ).fetchone()
    assert row is not None
    return -1.0 if row[1] < 0 and not row[0] else float(row[0])


@pytest.mark.tenants(acme=8, globex=8)
def test_progress_totals_are_exact_on_fresh_and_stale_statistics_and_after_a_stop(
    world: World, tmp_path: Path
) -> None:
    """A source never analysed, and one analysed before it grew: each tenant is sized to the row, the
    copy adds up to it, and after a stop the next run is sized to exactly what is left."""
    with world.source("acme") as conn:
        # Never analysed, for certain: autovacuum may have analysed it on a slow run, so it is kept
        # off these tables and the statistics are put back to "never" (-1), as a fresh restore has.
        for (table,) in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
        ).fetchall():
            conn.execute(
                sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)").format(sql.Identifier(table))
            )
        conn.execute(
            "UPDATE pg_class SET reltuples = -1, relpages = 0"
            " WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'i')"
        )
    with world.source("globex") as conn:
        conn.execute("ANALYZE")
        conn.execute(
            "INSERT INTO comments SELECT id + 1000000, task_id, author_id, body, created_at FROM comments"
        )
    believed = {t: planner_rows(world.source_dsn(t)) for t in ("acme", "globex")}
    assert believed["acme"] <= 0 and 0 < believed["globex"] < sum(world.source_counts("globex").values())
    book = chunked_playbook(tmp_path, ("acme", "globex"), chunk_rows=200)
    events: list[ProgressEvent] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sink(event: ProgressEvent) -> None:
        with lock:
            events.append(event)
            if event.kind == "chunk_copied" and event.tenant == "acme" and event.table == "tasks":
                stop.set()

    first = api.run(book, environ=world.environ, progress=sink, stop=stop)
    assert first.stopped
    sized = {e.tenant: e.rows for e in events if e.kind == "tenant_sized"}
    totals = {t: sum(world.source_counts(t).values()) for t in ("acme",)}
    assert sized["acme"] == totals["acme"], "sized from the planner's statistics, not counted"
    copied = sum(e.rows for e in events if e.kind == "chunk_copied" and e.tenant == "acme")
    events.clear()
    second = api.run(book, environ=world.environ, progress=sink)
    assert second.ok
    for tenant in ("acme", "globex"):
        total = sum(world.source_counts(tenant).values())
        resized = next(e.rows for e in events if e.kind == "tenant_sized" and e.tenant == tenant)
        moved = sum(e.rows for e in events if e.kind == "chunk_copied" and e.tenant == tenant)
        assert resized == moved, (tenant, resized, moved)
        assert resized == (total - copied if tenant == "acme" else total), tenant
    assert world.target_counts("globex") == world.source_counts("globex")
    backfill = next(s for s in second.tenants[1].steps if s.kind == "backfill")
    assert backfill.details["sizing_seconds"] < backfill.seconds


def test_plain_progress_says_a_line_every_ten_seconds_with_exact_totals_and_every_retry() -> None:
    """Without a terminal: nothing until ten seconds passed, then one line with rows of the exact total,
    rate and time left; every retry on its own line at once."""
    now = [0.0]
    screen = StringIO()
    bars = PlainProgress(Console(file=screen, width=300), clock=lambda: now[0])
    bars(ProgressEvent("run_started", tenants=1))
    bars(ProgressEvent("tenant_started", "acme"))
    bars(ProgressEvent("tenant_sized", "acme", rows=1000))
    bars(ProgressEvent("chunk_copied", "acme", "tasks", 100, 10))
    assert screen.getvalue() == ""
    now[0] = 10.0
    bars(ProgressEvent("chunk_copied", "acme", "tasks", 150, 10))
    bars(ProgressEvent("retrying", "acme", note="acme/copy/backfill: lost connection; trying again in 1.0 s"))
    lines = screen.getvalue().splitlines()
    said = "progress: 0 of 1 tenant(s) done; 250 of 1,000 rows (25 %), 25 rows/s, about 0:00:30 left"
    assert lines[0] == said
    assert lines[1].startswith("acme/copy/backfill: lost connection")


@pytest.mark.tenants("acme", "globex", "initech")
def test_json_wherever_a_person_scripts_parses_and_says_the_outcome(
    world: World, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    """plan, run, verify, diff, rollback and status with --json: one JSON document on stdout each (the
    progress and notes stay on stderr), with the figures a script needs."""
    environ = world.environ

    def document(*args: str) -> Any:
        code, out, err = cli(environ, *args, "--json")
        assert code == 0, (args, err)
        return json.loads(out)

    assert [t["tenant"] for t in document("plan", str(DEMO))["tenants"]] == ["acme", "globex", "initech"]
    ran = document("run", str(DEMO), "--tenant", "acme")
    copied = sum(world.source_counts("acme").values())
    assert ran["outcome"] == "ok" and ran["tenants"][0]["rows_copied"] == copied
    checked = document("verify", str(DEMO), "--tenant", "acme")
    assert checked["match"] is True and len(checked["tenants"][0]["tables"]) == 6
    assert document("diff", str(DEMO), "--tenant", "acme", "--table", "tasks")["equal"] is True
    back = document("rollback", str(DEMO), "--tenant", "acme", "--to", "pre-cutover", "--yes", DISCARD)
    # Its writes since the cut-over discarded: the copy goes too, and the next run copies afresh.
    assert [s["step"] for s in back["steps"]] == ["cutover/flag", "copy/validate", "copy/backfill"]
    assert back["stopped"] is None
    assert document("status", str(DEMO))["tenants"][0]["state"] == "rolled back"
