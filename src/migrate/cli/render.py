"""Render api results for people (rich tables) and machines (JSON)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from migrate import api
from migrate.cli import summary
from migrate.cli.grid import Grid
from migrate.errors import MigrateError

_ROW_COLUMNS = frozenset({"source rows", "target rows"})

if TYPE_CHECKING:
    from migrate.api import (
        DiffResult,
        GenerateResult,
        Holder,
        IsolationReport,
        Plan,
        Reverted,
        RollbackPreview,
        RollbackResult,
        RunResult,
        TenantResult,
    )


def error(console: Console, exc: MigrateError) -> None:
    where = f"{exc.where}: " if exc.where else ""
    console.print(f"error: {where}{exc.message}", markup=False)
    if exc.hint:
        console.print(f"  hint: {exc.hint}", markup=False)


def plan(the_plan: Plan) -> str:
    return api.render_text(the_plan)


def _flag_changes(tenant: TenantResult) -> list[str]:
    """What a rehearsal's traffic steps would change, as their kinds say it ('flag: off -> on')."""
    return [
        s.summary for s in tenant.steps if s.moves == "traffic" and s.outcome == "rehearsed" and s.summary
    ]


def run(console: Console, result: RunResult, playbook: Path | None = None) -> None:
    verb = "rehearsed" if result.dry_run else "applied"
    if result.replanned:
        old, new = result.replanned
        console.print(f"playbook replanned: version {old[:12]} -> {new[:12]} (ledgered)", markup=False)
    for tenant in result.tenants:
        worked = [s for s in tenant.steps if s.outcome == verb]
        if tenant.outcome == "done" and not worked:
            console.print(f"{tenant.tenant}: up to date, nothing to do (0 rows copied)", markup=False)
            continue
        if tenant.outcome == "done":
            flips = _flag_changes(tenant)
            console.print(
                f"{tenant.tenant}: done, {len(worked)} step(s) {verb}, {tenant.rows_copied_now} rows copied"
                + (" (rolled back)" if result.dry_run else "")
                + (f"; flags: {', '.join(flips)}" if flips else ""),
                markup=False,
            )
            for step in worked:
                if "freeze_seconds" in step.details and step.summary:
                    console.print(f"  {step.key}: {step.summary}", markup=False)
            continue
        shout = "FLAG STATE UNKNOWN" if tenant.outcome == "unknown" else tenant.outcome.upper()
        console.print(f"{tenant.tenant}: {shout}", markup=False)
        if tenant.note:
            console.print(f"  {tenant.note}", markup=False)
        if tenant.error is not None:
            where = f"{tenant.error.where}: " if tenant.error.where else ""
            console.print(f"  {where}{tenant.error.message}", markup=False)
            if tenant.error.hint and tenant.outcome != "stopped":
                console.print(f"  hint: {tenant.error.hint}", markup=False)
    for warning in result.warnings:
        console.print(f"note: {warning}", markup=False)
    bad = [t.tenant for t in result.tenants if t.outcome != "done"]
    summary = "all tenants done" if not bad else f"{len(bad)} tenant(s) not done: {', '.join(bad)}"
    label = "rehearsal" if result.dry_run else "run"
    console.print(
        f"{label} {str(result.run_id)[:8]}: {summary} ({result.seconds:.1f} s)"
        + ("; nothing was written: target, flags and run state are as before" if result.dry_run else ""),
        markup=False,
    )
    if result.stopped and playbook is not None:
        console.print(f"stopped at a safe point; resume with: migrate run {playbook}", markup=False)


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def _when(at: datetime | None) -> str | None:
    return None if at is None else f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _iso(at: datetime | None) -> str | None:
    """A time for machines: ISO 8601 in UTC."""
    return None if at is None else at.astimezone(UTC).isoformat()


_NAMED = 8  # tenants named on a wave's line; more are counted (a line per wave, whatever its size)


def _wave_line(w: api.WaveStatus) -> str:
    named = ", ".join(w.tenants) if len(w.tenants) <= _NAMED else f"{len(w.tenants):,} tenants"
    if len(w.tenants) > _NAMED and w.stage != "done":
        named += f", {len(w.finished):,} done"
    line = f"wave {w.name}: {w.stage} ({named or 'no tenants'})"
    if w.blocked_by:
        line += f", after wave {w.blocked_by}"
    if w.approval is not None:
        line += f"; approved by {w.approval.actor} on {w.approval.host} at {_when(w.approval.at)}"
    elif w.approval_needed:
        line += "; needs approval, not given yet"
    return line


def _step_now(now: api.StepNow) -> str:
    if now.status == "flag state unknown":
        return f"{now.key}: flag state UNKNOWN (flipped, not confirmed; the next run reads it first)"
    if now.status == "interrupted":
        return f"{now.key} interrupted (its runner is gone; the next run redoes it)"
    return f"{now.key} {now.status}" + (f": {now.error}" if now.error else "")


