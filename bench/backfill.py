"""Backfill benchmark: the bare COPY pipe, `migrate run`, and naive INSERTs, side by side.

    python bench/backfill.py --tenants T --rows R --jobs J [--reps N] [--json FILE]

Generates T source databases of a realistic SaaS schema (bench/saas_schema.sql;
R rows in the largest table, about 1.8 × R per tenant; deterministic, no random())
and one shared target with the tenant schema, then measures, interleaved (the order
rotates every repetition) on a fresh copy of the target each time:

  limit     the bare binary COPY pipe source → target with tenant_id added, tables in
            foreign-key order, one transaction per table, 128 KB writes: no orchestration
  backfill  ``migrate.api.run`` on a playbook with a schema and a backfill step (the real
            engine: locks, checkpointed chunks, ledger, verify), timed in-process
  copyonly  the same with the backfill step alone (the schema step's share is the difference)
  naive     a server-side cursor and ``executemany`` INSERTs in batches of 1,000
  limit2    the two-stream limit: the bare pipe in two processes — one tenant: the tables of
            one foreign-key level in parallel, tables over 100,000 rows split in two key
            ranges (each range its own transaction); several tenants: two tenants at a time
  perrow    ``backfill`` with foreign keys checked per row while loading (triggers on), the
            way before issue 18: the product's own lever, measured side by side

and optionally (``--methods``) the two RLS write paths of the design question:

  bypassrls the bare pipe as a non-superuser role with BYPASSRLS (exempt from RLS)
  staging   the bare pipe as a role subject to RLS: COPY into a temporary staging table,
            then ``INSERT … SELECT`` under ``set_config('app.tenant_id', …, true)``

With ``--target citus`` the shared target is a new database on every node of the Citus
cluster ``--citus-dsn`` reaches (default $MIGRATE_TEST_CITUS_DSN; ``python tests/citus_server.py
start --state DIR`` prints one), made afresh for every measurement with the schema step of a
``distributed: citus`` playbook (tables distributed on tenant_id), the sources staying on
``--dsn``; ``limit`` is then the same COPY pipe into the cluster through the coordinator, and
the method ``plain`` is the product's backfill into a plain PostgreSQL target on ``--dsn``.

Each measurement runs in its own process (``--worker``), which reports its time and
its peak RSS; the target is CHECKPOINTed before each one. ``--jobs`` tenants run at
once in every method. The sources are kept between runs (``--drop-sources`` removes
them); the settings come from ``--dsn`` (default: $MIGRATE_BENCH_DSN, else
postgresql://postgres@127.0.0.1:5432/postgres), a role that may CREATE DATABASE and ROLE.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import JsonbDumper

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 1  # bump when saas_schema.sql or saas_data.sql change: the cached sources are rebuilt
TABLES = ("organizations", "users", "events", "projects", "tasks", "attachments", "comments")  # FK order
# The foreign-key levels of saas_schema.sql: a level's tables reference only earlier levels (users also
# itself, so it is never split: a manager in the other range would not be visible yet).
LEVELS = (("organizations",), ("users",), ("events", "projects"), ("tasks",), ("attachments", "comments"))
UNSPLIT = frozenset({"users"})
SPLIT_ROWS = 100_000
BATCH = 128 * 1024
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def dsn_for(admin: str, dbname: str, **extra: str) -> str:
    params = conninfo_to_dict(admin)
    params.update(dbname=dbname, **extra)
    return make_conninfo("", **params)


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def tenant_ids(count: int) -> list[str]:
    return [f"t{i:04d}" for i in range(count)]


# ----------------------------------------------------------------------------- generation
def _exists(admin: psycopg.Connection[Any], name: str) -> bool:
    return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def _drop(admin: psycopg.Connection[Any], name: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def prepare_sources(admin_dsn: str, rows: int, tenants: int) -> str:
    """Source databases ``<prefix>t0000…``: one generated template, cloned (cached between runs)."""
    prefix = f"tmbench_v{SCHEMA_VERSION}_r{rows}_"
    template = f"{prefix}template"
    with connect(admin_dsn) as admin:
        done = admin.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (template,)
        ).fetchone()
        if not done or done[0] != "complete":
            _drop(admin, template)
            started = time.monotonic()
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(template)))
            with connect(dsn_for(admin_dsn, template)) as conn:
                conn.execute((HERE / "saas_schema.sql").read_text())
                data = (HERE / "saas_data.sql").read_text()
                psycopg.ClientCursor(conn).execute(data, {"rows": rows})
                conn.execute("VACUUM ANALYZE")
            admin.execute(sql.SQL("COMMENT ON DATABASE {} IS 'complete'").format(sql.Identifier(template)))
            print(f"  generated the source template in {time.monotonic() - started:.1f} s", flush=True)
        missing = [t for t in tenant_ids(tenants) if not _exists(admin, prefix + t)]
        for tenant in missing:
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(prefix + tenant), sql.Identifier(template)
                )
            )
        if missing:
            print(f"  cloned {len(missing)} source databases", flush=True)
    return prefix


def count(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()
    return int(row[0]) if row else 0


def source_figures(admin_dsn: str, prefix: str) -> tuple[dict[str, int], int]:
    """(rows per table, bytes of heap and TOAST) of one tenant's source."""
    with connect(dsn_for(admin_dsn, prefix + "template")) as conn:
        counts = {t: count(conn, "public", t) for t in TABLES}
        size = conn.execute(
            "SELECT sum(pg_table_size(c.oid)) FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace"
            " AND c.relkind = 'r'"
        ).fetchone()
    return counts, int(size[0]) if size else 0


