"""The typer app: parse → api → render → exit code. Nothing else lives here.

Exit codes: 0 success; 1 a step or check failed; 2 bad input (playbook,
arguments, settings). A MigrateError is rendered once, as message, place and
hint; anything else is an internal error whose traceback goes to a log file
(and to the screen with ``--debug``). Typer's pretty exceptions stay off: they
print local variables, DSNs included.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, cast

import typer
from rich.console import Console

from migrate import api
from migrate.cli import machine, render
from migrate.cli import report as reports
from migrate.cli.progress import CopyProgress, PlainProgress
from migrate.cli.summary import ROWS_UP_TO as STATUS_ROWS_UP_TO
from migrate.errors import ArgumentError, MigrateError
from migrate.log import RedactingStream, configure, redact

if TYPE_CHECKING:
    from migrate.api import ProgressSink, RunResult

EXIT_CODES = (
    "Exit codes, the same for every command and for source and target alike: "
    "0 success; "
    "1 a step or check failed, or a server did not answer at run time; "
    "2 bad input or settings (playbook, arguments, environment variables, a password or "
    "database the server refuses), or a state that needs a person first; "
    "130 stopped on request (Ctrl-C, SIGTERM) at a safe point, with the command that resumes; "
    "70 a bug (internal error)."
)

app = typer.Typer(
    name="migrate",
    help="Move SaaS tenants from one PostgreSQL database each into one shared schema "
    "with tenant_id and Row-Level Security: phased, validated, reversible, audited.\n\n" + EXIT_CODES,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
# Everything printed goes through log.redact: a DSN or URL with credentials never reaches a screen or a CI
# log, whichever message, table or JSON it rode in.
out = Console(file=cast("IO[str]", RedactingStream(lambda: sys.stdout)), highlight=False, soft_wrap=True)
err = Console(file=cast("IO[str]", RedactingStream(lambda: sys.stderr)), highlight=False, soft_wrap=True)
_state = {"debug": False}

PlaybookArg = Annotated[
    Path, typer.Argument(help="The playbook, e.g. playbooks/demo.yaml.", show_default=False)
]
TenantOpt = Annotated[
    list[str] | None,
    typer.Option("--tenant", "-t", help="Only this tenant (repeat for more).", show_default=False),
]


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level",
            help="debug, info, warning or error (default: $MIGRATE_LOG_LEVEL, else warning). Logs go "
            "to stderr, JSON lines when it is no terminal; what a person needs (progress, retries, "
            "results) is printed whatever the level.",
        ),
    ] = None,
) -> None:
    _state["debug"] = debug
    # Quiet by default, on a terminal and in CI alike: the output says what happened, and the
    # structured events are there for whoever asks for them (--log-level info).
    level = log_level or os.environ.get("MIGRATE_LOG_LEVEL") or "warning"
    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ArgumentError(
            f"unknown log level {level!r}", where="--log-level", hint="write debug, info, warning or error"
        )
    configure(level=level)


@app.command()
def demo(
    keep: Annotated[
        Path | None,
        typer.Option(
            help="Keep the server and databases in this folder and print the settings to go on by hand.",
            show_default=False,
        ),
    ] = None,
    stop: Annotated[
        Path | None,
        typer.Option(help="Stop a demo kept with --keep and remove its folder.", show_default=False),
    ] = None,
    citus: Annotated[
        str | None,
        typer.Option(
            "--citus",
            help="A superuser DSN of a Citus coordinator: move the three tenants into a new database "
            "there (distributed on tenant_id), roll back, probe isolation, then remove it all "
            "(a cluster: python tests/citus_server.py start --state DIR).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Move three sample tenants end to end on an embedded PostgreSQL (no settings needed)."""
    from migrate.api.demo import run_demo, stop_demo  # the embedded server is only for the demo

    if keep and stop:
        raise ArgumentError("--keep and --stop exclude each other", where="--stop")
    if citus is not None:
        if keep or stop:
            raise ArgumentError("--citus removes what it made: no --keep or --stop", where="--citus")
        from migrate.api.demo_citus import run_citus_demo

        shown = run_citus_demo(citus, on_stage=lambda msg: err.print(f"[dim]· {msg}[/dim]"))
        render.citus_demo(out, shown)
        if not shown.ok:
            raise typer.Exit(1)
        return
    if stop is not None:
        found = stop_demo(stop.resolve())
        out.print(f"demo in {stop} stopped and removed" if found else f"nothing at {stop}")
        return
    result = run_demo(keep.resolve() if keep else None, on_stage=lambda msg: err.print(f"[dim]· {msg}[/dim]"))
    render.demo(out, result)
    if not result.run.ok:
        raise typer.Exit(1)