def _rollback_now(left: api.UnfinishedRollback, held: bool) -> str:
    since = _when(left.since)
    if held:
        return f"rolling back to '{left.point}' since {since}"
    if left.outcome == "failed":
        why = left.error or "no error recorded"
        return f"rollback to '{left.point}' FAILED ({why}); unfinished since {since}"
    how = "stopped on request" if left.outcome == "stopped" else "interrupted (its process is gone)"
    return f"rollback to '{left.point}' {how}; unfinished since {since}"


def status(console: Console, result: api.Status, *, rows: bool = True) -> None:
    """The playbook's version, its waves, a row per tenant (or, without ``rows``, a summary by wave and
    state that fits on a screen), who holds what, figures and the next command."""
    where = f" ({result.path})" if result.path else ""
    console.print(f"playbook {result.playbook}, version {result.digest[:12]}{where}", markup=False)
    if result.accepted is not None and result.playbook_changed:
        console.print(
            f"warning: the playbook changed since version {result.accepted.digest[:12]} "
            f"(accepted {_when(result.accepted.since)} by {result.accepted.actor}): "
            "the next 'migrate run' needs --replan",
            markup=False,
        )
    if not result.started:
        console.print("nothing has run yet (no control schema on the target)", markup=False)
    if any(t.region is not None for t in result.targets):
        console.print("targets: " + ", ".join(_target_line(t) for t in result.targets), markup=False)
    for w in result.waves:
        console.print(_wave_line(w), markup=False)
    if not rows:
        summary.status_summary(console, result, [_tenant_now(t) for t in result.tenants])
        for slot in result.slots:
            console.print(_slot_line(slot), markup=False)
        _next(console, result)
        return
    names = [f.flag for f in result.flags] if result.flags_error is None else []
    cols = (
        "tenant",
        "region",
        "wave",
        "phase",
        "last step",
        "state",
        "points passed",
        "rows",
        "validated",
        *names,
    )
    table = Grid(cols, right=frozenset({"rows"}))
    for t in result.tenants:
        table.add_row(
            t.tenant,
            t.region,
            t.wave,
            t.phase or "-",
            t.last_step or "-",
            t.state,
            ", ".join(t.points) or "-",
            "-" if t.rows is None else f"{t.rows:,}",
            _yes_no(t.validated),
            *(_on_off(t.flags.get(name)) for name in names),
        )
    table.print(console)
    for t in result.tenants:
        if now := _tenant_now(t):
            console.print(f"{t.tenant}: {now}", markup=False)
        for line in _replication_lines(t):
            console.print(f"{t.tenant}: {line}", markup=False)
    for slot in result.slots:
        console.print(_slot_line(slot), markup=False)
    if result.flags_error is not None:
        console.print(f"flags unavailable: {result.flags_error}", markup=False)
    if any(t.figures for t in result.tenants):
        figures(console, result)
    _next(console, result)


def _tenant_now(t: api.TenantStatus) -> str:
    """What a tenant is doing or where it stopped, with its holder: '' when nothing to say."""
    parts = [_step_now(t.current)] if t.current is not None else []
    if t.rollback is not None:
        parts.insert(0, _rollback_now(t.rollback, t.holder is not None))
    if t.holder is not None:
        parts.append(f"held by {t.holder.describe()}")
    return "; ".join(parts)


def _next(console: Console, result: api.Status) -> None:
    if result.next is None:
        console.print("next: nothing, every tenant is done", markup=False)
    else:
        console.print(f"next: {result.next.command}", markup=False)
        console.print(f"  why: {result.next.why}", markup=False)


def _target_line(t: api.TargetStatus) -> str:
    carries = (
        f"region {t.recorded_region} recorded"
        if t.recorded_region is not None
        else "no region recorded: migrate residency set … --region " + (t.region or "REGION")
    )
    mark = "" if t.residency_ok else " (!)"
    return f"{t.name} (${t.dsn_env}, database {t.database}: {carries}){mark}"


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _replication_lines(t: api.TenantStatus) -> list[str]:
    """The tenant's change capture (its lag) and its freeze, one line each."""
    lines = []
    c = t.capture
    if c is not None and c.online:
        lag = (
            f"lag {c.lag_changes or 0:,} changes, {_size(c.lag_bytes)} of WAL, {c.lag_seconds or 0:.2f} s"
            f" (at {_when(c.lag_at)})"
            if c.lag_at is not None
            else "no catch-up yet"
        )
        lines.append(f"capturing changes (slot {c.slot}): {lag}; {c.changes_applied:,} changes applied")
    if t.frozen is not None:
        lines.append(
            f"source FROZEN since {_when(t.frozen.since)}: {', '.join(t.frozen.roles)} cannot write it "
            f"(by {t.frozen.step})"
            + (f"; cut over after a {t.freeze_seconds:.3f} s freeze" if t.freeze_seconds is not None else "")
        )
    elif t.freeze_seconds is not None:
        lines.append(f"cut over after a {t.freeze_seconds:.3f} s freeze")
    r = t.reverse
    if r is not None:
        held = "the slot is GONE" if r.wal_status is None else f"holds {_size(r.retained_bytes)} of WAL"
        lost = r.wal_status in (None, "lost")
        lines.append(
            f"rollback after the cut-over {'NOT possible' if lost else 'possible'}: reverse path "
            f"{r.slot} since {_when(r.since)} {held}"
            + ("" if r.wal_status in (None, "reserved") else f" (wal_status {r.wal_status})")
        )
    b = t.rolled_back
    if b:
        if "changes_applied" in b:
            lines.append(
                f"rolled back after the cut-over: {b['changes_applied']:,} change(s) applied back "
                f"under a {b.get('freeze_seconds')} s shared-side freeze"
            )
        elif "changes" in b:
            lines.append(f"rolled back after the cut-over: {b['changes']:,} change(s) DISCARDED")
    if t.shared_frozen is not None:
        lines.append(
            f"shared side FROZEN for the tenant since {_when(t.shared_frozen)}: its writes there are "
            "refused until its next cut-over"
        )
    return lines


