"""Write-readiness: after the flip, the application's first insert works in every tenant table.

A schema with every way a key gets its number — serial, identity (ALWAYS), and a default that
draws from a sequence no column owns (shared by two tables) — migrated for two tenants with
different data, then written to as the application role under RLS.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from psycopg import sql
from sqlalchemy.pool import NullPool

from databases import DatabaseFactory
from migrate import api
from migrate.catalog.ddl import SET_TENANT_SQL
from migrate.cli.app import main
from world import ROOT, World, custom_world

KEYS = """
CREATE SEQUENCE order_no START 1000;
CREATE TABLE customers (id serial PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL);
CREATE TABLE invoices (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers,
    total numeric NOT NULL DEFAULT 0
);
CREATE TABLE orders (
    no bigint PRIMARY KEY DEFAULT nextval('order_no'),
    customer_id int NOT NULL REFERENCES customers,
    note text
);
CREATE TABLE returns (
    no bigint PRIMARY KEY DEFAULT nextval('order_no'),
    order_no bigint NOT NULL REFERENCES orders (no)
);
INSERT INTO customers (email, name) SELECT 'c' || g || '@example.com', 'customer ' || g
FROM generate_series(1, {customers}) AS g;
INSERT INTO invoices (customer_id, total)
SELECT 1 + g % ({customers} / 2), g FROM generate_series(1, {invoices}) AS g;
INSERT INTO orders (customer_id, note)
SELECT 1 + g % ({customers} / 2), 'o' || g FROM generate_series(1, {orders}) AS g;
INSERT INTO returns (order_no) SELECT no FROM orders WHERE no % 7 = 0;
"""

SIZES = {
    "acme": {"customers": 300, "invoices": 900, "orders": 700},
    "globex": {"customers": 40, "invoices": 30, "orders": 20},
}


def _admin(dsn: str, statement: sql.Composable | str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)


def keys_world(factory: DatabaseFactory, tmp_path: Path) -> World:
    world = custom_world(factory, tmp_path, "SELECT 1", ("acme", "globex"))
    for tenant, sizes in SIZES.items():
        with world.source(tenant) as conn:
            conn.execute(KEYS.format(**sizes))
    return world


def playbook(tmp_path: Path, role: str | None, *, steps: tuple[str, ...], name: str = "ready") -> Path:
    body = "\n".join(
        "      - {kind: flag, flag: tenant-shared-db}" if s == "flag" else f"      - kind: {s}" for s in steps
    )
    role_line = f", app_role: {role}" if role else ""
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"version: 1\nname: {name}\n"
        f"target: {{dsn_env: MIGRATE_TARGET_DSN, schema: app{role_line}}}\n"
        "source: {dsn_template_env: MIGRATE_SOURCE_DSN_TEMPLATE, schema: public}\n"
        "tenants: [{id: acme}, {id: globex}]\n"
        f"flags: {{provider: file, file_env: MIGRATE_FLAG_FILE, definitions: {FLAGS}}}\n"
        f"phases:\n  - name: all\n    steps:\n{body}\n"
    )
    return path


def insert_as_app(conn: psycopg.Connection[Any], role: str, tenant: str) -> dict[str, int]:
    """The application's first writes: one row per table, every key left to its default."""
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        conn.execute(SET_TENANT_SQL, (tenant,))
        customer = conn.execute(
            "INSERT INTO app.customers (email, name) VALUES (%s, 'new') RETURNING id", (f"new@{tenant}",)
        ).fetchone()[0]  # type: ignore[index]
        invoice = conn.execute(
            "INSERT INTO app.invoices (customer_id) VALUES (%s) RETURNING id", (customer,)
        ).fetchone()[0]  # type: ignore[index]
        order = conn.execute(
            "INSERT INTO app.orders (customer_id) VALUES (%s) RETURNING no", (customer,)
        ).fetchone()[0]  # type: ignore[index]
        back = conn.execute(
            "INSERT INTO app.returns (order_no) VALUES (%s) RETURNING no", (order,)
        ).fetchone()[0]  # type: ignore[index]
    return {"customers": customer, "invoices": invoice, "orders": order, "returns": back}


