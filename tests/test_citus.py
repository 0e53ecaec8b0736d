"""The shared schema on a real Citus cluster (a coordinator and two workers, tests/citus_server.py).

Sources are the suite's own PostgreSQL; the target is a new database on the cluster's
coordinator: tables distributed on tenant_id, co-located, migrated, validated, probed
and rolled back through the coordinator.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from databases import DatabaseFactory
from kill import assert_no_gap_no_duplicate, checkpoints, start_run
from migrate import api
from migrate.checks.checksum import row_hash, table_shapes
from migrate.errors import SettingsError
from world import CYCLE, ROOT, TABLES, World, custom_world, make_world, tenants_of

CITUS_BOOK = ROOT / "playbooks" / "citus.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture
def cworld(
    request: pytest.FixtureRequest, database_factory: DatabaseFactory, tmp_path: Path, citus_database: str
) -> World:
    """The world of ``@pytest.mark.tenants``, its target a new database on the Citus coordinator."""
    marker = request.node.get_closest_marker("tenants")
    assert marker is not None, "needs @pytest.mark.tenants"
    world = make_world(database_factory, tmp_path, tenants_of(*marker.args, **marker.kwargs))
    world.target_dsn = citus_database
    return world


@pytest.fixture
def app_role(citus: str) -> Iterator[str]:
    """An application role of the test's own (roles are cluster-wide; Citus creates it on every node)."""
    role = f"tm_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(citus, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    yield role
    with psycopg.connect(citus, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def citus_tables(world: World) -> dict[str, tuple[str, str | None, int]]:
    with world.target() as conn:
        rows = conn.execute(
            "SELECT table_name::text, citus_table_type, distribution_column, colocation_id FROM citus_tables"
        ).fetchall()
    return {r[0]: (r[1], None if r[2] == "<none>" else r[2], r[3]) for r in rows}


def playbook(
    tmp_path: Path, tenants: tuple[str, ...], tables: str = "auto", chunk_rows: int = 10_000
) -> Path:
    """A Citus playbook of the given tenants: schema, pre-copy, backfill, validate."""
    path = tmp_path / "citus.yaml"
    path.write_text(
        "version: 1\nname: citus-test\n"
        "target: {dsn_env: MIGRATE_TARGET_DSN, schema: app, distributed: citus}\n"
        "source: {dsn_template_env: MIGRATE_SOURCE_DSN_TEMPLATE, schema: public}\n"
        f"tenants: [{', '.join('{id: ' + t + '}' for t in tenants)}]\n"
        f"tables: {tables}\n"
        "phases:\n  - name: copy\n    steps:\n      - kind: schema\n      - rollback_point: pre-copy\n"
        f"      - {{kind: backfill, chunk_rows: {chunk_rows}}}\n      - kind: validate\n"
    )
    return path


@pytest.mark.tenants(acme=2, globex=1, initech=1)
def test_the_demo_playbook_distributes_migrates_validates_and_rolls_back_on_citus(cworld: World) -> None:
    """playbooks/citus.yaml end to end on three nodes: a rehearsal leaves nothing; every tenant table
    distributed on tenant_id in one colocation group, the control schema local to the coordinator, verify
    green, each point rolled back."""
    # A rehearsal first: every step for real, the distribution too, all of it rolled back.
    rehearsal = api.run(CITUS_BOOK, environ=cworld.environ, actor="pytest", dry_run=True)
    assert rehearsal.ok and citus_tables(cworld) == {}
    result = api.run(CITUS_BOOK, environ=cworld.environ, actor="pytest")
    assert result.ok, [t.error for t in result.tenants]
    dist = citus_tables(cworld)
    assert {f"app.{t}" for t in TABLES} == set(dist)  # nothing of migrate_control is distributed
    assert {v[:2] for v in dist.values()} == {("distributed", "tenant_id")}
    assert len({v[2] for v in dist.values()}) == 1  # co-located
    for tenant in cworld.tenants:
        assert cworld.target_counts(tenant) == cworld.source_counts(tenant)
    assert api.verify(CITUS_BOOK, environ=cworld.environ).match
    assert api.ledger(CITUS_BOOK, environ=cworld.environ).failure is None
    # The schema step again (a second run, then a new tenant's) changes nothing: idempotent.
    again = api.run(CITUS_BOOK, environ=cworld.environ, actor="pytest")
    assert again.ok and citus_tables(cworld) == dist
    # Rollback to each point, newest first; then the run puts everything back.
    back = api.rollback(
        CITUS_BOOK, ["acme"], "pre-cutover", discard_writes_since_cutover=True, environ=cworld.environ
    )
    # Its writes since the cut-over discarded: the copy goes too, and the next run copies afresh.
    assert [r.key for r in back.steps_of("acme")] == ["cutover/flag", "copy/validate", "copy/backfill"]
    assert not back.unfinished
    assert set(cworld.target_counts("acme").values()) == {0}
    assert api.run(CITUS_BOOK, environ=cworld.environ, actor="pytest").ok
    assert cworld.target_counts("acme") == cworld.source_counts("acme")
    back = api.rollback(
        CITUS_BOOK, ["acme"], "pre-copy", discard_writes_since_cutover=True, environ=cworld.environ
    )
    assert [r.key for r in back.steps_of("acme")] == ["cutover/flag", "copy/validate", "copy/backfill"]
    assert not back.unfinished
    assert set(cworld.target_counts("acme").values()) == {0}
    assert cworld.target_counts("globex") == cworld.source_counts("globex")  # the others stay
    again = api.run(CITUS_BOOK, environ=cworld.environ, actor="pytest")
    assert again.ok
    assert api.verify(CITUS_BOOK, environ=cworld.environ).match
    status = api.status(CITUS_BOOK, environ=cworld.environ)
    assert [t.state for t in status.tenants] == ["done"] * 3


@pytest.mark.tenants(acme=1, globex=1)
def test_isolation_check_on_citus_fails_until_the_tenant_setting_reaches_the_workers(
    app_role: str, cworld: World
) -> None:
    """With the role's citus.propagate_set_commands unset, SET LOCAL app.tenant_id never reaches a worker
    and every policy silently shows nothing: findings, not a pass. With it 'local': real probes, green; a
    permissive policy on one table is then caught."""
    book = playbook(cworld.flag_file.parent, ("acme", "globex"))
    assert api.run(book, environ=cworld.environ).ok
    with cworld.target() as conn:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA app TO {}").format(sql.Identifier(app_role)))
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA app TO {}").format(
                sql.Identifier(app_role)
            )
        )
    report = api.isolation_check(book, app_role=app_role, environ=cworld.environ)
    rules = {f.rule for f in report.findings}
    assert "citus-tenant-setting-not-propagated" in rules
    blind = {f.table for f in report.findings if f.rule == "probe-own-tenant-invisible"}
    assert blind == set(TABLES)

    with cworld.target() as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} SET citus.propagate_set_commands = 'local'").format(
                sql.Identifier(app_role)
            )
        )
    report = api.isolation_check(book, app_role=app_role, environ=cworld.environ)
    assert report.findings == (), report.findings
    assert set(report.probed) == set(TABLES) and report.probes >= 6 * len(TABLES)

    # A policy that lets every tenant read every row: the probes, through the coordinator, see it.
    with cworld.target() as conn:
        conn.execute("CREATE POLICY everyone ON app.tasks USING (true)")
    report = api.isolation_check(book, app_role=app_role, environ=cworld.environ)
    assert {(f.table, f.rule) for f in report.findings} >= {("tasks", "probe-read-leak")}


