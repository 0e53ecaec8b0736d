"""The playbook as frozen pydantic models: what a YAML playbook may say.

Pure: no I/O here (the loader reads files, the adapters read environment
variables and databases). Every model forbids unknown fields, so a typo such as
``taget:`` is an error with its line, never a silently ignored key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from migrate.names import Identifier, Slug, TenantId

ENV_NAME_PATTERN = r"^[A-Z][A-Z0-9_]*$"
EnvName = Annotated[str, Field(pattern=ENV_NAME_PATTERN)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(Model):
    """The shared multi-tenant database; its DSN comes from the environment."""

    dsn_env: EnvName = Field(description="Environment variable holding the target DSN.")
    schema_: Identifier = Field(default="app", alias="schema", description="Schema of the shared tables.")
    control_schema: Identifier = Field(
        default="migrate_control", description="Schema of run state, checkpoints and ledger."
    )


class Source(Model):
    """How to reach each tenant's own database."""

    dsn_template_env: EnvName | None = Field(
        default=None,
        description="Environment variable holding a DSN with '{tenant}' in it, "
        "e.g. postgresql://migrator@db-{tenant}.internal/app.",
    )
    schema_: Identifier = Field(default="public", alias="schema")


class Tenant(Model):
    """One customer: its id, where its source database is, its region and tier."""

    id: TenantId
    source_dsn_env: EnvName | None = Field(
        default=None, description="Per-tenant DSN variable; overrides source.dsn_template_env."
    )
    region: Slug = "default"
    tier: Slug = "standard"
    wave: Slug = "main"


class Table(Model):
    """A table to move, by name (more per-table settings will come here)."""

    name: Identifier


class FileFlags(Model):
    """File-backed flags in Unleash's client-features format (the embedded default)."""

    provider: Literal["file"] = "file"
    file_env: EnvName = Field(default="MIGRATE_FLAG_FILE", description="Variable naming the flag state file.")
    definitions: str | None = Field(
        default=None, description="Flag definitions (client-features JSON), relative to the playbook."
    )


class StepBase(Model):
    id: Slug | None = Field(default=None, description="Unique within the phase; defaults to kind.")


class SchemaStep(StepBase):
    """Create the shared tables (tenant_id, composite keys, RLS forced) if missing,
    and check the tenant's source columns fit them."""

    kind: Literal["schema"]


class BackfillStep(StepBase):
    """Copy every table of the tenant's source into the shared tables with COPY."""

    kind: Literal["backfill"]


class ValidateStep(StepBase):
    """Compare row counts and content checksums of source and target per table."""

    kind: Literal["validate"]


class FlagStep(StepBase):
    """Turn a flag on or off for the tenant; revert restores the previous state."""

    kind: Literal["flag"]
    flag: Slug
    action: Literal["enable", "disable"] = "enable"


class RollbackPoint(Model):
    """A named marker between steps: ``rollback --to NAME`` reverts what follows it."""

    rollback_point: Slug


def _item_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        if "rollback_point" in value:
            return "rollback_point"
        kind = value.get("kind")
        return kind if isinstance(kind, str) else None
    if isinstance(value, RollbackPoint):
        return "rollback_point"
    return getattr(value, "kind", None)


Step = SchemaStep | BackfillStep | ValidateStep | FlagStep
STEP_KINDS: tuple[str, ...] = ("schema", "backfill", "validate", "flag")

PhaseItem = Annotated[
    Annotated[SchemaStep, Tag("schema")]
    | Annotated[BackfillStep, Tag("backfill")]
    | Annotated[ValidateStep, Tag("validate")]
    | Annotated[FlagStep, Tag("flag")]
    | Annotated[RollbackPoint, Tag("rollback_point")],
    Discriminator(
        _item_tag,
        custom_error_type="unknown_step_kind",
        custom_error_message="unknown step kind",
    ),
]


class Phase(Model):
    """An ordered group of steps, run for each tenant."""

    name: Slug
    steps: tuple[PhaseItem, ...] = Field(min_length=1)


class Playbook(Model):
    """A whole playbook file."""

    version: Literal[1] = 1
    name: Slug
    description: str = ""
    target: Target
    source: Source = Source()
    tenants: tuple[Tenant, ...] | None = Field(default=None, min_length=1)
    inventory: str | None = Field(
        default=None, description="YAML file listing the tenants, relative to the playbook."
    )
    tables: Literal["auto"] | tuple[Identifier | Table, ...] = "auto"
    flags: FileFlags = FileFlags()
    phases: tuple[Phase, ...] = Field(min_length=1)

    def table_specs(self) -> tuple[Table, ...] | None:
        """The declared tables, or None for ``auto`` (every table, in FK order)."""
        if self.tables == "auto":
            return None
        return tuple(t if isinstance(t, Table) else Table(name=t) for t in self.tables)


class Inventory(Model):
    """An inventory file: the tenants of many playbooks."""

    tenants: tuple[Tenant, ...] = Field(min_length=1)


def step_id(step: Step) -> str:
    """The step's id within its phase: its own ``id``, else its kind."""
    return step.id or step.kind
