"""The playbook as frozen pydantic models: what a YAML playbook may say.

Pure: no I/O here (the loader reads files, the adapters read environment
variables and databases). Every model forbids unknown fields, so a typo such as
``taget:`` is an error with its line, never a silently ignored key.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self, Union, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, model_validator

from migrate.names import Identifier, Slug, TenantId

ENV_NAME_PATTERN = r"^[A-Z][A-Z0-9_]*$"
EnvName = Annotated[str, Field(pattern=ENV_NAME_PATTERN)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DEFAULT_TARGET = "default"
"""The name of a target that declares no region: the one ``target:`` of a playbook that routes nothing."""


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m)?\s*")


def _seconds(value: Any) -> Any:
    """``2s``, ``500ms``, ``1.5s``, ``2min`` or a number of seconds, as seconds."""
    if not isinstance(value, str):
        return value
    found = _DURATION.fullmatch(value)
    if found is None:
        raise ValueError(f"{value!r} is not a duration: write e.g. 2s, 500ms or 1.5s")
    amount, unit = float(found.group(1)), found.group(2) or "s"
    return amount / 1000 if unit == "ms" else amount * 60 if unit in ("m", "min") else amount


Seconds = Annotated[float, BeforeValidator(_seconds)]


class Target(Model):
    """A shared multi-tenant database; its DSN comes from the environment.

    A target that declares a ``region`` holds that region's tenants only (the keys of
    ``targets:`` are their regions); the one ``target:`` of a playbook without regions
    holds every tenant.
    """

    dsn_env: EnvName = Field(description="Environment variable holding the target DSN.")
    schema_: Identifier = Field(default="app", alias="schema", description="Schema of the shared tables.")
    control_schema: Identifier = Field(
        default="migrate_control", description="Schema of run state, checkpoints and ledger."
    )
    tenant_context: Literal["session", "transaction"] = Field(
        default="session",
        description="How the policies take the application's tenant. 'session': app.tenant_id as "
        "set on the connection (the application must use SET LOCAL / set_config(…, true)). "
        "'transaction': only a tenant set in the current transaction counts — the application "
        "also sets app.tenant_xid to pg_current_xact_id() — so a tenant a session-level SET left "
        "on a pooled connection matches no row (README: 'Tenant context').",
    )
    app_role: Identifier | None = Field(
        default=None,
        description="The role the application uses on the shared schema: the schema step grants it "
        "USAGE on the schema, SELECT, INSERT, UPDATE, DELETE on tenant tables (never TRUNCATE), SELECT "
        "on global tables and USAGE on sequences; the cut-over flips only once it can insert with "
        "defaults in every tenant table (a rolled-back proof).",
    )
    distributed: Literal["citus"] | None = Field(
        default=None,
        description="'citus': the target is a Citus coordinator. The schema step distributes every tenant "
        "table on tenant_id (co-located, in foreign-key order) and makes global tables reference tables; "
        "every runner goes through the coordinator (README: 'Citus').",
    )
    region: Slug | None = Field(
        default=None,
        description="The region whose tenants this target holds (under 'targets:', the key says it); "
        "without it the one 'target:' holds every tenant.",
    )

    @model_validator(mode="after")
    def _citus_context(self) -> Target:
        if self.distributed == "citus" and self.tenant_context == "transaction":
            raise ValueError(
                "tenant_context 'transaction' cannot work on Citus: a worker's transaction starts at its "
                "own time, so the policies would match no row; write tenant_context: session (the default)"
            )
        return self

    @property
    def name(self) -> str:
        """How the target is named in plans, reports and the ledger: its region, else 'default'."""
        return self.region or DEFAULT_TARGET


class Source(Model):
    """How to reach each tenant's own database."""

    dsn_template_env: EnvName | None = Field(
        default=None,
        description="Environment variable holding a DSN with '{tenant}' in it, "
        "e.g. postgresql://migrator@db-{tenant}.internal/app.",
    )
    schema_: Identifier = Field(default="public", alias="schema")
    max_connections: int = Field(
        default=8,
        ge=1,
        le=1000,
        description="Source connections a command that reads many sources ('schema generate') opens at "
        "once at most: well under the servers' max_connections.",
    )
    app_roles: tuple[Identifier, ...] = Field(
        default=(),
        description="The roles the application writes the source as: a freeze revokes their INSERT, "
        "UPDATE, DELETE and TRUNCATE on the tenant's tables (and gives exactly those back when undone).",
    )


