"""`migrate isolation-check`: static RLS rules and live cross-tenant probes on real PostgreSQL.

One module-wide template holds the generated demo schema (applied by alembic) with
two tenants' rows copied by a real backfill; every test gets its own copy (CREATE
DATABASE … TEMPLATE), breaks it one way, and expects that way named. Roles are
cluster-wide: each is uniquely named and dropped after its databases.
"""

from __future__ import annotations

import json
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
from migrate.checks.isolation import IsolationReport
from migrate.cli.app import main
from migrate.control.schema import sqlalchemy_url
from world import TABLES, make_world


@dataclass(frozen=True)
class Shared:
    template: str  # database name of the populated shared schema
    role: str  # its application role
    playbook: Path


def _admin(factory: DatabaseFactory, statement: sql.Composable) -> None:
    with psycopg.connect(factory.admin_dsn, autocommit=True) as conn:
        conn.execute(statement)


def _drop_role(factory: DatabaseFactory, role: str, *dbnames: str) -> None:
    for name in dbnames:
        with psycopg.connect(dsn_for(factory.admin_dsn, name), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    _admin(factory, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture(scope="module")
def shared(session_databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    """The generated demo schema with acme's and globex's rows, and its application role; its
    databases go when the module ends, as a test's do."""
    database_factory = session_databases.scoped()
    role = f"tm_app_{uuid.uuid4().hex[:8]}"
    _admin(database_factory, sql.SQL("CREATE ROLE {} NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(role)))
    template = ""
    try:
        tmp = tmp_path_factory.mktemp("isolation")
        world = make_world(database_factory, tmp, tenants=(("acme", 1), ("globex", 1)))
        template = str(conninfo_to_dict(world.target_dsn)["dbname"])
        out = tmp / "shared"
        api.schema_generate(sources=[world.source_dsn("acme")], out=out, app_role=role)
        cfg = Config()
        cfg.set_main_option("script_location", str(out))
        cfg.set_main_option("version_table_schema", "app")
        engine = sa.create_engine(sqlalchemy_url(world.target_dsn), poolclass=NullPool)
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")
        engine.dispose()
        playbook = tmp / "copy.yaml"
        playbook.write_text(
            "name: iso\ntarget: {dsn_env: MIGRATE_TARGET_DSN}\n"
            "source: {dsn_template_env: MIGRATE_SOURCE_DSN_TEMPLATE}\n"
            "tenants: [{id: acme}, {id: globex}]\nglobal_tables: []\n"
            "phases:\n  - name: copy\n    steps: [{kind: schema}, {kind: backfill}, {kind: validate}]\n"
        )
        assert api.run(playbook, environ=world.environ).ok
        yield Shared(template, role, playbook)
    finally:
        _drop_role(database_factory, role, *([template] if template else []))
        database_factory.close()


@pytest.fixture
def target(shared: Shared, database_factory: DatabaseFactory) -> Iterator[str]:
    """A private copy of the populated shared schema, dropped after the test (whatever the backend:
    the module's role is dropped at its end, and a database with grants to it would stop that)."""
    dsn = database_factory.create("iso", template=shared.template)
    yield dsn
    database_factory.drop(str(conninfo_to_dict(dsn)["dbname"]))


def check(dsn: str, role: str, **kw: object) -> IsolationReport:
    return api.isolation_check(dsn=dsn, schema="app", app_role=role, environ={}, **kw)  # type: ignore[arg-type]


def rules(report: IsolationReport) -> set[tuple[str, str]]:
    return {(f.table, f.rule) for f in report.findings}


def alter(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {
            t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("app", t))).fetchone()[0]  # type: ignore[index]
            for t in TABLES
        }


def test_the_generated_schema_passes_every_rule_and_probe(target: str, shared: Shared) -> None:
    """The clean generated schema: no findings, every tenant table probed, nothing skipped."""
    before = counts(target)
    report = check(target, shared.role)
    assert report.ok, [f.line() for f in report.findings]
    assert set(report.tables) == set(TABLES)
    assert report.probes >= 7 * len(TABLES) and report.notes == ()
    assert counts(target) == before  # every probe was rolled back


def test_a_policy_without_with_check_is_reported(target: str, shared: Shared) -> None:
    """A FOR ALL policy with USING only: policy-without-with-check on that table."""
    alter(
        target,
        "DROP POLICY tenant_isolation ON app.users",
        "CREATE POLICY reads ON app.users USING (tenant_id = current_setting('app.tenant_id', true))",
    )
    report = check(target, shared.role)
    assert rules(report) == {("users", "policy-without-with-check")}
    assert "ALTER POLICY reads ON" in report.findings[0].fix


def test_rls_not_forced_while_the_app_role_owns_the_table_is_reported_and_leaks(
    target: str, shared: Shared
) -> None:
    """The application owns tasks and RLS is not forced: the rule, the ownership, and the probes' leaks."""
    alter(
        target,
        f"ALTER TABLE app.tasks OWNER TO {shared.role}",
        "ALTER TABLE app.tasks NO FORCE ROW LEVEL SECURITY",
    )
    report = check(target, shared.role)
    found = rules(report)
    assert ("tasks", "rls-not-forced") in found and ("tasks", "app-role-owns-table") in found
    assert {
        ("tasks", "probe-read-leak"),
        ("tasks", "probe-insert-leak"),
        ("tasks", "probe-delete-leak"),
    } <= found
    assert {t for t, _r in found} == {"tasks"}
    forced = next(f for f in report.findings if f.rule == "rls-not-forced")
    assert "application role owns it" in forced.detail and "FORCE ROW LEVEL SECURITY" in forced.fix


def test_a_table_without_tenant_id_is_reported(target: str, shared: Shared) -> None:
    """A table the application can reach without a tenant column: missing-tenant-column."""
    alter(
        target,
        "CREATE TABLE app.notes (id int PRIMARY KEY, body text)",
        "INSERT INTO app.notes VALUES (1, 'acme secret'), (2, 'globex secret')",
        f"GRANT SELECT, INSERT ON app.notes TO {shared.role}",
    )
    report = check(target, shared.role)
    assert rules(report) == {("notes", "missing-tenant-column")}
    assert check(target, shared.role, global_tables=["notes"]).findings[0].rule == "global-table-writable"


def test_a_view_without_security_invoker_is_reported(target: str, shared: Shared) -> None:
    """A view over a tenant table with its owner's rights: view-definer-rights."""
    alter(
        target,
        "CREATE VIEW app.user_emails AS SELECT email FROM app.users",
        f"GRANT SELECT ON app.user_emails TO {shared.role}",
    )
    report = check(target, shared.role)
    assert rules(report) == {("user_emails", "view-definer-rights")}
    alter(target, "ALTER VIEW app.user_emails SET (security_invoker = true)")
    assert check(target, shared.role).ok


def test_an_app_role_with_bypassrls_is_reported_and_sees_everything(
    target: str, database_factory: DatabaseFactory
) -> None:
    """A BYPASSRLS application role: app-role-bypassrls, and the probes see other tenants' rows."""
    role = f"tm_app_{uuid.uuid4().hex[:8]}"
    _admin(database_factory, sql.SQL("CREATE ROLE {} NOSUPERUSER BYPASSRLS").format(sql.Identifier(role)))
    try:
        alter(
            target,
            f"GRANT USAGE ON SCHEMA app TO {role}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA app TO {role}",
        )
        report = check(target, role)
    finally:
        _drop_role(database_factory, role, str(conninfo_to_dict(target)["dbname"]))
    found = rules(report)
    assert (f"role {role}", "app-role-bypassrls") in found
    assert {(t, "probe-read-leak") for t in TABLES} <= found
    assert {(t, "probe-no-context-visible") for t in TABLES} <= found


def test_a_policy_that_ignores_the_tenant_is_caught_statically_and_by_the_probes(
    target: str, shared: Shared
) -> None:
    """A second permissive policy USING (true) opens the table: not tenant-keyed, and every probe leaks."""
    before = counts(target)
    alter(target, "CREATE POLICY everyone ON app.comments USING (true) WITH CHECK (true)")
    found = rules(check(target, shared.role))
    assert ("comments", "policy-not-tenant-keyed") in found
    for rule in ("read", "insert", "update", "update-moves-row", "delete"):
        assert (
            "comments",
            f"probe-{rule}-leak" if rule != "update-moves-row" else "probe-update-moves-row",
        ) in found
    assert {t for t, _r in found} == {"comments"}
    assert counts(target) == before  # the leaking writes were rolled back


def test_a_fail_open_policy_is_caught_only_by_the_context_probes(target: str, shared: Shared) -> None:
    """A policy that shows every row when no tenant is set passes the static rules; the probes catch it."""
    alter(
        target,
        "DROP POLICY tenant_isolation ON app.projects",
        "CREATE POLICY lenient ON app.projects USING (tenant_id = coalesce(nullif("
        "current_setting('app.tenant_id', true), ''), tenant_id)) WITH CHECK (tenant_id = coalesce(nullif("
        "current_setting('app.tenant_id', true), ''), tenant_id))",
    )
    report = check(target, shared.role)
    assert rules(report) == {
        ("projects", "probe-no-context-visible"),
        ("projects", "probe-ended-context-visible"),
    }
    assert check(target, shared.role, probe=False).ok


def test_truncate_and_a_security_definer_function_are_reported(target: str, shared: Shared) -> None:
    """TRUNCATE ignores RLS; a SECURITY DEFINER function reading tenant rows runs with its owner's rights."""
    alter(
        target,
        f"GRANT TRUNCATE ON app.attachments TO {shared.role}",
        "CREATE FUNCTION public.count_users() RETURNS bigint LANGUAGE sql SECURITY DEFINER"
        " AS $$ SELECT count(*) FROM app.users $$",
    )
    found = rules(check(target, shared.role))
    assert found == {("attachments", "truncate-granted"), ("count_users()", "security-definer-function")}


def test_cli_prints_one_finding_per_line_and_exits_1_then_0_when_clean(
    target: str, shared: Shared, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 1 with `table: rule: detail (fix: …)` lines, --json for machines; exit 0 once fixed."""
    monkeypatch.setenv("MIGRATE_TARGET_DSN", target)
    alter(target, "ALTER TABLE app.users NO FORCE ROW LEVEL SECURITY")
    args = ["isolation-check", "--schema", "app", "--app-role", shared.role]
    assert main(args) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("users: rls-not-forced: row-level security is enabled but not forced")
    assert '(fix: ALTER TABLE "app"."users" FORCE ROW LEVEL SECURITY)' in lines[0]
    assert lines[-1].startswith("isolation BROKEN for schema 'app'") and "1 finding(s)" in lines[-1]
    assert main([*args, "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["findings"][0]["rule"] == "rls-not-forced"
    alter(target, "ALTER TABLE app.users FORCE ROW LEVEL SECURITY")
    assert main(args) == 0
    assert "isolation holds" in capsys.readouterr().out


def test_cli_with_a_playbook_uses_its_target_schema_and_global_tables(
    target: str,
    shared: Shared,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`migrate isolation-check PLAYBOOK`: the target from its variable, global tables from the playbook."""
    alter(
        target,
        "CREATE TABLE app.currencies (code text PRIMARY KEY)",
        "INSERT INTO app.currencies VALUES ('EUR')",
        f"GRANT SELECT ON app.currencies TO {shared.role}",
    )
    playbook = tmp_path / "p.yaml"
    playbook.write_text(
        shared.playbook.read_text().replace("global_tables: []", "global_tables: [currencies]")
    )
    monkeypatch.setenv("MIGRATE_TARGET_DSN", target)
    monkeypatch.setenv("MIGRATE_SOURCE_DSN_TEMPLATE", "postgresql://unused/{tenant}")
    monkeypatch.setenv("MIGRATE_APP_ROLE", shared.role)
    assert main(["isolation-check", str(playbook)]) == 0, capsys.readouterr().out
    assert main(["isolation-check", str(shared.playbook)]) == 1
    assert "currencies: missing-tenant-column" in capsys.readouterr().out
    monkeypatch.delenv("MIGRATE_APP_ROLE")
    assert main(["isolation-check", str(playbook)]) == 2
    assert "--app-role" in capsys.readouterr().err
