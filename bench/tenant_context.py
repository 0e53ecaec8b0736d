"""Benchmark: what a transaction-bound tenant context costs next to the plain policy.

    python bench/tenant_context.py [--rows 1000000] [--reps 7] [--lookups 2000] [--dsn ADMIN_DSN]

One table ``orders`` (``tenant_id text``, primary key ``(tenant_id, id)``, RLS forced),
``--rows`` rows: tenant ``big`` holds 40 % of them, 24 small tenants share the rest. The
application role runs, per repetition and policy (interleaved, the order alternating):

* **selective**: ``--lookups`` transactions of ``BEGIN``; the contract's ``set_config``;
  one primary-key lookup; ``COMMIT`` — the whole transaction is timed, because the
  transaction-bound contract adds work there (an xid is assigned);
* **bulk**: ``SELECT count(*), sum(amount)`` over every row of tenant ``big`` in one
  transaction (a scan of 40 % of the table), with the planner free to go parallel.

Policies, each as ``catalog/ddl.py`` writes it (``session``, ``transaction``) and two
alternatives measured to choose between them:

* ``unguarded``: ``tenant_id = current_setting('app.tenant_id', true)`` (before issue 16);
* ``per-row``: ``tenant_id = NULLIF(current_setting('app.tenant_id', true), '')``, the
  guard as a plain expression, evaluated for every row a scan reads;
* ``session``: ``tenant_id = (SELECT NULLIF(…))``, the default: the same guard, evaluated
  once per query (an InitPlan, still an index condition);
* ``transaction``: the same ``AND (SELECT current_setting('app.tenant_xact_start', true) =
  extract(epoch FROM now())::text)``; the application sets ``app.tenant_xact_start`` in the
  same statement as the tenant (ddl.SET_TENANT_SQL);
* ``xid``: the alternative, with ``app.tenant_xid = pg_current_xact_id()`` set by the
  application and compared with ``pg_current_xact_id_if_assigned()`` (unique by
  construction, but every transaction is assigned an xid, and the function is
  parallel-unsafe, so no query on the table can go parallel).

Prints medians (µs per selective transaction, ms per bulk scan), the ratio of each to
``session`` and whether the bulk plan was parallel. The server is ``--dsn``, else
``MIGRATE_BENCH_DSN``, else ``postgresql://postgres@127.0.0.1:5432/postgres``. Not run by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from migrate.catalog.ddl import SET_TENANT_SQL, Options, tenant_predicate

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
SMALL_TENANTS = 24
SET_SESSION = "SELECT set_config('app.tenant_id', %s, true)"
SET_XID = (
    "SELECT set_config('app.tenant_id', %s, true),"
    " set_config('app.tenant_xid', pg_current_xact_id()::text, true)"
)


def policies() -> dict[str, tuple[str, str]]:
    """Policy predicate and the application's set-up statement, per variant."""
    session = Options(schema="bench")
    transaction = Options(schema="bench", tenant_context="transaction")
    return {
        "unguarded": ("tenant_id = current_setting('app.tenant_id', true)", SET_SESSION),
        "per-row": ("tenant_id = NULLIF(current_setting('app.tenant_id', true), '')", SET_SESSION),
        "session": (tenant_predicate(session).as_string(None), SET_SESSION),
        "transaction": (tenant_predicate(transaction).as_string(None), SET_TENANT_SQL),
        "xid": (
            tenant_predicate(session).as_string(None) + " AND (SELECT current_setting('app.tenant_xid', true)"
            " = pg_current_xact_id_if_assigned()::text)",
            SET_XID,
        ),
    }


@contextmanager
def database(admin: str) -> Iterator[str]:
    name = f"tm_bench_context_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(admin, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def populate(conn: psycopg.Connection[Any], rows: int, role: str) -> dict[str, int]:
    big = rows * 2 // 5
    small = (rows - big) // SMALL_TENANTS
    conn.execute(
        "CREATE TABLE orders (tenant_id text NOT NULL, id bigint NOT NULL, amount numeric NOT NULL,"
        " note text NOT NULL, PRIMARY KEY (tenant_id, id))"
    )
    conn.execute(
        "INSERT INTO orders SELECT 'big', i, (i %% 1000) / 10.0, repeat('x', 40)"
        " FROM generate_series(1, %s) AS i",
        (big,),
    )
    conn.execute(
        "INSERT INTO orders SELECT 'small' || t, i, (i %% 1000) / 10.0, repeat('x', 40)"
        " FROM generate_series(1, %s) AS t, generate_series(1, %s) AS i",
        (SMALL_TENANTS, small),
    )
    conn.execute("ALTER TABLE orders ENABLE ROW LEVEL SECURITY")
    conn.execute("ALTER TABLE orders FORCE ROW LEVEL SECURITY")
    conn.execute("VACUUM ANALYZE orders")
    conn.execute(sql.SQL("GRANT SELECT ON orders TO {}").format(sql.Identifier(role)))
    return {"big": big, "small": small}


