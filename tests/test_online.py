"""Online migration end to end: a real application writes during the copy and the catch-up; after the
cut-over the target equals the source, table by table, by our own comparison."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from live import APP_ROLE, FLAG, LiveWorld, Writer, live_world
from migrate import api
from migrate.catalog.ddl import SET_TENANT_SQL
from migrate.steps.context import ProgressEvent


@pytest.fixture
def live(logical_admin_dsn: str, tmp_path: Path) -> Iterator[LiveWorld]:
    with live_world(logical_admin_dsn, tmp_path, {"acme": 4}) as world:
        yield world


def test_online_migration_with_a_writer_loses_nothing_and_freezes_briefly(live: LiveWorld) -> None:
    """Writes during the copy and catch-up all arrive; the freeze stays under max_freeze; the source stays
    frozen."""
    live.write_playbook(cutover="batch_changes: 100")  # capped polls: more waits behind each batch
    writer = Writer(live.source_dsn("acme", APP_ROLE), rate=150).start()
    writer.wait_for(20)
    try:
        result = api.run(live.playbook, environ=live.environ)
    finally:
        time.sleep(0.3)  # a few writes refused by the freeze
        writer.stop()
    assert result.ok, [t.error for t in result.tenants]
    assert writer.committed > 50 and writer.refused > 0, (
        writer.committed,
        writer.refused,
        writer.errors[-3:],
    )
    rows = live.assert_equal("acme")
    assert rows["comments"] > 800
    cutover = next(s for s in result.tenants[0].steps if s.kind == "cutover")
    assert 0 < cutover.details["freeze_seconds"] <= 2.0
    assert cutover.details["match"] is True
    status = api.status(live.playbook, environ=live.environ).tenants[0]
    assert status.flags == {FLAG: True}


def test_after_the_online_cut_over_the_application_role_inserts_with_defaults(live: LiveWorld) -> None:
    """target.app_role: the cut-over checks under the freeze that the application role can insert with
    defaults (rolled back), flips, and the application's first real insert takes an identity past the
    tenant's rows — tasks a live writer kept adding after the copy, until the freeze."""
    live.write_playbook(app_role=APP_ROLE)
    writer = Writer(live.source_dsn("acme", APP_ROLE), rate=100).start()
    writer.wait_for(10)

    added: list[str] = []

    def task_after_the_copy(event: ProgressEvent) -> None:
        # The writer picks its transactions at random: on a fast run none may add a task between
        # the backfill (which moves the sequence past the source's) and the freeze. This one always
        # does, as the application, at the catch-up's first poll (the freeze comes later).
        if event.kind == "changes_applied" and not added:
            added.append(event.kind)
            with psycopg.connect(live.source_dsn("acme", APP_ROLE), autocommit=True) as app:
                app.execute(
                    "INSERT INTO tasks (project_id, title, status)"
                    " SELECT project_id, 'after the copy', status FROM tasks LIMIT 1"
                )

    try:
        result = api.run(live.playbook, environ=live.environ, progress=task_after_the_copy)
    finally:
        writer.stop()
    assert result.ok, [t.error for t in result.tenants]
    cutover = next(s for s in result.tenants[0].steps if s.kind == "cutover")
    assert cutover.details["write_ready"] is True
    assert {"organizations", "tasks", "comments"} <= set(cutover.details["insert_proved"])
    backfill = next(s for s in result.tenants[0].steps if s.kind == "backfill")
    with live.target() as conn, conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(APP_ROLE)))
        conn.execute(SET_TENANT_SQL, ("acme",))
        highest = conn.execute("SELECT max(id) FROM app.tasks").fetchone()[0]  # type: ignore[index]
        assert highest > backfill.details["sequences"]["app.tasks_id_seq"]  # the writer's, after the copy
        new = conn.execute(
            "INSERT INTO app.tasks (project_id, title, status) SELECT project_id, 'after the flip', status"
            " FROM app.tasks LIMIT 1 RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
    assert new > highest


def app_can_write(live: LiveWorld) -> bool:
    with live.source("acme") as conn:
        row = conn.execute("SELECT has_table_privilege(%s, 'tasks', 'INSERT')", (APP_ROLE,)).fetchone()
    return bool(row and row[0])


def slots_of(live: LiveWorld) -> list[str]:
    with live.source("acme") as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"
            )
        ]


