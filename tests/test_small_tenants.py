"""A small tenant's fixed cost: tables with no row are finished together, not a chunk each."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from databases import DatabaseFactory
from migrate import api
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
