"""residency set and report: the region each target carries, and proof of where every tenant is.

``residency_set`` records, once, the region a target database is in — a person's
statement, ledgered in that target, refused when the database already carries another
region (or was recorded as another database) unless ``change``. Every write path then
checks it before the first row moves (migrate.engine.residency).

``residency_report`` proves where every tenant's rows are: per tenant, its rows in its
own region's target and a count on every other target — which must be zero. It also
says when a target does not carry the region it is declared for. Read-only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

from migrate.api.settings import (
    Environ,
    connect_target,
    environment,
    prepare_control,
    target_dsn,
    the_target,
)
from migrate.catalog import TENANT_COLUMN
from migrate.checks.residency import sees_every_row, tenant_rows
from migrate.control.residency import DatabaseIdentity, Residency, ResidencyStore
from migrate.engine.residency import set_command
from migrate.errors import ArgumentError
from migrate.names import check_slug
from migrate.plan import select_tenants
from migrate.playbook import LoadedPlaybook, load_playbook
from migrate.playbook.model import Target


@dataclass(frozen=True)
class ResidencyRecorded:
    """What ``residency set`` did: the target, the database it reached, the region it now carries."""

    target: str  # the target's name (its region, or 'default')
    dsn_env: str
    region: str
    database: DatabaseIdentity
    previous: Residency | None  # what it carried before (None: nothing)
    recorded: Residency
    already: bool  # it carried this region already: nothing was written


def _target_for(loaded: LoadedPlaybook, region: str) -> Target:
    """The target whose region is recorded: the one of ``region``, or a playbook's only target."""
    targets = loaded.playbook.targets_by_name()
    if region in targets:
        return targets[region]
    only = next(iter(targets.values()))
    if len(targets) == 1 and only.region is None:
        return only  # the one target of a playbook without regions: it may carry any region
    return the_target(loaded, region)  # the ArgumentError naming the targets there are


def residency_set(
    playbook: Path | str,
    region: str,
    *,
    change: bool = False,
    actor: str | None = None,
    environ: Environ | None = None,
) -> ResidencyRecorded:
    """Record that the target of ``region`` (or the playbook's only target) is in region ``region``.

    A person who knows where the database is runs it, once per target; ledgered. A target
    that already carries another region, or whose record was made on another database
    (a copy), is refused (ArgumentError) unless ``change`` — which is ledgered with what
    it replaces. Recording the region it already carries changes nothing.
    """
    try:
        check_slug(region)
    except ValueError as exc:
        raise ArgumentError(f"--region: {exc}", where="--region") from None
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    target = _target_for(loaded, region)
    env = environment(loaded, environ, actor, region=target.name, with_flags=False, with_sources=False)
    prepare_control(loaded, environ, [target.name])
    store = ResidencyStore(target.control_schema)
    with env.connect_target() as conn, conn.transaction():
        store.lock(conn)
        here, before = store.read(conn)
        if before is not None and before.region == region and before.recorded_on.same_as(here):
            return ResidencyRecorded(target.name, target.dsn_env, region, here, before, before, already=True)
        if before is not None and not change:
            copied = not before.recorded_on.same_as(here)
            raise ArgumentError(
                f"target {target.name} (${target.dsn_env}, {here.describe()}) "
                + (
                    f"carries a record for region {before.region} made on another database "
                    f"({before.recorded_on.describe()})"
                    if copied
                    else f"is already recorded as region {before.region}"
                )
                + f" (by {before.actor} on {before.host}, {before.at.astimezone(UTC):%Y-%m-%d %H:%M} UTC)",
                where="--region",
                hint=f"if this database really holds region {region}'s tenants now, say so: "
                f"{set_command(loaded.path, region, change=True)} (ledgered, with what it replaces); "
                f"otherwise check where {target.dsn_env} points",
            )
        recorded = store.record(
            conn, region, here, actor=env.actor, host=env.host, playbook=loaded.playbook.name
        )
        env.ledger.append(
            conn,
            env.entry(
                None,
                "residency_recorded",
                "ok",
                details={
                    "region": region,
                    "target": target.name,
                    "target_env": target.dsn_env,
                    "database": here.database,
                    "system_identifier": here.system_identifier,
                    "previous": None
                    if before is None
                    else {
                        "region": before.region,
                        "database": before.recorded_on.database,
                        "system_identifier": before.recorded_on.system_identifier,
                        "by": before.actor,
                        "at": before.at.astimezone(UTC).isoformat(),
                    },
                    "changed_with": "--change" if before is not None else None,
                },
            ),
        )
    return ResidencyRecorded(target.name, target.dsn_env, region, here, before, recorded, already=False)