def write_playbook(
    folder: Path, tenants: list[str], name: str, steps: list[str], chunk_rows: int, *, citus: bool = False
) -> Path:
    body = "\n".join(
        f"      - {{kind: backfill, chunk_rows: {chunk_rows}}}" if s == "backfill" else f"      - kind: {s}"
        for s in steps
    )
    path = folder / f"{name}.yaml"
    path.write_text(
        f"version: 1\nname: {name}\n"
        "target: {dsn_env: MIGRATE_TARGET_DSN, schema: app"
        + (", distributed: citus" if citus else "")
        + "}\n"
        "source: {dsn_template_env: MIGRATE_SOURCE_DSN_TEMPLATE, schema: public}\n"
        "tenants:\n" + "".join(f"  - {{id: {t}}}\n" for t in tenants) + "tables: auto\n"
        f"phases:\n  - name: copy\n    steps:\n{body}\n"
    )
    return path


def prepare_target(admin_dsn: str, prefix: str, folder: Path) -> str:
    """A target template with the control schema and the shared tables (made by migrate's schema step)."""
    from migrate import api

    name = f"{prefix}target"
    with connect(admin_dsn) as admin:
        _drop(admin, name)
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    book = write_playbook(folder, ["t0000"], "bench-schema", ["schema"], 100_000)
    environ = {
        "MIGRATE_TARGET_DSN": dsn_for(admin_dsn, name),
        "MIGRATE_SOURCE_DSN_TEMPLATE": dsn_for(admin_dsn, prefix + "{tenant}"),
    }
    result = api.run(book, environ=environ)
    if not result.ok:
        raise SystemExit(f"the schema step failed: {result.tenants[0].error}")
    return name


# ----------------------------------------------------------------------------- the methods
def _pipe(
    src: psycopg.Connection[Any], dst: psycopg.Connection[Any], read: sql.Composed, write: sql.Composed
) -> int:
    with src.cursor() as sc, dst.cursor() as dc:
        with sc.copy(read) as reader, dc.copy(write) as writer:
            batch = bytearray()
            for block in reader:
                batch += block
                if len(batch) >= BATCH:
                    writer.write(batch)
                    batch = bytearray()
            if batch:
                writer.write(batch)
        return dc.rowcount


def _columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum",
            (f"public.{table}",),
        )
    ]


def copy_tenant(src_dsn: str, dst_dsn: str, tenant: str, *, staging: bool = False) -> int:
    """The bare pipe for one tenant (``staging``: the RLS-subject path through a temporary table)."""
    rows = 0
    with connect(src_dsn) as src, connect(dst_dsn) as dst:
        for table in TABLES:
            cols = _columns(src, table)
            names = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
            read = sql.SQL("COPY (SELECT {}::text, {} FROM {}) TO STDOUT (FORMAT binary)").format(
                sql.Literal(tenant), names, sql.Identifier("public", table)
            )
            shared = sql.Identifier("app", table)
            with dst.transaction():
                if not staging:
                    write = sql.SQL("COPY {} (tenant_id, {}) FROM STDIN (FORMAT binary)").format(
                        shared, names
                    )
                    rows += _pipe(src, dst, read, write)
                    continue
                dst.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant,))
                dst.execute(
                    sql.SQL("CREATE TEMP TABLE stage ON COMMIT DROP AS SELECT * FROM {} WITH NO DATA").format(
                        shared
                    )
                )
                write = sql.SQL("COPY stage (tenant_id, {}) FROM STDIN (FORMAT binary)").format(names)
                _pipe(src, dst, read, write)
                cur = dst.execute(
                    sql.SQL("INSERT INTO {} (tenant_id, {}) SELECT tenant_id, {} FROM stage").format(
                        shared, names, names
                    )
                )
                rows += cur.rowcount
    return rows


