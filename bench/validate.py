"""Benchmark: validation time against backfill time, and diff time against one checksum pass.

    python bench/validate.py --rows 1000000 [--reps 3] [--json out.json] [--dsn ADMIN_DSN]
                             [--checksum auto|hash|text]

One source database of the sample SaaS schema (``src/migrate/resources``, rows
generated deterministically in SQL, about ``--rows`` rows over six tables);
per repetition a fresh target database, then, interleaved:

1. ``migrate run`` of a playbook with the schema, backfill and validate steps:
   the backfill's and the validate step's own timings;
2. one checksum pass of every table on both sides (``--checksum`` mode);
3. 10 rows of the target corrupted (changed values, NULL to '', a flipped
   byte, missing and extra rows) and a diff of every table, which must find
   exactly those 10 keys.

It prints the medians and the two ratios the issue sets targets for:
``ratio_validate_to_backfill`` (≤ 0.30) and ``ratio_diff_to_checksum`` (≤ 3).
The server is ``--dsn`` (an admin DSN that may CREATE DATABASE), else
``MIGRATE_BENCH_DSN``, else ``postgresql://postgres@127.0.0.1:5432/postgres``.
Not run by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, cast

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from migrate import api
from migrate.api.demo import create_source
from migrate.catalog.reflect import reflect, select_tables
from migrate.checks.checksum import Mode, Side, choose_mode, compare, table_shapes
from migrate.checks.diff import diff_table

ROWS_PER_SCALE = 671  # rows of one scale unit of sample_saas_data.sql
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PLAYBOOK = """\
version: 1
name: bench-validate
target:
  dsn_env: BENCH_TARGET_DSN
  schema: app
source:
  dsn_template_env: BENCH_SOURCE_DSN_TEMPLATE
  schema: public
tenants:
  - {id: acme}
tables: auto
phases:
  - name: prepare
    steps:
      - kind: schema
  - name: copy
    steps:
      - kind: backfill
      - kind: validate
