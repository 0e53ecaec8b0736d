"""status: waves, tenants, lock holders and flags from the control schema, and what to run next."""

from __future__ import annotations

import difflib
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from migrate.api.flags import FlagsRead, FlagSummary, read_flags
from migrate.api.settings import (
    Environ,
    connect_source,
    connect_target,
)
from migrate.control.capture import Capture, CaptureStore, Freeze
from migrate.control.residency import ResidencyStore
from migrate.control.reverse import ReverseStore
from migrate.control.rollbacks import Rollbacks, UnfinishedRollback
from migrate.control.store import Approval, ControlStore, Holder, StepRecord
from migrate.engine.rollback import rollback_command
from migrate.errors import ArgumentError, MigrateError
from migrate.plan import (
    Plan,
    PlannedStep,
    StepStatus,
    TenantPlan,
    build_plan,
    select_tenants,
    wave_states,
)
from migrate.plan.waves import approved_waves
from migrate.playbook import LoadedPlaybook, Tenant, load_playbook
from migrate.playbook.model import Target
from migrate.replication.slots import slot as slot_info
from migrate.steps.validate import mismatch_summary


@dataclass(frozen=True)
class TenantFlags:
    tenant: str
    wave: str
    phase: str | None
    state: str  # the tenant's migration state, as in status()
    flags: Mapping[str, bool]  # what the application sees, per flag (evaluated by the SDK)


@dataclass(frozen=True)
class FlagsStatus:
    playbook: str
    digest: str
    provider: str
    flags: tuple[FlagSummary, ...]
    tenants: tuple[TenantFlags, ...]


@dataclass(frozen=True)
class StepNow:
    """The step a tenant is working on or stopped at: running, interrupted or failed."""

    key: str  # phase/step
    phase: str
    step: str
    kind: str
    # running | interrupted (its runner is gone; the next run redoes it) | failed | flag state unknown
    status: str
    error: str | None = None


STATES = (
    "not started",
    "in progress",
    "running",  # a runner (run or rollback) holds it now
    "interrupted",  # its runner is gone mid-step; the next run redoes the step
    "failed",
    "flag state unknown",  # a flip could not be confirmed in time; the next run reads it first
    "rollback interrupted",  # a rollback stopped (on request, or killed) before its end
    "rollback failed",  # a revert failed; the rollback did not finish
    "rolled back",
    "done",
)
"""A tenant's state in ``status``, for ``--state`` and scripts."""


@dataclass(frozen=True)
class TargetStatus:
    """A target of the playbook, as status read it."""

    name: str  # its region, or 'default'
    region: str | None  # the region it declares (None: the one target of a playbook without regions)
    dsn_env: str
    database: str
    recorded_region: str | None  # the region its database carries (migrate residency set), if any
    started: bool  # it has a control schema: something ran there

    @property
    def residency_ok(self) -> bool:
        """Its database carries the region it declares (a target that declares none needs nothing)."""
        return self.region is None or self.recorded_region == self.region


@dataclass(frozen=True)
class CaptureNow:
    """A tenant's change capture as the control schema knows it (the last poll's lag)."""

    slot: str
    online: bool  # capture open and the tenant not cut over
    applied_at: datetime | None
    changes_applied: int
    lag_changes: int | None
    lag_bytes: int | None
    lag_seconds: float | None
    lag_at: datetime | None


@dataclass(frozen=True)
class ReverseNow:
    """A cut-over tenant's reverse path on the shared database: a rollback after the cut-over loses no
    write while it exists (until finalise)."""

    slot: str
    since: datetime  # taken at the cut-over
    retained_bytes: int | None  # WAL the shared database's server keeps for it (None: unknown)
    wal_status: str | None  # reserved | extended | unreserved | lost (None: the slot is gone)


@dataclass(frozen=True)
class FrozenNow:
    """A tenant whose application roles have no write access on its source."""

    since: datetime
    roles: tuple[str, ...]
    step: str


@dataclass(frozen=True)
class SlotNow:
    """A replication slot of the playbook on a tenant's source server, read there now."""

    tenant: str
    slot: str
    retained_bytes: int | None  # WAL the server keeps for it
    wal_status: str | None
    active: bool | None
    error: str | None = None  # why the source could not be read


