"""plan, run, approve, rollback: the commands that walk the plan."""

from __future__ import annotations

import os
import shlex
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from migrate.adapters.recording import RecordingFlags
from migrate.api.ledger_writes import head_published, signing
from migrate.api.online import check_online
from migrate.api.settings import (
    Environ,
    FlagFileUse,
    check_flags_defined,
    check_output,
    check_residency,
    control_exists,
    environments,
    flag_provider,
    flag_target,
    prepare_control,
    progress_of,
)
from migrate.control.rollbacks import UnfinishedRollback
from migrate.control.store import StepRecord
from migrate.engine.flag_targets import check_flag_targets
from migrate.engine.gates import Approved
from migrate.engine.gates import approve as engine_approve
from migrate.engine.rollback import (
    RollbackPreview,
    RollbackResult,
    refuse_a_later_point,
    refuse_across_cutover,
    reversible,
    steps_after,
    what_to_revert,
)
from migrate.engine.rollback import rollback as engine_rollback
from migrate.engine.run import RunOptions, RunResult
from migrate.engine.run import run as engine_run
from migrate.engine.session import Regions
from migrate.engine.sinks import RehearsalRecord, RunRecord
from migrate.errors import ArgumentError
from migrate.plan import (
    Plan,
    build_plan,
    select_wave,
)
from migrate.plan.waves import gate_targets, write_targets
from migrate.playbook import LoadedPlaybook, load_playbook
from migrate.playbook.model import StepBase
from migrate.steps.context import ProgressSink, no_progress


def plan(playbook: Path | str, tenants: Sequence[str] | None = None) -> Plan:
    """Validate the playbook and return what would run (no database needed)."""
    return build_plan(load_playbook(playbook), tenants=tenants)


def run(
    playbook: Path | str,
    tenants: Sequence[str] | None = None,
    *,
    wave: str | None = None,
    jobs: int = 1,
    dry_run: bool = False,
    max_failures: int | None = None,
    replan: bool = False,
    stop: threading.Event | None = None,
    actor: str | None = None,
    environ: Environ | None = None,
    progress: ProgressSink | None = None,
    outputs: Sequence[tuple[str, Path]] = (),
    flags_moved: bool = False,
) -> RunResult:
    """Run the playbook's phases for its tenants, wave by wave; done steps are skipped.

    ``dry_run`` rehearses: every step runs against the real sources and target inside
    transactions that are rolled back, flag flips are only recorded, and the ledger
    gains one ``rehearsed`` entry per step. ``stop``, once set (the CLI sets it on
    Ctrl-C), ends every tenant at its next safe point. ``progress`` receives the
    copy's ProgressEvents (from worker threads: it must be thread-safe). ``outputs``
    are the files the caller will write afterwards, as (option, path): checked first.
    A tenant whose flags were flipped elsewhere than the settings point now refuses the
    run (ArgumentError) unless ``flags_moved`` (ledgered; see engine/flag_targets.py).

    Every argument is checked before any I/O: the options, the output paths, the
    playbook, ``tenants`` and ``wave`` (and that they select someone), and the flags
    the steps name. Only then are connections opened, the control schema upgraded
    and the flag file written.
    """
    if jobs < 1:
        raise ArgumentError(f"--jobs must be at least 1, not {jobs}", where="--jobs")
    if max_failures is not None and max_failures < 1:
        raise ArgumentError(
            f"--max-failures must be at least 1, not {max_failures}",
            where="--max-failures",
            hint="leave it out to let every tenant run whatever the others do",
        )
    for option, path in outputs:
        check_output(path, option)
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    skeleton = build_plan(loaded, None, tenants, wave)  # --tenant and --wave, before any connection
    check_flags_defined(loaded)
    writes = write_targets(skeleton)
    current = flag_target(loaded, environ)
    regions = environments(
        loaded, environ, actor, need=dict.fromkeys([*writes, *gate_targets(skeleton)]), with_flags=False
    )
    signing(regions, environ)
    check_residency(regions, [tp.tenant for tp in skeleton.tenants])  # before anything is written
    if _needs_checks(loaded):
        # Before anything is created (even the control schema): exit 2 with every setting to fix.
        check_online(regions, build_plan(loaded, progress_of(regions, tenants), tenants, wave))
    prepare_control(loaded, environ, writes)
    flipped = check_flag_targets(
        regions,
        writes,
        current,
        [tp.tenant.id for tp in skeleton.tenants],
        flags_moved=flags_moved,
        command="a run" if not dry_run else "a rehearsal",
    )
    # The flag file is created by 'flags sync' or the first real run only: once a tenant was
    # flipped, a missing file is a wrong setting (MissingFlagFile says so), never made anew.
    use: FlagFileUse = "read" if dry_run else ("extend" if flipped else "create")
    regions, record = _sinks(regions.replace_all(flags=flag_provider(loaded, environ, use)), dry_run)
    the_plan = build_plan(loaded, progress_of(regions, tenants), tenants, wave)
    words = ["run", *(f"--tenant {t}" for t in tenants or ()), *([f"--wave {wave}"] if wave else [])]
    options = RunOptions(
        command=" ".join(words + (["--dry-run"] if dry_run else [])),
        jobs=jobs,
        record=record,
        max_failures=max_failures,
        replan=replan,
        stop=stop or threading.Event(),
    )
    with head_published(regions, writes, "rehearsal" if dry_run else "run") as unpublished:
        result = engine_run(regions, the_plan, options, progress=progress or no_progress)
    result.warnings += unpublished
    return result