class Cutover(Model):
    """How a tenant's traffic moves: online (change capture, a short freeze) or offline."""

    mode: Literal["online", "offline"] = Field(
        default="offline",
        description="online: the copy reads a replication slot's snapshot and its changes are applied "
        "until the cutover step freezes the source for at most max_freeze; offline: the source is "
        "frozen (a freeze step) for the whole copy, or not at all.",
    )
    max_freeze: Seconds = Field(
        default=2.0,
        gt=0,
        le=3600,
        description="Longest time from freezing the source to flipping the flag; beyond it the "
        "cut-over gives up and unfreezes (the tenant stays on its old database).",
    )
    max_online_tenants: int = Field(
        default=2,
        ge=1,
        le=1000,
        description="Tenants with change capture open at once (each holds a slot, each slot decodes the "
        "server's whole WAL); more wait their turn.",
    )
    slot_wait: Seconds = Field(
        default=10.0, gt=0, le=3600, description="How long creating a slot may wait for open transactions."
    )
    checksum_rows: int = Field(
        default=100_000,
        ge=0,
        description="Tenants of at most this many rows are checksummed under the freeze, before the flip; "
        "larger ones right after it, in snapshots taken under the freeze (counts always go first).",
    )
    batch_changes: int = Field(
        default=20_000, ge=100, le=10_000_000, description="Changes read per catch-up batch at most."
    )
    max_catchup: Seconds = Field(
        default=3600.0,
        gt=0,
        description="How long catch-up may try to bring the lag down before the step fails.",
    )


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
    key: tuple[Identifier, ...] | None = Field(
        default=None,
        min_length=1,
        description="NOT NULL columns the backfill chunks and resumes by, for a table without a "
        "primary key (the primary key otherwise).",
    )


class FileFlags(Model):
    """File-backed flags in Unleash's client-features format (the embedded default)."""

    provider: Literal["file"] = "file"
    file_env: EnvName = Field(default="MIGRATE_FLAG_FILE", description="Variable naming the flag state file.")
    definitions: str | None = Field(
        default=None, description="Flag definitions (client-features JSON), relative to the playbook."
    )


class UnleashFlags(Model):
    """Flags on an Unleash server: flipped with the Admin API, confirmed with the SDK.

    Tokens come from the environment, never from the playbook: the fields name variables.
    """

    provider: Literal["unleash"]
    url_env: EnvName = Field(default="UNLEASH_URL", description="Variable with the server's URL.")
    admin_token_env: EnvName = Field(
        default="UNLEASH_ADMIN_TOKEN", description="Variable with an admin API token (flips, sync)."
    )
    client_token_env: EnvName = Field(
        default="UNLEASH_CLIENT_TOKEN",
        description="Variable with a client API token of the environment (confirms with the SDK).",
    )
    environment: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")] | None = Field(
        default=None, description="The Unleash environment to flip in, e.g. production."
    )
    environment_env: EnvName = Field(
        default="UNLEASH_ENVIRONMENT",
        description="Variable with the environment, used when 'environment' is not set.",
    )
    project: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")] = "default"
    definitions: str | None = Field(
        default=None, description="Flag definitions (client-features JSON) for 'migrate flags sync'."
    )
    confirm_seconds: float = Field(
        default=10.0, gt=0, le=300, description="How long the SDK may take to see a flip."
    )
    values_per_strategy: int = Field(
        default=250, ge=1, le=1000, description="Tenants per strategy (the server's constraint values limit)."
    )


def _flags_tag(value: Any) -> str:
    if isinstance(value, dict):
        provider = value.get("provider", "file")
        return provider if isinstance(provider, str) else ""
    return str(getattr(value, "provider", ""))


FlagsConfig = Annotated[
    Annotated[FileFlags, Tag("file")] | Annotated[UnleashFlags, Tag("unleash")],
    Discriminator(
        _flags_tag,
        custom_error_type="unknown_flag_provider",
        custom_error_message="unknown flag provider: write 'provider: file' or 'provider: unleash'",
    ),
]