@pytest.mark.tenants(acme=1, globex=1)
def test_the_application_sees_its_tenant_on_citus_only_with_set_local_propagated(
    app_role: str, cworld: World
) -> None:
    """What README tells the application: ALTER ROLE … SET citus.propagate_set_commands = 'local', then
    SET LOCAL app.tenant_id in each transaction. set_config() and a session-level SET see nothing."""
    book = playbook(cworld.flag_file.parent, ("acme", "globex"))
    assert api.run(book, environ=cworld.environ).ok
    acme_tasks = cworld.source_counts("acme")["tasks"]
    with cworld.target() as conn:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA app TO {}").format(sql.Identifier(app_role)))
        conn.execute(sql.SQL("GRANT SELECT ON app.tasks TO {}").format(sql.Identifier(app_role)))
        conn.execute(
            sql.SQL("ALTER ROLE {} SET citus.propagate_set_commands = 'local'").format(
                sql.Identifier(app_role)
            )
        )
    app = psycopg.conninfo.make_conninfo(cworld.target_dsn, user=app_role)
    with psycopg.connect(app, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SET LOCAL app.tenant_id = 'acme'")
            seen = conn.execute("SELECT count(*) FROM app.tasks").fetchone()
        assert seen == (acme_tasks,)
        with conn.transaction():
            conn.execute("SELECT set_config('app.tenant_id', 'acme', true)")
            assert conn.execute("SELECT count(*) FROM app.tasks").fetchone() == (0,)
        conn.execute("SET app.tenant_id = 'acme'")
        assert conn.execute("SELECT count(*) FROM app.tasks").fetchone() == (0,)


@pytest.mark.tenants(acme=1)
def test_validation_and_diff_of_a_tenant_are_routed_to_one_shard(cworld: World) -> None:
    """The per-tenant count and checksum run as a router query on Citus: one task on one worker."""
    book = playbook(cworld.flag_file.parent, ("acme",))
    assert api.run(book, environ=cworld.environ).ok
    with cworld.target() as conn:
        # The validate step's own statement (checks/checksum.py table_sum), with the tenant as a literal.
        shape = table_shapes(conn, "app", {"tasks": ("id",)})[0]
        query = sql.SQL(
            "EXPLAIN SELECT count(*), coalesce(sum({}), 0)::text FROM {} WHERE tenant_id = 'acme'"
        )
        plan = "\n".join(
            r[0] for r in conn.execute(query.format(row_hash(shape, "hash"), sql.Identifier("app", "tasks")))
        )
    assert "Task Count: 1" in plan, plan
    assert api.diff(book, "acme", "tasks", environ=cworld.environ).equal
    with cworld.target() as conn:  # one changed row on its shard: diff names its key
        conn.execute("UPDATE app.tasks SET title = 'changed' WHERE tenant_id = 'acme' AND id = 7")
    changed = api.diff(book, "acme", "tasks", environ=cworld.environ)
    assert (changed.missing, changed.extra, changed.changed) == (0, 0, 1)
    assert [row.key for row in changed.changed_rows] == [("7",)]


def test_a_cycle_and_self_reference_load_and_roll_back_on_citus(
    database_factory: DatabaseFactory, tmp_path: Path, citus_database: str
) -> None:
    """Tables that reference each other (and themselves) load with their foreign keys off on the workers
    too — SET LOCAL session_replication_role, propagated — and are checked after; the revert deletes."""
    world = custom_world(database_factory, tmp_path, CYCLE, ("acme", "globex"))
    world.target_dsn = citus_database
    book = playbook(tmp_path, ("acme", "globex"), chunk_rows=50)
    result = api.run(book, environ=world.environ)
    assert result.ok, [t.error for t in result.tenants]
    with world.target() as conn, world.source("acme") as src:
        for table in ("teams", "members"):
            q = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            held = conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = 'acme'").format(
                    sql.Identifier("app", table)
                )
            ).fetchone()
            assert held == src.execute(q).fetchone()
    back = api.rollback(book, ["acme"], "pre-copy", environ=world.environ)
    assert not back.unfinished
    with world.target() as conn:
        assert conn.execute("SELECT count(*) FROM app.members WHERE tenant_id = 'acme'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM app.members WHERE tenant_id = 'globex'").fetchone() == (
            400,
        )


