"""isolation-check cannot pass on nothing, and the tenant context holds whatever a connection did before.

Issue 16. Templates, built once per module on real PostgreSQL and copied per test:

* ``migrated``: the schema ``migrate run`` creates (session-bound policies, no grants to
  any application role) with acme's and globex's rows;
* ``migrated_txn``: the same with ``target.tenant_context: transaction``;
* ``tiny[text|uuid]``: a two-table schema from ``migrate schema generate`` with
  ``--tenant-type`` text or uuid and its grants, rows of two tenants put in by a superuser.

Roles are cluster-wide: each is uniquely named and dropped after its databases.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.pool import NullPool

from databases import DatabaseFactory, dsn_for
from migrate import api
from migrate.catalog.ddl import SET_TENANT_SQL, Options, set_tenant_sql, tenant_predicate
from migrate.checks.isolation import IsolationReport
from migrate.cli.app import main
from migrate.control.schema import sqlalchemy_url
from world import TABLES, make_world

TINY = """
CREATE TABLE projects (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE tasks (id int PRIMARY KEY, project_id int NOT NULL REFERENCES projects, title text NOT NULL);
"""
OLD_TEXT_PREDICATE = "tenant_id = current_setting('app.tenant_id', true)"  # before issue 16
OLD_UUID_PREDICATE = "tenant_id = current_setting('app.tenant_id', true)::uuid"


def _admin(dsn: str, *statements: sql.Composable | str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@pytest.fixture(scope="module")
def modules_databases(session_databases: DatabaseFactory) -> Iterator[DatabaseFactory]:
    """The databases of this module's templates: they go when the module ends."""
    factory = session_databases.scoped()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def role(session_databases: DatabaseFactory) -> Iterator[str]:
    """The application role: NOSUPERUSER NOBYPASSRLS, owning nothing; dropped with what it holds."""
    database_factory = session_databases
    name = f"tm_app_{uuid.uuid4().hex[:8]}"
    _admin(
        database_factory.admin_dsn,
        sql.SQL("CREATE ROLE {} NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(name)),
    )
    yield name
    with psycopg.connect(database_factory.admin_dsn, autocommit=True) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid"
                " WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = to_regrole(%s)",
                (name,),
            )
        ]
    for db in names:
        _admin(
            dsn_for(database_factory.admin_dsn, db), sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name))
        )
    _admin(database_factory.admin_dsn, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _migrated(factory: DatabaseFactory, tmp: Path, context: str) -> str:
    """The database name of a target `migrate run` filled with acme's and globex's rows."""
    world = make_world(factory, tmp, tenants=(("acme", 1), ("globex", 1)))
    playbook = tmp / "run.yaml"
    playbook.write_text(
        "name: proofs\n"
        f"target: {{dsn_env: MIGRATE_TARGET_DSN, tenant_context: {context}}}\n"
        "source: {dsn_template_env: MIGRATE_SOURCE_DSN_TEMPLATE}\n"
        "tenants: [{id: acme}, {id: globex}]\n"
        "phases:\n  - name: copy\n    steps: [{kind: schema}, {kind: backfill}]\n"
    )
    assert api.run(playbook, environ=world.environ).ok
    _admin(world.target_dsn, "ANALYZE")
    return str(conninfo_to_dict(world.target_dsn)["dbname"])


@pytest.fixture(scope="module")
def migrated(modules_databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory) -> str:
    return _migrated(modules_databases, tmp_path_factory.mktemp("session"), "session")


@pytest.fixture(scope="module")
def migrated_txn(modules_databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory) -> str:
    return _migrated(modules_databases, tmp_path_factory.mktemp("transaction"), "transaction")


def _copy(factory: DatabaseFactory, template: str) -> Iterator[str]:
    dsn = factory.create("proof", template=template)
    yield dsn
    factory.drop(str(conninfo_to_dict(dsn)["dbname"]))


@pytest.fixture
def target(migrated: str, database_factory: DatabaseFactory) -> Iterator[str]:
    """A private copy of the session-bound target `migrate run` made."""
    yield from _copy(database_factory, migrated)


@pytest.fixture
def target_txn(migrated_txn: str, database_factory: DatabaseFactory) -> Iterator[str]:
    """A private copy of the transaction-bound target `migrate run` made."""
    yield from _copy(database_factory, migrated_txn)


def grant(dsn: str, role: str) -> None:
    """What the README tells the operator to grant the application: never TRUNCATE."""
    _admin(
        dsn,
        sql.SQL("GRANT USAGE ON SCHEMA app TO {}").format(sql.Identifier(role)),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA app TO {}").format(
            sql.Identifier(role)
        ),
    )


