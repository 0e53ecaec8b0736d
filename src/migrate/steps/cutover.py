"""The cutover step: freeze, drain, validate under the freeze, sequences, flip; the source stays frozen.

In this order, timed from the REVOKE (``freeze_seconds``, ledgered):

1. catch up until one poll fits in a quarter of ``cutover.max_freeze`` (not frozen yet);
2. **freeze**: the application roles lose write access (``replication/freeze.py``;
   the grants are recorded first), and a **barrier** waits out writes under way,
   terminating (and naming) those still running after a quarter of the budget;
3. **fence**: a synchronously committed logical message on the source — every
   transaction committed before the barrier lies below it, and it is flushed;
4. **drain**: every change up to the fence, applied in one transaction;
5. **counts** per table, source vs target, under the freeze; tenants of at most
   ``cutover.checksum_rows`` rows are checksummed here too;
6. the shared **sequences** (identity, serial, a default's) are moved past every value the
   tenant's rows and its source's sequences hold, and the tenant must be **write-ready**
   (``steps/ready.py``: defaults, the application role's privileges, an insert with
   defaults as that role, rolled back) — else the step gives up before the flip;
7. snapshots of both sides are opened (for the checksums of larger tenants), then
   the **flag flips** (the flag step's snapshot and restore: ``steps/flag.py``);
8. the source stays frozen: an application instance that has not seen the flip
   gets a permission error, never a write into the old database;
9. larger tenants' checksums, in the snapshots taken before the flip: the
   application's first writes on the shared tables do not count.

Past ``cutover.max_freeze`` before the flip, or on a difference under the freeze,
the step gives the grants back and fails: the tenant stays on its old database,
nothing is lost, and the error says what took long. A flip is never made on an
earlier attempt's validation: a run that stopped anywhere before the flip freezes,
drains and validates again. A run killed after the flip finds the flag on, drains
what is left (nothing: the source is frozen) and checksums now.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import suppress
from typing import Any, ClassVar

import psycopg
from psycopg import sql

from migrate.catalog import TENANT_COLUMN
from migrate.checks.checksum import on_both
from migrate.errors import CheckFailed, MigrateError, StepFailed
from migrate.playbook.model import CutoverStep as CutoverSpec
from migrate.playbook.model import FlagStep as FlagSpec
from migrate.playbook.model import Step
from migrate.replication import slots
from migrate.replication.pgoutput import lsn_text
from migrate.steps import online, reverse
from migrate.steps.context import Details, StepContext
from migrate.steps.flag import FlagStep
from migrate.steps.freeze import barrier
from migrate.steps.ready import ensure_write_ready
from migrate.steps.validate import compare_tenant, mismatch_summary


class _Abort(Exception):
    """Give up before the flip: the grants go back, the tenant stays on its old database."""


def counts(ctx: StepContext, target: psycopg.Connection[Any] | None = None) -> dict[str, tuple[int, int]]:
    """Rows per table, (source, target), each side in one snapshot, both at once."""
    names = online.source_tables(ctx)
    dst = target or ctx.target

    def side(conn: psycopg.Connection[Any], schema: str, tenant: bool) -> list[int]:
        parts = [
            sql.SQL("(SELECT count(*) FROM {}{})").format(
                sql.Identifier(schema, t),
                sql.SQL(" WHERE {} = %(t)s").format(sql.Identifier(TENANT_COLUMN)) if tenant else sql.SQL(""),
            )
            for t in names
        ]
        row = conn.execute(sql.SQL("SELECT ") + sql.SQL(", ").join(parts), {"t": ctx.tenant.id}).fetchone()
        assert row is not None
        return [int(v) for v in row]

    src, tgt = on_both(
        lambda: side(ctx.source, ctx.source_schema, False), lambda: side(dst, ctx.target_schema, True)
    )
    return {t: (s, d) for t, s, d in zip(names, src, tgt, strict=True)}


class CutoverStep:
    kind: ClassVar[str] = "cutover"

    def __init__(self, spec: Step) -> None:
        assert isinstance(spec, CutoverSpec)
        self.spec: CutoverSpec = spec
        self.flag = FlagStep(FlagSpec(kind="flag", flag=spec.flag, action="enable"))

    # ------------------------------------------------------------------ apply
    def apply(self, ctx: StepContext) -> Details:
        if ctx.rehearsal:
            flipped = self.flag.flip(ctx)  # recorded, not made: the rehearsal's flag provider
            return {
                "rehearsal": f"would freeze {', '.join(ctx.app_roles)} on the source, drain, compare, flip",
                **flipped,
            }
        capture = online.capture_of(ctx)
        if self.flag._pending(ctx) is not None and ctx.flags.is_enabled(self.spec.flag, ctx.tenant.id):
            return self._after_flip(ctx, capture)
        stream = online.open_stream(ctx, capture)
        budget = ctx.cutover.max_freeze
        caught = online.catch_up(ctx, stream, capture, ready_seconds=budget / 4)
        # The reverse path, before the freeze: publication (row filter on the tenant) and slot on the
        # shared database, and the guard a rollback's shared-side freeze needs.
        reverse_slot = reverse.prepare(ctx)
        timings: dict[str, float] = {}
        started = time.monotonic()
        mark = started

        def lap(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            timings[name] = round(now - mark, 3)
            mark = now

        def over(after: str) -> None:
            spent = time.monotonic() - started
            if spent > budget:
                raise _Abort(
                    f"the freeze would last longer than cutover.max_freeze ({budget:g} s): {spent:.2f} s had "
                    f"passed after the {after}; " + _took(timings)
                )

        snapshots: psycopg.Connection[Any] | None = None
        # After a rollback the tenant is frozen on the shared side: lifted under the source's freeze
        # (the write-ready proof inserts as the application), put back if the cut-over gives up.
        shared_frozen = reverse.store(ctx).shared_frozen(ctx.target, ctx.tenant.id) is not None
        frozen_at: str | None = None
        drained = online.Caught()
        terminated: list[str] = []
        try:
            frozen = online.freeze_source(ctx, f"cutover:{self.spec.flag}")
            frozen_at = frozen.record.frozen_at.isoformat()
            lap("revoke")
            waited = barrier(ctx)
            terminated = waited.terminated
            lap("barrier")
            fence = slots.fence(ctx.source, f"cutover {ctx.tenant.id}")
            lap("fence")
            online.poll_once(ctx, stream, capture, drained, upto=fence, max_changes=None)
            lap("drain")
            over("drain")
            rows = counts(ctx)
            lap("counts")
            differ = {t: c for t, c in rows.items() if c[0] != c[1]}
            if differ:
                raise _Abort(
                    "row counts differ under the freeze: "
                    + ", ".join(f"{t} (source {s}, target {d})" for t, (s, d) in differ.items())
                )
            total = sum(s for s, _ in rows.values())
            figures: dict[str, Any] | None = None
            if total <= ctx.cutover.checksum_rows:
                figures = self._checksums(ctx)
                lap("checksums")
                if not figures["match"]:
                    raise _Abort(
                        f"checksums differ under the freeze in {mismatch_summary(figures['tables'])}; "
                        f"find the rows with 'migrate diff PLAYBOOK --tenant {ctx.tenant.id} --table …'"
                    )
            if shared_frozen:
                reverse.lift_shared_freeze(ctx)
            try:
                ready = ensure_write_ready(ctx)
            except StepFailed as exc:
                raise _Abort(exc.message) from None
            moved = ready.get("sequences_advanced", {})
            lap("sequences")
            reverse_from = reverse.arm(ctx)  # past the tool's own writes: the application's only
            lap("reverse_slot")
            if figures is None:
                snapshots = _snapshot(ctx)
            over("validation")
        except _Abort as exc:
            _close(ctx, snapshots)
            if shared_frozen:
                reverse.freeze_shared(ctx, "cutover given up")
            online.thaw_source(ctx)
            raise StepFailed(
                f"cut-over of tenant '{ctx.tenant.id}' given up, nothing flipped: {exc}",
                hint="the source is writable again and the tenant stays on its old database; nothing is "
                "lost. Run again when writes are calmer, or raise cutover.max_freeze",
                details=_given_up(timings, started, drained, terminated),
            ) from None
        except BaseException as exc:
            _close(ctx, snapshots)
            with suppress(MigrateError, psycopg.Error):
                if shared_frozen:
                    reverse.freeze_shared(ctx, "cutover failed")
                online.thaw_source(ctx)
            if isinstance(exc, MigrateError):
                exc.details.update(_given_up(timings, started, drained, terminated))
            raise
        try:
            flipped = self.flag.flip(ctx)
        except BaseException as exc:
            _close(ctx, snapshots)
            raise self._flip_failed(
                ctx, exc, _given_up(timings, started, drained, terminated), shared_frozen=shared_frozen
            ) from exc
        lap("flip")
        freeze_seconds = round(time.monotonic() - started, 3)
        reverse.lift_shared_freeze(ctx)  # a rollback's freeze, kept until the tenant is back here
        online.store(ctx).set_online(ctx.target, ctx.tenant.id, False)
        ctx.log.info("tenant_cut_over", freeze_seconds=freeze_seconds, **timings)
        try:
            if figures is None:
                assert snapshots is not None
                figures = self._checksums(ctx, snapshots)
                figures["checksummed"] = "after the flip, in snapshots taken under the freeze"
            else:
                figures["checksummed"] = "under the freeze"
        finally:
            _close(ctx, snapshots)
        return {
            **figures,
            "freeze_seconds": freeze_seconds,
            "max_freeze": budget,
            "timings": timings,
            "frozen_at": frozen_at,
            "drained_changes": drained.changes,
            "catchup": caught.details(),
            "fence_lsn": lsn_text(fence),
            "stragglers_terminated": terminated,
            "sequences": moved,
            "write_ready": True,
            "insert_proved": ready.get("insert_proved", []),
            "reverse_path": {"slot": reverse_slot, "from_lsn": reverse_from},
            "flag": flipped.get("flag"),
            "before": flipped.get("before"),
            "after": flipped.get("after"),
            "snapshot": flipped.get("snapshot"),
            "flipped": True,
        }

    def _flip_failed(
        self, ctx: StepContext, exc: BaseException, details: dict[str, Any], *, shared_frozen: bool = False
    ) -> BaseException:
        """The flag provider failed at the flip: unfreeze only when the flag surely stayed off."""
        if not isinstance(exc, Exception):
            return exc  # Ctrl-C, exit: the source stays frozen, the next run finishes or rollback unfreezes
        try:
            on = ctx.flags.is_enabled(self.spec.flag, ctx.tenant.id)
        except Exception:  # the provider is down: we cannot know, so the source stays frozen
            on = None
        if on is False:
            if shared_frozen:
                reverse.freeze_shared(ctx, "cutover flip failed")
            online.thaw_source(ctx)
            return StepFailed(
                f"the flip of flag '{self.spec.flag}' failed ({exc}); the flag is still off, so the source "
                "was unfrozen and the tenant stays on its old database",
                hint="fix the flag provider, then run again",
                details=details,
            )
        return StepFailed(
            f"the flip of flag '{self.spec.flag}' failed ({exc}) and whether it took effect is unknown: "
            "the source stays frozen, so no write can go to the old database",
            hint="once the flag provider answers, 'migrate run' finishes the cut-over; or "
            f"'migrate rollback PLAYBOOK --tenant {ctx.tenant.id} --to pre-cutover' unfreezes the source",
            details={**details, "flipped": None},
        )

    def _checksums(self, ctx: StepContext, target: psycopg.Connection[Any] | None = None) -> dict[str, Any]:
        mode, figures = compare_tenant(
            ctx.source,
            target or ctx.target,
            source_schema=ctx.source_schema,
            target_schema=ctx.target_schema,
            tenant=ctx.tenant.id,
            tables=ctx.tables,
        )
        return {
            "tables": {f.table: f.as_details() for f in figures},
            "rows": sum(f.target.rows for f in figures),
            "checksum": mode,
            "match": all(f.match for f in figures),
        }

    def _after_flip(self, ctx: StepContext, capture: Any) -> Details:
        """A run killed after the flip: the flag is on, the source frozen; drain what is left, checksum."""
        stream = online.open_stream(ctx, capture)
        drained = online.Caught()
        online.poll_once(
            ctx, stream, capture, drained, upto=slots.fence(ctx.source, "after flip"), max_changes=None
        )
        online.store(ctx).set_online(ctx.target, ctx.tenant.id, False)
        reverse.lift_shared_freeze(ctx)
        figures = self._checksums(ctx)
        figures["checksummed"] = (
            "after a restart past the flip: the shared tables may hold the application's writes since"
        )
        snapshot = self.flag._pending(ctx)
        return {
            **figures,
            "resumed_after_flip": True,
            "drained_changes": drained.changes,
            "flag": self.spec.flag,
            "after": True,
            "snapshot": snapshot.to_json() if snapshot else None,
            "flipped": True,
        }

    # ------------------------------------------------------------------ verify, revert
    def verify(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        if ctx.rehearsal:
            return
        self.flag.verify(ctx, details)
        tables = details.get("tables", {})
        if not details.get("match") and tables:
            raise CheckFailed(
                f"tenant '{ctx.tenant.id}' is cut over, but source and target differ in "
                f"{mismatch_summary(tables)}",
                hint=f"see which rows with 'migrate diff PLAYBOOK --tenant {ctx.tenant.id} --table …'; "
                "to send the tenant back to its old database: "
                f"'migrate rollback PLAYBOOK --tenant {ctx.tenant.id} --to pre-cutover'",
            )

    def revert(self, ctx: StepContext, details: Mapping[str, Any]) -> Details:
        """With a reverse path: the tenant's writes since the cut-over back to its database, then
        traffic (``steps/reverse.py``). Without one: traffic back first (the flag's snapshot), then
        the source's write privileges."""
        found = None if ctx.rehearsal else reverse.path(ctx)
        if found is not None and found.status == "capturing":
            back = reverse.discard if ctx.discard_writes else reverse.roll_back
            done = back(ctx, found, self.spec.flag, lambda: self.flag.revert(ctx, details))
            store = online.store(ctx)
            if store.capture(ctx.target, ctx.tenant.id) is not None:
                store.set_online(ctx.target, ctx.tenant.id, True)
            return done
        flag = self.flag.revert(ctx, details)
        record = online.frozen(ctx)
        thawed = online.thaw_source(ctx) if not ctx.rehearsal else False
        store = online.store(ctx)
        if store.capture(ctx.target, ctx.tenant.id) is not None:
            store.set_online(ctx.target, ctx.tenant.id, True)
        return {**flag, "thawed": thawed, "grants": [dict(g) for g in record.grants] if record else []}

    def verify_reverted(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        self.flag.verify_reverted(ctx, details)
        if online.frozen(ctx) is not None:
            raise CheckFailed(
                f"tenant '{ctx.tenant.id}''s source is still frozen after the cut-over was reverted",
                hint="run the same rollback again: it gives the recorded grants back",
            )

    def summary(self, details: Mapping[str, Any], *, reverted: bool) -> str | None:
        if reverted:
            flag = self.flag.summary(details, reverted=True)
            back = details.get("reverse") or {}
            gone = details.get("discarded") or {}
            applied = (
                f"{back['changes_applied']} change(s) since the cut-over applied back under a "
                f"{back['freeze_seconds']} s shared-side freeze"
                if "changes_applied" in back
                else f"{gone['changes']} change(s) since the cut-over DISCARDED: "
                f"{sum(gone['rows_put_back'].values())} shared row(s) put back as at the cut-over"
                if "changes" in gone
                else None
            )
            return ", ".join(
                p for p in (applied, flag, "source writable again" if details.get("thawed") else None) if p
            )
        if "freeze_seconds" in details:
            return (
                f"flag '{details.get('flag')}' on after a {details['freeze_seconds']} s freeze "
                f"(max {details.get('max_freeze')} s); {details.get('drained_changes', 0)} changes drained; "
                f"checksums {'match' if details.get('match') else 'DIFFER'} ({details.get('checksummed')})"
            )
        return self.flag.summary(details, reverted=False)


def _given_up(
    timings: Mapping[str, float], started: float, drained: online.Caught, terminated: list[str]
) -> dict[str, Any]:
    """What a cut-over that stopped before the flip records: nothing flipped, and where the time went."""
    return {
        "flipped": False,
        "frozen_seconds": round(time.monotonic() - started, 3),
        "timings": dict(timings),
        "drained_changes": drained.changes,
        "stragglers_terminated": terminated,
    }


def _took(timings: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timings.items()) or "nothing timed yet"


def _snapshot(ctx: StepContext) -> psycopg.Connection[Any]:
    """A target connection holding a snapshot of now (under the freeze), and the source's in ctx.source."""
    if ctx.connect_target is None:
        raise StepFailed("no second target connection is wired for this run", hint="this is a bug: report it")
    conn = ctx.connect_target()
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn.execute("SELECT 1")  # the snapshot is taken by the first query
        ctx.source.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        ctx.source.execute("SELECT 1")
    except BaseException:
        conn.close()
        raise
    return conn


def _close(ctx: StepContext, conn: psycopg.Connection[Any] | None) -> None:
    """End the snapshots of ``_snapshot``: close the target's connection, roll back the source's."""
    if conn is None:
        return
    with suppress(psycopg.Error):
        conn.close()
    with suppress(psycopg.Error):
        ctx.source.rollback()