def copy_range(src_dsn: str, dst_dsn: str, tenant: str, table: str, lo: int | None, hi: int | None) -> int:
    """The bare pipe for the rows of one table with ``lo < id <= hi`` (either bound open), one transaction."""
    with connect(src_dsn) as src, connect(dst_dsn) as dst:
        cols = _columns(src, table)
        names = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
        bounds = [sql.SQL("id > {}").format(sql.Literal(lo))] if lo is not None else []
        bounds += [sql.SQL("id <= {}").format(sql.Literal(hi))] if hi is not None else []
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(bounds) if bounds else sql.SQL("")
        read = sql.SQL("COPY (SELECT {}::text, {} FROM {}{}) TO STDOUT (FORMAT binary)").format(
            sql.Literal(tenant), names, sql.Identifier("public", table), where
        )
        write = sql.SQL("COPY {} (tenant_id, {}) FROM STDIN (FORMAT binary)").format(
            sql.Identifier("app", table), names
        )
        with dst.transaction():
            return _pipe(src, dst, read, write)


def two_stream_tenant(src_dsn: str, dst_dsn: str, tenant: str, pool: ProcessPoolExecutor) -> int:
    """One tenant through two processes: a level's tables in parallel, big tables in two key ranges."""
    rows = 0
    with connect(src_dsn) as src:
        middle: dict[str, int | None] = {}
        for table in TABLES:
            n = count(src, "public", table)
            found = (
                src.execute(
                    sql.SQL("SELECT id FROM {} ORDER BY id OFFSET %s LIMIT 1").format(
                        sql.Identifier("public", table)
                    ),
                    (n // 2,),
                ).fetchone()
                if n > SPLIT_ROWS and table not in UNSPLIT
                else None
            )
            middle[table] = int(found[0]) if found else None
    for level in LEVELS:
        parts: list[tuple[str, int | None, int | None]] = []
        for table in level:
            mid = middle[table]
            parts += [(table, None, None)] if mid is None else [(table, None, mid), (table, mid, None)]
        futures = [pool.submit(copy_range, src_dsn, dst_dsn, tenant, *part) for part in parts]
        rows += sum(f.result() for f in futures)
    return rows


def naive_tenant(src_dsn: str, dst_dsn: str, tenant: str) -> int:
    rows = 0
    with connect(src_dsn) as src, connect(dst_dsn) as dst:
        dst.adapters.register_dumper(dict, JsonbDumper)  # jsonb values come back as dicts
        for table in TABLES:
            cols = _columns(src, table)
            names = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
            insert = sql.SQL("INSERT INTO {} (tenant_id, {}) VALUES ({})").format(
                sql.Identifier("app", table), names, sql.SQL(", ").join(sql.Placeholder() * (len(cols) + 1))
            )
            with src.transaction(), dst.transaction(), src.cursor(name="naive") as cur:
                cur.execute(sql.SQL("SELECT {} FROM {}").format(names, sql.Identifier("public", table)))
                with dst.cursor() as out:
                    while batch := cur.fetchmany(1000):
                        out.executemany(insert, [(tenant, *row) for row in batch])
                        rows += len(batch)
    return rows


def each_tenant(jobs: int, tenants: list[str], work: Callable[[str], int]) -> int:
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return sum(pool.map(work, tenants))


def worker(args: argparse.Namespace) -> None:
    """One measurement in this process: prints {"seconds", "rows", "rss_mb"} as JSON."""
    tenants = tenant_ids(args.tenants)
    src = dsn_for(args.dsn, args.prefix + "{tenant}")
    dst = args.target_dsn
    environ = {"MIGRATE_TARGET_DSN": dst, "MIGRATE_SOURCE_DSN_TEMPLATE": src}
    if args.worker in ("backfill", "copyonly", "perrow"):
        from migrate import api
        from migrate.log import configure
        from migrate.steps import backfill

        backfill.CHECK_AFTER_LOAD = args.worker != "perrow"

        configure(level="info", json=True)  # as the CLI off a terminal: a JSON line per chunk and table
        if args.no_ledger:
            from migrate.control.ledger import Ledger

            Ledger.append = lambda self, *a, **k: None  # type: ignore[method-assign,assignment]
        steps = ["backfill"] if args.worker == "copyonly" else ["schema", "backfill"]
        book = write_playbook(
            Path(args.folder), tenants, "bench", steps, args.chunk_rows, citus=args.distributed
        )
        started = time.monotonic()
        result = api.run(book, jobs=args.jobs, environ=environ)
        seconds = time.monotonic() - started
        if not result.ok:
            bad = [t for t in result.tenants if t.outcome != "done"]
            raise SystemExit(f"migrate run failed: {bad[0].tenant}: {bad[0].error}")
        rows = sum(t.rows_copied_now for t in result.tenants)
    elif args.worker == "limit2":
        with ProcessPoolExecutor(max_workers=2) as pool:
            started = time.monotonic()
            if len(tenants) == 1:
                rows = two_stream_tenant(src.replace("{tenant}", tenants[0]), dst, tenants[0], pool)
            else:
                futures = [pool.submit(copy_tenant, src.replace("{tenant}", t), dst, t) for t in tenants]
                rows = sum(f.result() for f in futures)
            seconds = time.monotonic() - started
    else:

        def work(tenant: str) -> int:
            source = src.replace("{tenant}", tenant)
            if args.worker == "naive":
                return naive_tenant(source, dst, tenant)
            return copy_tenant(source, dst, tenant, staging=args.worker == "staging")

        started = time.monotonic()
        rows = each_tenant(args.jobs, tenants, work)
        seconds = time.monotonic() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rows": rows, "rss_mb": rss}))


# ----------------------------------------------------------------------------- orchestration
@contextmanager
def fresh_citus_target(args: argparse.Namespace, folder: Path) -> Iterator[str]:
    """A new database on every node of the Citus cluster, its shared tables distributed by the schema
    step (Citus cannot clone a database with its shards: made afresh for each measurement)."""
    from migrate import api
    from migrate.adapters import citus

    name = f"{args.prefix}citus_run"
    citus.drop_database(args.citus_dsn, name)
    target = citus.create_database(args.citus_dsn, name)
    book = write_playbook(folder, ["t0000"], "bench-schema", ["schema"], 100_000, citus=True)
    environ = {
        "MIGRATE_TARGET_DSN": target,
        "MIGRATE_SOURCE_DSN_TEMPLATE": dsn_for(args.dsn, args.prefix + "{tenant}"),
    }
    result = api.run(book, environ=environ)
    if not result.ok:
        raise SystemExit(f"the schema step failed on Citus: {result.tenants[0].error}")
    with connect(target) as conn:
        conn.execute("CHECKPOINT")
    try:
        yield target
    finally:
        citus.drop_database(args.citus_dsn, name)


@contextmanager
def fresh_target(admin_dsn: str, template: str) -> Iterator[str]:
    name = template.replace("_target", "_run")
    with connect(admin_dsn) as admin:
        _drop(admin, name)
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        )
        admin.execute("CHECKPOINT")  # every measurement starts with the WAL written out
    try:
        yield dsn_for(admin_dsn, name)
    finally:
        with connect(admin_dsn) as admin:
            _drop(admin, name)


