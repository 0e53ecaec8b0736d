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
from pathlib import Path
from typing import Any, ClassVar

from migrate.errors import CheckFailed, FlagStateUnknown
from migrate.playbook.model import FlagStep as FlagSpec
from migrate.playbook.model import Step
from migrate.ports import FlagSnapshot, FlagTarget, same_target
from migrate.steps.context import Details, StepContext
from migrate.steps.ready import ensure_write_ready


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
        # Turning the tenant's flag on sends its traffic to the shared tables: only once the
        # application can write there (steps/ready.py).
        ready = ensure_write_ready(ctx) if self.wanted and ctx.tables else {}
        return {**self.flip(ctx), **ready}

    def flip(self, ctx: StepContext) -> Details:
        """Snapshot, intent, flip — without the write-readiness gate (the cutover step runs its own)."""
        target = dict(ctx.flags.target())
        pending = self._pending_json(ctx)
        found: bool | None = None
        if pending is None:
            snapshot = ctx.flags.snapshot(self.spec.flag, ctx.tenant.id)
            intent = {**snapshot.to_json(), "target": target}
            # Saved before the flip: the intent, with what to go back to and where (CONVENTIONS 5).
            self._save_intent(ctx, intent)
        else:
            snapshot, intent = FlagSnapshot.from_json(pending), dict(pending)
            if pending.get("unknown"):
                # The last flip was not confirmed: what does the application see now? Read first.
                found = ctx.flags.is_enabled(self.spec.flag, ctx.tenant.id)
                ctx.log.info("flag_state_read", flag=self.spec.flag, found=found, wanted=self.wanted)
        figures: Details = {"flag": self.spec.flag, "before": snapshot.enabled}
        figures.update(snapshot=snapshot.to_json(), target=target)
        if found is not None:
            figures["found"] = found
        try:
            change = ctx.flags.set_enabled(self.spec.flag, ctx.tenant.id, self.wanted)
        except FlagStateUnknown as exc:
            self._save_intent(ctx, {**intent, "unknown": True})
            raise FlagStateUnknown(
                f"flag '{self.spec.flag}' was turned {_on_off(self.wanted)} for tenant '{ctx.tenant.id}', "
                f"but the flip could not be confirmed: its state is unknown ({exc.message})",
                where=exc.where,
                hint="the next 'migrate run' (or rollback) reads the real state first and finishes the "
                "job; 'migrate flags status PLAYBOOK' shows what the application sees now",
                details={**figures, "flag_state": "unknown", "wanted": self.wanted},
            ) from exc
        return {**figures, "after": change.after}

    def _pending_json(self, ctx: StepContext) -> dict[str, Any] | None:
        checkpoint = ctx.control.checkpoint(ctx.target, ctx.tenant.id, self.checkpoint_key)
        if checkpoint is None or checkpoint.done or not isinstance(checkpoint.last_key, dict):
            return None
        return dict(checkpoint.last_key)

    def _save_intent(self, ctx: StepContext, intent: Mapping[str, Any]) -> None:
        ctx.control.save_checkpoint(
            ctx.target, ctx.tenant.id, self.checkpoint_key, rows_copied=0, done=False, last_key=dict(intent)
        )

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
        found: bool | None = None
        if details.get("flag_state") == "unknown":
            # Its flip was never confirmed: read what the application sees before restoring.
            found = ctx.flags.is_enabled(self.spec.flag, ctx.tenant.id)
            ctx.log.info("flag_state_read", flag=self.spec.flag, found=found)
        taken = snapshot_target(snapshot) if snapshot is not None else None
        if snapshot is not None and taken is not None and not same_target(taken, ctx.flags.target()):
            # Taken where the flags were before they moved (accepted with --flags-moved): its exact
            # state belongs there; here the tenant only goes back to what it saw.
            change = ctx.flags.set_enabled(self.spec.flag, ctx.tenant.id, snapshot.enabled)
        elif snapshot is not None:
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
        undone: Details = {"flag": change.flag, "restored": True, "was": change.before, "now": change.after}
        undone["target"] = dict(ctx.flags.target())
        if found is not None:
            undone["found"] = found
        return undone

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


def snapshot_target(snapshot: FlagSnapshot) -> FlagTarget | None:
    """Where a snapshot was taken, from its own state (a file's path; Unleash project and environment)."""
    state = snapshot.state
    if snapshot.provider == "file" and isinstance(state.get("path"), str):
        return {"provider": "file", "path": str(Path(str(state["path"])).resolve())}
    if snapshot.provider == "unleash":
        found = {k: str(state[k]) for k in ("project", "environment") if isinstance(state.get(k), str)}
        return {"provider": "unleash", **found}
    return None


def recorded_target(details: Mapping[str, Any]) -> FlagTarget | None:
    """Where a flag step flipped, from its recorded figures (or its intent checkpoint): the target it
    recorded, else (records older than targets) what its snapshot says."""
    if "flag" not in details and "provider" not in details:
        return None  # not a flag step's figures
    target = details.get("target")
    if isinstance(target, Mapping):
        return {str(k): str(v) for k, v in target.items()}
    snapshot = details.get("snapshot", details if "provider" in details else None)
    return snapshot_target(FlagSnapshot.from_json(snapshot)) if isinstance(snapshot, Mapping) else None