def _slot_line(slot: api.SlotNow) -> str:
    if slot.error is not None:
        return f"slot {slot.slot} ({slot.tenant}'s source): unknown, {slot.error}"
    return (
        f"slot {slot.slot} ({slot.tenant}'s source) holds {_size(slot.retained_bytes)} of WAL"
        f" ({slot.wal_status}{', in use' if slot.active else ''}); 'finalise' drops it after the cut-over"
    )


def _holder_json(h: Holder) -> dict[str, Any]:
    return {
        "tenant": h.tenant,
        "host": h.host,
        "pid": h.pid,
        "since": _iso(h.since),
        "run_id": None if h.run_id is None else str(h.run_id),
        "command": h.command,
        "backend_pid": h.backend_pid,
        "application": h.application,
        "describe": h.describe(),
    }


def status_json(result: api.Status) -> dict[str, Any]:
    """The documented shape of 'status --json' (README.md, 'Status'): add keys, never rename them."""
    accepted = result.accepted
    return {
        "playbook": result.playbook,
        "path": result.path,
        "digest": result.digest,
        "accepted": None
        if accepted is None
        else {"digest": accepted.digest, "since": _iso(accepted.since), "actor": accepted.actor},
        "playbook_changed": result.playbook_changed,
        "started": result.started,
        "waves": [
            {
                "name": w.name,
                "stage": w.stage,
                "tenants": list(w.tenants),
                "finished": list(w.finished),
                "blocked_by": w.blocked_by,
                "approval": {
                    "needed": w.approval_needed,
                    "by": w.approval.actor if w.approval else None,
                    "host": w.approval.host if w.approval else None,
                    "at": _iso(w.approval.at) if w.approval else None,
                    "digest": w.approval.digest if w.approval else None,
                },
            }
            for w in result.waves
        ],
        "targets": [
            {
                "name": t.name,
                "region": t.region,
                "dsn_env": t.dsn_env,
                "database": t.database,
                "recorded_region": t.recorded_region,
                "started": t.started,
            }
            for t in result.targets
        ],
        "tenants": [
            {
                "tenant": t.tenant,
                "region": t.region,
                "target": t.target,
                "wave": t.wave,
                "state": t.state,
                "phase": t.phase,
                "last_step": t.last_step,
                "step": None
                if t.current is None
                else {
                    "key": t.current.key,
                    "phase": t.current.phase,
                    "step": t.current.step,
                    "kind": t.current.kind,
                    "status": t.current.status,
                    "error": t.current.error,
                },
                "steps_done": t.steps_done,
                "steps_total": t.steps_total,
                "points_passed": list(t.points),
                "rows": t.rows,
                "validated": t.validated,
                "figures": {name: dict(f) for name, f in t.figures.items()},
                "error": t.error,
                "flags": dict(t.flags),
                "held_by": None if t.holder is None else t.holder.describe(),
                "capture": None
                if t.capture is None
                else {
                    "slot": t.capture.slot,
                    "online": t.capture.online,
                    "changes_applied": t.capture.changes_applied,
                    "applied_at": _iso(t.capture.applied_at),
                    "lag": {
                        "changes": t.capture.lag_changes,
                        "bytes": t.capture.lag_bytes,
                        "seconds": t.capture.lag_seconds,
                        "at": _iso(t.capture.lag_at),
                    },
                },
                "frozen": None
                if t.frozen is None
                else {"since": _iso(t.frozen.since), "roles": list(t.frozen.roles), "step": t.frozen.step},
                "freeze_seconds": t.freeze_seconds,
                "reverse": None
                if t.reverse is None
                else {
                    "slot": t.reverse.slot,
                    "since": _iso(t.reverse.since),
                    "retained_bytes": t.reverse.retained_bytes,
                    "wal_status": t.reverse.wal_status,
                },
                "shared_frozen": _iso(t.shared_frozen),
                "rolled_back": None if t.rolled_back is None else dict(t.rolled_back),
                "rollback": None
                if t.rollback is None
                else {
                    "to": t.rollback.point,
                    "outcome": t.rollback.outcome or ("running" if t.holder else "interrupted"),
                    "since": _iso(t.rollback.since),
                    "error": t.rollback.error,
                    "discard_writes_since_cutover": t.rollback.discard_writes,
                },
            }
            for t in result.tenants
        ],
        "slots": [
            {
                "tenant": s.tenant,
                "slot": s.slot,
                "retained_bytes": s.retained_bytes,
                "wal_status": s.wal_status,
                "active": s.active,
                "error": s.error,
            }
            for s in result.slots
        ],
        "holders": [_holder_json(h) for h in result.holders],
        "flags": {
            "provider": result.flags_provider,
            "available": result.flags_error is None,
            "error": result.flags_error,
            "flags": [f.__dict__ for f in result.flags],
        },
        "next": None if result.next is None else {"command": result.next.command, "why": result.next.why},
    }


