"""Foreign keys checked once after the load: triggers off for the tenant's own loading transactions,
then one anti-join per foreign key over the tenant's rows, before the backfill step is done."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

from databases import DatabaseFactory
from migrate import api
from migrate.engine.session import tenant_session
from migrate.playbook import load_playbook
from migrate.playbook.model import BackfillStep
from migrate.steps import step_for
from test_backfill import playbook
from world import custom_world

PROJECTS = """
CREATE TABLE projects (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE tasks (
    id bigint PRIMARY KEY,
    project_id bigint NOT NULL REFERENCES projects (id),
    title text NOT NULL
);
INSERT INTO projects SELECT p, 'project ' || p FROM generate_series(1, 10) AS p;
INSERT INTO tasks SELECT t, 1 + t % 10, 'task ' || t FROM generate_series(1, 300) AS t;
"""


def test_a_dangling_reference_fails_the_step_naming_table_key_and_row(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """acme's source lost project 5; globex (loaded first) has a project 5 in the same shared table.
    The load runs with the triggers off (the failure comes from the check, not from COPY), and the
    check matches on tenant_id too: another tenant's parent never satisfies acme's reference."""
    world = custom_world(database_factory, tmp_path, PROJECTS, ("globex", "acme"))
    with world.source("acme") as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM projects WHERE id = 5")
    result = api.run(playbook(tmp_path, ("globex", "acme"), chunk_rows=70), environ=world.environ)
    by_tenant = {t.tenant: t for t in result.tenants}
    assert by_tenant["globex"].error is None
    error = by_tenant["acme"].error
    assert error is not None
    assert "does not hold for tenant 'acme'" in error.message
    assert (
        "of tasks" in error.message
        and "(tenant_id, project_id) = (acme, 5) has no row in projects" in error.message
    )
    assert "key (id) = (" in error.message and '"project_id":5' in error.message
    with world.target() as conn:
        # The step failed: acme's tasks are not counted as done, globex's rows stay.
        assert conn.execute("SELECT count(*) FROM app.tasks WHERE tenant_id = 'globex'").fetchone() == (300,)


def test_a_copy_fires_no_trigger_of_the_table_s_own_and_leaves_the_default_role(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """A trigger the shared table has (not a foreign key's) does not fire for the copied rows (they
    arrive as the source holds them), and the loading connection is back in the default replication
    role after the step."""
    world = custom_world(database_factory, tmp_path, PROJECTS, ("acme",))
    assert api.run(playbook(tmp_path, ("acme",), steps=("schema",)), environ=world.environ).ok
    with world.target() as conn:
        conn.execute("CREATE TABLE public.seen (n bigint NOT NULL)")
        conn.execute("INSERT INTO public.seen VALUES (0)")
        conn.execute(
            "CREATE FUNCTION public.count_row() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN UPDATE public.seen SET n = n + 1; RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER counted AFTER INSERT ON app.tasks"
            " FOR EACH ROW EXECUTE FUNCTION public.count_row()"
        )
    book = playbook(tmp_path, ("acme",), steps=("schema", "backfill"), chunk_rows=70, name="bf2")
    env = api.environment(load_playbook(book), world.environ)
    with tenant_session(env, env.loaded.tenants[0], uuid4()) as ctx:
        step = step_for(BackfillStep(kind="backfill", chunk_rows=70))
        step.verify(ctx, step.apply(ctx))
        assert ctx.target.execute("SHOW session_replication_role").fetchone() == ("origin",)
    with world.target() as conn:
        assert conn.execute("SELECT n FROM public.seen").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM app.tasks WHERE tenant_id = 'acme'").fetchone() == (300,)