@app.command()
def plan(playbook: PlaybookArg, tenant: TenantOpt = None, as_json: JsonOpt = False) -> None:
    """Validate the playbook and print, per tenant, the steps that would run."""
    the_plan = api.plan(playbook, tenant)
    if as_json:
        out.print_json(data=machine.plan_json(the_plan))
        return
    out.print(render.plan(the_plan), markup=False)


WaveOpt = Annotated[
    str | None,
    typer.Option("--wave", "-w", help="Only the tenants of this wave.", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
FlagsMovedOpt = Annotated[
    bool,
    typer.Option(
        "--flags-moved",
        help="The flags live elsewhere now than where the tenants were flipped (another flag file, "
        "Unleash server, project or environment) and the application reads them there: act on the "
        "current settings (ledgered). Without it, such a difference refuses the command (exit 2).",
    ),
]
ActorOpt = Annotated[
    str | None,
    typer.Option(
        help="Who acts, for the ledger (default: $MIGRATE_ACTOR, else the OS user).",
        show_default=False,
    ),
]


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; an orchestrator's or a CI job's cancel


def _signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def _stopped_at_once(signum: int, frame: object) -> None:
    """Outside run and rollback: a stop signal ends the command at once (exit 130), saying so."""
    err.print(f"interrupted ({_signal_name(signum)})", markup=False)
    raise KeyboardInterrupt


@contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGTERM ends a command like Ctrl-C does (exit 130, a message), not silently with 143."""
    try:
        previous = {signum: signal.signal(signum, _stopped_at_once) for signum in _STOP_SIGNALS}
    except ValueError:  # not the main thread (the CLI called from a library): leave them
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def _stop_on_interrupt(what: str) -> Iterator[threading.Event]:
    """Ctrl-C or SIGTERM asks ``what`` to stop at its next safe point; a second one stops at once."""
    stop = threading.Event()

    def asked(signum: int, frame: object) -> None:
        if stop.is_set():
            err.print(f"{_signal_name(signum)} again: stopping at once", markup=False)
            raise KeyboardInterrupt
        stop.set()
        err.print(
            f"{_signal_name(signum)}: stopping the {what} at the next safe point "
            "(after the current chunk, batch or step); send it again to stop at once",
            markup=False,
        )

    try:
        previous = {signum: signal.signal(signum, asked) for signum in _STOP_SIGNALS}
    except ValueError:  # not the main thread (the CLI called from a library): no handler
        yield stop
        return
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@app.command()
def run(
    playbook: PlaybookArg,
    tenant: TenantOpt = None,
    wave: WaveOpt = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            help="Tenants worked on at once. The connections a wave's tenants leave free go to their "
            "copies: each tenant's backfill runs in max(1, jobs // min(jobs, tenants)) streams, "
            "so one large tenant with --jobs 2 is copied in two (large tables split into key ranges). "
            "The next N tenants' sources are connected to and read ahead while these run (at most N "
            "source connections more).",
        ),
    ] = 1,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Rehearse: run every step for real inside transactions that are rolled back; "
            "flag flips are reported, not made. Only the ledger changes ('rehearsed' entries).",
        ),
    ] = False,
    max_failures: Annotated[
        int | None,
        typer.Option(
            "--max-failures", help="Start no new tenant after this many have failed.", show_default=False
        ),
    ] = None,
    replan: Annotated[
        bool,
        typer.Option(
            "--replan",
            help="Accept a playbook that changed in substance since its runs began (ledgered).",
        ),
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report", help="Write per-tenant, per-step outcomes and figures as JSON.", show_default=False
        ),
    ] = None,
    junit: Annotated[
        Path | None,
        typer.Option("--junit", help="Write the same as JUnit XML, for CI.", show_default=False),
    ] = None,
    actor: ActorOpt = None,
    flags_moved: FlagsMovedOpt = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the --report document on stdout instead of the text.")
    ] = False,
) -> None:
    """Run the playbook's phases, wave by wave; done steps are skipped, so re-running is safe.

    Exit 0: every tenant done (or rehearsed). 1: a step or check failed, a server did not
    answer, a tenant was locked, or a wave waits (for approval or an earlier wave). 2: bad
    input or settings, or a tenant refused until a person acts (a target that does not carry
    its region, an unfinished rollback, flag settings that point elsewhere than its cut-over).
    130: stopped by Ctrl-C or SIGTERM at a safe point — run the same command again to resume.
    """
    with _stop_on_interrupt("run") as stop:

        def call(progress: ProgressSink | None = None) -> RunResult:
            return api.run(
                playbook,
                tenant,
                wave=wave,
                jobs=jobs,
                dry_run=dry_run,
                max_failures=max_failures,
                replan=replan,
                stop=stop,
                actor=actor,
                progress=progress,
                outputs=[(o, p) for o, p in (("--report", report), ("--junit", junit)) if p is not None],
                flags_moved=flags_moved,
            )

        if err.is_terminal:  # bars on a terminal; elsewhere a line now and then
            with CopyProgress(err) as bars:
                result = call(bars)
        else:
            result = call(PlainProgress(err))
    if as_json:
        out.print_json(data=reports.report_json(result, str(playbook)))
    else:
        render.run(out, result, playbook)
    if report is not None:
        reports.write_json(report, result, str(playbook))
    if junit is not None:
        reports.write_junit(junit, result, str(playbook))
    if result.exit_code:
        raise typer.Exit(result.exit_code)


@app.command()
def approve(
    playbook: PlaybookArg,
    wave: Annotated[str, typer.Option("--wave", "-w", help="The wave whose gate to open.")],
    actor: ActorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Open a wave's approval gate (the wave has 'approval: true'); ledgered with who approved."""
    result = api.approve(playbook, wave, actor=actor)
    if as_json:
        out.print_json(data=machine.approve_json(result))
        return
    again = " again" if result.again else ""
    out.print(
        f"wave {result.wave} approved{again} by {result.actor} on {result.host} "
        f"({len(result.tenants)} tenant(s): {', '.join(result.tenants)}); "
        f"next: migrate run {playbook} --wave {result.wave}",
        markup=False,
    )


RegionFilterOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--region", help="Only the tenants of this region's target (repeat for more).", show_default=False
    ),
]
RegionOpt = Annotated[
    str | None,
    typer.Option(
        "--region",
        help="The target of this region (a playbook with a target per region).",
        show_default=False,
    ),
]