def test_a_freeze_past_max_freeze_gives_up_unfreezes_and_says_what_took_long(
    live: LiveWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counts take longer than the budget: no flip, the app may write again, the step names the phases."""
    from migrate.steps import cutover

    live.write_playbook(max_freeze="300ms")
    slow = cutover.counts

    def slow_counts(*args: object, **kw: object) -> object:
        time.sleep(0.4)
        return slow(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(cutover, "counts", slow_counts)
    result = api.run(live.playbook, environ=live.environ)
    tenant = result.tenants[0]
    assert tenant.outcome == "failed" and tenant.error is not None
    assert "longer than cutover.max_freeze (0.3 s)" in tenant.error.message
    assert "counts 0.4" in tenant.error.message and "nothing flipped" in tenant.error.message
    assert app_can_write(live)
    status = api.status(live.playbook, environ=live.environ).tenants[0]
    assert status.flags == {FLAG: False} and status.frozen is None and status.state == "failed"
    failed = next(s for s in tenant.steps if s.kind == "cutover")
    assert failed.details["flipped"] is False and failed.details["timings"]["counts"] >= 0.4
    # Not a cut-over: rolling back before it needs no --discard-writes-since-cutover.
    preview = api.rollback_preview(live.playbook, "acme", "pre-cutover", environ=live.environ)
    assert preview.cutovers == ()
    monkeypatch.setattr(cutover, "counts", slow)
    again = api.run(live.playbook, environ=live.environ)
    assert again.ok, [t.error for t in again.tenants]
    live.assert_equal("acme")


def test_a_schema_change_on_the_source_stops_catch_up_with_nothing_half_applied(live: LiveWorld) -> None:
    """ADD COLUMN mid-migration: catch-up fails naming the column; the batch with it is not applied."""
    writer = Writer(live.source_dsn("acme", APP_ROLE), rate=100).start()
    writer.wait_for(5)
    ddl: list[threading.Thread] = []

    def alter() -> None:  # waits for the copy's snapshot transaction to end, then changes the schema
        with live.source("acme") as conn:
            conn.execute("ALTER TABLE comments ADD COLUMN phone text")
            conn.execute(
                "INSERT INTO comments (task_id, author_id, body, created_at, phone)"
                " SELECT task_id, author_id, 'after ddl', now(), '555' FROM comments LIMIT 1"
            )

    def progress(event: api.ProgressEvent) -> None:
        if event.kind == "table_copied" and not ddl:
            ddl.append(threading.Thread(target=alter))
            ddl[0].start()

    try:
        result = api.run(live.playbook, environ=live.environ, progress=progress)
    finally:
        writer.stop()
        for thread in ddl:
            thread.join(timeout=30)
    tenant = result.tenants[0]
    assert ddl and tenant.outcome == "failed" and tenant.error is not None
    assert "schema of public.comments changed" in tenant.error.message
    assert "column(s) added: phone" in tenant.error.message
    with live.target() as conn:
        after = conn.execute("SELECT count(*) FROM app.comments WHERE body = 'after ddl'").fetchone()
    assert after == (0,)
    assert app_can_write(live)


def test_rollback_to_pre_copy_drops_the_slot_and_publication_and_finalise_drops_them_too(
    live: LiveWorld,
) -> None:
    """Replication state never leaks: rollback before the copy and finalise both remove it."""
    live.write_playbook(finalise=True)
    assert api.run(live.playbook, environ=live.environ).ok
    assert slots_of(live) == []
    with live.source("acme") as conn:
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
    assert not app_can_write(live)  # finalised: the old database stays frozen
    rolled = api.rollback(
        live.playbook, "acme", "pre-copy", environ=live.environ, discard_writes_since_cutover=True
    )
    assert {r.kind for r in rolled.steps} >= {"cutover", "backfill"}
    assert app_can_write(live)
    assert live.target_counts("acme") == dict.fromkeys(live.target_counts("acme"), 0)
    again = api.run(live.playbook, environ=live.environ, tenants=["acme"])
    assert again.ok
    live.assert_equal("acme")


def test_status_shows_the_lag_the_freeze_and_the_slot_holding_wal(live: LiveWorld) -> None:
    """After a cut-over without finalise: frozen since when, the freeze time, and the slot with its WAL."""
    assert api.run(live.playbook, environ=live.environ).ok
    status = api.status(live.playbook, environ=live.environ)
    acme = status.tenants[0]
    assert acme.frozen is not None and acme.frozen.roles == (APP_ROLE,)
    assert acme.freeze_seconds is not None and acme.freeze_seconds < 2
    assert acme.capture is not None and not acme.capture.online and acme.capture.lag_at is not None
    assert [s.slot for s in status.slots] == ["tm_live_acme"] and status.slots[0].retained_bytes is not None
    rolled = api.rollback(
        live.playbook, "acme", "pre-copy", environ=live.environ, discard_writes_since_cutover=True
    )
    assert any(r.details.get("capture_dropped") == "tm_live_acme" for r in rolled.steps)
    assert slots_of(live) == [] and app_can_write(live)


def test_an_offline_freeze_covers_the_copy_and_validation_and_rollback_gives_the_writes_back(
    live: LiveWorld,
) -> None:
    """freeze before the copy: the application's writes are refused from then on, validation counts as
    fresh (frozen), the flag flips; rolling back to before the freeze restores the exact grants."""
    live.write_playbook(offline=True)
    writer = Writer(live.source_dsn("acme", APP_ROLE), rate=100).start()
    writer.wait_for(10)
    try:
        result = api.run(live.playbook, environ=live.environ)
        committed = writer.committed
        time.sleep(0.2)
    finally:
        writer.stop()
    assert result.ok, [t.error for t in result.tenants]
    assert writer.committed == committed and writer.refused > 0
    validate = next(s for s in result.tenants[0].steps if s.kind == "validate")
    assert validate.details["frozen"] is True and validate.details["match"] is True
    live.assert_equal("acme")
    api.rollback(live.playbook, "acme", "pre-freeze", environ=live.environ, discard_writes_since_cutover=True)
    assert app_can_write(live)


def test_a_run_stopped_between_validation_and_the_flip_validates_again_before_flipping(
    live: LiveWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, no freeze: the flag step failed once; a row written since makes the re-run's validation
    fail, and the flag is never flipped on the earlier validation."""
    from migrate.adapters.flagfile import FileFlagProvider
    from migrate.errors import SettingsError

    text = live.write_playbook(offline=True).read_text().replace("      - kind: freeze\n", "")
    live.playbook.write_text(text.replace("app_roles: [tm_app]", "app_roles: []"))

    def down(*args: object, **kw: object) -> object:
        raise SettingsError("the flag provider is down")

    with monkeypatch.context() as patched:
        patched.setattr(FileFlagProvider, "set_enabled", down)
        first = api.run(live.playbook, environ=live.environ)
    assert first.tenants[0].outcome == "failed"
    with live.source("acme") as conn:
        conn.execute("INSERT INTO comments (task_id, author_id, body, created_at) SELECT 1, 1, 'late', now()")
    second = api.run(live.playbook, environ=live.environ)
    tenant = second.tenants[0]
    assert tenant.outcome == "failed" and tenant.error is not None
    assert "differ in comments" in tenant.error.message
    assert [s.kind for s in tenant.steps if s.outcome == "failed"] == ["validate"]
    assert api.status(live.playbook, environ=live.environ).tenants[0].flags == {FLAG: False}


def test_a_write_begun_before_the_freeze_and_committed_after_it_reaches_the_target(live: LiveWorld) -> None:
    """The barrier waits for a transaction that wrote before the REVOKE; the fence then covers its commit."""
    app = psycopg.connect(live.source_dsn("acme", APP_ROLE), autocommit=True)
    late: list[threading.Thread] = []

    def commit_after_the_revoke() -> None:
        deadline = time.monotonic() + 30
        while app_can_write(live) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.15)  # well inside the barrier's bound (a quarter of max_freeze)
        app.commit()

    def progress(event: api.ProgressEvent) -> None:
        if event.kind == "changes_applied" and not late:  # capture is open: the slot waits for no one now
            app.execute("BEGIN")
            app.execute(
                "INSERT INTO comments (task_id, author_id, body, created_at) SELECT 1, 1, 'in flight', now()"
            )
            late.append(threading.Thread(target=commit_after_the_revoke))
            late[0].start()

    try:
        result = api.run(live.playbook, environ=live.environ, progress=progress)
    finally:
        for thread in late:
            thread.join(timeout=30)
        app.close()
    assert late and result.ok, [t.error for t in result.tenants]
    with live.target() as conn:
        assert conn.execute("SELECT count(*) FROM app.comments WHERE body = 'in flight'").fetchone() == (1,)
    live.assert_equal("acme")


