"""build_plan(playbook, progress) -> Plan: pure."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

from migrate.errors import ArgumentError
from migrate.plan.model import Plan, PlannedStep, StepStatus, TargetPlan, TenantPlan, WavePlan
from migrate.playbook.loader import LoadedPlaybook
from migrate.playbook.model import RollbackPoint, Tenant, step_id, wave_order

Progress = Mapping[tuple[str, str], StepStatus]  # (tenant, step key) -> status


def select_tenants(loaded: LoadedPlaybook, wanted: Sequence[str] | None) -> tuple[Tenant, ...]:
    """The playbook's tenants, or those named with ``--tenant``, in playbook order."""
    if not wanted:
        return loaded.tenants
    known = {t.id: t for t in loaded.tenants}
    for name in wanted:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            raise ArgumentError(
                f"tenant '{name}' is not in playbook {loaded.path}",
                where="--tenant",
                hint=(f"did you mean '{close[0]}'? " if close else "")
                + f"its tenants are: {', '.join(known)}",
            )
    return tuple(t for t in loaded.tenants if t.id in set(wanted))


def select_wave(loaded: LoadedPlaybook, wave: str | None) -> tuple[Tenant, ...] | None:
    """The tenants of wave ``wave`` (None when no wave is named), or an ArgumentError naming the waves."""
    if wave is None:
        return None
    names = [w.name for w in wave_order(loaded.playbook, loaded.tenants)]
    if wave not in names:
        close = difflib.get_close_matches(wave, names, n=1)
        raise ArgumentError(
            f"playbook {loaded.path} has no wave '{wave}'",
            where="--wave",
            hint=(f"did you mean '{close[0]}'? " if close else "") + f"its waves are: {', '.join(names)}",
        )
    return tuple(t for t in loaded.tenants if t.wave == wave)


def build_plan(
    loaded: LoadedPlaybook,
    progress: Progress | None = None,
    tenants: Sequence[str] | None = None,
    wave: str | None = None,
) -> Plan:
    """Every tenant's steps in order, each with its state from ``progress``."""
    progress = progress or {}
    pb = loaded.playbook
    order = wave_order(pb, loaded.tenants)
    rank = {w.name: i for i, w in enumerate(order)}
    chosen = select_tenants(loaded, tenants)
    in_wave = select_wave(loaded, wave)
    if in_wave is not None:
        chosen = tuple(t for t in chosen if t in in_wave)
        if not chosen:
            raise ArgumentError(
                f"--wave {wave} and --tenant {' '.join(tenants or ())} select no tenant together",
                where="--wave",
                hint=f"wave {wave} holds: {', '.join(t.id for t in in_wave) or 'no tenants'}",
            )
    tenant_plans = []
    for tenant in sorted(chosen, key=lambda t: rank[t.wave]):
        steps = []
        for phase in pb.phases:
            for item in phase.steps:
                if isinstance(item, RollbackPoint):
                    sid, kind, spec = f"@{item.rollback_point}", "rollback_point", None
                else:
                    sid, kind, spec = step_id(item), item.kind, item
                status = progress.get((tenant.id, f"{phase.name}/{sid}"), StepStatus.PENDING)
                steps.append(PlannedStep(phase.name, sid, kind, spec, status))
        target = pb.target_of(tenant)
        tenant_plans.append(TenantPlan(tenant, tuple(steps), target.name, target.schema_))
    specs = pb.table_specs()
    targets = pb.targets_by_name()
    return Plan(
        playbook=pb.name,
        digest=loaded.digest,
        target_schema=next(iter(targets.values())).schema_,
        tables=None if specs is None else tuple(t.name for t in specs),
        tenants=tuple(tenant_plans),
        step_keys=tuple(
            f"{phase.name}/{step_id(item)}"
            for phase in pb.phases
            for item in phase.steps
            if not isinstance(item, RollbackPoint)
        ),
        waves=tuple(
            WavePlan(w.name, w.approval, tuple(t.id for t in loaded.tenants if t.wave == w.name))
            for w in order
        ),
        targets=tuple(
            TargetPlan(
                name,
                t.region,
                t.dsn_env,
                t.schema_,
                tuple(x.id for x in loaded.tenants if pb.target_name_of(x) == name),
            )
            for name, t in targets.items()
        ),
    )
