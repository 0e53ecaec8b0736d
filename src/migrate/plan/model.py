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
    target: str = "default"  # the name of the target it goes to: its region's, or the one target's
    target_schema: str = "app"  # that target's schema of shared tables

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
class TargetPlan:
    """A target of the playbook: its name (its region, or 'default'), region, DSN variable and schema."""

    name: str
    region: str | None  # None: the one target of a playbook without regions, holding every tenant
    dsn_env: str
    schema: str
    tenants: tuple[str, ...]  # the playbook's tenants that go there (all of them, selected or not)


@dataclass(frozen=True)
class Plan:
    playbook: str
    digest: str
    target_schema: str  # the first target's (each tenant's own is TenantPlan.target_schema)
    tables: tuple[str, ...] | None  # None: every table of the source, in FK order
    tenants: tuple[TenantPlan, ...]  # the selected tenants, in wave order, then playbook order
    waves: tuple[WavePlan, ...] = ()
    step_keys: tuple[str, ...] = ()  # every step's key (no rollback points), the same for each tenant
    targets: tuple[TargetPlan, ...] = ()  # every target of the playbook, in the order written

    @property
    def regional(self) -> bool:
        """Whether the targets declare regions (each holds its region's tenants only)."""
        return any(t.region is not None for t in self.targets)

    def wave_of(self, tenant: str) -> WavePlan:
        return next(w for w in self.waves if tenant in w.tenants)

    def in_wave(self, wave: str) -> tuple[TenantPlan, ...]:
        return tuple(tp for tp in self.tenants if tp.tenant.wave == wave)