Moves = Literal["traffic", "data", "nothing"]


class StepBase(Model):
    """What every step kind's spec has; a kind is this spec, its implementation in ``migrate.steps``
    and one line in ``STEP_SPECS`` below and in ``migrate.steps.KINDS`` — nothing else switches on it."""

    kind: str
    id: Slug | None = Field(default=None, description="Unique within the phase; defaults to kind.")

    moves: ClassVar[Moves] = "nothing"
    """What the step moves, so what its revert gives back: ``traffic`` (reverted first, before any
    data, so the application is back on the old databases in seconds), ``data``, or ``nothing``."""

    reports: ClassVar[Literal["rows", "validation"] | None] = None
    """Which of the tenant's figures its details carry, for ``status``: ``rows`` copied (under
    ``rows``; while it runs, its checkpoints'), or ``validation`` figures (``tables``, ``match``)."""

    capture: ClassVar[bool] = False
    """Whether it reads the change capture the online backfill opens (``cutover.mode: online``)."""

    freezes: ClassVar[bool] = False
    """Whether it freezes the source (so the playbook must name ``source.app_roles``)."""

    citus_only: ClassVar[bool] = False
    """Whether it works on a Citus target only (``target.distributed: citus``)."""

    @classmethod
    def kind_name(cls) -> str:
        """The kind this spec class stands for, from its ``kind`` literal."""
        (name,) = get_args(cls.model_fields["kind"].annotation)
        return str(name)

    @classmethod
    def example(cls) -> Self:
        """A valid spec of this kind with its defaults (docs and the step conformance suite)."""
        return cls.model_validate({"kind": cls.kind_name()})

    @property
    def cuts_over(self) -> bool:
        """Whether applying it sends the tenant's traffic to the shared schema (a cut-over)."""
        return False

    @property
    def flips(self) -> str | None:
        """The flag it turns on or off, if any (its provider must know it before the run starts)."""
        return None

    def describe(self, target_schema: str, tables: tuple[str, ...] | None) -> str:
        """One line saying what the step does, for ``migrate plan``."""
        return self.kind

    def undo_note(self) -> str:
        """What reverting it does, for the rollback preview ('' when it changes nothing)."""
        return ""

    def checks(self) -> str:
        """What its verify proves before the step counts as done, for the runbook ('' when nothing)."""
        return ""


def _tables_text(tables: tuple[str, ...] | None) -> str:
    return "every source table (FK order)" if tables is None else ", ".join(tables)


class SchemaStep(StepBase):
    """Create the shared tables (tenant_id, composite keys, RLS forced) if missing,
    and check the tenant's source columns fit them."""

    kind: Literal["schema"]

    def describe(self, target_schema: str, tables: tuple[str, ...] | None) -> str:
        return f"shared tables in schema '{target_schema}': tenant_id, composite keys, RLS forced"

    def checks(self) -> str:
        return "the tenant's source columns have the names and types of the shared tables"


class BackfillStep(StepBase):
    """Copy every table of the tenant's source into the shared tables with COPY."""

    kind: Literal["backfill"]
    chunk_rows: int = Field(
        default=100_000, ge=1, le=10_000_000, description="At most this many rows per committed chunk."
    )
    chunk_mb: int = Field(
        default=64, ge=1, le=4096, description="About this many MB (COPY stream) per committed chunk at most."
    )

    moves: ClassVar[Moves] = "data"
    reports: ClassVar[Literal["rows", "validation"] | None] = "rows"

    def describe(self, target_schema: str, tables: tuple[str, ...] | None) -> str:
        return f"copy {_tables_text(tables)} with COPY, adding tenant_id"

    def undo_note(self) -> str:
        return "delete the tenant's rows from the shared tables, children first, in batches"

    def checks(self) -> str:
        return (
            "each shared table holds exactly the rows its checkpoint counts; every foreign key of "
            "the tenant's rows holds (one check per key after the load)"
        )


class ValidateStep(StepBase):
    """Compare row counts and content checksums of source and target per table."""

    kind: Literal["validate"]

    reports: ClassVar[Literal["rows", "validation"] | None] = "validation"

    def describe(self, target_schema: str, tables: tuple[str, ...] | None) -> str:
        return "compare row counts and checksums, source vs target, per table"

    def checks(self) -> str:
        return "row counts and checksums equal on both sides for every table (else the tenant stops here)"