@dataclass(frozen=True)
class TenantStatus:
    tenant: str
    wave: str
    phase: str | None  # phase of the last finished step
    last_step: str | None
    state: str  # one of STATES
    rows: int | None  # rows copied: the backfill's figure, or its checkpoints' while it is under way
    validated: bool | None
    error: str | None
    figures: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per table, from validate
    current: StepNow | None = None
    points: tuple[str, ...] = ()  # rollback points passed, in order
    steps_done: int = 0
    steps_total: int = 0
    flags: Mapping[str, bool] = field(default_factory=dict)  # as the application sees them, per flag
    holder: Holder | None = None  # the runner that holds the tenant's lock now
    region: str = "default"  # the tenant's region
    target: str = "default"  # the target it goes to (its region's, or the one target)
    capture: CaptureNow | None = None
    frozen: FrozenNow | None = None
    freeze_seconds: float | None = None  # freeze to flip of its cut-over, when it is done
    rollback: UnfinishedRollback | None = None  # a rollback that started and has not finished
    reverse: ReverseNow | None = None  # a rollback after the cut-over can still apply the writes back
    shared_frozen: datetime | None = None  # since when its writes to the shared tables are refused
    rolled_back: Mapping[str, Any] | None = None  # the last rollback across its cut-over: its figures


@dataclass(frozen=True)
class WaveStatus:
    name: str
    stage: str  # done | open | waiting for approval | waiting for an earlier wave
    tenants: tuple[str, ...]
    finished: tuple[str, ...]
    approval_needed: bool
    approval: Approval | None  # who opened the gate, where, when, for which playbook version
    blocked_by: str | None  # the earlier wave it waits for


@dataclass(frozen=True)
class AcceptedVersion:
    """The playbook version runs work to (moved only by ``run --replan``)."""

    digest: str
    since: datetime
    actor: str


@dataclass(frozen=True)
class NextCommand:
    command: str
    why: str


@dataclass(frozen=True)
class Status:
    playbook: str
    digest: str
    tenants: tuple[TenantStatus, ...]  # those asked for (all by default), in wave order
    path: str = ""  # the playbook's path as given, for the commands status suggests
    waves: tuple[WaveStatus, ...] = ()
    accepted: AcceptedVersion | None = None
    started: bool = False  # the target has a control schema: something ran
    flags_provider: str = "file"
    flags: tuple[FlagSummary, ...] = ()
    flags_error: str | None = None  # why the flags could not be read; None when they were
    next: NextCommand | None = None  # for the whole playbook; None when everything is done
    targets: tuple[TargetStatus, ...] = ()  # every target of the playbook, each read for its tenants
    slots: tuple[SlotNow, ...] = ()  # the playbook's slots on the shown tenants' sources

    @property
    def playbook_changed(self) -> bool:
        """The playbook changed in substance since the version runs work to: the next run needs --replan."""
        return self.accepted is not None and self.accepted.digest != self.digest

    @property
    def holders(self) -> tuple[Holder, ...]:
        return tuple(t.holder for t in self.tenants if t.holder is not None)


def check_states(states: Sequence[str] | None) -> tuple[str, ...]:
    """``--state`` values as states (``not-started`` for ``not started``), or an ArgumentError."""
    out = []
    for given in states or ():
        state = given.strip().lower().replace("-", " ").replace("_", " ")
        if state not in STATES:
            close = difflib.get_close_matches(state, STATES, n=1)
            raise ArgumentError(
                f"unknown state '{given}'",
                where="--state",
                hint=(f"did you mean '{close[0].replace(' ', '-')}'? " if close else "")
                + "write one of: "
                + ", ".join(s.replace(" ", "-") for s in STATES),
            )
        out.append(state)
    return tuple(out)


def status(
    playbook: Path | str,
    tenants: Sequence[str] | None = None,
    *,
    regions: Sequence[str] | None = None,
    environ: Environ | None = None,
    states: Sequence[str] | None = None,
) -> Status:
    """Waves, tenants, lock holders and flags, read from the control schema; and what to run next.

    Read-only: it needs the target's settings (and the flags' for flag states, which are
    otherwise "unavailable"), and changes nothing, not even the control
    schema's revision. ``next`` is for the whole playbook, whichever tenants are shown: those of
    ``tenants`` (all by default) in one of ``states`` (any by default). With a target per region it
    reads every one (each holds its own tenants' state); ``regions`` shows the tenants of those
    regions only. A source is read only for a tenant with a replication slot, to show the
    WAL it holds back (an unreachable source is shown as such).
    """
    wanted = check_states(states)
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    if regions:
        _regions(loaded, regions)  # before any connection
    found = read_status(loaded, str(playbook), tenants, environ, with_flags=True, regions=regions)
    if not wanted:
        return found
    return replace(found, tenants=tuple(t for t in found.tenants if t.state in wanted))


