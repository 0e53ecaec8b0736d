"""Plans: pure data built from a playbook and the progress so far."""

from migrate.plan.build import build_plan, select_tenants
from migrate.plan.model import Plan, PlannedStep, StepStatus, TenantPlan
from migrate.plan.render import render_text

__all__ = ["Plan", "PlannedStep", "StepStatus", "TenantPlan", "build_plan", "render_text", "select_tenants"]
