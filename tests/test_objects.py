"""Every source object is carried into the shared schema, or stops the way naming it (issue 15 B).

One schema of our own (tests/data/objects/schema.sql) with one of each case: keys, checks,
foreign keys and indexes declared on a partition; pure functions, an aggregate over one, per-row
triggers (one on a built-in tsvector function); a function that reads a table, a statement
trigger, a rule; views joining tenant tables (ON, comma, sub-query), a view over the aggregate,
a view that cannot be made tenant-safe; a table the playbook leaves out. Two tenants with the
same ids and different data: generate → apply → run → verify, then each case on its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from databases import DatabaseFactory
from migrate import api
from migrate.catalog.ddl import SET_TENANT_SQL
from migrate.cli.app import main
from world import ROOT, World, custom_world

DATA = Path(__file__).parent / "data" / "objects"
FLAGS = ROOT / "flags" / "demo.json"
TENANTS = ("acme", "globex")
# What the schema cannot carry, and a person acknowledges leaving behind.
LEFT = (
    "function public.order_count(integer)",
    "function public.note_audit()",
    "trigger public.orders.orders_audit",
    "rule public.customers.customers_no_delete",
    "view public.orders_using",
    "view public.order_counts",
)
TABLES = ("customers", "orders", "visits")  # audit_log is left out


def objects_world(factory: DatabaseFactory, tmp_path: Path) -> World:
    world = custom_world(factory, tmp_path, (DATA / "schema.sql").read_text(), TENANTS)
    for tenant in TENANTS:
        with world.source(tenant) as conn, conn.transaction():
            psycopg.ClientCursor(conn).execute((DATA / "data.sql").read_text(), {"tenant": tenant})
    return world


def playbook(
    tmp_path: Path,
    *,
    role: str | None = None,
    tables: tuple[str, ...] | None = TABLES,
    left: tuple[str, ...] = (*LEFT, "table public.audit_log"),
    steps: tuple[str, ...] = ("schema", "backfill", "validate"),
    name: str = "objects",
) -> Path:
    entries = ", ".join(f'{{object: "{o}", reason: "kept in the old database"}}' for o in left)
    body = "\n".join(
        "      - {kind: flag, flag: tenant-shared-db}" if s == "flag" else f"      - kind: {s}" for s in steps
    )
    role_line = f", app_role: {role}" if role else ""
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"version: 1\nname: {name}\n"
        f"target: {{dsn_env: MIGRATE_TARGET_DSN, schema: app{role_line}}}\n"
        "source: {dsn_template_env: MIGRATE_SOURCE_DSN_TEMPLATE, schema: public}\n"
        f"tenants: [{', '.join(f'{{id: {t}}}' for t in TENANTS)}]\n"
        + (f"tables: [{', '.join(tables)}]\n" if tables is not None else "")
        + (f"schema: {{leave_behind: [{entries}]}}\n" if left else "")
        + f"flags: {{provider: file, file_env: MIGRATE_FLAG_FILE, definitions: {FLAGS}}}\n"
        f"phases:\n  - name: all\n    steps:\n{body}\n"
    )
    return path


def apply_revision(out: Path, target: str) -> None:
    env = {**os.environ, "MIGRATE_TARGET_DSN": target}
    alembic = [str(Path(sys.executable).parent / "alembic"), "-c", str(out / "alembic.ini")]
    done = subprocess.run([*alembic, "upgrade", "head"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def one(conn: psycopg.Connection[object], query: str, *args: object) -> object:
    row = conn.execute(query, args).fetchone()
    assert row is not None
    return row[0]


def test_generate_apply_run_verify_with_every_kind_of_object(
    database_factory: DatabaseFactory, tmp_path: Path, app_role: str
) -> None:
    """With what cannot be carried acknowledged, the revision applies, both tenants run and validate,
    `verify` matches, and the application role inserts with defaults in every table (part A's proof)."""
    world = objects_world(database_factory, tmp_path)
    out = tmp_path / "shared"
    book = playbook(tmp_path, role=app_role, steps=("schema", "backfill", "validate", "flag"))
    generated = api.schema_generate(book, out=out, app_role=app_role, environ=world.environ)
    assert generated.ok, generated.errors
    report = {"left_behind": generated.shared.left_behind, "carried": generated.shared.carried}
    assert set(report["left_behind"]) == {*LEFT, "table public.audit_log"}
    assert {
        "function public.joined(text, text)",
        "aggregate public.joined_all(text)",
        "function public.shout(text)",
        "function public.touch()",
        "trigger public.customers.customers_touch",
        "trigger public.customers.customers_search",
        "trigger public.orders.orders_touch",
        "view public.customer_orders",
        "view public.order_pairs",
        "view public.busy_customers",
        "view public.customer_notes",
    } <= set(report["carried"])
    assert "audit_log" not in generated.shared.tenant_tables  # never created empty
    apply_revision(out, world.target_dsn)
    result = api.run(book, environ=world.environ)
    assert result.ok, [t.error for t in result.tenants]
    flag = next(s for s in result.tenants[0].steps if s.kind == "flag")
    assert flag.details["write_ready"] is True  # part A's check before the flip
    assert api.verify(book, environ=world.environ).match
    with world.target() as conn:
        assert one(conn, "SELECT to_regclass('app.audit_log')") is None
        counts = dict(conn.execute("SELECT tenant_id, count(*) FROM app.orders GROUP BY 1").fetchall())
    assert counts == {"acme": 120, "globex": 120}


def test_partition_keys_checks_foreign_keys_and_indexes_are_carried(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """What is declared on a partition (not its parent) is on the shared partition, with tenant_id:
    its foreign key refuses a row pointing at another tenant's order, its index leads with tenant_id."""
    world = objects_world(database_factory, tmp_path)
    assert api.run(playbook(tmp_path), environ=world.environ).ok
    with world.target() as conn:
        fk = one(
            conn,
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'visits_2025_order_fkey'"
            " AND conrelid = 'app.visits_2025'::regclass",
        )
        assert fk == "FOREIGN KEY (tenant_id, order_id) REFERENCES app.orders(tenant_id, id)"
        assert one(conn, "SELECT pg_get_indexdef('app.visits_2025_customer'::regclass)") == (
            "CREATE INDEX visits_2025_customer ON app.visits_2025 USING btree (tenant_id, customer_id)"
        )
        assert one(conn, "SELECT count(*) FROM pg_constraint WHERE conname = 'visits_2025_recent'") == 1
        conn.execute(
            "INSERT INTO app.orders (tenant_id, id, customer_id, note)  VALUES ('globex', 777, 1, '')"
        )
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(  # acme has no order 777: globex's must not satisfy acme's key
                "INSERT INTO app.visits (tenant_id, id, customer_id, order_id, at)"
                " VALUES ('acme', 9999, 1, 777, '2025-03-01')"
            )


def test_functions_aggregates_and_triggers_are_carried_with_a_pinned_search_path(
    database_factory: DatabaseFactory, tmp_path: Path, app_role: str
) -> None:
    """Pure functions and the aggregate over one are re-created in the shared schema with
    search_path pinned to it; the per-row triggers work there for the application role: an update
    stamps updated_at, an insert fills the tsvector; the copy itself fired none of them."""
    world = objects_world(database_factory, tmp_path)
    assert api.run(playbook(tmp_path, role=app_role), environ=world.environ).ok
    with world.target() as conn:
        configs = dict(
            conn.execute(
                "SELECT p.proname, array_to_string(p.proconfig, ';') FROM pg_proc p"
                " WHERE p.pronamespace = 'app'::regnamespace"
            ).fetchall()
        )
        assert configs == {
            "joined": "search_path=app, pg_catalog",
            "joined_all": None,
            "shout": "search_path=app, pg_catalog",
            "touch": "search_path=app, pg_catalog",
        }
        # Copied as the source holds it: the BEFORE UPDATE trigger did not stamp the copy.
        assert one(conn, "SELECT count(*) FROM app.customers WHERE updated_at <> '2020-01-01'") == 0
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(app_role)))
            conn.execute(SET_TENANT_SQL, ("acme",))
            conn.execute("UPDATE app.orders SET note = note || '.' WHERE id = 1")
            conn.execute("INSERT INTO app.customers (id, name) VALUES (1000, 'Fresh Fruit')")
            stamped = one(conn, "SELECT updated_at > '2020-01-01' FROM app.orders WHERE id = 1")
            search = one(conn, "SELECT search::text FROM app.customers WHERE id = 1000")
            notes = one(conn, "SELECT loud || ' ' || notes FROM app.customer_notes WHERE id = 2")
    assert stamped is True
    assert search == "'fresh':1 'fruit':2"
    assert notes == "ACME CUSTOMER 2! acme order 1., acme order 41, acme order 81"


