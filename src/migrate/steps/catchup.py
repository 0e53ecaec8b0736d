"""The catchup step: apply the changes captured since the copy until the lag is small.

Polls the tenant's slot (``steps/online.py``: peek, fold, apply with the progress
in one target transaction, advance) until one poll finds no more than fits in a
quarter of ``cutover.max_freeze`` and nothing more waiting — what the cut-over's
drain under the freeze will then face. Each poll's lag (changes, bytes of WAL,
seconds since the oldest unapplied commit) goes to the control schema
(``status`` shows it), the log (``changes_applied``) and the progress display.
Revert changes nothing: the rows it applied leave with the backfill's revert,
which also drops the capture.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from migrate.playbook.model import Step
from migrate.steps import online, reverse
from migrate.steps.context import Details, StepContext


class CatchupStep:
    kind: ClassVar[str] = "catchup"

    def __init__(self, spec: Step) -> None:
        self.spec = spec

    def apply(self, ctx: StepContext) -> Details:
        if ctx.rehearsal:
            return {"rehearsal": "no change capture is opened in a rehearsal: nothing to catch up"}
        capture = online.capture_of(ctx)
        stream = online.open_stream(ctx, capture)
        caught = online.catch_up(ctx, stream, capture, ready_seconds=ctx.cutover.max_freeze / 4)
        # The reverse path's DDL and slot now, outside any freeze (the cut-over only moves it on).
        return {**caught.details(), "reverse_slot": reverse.prepare(ctx)}

    def verify(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        if not ctx.rehearsal:
            online.capture_of(ctx)

    def revert(self, ctx: StepContext, details: Mapping[str, Any]) -> Details:
        return {}  # the backfill's revert removes the rows and the capture

    def verify_reverted(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        """Nothing to check: catch-up's revert changes nothing."""

    def summary(self, details: Mapping[str, Any], *, reverted: bool) -> str | None:
        if reverted or "changes" not in details:
            return None
        lag = details.get("lag") or {}
        return (
            f"{int(details['changes']):,} changes applied in {details.get('polls')} poll(s); "
            f"lag {lag.get('changes', 0)} changes, {lag.get('bytes', 0):,} bytes, {lag.get('seconds', 0)} s"
        )
