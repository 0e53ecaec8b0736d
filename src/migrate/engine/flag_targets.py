"""Where the flags were flipped, against where the current settings point: rollback acts on what
the application reads.

Every flag step records its flag target (``FlagTarget``: the flag file's absolute path,
or the Unleash server, project and environment) with its figures and in its intent
checkpoint. A rollback or a run whose settings point elsewhere — another
``MIGRATE_FLAG_FILE``, another Unleash server, project or environment — would
"restore" flags nobody reads, or flip a tenant where the application never looks.
Both refuse (exit 2, naming both places) unless a person says the flags moved
(``--flags-moved``): that is ledgered per tenant (``flags_moved``, from → to) and the
recorded targets follow, so the next command agrees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from migrate.engine.session import Environment, Regions
from migrate.errors import ArgumentError
from migrate.plan.model import StepStatus
from migrate.ports import FlagTarget, describe_target, same_target
from migrate.steps.flag import recorded_target

MOVED_OPTION = "--flags-moved"
_FLAG_CHECKPOINT = "flag:"  # steps/flag.py: FlagStep.checkpoint_key
_ACTED = (StepStatus.DONE, StepStatus.FAILED, StepStatus.RUNNING)


@dataclass(frozen=True)
class Recorded:
    """Where one tenant's flag step flipped (or meant to: its intent checkpoint)."""

    tenant: str
    key: str  # the step's key, or the checkpoint's
    target: FlagTarget
    checkpoint: bool = False


def recorded_targets(env: Environment, tenants: Sequence[str] | None = None) -> list[Recorded]:
    """Every flag target the tenants of ``env``'s target (or ``tenants`` of them) recorded there and
    not yet reverted."""
    out: list[Recorded] = []
    with env.connect_target() as conn:
        records = env.control.steps(conn, tenants)
        unsettled = set()
        for rec in records:
            if rec.status not in _ACTED:
                continue
            target = recorded_target(rec.details) if rec.details else None
            if target is not None:
                out.append(Recorded(rec.tenant, rec.step_key, target))
            elif rec.status is not StepStatus.DONE:
                unsettled.add(rec.tenant)  # killed mid-step: its intent checkpoint knows
        for tenant in sorted(unsettled):
            for name, cp in env.control.checkpoints(conn, tenant).items():
                if name.startswith(_FLAG_CHECKPOINT) and not cp.done and isinstance(cp.last_key, dict):
                    target = recorded_target(cp.last_key)
                    if target is not None:
                        out.append(Recorded(tenant, name, target, checkpoint=True))
    return out


def check_flag_targets(
    regions: Regions,
    names: Sequence[str],
    current: FlagTarget | None,
    tenants: Sequence[str],
    *,
    flags_moved: bool,
    command: str,
) -> bool:
    """Refuse (ArgumentError) when a tenant's flags were flipped elsewhere than ``current``, unless
    ``flags_moved``, which is ledgered and makes the records follow. ``names`` are the targets to
    read (each holds its own tenants' records). Returns whether any tenant has a flag flip on
    record there (so a run may not create a missing flag file)."""
    if current is None:
        return False
    chosen = set(tenants)
    recorded: dict[str, list[Recorded]] = {}
    for name in names:
        env = regions.envs[name]
        mine = [t.id for t in env.loaded.tenants if regions.of(t).name == name]
        recorded[name] = recorded_targets(env, mine) if mine else []
    moved = {
        name: [r for r in found if r.tenant in chosen and not same_target(r.target, current)]
        for name, found in recorded.items()
    }
    every = [r for found in moved.values() for r in found]
    if every and not flags_moved:
        places = sorted({describe_target(r.target) for r in every})
        who = sorted({r.tenant for r in every})
        raise ArgumentError(
            f"tenant(s) {', '.join(who)} had their flags flipped in {' and '.join(places)}, but the "
            f"settings now point at {describe_target(current)}: {command} there would act on flags "
            "the application may not read",
            where="flags",
            hint=f"point the settings back at {places[0]}; or, if the application reads the flags from "
            f"the new place now, say so with {MOVED_OPTION} (ledgered; the records follow)",
        )
    for name, found in moved.items():
        if found:
            _accept(regions.envs[name], found, current, command)
    return any(recorded.values())


def _accept(env: Environment, moved: Sequence[Recorded], current: FlagTarget, command: str) -> None:
    """The flags moved, as a person said: ledgered per tenant, and the records point at the new place."""
    with env.connect_target() as conn, conn.transaction():
        for tenant in sorted({r.tenant for r in moved}):
            env.ledger.append(
                conn,
                env.entry(
                    None,
                    "flags_moved",
                    "accepted",
                    tenant=tenant,
                    details={
                        "from": [dict(r.target) for r in moved if r.tenant == tenant],
                        "to": dict(current),
                        "accepted_with": MOVED_OPTION,
                        "command": command,
                    },
                ),
            )
        for r in moved:
            if not r.checkpoint:
                env.control.merge_details(conn, r.tenant, r.key, {"target": dict(current)})
                continue
            cp = env.control.checkpoint(conn, r.tenant, r.key)
            if cp is not None and isinstance(cp.last_key, dict):
                env.control.save_checkpoint(
                    conn,
                    r.tenant,
                    r.key,
                    rows_copied=cp.rows_copied,
                    done=cp.done,
                    last_key={**cp.last_key, "target": dict(current)},
                )
