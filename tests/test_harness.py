"""The test harness itself: the world a marker asks for, and databases gone with their test."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from databases import DatabaseFactory
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
