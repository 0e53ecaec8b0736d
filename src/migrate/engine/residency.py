"""The residency guard: a tenant's rows go only to a database that carries the tenant's region.

The playbook routes each tenant to the target of its region, but a playbook is not
proof: a DSN variable can point at the wrong database. So the database itself says
where it is. A person records a target's region once (``migrate residency set``,
ledgered, kept in the target's control schema: migrate.control.residency); before the
first row of a tenant moves, every write path checks, on the very connection that will
write, that

* the database's newest recording names the tenant's region, and was made on this
  database (a copy of the control schema elsewhere does not carry the claim);
* a target that declares a region (``targets:``, or ``target: {region: …}``) has a
  recording at all — without one nothing proves where it is;
* the tenant's source, if it declares a region (``ALTER DATABASE … SET migrate.region
  = 'eu'``), declares the tenant's: a typo in the playbook's ``region:`` then cannot
  route a tenant to the wrong region's target.

The one target of a playbook without regions makes no promise of its own, and needs no
recording; if its database has one, every tenant written there must be of that region.

:func:`enforce` is called by ``migrate.engine.session.step_context``, the one place a
step context is made — a run's tenant session (and its reconnects), a rollback's
contexts, and every write path that comes after them — so none of them can skip it.
:func:`preflight` runs the same check for a whole run before anything is written, so a
swapped DSN is refused with nothing changed, not even the control schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

import psycopg

from migrate.control.residency import DatabaseIdentity, Residency, ResidencyStore
from migrate.errors import ResidencyRefused
from migrate.playbook.model import Target, Tenant

SOURCE_SETTING = "migrate.region"
"""The setting a source database declares its region with: ``ALTER DATABASE … SET migrate.region = 'eu'``."""


def set_command(playbook: Path, region: str, *, change: bool = False) -> str:
    return f"migrate residency set {playbook} --region {region}" + (" --change" if change else "")


def check(
    target: Target,
    tenant: Tenant,
    here: DatabaseIdentity,
    recorded: Residency | None,
    playbook: Path,
) -> None:
    """Refuse (ResidencyRefused) unless ``tenant``'s rows may go to the database ``target`` reached."""
    via = f"${target.dsn_env}"
    reached = f"target {target.name} ({via}, {here.describe()})"
    if recorded is None:
        if target.region is None:
            return  # a playbook without regions, on a database that claims none
        raise ResidencyRefused(
            f"{reached} has no recorded region, so nothing proves it is in region {target.region}: "
            f"tenant '{tenant.id}' (region {tenant.region}) is not written there",
            where=f"tenant {tenant.id}",
            hint="once you have made sure that database is in region "
            f"{target.region}, record it (ledgered): {set_command(playbook, target.region)}",
        )
    if not recorded.recorded_on.same_as(here):
        raise ResidencyRefused(
            f"{reached} carries a residency record for region {recorded.region} that was made on "
            f"another database ({recorded.recorded_on.describe()}, by {recorded.actor}): a copy does not "
            f"carry its region, so tenant '{tenant.id}' (region {tenant.region}) is not written there",
            where=f"tenant {tenant.id}",
            hint=f"check where {via} points; if this database is where region {tenant.region}'s tenants "
            f"belong, record it: {set_command(playbook, tenant.region, change=True)}",
        )
    if recorded.region != tenant.region:
        raise ResidencyRefused(
            f"tenant '{tenant.id}' is in region {tenant.region}, but {reached} is recorded as region "
            f"{recorded.region} (by {recorded.actor} at {recorded.at.astimezone(UTC):%Y-%m-%d %H:%M} UTC): "
            f"no row of '{tenant.id}' is written there",
            where=f"tenant {tenant.id}",
            hint=f"point {target.dsn_env} at region {tenant.region}'s shared database"
            + (
                f" (or move the tenant to a target of region {recorded.region} if its region is wrong)"
                if target.region is None
                else ""
            ),
        )


def check_source(tenant: Tenant, source: psycopg.Connection[Any]) -> None:
    """Refuse when the tenant's source declares a region (``migrate.region``) other than the tenant's."""
    row = source.execute("SELECT current_setting(%s, true), current_database()", (SOURCE_SETTING,)).fetchone()
    declared = (row[0] or "").strip() if row else ""
    if declared and declared != tenant.region:
        raise ResidencyRefused(
            f"tenant '{tenant.id}' is in region {tenant.region} in the playbook, but its source database "
            f"'{row[1] if row else '?'}' declares region {declared} ({SOURCE_SETTING}): "
            "none of its rows is copied",
            where=f"tenant {tenant.id}",
            hint=f"if the source is right, correct the tenant's 'region: {declared}' in the playbook; "
            f"otherwise correct the source: ALTER DATABASE … SET {SOURCE_SETTING} = '{tenant.region}'",
        )


def enforce(
    target: Target,
    tenant: Tenant,
    conn: psycopg.Connection[Any],
    source: psycopg.Connection[Any] | None,
    playbook: Path,
) -> Residency | None:
    """Check on the connection that will write (and on the tenant's source, when given); the recording."""
    here, recorded = ResidencyStore(target.control_schema).read(conn)
    check(target, tenant, here, recorded, playbook)
    if source is not None:
        check_source(tenant, source)
    return recorded


def preflight(
    target: Target, tenants: Sequence[Tenant], conn: psycopg.Connection[Any], playbook: Path
) -> None:
    """The same check for every tenant a run will write to this target, before anything is written."""
    here, recorded = ResidencyStore(target.control_schema).read(conn)
    for tenant in tenants:
        check(target, tenant, here, recorded, playbook)
