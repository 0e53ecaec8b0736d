"""The catalog: what a source schema holds and how the shared schema derives from it.

Below the steps and the checks, beside nothing that writes: reflection of a
schema (``reflect``), PostgreSQL's renderings moved between schemas
(``sqltext``), the order tables load in (``order``), the shared schema's
statements (``ddl``) and whether a source's columns fit the shared tables
(``fit``). The schema generator (``migrate.schemagen``) writes revisions and
reports from these; the steps and the engine use them directly and never the
generator.
"""

from __future__ import annotations

TENANT_COLUMN = "tenant_id"
"""The column every tenant table of the shared schema gains, first in every key."""

TENANT_SETTING = "app.tenant_id"
"""The setting the shared schema's policies read: the tenant a transaction acts for."""

__all__ = ["TENANT_COLUMN", "TENANT_SETTING"]