_CONTROL_TABLES = (
    "reverse_paths",
    "step_state",
    "checkpoints",
    "approvals",
    "playbook_versions",
    "holders",
    "residency",
    "captures",
    "freezes",
    "rollbacks",
)


def by_id(loaded: LoadedPlaybook, tenant: str) -> Tenant:
    return next(t for t in loaded.tenants if t.id == tenant)


def _regions(loaded: LoadedPlaybook, wanted: Sequence[str]) -> set[str]:
    """``--region`` names a target's region (or 'default', the one target of a playbook without regions)."""
    names = list(loaded.playbook.targets_by_name())
    for region in wanted:
        if region not in names:
            close = difflib.get_close_matches(region, names, n=1)
            raise ArgumentError(
                f"playbook {loaded.path} has no target for region '{region}'",
                where="--region",
                hint=(f"did you mean '{close[0]}'? " if close else "")
                + f"its targets are: {', '.join(names)}",
            )
    return set(wanted)


def _approval(plan: Plan, approvals: Mapping[str, Mapping[str, Approval]], wave: str) -> Approval | None:
    """Who approved the wave, in the first target holding its tenants (every one of them did)."""
    tenants = next(w.tenants for w in plan.waves if w.name == wave)
    for target in plan.targets:
        if set(tenants).intersection(target.tenants) and wave in approvals.get(target.name, {}):
            return approvals[target.name][wave]
    return None


@dataclass(frozen=True)
class _TargetRead:
    status: TargetStatus
    records: list[StepRecord]
    holders: dict[str, Holder]
    approvals: dict[str, Approval]
    accepted: tuple[str, datetime, str] | None
    copied: dict[str, int]
    unfinished: dict[str, UnfinishedRollback] = field(default_factory=dict)
    captures: dict[str, Capture] = field(default_factory=dict)
    freezes: dict[str, Freeze] = field(default_factory=dict)
    reverse: dict[str, ReverseNow] = field(default_factory=dict)
    shared_frozen: dict[str, datetime] = field(default_factory=dict)


def _read_target(
    loaded: LoadedPlaybook, environ: Environ, target: Target, mine: Sequence[str], backfills: set[str]
) -> _TargetRead:
    """One target's control schema: the state of its own tenants only (another target's say nothing
    of them), its approvals, the version its runs work to, and the region its database carries."""
    store = ControlStore(target.control_schema, loaded.playbook.name)
    with connect_target(loaded, environ, target) as conn:
        # A control schema older than this version lacks some tables: what is missing is empty.
        found = {
            name
            for (name,) in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = ANY(%s)",
                (target.control_schema, list(_CONTROL_TABLES)),
            )
        }
        records = store.steps(conn, mine) if "step_state" in found and mine else []
        holders = store.holders(conn, mine) if "holders" in found else {}
        if any(r.status is StepStatus.RUNNING and r.tenant not in holders for r in records):
            # Read again after the locks: a runner may have finished that step and let go in between.
            records = store.steps(conn, mine)
        approvals = store.approvals(conn) if "approvals" in found else {}
        accepted = store.accepted_digest(conn) if "playbook_versions" in found else None
        copying = {  # rows so far of a backfill under way, interrupted or failed: its checkpoints
            rec.tenant for rec in records if rec.step_key in backfills and rec.status is not StepStatus.DONE
        }
        copied = {
            t: sum(c.rows_copied for c in store.checkpoints(conn, t).values())
            for t in copying
            if "checkpoints" in found
        }
        replication = CaptureStore(target.control_schema, loaded.playbook.name)
        captures = replication.captures(conn, mine) if "captures" in found and mine else {}
        freezes = replication.freezes(conn, mine) if "freezes" in found and mine else {}
        rollbacks = Rollbacks(target.control_schema, loaded.playbook.name)
        unfinished = rollbacks.unfinished(conn, mine) if "rollbacks" in found and mine else {}
        paths = ReverseStore(target.control_schema, loaded.playbook.name)
        reverse: dict[str, ReverseNow] = {}
        shared_frozen: dict[str, datetime] = {}
        if "reverse_paths" in found and mine:
            for tenant, rp in paths.paths(conn, mine).items():
                if rp.status != "capturing":
                    continue
                info = slot_info(conn, rp.slot)
                reverse[tenant] = ReverseNow(
                    rp.slot,
                    rp.created_at,
                    None if info is None else info.retained_bytes,
                    None if info is None else info.wal_status,
                )
            for tenant in mine:
                since = paths.shared_frozen(conn, tenant)
                if since is not None:
                    shared_frozen[tenant] = since
        here, recorded = ResidencyStore(target.control_schema).read(conn)
    status = TargetStatus(
        target.name,
        target.region,
        target.dsn_env,
        here.database,
        None if recorded is None else recorded.region,
        "step_state" in found,
    )
    return _TargetRead(
        status,
        records,
        holders,
        approvals,
        accepted,
        copied,
        unfinished,
        captures,
        freezes,
        reverse,
        shared_frozen,
    )


