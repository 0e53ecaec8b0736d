"""Every up-front check of an online migration, provoked for real: exit 2 naming the setting and the fix,
with nothing created — no control schema, no publication, no slot, no REVOKE."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from live import APP_ROLE, LiveWorld, dsn_for, live_world, make_live_world
from migrate import api
from migrate.adapters.embedded import start_server
from migrate.cli.app import main
from migrate.errors import SettingsError


@pytest.fixture
def live(logical_admin_dsn: str, tmp_path: Path) -> Iterator[LiveWorld]:
    with live_world(logical_admin_dsn, tmp_path, {"acme": 1}) as world:
        yield world


def refused(world: LiveWorld, environ: dict[str, str] | None = None) -> str:
    """The run's SettingsError, after checking that it created nothing anywhere."""
    with pytest.raises(SettingsError) as caught:
        api.run(world.playbook, environ=environ or world.environ)
    with psycopg.connect(world.target_dsn) as conn:
        assert conn.execute("SELECT to_regnamespace('migrate_control')").fetchone() == (None,)
    with world.source("acme") as conn:
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'tm_live_acme'"
        ).fetchone() in ((0,), (1,))
    return caught.value.message


def role(world: LiveWorld, statement: str, name: str) -> str:
    """A role made for one test (roles are cluster-wide: a fresh name each time)."""
    unique = f"{name}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(world.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(statement).format(sql.Identifier(unique)))
    return unique


def on_source(world: LiveWorld, statement: str, *params: Any) -> None:
    with world.source("acme") as conn:
        conn.execute(statement, params)


CASES: dict[str, tuple[Callable[[LiveWorld], dict[str, str] | None], str, str]] = {}


def case(setting: str, fix: str) -> Callable[[Callable[[LiveWorld], dict[str, str] | None]], Any]:
    def register(provoke: Callable[[LiveWorld], dict[str, str] | None]) -> Any:
        CASES[provoke.__name__] = (provoke, setting, fix)
        return provoke

    return register