def _needs_checks(loaded: LoadedPlaybook) -> bool:
    pb = loaded.playbook
    return pb.cutover.mode == "online" or any(
        isinstance(s, StepBase) and s.freezes for p in pb.phases for s in p.steps
    )


def _sinks(regions: Regions, dry_run: bool) -> tuple[Regions, RunRecord]:
    """The one place a rehearsal differs from a run: its record (rolled-back transactions,
    ``rehearsed`` entries, one attempt per step) and flags that record flips instead of making them
    (one recording for every target: the flags are the same)."""
    if not dry_run:
        return regions, RunRecord()
    return regions.replace_all(flags=RecordingFlags(regions.first.flags)), RehearsalRecord()


def approve(
    playbook: Path | str, wave: str, *, actor: str | None = None, environ: Environ | None = None
) -> Approved:
    """Open a wave's approval gate, as ``actor``; ledgered. Only once every earlier wave is done."""
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    in_wave = select_wave(loaded, wave) or ()
    the_plan = build_plan(loaded)
    holding = [t.name for t in the_plan.targets if {x.id for x in in_wave}.intersection(t.tenants)]
    need = dict.fromkeys([*holding, *gate_targets(the_plan, wave)])
    regions = environments(loaded, environ, actor, need=need, with_flags=False, with_sources=False)
    signing(regions, environ)
    prepare_control(loaded, environ, holding)
    with head_published(regions, holding, "approve"):
        return engine_approve(regions, the_plan, wave)


@dataclass(frozen=True)
class _RollbackRequest:
    """A rollback's arguments, checked before any I/O: the playbook, the tenants, the point."""

    loaded: LoadedPlaybook
    plan: Plan
    command: str  # how the command line said it, for the run and the ledger
    environ: Environ


def _rollback_request(
    playbook: Path | str,
    tenants: str | Sequence[str] | None,
    to: str,
    wave: str | None,
    all_tenants: bool,
    discard_writes_since_cutover: bool,
    environ: Environ | None,
) -> _RollbackRequest:
    """The tenants a rollback names — ``--tenant`` (repeatable), ``--wave`` or ``--all-tenants``,
    exactly one kind — as a plan, with the point ``--to`` checked against it."""
    named = [tenants] if isinstance(tenants, str) else list(tenants or ())
    given = [
        option
        for option, said in (
            ("--tenant", bool(named)),
            ("--wave", wave is not None),
            ("--all-tenants", all_tenants),
        )
        if said
    ]
    if len(given) != 1:
        raise ArgumentError(
            "name the tenants to roll back once: --tenant T (repeat it for more), --wave W or --all-tenants"
            if not given
            else f"{' and '.join(given)} exclude each other: name the tenants to roll back one way",
            where="--tenant" if not given else given[1],
            hint="e.g. migrate rollback PLAYBOOK --tenant acme --to pre-cutover",
        )
    loaded = load_playbook(playbook)
    the_plan = build_plan(loaded, tenants=named or None, wave=wave)
    for tenant_plan in the_plan.tenants:  # a misspelt point, before any connection
        steps_after(tenant_plan, to)
    said = (
        " ".join(f"--tenant {shlex.quote(t)}" for t in named)
        if named
        else (f"--wave {shlex.quote(wave)}" if wave is not None else "--all-tenants")
    )
    command = f"rollback --to {shlex.quote(to)} {said}" + (
        " --discard-writes-since-cutover" if discard_writes_since_cutover else ""
    )
    return _RollbackRequest(loaded, the_plan, command, os.environ if environ is None else environ)