def read_status(
    loaded: LoadedPlaybook,
    path: str,
    tenants: Sequence[str] | None,
    environ: Environ,
    *,
    with_flags: bool,
    regions: Sequence[str] | None = None,
    with_slots: bool = True,
) -> Status:
    pb = loaded.playbook
    shown = [t.id for t in select_tenants(loaded, tenants)]
    if regions is not None:
        shown = [t for t in shown if pb.target_name_of(by_id(loaded, t)) in _regions(loaded, regions)]
    skeleton = build_plan(loaded)
    first = skeleton.tenants[0].steps if skeleton.tenants else ()
    backfills = {s.key for s in first if s.spec is not None and s.spec.reports == "rows"}
    records: list[StepRecord] = []
    holders: dict[str, Holder] = {}
    approvals: dict[str, dict[str, Approval]] = {}
    accepted_in: list[tuple[str, datetime, str]] = []
    copied: dict[str, int] = {}
    captures: dict[str, Capture] = {}
    freezes: dict[str, Freeze] = {}
    reverse: dict[str, ReverseNow] = {}
    shared_frozen: dict[str, datetime] = {}
    unfinished: dict[str, UnfinishedRollback] = {}
    targets: list[TargetStatus] = []
    for name, target in pb.targets_by_name().items():  # every target: each holds its tenants' state
        mine = [t.id for t in loaded.tenants if pb.target_name_of(t) == name]
        read = _read_target(loaded, environ, target, mine, backfills)
        records += read.records
        holders.update(read.holders)
        approvals[name] = read.approvals
        accepted_in += [read.accepted] if read.accepted else []
        copied.update(read.copied)
        captures.update(read.captures)
        freezes.update(read.freezes)
        reverse.update(read.reverse)
        shared_frozen.update(read.shared_frozen)
        unfinished.update(read.unfinished)
        targets.append(read.status)
    by_tenant: dict[str, dict[str, StepRecord]] = {}
    for rec in records:
        by_tenant.setdefault(rec.tenant, {})[rec.step_key] = rec
    progress = {(r.tenant, r.step_key): r.status for r in records}
    the_plan = build_plan(loaded, progress)
    states = {
        tp.tenant.id: _with_replication(
            _tenant_status(
                tp,
                by_tenant.get(tp.tenant.id, {}),
                holders.get(tp.tenant.id),
                copied.get(tp.tenant.id),
                unfinished.get(tp.tenant.id),
            ),
            captures.get(tp.tenant.id),
            freezes.get(tp.tenant.id),
            by_tenant.get(tp.tenant.id, {}),
            reverse.get(tp.tenant.id),
            shared_frozen.get(tp.tenant.id),
        )
        for tp in the_plan.tenants
    }
    approved = approved_waves(the_plan, {name: set(found) for name, found in approvals.items()})
    waves = tuple(
        WaveStatus(
            w.wave.name,
            w.stage.value,
            w.wave.tenants,
            w.finished,
            w.wave.approval,
            _approval(the_plan, approvals, w.wave.name) if w.wave.name in approved else None,
            w.blocked_by,
        )
        for w in wave_states(the_plan, progress, approved=approved)
    )
    # The version runs work to: a target that accepted another than this one says the playbook changed.
    accepted = next(
        (a for a in accepted_in if a[0] != loaded.digest), accepted_in[0] if accepted_in else None
    )
    version = AcceptedVersion(*accepted) if accepted else None
    flags_error: str | None = None
    seen = FlagsRead(pb.flags.provider, (), {})
    if with_flags:
        try:
            seen = read_flags(loaded, environ, shown)
        except MigrateError as exc:  # Unleash down, settings missing, a broken file: status still works
            flags_error = exc.message
    ordered = [tp.tenant.id for tp in the_plan.tenants]
    return Status(
        pb.name,
        loaded.digest,
        tuple(
            replace(
                states[t],
                flags={name: on[t] for name, on in seen.seen.items()},
                region=by_id(loaded, t).region,
                target=pb.target_name_of(by_id(loaded, t)),
            )
            for t in ordered
            if t in shown
        ),
        path=path,
        waves=waves,
        accepted=version,
        started=any(t.started for t in targets),
        flags_provider=seen.provider,
        flags=seen.summaries,
        flags_error=flags_error,
        next=_next_command(path, loaded.digest, [states[t] for t in ordered], waves, version),
        targets=tuple(targets),
        slots=_slots(loaded, environ, {t: c for t, c in captures.items() if t in shown})
        if with_slots
        else (),
    )