@app.command()
def runbook(
    playbook: PlaybookArg,
    tenant: TenantOpt = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="A rehearsal's report (migrate run --dry-run --report FILE): its times, rows and freeze "
            "figures go in the runbook.",
            show_default=False,
        ),
    ] = None,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Write the runbook to this file (default: stdout).", show_default=False),
    ] = None,
) -> None:
    """Write a Markdown runbook: per wave and tenant the commands in order, what each step checks, the
    rollback command of each point and what it gives up, rehearsal figures, the status commands to watch.

    Generated from the same plan 'migrate run' follows, so it cannot drift; reads no database.
    """
    text = api.runbook(playbook, tenant, report=report, out=out_file)
    if out_file is None:
        sys.stdout.write(redact(text))
        return
    err.print(f"runbook written to {out_file}", markup=False)


@app.command()
def status(
    playbook: PlaybookArg,
    tenant: TenantOpt = None,
    region: RegionFilterOpt = None,
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            "-s",
            help="Only tenants in this state (repeat for more): not-started, in-progress, running, "
            "interrupted, failed, flag-state-unknown, rollback-interrupted, rollback-failed, "
            "rolled-back, done.",
            show_default=False,
        ),
    ] = None,
    all_rows: Annotated[
        bool,
        typer.Option("--all", help="A row per tenant, however many (default: up to 20, else a summary)."),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Machine-readable output, every tenant shown, with the next command to run."
        ),
    ] = False,
) -> None:
    """Show waves, tenants (region, step, rollback points, rows, validation, flags, lock holder) and what to
    run next.

    Up to 20 tenants get a row each; more are summed up by wave and state (one screen), with
    the tenants that need attention: --tenant, --state, --region or --all show rows. Read-only:
    needs the targets' settings (every region's: each holds its tenants' state) and the flags',
    never a source's.
    """
    result = api.status(playbook, tenant, regions=region, states=state)
    if as_json:
        out.print_json(data=render.status_json(result))
        return
    rows = bool(tenant or state or region or all_rows) or len(result.tenants) <= STATUS_ROWS_UP_TO
    render.status(out, result, rows=rows)


