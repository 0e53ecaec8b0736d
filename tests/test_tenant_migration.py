"""`migrate run` end to end on real PostgreSQL: copy, validate, flags, idempotency, locks."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from structlog.testing import capture_logs

from migrate import api
from migrate.adapters.flagfile import FileFlagProvider
from migrate.cli.app import main
from world import DEMO, TABLES, World

pytestmark = pytest.mark.tenants(acme=2, globex=1, initech=1)


def ledger_rows(world: World) -> list[tuple[str, str | None, str | None]]:
    with world.target() as conn:
        return conn.execute("SELECT action, tenant, step FROM migrate_control.ledger ORDER BY seq").fetchall()


def test_run_moves_every_tenant_with_counts_and_checksums_matching(world: World) -> None:
    """All three tenants land in the shared tables, each table's count equals its source's."""
    result = api.run(DEMO, environ=world.environ)
    assert result.ok, [(t.tenant, t.error) for t in result.tenants]
    for tenant in world.tenants:
        assert world.target_counts(tenant) == world.source_counts(tenant)
    status = api.status(DEMO, environ=world.environ)
    assert [(t.tenant, t.state, t.validated) for t in status.tenants] == [
        ("acme", "done", True),
        ("globex", "done", True),
        ("initech", "done", True),
    ]
    assert status.tenants[0].rows == sum(world.source_counts("acme").values())


def test_second_run_copies_nothing_and_changes_nothing(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Re-running skips every done step: no rows copied, counts and step state unchanged."""
    assert main(["run", str(DEMO)]) == 2  # no settings in os.environ: an input error, not a crash
    api.run(DEMO, environ=world.environ)
    before = {t: world.target_counts(t) for t in world.tenants}
    with world.target() as conn:
        state_before = conn.execute("SELECT * FROM migrate_control.step_state ORDER BY 1, 2, 3").fetchall()
    second = api.run(DEMO, environ=world.environ)
    assert all(s.outcome == "skipped" for t in second.tenants for s in t.steps)
    assert sum(t.rows_copied_now for t in second.tenants) == 0
    assert {t: world.target_counts(t) for t in world.tenants} == before
    with world.target() as conn:
        assert (
            conn.execute("SELECT * FROM migrate_control.step_state ORDER BY 1, 2, 3").fetchall()
            == state_before
        )
    assert [a for a, _t, _s in ledger_rows(world)].count("applied") == 3 * 4


