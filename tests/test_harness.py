"""The test harness itself: the world a marker asks for, databases gone with their test, and the
throwaway cluster's settings."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

import cluster
from cluster import SETTINGS, installed_bin_dir
from databases import DatabaseFactory, chosen_backend
from world import World


@pytest.mark.tenants("globex", acme=2)
def test_the_world_has_the_tenants_its_marker_names_at_their_scales(world: World) -> None:
    """@pytest.mark.tenants("globex", acme=2): globex at scale 1 then acme at scale 2, each a source."""
    assert world.tenants == {"globex": 1, "acme": 2}
    assert world.source_counts("acme")["tasks"] == 2 * world.source_counts("globex")["tasks"] > 0


def existing(admin_dsn: str, *names: str) -> set[str]:
    with psycopg.connect(admin_dsn) as conn:
        return {
            r[0]
            for r in conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (list(names),))
        }


def dbname(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["dbname"])


def test_a_scope_drops_what_it_made_or_was_given_when_it_ends_and_only_that(pg_admin_dsn: str) -> None:
    """Where drops are cheap, a test's scope drops its databases at close(); the session's stay."""
    session = DatabaseFactory(pg_admin_dsn, drop_early=True)
    kept = dbname(session.create("kept"))
    scope = session.scoped()
    made = dbname(scope.create("made"))
    given = f"tm_test_given_{uuid.uuid4().hex[:8]}"  # created by the test itself, as make_world's sources
    scope.register(given)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(given)))

    scope.close()

    assert existing(pg_admin_dsn, kept, made, given) == {kept}
    assert scope.created == [] and session.created == [kept]
    session.drop_all()
    assert existing(pg_admin_dsn, kept) == set()


def test_where_drops_are_dear_a_scopes_databases_wait_for_the_sessions_end(pg_admin_dsn: str) -> None:
    """With fsync on (drop_early=False), close() leaves a test's databases to the session's drop_all."""
    session = DatabaseFactory(pg_admin_dsn, drop_early=False)
    scope = session.scoped()
    made = dbname(scope.create("made"))

    scope.close()

    assert existing(pg_admin_dsn, made) == {made} and session.created == [made]
    session.drop_all()
    assert existing(pg_admin_dsn, made) == set()


def test_a_throwaway_cluster_trades_durability_for_speed_and_decodes_logically(pg_admin_dsn: str) -> None:
    """fsync and synchronous commit off, wal_level logical: a logical slot is created and dropped."""
    if chosen_backend() not in ("cluster", "embedded"):
        pytest.skip(f"the {chosen_backend()} backend is not a throwaway cluster of the tests' own")
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        found: dict[str, str] = dict(
            conn.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(SETTINGS),))
        )
        conn.execute("SELECT pg_create_logical_replication_slot('tm_test_harness', 'pgoutput')")
        conn.execute("SELECT pg_drop_replication_slot('tm_test_harness')")
    assert found == {name: value.strip("'") for name, value in SETTINGS.items()}


def test_the_cluster_comes_from_the_newest_installed_postgresql_14_or_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of /usr/lib/postgresql/{13,15,16,17}/bin, 16 wins: 13 is too old, 17 lacks initdb."""
    for major, tools in (
        ("13", cluster.TOOLS),
        ("15", cluster.TOOLS),
        ("16", cluster.TOOLS),
        ("17", ("pg_ctl",)),
    ):
        (tmp_path / major / "bin").mkdir(parents=True)
        for tool in tools:
            (tmp_path / major / "bin" / tool).touch()
    monkeypatch.setattr(cluster, "INSTALLED", tmp_path)
    assert installed_bin_dir() == tmp_path / "16" / "bin"


def test_without_installed_postgresql_the_backend_is_another_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No /usr/lib/postgresql/N/bin: the choice falls to the next backend (local, docker or embedded)."""
    monkeypatch.setattr(cluster, "INSTALLED", tmp_path)
    monkeypatch.delenv("MIGRATE_TEST_BACKEND", raising=False)
    monkeypatch.delenv("MIGRATE_TEST_DSN", raising=False)
    assert installed_bin_dir() is None
    assert chosen_backend.__wrapped__() in ("local", "docker", "embedded")
