"""Counts and checksums computed in SQL on both sides: equal data is judged equal, any change is
caught, in both checksum modes; `migrate verify` and the validate step report and gate on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from databases import DatabaseFactory, dsn_for
from migrate import api
from migrate.adapters.embedded import start_server
from migrate.checks.checksum import MODES, Mode, choose_mode, mode_for
from migrate.cli.app import main
from pairs import Pair, build_pair
from world import DEMO, World, corrupt_globex_as_it_is_copied

pytestmark = pytest.mark.tenants("acme", "globex")  # the world of `migrated`


@pytest.fixture
def pair(database_factory: DatabaseFactory) -> Iterator[Pair]:
    p = build_pair(database_factory.create("vsrc"), database_factory.create("vdst"))
    try:
        yield p
    finally:
        p.source.close()
        p.target.close()


def test_the_mode_follows_the_servers_major_versions() -> None:
    """Same major (14+): hash of the values; different majors, or before 14: md5 of the row text."""
    assert mode_for(150004, 150020) == "hash"
    assert mode_for(180006, 180001) == "hash"
    assert mode_for(150020, 180006) == "text"
    assert mode_for(180006, 170002) == "text"
    assert mode_for(130010, 130010) == "text"


@pytest.mark.parametrize("mode", MODES)
def test_equal_data_is_judged_equal_whatever_its_spelling_and_the_session(pair: Pair, mode: Mode) -> None:
    """jsonb key order, numeric scale, offsets and time zones, float and bytea output, enums."""
    figures = pair.figures(mode)
    assert figures.source.rows == figures.target.rows == 3
    assert figures.match, figures


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "change",
    [
        "UPDATE app.things SET note = '' WHERE tenant_id = 'acme' AND id = 1",  # NULL -> ''
        "UPDATE app.things SET label = NULL WHERE tenant_id = 'acme' AND id = 2",  # '' -> NULL
        "UPDATE app.things SET blob = '' WHERE tenant_id = 'acme' AND id = 3",  # NULL -> empty bytea
        "UPDATE app.things SET label = NULL, note = 'Zoë' WHERE tenant_id = 'acme' AND id = 1",  # moved
        "UPDATE app.things SET doc = 'null' WHERE tenant_id = 'acme' AND id = 3",  # SQL NULL -> JSON null
        "UPDATE app.things SET amount = 1.51 WHERE tenant_id = 'acme' AND id = 1",
        "UPDATE app.things SET at = at + interval '1 microsecond' WHERE tenant_id = 'acme' AND id = 1",
        "UPDATE app.things SET feeling = 'sad' WHERE tenant_id = 'acme' AND id = 1",
        "UPDATE app.things SET tags = '{x,\"y z\",\"\"}' WHERE tenant_id = 'acme' AND id = 1",
        "UPDATE app.things SET tenant_id = 'initech' WHERE tenant_id = 'acme' AND id = 2",
        "UPDATE app.things SET raw = '{\"a\":2,\"b\":1}' WHERE tenant_id = 'acme' AND id = 1",
        "UPDATE app.things SET raw = '{\"b\":1,\"a\":2,\"a\":2}' WHERE tenant_id = 'acme' AND id = 1",
        "UPDATE app.things SET raw = '{\"b\": 1,\"a\":2}' WHERE tenant_id = 'acme' AND id = 1",
        "UPDATE app.things SET zero = '-0' WHERE tenant_id = 'acme' AND id = 1",
        "UPDATE app.things SET zero = 'Infinity' WHERE tenant_id = 'acme' AND id = 2",
        "UPDATE app.things SET tags = '{{x,\"y z\",NULL}}' WHERE tenant_id = 'acme' AND id = 1",
        "UPDATE app.things SET tags = '{x,\"y z\",NULL,NULL}' WHERE tenant_id = 'acme' AND id = 1",
        "UPDATE app.things SET span = '26:03:04.5' WHERE tenant_id = 'acme' AND id = 1",
    ],
    ids=[
        "null-to-empty",
        "empty-to-null",
        "null-to-empty-bytea",
        "value-moved-column",
        "sql-null-to-json-null",
        "numeric",
        "microsecond",
        "enum",
        "array-null-to-empty",
        "other-tenant",
        "json-key-order",
        "json-duplicate-key",
        "json-whitespace",
        "float-minus-zero",
        "float-nan-to-infinity",
        "array-dimensions",
        "array-one-more-null",
        "interval-spelling",
    ],
)
def test_any_change_of_a_value_is_caught(pair: Pair, mode: Mode, change: str) -> None:
    """NULL and '' stay distinct, and so does any changed value or a row moved to another tenant."""
    assert pair.figures(mode).match
    pair.target.execute(change)
    assert not pair.figures(mode).match


def test_checksums_match_across_major_versions(database_factory: DatabaseFactory, server_root: Path) -> None:
    """A source on another server (another major where the test server is not 18) is judged equal."""
    server = start_server(server_root)
    source_dsn = server.dsn()
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE vsrc")
    p = build_pair(dsn_for(source_dsn, "vsrc"), database_factory.create("vdst"))
    try:
        mode = choose_mode(p.source, p.target)
        assert mode == mode_for(p.source.info.server_version, p.target.info.server_version)
        assert p.figures(mode).match
        p.target.execute("UPDATE app.things SET note = '' WHERE tenant_id = 'acme' AND id = 1")
        assert not p.figures(mode).match
    finally:
        p.source.close()
        p.target.close()


# ----------------------------------------------------------------------------- migrate verify
@pytest.fixture
def migrated(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    """acme migrated, globex not; the world's settings in the environment, for the CLI."""
    assert api.run(DEMO, environ=world.environ, tenants=["acme"]).ok
    for key, value in world.environ.items():
        monkeypatch.setenv(key, value)
    return world


