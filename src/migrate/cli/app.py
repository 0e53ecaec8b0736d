"""The typer app: parse → api → render → exit code. Nothing else lives here.

Exit codes: 0 success; 1 a step or check failed; 2 bad input (playbook,
arguments, settings). A MigrateError is rendered once, as message, place and
hint; anything else is an internal error whose traceback goes to a log file
(and to the screen with ``--debug``). Typer's pretty exceptions stay off: they
print local variables, DSNs included.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from migrate import api
from migrate.cli import render
from migrate.errors import ArgumentError, MigrateError
from migrate.log import configure, redact

app = typer.Typer(
    name="migrate",
    help="Move SaaS tenants from one PostgreSQL database each into one shared schema "
    "with tenant_id and Row-Level Security: phased, validated, reversible, audited.",
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
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
            help="debug, info, warning or error "
            "(default: warning on a terminal, info otherwise; logs go to stderr).",
        ),
    ] = None,
) -> None:
    _state["debug"] = debug
    level = log_level or os.environ.get("MIGRATE_LOG_LEVEL") or ("warning" if sys.stderr.isatty() else "info")
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
) -> None:
    """Move three sample tenants end to end on an embedded PostgreSQL (no settings needed)."""
    from migrate.demo import run_demo, stop_demo  # the embedded server is only for the demo

    if keep and stop:
        raise ArgumentError("--keep and --stop exclude each other", where="--stop")
    if stop is not None:
        found = stop_demo(stop.resolve())
        out.print(f"demo in {stop} stopped and removed" if found else f"nothing at {stop}")
        return
    result = run_demo(keep.resolve() if keep else None, on_stage=lambda msg: err.print(f"[dim]· {msg}[/dim]"))
    render.demo(out, result)
    if not result.run.ok:
        raise typer.Exit(1)


@app.command()
def plan(playbook: PlaybookArg, tenant: TenantOpt = None) -> None:
    """Validate the playbook and print, per tenant, the steps that would run."""
    out.print(render.plan(api.plan(playbook, tenant)), markup=False)


@app.command()
def run(
    playbook: PlaybookArg,
    tenant: TenantOpt = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Tenants worked on at once.")] = 1,
    actor: Annotated[
        str | None,
        typer.Option(
            help="Who runs this, for the ledger (default: $MIGRATE_ACTOR, else the OS user).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the playbook's phases for each tenant; done steps are skipped, so re-running is safe."""
    result = api.run(playbook, tenant, jobs=jobs, actor=actor)
    render.run(out, result)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def status(
    playbook: PlaybookArg,
    tenant: TenantOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show each tenant's phase, last step, rows copied and validation."""
    result = api.status(playbook, tenant)
    if as_json:
        out.print_json(data=render.status_json(result))
    else:
        render.status(out, result)


@app.command()
def rollback(
    playbook: PlaybookArg,
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="The tenant to roll back.")],
    to: Annotated[str, typer.Option("--to", help="The rollback point, e.g. pre-cutover.")],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask (required without a terminal).")
    ] = False,
    actor: Annotated[
        str | None, typer.Option(help="Who rolls back, for the ledger.", show_default=False)
    ] = None,
) -> None:
    """Revert every step after a rollback point: flags first, then data, each ledgered."""
    if not yes:
        if not sys.stdin.isatty():
            raise ArgumentError(
                "rollback asks for confirmation, and there is no terminal",
                where="--yes",
                hint="add --yes in scripts",
            )
        typer.confirm(f"Roll tenant '{tenant}' back to '{to}'?", abort=True)
    result = api.rollback(playbook, tenant, to, actor=actor)
    render.rollback(out, result)


ledger_app = typer.Typer(help="Show and verify the audit ledger.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")


@ledger_app.command("show")
def ledger_show(
    playbook: PlaybookArg,
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="Only this tenant's entries.", show_default=False)
    ] = None,
) -> None:
    """Print the ledger's entries, oldest first."""
    render.ledger(out, api.ledger(playbook, tenant=tenant))


@ledger_app.command("verify")
def ledger_verify(playbook: PlaybookArg) -> None:
    """Check the hash chain; exit 1 naming the first broken entry."""
    report = api.ledger(playbook)
    if report.why is not None:
        err.print(f"ledger broken at entry {report.broken_at}: {report.why}", markup=False)
        raise typer.Exit(1)
    out.print(f"ledger verified: {report.checked} entries, chain intact")


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
        # and ends with SystemExit; our own errors and bugs come through as exceptions.
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