@app.command()
def verify(
    playbook: PlaybookArg,
    tenant: TenantOpt = None,
    table: Annotated[
        list[str] | None,
        typer.Option("--table", help="Only this table (repeat for more).", show_default=False),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare row counts and checksums, source vs target, now; exit 1 on any mismatch."""
    result = api.verify(playbook, tenant, table)
    if as_json:
        out.print_json(data=machine.verify_json(result))
    else:
        render.verification(out, result)
    if not result.match:
        raise typer.Exit(1)


@app.command()
def readiness(
    playbook: PlaybookArg,
    tenant: TenantOpt = None,
    app_role: Annotated[
        str | None,
        typer.Option(
            "--app-role",
            help="The application's role (default: the playbook's target.app_role).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Can the application write each tenant's rows in the shared schema now? What the flip demands:
    sequences, defaults, privileges, and an insert with defaults as the app role (rolled back); exit 1
    naming what is missing."""
    result = api.readiness(playbook, tenant, app_role=app_role)
    if as_json:
        out.print_json(data=machine.readiness_json(result))
    else:
        render.readiness(out, result)
    if not all(r.ok for r in result):
        raise typer.Exit(1)


@app.command()
def diff(
    playbook: PlaybookArg,
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="The tenant.")],
    table: Annotated[str, typer.Option("--table", help="The table whose checksums differ.")],
    sample: Annotated[int, typer.Option("--sample", help="Keys shown per kind of difference.")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Find the keys that are missing, extra or changed in the target (bisection by key ranges)."""
    result = api.diff(playbook, tenant, table, sample=sample)
    if as_json:
        out.print_json(data=machine.diff_json(tenant, result))
    else:
        render.diff(out, tenant, result)
    if not result.equal:
        raise typer.Exit(1)


@app.command()
def rollback(
    playbook: PlaybookArg,
    to: Annotated[str, typer.Option("--to", help="The rollback point, e.g. pre-cutover.")],
    tenant: Annotated[
        list[str] | None,
        typer.Option("--tenant", "-t", help="A tenant to roll back (repeat for more).", show_default=False),
    ] = None,
    wave: Annotated[
        str | None, typer.Option("--wave", help="Roll back every tenant of this wave.", show_default=False)
    ] = None,
    all_tenants: Annotated[
        bool, typer.Option("--all-tenants", help="Roll back every tenant of the playbook.")
    ] = False,
    discard_writes_since_cutover: Annotated[
        bool,
        typer.Option(
            "--discard-writes-since-cutover",
            help="Roll back across a cut-over accepting that the writes a tenant took in the shared "
            "schema since then are lost: without a reverse path (offline, finalised) its copy leaves the "
            "shared tables with them and the next run copies and validates afresh; with one, the shared "
            "rows are put back as the cut-over left them. The ledger records who accepted it.",
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask (required without a terminal).")
    ] = False,
    actor: Annotated[
        str | None, typer.Option(help="Who rolls back, for the ledger.", show_default=False)
    ] = None,
    flags_moved: FlagsMovedOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Revert every step after a rollback point: all flags first, then data, each ledgered.

    Ctrl-C or SIGTERM stops it at the next safe point (between steps or batches, exit 130);
    the tenants left are recorded as unfinished, 'migrate status' names them, 'run' refuses
    them, and the same command finishes the job.
    """
    started = time.monotonic()
    if as_json and not yes:
        raise ArgumentError("--json prints no preview and asks nothing", where="--json", hint="add --yes")
    if not yes:
        if not sys.stdin.isatty():
            raise ArgumentError(
                "rollback asks for confirmation, and there is no terminal",
                where="--yes",
                hint="add --yes in scripts",
            )
        preview = api.rollback_preview(
            playbook,
            tenant,
            to,
            wave=wave,
            all_tenants=all_tenants,
            discard_writes_since_cutover=discard_writes_since_cutover,
        )
        render.rollback_preview(out, preview)
        if not preview.nothing:
            typer.confirm(render.rollback_question(preview), abort=True)
            started = time.monotonic()  # the time a person takes to read is not the rollback's
    with _stop_on_interrupt("rollback") as stop:
        result = api.rollback(
            playbook,
            tenant,
            to,
            wave=wave,
            all_tenants=all_tenants,
            discard_writes_since_cutover=discard_writes_since_cutover,
            started=started,
            actor=actor,
            stop=stop,
            flags_moved=flags_moved,
        )
    if as_json:
        out.print_json(data=machine.rollback_json(result))
    else:
        render.rollback(out, result)
    if result.stopped is not None:
        raise typer.Exit(130)


flags_app = typer.Typer(help="Show and create the playbook's feature flags.", no_args_is_help=True)
app.add_typer(flags_app, name="flags")


@flags_app.command("status")
def flags_status(
    playbook: PlaybookArg,
    tenant: TenantOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show, per tenant, each flag as the application sees it, next to the tenant's phase."""
    result = api.flags_status(playbook, tenant)
    if as_json:
        out.print_json(data=render.flags_status_json(result))
    else:
        render.flags_status(out, result)


@flags_app.command("sync")
def flags_sync(playbook: PlaybookArg) -> None:
    """Create the playbook's flags where missing: off for every tenant, with the tenant strategy."""
    render.flags_sync(out, api.flags_sync(playbook))


schema_app = typer.Typer(help="Generate the shared RLS schema from the sources.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")

OptionalPlaybookArg = Annotated[
    Path | None,
    typer.Argument(help="A playbook: its tenants are the sources.", show_default=False),
]
SchemaOpt = Annotated[
    str | None,
    typer.Option("--schema", help="Shared schema (default: the playbook's, else app).", show_default=False),
]
AppRoleOpt = Annotated[
    str | None,
    typer.Option(
        "--app-role",
        help="The role the application connects as: NOSUPERUSER NOBYPASSRLS, not the owner.",
        show_default=False,
    ),
]
TenantColumnOpt = Annotated[str, typer.Option("--tenant-column", help="The tenant column of shared tables.")]
GlobalOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--global",
        help="A reference table shared by all tenants: no tenant_id, read-only to the application (repeat).",
        show_default=False,
    ),
]


class TenantType(StrEnum):
    text = "text"
    uuid = "uuid"


class TenantContext(StrEnum):
    session = "session"
    transaction = "transaction"


TenantContextOpt = Annotated[
    TenantContext | None,
    typer.Option(
        "--tenant-context",
        help="session: the tenant set on the connection counts; transaction: only one set in the "
        "current transaction (with app.tenant_xid). Default: the playbook's target.tenant_context, "
        "else session.",
        show_default=False,
    ),
]


@schema_app.command("generate")
def schema_generate(
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            help="A new or empty folder (an alembic project is written there) or your alembic folder.",
            show_default=False,
        ),
    ],
    playbook: OptionalPlaybookArg = None,
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--source",
            help="[NAME=]DSN of a source database (repeat for more; the first is the model).",
            show_default=False,
        ),
    ] = None,
    schema: SchemaOpt = None,
    source_schema: Annotated[
        str | None,
        typer.Option(
            "--source-schema",
            help="Schema read in each source (default: the playbook's, else public).",
            show_default=False,
        ),
    ] = None,
    tenant_column: TenantColumnOpt = "tenant_id",
    tenant_type: Annotated[TenantType, typer.Option("--tenant-type", help="Type of the tenant column.")] = (
        TenantType.text
    ),
    app_role: AppRoleOpt = None,
    global_table: GlobalOpt = None,
    tenant_context: TenantContextOpt = None,
    unique: Annotated[
        list[str] | None,
        typer.Option(
            "--unique-across-tenants",
            help="TABLE.COL[,COL…] whose values must stay unique across tenants (repeat).",
            show_default=False,
        ),
    ] = None,
    region: Annotated[
        str | None,
        typer.Option(
            "--region",
            help="Only the tenants of this region's target (the report runs per target anyway).",
            show_default=False,
        ),
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option(
            "--max-connections",
            help="Sources open at once at most (default: the playbook's source.max_connections, else 8).",
            show_default=False,
        ),
    ] = None,
    leave_behind: Annotated[
        list[str] | None,
        typer.Option(
            "--leave-behind",
            help="A source object not to carry, as the report names it, e.g. 'function public.f(integer)' "
            "(repeat; a playbook's schema.leave_behind counts too).",
            show_default=False,
        ),
    ] = None,
    citus: Annotated[
        bool,
        typer.Option(
            "--citus",
            help="For a Citus coordinator: tables created and distributed on the tenant column in "
            "foreign-key order, global tables as reference tables; what Citus refuses is reported "
            "(default: the playbook's target.distributed).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Write the shared schema as an alembic revision; report what sharing changes (exit 1: collisions,
    or a source object it cannot carry that no one acknowledged leaving behind)."""
    result = api.schema_generate(
        playbook,
        sources=source or (),
        out=out_dir,
        schema=schema,
        source_schema=source_schema,
        tenant_column=tenant_column,
        tenant_type=tenant_type.value,
        tenant_context=tenant_context.value if tenant_context else None,
        app_role=app_role,
        global_tables=global_table or (),
        unique_across=unique or (),
        region=region,
        max_connections=max_connections,
        leave_behind=leave_behind or (),
        citus=citus,
    )
    if as_json:
        out.print_json(data=render.schema_generate_json(result))
    else:
        render.schema_generate(out, result)
    if not result.ok:
        raise typer.Exit(1)


@app.command("isolation-check")
def isolation_check(
    playbook: OptionalPlaybookArg = None,
    target_dsn: Annotated[
        str | None,
        typer.Option(
            "--target-dsn",
            help="The shared database (default: $MIGRATE_TARGET_DSN; a password here is visible to ps).",
            show_default=False,
        ),
    ] = None,
    schema: SchemaOpt = None,
    app_role: AppRoleOpt = None,
    tenant_column: TenantColumnOpt = "tenant_id",
    global_table: GlobalOpt = None,
    tenant_context: TenantContextOpt = None,
    region: RegionOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Prove tenant isolation: RLS rules from the catalog, then live probes as the application role.

    With a playbook, on each of its targets (every region's shared database), or on --region's.
    """
    if playbook is not None and target_dsn is None:
        targets = api.isolation_check_targets(
            playbook,
            region=region,
            schema=schema,
            app_role=app_role,
            tenant_column=tenant_column,
            global_tables=global_table or (),
        )
        if as_json:
            out.print_json(data=render.isolation_targets_json(targets))
        else:
            render.isolation_targets(out, targets)
        if not targets.ok:
            raise typer.Exit(1)
        return
    report = api.isolation_check(
        playbook,
        dsn=target_dsn,
        region=region,
        schema=schema,
        app_role=app_role,
        tenant_column=tenant_column,
        global_tables=global_table or (),
        tenant_context=tenant_context.value if tenant_context else None,
    )
    if as_json:
        out.print_json(data=render.isolation_json(report))
    else:
        render.isolation(out, report)
    if not report.ok:
        raise typer.Exit(1)


ledger_app = typer.Typer(help="Show, verify and export the audit ledger.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")

LedgerTenantOpt = Annotated[
    str | None, typer.Option("--tenant", "-t", help="Only this tenant's entries.", show_default=False)
]
LedgerRunOpt = Annotated[
    str | None,
    typer.Option(
        "--run",
        help="Only this run's entries (its id, or the 8 characters 'run' prints).",
        show_default=False,
    ),
]
LedgerSinceOpt = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Only entries since then: 90m, 2h, 7d, or an ISO date or time (UTC).",
        show_default=False,
    ),
]