@pytest.mark.tenants(acme=40)
def test_kill_9_mid_backfill_on_citus_then_run_again_loses_and_doubles_nothing(cworld: World) -> None:
    """A real runner killed with SIGKILL inside a table twice: only whole chunks stay on the shards; the
    next run resumes from the checkpoints on the coordinator and validates."""
    book = playbook(cworld.flag_file.parent, ("acme",), tables="[" + ", ".join(TABLES) + "]", chunk_rows=100)
    total = cworld.source_counts("acme")
    for table, past in (("tasks", total["tasks"] // 2), ("comments", total["comments"] // 2)):
        proc = start_run(cworld, book, "acme").proc
        deadline = time.monotonic() + 120
        killed = False
        while time.monotonic() < deadline and proc.poll() is None:
            rows, done, _last = checkpoints(cworld, "acme").get(table, (0, False, None))
            if rows >= past and not done:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.005)
        proc.wait(timeout=30)
        assert killed and proc.returncode == -signal.SIGKILL, f"the run ended before {table} reached {past}"
        assert_no_gap_no_duplicate(cworld, "acme", TABLES)
    result = api.run(book, environ=cworld.environ, tenants=["acme"])
    assert result.ok, result.tenants[0].error
    assert_no_gap_no_duplicate(cworld, "acme", TABLES)
    assert cworld.target_counts("acme") == cworld.source_counts("acme")


def test_migrate_demo_citus_moves_the_three_tenants_into_the_cluster_and_removes_what_it_made(
    citus: str,
) -> None:
    """`migrate demo --citus DSN` as a user runs it: tables in citus_tables, verify green, rollback to each
    point and a run again green, isolation-check green with real probes; its database and role are gone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATE_")}
    done = subprocess.run(
        [sys.executable, "-m", "migrate", "demo", "--citus", citus],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    out = done.stdout
    for table in TABLES:
        assert f"app.{table} " in out and "distributed  tenant_id" in out
    assert "control schema migrate_control: local to the coordinator" in out
    assert "verify: 3 tenant(s), 18 table(s): counts and checksums match" in out
    assert "acme rolled back to 'pre-cutover'" in out and "acme rolled back to 'pre-copy'" in out
    assert "verify after the rollbacks and the run: counts and checksums match" in out
    assert "isolation holds for schema 'app'" in out and ": no findings" in out
    assert "every check green on Citus" in out
    with psycopg.connect(citus, autocommit=True) as conn:
        left = conn.execute(
            "SELECT (SELECT count(*) FROM pg_database WHERE datname LIKE 'tm\\_demo\\_citus\\_%'),"
            " (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'tm\\_demo\\_app\\_%')"
        ).fetchone()
    assert left == (0, 0)


GLOBAL_SCHEMA = """
CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
CREATE TABLE currencies (code text PRIMARY KEY, country text REFERENCES countries (code));
CREATE TABLE accounts (id bigint PRIMARY KEY, country text REFERENCES countries (code), name text NOT NULL);
CREATE TABLE invoices (
    id bigint PRIMARY KEY, account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    currency text REFERENCES currencies (code), total numeric(12, 2)
);
INSERT INTO countries VALUES ('DE', 'Germany'), ('FR', 'France');
INSERT INTO currencies VALUES ('EUR', 'DE');
INSERT INTO accounts SELECT a, 'DE', 'account ' || a FROM generate_series(1, 5) AS a;
INSERT INTO invoices SELECT i, 1 + i % 5, 'EUR', i * 1.5 FROM generate_series(1, 50) AS i;
"""


def _alembic(out: Path, dsn: str, action: str, revision: str) -> None:
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config
    from sqlalchemy.pool import NullPool

    from migrate.control.schema import sqlalchemy_url

    cfg = Config()
    cfg.set_main_option("script_location", str(out))
    cfg.set_main_option("version_table_schema", "app")
    engine = sa.create_engine(sqlalchemy_url(dsn), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            getattr(command, action)(cfg, revision)
    finally:
        engine.dispose()


def test_schema_generate_citus_writes_a_revision_that_distributes_and_makes_reference_tables(
    app_role: str, database_factory: DatabaseFactory, tmp_path: Path, citus_database: str
) -> None:
    """`schema generate --citus`: alembic applies it on the coordinator — global tables as reference
    tables, tenant tables distributed and co-located, the role's tenant setting propagated — reverts and
    applies again."""
    world = custom_world(database_factory, tmp_path, GLOBAL_SCHEMA, ("acme",))
    out = tmp_path / "shared"
    result = api.schema_generate(
        sources=[f"acme={world.source_dsn('acme')}"],
        out=out,
        app_role=app_role,
        global_tables=["countries", "currencies"],
        citus=True,
    )
    assert result.ok, result.errors
    text = result.revision.path.read_text()
    assert "create_reference_table" in text and "create_distributed_table" in text
    _alembic(out, citus_database, "upgrade", "head")
    world.target_dsn = citus_database
    dist = citus_tables(world)
    assert dist["app.countries"][0] == dist["app.currencies"][0] == "reference"
    assert dist["app.accounts"][:2] == dist["app.invoices"][:2] == ("distributed", "tenant_id")
    assert dist["app.accounts"][2] == dist["app.invoices"][2]
    assert "app.alembic_version" not in dist  # alembic's own table stays on the coordinator
    with world.target() as conn:
        setting = conn.execute(
            "SELECT setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole"
            " WHERE rolname = %s",
            (app_role,),
        ).fetchone()
    assert setting == (["citus.propagate_set_commands=local"],)
    _alembic(out, citus_database, "downgrade", "base")
    assert citus_tables(world) == {}
    _alembic(out, citus_database, "upgrade", "head")
    assert {t: v[:2] for t, v in citus_tables(world).items()} == {t: v[:2] for t, v in dist.items()}


REFUSED_SCHEMA = """
CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE people (
    id bigint PRIMARY KEY, account_id bigint REFERENCES accounts (id) ON DELETE SET NULL, name text
);
INSERT INTO accounts VALUES (1, 'one');
INSERT INTO people VALUES (1, 1, 'someone');
"""


def test_what_citus_refuses_is_reported_before_anything_is_created_or_copied(
    database_factory: DatabaseFactory, tmp_path: Path, citus_database: str
) -> None:
    """ON DELETE SET NULL on a key with tenant_id: the report names it (exit 1) and the schema step fails
    before a table exists on the coordinator."""
    world = custom_world(database_factory, tmp_path, REFUSED_SCHEMA, ("acme",))
    result = api.schema_generate(
        sources=[f"acme={world.source_dsn('acme')}"],
        out=tmp_path / "s",
        citus=True,
        unique_across=["accounts.name"],
    )
    assert [(n.rule, n.subject) for n in result.errors] == [
        ("citus-refuses-foreign-key", "people.people_account_id_fkey")
    ]
    assert ("citus-unique-across-tenants", "accounts(name)") in {(n.rule, n.subject) for n in result.notes}
    world.target_dsn = citus_database
    run = api.run(playbook(tmp_path, ("acme",)), environ=world.environ)
    assert not run.ok and "Citus would refuse" in str(run.tenants[0].error)
    with world.target() as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_class WHERE relname IN ('accounts', 'people')"
        ).fetchone() == (0,)


@pytest.mark.tenants(acme=1)
def test_an_online_playbook_is_refused_up_front_on_citus_with_the_reason(
    cworld: World, tmp_path: Path
) -> None:
    """The online cut-over's up-front checks refuse a Citus target (exit 2) before a slot, a publication or
    the control schema exists, saying why and what to write instead."""
    book = tmp_path / "online.yaml"
    book.write_text(
        (ROOT / "playbooks" / "online.yaml")
        .read_text()
        .replace("  schema: app\n", "  schema: app\n  distributed: citus\n")
        .replace("../flags/", f"{ROOT}/flags/")
    )
    with pytest.raises(SettingsError) as refused:
        api.run(book, environ=cworld.environ, tenants=["acme"])
    assert "not supported on Citus" in str(refused.value) and "cutover.mode: offline" in str(refused.value)
    with cworld.target() as conn:
        assert conn.execute("SELECT to_regnamespace('migrate_control')").fetchone() == (None,)
    with cworld.source("acme") as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
        ).fetchone() == (0,)


def test_a_citus_target_refuses_tenant_context_transaction_and_leaves_other_versions_as_they_were(
    tmp_path: Path,
) -> None:
    """The loader refuses tenant_context: transaction on Citus (the workers' transactions start at their
    own time), naming the file and line; distributed at its default leaves every playbook's version."""
    from migrate.errors import PlaybookError
    from migrate.playbook import load_playbook

    book = tmp_path / "citus.yaml"
    book.write_text(
        CITUS_BOOK.read_text()
        .replace("  distributed: citus", "  distributed: citus\n  tenant_context: transaction")
        .replace("../flags/", f"{ROOT}/flags/")
    )
    with pytest.raises(PlaybookError) as refused:
        load_playbook(book)
    assert "cannot work on Citus" in str(refused.value) and "citus.yaml:" in str(refused.value.where)
    assert load_playbook(ROOT / "playbooks" / "demo.yaml").digest[:12] == "165339573d44"
    assert load_playbook(ROOT / "playbooks" / "demo-regions.yaml").digest[:12] == "f82814792c79"


def test_the_schema_step_makes_existing_global_tables_reference_tables(
    database_factory: DatabaseFactory, tmp_path: Path, citus_database: str
) -> None:
    """Global tables the user created on the coordinator become reference tables at the schema step;
    the tenant tables are distributed beside them, and a second run changes nothing."""
    world = custom_world(database_factory, tmp_path, GLOBAL_SCHEMA, ("acme", "globex"))
    world.target_dsn = citus_database
    with world.target() as conn:
        conn.execute("CREATE SCHEMA app")
        conn.execute("CREATE TABLE app.countries (code text PRIMARY KEY, name text NOT NULL)")
        conn.execute("CREATE TABLE app.currencies (code text PRIMARY KEY, country text)")
        conn.execute("INSERT INTO app.countries VALUES ('DE', 'Germany'), ('FR', 'France')")
    book = playbook(tmp_path, ("acme", "globex"))
    book.write_text(
        book.read_text().replace("tables: auto\n", "tables: auto\nglobal_tables: [countries, currencies]\n")
    )
    result = api.run(book, environ=world.environ)
    assert result.ok, [t.error for t in result.tenants]
    dist = citus_tables(world)
    assert dist["app.countries"][0] == dist["app.currencies"][0] == "reference"
    assert {dist[f"app.{t}"][:2] for t in ("accounts", "invoices")} == {("distributed", "tenant_id")}
    with world.target() as conn:
        assert conn.execute("SELECT count(*) FROM app.countries").fetchone() == (2,)
    assert api.run(book, environ=world.environ).ok and citus_tables(world) == dist


@pytest.mark.tenants(acme=1, globex=1)
def test_a_tenant_held_through_the_coordinator_is_refused_to_a_second_runner(cworld: World) -> None:
    """Tenant locks live on the coordinator, where every runner connects: while a session there holds
    acme, a run skips it as locked (naming the holder in status) and moves globex."""
    book = playbook(cworld.flag_file.parent, ("acme", "globex"))
    with cworld.target() as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext('migrate.tenant'), hashtext('acme'))")
        result = api.run(book, environ=cworld.environ)
        outcomes = {t.tenant: t.outcome for t in result.tenants}
        assert outcomes["globex"] == "done" and outcomes["acme"] != "done"
        status = api.status(book, environ=cworld.environ, tenants=["acme"])
        assert status.tenants[0].holder is not None and status.tenants[0].state == "running"


