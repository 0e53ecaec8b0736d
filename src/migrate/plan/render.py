"""Render a Plan as plain text (for ``migrate plan``); returns strings, never prints."""

from __future__ import annotations

from migrate.plan.model import Plan, PlannedStep, TenantPlan


def describe(step: PlannedStep, plan: Plan, tenant: TenantPlan | None = None) -> str:
    """One line saying what the step does, in the domain's words (the step's kind says it)."""
    if step.spec is None:
        return f"rollback point '{step.step_id.removeprefix('@')}'"
    return step.spec.describe(plan.target_schema if tenant is None else tenant.target_schema, plan.tables)


def render_text(plan: Plan) -> str:
    lines = [f"playbook {plan.playbook} (version {plan.digest[:12]})"]
    if plan.waves:
        gates = [
            f"{w.name} ({', '.join(w.tenants) or 'no tenants'})"
            + (", opened by approval" if w.approval else "")
            for w in plan.waves
        ]
        lines.append("waves, in order: " + " -> ".join(gates))
    if plan.regional:
        lines.append(
            "targets, by region: "
            + ", ".join(
                f"{t.name} (${t.dsn_env}, schema {t.schema}: {', '.join(t.tenants) or 'no tenants'})"
                for t in plan.targets
            )
        )
    for tp in plan.tenants:
        t = tp.tenant
        left = len([s for s in tp.remaining if not s.is_point])
        target = f" target={tp.target}" if plan.regional else ""
        lines.append("")
        lines.append(
            f"tenant {t.id}  region={t.region}{target} tier={t.tier} wave={t.wave}  ({left} steps to run)"
        )
        phase = None
        for step in tp.steps:
            if step.phase != phase:
                phase = step.phase
                lines.append(f"  phase {phase}")
            mark = "done" if not step.will_run else step.status.value
            label = "" if step.is_point else step.step_id
            lines.append(f"    [{mark:>8}] {label:<12} {describe(step, plan, tp)}")
    return "\n".join(lines)
