"""The backfill on real PostgreSQL: chunks, exact values, keys, cycles, the tenant guard, faults, progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from io import StringIO
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql
from rich.console import Console
from structlog.testing import capture_logs

from databases import DatabaseFactory
from migrate import api
from migrate.cli.progress import CopyProgress
from migrate.control import schema as control_schema
from migrate.engine.retry import condition
from migrate.engine.session import tenant_session
from migrate.errors import PlaybookError, StepFailed
from migrate.playbook import load_playbook
from migrate.playbook.model import BackfillStep, SchemaStep
from migrate.steps import step_for
from migrate.steps.chunks import copy_chunk, read_statement, table_plans, write_statement
from migrate.steps.context import ProgressEvent
from world import CYCLE, ROOT, TABLES, World, custom_world

EVERYTHING = """
CREATE TABLE everything (
    id    bigint PRIMARY KEY,
    i2    smallint,
    i4    integer,
    n     numeric,
    n2    numeric(12, 2),
    r     real,
    d     double precision,
    t     text,
    vc    varchar(20),
    ch    char(5),
    b     bytea,
    j     jsonb,
    js    json,
    ts    timestamptz,
    tsl   timestamp,
    dt    date,
    tm    time,
    iv    interval,
    u     uuid,
    ip    inet,
    ok    boolean,
    tags  text[],
    grid  integer[],
    span  tstzrange
);
INSERT INTO everything (id) VALUES (1);
INSERT INTO everything VALUES
  (2, -32768, 2147483647, 'NaN', -0.01, 'NaN', '-0', '', '', '', '\\x', '{}', '{"b": 1,  "a": [1, 2]}',
   'infinity', '-infinity', 'infinity', '24:00', '-1 day 2 mons 3.000001 s',
   '00000000-0000-0000-0000-000000000000', '::1/128', false, '{}', '{{1,2},{3,4}}', 'empty'),
  (3, 0, -1, 123456789012345678901234567890.123456789, 1.50, 3.4e38, 1e308,
   E'Zoë 山田 ✓ \\t tab "quote" \\\\ backslash', 'ünïcødé', 'ab', '\\x00ff00',
   '{"ü": [1.50, null, "x"], "": ""}', '[]', '2024-02-29 23:59:59.999999+05:30', '2000-01-01 00:00:00',
   '0001-01-01', '00:00:00.000001', '0', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '10.1.2.3/8', true,
   ARRAY['', NULL, 'a,b', '"q"', 'NULL', 'ü'], '{{NULL,2}}', '[2024-01-01 00:00+00,2024-02-01 00:00+00)');
INSERT INTO everything (id, i4, n, t, b, j, ts, tags)
SELECT g, g * 7, g / 3.0, repeat('x', g % 17), decode(md5(g::text), 'hex'),
       jsonb_build_object('g', g, 'even', g % 2 = 0), timestamptz '2024-01-01 00:00+00' + g * interval '1 s',
       CASE WHEN g % 3 = 0 THEN NULL ELSE ARRAY[g::text, ''] END
