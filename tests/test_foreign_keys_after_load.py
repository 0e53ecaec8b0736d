"""Foreign keys checked once after the load: triggers off for the tenant's own loading transactions,
then one anti-join per foreign key over the tenant's rows, before the backfill step is done."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from databases import DatabaseFactory
from migrate import api
from migrate.engine.session import tenant_session
from migrate.errors import StepFailed
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


# Two keys on one table, a self-reference and a key over two columns (MATCH FULL in the source; the
# shared schema makes it MATCH SIMPLE, its tenant column never being NULL): each tenant below breaks
# exactly one of them in its source (planted with the source's triggers off).
KEYS = """
CREATE TABLE users (id bigint PRIMARY KEY, manager_id bigint REFERENCES users (id));
CREATE TABLE projects (id bigint PRIMARY KEY);
CREATE TABLE tasks (
    id bigint PRIMARY KEY,
    project_id bigint NOT NULL REFERENCES projects (id),
    owner_id bigint REFERENCES users (id),
    title text NOT NULL
);
CREATE TABLE slots (id bigint PRIMARY KEY, day int, hour int, UNIQUE (day, hour));
CREATE TABLE bookings (
    id bigint PRIMARY KEY, day int, hour int, FOREIGN KEY (day, hour) REFERENCES slots (day, hour) MATCH FULL
);
INSERT INTO users SELECT u, CASE WHEN u > 1 THEN 1 END FROM generate_series(1, 20) AS u;
INSERT INTO projects SELECT p FROM generate_series(1, 10) AS p;
INSERT INTO tasks SELECT t, 1 + t % 10, 1 + t % 20, 'task ' || t FROM generate_series(1, 300) AS t;
INSERT INTO slots SELECT s, s % 7, s % 24 FROM generate_series(1, 100) AS s;
INSERT INTO bookings SELECT b, day, hour FROM slots AS s(b, day, hour);
INSERT INTO bookings VALUES (1000, NULL, NULL);  -- all NULL references nothing
"""

BREAKS = {
    # the second key of tasks (its first, project_id, holds)
    "acme": (
        "UPDATE tasks SET owner_id = 999 WHERE id = 7",
        "tasks_owner_id_fkey of tasks",
        "owner_id) = (acme, 999) has no row in users",
    ),
    # the self-reference
    "globex": (
        "UPDATE users SET manager_id = 555 WHERE id = 3",
        "users_manager_id_fkey of users",
        "manager_id) = (globex, 555) has no row in users",
    ),
    # a pair of values no slot has (day 6 is s = 6 mod 7, hour 23 is s = 23 mod 24: s = 167 > 100)
    "initech": (
        "UPDATE bookings SET day = 6, hour = 23 WHERE id = 5",
        "bookings_day_hour_fkey of bookings",
        "(tenant_id, day, hour) = (initech, 6, 23) has no row in slots",
    ),
    # MATCH SIMPLE in the shared schema: one NULL column references nothing, so this breaks nothing
    "umbrella": ("UPDATE bookings SET hour = NULL WHERE id = 6", "", ""),
}


def test_each_key_a_tenant_breaks_is_named_whichever_key_of_the_table_it_is(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """The check reads each table once for all its keys: a tenant breaking the second key of a table,
    a self-reference, or a key over two columns fails naming that key and a row of its
    own; a tenant breaking nothing (rows with a NULL in a two-column key included) is done."""
    tenants = ("acme", "globex", "initech", "umbrella")
    world = custom_world(database_factory, tmp_path, KEYS, tenants)
    for tenant, (plant, _, _) in BREAKS.items():
        with world.source(tenant) as conn:
            conn.execute("SET session_replication_role = replica")
            conn.execute(plant)
    result = api.run(playbook(tmp_path, tenants, steps=("schema", "backfill")), environ=world.environ)
    by_tenant = {t.tenant: t for t in result.tenants}
    assert by_tenant["umbrella"].error is None, by_tenant["umbrella"].error
    for tenant, (_, key, said) in BREAKS.items():
        if not key:
            continue
        error = by_tenant[tenant].error
        assert error is not None, tenant
        assert f"foreign key {key} does not hold for tenant '{tenant}'" in error.message, error.message
        assert said in error.message, error.message
    with world.target() as conn:
        assert conn.execute("SELECT count(*) FROM app.bookings WHERE tenant_id = 'umbrella'").fetchone() == (
            101,
        )


def test_the_check_hash_joins_even_when_the_statistics_say_the_tenant_holds_nothing(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """The shared tables grow by whole tenants between ANALYZEs: the planner then believes a new
    tenant holds a row or two and nests loops over a materialised parent, quadratic in the tenant's
    size. The check's pass over a tenant's rows and its parents' is planned without nested loops,
    whatever the statistics say (here: analysed while empty, then a tenant of 300 tasks loaded)."""
    world = custom_world(database_factory, tmp_path, PROJECTS, ("acme",))
    assert api.run(playbook(tmp_path, ("acme",), steps=("schema",)), environ=world.environ).ok
    with world.target() as conn:
        conn.execute("ANALYZE app.projects, app.tasks")  # empty: every tenant looks like a row or two
    book = playbook(tmp_path, ("acme",), steps=("schema", "backfill"), name="stale")
    env = api.environment(load_playbook(book), world.environ)
    with tenant_session(env, env.loaded.tenants[0], uuid4()) as ctx:
        step = step_for(BackfillStep(kind="backfill"))
        step.apply(ctx)
        plans: list[str] = []
        execute = ctx.target.execute

        def explained(query: Any, params: Any = None, **kw: Any) -> Any:
            text = query.as_string(ctx.target) if hasattr(query, "as_string") else str(query)
            if text.startswith("SELECT count(*)") and "LEFT JOIN" in text:
                plans.append(str(execute("EXPLAIN " + text, params).fetchall()))
            return execute(query, params, **kw)

        ctx.target.execute = explained  # type: ignore[method-assign]
        try:
            step.verify(ctx, {})
        finally:
            del ctx.target.execute
    assert plans, "the check ran no pass over tasks and its parent"
    assert all("Hash" in p and "Nested Loop" not in p for p in plans), plans


def test_a_row_of_the_tenant_written_beside_the_copy_fails_the_check(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """The count and the key check are one pass: a row of the tenant that no checkpoint accounts for
    (written into the shared table by something else) still fails the step, saying both counts."""
    world = custom_world(database_factory, tmp_path, PROJECTS, ("acme",))
    book = playbook(tmp_path, ("acme",), steps=("schema", "backfill"))
    env = api.environment(load_playbook(book), world.environ)
    assert api.run(book, environ=world.environ).ok
    with world.target() as conn:
        conn.execute("INSERT INTO app.projects (tenant_id, id, name) VALUES ('acme', 99, 'beside')")
    with tenant_session(env, env.loaded.tenants[0], uuid4()) as ctx:
        step = step_for(BackfillStep(kind="backfill"))
        with pytest.raises(StepFailed, match=r"holds 11 rows of tenant 'acme', the checkpoint says 10"):
            step.verify(ctx, {})


GLOBAL = """
CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
CREATE TABLE accounts (id bigint PRIMARY KEY, country text REFERENCES countries (code), name text NOT NULL);
INSERT INTO countries VALUES ('DE', 'Germany'), ('FR', 'France'), ('XX', 'Nowhere');
INSERT INTO accounts SELECT a, CASE WHEN a % 2 = 0 THEN 'DE' ELSE 'FR' END, 'account ' || a
FROM generate_series(1, 40) AS a;
"""


def test_a_key_to_a_global_table_is_checked_by_probing_it_not_by_hashing_it_for_every_tenant(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """A tenant table's key to a global table (no tenant column: the shared countries every tenant
    reads) is checked too: acme's account in a country the shared table lacks fails naming the key;
    globex is done. The global parent is probed per row from a sub-query, never joined whole into
    each tenant's pass (it is not read by tenant, so a hash would read all of it for every tenant)."""
    world = custom_world(database_factory, tmp_path, GLOBAL, ("globex", "acme"))
    with world.source("acme") as conn:
        conn.execute("UPDATE accounts SET country = 'XX' WHERE id = 7")
    with world.target() as conn:
        conn.execute("CREATE SCHEMA app")
        conn.execute("CREATE TABLE app.countries (code text PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO app.countries VALUES ('DE', 'Germany'), ('FR', 'France')")
    book, schema = (
        playbook(tmp_path, ("globex", "acme"), steps=steps, name=name)
        for steps, name in ((("schema", "backfill"), "global"), (("schema",), "global_schema"))
    )
    for path in (book, schema):
        text = path.read_text()
        path.write_text(text.replace("tables: auto\n", "tables: auto\nglobal_tables: [countries]\n"))
    assert api.run(schema, environ=world.environ).ok
    with world.target() as conn:  # the shared schema's own key to the global table (its migrations')
        conn.execute("ALTER TABLE app.accounts ADD FOREIGN KEY (country) REFERENCES app.countries (code)")
    result = api.run(book, environ=world.environ)
    by_tenant = {t.tenant: t for t in result.tenants}
    assert by_tenant["globex"].error is None, by_tenant["globex"].error
    error = by_tenant["acme"].error
    assert error is not None
    assert "foreign key accounts_country_fkey of accounts does not hold for tenant 'acme'" in error.message
    assert "(country) = (XX) has no row in countries" in error.message and '"id":7' in error.message
    env = api.environment(load_playbook(book), world.environ)
    with tenant_session(env, env.loaded.tenants[0], uuid4()) as ctx:  # globex, done: its pass again
        sent: list[str] = []
        execute = ctx.target.execute

        def kept(query: Any, params: Any = None, **kw: Any) -> Any:
            sent.append(query.as_string(ctx.target) if hasattr(query, "as_string") else str(query))
            return execute(query, params, **kw)

        ctx.target.execute = kept  # type: ignore[method-assign]
        try:
            step_for(BackfillStep(kind="backfill")).verify(ctx, {})
        finally:
            del ctx.target.execute
    (accounts,) = [q for q in sent if q.startswith("SELECT count(*)") and '"app"."accounts"' in q]
    assert "LEFT JOIN" not in accounts and 'NOT EXISTS (SELECT 1 FROM "app"."countries"' in accounts