def _reverted(step: Reverted) -> str:
    said = f"reverted {step.tenant} {step.key} ({step.seconds:.2f} s)"
    return f"{said}: {step.summary}" if step.summary else said


def rollback(console: Console, result: RollbackResult) -> None:
    who = ", ".join(result.tenants) or "no tenant"
    if result.nothing:
        console.print(
            f"nothing after '{result.point}' to revert for {who}: already rolled back, or never past it "
            f"(done after {result.seconds_total:.2f} s)",
            markup=False,
        )
        return
    for step in result.steps:
        console.print(_reverted(step), markup=False)
    if result.stopped is not None:
        done = [t for t in result.tenants if t not in result.unfinished]
        flags = (
            f"traffic back on the old databases after {result.seconds_to_flags:.2f} s (flags restored); "
            if result.seconds_to_flags is not None
            else ""
        )
        console.print(
            f"rollback STOPPED at a safe point ({result.stopped}): {flags}"
            + (f"{', '.join(done)} done; " if done else "")
            + f"unfinished: {', '.join(result.unfinished)} "
            "(recorded; 'migrate run' refuses them until it is done)",
            markup=False,
        )
        console.print(f"finish it with: {result.resume}", markup=False)
        return
    for cut in result.discarded:
        console.print(
            f"{cut.describe()}: its writes since then were discarded, as accepted (its copy left the "
            "shared tables with them; the next run copies and validates afresh)",
            markup=False,
        )
    timing = (
        f"traffic back on the old databases after {result.seconds_to_flags:.2f} s (flags restored); "
        if result.seconds_to_flags is not None
        else "no flag to restore; "
    )
    console.print(
        f"{who} rolled back to '{result.point}': {timing}done after {result.seconds_total:.2f} s",
        markup=False,
    )


def rollback_preview(console: Console, preview: RollbackPreview) -> None:
    """What a rollback will revert, in the order it will (every flag first), before it asks."""
    if preview.nothing:
        who = ", ".join(t.tenant.id for t in preview.tenants) or "no tenant"
        console.print(f"nothing after '{preview.point}' to revert for {who}", markup=False)
        return
    console.print(f"rollback to '{preview.point}' will revert, every flag first:", markup=False)
    rows = [(t.tenant.id, s) for t in preview.tenants for s in t.flags]
    rows += [(t.tenant.id, s) for t in preview.tenants for s in t.data]
    width = max(len(tenant) for tenant, _ in rows)
    for tenant, step in rows:
        what = step.spec.undo_note() if step.spec is not None else ""
        console.print(f"  {tenant:<{width}}  {step.key:<24} {what}".rstrip(), markup=False)
    for cut in preview.cutovers:
        console.print(f"{cut.describe()}: its writes since then will be LOST", markup=False)


def rollback_question(preview: RollbackPreview) -> str:
    tenants = [t.tenant.id for t in preview.tenants if t.steps]
    shown = ", ".join(tenants[:5]) + (f" and {len(tenants) - 5} more" if len(tenants) > 5 else "")
    plural = "s" if len(tenants) != 1 else ""
    return f"Roll back {len(tenants)} tenant{plural} ({shown}) to '{preview.point}'?"