@dataclass(frozen=True)
class Tiny:
    template: str
    tenant_type: str
    tenants: tuple[str, str]


@pytest.fixture(scope="module", params=["text", "uuid"])
def tiny(
    request: pytest.FixtureRequest,
    modules_databases: DatabaseFactory,
    tmp_path_factory: pytest.TempPathFactory,
    role: str,
) -> Tiny:
    """A generated two-table schema with a text or uuid tenant column, granted, with two tenants' rows."""
    kind = request.param
    database_factory = modules_databases
    source = database_factory.create("tinysrc")
    _admin(source, TINY)
    out = tmp_path_factory.mktemp(f"tiny_{kind}")
    api.schema_generate(sources=[source], out=out, tenant_type=kind, app_role=role)
    target = database_factory.create("tiny")
    cfg = Config()
    cfg.set_main_option("script_location", str(out))
    cfg.set_main_option("version_table_schema", "app")
    engine = sa.create_engine(sqlalchemy_url(target), poolclass=NullPool)
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")
    engine.dispose()
    tenants = (str(uuid.uuid4()), str(uuid.uuid4())) if kind == "uuid" else ("acme", "globex")
    with psycopg.connect(target, autocommit=True) as conn:
        for n, tenant in enumerate(tenants):
            conn.execute(
                "INSERT INTO app.projects (tenant_id, id, name)"
                " SELECT %s, i, 'p' || i FROM generate_series(1, 3) i",
                (tenant,),
            )
            conn.execute(
                "INSERT INTO app.tasks (tenant_id, id, project_id, title)"
                " SELECT %s, i, 1 + i %% 3, 't' || i FROM generate_series(1, %s) i",
                (tenant, 5 + n),
            )
        conn.execute("ANALYZE")
    return Tiny(str(conninfo_to_dict(target)["dbname"]), kind, tenants)


@pytest.fixture
def tiny_target(tiny: Tiny, database_factory: DatabaseFactory) -> Iterator[str]:
    yield from _copy(database_factory, tiny.template)


def check(dsn: str, role: str, **kw: object) -> IsolationReport:
    return api.isolation_check(dsn=dsn, schema="app", app_role=role, environ={}, **kw)  # type: ignore[arg-type]


def rules(report: IsolationReport) -> set[tuple[str, str]]:
    return {(f.table, f.rule) for f in report.findings}


def info(report: IsolationReport) -> set[str]:
    return {f.rule for f in report.informational}


