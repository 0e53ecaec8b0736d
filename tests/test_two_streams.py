"""One tenant copied in two streams (``run --jobs 2``): both at once, in one snapshot, large tables in
key ranges each with its own checkpoint; exact after kill -9 and with a live writer online.

Every comparison is our own: md5 over the sorted row texts of each table, on the source and for the
tenant on the target (``live.table_digest``), never the tool's checksum.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from structlog.testing import capture_logs

from kill import chunked_playbook, sessions_gone
from live import LiveWorld, Writer, live_world, table_digest
from migrate import api
from migrate.engine.run import tenant_streams
from migrate.steps import backfill
from migrate.steps.context import ProgressEvent
from rollbacks import chunked
from world import ROOT, TABLES, World


def digests(world: World, tenant: str) -> tuple[dict[str, tuple[int, str]], dict[str, tuple[int, str]]]:
    """(source, target) per table: rows and md5 of the sorted row texts."""
    with world.source(tenant) as src, world.target() as tgt:
        return (
            {t: table_digest(src, "public", t) for t in TABLES},
            {t: table_digest(tgt, "app", t, tenant) for t in TABLES},
        )


def checkpoint_rows(world: World, tenant: str) -> list[tuple[str, int, bool, object]]:
    with world.target() as conn:
        return [
            (r[0], int(r[1]), bool(r[2]), r[3])
            for r in conn.execute(
                "SELECT table_name, rows_copied, done, last_key FROM migrate_control.checkpoints"
                " WHERE tenant = %s ORDER BY table_name",
                (tenant,),
            )
        ]


def test_the_stream_budget_is_the_jobs_the_other_tenants_leave_free() -> None:
    assert tenant_streams(2, 1) == 2
    assert tenant_streams(4, 1) == 4
    assert tenant_streams(4, 2) == 2
    assert tenant_streams(4, 10) == 1
    assert tenant_streams(1, 1) == 1
    assert tenant_streams(3, 0) == 3


@pytest.mark.tenants(acme=60)
def test_one_tenant_with_two_jobs_copies_in_two_streams_at_once_in_one_snapshot(
    world: World, tmp_path: Path
) -> None:
    """Split tables' ranges go to both streams, whose chunks overlap in time; the rows are those of the
    copy's one snapshot — a change committed on the source after it was taken (before the second stream
    opened) is in no stream's rows — and the target equals that snapshot, table by table."""
    book = chunked_playbook(tmp_path, ("acme",), 300)
    # No validate step: it would compare with the source as it is after the change, not in the snapshot.
    book.write_text(book.read_text().replace("      - kind: validate\n", ""))
    with world.source("acme") as src:
        before = {t: table_digest(src, "public", t) for t in TABLES}
    changed: list[int] = []

    def change_after_the_snapshot(event: ProgressEvent) -> None:
        # tenant_sized comes from inside the copy's snapshot, before any stream opens.
        if event.kind == "tenant_sized" and not changed:
            with world.source("acme") as src:
                n = src.execute("UPDATE comments SET body = body || ' (later)' WHERE id % 5 = 0").rowcount
                src.execute("DELETE FROM attachments WHERE id % 3 = 0")
            changed.append(n)

    with capture_logs() as logs:
        result = api.run(book, ["acme"], jobs=2, environ=world.environ, progress=change_after_the_snapshot)
    assert result.ok, [t.error for t in result.tenants]
    assert changed and changed[0] > 1000
    backfill = next(s for s in result.tenants[0].steps if s.kind == "backfill")
    assert backfill.details["streams"] == 2
    assert backfill.details["tables"]["comments"]["ranges"] >= 2
    assert backfill.details["tables"]["tasks"]["ranges"] >= 2

    splits = {e["table"]: e for e in logs if e["event"] == "table_split"}
    assert {"comments", "tasks"} <= set(splits)
    chunks = [e for e in logs if e["event"] == "chunk_copied"]
    assert {e["stream"] for e in chunks} == {0, 1}
    assert {e["range"] for e in chunks if e["table"] == "comments"} == set(
        range(splits["comments"]["ranges"])
    )
    # Both streams at once: a chunk of one stream overlaps in time a chunk of the other.
    spans = {
        s: [(e["started"], e["started"] + e["seconds"]) for e in chunks if e["stream"] == s] for s in (0, 1)
    }
    overlaps = sum(1 for a in spans[0] for b in spans[1] if a[0] < b[1] and b[0] < a[1])
    assert overlaps >= 3, spans

    # The target is the source as it was in the copy's snapshot, not as it is now.
    _, after = digests(world, "acme")
    assert after == before
    # A finished split table keeps the sum of its ranges and no range checkpoint.
    marks = {r[0]: r for r in checkpoint_rows(world, "acme")}
    assert not [name for name in marks if "#" in name]
    assert marks["comments"][1] == before["comments"][0] and marks["comments"][2]
    assert len(marks["comments"][3]["ranges"]) == splits["comments"]["ranges"] - 1


