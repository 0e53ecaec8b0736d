"""A PostgreSQL server of the benchmarks' own, so they never touch a shared one.

    python bench/server.py start ROOT   # prints the admin DSN: export MIGRATE_BENCH_DSN=…
    python bench/server.py stop ROOT

tests/cluster.py's throwaway cluster (the installed PostgreSQL 14+, else the embedded
wheel's), but with default durability (fsync, synchronous_commit and full_page_writes on)
and the memory settings of shared/notes/performance.md (shared_buffers 512 MB here,
max_wal_size 4 GB), so commit costs are what a real target pays.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import cluster

DURABLE = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "512MB",
    "max_wal_size": "4GB",
}


def start(root: Path) -> str:
    root.mkdir(parents=True)
    bin_dir = cluster.installed_bin_dir() or cluster.wheel_bin_dir()
    running = cluster.start_cluster(root, bin_dir)
    with (root / "data" / "postgresql.conf").open("a") as conf:
        conf.writelines(f"{name} = {value}\n" for name, value in DURABLE.items())  # later lines win
    data, log = str(root / "data"), str(root / "server.log")
    cluster._pg(root, bin_dir, "pg_ctl", "-D", data, "-l", log, "-o", f"-p {running.port}",
                "-w", "-t", "60", "restart", timeout=80)  # fmt: skip
    (root / "bin_dir").write_text(str(bin_dir))
    return running.dsn()


def stop(root: Path) -> None:
    cluster.remove_cluster(root, Path((root / "bin_dir").read_text()))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        raise SystemExit(__doc__)
    if sys.argv[1] == "start":
        print(start(Path(sys.argv[2])))
    else:
        stop(Path(sys.argv[2]))