def _with_replication(
    status: TenantStatus,
    capture: Capture | None,
    freeze: Freeze | None,
    recs: Mapping[str, StepRecord],
    reverse: ReverseNow | None = None,
    shared_frozen: datetime | None = None,
) -> TenantStatus:
    done = [r for r in recs.values() if r.status is StepStatus.DONE and "freeze_seconds" in r.details]
    back = [
        r
        for r in recs.values()
        if r.status is StepStatus.REVERTED and ("reverse" in r.details or "discarded" in r.details)
    ]
    return replace(
        status,
        reverse=reverse,
        shared_frozen=shared_frozen,
        rolled_back=None
        if not back
        else dict(back[0].details.get("reverse") or back[0].details.get("discarded") or {}),
        capture=None
        if capture is None or capture.status != "capturing"
        else CaptureNow(
            capture.slot,
            capture.online,
            capture.applied_at,
            capture.changes_applied,
            capture.lag_changes,
            capture.lag_bytes,
            capture.lag_seconds,
            capture.lag_at,
        ),
        frozen=None if freeze is None else FrozenNow(freeze.frozen_at, freeze.roles, freeze.step),
        freeze_seconds=float(done[0].details["freeze_seconds"]) if done else None,
    )


def _slots(loaded: LoadedPlaybook, environ: Environ, captures: Mapping[str, Capture]) -> tuple[SlotNow, ...]:
    """Each captured tenant's slot as its source server sees it now: how much WAL it holds back.

    The only reads of a source that status makes, and only for tenants with a slot: a source that
    does not answer is shown as such, never an error of the whole command.
    """
    out = []
    for tenant, capture in sorted(captures.items()):
        try:
            with connect_source(loaded, by_id(loaded, tenant), environ) as conn:
                info = slot_info(conn, capture.slot)
        except (MigrateError, psycopg.Error) as exc:
            out.append(SlotNow(tenant, capture.slot, None, None, None, error=str(exc).splitlines()[0]))
            continue
        if info is None:
            out.append(SlotNow(tenant, capture.slot, None, None, None, error="the slot does not exist"))
        else:
            out.append(SlotNow(tenant, capture.slot, info.retained_bytes, info.wal_status, info.active))
    return tuple(out)


