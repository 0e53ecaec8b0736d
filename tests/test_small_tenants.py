"""A small tenant's fixed cost: tables with no row are finished together, not a chunk each."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from databases import DatabaseFactory
from migrate import api
from migrate.steps.context import ProgressEvent
from test_backfill import playbook
from world import custom_world

SOME_EMPTY = """
CREATE TABLE projects (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE tasks (id bigint PRIMARY KEY, project_id bigint NOT NULL REFERENCES projects (id));
CREATE TABLE notes (id bigint PRIMARY KEY, body text);
INSERT INTO projects SELECT p, 'project ' || p FROM generate_series(1, 10) AS p;
"""


def test_tables_without_rows_get_finished_checkpoints_without_a_chunk(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """tasks and notes are empty in the source: each has a finished checkpoint of 0 rows (written
    together, outside the chunk loop), the step's verify passes, and a second run has nothing to copy."""
    world = custom_world(database_factory, tmp_path, SOME_EMPTY, ("acme",))
    book = playbook(tmp_path, ("acme",))
    with capture_logs() as logs:
        result = api.run(book, environ=world.environ)
    assert result.ok, result.tenants[0].error
    chunks = {e["table"] for e in logs if e["event"] == "chunk_copied"}
    assert chunks == {"projects"}
    with world.target() as conn:
        done = conn.execute(
            "SELECT table_name, rows_copied, done FROM migrate_control.checkpoints"
            " WHERE tenant = 'acme' ORDER BY table_name"
        ).fetchall()
    assert done == [("notes", 0, True), ("projects", 10, True), ("tasks", 0, True)]
    again = api.run(book, environ=world.environ)
    assert again.ok and again.tenants[0].rows_copied_now == 0


def test_a_source_schema_changed_between_two_tenants_of_one_run_is_seen(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """acme and globex start with the same schema, so globex could reuse the shared schema built for
    acme (catalog/built.py); between the two tenants of one run globex's source gains a table and a
    column. globex's session reads its catalog afresh, the build is not reused (its source differs),
    the new table is created in the shared schema, and both tenants' rows arrive."""
    world = custom_world(database_factory, tmp_path, SOME_EMPTY, ("acme", "globex"))
    book = playbook(tmp_path, ("acme", "globex"))

    def change_globex(event: ProgressEvent) -> None:
        if event.kind == "tenant_finished" and event.tenant == "acme":
            with world.source("globex") as conn:
                conn.execute(
                    "CREATE TABLE labels (id bigint PRIMARY KEY, note_id bigint REFERENCES notes (id),"
                    " colour text NOT NULL DEFAULT 'red');"
                    "INSERT INTO notes VALUES (1, 'one'); INSERT INTO labels VALUES (7, 1, 'blue')"
                )

    result = api.run(book, environ=world.environ, progress=change_globex)
    assert [t.outcome for t in result.tenants] == ["done", "done"], [t.error for t in result.tenants]
    with world.target() as conn:
        labels = conn.execute("SELECT tenant_id, id, note_id, colour FROM app.labels").fetchall()
    assert labels == [("globex", 7, 1, "blue")]


def test_equal_source_schemas_share_one_build_and_a_different_one_gets_its_own() -> None:
    """The run's cache of built shared schemas is found again only by an equal source schema."""
    from dataclasses import replace

    from migrate.catalog import ddl
    from migrate.catalog.built import SharedSchemas
    from migrate.catalog.reflect import Column, SourceSchema, SourceTable

    table = SourceTable("notes", (Column("id", "bigint", True, None, False),), ("id",), (), ())
    one = SourceSchema(name="public", tables={"notes": table})
    options = ddl.Options(schema="app")
    cache = SharedSchemas()
    first = cache.build(one, options)
    again = cache.build(SourceSchema(name="public", tables={"notes": table}), options)
    assert again is first and cache.hits == 1
    wider = replace(table, columns=(*table.columns, Column("body", "text", False, None, False)))
    other = cache.build(SourceSchema(name="public", tables={"notes": wider}), options)
    assert other is not first and any("body" in s.sql for s in other.upgrade)
    assert cache.build(one, ddl.Options(schema="elsewhere")) is not first