FLAGS = ROOT / "flags" / "demo.json"
ALL = ("schema", "backfill", "validate", "flag")


def test_the_first_insert_after_the_flip_works_for_serial_identity_and_unowned_sequence_keys(
    database_factory: DatabaseFactory, tmp_path: Path, app_role: str
) -> None:
    """After the flag flips, the application role inserts with every key left to its default, for
    each tenant, under RLS: no duplicate key, no missing default, no missing privilege."""
    world = keys_world(database_factory, tmp_path)
    result = api.run(playbook(tmp_path, app_role, steps=ALL), environ=world.environ)
    assert result.ok, [t.error for t in result.tenants]
    flag = next(s for s in result.tenants[0].steps if s.kind == "flag")
    assert flag.details["write_ready"] is True
    assert set(flag.details["insert_proved"]) == {"customers", "invoices", "orders", "returns"}
    with world.target() as conn:
        acme = insert_as_app(conn, app_role, "acme")
        globex = insert_as_app(conn, app_role, "globex")
        # The unowned sequence is carried, with its default, and shared by both tables.
        assert conn.execute("SELECT to_regclass('app.order_no') IS NOT NULL").fetchone() == (True,)
    assert acme["customers"] > 300 and acme["invoices"] > 900 and acme["orders"] > 1000 + 700
    assert globex["customers"] > acme["customers"] and globex["returns"] > acme["returns"]
    # Nothing of that is left behind: the inserts above committed only their own rows.
    assert all(r.ok for r in api.readiness(playbook(tmp_path, app_role, steps=ALL), environ=world.environ))


def test_the_schema_step_grants_the_app_role_what_it_needs_and_never_truncate(
    database_factory: DatabaseFactory, tmp_path: Path, app_role: str
) -> None:
    """target.app_role: USAGE on the schema, SELECT/INSERT/UPDATE/DELETE on tenant tables, USAGE on
    the carried sequence — and no TRUNCATE."""
    world = keys_world(database_factory, tmp_path)
    assert api.run(playbook(tmp_path, app_role, steps=("schema",)), environ=world.environ).ok
    with world.target() as conn:
        row = conn.execute(
            "SELECT has_schema_privilege(%(r)s, 'app', 'USAGE'),"
            " bool_and(has_table_privilege(%(r)s, format('app.%%I', t), 'SELECT, INSERT, UPDATE, DELETE')),"
            " bool_or(has_table_privilege(%(r)s, format('app.%%I', t), 'TRUNCATE')),"
            " has_sequence_privilege(%(r)s, 'app.order_no', 'USAGE')"
            " FROM unnest(ARRAY['customers', 'invoices', 'orders', 'returns']) AS t",
            {"r": app_role},
        ).fetchone()
    assert row == (True, True, False, True)