@pytest.mark.tenants(acme=1, globex=1)
def test_with_target_app_role_the_schema_step_sets_up_the_role_and_the_flag_flips_write_ready(
    app_role: str, cworld: World
) -> None:
    """target.app_role on Citus: the schema step grants the role and gives it citus.propagate_set_commands
    = 'local'; the flag step's write-readiness proof (an insert as that role, SET LOCAL tenant propagated)
    passes on the workers and the flag flips; isolation-check is green with no hand-made set-up."""
    book = cworld.flag_file.parent / "citus-app.yaml"
    book.write_text(
        CITUS_BOOK.read_text()
        .replace("  distributed: citus", f"  distributed: citus\n  app_role: {app_role}")
        .replace("../flags/", f"{ROOT}/flags/")
    )
    result = api.run(book, environ=cworld.environ, tenants=["acme"])
    assert result.ok, [t.error for t in result.tenants]
    with cworld.target() as conn:
        setting = conn.execute(
            "SELECT setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole"
            " WHERE rolname = %s",
            (app_role,),
        ).fetchone()
    assert setting == (["citus.propagate_set_commands=local"],)
    assert (
        api.status(book, environ=cworld.environ, tenants=["acme"]).tenants[0].flags["tenant-shared-db"]
        is True
    )
    report = api.isolation_check(book, app_role=app_role, environ=cworld.environ)
    assert report.findings == () and report.probes > 0, report.findings


