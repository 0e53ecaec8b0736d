"""A real Citus cluster for the tests and for CI: a coordinator and two workers.

As a pytest plugin (``pytest_plugins`` in conftest.py) it gives:

- ``citus`` (session): the coordinator's admin DSN (a superuser; its ``postgres``
  database). ``MIGRATE_TEST_CITUS_DSN`` when set (a user's own cluster: every worker
  must accept the same credentials from here); else a cluster started here from
  the vendored source; else the test is skipped — or fails, with
  ``MIGRATE_TEST_REQUIRE_CITUS=1`` (set by ``.ci/run``).
- ``citus_database`` (per test): a new database on every node with the extension, the
  workers added: its coordinator DSN. Dropped on every node when the test ends.

As a script, for ``.ci/run`` and by hand::

    python tests/citus_server.py build                 # once per machine (root: apt + make install)
    python tests/citus_server.py start --state DIR     # prints `export MIGRATE_TEST_CITUS_DSN=…`
    python tests/citus_server.py stop --state DIR

How a cluster is had (shared/notes/citus.md has the measured facts):

- Citus is not packaged for this machine (Debian bookworm, PostgreSQL 15): it is built
  from the source release ``MIGRATE_CITUS_SOURCE`` names — by default
  ``../shared/vendor/citus-v13.2.2-notest.tar.gz`` beside the clone, checked against its
  SHA-256 — by ``tests/citus/cluster.sh build`` (apt build deps, two small fixes for
  PostgreSQL 15.20, ``make install`` into ``/usr/lib/postgresql/15``: root). That install
  is the cache: once ``citus.so`` carries the version, the build is skipped (0.2 s). The
  build tree lives in ``~/.cache/tenant-migrate/citus-<version>-<machine>``;
- the servers run as the unprivileged OS user ``citus`` (created by the script), on three
  free ports, with trust auth on 127.0.0.1, fsync off, ``wal_level = logical``, in a
  state folder of their own; ``citus.so`` is preloaded only there, never on the
  machine's own server.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrate.adapters import citus as citus_db

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "citus" / "cluster.sh"
VERSION = "13.2.2"
SOURCE_NAME = f"citus-v{VERSION}-notest.tar.gz"
SOURCE_SHA256 = "5a8340644f00342d0333995a0a9f06e8428d3c6a452b04e93e3c5b4c6110af48"
# Where the release is looked for when MIGRATE_CITUS_SOURCE is not set: shared/vendor/ beside the
# clone, else the workplace's own shared/vendor/ (a clone made elsewhere, e.g. in /tmp).
DEFAULT_SOURCES = (
    ROOT.parent / "shared" / "vendor" / SOURCE_NAME,
    Path("/work/shared/vendor") / SOURCE_NAME,
)
SOURCE_VAR = "MIGRATE_CITUS_SOURCE"
DSN_VAR = "MIGRATE_TEST_CITUS_DSN"
REQUIRE_VAR = "MIGRATE_TEST_REQUIRE_CITUS"
OS_USER = "citus"


class Unavailable(RuntimeError):
    """No Citus cluster can be had here (no source, not root, the build or start failed)."""


def source_path() -> Path:
    named = os.environ.get(SOURCE_VAR)
    found = [p for p in DEFAULT_SOURCES if p.is_file()]
    path = Path(named) if named else (found[0] if found else DEFAULT_SOURCES[0])
    if not path.is_file():
        raise Unavailable(
            f"no Citus source release at {path}: set {SOURCE_VAR} to citus-v{VERSION}-notest.tar.gz "
            "(shared/vendor/ beside the clone)"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if path.name == SOURCE_NAME and digest != SOURCE_SHA256:
        raise Unavailable(f"{path}: SHA-256 {digest}, expected {SOURCE_SHA256}")
    return path


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tenant-migrate"
    return base / f"citus-{VERSION}-{platform.machine()}-{platform.node()}"


def _script(command: str, *args: str, env: dict[str, str], timeout: float = 900) -> str:
    done = subprocess.run(
        ["bash", str(SCRIPT), command, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise Unavailable(f"cluster.sh {command} failed: {(done.stderr or done.stdout).strip()[-1500:]}")
    return done.stderr


def installed() -> bool:
    """``citus.so`` of this version is in the machine's PostgreSQL 15 (what a build leaves)."""
    lib = Path("/usr/lib/postgresql/15/lib/citus.so")
    return lib.is_file() and f"Citus {VERSION} ".encode() in lib.read_bytes()


