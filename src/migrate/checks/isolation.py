"""The isolation check: the shared schema's RLS read from the catalog, then tried as the application.

Static rules (``isolation_*.sql`` read the catalog) — one finding per table and rule:

==================================  =========================================================
``missing-tenant-column``           a table the application can reach has no tenant column
                                    and is not declared global
``tenant-column-nullable``          the tenant column allows NULL
``rls-disabled``                    row-level security is not enabled
``rls-not-forced``                  enabled but not forced: the owner (and whoever has its
                                    privileges) is not subject to it
``policy-without-using``            a permissive policy that filters no rows it reads
``policy-without-with-check``       a permissive policy that checks no rows it writes
``policy-not-tenant-keyed``         a permissive policy not keyed on the tenant column and
                                    ``current_setting('app.tenant_id', …)``
``policy-setting-not-missing-ok``   ``current_setting('app.tenant_id')`` without ``true``:
                                    errors in a session that never set it
``truncate-granted``                TRUNCATE ignores row-level security
``key-without-tenant-column``       a primary or unique key without the tenant column: its
                                    violation tells one tenant another's value exists
``foreign-key-without-tenant-column``  a foreign key between tenant tables without it: a row
                                    can point at another tenant's row
``global-table-writable``           the application may change a global (reference) table
``app-role-owns-table``             the application role owns a table (or has its owner's
                                    rights): it can switch RLS off
``app-role-superuser`` / ``app-role-bypassrls`` / ``app-role-can-become-privileged``
``view-definer-rights``             a view over tenant tables without ``security_invoker``
``materialized-view-over-tenant-tables``  holds every tenant's rows; RLS never applies
``security-definer-function``       a SECURITY DEFINER function the application may call
                                    reads tenant tables with its owner's rights
==================================  =========================================================

Live probes, as the application role (``SET LOCAL ROLE`` inside transactions that
are always rolled back; the connecting role must be allowed to become it):
``probe-read-leak``, ``probe-insert-leak``, ``probe-update-leak``,
``probe-update-moves-row``, ``probe-delete-leak`` (with tenant A's context, B's rows
are visible or writable), ``probe-no-context-visible`` (rows visible with no tenant
set: it must fail closed) and ``probe-context-survives`` (a ``SET LOCAL`` context
seen in the next transaction on the same connection, as a pool would reuse it).
Only RLS's own refusal (SQLSTATE 42501) counts as refused: a unique or foreign-key
violation means the row got past the policy, which PostgreSQL checks first.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import psycopg
from psycopg import sql

from migrate.catalog import TENANT_SETTING
from migrate.errors import SettingsError

SAMPLE = 1000  # rows counted at most per read probe: a leak is a leak at 1 row


@dataclass(frozen=True)
class Finding:
    table: str
    rule: str
    detail: str
    fix: str

    def line(self) -> str:
        return f"{self.table}: {self.rule}: {self.detail} (fix: {self.fix})"


@dataclass(frozen=True)
class IsolationReport:
    schema: str
    app_role: str
    findings: tuple[Finding, ...]
    tables: tuple[str, ...]  # tenant tables checked
    probes: int  # live probes run
    notes: tuple[str, ...] = ()  # what could not be probed, and why

    @property
    def ok(self) -> bool:
        return not self.findings


@dataclass
class _Relation:
    name: str
    kind: str
    parent: str | None
    rls: bool
    forced: bool
    owner: str
    role_owns: bool
    has_tenant: bool
    tenant_not_null: bool
    select: bool
    insert: bool
    update: bool
    delete: bool
    truncate: bool
    options: list[str]
    reads: list[str]

    @property
    def reachable(self) -> bool:
        return self.select or self.insert or self.update or self.delete or self.truncate


def _sql(name: str) -> str:
    return (files("migrate.checks") / name).read_text()


@dataclass
class _Check:
    conn: psycopg.Connection[Any]
    schema: str
    role: str
    column: str
    global_tables: frozenset[str]
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    probes: int = 0

    def find(self, table: str, rule: str, detail: str, fix: str) -> None:
        self.findings.append(Finding(table, rule, detail, fix))

    def q(self, name: str) -> str:
        return sql.Identifier(self.schema, name).as_string(self.conn)

    @property
    def params(self) -> dict[str, str]:
        return {"schema": self.schema, "role": self.role, "column": self.column}

    # ------------------------------------------------------------------ static
    def role_rules(self, probe: bool) -> None:
        row = self.conn.execute(_sql("isolation_role.sql"), self.params).fetchone()
        if row is None:
            raise SettingsError(
                f"the application role {self.role!r} does not exist on the target",
                where="--app-role",
                hint="name the role the application connects as (CREATE ROLE … NOSUPERUSER NOBYPASSRLS)",
            )
        superuser, bypass, privileged, may_become = row
        if superuser:
            self.find(
                f"role {self.role}",
                "app-role-superuser",
                "a superuser ignores row-level security, even when forced",
                f"ALTER ROLE {self.role} NOSUPERUSER",
            )
        if bypass:
            self.find(
                f"role {self.role}",
                "app-role-bypassrls",
                "a BYPASSRLS role ignores row-level security, even when forced",
                f"ALTER ROLE {self.role} NOBYPASSRLS",
            )
        for other in privileged:
            self.find(
                f"role {self.role}",
                "app-role-can-become-privileged",
                f"it is a member of {other}, a superuser or BYPASSRLS role, and can SET ROLE to it",
                f"REVOKE {other} FROM {self.role}",
            )
        if probe and not may_become:
            raise SettingsError(
                f"the connecting role may not SET ROLE {self.role}, so the probes cannot act as it",
                where="--target-dsn",
                hint=f"GRANT {self.role} TO the connecting role, or connect as a superuser",
            )

    def relations(self) -> list[_Relation]:
        return [_Relation(*row) for row in self.conn.execute(_sql("isolation_relations.sql"), self.params)]

    def table_rules(self, rels: list[_Relation]) -> list[_Relation]:
        """Static rules per table; returns the tenant tables (and partitions) to probe."""
        by_name = {r.name: r for r in rels}

        def root(r: _Relation) -> _Relation:
            while r.parent is not None and r.parent in by_name:
                r = by_name[r.parent]
            return r

        tenant: list[_Relation] = []
        for r in rels:
            if r.kind not in ("r", "p"):
                continue
            if r.role_owns:
                self.find(
                    r.name,
                    "app-role-owns-table",
                    f"owned by {r.owner}, whose rights the application role has: it can disable "
                    "or drop the policies",
                    f"ALTER TABLE {self.q(r.name)} OWNER TO a migration role the application does not use",
                )
            if not r.reachable:
                continue  # the application cannot touch it (alembic's version table, staging …)
            if root(r).name in self.global_tables:
                writes = [
                    p
                    for p, ok in (
                        ("INSERT", r.insert),
                        ("UPDATE", r.update),
                        ("DELETE", r.delete),
                        ("TRUNCATE", r.truncate),
                    )
                    if ok
                ]
                if writes:
                    self.find(
                        r.name,
                        "global-table-writable",
                        f"a global table, but the application role may {', '.join(writes)}",
                        f"REVOKE {', '.join(writes)} ON {self.q(r.name)} FROM {self.role}",
                    )
                continue
            if not r.has_tenant:
                self.find(
                    r.name,
                    "missing-tenant-column",
                    f"the application role can reach it and it has no {self.column} column",
                    f"add {self.column} NOT NULL (in every key, with RLS), or declare the table global",
                )
                continue
            tenant.append(r)
            if not r.tenant_not_null:
                self.find(
                    r.name,
                    "tenant-column-nullable",
                    f"{self.column} allows NULL: such rows belong to no tenant",
                    f"ALTER TABLE {self.q(r.name)} ALTER COLUMN {self.column} SET NOT NULL",
                )
            if not r.rls:
                self.find(
                    r.name,
                    "rls-disabled",
                    "row-level security is not enabled: every tenant's rows are visible",
                    f"ALTER TABLE {self.q(r.name)} ENABLE ROW LEVEL SECURITY (and FORCE)",
                )
            elif not r.forced:
                who = (
                    "the application role owns it, so no policy applies to it"
                    if r.role_owns
                    else f"its owner {r.owner} is not subject to the policies"
                )
                self.find(
                    r.name,
                    "rls-not-forced",
                    f"row-level security is enabled but not forced: {who}",
                    f"ALTER TABLE {self.q(r.name)} FORCE ROW LEVEL SECURITY",
                )
            if r.truncate:
                self.find(
                    r.name,
                    "truncate-granted",
                    "TRUNCATE ignores row-level security: the application could empty every tenant",
                    f"REVOKE TRUNCATE ON {self.q(r.name)} FROM {self.role}",
                )
        return tenant

    def policy_rules(self, tenant: Collection[str]) -> None:
        setting = re.compile(
            r"current_setting\('" + re.escape(TENANT_SETTING) + r"'(::text)?(?P<ok>,\s*true)?\)"
        )
        column = re.compile(r'(^|[^\w"])("?)' + re.escape(self.column) + r"\2($|[^\w\"])")
        for table, name, cmd, permissive, applies, using, check in self.conn.execute(
            _sql("isolation_policies.sql"), self.params
        ):
            if table not in tenant or not permissive or not applies:
                continue  # restrictive policies only narrow; others' policies do not reach the app
            subject = f"{table}"
            reads, writes = cmd in ("*", "r", "w", "d"), cmd in ("*", "a", "w")
            if reads and using is None:
                self.find(
                    subject,
                    "policy-without-using",
                    f"policy {name} has no USING clause: it lets every row be read",
                    f"ALTER POLICY {name} ON {self.q(table)} USING ({self.column} = "
                    f"current_setting('{TENANT_SETTING}', true))",
                )
            if writes and check is None:
                self.find(
                    subject,
                    "policy-without-with-check",
                    f"policy {name} has no WITH CHECK clause: the rows it writes are not checked "
                    "explicitly against the tenant",
                    f"ALTER POLICY {name} ON {self.q(table)} WITH CHECK ({self.column} = "
                    f"current_setting('{TENANT_SETTING}', true))",
                )
            for expr in (e for e in (using, check) if e is not None):
                match = setting.search(expr)
                if match is None or not column.search(expr):
                    self.find(
                        subject,
                        "policy-not-tenant-keyed",
                        f"policy {name} ({expr}) does not compare {self.column} with "
                        f"current_setting('{TENANT_SETTING}', true)",
                        f"USING and WITH CHECK ({self.column} = current_setting('{TENANT_SETTING}', true))",
                    )
                    break
                if not match.group("ok"):
                    self.find(
                        subject,
                        "policy-setting-not-missing-ok",
                        f"policy {name} reads current_setting('{TENANT_SETTING}') without missing_ok: "
                        "it raises in a session that never set a tenant",
                        f"write current_setting('{TENANT_SETTING}', true) (NULL: no rows)",
                    )
                    break

    def key_rules(self, tenant: Collection[str]) -> None:
        for table, name, kind, columns, ref_table, ref_local in self.conn.execute(
            _sql("isolation_keys.sql"), self.params
        ):
            if table not in tenant or self.column in columns:
                continue
            if kind == "f":
                if not ref_local or ref_table not in tenant:
                    continue  # a reference to a global table needs no tenant column
                self.find(
                    table,
                    "foreign-key-without-tenant-column",
                    f"foreign key {name} ({', '.join(columns)}) → {ref_table} does not include "
                    f"{self.column}: a row can point at another tenant's row (and Citus refuses it)",
                    f"make it ({self.column}, {', '.join(columns)}) → {ref_table} ({self.column}, …)",
                )
            else:
                what = {"p": "primary key", "u": "unique constraint", "i": "unique index"}[kind]
                self.find(
                    table,
                    "key-without-tenant-column",
                    f"{what} {name} ({', '.join(columns)}) does not include {self.column}: its violation "
                    "tells one tenant that another holds the value (and Citus refuses it)",
                    f"lead it with {self.column}: ({self.column}, {', '.join(columns)})",
                )

    def view_rules(self, rels: list[_Relation], tenant: Collection[str]) -> None:
        outside = [
            _Relation(
                name,
                kind,
                None,
                False,
                False,
                "",
                False,
                False,
                False,
                select,
                False,
                False,
                False,
                False,
                list(options),
                list(reads),
            )
            for name, kind, options, select, reads in self.conn.execute(
                _sql("isolation_outside_views.sql"), self.params
            )
        ]
        for v in [r for r in rels if r.kind in ("v", "m")] + outside:
            over = sorted(set(v.reads) & set(tenant))
            if not over or not v.select:
                continue
            if v.kind == "m":
                self.find(
                    v.name,
                    "materialized-view-over-tenant-tables",
                    f"it stores rows of every tenant from {', '.join(over)}, and RLS never applies to it",
                    f"take the application's SELECT on {v.name} away, or use a security_invoker view",
                )
            elif "security_invoker=true" not in [o.lower() for o in v.options]:
                self.find(
                    v.name,
                    "view-definer-rights",
                    f"it reads {', '.join(over)} with its owner's rights, not the application's",
                    f"ALTER VIEW {v.name} SET (security_invoker = true)",
                )

    def function_rules(self, tenant: Collection[str]) -> None:
        for signature, owner, executable, source, depends in self.conn.execute(
            _sql("isolation_functions.sql"), self.params
        ):
            if not executable:
                continue
            named = {t for t in tenant if re.search(r"\b" + re.escape(t) + r"\b", source, re.IGNORECASE)}
            reads = sorted(named | (set(depends) & set(tenant)))
            if reads:
                self.find(
                    signature,
                    "security-definer-function",
                    f"SECURITY DEFINER (owner {owner}) and reads {', '.join(reads)}: it runs with its "
                    "owner's rights, which may ignore the policies",
                    f"ALTER FUNCTION {signature} SECURITY INVOKER, or REVOKE EXECUTE … FROM {self.role}",
                )

    # ------------------------------------------------------------------ live probes
    def as_app(self) -> None:
        self.conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(self.role)))

    def visible(self, table: str, other_than: str | None) -> int:
        """Rows of ``table`` the current context sees (of tenants other than ``other_than``), up to SAMPLE."""
        where: sql.Composable = sql.SQL("")
        params: tuple[str, ...] = ()
        if other_than is not None:
            where = sql.SQL(" WHERE {} IS DISTINCT FROM %s").format(sql.Identifier(self.column))
            params = (other_than,)
        query = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {}{} LIMIT {}) AS sample").format(
            sql.Identifier(self.schema, table), where, sql.Literal(SAMPLE)
        )
        row = self.conn.execute(query, params).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _refused(exc: psycopg.Error) -> bool:
        return isinstance(exc, psycopg.errors.InsufficientPrivilege)

    def _attempt(self, statement: sql.Composed, params: tuple[Any, ...]) -> tuple[int, psycopg.Error | None]:
        """Run one write in a savepoint: (rows touched, error)."""
        self.probes += 1
        try:
            with self.conn.transaction():
                cur = self.conn.execute(statement, params)
                return cur.rowcount, None
        except psycopg.Error as exc:
            return 0, exc

    def sample(self, table: str) -> tuple[str | None, str | None, str | None]:
        """(tenant A, tenant B, B's row as jsonb text), read as the connecting role."""
        t = sql.Identifier(self.schema, table)
        col = sql.Identifier(self.column)
        with self.conn.transaction():
            row = self.conn.execute(sql.SQL("SELECT {}::text FROM {} LIMIT 1").format(col, t)).fetchone()
            a = row[0] if row else None
            other = self.conn.execute(
                sql.SQL(
                    "SELECT {}::text, to_jsonb(x)::text FROM {} AS x WHERE {} IS DISTINCT FROM %s LIMIT 1"
                ).format(col, t, col),
                (a,),
            ).fetchone()
        return a, (other[0] if other else None), (other[1] if other else None)

    def probe_table(self, r: _Relation, columns: list[str]) -> None:
        a, b, b_row = self.sample(r.name)
        if a is None:
            self.notes.append(f"{r.name}: no rows (or none the connecting role sees): write probes skipped")
        if b is None and a is not None:
            # One tenant only: act as a tenant that has no rows, so every row is another's.
            b, a = a, f"isolation-probe-{uuid.uuid4().hex[:8]}"
            b_row = self._row_of(r.name, b)
        context = a or f"isolation-probe-{uuid.uuid4().hex[:8]}"
        t = sql.Identifier(self.schema, r.name)
        col = sql.Identifier(self.column)
        with self.conn.transaction(force_rollback=True):
            self.as_app()
            self.conn.execute("SELECT set_config(%s, %s, true)", (TENANT_SETTING, context))
            self.probes += 1
            try:
                with self.conn.transaction():
                    leaked = self.visible(r.name, context)
            except psycopg.Error as exc:
                leaked = 0
                if not self._refused(exc):
                    self.notes.append(f"{r.name}: read probe failed: {str(exc).strip().splitlines()[0]}")
            if leaked:
                self.find(
                    r.name,
                    "probe-read-leak",
                    f"with tenant {context!r} set, {leaked}{'+' if leaked >= SAMPLE else ''} rows of "
                    "other tenants are visible to the application role",
                    "enable and force RLS with a policy USING the tenant column",
                )
            if b is None or b_row is None:
                return
            names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
            picked = sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(c)) for c in columns)
            insert = sql.SQL(
                "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE"
                " SELECT {} FROM jsonb_populate_record(NULL::{}, %s::jsonb) AS r"
            ).format(t, names, picked, t)
            self._judge(r.name, "probe-insert-leak", f"inserting a row of tenant {b!r}", insert, (b_row,), b)
            update = sql.SQL("UPDATE {} SET {} = {} WHERE {} = %s").format(t, col, col, col)
            self._judge(r.name, "probe-update-leak", f"updating rows of tenant {b!r}", update, (b,), b)
            if a is not None and not a.startswith("isolation-probe-"):
                move = sql.SQL(
                    "UPDATE {} SET {} = %s WHERE ctid = (SELECT ctid FROM {} WHERE {} = %s LIMIT 1)"
                ).format(t, col, t, col)
                self._judge(
                    r.name,
                    "probe-update-moves-row",
                    f"moving a row of tenant {a!r} to {b!r}",
                    move,
                    (b, a),
                    b,
                )
            delete = sql.SQL(
                "DELETE FROM {} WHERE ctid IN (SELECT ctid FROM {} WHERE {} = %s LIMIT 1)"
            ).format(t, t, col)
            self._judge(r.name, "probe-delete-leak", f"deleting a row of tenant {b!r}", delete, (b,), b)

    def _row_of(self, table: str, tenant: str) -> str | None:
        row = self.conn.execute(
            sql.SQL("SELECT to_jsonb(x)::text FROM {} AS x WHERE {} = %s LIMIT 1").format(
                sql.Identifier(self.schema, table), sql.Identifier(self.column)
            ),
            (tenant,),
        ).fetchone()
        return row[0] if row else None

    def _judge(
        self, table: str, rule: str, what: str, statement: sql.Composed, params: tuple[Any, ...], b: str
    ) -> None:
        rows, error = self._attempt(statement, params)
        if error is not None and self._refused(error):
            return
        if error is None and rows == 0:
            return
        got = (
            f"{rows} row(s) touched"
            if error is None
            else f"it got past the policy ({error.sqlstate}: " + (str(error).strip().splitlines()[0] + ")")
        )
        self.find(
            table,
            rule,
            f"{what} from another tenant's context was not refused: {got}",
            "a policy WITH CHECK and USING on the tenant column, RLS forced",
        )

    def probe_contexts(self, tables: list[_Relation]) -> None:
        """No context: nothing visible. A SET LOCAL context does not outlive its transaction."""
        with self.conn.transaction(force_rollback=True):
            self.as_app()
            for r in tables:
                self.probes += 1
                try:
                    with self.conn.transaction():
                        seen = self.visible(r.name, None)
                except psycopg.Error:
                    seen = 0  # an error is failing closed too; the static rules say why
                if seen:
                    self.find(
                        r.name,
                        "probe-no-context-visible",
                        f"with no tenant set, {seen}{'+' if seen >= SAMPLE else ''} rows are visible: it "
                        "must fail closed",
                        f"key the policy on current_setting('{TENANT_SETTING}', true) (NULL: no rows)",
                    )
        tenant = next((self.sample(r.name)[0] for r in tables), None)
        if tenant is None:
            self.notes.append("no rows in any tenant table: the context-survival probe had nothing to see")
            return
        with self.conn.transaction(force_rollback=True):
            self.as_app()
            self.conn.execute(
                sql.SQL("SET LOCAL {} = {}").format(sql.SQL(TENANT_SETTING), sql.Literal(tenant))
            )
        with self.conn.transaction(force_rollback=True):
            self.as_app()
            for r in tables:
                self.probes += 1
                try:
                    with self.conn.transaction():
                        seen = self.visible(r.name, None)
                except psycopg.Error:
                    seen = 0
                if seen:
                    self.find(
                        r.name,
                        "probe-context-survives",
                        f"tenant {tenant!r} set with SET LOCAL in one transaction still shows {seen} "
                        "rows in the next one on the same connection",
                        "set the tenant with SET LOCAL / set_config(…, true) only, and key the policy "
                        f"on current_setting('{TENANT_SETTING}', true)",
                    )

    def columns(self, table: str) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
                " AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
                (self.q(table),),
            )
        ]

    def run(self, probe: bool) -> IsolationReport:
        self.role_rules(probe)
        rels = self.relations()
        tenant = self.table_rules(rels)
        names = {r.name for r in tenant}
        self.policy_rules(names)
        self.key_rules(names)
        self.view_rules(rels, names)
        self.function_rules(names)
        if probe:
            readable = [r for r in tenant if r.select or r.insert or r.update or r.delete]
            self.probe_contexts(readable)
            for r in readable:
                self.probe_table(r, self.columns(r.name))
        return IsolationReport(
            schema=self.schema,
            app_role=self.role,
            findings=tuple(_dedupe(self.findings)),
            tables=tuple(sorted(names)),
            probes=self.probes,
            notes=tuple(self.notes),
        )


def _dedupe(findings: list[Finding]) -> Iterator[Finding]:
    seen: set[tuple[str, str, str]] = set()
    for f in findings:
        if (f.table, f.rule, f.detail) not in seen:
            seen.add((f.table, f.rule, f.detail))
            yield f


def check_isolation(
    conn: psycopg.Connection[Any],
    *,
    schema: str,
    app_role: str,
    tenant_column: str = "tenant_id",
    global_tables: Collection[str] = (),
    probe: bool = True,
) -> IsolationReport:
    """Static findings from the catalog, then live probes as ``app_role`` (all rolled back).

    ``conn`` must be an autocommit connection whose role may ``SET ROLE app_role``
    and, for the write probes, can read every tenant's rows (superuser or BYPASSRLS).
    """
    check = _Check(conn, schema, app_role, tenant_column, frozenset(global_tables))
    return check.run(probe)