def test_verify_prints_figures_per_table_and_exits_0_when_all_match(
    migrated: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every table of the tenant is listed with its counts; all match, exit 0."""
    assert main(["verify", str(DEMO), "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    for table in ("organizations", "users", "projects", "tasks", "comments", "attachments"):
        assert table in out
    assert "counts and checksums match" in out
    assert "hash_record_extended" in out


def test_verify_exits_1_naming_the_table_that_differs(
    migrated: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """A changed row in the target: exit 1, the table named, and the diff command to run next."""
    with migrated.target() as conn:
        conn.execute("UPDATE app.comments SET body = body || ' ' WHERE tenant_id = 'acme' AND id = 3")
    assert main(["verify", str(DEMO), "--tenant", "acme", "--table", "comments", "--table", "tasks"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH acme/comments: checksums differ (rows 400 vs 400, checksums " in out
    assert "migrate diff PLAYBOOK --tenant acme --table comments" in out
    assert "acme/tasks" not in out and "users" not in out
    assert "1 of 2 table(s) differ" in out


def test_verify_reports_a_tenant_not_yet_copied_as_a_mismatch(
    migrated: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """globex was never copied: its row counts differ from its source, exit 1."""
    assert main(["verify", str(DEMO), "--tenant", "globex", "--table", "tasks"]) == 1
    assert "MISMATCH globex/tasks: row counts differ (rows 200 vs 0," in capsys.readouterr().out


def test_verify_refuses_an_unknown_table_naming_the_known_ones(
    migrated: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """--table with a name the playbook does not migrate is an input error (exit 2) with a hint."""
    assert main(["verify", str(DEMO), "--table", "taskz"]) == 2
    err = capsys.readouterr().err
    assert "--table: table 'taskz' is not among the tables" in err
    assert "hint: its tables are: organizations, users" in err


# ----------------------------------------------------------------------------- the validate step
def test_a_failed_validation_stops_the_tenant_before_cutover_and_says_why(migrated: World) -> None:
    """A corrupt copy fails validate: no flag flip, the error and the ledger name the table and figures."""
    corrupt_globex_as_it_is_copied(migrated)
    result = api.run(DEMO, environ=migrated.environ, tenants=["globex"])
    (tenant,) = result.tenants
    assert tenant.outcome == "failed"
    assert tenant.error is not None
    assert "tasks (rows 200 vs 200, checksums differ)" in tenant.error.message
    assert [s.outcome for s in tenant.steps if s.kind == "flag"] == []  # the cut-over never ran
    from migrate.adapters.flagfile import FileFlagProvider

    assert FileFlagProvider(migrated.flag_file).tenants("tenant-shared-db") == ["acme"]
    state = api.status(DEMO, ["globex"], environ=migrated.environ).tenants[0]
    assert state.state == "failed"
    assert state.error is not None and "tasks (rows 200 vs 200, checksums differ)" in state.error
    with migrated.target() as conn:
        details = conn.execute(
            sql.SQL(
                "SELECT details::text FROM migrate_control.ledger"
                " WHERE tenant = 'globex' AND action = 'failed' ORDER BY seq DESC LIMIT 1"
            )
        ).fetchone()
    assert details is not None and "tasks (rows 200 vs 200, checksums differ)" in details[0]
    # Repaired, the next run validates and cuts over.
    with migrated.target() as conn:
        conn.execute("DROP TRIGGER corrupt ON app.tasks")
        conn.execute("UPDATE app.tasks SET title = rtrim(title, '!') WHERE tenant_id = 'globex' AND id = 5")
    assert api.run(DEMO, environ=migrated.environ, tenants=["globex"]).ok


def test_a_failed_validation_keeps_its_figures_in_the_ledger_and_step_state(migrated: World) -> None:
    """The per-table figures of a failed validation are in its ledger entry and its step state."""
    corrupt_globex_as_it_is_copied(migrated)
    assert not api.run(DEMO, environ=migrated.environ, tenants=["globex"]).ok
    with migrated.target() as conn:
        ledger = conn.execute(
            "SELECT details FROM migrate_control.ledger"
            " WHERE tenant = 'globex' AND action = 'failed' ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        state = conn.execute(
            "SELECT details FROM migrate_control.step_state"
            " WHERE tenant = 'globex' AND step_key = 'copy/validate'"
        ).fetchone()
    assert ledger is not None and state is not None
    for details in (ledger[0], state[0]):
        assert details["tables"]["tasks"]["match"] is False
        assert details["tables"]["tasks"]["source_rows"] == details["tables"]["tasks"]["target_rows"] == 200
        assert details["tables"]["comments"]["match"] is True


@pytest.mark.tenants("acme")
def test_verify_before_the_shared_tables_exist_says_what_to_run(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No shared table yet: exit 1 naming the table, with the command that creates it."""
    for key, value in world.environ.items():
        monkeypatch.setenv(key, value)
    assert main(["verify", str(DEMO), "--tenant", "acme"]) == 1
    err = capsys.readouterr().err
    assert 'error: target app.organizations: relation "app.organizations" does not exist' in err
    assert "hint: create the shared tables first: run the playbook's schema step ('migrate run')" in err
