"""The isolation check on a Citus coordinator: does the application's tenant reach the workers?

A policy is evaluated on the worker that holds the shard, and a worker sees the tenant
only when the coordinator propagates it: ``SET LOCAL app.tenant_id`` inside a transaction
with ``citus.propagate_set_commands = 'local'`` (shared/notes/citus.md). ``set_config()``
or a session-level ``SET`` never arrive, and the policy then silently matches no row —
which a leak probe would read as "isolated". So on Citus the probes set the tenant with
the role's own propagation setting (what its logins get: ``ALTER ROLE … SET``), and a
role without ``'local'`` there is a finding; the own-tenant probe catches the rest.
"""

from __future__ import annotations

from typing import Any

import psycopg

from migrate.catalog import TENANT_SETTING
from migrate.catalog.citus import IS_CITUS, PROPAGATE, role_propagation
from migrate.checks.isolation.report import Collector


def is_citus(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(IS_CITUS).fetchone()
    return bool(row and row[0])


def plain_predicate(predicate: str) -> str:
    """The generator's predicate as Citus takes it: no sub-query (refused in policies there)."""
    setting = f"NULLIF(current_setting('{TENANT_SETTING}', true), '')"
    return predicate.replace(f"(SELECT {setting})", setting)


def citus_rules(conn: psycopg.Connection[Any], role: str, out: Collector) -> str | None:
    """On Citus: the role's ``citus.propagate_set_commands`` (a finding unless 'local'); else None."""
    if not is_citus(conn):
        return None
    value = role_propagation(conn, role)
    if value != "local":
        out.find(
            f"role {role}",
            "citus-tenant-setting-not-propagated",
            f"on Citus the policies run on the workers, and role {role}'s {PROPAGATE} is {value!r}: "
            f"its SET LOCAL {TENANT_SETTING} never reaches a worker, so every query of the application "
            "silently sees no row",
            f"ALTER ROLE {role} SET {PROPAGATE} = 'local'; the application sets its tenant with "
            f"SET LOCAL {TENANT_SETTING} = '…' first in every transaction",
        )
    return value