class FlagStep(StepBase):
    """Turn a flag on or off for the tenant; revert restores the previous state."""

    kind: Literal["flag"]
    flag: Slug
    action: Literal["enable", "disable"] = "enable"

    moves: ClassVar[Moves] = "traffic"

    @classmethod
    def example(cls) -> Self:
        return cls(kind="flag", flag="tenant-shared-db")

    @property
    def cuts_over(self) -> bool:
        return self.action == "enable"

    @property
    def flips(self) -> str | None:
        return self.flag

    def describe(self, target_schema: str, tables: tuple[str, ...] | None) -> str:
        return f"{self.action} flag '{self.flag}' for the tenant"

    def undo_note(self) -> str:
        return f"flag '{self.flag}' back as it was before"

    def checks(self) -> str:
        state = "on" if self.action == "enable" else "off"
        sees = f"the application's SDK sees '{self.flag}' {state} for the tenant"
        if self.action == "enable":
            # steps/ready.py: the flip waits until the application can write the tenant's rows.
            return f"before the flip, the tenant is write-ready (`migrate readiness`); after it, {sees}"
        return sees


class FreezeStep(StepBase):
    """Offline: the application roles lose write access on the source for the rest of the migration."""

    kind: Literal["freeze"]

    moves: ClassVar[Moves] = "traffic"
    freezes: ClassVar[bool] = True

    def describe(self, target_schema: str, tables: tuple[str, ...] | None) -> str:
        return (
            "freeze the source: the application roles lose INSERT, UPDATE, DELETE, TRUNCATE "
            "(a barrier waits out writes under way)"
        )

    def undo_note(self) -> str:
        return "give the application roles their write privileges back on the source"


class CatchupStep(StepBase):
    """Apply the changes captured since the copy's snapshot until the lag is small."""

    kind: Literal["catchup"]

    capture: ClassVar[bool] = True

    def describe(self, target_schema: str, tables: tuple[str, ...] | None) -> str:
        return "apply the source's changes since the copy (logical decoding) until the lag is small"


class CutoverStep(StepBase):
    """Freeze the source, drain to a fence, validate under the freeze, advance sequences, flip the flag."""

    kind: Literal["cutover"]
    flag: Slug

    moves: ClassVar[Moves] = "traffic"
    reports: ClassVar[Literal["rows", "validation"] | None] = "validation"
    capture: ClassVar[bool] = True
    freezes: ClassVar[bool] = True

    @classmethod
    def example(cls) -> Self:
        return cls(kind="cutover", flag="tenant-shared-db")

    @property
    def cuts_over(self) -> bool:
        return True

    @property
    def flips(self) -> str | None:
        return self.flag

    def describe(self, target_schema: str, tables: tuple[str, ...] | None) -> str:
        return (
            "freeze the source, drain its changes to a fence, compare counts (and checksums) under the "
            f"freeze, advance sequences, enable flag '{self.flag}'; the source stays frozen"
        )

    def undo_note(self) -> str:
        return f"flag '{self.flag}' back as it was before, then the source's write privileges back"


class FinaliseStep(StepBase):
    """Drop the tenant's replication slot and publication: its source stays frozen, read-only."""

    kind: Literal["finalise"]

    capture: ClassVar[bool] = True

    def describe(self, target_schema: str, tables: tuple[str, ...] | None) -> str:
        return "drop the replication slot and publication on the source (it stays frozen)"


class IsolateStep(StepBase):
    """Citus: move the tenant onto shards of its own (``isolate_tenant_to_new_shard``, CASCADE)."""

    kind: Literal["isolate"]
    transfer: Literal["auto", "force_logical", "block_writes"] = Field(
        default="auto",
        description="How Citus moves the tenant's rows onto its new shards: 'auto' (logical replication "
        "where every co-located table has a replica identity: the shard's other tenants keep writing), "
        "'force_logical', or 'block_writes' (faster; writes to the tenant's old shard wait meanwhile).",
    )

    citus_only: ClassVar[bool] = True

    def describe(self, target_schema: str, tables: tuple[str, ...] | None) -> str:
        return (
            f"Citus: the tenant's rows of every co-located table onto shards of their own "
            f"(isolate_tenant_to_new_shard, {self.transfer})"
        )

    def undo_note(self) -> str:
        return "nothing: the tenant keeps its own shards (placement, not data)"

    def checks(self) -> str:
        return "the tenant's shard holds its hash value alone"