@pytest.fixture
def two(logical_admin_dsn: str, tmp_path: Path) -> Iterator[LiveWorld]:
    with live_world(logical_admin_dsn, tmp_path, {"acme": 2, "globex": 2}) as world:
        yield world


def test_the_online_phase_admits_at_most_max_online_tenants(two: LiveWorld) -> None:
    """Two tenants on two workers with max_online_tenants 1: never two captures open at once, both finish."""
    two.write_playbook(cutover="max_online_tenants: 1")
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        with two.target() as conn:
            while not done.is_set():
                try:
                    row = conn.execute(
                        "SELECT count(*) FROM migrate_control.captures WHERE online"
                    ).fetchone()
                    seen.append(int(row[0]) if row else 0)
                except psycopg.errors.UndefinedTable:
                    pass
                time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = api.run(two.playbook, environ=two.environ, jobs=2)
    finally:
        done.set()
        watcher.join()
    assert result.ok, [t.error for t in result.tenants]
    assert max(seen) == 1
    two.assert_equal("acme")
    two.assert_equal("globex")


def test_a_rehearsal_of_an_online_playbook_changes_nothing_on_the_source(live: LiveWorld) -> None:
    """--dry-run: no publication, no slot, no REVOKE, no rows on the target; the flip is only reported."""
    result = api.run(live.playbook, environ=live.environ, dry_run=True)
    assert result.ok, [t.error for t in result.tenants]
    cutover = next(s for s in result.tenants[0].steps if s.kind == "cutover")
    assert (
        "would freeze tm_app" in cutover.details["rehearsal"]
        and cutover.summary == "tenant-shared-db: off -> on"
    )
    assert slots_of(live) == [] and app_can_write(live)
    with live.source("acme") as conn:
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
    with live.target() as conn:  # the shared tables, created in the rehearsal's transaction, rolled back
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'app'").fetchone() == (0,)
