"""What exact progress totals cost: the count of every table in the copy's snapshot vs the copy.

    python bench/progress_totals.py --rows R [--reps N] [--dsn DSN]

The backfill sizes each tenant by counting its rows in the REPEATABLE READ snapshot its
chunks then read (steps/chunks.py ``rows_left``), so progress totals are exact on fresh
data. This runs the real backfill (``migrate.api.run``, a backfill-only playbook) for one
tenant of bench/backfill.py's generated sources (R rows in the largest table, ~1.8 x R
in all) into a fresh copy of the target, N times, and prints the median share of the
step's time the counting took (its ``sizing_seconds`` figure over the step's seconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from psycopg import sql

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from backfill import (  # noqa: E402  (bench/ is no package)
    DEFAULT_DSN,
    _drop,
    connect,
    dsn_for,
    prepare_sources,
    prepare_target,
    write_playbook,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dsn", default=os.environ.get("MIGRATE_BENCH_DSN", DEFAULT_DSN))
    args = parser.parse_args()
    from migrate import api
    from migrate.log import configure

    configure(level="warning")
    prefix = prepare_sources(args.dsn, args.rows, 1)
    shares, seconds, rows = [], [], 0
    with tempfile.TemporaryDirectory() as folder:
        template = prepare_target(args.dsn, prefix, Path(folder))
        book = write_playbook(Path(folder), ["t0000"], "bench-sizing", ["backfill"], 100_000)
        for rep in range(args.reps):
            target = f"{prefix}sizing"
            with connect(args.dsn) as admin:
                _drop(admin, target)
                admin.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(target), sql.Identifier(template)
                    )
                )
            environ = {
                "MIGRATE_TARGET_DSN": dsn_for(args.dsn, target),
                "MIGRATE_SOURCE_DSN_TEMPLATE": dsn_for(args.dsn, prefix + "{tenant}"),
            }
            result = api.run(book, environ=environ)
            if not result.ok:
                raise SystemExit(f"the backfill failed: {result.tenants[0].error}")
            step = next(s for s in result.tenants[0].steps if s.kind == "backfill")
            rows = int(step.details["rows"])
            shares.append(float(step.details["sizing_seconds"]) / step.seconds)
            seconds.append(step.seconds)
            print(
                f"  rep {rep + 1}: {rows:,} rows in {step.seconds:.2f} s, counting "
                f"{step.details['sizing_seconds']:.3f} s ({100 * shares[-1]:.2f} %)",
                flush=True,
            )
            with connect(args.dsn) as admin:
                _drop(admin, target)
    print(
        f"exact totals: {100 * statistics.median(shares):.2f} % of the copy "
        f"(median of {args.reps}; {rows:,} rows, backfill {statistics.median(seconds):.2f} s)"
    )


if __name__ == "__main__":
    main()
