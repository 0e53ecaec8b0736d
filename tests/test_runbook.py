"""`migrate runbook`: Markdown from the same plan `run` follows — every command it prints is accepted by
the CLI, every step and rollback point is in it, a rehearsal's figures go in, and the example in
runbooks/ is what the command writes today."""

from __future__ import annotations

import json
import shlex
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from migrate import api
from migrate.cli.app import main
from migrate.plan import build_plan
from migrate.playbook import load_playbook
from world import DEMO, ROOT, World

EXAMPLE = ROOT / "runbooks" / "demo.md"
EXAMPLE_REPORT = ROOT / "runbooks" / "demo-rehearsal.json"
SETTINGS = (
    "MIGRATE_TARGET_DSN",
    "MIGRATE_EU_TARGET_DSN",
    "MIGRATE_US_TARGET_DSN",
    "MIGRATE_SOURCE_DSN_TEMPLATE",
    "MIGRATE_FLAG_FILE",
)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def commands(markdown: str) -> list[list[str]]:
    """Every `$ migrate …` line of the runbook's code blocks, as argument lists."""
    return [
        shlex.split(line.removeprefix("$ migrate "))
        for line in markdown.splitlines()
        if line.startswith("$ migrate ")
    ]


def gated(tmp_path: Path) -> Path:
    text = DEMO.read_text().replace("../flags/demo.json", str(ROOT / "flags" / "demo.json"))
    path = tmp_path / "gated.yaml"
    path.write_text(text.replace("  - name: main\n", "  - name: main\n    approval: true\n"))
    return path


@pytest.mark.parametrize("which", ["demo", "gated", "regions"])
def test_every_command_the_runbook_prints_is_accepted_by_the_cli(
    which: str, tmp_path: Path, cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each `$ migrate …` line, run as it stands against a target that does not answer: never exit 2
    (an argument, option, point or wave the CLI would refuse), never an internal error."""
    book = {"demo": DEMO, "regions": ROOT / "playbooks" / "demo-regions.yaml"}.get(which) or gated(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, markdown, err = cli({}, "runbook", str(book))
    assert code == 0, err
    found = commands(markdown)
    verbs = {args[0] for args in found}
    assert {"plan", "run", "status", "rollback", "ledger"} <= verbs
    assert ("approve" in verbs) == (which == "gated")
    port = closed_port()
    environ = {
        "MIGRATE_TARGET_DSN": f"postgresql://postgres@127.0.0.1:{port}/shared",
        "MIGRATE_EU_TARGET_DSN": f"postgresql://postgres@127.0.0.1:{port}/shared_eu",
        "MIGRATE_US_TARGET_DSN": f"postgresql://postgres@127.0.0.1:{port}/shared_us",
        "MIGRATE_SOURCE_DSN_TEMPLATE": f"postgresql://postgres@127.0.0.1:{port}/{{tenant}}",
        "MIGRATE_FLAG_FILE": str(tmp_path / "flags.json"),
    }
    for args in found:
        code, _out, err = cli(environ, *args)
        assert code in (0, 1), (args, err)
        assert "internal error" not in err and "No such option" not in err, (args, err)


def test_the_runbook_follows_the_plan_wave_by_wave_with_every_step_point_and_check() -> None:
    """Every wave in order with its run and status commands; every step with what it checks; every
    rollback point with its command; a tenant's own runbook names only that tenant's wave."""
    markdown = api.runbook(DEMO)
    plan = build_plan(load_playbook(DEMO))
    at = [markdown.index(f"Wave {w.name} (") for w in plan.waves]
    assert at == sorted(at)
    for step in plan.tenants[0].steps:
        if step.is_point:
            point = step.step_id[1:]
            assert f"rollback point `{point}`" in markdown and f"| `{point}` |" in markdown
        else:
            assert step.spec is not None and step.spec.checks() in markdown
    for wave in plan.waves:
        assert f"$ migrate run {DEMO} --wave {wave.name}" in markdown
    assert "--discard-writes-since-cutover" in markdown and f"version `{plan.digest[:12]}`" in markdown
    only = api.runbook(DEMO, ["globex"])
    assert "Wave main (globex)" in only and "Wave canary" not in only


@pytest.mark.tenants("acme", "globex", "initech")
def test_a_rehearsal_report_puts_its_figures_in_and_a_stale_one_is_flagged(
    world: World, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    """A real rehearsal's --report: per tenant and step its seconds and rows copied; a report of another
    playbook version is flagged; a file that is no report is exit 2."""
    report = tmp_path / "rehearsal.json"
    code, _out, err = cli(world.environ, "run", str(DEMO), "--dry-run", "--report", str(report))
    assert code == 0, err
    data = json.loads(report.read_text())
    rows = next(s["details"]["copied_now"] for s in data["tenants"][0]["steps"] if s["kind"] == "backfill")
    code, markdown, err = cli({}, "runbook", str(DEMO), "--report", str(report))
    assert code == 0, err
    line = next(r for r in markdown.splitlines() if r.startswith("| acme |"))
    assert f"{rows:,} rows" in line and " s" in line
    assert "Warning" not in markdown
    data["playbook_digest"] = "0" * 64
    report.write_text(json.dumps(data))
    code, markdown, _err = cli({}, "runbook", str(DEMO), "--report", str(report))
    assert code == 0 and "**Warning:** that report is of playbook version `000000000000`" in markdown
    report.write_text("{}")
    code, _out, err = cli({}, "runbook", str(DEMO), "--report", str(report))
    assert code == 2 and "not a rehearsal report" in err


def test_the_example_in_runbooks_is_what_the_command_writes_today(
    cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """runbooks/demo.md is `migrate runbook playbooks/demo.yaml --report runbooks/demo-rehearsal.json`
    (run from the clone's root): regenerate it when the plan or the runbook change."""
    monkeypatch.chdir(ROOT)
    args = ("runbook", "playbooks/demo.yaml", "--report", "runbooks/demo-rehearsal.json")
    code, markdown, err = cli({}, *args)
    assert code == 0, err
    assert markdown == EXAMPLE.read_text(), (
        "runbooks/demo.md is stale: migrate runbook playbooks/demo.yaml --report "
        "runbooks/demo-rehearsal.json > runbooks/demo.md"
    )
