"""Steps: one module per kind, each with apply / verify / revert."""

from __future__ import annotations

from migrate.playbook.model import Step
from migrate.steps.backfill import BackfillStep
from migrate.steps.catchup import CatchupStep
from migrate.steps.context import StepContext, StepKind
from migrate.steps.cutover import CutoverStep
from migrate.steps.finalise import FinaliseStep
from migrate.steps.flag import FlagStep
from migrate.steps.freeze import FreezeStep
from migrate.steps.isolate import IsolateStep
from migrate.steps.schema import SchemaStep
from migrate.steps.validate import ValidateStep

KINDS: dict[str, type[StepKind]] = {
    impl.kind: impl
    for impl in (
        # One line per kind: its spec is in migrate.playbook.model.STEP_SPECS, in the same order.
        SchemaStep,
        FreezeStep,
        BackfillStep,
        CatchupStep,
        ValidateStep,
        CutoverStep,
        FlagStep,
        FinaliseStep,
        IsolateStep,
    )
}


def step_for(spec: Step) -> StepKind:
    """The implementation of a playbook step."""
    return KINDS[spec.kind](spec)


__all__ = ["KINDS", "StepContext", "StepKind", "step_for"]