def ensure_built() -> float:
    """Build and install Citus unless this version is installed; the seconds it took."""
    if installed():
        return 0.0
    if os.geteuid() != 0:
        raise Unavailable(
            f"Citus {VERSION} is not installed and building it needs root (apt build deps, make install): "
            f"run 'sudo {sys.executable} tests/citus_server.py build' once"
        )
    source = source_path()
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    _script("build", str(source), env={"CITUS_BASE": str(base)})
    seconds = time.monotonic() - started
    (base / "built").write_text(f"built from {source} in {seconds:.1f} s\n")
    return seconds


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env(state: Path) -> dict[str, str]:
    ports = (state / "ports").read_text().split()
    return {
        "CITUS_BASE": str(state),
        "CITUS_PORTS": " ".join(ports),
        "CITUS_OS_USER": OS_USER,
    }


def start(state: Path) -> tuple[str, float]:
    """Start a coordinator and two workers in ``state`` (free ports); (admin DSN, seconds)."""
    state.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        state.chmod(0o755)  # the servers run as OS user citus
    if not (state / "ports").exists():
        (state / "ports").write_text(" ".join(str(p) for p in _free_ports(3)))
    started = time.monotonic()
    _script("start", env=_env(state), timeout=300)
    return dsn(state), time.monotonic() - started


def dsn(state: Path) -> str:
    port = (state / "ports").read_text().split()[0]
    return f"postgresql://{OS_USER}@127.0.0.1:{port}/postgres"


def stop(state: Path) -> None:
    if (state / "ports").exists():
        _script("destroy", env=_env(state), timeout=120)
    shutil.rmtree(state, ignore_errors=True)


# ----------------------------------------------------------------------------- databases
# A new database on every node: the product's own helper (the demo uses it too).
create_database = citus_db.create_database
drop_database = citus_db.drop_database


# ----------------------------------------------------------------------------- pytest plugin
def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_VAR) == "1":
        pytest.fail(f"{reason} ({REQUIRE_VAR}=1)", pytrace=False)
    pytest.skip(reason)


def pytest_report_header(config: pytest.Config) -> str:
    if os.environ.get(DSN_VAR):
        return f"citus: {DSN_VAR}"
    return (
        f"citus: {VERSION} {'installed' if installed() else 'to build'}, a cluster started when a test asks"
    )


@pytest.fixture(scope="session")
def citus() -> Iterator[str]:
    given = os.environ.get(DSN_VAR)
    if given:
        yield given
        return
    state = Path(tempfile.mkdtemp(prefix="tm-citus-"))
    try:
        try:
            ensure_built()
            admin, _seconds = start(state)
        except Unavailable as exc:
            _unavailable(str(exc))
        yield admin
    finally:
        with contextlib.suppress(Unavailable):
            stop(state)


@pytest.fixture
def citus_database(citus: str) -> Iterator[str]:
    name = f"tm_test_citus_{uuid.uuid4().hex[:8]}"
    try:
        yield create_database(citus, name)
    finally:
        drop_database(citus, name)


# ----------------------------------------------------------------------------- script
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build and install Citus from the vendored source (root), unless installed")
    for name in ("start", "stop"):
        p = sub.add_parser(name)
        p.add_argument("--state", type=Path, required=True, help="the cluster's folder")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            seconds = ensure_built()
            print(
                f"citus {VERSION}: " + (f"built in {seconds:.1f} s" if seconds else "already installed"),
                file=sys.stderr,
            )
        elif args.command == "start":
            ensure_built()
            admin, seconds = start(args.state)
            print(f"citus {VERSION}: coordinator and 2 workers up in {seconds:.1f} s", file=sys.stderr)
            print(f"export {DSN_VAR}='{admin}'")
        else:
            stop(args.state)
    except Unavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
