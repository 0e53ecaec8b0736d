"""Plans: pure data built from a playbook and the progress so far."""

from migrate.plan.build import build_plan, select_tenants, select_wave
from migrate.plan.model import Plan, PlannedStep, StepStatus, TargetPlan, TenantPlan, WavePlan
from migrate.plan.render import render_text
from migrate.plan.waves import WaveStage, WaveState, tenant_finished, wave_states

__all__ = [
    "Plan",
    "PlannedStep",
    "StepStatus",
    "TargetPlan",
    "TenantPlan",
    "WavePlan",
    "WaveStage",
    "WaveState",
    "build_plan",
    "render_text",
    "select_tenants",
    "select_wave",
    "tenant_finished",
    "wave_states",
]
