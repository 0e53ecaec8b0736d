"""The static rules: the shared schema's RLS, keys, grants and roles, read from the catalog."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from migrate.catalog import TENANT_SETTING
from migrate.checks.isolation.report import Collector, sql_text
from migrate.errors import SettingsError


@dataclass
class Relation:
    name: str
    kind: str
    parent: str | None
    rls: bool
    forced: bool
    owner: str
    role_owns: bool
    has_tenant: bool
    tenant_not_null: bool
    tenant_type: str | None
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

    @property
    def writable(self) -> bool:
        return self.insert or self.update or self.delete


@dataclass
class Rules:
    """The catalog's answers for one schema and application role, as findings in ``out``."""

    conn: psycopg.Connection[Any]
    schema: str
    role: str
    column: str
    global_tables: frozenset[str]
    out: Collector

    def q(self, name: str) -> str:
        return sql.Identifier(self.schema, name).as_string(self.conn)

    @property
    def params(self) -> dict[str, str]:
        return {"schema": self.schema, "role": self.role, "column": self.column}

    def role_rules(self, probe: bool) -> bool:
        """Findings on the role itself; returns whether it may use the schema (USAGE)."""
        row = self.conn.execute(sql_text("role.sql"), self.params).fetchone()
        if row is None:
            raise SettingsError(
                f"the application role {self.role!r} does not exist on the target",
                where="--app-role",
                hint="name the role the application connects as (CREATE ROLE … NOSUPERUSER NOBYPASSRLS)",
            )
        superuser, bypass, privileged, may_become, usage = row
        if superuser:
            self.out.find(
                f"role {self.role}",
                "app-role-superuser",
                "a superuser ignores row-level security, even when forced",
                f"ALTER ROLE {self.role} NOSUPERUSER",
            )
        if bypass:
            self.out.find(
                f"role {self.role}",
                "app-role-bypassrls",
                "a BYPASSRLS role ignores row-level security, even when forced",
                f"ALTER ROLE {self.role} NOBYPASSRLS",
            )
        for other in privileged:
            self.out.find(
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
        if not usage:
            self.out.find(
                f"schema {self.schema}",
                "app-role-cannot-reach",
                f"the application role has no USAGE on schema {self.schema}: every probe would be "
                "refused for want of privileges, which proves nothing about the policies",
                f"GRANT USAGE ON SCHEMA {sql.Identifier(self.schema).as_string(self.conn)} TO {self.role}",
            )
        return bool(usage)

    def relations(self) -> list[Relation]:
        return [Relation(*row) for row in self.conn.execute(sql_text("relations.sql"), self.params)]

    def table_rules(self, rels: list[Relation]) -> list[Relation]:
        """Static rules per table; returns the tenant tables (and partitions), reachable or not."""
        by_name = {r.name: r for r in rels}

        def root(r: Relation) -> Relation:
            while r.parent is not None and r.parent in by_name:
                r = by_name[r.parent]
            return r

        tenant: list[Relation] = []
        for r in rels:
            if r.kind not in ("r", "p"):
                continue
            if r.role_owns:
                self.out.find(
                    r.name,
                    "app-role-owns-table",
                    f"owned by {r.owner}, whose rights the application role has: it can disable "
                    "or drop the policies",
                    f"ALTER TABLE {self.q(r.name)} OWNER TO a migration role the application does not use",
                )
            if root(r).name in self.global_tables:
                self._global_rules(r)
                continue
            if not r.reachable:
                if r.has_tenant and r.parent is None:
                    # Fail closed: a tenant table nothing can be probed on proves nothing. (A
                    # partition is reached through its parent; alembic's table has no tenant.)
                    tenant.append(r)
                    self.out.find(
                        r.name,
                        "app-role-cannot-reach",
                        "the application role holds no privilege on it, so no probe could act on it "
                        "as the application: its isolation is unproven",
                        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {self.q(r.name)} TO {self.role} "
                        "(never TRUNCATE), or declare the table global if every tenant shares it",
                    )
                continue
            if not r.has_tenant:
                self.out.find(
                    r.name,
                    "missing-tenant-column",
                    f"the application role can reach it and it has no {self.column} column",
                    f"add {self.column} NOT NULL (in every key, with RLS), or declare the table global",
                )
                continue
            tenant.append(r)
            self._tenant_table_rules(r)
        return tenant

    def _global_rules(self, r: Relation) -> None:
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
            self.out.find(
                r.name,
                "global-table-writable",
                f"a global table, but the application role may {', '.join(writes)}",
                f"REVOKE {', '.join(writes)} ON {self.q(r.name)} FROM {self.role}",
            )

    def _tenant_table_rules(self, r: Relation) -> None:
        if not r.tenant_not_null:
            self.out.find(
                r.name,
                "tenant-column-nullable",
                f"{self.column} allows NULL: such rows belong to no tenant",
                f"ALTER TABLE {self.q(r.name)} ALTER COLUMN {self.column} SET NOT NULL",
            )
        if not r.rls:
            self.out.find(
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
            self.out.find(
                r.name,
                "rls-not-forced",
                f"row-level security is enabled but not forced: {who}",
                f"ALTER TABLE {self.q(r.name)} FORCE ROW LEVEL SECURITY",
            )
        if r.truncate:
            self.out.find(
                r.name,
                "truncate-granted",
                "TRUNCATE ignores row-level security: the application could empty every tenant",
                f"REVOKE TRUNCATE ON {self.q(r.name)} FROM {self.role}",
            )

    def policy_rules(self, tenant: Collection[str], predicate: str) -> None:
        """``predicate`` is the generator's USING / WITH CHECK, written into every fix."""
        setting = re.compile(
            r"current_setting\('" + re.escape(TENANT_SETTING) + r"'(::text)?(?P<ok>,\s*true)?\)"
        )
        column = re.compile(r'(^|[^\w"])("?)' + re.escape(self.column) + r"\2($|[^\w\"])")
        for table, name, cmd, permissive, applies, using, check in self.conn.execute(
            sql_text("policies.sql"), self.params
        ):
            if table not in tenant or not permissive or not applies:
                continue  # restrictive policies only narrow; others' policies do not reach the app
            reads, writes = cmd in ("*", "r", "w", "d"), cmd in ("*", "a", "w")
            if reads and using is None:
                self.out.find(
                    table,
                    "policy-without-using",
                    f"policy {name} has no USING clause: it lets every row be read",
                    f"ALTER POLICY {name} ON {self.q(table)} USING ({predicate})",
                )
            if writes and check is None:
                self.out.find(
                    table,
                    "policy-without-with-check",
                    f"policy {name} has no WITH CHECK clause: the rows it writes are not checked "
                    "explicitly against the tenant",
                    f"ALTER POLICY {name} ON {self.q(table)} WITH CHECK ({predicate})",
                )
            for expr in (e for e in (using, check) if e is not None):
                match = setting.search(expr)
                if match is None or not column.search(expr):
                    self.out.find(
                        table,
                        "policy-not-tenant-keyed",
                        f"policy {name} ({expr}) does not compare {self.column} with "
                        f"current_setting('{TENANT_SETTING}', true)",
                        f"USING and WITH CHECK ({predicate})",
                    )
                    break
                if not match.group("ok"):
                    self.out.find(
                        table,
                        "policy-setting-not-missing-ok",
                        f"policy {name} reads current_setting('{TENANT_SETTING}') without missing_ok: "
                        "it raises in a session that never set a tenant",
                        f"USING and WITH CHECK ({predicate})",
                    )
                    break

    def key_rules(self, tenant: Collection[str]) -> None:
        for table, name, kind, columns, ref_table, ref_local in self.conn.execute(
            sql_text("keys.sql"), self.params
        ):
            if table not in tenant or self.column in columns:
                continue
            if kind == "f":
                if not ref_local or ref_table not in tenant:
                    continue  # a reference to a global table needs no tenant column
                self.out.find(
                    table,
                    "foreign-key-without-tenant-column",
                    f"foreign key {name} ({', '.join(columns)}) → {ref_table} does not include "
                    f"{self.column}: a row can point at another tenant's row (and Citus refuses it)",
                    f"make it ({self.column}, {', '.join(columns)}) → {ref_table} ({self.column}, …)",
                )
            else:
                what = {"p": "primary key", "u": "unique constraint", "i": "unique index"}[kind]
                self.out.find(
                    table,
                    "key-without-tenant-column",
                    f"{what} {name} ({', '.join(columns)}) does not include {self.column}: its violation "
                    "tells one tenant that another holds the value (and Citus refuses it)",
                    f"lead it with {self.column}: ({self.column}, {', '.join(columns)})",
                )

    def view_rules(self, rels: list[Relation], tenant: Collection[str]) -> None:
        outside = [
            Relation(
                name,
                kind,
                None,
                False,
                False,
                "",
                False,
                False,
                False,
                None,
                select,
                False,
                False,
                False,
                False,
                list(options),
                list(reads),
            )
            for name, kind, options, select, reads in self.conn.execute(
                sql_text("outside_views.sql"), self.params
            )
        ]
        for v in [r for r in rels if r.kind in ("v", "m")] + outside:
            over = sorted(set(v.reads) & set(tenant))
            if not over or not v.select:
                continue
            if v.kind == "m":
                self.out.find(
                    v.name,
                    "materialized-view-over-tenant-tables",
                    f"it stores rows of every tenant from {', '.join(over)}, and RLS never applies to it",
                    f"take the application's SELECT on {v.name} away, or use a security_invoker view",
                )
            elif "security_invoker=true" not in [o.lower() for o in v.options]:
                self.out.find(
                    v.name,
                    "view-definer-rights",
                    f"it reads {', '.join(over)} with its owner's rights, not the application's",
                    f"ALTER VIEW {v.name} SET (security_invoker = true)",
                )

    def function_rules(self, tenant: Collection[str]) -> None:
        for signature, owner, executable, source, depends in self.conn.execute(
            sql_text("functions.sql"), self.params
        ):
            if not executable:
                continue
            named = {t for t in tenant if re.search(r"\b" + re.escape(t) + r"\b", source, re.IGNORECASE)}
            reads = sorted(named | (set(depends) & set(tenant)))
            if reads:
                self.out.find(
                    signature,
                    "security-definer-function",
                    f"SECURITY DEFINER (owner {owner}) and reads {', '.join(reads)}: it runs with its "
                    "owner's rights, which may ignore the policies",
                    f"ALTER FUNCTION {signature} SECURITY INVOKER, or REVOKE EXECUTE … FROM {self.role}",
                )

    def sequence_rules(self, tenant: Collection[str]) -> None:
        """Informational: a sequence every tenant draws from shows each the others' insert rate."""
        drawn = [
            (table, column, how)
            for table, column, how in self.conn.execute(sql_text("sequences.sql"), self.params)
            if table in tenant
        ]
        if not drawn:
            return
        columns = ", ".join(f"{t}.{c}" for t, c, _h in drawn)
        self.out.inform(
            ", ".join(dict.fromkeys(t for t, _c, _h in drawn)),
            "sequence-shared",
            f"{columns} draw from one sequence per column for every tenant ({drawn[0][2]}, …): the gaps "
            "between a tenant's own values show how many rows the others inserted meanwhile, and when",
            "UUID keys (uuid DEFAULT gen_random_uuid()), or numbering per tenant (a counter row per "
            f"{self.column} the application increments in its transaction)",
        )
