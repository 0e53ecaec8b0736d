"""One exit-code contract for every command, for source and target alike (README, 'Exit codes'):
0 success, 1 a step or check failed or a server did not answer at run time, 2 bad input or
settings, 130 stopped on request. And a run that fails before its first step says so in status."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from databases import dsn_for
from migrate import api
from migrate.cli.app import EXIT_CODES, app, main
from world import DEMO, World

SETTINGS = ("MIGRATE_TARGET_DSN", "MIGRATE_SOURCE_DSN_TEMPLATE", "MIGRATE_FLAG_FILE", "MIGRATE_ACTOR")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Any]:
    """``cli(environ, *args)``: `migrate …` in-process with exactly those settings; (code, out, err)."""

    def run(environ: dict[str, str], *args: str) -> tuple[int, str, str]:
        for key in SETTINGS:
            monkeypatch.delenv(key, raising=False)
        for key, value in environ.items():
            monkeypatch.setenv(key, value)
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def all_commands() -> set[str]:
    """Every command of the CLI, sub-commands as 'group command': found, not listed by hand."""
    names = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    for group in app.registered_groups:
        assert group.typer_instance is not None
        names |= {f"{group.name} {c.name}" for c in group.typer_instance.registered_commands}
    return {n.replace("_", "-") for n in names}


# Per command: arguments that are wrong (exit 2), and arguments that reach a target that does not
# answer (exit 1) — None where the command needs no server.
MISSING = "no/such/playbook.yaml"
CASES: dict[str, tuple[list[str], list[str] | None]] = {
    "demo": (["demo", "--keep", "/tmp/a", "--stop", "/tmp/b"], None),
    "plan": (["plan", MISSING], None),
    "runbook": (["runbook", MISSING], None),
    "run": (["run", MISSING], ["run", str(DEMO)]),
    "readiness": (["readiness", MISSING], ["readiness", str(DEMO)]),
    "approve": (["approve", MISSING, "--wave", "main"], ["approve", str(DEMO), "--wave", "main"]),
    "status": (["status", MISSING], ["status", str(DEMO)]),
    "verify": (["verify", MISSING], ["verify", str(DEMO)]),
    "diff": (
        ["diff", MISSING, "--tenant", "acme", "--table", "tasks"],
        ["diff", str(DEMO), "--tenant", "acme", "--table", "tasks"],
    ),
    "rollback": (
        ["rollback", MISSING, "--tenant", "acme", "--to", "pre-copy", "--yes"],
        ["rollback", str(DEMO), "--tenant", "acme", "--to", "pre-copy", "--yes"],
    ),
    "isolation-check": (
        ["isolation-check", MISSING, "--app-role", "app"],
        ["isolation-check", str(DEMO), "--app-role", "app"],
    ),
    "flags status": (["flags", "status", MISSING], ["flags", "status", str(DEMO)]),
    "flags sync": (["flags", "sync", MISSING], None),
    "ledger show": (["ledger", "show", MISSING], ["ledger", "show", str(DEMO)]),
    "ledger verify": (["ledger", "verify", MISSING], ["ledger", "verify", str(DEMO)]),
    "ledger export": (["ledger", "export", MISSING], ["ledger", "export", str(DEMO)]),
    "ledger keys": (["ledger", "keys", MISSING], ["ledger", "keys", str(DEMO)]),
    "ledger keygen": (["ledger", "keygen", "--out", "no/such/folder/ledger.key"], None),
    "residency set": (
        ["residency", "set", MISSING, "--region", "default"],
        ["residency", "set", str(DEMO), "--region", "default"],
    ),
    "residency report": (["residency", "report", MISSING], ["residency", "report", str(DEMO)]),
    "schema generate": (
        ["schema", "generate", "--out", "/tmp/x"],
        ["schema", "generate", "--source", "acme=postgresql://postgres@127.0.0.1:{port}/x", "--out", "{dir}"],
    ),
}


def test_every_command_is_in_the_exit_code_cases_and_the_contract_is_in_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A new command must say how it exits here; `migrate --help` states the contract."""
    assert all_commands() == set(CASES)
    assert main(["--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    for code in ("0 success", "1 a step or check failed", "2 bad input or settings", "130 stopped"):
        assert code in shown and code in EXIT_CODES


@pytest.mark.parametrize("command", sorted(CASES))
def test_bad_input_exits_2_and_an_unreachable_target_exits_1(
    command: str, cli: Callable[..., Any], tmp_path: Path
) -> None:
    """Per command: a wrong argument is exit 2; a target (or source) that does not answer is exit 1,
    said as such ('does not answer'), never as a setting to check."""
    port = closed_port()
    environ = {
        "MIGRATE_TARGET_DSN": f"postgresql://postgres@127.0.0.1:{port}/shared",
        "MIGRATE_SOURCE_DSN_TEMPLATE": f"postgresql://postgres@127.0.0.1:{port}/src_{{tenant}}",
        "MIGRATE_FLAG_FILE": str(tmp_path / "flags.json"),
    }
    bad, unreachable = CASES[command]
    code, _out, err = cli(environ, *bad)
    assert code == 2, err
    assert "internal error" not in err
    if unreachable is None:
        return
    args = [a.format(port=port, dir=tmp_path / "out") for a in unreachable]
    code, _out, err = cli(environ, *args)
    assert code == 1, err
    assert "does not answer" in err and "internal error" not in err


@pytest.mark.tenants("acme", "globex", "initech")
def test_source_and_target_alike_unreachable_is_1_and_a_refused_setting_is_2(
    world: World, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    """An unreachable source exits 1 like an unreachable target; a database that does not exist exits 2
    on either side."""
    port = closed_port()
    down = f"postgresql://postgres@127.0.0.1:{port}"
    cases = {
        "target unreachable": ({"MIGRATE_TARGET_DSN": f"{down}/shared"}, 1),
        "source unreachable": ({"MIGRATE_SOURCE_DSN_TEMPLATE": f"{down}/src_{{tenant}}"}, 1),
        "target database missing": ({"MIGRATE_TARGET_DSN": dsn_for(world.admin_dsn, "tm_no_such_db")}, 2),
        "source database missing": (
            {"MIGRATE_SOURCE_DSN_TEMPLATE": dsn_for(world.admin_dsn, "tm_no_such_{tenant}")},
            2,
        ),
    }
    for case, (override, expected) in cases.items():
        code, out, err = cli({**world.environ, **override}, "run", str(DEMO), "--tenant", "acme")
        assert code == expected, (case, out, err)
        said = out + err
        assert ("does not answer" in said) == (expected == 1), (case, said)


@pytest.mark.tenants("acme")
@pytest.mark.parametrize("cause", ["source unreachable", "missing table"])
def test_a_run_that_fails_before_its_first_step_shows_the_failure_and_the_fix_in_status(
    cause: str, world: World, tmp_path: Path
) -> None:
    """Its source down, or a table the playbook names missing: the tenant is 'failed' at its first step
    with the error (not 'not started'), ledgered; once fixed, the next run finishes it."""
    book = tmp_path / "book.yaml"
    text = DEMO.read_text().replace("../flags/demo.json", str(DEMO.parent.parent / "flags" / "demo.json"))
    environ: dict[str, str] = dict(world.environ)
    if cause == "missing table":
        text = text.replace("tables: auto", "tables: [organizations, users, invoices]")
        expected = "invoices"
    else:
        environ["MIGRATE_SOURCE_DSN_TEMPLATE"] = f"postgresql://postgres@127.0.0.1:{closed_port()}/{{tenant}}"
        expected = "does not answer"
    book.write_text(text)
    result = api.run(book, ["acme"], environ=environ)
    assert result.tenants[0].outcome == "failed" and result.exit_code == 1
    shown = api.status(book, environ=environ).tenants[0]
    assert shown.state == "failed" and shown.current is not None
    assert shown.current.key == "prepare/schema" and expected in (shown.current.error or "")
    with World.target(world) as conn:
        entry = conn.execute(
            "SELECT action, step, details->>'error' FROM migrate_control.ledger WHERE tenant = 'acme'"
            " ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    assert entry is not None and entry[:2] == ("failed", "prepare/schema") and expected in entry[2]
    if cause == "source unreachable":
        assert api.run(book, ["acme"], environ=world.environ).ok
        assert api.status(book, environ=world.environ).tenants[0].state == "done"
