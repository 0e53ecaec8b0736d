"""A real Unleash server for the tests and for CI: npm ``unleash-server`` from ``unleash/``.

As a pytest plugin (``pytest_plugins`` in conftest.py) it gives:

- ``unleash`` (session): an endpoint (URL, admin and client tokens, environment).
  ``UNLEASH_URL`` with ``UNLEASH_ADMIN_TOKEN`` and ``UNLEASH_CLIENT_TOKEN`` (and
  ``UNLEASH_ENVIRONMENT``, default ``development``) when set; else a server started
  here when Node.js is present; else the test is skipped — or fails, with
  ``MIGRATE_TEST_REQUIRE_UNLEASH=1`` (set by ``.ci/run``).
- ``unleash_server`` (session): a server this process started and may stop and start
  again (the session's own, or a second one when the endpoint came from outside).

As a script, for ``.ci/run``::

    python tests/unleash_server.py start --state DIR   # prints `export UNLEASH_…=…` lines
    python tests/unleash_server.py stop --state DIR

How a server is started (shared/notes/unleash.md):

- installed once per lockfile: ``npm ci`` from copies of ``unleash/package.json``,
  ``package-lock.json`` and ``.npmrc`` into ``~/.cache/tenant-migrate/unleash-server-<hash>``
  (``UNLEASH_SERVER_CACHE`` elsewhere), so a fresh clone in CI does not reinstall;
- its own new database, on the tests' PostgreSQL (script: 127.0.0.1:5432 as user
  postgres, else an embedded server in the state folder), so the initial tokens
  (``INIT_*_API_TOKENS``, honoured only on an empty token table) are created;
- ``CHECK_VERSION=false`` and ``SEND_TELEMETRY=false`` (no internet here);
- the node process itself is the child (no wrapper shell holding its output), the
  port is checked free first, and once ``/health`` answers, the listening socket
  must belong to that very process: a second server on a busy port dies with
  EADDRINUSE while the old one answers ``/health``.

``unleash-server`` 8.2.0 declares Node >= 22; Node 20 (this machine's) runs it and
starts as fast (3-4 s on a fresh database, ~2 s on an existing one), so the
machine's ``node`` is used (``UNLEASH_NODE`` picks another).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "unleash"
PACKAGE_FILES = ("package.json", "package-lock.json", ".npmrc")
ADMIN_TOKEN = "*:*.tenant-migrate-test-admin"
CLIENT_TOKEN = "default:development.tenant-migrate-test-client"
ENVIRONMENT = "development"
LOCAL_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
REQUIRE_VAR = "MIGRATE_TEST_REQUIRE_UNLEASH"


class Unavailable(RuntimeError):
    """No Unleash server can be had here (no Node.js, no registry, no database)."""


# ----------------------------------------------------------------------------- install
def node_binary() -> str:
    """The Node.js to run the server with: ``UNLEASH_NODE``, else ``node`` on PATH (>= 20)."""
    node = os.environ.get("UNLEASH_NODE") or shutil.which("node")
    if not node:
        raise Unavailable("no Node.js (node) on PATH to run unleash-server")
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=False)
    match = re.match(r"v(\d+)\.", out.stdout.strip())
    if not match or int(match[1]) < 20:
        raise Unavailable(f"unleash-server needs Node.js 20 or newer, {node} is {out.stdout.strip()!r}")
    return node


def install_dir() -> Path:
    """Where this lockfile's install lives: one per content of the package files."""
    digest = hashlib.sha256()
    for name in PACKAGE_FILES:
        digest.update(name.encode() + b"\0" + (PACKAGE_DIR / name).read_bytes() + b"\0")
    cache = os.environ.get("UNLEASH_SERVER_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tenant-migrate"
    )
    return Path(cache) / f"unleash-server-{digest.hexdigest()[:12]}"


def ensure_installed() -> Path:
    """Install unleash/ (``npm ci``) unless this lockfile is installed already; return its folder."""
    target = install_dir()
    if (target / ".installed").exists():
        return target
    npm = shutil.which("npm")
    if not npm:
        raise Unavailable("no npm on PATH to install unleash-server")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be installing the same lockfile
        if (target / ".installed").exists():
            return target
        work = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
        try:
            for name in PACKAGE_FILES:
                shutil.copy2(PACKAGE_DIR / name, work / name)
            started = time.monotonic()
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if done.returncode != 0:
                raise Unavailable(f"npm ci of unleash/ failed: {(done.stderr or done.stdout).strip()[-800:]}")
            (work / ".installed").write_text(f"npm ci took {time.monotonic() - started:.1f} s\n")
            if target.exists():
                shutil.rmtree(target)  # an interrupted earlier attempt
            work.rename(target)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------- a server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on 127.0.0.1/0.0.0.0:port (Linux /proc/net/tcp, state 0A)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(parts[9])
    return inodes


