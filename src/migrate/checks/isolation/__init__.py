"""The isolation check: the shared schema's RLS read from the catalog, then tried as the application.

It fails closed: a schema with no tenant table, a tenant table the application role cannot
reach, a run in which no probe ran, or one in which no write could be tried although the
application may write, is a finding — never a pass.

Static rules (``rules.py``; the ``*.sql`` files read the catalog) — one finding per table and rule:

==================================  =========================================================
``no-tenant-tables``                nothing in the schema has the tenant column: nothing to check
``app-role-cannot-reach``           the application role has no privilege on a tenant table
                                    (or no USAGE on the schema): its isolation is unproven
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

Live probes (``probes.py``), as the application role: ``probe-read-leak``,
``probe-insert-leak``, ``probe-update-leak``, ``probe-update-moves-row``,
``probe-delete-leak`` (with tenant A's context, B's rows are visible or writable);
``probe-no-context-visible`` (rows visible on a fresh connection that never set a
tenant); ``probe-ended-context-visible`` and ``probe-empty-tenant-visible`` (rows
visible after a ``SET LOCAL`` ended, when the setting reads ``''``);
``probe-empty-tenant-writable`` (a tenant-less write stored with ``''``);
``probe-empty-tenant-error`` (the policy raises on ``''``, e.g. ``''::uuid``);
``probe-session-context-accepted`` (transaction-bound schemas only: a session-level
``SET`` left on a pooled connection is still accepted); ``probe-own-tenant-invisible``
(with tenant A set, none of A's rows is visible: a policy that silently matches nothing
proves nothing); ``no-probes`` / ``no-write-probes``.

On Citus (the target database has the ``citus`` extension: ``citus.py``) every probe goes
through the coordinator and sets the tenant as the application must there — ``SET LOCAL
app.tenant_id`` with the application role's own ``citus.propagate_set_commands`` — and
``citus-tenant-setting-not-propagated`` is a finding when that role setting is not
``'local'``: the workers would never see the tenant.

Informational findings (never a failure; each with its mitigation): ``sequence-shared``
(gaps in a shared sequence show other tenants' insert rate), ``planner-estimates-reveal-tenants``
(``EXPLAIN … WHERE tenant_id = 'x'`` estimates which tenants exist and their sizes) and
``session-context-survives`` (session-held schemas: a session-level ``SET`` is handed on
with a pooled connection).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Literal

import psycopg

from migrate.catalog.ddl import Options, TenantContext, tenant_predicate
from migrate.checks.isolation.citus import citus_rules, is_citus, plain_predicate
from migrate.checks.isolation.probes import Probes
from migrate.checks.isolation.report import Collector, Finding, IsolationReport, dedupe
from migrate.checks.isolation.rules import Relation, Rules

__all__ = ["Finding", "IsolationReport", "check_isolation"]


def policy_predicate(column: str, tenant_type: str | None, context: TenantContext) -> str:
    """The generator's USING / WITH CHECK for a tenant column of this type: what fixes name."""
    kind: Literal["text", "uuid"] = "uuid" if tenant_type == "uuid" else "text"
    text = tenant_predicate(
        Options(schema="-", tenant_column=column, tenant_type=kind, tenant_context=context)
    )
    rendered = text.as_string(None)
    if tenant_type not in (None, "text", "uuid"):  # another type: cast the setting to it
        setting = "NULLIF(current_setting('app.tenant_id', true), '')"
        rendered = rendered.replace(setting, f"{setting}::{tenant_type}")
    return rendered


def check_isolation(
    conn: psycopg.Connection[Any],
    *,
    schema: str,
    app_role: str,
    tenant_column: str = "tenant_id",
    global_tables: Collection[str] = (),
    probe: bool = True,
    tenant_context: TenantContext = "session",
    connect: Callable[[], psycopg.Connection[Any]] | None = None,
) -> IsolationReport:
    """Static findings from the catalog, then live probes as ``app_role`` (all rolled back).

    ``conn`` must be an autocommit connection whose role may ``SET ROLE app_role``
    and, for the write probes, can read every tenant's rows (superuser or BYPASSRLS).
    ``connect`` opens another such connection (default: ``conn``'s settings) for the
    probes that need a connection with a history of its own; it is closed after them.
    ``tenant_context`` is what the schema is held to: ``transaction`` makes a tenant left
    by a session-level ``SET`` a finding instead of an informational one.
    """
    out = Collector()
    rules = Rules(conn, schema, app_role, tenant_column, frozenset(global_tables), out)
    usage = rules.role_rules(probe)
    rels = rules.relations()
    tenant = rules.table_rules(rels)
    names = {r.name for r in tenant}

    on_citus = is_citus(conn)

    def fixes(r: Relation) -> str:
        predicate = policy_predicate(tenant_column, r.tenant_type, tenant_context)
        return plain_predicate(predicate) if on_citus else predicate

    first_type = next((r.tenant_type for r in tenant), None)
    rules.policy_rules(names, policy_predicate(tenant_column, first_type, tenant_context))
    rules.key_rules(names)
    rules.view_rules(rels, names)
    rules.function_rules(names)
    rules.sequence_rules(names)
    if not tenant:
        out.find(
            f"schema {schema}",
            "no-tenant-tables",
            f"no table of schema {schema!r} has a {tenant_column} column (other than those declared "
            "global): there is nothing to check, and nothing was",
            "name the schema that holds the shared tables (--schema, target.schema in the playbook) "
            "and their tenant column (--tenant-column)",
        )
    again = connect or (lambda: _same_as(conn))
    probes = Probes(conn, schema, app_role, tenant_column, tenant_context, again, out, fixes)
    probes.citus = citus_rules(conn, app_role, out)
    if probe:
        readable = [r for r in tenant if r.select] if usage else []
        probes.probe_history(readable)
        for r in readable:
            probes.probe_table(r)
        probes.probe_estimates(readable)
        _fail_closed(out, schema, tenant, probes)
    return IsolationReport(
        schema=schema,
        app_role=app_role,
        findings=dedupe(out.findings),
        tables=tuple(sorted(names)),
        probes=probes.probes,
        notes=tuple(out.notes),
        informational=dedupe(out.informational),
        probed=tuple(sorted(set(probes.probed))),
        tenant_context=tenant_context,
    )


def _fail_closed(out: Collector, schema: str, tenant: list[Relation], probes: Probes) -> None:
    """No probe, or no write probe where the application may write: unproven, so a finding."""
    if tenant and probes.probes == 0:
        out.find(
            f"schema {schema}",
            "no-probes",
            "no live probe ran as the application role: nothing shows the policies hold",
            "grant the application role SELECT, INSERT, UPDATE, DELETE on the tenant tables "
            "(see the app-role-cannot-reach findings)",
        )
    elif any(r.writable and r.select for r in tenant) and probes.write_probes == 0:
        out.find(
            f"schema {schema}",
            "no-write-probes",
            "the application role may write, but no tenant table holds a row to build a probe from, "
            "so no insert, update or delete was tried as it",
            "run the check after the backfill (or once one tenant's rows are in)",
        )


def _same_as(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """A new autocommit connection with ``conn``'s settings (the password too)."""
    return psycopg.connect(conn.info.dsn, password=conn.info.password, autocommit=True)