def test_cli_second_run_says_it_copied_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI tells the user a re-run had nothing to do, per tenant."""
    for key, value in world.environ.items():
        monkeypatch.setenv(key, value)
    assert main(["run", str(DEMO)]) == 0
    assert "acme: done, 4 step(s) applied" in capsys.readouterr().out
    assert main(["run", str(DEMO)]) == 0
    out = capsys.readouterr().out
    assert "acme: up to date, nothing to do (0 rows copied)" in out
    assert main(["status", str(DEMO)]) == 0
    assert "initech" in capsys.readouterr().out


def test_shared_tables_have_tenant_id_in_every_key_and_rls_forced(world: World) -> None:
    """Every shared table: tenant_id leads the primary key, RLS enabled and forced, one policy."""
    api.run(DEMO, environ=world.environ, tenants=["acme"])
    with world.target() as conn:
        rows = conn.execute(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,"
            " (SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            "   AND a.attnum = i.indkey[0] WHERE i.indrelid = c.oid AND i.indisprimary),"
            " (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'app' AND c.relkind = 'r' ORDER BY 1"
        ).fetchall()
        fks = conn.execute(
            "SELECT conname,"
            " (SELECT attname FROM pg_attribute WHERE attrelid = conrelid AND attnum = conkey[1])"
            " FROM pg_constraint WHERE contype = 'f' AND connamespace = 'app'::regnamespace"
        ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(TABLES)
    assert all(r[1:] == (True, True, "tenant_id", 1) for r in rows), rows
    assert fks and all(first == "tenant_id" for _name, first in fks)


def test_an_application_role_sees_only_its_tenant(world: World) -> None:
    """With RLS forced, a plain role sees the rows of the tenant it set, and none without one."""
    api.run(DEMO, environ=world.environ)
    role = f"tm_app_{world.prefix.split('_')[2]}"
    with world.target() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA app TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA app TO {}").format(sql.Identifier(role)))
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                assert conn.execute("SELECT count(*) FROM app.users").fetchone() == (0,)
                conn.execute("SELECT set_config('app.tenant_id', 'globex', true)")
                seen = conn.execute("SELECT DISTINCT tenant_id FROM app.users").fetchall()
            assert seen == [("globex",)]
        finally:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_flags_are_on_for_migrated_tenants_only(world: World) -> None:
    """The cut-over flag reads on (through the Unleash SDK) for each migrated tenant, off otherwise."""
    api.run(DEMO, environ=world.environ, tenants=["acme"])
    flags = FileFlagProvider(world.flag_file)
    assert flags.is_enabled("tenant-shared-db", "acme")
    assert not flags.is_enabled("tenant-shared-db", "globex")


def test_a_locked_tenant_is_refused_naming_the_holder_while_others_proceed(world: World) -> None:
    """A tenant held by another runner is reported locked; the other tenants of its wave still run."""
    api.run(DEMO, environ=world.environ, tenants=["acme"])  # the canary; creates the control schema
    with psycopg.connect(world.target_dsn, autocommit=True, application_name="other-runner") as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext('migrate.tenant'), hashtext('globex'))")
        with capture_logs() as logs:
            result = api.run(DEMO, environ=world.environ, jobs=2)
    by_tenant = {t.tenant: t for t in result.tenants}
    assert by_tenant["globex"].outcome == "locked"
    assert by_tenant["globex"].error is not None and "other-runner" in by_tenant["globex"].error.message
    assert by_tenant["initech"].outcome == "done"
    assert world.target_counts("globex") == dict.fromkeys(TABLES, 0)
    assert any(e["event"] == "run_finished" and e["outcome"] == "failed" for e in logs)


def test_a_failing_step_stops_its_tenant_records_failure_and_resumes_after_the_fix(world: World) -> None:
    """A step failure marks it failed in state and ledger; after the fix the next run resumes there."""
    with world.source("globex") as conn:
        conn.execute("ALTER TABLE tasks ADD COLUMN extra int")  # globex's schema drifts
    api.run(DEMO, environ=world.environ, tenants=["acme"])  # shared tables made from acme
    result = api.run(DEMO, environ=world.environ, tenants=["globex"])
    globex = result.tenants[0]
    assert globex.outcome == "failed" and globex.error is not None
    assert "tasks.extra" in globex.error.message and globex.error.where == "globex/prepare/schema"
    assert ("failed", "globex", "prepare/schema") in ledger_rows(world)
    assert api.status(DEMO, environ=world.environ).tenants[1].state == "failed"
    with world.source("globex") as conn:
        conn.execute("ALTER TABLE tasks DROP COLUMN extra")
    assert api.run(DEMO, environ=world.environ, tenants=["globex"]).ok
    assert world.target_counts("globex") == world.source_counts("globex")


def test_an_inventory_file_and_an_explicit_table_list_are_honoured(world: World, tmp_path: Path) -> None:
    """Tenants from an inventory file; only the listed tables are copied, parents first (the tables
    left out are acknowledged: their rows stay behind only by a person's word)."""
    (tmp_path / "tenants.yaml").write_text("tenants:\n  - {id: globex, region: us}\n  - {id: initech}\n")
    text = DEMO.read_text().replace("../flags/demo.json", str(DEMO.parent.parent / "flags" / "demo.json"))
    start, end = text.index("tenants:\n"), text.index("tables: auto")
    text = text[:start] + "inventory: tenants.yaml\n\n" + text[end:]
    left = ", ".join(
        f'{{object: "table public.{t}", reason: "not moved"}}'
        for t in ("attachments", "comments", "projects", "tasks")
    )
    text = text.replace("tables: auto", f"tables: [users, organizations]\nschema: {{leave_behind: [{left}]}}")
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    result = api.run(path, environ=world.environ)
    assert [t.tenant for t in result.tenants] == ["globex", "initech"]
    assert result.ok
    (backfill,) = [s for s in result.tenants[0].steps if s.kind == "backfill"]
    assert list(backfill.details["tables"]) == ["organizations", "users"]
    with world.target() as conn:
        shared = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'app'")}
    assert shared == {"organizations", "users"}


def test_an_error_in_the_inventory_names_the_inventory_file(tmp_path: Path) -> None:
    """A duplicate tenant in an inventory file is reported at its line in that file."""
    from migrate.errors import PlaybookError
    from migrate.playbook import load_playbook

    (tmp_path / "tenants.yaml").write_text("tenants:\n  - id: acme\n  - id: acme\n")
    text = DEMO.read_text()
    start, end = text.index("tenants:\n"), text.index("tables: auto")
    (tmp_path / "p.yaml").write_text(text[:start] + "inventory: tenants.yaml\n" + text[end:])
    with pytest.raises(PlaybookError) as info:
        load_playbook(tmp_path / "p.yaml")
    assert info.value.where == f"{(tmp_path / 'tenants.yaml').resolve()}:3: tenants[1].id"