FROM generate_series(4, 500) AS g;
"""


def playbook(
    tmp_path: Path,
    tenants: tuple[str, ...],
    *,
    tables: str = "auto",
    chunk_rows: int = 100_000,
    steps: tuple[str, ...] = ("schema", "backfill", "validate"),
    name: str = "bf",
) -> Path:
    """A playbook without flags: the given steps in one phase."""
    body = "\n".join(
        f"      - {{kind: backfill, chunk_rows: {chunk_rows}}}" if s == "backfill" else f"      - kind: {s}"
        for s in steps
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"version: 1\nname: {name}\n"
        "target: {dsn_env: MIGRATE_TARGET_DSN, schema: app}\n"
        "source: {dsn_template_env: MIGRATE_SOURCE_DSN_TEMPLATE, schema: public}\n"
        f"tenants: [{', '.join('{id: ' + t + '}' for t in tenants)}]\n"
        f"tables: {tables}\n"
        f"phases:\n  - name: copy\n    steps:\n{body}\n"
    )
    return path


def rows_as_text(conn: psycopg.Connection[object], table: str, where: str = "") -> list[tuple[object, ...]]:
    cols = [
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0"
            " AND NOT attisdropped AND attname <> 'tenant_id' ORDER BY attnum",
            (table,),
        )
    ]
    row = sql.SQL("ROW({})::text").format(sql.SQL(", ").join(sql.Identifier(c) for c in cols))
    conn.execute("SET TIME ZONE 'UTC'")
    return conn.execute(
        sql.SQL("SELECT id, {} FROM {} {} ORDER BY id").format(row, sql.SQL(table), sql.SQL(where))
    ).fetchall()


def test_every_column_type_round_trips_exactly_through_chunks(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """NULLs, NaN, -0, infinities, empty strings, arrays, bytea, json spacing, unicode: equal after chunks."""
    world = custom_world(database_factory, tmp_path, EVERYTHING, ("acme",))
    result = api.run(playbook(tmp_path, ("acme",), chunk_rows=37), environ=world.environ)
    assert result.ok, result.tenants[0].error
    with world.source("acme") as src, world.target() as dst:
        source_rows = rows_as_text(src, "everything")
        target_rows = rows_as_text(dst, "app.everything", "WHERE tenant_id = 'acme'")
    assert len(source_rows) == 500
    assert target_rows == source_rows
    backfill = next(s for s in result.tenants[0].steps if s.kind == "backfill")
    assert backfill.details["tables"]["everything"] == {"rows": 500, "copied_now": 500}


@pytest.mark.tenants("acme")
def test_sample_schema_arrays_and_empty_strings_round_trip(world: World, tmp_path: Path) -> None:
    """The sample schema's text[] (empty, NULL elements, '') and empty titles arrive unchanged."""
    assert api.run(playbook(tmp_path, ("acme",), chunk_rows=64), environ=world.environ).ok
    with world.source("acme") as src, world.target() as dst:
        assert rows_as_text(dst, "app.tasks", "WHERE tenant_id = 'acme'") == rows_as_text(src, "tasks")
        labels = {r[0] for r in dst.execute("SELECT labels::text FROM app.tasks")}
        titles = dst.execute("SELECT count(*) FROM app.tasks WHERE title = ''").fetchone()
    assert {None, "{}", '{urgent,""}'} <= labels
    assert titles and titles[0] > 0


@pytest.mark.tenants(acme=2)
def test_each_chunk_commits_with_its_checkpoint(world: World, tmp_path: Path) -> None:
    """Chunks of at most chunk_rows rows, one chunk_copied event each; the last checkpoint is the last key."""
    with capture_logs() as logs:
        assert api.run(playbook(tmp_path, ("acme",), chunk_rows=150), environ=world.environ).ok
    chunks = [e for e in logs if e["event"] == "chunk_copied" and e["table"] == "comments"]
    assert [e["rows"] for e in chunks] == [150] * 5 + [50]
    assert [e["total"] for e in chunks][-1] == 800
    assert chunks[0]["last_key"] == ["150"] and chunks[-1]["last_key"] == ["800"]
    with world.target() as conn:
        cp = conn.execute(
            "SELECT rows_copied, done, last_key FROM migrate_control.checkpoints"
            " WHERE table_name = 'comments'"
        ).fetchone()
    assert cp == (800, True, ["800"])
    tables = [e for e in logs if e["event"] == "table_copied"]
    assert sorted(e["table"] for e in tables) == sorted(TABLES)


@pytest.mark.tenants(acme=2)
def test_a_chunk_and_its_checkpoint_commit_together_or_not_at_all(world: World, tmp_path: Path) -> None:
    """A checkpoint write that fails takes its chunk's rows with it; the next run resumes exactly there."""
    book = playbook(tmp_path, ("acme",), chunk_rows=150)
    control_schema.upgrade(world.target_dsn, "migrate_control")
    with world.target() as conn:
        conn.execute(
            "CREATE FUNCTION migrate_control.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.table_name = 'comments' AND NEW.rows_copied > 450 THEN"
            " RAISE EXCEPTION 'checkpoint refused'; END IF; RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON migrate_control.checkpoints"
            " FOR EACH ROW EXECUTE FUNCTION migrate_control.refuse()"
        )
    failed = api.run(book, environ=world.environ)
    assert failed.tenants[0].error is not None and "checkpoint refused" in failed.tenants[0].error.message
    with world.target() as conn:
        held = conn.execute("SELECT count(*) FROM app.comments WHERE tenant_id = 'acme'").fetchone()
        cp = conn.execute(
            "SELECT rows_copied FROM migrate_control.checkpoints WHERE table_name = 'comments'"
        ).fetchone()
        conn.execute("DROP TRIGGER refuse ON migrate_control.checkpoints")
    assert held == cp == (450,)
    assert api.run(book, environ=world.environ).ok
    assert world.target_counts("acme") == world.source_counts("acme")