"""


def corrupt(conn: psycopg.Connection[Any], scale: int) -> dict[str, tuple[set[str], set[str], set[str]]]:
    """Ten differences in the target, spread over tables; returns (missing, extra, changed) per table."""
    tasks, comments = 200 * scale, 400 * scale
    statements: list[tuple[str, tuple[int, ...]]] = [
        ("UPDATE app.tasks SET title = title || '!' WHERE tenant_id = 'acme' AND id = %s", (tasks // 3,)),
        ("UPDATE app.tasks SET status = 'lost' WHERE tenant_id = 'acme' AND id = %s", (tasks - 1,)),
        ("UPDATE app.comments SET body = upper(body) WHERE tenant_id = 'acme' AND id = %s", (comments // 7,)),
        (
            "UPDATE app.comments SET created_at = created_at + interval '1 second'"
            " WHERE tenant_id = 'acme' AND id = %s",
            (comments - 5,),
        ),
        ("DELETE FROM app.comments WHERE tenant_id = 'acme' AND id = %s", (comments // 2,)),
        (
            "INSERT INTO app.comments (tenant_id, id, task_id, author_id, body, created_at)"
            " VALUES ('acme', %s, 1, 1, 'extra', now())",
            (comments + 1,),
        ),
        # NULL (every 10th attachment) turned into an empty bytea, and one flipped byte.
        ("UPDATE app.attachments SET content = '' WHERE tenant_id = 'acme' AND id = 10", ()),
        (
            "UPDATE app.attachments SET content = set_byte(content, 3, (get_byte(content, 3) + 1) % 256)"
            " WHERE tenant_id = 'acme' AND id = 1",
            (),
        ),
        ("DELETE FROM app.attachments WHERE tenant_id = 'acme' AND id = 20", ()),
        (
            "INSERT INTO app.organizations (tenant_id, id, name, plan, created_at)"
            " VALUES ('acme', %s, 'extra', 'x', now())",
            (scale + 1000,),
        ),
    ]
    for statement, params in statements:
        conn.execute(statement, params or None)
    return {
        "tasks": (set(), set(), {str(tasks // 3), str(tasks - 1)}),
        "comments": ({str(comments // 2)}, {str(comments + 1)}, {str(comments // 7), str(comments - 5)}),
        "attachments": ({"20"}, set(), {"10", "1"}),
        "organizations": (set(), {str(scale + 1000)}, set()),
    }


def one_rep(admin: str, source_db: str, scale: int, mode_choice: str, work: Path) -> dict[str, Any]:
    target_db = f"tm_bench_dst_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target_db)))
    try:
        target_dsn = make_conninfo(admin, dbname=target_db)
        source_dsn = make_conninfo(admin, dbname=source_db)
        environ = {
            "BENCH_TARGET_DSN": target_dsn,
            "BENCH_SOURCE_DSN_TEMPLATE": make_conninfo(admin, dbname=source_db.replace("acme", "{tenant}")),
            "MIGRATE_ACTOR": "bench",
        }
        playbook = work / "bench.yaml"
        result = api.run(playbook, environ=environ)
        if not result.ok:
            raise SystemExit(f"the run failed: {result.tenants[0].error}")
        seconds = {s.kind: s.seconds for s in result.tenants[0].steps}
        with (
            psycopg.connect(source_dsn, autocommit=True) as src,
            psycopg.connect(target_dsn, autocommit=True) as dst,
        ):
            tables = select_tables(reflect(src, "public"), None, schema="public")
            shapes = table_shapes(src, "public", {t.name: t.primary_key for t in tables})
            mode = choose_mode(src, dst) if mode_choice == "auto" else cast(Mode, mode_choice)
            source, target = Side(src, "public"), Side(dst, "app", "tenant_id", "acme", label="target")
            started = time.perf_counter()
            figures = compare(source, target, shapes, mode)
            checksum_seconds = time.perf_counter() - started
            assert all(f.match for f in figures), "a fresh copy must match"
            expected = corrupt(dst, scale)
            started = time.perf_counter()
            diffs = {shape.name: diff_table(source, target, shape, mode) for shape in shapes}
            diff_seconds = time.perf_counter() - started
        found = 0
        for name, d in diffs.items():
            missing, extra, changed = expected.get(name, (set(), set(), set()))
            got = (
                {k[0] for k in d.missing_keys},
                {k[0] for k in d.extra_keys},
                {r.key[0] for r in d.changed_rows},
            )
            if got != (missing, extra, changed):
                raise SystemExit(f"diff of {name} found {got}, expected {(missing, extra, changed)}")
            found += d.missing + d.extra + d.changed
        if found != 10:
            raise SystemExit(f"diff found {found} differences, expected 10")
        return {
            "backfill": seconds["backfill"],
            "validate": seconds["validate"],
            "checksum": checksum_seconds,
            "diff": diff_seconds,
            "mode": mode,
            "keys_fetched": sum(d.keys_fetched for d in diffs.values()),
        }
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target_db)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the tenant (default 100,000)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, interleaved (default 3)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--dsn", default=os.environ.get("MIGRATE_BENCH_DSN", DEFAULT_DSN))
    parser.add_argument("--checksum", choices=("auto", "hash", "text"), default="auto")
    args = parser.parse_args(argv)
    scale = max(1, round(args.rows / ROWS_PER_SCALE))
    source_db = f"tm_bench_src_{uuid.uuid4().hex[:8]}_acme"
    print(f"source: {scale * ROWS_PER_SCALE:,} rows (sample schema, scale {scale}) …", file=sys.stderr)
    started = time.perf_counter()
    create_source(args.dsn, source_db, "acme", scale)
    with psycopg.connect(make_conninfo(args.dsn, dbname=source_db), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # a settled source, as a production one is
        version = conn.execute("SHOW server_version").fetchone()
    print(f"  generated in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    runs = []
    try:
        with tempfile.TemporaryDirectory(prefix="tm-bench-") as tmp:
            work = Path(tmp)
            (work / "bench.yaml").write_text(PLAYBOOK)
            for rep in range(args.reps):
                run = one_rep(args.dsn, source_db, scale, args.checksum, work)
                runs.append(run)
                print(
                    f"  rep {rep + 1}: backfill {run['backfill']:.2f} s, validate {run['validate']:.2f} s,"
                    f" checksum {run['checksum']:.2f} s, diff {run['diff']:.2f} s ({run['mode']})",
                    file=sys.stderr,
                )
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(source_db)))

    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    figures = {
        "rows": scale * ROWS_PER_SCALE,
        "reps": args.reps,
        "server_version": version[0] if version else None,
        "checksum_mode": runs[0]["mode"],
        "backfill_seconds": round(median("backfill"), 3),
        "validate_seconds": round(median("validate"), 3),
        "checksum_seconds": round(median("checksum"), 3),
        "diff_seconds": round(median("diff"), 3),
        "diff_keys_fetched": runs[0]["keys_fetched"],
        "ratio_validate_to_backfill": round(median("validate") / median("backfill"), 3),
        "ratio_diff_to_checksum": round(median("diff") / median("checksum"), 3),
        # The checksum pass in the chosen mode (--checksum text: the cross-version fallback's cost).
        "ratio_checksum_to_backfill": round(median("checksum") / median("backfill"), 3),
    }
    figures["targets_met"] = (
        figures["ratio_validate_to_backfill"] <= 0.30 and figures["ratio_diff_to_checksum"] <= 3.0
    )
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
