"""`migrate rollback`: flags first, then data, ledgered, idempotent, and the next run re-applies."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import DatabaseFactory
from migrate import api
from migrate.adapters.flagfile import FileFlagProvider
from migrate.cli.app import main
from migrate.errors import ArgumentError
from world import DEMO, TABLES, World, make_world

TWO_POINTS = DEMO.read_text().replace(
    "      - kind: backfill", "      - rollback_point: pre-copy\n      - kind: backfill"
)


@pytest.fixture
def world(database_factory: DatabaseFactory, tmp_path: Path) -> World:
    return make_world(database_factory, tmp_path, tenants=(("acme", 1), ("globex", 1), ("initech", 1)))


@pytest.fixture
def playbook(tmp_path: Path) -> Path:
    path = tmp_path / "playbooks" / "two-points.yaml"
    path.parent.mkdir()
    path.write_text(TWO_POINTS.replace("../flags/demo.json", str(DEMO.parent.parent / "flags" / "demo.json")))
    return path


def flag_on(world: World, tenant: str) -> bool:
    return FileFlagProvider(world.flag_file).is_enabled("tenant-shared-db", tenant)


def test_rollback_to_pre_cutover_turns_the_flag_off_and_keeps_the_data(world: World) -> None:
    """Rolling back across the cut-over restores the flag for that tenant only; rows stay."""
    assert api.run(DEMO, environ=world.environ).ok
    result = api.rollback(DEMO, "acme", "pre-cutover", environ=world.environ)
    assert [s.key for s in result.steps] == ["cutover/flag"]
    assert result.seconds_to_flags is not None and result.seconds_to_flags <= result.seconds_total
    assert not flag_on(world, "acme") and flag_on(world, "globex")
    assert world.target_counts("acme") == world.source_counts("acme")
    status = {t.tenant: t for t in api.status(DEMO, environ=world.environ).tenants}
    assert status["acme"].state == "rolled back" and status["globex"].state == "done"
    again = api.run(DEMO, environ=world.environ, tenants=["acme"])
    applied = [s.key for s in again.tenants[0].steps if s.outcome == "applied"]
    assert applied == ["cutover/flag"], "a re-run after rollback re-applies only what was reverted"
    assert flag_on(world, "acme")


def test_rollback_before_the_copy_deletes_the_tenants_rows_only_then_run_restores(
    world: World, playbook: Path
) -> None:
    """Flags first, then the tenant's rows; other tenants untouched; a re-run brings it all back."""
    assert api.run(playbook, environ=world.environ).ok
    globex = world.target_counts("globex")
    result = api.rollback(playbook, "acme", "pre-copy", environ=world.environ)
    assert [s.key for s in result.steps] == ["cutover/flag", "copy/validate", "copy/backfill"]
    assert world.target_counts("acme") == dict.fromkeys(TABLES, 0)
    assert world.target_counts("globex") == globex
    assert not flag_on(world, "acme")
    again = api.rollback(playbook, "acme", "pre-copy", environ=world.environ)
    assert again.steps == []  # idempotent: nothing left to revert
    assert api.run(playbook, environ=world.environ).ok
    assert world.target_counts("acme") == world.source_counts("acme") and flag_on(world, "acme")
    with world.target() as conn:
        actions = [
            r[0]
            for r in conn.execute(
                "SELECT action FROM migrate_control.ledger WHERE tenant = 'acme' ORDER BY seq"
            )
        ]
    assert actions.count("reverted") == 3 and actions.count("rollback_started") == 2


def test_rollback_to_an_unknown_point_lists_the_points(world: World) -> None:
    """A misspelt rollback point is an input error naming the points there are."""
    with pytest.raises(ArgumentError, match="no rollback point 'pre-cutovr'") as info:
        api.rollback(DEMO, "acme", "pre-cutovr", environ=world.environ)
    assert info.value.hint and "pre-cutover" in info.value.hint


def test_cli_rollback_without_a_terminal_requires_yes(capsys: pytest.CaptureFixture[str]) -> None:
    """Scripts must say --yes: without a terminal rollback refuses before touching anything."""
    code = main(["rollback", str(DEMO), "--tenant", "acme", "--to", "pre-cutover"])
    assert code == 2 and "--yes" in capsys.readouterr().err


def test_rollback_reverts_flags_before_data_whatever_their_order_in_the_playbook(
    world: World, tmp_path: Path
) -> None:
    """Traffic first: a flag step that ran before the copy is still reverted before the data."""
    text = DEMO.read_text().replace("../flags/demo.json", str(DEMO.parent.parent / "flags" / "demo.json"))
    text = text.replace(
        "      - kind: backfill",
        "      - rollback_point: pre-copy\n"
        "      - {kind: flag, flag: tenant-shared-db, action: enable, id: early-flag}\n"
        "      - kind: backfill",
    )
    path = tmp_path / "flag-early.yaml"
    path.write_text(text)
    assert api.run(path, environ=world.environ, tenants=["acme"]).ok
    result = api.rollback(path, "acme", "pre-copy", environ=world.environ)
    assert [s.key for s in result.steps] == [
        "cutover/flag",
        "copy/early-flag",
        "copy/validate",
        "copy/backfill",
    ]
