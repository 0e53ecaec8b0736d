"""`migrate demo` as a user runs it: a subprocess, no settings, nothing left running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def postgres_processes(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "postgres" in line and marker in line]


def migrate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATE_")}
    return subprocess.run(
        [sys.executable, "-m", "migrate", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_demo_moves_three_tenants_and_leaves_nothing_running() -> None:
    """The demo moves three tenants online, one while its application writes, every write arriving and the
    freeze under a second; then it cleans up."""
    proc = migrate("demo")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 tenants migrated" in proc.stdout and "counts and checksums match" in proc.stdout
    assert "hash chain verified" in proc.stdout
    # acme's application wrote throughout its online migration: every write arrived, the freeze was short.
    assert "to acme during its migration; every one arrived" in proc.stdout, proc.stdout[-1500:]
    assert "writes frozen for: acme 0." in proc.stdout
    assert not postgres_processes("tenant-migrate-demo-")
    # Piped, as in CI: no value cut to fit 80 columns, no log line unless asked for.
    shown = proc.stdout.split("\nnext:")[0]  # the status and the figures, before the closing words
    row = next(line for line in shown.splitlines() if line.startswith("acme "))
    assert "…" not in shown and row.split()[:6] == ["acme", "eu", "canary", "cutover", "cutover", "done"]
    assert [line for line in proc.stderr.splitlines() if not line.startswith("· ")] == []


def test_demo_keep_prints_exports_that_work_with_the_real_commands() -> None:
    """--keep leaves a server the real commands reach with the printed exports; --stop removes it."""
    from databases import scratch_dir

    base = scratch_dir("tm-keep-")
    base.chmod(0o755)  # mkdtemp's 0700 would keep the server's account out
    keep = base / "demo"
    proc = migrate("demo", "--keep", str(keep))
    try:
        assert proc.returncode == 0, proc.stderr[-2000:]
        exports = dict(
            line.strip().removeprefix("export ").split("=", 1)
            for line in proc.stdout.splitlines()
            if line.strip().startswith("export MIGRATE_")
        )
        assert set(exports) == {"MIGRATE_TARGET_DSN", "MIGRATE_SOURCE_DSN_TEMPLATE", "MIGRATE_FLAG_FILE"}
        env = {**os.environ, **{k: v.strip("'") for k, v in exports.items()}}
        status = subprocess.run(
            [sys.executable, "-m", "migrate", "status", "playbooks/online.yaml", "--json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert status.stdout.count('"state": "done"') == 3
    finally:
        stop = migrate("demo", "--stop", str(keep))
    assert stop.returncode == 0, stop.stderr
    assert not keep.exists() and not postgres_processes(str(keep))
    base.rmdir()
