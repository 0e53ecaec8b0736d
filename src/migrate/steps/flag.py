"""The flag step: the tenant's flag on (or off); revert restores what was there."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from migrate.errors import CheckFailed
from migrate.playbook.model import FlagStep as FlagSpec
from migrate.playbook.model import Step
from migrate.steps.context import Details, StepContext


class FlagStep:
    kind: ClassVar[str] = "flag"
    irreversible: ClassVar[bool] = False

    def __init__(self, spec: Step) -> None:
        assert isinstance(spec, FlagSpec)
        self.spec: FlagSpec = spec

    @property
    def wanted(self) -> bool:
        return self.spec.action == "enable"

    def apply(self, ctx: StepContext) -> Details:
        change = ctx.flags.set_enabled(self.spec.flag, ctx.tenant.id, self.wanted)
        return {"flag": change.flag, "before": change.before, "after": change.after}

    def verify(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        seen = ctx.flags.is_enabled(self.spec.flag, ctx.tenant.id)
        if seen != self.wanted:
            raise CheckFailed(
                f"flag '{self.spec.flag}' reads {'on' if seen else 'off'} for tenant "
                f"'{ctx.tenant.id}' after it was turned {'on' if self.wanted else 'off'}",
                hint="check the flag's other strategies; 'migrate flags status PLAYBOOK' shows them",
            )

    def revert(self, ctx: StepContext, details: Mapping[str, Any]) -> Details:
        before = bool(details.get("before", not self.wanted))
        change = ctx.flags.set_enabled(self.spec.flag, ctx.tenant.id, before)
        return {"flag": change.flag, "before": change.before, "after": change.after}