def _tenant_status(
    tp: TenantPlan,
    recs: Mapping[str, StepRecord],
    holder: Holder | None,
    copied: int | None,
    rollback: UnfinishedRollback | None = None,
) -> TenantStatus:
    def state_of(step: PlannedStep) -> StepStatus:
        record = recs.get(step.key)
        return StepStatus.PENDING if record is None else record.status

    real = [s for s in tp.steps if not s.is_point]
    done = [s for s in real if state_of(s) is StepStatus.DONE]
    last = done[-1] if done else None
    current: StepNow | None = None
    rows: int | None = None
    validated: bool | None = None
    figures: Mapping[str, Mapping[str, Any]] = {}
    for s in real:
        status_now = state_of(s)
        if current is None and status_now in (StepStatus.RUNNING, StepStatus.FAILED):
            word = "failed" if status_now is StepStatus.FAILED else "running" if holder else "interrupted"
            if word == "failed" and recs[s.key].details.get("flag_state") == "unknown":
                word = "flag state unknown"  # flipped, not confirmed: the next run reads it first
            current = StepNow(s.key, s.phase, s.step_id, s.kind, word, recs[s.key].error)
        reports = s.spec.reports if s.spec is not None else None
        if reports == "rows" and status_now is StepStatus.DONE:
            rows = int(recs[s.key].details.get("rows", 0))
        elif reports == "rows" and status_now in (StepStatus.RUNNING, StepStatus.FAILED):
            rows = copied
        # A failed validation keeps its figures: they are the evidence of what differs.
        if reports == "validation" and status_now in (StepStatus.DONE, StepStatus.FAILED):
            details = recs[s.key].details
            if "tables" in details:
                validated = bool(details.get("match"))
                figures = details["tables"]
    reverted = any(r.status is StepStatus.REVERTED for r in recs.values())
    if rollback is not None:
        rows = None  # whatever the backfill's record says, part of its rows may be gone
    if holder is not None and (len(done) < len(real) or rollback is not None):
        state = "running"
    elif rollback is not None:
        state = "rollback failed" if rollback.outcome == "failed" else "rollback interrupted"
    elif current is not None and current.status != "running":
        state = current.status
    elif len(done) == len(real):
        state = "done"
    elif reverted:
        state = "rolled back"
    elif recs:
        state = "in progress"
    else:
        state = "not started"
    return TenantStatus(
        tenant=tp.tenant.id,
        wave=tp.tenant.wave,
        phase=last.phase if last else None,
        last_step=last.step_id if last else None,
        state=state,
        rows=rows,
        validated=validated,
        error=current.error if current and current.status in ("failed", "flag state unknown") else None,
        figures=figures,
        current=current,
        points=tuple(
            s.step_id.removeprefix("@") for s in tp.steps if s.is_point and state_of(s) is StepStatus.DONE
        ),
        steps_done=len(done),
        steps_total=len(real),
        holder=holder,
        rollback=rollback,
    )