def use_policy(conn: psycopg.Connection[Any], predicate: str) -> None:
    conn.execute("DROP POLICY IF EXISTS tenant_isolation ON orders")
    conn.execute(
        sql.SQL("CREATE POLICY tenant_isolation ON orders USING ({}) WITH CHECK ({})").format(
            sql.SQL(predicate),
            sql.SQL(predicate),  # the bench's own constant text, not input
        )
    )


def selective(conn: psycopg.Connection[Any], set_up: str, lookups: int, small: int, seed: int) -> float:
    """Median µs of one transaction: set the tenant, one primary-key lookup, commit."""
    rng = random.Random(seed)
    times = []
    for _ in range(lookups):
        tenant = f"small{rng.randint(1, SMALL_TENANTS)}"
        key = rng.randint(1, small)
        t0 = time.perf_counter()
        with conn.transaction():
            conn.execute(set_up, (tenant,))
            row = conn.execute("SELECT amount FROM orders WHERE id = %s", (key,)).fetchone()
        times.append(time.perf_counter() - t0)
        assert row is not None, "the policy hid the tenant's own row"
    return statistics.median(times) * 1e6


def bulk(conn: psycopg.Connection[Any], set_up: str, expected: int) -> tuple[float, bool]:
    """ms of one aggregate over every row of tenant 'big', and whether the plan was parallel."""
    with conn.transaction():
        conn.execute(set_up, ("big",))
        plan = conn.execute("EXPLAIN (FORMAT JSON) SELECT count(*), sum(amount) FROM orders").fetchone()
        t0 = time.perf_counter()
        row = conn.execute("SELECT count(*), sum(amount) FROM orders").fetchone()
        seconds = time.perf_counter() - t0
    assert row is not None, "no answer"
    assert row[0] == expected, f"bulk saw {row[0]} rows, not {expected}"
    parallel = plan is not None and "Gather" in json.dumps(plan[0])
    return seconds * 1e3, parallel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--dsn", default=os.environ.get("MIGRATE_BENCH_DSN", DEFAULT_DSN))
    args = parser.parse_args(argv)
    role = f"tm_bench_app_{uuid.uuid4().hex[:8]}"
    variants = policies()
    sel: dict[str, list[float]] = {v: [] for v in variants}
    scan: dict[str, list[float]] = {v: [] for v in variants}
    parallel: dict[str, bool] = {}
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(role)))
    try:
        with database(args.dsn) as dsn, psycopg.connect(dsn, autocommit=True) as owner:
            sizes = populate(owner, args.rows, role)
            with psycopg.connect(dsn, autocommit=True) as app:
                app.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
                names = list(variants)
                for rep in range(args.reps):
                    order = names if rep % 2 == 0 else names[::-1]
                    for name in order:
                        predicate, set_up = variants[name]
                        use_policy(owner, predicate)
                        sel[name].append(selective(app, set_up, args.lookups, sizes["small"], rep))
                        ms, parallel[name] = bulk(app, set_up, sizes["big"])
                        scan[name].append(ms)
                    print(
                        f"  rep {rep + 1}: "
                        + ", ".join(f"{n} {sel[n][-1]:.0f} µs / {scan[n][-1]:.0f} ms" for n in names),
                        file=sys.stderr,
                    )
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    base_sel = statistics.median(sel["session"])
    base_scan = statistics.median(scan["session"])
    print(
        f"{args.rows:,} rows; tenant big {sizes['big']:,} rows,"
        f" {SMALL_TENANTS} tenants of {sizes['small']:,};"
        f" medians of {args.reps} repetitions ({args.lookups} lookups each)"
    )
    print(f"{'policy':<12} {'selective µs/tx':>16} {'ratio':>6} {'bulk ms':>9} {'ratio':>6}  bulk plan")
    for name in variants:
        s, b = statistics.median(sel[name]), statistics.median(scan[name])
        print(
            f"{name:<12} {s:16.1f} {s / base_sel:6.3f} {b:9.1f} {b / base_scan:6.3f}  "
            + ("parallel" if parallel[name] else "serial")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