def run_process(world: World, book: Path, logs: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(logs.with_suffix(".out"), "wb") as out, open(logs.with_suffix(".err"), "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "migrate", "run", str(book), "--tenant", "acme", *args],
            cwd=ROOT,
            env={**os.environ, **world.environ, "MIGRATE_LOG_LEVEL": "info"},
            stdout=out,
            stderr=err,
        )


@pytest.mark.tenants(acme=60)
def test_kill_9_while_two_ranges_of_a_table_are_in_flight_then_the_same_command_is_exact(
    world: World, tmp_path: Path
) -> None:
    """A real `migrate run --jobs 2` killed with SIGKILL while two ranges of one split table both have
    committed chunks and neither is done: the split and every range's checkpoint survive; the same
    command again finishes it, and the target equals the source — no row missing, none twice."""
    book = chunked_playbook(tmp_path, ("acme",), 100)
    proc = run_process(world, book, tmp_path / "first", "--jobs", "2")
    seen: list[tuple[str, int, bool, object]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            marks = checkpoint_rows(world, "acme")
        except psycopg.Error:  # the control schema is not there yet
            time.sleep(0.01)
            continue
        ranges: dict[str, list[tuple[str, int, bool, object]]] = {}
        for mark in marks:
            if "#" in mark[0] and mark[1] > 0 and not mark[2]:
                ranges.setdefault(mark[0].split("#")[0], []).append(mark)
        if any(len(v) >= 2 for v in ranges.values()):
            proc.send_signal(signal.SIGKILL)
            seen = marks
            break
        time.sleep(0.005)
    else:
        pytest.fail("the run ended (or hung) before two ranges of a table were in flight")
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert sessions_gone(world, proc.pid)
    marks = checkpoint_rows(world, "acme")
    in_flight = [m for m in marks if "#" in m[0] and not m[2]]
    assert len(in_flight) >= 2, (seen, marks)
    split_tables = {m[0].split("#")[0] for m in in_flight}
    assert all(isinstance(m[3], dict) and m[3]["ranges"] for m in marks if m[0] in split_tables)

    again = run_process(world, book, tmp_path / "second", "--jobs", "2")
    assert again.wait(timeout=180) == 0, (tmp_path / "second.err").read_text()[-3000:]
    source, target = digests(world, "acme")
    assert target == source
    assert not [m for m in checkpoint_rows(world, "acme") if "#" in m[0]]


@pytest.fixture
def live(logical_admin_dsn: str, tmp_path: Path) -> Iterator[LiveWorld]:
    with live_world(logical_admin_dsn, tmp_path, {"acme": 4}) as world:
        yield world


def test_online_with_two_streams_and_a_live_writer_loses_nothing(live: LiveWorld) -> None:
    """cutover: online, --jobs 2: both streams read the replication slot's exported snapshot (re-exported
    by the copy's transaction), so the changes the slot keeps start exactly where every range ends."""
    live.write_playbook(backfill="chunk_rows: 60")
    writer = Writer(live.source_dsn("acme", "tm_app"), rate=150).start()
    writer.wait_for(20)
    try:
        with capture_logs() as logs:
            result = api.run(live.playbook, jobs=2, environ=live.environ)
    finally:
        time.sleep(0.3)
        writer.stop()
    assert result.ok, [t.error for t in result.tenants]
    assert writer.committed > 50, (writer.committed, writer.errors[-3:])
    backfill = next(s for s in result.tenants[0].steps if s.kind == "backfill")
    assert backfill.details["streams"] == 2
    assert backfill.details["tables"]["comments"]["ranges"] >= 2
    assert {e["stream"] for e in logs if e["event"] == "chunk_copied"} == {0, 1}
    live.assert_equal("acme")


@pytest.mark.tenants(acme=60)
def test_a_stop_ends_both_streams_status_counts_every_range_and_rollback_clears_them(
    world: World, tmp_path: Path
) -> None:
    """Ctrl-C (the stop event) mid-copy ends both streams at a committed chunk; the split table's
    rows held are exactly its ranges' checkpoints; the same run again resumes them exactly; a rollback
    to pre-copy then leaves no row and no checkpoint; a run after it copies exactly again."""
    book = chunked(tmp_path)
    stop = threading.Event()
    copied: list[str] = []

    def stop_mid_way(event: ProgressEvent) -> None:
        if event.kind == "chunk_copied" and event.table == "comments":
            copied.append(event.table)
            if len(copied) == 30:
                stop.set()

    result = api.run(book, ["acme"], jobs=2, stop=stop, environ=world.environ, progress=stop_mid_way)
    assert not result.ok and stop.is_set()
    marks = checkpoint_rows(world, "acme")
    ranges = [m for m in marks if m[0].startswith("comments#")]
    assert len(ranges) >= 2, marks
    assert any(not m[2] for m in ranges)
    with world.target() as conn:
        held = conn.execute("SELECT count(*) FROM app.comments WHERE tenant_id = 'acme'").fetchone()
    assert held == (sum(m[1] for m in ranges),)

    # The same run again resumes every range after its own last key.
    assert api.run(book, ["acme"], jobs=2, environ=world.environ).ok
    source, target = digests(world, "acme")
    assert target == source
    undone = api.rollback(book, "acme", "pre-copy", environ=world.environ, discard_writes_since_cutover=True)
    assert undone.tenants == ("acme",), undone
    assert not [m for m in checkpoint_rows(world, "acme") if not m[0].startswith("flag:")]
    assert all(n == 0 for n in world.target_counts("acme").values())
    assert api.run(book, ["acme"], jobs=2, environ=world.environ).ok
    source, target = digests(world, "acme")
    assert target == source


@pytest.mark.tenants(acme=60)
def test_with_foreign_keys_checked_per_row_the_streams_load_parents_before_children(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-row path (a writer that may not turn the triggers off; here forced): each foreign-key
    level's tables and ranges in parallel, a level only after the one before it is committed — every
    row's check finds its parent — and the target equals the source."""
    monkeypatch.setattr(backfill, "CHECK_AFTER_LOAD", False)
    book = chunked_playbook(tmp_path, ("acme",), 300)
    with capture_logs() as logs:
        result = api.run(book, ["acme"], jobs=2, environ=world.environ)
    assert result.ok, [t.error for t in result.tenants]
    assert {e["stream"] for e in logs if e["event"] == "chunk_copied"} == {0, 1}
    done = [e["table"] for e in logs if e["event"] == "table_copied"]
    first = {e["table"]: i for i, e in reversed(list(enumerate(logs))) if e["event"] == "chunk_copied"}
    finished = {e["table"]: i for i, e in enumerate(logs) if e["event"] == "table_copied"}
    for child, parent in (("users", "organizations"), ("tasks", "projects"), ("comments", "tasks")):
        assert finished[parent] < first[child], done
    source, target = digests(world, "acme")
    assert target == source
