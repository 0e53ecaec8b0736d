"""Render api results for people (rich tables) and machines (JSON)."""

from __future__ import annotations

import threading
from datetime import UTC
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from migrate import api
from migrate.checks.diff import DiffResult
from migrate.checks.isolation import IsolationReport
from migrate.engine.rollback import RollbackResult
from migrate.engine.run import RunResult
from migrate.errors import MigrateError
from migrate.plan import Plan, render_text
from migrate.schemagen.generate import GenerateResult
from migrate.steps.context import ProgressEvent


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
    ledger_warnings(warn or console, report)


def ledger_warnings(console: Console, report: api.LedgerReport) -> None:
    for warning in report.warnings:
        console.print(f"warning: {warning}", markup=False)


def ledger_verified(report: api.LedgerReport) -> str:
    if report.head_seq is None:
        return "ledger verified: no entries yet"
    text = (
        f"ledger verified: {report.checked} entries, chain intact\n"
        f"head: entry {report.head_seq} {report.head_hash}  (publish it; check later with --anchor)"
    )
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


_MODES = {
    "hash": "hash_record_extended of the values (same major versions)",
    "text": "md5 of the row text under pinned settings (major versions differ)",
}


def verification(console: Console, result: api.VerifyResult) -> None:
    """Counts and checksums per tenant and table, then what matches and what to run next."""
    table = Table(title="verify: source vs target, per tenant and table", title_justify="left")
    for col in ("tenant", "table", "source rows", "target rows", "checksum", "match"):
        table.add_column(col, justify="right" if "rows" in col else "left", no_wrap=True)
    for t in result.tenants:
        for f in t.tables:
            table.add_row(
                t.tenant,
                f.table,
                f"{f.source.rows:,}",
                f"{f.target.rows:,}",
                f.source.checksum[:12],
                _yes_no(f.match),
            )
    console.print(table)
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
    table = Table(title=title, title_justify="left")
    for col in ("tenant", "wave", "phase", "state", *(f.flag for f in result.flags)):
        table.add_column(col)
    for t in result.tenants:
        seen = (_on_off(t.flags[f.flag]) for f in result.flags)
        table.add_row(t.tenant, t.wave, t.phase or "-", t.state, *seen)
    console.print(table)
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
        console.print(f"  {label:<7} {n.subject}: {n.rule}: {n.detail}", markup=False)
        if n.fix:
            console.print(f"          fix: {n.fix}", markup=False)
    if result.errors:
        console.print(
            f"{len(result.errors)} error(s): rows would be lost, merged or not fit; resolve them first",
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
        "sources": list(result.sources),
        "ok": result.ok,
        "findings": [n.__dict__ for n in result.notes],
    }


def isolation(console: Console, report: IsolationReport) -> None:
    for finding in report.findings:
        console.print(finding.line(), markup=False)
    for note in report.notes:
        console.print(f"note: {note}", markup=False)
    what = f"schema {report.schema!r}, role {report.app_role!r}: {len(report.tables)} tenant table(s), "
    what += f"{report.probes} probe(s)"
    if report.ok:
        console.print(f"isolation holds for {what}: no findings", markup=False)
    else:
        console.print(f"isolation BROKEN for {what}: {len(report.findings)} finding(s)", markup=False)


def isolation_json(report: IsolationReport) -> dict[str, Any]:
    return {
        "schema": report.schema,
        "app_role": report.app_role,
        "ok": report.ok,
        "tables": list(report.tables),
        "probes": report.probes,
        "findings": [f.__dict__ for f in report.findings],
        "notes": list(report.notes),
    }


class _RowRate(ProgressColumn):
    """Rows per second of a task (rich's own speed columns count bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} rows/s", style="progress.data.speed")


class _Rows(ProgressColumn):
    def render(self, task: Task) -> Text:
        total = "?" if task.total is None else f"{int(task.total):,}"
        return Text(f"{int(task.completed):,}/{total} rows", style="progress.download")


class CopyProgress:
    """The copy's progress on a terminal: a bar per tenant at work (rows, rows/s, ETA) and one overall.

    A ``ProgressSink`` for ``api.run``; called from the run's worker threads (rich
    locks its own state, ours is under a lock). Tenants not sized yet count as the
    mean of those that are, so the overall ETA covers the whole run from the start.
    """

    def __init__(self, console: Console) -> None:
        self._lock = threading.Lock()
        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            _Rows(),
            _RowRate(),
            TimeRemainingColumn(),
            console=console,
            redirect_stderr=True,
            redirect_stdout=False,
        )
        self._overall = self._bars.add_task("all tenants", total=None)
        self._tasks: dict[str, TaskID] = {}
        self._sized: dict[str, int] = {}
        self._copied: dict[str, int] = {}
        self._tenants = 0
        self._finished = 0

    def __enter__(self) -> CopyProgress:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def _overall_total(self) -> float | None:
        if not self._sized:
            return None
        known = sum(self._sized.values())
        unsized = max(0, self._tenants - len(self._sized))
        return known + unsized * known / len(self._sized)

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            if event.kind == "run_started":
                self._tenants = event.tenants
            elif event.kind == "tenant_started":
                self._tasks[event.tenant] = self._bars.add_task(event.tenant, total=None)
            elif event.kind == "tenant_sized" and event.tenant in self._tasks:
                # Sized again after a retry: what is left, on top of what this run copied already.
                total = self._copied.get(event.tenant, 0) + event.rows
                self._sized[event.tenant] = total
                self._bars.update(self._tasks[event.tenant], total=max(total, 1))
            elif event.kind == "chunk_copied" and event.tenant in self._tasks:
                self._copied[event.tenant] = self._copied.get(event.tenant, 0) + event.rows
                self._bars.update(
                    self._tasks[event.tenant], advance=event.rows, description=f"{event.tenant} {event.table}"
                )
                self._bars.update(self._overall, advance=event.rows)
            elif event.kind == "tenant_finished" and event.tenant in self._tasks:
                self._finished += 1
                self._bars.remove_task(self._tasks.pop(event.tenant))
            self._bars.update(
                self._overall,
                total=self._overall_total(),
                description=f"all tenants ({self._finished}/{self._tenants} done)",
            )