@contextmanager
def roles(admin_dsn: str, methods: list[str], databases: list[str]) -> Iterator[dict[str, str]]:
    """Login roles for the RLS write paths (one with BYPASSRLS, one subject to RLS), dropped after."""
    made: dict[str, str] = {}
    wanted = {"bypassrls": "BYPASSRLS", "staging": "NOBYPASSRLS"}
    with connect(admin_dsn) as admin:
        for method in methods:
            if method in wanted:
                role = f"tmbench_{method}"
                if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                    admin.execute(
                        sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER " + wanted[method]).format(
                            sql.Identifier(role)
                        )
                    )
                made[method] = role
    try:
        yield made
    finally:
        for database in databases if made else []:
            with connect(dsn_for(admin_dsn, database)) as conn:
                for role in made.values():
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with connect(admin_dsn) as admin:
            for role in made.values():
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def grant(target_dsn: str, role: str, source_prefix: str, admin_dsn: str, tenants: int) -> None:
    with connect(target_dsn) as conn:
        for statement in (
            "GRANT USAGE ON SCHEMA app TO {}",
            "GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA app TO {}",
        ):
            conn.execute(sql.SQL(statement).format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(str(conninfo_to_dict(target_dsn)["dbname"])), sql.Identifier(role)
            )
        )
    for tenant in tenant_ids(tenants):
        with connect(dsn_for(admin_dsn, source_prefix + tenant)) as conn:
            conn.execute(
                sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role))
            )