def test_a_table_without_any_key_is_copied_whole_in_one_chunk(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """No primary key and no declared key: the table is one chunk (one transaction with its
    checkpoint), however small chunk_rows is, and arrives whole."""
    ddl = "CREATE TABLE audit (at timestamptz NOT NULL, seq int NOT NULL, msg text);" + (
        "INSERT INTO audit SELECT now(), g, 'm' FROM generate_series(1, 10) g;"
    )
    world = custom_world(database_factory, tmp_path, ddl, ("acme",))
    with capture_logs() as logs:
        result = api.run(playbook(tmp_path, ("acme",), chunk_rows=3), environ=world.environ)
    assert result.ok, result.tenants[0].error
    assert [e["rows"] for e in logs if e["event"] == "chunk_copied"] == [10]
    with world.target() as conn:
        assert conn.execute("SELECT count(*) FROM app.audit").fetchone() == (10,)


def test_a_declared_key_copies_a_keyless_table_in_chunks_even_with_ties(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """A declared, non-unique key: chunks never split a tie, so no row is lost or doubled."""
    ddl = "CREATE TABLE audit (at timestamptz NOT NULL, seq int NOT NULL, msg text);" + (
        "INSERT INTO audit SELECT timestamptz '2024-01-01' + (g / 7) * interval '1 s', g % 3, 'm' || g"
        " FROM generate_series(1, 300) g;"
    )
    world = custom_world(database_factory, tmp_path, ddl, ("acme",))
    tables = "[{name: audit, key: [at, seq]}]"
    with capture_logs() as logs:
        result = api.run(playbook(tmp_path, ("acme",), tables=tables, chunk_rows=40), environ=world.environ)
    assert result.ok, result.tenants[0].error
    assert len([e for e in logs if e["event"] == "chunk_copied"]) > 5
    with world.target() as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT msg) FROM app.audit").fetchone() == (300, 300)


def test_a_declared_key_with_a_nullable_column_is_refused(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """A NULL key would fall outside every range: the declared key must be NOT NULL, and says so."""
    ddl = "CREATE TABLE audit (at timestamptz, seq int NOT NULL);"
    world = custom_world(database_factory, tmp_path, ddl, ("acme",))
    tables = "[{name: audit, key: [at, seq]}]"
    result = api.run(playbook(tmp_path, ("acme",), tables=tables), environ=world.environ)
    assert result.tenants[0].error is not None
    assert "audit.at, which allows NULL" in result.tenants[0].error.message


def test_self_references_and_a_cycle_load_across_chunks_then_validate(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """Forward references across chunks and a teams⇄members cycle load; rollback removes them again."""
    world = custom_world(database_factory, tmp_path, CYCLE, ("acme", "globex"))
    book = playbook(tmp_path, ("acme", "globex"), chunk_rows=50)
    result = api.run(book, environ=world.environ)
    assert result.ok, [t.error for t in result.tenants]
    with world.target() as conn:
        assert conn.execute("SELECT count(*) FROM app.members WHERE tenant_id = 'acme'").fetchone() == (400,)
        fks = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'app'::regnamespace"
        ).fetchone()
    assert fks == (3,)  # the foreign keys exist on the target: nothing was loaded without them
    env = api.environment(load_playbook(book), world.environ)
    with tenant_session(env, env.loaded.tenants[0], uuid4()) as ctx:
        assert [t.name for t in ctx.tables] == ["members", "teams"]
        step_for(BackfillStep(kind="backfill")).revert(ctx, {})
    with world.target() as conn:
        assert conn.execute("SELECT count(*) FROM app.teams WHERE tenant_id = 'acme'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM app.teams WHERE tenant_id = 'globex'").fetchone() == (20,)


def test_a_broken_self_reference_fails_verify_naming_the_foreign_key(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """A table loaded with its foreign-key checks off is checked after: a dangling mentor fails the tenant."""
    broken = CYCLE + (
        "SET session_replication_role = replica;"
        " INSERT INTO members VALUES (401, 1, 9999, 'dangling'); RESET session_replication_role;"
    )
    world = custom_world(database_factory, tmp_path, broken, ("acme",))
    result = api.run(playbook(tmp_path, ("acme",), chunk_rows=50), environ=world.environ)
    error = result.tenants[0].error
    assert error is not None and "members_mentor_id_fkey" in error.message and "9999" in error.message


@pytest.mark.tenants("acme", "globex")
def test_a_tenants_stream_cannot_write_another_tenants_rows(world: World, tmp_path: Path) -> None:
    """Rows carrying another tenant_id are dropped by COPY … WHERE; the chunk fails; none land."""
    book = playbook(tmp_path, ("acme", "globex"), steps=("schema",))
    assert api.run(book, environ=world.environ).ok
    env = api.environment(load_playbook(book), world.environ)
    with tenant_session(env, env.loaded.tenants[0], uuid4()) as ctx:
        plan = table_plans(ctx.tables, {})[0]  # organizations, acme's session
        forged = read_statement(ctx, plan, None, None, tenant="globex")
        with pytest.raises(StepFailed, match="carried another tenant_id"), ctx.target.transaction():
            copy_chunk(ctx, plan, forged, write_statement(ctx, plan))
    with world.target() as conn:
        assert conn.execute("SELECT count(*) FROM app.organizations").fetchone() == (0,)


@pytest.mark.tenants("acme")
def test_a_role_subject_to_rls_is_refused_before_anything_is_written(world: World, tmp_path: Path) -> None:
    """A writer without BYPASSRLS gets the reason and the fix, not a COPY error halfway."""
    book = playbook(tmp_path, ("acme",), steps=("schema",))
    assert api.run(book, environ=world.environ).ok
    role = f"tm_plain_{uuid.uuid4().hex[:8]}"
    with world.target() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(role)))
    try:
        env = api.environment(load_playbook(book), world.environ)
        with tenant_session(env, env.loaded.tenants[0], uuid4()) as ctx:
            ctx.target.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            with pytest.raises(StepFailed, match="subject to row-level security") as info:
                step_for(BackfillStep(kind="backfill")).apply(ctx)
            ctx.target.execute("RESET ROLE")
        assert info.value.hint and "BYPASSRLS" in info.value.hint
    finally:
        with world.target() as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("ALTER TABLE app.tasks DROP COLUMN labels", "source column tasks.labels has no column"),
        ("ALTER TABLE app.tasks ALTER COLUMN estimate TYPE text", "column tasks.estimate is numeric"),
    ],
    ids=["missing-column", "type-mismatch"],
)
@pytest.mark.tenants("acme")
def test_a_permanent_error_fails_the_tenant_at_once_naming_table_and_column(
    change: str, named: str, world: World, tmp_path: Path
) -> None:
    """A missing column or a type mismatch is not retried: the tenant fails on the first attempt."""
    assert api.run(playbook(tmp_path, ("acme",), steps=("schema",), name="s"), environ=world.environ).ok
    with world.target() as conn:
        conn.execute(change)
    with capture_logs() as logs:
        result = api.run(playbook(tmp_path, ("acme",), steps=("backfill",), name="c"), environ=world.environ)
    error = result.tenants[0].error
    assert error is not None and named in error.message
    assert not [e for e in logs if e["event"] == "step_retried"]