class ExportFormat(StrEnum):
    jsonl = "jsonl"


@ledger_app.command("show")
def ledger_show(
    playbook: PlaybookArg,
    tenant: LedgerTenantOpt = None,
    run: LedgerRunOpt = None,
    since: LedgerSinceOpt = None,
    region: RegionOpt = None,
) -> None:
    """Print the ledger's entries, oldest first, and whether the whole chain verifies.

    Each target keeps its own ledger: with a target per region, name it with --region.
    """
    report = api.ledger(playbook, tenant=tenant, run=run, since=since, region=region)
    render.ledger(out, report, warn=err)


@ledger_app.command("verify")
def ledger_verify(
    playbook: PlaybookArg,
    anchor: Annotated[
        str | None,
        typer.Option(
            "--anchor",
            help="A hash published earlier ('verify' prints the head's): "
            "prove that nothing up to its entry changed.",
            show_default=False,
        ),
    ] = None,
    require_signatures: Annotated[
        bool,
        typer.Option(
            "--require-signatures",
            help="Fail unless every entry is signed with a trusted key (also: ledger.require_signatures).",
        ),
    ] = False,
    region: RegionOpt = None,
) -> None:
    """Check the chain, signatures, dates, the control state's history and the published head;
    exit 1 naming every broken entry or missing range."""
    report = api.ledger(
        playbook, anchor=anchor, list_entries=False, require_signatures=require_signatures, region=region
    )
    render.ledger_warnings(err, report)
    if (failure := report.failure) is not None:
        raise failure
    out.print(render.ledger_verified(report), markup=False)