@dataclass(frozen=True)
class TargetResidency:
    """A target as the report found it."""

    name: str
    region: str | None  # the region it is declared for (None: the one target of a playbook without regions)
    dsn_env: str
    schema: str
    database: DatabaseIdentity
    recorded: Residency | None  # the region its database carries
    role: str
    sees_every_row: bool  # the role is not subject to row-level security: its counts prove absence
    tables: tuple[str, ...]  # its tables with the tenant column


@dataclass(frozen=True)
class TenantResidency:
    """Where one tenant's rows are."""

    tenant: str
    region: str
    target: str  # the target it goes to
    rows: int  # its rows there
    tables: Mapping[str, int]  # per table, there
    elsewhere: Mapping[str, int]  # every other target: its rows there (must be 0)
    elsewhere_tables: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # where they are

    @property
    def misplaced(self) -> int:
        return sum(self.elsewhere.values())


@dataclass(frozen=True)
class ResidencyReport:
    playbook: str
    digest: str
    targets: tuple[TargetResidency, ...]
    tenants: tuple[TenantResidency, ...]
    findings: tuple[str, ...]  # one line each; none: residency is proven

    @property
    def ok(self) -> bool:
        return not self.findings


def residency_report(
    playbook: Path | str,
    tenants: Sequence[str] | None = None,
    *,
    environ: Environ | None = None,
) -> ResidencyReport:
    """Per tenant: its region, its target, its rows there, and a count on every other target proving
    none of its rows are there. Findings (``ok`` is False) for rows on another target, a regional
    target whose database does not carry its region, a tenant on a database recorded as another
    region, and a target whose counts cannot see every row. Reads only; needs every target."""
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    chosen = select_tenants(loaded, tenants)
    pb = loaded.playbook
    targets = pb.targets_by_name()
    ids = [t.id for t in chosen]
    found: list[TargetResidency] = []
    counts: dict[str, dict[str, dict[str, int]]] = {}  # target -> tenant -> table -> rows
    for target in targets.values():  # every variable before any connection
        target_dsn(loaded, environ, target)
    for target in targets.values():
        with connect_target(loaded, environ, target) as conn:
            here, recorded = ResidencyStore(target.control_schema).read(conn)
            role, sees = sees_every_row(conn)
            counts[target.name] = tenant_rows(conn, target.schema_, TENANT_COLUMN, ids)
        tables = tuple(sorted({table for per in counts[target.name].values() for table in per}))
        found.append(
            TargetResidency(
                target.name, target.region, target.dsn_env, target.schema_, here, recorded, role, sees, tables
            )
        )
    by_name = {t.name: t for t in found}
    rows: list[TenantResidency] = []
    for tenant in chosen:
        home = pb.target_name_of(tenant)
        there = counts[home][tenant.id]
        rows.append(
            TenantResidency(
                tenant.id,
                tenant.region,
                home,
                sum(there.values()),
                dict(there),
                {name: sum(per[tenant.id].values()) for name, per in counts.items() if name != home},
                {name: dict(per[tenant.id]) for name, per in counts.items() if name != home},
            )
        )
    return ResidencyReport(
        pb.name, loaded.digest, tuple(found), tuple(rows), tuple(_findings(found, rows, by_name))
    )


def _findings(
    targets: Sequence[TargetResidency],
    tenants: Sequence[TenantResidency],
    by_name: Mapping[str, TargetResidency],
) -> list[str]:
    out = []
    for t in targets:
        where = f"target {t.name} (${t.dsn_env}, {t.database.describe()})"
        if not t.sees_every_row:
            out.append(
                f"{where}: role {t.role} is subject to row-level security, so its counts prove nothing; "
                "run the report as the migrator (superuser or BYPASSRLS)"
            )
        if t.region is not None and t.recorded is None:
            out.append(f"{where} is declared for region {t.region} but carries no recorded region")
        elif t.region is not None and t.recorded is not None and t.recorded.region != t.region:
            out.append(
                f"{where} is declared for region {t.region} but recorded as region {t.recorded.region}"
            )
        elif t.recorded is not None and not t.recorded.recorded_on.same_as(t.database):
            out.append(
                f"{where} carries a record made on another database ({t.recorded.recorded_on.describe()})"
            )
    for r in tenants:
        home = by_name[r.target]
        if home.recorded is not None and r.rows and home.recorded.region != r.region:
            out.append(
                f"tenant {r.tenant} (region {r.region}) has {r.rows:,} row(s) on target {home.name}, "
                f"whose database is recorded as region {home.recorded.region}"
            )
        for name, misplaced in r.elsewhere.items():
            if misplaced:
                other = by_name[name]
                tables = ", ".join(f"{table} {n:,}" for table, n in sorted(r.elsewhere_tables[name].items()))
                out.append(
                    f"tenant {r.tenant} (region {r.region}) has {misplaced:,} row(s) on target {name} "
                    f"(${other.dsn_env}, {other.database.describe()}), outside its region's target "
                    f"{r.target}: {tables}"
                )
    return out
