"""schema generate: the shared schema as an alembic revision, and the consolidation report."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import psycopg

from migrate.api.settings import (
    Environ,
    connect,
    identifier_option,
    source_dsn,
    tenant_context_option,
    the_target,
)
from migrate.catalog import TENANT_COLUMN
from migrate.catalog.ddl import Options as SchemaOptions
from migrate.errors import (
    ArgumentError,
    StepFailed,
)
from migrate.log import redact
from migrate.playbook import load_playbook
from migrate.schemagen.consolidate import UniqueAcrossTenants
from migrate.schemagen.generate import GenerateResult, generate
from migrate.schemagen.sources import DEFAULT_LIMIT, Sources

_NAMED_SOURCE = re.compile(r"^([a-z0-9][a-z0-9_-]{0,62})=(.+)$", re.DOTALL)


def _labelled_source(value: str, index: int) -> tuple[str, str]:
    """``NAME=DSN`` names a source; a bare DSN (URL or key=value) is named after its database."""
    named = _NAMED_SOURCE.match(value)
    keywords = {o.keyword.decode() for o in psycopg.pq.Conninfo.get_defaults()}
    if named and named.group(1) not in keywords:  # "host=…" is a key=value DSN, not a name
        label, value = named.group(1), named.group(2)
    else:
        label = ""
    try:
        dbname = psycopg.conninfo.conninfo_to_dict(value).get("dbname")
    except psycopg.ProgrammingError:
        raise ArgumentError(
            f"--source number {index + 1} is not a connection string",
            where="--source",
            hint="write [NAME=]postgresql://USER@HOST:PORT/DBNAME",
        ) from None
    return label or str(dbname or f"source{index + 1}"), value


def _unique_declaration(value: str) -> UniqueAcrossTenants:
    table, _, columns = value.partition(".")
    names = [c.strip() for c in columns.split(",") if c.strip()]
    if not table or not names:
        raise ArgumentError(
            f"--unique-across-tenants {value!r} names no columns",
            where="--unique-across-tenants",
            hint="write TABLE.COLUMN or TABLE.COL1,COL2, e.g. users.email",
        )
    return UniqueAcrossTenants(
        identifier_option(table, "--unique-across-tenants"),
        tuple(identifier_option(c, "--unique-across-tenants") for c in names),
    )


def schema_generate(
    playbook: Path | str | None = None,
    *,
    sources: Sequence[str] = (),
    out: Path | str,
    schema: str | None = None,
    source_schema: str | None = None,
    tenant_column: str = TENANT_COLUMN,
    tenant_type: str = "text",
    app_role: str | None = None,
    global_tables: Sequence[str] = (),
    unique_across: Sequence[str] = (),
    tenant_context: str | None = None,
    region: str | None = None,
    max_connections: int | None = None,
    leave_behind: Sequence[str] = (),
    citus: bool = False,
    environ: Environ | None = None,
) -> GenerateResult:
    """The shared schema as an alembic revision in ``out``, and the consolidation report.

    The sources are the playbook's tenants (those of ``region``'s target, when given), or
    ``sources`` (``[NAME=]DSN`` each); the first is the model of the schema, all of them are
    compared. With a target per region, the consolidation report runs per target: rows
    collide only with rows of the same shared database. At most ``max_connections`` sources
    are open at once (the playbook's ``source.max_connections``, else 8). ``citus`` (or the playbook's
    ``target.distributed: citus``) writes the revision for a Citus coordinator and reports what
    Citus refuses (catalog/citus.py).
    """
    environ = os.environ if environ is None else environ
    if (playbook is None) == (not sources):
        raise ArgumentError(
            "name the sources: a playbook, or --source DSN (repeat it for more), not both",
            where="--source",
            hint="migrate schema generate --source postgresql://HOST/acme --out migrations/shared",
        )
    if tenant_type not in ("text", "uuid"):
        raise ArgumentError(f"unknown tenant type {tenant_type!r}", where="--tenant-type", hint="text, uuid")
    globals_ = [identifier_option(t, "--global") for t in global_tables]
    uniques = [_unique_declaration(u) for u in unique_across]
    labelled: list[tuple[str, str, str]] = []
    groups: dict[str, list[str]] | None = None
    loaded_limit: int | None = None
    acknowledged = {" ".join(o.split()) for o in leave_behind}
    tables: list[str] | None = None
    if playbook is not None:
        loaded = load_playbook(playbook)
        pb = loaded.playbook
        chosen = [the_target(loaded, region)] if region is not None else list(pb.targets_by_name().values())
        schema = schema or chosen[0].schema_
        source_schema = source_schema or pb.source.schema_
        globals_ += list(pb.global_tables)
        tenant_context = tenant_context or chosen[0].tenant_context
        loaded_limit = pb.source.max_connections
        citus = citus or chosen[0].distributed == "citus"
        uniques += [UniqueAcrossTenants(u.table, tuple(u.columns)) for u in pb.unique_across_tenants]
        acknowledged |= pb.schema_.objects()
        specs = pb.table_specs()
        tables = None if specs is None else [t.name for t in specs]
        names = {t.name for t in chosen}
        tenants = [t for t in loaded.tenants if pb.target_name_of(t) in names]
        for tenant in tenants:
            dsn, var = source_dsn(loaded, tenant, environ)
            labelled.append((tenant.id, dsn, var))
        if pb.targets is not None:  # rows collide only within a region's shared database
            groups = {
                t.name: [x.id for x in tenants if pb.target_name_of(x) == t.name]
                for t in chosen
                if any(pb.target_name_of(x) == t.name for x in tenants)
            }
    elif region is not None:
        raise ArgumentError("--region names a target of a playbook", where="--region")
    else:
        for index, value in enumerate(sources):
            label, dsn = _labelled_source(value, index)
            if label in [existing for existing, _d, _v in labelled]:
                raise ArgumentError(
                    f"two sources are both named {label!r}",
                    where="--source",
                    hint="name them: --source acme=postgresql://… --source globex=postgresql://…",
                )
            labelled.append((label, dsn, "--source"))
    options = SchemaOptions(
        schema=identifier_option(schema or "app", "--schema"),
        tenant_column=identifier_option(tenant_column, "--tenant-column"),
        tenant_type="uuid" if tenant_type == "uuid" else "text",
        app_role=identifier_option(app_role, "--app-role") if app_role else None,
        global_tables=frozenset(globals_),
        tenant_context=tenant_context_option(tenant_context),
        leave_behind=frozenset(acknowledged),
    )
    if max_connections is not None and not 1 <= max_connections <= 1000:
        raise ArgumentError(
            f"--max-connections must be between 1 and 1000, not {max_connections}",
            where="--max-connections",
            hint=f"the default is {DEFAULT_LIMIT}: well under a server's max_connections",
        )
    limit = max_connections or (loaded_limit if loaded_limit is not None else DEFAULT_LIMIT)
    # Each source is opened when it is visited, at most `limit` at once (schemagen/sources.py).
    openers = {label: partial(connect, dsn, what=f"source {label}", var=var) for label, dsn, var in labelled}
    try:
        return generate(
            Sources(openers, limit),
            source_schema=identifier_option(source_schema or "public", "--source-schema"),
            options=options,
            out=Path(out),
            unique_across=uniques,
            groups=groups,
            tables=tables,
            citus=citus,
        )
    except psycopg.Error as exc:
        raise StepFailed(redact(str(exc).strip()), where="schema generate") from exc
