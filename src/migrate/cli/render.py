"""Render api results for people (rich tables) and machines (JSON)."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from migrate import api
from migrate.engine.rollback import RollbackResult
from migrate.engine.run import RunResult
from migrate.errors import MigrateError
from migrate.plan import Plan, render_text


def error(console: Console, exc: MigrateError) -> None:
    where = f"{exc.where}: " if exc.where else ""
    console.print(f"error: {where}{exc.message}", markup=False)
    if exc.hint:
        console.print(f"  hint: {exc.hint}", markup=False)


def plan(the_plan: Plan) -> str:
    return render_text(the_plan)


def run(console: Console, result: RunResult) -> None:
    for tenant in result.tenants:
        applied = [s for s in tenant.steps if s.outcome == "applied"]
        if tenant.outcome == "done" and not applied:
            console.print(f"{tenant.tenant}: up to date, nothing to do (0 rows copied)", markup=False)
            continue
        if tenant.outcome == "done":
            console.print(
                f"{tenant.tenant}: done, {len(applied)} step(s) applied, "
                f"{tenant.rows_copied_now} rows copied",
                markup=False,
            )
            continue
        console.print(f"{tenant.tenant}: {tenant.outcome.upper()}", markup=False)
        if tenant.error is not None:
            where = f"{tenant.error.where}: " if tenant.error.where else ""
            console.print(f"  {where}{tenant.error.message}", markup=False)
            if tenant.error.hint:
                console.print(f"  hint: {tenant.error.hint}", markup=False)
    bad = [t.tenant for t in result.tenants if t.outcome != "done"]
    summary = "all tenants done" if not bad else f"{len(bad)} tenant(s) not done: {', '.join(bad)}"
    console.print(f"run {str(result.run_id)[:8]}: {summary}", markup=False)


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def status(console: Console, result: api.Status) -> None:
    table = Table(title=f"playbook {result.playbook} ({result.digest[:12]})", title_justify="left")
    for col in ("tenant", "wave", "phase", "last step", "state", "rows", "validated"):
        table.add_column(col, justify="right" if col == "rows" else "left")
    for t in result.tenants:
        table.add_row(
            t.tenant,
            t.wave,
            t.phase or "-",
            t.last_step or "-",
            t.state,
            "-" if t.rows is None else f"{t.rows:,}",
            _yes_no(t.validated),
        )
    console.print(table)
    for t in result.tenants:
        if t.error:
            console.print(f"{t.tenant}: {t.error}", markup=False)


def status_json(result: api.Status) -> dict[str, Any]:
    return {
        "playbook": result.playbook,
        "digest": result.digest,
        "tenants": [t.__dict__ for t in result.tenants],
    }


def rollback(console: Console, result: RollbackResult) -> None:
    for step in result.steps:
        console.print(f"reverted {step.key} ({step.seconds:.2f} s)", markup=False)
    if not result.steps:
        console.print(f"{result.tenant}: nothing after '{result.point}' to revert", markup=False)
    console.print(
        f"{result.tenant} rolled back to '{result.point}': flags restored after "
        f"{result.seconds_to_flags or 0:.2f} s, done after {result.seconds_total:.2f} s",
        markup=False,
    )


def ledger(console: Console, report: api.LedgerReport) -> None:
    table = Table()
    for col in ("#", "at (UTC)", "actor", "tenant", "step", "action", "outcome"):
        table.add_column(col, no_wrap=col != "step", min_width=len(col))
    for rec in report.entries:
        e = rec.entry
        table.add_row(
            str(rec.seq),
            f"{rec.at.astimezone(UTC):%m-%d %H:%M:%S}",
            e.actor,
            e.tenant or "-",
            e.step or "-",
            e.action,
            e.outcome,
        )
    console.print(table)
    console.print(
        f"chain intact ({report.checked} entries)"
        if report.why is None
        else f"CHAIN BROKEN at entry {report.broken_at}: {report.why}",
        markup=False,
    )


def figures(console: Console, result: api.Status) -> None:
    """Validation figures per tenant and table: rows and checksum on each side."""
    table = Table(title="validation: source vs target, per tenant and table", title_justify="left")
    for col in ("tenant", "table", "source rows", "target rows", "checksum", "match"):
        table.add_column(col, justify="right" if "rows" in col else "left", no_wrap=True)
    for t in result.tenants:
        for name, f in sorted(t.figures.items()):
            table.add_row(
                t.tenant,
                name,
                f"{f['source_rows']:,}",
                f"{f['target_rows']:,}",
                str(f["source_checksum"])[:12],
                _yes_no(f["match"]),
            )
    console.print(table)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def demo(console: Console, result: Any) -> None:
    figures(console, result.status)
    status(console, result.status)
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
    if result.kept:
        console.print(
            "\nThe server and databases stay in " + str(result.root) + ". Go on by hand:", markup=False
        )
        for key, value in result.environ.items():
            console.print(f"  export {key}='{value}'", markup=False)
        console.print(
            f"  migrate status {_shown(result.playbook)}\n"
            f"  migrate rollback {_shown(result.playbook)} --tenant acme --to pre-cutover --yes\n"
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
