"""Rollback acts on what the application reads: the flag target of every flip is recorded; run and
rollback refuse settings that point elsewhere (another flag file, another Unleash environment)
unless a person says the flags moved (ledgered); no flag file is created by a rollback or a dry-run."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from migrate import api
from migrate.adapters.flagfile import FileFlagProvider
from migrate.cli.app import main
from unleash_eyes import playbook_flag, unleash_playbook
from unleash_server import UnleashEndpoint
from world import DEMO, World

FLAG = "tenant-shared-db"
pytestmark = pytest.mark.tenants("acme", "globex", "initech")
SETTINGS = ("MIGRATE_TARGET_DSN", "MIGRATE_SOURCE_DSN_TEMPLATE", "MIGRATE_FLAG_FILE", "UNLEASH_ENVIRONMENT")


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Any]:
    def run(environ: dict[str, str], *args: str) -> tuple[int, str, str]:
        for key in SETTINGS:
            monkeypatch.delenv(key, raising=False)
        for key, value in environ.items():
            monkeypatch.setenv(key, value)
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def on_in(path: Path) -> list[str]:
    return FileFlagProvider(path).tenants(FLAG)


def ledger_actions(world: World) -> list[tuple[str, str | None, Any]]:
    with world.target() as conn:
        rows = conn.execute(
            "SELECT action, tenant, details FROM migrate_control.ledger ORDER BY seq"
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def test_a_rollback_or_run_with_another_flag_file_refuses_naming_both_and_creates_nothing(
    world: World, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    """acme was cut over in file A; with MIGRATE_FLAG_FILE pointing at B (absent): rollback, run and
    dry-run exit 2 naming A and B, B is never created, A still has acme on."""
    assert api.run(DEMO, ["acme"], environ=world.environ).ok
    a = world.flag_file
    b = tmp_path / "elsewhere" / "flags.json"
    b.parent.mkdir()
    moved = {**world.environ, "MIGRATE_FLAG_FILE": str(b)}
    rollback = ("rollback", str(DEMO), "--tenant", "acme", "--to", "pre-cutover", "--yes")
    for args in (
        (*rollback, "--discard-writes-since-cutover"),
        ("run", str(DEMO), "--tenant", "acme"),
        ("run", str(DEMO), "--dry-run"),
    ):
        code, out, err = cli(moved, *args)
        assert code == 2, (args, out, err)
        assert str(a.resolve()) in err and str(b.resolve()) in err and "--flags-moved" in err
        assert not b.exists(), f"{args[0]} created the flag file the application does not read"
    assert on_in(a) == ["acme"]


def test_flags_moved_is_ledgered_acts_on_the_new_place_and_the_records_follow(
    world: World, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    """The application now reads B (a copy of A): the rollback refuses until --flags-moved, then turns
    acme off in B (A untouched), ledgers flags_moved from A to B; the next run needs no option."""
    assert api.run(DEMO, ["acme"], environ=world.environ).ok
    a, b = world.flag_file, tmp_path / "moved.json"
    shutil.copy(a, b)
    moved = {**world.environ, "MIGRATE_FLAG_FILE": str(b)}
    rollback = ("rollback", str(DEMO), "--tenant", "acme", "--to", "pre-cutover", "--yes")
    code, _out, err = cli(moved, *rollback, "--discard-writes-since-cutover")
    assert code == 2 and "--flags-moved" in err
    code, _out, err = cli(moved, *rollback, "--discard-writes-since-cutover", "--flags-moved")
    assert code == 0, err
    assert on_in(b) == [] and on_in(a) == ["acme"]
    entries = [e for e in ledger_actions(world) if e[0] == "flags_moved"]
    assert len(entries) == 1 and entries[0][1] == "acme"
    assert entries[0][2]["from"][0]["path"] == str(a.resolve())
    assert entries[0][2]["to"] == {"provider": "file", "path": str(b.resolve())}
    code, _out, err = cli(moved, "run", str(DEMO), "--tenant", "acme")
    assert code == 0, err
    assert on_in(b) == ["acme"] and on_in(a) == ["acme"]


def test_a_dry_run_and_a_rollback_never_create_a_flag_file_a_first_run_does(
    world: World, cli: Callable[..., Any]
) -> None:
    """Nothing flipped yet and no flag file: a rehearsal reports off -> on without creating it; the first
    real run creates it."""
    assert not world.flag_file.exists()
    code, out, err = cli(world.environ, "run", str(DEMO), "--dry-run")
    assert code == 0, err
    assert f"flags: {FLAG}: off -> on" in out
    assert not world.flag_file.exists(), "the rehearsal created the flag file"
    code, _out, err = cli(world.environ, "rollback", str(DEMO), "--all-tenants", "--to", "pre-copy", "--yes")
    assert code == 0, err
    assert not world.flag_file.exists(), "the rollback created the flag file"
    code, _out, err = cli(world.environ, "run", str(DEMO), "--tenant", "acme")
    assert code == 0, err
    assert on_in(world.flag_file) == ["acme"]


def test_a_flag_file_deleted_after_a_cutover_is_not_made_anew_by_a_run(
    world: World, cli: Callable[..., Any]
) -> None:
    """acme is on in the file, which then disappears: the next run's flip refuses (it would turn every
    other cut-over tenant off for the application) instead of creating an empty file."""
    assert api.run(DEMO, ["acme"], environ=world.environ).ok
    saved = world.flag_file.read_text()
    world.flag_file.unlink()
    result = api.run(DEMO, ["globex", "initech"], environ=world.environ)
    assert not result.ok and not world.flag_file.exists()
    errors = [t.error.message for t in result.tenants if t.error is not None]
    assert errors and all("does not exist" in e for e in errors)
    world.flag_file.write_text(saved)
    assert api.run(DEMO, environ=world.environ).ok


def test_an_unleash_rollback_with_another_environment_refuses_naming_both(
    world: World, unleash: UnleashEndpoint, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    """Cut over in the endpoint's environment; UNLEASH_ENVIRONMENT=production for the rollback: exit 2
    naming both environments; the tenant stays on where the application reads."""
    playbook = unleash_playbook(tmp_path)
    flag = playbook_flag(playbook)
    environ = {**world.environ, **unleash.environ()}
    api.flags_sync(playbook, environ=environ)
    assert api.run(playbook, ["acme"], environ=environ).ok
    other = "production" if unleash.environment != "production" else "development"
    code, _out, err = cli(
        {**environ, "UNLEASH_ENVIRONMENT": other},
        "rollback", str(playbook), "--tenant", "acme", "--to", "pre-cutover", "--yes",
        "--discard-writes-since-cutover",
    )  # fmt: skip
    assert code == 2, err
    assert f"environment {unleash.environment}" in err and f"environment {other}" in err
    details = api.status(playbook, environ=environ)
    assert details.tenants[0].flags[flag] is True
    with world.target() as conn:
        row = conn.execute(
            "SELECT details->'target' FROM migrate_control.step_state WHERE tenant = 'acme'"
            " AND step_key = 'cutover/flag'"
        ).fetchone()
    assert row is not None and json.loads(json.dumps(row[0]))["environment"] == unleash.environment
    assert "@" not in row[0]["url"]