@ledger_app.command("keys")
def ledger_keys(playbook: PlaybookArg) -> None:
    """Print the public keys the ledger's entries were signed with (PEM), as recorded in the database."""
    keys = api.ledger_public_keys(playbook)
    render.ledger_keys(out, keys)


@ledger_app.command("keygen")
def ledger_keygen(
    out_file: Annotated[
        Path,
        typer.Option(
            "--out", help="Where the private key goes (mode 0600); the public key goes to FILE.pub."
        ),
    ],
) -> None:
    """Make an Ed25519 ledger signing key: name it in the playbook (ledger.signing_key_file or _env)."""
    private, public, key_id = api.ledger_keygen(out_file)
    out.print(
        f"ledger key {key_id}: private key {private} (keep it off the database host), public key {public}",
        markup=False,
    )


@ledger_app.command("export")
def ledger_export(
    playbook: PlaybookArg,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="jsonl: one JSON object per line.")] = (
        ExportFormat.jsonl
    ),
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write to this file (replaced whole, never half-written); default stdout.",
            show_default=False,
        ),
    ] = None,
    tenant: LedgerTenantOpt = None,
    run: LedgerRunOpt = None,
    since: LedgerSinceOpt = None,
    region: RegionOpt = None,
) -> None:
    """Export entries for a SIEM: canonical JSON lines with seq, at, prev_hash and hash; exit 1 if broken."""
    target = sys.stdout if out_file is None else out_file
    exported = api.ledger_export(
        playbook, target, fmt=fmt.value, tenant=tenant, run=run, since=since, region=region
    )
    render.ledger_warnings(err, exported.report)
    err.print(render.ledger_exported(exported, out_file), markup=False)
    if (failure := exported.report.failure) is not None:
        raise failure


