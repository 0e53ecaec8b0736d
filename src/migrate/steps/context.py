"""What a step is given (StepContext) and what it must offer (StepKind)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol
from uuid import UUID

import psycopg

from migrate.control.store import ControlStore
from migrate.playbook.model import Step, Tenant
from migrate.ports import FlagProvider
from migrate.schemagen.reflect import SourceTable

Details = dict[str, Any]


@dataclass
class StepContext:
    """Everything one step of one tenant may touch; nothing is global.

    ``source`` and ``target`` are autocommit connections: a step opens its own
    transactions with ``conn.transaction()`` so ``SET LOCAL`` and checkpoints
    end where the block ends (shared/notes/postgres.md, pitfall 2).
    """

    run_id: UUID
    tenant: Tenant
    source: psycopg.Connection[Any]
    target: psycopg.Connection[Any]
    source_schema: str
    target_schema: str
    tables: tuple[SourceTable, ...]  # the tenant's source tables, in foreign-key order
    control: ControlStore
    flags: FlagProvider
    log: Any


class StepKind(Protocol):
    """One kind of step: apply is idempotent, verify checks it, revert undoes it."""

    kind: ClassVar[str]
    irreversible: ClassVar[bool]

    def __init__(self, spec: Step) -> None: ...

    def apply(self, ctx: StepContext) -> Details:
        """Do the work (again: a second apply changes nothing); return figures for the ledger."""
        ...

    def verify(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        """Raise CheckFailed unless the step's effect is in place."""
        ...

    def revert(self, ctx: StepContext, details: Mapping[str, Any]) -> Details:
        """Undo apply, using what apply recorded; idempotent too."""
        ...