def test_the_flip_is_refused_naming_a_missing_privilege_and_a_missing_default(
    database_factory: DatabaseFactory,
    tmp_path: Path,
    app_role: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without INSERT on a table, or with a default gone, the flag step does not flip and says exactly
    what is missing; once fixed, the run flips."""
    world = keys_world(database_factory, tmp_path)
    copy = playbook(tmp_path, app_role, steps=("schema", "backfill", "validate"), name="copy")
    assert api.run(copy, environ=world.environ).ok
    with world.target() as conn:
        conn.execute(sql.SQL("REVOKE INSERT ON app.invoices FROM {}").format(sql.Identifier(app_role)))
        conn.execute("ALTER TABLE app.orders ALTER COLUMN no DROP DEFAULT")
    flip = playbook(tmp_path, app_role, steps=("flag",), name="flip")
    result = api.run(flip, tenants=["acme"], environ=world.environ)
    error = result.tenants[0].error
    assert not result.ok and error is not None
    assert "not write-ready" in error.message
    assert f"privilege app.invoices: {app_role} lacks INSERT" in error.message
    assert "default app.orders.no: the source column has the default nextval(" in error.message
    assert not api.flags_status(flip, environ=world.environ).tenants[0].flags["tenant-shared-db"]
    # `migrate readiness` says the same, with each fix; exit 1.
    for name, value in world.environ.items():
        monkeypatch.setenv(name, value)
    assert main(["readiness", str(flip), "--tenant", "acme"]) == 1
    out = capsys.readouterr().out
    assert f"acme: NOT write-ready on schema app as {app_role}:" in out
    assert f'    fix: GRANT INSERT ON "app"."invoices" TO "{app_role}"' in out
    assert "0 of 1 tenant(s) write-ready" in out


def test_readiness_names_a_sequence_behind_and_the_flip_moves_it_forward(
    database_factory: DatabaseFactory, tmp_path: Path, app_role: str
) -> None:
    """A shared sequence set back below the tenant's values is named by readiness; the flag step
    moves it past them again before it checks, and the first insert works."""
    world = keys_world(database_factory, tmp_path)
    copy = playbook(tmp_path, app_role, steps=("schema", "backfill", "validate"), name="copy")
    assert api.run(copy, environ=world.environ).ok
    with world.target() as conn:
        conn.execute("SELECT setval('app.order_no', 1500)")
    (acme, _globex) = api.readiness(copy, environ=world.environ)
    assert not acme.ok
    texts = [m.text() for m in acme.missing]
    assert any(t.startswith("sequence app.order_no: hands out 1501 next, but tenant") for t in texts), texts
    assert any(m.kind == "insert" and "duplicate key" in m.detail for m in acme.missing), texts
    flip = playbook(tmp_path, app_role, steps=("flag",), name="flip")
    assert api.run(flip, environ=world.environ).ok
    with world.target() as conn:
        insert_as_app(conn, app_role, "acme")


def test_two_concurrent_runners_never_move_a_sequence_backwards(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """Two runners advance one shared sequence at once, the larger tenant first: the smaller one's
    advance waits its turn and never sets the sequence back below the larger tenant's values."""
    world = keys_world(database_factory, tmp_path)
    schema = playbook(tmp_path, None, steps=("schema",), name="s")
    assert api.run(schema, environ=world.environ).ok
    copy = playbook(tmp_path, None, steps=("backfill",), name="copy")
    holder = psycopg.connect(world.target_dsn)
    # An open ALTER SEQUENCE holds back every setval of it: both runners reach it before either moves it.
    holder.execute("ALTER SEQUENCE app.order_no CACHE 1")
    results: dict[str, Any] = {}

    def runner(tenant: str) -> None:
        results[tenant] = api.run(copy, tenants=[tenant], environ=world.environ)

    def waiting(n: int) -> None:
        deadline = time.monotonic() + 60
        with world.target() as conn:
            while time.monotonic() < deadline:
                found = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                ).fetchone()
                if found and found[0] >= n:
                    return
                time.sleep(0.05)
        raise AssertionError("the runners never reached the sequence")

    first = threading.Thread(target=runner, args=("acme",))
    first.start()
    waiting(1)
    second = threading.Thread(target=runner, args=("globex",))
    second.start()
    waiting(2)
    holder.rollback()
    holder.close()
    first.join(120)
    second.join(120)
    assert results["acme"].ok and results["globex"].ok
    with world.target() as conn:
        highest = conn.execute(
            "SELECT max(no) FROM (SELECT no FROM app.orders UNION ALL SELECT no FROM app.returns) AS n"
        ).fetchone()[0]  # type: ignore[index]
        last = conn.execute("SELECT last_value FROM app.order_no").fetchone()[0]  # type: ignore[index]
    assert last >= highest, f"the sequence went back to {last}, below {highest}"


