"""Per-tenant fixed cost: tenants with 0 rows through schema + backfill + validate.

    python bench/overhead.py [--tenants N] [--reps R] [--quick] [--json FILE]

Every tenant's source has the schema of bench/saas_schema.sql and no row, so what a
tenant costs is the product's fixed work alone: connections, the tenant's lock, catalog
reads, each step's checks, state and ledger writes. Measured, interleaved, each in its own
process on a fresh target database (control schema included):

  one    ``migrate.api.run`` with 1 tenant
  many   the same with N tenants (``--tenants``, default 40), one job

The fixed cost per tenant is ``(many - one) / (N - 1)`` (the first tenant also pays the
control schema and the shared tables' DDL, which ``one`` holds too). The breakdown is the
median over the tenants of ``many`` (the first left out) of each step's seconds and of the
rest of the tenant's time (set-up: connections, lock, source catalog, tenant state).
The settings come from ``--dsn`` (default: $MIGRATE_BENCH_DSN, else
postgresql://postgres@127.0.0.1:5432/postgres), a role that may CREATE DATABASE.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from backfill import DEFAULT_DSN, HERE, _drop, _exists, connect, dsn_for, tenant_ids, write_playbook
from psycopg import sql

PREFIX = "tmbench_zero_v1_"
STEPS = ["schema", "backfill", "validate"]


def prepare_sources(admin_dsn: str, tenants: int) -> None:
    template = f"{PREFIX}template"
    with connect(admin_dsn) as admin:
        if not _exists(admin, template):
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(template)))
            with connect(dsn_for(admin_dsn, template)) as conn:
                conn.execute((HERE / "saas_schema.sql").read_text())
                conn.execute("VACUUM ANALYZE")
        for tenant in tenant_ids(tenants):
            if not _exists(admin, PREFIX + tenant):
                admin.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(PREFIX + tenant), sql.Identifier(template)
                    )
                )


def worker(args: argparse.Namespace) -> None:
    """One run in this process: prints {"seconds", "tenants": [{"seconds", "steps": {kind: s}}]}."""
    from migrate import api
    from migrate.log import configure

    configure(level="warning")
    tenants = tenant_ids(args.tenants)
    environ = {
        "MIGRATE_TARGET_DSN": args.target_dsn,
        "MIGRATE_SOURCE_DSN_TEMPLATE": dsn_for(args.dsn, PREFIX + "{tenant}"),
    }
    book = write_playbook(Path(args.folder), tenants, f"zero{args.tenants}", STEPS, 100_000)
    started = time.monotonic()
    result = api.run(book, environ=environ)
    seconds = time.monotonic() - started
    if not result.ok:
        bad = [t for t in result.tenants if t.outcome != "done"]
        raise SystemExit(f"migrate run failed: {bad[0].tenant}: {bad[0].error}")
    print(
        json.dumps(
            {
                "seconds": seconds,
                "tenants": [
                    {"seconds": t.seconds, "steps": {s.kind: s.seconds for s in t.steps}}
                    for t in result.tenants
                ],
            }
        )
    )


def measure(args: argparse.Namespace, tenants: int, folder: Path) -> dict[str, Any]:
    target = f"{PREFIX}target"
    with connect(args.dsn) as admin:
        _drop(admin, target)
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target)))
    cmd = [sys.executable, __file__, "--worker", "--dsn", args.dsn, "--tenants", str(tenants)]
    cmd += ["--target-dsn", dsn_for(args.dsn, target), "--folder", str(folder)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"the run failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
    finally:
        with connect(args.dsn) as admin:
            _drop(admin, target)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, default=40)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10 tenants, 2 repetitions")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--dsn", default=os.environ.get("MIGRATE_BENCH_DSN", DEFAULT_DSN))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target-dsn", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.tenants, args.reps = 10, 2
    prepare_sources(args.dsn, args.tenants)
    print(f"overhead bench: 0-row tenants, {args.tenants} per run, {args.reps} repetitions, interleaved")
    one: list[float] = []
    many: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            order = [1, args.tenants] if rep % 2 == 0 else [args.tenants, 1]
            for n in order:
                figures = measure(args, n, Path(tmp))
                (one.append(figures["seconds"]) if n == 1 else many.append(figures))
                print(f"  rep {rep + 1} {n:3} tenant(s) {figures['seconds']:7.3f} s", flush=True)
    fixed = [(m["seconds"] - statistics.median(one)) / (args.tenants - 1) for m in many]
    later = [t for m in many for t in m["tenants"][1:]]
    breakdown = {k: statistics.median(t["steps"].get(k, 0.0) for t in later) for k in STEPS}
    breakdown["set-up and the rest"] = statistics.median(
        t["seconds"] - sum(t["steps"].values()) for t in later
    )
    print(f"\n  fixed cost per tenant (median of {args.reps}): {statistics.median(fixed) * 1000:.1f} ms")
    print("  breakdown (median over tenants 2..N):")
    for part, seconds in breakdown.items():
        print(f"    {part:22} {seconds * 1000:7.1f} ms")
    if args.json:
        document = {
            "tenants": args.tenants,
            "reps": args.reps,
            "one_seconds": one,
            "many_seconds": [m["seconds"] for m in many],
            "fixed_ms_per_tenant": round(statistics.median(fixed) * 1000, 1),
            "breakdown_ms": {k: round(v * 1000, 1) for k, v in breakdown.items()},
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
