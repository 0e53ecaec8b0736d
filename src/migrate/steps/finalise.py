"""The finalise step: the tenant's replication slot and publication go; its source stays frozen.

After the cut-over the slot only holds WAL on the source's server (and its
catalog rows from vacuum). Finalising ends the migration's hold on the old
database. Its revert cannot bring a slot back (the changes since are gone from
it): a cut-over reverted after it needs a new copy, which its catchup or cutover
step then says.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from migrate.errors import CheckFailed
from migrate.playbook.model import Step
from migrate.replication import slots
from migrate.steps import online, reverse
from migrate.steps.context import Details, StepContext


class FinaliseStep:
    kind: ClassVar[str] = "finalise"

    def __init__(self, spec: Step) -> None:
        self.spec = spec

    def apply(self, ctx: StepContext) -> Details:
        name = online.names(ctx)
        if ctx.rehearsal:
            return {"slot": name, "rehearsal": "nothing is dropped in a rehearsal"}
        store = online.store(ctx)
        capture = store.capture(ctx.target, ctx.tenant.id)
        slot_name = capture.slot if capture else name
        dropped = slots.drop_slot(ctx.source, slot_name)
        slots.drop_publication(ctx.source, capture.publication if capture else name)
        store.forget(ctx.target, ctx.tenant.id)
        reverse_slot = reverse.name(ctx)
        reverse_dropped = reverse.drop(ctx)  # no rollback across the cut-over after this
        ctx.log.info("capture_dropped", slot=slot_name, dropped=dropped, reverse_dropped=reverse_dropped)
        return {
            "slot": slot_name,
            "dropped": dropped,
            "reverse_slot": reverse_slot,
            "reverse_dropped": reverse_dropped,
        }

    def verify(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        if not ctx.rehearsal and slots.slot(ctx.source, str(details.get("slot"))) is not None:
            raise CheckFailed(f"replication slot {details.get('slot')} still exists", hint="run again")
        if details.get("reverse_slot") and slots.slot(ctx.target, str(details["reverse_slot"])) is not None:
            raise CheckFailed(f"reverse slot {details['reverse_slot']} still exists", hint="run again")

    def revert(self, ctx: StepContext, details: Mapping[str, Any]) -> Details:
        return {}  # a dropped slot cannot come back

    def verify_reverted(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        """Nothing to check: finalise's revert changes nothing."""

    def summary(self, details: Mapping[str, Any], *, reverted: bool) -> str | None:
        if reverted or "slot" not in details or "rehearsal" in details:
            return None
        return f"slot {details['slot']} dropped" if details.get("dropped") else None
