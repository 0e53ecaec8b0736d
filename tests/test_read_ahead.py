"""Reading the next tenants' sources while the workers copy the current ones (engine/ahead.py).

The read ahead must be used (or it saves nothing), must change no outcome and no error, and must
never leave a source connection open: not for a tenant another runner holds, nor for one whose
source fails, nor at the end of a run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import migrate.engine.run as engine_run
from databases import DatabaseFactory
from migrate import api
from migrate.engine.ahead import ReadAhead
from migrate.playbook import load_playbook
from test_backfill import playbook
from world import World, custom_world

SMALL = """
CREATE TABLE projects (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE tasks (id bigint PRIMARY KEY, project_id bigint NOT NULL REFERENCES projects (id));
INSERT INTO projects SELECT p, 'project ' || p FROM generate_series(1, 5) AS p;
INSERT INTO tasks SELECT t, 1 + t % 5 FROM generate_series(1, 40) AS t;
"""
TENANTS = ("acme", "globex", "initech", "umbrella", "hooli")


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[ReadAhead]:
    """Every ReadAhead the run makes (a spy on the real class: what it read and what was taken)."""
    made: list[ReadAhead] = []

    class Spied(ReadAhead):
        def __init__(self, plans: Any, read: Any, **kwargs: Any) -> None:
            self.read_for: list[str] = []  # the tenants whose source it read

            def spied(plan: Any) -> Any:
                got = read(plan)
                self.read_for.append(plan.tenant.id)
                return got

            super().__init__(plans, spied, **kwargs)
            made.append(self)

    monkeypatch.setattr(engine_run, "ReadAhead", Spied)
    return made


def source_connections(world: World) -> int:
    """Connections to the world's source databases now (a closed one may take a moment to go)."""
    with psycopg.connect(world.admin_dsn, autocommit=True) as conn:
        for _ in range(100):
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE %s AND pid <> pg_backend_pid()",
                (world.prefix.replace("_", r"\_") + "%",),
            ).fetchone()
            if row is None or row[0] == 0:
                return 0
            time.sleep(0.02)
        return int(row[0])


def test_the_next_tenants_are_read_ahead_and_every_outcome_is_the_same(
    database_factory: DatabaseFactory, tmp_path: Path, seen: list[ReadAhead]
) -> None:
    """One job, five tenants: the tenants after the first find their source read (the session takes
    it over), every tenant is done with its rows, and no source connection outlives the run."""
    world = custom_world(database_factory, tmp_path, SMALL, TENANTS)
    result = api.run(playbook(tmp_path, TENANTS), environ=world.environ)
    assert result.ok, [t.error for t in result.tenants]
    assert sum(r.taken for r in seen) >= len(TENANTS) - 1  # all but the first: read while another ran
    with world.target() as conn:
        counted = conn.execute(
            "SELECT tenant_id, (SELECT count(*) FROM app.tasks t WHERE t.tenant_id = p.tenant_id), count(*)"
            " FROM app.projects p GROUP BY tenant_id"
        ).fetchall()
    assert sorted(counted) == sorted((t, 40, 5) for t in TENANTS)
    assert source_connections(world) == 0


def test_a_tenant_another_runner_holds_leaves_no_source_connection_read_for_it(
    database_factory: DatabaseFactory, tmp_path: Path, seen: list[ReadAhead]
) -> None:
    """globex is read ahead while acme runs, then found locked by another runner: it is reported
    locked as always, and the connection read for it is closed, not left for the run's end."""
    world = custom_world(database_factory, tmp_path, SMALL, TENANTS[:3])
    book = playbook(tmp_path, TENANTS[:3])
    env = api.environment(load_playbook(book), world.environ)
    assert api.run(book, tenants=["initech"], environ=world.environ).ok  # the control schema exists
    seen.clear()
    with world.target() as other:
        env.control.lock_tenant(other, "globex")
        result = api.run(book, environ=world.environ)
        outcomes = {t.tenant: t.outcome for t in result.tenants}
        assert outcomes == {"acme": "done", "globex": "locked", "initech": "done"}
        assert "globex" in seen[0].read_for  # read while acme ran, then never taken
        assert source_connections(world) == 0  # while the other runner still holds globex


def test_a_source_that_fails_when_read_ahead_fails_its_tenant_with_the_same_error(
    database_factory: DatabaseFactory, tmp_path: Path, seen: list[ReadAhead]
) -> None:
    """globex's database is gone: reading it ahead fails quietly, its session reads it again itself
    and the tenant fails naming the database, as without read-ahead; the others are done."""
    world = custom_world(database_factory, tmp_path, SMALL, TENANTS[:3])
    with psycopg.connect(world.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(world.prefix + "globex")))
    result = api.run(playbook(tmp_path, TENANTS[:3]), environ=world.environ)
    by_tenant = {t.tenant: t for t in result.tenants}
    assert by_tenant["acme"].outcome == by_tenant["initech"].outcome == "done"
    error = by_tenant["globex"].error
    assert by_tenant["globex"].outcome == "failed" and error is not None
    assert world.prefix + "globex" in error.message and "does not exist" in error.message, error.message
    assert seen and seen[0].taken >= 1  # initech's read was still taken
    assert source_connections(world) == 0