def test_a_generated_revision_carries_the_unowned_sequence_and_grants_then_the_first_insert_works(
    database_factory: DatabaseFactory, tmp_path: Path, app_role: str
) -> None:
    """`schema generate --app-role` writes the sequence, the default that draws from it and the grants
    (USAGE on the sequence, never TRUNCATE); applied with alembic, the run then flips and the
    application's first insert works."""
    world = keys_world(database_factory, tmp_path)
    out = tmp_path / "shared"
    generated = api.schema_generate(sources=[f"acme={world.source_dsn('acme')}"], out=out, app_role=app_role)
    assert generated.ok
    text = generated.revision.path.read_text()
    assert 'CREATE SEQUENCE "app"."order_no" AS bigint INCREMENT BY 1' in text
    assert 'DEFAULT nextval(\'"app"."order_no"\'::regclass)' in text
    assert f'GRANT USAGE, SELECT ON SEQUENCE "app"."order_no" TO "{app_role}"' in text
    assert "TRUNCATE" not in text
    cfg = Config()
    cfg.set_main_option("script_location", str(out))
    cfg.set_main_option("version_table_schema", "app")
    engine = sa.create_engine(
        "postgresql+psycopg://", poolclass=NullPool, creator=lambda: psycopg.connect(world.target_dsn)
    )
    try:
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()
    result = api.run(playbook(tmp_path, app_role, steps=ALL), environ=world.environ)
    assert result.ok, [t.error for t in result.tenants]
    assert "granted_to" not in result.tenants[0].steps[0].details  # the revision had granted it all
    with world.target() as conn:
        insert_as_app(conn, app_role, "acme")
        insert_as_app(conn, app_role, "globex")


def test_readiness_before_the_shared_tables_exist_says_to_create_them(
    database_factory: DatabaseFactory, tmp_path: Path, app_role: str
) -> None:
    """Nothing migrated yet: each missing shared table is named, with the step that creates it."""
    world = keys_world(database_factory, tmp_path)
    (acme, _globex) = api.readiness(playbook(tmp_path, app_role, steps=ALL), environ=world.environ)
    assert not acme.ok
    assert {m.subject for m in acme.missing if m.kind == "table"} == {
        "app.customers",
        "app.invoices",
        "app.orders",
        "app.returns",
    }


def test_a_rehearsal_goes_through_the_same_write_readiness_gate(
    database_factory: DatabaseFactory, tmp_path: Path, app_role: str
) -> None:
    """`run --dry-run` proves write-readiness the same way (inside its transaction, rolled back with
    it), and the real run after it flips as well."""
    world = keys_world(database_factory, tmp_path)
    book = playbook(tmp_path, app_role, steps=ALL)
    rehearsal = api.run(book, environ=world.environ, dry_run=True)
    assert rehearsal.ok, [t.error for t in rehearsal.tenants]
    flag = next(s for s in rehearsal.tenants[0].steps if s.kind == "flag")
    assert flag.details["write_ready"] is True
    with world.target() as conn:
        assert conn.execute("SELECT to_regclass('app.orders')").fetchone() == (None,)
    assert api.run(book, environ=world.environ).ok


def test_a_tenant_whose_table_is_empty_is_write_ready_and_its_first_insert_works(
    database_factory: DatabaseFactory, tmp_path: Path, app_role: str
) -> None:
    """globex has no orders (nor returns): no row to model the proof's insert on, yet the defaults,
    privileges and policy are proven, the flag flips, and the application's first order works."""
    world = custom_world(database_factory, tmp_path, "SELECT 1", ("acme", "globex"))
    for tenant, sizes in {**SIZES, "globex": {**SIZES["globex"], "orders": 0}}.items():
        with world.source(tenant) as conn:
            conn.execute(KEYS.format(**sizes))
    result = api.run(playbook(tmp_path, app_role, steps=ALL), environ=world.environ)
    assert result.ok, [t.error for t in result.tenants]
    globex = next(t for t in result.tenants if t.tenant == "globex")
    flag = next(s for s in globex.steps if s.kind == "flag")
    assert {"orders", "returns"} <= set(flag.details["insert_proved"])
    with world.target() as conn:
        assert conn.execute("SELECT count(*) FROM app.orders WHERE tenant_id = 'globex'").fetchone() == (0,)
        insert_as_app(conn, app_role, "globex")