@case("has no REPLICATION right", "ALTER ROLE")
def no_replication_right(world: LiveWorld) -> dict[str, str]:
    user = role(world, "CREATE ROLE {} LOGIN", "tm_norepl")
    on_source(world, f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{user}"')
    template = dsn_for(world.admin_dsn, f"{world.prefix}{{tenant}}", user=user)
    return {**world.environ, "MIGRATE_SOURCE_DSN_TEMPLATE": template}


@case("table audit_log: has no primary key", "REPLICA IDENTITY USING INDEX")
def table_without_key(world: LiveWorld) -> None:
    on_source(world, "CREATE TABLE audit_log (at timestamptz NOT NULL, message text)")


@case(
    "replication slot tm_live_acme: is named for this playbook, but no run of it made it",
    "pg_drop_replication_slot('tm_live_acme')",
)
def leftover_slot(world: LiveWorld) -> None:
    on_source(world, "SELECT pg_create_logical_replication_slot('tm_live_acme', 'pgoutput')")


@case("has been open for", "pg_terminate_backend")
def long_transaction(world: LiveWorld) -> None:
    world.write_playbook(cutover="slot_wait: 0.5s")
    blocker = world.source("acme")
    blocker.execute("BEGIN")
    blocker.execute("UPDATE organizations SET name = name WHERE id = 1")
    LONG.append(blocker)
    time.sleep(0.7)


LONG: list[psycopg.Connection[Any]] = []


@case("source.app_roles: role tm_ghost does not exist", "name the roles the application connects as")
def missing_app_role(world: LiveWorld) -> None:
    world.playbook.write_text(
        world.playbook.read_text().replace(f"app_roles: [{APP_ROLE}]", "app_roles: [tm_ghost]")
    )


@case("is a superuser: no REVOKE can stop it", "NOSUPERUSER")
def superuser_app_role(world: LiveWorld) -> None:
    user = role(world, "CREATE ROLE {} LOGIN SUPERUSER", "tm_root")
    world.playbook.write_text(
        world.playbook.read_text().replace(f"app_roles: [{APP_ROLE}]", f"app_roles: [{user}]")
    )


@case("can write table tasks but is not among the application roles", "add tm_cron")
def uncovered_writer(world: LiveWorld) -> None:
    user = role(world, "CREATE ROLE {} LOGIN", "tm_cron")
    on_source(world, f'GRANT INSERT ON tasks TO "{user}"')


@case("everyone (PUBLIC) can write table comments", "FROM PUBLIC")
def public_writer(world: LiveWorld) -> None:
    on_source(world, "GRANT UPDATE ON comments TO PUBLIC")


@case("holds a column grant to write tasks.title", "grant on the table instead")
def column_grant(world: LiveWorld) -> None:
    on_source(world, f'GRANT UPDATE (title) ON tasks TO "{APP_ROLE}"')


@case(
    "on the target: may not set session_replication_role", "GRANT SET ON PARAMETER session_replication_role"
)
def target_without_replica_role(world: LiveWorld) -> dict[str, str]:
    user = role(world, "CREATE ROLE {} LOGIN BYPASSRLS", "tm_writer")
    target = dsn_for(world.admin_dsn, f"{world.prefix}target", user=user)
    return {**world.environ, "MIGRATE_TARGET_DSN": target}


@pytest.mark.parametrize("name", list(CASES))
def test_each_up_front_check_refuses_naming_the_setting_and_the_fix(name: str, live: LiveWorld) -> None:
    """The provoked problem is an input error that names what to change and how, before anything exists."""
    provoke, setting, fix = CASES[name]
    environ = provoke(live)
    try:
        message = refused(live, environ)
    finally:
        while LONG:
            LONG.pop().close()
    assert setting in message and fix in message, message


@pytest.fixture
def cramped(server_root: Path) -> str:
    """A server without logical decoding, one slot, one WAL sender, only test_decoding allowed, no WAL cap."""
    server = start_server(
        server_root,
        settings={
            "wal_level": "replica",
            "max_replication_slots": "1",
            "max_wal_senders": "1",
            "output_plugin_libraries": "test_decoding",
        },
    )
    return server.dsn()


def test_a_server_without_logical_decoding_free_slots_senders_pgoutput_or_wal_cap_is_refused(
    cramped: str, tmp_path: Path
) -> None:
    """wal_level replica, slots and WAL senders all taken, pgoutput not allowed, max_slot_wal_keep_size -1:
    each named with its fix."""
    with psycopg.connect(cramped, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(APP_ROLE)))
        conn.execute("SELECT pg_create_physical_replication_slot('someone_else')")
    world = make_live_world(cramped, tmp_path, {"acme": 1}, [])
    sender = psycopg.connect(dsn_for(cramped, "postgres", replication="database"), autocommit=True)
    try:
        message = refused(world)
    finally:
        sender.close()
    for setting, fix in (
        ("wal_level: is 'replica'", "ALTER SYSTEM SET wal_level = logical, then restart"),
        ("max_replication_slots: every replication slot is in use", "raise max_replication_slots"),
        ("max_wal_senders: no WAL sender is free", "raise max_wal_senders"),
        (
            "output_plugin_libraries: is 'test_decoding', without pgoutput",
            "output_plugin_libraries = pgoutput",
        ),
        ("max_slot_wal_keep_size: is -1", "max_slot_wal_keep_size = '10GB'"),
    ):
        assert setting in message and fix in message, message


def test_the_cli_exits_2_with_the_problems_and_creates_nothing(
    live: LiveWorld, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`migrate run` on a source that cannot be captured: exit 2, the setting and the fix on stderr."""
    on_source(live, "CREATE TABLE audit_log (at timestamptz NOT NULL, message text)")
    for key, value in live.environ.items():
        monkeypatch.setenv(key, value)
    assert main(["run", str(live.playbook)]) == 2
    err = capsys.readouterr().err
    assert "table audit_log: has no primary key" in err and "hint: fix each, then run again" in err
