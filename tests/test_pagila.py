"""Acceptance on a public sample database nobody here wrote: pagila, loaded as three customers.

pagila (tests/data/pagila, PostgreSQL licence) has what real applications have: a partitioned
payment table whose first partitions carry their own foreign keys and indexes, views over a
user-defined aggregate (group_concat), last_updated and full-text (tsvector) triggers, sequences
no column owns, enums, domains, arrays and functions that read tables. Three tenants with
different rows go through `schema generate` → alembic → `run` → the application role's insert
with defaults in every table → `verify`, and the figures are printed (pytest -s shows them).
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
from pagila import load_rows, pagila_schema
from world import ROOT, World, custom_world

TENANTS = {"acme": 1, "globex": 2, "initech": 3}
FLAGS = ROOT / "flags" / "demo.json"
# What pagila has that the shared schema cannot carry: a person acknowledges each one.
LEFT = (
    "function public.film_in_stock(integer, integer)",
    "function public.film_not_in_stock(integer, integer)",
    "function public.get_customer_balance(integer, timestamp with time zone)",
    "function public.inventory_held_by_customer(integer)",
    "function public.inventory_in_stock(integer)",
    "function public.rewards_report(integer, numeric)",
    "materialized view public.rental_by_category",
)


def pagila_world(factory: DatabaseFactory, tmp_path: Path) -> World:
    world = custom_world(factory, tmp_path, pagila_schema(), tuple(TENANTS))
    for tenant, number in TENANTS.items():
        with world.source(tenant) as conn:
            load_rows(conn, number)
    return world


def playbook(tmp_path: Path, role: str) -> Path:
    entries = ", ".join(
        f'{{object: "{o}", reason: "reads every tenant; rewritten in the app"}}' for o in LEFT
    )
    path = tmp_path / "pagila.yaml"
    path.write_text(
        "version: 1\nname: pagila\n"
        f"target: {{dsn_env: MIGRATE_TARGET_DSN, schema: app, app_role: {role}}}\n"
        "source: {dsn_template_env: MIGRATE_SOURCE_DSN_TEMPLATE, schema: public}\n"
        f"tenants: [{', '.join(f'{{id: {t}}}' for t in TENANTS)}]\n"
        f"schema: {{leave_behind: [{entries}]}}\n"
        f"flags: {{provider: file, file_env: MIGRATE_FLAG_FILE, definitions: {FLAGS}}}\n"
        "phases:\n  - name: all\n    steps:\n      - kind: schema\n      - kind: backfill\n"
        "      - kind: validate\n"
    )
    return path


def count(conn: psycopg.Connection[object], query: str) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(str(row[0]))


def insert_everywhere_as_the_app(
    conn: psycopg.Connection[object], role: str, tenant: str
) -> dict[str, object]:
    """The application's first writes after the flip: a row in every table, keys and last_update,
    uuid, create_date, rating, fulltext… left to their defaults and triggers."""
    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
    conn.execute(SET_TENANT_SQL, (tenant,))
    keys: dict[str, object] = {}

    def insert(table: str, values: dict[str, object], returning: str) -> object:
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING {}").format(
            sql.Identifier("app", table),
            sql.SQL(", ").join(sql.Identifier(c) for c in values),
            sql.SQL(", ").join(sql.Placeholder() for _ in values),
            sql.Identifier(returning),
        )
        row = conn.execute(statement, list(values.values())).fetchone()
        assert row is not None
        keys[table] = row[0]
        return row[0]

    country = insert("country", {"country": "Newland"}, "country_id")
    city = insert("city", {"city": "New City", "country_id": country}, "city_id")
    address = insert(
        "address", {"address": "1 New St", "district": "N", "city_id": city, "phone": "1"}, "address_id"
    )
    store = insert("store", {"manager_staff_id": 100_000, "address_id": address}, "store_id")
    staff = insert(
        "staff",
        {"first_name": "N", "last_name": "S", "address_id": address, "store_id": store, "username": "n"},
        "staff_id",
    )
    customer = insert(
        "customer",
        {"store_id": store, "first_name": "N", "last_name": "C", "address_id": address},
        "customer_id",
    )
    language = insert("language", {"name": "Klingon"}, "language_id")
    film = insert(
        "film", {"title": "Shared Schema", "description": "A tale", "language_id": language}, "film_id"
    )
    row = conn.execute(
        "SELECT fulltext::text, rating::text FROM app.film WHERE film_id = %s", (film,)
    ).fetchone()
    assert row is not None and row[1] == "G"
    keys["film_fulltext"] = row[0]
    actor = insert("actor", {"first_name": "N", "last_name": "A"}, "actor_id")
    category = insert("category", {"name": "New"}, "category_id")
    insert("film_actor", {"actor_id": actor, "film_id": film}, "last_update")
    insert("film_category", {"film_id": film, "category_id": category}, "last_update")
    insert("film_embedding", {"film_id": film, "embedding": [0.5] * 20}, "last_update")
    inventory = insert("inventory", {"film_id": film, "store_id": store}, "inventory_id")
    rental = insert(
        "rental",
        {"rental_date": "2026-12-01", "inventory_id": inventory, "customer_id": customer, "staff_id": staff},
        "rental_id",
    )
    insert(  # into a partition with foreign keys of its own
        "payment",
        {
            "customer_id": customer,
            "staff_id": staff,
            "rental_id": rental,
            "amount": 1,
            "payment_date": "2022-03-15",
        },
        "payment_id",
    )
    return keys


FOREIGN_KEYS = (
    "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conparentid = 0"
    " AND connamespace = to_regnamespace(%s)"
)
INDEXES = (
    "SELECT count(*) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
    " WHERE i.relnamespace = to_regnamespace(%s)"
    " AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = x.indexrelid)"
)


def test_pagila_as_three_customers_generates_runs_takes_the_apps_inserts_and_verifies(
    database_factory: DatabaseFactory, tmp_path: Path, app_role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unacknowledged, pagila's table-reading functions and its materialized view stop `schema
    generate`; acknowledged, the revision applies (group_concat before the views over it), the three
    customers copy and validate, the app role inserts with defaults in every table, `verify` is green,
    the triggers work for the app, and an RLS-exempt reader of customer_list never crosses tenants."""
    world = pagila_world(database_factory, tmp_path)
    sources = [a for t in TENANTS for a in ("--source", f"{t}={world.source_dsn(t)}")]
    assert main(["schema", "generate", "--out", str(tmp_path / "bare"), "--json", *sources]) == 1
    report = json.loads(capsys.readouterr().out)
    errors = {f["subject"]: f["detail"] for f in report["findings"] if f["severity"] == "error"}
    assert set(errors) == set(LEFT)
    assert "reads inventory" in errors["function public.film_in_stock(integer, integer)"]
    carried = {f["subject"]: f["detail"] for f in report["findings"] if f["rule"] == "carried"}
    assert (
        "used by view public.film_list, view public.nicer_but_slower_film_list"
        in carried["aggregate public.group_concat(text)"]
    )

    book = playbook(tmp_path, app_role)
    out = tmp_path / "shared"
    generated = api.schema_generate(book, out=out, app_role=app_role, environ=world.environ)
    assert generated.ok, generated.errors
    env = {**os.environ, "MIGRATE_TARGET_DSN": world.target_dsn}
    alembic = [str(Path(sys.executable).parent / "alembic"), "-c", str(out / "alembic.ini"), "upgrade"]
    up = subprocess.run([*alembic, "head"], env=env, capture_output=True, text=True, check=False)
    assert up.returncode == 0, up.stderr

    result = api.run(book, environ=world.environ)
    assert result.ok, [t.error for t in result.tenants]
    verified = api.verify(book, environ=world.environ)
    assert verified.match
    # Part A: sequences past every tenant's values, every default there, the app role's privileges.
    assert all(r.ok for r in api.readiness(book, environ=world.environ))
    with world.target() as conn, conn.transaction(force_rollback=True):
        keys = insert_everywhere_as_the_app(conn, app_role, "globex")
    # Every key came from its shared sequence, past the largest value any of the three tenants holds.
    assert keys["film"] > 250 + 10 * 3 and keys["payment"] > 700 + 30 * 3 and keys["rental"] > 500 + 25 * 3
    assert keys["film_fulltext"] == "'schema':2 'share':1 'tale':4"
    assert api.verify(book, environ=world.environ).match  # the inserts were rolled back

    with world.target() as conn:
        shared = {"foreign keys": count(conn, FOREIGN_KEYS.replace("%s", "'app'"))}
        shared["indexes"] = count(conn, INDEXES.replace("%s", "'app'"))
        rows = {
            t: dict(
                conn.execute(
                    sql.SQL("SELECT tenant_id, count(*) FROM {} GROUP BY 1").format(sql.Identifier("app", t))
                ).fetchall()
            )
            for t in generated.shared.tenant_tables
        }
        # An RLS-exempt reader (the migrator): customer_list joins customer, address, city, country
        # and every row is one tenant's — customers, cities and countries are named by tenant.
        listed = conn.execute("SELECT name, city, country FROM app.customer_list").fetchall()
        assert len(listed) == sum(rows["customer"].values())
        assert all(
            n.rsplit("-", 1)[1] == c.split()[1].split("-")[0] == k.split()[1].split("-")[0]
            for n, c, k in listed
        )
        # As the application: an update fires last_updated, the views over group_concat answer.
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(app_role)))
            conn.execute(SET_TENANT_SQL, ("globex",))
            conn.execute("UPDATE app.actor SET first_name = 'NEW' WHERE actor_id = 1")
            touched = conn.execute(
                "SELECT last_update > '2023-01-01' FROM app.actor WHERE actor_id = 1"
            ).fetchone()
            actors = conn.execute("SELECT count(*), max(actors) FROM app.film_list").fetchone()
        assert touched == (True,)
        assert actors is not None and actors[0] > 0 and ", " in actors[1]
    with world.source("acme") as conn:
        source = {"foreign keys": count(conn, FOREIGN_KEYS.replace("%s", "'public'"))}
        source["indexes"] = count(conn, INDEXES.replace("%s", "'public'"))
    assert shared["foreign keys"] == source["foreign keys"]
    s = generated.shared
    print(
        f"\npagila: {len(s.tenant_tables)} tables, {len(s.partitions)} partitions, {len(s.types)} types, "
        f"{len(s.views)} views, {len(s.carried)} functions/aggregates/triggers/views carried "
        f"({', '.join(s.carried)}); {len(s.left_behind)} acknowledged ({', '.join(s.left_behind)}); "
        f"foreign keys source {source['foreign keys']} → shared {shared['foreign keys']}; "
        f"indexes source {source['indexes']} → shared {shared['indexes']}"
    )
    for table, by_tenant in sorted(rows.items()):
        print(f"  {table}: " + ", ".join(f"{t} {n}" for t, n in sorted(by_tenant.items())))
