"""Every advisory lock tenant-migrate takes, by namespace: one place to see who may wait on whom.

Each is taken on the target database, the one place every runner of a playbook reaches,
as ``hashtext(namespace)`` (and ``hashtext(key)`` for the two-key ones).
"""

from __future__ import annotations

TENANT = "migrate.tenant"
"""Session-level, (namespace, tenant): one runner per tenant; it dies with the runner's connection."""

FLAG = "migrate.flag"
"""Session-level, (namespace, flag in its environment): the writers of one Unleash flag, in turn."""

SCHEMA = "migrate.schema"
"""Transaction-level, (namespace, target schema): one runner creates the missing shared tables."""

LEDGER = "migrate.ledger.append"
"""Transaction-level, one key per control schema (``LEDGER:schema``): appends in chain order."""

UPGRADE = "migrate.control.upgrade"
"""Transaction-level: one alembic upgrade of the control schema at a time."""

RESIDENCY = "migrate.residency"
"""Transaction-level, one key per control schema (``RESIDENCY:schema``): recordings of a target's region."""

ONLINE = "migrate.online"
"""Transaction-level, (namespace, playbook): a tenant counts the online phase and joins it, one at a time."""

SEQUENCE = "migrate.sequence"
"""Transaction-level, (namespace, qualified sequence): one runner at a time reads a shared sequence's
position and moves it, so two tenants' advances never put it back (steps/sequences.py)."""