def ledger(console: Console, report: api.LedgerReport, warn: Console | None = None) -> None:
    # Aligned lines, not a rich table: a log is read whole and grepped, and a table squeezed into
    # 80 columns would cut the run ids people copy into --run.
    head = ("#", "at (UTC)", "run", "actor", "tenant", "step", "action", "outcome")
    rows = [
        (
            str(rec.seq),
            f"{rec.at.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
            str(rec.entry.run_id)[:8] if rec.entry.run_id else "-",
            rec.entry.actor,
            rec.entry.tenant or "-",
            rec.entry.step or "-",
            rec.entry.action,
            rec.entry.outcome,
        )
        for rec in report.entries
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        cells = [row[0].rjust(widths[0])] + [c.ljust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        console.print("  ".join(cells).rstrip(), markup=False, highlight=False)
    console.print(
        f"chain intact ({report.checked} entries)"
        if report.why is None
        else f"CHAIN BROKEN at entry {report.broken_at}: {report.why}",
        markup=False,
    )
    for problem in report.problems:
        console.print(f"BROKEN: {problem}", markup=False)
    ledger_warnings(warn or console, report)


def ledger_warnings(console: Console, report: api.LedgerReport) -> None:
    for warning in (*report.warnings, *report.notices):
        console.print(f"warning: {warning}", markup=False)


def ledger_keys(console: Console, keys: tuple[api.LedgerKey, ...]) -> None:
    if not keys:
        console.print("no signed entry yet: no key recorded", markup=False)
    for key in keys:
        console.print(
            f"# key {key.key_id} ({key.algorithm}), first used {key.recorded_at:%Y-%m-%d %H:%M:%S %Z}",
            markup=False,
        )
        console.print(key.public_key.strip(), markup=False)


def ledger_verified(report: api.LedgerReport) -> str:
    if report.head_seq is None:
        return "ledger verified: no entries yet"
    text = (
        f"ledger verified: {report.checked} entries, chain intact\n"
        f"head: entry {report.head_seq} {report.head_hash}  (publish it; check later with --anchor)"
    )
    if report.signed:
        text += f"\nsignatures: {report.signed} entries signed with a trusted key, every one checks"
    if report.head_checked is not None:
        text += f"\npublished head holds: {report.head_checked}"
    if report.anchor_seq is not None:
        text += f"\nanchor found at entry {report.anchor_seq}: nothing up to it has changed"
    return text


def ledger_exported(exported: api.LedgerExport, path: Path | None) -> str:
    where = f" to {path}" if path is not None else ""
    report = exported.report
    chain = (
        f"chain intact, head entry {report.head_seq} {report.head_hash}"
        if report.why is None and report.head_seq is not None
        else "no entries yet"
        if report.why is None
        else f"CHAIN BROKEN at entry {report.broken_at}"
    )
    return f"exported {exported.written} entries{where}; {chain}"


def figures(console: Console, result: api.Status) -> None:
    """Validation figures per tenant and table: rows and checksum on each side."""
    table = Grid(
        ("tenant", "table", "source rows", "target rows", "checksum", "match"),
        title="validation: source vs target, per tenant and table",
        right=_ROW_COLUMNS,
    )
    for t in result.tenants:
        for name, f in sorted(t.figures.items()):
            table.add_row(
                t.tenant,
                name,
                f"{f['source_rows']:,}",
                f"{f['target_rows']:,}",
                str(f["source_checksum"]),
                _yes_no(f["match"]),
            )
    table.print(console)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def demo(console: Console, result: Any) -> None:
    status(console, result.status)  # the figures are part of it
    entries = result.ledger.entries
    actions: dict[str, int] = {}
    for rec in entries:
        actions[rec.entry.action] = actions.get(rec.entry.action, 0) + 1
    console.print(
        f"ledger: {len(entries)} entries ("
        + ", ".join(f"{n} {a}" for a, n in sorted(actions.items()))
        + "), "
        + ("hash chain verified" if result.ledger.why is None else f"BROKEN: {result.ledger.why}"),
        markup=False,
    )
    rows = sum(t.rows or 0 for t in result.status.tenants)
    ok = all(t.validated for t in result.status.tenants)
    console.print(
        f"\n{len(result.status.tenants)} tenants migrated, {rows:,} rows, counts and checksums "
        f"{'match' if ok else 'DO NOT match'} ({result.seconds:.1f} s)",
        markup=False,
    )
    frozen = [
        f"{t.tenant} {t.freeze_seconds:.3f} s" for t in result.status.tenants if t.freeze_seconds is not None
    ]
    if frozen:
        console.print(
            f"writes frozen for: {', '.join(frozen)} (max_freeze {result.max_freeze:g} s)", markup=False
        )
    app = result.application
    if app is not None:
        console.print(
            f"the application wrote {app.committed:,} transactions to acme during its migration; "
            + (
                "every one arrived (acme's frozen source and the target match)"
                if result.arrived
                else "NOT all arrived: 'migrate verify' and 'migrate diff' show where"
            )
            + f"; {app.refused:,} later writes were refused by the freeze",
            markup=False,
        )
    if result.kept:
        console.print(
            "\nThe server and databases stay in " + str(result.root) + ". Go on by hand:", markup=False
        )
        for key, value in result.environ.items():
            console.print(f"  export {key}='{value}'", markup=False)
        console.print(
            f"  migrate status {_shown(result.playbook)}\n"
            f"  migrate rollback {_shown(result.playbook)} --tenant acme --to pre-cutover"
            " --discard-writes-since-cutover --yes\n"
            f"  migrate run {_shown(result.playbook)}\n"
            f"  migrate ledger show {_shown(result.playbook)}\n"
            f"  migrate demo --stop {result.root}",
            markup=False,
        )
    else:
        console.print(
            "\nNothing is left running. Next: 'migrate demo --keep /tmp/tm-demo' keeps the databases,\n"
            "then try 'migrate status' and 'migrate rollback … --to pre-cutover' yourself.",
            markup=False,
        )


_MODES = {
    "hash": "hash_record_extended of the values (same major versions)",
    "text": "md5 of the row text under pinned settings (major versions differ)",
}


def verification(console: Console, result: api.VerifyResult) -> None:
    """Counts and checksums per tenant and table, then what matches and what to run next."""
    table = Grid(
        ("tenant", "table", "source rows", "target rows", "checksum", "match"),
        title="verify: source vs target, per tenant and table",
        right=_ROW_COLUMNS,
    )
    for t in result.tenants:
        for f in t.tables:
            table.add_row(
                t.tenant,
                f.table,
                f"{f.source.rows:,}",
                f"{f.target.rows:,}",
                f.source.checksum,
                _yes_no(f.match),
            )
    table.print(console)
    modes = sorted({t.mode for t in result.tenants})
    for mode in modes:
        console.print(f"checksum: {_MODES.get(mode, mode)}", markup=False)
    tables = sum(len(t.tables) for t in result.tenants)
    seconds = sum(t.seconds for t in result.tenants)
    bad = [(t.tenant, f) for t in result.tenants for f in t.tables if not f.match]
    if not bad:
        console.print(
            f"{len(result.tenants)} tenant(s), {tables} table(s): counts and checksums match"
            f" ({seconds:.2f} s)",
            markup=False,
        )
        return
    for tenant, f in bad:
        why = "checksums differ" if f.source.rows == f.target.rows else "row counts differ"
        console.print(
            f"MISMATCH {tenant}/{f.table}: {why} (rows {f.source.rows:,} vs {f.target.rows:,},"
            f" checksums {f.source.checksum} vs {f.target.checksum});"
            f" see which keys: migrate diff PLAYBOOK --tenant {tenant} --table {f.table}",
            markup=False,
        )
    console.print(f"{len(bad)} of {tables} table(s) differ ({seconds:.2f} s)", markup=False)


def _key(columns: tuple[str, ...], key: tuple[str, ...]) -> str:
    return ", ".join(f"{c}={v}" for c, v in zip(columns, key, strict=True))


def _shown_value(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def readiness(console: Console, result: Sequence[api.Readiness]) -> None:
    """Per tenant: write-ready, or each thing missing with its fix."""
    for r in result:
        role = f" as {r.app_role}" if r.app_role else " (no target.app_role: privileges not checked)"
        if r.ok:
            proved = f"; an insert with defaults works in {len(r.proved)} table(s)" if r.proved else ""
            console.print(f"{r.tenant}: write-ready on schema {r.schema}{role}{proved}", markup=False)
            continue
        console.print(f"{r.tenant}: NOT write-ready on schema {r.schema}{role}:", markup=False)
        for m in r.missing:
            console.print(f"  {m.text()}", markup=False)
            console.print(f"    fix: {m.fix}", markup=False)
    ready = sum(1 for r in result if r.ok)
    console.print(f"{ready} of {len(result)} tenant(s) write-ready", markup=False)


def diff(console: Console, tenant: str, result: DiffResult) -> None:
    """Missing, extra and changed keys (a sample of each, with totals) and what the search cost."""
    head = (
        f"{tenant} / {result.table}: {result.source_rows:,} source rows, {result.target_rows:,} target rows"
        f" (checksum: {result.mode})"
    )
    console.print(head, markup=False)
    if result.equal:
        console.print("source and target are equal", markup=False)
    groups = (
        ("missing in target", result.missing, [(k, "") for k in result.missing_keys]),
        ("extra in target", result.extra, [(k, "") for k in result.extra_keys]),
        (
            "changed",
            result.changed,
            [
                (
                    row.key,
                    ": "
                    + "; ".join(
                        f"{c.column} {_shown_value(c.source)} → {_shown_value(c.target)}" for c in row.columns
                    ),
                )
                for row in result.changed_rows
            ],
        ),
    )
    for label, total, shown in groups:
        if not total:
            continue
        more = f" (showing {len(shown)})" if len(shown) < total else ""
        console.print(f"{label}: {total:,}{more}", markup=False)
        for key, detail in shown:
            console.print(f"  {_key(result.key_columns, key)}{detail}", markup=False)
    console.print(
        f"{result.missing:,} missing, {result.extra:,} extra, {result.changed:,} changed;"
        f" {result.ranges_compared:,} key range(s) compared, {result.keys_fetched:,} keys fetched,"
        f" {result.levels} level(s), {result.seconds:.2f} s",
        markup=False,
    )


def _on_off(value: bool | None) -> str:
    return "-" if value is None else ("on" if value else "off")


def flags_status(console: Console, result: api.FlagsStatus) -> None:
    """Per tenant: phase and state, then each flag as the application sees it."""
    title = f"playbook {result.playbook} ({result.digest[:12]}), flags: {result.provider}"
    table = Grid(("tenant", "wave", "phase", "state", *(f.flag for f in result.flags)), title=title)
    for t in result.tenants:
        seen = (_on_off(t.flags[f.flag]) for f in result.flags)
        table.add_row(t.tenant, t.wave, t.phase or "-", t.state, *seen)
    table.print(console)
    for f in result.flags:
        listed = ", ".join(f.tenants) if f.tenants else "none"
        parts = [f"{f.flag} in {f.where}"]
        if f.environment_on is not None:
            parts.append(f"environment {_on_off(f.environment_on)}")
        parts.append(f"tenants listed: {listed}")
        if f.other_strategies:
            parts.append(f"{f.other_strategies} other strateg{'y' if f.other_strategies == 1 else 'ies'}")
        console.print("; ".join(parts), markup=False)


def flags_status_json(result: api.FlagsStatus) -> dict[str, Any]:
    return {
        "playbook": result.playbook,
        "digest": result.digest,
        "provider": result.provider,
        "flags": [f.__dict__ for f in result.flags],
        "tenants": [{**t.__dict__, "flags": dict(t.flags)} for t in result.tenants],
    }


def flags_sync(console: Console, result: api.FlagsSync) -> None:
    for f in result.flags:
        what = ", ".join(f.actions) if f.actions else "already there"
        console.print(f"{f.flag}: {what}", markup=False)
    created = sum(1 for f in result.flags if f.actions)
    console.print(f"{len(result.flags)} flag(s) in {result.where}, {created} changed", markup=False)


def schema_generate(console: Console, result: GenerateResult) -> None:
    rev, shared = result.revision, result.shared
    state = "written, in a new alembic project" if rev.scaffolded else "written"
    state = "unchanged" if rev.unchanged else state
    console.print(f"revision {rev.revision}: {_shown(rev.path)} ({state})", markup=False)
    console.print(
        f"  shared schema {shared.schema!r}: {len(shared.tenant_tables)} tenant table(s), "
        f"{len(shared.global_tables)} global, {len(shared.types)} type(s), {len(shared.views)} view(s), "
        f"{len(shared.partitions)} partition(s); {len(shared.upgrade)} statements",
        markup=False,
    )
    console.print(
        f"  source objects: {len(shared.carried)} carried (functions, aggregates, triggers, views, "
        f"extensions), {len(shared.left_behind)} left behind as acknowledged",
        markup=False,
    )
    ini = rev.path.parent.parent / "alembic.ini"
    if ini.exists():
        console.print(
            f"  apply it: alembic -c {_shown(ini)} upgrade head  (target: $MIGRATE_TARGET_DSN)", markup=False
        )
    console.print(
        f"consolidation report ({len(result.sources)} source(s): {', '.join(result.sources)})", markup=False
    )
    for n in result.notes:
        label = n.severity.upper() if n.severity == "error" else n.severity
        where = f"[target {n.target}] " if n.target else ""
        console.print(f"  {label:<7} {where}{n.subject}: {n.rule}: {n.detail}", markup=False)
        if n.fix:
            console.print(f"          fix: {n.fix}", markup=False)
    if result.errors:
        console.print(
            f"{len(result.errors)} error(s): rows or objects would be lost, merged or not fit; "
            "resolve them first",
            markup=False,
        )
    else:
        console.print("no collisions: the sources can share the schema", markup=False)


def schema_generate_json(result: GenerateResult) -> dict[str, Any]:
    rev, shared = result.revision, result.shared
    return {
        "revision": rev.revision,
        "down_revision": rev.down_revision,
        "path": str(rev.path),
        "unchanged": rev.unchanged,
        "scaffolded": rev.scaffolded,
        "schema": shared.schema,
        "tenant_tables": list(shared.tenant_tables),
        "global_tables": list(shared.global_tables),
        "types": list(shared.types),
        "views": list(shared.views),
        "partitions": list(shared.partitions),
        "carried": list(shared.carried),
        "left_behind": list(shared.left_behind),
        "sources": list(result.sources),
        "ok": result.ok,
        "findings": [n.__dict__ for n in result.notes],
    }


def isolation(console: Console, report: IsolationReport) -> None:
    for finding in report.findings:
        console.print(finding.line(), markup=False)
    for info in report.informational:
        console.print(info.line(), markup=False)
    for note in report.notes:
        console.print(f"note: {note}", markup=False)
    probed = (
        f" ({len(report.probed)} probed as the application)"
        if len(report.probed) != len(report.tables)
        else ""
    )
    what = (
        f"schema {report.schema!r}, role {report.app_role!r}: {len(report.tables)} tenant table(s){probed}, "
    )
    what += f"{report.probes} probe(s)"
    extra = f", {len(report.informational)} informational" if report.informational else ""
    if report.ok:
        console.print(f"isolation holds for {what}: no findings{extra}", markup=False)
    else:
        console.print(f"isolation BROKEN for {what}: {len(report.findings)} finding(s){extra}", markup=False)


def isolation_json(report: IsolationReport) -> dict[str, Any]:
    return {
        "schema": report.schema,
        "app_role": report.app_role,
        "tenant_context": report.tenant_context,
        "ok": report.ok,
        "tables": list(report.tables),
        "probed": list(report.probed),
        "probes": report.probes,
        "findings": [f.__dict__ for f in report.findings],
        "informational": [f.__dict__ for f in report.informational],
        "notes": list(report.notes),
    }


def isolation_targets(console: Console, result: api.PlaybookIsolation) -> None:
    """Each target's isolation-check; a heading per target when the playbook has several."""
    for t in result.targets:
        if len(result.targets) > 1:
            console.print(f"target {t.target} (${t.dsn_env}):", markup=False)
        isolation(console, t.report)


def isolation_targets_json(result: api.PlaybookIsolation) -> dict[str, Any]:
    """One target: the shape of a DSN's check (unchanged); several: ``ok`` and one object per target."""
    if len(result.targets) == 1:
        return isolation_json(result.targets[0].report)
    return {
        "ok": result.ok,
        "targets": [
            {"target": t.target, "region": t.region, "dsn_env": t.dsn_env, **isolation_json(t.report)}
            for t in result.targets
        ],
    }


def residency_recorded(result: api.ResidencyRecorded) -> str:
    where = f"target {result.target} (${result.dsn_env}, {result.database.describe()})"
    if result.already:
        rec = result.recorded
        return (
            f"{where} carries region {result.region} already (recorded by {rec.actor} at {_when(rec.at)}); "
            "nothing written"
        )
    line = f"{where} now carries region {result.region}"
    if result.previous is not None:
        line += f", replacing region {result.previous.region} (recorded by {result.previous.actor})"
    return line + " (ledgered: residency_recorded)"


def residency_report(console: Console, report: api.ResidencyReport) -> None:
    console.print(
        f"residency of playbook {report.playbook} (version {report.digest[:12]}): "
        f"{len(report.tenants)} tenant(s), {len(report.targets)} target(s)",
        markup=False,
    )
    for t in report.targets:
        carries = (
            f"recorded region {t.recorded.region} (by {t.recorded.actor}, {_when(t.recorded.at)})"
            if t.recorded is not None
            else "no recorded region"
        )
        declared = f"region {t.region}" if t.region else "every region"
        console.print(
            f"  target {t.name}: {declared}; ${t.dsn_env}, {t.database.describe()}, {carries}; "
            f"{len(t.tables)} table(s) with tenant rows, counted as {t.role}",
            markup=False,
        )
    others = [t.name for t in report.targets]
    cols = ("tenant", "region", "target", "rows there", *(f"rows on {n}" for n in others))
    table = Grid(cols, right=frozenset(c for c in cols if c not in ("tenant", "region", "target")))
    for r in report.tenants:
        table.add_row(
            r.tenant,
            r.region,
            r.target,
            f"{r.rows:,}",
            *("(its own)" if n == r.target else f"{r.elsewhere[n]:,}" for n in others),
        )
    table.print(console)
    for finding in report.findings:
        console.print(f"FOUND {finding}", markup=False)
    if report.ok:
        console.print(
            f"residency proven: every tenant's rows are in its own region's target only "
            f"({len(report.tenants)} tenant(s), {len(report.targets)} target(s) counted)",
            markup=False,
        )
    else:
        console.print(f"residency NOT proven: {len(report.findings)} finding(s)", markup=False)


def residency_report_json(report: api.ResidencyReport) -> dict[str, Any]:
    return {
        "playbook": report.playbook,
        "digest": report.digest,
        "ok": report.ok,
        "targets": [
            {
                "name": t.name,
                "region": t.region,
                "dsn_env": t.dsn_env,
                "schema": t.schema,
                "database": t.database.database,
                "system_identifier": t.database.system_identifier,
                "recorded_region": None if t.recorded is None else t.recorded.region,
                "recorded_by": None if t.recorded is None else t.recorded.actor,
                "recorded_at": None if t.recorded is None else _iso(t.recorded.at),
                "role": t.role,
                "sees_every_row": t.sees_every_row,
                "tables": list(t.tables),
            }
            for t in report.targets
        ],
        "tenants": [
            {
                "tenant": r.tenant,
                "region": r.region,
                "target": r.target,
                "rows": r.rows,
                "tables": dict(r.tables),
                "elsewhere": dict(r.elsewhere),
            }
            for r in report.tenants
        ],
        "findings": list(report.findings),
    }


def citus_demo(console: Console, result: Any) -> None:
    """``migrate demo --citus``: what landed on the cluster and each proof, in the order they ran."""
    run(console, result.run, result.playbook)
    table = Grid(
        ("citus table", "type", "distribution column", "colocation", "shards"),
        right=frozenset({"colocation", "shards"}),
        title=f"citus_tables (coordinator and {result.workers} workers)",
    )
    for name, kind, column, colocation, shards in result.tables:
        table.add_row(name, kind, column, str(colocation), str(shards))
    table.print(console)
    console.print(
        "control schema migrate_control: "
        + ("local to the coordinator (not distributed)" if result.control_local else "DISTRIBUTED (wrong)"),
        markup=False,
    )
    tables = sum(len(t.tables) for t in result.verify.tenants)
    console.print(
        f"verify: {len(result.verify.tenants)} tenant(s), {tables} table(s): counts and checksums "
        + ("match" if result.verify.match else "DO NOT match"),
        markup=False,
    )
    for back in result.rollbacks:
        rollback(console, back)
    run(console, result.rerun, result.playbook)
    console.print(
        "verify after the rollbacks and the run: counts and checksums "
        + ("match" if result.verify_after.match else "DO NOT match"),
        markup=False,
    )
    isolation(console, result.isolation)
    entries = result.ledger.entries
    console.print(
        f"ledger: {len(entries)} entries, "
        + ("hash chain verified" if result.ledger.why is None else f"BROKEN: {result.ledger.why}"),
        markup=False,
    )
    console.print(
        f"\n{'every check green' if result.ok else 'NOT all green'} on Citus ({result.seconds:.1f} s); "
        "the demo's database, role and embedded server are removed",
        markup=False,
    )