def test_an_rls_exempt_reader_of_a_carried_view_never_gets_rows_of_two_tenants_joined(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """Both tenants hold customer 1 and order 1: read as the migrator (exempt from RLS), every
    carried view pairs a customer only with its own tenant's orders — ON, comma and EXISTS joins."""
    world = objects_world(database_factory, tmp_path)
    assert api.run(playbook(tmp_path), environ=world.environ).ok
    with world.target() as conn:
        assert one(conn, "SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = current_user")
        pairs = conn.execute("SELECT name, note FROM app.customer_orders").fetchall()
        assert len(pairs) == 240
        assert all(name.split()[0] == note.split()[0] for name, note in pairs)
        assert one(conn, "SELECT count(*) FROM app.order_pairs") == 240
        busy = one(conn, "SELECT count(*) FROM app.busy_customers")
        assert busy == 80
        for loud, notes in conn.execute("SELECT loud, notes FROM app.customer_notes").fetchall():
            assert {n.split()[0] for n in notes.split(", ")} == {loud.split()[0].lower()}


def test_what_cannot_be_carried_stops_generate_and_the_schema_step_naming_it_and_the_key(
    database_factory: DatabaseFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unacknowledged, each object the shared schema cannot carry is an error of `schema generate`
    (exit 1) naming it, why, what uses it and the leave_behind key; the schema step stops the same
    way before creating anything."""
    world = objects_world(database_factory, tmp_path)
    code = main(
        ["schema", "generate", "--out", str(tmp_path / "out"), "--json"]
        + [a for t in TENANTS for a in ("--source", f"{t}={world.source_dsn(t)}")]
    )
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    errors = {f["subject"]: f for f in report["findings"] if f["severity"] == "error"}
    assert set(errors) == set(LEFT)
    count = errors["function public.order_count(integer)"]
    assert "reads orders" in count["detail"] and "used by view public.order_counts" in count["detail"]
    assert (
        "calls function public.order_count(integer), which is not carried"
        in errors["view public.order_counts"]["detail"]
    )
    audit = errors["function public.note_audit()"]
    assert "reads audit_log" in audit["detail"]
    assert "used by trigger public.orders.orders_audit" in audit["detail"]
    assert "no tenant column" in errors["view public.orders_using"]["detail"]
    assert (
        'leave_behind: [{object: "rule public.customers.customers_no_delete"'
        in errors["rule public.customers.customers_no_delete"]["fix"]
    )
    result = api.run(playbook(tmp_path, left=LEFT[1:]), environ=world.environ)
    error = result.tenants[0].error
    assert not result.ok and error is not None
    assert "function public.order_count(integer) (reads orders" in error.message
    assert "leave_behind" in (error.hint or "")
    with world.target() as conn:
        assert one(conn, "SELECT to_regnamespace('app')") is None  # nothing half-created


def test_a_table_left_out_of_tables_blocks_until_acknowledged_and_a_missing_table_is_drift(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """A table the playbook leaves out stops the schema step (its rows would stay behind) until it is
    acknowledged; then it is not created. A table the playbook names that a source lacks fails
    `schema generate` (table-missing) and the run (drift: never a silent partial migration)."""
    world = objects_world(database_factory, tmp_path)
    result = api.run(playbook(tmp_path, left=LEFT), environ=world.environ)
    error = result.tenants[0].error
    assert not result.ok and error is not None and "table public.audit_log" in error.message
    acknowledged = api.run(playbook(tmp_path, name="acknowledged"), environ=world.environ)
    assert acknowledged.ok
    assert "table public.audit_log" in acknowledged.tenants[0].steps[0].details["left_behind"]
    with world.target() as conn:
        assert one(conn, "SELECT to_regclass('app.audit_log')") is None
    ghost = playbook(tmp_path, tables=(*TABLES, "invoices"), name="ghost")
    generated = api.schema_generate(ghost, out=tmp_path / "g", environ=world.environ)
    assert not generated.ok
    assert any(n.rule == "table-missing" and n.subject == "invoices" for n in generated.errors)
    drifted = api.run(ghost, environ=world.environ, replan=True)
    assert not drifted.ok
    assert "invoices not found in source schema" in str(drifted.tenants[0].error)


def test_comments_on_carried_objects_are_carried(database_factory: DatabaseFactory, tmp_path: Path) -> None:
    """The source's comments on views, functions, aggregates, triggers, partition indexes and
    constraints, types and domains are on the shared schema's objects; a left-behind one's is not."""
    world = objects_world(database_factory, tmp_path)
    assert api.run(playbook(tmp_path), environ=world.environ).ok
    with world.target() as conn:
        found = dict(
            conn.execute(
                "SELECT o.identity, d.description FROM pg_description d"
                " CROSS JOIN LATERAL pg_identify_object(d.classoid, d.objoid, d.objsubid) AS o"
                " WHERE o.schema = 'app' OR o.identity LIKE '% on app.%'"
            ).fetchall()
        )
    assert found == {
        "app.customer_orders": "Each customer with its orders",
        "app.shout(pg_catalog.text)": "Loud",
        "app.joined_all(pg_catalog.text)": "Joined",
        "app.visits_2025_customer": "Declared on a partition",
        "visits_2025_recent on app.visits_2025": "Only 2025",
        "app.plan": "Plans",
        "app.percent": "Percent",
    } | {"customers_touch on app.customers": "Stamps updated_at"}