class RollbackPoint(Model):
    """A named marker between steps: ``rollback --to NAME`` reverts what follows it."""

    rollback_point: Slug


STEP_SPECS: tuple[type[StepBase], ...] = (
    SchemaStep,
    FreezeStep,
    BackfillStep,
    CatchupStep,
    ValidateStep,
    CutoverStep,
    FlagStep,
    FinaliseStep,
    IsolateStep,
)
"""Every step kind's spec, one line each: the loader, the plan and the docs derive from it."""

STEP_KINDS: tuple[str, ...] = tuple(spec.kind_name() for spec in STEP_SPECS)


def _item_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        if "rollback_point" in value:
            return "rollback_point"
        kind = value.get("kind")
        return kind if isinstance(kind, str) else None
    if isinstance(value, RollbackPoint):
        return "rollback_point"
    return getattr(value, "kind", None)


Step = StepBase
"""A step's spec, of any kind (narrow it with isinstance where a kind's own fields matter)."""

if TYPE_CHECKING:
    PhaseItem = StepBase | RollbackPoint
else:
    PhaseItem = Annotated[
        Union[  # built from STEP_SPECS at run time
            (
                *(Annotated[spec, Tag(spec.kind_name())] for spec in STEP_SPECS),
                Annotated[RollbackPoint, Tag("rollback_point")],
            )
        ],
        Discriminator(
            _item_tag,
            custom_error_type="unknown_step_kind",
            custom_error_message="unknown step kind",
        ),
    ]


class Wave(Model):
    """A group of tenants that goes through the phases together; waves go in the order written."""

    name: Slug
    approval: bool = Field(
        default=False,
        description="A person must open the wave with 'migrate approve PLAYBOOK --wave NAME' "
        "before any of its tenants starts.",
    )


class Phase(Model):
    """An ordered group of steps, run for each tenant."""

    name: Slug
    steps: tuple[PhaseItem, ...] = Field(min_length=1)


class UniqueAcrossTenants(Model):
    """Columns whose values must stay unique across all tenants, e.g. a login e-mail."""

    table: Identifier
    columns: tuple[Identifier, ...] = Field(min_length=1)


class LeaveBehind(Model):
    """A source object a person chose not to carry into the shared schema, and why."""

    object: str = Field(
        min_length=3,
        max_length=400,
        description="The object as the schema report names it, e.g. 'function public.f(integer)', "
        "'view public.sales_by_store', 'table public.audit_log', 'trigger public.film.t'.",
    )
    reason: str = Field(min_length=1, max_length=2000, description="Why it may stay behind (for the ledger).")


class SchemaSettings(Model):
    """How the shared schema is made from the sources, beyond the tables."""

    leave_behind: tuple[LeaveBehind, ...] = Field(
        default=(),
        description="Source objects the shared schema does not carry, acknowledged by a person: "
        "without an entry, 'schema generate' and the schema step stop (exit 1) on any object "
        "they cannot carry (a function that reads tables, a view joining tenant tables in a way "
        "that cannot get the tenant equality, a table left out of 'tables:', a rule, …).",
    )

    def objects(self) -> frozenset[str]:
        """The acknowledged objects' names, whitespace normalised."""
        return frozenset(" ".join(entry.object.split()) for entry in self.leave_behind)