def test_retry_conditions_are_named_from_real_server_errors(pg_admin_dsn: str) -> None:
    """Serialization failure, deadlock, lock timeout, lost connection are retried; a missing column is not."""
    found = {}
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        for state in ("40001", "40P01", "55P03", "57P01", "42703", "23505"):
            try:
                conn.execute(f"DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '{state}'; END $$")
            except psycopg.Error as exc:
                found[state] = condition(exc)
    assert found == {
        "40001": "serialization failure",
        "40P01": "deadlock",
        "55P03": "lock timeout",
        "57P01": "lost connection",
        "42703": None,
        "23505": None,
    }
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect("postgresql://postgres@127.0.0.1:1/none", connect_timeout=2)
    wrapped = StepFailed("cannot connect")
    wrapped.__cause__ = info.value
    assert condition(wrapped) == "lost connection"


@pytest.mark.tenants("acme")
def test_a_lock_timeout_is_retried_and_the_copy_resumes(world: World, tmp_path: Path) -> None:
    """A table held by someone else past lock_timeout: retried with a log line, then the copy completes."""
    assert api.run(playbook(tmp_path, ("acme",), steps=("schema",), name="s"), environ=world.environ).ok
    environ = {**world.environ, "MIGRATE_TARGET_DSN": world.target_dsn + " options='-c lock_timeout=100'"}
    outcome: list[api.RunResult] = []
    with world.target() as holder, capture_logs() as logs:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE app.comments IN ACCESS EXCLUSIVE MODE")
        book = playbook(tmp_path, ("acme",), steps=("backfill", "validate"), name="c")
        runner = threading.Thread(target=lambda: outcome.append(api.run(book, environ=environ)))
        runner.start()
        deadline = time.monotonic() + 30
        while not any(e["event"] == "step_retried" for e in logs) and time.monotonic() < deadline:
            time.sleep(0.05)
        holder.execute("COMMIT")
        runner.join(timeout=60)
    assert outcome and outcome[0].ok, outcome and outcome[0].tenants[0].error
    retried = [e for e in logs if e["event"] == "step_retried"]
    assert retried and retried[0]["condition"] == "lock timeout" and retried[0]["wait_s"] <= 30
    assert world.target_counts("acme") == world.source_counts("acme")


