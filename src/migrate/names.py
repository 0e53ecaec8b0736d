"""Validated names: tenant ids, table names, rollback points, flags, steps.

Names from playbooks reach SQL only as ``psycopg.sql.Identifier`` or as
parameters; validating them here as well gives users an early, precise error
("tenant id 'Acme Corp' …") instead of a surprise deep in a run. Tenant ids are
lower-case because Unleash's ``IN`` operator is case-sensitive
(shared/notes/unleash.md, trap 4): ``Acme`` and ``acme`` must never be two tenants.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

_TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def check_tenant_id(value: str) -> str:
    """Return a tenant id that is safe as a database name part and a flag value."""
    if not _TENANT_RE.match(value):
        raise ValueError(
            f"tenant id {value!r} must be lower-case letters, digits, '-' or '_' "
            "(at most 63, starting with a letter or digit), e.g. 'acme'"
        )
    return value


def check_identifier(value: str) -> str:
    """Return a PostgreSQL identifier (table, column, schema) of plain characters."""
    if not _IDENT_RE.match(value):
        raise ValueError(
            f"{value!r} is not a plain SQL identifier: use letters, digits and '_' "
            "(at most 63, not starting with a digit)"
        )
    return value


def check_slug(value: str) -> str:
    """Return a name for a phase, step, rollback point, wave or flag."""
    if not _SLUG_RE.match(value):
        raise ValueError(
            f"{value!r} must be lower-case letters, digits, '-', '_' or '.' (at most 63), e.g. 'pre-cutover'"
        )
    return value


TenantId = Annotated[str, AfterValidator(check_tenant_id)]
Identifier = Annotated[str, AfterValidator(check_identifier)]
Slug = Annotated[str, AfterValidator(check_slug)]