def listener_is(pid: int, port: int) -> bool:
    """Whether the socket listening on ``port`` belongs to process ``pid`` (True off Linux)."""
    if not Path("/proc/net/tcp").exists():
        return True
    inodes = _listening_inodes(port)
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return True
    return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) still "exists".
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    return True


@dataclass
class UnleashServer:
    """One unleash-server process on 127.0.0.1 with its own database."""

    home: Path  # the install folder (node_modules)
    state: Path  # log and pid file
    port: int
    database: dict[str, str]  # host, port, user, password, dbname
    node: str
    admin_token: str = ADMIN_TOKEN
    client_token: str = CLIENT_TOKEN
    environment: str = ENVIRONMENT
    pid: int | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.state / "unleash.log"

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def start(self, timeout: float = 120.0) -> float:
        """Start and wait for /health; returns the seconds it took."""
        if self.pid is not None and pid_alive(self.pid):
            raise RuntimeError(f"unleash-server pid {self.pid} is still running")
        if port_answers(self.port):
            raise RuntimeError(f"port {self.port} is busy: another server would answer for ours")
        db = self.database
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "TZ": "UTC",
            "DATABASE_HOST": db["host"],
            "DATABASE_PORT": db["port"],
            "DATABASE_USERNAME": db["user"],
            "DATABASE_PASSWORD": db.get("password", ""),
            "DATABASE_NAME": db["dbname"],
            "DATABASE_SSL": "false",
            "DATABASE_POOL_MAX": "6",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(self.port),
            "CHECK_VERSION": "false",
            "SEND_TELEMETRY": "false",
            "INIT_ADMIN_API_TOKENS": self.admin_token,
            "INIT_CLIENT_API_TOKENS": self.client_token,
            "LOG_LEVEL": "warn",
            **self.extra_env,
        }
        self.state.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                [self.node, "node_modules/unleash-server/dist/server.js"],
                cwd=self.home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the script that starts it for .ci/run
            )
        self.pid = proc.pid
        (self.state / "unleash.pid").write_text(f"{proc.pid}\n")
        deadline = started + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"unleash-server exited with {proc.returncode} while starting:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    if not listener_is(proc.pid, self.port):
                        raise RuntimeError(f"something else answers on port {self.port}, not pid {proc.pid}")
                    return time.monotonic() - started
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"unleash-server did not answer /health within {timeout:.0f} s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL; returns once the process is gone and the port is free."""
        pid, self.pid = self.pid, None
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        while port_answers(self.port) and time.monotonic() < deadline + 5:
            time.sleep(0.05)

    def environ(self) -> dict[str, str]:
        return endpoint_environ(self.url, self.admin_token, self.client_token, self.environment)


def endpoint_environ(url: str, admin: str, client: str, environment: str) -> dict[str, str]:
    return {
        "UNLEASH_URL": url,
        "UNLEASH_ADMIN_TOKEN": admin,
        "UNLEASH_CLIENT_TOKEN": client,
        "UNLEASH_ENVIRONMENT": environment,
    }


def database_params(dsn: str) -> dict[str, str]:
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    return {
        "host": str(params.get("host") or "127.0.0.1"),
        "port": str(params.get("port") or "5432"),
        "user": str(params.get("user") or "postgres"),
        "password": str(params.get("password") or ""),
        "dbname": str(params.get("dbname") or "postgres"),
    }


def new_server(database_dsn: str, state: Path) -> UnleashServer:
    """Install if needed and describe (not start) a server on a free port over ``database_dsn``."""
    node = node_binary()
    home = ensure_installed()
    return UnleashServer(
        home=home, state=state, port=free_port(), database=database_params(database_dsn), node=node
    )


# ----------------------------------------------------------------------------- pytest
@dataclass(frozen=True)
class UnleashEndpoint:
    """A server to test against: where it is and its tokens."""

    url: str
    admin_token: str
    client_token: str
    environment: str
    server: UnleashServer | None  # None: given by UNLEASH_URL, not ours to stop

    def environ(self) -> dict[str, str]:
        return endpoint_environ(self.url, self.admin_token, self.client_token, self.environment)


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_VAR) == "1":
        pytest.fail(f"{reason} ({REQUIRE_VAR}=1)", pytrace=False)
    pytest.skip(reason)


def _from_environment() -> UnleashEndpoint | None:
    url = os.environ.get("UNLEASH_URL", "").strip()
    if not url:
        return None
    admin = os.environ.get("UNLEASH_ADMIN_TOKEN", "").strip()
    client = os.environ.get("UNLEASH_CLIENT_TOKEN", "").strip()
    if not admin or not client:
        raise pytest.UsageError("UNLEASH_URL is set: set UNLEASH_ADMIN_TOKEN and UNLEASH_CLIENT_TOKEN too")
    environment = os.environ.get("UNLEASH_ENVIRONMENT", "").strip() or ENVIRONMENT
    return UnleashEndpoint(url.rstrip("/").removesuffix("/api"), admin, client, environment, None)