def measure(args: argparse.Namespace, method: str, target_dsn: str, folder: Path) -> dict[str, float]:
    worker = {"staging": "staging", "bypassrls": "limit", "plain": "backfill"}.get(method, method)
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        worker,
        "--dsn",
        args.dsn
        if method not in ("staging", "bypassrls")
        else make_conninfo(args.dsn, user=f"tmbench_{method}"),
        "--prefix",
        args.prefix,
        "--target-dsn",
        target_dsn,
        "--tenants",
        str(args.tenants),
        "--jobs",
        str(args.jobs),
        "--chunk-rows",
        str(args.chunk_rows),
        "--folder",
        str(folder),
    ]
    if method in ("staging", "bypassrls"):
        cmd[cmd.index("--target-dsn") + 1] = make_conninfo(target_dsn, user=f"tmbench_{method}")
    if args.no_ledger:
        cmd.append("--no-ledger")
    if args.target == "citus" and method != "plain":
        cmd.append("--distributed")
    with tempfile.TemporaryFile() as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, check=False)
        if done.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{method} failed:\n{err.read().decode()[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def target_rows(target_dsn: str) -> int:
    with connect(target_dsn) as conn:
        return sum(count(conn, "app", t) for t in TABLES)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, default=1)
    parser.add_argument("--rows", type=int, default=100_000, help="rows in each tenant's largest table")
    parser.add_argument("--jobs", type=int, default=1, help="tenants at once, in every method")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every method (medians reported)")
    parser.add_argument("--methods", default="limit,backfill,naive")
    parser.add_argument("--chunk-rows", type=int, default=100_000, help="the backfill step's chunk_rows")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--dsn", default=os.environ.get("MIGRATE_BENCH_DSN", DEFAULT_DSN))
    parser.add_argument("--no-ledger", action="store_true", help="backfill without ledger entries")
    parser.add_argument("--drop-sources", action="store_true", help="drop the cached sources at the end")
    parser.add_argument(
        "--target", choices=("postgres", "citus"), default="postgres", help="the shared target's kind"
    )
    parser.add_argument(
        "--citus-dsn",
        default=os.environ.get("MIGRATE_TEST_CITUS_DSN"),
        help="--target citus: a superuser DSN of the Citus coordinator",
    )
    parser.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--target-dsn", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = ("limit", "limit2", "backfill", "perrow", "copyonly", "naive", "staging", "bypassrls", "plain")
    unknown = set(methods) - set(known)
    if unknown or not methods:
        parser.error(f"unknown method(s) {', '.join(sorted(unknown))}: use {', '.join(known)}")
    if args.target == "citus":
        if not args.citus_dsn:
            parser.error("--target citus needs --citus-dsn (or MIGRATE_TEST_CITUS_DSN)")
        if set(methods) & {"staging", "bypassrls"}:
            parser.error("--target citus measures limit, backfill, copyonly, naive and plain")
    elif "plain" in methods:
        parser.error("the method plain compares a Citus target with a plain one: --target citus")
    from migrate.log import configure

    configure(level="warning")  # the schema step that prepares the target speaks only when it fails
    print(
        f"backfill bench: {args.tenants} tenant(s), {args.rows:,} rows in the largest table, jobs {args.jobs}"
        + (", target: Citus (coordinator + workers)" if args.target == "citus" else "")
    )
    args.prefix = prepare_sources(args.dsn, args.rows, args.tenants)
    counts, size = source_figures(args.dsn, args.prefix)
    rows_total = sum(counts.values()) * args.tenants
    bytes_total = size * args.tenants
    print(f"  per tenant: {sum(counts.values()):,} rows ({size / 2**20:.1f} MB); in all {rows_total:,} rows")
    results: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        template = prepare_target(args.dsn, args.prefix, folder)
        databases = [template, *(args.prefix + t for t in tenant_ids(args.tenants))]
        with roles(args.dsn, methods, databases) as made:
            for role in made.values():
                grant(dsn_for(args.dsn, template), role, args.prefix, args.dsn, args.tenants)
            for rep in range(args.reps):
                order = methods[rep % len(methods) :] + methods[: rep % len(methods)]
                for method in order:
                    fresh = (
                        fresh_citus_target(args, folder)
                        if args.target == "citus" and method != "plain"
                        else fresh_target(args.dsn, template)
                    )
                    with fresh as target:
                        figures = measure(args, method, target, folder)
                        landed = target_rows(target)
                    if landed != rows_total:
                        raise SystemExit(f"{method}: {landed:,} rows in the target, expected {rows_total:,}")
                    results[method].append(figures)
                    print(
                        f"  rep {rep + 1} {method:9} {figures['seconds']:7.2f} s "
                        f"{rows_total / figures['seconds']:>10,.0f} rows/s  rss {figures['rss_mb']:.0f} MB",
                        flush=True,
                    )
        with connect(args.dsn) as admin:
            _drop(admin, template)
    report(args, results, rows_total, bytes_total)
    if args.drop_sources:
        with connect(args.dsn) as admin:
            for name in [args.prefix + t for t in tenant_ids(args.tenants)] + [args.prefix + "template"]:
                _drop(admin, name)


def report(
    args: argparse.Namespace, results: dict[str, list[dict[str, float]]], rows: int, size: int
) -> None:
    med = {m: statistics.median(r["seconds"] for r in runs) for m, runs in results.items()}
    mb = size / 2**20
    print(f"\nmedians of {args.reps} interleaved repetitions ({rows:,} rows, {mb:.0f} MB of source tables)")
    print(f"  {'method':10} {'seconds':>8} {'rows/s':>10} {'MB/s':>7} {'peak RSS':>9} {'ratio to limit':>15}")
    for method, seconds in med.items():
        ratio = f"{med['limit'] / seconds:.2f}" if "limit" in med else "-"
        rss = max(r["rss_mb"] for r in results[method])
        print(
            f"  {method:10} {seconds:8.2f} {rows / seconds:>10,.0f} {size / 2**20 / seconds:>7.1f}"
            f" {rss:>6.0f} MB {ratio:>15}"
        )
    figures: dict[str, Any] = {
        "tenants": args.tenants,
        "rows_largest_table": args.rows,
        "rows": rows,
        "jobs": args.jobs,
        "reps": args.reps,
        "seconds": {m: [round(r["seconds"], 3) for r in runs] for m, runs in results.items()},
    }
    for method, key in (("limit", "limit"), ("backfill", "backfill"), ("naive", "naive")):
        if method in med:
            figures[f"{key}_rows_per_s"] = round(rows / med[method])
    if "limit" in med and "backfill" in med:
        figures["ratio_backfill_to_limit"] = round(med["limit"] / med["backfill"], 3)
        print(f"\n  b/a (backfill to limit) = {figures['ratio_backfill_to_limit']:.2f}")
    if "plain" in med and "backfill" in med:
        figures["target"] = args.target
        figures["ratio_citus_backfill_to_plain_backfill"] = round(med["plain"] / med["backfill"], 3)
        ratio = figures["ratio_citus_backfill_to_plain_backfill"]
        print(f"  backfill into Citus to backfill into plain PostgreSQL = {ratio:.2f}")
    if "limit" in med and "naive" in med:
        figures["ratio_naive_to_limit"] = round(med["limit"] / med["naive"], 3)
        print(f"  c/a (naive to limit)    = {figures['ratio_naive_to_limit']:.2f}")
    if "limit2" in med and "backfill" in med:
        figures["ratio_backfill_to_two_stream_limit"] = round(med["limit2"] / med["backfill"], 3)
        print(f"  backfill to two-stream limit = {figures['ratio_backfill_to_two_stream_limit']:.2f}")
    if "perrow" in med and "backfill" in med:
        figures["ratio_backfill_to_perrow"] = round(med["perrow"] / med["backfill"], 3)
        print(f"  backfill to per-row foreign-key checks = {figures['ratio_backfill_to_perrow']:.2f}")
    for extra in ("limit2", "perrow", "copyonly", "staging", "bypassrls"):
        if extra in med and "limit" in med:
            figures[f"ratio_{extra}_to_limit"] = round(med["limit"] / med[extra], 3)
            print(f"  {extra} to limit = {figures[f'ratio_{extra}_to_limit']:.2f}")
    if "backfill" in results:
        figures["peak_rss_mb"] = round(max(r["rss_mb"] for r in results["backfill"]), 1)
        print(f"  peak RSS of the backfill process: {figures['peak_rss_mb']:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"  figures written to {args.json}")


if __name__ == "__main__":
    main()
