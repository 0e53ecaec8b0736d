"""Rollback after an online cut-over: the application's writes on the shared tables go back to the
tenant's own database (reverse path), under a freeze of that tenant alone, and nothing is lost.

Real parts only: the application is a writer thread as tm_app under RLS on the shared schema, another
tenant's writer runs throughout, and equality is our own md5 over the sorted rows of both sides.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql

from live import APP_ROLE, FLAG, ROOT, TABLES, LiveWorld, Writer, dsn_for, live_world, table_digest
from migrate import api
from migrate.errors import ArgumentError


@pytest.fixture
def live(logical_admin_dsn: str, tmp_path: Path) -> Iterator[LiveWorld]:
    with live_world(logical_admin_dsn, tmp_path, {"acme": 3, "globex": 2}) as world:
        yield world


def shared_writer(live: LiveWorld, tenant: str, seed: int, rate: float = 100) -> Writer:
    """The application after the flip: tm_app on the shared schema, its tenant set, under RLS."""
    dsn = dsn_for(
        live.admin_dsn,
        f"{live.prefix}target",
        user=APP_ROLE,
        options=f"-c search_path=app -c app.tenant_id={tenant}",
    )
    return Writer(dsn, rate=rate, seed=seed)


def grant_shared(live: LiveWorld) -> None:
    with live.target() as conn:
        conn.execute(
            sql.SQL(
                "GRANT USAGE ON SCHEMA app TO {r};"
                " GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA app TO {r};"
                " GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA app TO {r}"
            ).format(r=sql.Identifier(APP_ROLE))
        )


def reverse_objects(live: LiveWorld) -> tuple[list[str], list[str]]:
    with live.target() as conn:
        slots = [
            r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE slot_name ~ '^tmr_'")
        ]
        pubs = [r[0] for r in conn.execute("SELECT pubname FROM pg_publication WHERE pubname ~ '^tmr_'")]
    return slots, pubs


def with_app_role(live: LiveWorld) -> None:
    """target.app_role: the schema step grants it, and every cut-over proves it can insert (as it)."""
    text = live.playbook.read_text()
    assert "schema: app}" in text
    live.playbook.write_text(text.replace("schema: app}", f"schema: app, app_role: {APP_ROLE}}}", 1))


def test_rollback_after_cutover_applies_every_write_back_and_never_blocks_another_tenant(
    live: LiveWorld,
) -> None:
    with_app_role(live)  # the second cut-over's insert proof meets the rollback's shared-side freeze
    first = api.run(live.playbook, environ=live.environ)
    assert first.ok, [t.error for t in first.tenants]
    cut = next(s for s in first.tenants[0].steps if s.kind == "cutover")
    assert cut.details["reverse_path"]["slot"].startswith("tmr_")
    slots, pubs = reverse_objects(live)
    assert sorted(slots) == sorted(pubs) == ["tmr_live_acme", "tmr_live_globex"]
    cut_status = next(
        t for t in api.status(live.playbook, environ=live.environ).tenants if t.tenant == "acme"
    )
    assert cut_status.reverse is not None and cut_status.reverse.wal_status == "reserved"
    grant_shared(live)
    acme = shared_writer(live, "acme", seed=11).start()
    globex = shared_writer(live, "globex", seed=12).start()
    acme.wait_for(80)
    globex.wait_for(20)
    globex_before = globex.committed
    started = time.monotonic()
    rolled = api.rollback(live.playbook, "acme", "pre-cutover", environ=live.environ)
    seconds = time.monotonic() - started
    time.sleep(0.5)  # acme's application, its flag not yet seen, keeps trying: refused
    acme.stop()
    globex_during = globex.committed - globex_before
    globex.stop()
    assert not acme.errors and not globex.errors, (acme.errors[-3:], globex.errors[-3:])
    assert acme.refused > 0, "the shared-side freeze refused none of acme's writes"
    assert globex.refused == 0 and globex_during > 0
    # What acme's application last wrote is now its own database's content, row for row.
    rows = live.assert_equal("acme")
    assert rows["tasks"] > 0
    step = next(s for s in rolled.steps if s.kind == "cutover")
    back = step.details["reverse"]
    assert back["changes_applied"] > 80, back
    assert 0 < back["freeze_seconds"] <= 2.0, back
    assert step.summary and "applied back" in (step.summary or ""), step.summary
    print(
        f"\nFIGURES changes_applied_back={back['changes_applied']} freeze_seconds={back['freeze_seconds']}"
        f" rollback_seconds={seconds:.3f} globex_max_latency={globex.max_latency:.3f}"
        f" globex_committed_during={globex_during} acme_refused={acme.refused} timings={back['timings']}"
    )
    assert globex.max_latency < 0.5, globex.max_latency
    status = api.status(live.playbook, environ=live.environ)
    acme_status = next(t for t in status.tenants if t.tenant == "acme")
    assert acme_status.flags == {FLAG: False} and acme_status.frozen is None
    assert acme_status.reverse is None and acme_status.shared_frozen is not None
    assert acme_status.rolled_back is not None
    assert acme_status.rolled_back["changes_applied"] == back["changes_applied"]
    shown = subprocess.run(
        [sys.executable, "-m", "migrate", "status", str(live.playbook)],
        cwd=ROOT,
        env={**os.environ, **live.environ},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    print(shown)
    assert (
        f"acme: rolled back after the cut-over: {back['changes_applied']:,} change(s) applied back" in shown
    )
    assert "globex: rollback after the cut-over possible: reverse path tmr_live_globex" in shown
    assert sorted(reverse_objects(live)[0]) == ["tmr_live_globex"]
    ledger = api.ledger(live.playbook, tenant="acme", environ=live.environ)
    assert ledger.failure is None
    entry = [r.entry for r in ledger.entries if r.entry.action == "reverted"][-1]
    assert entry.details["reverse"]["changes_applied"] == back["changes_applied"]
    assert entry.details["reverse"]["freeze_seconds"] == back["freeze_seconds"]
    # Every sequence of acme's own database hands out a number past the values the shared side handed out.
    with live.source("acme") as conn:
        behind = []
        for t in TABLES:
            seq = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (f"public.{t}",)).fetchone()[0]  # type: ignore[index]
            following = conn.execute(
                sql.SQL("SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM {}").format(
                    sql.SQL(seq)
                )
            ).fetchone()[0]  # type: ignore[index]
            highest = conn.execute(
                sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(sql.Identifier("public", t))
            ).fetchone()[0]  # type: ignore[index]
            if following <= highest:
                behind.append(t)
    assert not behind, f"sequences behind the rows applied back: {behind}"
    # The application writes on its own database again (sequences past the shared values), then a
    # second cut-over, with the writer running: nothing lost.
    again = Writer(live.source_dsn("acme", APP_ROLE), rate=100, seed=13).start()
    again.wait_for(40)
    try:
        second = api.run(live.playbook, environ=live.environ)
    finally:
        time.sleep(0.2)
        again.stop()
    assert second.ok, [t.error for t in second.tenants]
    assert not [e for e in again.errors if "duplicate key" in e]
    live.assert_equal("acme")
    # Back on the shared side: acme may write there again (its shared-side freeze lifted at the flip).
    after = shared_writer(live, "acme", seed=14).start()
    after.wait_for(10)
    after.stop()
    assert after.refused == 0


def test_kill_9_during_the_reverse_drain_then_the_same_rollback_finishes_with_nothing_lost(
    live: LiveWorld, tmp_path: Path
) -> None:
    """A real `migrate rollback` killed while it applies the changes back (it waits on a lock the test
    holds on the tenant's own tasks table): the tenant stays frozen on both sides (the flag still on),
    never writable on both; the same command then finishes, and the old database equals the shared rows."""
    first = api.run(live.playbook, environ=live.environ)
    assert first.ok, [t.error for t in first.tenants]
    grant_shared(live)
    acme = shared_writer(live, "acme", seed=21).start()
    acme.wait_for(60)
    holder = live.source("acme")
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE public.tasks IN ACCESS EXCLUSIVE MODE")
    command = [
        sys.executable, "-m", "migrate", "rollback", str(live.playbook),
        "--tenant", "acme", "--to", "pre-cutover", "--yes",
    ]  # fmt: skip
    err = tmp_path / "rollback.err"
    with open(err, "wb") as out:
        runner = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **live.environ}, stdout=subprocess.DEVNULL, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        pid = holder.info.backend_pid
        while True:
            with live.target() as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (pid,)
                ).fetchone()
            if row and row[0]:
                break
            assert runner.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "the rollback never reached the drain"
            time.sleep(0.005)
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait(timeout=30)
    finally:
        holder.close()
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert runner.returncode == -signal.SIGKILL
    time.sleep(0.3)
    refused = acme.refused
    time.sleep(0.3)
    assert acme.refused > refused, "acme could write the shared tables while its rollback was unfinished"
    acme.stop()
    status = next(t for t in api.status(live.playbook, environ=live.environ).tenants if t.tenant == "acme")
    assert status.flags == {FLAG: True} and status.frozen is not None  # the source is still frozen too
    assert status.rollback is not None
    # The same command, as the operator runs it: it finishes, saying what it applied back.
    done = subprocess.run(
        command, cwd=ROOT, env={**os.environ, **live.environ}, capture_output=True, text=True
    )
    print(done.stdout)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "change(s) since the cut-over applied back under a" in done.stdout, done.stdout
    live.assert_equal("acme")
    after = next(t for t in api.status(live.playbook, environ=live.environ).tenants if t.tenant == "acme")
    assert after.flags == {FLAG: False} and after.frozen is None and after.rollback is None


def test_rollback_across_the_cutover_is_refused_after_finalise_naming_when(live: LiveWorld) -> None:
    live.write_playbook(finalise=True)
    first = api.run(live.playbook, environ=live.environ)
    assert first.ok, [t.error for t in first.tenants]
    assert reverse_objects(live) == ([], [])
    with pytest.raises(ArgumentError) as info:
        api.rollback(live.playbook, "acme", "pre-cutover", environ=live.environ)
    assert "finalised at" in info.value.message and "no reverse sync" in info.value.message


def test_discard_writes_since_cutover_puts_back_exactly_the_rows_written_since_then_the_next_run_validates(
    live: LiveWorld,
) -> None:
    """--discard-writes-since-cutover with a reverse path: every shared row acme's application inserted,
    changed or deleted since the cut-over is as the cut-over left it (our digests of the tenant's shared
    rows, before and after), globex's rows are untouched; the next run catches up and validates again."""
    first = api.run(live.playbook, environ=live.environ)
    assert first.ok, [t.error for t in first.tenants]
    at_cutover = {t: d[1] for t, d in live.digests("acme").items()}
    with live.target() as conn:
        globex_before = {t: table_digest(conn, "app", t, "globex") for t in TABLES}
    grant_shared(live)
    acme = shared_writer(live, "acme", seed=31).start()
    acme.wait_for(80)
    acme.stop()
    assert {"family", "delete", "key", "update"} <= set(acme.kinds), acme.kinds
    assert {t: d[1] for t, d in live.digests("acme").items()} != at_cutover
    rolled = api.rollback(
        live.playbook, "acme", "pre-cutover", discard_writes_since_cutover=True, environ=live.environ
    )
    step = next(s for s in rolled.steps if s.kind == "cutover")
    gone = step.details["discarded"]
    assert gone["changes"] > 80 and gone["deleted"] > 0 and gone["restored"] > 0, gone
    assert "DISCARDED" in (step.summary or ""), step.summary
    assert {t: d[1] for t, d in live.digests("acme").items()} == at_cutover
    live.assert_equal("acme")
    with live.target() as conn:
        assert {t: table_digest(conn, "app", t, "globex") for t in TABLES} == globex_before
    assert reverse_objects(live)[0] == ["tmr_live_globex"]
    # The next run: the application's writes on its own database since, caught up, validated, flipped.
    writer = Writer(live.source_dsn("acme", APP_ROLE), rate=100, seed=32).start()
    writer.wait_for(30)
    try:
        again = api.run(live.playbook, environ=live.environ)
    finally:
        time.sleep(0.2)
        writer.stop()
    assert again.ok, [t.error for t in again.tenants]
    cut = next(s for s in again.tenants[0].steps if s.kind == "cutover")
    assert cut.details["match"] is True and cut.details["drained_changes"] >= 0
    live.assert_equal("acme")
