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

TENANT_XACT_SETTING = "app.tenant_xact_start"
"""Transaction-bound tenant context: the start of the transaction the tenant was set in."""

XACT_START = "extract(epoch FROM now())::text"
"""That start as the application sets it and the policy compares it: epoch seconds with
microseconds, the same text whatever TimeZone or DateStyle say."""

__all__ = ["TENANT_COLUMN", "TENANT_SETTING", "TENANT_XACT_SETTING", "XACT_START"]
