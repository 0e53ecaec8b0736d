"""The live probes: act as the application role and try to see or change another tenant's rows.

Every probe runs as the application role (``SET LOCAL ROLE``) inside a transaction that
is rolled back, and sets the tenant the way the application must (``SET_TENANT_SQL``:
the tenant and, for transaction-bound schemas, the transaction's start). Only RLS's own
refusal, a CHECK or a NOT NULL on the tenant column counts as refused: a unique or
foreign-key violation means the row got past the policy, which PostgreSQL checks first.
The connection-history probes use a connection of their own, closed afterwards: a fresh
one (the setting never made), the same after a ``SET LOCAL`` ended (it reads ``''``),
and the same after a session-level ``SET`` (what a pooled connection hands the next request).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from migrate.catalog import TENANT_SETTING
from migrate.catalog.citus import PROPAGATE
from migrate.catalog.citus import set_tenant as citus_set_tenant
from migrate.catalog.ddl import set_tenant_sql
from migrate.checks.isolation.report import Collector
from migrate.checks.isolation.rules import Relation

SAMPLE = 1000  # rows counted at most per read probe: a leak is a leak at 1 row
Connect = Callable[[], psycopg.Connection[Any]]
# What refuses a tenant-less write without the row getting past the guard: RLS, the column's
# CHECK (tenant_id <> ''), or NOT NULL (the default NULLIF(…) gives NULL).
_GUARDS = ("42501", "23514", "23502")


@dataclass(frozen=True)
class Sample:
    """Two tenants of a table and a row of each, as the connecting role reads them."""

    a: str | None  # a tenant with rows
    b: str | None  # another tenant with rows, if any
    b_row: str | None  # B's row as jsonb text
    a_row: str | None


@dataclass
class Probes:
    conn: psycopg.Connection[Any]
    schema: str
    role: str
    column: str
    context: str  # session | transaction: what the schema is held to
    connect: Connect
    out: Collector
    fixes: Callable[[Relation], str]  # the generator's policy predicate for a table, for fixes
    # On Citus: the role's citus.propagate_set_commands (what its logins get), else None. The probes
    # then set the tenant as the application must there (catalog/citus.py): SET LOCAL, propagated so.
    citus: str | None = None
    probes: int = 0
    write_probes: int = 0
    probed: list[str] = field(default_factory=list)
    _samples: dict[str, Sample] = field(default_factory=dict)

    # ------------------------------------------------------------------ helpers
    def t(self, table: str) -> sql.Identifier:
        return sql.Identifier(self.schema, table)

    def q(self, table: str) -> str:
        return self.t(table).as_string(self.conn)

    @staticmethod
    def as_app(conn: psycopg.Connection[Any], role: str) -> None:
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))

    def set_tenant(self, conn: psycopg.Connection[Any], tenant: str, *, local: bool = True) -> None:
        if self.citus is None:
            conn.execute(set_tenant_sql(local=local), (tenant,))
            return
        # As the role's own logins run: its propagation setting, then the tenant with SET (LOCAL).
        conn.execute(sql.SQL("SET LOCAL {} = {}").format(sql.SQL(PROPAGATE), sql.Literal(self.citus)))
        conn.execute(citus_set_tenant(tenant, local=local))

    def fake_tenant(self, r: Relation) -> str:
        """A tenant id no row has, in the column's type."""
        if r.tenant_type == "uuid":
            return str(uuid.uuid4())
        return f"isolation-probe-{uuid.uuid4().hex[:8]}"

    def visible(
        self, conn: psycopg.Connection[Any], table: str, where: sql.Composable, params: Sequence[Any]
    ) -> int:
        """Rows of ``table`` the current context sees that match ``where``, up to SAMPLE."""
        query = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} LIMIT {}) AS sample").format(
            self.t(table), where, sql.Literal(SAMPLE)
        )
        row = conn.execute(query, tuple(params)).fetchone()
        return int(row[0]) if row else 0

    def _attempt(
        self, conn: psycopg.Connection[Any], statement: sql.Composed, params: tuple[Any, ...]
    ) -> tuple[int, psycopg.Error | None]:
        """Run one write in a savepoint: (rows touched, error). A write that succeeds stays."""
        self.probes += 1
        self.write_probes += 1
        try:
            with conn.transaction():
                cur = conn.execute(statement, params)
                return cur.rowcount, None
        except psycopg.Error as exc:
            return 0, exc

    def _rls_refused(self, exc: psycopg.Error | None) -> bool:
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            return True
        # Citus refuses any change of the distribution column (the tenant) before a row is touched.
        return (
            self.citus is not None
            and isinstance(exc, psycopg.errors.FeatureNotSupported)
            and "modifying the partition value of rows is not allowed" in str(exc)
        )

    @staticmethod
    def _first_line(exc: psycopg.Error) -> str:
        return str(exc).strip().splitlines()[0]

    def sample(self, table: str) -> Sample:
        """Two tenants and a row of each, read as the connecting role (once per table)."""
        if table in self._samples:
            return self._samples[table]
        t, col = self.t(table), sql.Identifier(self.column)
        with self.conn.transaction():
            row = self.conn.execute(
                sql.SQL("SELECT {}::text, to_jsonb(x)::text FROM {} AS x LIMIT 1").format(col, t)
            ).fetchone()
            a, a_row = (row[0], row[1]) if row else (None, None)
            other = self.conn.execute(
                sql.SQL(
                    "SELECT {}::text, to_jsonb(x)::text FROM {} AS x"
                    " WHERE {}::text IS DISTINCT FROM %s LIMIT 1"
                ).format(col, t, col),
                (a,),
            ).fetchone()
        found = Sample(a, other[0] if other else None, other[1] if other else None, a_row)
        self._samples[table] = found
        return found

    def columns(self, table: str) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
                " AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
                (self.q(table),),
            )
        ]

    def _insert(self, table: str, columns: list[str]) -> sql.Composed:
        """INSERT the columns of a row given as jsonb (identity values kept)."""
        names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        picked = sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(c)) for c in columns)
        t = self.t(table)
        return sql.SQL(
            "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE"
            " SELECT {} FROM jsonb_populate_record(NULL::{}, %s::jsonb) AS r"
        ).format(t, names, picked, t)

    # ------------------------------------------------------------------ tenant A vs tenant B
    def probe_table(self, r: Relation) -> None:
        """With tenant A's context: read, insert, update, move and delete tenant B's rows."""
        s = self.sample(r.name)
        a, b, b_row = s.a, s.b, s.b_row
        if a is None:
            self.out.note(f"{r.name}: no rows (or none the connecting role sees): write probes skipped")
        if b is None and a is not None:
            # One tenant only: act as a tenant that has no rows, so every row is another's.
            b, b_row, a = a, s.a_row, self.fake_tenant(r)
        context = a or self.fake_tenant(r)
        col = sql.Identifier(self.column)
        t = self.t(r.name)
        self.probed.append(r.name)
        with self.conn.transaction(force_rollback=True):
            self.as_app(self.conn, self.role)
            self.set_tenant(self.conn, context)
            if s.a is not None and context == s.a:
                self._own_rows(r, context)
            leaked = self._read(r, sql.SQL("{}::text IS DISTINCT FROM %s").format(col), (context,))
            if leaked:
                self.out.find(
                    r.name,
                    "probe-read-leak",
                    f"with tenant {context!r} set, {leaked}{'+' if leaked >= SAMPLE else ''} rows of "
                    "other tenants are visible to the application role",
                    f"enable and force RLS with a policy USING ({self.fixes(r)})",
                )
            if b is None or b_row is None or not r.writable:
                return
            columns = self.columns(r.name)
            fix = f"a policy WITH CHECK and USING ({self.fixes(r)}), RLS forced"
            insert = (
                self._insert(r.name, columns) if self.citus is None else self._insert_values(r.name, columns)
            )
            row = (b_row,) if self.citus is None else (b_row,) * len(columns)
            self._judge(r.name, "probe-insert-leak", f"inserting a row of tenant {b!r}", insert, row, fix)
            update = sql.SQL("UPDATE {} SET {} = {} WHERE {}::text = %s").format(t, col, col, col)
            self._judge(r.name, "probe-update-leak", f"updating rows of tenant {b!r}", update, (b,), fix)
            if s.b is not None:  # the context's own tenant has rows: try to hand one to B
                move = sql.SQL(
                    "UPDATE {} SET {} = %s WHERE ctid = (SELECT ctid FROM {} WHERE {}::text = %s LIMIT 1)"
                ).format(t, col, t, col)
                if self.citus is not None:  # Citus plans no ctid sub-query on a distributed table
                    move = sql.SQL("UPDATE {} SET {} = %s WHERE {}::text = %s").format(t, col, col)
                what = f"moving a row of tenant {context!r} to {b!r}"
                self._judge(r.name, "probe-update-moves-row", what, move, (b, context), fix)
            delete = sql.SQL(
                "DELETE FROM {} WHERE ctid IN (SELECT ctid FROM {} WHERE {}::text = %s LIMIT 1)"
            ).format(t, t, col)
            if self.citus is not None:  # every row of B, in a savepoint that is rolled back
                delete = sql.SQL("DELETE FROM {} WHERE {}::text = %s").format(t, col)
            self._judge(r.name, "probe-delete-leak", f"deleting a row of tenant {b!r}", delete, (b,), fix)

    def _insert_values(self, table: str, columns: list[str]) -> sql.Composed:
        """INSERT … VALUES of a row given as jsonb: what Citus routes to one shard (an INSERT …
        SELECT would go through its COPY path, which refuses any table with RLS). One parameter per
        column: the row's jsonb each time."""
        t = self.t(table)
        values = sql.SQL(", ").join(
            sql.SQL("(jsonb_populate_record(NULL::{}, %s::jsonb)).{}").format(t, sql.Identifier(c))
            for c in columns
        )
        names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        return sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({})").format(t, names, values)

    def _own_rows(self, r: Relation, tenant: str) -> None:
        """With tenant A set as the application sets it, A's own rows must be visible: a policy that
        silently matches nothing (on Citus: a tenant setting that never reached the workers) is a
        finding, never a pass — every leak probe would be blind too."""
        seen = self._read(r, sql.SQL("{}::text = %s").format(sql.Identifier(self.column)), (tenant,))
        if seen:
            return
        how = (
            f"SET LOCAL {TENANT_SETTING} with the role's {PROPAGATE} = {self.citus!r}"
            if self.citus is not None
            else "the application's statement"
        )
        fix = f"a policy USING ({self.fixes(r)})"
        if self.citus is not None and self.citus != "local":
            fix = (
                f"ALTER ROLE {self.role} SET {PROPAGATE} = 'local' (only then does SET LOCAL "
                f"{TENANT_SETTING} reach the workers), and set the tenant with SET LOCAL in every transaction"
            )
        self.out.find(
            r.name,
            "probe-own-tenant-invisible",
            f"with tenant {tenant!r} set ({how}), none of its own rows is visible to the application "
            "role although the table holds some: the policy silently matches nothing, and every "
            "leak probe of this table proves nothing",
            fix,
        )

    def _read(self, r: Relation, where: sql.Composable, params: Sequence[Any]) -> int:
        """One read probe in a savepoint: rows seen (0 when refused, with a note when it failed)."""
        try:
            with self.conn.transaction():
                seen = self.visible(self.conn, r.name, where, params)
        except psycopg.Error as exc:
            self.out.note(f"{r.name}: read probe failed: {self._first_line(exc)}")
            return 0
        self.probes += 1
        return seen

    def _judge(
        self, table: str, rule: str, what: str, statement: sql.Composed, params: tuple[Any, ...], fix: str
    ) -> None:
        rows, error = self._attempt(self.conn, statement, params)
        if error is not None and self._rls_refused(error):
            return
        if error is None and rows == 0:
            return
        got = (
            f"{rows} row(s) touched"
            if error is None
            else f"it got past the policy ({error.sqlstate}: {self._first_line(error)})"
        )
        self.out.find(table, rule, f"{what} from another tenant's context was not refused: {got}", fix)

    # ------------------------------------------------------------------ connection history
    def probe_history(self, tables: list[Relation]) -> None:
        """Fresh connection, then after a SET LOCAL ended, then as a pool hands it on."""
        if not tables:
            return
        tenant = next((s.a for s in (self.sample(r.name) for r in tables) if s.a is not None), None)
        conn = self.connect()
        try:
            conn.autocommit = True
            self._no_context(
                conn, tables, "probe-no-context-visible", "on a fresh connection (no tenant ever set)"
            )
            with conn.transaction(force_rollback=True):  # a request that set its tenant the right way
                self.as_app(conn, self.role)
                self.set_tenant(conn, tenant or self.fake_tenant(tables[0]))
            row = conn.execute("SELECT current_setting(%s, true)", (TENANT_SETTING,)).fetchone()
            reads = row[0] if row else None
            self._ended_context(conn, tables, tenant, reads)
            self._empty_tenant_writes(conn, tables, reads)
            if tenant is None:
                self.out.note("no rows in any tenant table: the pooled-connection probe had nothing to see")
            else:
                self._pooled(conn, tables, tenant)
        finally:
            conn.close()  # it carries a session-level tenant now: never hand it on

    def _no_context(
        self, conn: psycopg.Connection[Any], tables: list[Relation], rule: str, when: str
    ) -> None:
        with conn.transaction(force_rollback=True):
            self.as_app(conn, self.role)
            for r in tables:
                seen = self._count(conn, r, sql.SQL("true"), ())
                if seen:
                    self.out.find(
                        r.name,
                        rule,
                        f"{when}, {seen}{'+' if seen >= SAMPLE else ''} rows are visible: "
                        "it must fail closed",
                        f"USING and WITH CHECK ({self.fixes(r)}) (unset: NULL, no rows)",
                    )

    def _count(
        self,
        conn: psycopg.Connection[Any],
        r: Relation,
        where: sql.Composable,
        params: Sequence[Any],
        *,
        blank: bool = False,
    ) -> int:
        """A read probe on ``conn`` (inside its transaction); an error fails closed and is noted.

        ``blank``: the tenant setting reads '' — a cast of it that raises is a finding.
        """
        try:
            with conn.transaction():
                seen = self.visible(conn, r.name, where, params)
        except psycopg.Error as exc:
            if not (blank and isinstance(exc, psycopg.errors.InvalidTextRepresentation)):
                self.out.note(f"{r.name}: read probe failed: {self._first_line(exc)}")
                return 0
            self.out.find(
                r.name,
                "probe-empty-tenant-error",
                f"with the tenant setting reading '' (after a SET LOCAL ended) the policy raises "
                f"({exc.sqlstate}: {self._first_line(exc)}): every request on such a connection fails "
                "instead of seeing no rows",
                f"USING and WITH CHECK ({self.fixes(r)}): NULLIF turns '' into NULL before the cast",
            )
            return 0
        self.probes += 1
        return seen

    def _ended_context(
        self, conn: psycopg.Connection[Any], tables: list[Relation], tenant: str | None, reads: str | None
    ) -> None:
        """After a SET LOCAL ended the setting reads '': nothing may be visible, '' rows least of all."""
        col = sql.Identifier(self.column)
        shown = "NULL" if reads is None else repr(reads)
        with conn.transaction(force_rollback=True):
            self.as_app(conn, self.role)
            for r in tables:
                seen = self._count(conn, r, sql.SQL("true"), (), blank=True)
                if not seen:
                    continue
                empty = 0
                if r.tenant_type != "uuid":
                    empty = self._count(conn, r, sql.SQL("{}::text = ''").format(col), (), blank=True)
                if empty:
                    self.out.find(
                        r.name,
                        "probe-empty-tenant-visible",
                        f"after a SET LOCAL ended (the setting reads {shown}), {empty} rows stored with "
                        f"{self.column} = '' are visible: one bucket every request without a tenant "
                        "shares, reads and updates",
                        f"USING and WITH CHECK ({self.fixes(r)}); move or delete the rows with "
                        f"{self.column} = '', then ALTER TABLE {self.q(r.name)} "
                        f"ADD CHECK ({self.column} <> '')",
                    )
                if seen > empty:
                    of_tenant = (
                        self._count(conn, r, sql.SQL("{}::text = %s").format(col), (tenant,), blank=True)
                        if tenant
                        else 0
                    )
                    which = (
                        f", {of_tenant} of them of tenant {tenant!r}, the one set before" if of_tenant else ""
                    )
                    self.out.find(
                        r.name,
                        "probe-ended-context-visible",
                        f"after a SET LOCAL ended (the setting reads {shown}), {seen - empty} rows are "
                        f"visible{which}: a request that sets no tenant on a reused connection sees them",
                        f"USING and WITH CHECK ({self.fixes(r)})",
                    )

    def _empty_tenant_writes(
        self, conn: psycopg.Connection[Any], tables: list[Relation], reads: str | None
    ) -> None:
        """A request without a tenant on a reused connection: its rows must be refused, not stored with ''."""
        for r in tables:
            s = self.sample(r.name)
            row = s.a_row
            if row is None or not r.insert:
                continue
            columns = self.columns(r.name)
            others = [c for c in columns if c != self.column]
            insert = self._insert if self.citus is None else self._insert_values
            attempts = [("with the tenant column left to its default", insert(r.name, others), row, others)]
            if r.tenant_type != "uuid":
                blank = json.dumps({**json.loads(row), self.column: ""})
                attempts.append((f"with {self.column} = ''", insert(r.name, columns), blank, columns))
            with conn.transaction(force_rollback=True):
                self.as_app(conn, self.role)
                stored = False
                for what, statement, value, names in attempts:
                    params = (value,) if self.citus is None else (value,) * len(names)
                    _rows, error = self._attempt(conn, statement, params)
                    if error is not None and error.sqlstate in _GUARDS:
                        continue
                    if error is not None and self.citus is not None and error.sqlstate == "22004":
                        continue  # Citus itself refuses a NULL distribution column (the tenant)
                    if isinstance(error, psycopg.errors.InvalidTextRepresentation):
                        self.out.find(
                            r.name,
                            "probe-empty-tenant-error",
                            f"inserting {what} while the tenant setting reads '' raises ({error.sqlstate}: "
                            f"{self._first_line(error)}) instead of being refused by the policy",
                            f"USING and WITH CHECK ({self.fixes(r)}), and DEFAULT "
                            f"NULLIF(current_setting('{TENANT_SETTING}', true), '')::uuid",
                        )
                        continue
                    stored = stored or error is None
                    got = (
                        "stored"
                        if error is None
                        else f"got past the policy ({error.sqlstate}: {self._first_line(error)})"
                    )
                    self.out.find(
                        r.name,
                        "probe-empty-tenant-writable",
                        f"a row inserted {what} while the tenant setting reads "
                        f"{'NULL' if reads is None else repr(reads)} (after a SET LOCAL ended) was {got}: "
                        f"it would belong to no tenant and be shared by every request without one",
                        f"WITH CHECK ({self.fixes(r)}) and ALTER TABLE {self.q(r.name)} "
                        f"ADD CHECK ({self.column} <> '')",
                    )
                if stored:
                    where = sql.SQL("{}::text = ''").format(sql.Identifier(self.column))
                    seen = self._count(conn, r, where, (), blank=True)
                    if seen:
                        self.out.find(
                            r.name,
                            "probe-empty-tenant-visible",
                            f"the row just stored with {self.column} = '' is visible to the next request "
                            "without a tenant: one bucket shared across tenants",
                            f"USING and WITH CHECK ({self.fixes(r)})",
                        )

    def _pooled(self, conn: psycopg.Connection[Any], tables: list[Relation], tenant: str) -> None:
        """A session-level SET, then a request that sets nothing: what does it see?"""
        with conn.transaction():  # committed: a session-level SET outlives its transaction only then
            self.as_app(conn, self.role)
            self.set_tenant(conn, tenant, local=False)
        col = sql.Identifier(self.column)
        leaks: list[tuple[Relation, int]] = []
        with conn.transaction(force_rollback=True):
            self.as_app(conn, self.role)
            for r in tables:
                seen = self._count(conn, r, sql.SQL("{}::text = %s").format(col), (tenant,))
                if seen:
                    leaks.append((r, seen))
        if not leaks:
            self.out.note(
                f"tenant {tenant!r} set at session level (SET, not SET LOCAL) is not seen by the next "
                "transaction: the policies are transaction-bound"
            )
        elif self.context == "transaction":
            for r, seen in leaks:
                self.out.find(
                    r.name,
                    "probe-session-context-accepted",
                    f"tenant {tenant!r} set at session level (SET, not SET LOCAL) in one transaction "
                    f"shows {seen}{'+' if seen >= SAMPLE else ''} rows in the next, which set no tenant: the "
                    "schema is held to target.tenant_context 'transaction' but its policy is not",
                    f"USING and WITH CHECK ({self.fixes(r)}) in the policies of {self.q(r.name)}, as "
                    "'migrate schema generate --tenant-context transaction' writes them",
                )
        else:
            total = sum(n for _r, n in leaks)
            capped = "+" if any(n >= SAMPLE for _r, n in leaks) else ""
            self.out.inform(
                ", ".join(r.name for r, _n in leaks),
                "session-context-survives",
                f"tenant {tenant!r} set at session level (SET, not SET LOCAL) stays on the connection: "
                f"the next request on it that sets no tenant sees that tenant's rows ({total}{capped} here); "
                "a pool that hands connections on without RESET ALL hands the tenant on too",
                "the application sets the tenant with SET LOCAL / set_config(…, true) in every "
                "transaction; to have the database refuse the mistake, set target.tenant_context: "
                "transaction and regenerate the policies (README, 'Tenant context')",
            )

    # ------------------------------------------------------------------ what RLS cannot hide
    def probe_estimates(self, tables: list[Relation]) -> None:
        """Planner estimates for another tenant against one that does not exist."""
        col = sql.Identifier(self.column)
        revealing: list[str] = []
        example = ""
        for r in tables:
            s = self.sample(r.name)
            other = self._frequent_tenant(r, s.a)
            if other is None:
                continue
            with self.conn.transaction(force_rollback=True):
                self.as_app(self.conn, self.role)
                self.set_tenant(self.conn, s.a or self.fake_tenant(r))
                # Literals, not parameters: the estimate of a custom plan for the value is what
                # the application sees with EXPLAIN.
                plans = [
                    self.conn.execute(
                        sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} WHERE {} = {}").format(
                            self.t(r.name), col, sql.Literal(value)
                        )
                    ).fetchone()
                    for value in (other, self.fake_tenant(r))
                ]
            self.probes += 1
            rows = [p[0][0]["Plan"]["Plan Rows"] if p else 0 for p in plans]
            if rows[0] != rows[1]:
                revealing.append(r.name)
                example = example or (
                    f"EXPLAIN on {r.name} with {self.column} = '{other}' estimates "
                    f"{rows[0]:,} rows, {rows[1]:,} for a tenant that does not exist"
                )
        if revealing:
            self.out.inform(
                ", ".join(revealing),
                "planner-estimates-reveal-tenants",
                f"the application role can ask the planner about any tenant: {example} — which "
                "tenants exist and about how many rows each has (table totals are public in "
                "pg_class.reltuples anyway)",
                f"ALTER TABLE … ALTER COLUMN {self.column} SET STATISTICS 0, then drop the column "
                "statistics already gathered (as a superuser, the table's pg_statistic row for "
                f"{self.column}; PostgreSQL 18: pg_clear_attribute_stats) — every tenant then gets "
                "the same estimate, and plans keyed on the tenant column stay index scans",
            )

    def _frequent_tenant(self, r: Relation, besides: str | None) -> str | None:
        """A tenant the planner's statistics know (a most common value), other than ``besides``."""
        row = self.conn.execute(
            "SELECT most_common_vals::text::text[] FROM pg_stats WHERE schemaname = %s AND tablename = %s"
            " AND attname = %s",
            (self.schema, r.name, self.column),
        ).fetchone()
        values = [v for v in (row[0] if row and row[0] else []) if v != besides]
        return values[0] if values else None