def _next_command(
    path: str,
    digest: str,
    tenants: Sequence[TenantStatus],
    waves: Sequence[WaveStatus],
    accepted: AcceptedVersion | None,
) -> NextCommand | None:
    """The one command that moves the playbook on from here, and why; None when all is done."""
    book = shlex.quote(path)
    # An unfinished rollback first: an incident is under way, and nothing else may run on those tenants.
    left = [t for t in tenants if t.rollback is not None and t.holder is None]
    if left:
        head = left[0].rollback
        assert head is not None
        same = [
            t.tenant
            for t in left
            if t.rollback is not None
            and (t.rollback.point, t.rollback.discard_writes) == (head.point, head.discard_writes)
        ]
        how = "; ".join(
            f"{t.tenant}'s rollback to '{t.rollback.point}' "
            + (
                "failed: " + (t.rollback.error or "no error recorded")
                if t.rollback.outcome == "failed"
                else "was stopped"
                if t.rollback.outcome == "stopped"
                else "was interrupted (its process is gone)"
            )
            for t in left
            if t.rollback is not None
        )
        return NextCommand(
            rollback_command(path, same, head.point, discard=head.discard_writes),
            f"{how}; the same rollback finishes it (it goes on where it stopped), and 'migrate run' "
            "refuses these tenants until it has",
        )
    if accepted is not None and accepted.digest != digest:
        return NextCommand(
            f"migrate run {book} --replan",
            f"the playbook changed since version {accepted.digest[:12]} "
            f"(accepted {accepted.since:%Y-%m-%d %H:%M} by {accepted.actor}); "
            f"review 'migrate plan {book}', then run with --replan to work to version {digest[:12]}",
        )
    unknown = [t for t in tenants if t.state == "flag state unknown" and t.current is not None]
    if unknown:
        t = unknown[0]
        assert t.current is not None
        return NextCommand(
            f"migrate run {book} --tenant {shlex.quote(t.tenant)}",
            f"tenant {t.tenant}'s {t.current.key} flipped its flag but could not confirm it in time "
            f"({t.current.error or 'no error recorded'}): whether the application sees it is unknown; "
            "the run reads the real state first, then finishes the flip and confirms it "
            f"(or roll it back: migrate rollback {book} --tenant {shlex.quote(t.tenant)} --to POINT)",
        )
    for t in tenants:
        if t.state != "failed" or t.current is None:
            continue
        rerun = f"migrate run {book} --tenant {shlex.quote(t.tenant)}"
        if t.frozen is not None:
            return NextCommand(
                rerun, _frozen_why(book, t) + f" It failed at {t.current.key}: {t.current.error}"
            )
        differ = [name for name, f in sorted(t.figures.items()) if not f.get("match")]
        if differ:
            return NextCommand(
                f"migrate diff {book} --tenant {shlex.quote(t.tenant)} --table {shlex.quote(differ[0])}",
                f"tenant {t.tenant} failed validation: {mismatch_summary(t.figures)}; find the keys "
                f"that differ, fix the cause, then '{rerun}'",
            )
        return NextCommand(
            rerun,
            f"tenant {t.tenant} failed at {t.current.key}: {t.current.error or 'no error recorded'}; "
            "fix the cause, then re-run it (done steps are skipped)",
        )
    by_id = {t.tenant: t for t in tenants}
    for wave in waves:
        if wave.stage == "done":
            continue
        if wave.stage != "open":  # the first wave not done is either open or waits for approval
            return NextCommand(
                f"migrate approve {book} --wave {shlex.quote(wave.name)}",
                f"wave {wave.name} waits for approval before any of its tenants starts",
            )
        todo = [t for t in wave.tenants if t not in wave.finished]
        free = [t for t in todo if by_id[t].holder is None]
        if not free:
            held = "; ".join(f"{t} by {h.describe()}" for t in todo if (h := by_id[t].holder))
            return NextCommand(
                f"migrate status {book}",
                f"wave {wave.name} is under way ({held}); check again when it finishes",
            )
        notes = [
            _frozen_why(book, by_id[t])
            if by_id[t].frozen is not None
            else f"{t} was interrupted at {c.key} (its runner is gone; the run redoes it)"
            for t in free
            if (c := by_id[t].current) and c.status == "interrupted"
        ] + [
            f"{t} was rolled back (the run re-applies what was reverted)"
            for t in free
            if by_id[t].state == "rolled back"
        ]
        only = "".join(f" --tenant {shlex.quote(t)}" for t in free) if len(free) < len(todo) else ""
        first = "nothing has run yet; " if all(by_id[t].state == "not started" for t in by_id) else ""
        return NextCommand(
            f"migrate run {book}{only}",
            f"{first}wave {wave.name} is open: {', '.join(free)} "
            f"{'has' if len(free) == 1 else 'have'} steps to run" + "".join(f"; {n}" for n in notes),
        )
    return None


def _frozen_why(book: str, t: TenantStatus) -> str:
    assert t.frozen is not None
    return (
        f"{t.tenant}'s source is frozen since {t.frozen.since:%Y-%m-%d %H:%M:%S %Z} (roles "
        f"{', '.join(t.frozen.roles)} cannot write it) and its cut-over did not finish: "
        f"'migrate run {book} --tenant {shlex.quote(t.tenant)}' finishes it (it freezes, drains and "
        f"validates again before it flips); 'migrate rollback {book} --tenant {shlex.quote(t.tenant)} "
        "--to pre-cutover --discard-writes-since-cutover' gives the writes back instead"
        + (
            " (its flag is still off: nothing is discarded)."
            if t.flags and not any(t.flags.values())
            else "."
        )
    )


def flags_status(
    playbook: Path | str, tenants: Sequence[str] | None = None, *, environ: Environ | None = None
) -> FlagsStatus:
    """Per tenant, each flag as the application sees it, next to the tenant's phase."""
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    where = read_status(loaded, str(playbook), tenants, environ, with_flags=False, with_slots=False)
    read = read_flags(loaded, environ, [t.tenant for t in where.tenants])
    rows = tuple(
        TenantFlags(
            t.tenant, t.wave, t.phase, t.state, {name: read.seen[name][t.tenant] for name in read.seen}
        )
        for t in where.tenants
    )
    return FlagsStatus(where.playbook, where.digest, read.provider, read.summaries, rows)
