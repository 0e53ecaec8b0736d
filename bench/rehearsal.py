"""Benchmark: a dry-run rehearsal against the real run it rehearses, and rollback's time to flags.

    python bench/rehearsal.py --rows 200000 [--reps 5] [--dsn ADMIN_DSN]

One source database of the sample SaaS schema (about ``--rows`` rows over six
tables) and one target; the playbook is schema → backfill → validate → flag.
Per repetition, interleaved on the same databases:

1. ``migrate run --dry-run`` (every step for real inside a rolled-back transaction);
2. ``migrate run`` (the same steps, committed);
3. ``migrate rollback --to pre-copy --discard-writes-since-cutover``: the tenant's
   rows leave the target, so the next repetition copies everything again.

It prints the medians, ``ratio_rehearsal_to_run`` and rollback's median seconds
to flags restored and to done. The server is ``--dsn``, else ``MIGRATE_BENCH_DSN``,
else ``postgresql://postgres@127.0.0.1:5432/postgres``. Not run by pytest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from migrate import api
from migrate.api.demo import create_source

ROWS_PER_SCALE = 671  # rows of one scale unit of sample_saas_data.sql
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
FLAGS = Path(__file__).resolve().parents[1] / "flags" / "demo.json"
PLAYBOOK = f"""\
version: 1
name: bench-rehearsal
target: {{dsn_env: BENCH_TARGET_DSN, schema: app}}
source: {{dsn_template_env: BENCH_SOURCE_DSN_TEMPLATE, schema: public}}
tenants: [{{id: acme}}]
flags: {{provider: file, file_env: BENCH_FLAG_FILE, definitions: {FLAGS}}}
phases:
  - name: copy
    steps:
      - kind: schema
      - rollback_point: pre-copy
      - kind: backfill
      - kind: validate
  - name: cutover
    steps:
      - {{kind: flag, flag: tenant-shared-db}}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dsn", default=os.environ.get("MIGRATE_BENCH_DSN", DEFAULT_DSN))
    args = parser.parse_args()
    scale = max(1, args.rows // ROWS_PER_SCALE)
    prefix = f"tm_bench_r{uuid.uuid4().hex[:6]}_"
    source_db, target_db = f"{prefix}acme", f"{prefix}target"
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{target_db}"')
    create_source(args.dsn, source_db, "acme", scale)
    work = Path(tempfile.mkdtemp(prefix="tm-bench-"))
    book = work / "rehearsal.yaml"
    book.write_text(PLAYBOOK)
    environ = {
        "BENCH_TARGET_DSN": make_conninfo(args.dsn, dbname=target_db),
        "BENCH_SOURCE_DSN_TEMPLATE": make_conninfo(args.dsn, dbname=f"{prefix}{{tenant}}"),
        "BENCH_FLAG_FILE": str(work / "flags.json"),
        "MIGRATE_ACTOR": "bench",
    }
    rehearsal, real, to_flags, to_done = [], [], [], []
    try:
        for rep in range(args.reps):
            t0 = time.monotonic()
            dry = api.run(book, environ=environ, dry_run=True)
            rehearsal.append(time.monotonic() - t0)
            t0 = time.monotonic()
            done = api.run(book, environ=environ)
            real.append(time.monotonic() - t0)
            if not (dry.ok and done.ok):
                raise SystemExit(f"a run failed: {dry.tenants} {done.tenants}")
            back = api.rollback(book, "acme", "pre-copy", environ=environ, discard_writes_since_cutover=True)
            to_flags.append(back.seconds_to_flags or 0.0)
            to_done.append(back.seconds_total)
            print(f"rep {rep + 1}: rehearsal {rehearsal[-1]:.2f} s, run {real[-1]:.2f} s", file=sys.stderr)
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            for db in (source_db, target_db):
                admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    med = statistics.median
    print(f"rows                      {scale * ROWS_PER_SCALE}")
    print(f"rehearsal_s (median)      {med(rehearsal):.3f}")
    print(f"run_s (median)            {med(real):.3f}")
    print(f"ratio_rehearsal_to_run    {med(rehearsal) / med(real):.2f}")
    print(f"rollback_to_flags_s       {med(to_flags):.3f}")
    print(f"rollback_to_done_s        {med(to_done):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