residency_app = typer.Typer(
    help="Keep each tenant in its region's shared database: record targets' regions, prove where rows are.",
    no_args_is_help=True,
)
app.add_typer(residency_app, name="residency")


@residency_app.command("set")
def residency_set(
    playbook: PlaybookArg,
    region: Annotated[
        str,
        typer.Option(
            "--region",
            help="The region the database is in: the target of that region (or the playbook's only target).",
        ),
    ],
    change: Annotated[
        bool,
        typer.Option(
            "--change",
            help="Replace a region already recorded (or recorded on another database); ledgered.",
        ),
    ] = False,
    actor: ActorOpt = None,
) -> None:
    """Record, once, the region a target database is in; ledgered. Every write checks it first."""
    result = api.residency_set(playbook, region, change=change, actor=actor)
    out.print(render.residency_recorded(result), markup=False)


@residency_app.command("report")
def residency_report(
    playbook: PlaybookArg,
    tenant: TenantOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Per tenant: region, target, rows there, and a count on every other target (exit 1 if any is not 0)."""
    report = api.residency_report(playbook, tenant)
    if as_json:
        out.print_json(data=render.residency_report_json(report))
    else:
        render.residency_report(out, report)
    if not report.ok:
        raise typer.Exit(1)


def _internal_error(exc: BaseException) -> int:
    fd, name = tempfile.mkstemp(prefix="tenant-migrate-internal-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        fh.write(redact("".join(traceback.format_exception(exc))))
    err.print(f"internal error: {type(exc).__name__}: {redact(str(exc))}", markup=False)
    err.print(f"  this is a bug in tenant-migrate; the traceback is in {name}", markup=False)
    if _state["debug"]:
        err.print(redact("".join(traceback.format_exception(exc))), markup=False)
    return 70


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app, render errors once, return the exit code."""
    try:
        # Standalone mode: click renders usage errors (exit 2), --help and aborts itself,
        # and ends with SystemExit (typer turns KeyboardInterrupt into 130); our own errors
        # and bugs come through as exceptions.
        with _stop_signals():
            app(args=argv, prog_name="migrate")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except MigrateError as exc:
        render.error(err, exc)
        return exc.exit_code
    except Exception as exc:
        return _internal_error(exc)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