class LedgerSettings(Model):
    """How the ledger is signed and where its head is published: outside the database.

    The private key is never in the playbook: it names the variable or the file that holds
    it (an Ed25519 key, PEM). Paths are relative to the playbook's folder.
    """

    signing_key_env: EnvName | None = Field(
        default=None,
        description="Variable holding the Ed25519 private key (PEM) every entry is signed with.",
    )
    signing_key_file: str | None = Field(
        default=None, description="File holding the Ed25519 private key (PEM), e.g. /etc/migrate/ledger.pem."
    )
    public_key_file: str | None = Field(
        default=None,
        description="The trusted public key(s) (PEM) 'ledger verify' checks signatures with; "
        "default: the signing key's own. An auditor needs only this.",
    )
    head_file: str | None = Field(
        default=None,
        description="File the ledger's head (seq, hash, count, time) is appended to after every run, "
        "rollback and approval; 'ledger verify' checks the ledger still holds the latest. Put it "
        "where no database role can write.",
    )
    require_signatures: bool = Field(
        default=False,
        description="'ledger verify' fails unless every entry is signed with a trusted key.",
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> LedgerSettings:
        if self.signing_key_env is not None and self.signing_key_file is not None:
            raise ValueError("name the signing key once: signing_key_env or signing_key_file, not both")
        return self


class Playbook(Model):
    """A whole playbook file."""

    version: Literal[1] = 1
    name: Slug
    description: str = ""
    target: Target | None = Field(
        default=None, description="The shared database, when one holds every tenant (or one region's)."
    )
    targets: dict[Slug, Target] | None = Field(
        default=None,
        min_length=1,
        description="One shared database per region, by region: each tenant goes to the target of its "
        "'region'.",
    )
    source: Source = Source()
    tenants: tuple[Tenant, ...] | None = Field(default=None, min_length=1)
    inventory: str | None = Field(
        default=None, description="YAML file listing the tenants, relative to the playbook."
    )
    waves: tuple[Wave, ...] = Field(
        default=(),
        description="The waves in order, the canary first; without it, waves go in the order the "
        "tenants first name them.",
    )
    tables: Literal["auto"] | tuple[Identifier | Table, ...] = Field(
        default="auto",
        description="write 'auto' (every table of the source, in foreign-key order) or a list of "
        "table names and {name: TABLE, key: [COLUMN, …]} entries",
    )
    global_tables: tuple[Identifier, ...] = Field(
        default=(),
        description="Reference tables shared by every tenant: no tenant_id, read-only to the application.",
    )
    unique_across_tenants: tuple[UniqueAcrossTenants, ...] = Field(
        default=(),
        description="Values that must stay unique across all tenants; 'migrate schema generate' "
        "reports those that already collide.",
    )
    schema_: SchemaSettings = Field(
        default=SchemaSettings(),
        alias="schema",
        description="What of the source schema is left behind, acknowledged (schema.leave_behind).",
    )
    flags: FlagsConfig = FileFlags()
    ledger: LedgerSettings = LedgerSettings()
    cutover: Cutover = Cutover()
    phases: tuple[Phase, ...] = Field(min_length=1)

    def targets_by_name(self) -> dict[str, Target]:
        """Every target by name (its region, or 'default'), in the order written; each knows its region."""
        if self.targets is not None:
            return {region: t.model_copy(update={"region": region}) for region, t in self.targets.items()}
        assert self.target is not None, "the loader checks that a playbook names a target"
        return {self.target.name: self.target}

    def target_name_of(self, tenant: Tenant) -> str:
        """The name of the target a tenant goes to: its region's under ``targets:``, else the one target."""
        if self.targets is not None:
            return tenant.region
        assert self.target is not None, "the loader checks that a playbook names a target"
        return self.target.name

    def target_of(self, tenant: Tenant) -> Target:
        """The target a tenant goes to (the loader checks that there is one)."""
        return self.targets_by_name()[self.target_name_of(tenant)]

    def table_specs(self) -> tuple[Table, ...] | None:
        """The declared tables, or None for ``auto`` (every table, in FK order)."""
        if self.tables == "auto":
            return None
        return tuple(t if isinstance(t, Table) else Table(name=t) for t in self.tables)


def wave_order(playbook: Playbook, tenants: tuple[Tenant, ...]) -> tuple[Wave, ...]:
    """The waves in the order they go: as declared, else as the tenants first name them."""
    if playbook.waves:
        return playbook.waves
    return tuple(Wave(name=name) for name in dict.fromkeys(t.wave for t in tenants))


class Inventory(Model):
    """An inventory file: the tenants of many playbooks."""

    tenants: tuple[Tenant, ...] = Field(min_length=1)


def step_id(step: Step) -> str:
    """The step's id within its phase: its own ``id``, else its kind."""
    return step.id or step.kind