def pytest_report_header(config: pytest.Config) -> str:
    if os.environ.get("UNLEASH_URL"):
        return f"unleash: UNLEASH_URL={os.environ['UNLEASH_URL']}"
    node = os.environ.get("UNLEASH_NODE") or shutil.which("node")
    return f"unleash: a server of our own from unleash/ on {node}" if node else "unleash: none (no node)"


class _Servers:
    """The servers this session started, stopped at its end."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.request = request
        self.started: list[UnleashServer] = []
        self.states: list[Path] = []

    def start(self) -> UnleashServer:
        factory: Any = self.request.getfixturevalue("session_databases")
        state = Path(tempfile.mkdtemp(prefix="tm-test-unleash-"))
        self.states.append(state)
        try:
            server = new_server(factory.create("unleash"), state)
            server.start()
        except (Unavailable, RuntimeError, OSError, subprocess.SubprocessError) as exc:
            reason = f"no Unleash server for the tests: {exc}"
        else:
            self.started.append(server)
            return server
        _unavailable(reason)  # outside the except: no "during handling" traceback
        raise AssertionError("not reached: _unavailable skips or fails")

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()
        for state in self.states:
            shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def _unleash_servers(request: pytest.FixtureRequest) -> Iterator[_Servers]:
    servers = _Servers(request)
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.fixture(scope="session")
def unleash(_unleash_servers: _Servers) -> UnleashEndpoint:
    """The session's Unleash server: UNLEASH_URL and tokens when set, else one started here."""
    given = _from_environment()
    if given is not None:
        try:
            healthy = httpx.get(f"{given.url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            healthy = False
        if not healthy:
            pytest.fail(f"UNLEASH_URL={given.url} does not answer /health", pytrace=False)
        return given
    server = _unleash_servers.start()
    return UnleashEndpoint(server.url, server.admin_token, server.client_token, server.environment, server)


@pytest.fixture(scope="session")
def unleash_server(unleash: UnleashEndpoint, _unleash_servers: _Servers) -> UnleashServer:
    """A server this session owns and may stop and start (a test must leave it running)."""
    if unleash.server is not None:
        return unleash.server
    if len(_unleash_servers.started) > 0:
        return _unleash_servers.started[0]
    return _unleash_servers.start()


@pytest.fixture
def flag_name() -> str:
    """A flag name no other test uses on a shared server."""
    return f"tm-test-{uuid.uuid4().hex[:10]}"


# ----------------------------------------------------------------------------- script
def _script_database(state: Path) -> str:
    """A new database for the server: local 127.0.0.1:5432, else an embedded PostgreSQL."""
    import psycopg
    from psycopg import sql

    admin = LOCAL_ADMIN_DSN
    try:
        psycopg.connect(admin, connect_timeout=2).close()
    except psycopg.Error:
        from migrate.adapters.embedded import start_server

        admin = start_server(state / "postgres").dsn()
    name = f"tm_unleash_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = database_params(admin)
    params["dbname"] = name
    (state / "admin_dsn").write_text(admin)
    return "postgresql://{user}@{host}:{port}/{dbname}".format(**params)


def _cmd_start(state: Path) -> int:
    state.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        home = ensure_installed()
        installed = time.monotonic() - started
        server = UnleashServer(
            home=home,
            state=state,
            port=free_port(),
            database=database_params(_script_database(state)),
            node=node_binary(),
        )
        took = server.start()
    except (Unavailable, RuntimeError) as exc:
        print(f"unleash: {exc}", file=sys.stderr)
        return 1
    (state / "server.json").write_text(json.dumps({**asdict(server), "home": str(home), "state": str(state)}))
    print(
        f"unleash: install {installed:.1f} s, start {took:.1f} s, pid {server.pid}, {server.url}",
        file=sys.stderr,
    )
    for key, value in server.environ().items():
        print(f"export {key}='{value}'")
    return 0


def _cmd_stop(state: Path) -> int:
    import psycopg
    from psycopg import sql

    info_file = state / "server.json"
    if info_file.exists():
        info = json.loads(info_file.read_text())
        info["home"], info["state"] = Path(info["home"]), Path(info["state"])
        server = UnleashServer(**info)
        server.stop()
        admin_file = state / "admin_dsn"
        if admin_file.exists():
            with (
                contextlib.suppress(psycopg.Error),
                psycopg.connect(admin_file.read_text(), autocommit=True) as conn,
            ):
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(server.database["dbname"])
                    )
                )
    if (state / "postgres").exists():
        from migrate.adapters.embedded import stop_server

        stop_server(state / "postgres", remove=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start or stop the Unleash server of the tests and CI.")
    parser.add_argument("command", choices=("start", "stop", "install"))
    parser.add_argument("--state", type=Path, help="folder for the log, pid and settings")
    args = parser.parse_args(argv)
    if args.command == "install":
        print(ensure_installed())
        return 0
    if args.state is None:
        parser.error("--state DIR is required")
    return _cmd_start(args.state) if args.command == "start" else _cmd_stop(args.state)


if __name__ == "__main__":
    sys.exit(main())