def test_the_application_drawing_while_a_sequence_advances_never_gets_a_number_twice(
    database_factory: DatabaseFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The application draws from the shared sequence right between the advance's read and its
    setval: it waits for the advance, so it never draws a number the setval hands out again."""
    import migrate.steps.sequences as sequences

    world = keys_world(database_factory, tmp_path)
    assert api.run(playbook(tmp_path, None, steps=("schema",), name="s"), environ=world.environ).ok
    drawn: list[int] = []
    drawer: list[threading.Thread] = []
    real = sequences.next_value

    def draw() -> None:
        with psycopg.connect(world.target_dsn, autocommit=True) as conn:
            rows = conn.execute("SELECT nextval('app.order_no') FROM generate_series(1, 2000)").fetchall()
        drawn.extend(int(r[0]) for r in rows)

    reads: list[str] = []

    def read_then_draw(conn: psycopg.Connection[Any], schema: str, sequence: str) -> tuple[int, int]:
        read = real(conn, schema, sequence)
        reads.append(sequence)
        # The second read of app.order_no is the one under the hold, right before the setval.
        if sequence == "order_no" and reads.count("order_no") == 2 and not drawer:
            drawer.append(threading.Thread(target=draw))
            drawer[0].start()
            drawer[0].join(1.0)  # held back: it waits; unheld: it draws 2,000 numbers at once
        return read

    monkeypatch.setattr(sequences, "next_value", read_then_draw)
    assert api.run(playbook(tmp_path, None, steps=("backfill",), name="copy"), environ=world.environ).ok
    assert drawer, "the advance never read app.order_no"
    drawer[0].join(30)
    with world.target() as conn:
        highest = conn.execute(
            "SELECT max(no) FROM (SELECT no FROM app.orders UNION ALL SELECT no FROM app.returns) AS n"
        ).fetchone()[0]  # type: ignore[index]
        following = conn.execute("SELECT nextval('app.order_no')").fetchone()[0]  # type: ignore[index]
    assert len(drawn) == 2000
    assert min(drawn) > highest, f"the application drew {min(drawn)} while the tenant holds up to {highest}"
    assert following > max(drawn), f"the sequence hands out {following} again after drawing {max(drawn)}"


def test_an_application_transaction_left_open_never_stalls_the_advance(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """A transaction that drew from the shared sequence and stays open: the advance cannot hold the
    sequence (it never queues every insert behind that transaction), moves it unheld, and is done."""
    world = keys_world(database_factory, tmp_path)
    assert api.run(playbook(tmp_path, None, steps=("schema",), name="s"), environ=world.environ).ok
    results: list[Any] = []
    copy = playbook(tmp_path, None, steps=("backfill",), name="copy")
    with psycopg.connect(world.target_dsn) as open_app:
        open_app.execute("SELECT nextval('app.order_no')")  # its lock lasts until the transaction ends
        runner = threading.Thread(target=lambda: results.append(api.run(copy, environ=world.environ)))
        runner.start()
        runner.join(60)
        stalled = runner.is_alive()
        with world.target() as conn:
            following, _ = sequences_next(conn)
        open_app.rollback()
    runner.join()
    assert not stalled, "the advance waited for the application's open transaction"
    assert results[0].ok
    with world.target() as conn:
        highest = conn.execute(
            "SELECT max(no) FROM (SELECT no FROM app.orders UNION ALL SELECT no FROM app.returns) AS n"
        ).fetchone()[0]  # type: ignore[index]
    assert following > highest


def sequences_next(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    from migrate.checks.readiness import next_value

    return next_value(conn, "app", "order_no")