# ----------------------------------------------------------------------------- fails closed
def test_the_schema_migrate_run_creates_without_grants_fails_and_says_why(
    target: str, role: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No grants to the application: every tenant table unreachable, no probe ran, exit 1 — never a pass."""
    report = check(target, role)
    assert not report.ok
    found = rules(report)
    assert ("schema app", "app-role-cannot-reach") in found
    assert {(t, "app-role-cannot-reach") for t in TABLES} <= found
    assert ("schema app", "no-probes") in found
    assert set(report.tables) == set(TABLES) and report.probes == 0 and report.probed == ()
    assert not any("no rows" in n for n in report.notes), report.notes
    monkeypatch.setenv("MIGRATE_TARGET_DSN", target)
    assert main(["isolation-check", "--schema", "app", "--app-role", role]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert (
        last.startswith("isolation BROKEN")
        and "6 tenant table(s) (0 probed as the application), 0 probe(s)" in last
    )


def test_the_fix_it_names_makes_it_pass_with_every_table_probed(target: str, role: str) -> None:
    """The grants the findings name are what it takes: then no finding, every table probed, true counts."""
    fixes = {f.fix for f in check(target, role).findings if f.rule == "app-role-cannot-reach"}
    assert any(f.startswith("GRANT USAGE ON SCHEMA") for f in fixes)
    grant(target, role)
    report = check(target, role)
    assert report.ok, [f.line() for f in report.findings]
    assert report.probed == tuple(sorted(TABLES)) and report.probes >= 7 * len(TABLES)
    assert report.notes == ()


def test_a_schema_without_tenant_tables_is_a_finding(target: str, role: str) -> None:
    """Pointing the check at a schema with nothing to check fails: no-tenant-tables, not a pass."""
    _admin(
        target,
        "CREATE SCHEMA empty",
        sql.SQL("GRANT USAGE ON SCHEMA empty TO {}").format(sql.Identifier(role)),
    )
    report = api.isolation_check(dsn=target, schema="empty", app_role=role, environ={})
    assert rules(report) == {("schema empty", "no-tenant-tables")}


def test_no_rows_is_said_only_when_no_tenant_table_has_any(target: str, role: str) -> None:
    """First tenant table empty, others full: no note claims there are no rows; all empty: one says so."""
    grant(target, role)
    _admin(target, "DELETE FROM app.attachments")  # the first table in name order
    report = check(target, role)
    assert report.ok and not any("no rows in any tenant table" in n for n in report.notes), report.notes
    _admin(target, "TRUNCATE " + ", ".join(f"app.{t}" for t in TABLES))
    empty = check(target, role)
    assert "no rows in any tenant table: the pooled-connection probe had nothing to see" in empty.notes
    assert ("schema app", "no-write-probes") in rules(empty), "no write was tried: that is not a pass"


# ----------------------------------------------------------------------------- the '' tenant
def _as_app_after_set_local(conn: psycopg.Connection[object], role: str, tenant: str) -> None:
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        conn.execute(SET_TENANT_SQL, (tenant,))


def test_generated_policies_match_nothing_and_refuse_writes_without_a_tenant(
    tiny_target: str, tiny: Tiny, role: str
) -> None:
    """After a SET LOCAL ended ('') and on a fresh connection (NULL): nothing visible or writable."""
    with psycopg.connect(tiny_target, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('app.tenant_id', true)").fetchone()
        assert row == (None,), "a fresh connection has never set the tenant"
        for when in ("fresh", "after SET LOCAL"):
            if when == "after SET LOCAL":
                _as_app_after_set_local(conn, role, tiny.tenants[0])
                assert conn.execute("SELECT current_setting('app.tenant_id', true)").fetchone() == ("",)
            with conn.transaction(force_rollback=True):
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                assert conn.execute("SELECT count(*) FROM app.projects").fetchone() == (0,), when
                statements = ["INSERT INTO app.projects (id, name) VALUES (99, 'no tenant')"]
                if tiny.tenant_type == "text":
                    statements.append(
                        "INSERT INTO app.projects (tenant_id, id, name) VALUES ('', 99, 'blank')"
                    )
                for statement in statements:
                    with pytest.raises(psycopg.Error) as refused, conn.transaction():
                        conn.execute(statement)
                    # RLS (checked first), else NOT NULL (the default is NULL) or CHECK (<> '').
                    assert refused.value.sqlstate in ("42501", "23502", "23514"), (when, statement)
            with conn.transaction(force_rollback=True):
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                insert = "INSERT INTO app.projects (tenant_id, id, name) VALUES (%s, 98, 'x')"
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(insert, (tiny.tenants[1],))
    if tiny.tenant_type == "text":
        with (
            psycopg.connect(tiny_target, autocommit=True) as conn,
            pytest.raises(psycopg.errors.CheckViolation),
        ):
            conn.execute("INSERT INTO app.projects (tenant_id, id, name) VALUES ('', 97, 'even a superuser')")


def test_the_empty_tenant_probes_pass_on_the_generated_schema(
    tiny_target: str, tiny: Tiny, role: str
) -> None:
    """The guarded schema, text or uuid: no finding, and the '' probes ran on every table."""
    report = check(tiny_target, role)
    assert report.ok, [f.line() for f in report.findings]
    assert report.probed == ("projects", "tasks") and report.notes == ()


def _unguard(dsn: str, tenant_type: str) -> None:
    """Back to the policy of before issue 16: no NULLIF, no column check, the raw setting as default."""
    predicate = OLD_UUID_PREDICATE if tenant_type == "uuid" else OLD_TEXT_PREDICATE
    for table in ("projects", "tasks"):
        _admin(
            dsn,
            f"ALTER POLICY tenant_isolation ON app.{table} USING ({predicate}) WITH CHECK ({predicate})",
            f"ALTER TABLE app.{table} DROP CONSTRAINT IF EXISTS tenant_id_not_empty",
            f"ALTER TABLE app.{table} ALTER COLUMN tenant_id SET DEFAULT {predicate.split(' = ')[1]}",
        )


def test_the_empty_tenant_probes_fail_on_a_schema_without_the_guard(
    tiny_target: str, tiny: Tiny, role: str
) -> None:
    """Without the guard: text stores '' rows every tenant-less request shares; uuid raises on ''."""
    _unguard(tiny_target, tiny.tenant_type)
    report = check(tiny_target, role)
    found = rules(report)
    if tiny.tenant_type == "text":
        assert {
            ("projects", "probe-empty-tenant-writable"),
            ("projects", "probe-empty-tenant-visible"),
        } <= found
        assert {("tasks", "probe-empty-tenant-writable")} <= found
        fix = next(f.fix for f in report.findings if f.rule == "probe-empty-tenant-writable")
        assert "NULLIF(current_setting('app.tenant_id', true), '')" in fix and "<> ''" in fix
    else:
        assert ("projects", "probe-empty-tenant-error") in found and (
            "tasks",
            "probe-empty-tenant-error",
        ) in found
    assert {rule for _t, rule in found} <= {
        "probe-empty-tenant-writable", "probe-empty-tenant-visible", "probe-empty-tenant-error",
    }  # fmt: skip


@pytest.mark.parametrize("tiny", ["text"], indirect=True)  # a uuid column cannot hold ''
def test_rows_already_stored_with_the_empty_tenant_are_found_and_the_named_fix_ends_it(
    tiny_target: str, tiny: Tiny, role: str
) -> None:
    """'' rows shared by tenant-less requests: found, and the fix the finding names makes the check pass."""
    _unguard(tiny_target, "text")
    _admin(tiny_target, "INSERT INTO app.projects (tenant_id, id, name) VALUES ('', 50, 'shared bucket')")
    report = check(tiny_target, role)
    visible = next(
        f for f in report.findings if f.rule == "probe-empty-tenant-visible" and f.table == "projects"
    )
    assert "1 rows stored with tenant_id = '' are visible" in visible.detail
    assert "move or delete the rows with tenant_id = ''" in visible.fix
    guarded = tenant_predicate(Options(schema="app")).as_string(None)  # what the generator writes
    assert guarded in visible.fix
    for table in ("projects", "tasks"):
        _admin(
            tiny_target,
            f"ALTER POLICY tenant_isolation ON app.{table} USING ({guarded}) WITH CHECK ({guarded})",
            f"DELETE FROM app.{table} WHERE tenant_id = ''",
            f"ALTER TABLE app.{table} ADD CHECK (tenant_id <> '')",
        )
    assert check(tiny_target, role).ok


# ----------------------------------------------------------------------------- pooled connections
def test_a_session_level_set_on_a_pooled_connection_is_reported_on_a_session_bound_schema(
    target: str, role: str
) -> None:
    """Session-bound (the default): the next request sees the last tenant; informational, with the way out."""
    grant(target, role)
    report = check(target, role)
    assert report.ok and "session-context-survives" in info(report)
    survives = next(f for f in report.informational if f.rule == "session-context-survives")
    assert "tenant_context: transaction" in survives.fix
    held = check(target, role, tenant_context="transaction")
    assert {(t, "probe-session-context-accepted") for t in TABLES} <= rules(held)


def test_a_session_level_set_is_caught_on_a_transaction_bound_schema(target_txn: str, role: str) -> None:
    """Transaction-bound: a tenant left by a session-level SET matches nothing; the contract still works."""
    grant(target_txn, role)
    report = check(target_txn, role, tenant_context="transaction")
    assert report.ok, [f.line() for f in report.findings]
    assert any("transaction-bound" in n for n in report.notes) and "session-context-survives" not in info(
        report
    )
    with psycopg.connect(target_txn, autocommit=True) as conn:
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            conn.execute(SET_TENANT_SQL, ("acme",))
            own = conn.execute("SELECT count(*) FROM app.tasks").fetchone()
        assert own is not None and own[0] > 0, "the application's contract must still see its own rows"
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            conn.execute(set_tenant_sql(local=False), ("acme",))
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            assert conn.execute("SELECT count(*) FROM app.tasks").fetchone() == (0,)
            conn.execute("SELECT set_config('app.tenant_id', 'acme', true)")
            assert conn.execute("SELECT count(*) FROM app.tasks").fetchone() == (0,), (
                "tenant without its start"
            )


# ----------------------------------------------------------------------------- what RLS cannot hide
def test_planner_estimates_and_shared_sequences_are_informational_and_the_mitigation_works(
    target: str, role: str
) -> None:
    """Estimates and shared sequences are reported, never failed; SET STATISTICS 0 ends the estimate leak."""
    grant(target, role)
    report = check(target, role)
    assert report.ok and {"planner-estimates-reveal-tenants", "sequence-shared"} <= info(report)
    estimates = next(f for f in report.informational if f.rule == "planner-estimates-reveal-tenants")
    assert "for a tenant that does not exist" in estimates.detail and "SET STATISTICS 0" in estimates.fix
    with psycopg.connect(target, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(f"ALTER TABLE app.{table} ALTER COLUMN tenant_id SET STATISTICS 0")
            conn.execute(
                "DELETE FROM pg_statistic WHERE starelid = %s::regclass AND staattnum ="
                " (SELECT attnum FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'tenant_id')",
                (f"app.{table}", f"app.{table}"),
            )
        conn.execute("ANALYZE")
    assert "planner-estimates-reveal-tenants" not in info(check(target, role))
