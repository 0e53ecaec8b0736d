"""`migrate schema generate`: the shared RLS schema as an alembic revision, and the consolidation report.

Real PostgreSQL throughout: sources are built from the demo's sample schema and from
tests/data/realistic_schema.sql, revisions are applied and reverted by alembic, and a
backfill into a generated schema must validate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib.resources import files
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
from migrate.catalog import sqltext
from migrate.cli.app import main
from migrate.control.schema import sqlalchemy_url
from migrate.errors import ArgumentError

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]
REALISTIC_TABLES = ("accounts", "members", "tasks", "events")


def make_source(factory: DatabaseFactory, name: str, schema_sql: str, data_sql: str, tenant: str) -> str:
    """A source database with a schema and one tenant's deterministic rows."""
    factory.register(name)
    with psycopg.connect(factory.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    dsn = dsn_for(factory.admin_dsn, name)
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(schema_sql)
        psycopg.ClientCursor(conn).execute(data_sql, {"tenant": tenant, "scale": 1})
    return dsn


def realistic(factory: DatabaseFactory, prefix: str, tenant: str) -> str:
    return make_source(
        factory,
        f"{prefix}{tenant}",
        (DATA / "realistic_schema.sql").read_text(),
        (DATA / "realistic_data.sql").read_text(),
        tenant,
    )


def sample(factory: DatabaseFactory, prefix: str, tenant: str) -> str:
    resources = files("migrate.resources")
    return make_source(
        factory,
        f"{prefix}{tenant}",
        resources.joinpath("sample_saas.sql").read_text(),
        resources.joinpath("sample_saas_data.sql").read_text(),
        tenant,
    )


def alembic(out: Path, dsn: str, action: str, revision: str) -> None:
    """Run an alembic upgrade or downgrade of the generated project, in-process."""
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


def objects(dsn: str, schema: str = "app") -> list[tuple[str, str, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute((DATA / "catalog_fingerprint.sql").read_text(), {"schema": schema}).fetchall()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def relations(dsn: str, schema: str = "app") -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c WHERE c.relnamespace = to_regnamespace(%s)"
                " AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'c')"
                " UNION ALL SELECT t.typname FROM pg_type t WHERE t.typnamespace = to_regnamespace(%s)"
                " AND t.typtype IN ('e', 'd') ",
                (schema, schema),
            )
        }


@pytest.fixture
def prefix() -> str:
    return f"tm_test_s{uuid.uuid4().hex[:8]}_"


@pytest.fixture
def app_role(pg_admin_dsn: str) -> Iterator[str]:
    """A uniquely named application role (roles are cluster-wide), dropped after the test."""
    role = f"tm_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(role)))
    yield role
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        # The databases where the role still holds privileges keep it from being dropped.
        names = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid"
                " WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = to_regrole(%s)",
                (role,),
            )
        ]
    for name in names:
        with psycopg.connect(dsn_for(pg_admin_dsn, name), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_sample_schema_revision_applies_reverts_and_applies_again(
    database_factory: DatabaseFactory, prefix: str, tmp_path: Path, app_role: str
) -> None:
    """The demo's schema becomes a revision alembic applies, reverts to nothing and applies again."""
    source = sample(database_factory, prefix, "acme")
    target = database_factory.create("target")
    out = tmp_path / "shared"
    result = api.schema_generate(sources=[f"acme={source}"], out=out, app_role=app_role)
    assert result.ok and result.revision.scaffolded and not result.revision.unchanged
    assert {p.name for p in out.iterdir()} == {"alembic.ini", "env.py", "script.py.mako", "versions"}
    alembic(out, target, "upgrade", "head")
    applied = objects(target)
    assert ("rls", "users", "true/true r  ") in applied
    assert ("constraint", "users.users_email_key", "UNIQUE (tenant_id, email)") in applied
    assert (
        "constraint",
        "comments.comments_task_id_fkey",
        "FOREIGN KEY (tenant_id, task_id) REFERENCES app.tasks(tenant_id, id)",
    ) in applied
    assert (
        "index",
        "tasks_project_idx",
        "CREATE INDEX tasks_project_idx ON app.tasks USING btree (tenant_id, project_id)",
    ) in applied
    with psycopg.connect(target) as conn:
        grants = conn.execute(
            "SELECT table_name, string_agg(privilege_type, ',' ORDER BY privilege_type)"
            " FROM information_schema.role_table_grants WHERE grantee = %s GROUP BY 1",
            (app_role,),
        ).fetchall()
    assert dict(grants)["tasks"] == "DELETE,INSERT,SELECT,UPDATE"  # never TRUNCATE: it ignores RLS
    alembic(out, target, "downgrade", "base")
    assert relations(target) == {"alembic_version"}
    alembic(out, target, "upgrade", "head")
    assert objects(target) == applied


def test_realistic_schema_round_trips_with_the_alembic_cli_and_a_backfill_validates(
    database_factory: DatabaseFactory, prefix: str, tmp_path: Path, app_role: str
) -> None:
    """Composite keys, self-references, enums, domains, arrays, jsonb, checks, partial and expression
    indexes, a generated column, a view and a partitioned table survive generation; `alembic upgrade`
    and `downgrade` work from the shell, and a backfill into the generated schema validates."""
    sources = {t: realistic(database_factory, prefix, t) for t in ("acme", "globex")}
    target = database_factory.create("target")
    out = tmp_path / "shared"
    result = api.schema_generate(
        sources=[f"{t}={d}" for t, d in sources.items()],
        out=out,
        app_role=app_role,
        global_tables=["countries"],
        leave_behind=["rule public.countries.countries_keep"],
    )
    assert result.ok, [n for n in result.notes if n.severity == "error"]
    env = {**os.environ, "MIGRATE_TARGET_DSN": target}
    alembic_cli = [str(Path(sys.executable).parent / "alembic"), "-c", str(out / "alembic.ini")]
    up = subprocess.run(
        [*alembic_cli, "upgrade", "head"], env=env, capture_output=True, text=True, check=False
    )
    assert up.returncode == 0, up.stderr

    inspector = sa.inspect(sa.create_engine(sqlalchemy_url(target), poolclass=NullPool))
    assert {e["name"]: e["labels"] for e in inspector.get_enums("app")} == {
        "task_status": ["todo", "doing", "blocked", "done"]
    }
    assert {d["name"] for d in inspector.get_domains("app")} == {"email_address", "money_amount"}
    assert inspector.get_view_names("app") == ["open_tasks"]
    columns = {c["name"]: c for c in inspector.get_columns("tasks", "app")}
    assert next(iter(columns)) == "tenant_id"
    assert "greatest" in columns["remaining_hours"]["computed"]["sqltext"].lower()
    assert columns["id"]["identity"]["always"] is True
    assert isinstance(columns["tags"]["type"], sa.ARRAY)
    indexes = {i["name"]: i for i in inspector.get_indexes("tasks", "app")}
    assert indexes["tasks_open_due"]["column_names"][0] == "tenant_id"
    assert "status <> 'done'" in indexes["tasks_open_due"]["dialect_options"]["postgresql_where"]
    assert indexes["tasks_title_lower"]["expressions"][:2] == ["tenant_id", "lower(title)"]
    checks = {c["name"] for c in inspector.get_check_constraints("tasks", "app")}
    assert {"tasks_due_after_2000", "tasks_title_check", "tasks_estimate_hours_check"} <= checks
    assert inspector.get_pk_constraint("members", "app")["constrained_columns"] == [
        "tenant_id",
        "account_id",
        "user_no",
    ]
    assert inspector.get_pk_constraint("countries", "app")["constrained_columns"] == ["code"]
    assert "events_2025" in inspector.get_table_names("app")
    assert (
        inspector.get_table_comment("members", "app")["text"]
        == "People of an account; user_no is per account"
    )
    fks = {fk["name"]: fk for fk in inspector.get_foreign_keys("members", "app")}
    assert fks["members_account_id_manager_no_fkey"]["referred_columns"] == [
        "tenant_id",
        "account_id",
        "user_no",
    ]
    with psycopg.connect(target, autocommit=True) as conn:
        view = conn.execute(
            "SELECT reloptions FROM pg_class WHERE oid = 'app.open_tasks'::regclass"
        ).fetchone()
        assert view == (["security_invoker=true"],)
        conn.execute(
            "INSERT INTO app.countries SELECT * FROM (VALUES ('DE', 'Germany'), ('FR', 'France'),"
            " ('US', 'United States')) AS v(code, name)"
        )

    playbook = tmp_path / "realistic.yaml"
    playbook.write_text(
        "name: realistic\n"
        "target: {dsn_env: MIGRATE_TARGET_DSN, schema: app}\n"
        "source: {dsn_template_env: MIGRATE_SOURCE_DSN_TEMPLATE, schema: public}\n"
        "tenants: [{id: acme}, {id: globex}]\n"
        f"tables: [{', '.join(REALISTIC_TABLES)}]\n"
        "global_tables: [countries]\n"
        "schema: {leave_behind: [{object: rule public.countries.countries_keep, reason: reference data}]}\n"
        "phases:\n  - name: copy\n    steps: [{kind: schema}, {kind: backfill}, {kind: validate}]\n"
    )
    environ = {
        "MIGRATE_TARGET_DSN": target,
        "MIGRATE_SOURCE_DSN_TEMPLATE": dsn_for(database_factory.admin_dsn, f"{prefix}{{tenant}}"),
        "MIGRATE_ACTOR": "pytest",
    }
    run = api.run(playbook, environ=environ)
    assert run.ok, [(t.tenant, t.error) for t in run.tenants]
    schema_step = run.tenants[0].steps[0]
    assert schema_step.details["created"] == []  # the revision made them; the step only checked the fit
    validated = run.tenants[1].steps[2].details
    assert validated["match"] and set(validated["tables"]) == set(REALISTIC_TABLES)
    with psycopg.connect(sources["acme"]) as conn:
        late = conn.execute("SELECT count(*) FROM events_other").fetchone()
    with psycopg.connect(target) as conn:
        rows = conn.execute("SELECT tenant_id, count(*) FROM app.events GROUP BY 1 ORDER BY 1").fetchall()
        assert rows == [("acme", 90), ("globex", 90)]
        assert late and conn.execute("SELECT count(*) FROM app.events_other").fetchone() == (2 * late[0],)

    down = subprocess.run(
        [*alembic_cli, "downgrade", "base"], env=env, capture_output=True, text=True, check=False
    )
    assert down.returncode == 0, down.stderr
    assert relations(target) == {"alembic_version"}


def test_the_schema_step_creates_exactly_what_the_revision_creates(
    database_factory: DatabaseFactory, prefix: str, tmp_path: Path
) -> None:
    """One source of truth: the schema step on an empty target makes the same catalog as the revision."""
    source = realistic(database_factory, prefix, "acme")
    by_revision, by_step = database_factory.create("target"), database_factory.create("target")
    out = tmp_path / "shared"
    api.schema_generate(sources=[source], out=out, leave_behind=["rule public.countries.countries_keep"])
    alembic(out, by_revision, "upgrade", "head")
    playbook = tmp_path / "p.yaml"
    playbook.write_text(
        "name: step\ntarget: {dsn_env: T}\nsource: {dsn_template_env: S}\ntenants: [{id: acme}]\n"
        "schema: {leave_behind: [{object: rule public.countries.countries_keep, reason: kept by hand}]}\n"
        "phases:\n  - name: prepare\n    steps: [{kind: schema}]\n"
    )
    environ = {
        "T": by_step,
        "S": dsn_for(database_factory.admin_dsn, f"{prefix}{{tenant}}"),
        "MIGRATE_ACTOR": "t",
    }
    result = api.run(playbook, environ=environ)
    assert result.ok, result.tenants[0].error
    assert result.tenants[0].steps[0].details["created"] == [
        "accounts",
        "countries",
        "events",
        "members",
        "tasks",
    ]
    assert objects(by_step) == objects(by_revision)
    again = api.run(playbook, environ=environ)  # a re-run: nothing to create
    assert again.ok and objects(by_step) == objects(by_revision)
    drifted = realistic(database_factory, prefix, "globex")
    with psycopg.connect(drifted, autocommit=True) as conn:
        conn.execute("ALTER TABLE members ALTER COLUMN roles TYPE varchar(300)[]")
    playbook.write_text(playbook.read_text().replace("[{id: acme}]", "[{id: acme}, {id: globex}]"))
    globex = api.run(playbook, environ=environ, replan=True).tenants[1]  # a tenant more: a replan
    assert globex.outcome == "failed" and globex.error is not None
    assert "members.roles is character varying(300)[] in the source but text[]" in globex.error.message


def test_generating_again_is_unchanged_and_a_new_revision_stacks_on_the_head(
    database_factory: DatabaseFactory, prefix: str, tmp_path: Path
) -> None:
    """The same source gives the same revision (reported unchanged); an alembic folder gets it on its head."""
    source = sample(database_factory, prefix, "acme")
    out = tmp_path / "shared"
    first = api.schema_generate(sources=[source], out=out)
    text = first.revision.path.read_text()
    second = api.schema_generate(sources=[source], out=out)
    assert second.revision.unchanged and second.revision.path == first.revision.path
    assert first.revision.path.read_text() == text
    compile(text, str(first.revision.path), "exec")
    other = api.schema_generate(sources=[source], out=out, schema="tenants")
    assert other.revision.down_revision == first.revision.revision
    assert not other.revision.unchanged
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(ArgumentError, match="neither empty nor an alembic script directory"):
        api.schema_generate(sources=[source], out=tmp_path / "junk")


def test_consolidation_names_colliding_values_and_tenants_and_exits_1(
    database_factory: DatabaseFactory, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Values declared unique across tenants that already collide, and reference rows that differ,
    are errors naming the tenants and the values; per-tenant uniques, shared sequences and composite
    foreign keys are reported; the CLI exits 1 and says so in JSON too."""
    dsns = {t: realistic(database_factory, prefix, t) for t in ("acme", "globex", "initech")}
    with psycopg.connect(dsns["globex"], autocommit=True) as conn:
        conn.execute("UPDATE members SET email = 'member1@acme.example' WHERE user_no = 1")
        conn.execute("UPDATE members SET email = 'member2@acme.example' WHERE user_no = 2")
        conn.execute("UPDATE countries SET name = 'Deutschland' WHERE code = 'DE'")
    with psycopg.connect(dsns["initech"], autocommit=True) as conn:
        conn.execute("UPDATE members SET email = 'member1@acme.example' WHERE user_no = 1")
        conn.execute("INSERT INTO countries VALUES ('IT', 'Italy')")
    args = ["schema", "generate", "--out", str(tmp_path / "out"), "--global", "countries"]
    args += ["--unique-across-tenants", "members.email", "--json"]
    for tenant, dsn in dsns.items():
        args += ["--source", f"{tenant}={dsn}"]
    assert main(args) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["sources"] == ["acme", "globex", "initech"]
    by_rule: dict[str, list[dict[str, str]]] = {}
    for finding in report["findings"]:
        by_rule.setdefault(finding["rule"], []).append(finding)
    (collision,) = by_rule["unique-across-tenants-collision"]
    assert collision["severity"] == "error" and collision["subject"] == "members(email)"
    assert "2 value(s)" in collision["detail"]
    assert "'member1@acme.example' in acme, globex, initech" in collision["detail"]
    assert "'member2@acme.example' in acme, globex" in collision["detail"]
    (conflict,) = by_rule["global-table-conflict"]
    assert (
        conflict["subject"] == "countries" and "'DE' differs in acme, globex, initech" in conflict["detail"]
    )
    assert "1 key(s) exist in some tenants only" in by_rule["global-table-union"][0]["detail"]
    sequences = {f["subject"]: f for f in by_rule["sequence-shared"]}
    assert sequences["tasks.id"]["fix"].endswith(
        'ALTER TABLE "app"."tasks" ALTER COLUMN "id" RESTART WITH 41'
    )
    assert "serial column" in sequences["accounts.id"]["detail"]
    assert "(tenant_id, slug)" in by_rule["unique-per-tenant"][0]["detail"]
    composite = {f["subject"] for f in by_rule["foreign-key-composite"]}
    assert "tasks.tasks_parent_id_fkey" in composite and "accounts.accounts_country_fkey" not in composite
    # The trigger and its function (it only touches NEW) are carried; the rule cannot be, and stops it.
    assert {f["subject"] for f in by_rule["not-carried"]} == {"rule public.countries.countries_keep"}
    assert {"trigger public.tasks.tasks_touch", "function public.touch_meta()"} <= set(report["carried"])
    assert Path(report["path"]).is_file()  # the schema is right; the data must change before a copy


def test_consolidation_of_clean_sources_passes_and_drift_is_an_error(
    database_factory: DatabaseFactory, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sources without collisions exit 0; a source whose columns differ is a schema-drift error."""
    acme, globex = sample(database_factory, prefix, "acme"), sample(database_factory, prefix, "globex")
    args = ["schema", "generate", "--source", acme, "--source", globex, "--out", str(tmp_path / "a")]
    args += ["--unique-across-tenants", "users.email"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "consolidation report (2 source(s): " in out and "no collisions" in out
    with psycopg.connect(globex, autocommit=True) as conn:
        conn.execute("ALTER TABLE tasks ADD COLUMN extra int")
        conn.execute("ALTER TABLE users ALTER COLUMN full_name TYPE varchar(200)")
    args[-3] = str(tmp_path / "b")
    assert main(args) == 1
    out = capsys.readouterr().out
    globex_db = conninfo_to_dict(globex)["dbname"]
    assert f"schema-drift: only tenant {globex_db} has column tasks.extra" in out
    assert "users.full_name: schema-drift: column users.full_name has another type" in out


def test_cli_input_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No source, both a playbook and --source, or a bad declaration: exit 2 with a hint."""
    assert main(["schema", "generate", "--out", str(tmp_path)]) == 2
    assert "name the sources" in capsys.readouterr().err
    demo = str(ROOT / "playbooks" / "demo.yaml")
    assert main(["schema", "generate", demo, "--source", "postgresql://x/y", "--out", str(tmp_path)]) == 2
    code = main(
        [
            "schema",
            "generate",
            "--source",
            "postgresql://x/y",
            "--out",
            str(tmp_path),
            "--unique-across-tenants",
            "users",
        ]
    )
    assert code == 2 and "TABLE.COLUMN" in capsys.readouterr().err


def test_uuid_tenant_column_fails_closed_after_a_set_local_ended(
    database_factory: DatabaseFactory, prefix: str, tmp_path: Path, app_role: str
) -> None:
    """With --tenant-type uuid the policy reads '' (a SET LOCAL that ended) as no tenant, not an error."""
    source = sample(database_factory, prefix, "acme")
    target = database_factory.create("target")
    out = tmp_path / "shared"
    api.schema_generate(sources=[source], out=out, tenant_type="uuid", app_role=app_role)
    alembic(out, target, "upgrade", "head")
    tenant = str(uuid.uuid4())
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("INSERT INTO app.organizations (tenant_id, name) VALUES (%s, 'x')", (tenant,))
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(app_role)))
            conn.execute(sql.SQL("SET LOCAL app.tenant_id = {}").format(sql.Literal(tenant)))
            assert conn.execute("SELECT count(*) FROM app.organizations").fetchone() == (1,)
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(app_role)))
            assert conn.execute("SELECT count(*) FROM app.organizations").fetchone() == (0,)


def test_requalify_moves_only_carried_names_and_never_touches_literals() -> None:
    """public.X becomes "app".X for carried X only; strings, quoted names and other schemas stay."""
    text = (
        "(status <> 'public.done'::public.task_status) AND public.citext_eq(x, 'a') "
        'AND "public".tasks.id = public."Tasks".id AND e\'it\\\'s public.tasks\' <> $$public.tasks$$'
    )
    moved = sqltext.requalify(text, "public", "app", {"task_status", "tasks", "Tasks"})
    assert moved == (
        "(status <> 'public.done'::\"app\".task_status) AND public.citext_eq(x, 'a') "
        'AND "app".tasks.id = "app"."Tasks".id AND e\'it\\\'s public.tasks\' <> $$public.tasks$$'
    )
    assert sqltext.canonical('"app".mood[]') == sqltext.canonical("app.mood[]")


def test_a_playbook_names_the_sources_by_tenant_and_declares_what_is_global_and_unique(
    database_factory: DatabaseFactory, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`migrate schema generate PLAYBOOK`: its tenants are the sources, its declarations apply."""
    for tenant in ("acme", "globex"):
        sample(database_factory, prefix, tenant)
    with psycopg.connect(dsn_for(database_factory.admin_dsn, f"{prefix}globex"), autocommit=True) as conn:
        conn.execute("UPDATE users SET email = 'user3@acme.example' WHERE id = 3")
    playbook = tmp_path / "p.yaml"
    playbook.write_text(
        "name: gen\ntarget: {dsn_env: MIGRATE_TARGET_DSN, schema: shared}\n"
        "source: {dsn_template_env: MIGRATE_SOURCE_DSN_TEMPLATE}\n"
        "tenants: [{id: acme}, {id: globex}]\n"
        "global_tables: [organizations]\n"
        "unique_across_tenants:\n"
        "  - {table: users, columns: [email]}\n"
        "  - {table: users, columns: [nickname]}\n"
        "phases:\n  - name: p\n    steps: [{kind: schema}]\n"
    )
    environ = {
        "MIGRATE_TARGET_DSN": "postgresql://unused/x",
        "MIGRATE_SOURCE_DSN_TEMPLATE": dsn_for(database_factory.admin_dsn, f"{prefix}{{tenant}}"),
    }
    result = api.schema_generate(playbook, out=tmp_path / "out", environ=environ)
    assert result.sources == ("acme", "globex") and result.shared.schema == "shared"
    assert result.shared.global_tables == ("organizations",)
    errors = {(n.rule, n.subject): n.detail for n in result.errors}
    assert (
        "'user3@acme.example' in acme, globex" in errors[("unique-across-tenants-collision", "users(email)")]
    )
    assert "no column nickname" in errors[("unique-across-tenants-unknown", "users(nickname)")]
    # organizations is global: projects.org_id references it without tenant_id, and it is read-only.
    text = result.revision.path.read_text()
    assert 'FOREIGN KEY ("org_id") REFERENCES "shared"."organizations" ("id")' in text
    assert (
        '"tenant_id" text NOT NULL' in text
        and 'CREATE POLICY "tenant_isolation" ON "shared"."organizations"' not in text
    )