def rollback(
    playbook: Path | str,
    tenants: str | Sequence[str] | None,
    to: str,
    *,
    wave: str | None = None,
    all_tenants: bool = False,
    discard_writes_since_cutover: bool = False,
    started: float | None = None,
    actor: str | None = None,
    environ: Environ | None = None,
    stop: threading.Event | None = None,
    flags_moved: bool = False,
) -> RollbackResult:
    """Revert every step after rollback point ``to``: every selected tenant's flags first, then data.

    The tenants are ``tenants`` (one id or several), the wave ``wave``, or all of them
    (``all_tenants``): exactly one. A rollback that would undo a cut-over is refused
    (ArgumentError) unless ``discard_writes_since_cutover``; a tenant another runner holds
    refuses the whole rollback (TenantLocked) before anything changes. ``started``
    (``time.monotonic()`` at the command's start) is where the result's times count from.
    ``stop``, once set (the CLI sets it on Ctrl-C and SIGTERM), ends the rollback at its next
    safe point; the result then names the unfinished tenants and the command that finishes them.
    Flags flipped elsewhere than the settings point now refuse it (ArgumentError) unless
    ``flags_moved`` (ledgered).
    """
    started = time.monotonic() if started is None else started
    req = _rollback_request(playbook, tenants, to, wave, all_tenants, discard_writes_since_cutover, environ)
    writes = write_targets(req.plan)
    current = flag_target(req.loaded, req.environ)
    regions = environments(req.loaded, req.environ, actor, need=writes, with_flags=False)
    signing(regions, req.environ)
    check_residency(regions, [tp.tenant for tp in req.plan.tenants])  # before anything is written
    prepare_control(req.loaded, req.environ, writes)
    check_flag_targets(
        regions,
        writes,
        current,
        [tp.tenant.id for tp in req.plan.tenants],
        flags_moved=flags_moved,
        command="a rollback",
    )
    # Never creates the flag file: a rollback restores flags where the application reads them.
    regions = regions.replace_all(flags=flag_provider(req.loaded, req.environ, "read"))
    with head_published(regions, writes, "rollback"):
        return engine_rollback(
            regions,
            req.plan.tenants,
            to,
            discard_writes_since_cutover=discard_writes_since_cutover,
            started=started,
            command=req.command,
            stop=stop,
        )


def rollback_preview(
    playbook: Path | str,
    tenants: str | Sequence[str] | None,
    to: str,
    *,
    wave: str | None = None,
    all_tenants: bool = False,
    discard_writes_since_cutover: bool = False,
    environ: Environ | None = None,
) -> RollbackPreview:
    """What ``rollback`` with the same arguments would revert, read without taking any lock.

    Refuses as ``rollback`` would (ArgumentError) when it would undo a cut-over and
    ``discard_writes_since_cutover`` is not given, so nobody is asked to confirm a refusal.
    """
    req = _rollback_request(playbook, tenants, to, wave, all_tenants, discard_writes_since_cutover, environ)
    regions = environments(req.loaded, req.environ, need=write_targets(req.plan), with_flags=False)
    records: list[StepRecord] = []
    pending: dict[str, UnfinishedRollback] = {}
    back: set[str] = set()
    for name, theirs in regions.holding(tp.tenant for tp in req.plan.tenants).items():
        env = regions.envs[name]
        with env.connect_target() as conn:
            if control_exists(conn, env.target.control_schema):
                ids = [t.id for t in theirs]
                records += env.control.steps(conn, ids)
                pending |= env.rollbacks.unfinished(conn, ids) if env.rollbacks.exists(conn) else {}
                back |= reversible(env, conn, ids)
    refuse_a_later_point(req.plan.tenants, to, pending, str(req.loaded.path))
    preview = what_to_revert(
        req.plan.tenants,
        to,
        records,
        discard=discard_writes_since_cutover,
        reversible=back,
        pending=pending,
    )
    if not discard_writes_since_cutover:
        refuse_across_cutover(preview, back | set(pending))
    return preview