def _shards_of(world: World, tenant: str) -> dict[str, tuple[int, bool]]:
    """Per tenant table: the tenant's shard and whether it holds the tenant's hash value alone."""
    with world.target() as conn:
        rows = conn.execute(
            "SELECT c.relname, s.shardid, s.shardminvalue = s.shardmaxvalue FROM pg_dist_partition p"
            " JOIN pg_class c ON c.oid = p.logicalrelid"
            " JOIN pg_dist_shard s ON s.shardid = get_shard_id_for_distribution_column(c.oid, %s::text)"
            " WHERE c.relnamespace = 'app'::regnamespace AND p.partmethod = 'h'",
            (tenant,),
        ).fetchall()
    return {r[0]: (int(r[1]), bool(r[2])) for r in rows}


@pytest.mark.tenants(acme=2, globex=1)
def test_the_isolate_step_gives_a_tenant_shards_of_its_own_once_and_keeps_every_row(cworld: World) -> None:
    """isolate after validate: acme's hash value alone in a shard of every co-located table, rows and
    verify unchanged, other tenants' values still sharing; a second run and a re-apply split nothing;
    a rehearsal splits nothing."""
    book = cworld.flag_file.parent / "isolate.yaml"
    book.write_text(
        playbook(cworld.flag_file.parent, ("acme",)).read_text()
        + "  - name: place\n    steps:\n      - kind: isolate\n"
    )
    rehearsal = api.run(book, environ=cworld.environ, actor="pytest", dry_run=True)
    assert rehearsal.ok and citus_tables(cworld) == {}  # nothing made, nothing split
    result = api.run(book, environ=cworld.environ, actor="pytest")
    assert result.ok, [t.error for t in result.tenants]
    after = _shards_of(cworld, "acme")
    assert set(after) == set(TABLES) and all(alone for _, alone in after.values()), after
    details = next(s for s in result.tenants[0].steps if s.kind == "isolate").details
    assert details["split_now"] and details["from_shard"] != details["shard"]
    assert not any(alone for _, alone in _shards_of(cworld, "globex").values())  # the rest still share
    assert cworld.target_counts("acme") == cworld.source_counts("acme")
    assert api.verify(book, environ=cworld.environ).match
    # Idempotent: the run again, and after a rollback to before the copy a fresh apply, split nothing.
    assert api.run(book, environ=cworld.environ, actor="pytest").ok
    assert not api.rollback(book, ["acme"], "pre-copy", environ=cworld.environ).unfinished
    assert set(cworld.target_counts("acme").values()) == {0}
    again = api.run(book, environ=cworld.environ, actor="pytest")
    assert again.ok and _shards_of(cworld, "acme") == after
    step = next(s for s in again.tenants[0].steps if s.kind == "isolate")
    assert step.details["split_now"] is False
    assert cworld.target_counts("acme") == cworld.source_counts("acme")