@pytest.mark.tenants("acme", "globex")
def test_progress_reaches_the_sink_and_the_terminal_renderer(world: World, tmp_path: Path) -> None:
    """The sink sees the run, each tenant sized, every chunk and table; the rich renderer shows rows/s."""
    events: list[ProgressEvent] = []
    lock = threading.Lock()

    def sink(event: ProgressEvent) -> None:
        with lock:
            events.append(event)

    book = playbook(tmp_path, ("acme", "globex"), chunk_rows=100)
    assert api.run(book, environ=world.environ, jobs=2, progress=sink).ok
    assert events[0] == ProgressEvent("run_started", tenants=2)
    for tenant in ("acme", "globex"):
        mine = [e for e in events if e.tenant == tenant]
        assert [e.kind for e in mine][:2] == ["tenant_started", "tenant_sized"]
        assert mine[-1] == ProgressEvent("tenant_finished", tenant, outcome="done")
        copied = sum(e.rows for e in mine if e.kind == "chunk_copied")
        assert copied == sum(world.source_counts(tenant).values())
        assert len([e for e in mine if e.kind == "table_copied"]) == len(TABLES)
    screen = StringIO()
    with CopyProgress(Console(file=screen, force_terminal=True, width=140)) as bars:
        for event in events:
            bars(event)
    shown = screen.getvalue()
    assert "rows/s" in shown and "all tenants (2/2 done)" in shown


@pytest.mark.tenants("acme")
def test_off_a_terminal_the_cli_logs_chunk_and_table_events_as_json(world: World, tmp_path: Path) -> None:
    """Without a TTY, `migrate run` writes chunk_copied and table_copied as JSON lines with fixed keys."""
    book = playbook(tmp_path, ("acme",), chunk_rows=300)
    done = subprocess.run(
        [sys.executable, "-m", "migrate", "run", str(book)],
        cwd=ROOT,
        env={**os.environ, **world.environ, "MIGRATE_LOG_LEVEL": "info"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    chunks = [e for e in events if e["event"] == "chunk_copied"]
    assert {e["table"] for e in chunks} == set(TABLES)
    assert all({"run_id", "tenant", "rows", "bytes", "last_key"} <= e.keys() for e in chunks)
    assert len([e for e in events if e["event"] == "table_copied"]) == len(TABLES)


@pytest.mark.tenants("acme")
def test_schema_step_then_backfill_in_one_session_copies_everything(world: World, tmp_path: Path) -> None:
    """The steps work on the session's connections directly too (as the conformance harness uses them)."""
    book = playbook(tmp_path, ("acme",))
    control_schema.upgrade(world.target_dsn, "migrate_control")
    env = api.environment(load_playbook(book), world.environ)
    with tenant_session(env, env.loaded.tenants[0], uuid4()) as ctx:
        step_for(SchemaStep(kind="schema")).apply(ctx)
        details = step_for(BackfillStep(kind="backfill", chunk_rows=7)).apply(ctx)
    assert details["copied_now"] == sum(world.source_counts("acme").values())


def test_playbook_keys_and_chunk_sizes_are_checked_where_they_are_written(tmp_path: Path) -> None:
    """An empty key or a zero chunk size is a playbook error naming the file, line and field."""
    book = playbook(tmp_path, ("acme",), tables="[{name: audit, key: []}]")
    with pytest.raises(PlaybookError) as info:
        load_playbook(book)
    assert "bf.yaml:6" in str(info.value) and "tables" in str(info.value)
    book = playbook(tmp_path, ("acme",), chunk_rows=0)
    with pytest.raises(PlaybookError) as info:
        load_playbook(book)
    assert "chunk_rows" in str(info.value)
    good = load_playbook(playbook(tmp_path, ("acme",), tables="[users, {name: audit, key: [at, seq]}]"))
    assert [(t.name, t.key) for t in good.playbook.table_specs() or ()] == [
        ("users", None),
        ("audit", ("at", "seq")),
    ]
