"""Every argument is checked before any I/O: a typo is named, against a target that does not answer.

No database here: the target DSN points at a closed port, so a test passes only if the
typo is found before a connection is tried, and nothing is written (no flag file, no report).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrate import api
from migrate.errors import ArgumentError, MigrateError, PlaybookError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "playbooks" / "demo.yaml"


def closed_port() -> int:
    """A port nothing listens on: bound once by us, then let go."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    port = closed_port()
    return {
        "MIGRATE_TARGET_DSN": f"postgresql://postgres@127.0.0.1:{port}/shared",
        "MIGRATE_SOURCE_DSN_TEMPLATE": f"postgresql://postgres@127.0.0.1:{port}/src_{{tenant}}",
        "MIGRATE_FLAG_FILE": str(tmp_path / "flags.json"),
        "MIGRATE_ACTOR": "pytest",
    }


def nothing_written(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


def refused(call: object, *args: object, **kwargs: object) -> MigrateError:
    """The error ``call`` raises, which must come before any connection (well under the 10 s timeout)."""
    started = time.monotonic()
    with pytest.raises(MigrateError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    assert time.monotonic() - started < 2.0, "the typo was found only after trying to connect"
    return caught.value


def test_a_misspelt_wave_is_named_with_the_waves_that_exist(tmp_path: Path, environ: dict[str, str]) -> None:
    """run --wave mian: an argument error naming --wave and the playbook's waves, no flag file written."""
    error = refused(api.run, DEMO, wave="mian", environ=environ)
    assert isinstance(error, ArgumentError) and error.where == "--wave"
    assert "'mian'" in error.message and error.hint is not None and "main" in error.hint
    assert "canary, main" in error.hint
    assert nothing_written(tmp_path) == []


def test_a_misspelt_rollback_point_is_named_before_any_connection(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    """rollback --to pre-cutovr: the point is checked against the plan before the target is reached."""
    for call in (api.rollback, api.rollback_preview):
        error = refused(call, DEMO, ["acme"], "pre-cutovr", environ=environ)
        assert isinstance(error, ArgumentError) and error.where == "--to"
        assert error.hint is not None and "pre-copy, pre-cutover" in error.hint
    assert nothing_written(tmp_path) == []


@pytest.mark.parametrize("where", ["missing-folder", "a-file-as-folder", "a-folder"])
def test_an_unusable_report_path_is_refused_before_any_row_moves(
    where: str, tmp_path: Path, environ: dict[str, str]
) -> None:
    """--report into a folder that does not exist, under a file, or naming a folder: refused first."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    path = {
        "missing-folder": tmp_path / "nope" / "r.json",
        "a-file-as-folder": tmp_path / "file" / "r.json",
        "a-folder": tmp_path / "dir",
    }[where]
    error = refused(api.run, DEMO, environ=environ, outputs=[("--report", path)])
    assert isinstance(error, ArgumentError) and error.where == "--report"
    assert nothing_written(tmp_path) == ["dir", "file"]


def test_a_selection_of_nobody_is_an_input_error(tmp_path: Path, environ: dict[str, str]) -> None:
    """--tenant acme --wave main selects nobody (acme is in the canary): exit 2, not a run of nothing."""
    error = refused(api.run, DEMO, ["acme"], wave="main", environ=environ)
    assert isinstance(error, ArgumentError) and error.where == "--wave"
    assert "select no tenant" in error.message and error.hint is not None and "globex" in error.hint
    assert nothing_written(tmp_path) == []


def test_a_wave_without_tenants_selects_nobody(tmp_path: Path, environ: dict[str, str]) -> None:
    """A declared wave that holds no tenant: run --wave of it is refused, not a silent success."""
    book = tmp_path / "p.yaml"
    book.write_text(DEMO.read_text().replace("  - name: main\n", "  - name: main\n  - name: later\n"))
    (tmp_path / "flags").mkdir()
    (tmp_path / "flags" / "demo.json").write_text((ROOT / "flags" / "demo.json").read_text())
    error = refused(api.run, book, wave="later", environ=environ)
    assert isinstance(error, ArgumentError) and "select no tenant" in error.message
    assert not (tmp_path / "flags.json").exists()


def test_a_flag_step_naming_an_undefined_flag_is_a_playbook_error(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    """A flag step whose flag the definitions lack: file:line of the step's flag, before any I/O."""
    book = tmp_path / "p.yaml"
    text = DEMO.read_text().replace("flag: tenant-shared-db", "flag: tenant-shared-dbb")
    book.write_text(text.replace("../flags/demo.json", str(ROOT / "flags" / "demo.json")))
    error = refused(api.run, book, environ=environ)
    assert isinstance(error, PlaybookError)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "tenant-shared-dbb" in t)
    assert error.where == f"{book}:{line}: phases[2].steps[0].flag"
    assert error.hint is not None and "tenant-shared-db" in error.hint
    assert not (tmp_path / "flags.json").exists()


def test_ledger_export_into_a_missing_folder_is_refused_before_connecting(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    """ledger export --out into a folder that does not exist: named, and no partial file left."""
    error = refused(api.ledger_export, DEMO, tmp_path / "nope" / "l.jsonl", environ=environ)
    assert isinstance(error, ArgumentError) and error.where == "--out"
    assert nothing_written(tmp_path) == []


def test_the_cli_exits_2_naming_the_typo_and_writes_nothing(tmp_path: Path, environ: dict[str, str]) -> None:
    """`migrate run playbooks/demo.yaml --wave mian` against a closed port: exit 2, --wave named, no file."""
    report = str(tmp_path / "r.json")
    done = subprocess.run(
        [sys.executable, "-m", "migrate", "run", str(DEMO), "--wave", "mian", "--report", report],
        env={"PATH": "/usr/bin:/bin", **environ},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "--wave" in done.stderr and "canary, main" in done.stderr
    assert "Traceback" not in done.stderr and "cannot connect" not in done.stderr
    assert nothing_written(tmp_path) == []


def test_every_name_the_api_exports_is_its_home_definition_whatever_was_imported_first() -> None:
    """api.run is the function even after its module was imported directly (lazy names, no shadowing)."""
    probe = (
        "import importlib, pkgutil, migrate.api as api\n"
        "for m in pkgutil.iter_modules(api.__path__): importlib.import_module('migrate.api.' + m.name)\n"
        "bad = [n for n in api.__all__ if type(getattr(api, n)).__name__ == 'module']\n"
        "assert not bad, bad\n"
        "assert api.run is importlib.import_module(api._HOME['run']).run\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
