"""The plan: what will run, per tenant, in order — plain data.

``plan``, ``run``, ``status`` and (later) ``runbook`` and ``rollback`` all read
one Plan, so what a user reviews is what runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from migrate.playbook.model import Step, Tenant


class StepStatus(StrEnum):
    """A step's state for one tenant: pending → running → done | failed → reverted."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    REVERTED = "reverted"


@dataclass(frozen=True)
class PlannedStep:
    """One step (or rollback point) of one tenant, with its state so far."""

    phase: str
    step_id: str
    kind: str  # a step kind, or "rollback_point"
    spec: Step | None
    status: StepStatus = StepStatus.PENDING

    @property
    def key(self) -> str:
        """Unique within a playbook: ``phase/step``."""
        return f"{self.phase}/{self.step_id}"

    @property
    def is_point(self) -> bool:
        return self.spec is None

    @property
    def will_run(self) -> bool:
        return self.status is not StepStatus.DONE


@dataclass(frozen=True)
class TenantPlan:
    tenant: Tenant
    steps: tuple[PlannedStep, ...]

    @property
    def remaining(self) -> tuple[PlannedStep, ...]:
        return tuple(s for s in self.steps if s.will_run)


@dataclass(frozen=True)
class WavePlan:
    """One wave, in the order waves go: its tenants (all of them, selected or not) and its gate."""

    name: str
    approval: bool
    tenants: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    playbook: str
    digest: str
    target_schema: str
    tables: tuple[str, ...] | None  # None: every table of the source, in FK order
    tenants: tuple[TenantPlan, ...]  # the selected tenants, in wave order, then playbook order
    waves: tuple[WavePlan, ...] = ()
    step_keys: tuple[str, ...] = ()  # every step's key (no rollback points), the same for each tenant

    def wave_of(self, tenant: str) -> WavePlan:
        return next(w for w in self.waves if tenant in w.tenants)

    def in_wave(self, wave: str) -> tuple[TenantPlan, ...]:
        return tuple(tp for tp in self.tenants if tp.tenant.wave == wave)
