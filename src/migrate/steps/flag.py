"""The flag step: the tenant's flag on (or off); revert restores the snapshot exactly.

Before its first flip the step takes a snapshot of the flag (``FlagProvider.snapshot``)
and keeps it as a checkpoint of the tenant, ``flag:<flag>:<action>``, before it changes
anything. A runner killed between the flip and the step's ``done`` record leaves that
checkpoint behind; the replayed apply finds the tenant already flipped, yet still
records the state from before the first attempt, so a later rollback restores what
was really there and not what the interrupted run had just written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from migrate.errors import CheckFailed
from migrate.playbook.model import FlagStep as FlagSpec
from migrate.playbook.model import Step
from migrate.ports import FlagSnapshot
from migrate.steps.context import Details, StepContext


class FlagStep:
    kind: ClassVar[str] = "flag"

    def __init__(self, spec: Step) -> None:
        assert isinstance(spec, FlagSpec)
        self.spec: FlagSpec = spec

    @property
    def wanted(self) -> bool:
        return self.spec.action == "enable"

    @property
    def checkpoint_key(self) -> str:
        """Never a table name (those are plain identifiers), so no backfill checkpoint collides."""
        return f"flag:{self.spec.flag}:{self.spec.action}"

    def _pending(self, ctx: StepContext) -> FlagSnapshot | None:
        """The snapshot an earlier, unfinished or unreverted apply kept, if any."""
        checkpoint = ctx.control.checkpoint(ctx.target, ctx.tenant.id, self.checkpoint_key)
        if checkpoint is None or checkpoint.done or not isinstance(checkpoint.last_key, dict):
            return None
        return FlagSnapshot.from_json(checkpoint.last_key)

    def apply(self, ctx: StepContext) -> Details:
        snapshot = self._pending(ctx)
        if snapshot is None:
            snapshot = ctx.flags.snapshot(self.spec.flag, ctx.tenant.id)
            # Saved before the flip: the intent, with what to go back to (CONVENTIONS 5).
            ctx.control.save_checkpoint(
                ctx.target,
                ctx.tenant.id,
                self.checkpoint_key,
                rows_copied=0,
                done=False,
                last_key=snapshot.to_json(),
            )
        change = ctx.flags.set_enabled(self.spec.flag, ctx.tenant.id, self.wanted)
        return {
            "flag": change.flag,
            "before": snapshot.enabled,
            "after": change.after,
            "snapshot": snapshot.to_json(),
        }

    def verify(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        seen = ctx.flags.is_enabled(self.spec.flag, ctx.tenant.id)
        if seen != self.wanted:
            raise CheckFailed(
                f"flag '{self.spec.flag}' reads {'on' if seen else 'off'} for tenant "
                f"'{ctx.tenant.id}' after it was turned {'on' if self.wanted else 'off'}",
                hint="check the flag's other strategies; 'migrate flags status PLAYBOOK' shows them",
            )

    def revert(self, ctx: StepContext, details: Mapping[str, Any]) -> Details:
        recorded = details.get("snapshot")
        snapshot = self._pending(ctx) or (
            FlagSnapshot.from_json(recorded) if isinstance(recorded, Mapping) else None
        )
        if snapshot is not None:
            change = ctx.flags.restore(snapshot)
        elif "before" in details and "after" in details:
            # Applied before snapshots were recorded: put the tenant's own state back.
            change = ctx.flags.set_enabled(self.spec.flag, ctx.tenant.id, bool(details["before"]))
        else:
            return {"flag": self.spec.flag, "restored": False}  # no flip was ever started
        # Consumed: the next apply takes a fresh snapshot.
        ctx.control.save_checkpoint(
            ctx.target, ctx.tenant.id, self.checkpoint_key, rows_copied=0, done=True, last_key=None
        )
        return {"flag": change.flag, "restored": True, "was": change.before, "now": change.after}

    def verify_reverted(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        if not details.get("restored"):
            return  # no flip was ever started
        seen = ctx.flags.is_enabled(self.spec.flag, ctx.tenant.id)
        if seen != bool(details.get("now")):
            raise CheckFailed(
                f"flag '{self.spec.flag}' reads {_on_off(seen)} for tenant '{ctx.tenant.id}' after it was "
                f"restored to {_on_off(bool(details.get('now')))}",
                hint="check the flag's other strategies; 'migrate flags status PLAYBOOK' shows them",
            )

    def summary(self, details: Mapping[str, Any], *, reverted: bool) -> str | None:
        if reverted:
            if not details.get("restored"):
                return None
            return f"flag '{details.get('flag')}' {_on_off(bool(details.get('now')))} again"
        if "after" not in details:
            return None
        before, after = _on_off(bool(details.get("before"))), _on_off(bool(details.get("after")))
        return f"{details.get('flag')}: " + (f"{before} -> {after}" if before != after else f"stays {after}")


def _on_off(value: bool) -> str:
    return "on" if value else "off"
