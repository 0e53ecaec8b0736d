"""Secrets are never echoed: a DSN pasted into a playbook, credentials inside UNLEASH_URL or a DSN, and a
secret in an error, are masked by the one redaction function on every output path — CLI stdout and
stderr (text and JSON), the run's JSON and JUnit reports, the ledger, the run state, and the logs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from migrate import api
from migrate.cli.app import main
from migrate.errors import StepFailed
from migrate.log import redact
from migrate.steps.validate import ValidateStep
from unleash_eyes import unleash_playbook
from world import DEMO, ROOT, World

pytestmark = pytest.mark.tenants("acme")
SECRET = "s3cr3t-Pa55"
SETTINGS = (
    "MIGRATE_TARGET_DSN",
    "MIGRATE_SOURCE_DSN_TEMPLATE",
    "MIGRATE_FLAG_FILE",
    "UNLEASH_URL",
    "UNLEASH_ADMIN_TOKEN",
    "UNLEASH_CLIENT_TOKEN",
    "UNLEASH_ENVIRONMENT",
    "MIGRATE_LOG_LEVEL",
)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Any]:
    def run(environ: dict[str, str], *args: str) -> tuple[int, str]:
        for key in SETTINGS:
            monkeypatch.delenv(key, raising=False)
        for key, value in environ.items():
            monkeypatch.setenv(key, value)
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://migrator:s3cr3t-Pa55@db.internal:5432/shared",
        "host=db.internal user=migrator password=s3cr3t-Pa55 dbname=shared",
        "https://admin:s3cr3t-Pa55@unleash.example.com/api",
        "https://s3cr3t-Pa55@unleash.example.com",
        "Authorization: Bearer s3cr3t-Pa55",
        "api_key=s3cr3t-Pa55",
    ],
)
def test_the_one_redaction_function_masks_every_shape_of_credential(text: str) -> None:
    """DSN passwords (URL and key=value), http(s) userinfo of either shape, tokens and headers."""
    assert SECRET not in redact(text) and "***" in redact(text)


def test_a_dsn_pasted_into_dsn_env_is_refused_without_echoing_it(
    tmp_path: Path, cli: Callable[..., Any]
) -> None:
    """`dsn_env: postgresql://user:PASSWORD@…`: exit 2 at the line, saying to name a variable; the
    password appears in no output of plan, run or status (a real process, stdout and stderr)."""
    book = tmp_path / "pasted.yaml"
    book.write_text(
        DEMO.read_text().replace(
            "dsn_env: MIGRATE_TARGET_DSN", f"dsn_env: postgresql://migrator:{SECRET}@db.internal:5432/shared"
        )
    )
    for command in ("plan", "run", "status"):
        done = subprocess.run(
            [sys.executable, "-m", "migrate", command, str(book)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "MIGRATE_LOG_LEVEL": "debug"},
        )
        assert done.returncode == 2, done.stderr
        assert SECRET not in done.stdout + done.stderr
        assert "names an environment variable" in done.stderr and f"{book}:" in done.stderr


def test_credentials_inside_unleash_url_or_a_dsn_never_reach_a_screen(
    world: World, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    """UNLEASH_URL with user:password or a token as user, a target DSN with a password, all pointing at
    servers that do not answer: run, status (text and JSON) and flags status say what failed, without
    the credentials."""
    port = closed_port()
    playbook = unleash_playbook(tmp_path)
    for url in (f"http://admin:{SECRET}@127.0.0.1:{port}", f"http://{SECRET}@127.0.0.1:{port}/api"):
        environ = {
            **world.environ,
            "UNLEASH_URL": url,
            "UNLEASH_ADMIN_TOKEN": "*:*.admin",
            "UNLEASH_CLIENT_TOKEN": "default:development.client",
            "UNLEASH_ENVIRONMENT": "development",
            "MIGRATE_LOG_LEVEL": "debug",
        }
        for args in (
            ("run", str(playbook)),
            ("status", str(playbook)),
            ("status", str(playbook), "--json"),
            ("flags", "status", str(playbook)),
            ("flags", "sync", str(playbook)),
        ):
            _code, said = cli(environ, *args)
            assert SECRET not in said, (url, args, said)
            assert f"127.0.0.1:{port}" in said, (args, said)  # what failed is still said
    down = {**world.environ, "MIGRATE_TARGET_DSN": f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/x"}
    for args in (("run", str(DEMO)), ("status", str(DEMO)), ("ledger", "show", str(DEMO))):
        code, said = cli({**down, "MIGRATE_LOG_LEVEL": "debug"}, *args)
        assert code == 1 and SECRET not in said and "does not answer" in said, said


def test_a_secret_in_a_step_error_is_masked_in_reports_ledger_state_status_and_logs(
    world: World, tmp_path: Path, cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step fails with an error that carries a DSN with its password (planted: no real part of ours
    says one): the JSON and JUnit reports, the ledger, the step's recorded error, status text and JSON
    and the log lines all keep the failure and mask the password."""
    dsn = f"postgresql://migrator:{SECRET}@replica.internal:5432/app"

    def failing(self: ValidateStep, ctx: Any) -> dict[str, Any]:
        raise StepFailed(f"could not compare with the replica {dsn}", hint=f"check {dsn}")

    monkeypatch.setattr(ValidateStep, "apply", failing)
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    environ = {**world.environ, "MIGRATE_LOG_LEVEL": "info"}
    code, said = cli(environ, "run", str(DEMO), "--report", str(report), "--junit", str(junit))
    assert code == 1 and "could not compare with the replica" in said and SECRET not in said
    for path in (report, junit):
        text = path.read_text()
        assert "could not compare with the replica" in text and SECRET not in text, path
    assert json.loads(report.read_text())["tenants"][0]["outcome"] == "failed"
    with world.target() as conn:
        stored = conn.execute(
            "SELECT string_agg(details::text, ' ') FROM migrate_control.ledger"
        ).fetchone()
        state = conn.execute(
            "SELECT string_agg(coalesce(error, ''), ' ') FROM migrate_control.step_state"
        ).fetchone()
    assert stored is not None and "could not compare" in stored[0] and SECRET not in stored[0]
    assert state is not None and "could not compare" in state[0] and SECRET not in state[0]
    assert api.ledger(DEMO, environ=world.environ).why is None, "redaction happens before the chain"
    for args in (("status", str(DEMO)), ("status", str(DEMO), "--json"), ("ledger", "show", str(DEMO))):
        _code, said = cli(environ, *args)
        assert SECRET not in said, (args, said)