@pytest.mark.tenants(acme=20)
def test_one_tenant_in_two_streams_on_citus_killed_with_two_ranges_in_flight_then_exact(
    cworld: World,
) -> None:
    """`migrate run --jobs 2` of one tenant into the cluster: its split tables' ranges in two streams
    through the coordinator; SIGKILL while two ranges of a table are in flight, the same command again,
    and the shards hold exactly the source's rows (md5 of the sorted rows on each side, not the tool's
    checksum)."""
    from live import table_digest

    book = playbook(cworld.flag_file.parent, ("acme",), tables="[" + ", ".join(TABLES) + "]", chunk_rows=100)
    args = ["--tenant", "acme", "--jobs", "2"]
    logs = cworld.flag_file.parent / "two"
    with open(logs.with_suffix(".out"), "wb") as out, open(logs.with_suffix(".err"), "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "migrate", "run", str(book), *args],
            cwd=ROOT,
            env={**os.environ, **cworld.environ},
            stdout=out,
            stderr=err,
        )
    deadline = time.monotonic() + 180
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with cworld.target() as conn:
                marks = conn.execute(
                    "SELECT split_part(table_name, '#', 1), count(*) FROM migrate_control.checkpoints"
                    " WHERE tenant = 'acme' AND table_name LIKE '%#%' AND rows_copied > 0 AND NOT done"
                    " GROUP BY 1"
                ).fetchall()
        except psycopg.Error:  # the control schema is not there yet
            marks = []
        if any(n >= 2 for _, n in marks):
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert killed and proc.returncode == -signal.SIGKILL, logs.with_suffix(".err").read_text()[-2000:]
    result = api.run(book, ["acme"], jobs=2, environ=cworld.environ)
    assert result.ok, [t.error for t in result.tenants]
    backfill = next(s for s in result.tenants[0].steps if s.kind == "backfill")
    assert backfill.details["streams"] == 2
    with cworld.source("acme") as src, cworld.target() as tgt:
        for table in TABLES:
            assert table_digest(tgt, "app", table, "acme") == table_digest(src, "public", table), table
    assert api.verify(book, environ=cworld.environ).match
