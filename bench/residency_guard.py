"""Benchmark: what the residency guard costs each tenant session, next to the tenant's whole run.

    python bench/residency_guard.py [--scale 3] [--calls 1000] [--reps 5] [--dsn ADMIN_DSN]

Makes a target database recorded as region ``eu`` (``migrate residency set``) and one
source of the demo's sample data (``--scale 3``: the demo's acme, 2,013 rows), runs a
schema + backfill + validate playbook for that tenant once (timed), then calls the guard
exactly as ``step_context`` does — the target's recording and identity, the source's
declared region — ``--calls`` times on open connections, ``--reps`` times. Prints the
median cost of one call and its share of the tenant's run. The server is ``--dsn``, else
``MIGRATE_BENCH_DSN``, else ``postgresql://postgres@127.0.0.1:5432/postgres``. Not run by
pytest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from migrate import api
from migrate.api.demo import create_source
from migrate.engine import residency
from migrate.log import configure
from migrate.playbook import load_playbook

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PLAYBOOK = """\
version: 1
name: bench-residency
targets:
  eu: {dsn_env: BENCH_EU_DSN, schema: app}
source: {dsn_template_env: BENCH_SOURCE_DSN_TEMPLATE, schema: public}
tenants: [{id: acme, region: eu}]
tables: auto
phases:
  - name: copy
    steps: [{kind: schema}, {kind: backfill}, {kind: validate}]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=3)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dsn", default=os.environ.get("MIGRATE_BENCH_DSN", DEFAULT_DSN))
    args = parser.parse_args()
    configure(level="warning")
    tag = uuid.uuid4().hex[:8]
    target, source = f"tm_bench_res_{tag}_eu", f"tm_bench_res_{tag}_acme"
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target)))
    try:
        create_source(args.dsn, source, "acme", args.scale)
        with tempfile.TemporaryDirectory() as tmp:
            book = Path(tmp) / "bench.yaml"
            book.write_text(PLAYBOOK)
            environ = {
                "BENCH_EU_DSN": make_conninfo(args.dsn, dbname=target),
                # {tenant} in the database name: a template of one, as the playbook wants it.
                "BENCH_SOURCE_DSN_TEMPLATE": make_conninfo(args.dsn, dbname=target).replace(
                    target, f"tm_bench_res_{tag}_{{tenant}}"
                ),
                "MIGRATE_ACTOR": "bench",
            }
            api.residency_set(book, "eu", environ=environ)
            started = time.perf_counter()
            assert api.run(book, environ=environ).ok
            run_seconds = time.perf_counter() - started
            loaded = load_playbook(book)
            spec, tenant = loaded.playbook.targets_by_name()["eu"], loaded.tenants[0]
            with (
                psycopg.connect(environ["BENCH_EU_DSN"], autocommit=True) as t,
                psycopg.connect(make_conninfo(args.dsn, dbname=source), autocommit=True) as s,
            ):
                per_call = []
                for _ in range(args.reps):
                    t0 = time.perf_counter()
                    for _ in range(args.calls):
                        residency.enforce(spec, tenant, t, s, loaded.path)
                    per_call.append((time.perf_counter() - t0) / args.calls)
        guard = statistics.median(per_call)
        print(
            f"residency guard: {guard * 1000:.3f} ms per tenant session (median, {args.reps} x {args.calls});"
            f" one tenant's run (scale {args.scale}): {run_seconds:.2f} s; share {guard / run_seconds:.5f}"
        )
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            for name in (target, source):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
