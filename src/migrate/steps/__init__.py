"""Steps: one module per kind, each with apply / verify / revert."""

from __future__ import annotations

from migrate.playbook.model import Step
from migrate.steps.backfill import BackfillStep
from migrate.steps.context import StepContext, StepKind
from migrate.steps.flag import FlagStep
from migrate.steps.schema import SchemaStep
from migrate.steps.validate import ValidateStep

KINDS: dict[str, type[StepKind]] = {
    SchemaStep.kind: SchemaStep,
    BackfillStep.kind: BackfillStep,
    ValidateStep.kind: ValidateStep,
    FlagStep.kind: FlagStep,
}


def step_for(spec: Step) -> StepKind:
    """The implementation of a playbook step."""
    return KINDS[spec.kind](spec)


__all__ = ["KINDS", "StepContext", "StepKind", "step_for"]
