"""Where each wave stands, from the progress so far and the approvals: pure.

The engine asks it before starting a wave, ``status`` shows it, and both say the
same thing: a wave is *done* when every tenant of it finished every step; it may
start only when every earlier wave is done (``waiting for wave X`` until then)
and, if it has a gate, a person opened it (``waiting for approval``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum

from migrate.plan.model import Plan, StepStatus, WavePlan


class WaveStage(StrEnum):
    DONE = "done"
    OPEN = "open"  # may start (or is under way)
    WAITING_FOR_APPROVAL = "waiting for approval"
    WAITING_FOR_WAVE = "waiting for an earlier wave"


@dataclass(frozen=True)
class WaveState:
    wave: WavePlan
    stage: WaveStage
    finished: tuple[str, ...]  # tenants that finished every step
    unfinished: tuple[str, ...]
    approved: bool
    blocked_by: str | None = None  # the earlier wave it waits for

    @property
    def may_start(self) -> bool:
        return self.stage in (WaveStage.OPEN, WaveStage.DONE)


def tenant_finished(plan: Plan, progress: Mapping[tuple[str, str], StepStatus], tenant: str) -> bool:
    return all(progress.get((tenant, key)) is StepStatus.DONE for key in plan.step_keys)


def wave_states(
    plan: Plan, progress: Mapping[tuple[str, str], StepStatus], approved: Collection[str]
) -> tuple[WaveState, ...]:
    """Each wave's stage, in order; ``progress`` covers every tenant of the playbook."""
    out: list[WaveState] = []
    blocker: str | None = None
    for wave in plan.waves:
        finished = tuple(t for t in wave.tenants if tenant_finished(plan, progress, t))
        unfinished = tuple(t for t in wave.tenants if t not in finished)
        is_approved = not wave.approval or wave.name in approved
        if not unfinished:
            stage = WaveStage.DONE
        elif blocker is not None:
            stage = WaveStage.WAITING_FOR_WAVE
        elif not is_approved:
            stage = WaveStage.WAITING_FOR_APPROVAL
        else:
            stage = WaveStage.OPEN
        out.append(
            WaveState(
                wave,
                stage,
                finished,
                unfinished,
                is_approved,
                blocker if stage is WaveStage.WAITING_FOR_WAVE else None,
            )
        )
        if unfinished and blocker is None:
            blocker = wave.name
    return tuple(out)


def approved_waves(plan: Plan, approvals: Mapping[str, Collection[str]]) -> set[str]:
    """The waves approved in every target that holds tenants of them (``approvals``: by target name)."""
    out = set()
    for wave in plan.waves:
        names = [t.name for t in plan.targets if set(wave.tenants).intersection(t.tenants)]
        if names and all(wave.name in approvals.get(name, ()) for name in names):
            out.add(wave.name)
    return out


def gate_targets(plan: Plan, wave: str | None = None) -> list[str]:
    """The targets whose progress decides the gates of the plan's waves (or of ``wave``): those
    holding tenants of any wave up to the last one the plan runs (a target of later waves only is
    never read, nor needs its settings)."""
    names = [w.name for w in plan.waves]
    last = (
        names.index(wave)
        if wave is not None
        else max((i for i, w in enumerate(plan.waves) if plan.in_wave(w.name)), default=-1)
    )
    tenants = {t for w in plan.waves[: last + 1] for t in w.tenants}
    return [t.name for t in plan.targets if tenants.intersection(t.tenants)]


def write_targets(plan: Plan) -> list[str]:
    """The targets the plan's tenants go to, in the order written."""
    chosen = {tp.tenant.id for tp in plan.tenants}
    return [t.name for t in plan.targets if chosen.intersection(t.tenants)]
